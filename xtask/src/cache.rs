//! Where the guest images live and how their cache entries are keyed.
//!
//! Every image is built into `target/images/cache/<hash>/`, where the hash
//! covers every input of its recipe, and `target/images/<name>` points at
//! the current entry (see `image` and `debian`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Result};

use sha2::{Digest, Sha256};

use crate::cmd;

/// `target/images`.
pub fn images_dir() -> PathBuf {
    cmd::target_dir().join("images")
}

/// This process's scratch folder, `target/images/tmp/<pid>` or
/// `tmp/<pid>-<label>` (not created), after removing the scratch folders of
/// processes that are gone: builds run side by side, and an interrupted
/// one leaves its folder (a kernel source tree is 1.5 GB). A folder whose
/// name starts with a live process's id is kept, whatever its label.
pub fn scratch_dir(label: Option<&str>) -> Result<PathBuf> {
    let root = images_dir().join("tmp");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default();
            let alive = pid.parse::<u32>().is_ok() && Path::new("/proc").join(pid).exists();
            if !alive {
                crate::fsutil::remove_dir_if_present(&entry.path())?;
            }
        }
    }
    let pid = std::process::id();
    Ok(root.join(match label {
        Some(label) => format!("{pid}-{label}"),
        None => pid.to_string(),
    }))
}

/// The cache key: SHA-256 over labelled inputs (each input contributes its
/// own bytes or, for big files, their SHA-256).
pub fn inputs_hash(inputs: &[(&str, &[u8])]) -> String {
    let mut hasher = Sha256::new();
    for (label, bytes) in inputs {
        hasher.update(label.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(hasher.finalize())
}

/// SHA-256 of a file, by `sha256sum`: xtask is a debug build, and sha2
/// compiled without optimisation hashes the 70 MB kernel package at about
/// 8 MB/s (10 s on every run); coreutils takes half a second.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let out = cmd::query_text(Command::new("sha256sum").arg("--binary").arg(path))?;
    let digest = out.split_whitespace().next().unwrap_or_default();
    ensure!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "unexpected `sha256sum` output for {}: {out:?}",
        path.display()
    );
    Ok(digest.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_hash_separates_inputs() {
        let a = inputs_hash(&[("x", b"ab"), ("y", b"c")]);
        let b = inputs_hash(&[("x", b"a"), ("y", b"bc")]);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
