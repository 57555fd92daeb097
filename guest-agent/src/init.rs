//! What the agent does when it is the guest's init (PID 1) in our own image:
//! mount the pseudo filesystems, load the kernel modules the agent needs, set
//! up networking, switch into a disk root filesystem when asked to
//! (`lima.root=`, see `root.rs`), keep `/var` and `/home` on the instance's
//! data disk (`lima.data=`, see `datadisk.rs`), make the guest user
//! (`lima.user=`, see `users.rs`), register QEMU's emulators for foreign
//! architectures (`lima.binfmt=`, see `binfmt.rs`), and at the end stop every
//! process, unmount the data disk and power the VM off.
//!
//! Every step logs and carries on when it fails: a guest with a missing mount
//! is still better than a kernel panic, and the host sees the log on the
//! serial console.
use std::time::Duration;

use crate::{modules, sys};

/// `lima.*` parameters on the kernel command line, set by the host runner.
#[derive(Debug, Default, Clone)]
pub struct KernelParams {
    pub hostname: Option<String>,
    /// Extra modules to load at boot (`lima.modules=a,b`).
    pub modules: Vec<String>,
    /// A block device holding the root filesystem to switch into
    /// (`lima.root=/dev/vda`); the initramfs stays `/` without it.
    pub root: Option<String>,
    /// The serial of the data disk that holds `/var` and `/home`
    /// (`lima.data=lima-data`).
    pub data: Option<String>,
    /// The guest user to make: `lima.user=NAME:UID:GID:HOME:SHELL`.
    pub user: Option<String>,
    /// Which QEMU emulators to register (`lima.binfmt=none|aarch64,arm`;
    /// without it, every one the image has).
    pub binfmt: crate::binfmt::Wanted,
}

impl KernelParams {
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/cmdline")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    pub fn parse(cmdline: &str) -> Self {
        let mut p = KernelParams::default();
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("lima.hostname=") {
                p.hostname = Some(v.to_string());
            } else if let Some(v) = word.strip_prefix("lima.modules=") {
                p.modules
                    .extend(v.split(',').filter(|m| !m.is_empty()).map(str::to_string));
            } else if let Some(v) = word.strip_prefix("lima.root=") {
                p.root = Some(v.to_string()).filter(|v| !v.is_empty());
            } else if let Some(v) = word.strip_prefix("lima.data=") {
                p.data = Some(v.to_string()).filter(|v| !v.is_empty());
            } else if let Some(v) = word.strip_prefix("lima.user=") {
                p.user = Some(v.to_string()).filter(|v| !v.is_empty());
            } else if let Some(v) = word.strip_prefix("lima.binfmt=") {
                p.binfmt = crate::binfmt::Wanted::parse(v);
            }
        }
        p
    }
}

/// Modules the agent itself needs before it can answer the host. Ones that are
/// built into the kernel are skipped.
const BOOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "vmw_vsock_virtio_transport",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    // sock_diag for TCP and UDP: the port watcher's source of truth.
    "tcp_diag",
    "udp_diag",
];

/// Mounts that must exist before logging or the async runtime start.
pub fn early_setup() {
    let mounts: &[(&str, &str, &str, &str)] = &[
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            "gid=5,mode=620,ptmxmode=666",
        ),
        ("tmpfs", "/dev/shm", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", "nsdelegate"),
        ("tracefs", "/sys/kernel/tracing", "tracefs", ""),
        ("debugfs", "/sys/kernel/debug", "debugfs", ""),
        ("bpf", "/sys/fs/bpf", "bpf", "mode=0700"),
    ];
    for (src, target, fstype, data) in mounts {
        // debugfs is optional (our kernel has none; tracefs is mounted
        // apart). Asked when its turn comes: /proc is mounted by then.
        if *fstype == "debugfs" && !crate::features::kernel_has_filesystem(fstype) {
            continue;
        }
        if let Err(e) = sys::mount(src, target, fstype, data) {
            eprintln!("lima-guest-agent: mount {fstype} on {target}: {e}");
        }
    }
    // /dev/ptmx must point at the devpts instance for openpty().
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    // SAFETY: single-threaded at this point (called first thing in main).
    unsafe {
        std::env::set_var("PATH", crate::exec::DEFAULT_PATH);
        std::env::set_var("HOME", "/root");
    }
}

/// Modules loaded at boot only when the image carries them: images with
/// netfilter (the docker image) get nfnetlink, which the NAT watcher
/// (`ports/nat/`) needs before the first iptables or nft runs.
const OPTIONAL_BOOT_MODULES: &[&str] = &["nfnetlink"];

/// Modules, hostname, network: things that may take a while under emulation.
pub async fn late_setup(params: &KernelParams) {
    let mut wanted: Vec<String> = BOOT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(params.modules.iter().cloned());
    if params.root.is_some() {
        wanted.extend(crate::root::MODULES.iter().map(|s| s.to_string()));
    }
    if params.data.is_some() {
        wanted.extend(crate::datadisk::MODULES.iter().map(|s| s.to_string()));
    }
    // Only where there may be emulators to register: a disk root.
    if params.root.is_some() && params.binfmt != crate::binfmt::Wanted::Off {
        wanted.push(crate::binfmt::MODULE.to_string());
    }
    match modules::ModuleTree::open_running() {
        Ok(tree) => {
            for name in &wanted {
                if let Err(e) = tree.load(name, &sys::RealLoader) {
                    tracing::warn!("module {name}: {e}");
                }
            }
            // Loaded when the image has them, before the port table
            // starts: the NAT watcher subscribes through nfnetlink.
            for name in OPTIONAL_BOOT_MODULES {
                match tree.load(name, &sys::RealLoader) {
                    Ok(()) | Err(modules::ModuleError::Unknown(_)) => {}
                    Err(e) => tracing::warn!("module {name}: {e}"),
                }
            }
        }
        Err(modules::ModuleError::NoSupport) => {
            // Everything is built in (our kernel): say what is not.
            crate::features::warn_missing("boot", crate::features::BOOT);
            if params.root.is_some() && params.binfmt != crate::binfmt::Wanted::Off {
                crate::features::warn_missing("boot", crate::features::BINFMT);
            }
        }
        Err(e) => tracing::warn!("no kernel modules available: {e}"),
    }
    if let Some(name) = &params.hostname {
        if let Err(e) = nix::unistd::sethostname(name) {
            tracing::warn!("sethostname {name}: {e}");
        }
    }
    // Network: QEMU user-mode networking has fixed addresses, so a static
    // setup avoids a DHCP round trip at boot.
    let _ = sys::run_quiet("ip", &["link", "set", "lo", "up"]);
    if std::path::Path::new("/sys/class/net/eth0").exists() {
        let _ = sys::run_quiet("ip", &["link", "set", "eth0", "up"]);
        let _ = sys::run_quiet("ip", &["addr", "add", "10.0.2.15/24", "dev", "eth0"]);
        let _ = sys::run_quiet("ip", &["route", "add", "default", "via", "10.0.2.2"]);
    }
    // Found and formatted while the initramfs (and its mke2fs) is `/`.
    let data = params.data.as_deref().and_then(|serial| {
        crate::datadisk::find(serial)
            .and_then(|dev| crate::datadisk::format_if_blank(&dev).map(|()| dev))
            .map_err(|e| tracing::error!("data disk: {e}; /var and /home stay in memory"))
            .ok()
    });
    // Then the switch, so the steps above still use the initramfs's tools
    // and modules.
    if let Some(device) = &params.root {
        match crate::root::switch(device) {
            Ok(()) => crate::root::write_boot_files(params.hostname.as_deref()),
            Err(e) => {
                tracing::error!("root: cannot switch to {device}: {e}; staying in the initramfs")
            }
        }
    }
    crate::root::write_hosts(params.hostname.as_deref());
    // Mounted in the root the guest ends up with.
    if let Some(dev) = data {
        if let Err(e) = crate::datadisk::mount_kept(&dev) {
            tracing::error!("data disk: {e}; /var and /home stay in memory");
        }
    }
    // In the root the guest ends up with: the emulators are its files, and
    // the kernel opens them now (flag F).
    if params.root.is_some() {
        crate::binfmt::setup(&params.binfmt);
    }
    // Last: its home lives in /home.
    if let Some(user) = &params.user {
        match crate::users::NewUser::parse(user).and_then(|u| crate::users::create(&u).map(|()| u))
        {
            Ok(u) => tracing::info!("guest user {} (uid {}, home {})", u.name, u.uid, u.home),
            Err(e) => tracing::error!("guest user: {e}"),
        }
    }
}

/// Mounts a VM-provided filesystem (9p, virtiofs) at `target`; the error
/// names the mount point.
pub fn mount_share(
    fstype: &str,
    source: &str,
    target: &str,
    options: &str,
    read_only: bool,
) -> Result<(), String> {
    let modules: &[&str] = match fstype {
        "9p" => &["9pnet_virtio", "9p"],
        "virtiofs" => &["virtiofs"],
        other => return Err(format!("unsupported filesystem type {other}")),
    };
    if let Ok(tree) = modules::ModuleTree::open_running() {
        for m in modules {
            if let Err(e) = tree.load(m, &sys::RealLoader) {
                tracing::warn!("module {m}: {e}");
            }
        }
    }
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create mount point {target} in the guest: {e}"))?;
    let mut flags = nix::mount::MsFlags::MS_NODEV;
    if read_only {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        flags,
        if options.is_empty() {
            None
        } else {
            Some(options)
        },
    )
    .map_err(|e| format!("mounting {fstype} {source} on {target} in the guest: {e}"))
}

/// Asks every process to stop, then kills what is left, syncs, powers off.
pub async fn stop_everything_and_power_off() {
    tracing::info!("shutting down: stopping all processes");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    crate::disks::unmount_all();
    crate::datadisk::unmount_all();
    power_off();
}

/// Syncs and powers the machine off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    eprintln!("lima-guest-agent: power off failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_kernel_parameters_and_ignores_others() {
        let p =
            KernelParams::parse("console=ttyS0 lima.hostname=lima-dev quiet lima.modules=fuse,,9p");
        assert_eq!(p.hostname.as_deref(), Some("lima-dev"));
        assert_eq!(p.modules, vec!["fuse", "9p"]);
        let p = KernelParams::parse("");
        assert!(p.hostname.is_none() && p.modules.is_empty() && p.root.is_none());
    }

    #[test]
    fn root_device_from_the_command_line() {
        let p = KernelParams::parse("console=ttyS0 root=/dev/sda lima.root=/dev/vda panic=-1");
        assert_eq!(p.root.as_deref(), Some("/dev/vda"));
        // The kernel's own root= is not ours.
        assert!(KernelParams::parse("root=/dev/sda").root.is_none());
        assert!(KernelParams::parse("lima.root=").root.is_none());
    }

    #[test]
    fn data_disk_and_user_from_the_command_line() {
        let p = KernelParams::parse(
            "lima.data=lima-data lima.user=me:1000:1000:/home/me.guest:/bin/bash quiet",
        );
        assert_eq!(p.data.as_deref(), Some("lima-data"));
        assert_eq!(
            p.user.as_deref(),
            Some("me:1000:1000:/home/me.guest:/bin/bash")
        );
        let p = KernelParams::parse("lima.data= lima.user=");
        assert_eq!(p.binfmt, crate::binfmt::Wanted::All);
        assert!(p.data.is_none() && p.user.is_none());
    }

    #[test]
    fn binfmt_from_the_command_line() {
        use crate::binfmt::Wanted;
        assert_eq!(KernelParams::parse("quiet").binfmt, Wanted::All);
        assert_eq!(KernelParams::parse("lima.binfmt=none").binfmt, Wanted::Off);
        assert_eq!(
            KernelParams::parse("lima.binfmt=aarch64,arm panic=-1").binfmt,
            Wanted::Only(vec!["aarch64".into(), "arm".into()])
        );
    }
}
