//! Guest users: who a command runs as, read from the guest's own
//! `/etc/passwd` and `/etc/group` (parsed here: the agent is a static musl
//! binary and must not depend on NSS), and, in our own images where the agent
//! is init, making the guest user the host asked for (`lima.user=` on the
//! kernel command line) before anything runs.
//!
//! The parsing and the editing of the files are pure functions, unit-tested;
//! only [`lookup`], [`groups_of`] and [`create`] touch the guest's files.
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The shell when an account's is missing from the guest (our initramfs has
/// busybox's `/bin/sh` and no bash).
pub const FALLBACK_SHELL: &str = "/bin/sh";

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl Account {
    fn root() -> Self {
        Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: FALLBACK_SHELL.into(),
        }
    }

    /// The account's shell if the guest has it, else [`FALLBACK_SHELL`].
    pub fn usable_shell(&self) -> String {
        usable_shell(&self.shell)
    }
}

fn usable_shell(shell: &str) -> String {
    if !shell.is_empty() && Path::new(shell).is_file() {
        shell.to_string()
    } else {
        FALLBACK_SHELL.to_string()
    }
}

/// The accounts in `/etc/passwd` text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// The supplementary groups of `name` in `/etc/group` text, `primary` first.
pub fn parse_groups(text: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut gids = vec![primary];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m.trim() == name) && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    gids
}

/// The account `name` (`None`: root) from the guest's `/etc/passwd`.
pub fn lookup(name: Option<&str>) -> Result<Account, String> {
    let text = std::fs::read_to_string("/etc/passwd");
    let wanted = name.unwrap_or("root");
    let found = text
        .as_deref()
        .ok()
        .and_then(|t| parse_passwd(t).into_iter().find(|a| a.name == wanted));
    match (found, name) {
        (Some(a), _) => Ok(a),
        // A guest without root in its passwd still has root.
        (None, None) => Ok(Account::root()),
        (None, Some(n)) => Err(match text {
            Ok(_) => format!("user `{n}` does not exist in the guest (not in /etc/passwd)"),
            Err(e) => format!("user `{n}`: cannot read the guest's /etc/passwd: {e}"),
        }),
    }
}

/// `account`'s groups from the guest's `/etc/group`, its primary group first.
pub fn groups_of(account: &Account) -> Vec<u32> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    parse_groups(&text, &account.name, account.gid)
}

/// The guest user the host asks init to make, from
/// `lima.user=NAME:UID:GID:HOME:SHELL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl NewUser {
    pub fn parse(value: &str) -> Result<Self, String> {
        let f: Vec<&str> = value.split(':').collect();
        let bad = |why: &str| format!("lima.user={value}: {why} (want NAME:UID:GID:HOME:SHELL)");
        let [name, uid, gid, home, shell] = f.as_slice() else {
            return Err(bad("wrong number of fields"));
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad("bad user name"));
        }
        let uid: u32 = uid.parse().map_err(|_| bad("bad uid"))?;
        let gid: u32 = gid.parse().map_err(|_| bad("bad gid"))?;
        if uid == 0 {
            return Err(bad("uid 0 is root's"));
        }
        if !home.starts_with('/') || !shell.starts_with('/') {
            return Err(bad("home and shell must be absolute paths"));
        }
        Ok(NewUser {
            name: name.to_string(),
            uid,
            gid,
            home: home.to_string(),
            shell: shell.to_string(),
        })
    }
}

/// `text` (passwd, group or shadow) without the lines for `name`, plus `line`.
fn replace_entry(text: &str, name: &str, line: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split(':').next() != Some(name))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(line);
    out.push('\n');
    out
}

/// The three lines that make `u` (passwd, group, shadow); `shell` is what
/// the guest can run; `days` is today in days since 1970 (shadow's date).
fn entries(u: &NewUser, shell: &str, days: u64) -> [String; 3] {
    [
        format!(
            "{0}:x:{1}:{2}:{0}:{3}:{shell}",
            u.name, u.uid, u.gid, u.home
        ),
        format!("{}:x:{}:", u.name, u.gid),
        // No password: nobody logs in with one (the host reaches the guest
        // through the agent).
        format!("{}:!:{days}:0:99999:7:::", u.name),
    ]
}

/// Makes the guest user: its passwd, group and shadow lines (replacing ones
/// of the same name, as the files are rebuilt each boot from the image),
/// and its home, owned by it with mode 0700, filled from `/etc/skel` when
/// new. With Lima's `/home/NAME.guest` home, `/home/NAME.linux` links to
/// it, as in Lima. Every failure is returned, naming the file.
pub fn create(u: &NewUser) -> Result<(), String> {
    let shell = usable_shell(&u.shell);
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let [passwd, group, shadow] = entries(u, &shell, days);
    for (path, line, mode) in [
        ("/etc/passwd", passwd, 0o644),
        ("/etc/group", group, 0o644),
        ("/etc/shadow", shadow, 0o640),
    ] {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let existed = Path::new(path).exists();
        std::fs::write(path, replace_entry(&old, &u.name, &line))
            .map_err(|e| format!("cannot write {path}: {e}"))?;
        if !existed {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
    let home = Path::new(&u.home);
    if !home.exists() {
        if let Some(parent) = home.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(home)
            .map_err(|e| format!("cannot create the home {}: {e}", home.display()))?;
        copy_skel(Path::new("/etc/skel"), home, u.uid, u.gid);
        chown(home, u.uid, u.gid)?;
    }
    // Passwordless sudo, as Lima's guest user has, where the image has sudo.
    let sudoers = Path::new("/etc/sudoers.d");
    if sudoers.is_dir() {
        let path = sudoers.join("90-lima-user");
        std::fs::write(&path, format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name))
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(stem) = u.home.strip_suffix(".guest") {
        let link = format!("{stem}.linux");
        if std::fs::symlink_metadata(&link).is_err() {
            let target = home.file_name().map(Path::new).unwrap_or(home);
            let _ = std::os::unix::fs::symlink(target, &link);
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))
}

/// Copies the files of `skel` (one level: Debian's are dotfiles) into a new
/// home, owned by the user. Best effort.
fn copy_skel(skel: &Path, home: &Path, uid: u32, gid: u32) {
    let Ok(entries) = std::fs::read_dir(skel) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let to = home.join(e.file_name());
        if std::fs::copy(e.path(), &to).is_ok() {
            let _ = chown(&to, uid, gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          broken line\n\
                          alice:x:1000:1000:Alice,,,:/home/alice.guest:/bin/zsh\n";

    #[test]
    fn accounts_from_passwd() {
        let a = parse_passwd(PASSWD);
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[2],
            Account {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice.guest".into(),
                shell: "/bin/zsh".into(),
            }
        );
    }

    #[test]
    fn groups_list_the_primary_group_first_and_memberships_once() {
        let group = "root:x:0:\nsudo:x:27:bob,alice\ndocker:x:999: alice \nalice:x:1000:\nwheel:x:10:alicex\n";
        assert_eq!(parse_groups(group, "alice", 1000), vec![1000, 27, 999]);
        assert_eq!(parse_groups(group, "carol", 5), vec![5]);
    }

    #[test]
    fn the_kernel_parameter_names_every_field() {
        let u = NewUser::parse("lima:1000:1000:/home/lima.guest:/bin/bash").unwrap();
        assert_eq!(u.name, "lima");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/lima.guest");
        assert_eq!(u.shell, "/bin/bash");
        for bad in [
            "lima:1000:1000:/home/lima",
            "li ma:1:1:/h:/bin/sh",
            "lima:x:1:/h:/bin/sh",
            "lima:0:0:/root:/bin/sh",
            "lima:1:1:home:/bin/sh",
            "",
        ] {
            let e = NewUser::parse(bad).unwrap_err();
            assert!(e.contains("NAME:UID:GID:HOME:SHELL"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_entry_replaces_the_one_of_the_same_name_only() {
        let u = NewUser::parse("alice:1001:1001:/home/alice.guest:/bin/bash").unwrap();
        let [p, g, s] = entries(&u, "/bin/sh", 20000);
        assert_eq!(p, "alice:x:1001:1001:alice:/home/alice.guest:/bin/sh");
        assert_eq!(g, "alice:x:1001:");
        assert_eq!(s, "alice:!:20000:0:99999:7:::");
        let out = replace_entry(PASSWD, "alice", &p);
        let accounts = parse_passwd(&out);
        assert_eq!(accounts.len(), 3);
        assert_eq!(accounts[2].uid, 1001);
        assert!(out.contains("broken line\n"));
        // A prefix of another name is another name.
        let out = replace_entry("alicex:x:5:5::/:/bin/sh\n", "alice", &p);
        assert!(out.starts_with("alicex:"), "{out}");
        assert_eq!(replace_entry("", "alice", &g), "alice:x:1001:\n");
    }

    #[test]
    fn a_missing_shell_falls_back_to_sh() {
        assert_eq!(usable_shell("/no/such/shell"), FALLBACK_SHELL);
        assert_eq!(usable_shell(""), FALLBACK_SHELL);
        assert_eq!(usable_shell("/bin/sh"), "/bin/sh");
    }
}
