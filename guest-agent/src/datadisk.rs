//! The instance's data disk in our own images: `/var` and `/home` that
//! survive a restart, while the rest of the guest lives in memory (the
//! initramfs, or the Debian image's tmpfs overlay).
//!
//! The host attaches a qcow2 file of the instance as a virtio disk with a
//! known serial and names it on the kernel command line
//! (`lima.data=SERIAL`). At boot the agent finds the disk by that serial in
//! `/sys/block/vd*/serial`, formats it ext4 when it is blank (with the
//! initramfs's `mke2fs`, so before a switch into another root), mounts it
//! on [`MOUNT_POINT`] (after the switch), and bind-mounts its `var/` and
//! `home/` onto `/var` and `/home`. The first boot seeds `var/` from the
//! image's `/var`. At power-off everything on it is unmounted, so ext4
//! finds a clean file system next time.
//!
//! ```text
//! /dev/vdX (serial lima-data), ext4 "lima-data"
//!   └─ /mnt/lima-data
//!        ├─ var/   ──bind──▶ /var
//!        └─ home/  ──bind──▶ /home
//! ```
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the data disk is mounted in the guest.
pub const MOUNT_POINT: &str = "/mnt/lima-data";
/// The directories of the guest kept on the data disk.
const KEPT: &[&str] = &["var", "home"];
/// How long the disk may take to appear after virtio_blk loads.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// Mount options: the inode tables are left as mke2fs left them (lazily
/// initialised, which ext4 tracks), instead of a kernel thread zeroing
/// gigabytes in the background of every first boot under emulation.
const OPTIONS: &str = "noinit_itable";
/// Modules needed to mount it (virtio_blk is a boot module anyway). ext4
/// checksums its metadata with crc32c, which it asks for by alias only.
pub const MODULES: &[&str] = &["crc32c_generic", "ext4"];

/// What is on the disk before we touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// All zeros where a file system would start: a new disk.
    Blank,
    /// An ext2/3/4 superblock; `recover`: its journal needs replaying (it
    /// was not unmounted before the VM stopped).
    Ext { recover: bool },
    /// Something else: left alone.
    Other,
}

/// Reads what the first 64 KiB of a disk say.
pub fn classify(head: &[u8]) -> Content {
    // The ext superblock starts at 1024: its magic 0xEF53 at offset 56,
    // the incompatible features at 96, of which 0x4 is "needs recovery".
    if head.get(1080..1082) == Some(&[0x53, 0xEF]) {
        let incompat = head.get(1120).copied().unwrap_or(0);
        Content::Ext {
            recover: incompat & 0x4 != 0,
        }
    } else if head.iter().all(|&b| b == 0) {
        Content::Blank
    } else {
        Content::Other
    }
}

/// The block device whose virtio serial is `serial`, waiting for it to
/// appear.
pub fn find(serial: &str) -> Result<PathBuf, String> {
    let started = Instant::now();
    loop {
        if let Some(dev) = find_in(Path::new("/sys/block"), serial) {
            let node = Path::new("/dev").join(dev);
            if node.exists() {
                return Ok(node);
            }
        }
        if started.elapsed() > DEVICE_WAIT {
            return Err(format!(
                "no disk with serial {serial} appeared within {}s",
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The name of the block device under `sys_block` with `serial`.
fn find_in(sys_block: &Path, serial: &str) -> Option<String> {
    std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Formats `device` ext4 if it is blank. Runs while the initramfs (and its
/// `mke2fs`) is `/`. Refuses a disk holding something else.
pub fn format_if_blank(device: &Path) -> Result<(), String> {
    let mut head = vec![0u8; 64 << 10];
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", device.display()))?;
    match classify(&head) {
        Content::Ext { recover: false } => {
            tracing::info!("data disk: {} is ext4, cleanly unmounted", device.display());
            Ok(())
        }
        Content::Ext { recover: true } => {
            tracing::warn!(
                "data disk: {} was not unmounted when the VM last stopped; ext4 replays its journal",
                device.display()
            );
            Ok(())
        }
        Content::Other => Err(format!(
            "{} holds something that is not ext4; left alone (delete the instance's data disk to start afresh)",
            device.display()
        )),
        Content::Blank => {
            let started = Instant::now();
            let dev = device.display().to_string();
            // Lazy inode tables and journal, no discard: a new qcow2 reads
            // as zeros already, and zeroing it only grows the file.
            crate::sys::run_checked(
                "mke2fs",
                &[
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "lima-data",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                    &dev,
                ],
            )?;
            tracing::info!(
                "data disk: formatted {dev} ext4 ({} ms)",
                started.elapsed().as_millis()
            );
            Ok(())
        }
    }
}

/// Mounts the data disk and binds its directories onto `/var` and `/home`,
/// seeding each from the guest's own the first time. On error nothing of
/// it stays mounted.
pub fn mount_kept(device: &Path) -> Result<(), String> {
    std::fs::create_dir_all(MOUNT_POINT)
        .map_err(|e| format!("cannot create {MOUNT_POINT}: {e}"))?;
    mount(
        Some(device),
        MOUNT_POINT,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        Some(OPTIONS),
    )
    .map_err(|e| format!("mounting {} (ext4) on {MOUNT_POINT}: {e}", device.display()))?;
    let mut bound: Vec<String> = Vec::new();
    for dir in KEPT {
        let result = seed(dir).and_then(|kept| {
            let target = format!("/{dir}");
            std::fs::create_dir_all(&target).map_err(|e| format!("cannot create {target}: {e}"))?;
            mount(
                Some(kept.as_path()),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("binding {} onto {target}: {e}", kept.display()))?;
            Ok(target)
        });
        match result {
            Ok(target) => bound.push(target),
            Err(e) => {
                for b in bound.iter().rev() {
                    let _ = umount2(b.as_str(), MntFlags::MNT_DETACH);
                }
                let _ = umount2(MOUNT_POINT, MntFlags::MNT_DETACH);
                return Err(e);
            }
        }
    }
    tracing::info!(
        "data disk: {} on {MOUNT_POINT}; /var and /home kept there",
        device.display()
    );
    Ok(())
}

/// `MOUNT_POINT/dir`, made the first time as a copy of the guest's `/dir`
/// (owners, modes, links and times kept). The copy goes to a scratch name
/// first, so a boot that stops halfway copies again.
fn seed(dir: &str) -> Result<PathBuf, String> {
    let kept = Path::new(MOUNT_POINT).join(dir);
    if kept.is_dir() {
        return Ok(kept);
    }
    let scratch = Path::new(MOUNT_POINT).join(format!(".{dir}.seeding"));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .map_err(|e| format!("cannot remove {}: {e}", scratch.display()))?;
    }
    let source = format!("/{dir}");
    if Path::new(&source).is_dir() {
        // `cp -a` of busybox in the initramfs, of coreutils in Debian.
        crate::sys::run_checked("cp", &["-a", &source, &scratch.display().to_string()])?;
    } else {
        std::fs::create_dir(&scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    }
    std::fs::rename(&scratch, &kept).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            scratch.display(),
            kept.display()
        )
    })?;
    Ok(kept)
}

/// Mount points at or below one of `roots` in `/proc/mounts` text, deepest
/// (last mounted) first: the order to unmount them in.
fn mounts_below(proc_mounts: &str, roots: &[&str]) -> Vec<String> {
    let mut found: Vec<String> = proc_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(crate::share::unescape)
        .filter(|m| {
            roots
                .iter()
                .any(|r| m == r || m.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
        })
        .collect();
    found.reverse();
    found
}

/// Unmounts `/var`, `/home` (and whatever was mounted below them: shares)
/// and the data disk, so the file system is clean at power-off. Processes
/// were killed just before; one that still holds a file there is waited
/// for a little, then the disk is at least made read-only (which writes
/// its journal out). Never fails: power-off goes on.
pub fn unmount_all() {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let pending = mounts_below(&text, &["/var", "/home", MOUNT_POINT]);
        if !pending.iter().any(|m| m == MOUNT_POINT) {
            return;
        }
        let mut busy = None;
        for m in &pending {
            // A share (FUSE, served by us) may go lazily; the disk may not.
            let flags = if m == MOUNT_POINT || KEPT.iter().any(|k| m == &format!("/{k}")) {
                MntFlags::empty()
            } else {
                MntFlags::MNT_DETACH
            };
            if let Err(e) = umount2(m.as_str(), flags) {
                busy = Some(format!("{m}: {e}"));
                break;
            }
        }
        let Some(why) = busy else {
            tracing::info!("data disk: unmounted cleanly");
            return;
        };
        if started.elapsed() > Duration::from_secs(3) {
            tracing::warn!("data disk: cannot unmount ({why}); making it read-only");
            let _ = mount(
                None::<&str>,
                MOUNT_POINT,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_blank_ext_or_something_else() {
        let mut head = vec![0u8; 64 << 10];
        assert_eq!(classify(&head), Content::Blank);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        head[1120] = 0xc2; // filetype, extents, 64bit
        assert_eq!(classify(&head), Content::Ext { recover: false });
        head[1120] |= 0x4;
        assert_eq!(classify(&head), Content::Ext { recover: true });
        let mut other = vec![0u8; 64 << 10];
        other[510] = 0x55;
        other[511] = 0xAA; // an MBR
        assert_eq!(classify(&other), Content::Other);
    }

    #[test]
    fn the_disk_is_found_by_its_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", ""), ("vdb", "lima-data\n"), ("vdc", "other")] {
            std::fs::create_dir(sys.path().join(dev)).unwrap();
            std::fs::write(sys.path().join(dev).join("serial"), serial).unwrap();
        }
        std::fs::create_dir(sys.path().join("loop0")).unwrap();
        assert_eq!(find_in(sys.path(), "lima-data").as_deref(), Some("vdb"));
        assert_eq!(find_in(sys.path(), "none"), None);
    }

    #[test]
    fn mounts_below_the_kept_directories_go_deepest_first() {
        let text = "proc /proc proc rw 0 0\n\
                    /dev/vdb /mnt/lima-data ext4 rw 0 0\n\
                    /dev/vdb /var ext4 rw 0 0\n\
                    /dev/vdb /home ext4 rw 0 0\n\
                    fuse /home/me/my\\040project fuse rw 0 0\n\
                    tmpfs /variable tmpfs rw 0 0\n";
        assert_eq!(
            mounts_below(text, &["/var", "/home", MOUNT_POINT]),
            ["/home/me/my project", "/home", "/var", "/mnt/lima-data"]
        );
    }
}
