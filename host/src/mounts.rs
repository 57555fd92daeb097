//! `mounts:` from `lima.yaml` (Lima's fields, plus a per-mount `mountType`),
//! resolved against the host: `~` expanded, the folder must exist, the mount
//! point defaults to the host path.
//!
//! Mount types: `vsockfs` (ours: the host's `fs-server` over vsock, FUSE in
//! the guest; the default), `9p` (QEMU's virtio-9p), `virtiofs` (an external
//! `virtiofsd`). Lima's `reverse-sshfs` maps to `vsockfs`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountYaml {
    pub location: String,
    pub mount_point: Option<String>,
    pub writable: Option<bool>,
    /// lima-rs extension: the type for this mount only.
    pub mount_type: Option<String>,
    pub sshfs: Option<Value>,
    #[serde(rename = "9p")]
    pub nine_p: Option<NinePYaml>,
    pub virtiofs: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NinePYaml {
    pub security_model: Option<String>,
    pub protocol_version: Option<String>,
    pub msize: Option<String>,
    pub cache: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Vsockfs,
    #[serde(rename = "9p")]
    NineP,
    Virtiofs,
}

impl std::fmt::Display for MountType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountType::Vsockfs => "vsockfs",
            MountType::NineP => "9p",
            MountType::Virtiofs => "virtiofs",
        })
    }
}

pub fn parse_type(s: Option<&str>) -> Result<Option<MountType>, String> {
    Ok(match s {
        None | Some("default") | Some("") => None,
        Some("vsockfs") | Some("reverse-sshfs") => Some(MountType::Vsockfs),
        Some("9p") => Some(MountType::NineP),
        Some("virtiofs") => Some(MountType::Virtiofs),
        Some(other) => {
            return Err(format!(
                "`{other}` is not a mount type; use vsockfs, 9p or virtiofs"
            ))
        }
    })
}

/// A mount ready for the host agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub index: usize,
    pub location: PathBuf,
    pub mount_point: String,
    pub writable: bool,
    pub kind: MountType,
    /// 9p options: msize in bytes, cache mode, security model.
    pub msize: u64,
    pub cache_9p: String,
    pub security_model: String,
    /// Tag for 9p/virtiofs devices and logs.
    pub tag: String,
}

/// A warning for a writable share of `/` or of the whole home folder: the
/// guest (and whatever runs in it) could then change any of the user's files.
pub fn exposure_warning(m: &Mount) -> Option<String> {
    if !m.writable {
        return None;
    }
    let what = if m.location == Path::new("/") {
        "the whole host file system"
    } else if m.location == home() {
        "your whole home folder"
    } else {
        return None;
    };
    Some(format!(
        "mounts[{}] shares {what} ({}) writable with the guest; share a project folder instead, or add `writable: false`",
        m.index,
        m.location.display()
    ))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub fn expand_tilde(p: &str) -> PathBuf {
    if p == "~" {
        home()
    } else if let Some(rest) = p.strip_prefix("~/") {
        home().join(rest)
    } else {
        PathBuf::from(p)
    }
}

/// Makes the missing host folders of `mounts` that sit right inside the
/// system's temp folder, such as the default template's
/// `{{.GlobalTempDir}}/lima`: scratch space that every user of the host
/// shares as they share the temp folder, so it gets the temp folder's
/// mode (1777, sticky). Any other missing folder is left for [`resolve`]
/// to refuse (Lima would make it; a mistyped path would then become an
/// empty share without a word). Errors name the field.
pub fn create_missing(mounts: &[MountYaml]) -> Result<(), (String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(temp) = std::fs::canonicalize(std::env::temp_dir()) else {
        return Ok(());
    };
    for (i, m) in mounts.iter().enumerate() {
        let location = expand_tilde(&m.location);
        if !location.is_absolute() || location.exists() {
            continue;
        }
        let in_temp = location
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p == temp);
        if !in_temp {
            continue;
        }
        let fail = |e: std::io::Error| {
            (
                format!("mounts[{i}].location"),
                format!("cannot create {}: {e}", location.display()),
            )
        };
        match std::fs::create_dir(&location) {
            Ok(()) => std::fs::set_permissions(&location, std::fs::Permissions::from_mode(0o1777))
                .map_err(fail)?,
            // Made meanwhile by another start: theirs stands.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// Checks the mounts; `check_host` also requires each folder to exist (at
/// start; not when a template is merely parsed).
pub fn resolve(
    mounts: &[MountYaml],
    instance_type: Option<&str>,
    check_host: bool,
) -> Result<Vec<Mount>, (String, String)> {
    let default = parse_type(instance_type)
        .map_err(|m| ("mountType".to_string(), m))?
        .unwrap_or(MountType::Vsockfs);
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let field = |f: &str| format!("mounts[{i}].{f}");
        let location = expand_tilde(&m.location);
        if !location.is_absolute() {
            return Err((
                field("location"),
                format!("`{}` must be an absolute path or start with ~", m.location),
            ));
        }
        if check_host && !location.is_dir() {
            let what = if location.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err((
                field("location"),
                format!(
                    "{} {what}; create it or remove the mount",
                    location.display()
                ),
            ));
        }
        let mount_point = match &m.mount_point {
            Some(p) if p.starts_with('~') => {
                return Err((
                    field("mountPoint"),
                    format!("`{p}`: `~` is not allowed for guest paths"),
                ))
            }
            Some(p) if !p.starts_with('/') => {
                return Err((
                    field("mountPoint"),
                    format!("`{p}` must be an absolute guest path"),
                ))
            }
            Some(p) => p.clone(),
            None => location.display().to_string(),
        };
        for system in [
            "/", "/bin", "/dev", "/etc", "/lib", "/proc", "/run", "/sbin", "/sys", "/usr",
        ] {
            if Path::new(&mount_point) == Path::new(system) {
                return Err((
                    field("mountPoint"),
                    format!("{mount_point} is a system directory of the guest"),
                ));
            }
        }
        if !seen.insert(mount_point.clone()) {
            return Err((
                field("mountPoint"),
                format!("{mount_point} is mounted twice"),
            ));
        }
        let kind = parse_type(m.mount_type.as_deref())
            .map_err(|e| (field("mountType"), e))?
            .unwrap_or(default);
        let p9 = m.nine_p.clone().unwrap_or_default();
        let writable = m.writable.unwrap_or(false);
        let msize = match &p9.msize {
            Some(s) => crate::units::parse_size(s).map_err(|e| (field("9p.msize"), e))?,
            None => 128 << 10,
        };
        out.push(Mount {
            index: i,
            location,
            mount_point,
            writable,
            kind,
            msize,
            cache_9p: p9.cache.unwrap_or_else(|| {
                if writable {
                    "mmap".into()
                } else {
                    "fscache".into()
                }
            }),
            security_model: p9.security_model.unwrap_or_else(|| "none".into()),
            tag: format!("lima{i}"),
        });
    }
    Ok(out)
}

/// Where host folder `host` is in the guest: below the mount whose
/// location holds it (the deepest one when mounts nest), translated to that
/// mount's mount point. `None` when no mount holds it. `host` is an absolute
/// path as `getcwd` gives it (symlinks resolved); a location is tried as
/// written and with its symlinks resolved.
pub fn guest_path(mounts: &[Mount], host: &Path) -> Option<String> {
    mounts
        .iter()
        .filter_map(|m| {
            let resolved = std::fs::canonicalize(&m.location).ok();
            [Some(m.location.clone()), resolved]
                .into_iter()
                .flatten()
                .find_map(|loc| {
                    let rest = host.strip_prefix(&loc).ok()?;
                    Some((loc.components().count(), m, rest.to_path_buf()))
                })
        })
        .max_by_key(|(depth, _, _)| *depth)
        .map(|(_, m, rest)| {
            if rest.as_os_str().is_empty() {
                m.mount_point.clone()
            } else {
                Path::new(&m.mount_point).join(rest).display().to_string()
            }
        })
}

/// `--mount DIR[:w]` → a mount entry.
pub fn from_flag(flag: &str) -> MountYaml {
    let (dir, writable) = match flag.strip_suffix(":w") {
        Some(d) => (d, true),
        None => (flag, false),
    };
    let dir = expand_tilde(dir);
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    let dir = clean(&dir);
    MountYaml {
        location: dir.display().to_string(),
        writable: Some(writable),
        ..Default::default()
    }
}

/// `path` with `.` parts dropped and `..` taking the part before it away,
/// by the text alone (as Lima's `filepath.Abs` does): `--mount .:w` from a
/// project folder names that folder, not `folder/.`.
pub fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_folders_are_absolute_and_clean() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(from_flag(".:w").location, cwd.display().to_string());
        assert_eq!(from_flag(".:w").writable, Some(true));
        assert_eq!(from_flag("./").location, cwd.display().to_string());
        assert_eq!(from_flag("/a/./b/../c/").location, "/a/c");
        assert_eq!(from_flag("/../x").location, "/x");
        let parent = cwd.parent().unwrap_or(&cwd).display().to_string();
        assert_eq!(from_flag("..").location, parent);
    }

    #[test]
    fn missing_folders_in_the_temp_folder_are_made_shared_like_it() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        let shared = std::env::temp_dir().join(format!(
            "lima-rs-mounts-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir(&shared);
        let yaml = |p: &Path| MountYaml {
            location: p.display().to_string(),
            ..Default::default()
        };
        create_missing(&[yaml(&deep), yaml(&shared), yaml(dir.path())]).unwrap();
        let shared_mode = mode(&shared);
        std::fs::remove_dir(&shared).unwrap();
        assert_eq!(shared_mode, 0o1777);
        // Anywhere else a missing folder stays missing, for `resolve` to refuse.
        assert!(!deep.exists() && !dir.path().join("a").exists());
        // What exists is left alone.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        create_missing(&[yaml(dir.path())]).unwrap();
        assert_eq!(mode(dir.path()), 0o750);
    }

    #[test]
    fn writable_shares_of_root_or_home_are_warned_about() {
        let m = |loc: &str, writable: bool| Mount {
            index: 3,
            location: PathBuf::from(loc),
            mount_point: loc.into(),
            writable,
            kind: MountType::Vsockfs,
            msize: 0,
            cache_9p: String::new(),
            security_model: String::new(),
            tag: "t".into(),
        };
        let w = exposure_warning(&m("/", true)).unwrap();
        assert!(
            w.contains("mounts[3]") && w.contains("whole host file system"),
            "{w}"
        );
        assert!(exposure_warning(&m("/", false)).is_none());
        let home = home().display().to_string();
        assert!(exposure_warning(&m(&home, true))
            .unwrap()
            .contains("home folder"));
        assert!(exposure_warning(&m("/srv/project", true)).is_none());
    }

    fn parse(yaml: &str) -> Vec<MountYaml> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_tilde_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let m = resolve(
            &parse(&format!(
                "- location: {d}\n- location: \"~\"\n  mountPoint: /mnt/home\n  mountType: 9p\n"
            )),
            None,
            true,
        )
        .unwrap();
        assert_eq!(m[0].mount_point, d);
        assert!(!m[0].writable);
        assert_eq!(m[0].kind, MountType::Vsockfs);
        assert_eq!(m[1].location, home());
        assert_eq!(m[1].kind, MountType::NineP);
        assert_eq!(m[1].cache_9p, "fscache");
        let m = resolve(
            &parse(&format!("- location: {d}\n  writable: true\n")),
            Some("virtiofs"),
            true,
        )
        .unwrap();
        assert_eq!(m[0].kind, MountType::Virtiofs);
        let m = resolve(
            &parse(&format!("- location: {d}\n")),
            Some("reverse-sshfs"),
            true,
        )
        .unwrap();
        assert_eq!(m[0].kind, MountType::Vsockfs);
    }

    #[test]
    fn errors_name_the_mount() {
        let err = resolve(&parse("- location: /no/such/dir\n"), None, true).unwrap_err();
        assert_eq!(err.0, "mounts[0].location");
        assert!(err.1.contains("/no/such/dir does not exist"), "{}", err.1);
        assert!(resolve(&parse("- location: /no/such/dir\n"), None, false).is_ok());
        let err =
            resolve(&parse("- location: /tmp\n  mountPoint: /etc\n"), None, true).unwrap_err();
        assert!(err.1.contains("system directory"));
        let err = resolve(&parse("- location: /tmp\n  mountType: nfs\n"), None, true).unwrap_err();
        assert_eq!(err.0, "mounts[0].mountType");
        let err = resolve(&parse("- location: relative\n"), None, false).unwrap_err();
        assert!(err.1.contains("absolute"));
    }

    #[test]
    fn host_folders_map_to_guest_paths_through_the_deepest_mount() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("proj/sub")).unwrap();
        let m = resolve(
            &parse(&format!(
                "- location: {d}\n  mountPoint: /mnt/all\n- location: {d}/proj\n"
            )),
            None,
            true,
        )
        .unwrap();
        assert_eq!(
            guest_path(&m, &dir.path().join("proj/sub")).as_deref(),
            Some(format!("{d}/proj/sub").as_str())
        );
        assert_eq!(guest_path(&m, dir.path()).as_deref(), Some("/mnt/all"));
        assert_eq!(
            guest_path(&m, &dir.path().join("other")).as_deref(),
            Some("/mnt/all/other")
        );
        assert_eq!(guest_path(&m, Path::new("/")), None);
        // A sibling whose name only starts the same is not inside.
        let sibling = PathBuf::from(format!("{d}x"));
        assert_eq!(guest_path(&m, &sibling), None);
        // A location reached through a symlink still matches the real path.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("proj"), &link).unwrap();
        let m = resolve(
            &parse(&format!(
                "- location: {}\n  mountPoint: /w\n",
                link.display()
            )),
            None,
            true,
        )
        .unwrap();
        assert_eq!(
            guest_path(
                &m,
                &std::fs::canonicalize(dir.path().join("proj/sub")).unwrap()
            )
            .as_deref(),
            Some("/w/sub")
        );
    }

    #[test]
    fn mount_flags() {
        let m = from_flag("/tmp/x:w");
        assert_eq!(m.location, "/tmp/x");
        assert_eq!(m.writable, Some(true));
        assert_eq!(from_flag("/tmp/y").writable, Some(false));
    }
}
