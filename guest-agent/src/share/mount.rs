//! The privileged half of a share: `/dev/fuse`, mount(2), lazy unmount and
//! the readahead knob. We mount ourselves (the agent is root) rather than
//! through `fusermount`, which our image does not have.
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

const FUSE_DEVICE: &str = "/dev/fuse";

/// The mode the kernel gives the mount's root inode until a `GETATTR` reply
/// for it is applied (its owner is root: the kernel makes the root inode
/// from `rootmode` alone). Such a reply can be lost: the kernel drops the
/// attributes of a reply when an invalidation of that inode (here the
/// host's `InvalidateNode` of the root, sent for every entry the host makes
/// or removes there) was applied while the request was out, yet reports the
/// getattr as done and checks permissions against what it had. So the
/// guest user's first access to a fresh share, made while the host changes
/// its top folder (a program writing files right after `limactl start`),
/// was checked against these bits; with none (`rootmode=40000`) that was
/// EACCES, once. Searchable and listable by everyone instead: a non-root
/// user can get in at most as far as an ordinary folder lets it, and what
/// the kernel shows of the root (`stat`) is the host's from the next reply
/// on.
pub(crate) const ROOT_PLACEHOLDER_MODE: u32 = 0o040755;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MountError {
    #[error("cannot create the mount point {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {FUSE_DEVICE} (is the fuse kernel module available?)")]
    Device(#[source] std::io::Error),
    #[error("mounting FUSE on {path} failed")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Opens `/dev/fuse`, loading the module and creating the node if needed.
pub(crate) fn open_device() -> Result<OwnedFd, MountError> {
    if !crate::features::kernel_has_filesystem("fuse") {
        match crate::modules::ModuleTree::open_running() {
            Ok(tree) => {
                if let Err(e) = tree.load("fuse", &crate::sys::RealLoader) {
                    tracing::warn!("share: loading the fuse module: {e}");
                }
            }
            Err(e) => tracing::debug!("share: no module tree to load fuse from: {e}"),
        }
    }
    if !Path::new(FUSE_DEVICE).exists() {
        // misc device 10:229; devtmpfs normally has it already.
        let dev = nix::sys::stat::makedev(10, 229);
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        if let Err(e) =
            nix::sys::stat::mknod(FUSE_DEVICE, nix::sys::stat::SFlag::S_IFCHR, mode, dev)
        {
            tracing::warn!("share: mknod {FUSE_DEVICE}: {e}");
        }
    }
    let file = File::options()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
        .map_err(MountError::Device)?;
    Ok(file.into())
}

/// A FUSE mount; dropping it detaches the mount (lazy unmount).
pub(crate) struct FuseMount {
    path: PathBuf,
}

impl FuseMount {
    /// The `0:N` device of the mount, which names its bdi and its fusectl
    /// connection.
    fn device(&self) -> Option<(u32, u32)> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mount_device(&info, &self.path)
    }

    /// Raises the readahead window to `kib` (the kernel caps it at 128 KiB
    /// for FUSE at mount time; sequential reads want one big request).
    pub(super) fn set_readahead_kib(&self, kib: u32) {
        let Some((major, minor)) = self.device() else {
            return;
        };
        let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        if let Err(e) = std::fs::write(&knob, kib.to_string()) {
            tracing::debug!("share: {knob}: {e}");
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let device = self.device();
        if let Err(e) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            tracing::warn!("share: unmounting {}: {e}", self.path.display());
        }
        // Detached, the mount lives on while files in it are open; abort the
        // connection so those fail at once instead of waiting for a host that
        // is gone (and so the session thread sees the device close).
        if let Some((0, minor)) = device {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
}

/// Creates `target` and mounts the FUSE connection `fd` there. Files are
/// checked against the modes and owners we report (`default_permissions`),
/// for every user (`allow_other`).
pub(crate) fn mount(
    fd: &OwnedFd,
    source: &str,
    target: &Path,
    read_only: bool,
) -> Result<FuseMount, MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::CreateDir {
        path: target.to_path_buf(),
        source,
    })?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = options(fd.as_raw_fd());
    let source = if source.is_empty() {
        "lima-share"
    } else {
        source
    };
    nix::mount::mount(
        Some(source),
        target,
        Some("fuse"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|source| MountError::Mount {
        path: target.to_path_buf(),
        source,
    })?;
    Ok(FuseMount {
        path: target.to_path_buf(),
    })
}

/// The FUSE mount options for connection `fd`.
fn options(fd: i32) -> String {
    format!(
        "fd={fd},rootmode={ROOT_PLACEHOLDER_MODE:o},user_id=0,group_id=0,allow_other,default_permissions"
    )
}

/// The `major:minor` of the last mount at `target` in a mountinfo table.
fn mount_device(mountinfo: &str, target: &Path) -> Option<(u32, u32)> {
    let target = target.to_str()?;
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let point = fields.nth(1)?;
            (unescape(point) == target).then_some(dev)
        })
        .and_then(|dev| {
            let (major, minor) = dev.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
}

/// `/proc/mounts` and mountinfo write space, tab, newline and backslash
/// as `\ooo`; this undoes it.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_mount_at_a_path() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:45 / /mnt/my\\040share rw - fuse lima rw,user_id=0
41 22 0:46 / /mnt/my\\040share rw - fuse lima rw,user_id=0
";
        assert_eq!(
            mount_device(info, Path::new("/mnt/my share")),
            Some((0, 46))
        );
        assert_eq!(mount_device(info, Path::new("/proc")), Some((0, 21)));
        assert_eq!(mount_device(info, Path::new("/nope")), None);
    }

    #[test]
    fn the_root_lets_every_user_in_until_the_host_says_otherwise() {
        let o = options(7);
        assert!(o.starts_with("fd=7,rootmode=40755,"), "{o}");
        // A directory, searchable and listable by others: the kernel's
        // root inode is owned by root whatever user_id says.
        assert_eq!(ROOT_PLACEHOLDER_MODE & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(ROOT_PLACEHOLDER_MODE & 0o005, 0o005);
        assert_eq!(ROOT_PLACEHOLDER_MODE & 0o022, 0, "never writable by others");
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
