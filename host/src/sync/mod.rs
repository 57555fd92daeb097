//! `limactl shell --sync DIR` and `limactl sync`: review before write.
//!
//! The command in the guest works on a copy-on-write view of `DIR`: the
//! host serves `DIR` read-only (a vsockfs share whose setup names a layer)
//! and the guest agent keeps every write in the layer's upper folder on
//! the guest's disk (`lima_proto::layer`). Nothing reaches the host until
//! the person has seen the changes and applied them.
//!
//! ```text
//!  limactl shell --sync DIR                       guest agent
//!   | session: lima-fs-server (read-only) <-- Share{layer: id} --> lower
//!   |          the command, cwd DIR, as the guest user              view at DIR
//!   | stop the share (the view goes, the layer stays)
//!   | -- Layer: Changes, Read* ------------------------------------> upper
//!   | snapshot (staged on the host) -> review -> choice
//!   | apply through lima-fs-server (writable, on DIR, confined)
//!   | -- Layer: Drop (applied) | Discard ---------------------------> upper
//! ```
//!
//! One concern per file: `paths` (what a guest-sent path may be),
//! `layer` (the stream), `host` (the host folder through fs-server),
//! `snapshot`, `conflict`, `review`, `apply`, `prompt`, `stdin`,
//! `session` (the `--sync` share) and `finish` (what happens to a layer).
pub mod apply;
pub mod conflict;
pub mod finish;
pub mod host;
pub mod layer;
pub mod paths;
pub mod prompt;
pub mod review;
pub mod session;
pub mod snapshot;
pub mod stdin;

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::mounts::Mount;

/// The permission bits an apply sets: never setuid, setgid or sticky
/// (the guest must not plant a set-id program in the person's folder).
pub const MODE_BITS: u32 = 0o777;

/// The layer of `dir` (absolute, cleaned): the same folder always gets the
/// same layer, so a later `--sync` of it takes up what was left pending.
pub fn layer_id(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_bytes());
    hex::encode(&digest[..8])
}

/// `DIR` as given on the command line: absolute (from the current folder),
/// cleaned, and an existing folder.
pub fn resolve_dir(arg: &str) -> Result<PathBuf, String> {
    if arg.is_empty() {
        return Err("--sync needs a folder".into());
    }
    let p = crate::mounts::expand_tilde(arg);
    let p = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| format!("cannot read the current folder: {e}"))?
            .join(p)
    };
    let p = crate::mounts::clean(&p);
    if !p.is_dir() {
        let what = if p.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Err(format!("--sync {arg}: {} {what}", p.display()));
    }
    if p.to_str().is_none() {
        return Err(format!(
            "--sync {arg}: {} is not valid UTF-8, which guest mount points must be",
            p.display()
        ));
    }
    Ok(p)
}

/// A writable mount of the instance at `dir`, above it or inside it: the
/// guest could write there around the review.
pub fn writable_overlap<'a>(mounts: &'a [Mount], dir: &Path) -> Option<&'a Mount> {
    let forms = |p: &Path| {
        let mut v = vec![p.to_path_buf()];
        if let Ok(c) = std::fs::canonicalize(p) {
            if c != p {
                v.push(c);
            }
        }
        v
    };
    let dirs = forms(dir);
    mounts.iter().filter(|m| m.writable).find(|m| {
        forms(&m.location).iter().any(|loc| {
            dirs.iter()
                .any(|d| d.starts_with(loc) || loc.starts_with(d))
        })
    })
}

#[cfg(test)]
mod tests;
