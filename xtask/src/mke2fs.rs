//! `mke2fs` (and `resize2fs`) in the default image's initramfs, with the shared libraries and
//! the loader it needs: the agent formats an instance's data disk ext4 on
//! its first boot (`guest-agent/src/datadisk.rs`). Busybox's `mke2fs` makes
//! only ext2 (no journal), and Debian ships no static e2fsprogs, so the
//! binary comes from Debian's `e2fsprogs` with the libraries of
//! [`PACKAGES`], found by the binary's own `DT_NEEDED` entries (each
//! library's too) so that a missing one is an error naming it.
//!
//! ```text
//! /sbin/mke2fs, /etc/mke2fs.conf         from e2fsprogs
//! /lib/x86_64-linux-gnu/<soname>         each library it needs, transitively
//! /lib64/ld-linux-x86-64.so.2            the loader its PT_INTERP names
//! ```
//!
//! glibc's loader searches `/lib/x86_64-linux-gnu` by default on Debian, so
//! no `ld.so.cache` is needed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use object::elf::{FileHeader64, DT_NEEDED, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::LittleEndian;

use crate::cmd;
use crate::fsutil::copy;

/// The packages whose files `mke2fs` needs: the program and its libraries.
pub const PACKAGES: &[&str] = &[
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "libblkid1",
    "libuuid1",
    "libc6",
];

/// The programs staged: `mke2fs` formats the data disk and blank
/// `additionalDisks`; `resize2fs` grows a disk that was resized.
const PROGRAMS: &[&str] = &["mke2fs", "resize2fs"];

/// Where the libraries go in the initramfs.
const LIB_DIR: &str = "lib/x86_64-linux-gnu";
/// Where extracted packages keep libraries (Debian 12 is half usr-merged).
const SEARCH: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dynamic {
    needed: Vec<String>,
    interpreter: Option<String>,
}

fn dynamic(elf: &[u8]) -> Result<Dynamic> {
    let header = FileHeader64::<LittleEndian>::parse(elf).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF header")?;
    let mut out = Dynamic::default();
    for ph in header
        .program_headers(endian, elf)
        .context("bad program headers")?
    {
        if ph.p_type(endian) == PT_INTERP {
            if let Some(interp) = ph.interpreter(endian, elf).context("bad PT_INTERP")? {
                out.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
            }
        }
    }
    let sections = header
        .sections(endian, elf)
        .context("bad section headers")?;
    if let Some((entries, link)) = sections
        .dynamic(endian, elf)
        .context("bad .dynamic section")?
    {
        let strings = sections
            .strings(endian, elf, link)
            .context("bad .dynstr section")?;
        for d in entries {
            if d.d_tag(endian) == DT_NEEDED {
                let name = d.string(endian, strings).context("bad DT_NEEDED entry")?;
                out.needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(out)
}

/// Extracts the `.deb`s into `work` and copies `mke2fs`, its config, every
/// library it needs and the loader into the initramfs `tree`. Returns the
/// libraries' names.
pub fn stage(debs: &[PathBuf], work: &Path, tree: &Path) -> Result<Vec<String>> {
    let dir = work.join("e2fsprogs");
    for deb in debs {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
    }
    let conf = dir.join("etc/mke2fs.conf");
    if conf.is_file() {
        copy(&conf, &tree.join("etc/mke2fs.conf"), 0o644)?;
    }
    let mut queue = Vec::new();
    let mut interpreter = None;
    for name in PROGRAMS {
        let program = [format!("sbin/{name}"), format!("usr/sbin/{name}")]
            .iter()
            .map(|p| dir.join(p))
            .find(|p| p.is_file())
            .with_context(|| format!("the e2fsprogs package has no sbin/{name}"))?;
        copy(&program, &tree.join("sbin").join(name), 0o755)?;
        let bytes = fs::read(&program)?;
        let top = dynamic(&bytes).with_context(|| program.display().to_string())?;
        let Some(interp) = top.interpreter else {
            bail!("{} names no loader (PT_INTERP)", program.display());
        };
        interpreter = Some(interp);
        queue.extend(top.needed);
    }
    let mut staged = BTreeSet::new();
    while let Some(soname) = queue.pop() {
        if !staged.insert(soname.clone()) {
            continue;
        }
        let found = SEARCH
            .iter()
            .map(|d| dir.join(d).join(&soname))
            .find(|p| p.exists())
            .with_context(|| {
                format!(
                    "mke2fs needs {soname}, which none of the packages {PACKAGES:?} has; \
                     add its package to mke2fs::PACKAGES"
                )
            })?;
        // Sonames are symlinks to versioned files: copy the file itself.
        let real = fs::canonicalize(&found)
            .with_context(|| format!("cannot resolve {}", found.display()))?;
        let lib = fs::read(&real)?;
        copy(&real, &tree.join(LIB_DIR).join(&soname), 0o755)?;
        queue.extend(
            dynamic(&lib)
                .with_context(|| real.display().to_string())?
                .needed,
        );
    }
    let interp = interpreter.context("no programs to stage")?;
    let loader = fs::canonicalize(dir.join(interp.trim_start_matches('/')))
        .with_context(|| format!("the packages lack mke2fs's loader {interp}"))?;
    copy(&loader, &tree.join(interp.trim_start_matches('/')), 0o755)?;
    Ok(staged.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_and_loader_of_a_dynamic_program() {
        // This test binary is linked against glibc.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let d = dynamic(&me).unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        assert!(
            d.interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{d:?}"
        );
        assert!(dynamic(b"#!/bin/sh\n").is_err());
    }
}
