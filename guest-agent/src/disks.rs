//! `additionalDisks:`: the named disks of `limactl disk`, made ready when
//! the host asks (`ControlRequest::Disk`), in our images and distro
//! images alike.
//!
//! The host attaches each one with the virtio serial it names. A blank
//! disk gets a file system on the whole device, labelled `lima-NAME`
//! (unless `format: false`) whose root the guest user owns; then it is
//! mounted on `/mnt/lima-NAME`, or enabled when it is swap. An ext file system is grown to the disk's
//! size when the disk was resized (`limactl disk resize`). At power-off
//! (our images) they are unmounted before the data disk.
use std::io::Read;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::datadisk::{self, Content};

/// Where disk NAME is mounted.
pub fn mount_point(name: &str) -> String {
    format!("/mnt/lima-{name}")
}

fn is_ext(fs_type: &str) -> bool {
    matches!(fs_type, "ext2" | "ext3" | "ext4")
}

/// The command that makes `fs_type` on `dev`.
fn mkfs_command(
    fs_type: &str,
    label: &str,
    fs_args: &[String],
    dev: &str,
) -> (String, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let program = if fs_type == "swap" {
        "mkswap".to_string()
    } else if is_ext(fs_type) {
        // mke2fs is in our initramfs too; `mkfs.ext4` may not be.
        args.extend(["-q".into(), "-F".into(), "-t".into(), fs_type.into()]);
        "mke2fs".to_string()
    } else {
        format!("mkfs.{fs_type}")
    };
    args.extend(["-L".into(), label.into()]);
    args.extend(fs_args.iter().cloned());
    args.push(dev.into());
    (program, args)
}

/// Formats (if blank and allowed) and mounts or enables the disk.
pub fn prepare(
    serial: &str,
    name: &str,
    format: bool,
    fs_type: &str,
    fs_args: &[String],
    owner: (u32, u32),
) -> Result<(), String> {
    let dev = datadisk::find(serial)?;
    let dev_s = dev.display().to_string();
    let label = format!("lima-{name}");
    // 68 KiB: btrfs keeps its superblock at 64 KiB and zeroes what is
    // before it, so a shorter look would take it for a blank disk.
    let mut head = vec![0u8; 68 << 10];
    std::fs::File::open(&dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("cannot read {dev_s}: {e}"))?;
    let fresh = datadisk::classify(&head) == Content::Blank;
    if fresh {
        if !format {
            return Err(format!(
                "disk {name} ({dev_s}) is blank and `format: false` keeps it so; make a file system on it or set `format: true`"
            ));
        }
        let (program, args) = mkfs_command(fs_type, &label, fs_args, &dev_s);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::sys::run_checked(&program, &args)?;
        tracing::info!("disk {name}: made {fs_type} on {dev_s}");
    }
    if fs_type == "swap" {
        crate::sys::run_checked("swapon", &[&dev_s])?;
        tracing::info!("disk {name}: swap on {dev_s}");
        return Ok(());
    }
    let target = mount_point(name);
    match mounted_device(&target) {
        Some(d) if d == dev_s => return Ok(()),
        Some(d) => {
            return Err(format!(
                "{target} already holds {d} (in our images `data` is the instance's own data disk); give the disk another name"
            ))
        }
        None => {}
    }
    std::fs::create_dir_all(&target).map_err(|e| format!("cannot create {target}: {e}"))?;
    mount(
        Some(dev.as_path()),
        target.as_str(),
        Some(fs_type),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting {dev_s} ({fs_type}) on {target}: {e}"))?;
    if fresh {
        // The guest user's disk, as the data disk's home is: usable
        // without root (our images have no sudo).
        std::os::unix::fs::chown(&target, Some(owner.0), Some(owner.1))
            .map_err(|e| format!("cannot hand {target} to uid {}: {e}", owner.0))?;
    }
    if is_ext(fs_type) {
        // A resized disk: grow the file system online (no-op otherwise).
        if let Err(e) = crate::sys::run_checked("resize2fs", &[&dev_s]) {
            tracing::warn!("disk {name}: cannot grow the file system: {e}");
        }
    }
    tracing::info!("disk {name}: {dev_s} on {target}");
    Ok(())
}

/// What is mounted on `target`, if anything.
fn mounted_device(target: &str) -> Option<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), crate::share::unescape(f.next()?)))
        })
        .find(|(_, m)| m == target)
        .map(|(dev, _)| dev)
}

/// Unmounts every `/mnt/lima-*` disk but the data disk, so their file
/// systems are clean at power-off. Never fails.
pub fn unmount_all() {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in text.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let m = crate::share::unescape(m);
        if m.starts_with("/mnt/lima-")
            && m != datadisk::MOUNT_POINT
            && Path::new(&m).parent() == Some(Path::new("/mnt"))
        {
            if let Err(e) = umount2(m.as_str(), MntFlags::empty()) {
                tracing::warn!("cannot unmount {m}: {e}; making it read-only");
                let _ = mount(
                    None::<&str>,
                    m.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_systems_are_made_with_the_label_and_args() {
        let (p, a) = mkfs_command("ext4", "lima-data", &["-m".into(), "0".into()], "/dev/vdc");
        assert_eq!(p, "mke2fs");
        assert_eq!(
            a,
            [
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "lima-data",
                "-m",
                "0",
                "/dev/vdc"
            ]
        );
        let (p, a) = mkfs_command("xfs", "lima-x", &[], "/dev/vdd");
        assert_eq!(
            (p.as_str(), a),
            (
                "mkfs.xfs",
                vec!["-L".to_string(), "lima-x".into(), "/dev/vdd".into()]
            )
        );
        assert_eq!(mkfs_command("swap", "lima-s", &[], "/dev/vde").0, "mkswap");
        assert_eq!(mount_point("data"), "/mnt/lima-data");
    }
}
