//! Private state: nothing under `LIMA_HOME` or a `lima-run` scratch
//! directory is open to other local users. Shared-folder data crosses
//! `fs-shm`, consoles and logs hold what the guest prints, and the sockets
//! reach the guest agent, QEMU's monitor and the shares' serial ports.
//!
//! Two rules do it: every directory we make there is 0700, and our
//! processes run with umask 077, which QEMU and the helper daemons inherit,
//! so every file and socket anyone creates there has no group or other
//! bits from the start (nothing is created open and narrowed later).
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The umask of every lima-rs process (limactl, the host agent, lima-run)
/// and of the processes they start.
pub const UMASK: u32 = 0o077;

/// Sets [`UMASK`] for this process and its future children.
pub fn restrict_umask() {
    let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK as _));
    let _ = USER_UMASK.set(before.bits() as u32);
}

static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The user's own umask, from before [`restrict_umask`] (what files made
/// outside `LIMA_HOME` for the user, like `limactl copy`'s, follow);
/// 0o022 when it was never read.
pub fn user_umask() -> u32 {
    USER_UMASK.get().copied().unwrap_or(0o022)
}

/// Creates `dir` (and missing parents) with mode 0700; an existing `dir`
/// is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A warning for a `LIMA_HOME` that other users can enter or read, naming
/// the fix; `None` when it is private (or absent).
pub fn home_warning(home: &Path) -> Option<String> {
    let mode = std::fs::metadata(home).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "LIMA_HOME {} is open to other users (mode {mode:03o}); its instances hold consoles, logs and shared-folder data. Run `chmod 700 {}`",
            home.display(),
            home.display()
        )
    })
}

/// Copies `from` to a new file `to` (replacing it) that only its owner can
/// read: unlike `std::fs::copy`, the source's permissions are not taken
/// over. Written to a temporary name first and renamed into place.
pub fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    write_private(to, std::fs::File::open(from)?)
}

/// Writes what `content` holds to a new file `to` (replacing it) that only
/// its owner can read, under a temporary name first and renamed into
/// place: a reader never sees half a file, and a symbolic link at `to` is
/// replaced, not followed.
pub fn write_private(to: &Path, mut content: impl std::io::Read) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = to.with_extension("tmp-copy");
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::copy(&mut content, &mut dst)?;
        dst.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_and_the_home_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let inst = home.join("a/b");
        create_private_dir(&inst).unwrap();
        for d in [&home, &home.join("a"), &inst] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        assert!(home_warning(&home).is_none());
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = home_warning(&home).unwrap();
        assert!(w.contains("755") && w.contains("chmod 700"), "{w}");
        assert!(home_warning(&tmp.path().join("absent")).is_none());
    }
}
