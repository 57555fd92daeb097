//! Moving the agent from the initramfs into a disk root filesystem
//! (`lima.root=DEV` on the kernel command line, e.g. the Debian image).
//!
//! The disk is mounted read-only and an overlay puts a tmpfs on top, so the
//! guest can write anywhere, the image file is shared by every instance and
//! never changes, and a restart starts clean. Then the classic switch_root:
//! the pseudo filesystems move into the new root, the new root moves onto
//! `/`, and the agent chroots into it, staying PID 1 (no other init runs).
//!
//! Two things of the initramfs stay visible in the new root through bind
//! mounts: the kernel modules (`/lib/modules/<release>`, for shares, the
//! kernel's own `modprobe` requests and the agent's loader) and the agent
//! binary (`/usr/bin/lima-guest-agent`, for `lima-guest-agent tool`).
//! The rest of the initramfs stays in memory, out of sight.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the layers are mounted while the initramfs is still `/`.
const LOWER: &str = "/.lima/lower";
const RW: &str = "/.lima/rw";
const NEW_ROOT: &str = "/.lima/root";
/// Pseudo filesystems (with everything mounted below them) that move into
/// the new root.
const MOVED: &[&str] = &["/dev", "/proc", "/sys", "/run"];
/// How long to wait for the block device node after loading virtio_blk.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Modules the switch needs besides virtio_blk (a boot module anyway).
/// ext4 checksums its metadata with crc32c, which it only asks for by alias.
pub const MODULES: &[&str] = &["crc32c_generic", "ext4", "overlay"];

/// Mounts `device` read-only under a tmpfs overlay and makes it `/`.
/// On error nothing has moved: the agent carries on in the initramfs.
pub fn switch(device: &str) -> Result<(), String> {
    let started = Instant::now();
    wait_for(Path::new(device))?;
    let layers = Layers::mount(device)?;
    let binds = match layers.bind_from_initramfs() {
        Ok(b) => b,
        Err(e) => {
            layers.undo(&[]);
            return Err(e);
        }
    };
    let mut moved: Vec<(String, String)> = Vec::new();
    for dir in MOVED.iter().filter(|d| is_mount_point(d)) {
        let target = format!("{NEW_ROOT}{dir}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = move_mount(dir, &target) {
            for (from, to) in moved.iter().rev() {
                let _ = move_mount(to, from);
            }
            layers.undo(&binds);
            return Err(format!("moving {dir} into the new root: {e}"));
        }
        moved.push((dir.to_string(), target));
    }
    // The point of no return: after the new root moves onto `/`, the old
    // pseudo filesystem paths are gone.
    nix::unistd::chdir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    move_mount(NEW_ROOT, "/").map_err(|e| format!("moving {NEW_ROOT} onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot into the new root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir / in the new root: {e}"))?;
    tracing::info!(
        "root: {device} (read-only) under a tmpfs overlay is / ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Files the guest needs that depend on this boot, written into the new
/// root (the overlay is writable). Failures are logged, not fatal.
pub fn write_boot_files(hostname: Option<&str>) {
    // QEMU user networking's DNS server, which the network setup uses.
    write_replacing("/etc/resolv.conf", "nameserver 10.0.2.3\n");
    if let Some(name) = hostname {
        write_replacing("/etc/hostname", &format!("{name}\n"));
    }
}

/// QEMU user networking's address for the host (its gateway), which
/// `host.lima.internal` names in the guest, as in Lima.
pub const HOST_ADDRESS: &str = "10.0.2.2";

/// `/etc/hosts`: localhost, the guest's own name, and `host.lima.internal`
/// (so a container engine's `--add-host`, an insecure registry on the host
/// and the like work by name). Written at every boot, root switched or not.
pub fn write_hosts(hostname: Option<&str>) {
    write_replacing("/etc/hosts", &hosts_text(hostname));
}

fn hosts_text(hostname: Option<&str>) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n");
    if let Some(name) = hostname {
        text.push_str(&format!("127.0.1.1\t{name}\n"));
    }
    text.push_str(&format!(
        "{HOST_ADDRESS}\thost.lima.internal\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    ));
    text
}

/// Writes a file, replacing a symlink rather than following it (a resolv.conf
/// pointing into a resolver's runtime directory, say).
fn write_replacing(path: &str, text: &str) {
    if Path::new(path).is_symlink() {
        let _ = std::fs::remove_file(path);
    }
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!("root: cannot write {path}: {e}");
    }
}

fn wait_for(device: &Path) -> Result<(), String> {
    let started = Instant::now();
    while !device.exists() {
        if started.elapsed() > DEVICE_WAIT {
            return Err(format!(
                "{} did not appear within {}s (is the disk attached, virtio_blk loaded?)",
                device.display(),
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Whether something is mounted on `dir` (it is on another device than `/`).
fn is_mount_point(dir: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), std::fs::metadata("/")) {
        (Ok(d), Ok(root)) => d.dev() != root.dev(),
        _ => false,
    }
}

fn move_mount(from: &str, to: &str) -> nix::Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
}

/// The mounted disk, tmpfs and overlay, before the switch.
struct Layers;

impl Layers {
    fn mount(device: &str) -> Result<Self, String> {
        for dir in [LOWER, RW, NEW_ROOT] {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
        }
        mount(
            Some(device),
            LOWER,
            Some("ext4"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("mounting {device} (ext4, read-only) on {LOWER}: {e}"))?;
        let layers = Layers;
        if !Path::new(LOWER).join("usr").is_dir() {
            layers.undo(&[]);
            return Err(format!("{device} holds no root filesystem (no /usr)"));
        }
        if let Err(e) = mount(
            Some("tmpfs"),
            RW,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        ) {
            layers.undo(&[]);
            return Err(format!("mounting the tmpfs for the writable layer: {e}"));
        }
        let (upper, work) = (format!("{RW}/upper"), format!("{RW}/work"));
        let options = format!("lowerdir={LOWER},upperdir={upper},workdir={work}");
        let result = [&upper, &work]
            .iter()
            .try_for_each(std::fs::create_dir)
            .map_err(|e| format!("cannot create the overlay's directories in {RW}: {e}"))
            .and_then(|()| {
                mount(
                    Some("overlay"),
                    NEW_ROOT,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(options.as_str()),
                )
                .map_err(|e| format!("mounting the overlay ({options}) on {NEW_ROOT}: {e}"))
            });
        if let Err(e) = result {
            layers.undo(&[]);
            return Err(e);
        }
        Ok(layers)
    }

    /// Bind-mounts the initramfs's kernel modules and agent binary into the
    /// new root; returns the mount points.
    fn bind_from_initramfs(&self) -> Result<Vec<PathBuf>, String> {
        let mut binds = Vec::new();
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .map_err(|e| format!("uname: {e}"))?;
        let modules = Path::new("/lib/modules").join(&release);
        if modules.is_dir() {
            // Debian's /lib is a relative symlink to usr/lib, which resolves
            // inside the new root.
            let target = Path::new(NEW_ROOT).join(modules.strip_prefix("/").unwrap_or(&modules));
            let result = std::fs::create_dir_all(&target)
                .map_err(|e| e.to_string())
                .and_then(|()| bind(&modules, &target).map_err(|e| e.to_string()));
            match result {
                Ok(()) => binds.push(target),
                Err(e) => {
                    self.undo(&binds);
                    return Err(format!(
                        "bind-mounting {} into the new root: {e}",
                        modules.display()
                    ));
                }
            }
        }
        // Best effort: only the test tools need it.
        if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
            let target = Path::new(NEW_ROOT).join("usr/bin/lima-guest-agent");
            if !target.exists() {
                let _ = std::fs::File::create(&target);
            }
            match bind(&exe, &target) {
                Ok(()) => binds.push(target),
                Err(e) => tracing::warn!("root: cannot bind the agent into the new root: {e}"),
            }
        }
        Ok(binds)
    }

    /// Unmounts what [`Layers::mount`] and the binds mounted, newest first.
    fn undo(&self, binds: &[PathBuf]) {
        for b in binds.iter().rev() {
            let _ = umount2(b, MntFlags::MNT_DETACH);
        }
        for dir in [NEW_ROOT, RW, LOWER] {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        }
    }
}

fn bind(from: &Path, to: &Path) -> nix::Result<()> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_host_and_the_guest() {
        let t = hosts_text(Some("lima-x"));
        assert!(t.contains("127.0.1.1\tlima-x\n"), "{t}");
        assert!(t.contains("10.0.2.2\thost.lima.internal\n"), "{t}");
        assert!(hosts_text(None).contains("host.lima.internal"));
    }
}
