//! Layer paths as the guest sends them: checked before anything on the
//! host is named by them. A change path is relative to `DIR`,
//! `/`-separated, and never absolute, empty, or with `.`/`..` or empty
//! components: anything else is refused, never "cleaned" into something
//! else (a cleaned path would be one the person did not review).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest sent an unusable path `{shown}`: {why}")]
pub struct BadPath {
    pub shown: String,
    pub why: &'static str,
}

/// The components of a change path, or why it is refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, BadPath> {
    let bad = |why| BadPath {
        shown: show(path),
        why,
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.starts_with(b"/") {
        return Err(bad("it is absolute"));
    }
    if path.contains(&0) {
        return Err(bad("it holds a NUL byte"));
    }
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    for p in &parts {
        match *p {
            b"" => return Err(bad("it has an empty component")),
            b"." => return Err(bad("it has a `.` component")),
            b".." => return Err(bad("it has a `..` component")),
            _ => {}
        }
    }
    Ok(parts)
}

/// A path for people: lossy UTF-8, control characters escaped so a file
/// name cannot rewrite the terminal.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Whether `path` is `dir` or below it (both checked paths).
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_clean_paths_pass() {
        assert_eq!(components(b"a").unwrap(), vec![&b"a"[..]]);
        assert_eq!(
            components(b"src/main.rs").unwrap(),
            vec![&b"src"[..], &b"main.rs"[..]]
        );
        // Names that merely start with dots are names.
        assert_eq!(components(b"...").unwrap(), vec![&b"..."[..]]);
        assert_eq!(components(b".git/HEAD").unwrap().len(), 2);
        // Not UTF-8 is fine: Linux names are bytes.
        assert_eq!(components(b"\xff/x").unwrap().len(), 2);
    }

    #[test]
    fn escaping_or_odd_paths_are_refused() {
        for (p, why) in [
            (&b""[..], "empty"),
            (b"/etc/passwd", "absolute"),
            (b"..", "`..`"),
            (b"a/../../etc", "`..`"),
            (b"a/..", "`..`"),
            (b"./a", "`.`"),
            (b"a//b", "empty component"),
            (b"a/", "empty component"),
            (b"a\0b", "NUL"),
        ] {
            let e = components(p).unwrap_err();
            assert!(e.why.contains(why), "{p:?}: {e}");
        }
    }

    #[test]
    fn shown_paths_cannot_drive_the_terminal() {
        assert_eq!(show(b"a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(show(b"x\ny"), "x\\ny");
        assert_eq!(show(b"caf\xc3\xa9"), "café");
    }

    #[test]
    fn within() {
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(!is_within(b"ab", b"a"));
        assert!(!is_within(b"b/a", b"a"));
    }
}
