//! What `limactl mcp serve` lets a client do: the command time-out, the
//! output cap, and which guest paths the file tools accept.
use std::path::{Component, Path};
use std::time::Duration;

use crate::mounts::Mount;

/// A command runs at most this long unless the call asks for less (or the
/// server was started with `--timeout`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// stdout and stderr of a command are each kept up to this many bytes; the
/// rest is dropped and the result says so.
pub const OUTPUT_CAP: usize = 1 << 20;

/// `path` with `.` and `..` resolved lexically, if it is absolute.
pub fn clean_absolute(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Which guest paths the tools accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any absolute path: the instance mounts the home folder (or `/`),
    /// so the guest sees the user's files anyway, as with Lima.
    Anywhere,
    /// Only paths inside these mount points: an instance made with
    /// `--mount-only` (its mounts do not cover the home folder).
    Mounts(Vec<String>),
}

impl Scope {
    /// The scope of an instance with `mounts`, for a user whose home
    /// folder is `home`.
    pub fn of(mounts: &[Mount], home: Option<&Path>) -> Scope {
        let covers_home = mounts.iter().any(|m| {
            m.location == Path::new("/") || home.is_some_and(|h| h.starts_with(&m.location))
        });
        if covers_home {
            Scope::Anywhere
        } else {
            Scope::Mounts(mounts.iter().map(|m| m.mount_point.clone()).collect())
        }
    }

    /// The cleaned guest path for `path`, or one sentence saying why it
    /// is refused.
    pub fn check(&self, path: &str) -> Result<String, String> {
        if path.is_empty() {
            return Err("the path is empty; give an absolute guest path".into());
        }
        let Some(clean) = clean_absolute(path) else {
            return Err(format!(
                "`{path}` is not an absolute path; give the full guest path (starting with /)"
            ));
        };
        match self {
            Scope::Anywhere => Ok(clean),
            Scope::Mounts(points) => {
                if points
                    .iter()
                    .any(|p| Path::new(&clean).starts_with(Path::new(p)))
                {
                    Ok(clean)
                } else if points.is_empty() {
                    Err(format!(
                        "{path} is outside the instance's mounts: it mounts no host folder, so the file tools have nothing to work on"
                    ))
                } else {
                    Err(format!(
                        "{path} is outside every folder this instance mounts ({}); the tools only reach those",
                        points.join(", ")
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_and_must_be_absolute() {
        assert_eq!(clean_absolute("/a/./b/../c/").as_deref(), Some("/a/c"));
        assert_eq!(clean_absolute("/../..").as_deref(), Some("/"));
        assert_eq!(clean_absolute("a/b"), None);
        assert!(Scope::Anywhere
            .check("x")
            .unwrap_err()
            .contains("not an absolute path"));
        assert!(Scope::Anywhere.check("").unwrap_err().contains("empty"));
        assert_eq!(Scope::Anywhere.check("/etc/passwd").unwrap(), "/etc/passwd");
    }

    #[test]
    fn a_mount_only_instance_reaches_only_its_mounts() {
        let s = Scope::Mounts(vec!["/home/u/project".into()]);
        assert_eq!(
            s.check("/home/u/project/src/a.rs").unwrap(),
            "/home/u/project/src/a.rs"
        );
        assert_eq!(s.check("/home/u/project").unwrap(), "/home/u/project");
        for bad in [
            "/etc/passwd",
            "/home/u/project/../secret",
            "/home/u/project2",
        ] {
            let e = s.check(bad).unwrap_err();
            assert!(
                e.contains("outside every folder this instance mounts (/home/u/project)"),
                "{e}"
            );
        }
    }
}
