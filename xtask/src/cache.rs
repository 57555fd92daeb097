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
