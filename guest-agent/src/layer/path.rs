//! Layer-relative paths: raw bytes, `/`-separated, `""` is the root. The
//! host's paths are checked here before they touch the disk; the view makes
//! its own from kernel names, which never hold `/`.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Checks a path from a request: relative, no empty, `.` or `..`
/// component, no NUL.
pub(crate) fn check(p: &[u8]) -> Result<&[u8], String> {
    let shown = String::from_utf8_lossy(p);
    if p.is_empty() {
        return Err("an empty path".into());
    }
    if p.starts_with(b"/") {
        return Err(format!(
            "{shown:?} is absolute; paths are relative to the layer"
        ));
    }
    if p.contains(&0) {
        return Err(format!("{shown:?} holds a NUL byte"));
    }
    for c in p.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(format!(
                "{shown:?} has an empty, `.` or `..` component; paths must name a place inside the layer"
            ));
        }
    }
    Ok(p)
}

/// `dir/name` (`name` alone in the root).
pub(crate) fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// The parent of a non-root path (`""` for a top-level name).
pub(crate) fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

/// The proper ancestors of `p`, the root (`""`) first.
pub(crate) fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(&p[..0]).chain(
        p.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(move |(i, _)| &p[..i]),
    )
}

/// Whether `p` lies strictly inside `dir`.
pub(crate) fn is_under(p: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !p.is_empty();
    }
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

/// `p` with its prefix `from` replaced by `to` (`p` is `from` or under it).
pub(crate) fn rebase(p: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = to.to_vec();
    out.extend_from_slice(&p[from.len()..]);
    out
}

/// `root/p` on disk.
pub(crate) fn under(root: &Path, p: &[u8]) -> PathBuf {
    if p.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_request_paths() {
        assert!(check(b"a/b.txt").is_ok());
        assert!(check(b"a\xff").is_ok());
        for bad in [
            &b""[..],
            b"/etc",
            b"a/../b",
            b"..",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn walks_paths() {
        assert_eq!(child(b"", b"a"), b"a");
        assert_eq!(child(b"a", b"b"), b"a/b");
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, [&b""[..], b"a", b"a/b"]);
        assert!(is_under(b"a/b", b"a"));
        assert!(!is_under(b"ab", b"a"));
        assert!(!is_under(b"a", b"a"));
        assert!(is_under(b"a", b""));
        assert_eq!(rebase(b"a/b/c", b"a/b", b"x"), b"x/c");
    }
}
