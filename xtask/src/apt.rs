//! Debian packages as the image recipes use them: what the package index
//! calls a package and its checksum, and a checked download into our cache.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::cache::{inputs_hash, sha256_file};
use crate::cmd;

/// One package file: the name `apt-get download` gives it and its checksum.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct IndexedDeb {
    pub package: String,
    pub file: String,
    pub sha256: Option<String>,
}

/// `ask`'s answer, kept as JSON in `memo` and reused until the package
/// lists change (`apt-get update` brings news). Every apt query re-reads the
/// whole package index on our machines (the binary apt cache is off, as in
/// Debian's container images): 1.5 s each.
pub fn remembered<T>(memo: &Path, ask: impl FnOnce() -> Result<T>) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Memo<T> {
        /// [`lists_stamp`] when this was asked.
        index_stamp: String,
        answer: T,
    }
    let stamp = lists_stamp();
    if let Some(memo) = fs::read_to_string(memo)
        .ok()
        .and_then(|text| serde_json::from_str::<Memo<T>>(&text).ok())
        .filter(|m| m.index_stamp == stamp)
    {
        return Ok(memo.answer);
    }
    let memo_value = Memo {
        index_stamp: stamp,
        answer: ask()?,
    };
    crate::fsutil::write(
        memo,
        serde_json::to_string_pretty(&memo_value)?.as_bytes(),
        0o644,
    )?;
    Ok(memo_value.answer)
}

/// What `apt-get download --print-uris` says of each of `packages`, in
/// their order; a package it says nothing about is an error.
pub fn print_uris(packages: &[&str]) -> Result<Vec<IndexedDeb>> {
    let uris = cmd::query_text(
        Command::new("apt-get")
            .args(["download", "--print-uris"])
            .args(packages),
    )?;
    let debs = parse_print_uris(&uris);
    packages
        .iter()
        .map(|package| {
            debs.iter()
                .find(|d| d.package == *package)
                .cloned()
                .with_context(|| {
                    format!(
                        "`apt-get download --print-uris` says nothing about {package}: {uris:?}"
                    )
                })
        })
        .collect()
}

/// Changes whenever `apt-get update` changes the package lists.
fn lists_stamp() -> String {
    let mut files: Vec<String> = fs::read_dir("/var/lib/apt/lists")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let mtime = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(format!(
                "{} {} {}",
                e.file_name().to_string_lossy(),
                meta.len(),
                mtime.as_nanos()
            ))
        })
        .collect();
    files.sort();
    inputs_hash(&[("apt-lists", files.join("\n").as_bytes())])
}

/// Lines of `apt-get download --print-uris`: `'URL' FILE SIZE SHA256:HEX`,
/// where FILE is `<package>_<version>_<arch>.deb`.
pub fn parse_print_uris(text: &str) -> Vec<IndexedDeb> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let file = (*fields.get(1)?).to_string();
            let package = file.split('_').next()?.to_string();
            let sha256 = fields
                .get(3)
                .and_then(|c| c.strip_prefix("SHA256:"))
                .map(str::to_ascii_lowercase);
            Some(IndexedDeb {
                package,
                file,
                sha256,
            })
        })
        .collect()
}

/// A downloaded package file and the SHA-256 of its bytes (hex).
pub struct Deb {
    pub path: PathBuf,
    pub sha256: String,
}

/// `apt-get download`s the package into `dir` unless the file is there
/// already with the checksum the index gives.
pub fn download(deb: &IndexedDeb, dir: &Path) -> Result<Deb> {
    let path = dir.join(&deb.file);
    let matches = |sha: &str| deb.sha256.as_deref().is_none_or(|e| e == sha);
    if path.is_file() {
        let sha256 = sha256_file(&path)?;
        if matches(&sha256) {
            eprintln!("image: present  {}", path.display());
            return Ok(Deb { path, sha256 });
        }
        eprintln!(
            "image: {} does not match the package index; downloading again",
            path.display()
        );
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    cmd::run(
        Command::new("apt-get")
            .args(["download", &deb.package])
            .current_dir(dir),
    )?;
    let sha256 = sha256_file(&path)?;
    ensure!(
        matches(&sha256),
        "{} does not match the package index after download",
        path.display()
    );
    Ok(Deb { path, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_names_package_file_and_checksum() {
        let out = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' \
                   busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3D3FDB\n";
        assert_eq!(
            parse_print_uris(out),
            [IndexedDeb {
                package: "busybox-static".into(),
                file: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb".into(),
                sha256: Some("3d3fdb".into()),
            }]
        );
    }
}
