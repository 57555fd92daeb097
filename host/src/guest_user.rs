//! Who we are inside a distro guest: the user cloud-init creates, and the
//! guest's hostname.
//!
//! Lima's rules, which we keep so that paths and habits carry over:
//!
//! - the name is the host user's name, and the UID the host user's UID, so
//!   files written to a shared folder from either side have the same owner;
//! - a host name that is not a portable Linux user name (`^[a-z_][a-z0-9_-]*$`,
//!   at most 32 bytes), or is `admin` (a group name on some distros), becomes
//!   `lima`; the UID stays the host's;
//! - as root on the host (UID 0) the guest user is `lima` with UID 1000
//!   (Lima's own fallback UID), since the guest's root is not ours to be;
//! - home is `/home/NAME.guest` (Lima 2's rule; Lima 1 used
//!   `/home/NAME.linux`, which the boot script keeps as a symlink), shell
//!   `/bin/bash`, comment the host user's full name;
//! - `user:` in `lima.yaml` (`name`, `comment`, `home`, `uid`, `shell`)
//!   overrides any of these; `home` may use `{{.User}}`, `{{.UID}}`,
//!   `{{.Name}}` (the instance) and `{{.Hostname}}`.
//!
//! Lima passes an explicit `user.name` through unchecked; we refuse the few
//! values that would corrupt `/etc/passwd` or sudoers instead of letting
//! cloud-init fail inside the guest, where nobody sees why.
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

/// The guest user's name when the host's cannot be used.
pub const FALLBACK_NAME: &str = "lima";
/// The guest user's UID when the host user is root.
pub const FALLBACK_UID: u32 = 1000;
/// The login shell unless `user.shell` says otherwise.
pub const DEFAULT_SHELL: &str = "/bin/bash";

#[derive(Debug, thiserror::Error)]
pub enum GuestUserError {
    #[error("cannot look up the current host user (UID {uid}) in the user database")]
    NoHostUser {
        uid: u32,
        #[source]
        source: Option<nix::Error>,
    },
    #[error("{origin}: field `user`: {msg}")]
    Parse { origin: String, msg: String },
    #[error("lima.yaml: user.{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

/// The host user, as the guest user's defaults come from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub name: String,
    pub uid: u32,
    /// The first field of the GECOS entry (the full name), if any.
    pub full_name: Option<String>,
}

impl HostUser {
    /// The user this process runs as (real UID), from the user database.
    pub fn current() -> Result<HostUser, GuestUserError> {
        let uid = nix::unistd::getuid();
        let no_user = |source| GuestUserError::NoHostUser {
            uid: uid.as_raw(),
            source,
        };
        let user = nix::unistd::User::from_uid(uid)
            .map_err(|e| no_user(Some(e)))?
            .ok_or_else(|| no_user(None))?;
        let gecos = user.gecos.to_string_lossy();
        let full_name = gecos.split(',').next().unwrap_or("").trim();
        Ok(HostUser {
            name: user.name,
            uid: uid.as_raw(),
            full_name: (!full_name.is_empty()).then(|| full_name.to_string()),
        })
    }
}

/// `user:` in `lima.yaml`, every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserYaml {
    pub name: Option<String>,
    pub comment: Option<String>,
    pub home: Option<String>,
    pub uid: Option<u32>,
    pub shell: Option<String>,
}

impl UserYaml {
    /// Reads the raw `user:` value of [`crate::config::LimaYaml`]; `origin`
    /// names the file in errors. `null` (as in Lima's templates) is no
    /// override.
    pub fn from_value(value: &Value, origin: &str) -> Result<UserYaml, GuestUserError> {
        if value.is_null() {
            return Ok(UserYaml::default());
        }
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("`{path}`: {inner}")
            };
            GuestUserError::Parse {
                origin: origin.to_string(),
                msg,
            }
        })
    }
}

/// The user cloud-init creates in a distro guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestUser {
    pub name: String,
    pub uid: u32,
    /// The GECOS comment (full name); `None` leaves it empty.
    pub comment: Option<String>,
    /// Absolute path of the home folder.
    pub home: String,
    /// Absolute path of the login shell.
    pub shell: String,
}

impl GuestUser {
    /// Applies Lima's rules (module docs) to `host`, then `overrides`.
    /// `instance` is the instance name, for `{{.Name}}` and `{{.Hostname}}`
    /// in `user.home`.
    pub fn resolve(
        host: &HostUser,
        overrides: Option<&UserYaml>,
        instance: &str,
    ) -> Result<GuestUser, GuestUserError> {
        let none = UserYaml::default();
        let o = overrides.unwrap_or(&none);

        let (default_name, default_uid) = if host.uid == 0 {
            (FALLBACK_NAME.to_string(), FALLBACK_UID)
        } else if is_portable_user_name(&host.name) && host.name != "admin" {
            (host.name.clone(), host.uid)
        } else {
            (FALLBACK_NAME.to_string(), host.uid)
        };

        let name = match &o.name {
            Some(n) => {
                check_name(n)?;
                n.clone()
            }
            None => default_name,
        };
        let uid = match o.uid {
            Some(u) => {
                check_uid(u)?;
                u
            }
            None => default_uid,
        };
        let comment = match &o.comment {
            Some(c) => {
                check_comment(c)?;
                (!c.is_empty()).then(|| c.clone())
            }
            // The host's name is only a default: one that `useradd` would
            // refuse is dropped rather than failing the start.
            None => host
                .full_name
                .clone()
                .filter(|c| check_comment(c).is_ok() && !c.is_empty()),
        };
        let home = match &o.home {
            Some(h) => {
                let h = expand_home(h, &name, uid, instance)?;
                check_path("home", &h)?;
                h
            }
            None => default_home(&name),
        };
        let shell = match &o.shell {
            Some(s) => {
                check_path("shell", s)?;
                s.clone()
            }
            None => DEFAULT_SHELL.to_string(),
        };
        Ok(GuestUser {
            name,
            uid,
            comment,
            home,
            shell,
        })
    }

    /// Its primary group: the same number as the UID, which `useradd`
    /// (cloud-init's, and our own images' agent) gives a new user's group
    /// when it is free.
    pub fn gid(&self) -> u32 {
        self.uid
    }

    /// The kernel parameter with which our own images' agent (PID 1) makes
    /// this user at boot: `lima.user=NAME:UID:GID:HOME:SHELL` (`resolve`
    /// refuses `:` in every field).
    pub fn kernel_param(&self) -> String {
        format!(
            "lima.user={}:{}:{}:{}:{}",
            self.name,
            self.uid,
            self.gid(),
            self.home,
            self.shell
        )
    }

    /// Lima 1's home, `/home/NAME.linux`, which the guest keeps as a symlink
    /// to the home when the home is the default one (`None` otherwise).
    pub fn legacy_home_link(&self) -> Option<String> {
        (self.home == default_home(&self.name)).then(|| format!("/home/{}.linux", self.name))
    }
}

/// The default home of a guest user named `name`.
pub fn default_home(name: &str) -> String {
    format!("/home/{name}.guest")
}

/// The guest's hostname: `lima-NAME`, with the `.` and `_` that instance
/// names allow turned into `-` (as Lima does), cut to the 63 bytes of a DNS
/// label.
pub fn guest_hostname(instance: &str) -> String {
    let mut h: String = format!("lima-{instance}")
        .chars()
        .map(|c| if c == '.' || c == '_' { '-' } else { c })
        .collect();
    h.truncate(63);
    while h.ends_with('-') {
        h.pop();
    }
    h
}

/// A name every distro's `useradd` takes as it is.
fn is_portable_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn invalid(field: &'static str, msg: String) -> GuestUserError {
    GuestUserError::Invalid { field, msg }
}

fn check_name(name: &str) -> Result<(), GuestUserError> {
    let bad = |why: &str| {
        Err(invalid(
            "name",
            format!("`{name}` {why}; use letters, digits, `_`, `-` and `.` (for example `lima`), or leave `name` out to use your host user's name"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 32 {
        return bad("is longer than 32 bytes");
    }
    if name.starts_with('-') {
        return bad("starts with `-`");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("is all digits, which tools read as a UID");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("has a character user names cannot hold");
    }
    if name == "root" {
        return Err(invalid(
            "name",
            "`root` is the guest's own administrator; pick another name (the guest user has passwordless sudo)".into(),
        ));
    }
    Ok(())
}

fn check_uid(uid: u32) -> Result<(), GuestUserError> {
    match uid {
        0 => Err(invalid(
            "uid",
            "0 is root in the guest; pick another UID (1000 or more is usual), or leave `uid` out to use yours".into(),
        )),
        u32::MAX => Err(invalid(
            "uid",
            format!("{uid} means \"no user\" (-1) to Linux; pick another UID (1000 or more is usual)"),
        )),
        _ => Ok(()),
    }
}

fn check_comment(comment: &str) -> Result<(), GuestUserError> {
    if comment.contains(':') || comment.chars().any(char::is_control) {
        return Err(invalid(
            "comment",
            format!("{comment:?} holds `:` or a control character, which /etc/passwd cannot store; remove them"),
        ));
    }
    Ok(())
}

fn check_path(field: &'static str, path: &str) -> Result<(), GuestUserError> {
    if !path.starts_with('/') {
        return Err(invalid(
            field,
            format!("`{path}` must be an absolute path (starting with `/`)"),
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(field, format!("`{path}` must not contain `..`")));
    }
    if path.contains(':') || path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            format!("{path:?} holds `:`, a space or a control character, which /etc/passwd cannot store; pick a plain path"),
        ));
    }
    Ok(())
}

/// Fills the template variables Lima allows in `user.home`.
fn expand_home(home: &str, user: &str, uid: u32, instance: &str) -> Result<String, GuestUserError> {
    let mut out = String::new();
    let mut rest = home;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            invalid(
                "home",
                format!("`{home}` opens `{{{{` without closing it with `}}}}`"),
            )
        })?;
        let var = after[..end].trim();
        match var {
            ".User" => out.push_str(user),
            ".UID" => out.push_str(&uid.to_string()),
            ".Name" => out.push_str(instance),
            ".Hostname" => out.push_str(&guest_hostname(instance)),
            other => {
                return Err(invalid(
                    "home",
                    format!("`{{{{{other}}}}}` is not a variable we fill here; use {{{{.User}}}}, {{{{.UID}}}}, {{{{.Name}}}} or {{{{.Hostname}}}}"),
                ))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, uid: u32) -> HostUser {
        HostUser {
            name: name.into(),
            uid,
            full_name: Some("Ada Lovelace".into()),
        }
    }

    fn yaml(text: &str) -> UserYaml {
        let v: Value = serde_yaml_ng::from_str(text).unwrap();
        UserYaml::from_value(&v, "lima.yaml").unwrap()
    }

    fn err(host: &HostUser, text: &str) -> String {
        GuestUser::resolve(host, Some(&yaml(text)), "dev")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_host_user_becomes_the_guest_user() {
        let g = GuestUser::resolve(&host("ada", 1234), None, "dev").unwrap();
        assert_eq!(
            g,
            GuestUser {
                name: "ada".into(),
                uid: 1234,
                comment: Some("Ada Lovelace".into()),
                home: "/home/ada.guest".into(),
                shell: "/bin/bash".into(),
            }
        );
        assert_eq!(g.legacy_home_link().as_deref(), Some("/home/ada.linux"));
    }

    #[test]
    fn root_and_unusable_names_become_lima() {
        // Root: the fallback name and UID.
        let g = GuestUser::resolve(&host("root", 0), None, "dev").unwrap();
        assert_eq!((g.name.as_str(), g.uid), ("lima", 1000));
        assert_eq!(g.home, "/home/lima.guest");
        // A name useradd would refuse keeps the host's UID.
        for name in [
            "Ada",
            "ada.lovelace",
            "ada@example.com",
            "1ada",
            "admin",
            "",
        ] {
            let g = GuestUser::resolve(&host(name, 501), None, "dev").unwrap();
            assert_eq!((g.name.as_str(), g.uid), ("lima", 501), "{name}");
        }
        let long = "a".repeat(33);
        assert_eq!(
            GuestUser::resolve(&host(&long, 501), None, "dev")
                .unwrap()
                .name,
            "lima"
        );
        for name in ["_ada", "ada-1", "a_b"] {
            let g = GuestUser::resolve(&host(name, 501), None, "dev").unwrap();
            assert_eq!(g.name, name);
        }
    }

    #[test]
    fn user_yaml_overrides_every_field() {
        let o = yaml(
            "name: builder\ncomment: CI\nuid: 2000\nshell: /bin/sh\nhome: /home/{{.User}}-{{ .UID }}-{{.Name}}-{{.Hostname}}",
        );
        let g = GuestUser::resolve(&host("ada", 1234), Some(&o), "my_vm").unwrap();
        assert_eq!(
            g,
            GuestUser {
                name: "builder".into(),
                uid: 2000,
                comment: Some("CI".into()),
                home: "/home/builder-2000-my_vm-lima-my-vm".into(),
                shell: "/bin/sh".into(),
            }
        );
        // Not the default home: no Lima 1 symlink.
        assert_eq!(g.legacy_home_link(), None);
        // As root, an explicit name and UID still win.
        let g =
            GuestUser::resolve(&host("root", 0), Some(&yaml("name: ci\nuid: 1500")), "x").unwrap();
        assert_eq!((g.name.as_str(), g.uid), ("ci", 1500));
        // An explicit empty comment clears the host's full name.
        let g = GuestUser::resolve(&host("ada", 1234), Some(&yaml("comment: ''")), "x").unwrap();
        assert_eq!(g.comment, None);
        // Nulls, as Lima's template writes them, are no override.
        let g = GuestUser::resolve(
            &host("ada", 1234),
            Some(&yaml("name: null\nuid: null")),
            "x",
        )
        .unwrap();
        assert_eq!((g.name.as_str(), g.uid), ("ada", 1234));
        let v: Value = serde_yaml_ng::from_str("null").unwrap();
        assert_eq!(UserYaml::from_value(&v, "f").unwrap(), UserYaml::default());
    }

    #[test]
    fn a_host_full_name_that_passwd_cannot_hold_is_dropped() {
        let mut h = host("ada", 1234);
        h.full_name = Some("Ada: Countess".into());
        assert_eq!(GuestUser::resolve(&h, None, "x").unwrap().comment, None);
        h.full_name = None;
        assert_eq!(GuestUser::resolve(&h, None, "x").unwrap().comment, None);
    }

    #[test]
    fn bad_overrides_name_the_field_and_the_fix() {
        let h = host("ada", 1234);
        for (text, field, needle) in [
            ("uid: 0", "user.uid", "0 is root"),
            ("uid: 4294967295", "user.uid", "pick another UID"),
            ("name: root", "user.name", "pick another name"),
            ("name: ''", "user.name", "is empty"),
            ("name: 'a b'", "user.name", "cannot hold"),
            ("name: 'a:b'", "user.name", "cannot hold"),
            ("name: '-x'", "user.name", "starts with `-`"),
            ("name: '1234'", "user.name", "all digits"),
            ("home: relative/path", "user.home", "absolute path"),
            ("home: /home/../etc", "user.home", "`..`"),
            ("home: '/home/a b'", "user.home", "a space"),
            ("home: '/home/{{.Param.X}}'", "user.home", "{{.Param.X}}"),
            ("home: '/home/{{.User'", "user.home", "without closing"),
            ("shell: bash", "user.shell", "absolute path"),
            ("comment: 'a:b'", "user.comment", "remove them"),
        ] {
            let e = err(&h, text);
            assert!(
                e.starts_with(&format!("lima.yaml: {field}: ")),
                "{text}: {e}"
            );
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn malformed_user_yaml_names_the_file_and_the_field() {
        for (text, needle) in [
            ("nmae: x", "nmae"),
            ("uid: -5", "`uid`"),
            ("uid: lots", "`uid`"),
            ("[1, 2]", "struct UserYaml"),
        ] {
            let v: Value = serde_yaml_ng::from_str(text).unwrap();
            let e = UserYaml::from_value(&v, "/x/lima.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/x/lima.yaml: field `user`: "), "{e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn hostnames_follow_lima() {
        assert_eq!(guest_hostname("default"), "lima-default");
        assert_eq!(guest_hostname("a.b_c-d"), "lima-a-b-c-d");
        let long = guest_hostname(&"x".repeat(76));
        assert_eq!(long.len(), 63);
        // A cut that lands after a separator drops it.
        let name = format!("{}_{}", "y".repeat(57), "z".repeat(10));
        assert_eq!(guest_hostname(&name), format!("lima-{}", "y".repeat(57)));
    }

    #[test]
    fn the_current_host_user_is_found() {
        let h = HostUser::current().unwrap();
        assert_eq!(h.uid, nix::unistd::getuid().as_raw());
        assert!(!h.name.is_empty());
    }
}
