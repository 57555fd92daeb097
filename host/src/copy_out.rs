//! `copyToHost:`: guest files the host agent copies to the host once the
//! instance is up (a Kubernetes template's kubeconfig, say), and removes
//! again at stop when `deleteOnStop` says so.
//!
//! The guest file is read as root through the guest agent (Lima reads it
//! as the user, then with `sudo`); the host file is written private
//! (0600) under a temporary name beside it and renamed into place, so a
//! symbolic link planted at the host path is replaced, never followed.
use std::path::Path;

use lima_proto::ExitStatus;

use crate::config::CopyToHost;
use crate::vsock::Transport;

/// Exit status of the reader when the guest file is not there.
const MISSING: i32 = 3;
/// ... and when it is not a regular file (a link, a device, a folder).
const NOT_REGULAR: i32 = 4;
/// The most a copy may hold; a bigger guest file is refused.
const LIMIT: u64 = 64 << 20;
/// Reads `$1` if it is a regular file (not through a link: a guest user
/// who controls the path must not point it at a file only root reads),
/// at most `$2` bytes plus one, so that a bigger one shows.
const READ: &str = r#"if [ -L "$1" ]; then exit 4; fi
if [ ! -e "$1" ]; then exit 3; fi
if [ ! -f "$1" ]; then exit 4; fi
exec head -c "$2" -- "$1""#;

/// Copies each entry; the error names the entry that failed.
pub async fn run(transport: &dyn Transport, items: &[CopyToHost]) -> Result<(), String> {
    for (i, c) in items.iter().enumerate() {
        let fail = |why: String| format!("copyToHost[{i}] ({}): {why}", c.guest);
        let req = crate::exec::as_root(vec![
            "sh".into(),
            "-c".into(),
            READ.into(),
            "sh".into(),
            c.guest.clone(),
            (LIMIT + 1).to_string(),
        ]);
        let out = crate::exec::capture(transport, &req, Vec::new())
            .await
            .map_err(|e| fail(lima_proto::errors::error_chain(&e)))?;
        match out.status {
            ExitStatus::Code(0) => {}
            ExitStatus::Code(MISSING) if c.skip_if_missing => {
                tracing::info!("copyToHost: {} is not there; skipped", c.guest);
                continue;
            }
            ExitStatus::Code(MISSING) => {
                return Err(fail(
                    "no such file in the guest (set `skipIfMissing: true` to allow that)".into(),
                ))
            }
            ExitStatus::Code(NOT_REGULAR) => {
                return Err(fail(
                    "not a regular file (links, devices and folders are not copied)".into(),
                ))
            }
            other => {
                return Err(fail(format!(
                    "cannot read it ({other:?}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        if out.stdout.len() as u64 > LIMIT {
            return Err(fail(format!("bigger than {} MiB", LIMIT >> 20)));
        }
        write_private(&c.host, &out.stdout)
            .map_err(|e| fail(format!("cannot write {}: {e}", c.host.display())))?;
        tracing::info!("copyToHost: {} -> {}", c.guest, c.host.display());
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the host path has no folder"))?;
    std::fs::create_dir_all(dir)?;
    crate::privacy::write_private(path, bytes)
}

/// Removes the host copies marked `deleteOnStop` (at stop).
pub fn delete_on_stop(items: &[CopyToHost]) {
    for c in items.iter().filter(|c| c.delete_on_stop) {
        if std::fs::remove_file(&c.host).is_ok() {
            tracing::info!("copyToHost: removed {}", c.host.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_at_the_host_path_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = t.path().join("copied-from-guest/kubeconfig.yaml");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_private(&target, b"config").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "config");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(&target)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let item = CopyToHost {
            guest: "/x".into(),
            host: target.clone(),
            skip_if_missing: false,
            delete_on_stop: true,
        };
        delete_on_stop(&[item]);
        assert!(!target.exists());
    }
}
