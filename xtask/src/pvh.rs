//! The kernel as an uncompressed ELF that QEMU starts at its PVH entry point.
//!
//! A bzImage booted with `-kernel` goes through the firmware's Linux loader,
//! the real-mode setup code and then the kernel's own xz decompressor; under
//! TCG that was 4–5 s of every boot here. QEMU also boots an ELF `vmlinux`
//! that carries a Xen `PHYS32_ENTRY` note (PVH) directly, with none of that.
//! Debian's kernel has the note, so the image ships both: `vmlinux` for
//! booting, `vmlinuz` for anyone who wants the original.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian;

/// The xz stream magic, as the bzImage embeds it.
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
const PHYS32_ENTRY: u32 = 18;

/// Decompresses the payload of `bzimage` (xz, Debian's choice) into an ELF
/// and checks it can be booted through PVH.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    let start = bzimage
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz payload in the kernel image")?;
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run xz (package xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = bzimage[start..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let out = child.wait_with_output().context("xz")?;
    // xz stops reading after the stream, so a broken pipe here is expected.
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "xz could not decompress the kernel: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !has_pvh_entry(&out.stdout)? {
        bail!("the decompressed kernel has no PVH entry note (CONFIG_PVH)");
    }
    Ok(out.stdout)
}

/// Whether a 64-bit little-endian ELF has a `Xen` note of type PHYS32_ENTRY
/// in one of its PT_NOTE segments. `object` reads `elf` in place, so it must
/// be aligned like a heap buffer (callers pass a whole file in a `Vec`).
pub fn has_pvh_entry(elf: &[u8]) -> Result<bool> {
    let not_elf = "not a 64-bit little-endian ELF";
    let header = FileHeader64::<LittleEndian>::parse(elf).context(not_elf)?;
    let endian = header.endian().context(not_elf)?;
    let segments = header
        .program_headers(endian, elf)
        .context("truncated program header")?;
    for segment in segments {
        let Some(mut notes) = segment
            .notes(endian, elf)
            .context("note segment out of range")?
        else {
            continue;
        };
        // A malformed note ends the walk of its segment: what follows it
        // cannot be found.
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Writes `vmlinux` next to `vmlinuz` in `dir` when that works; says why not
/// otherwise (the image then boots `vmlinuz`). Returns the file to boot.
pub fn kernel_to_boot(dir: &Path) -> Result<&'static str> {
    let bzimage = std::fs::read(dir.join("vmlinuz"))
        .with_context(|| format!("cannot read {}/vmlinuz", dir.display()))?;
    match extract(&bzimage) {
        Ok(elf) => {
            crate::fsutil::write(&dir.join("vmlinux"), &elf, 0o644)?;
            Ok("vmlinux")
        }
        Err(e) => {
            eprintln!("image: note: booting vmlinuz, not an uncompressed vmlinux: {e:#}");
            Ok("vmlinuz")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding one note.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[6] = 1; // EV_CURRENT
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&[1, 2, 3, 4]);
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&(120u64).to_le_bytes());
        e[ph + 0x20..ph + 0x28].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend_from_slice(&note);
        e
    }

    #[test]
    fn finds_the_pvh_note_and_only_that() {
        assert!(has_pvh_entry(&elf_with_note(b"Xen", 18)).unwrap());
        assert!(!has_pvh_entry(&elf_with_note(b"Xen", 17)).unwrap());
        assert!(!has_pvh_entry(&elf_with_note(b"GNU", 18)).unwrap());
        assert!(has_pvh_entry(b"MZ not an elf").is_err());
    }

    #[test]
    fn a_kernel_without_xz_payload_is_refused_with_a_reason() {
        let e = extract(b"just some bytes").unwrap_err();
        assert!(e.to_string().contains("no xz payload"), "{e}");
    }
}
