//! The SSH key that lets the host user into distro guests, made once per
//! `LIMA_HOME` where Lima keeps it: `$LIMA_HOME/_config/user` (private,
//! OpenSSH format, unencrypted, 0600) and `user.pub` beside it. A `LIMA_HOME`
//! that Lima made works as it is; so does `ssh -i $LIMA_HOME/_config/user`.
//!
//! Two first starts may race to make the key. Each writes a complete key to
//! a temporary file and then hard-links it to `user`, which succeeds for
//! exactly one of them; both then read the winner back and derive `user.pub`
//! from it, so the pair always matches and no reader sees half a key.
//!
//! `ssh.loadDotSSHPubKeys` (Lima's default: false since Lima 1.0) also
//! authorises the host user's own `~/.ssh/*.pub`: [`dot_ssh_public_keys`].
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

/// Under `LIMA_HOME`: Lima's folder for files shared by all instances.
pub const CONFIG_DIR: &str = "_config";
/// The private key's file name in [`CONFIG_DIR`].
pub const PRIVATE_KEY_FILE: &str = "user";
/// The public key's file name in [`CONFIG_DIR`].
pub const PUBLIC_KEY_FILE: &str = "user.pub";
/// The comment a new key carries (Lima's).
pub const KEY_COMMENT: &str = "lima";

#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the SSH key {path} can be read by other users (mode {mode:03o}); run `chmod 600 {path}`, or move it away and a new key is made")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} is not an OpenSSH private key; move it away and a new key is made")]
    NotAKey {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("the SSH key {path} has a passphrase, which we cannot type; move it away and a new key is made")]
    Encrypted { path: PathBuf },
    #[error("cannot make an SSH key")]
    Generate(#[source] ssh_key::Error),
}

/// The key pair every instance of a `LIMA_HOME` authorises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// For `ssh -i` (and `IdentityFile` in `ssh.config`).
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// `user.pub` as one `authorized_keys` line, without the newline.
    pub public_line: String,
}

/// Returns the key pair of `lima_home`, making it first if there is none.
pub fn ensure(lima_home: &Path) -> Result<KeyPair, SshKeyError> {
    let dir = lima_home.join(CONFIG_DIR);
    crate::privacy::create_private_dir(&dir).map_err(|source| SshKeyError::Io {
        action: "cannot create",
        path: dir.clone(),
        source,
    })?;
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);

    if !private_path.exists() {
        make_key(&private_path)?;
    }
    let key = read_private_key(&private_path)?;
    let public_line = key
        .public_key()
        .to_openssh()
        .map_err(SshKeyError::Generate)?;

    // `user.pub` follows the private key: written when missing, rewritten
    // when it names another key.
    let current = std::fs::read_to_string(&public_path).ok();
    let matches = current
        .as_deref()
        .and_then(|t| PublicKey::from_openssh(t.trim()).ok())
        .is_some_and(|p| p.key_data() == key.public_key().key_data());
    let public_line = match current {
        Some(text) if matches => text.trim().to_string(),
        _ => {
            if current.is_some() {
                tracing::warn!(
                    "{} does not match {}; rewriting it",
                    public_path.display(),
                    private_path.display()
                );
            }
            write_atomically(&public_path, format!("{public_line}\n").as_bytes())?;
            public_line
        }
    };
    Ok(KeyPair {
        private_path,
        public_path,
        public_line,
    })
}

/// The public keys in `home/.ssh/*.pub`, one line each, in file-name order;
/// files that cannot be read and lines that are not keys are skipped.
pub fn dot_ssh_public_keys(home: &Path) -> Vec<String> {
    let dir = home.join(".ssh");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
        .collect();
    files.sort();
    let mut keys = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            tracing::debug!("skipping unreadable {}", f.display());
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if PublicKey::from_openssh(line).is_ok() {
                keys.push(line.to_string());
            } else {
                tracing::debug!(
                    "skipping a line of {} that is not a public key",
                    f.display()
                );
            }
        }
    }
    keys
}

/// The keys a guest authorises: `pair`'s, then (with
/// `ssh.loadDotSSHPubKeys`) those of `host_home/.ssh/*.pub`, each once.
pub fn authorized_keys(pair: &KeyPair, load_dot_ssh: bool, host_home: &Path) -> Vec<String> {
    let mut keys = vec![pair.public_line.clone()];
    if load_dot_ssh {
        for k in dot_ssh_public_keys(host_home) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

fn make_key(private_path: &Path) -> Result<(), SshKeyError> {
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(SshKeyError::Generate)?;
    key.set_comment(KEY_COMMENT);
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(SshKeyError::Generate)?;
    let tmp = write_temp(private_path, pem.as_bytes())?;
    // Only one racer's link succeeds; the losers drop their keys and use the
    // winner's.
    let linked = std::fs::hard_link(&tmp, private_path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SshKeyError::Io {
            action: "cannot create",
            path: private_path.to_path_buf(),
            source,
        }),
    }
}

fn read_private_key(path: &Path) -> Result<PrivateKey, SshKeyError> {
    let io = |action, source| SshKeyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| io("cannot read", e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SshKeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| io("cannot read", e))?;
    let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|source| SshKeyError::NotAKey {
        path: path.to_path_buf(),
        source,
    })?;
    if key.is_encrypted() {
        return Err(SshKeyError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Writes `data` to a new 0600 file beside `path` and returns its name.
fn write_temp(path: &Path, data: &[u8]) -> Result<PathBuf, SshKeyError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |source| SshKeyError::Io {
        action: "cannot write",
        path: tmp.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(tmp)
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), SshKeyError> {
    let tmp = write_temp(path, data)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        SshKeyError::Io {
            action: "cannot write",
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn made_once_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("lima");
        let a = ensure(&home).unwrap();
        assert_eq!(a.private_path, home.join("_config/user"));
        assert_eq!(a.public_path, home.join("_config/user.pub"));
        assert_eq!(mode(&home.join("_config")), 0o700);
        assert_eq!(mode(&a.private_path), 0o600);
        assert_eq!(mode(&a.public_path), 0o600);
        assert!(
            a.public_line.starts_with("ssh-ed25519 AAAA"),
            "{}",
            a.public_line
        );
        assert!(a.public_line.ends_with(" lima"), "{}", a.public_line);
        let pub_file = std::fs::read_to_string(&a.public_path).unwrap();
        assert_eq!(pub_file, format!("{}\n", a.public_line));
        let private = std::fs::read(&a.private_path).unwrap();

        // Again: the same key, the files untouched.
        let b = ensure(&home).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::read(&a.private_path).unwrap(), private);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(home.join("_config"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A lost user.pub comes back from the private key.
        std::fs::remove_file(&a.public_path).unwrap();
        assert_eq!(ensure(&home).unwrap(), a);
        // One that names another key is rewritten.
        let other = ensure(&tmp.path().join("other")).unwrap();
        std::fs::write(&a.public_path, &other.public_line).unwrap();
        assert_eq!(ensure(&home).unwrap(), a);
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_path_buf();
        let pairs: Vec<KeyPair> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| ensure(&home).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in &pairs {
            assert_eq!(p, &pairs[0]);
        }
        let key = read_private_key(&pairs[0].private_path).unwrap();
        assert_eq!(key.public_key().to_openssh().unwrap(), pairs[0].public_line);
    }

    #[test]
    fn openssh_reads_the_key() {
        let Ok(out) = std::process::Command::new("ssh-keygen").arg("-?").output() else {
            eprintln!("skipped: no ssh-keygen on this machine");
            return;
        };
        drop(out);
        let tmp = tempfile::tempdir().unwrap();
        let pair = ensure(tmp.path()).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&pair.private_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8(out.stdout).unwrap();
        // ssh-keygen -y prints "TYPE BASE64 COMMENT".
        let mut ours = pair.public_line.split_whitespace();
        let mut theirs = derived.split_whitespace();
        assert_eq!(ours.next(), theirs.next());
        assert_eq!(ours.next(), theirs.next());
    }

    #[test]
    fn a_key_made_by_ssh_keygen_is_used_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("_config");
        std::fs::create_dir(&dir).unwrap();
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "lima", "-f"])
            .arg(dir.join("user"))
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no ssh-keygen on this machine");
            return;
        }
        let pub_before = std::fs::read_to_string(dir.join("user.pub")).unwrap();
        let pair = ensure(tmp.path()).unwrap();
        assert_eq!(pair.public_line, pub_before.trim());
        assert_eq!(
            std::fs::read_to_string(dir.join("user.pub")).unwrap(),
            pub_before
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = ensure(tmp.path()).unwrap();
        std::fs::set_permissions(&pair.private_path, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let e = ensure(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");

        std::fs::write(&pair.private_path, "not a key").unwrap();
        std::fs::set_permissions(&pair.private_path, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let e = ensure(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("not an OpenSSH private key") && e.contains("move it away"),
            "{e}"
        );
    }

    #[test]
    fn dot_ssh_keys_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = ensure(&tmp.path().join("lima")).unwrap();
        let other = ensure(&tmp.path().join("other")).unwrap();
        let home = tmp.path().join("home");
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(
            ssh.join("b.pub"),
            format!("# mine\n{}\n", other.public_line),
        )
        .unwrap();
        std::fs::write(ssh.join("a.pub"), "garbage\n").unwrap();
        std::fs::write(ssh.join("c.pub"), format!("{}\n", pair.public_line)).unwrap();
        std::fs::write(ssh.join("id_ed25519"), "private, never read").unwrap();

        assert_eq!(
            dot_ssh_public_keys(&home),
            vec![other.public_line.clone(), pair.public_line.clone()]
        );
        assert_eq!(
            authorized_keys(&pair, false, &home),
            vec![pair.public_line.clone()]
        );
        assert_eq!(
            authorized_keys(&pair, true, &home),
            vec![pair.public_line.clone(), other.public_line.clone()]
        );
        assert!(dot_ssh_public_keys(&tmp.path().join("nobody")).is_empty());
    }
}
