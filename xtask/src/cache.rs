//! Where the guest images live and how their cache entries are keyed.
//!
//! Every image is built into `target/images/cache/<hash>/`, where the hash
//! covers every input of its recipe, and `target/images/<name>` points at
//! the current entry (see `image` and `debian`).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::cmd;

/// `target/images`.
pub fn images_dir() -> PathBuf {
    cmd::target_dir().join("images")
}

/// The directory the other tasks and the tests use: `target/images/default`.
pub fn default_dir() -> PathBuf {
    images_dir().join("default")
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
