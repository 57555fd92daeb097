//! What the running kernel offers, for kernels without module support.
//!
//! With a modular kernel, a missing feature shows as a module that does not
//! load, and the agent says so. Our own kernel (`cargo xtask kernel`) has
//! every feature built in and no module support at all, so nothing is
//! loaded; if it lacks a feature anyway (a fragment changed, or another
//! kernel built without modules is booted), the later mount or socket call
//! would fail with a bare ENODEV or EAFNOSUPPORT. So at boot, and before a
//! container engine starts, the agent checks the features it needs and
//! names each missing one with its kernel option: from the kernel's own
//! configuration (`/proc/config.gz`) when it has one, else by probing
//! (`/proc/filesystems`, opening a socket of the family).
use std::collections::HashMap;
use std::io::Read;

/// One thing the agent needs from the kernel.
pub struct Feature {
    /// What it is for, as a user reads it.
    pub what: &'static str,
    /// The kernel option that provides it (without `CONFIG_`).
    pub config: &'static str,
    /// How to tell without the kernel's configuration.
    pub probe: Probe,
}

/// A check that needs no kernel configuration.
pub enum Probe {
    /// The filesystem type is listed in `/proc/filesystems`.
    Filesystem(&'static str),
    /// `socket(domain, type, protocol)` succeeds.
    Socket(libc::c_int, libc::c_int, libc::c_int),
    /// Only the configuration can tell.
    ConfigOnly,
}

const fn f(what: &'static str, config: &'static str, probe: Probe) -> Feature {
    Feature {
        what,
        config,
        probe,
    }
}

/// What every boot uses: the host channel, shares, disks, the port watcher.
pub const BOOT: &[Feature] = &[
    f(
        "vsock, the channel to the host",
        "VIRTIO_VSOCKETS",
        Probe::Socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
    ),
    f(
        "FUSE, for vsockfs shares",
        "FUSE_FS",
        Probe::Filesystem("fuse"),
    ),
    f("9p shares", "9P_FS", Probe::Filesystem("9p")),
    f(
        "virtiofs shares",
        "VIRTIO_FS",
        Probe::Filesystem("virtiofs"),
    ),
    f("ext4, for disks", "EXT4_FS", Probe::Filesystem("ext4")),
    f(
        "overlayfs, for the root filesystem",
        "OVERLAY_FS",
        Probe::Filesystem("overlay"),
    ),
    f("cgroup v2", "CGROUPS", Probe::Filesystem("cgroup2")),
    f(
        "BPF, for the port watcher",
        "BPF_SYSCALL",
        Probe::Filesystem("bpf"),
    ),
    f(
        "BPF programs on cgroups, for the port watcher",
        "CGROUP_BPF",
        Probe::ConfigOnly,
    ),
    f(
        "tracepoints, for the port watcher",
        "BPF_EVENTS",
        Probe::Filesystem("tracefs"),
    ),
    f(
        "sock_diag, for the port watcher",
        "INET_DIAG",
        Probe::Socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG),
    ),
];

/// Foreign-architecture programs through registered emulators.
pub const BINFMT: &[Feature] = &[f(
    "binfmt_misc, for foreign-architecture programs",
    "BINFMT_MISC",
    Probe::Filesystem("binfmt_misc"),
)];

/// What container engines use (docker's check-config.sh "generally
/// necessary" part and the default bridge network).
pub const ENGINES: &[Feature] = &[
    f("network namespaces", "NET_NS", Probe::ConfigOnly),
    f(
        "user namespaces, for rootless engines",
        "USER_NS",
        Probe::ConfigOnly,
    ),
    f("seccomp filters", "SECCOMP_FILTER", Probe::ConfigOnly),
    f("bridges", "BRIDGE", Probe::ConfigOnly),
    f(
        "netfilter on bridges",
        "BRIDGE_NETFILTER",
        Probe::ConfigOnly,
    ),
    f("veth pairs", "VETH", Probe::ConfigOnly),
    f(
        "nf_tables",
        "NF_TABLES",
        Probe::Socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER),
    ),
    f(
        "xtables rules through nf_tables",
        "NFT_COMPAT",
        Probe::ConfigOnly,
    ),
    f("NAT", "NF_NAT", Probe::ConfigOnly),
    f(
        "masquerading",
        "NETFILTER_XT_TARGET_MASQUERADE",
        Probe::ConfigOnly,
    ),
    f(
        "overlayfs, for image layers",
        "OVERLAY_FS",
        Probe::Filesystem("overlay"),
    ),
    f(
        "tun devices, for rootless networks",
        "TUN",
        Probe::ConfigOnly,
    ),
];

/// The kernel's configuration, if it carries one (`CONFIG_IKCONFIG_PROC`).
fn running_config() -> Option<HashMap<String, String>> {
    let file = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .ok()?;
    Some(parse_config(&text))
}

/// `CONFIG_X=value` lines → `X` → `value`; unset options are absent.
fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("CONFIG_")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn filesystems() -> String {
    std::fs::read_to_string("/proc/filesystems").unwrap_or_default()
}

/// Whether the running kernel knows the filesystem type `fstype` now
/// (`/proc/filesystems`; needs /proc mounted).
pub fn kernel_has_filesystem(fstype: &str) -> bool {
    lists_filesystem(&filesystems(), fstype)
}

/// Whether `/proc/filesystems` lists `fstype` (second column).
fn lists_filesystem(text: &str, fstype: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(fstype))
}

fn socket_works(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> bool {
    // SAFETY: socket(2) takes plain integers; the fd it returns is ours and
    // closed right away.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned by socket(2) and is closed only here.
    unsafe { libc::close(fd) };
    true
}

/// The features of `wanted` the kernel lacks. With a configuration, an
/// option counts when it is built in (`=y`); without one, by its probe
/// (features only the configuration can tell are then assumed present).
fn missing_in<'a>(
    wanted: &'a [Feature],
    config: Option<&HashMap<String, String>>,
    fs_list: &str,
    socket: &dyn Fn(libc::c_int, libc::c_int, libc::c_int) -> bool,
) -> Vec<&'a Feature> {
    wanted
        .iter()
        .filter(|f| match config {
            Some(c) => c.get(f.config).map(String::as_str) != Some("y"),
            None => match f.probe {
                Probe::Filesystem(t) => !lists_filesystem(fs_list, t),
                Probe::Socket(d, t, p) => !socket(d, t, p),
                Probe::ConfigOnly => false,
            },
        })
        .collect()
}

/// Logs a warning for each feature of `wanted` the running kernel lacks;
/// `context` says who needs them.
pub fn warn_missing(context: &str, wanted: &[Feature]) {
    let config = running_config();
    for f in missing_in(wanted, config.as_ref(), &filesystems(), &socket_works) {
        tracing::warn!(
            "{context}: the kernel lacks {} (CONFIG_{} is not built in, and it has no module \
             support to load it)",
            f.what,
            f.config
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: &str = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\tfuse\n";

    #[test]
    fn the_configuration_decides_when_there_is_one() {
        let config =
            parse_config("CONFIG_FUSE_FS=y\nCONFIG_9P_FS=m\n# CONFIG_EXT4_FS is not set\n");
        let wanted = &BOOT[1..5]; // fuse, 9p, virtiofs, ext4
        let missing: Vec<&str> = missing_in(wanted, Some(&config), FS, &|_, _, _| true)
            .iter()
            .map(|f| f.config)
            .collect();
        // A module (=m) cannot be loaded here, so it counts as missing.
        assert_eq!(missing, ["9P_FS", "VIRTIO_FS", "EXT4_FS"]);
    }

    #[test]
    fn without_a_configuration_the_probes_decide() {
        let wanted = &BOOT[..5]; // vsock, fuse, 9p, virtiofs, ext4
        let missing: Vec<&str> = missing_in(wanted, None, FS, &|d, _, _| d != libc::AF_VSOCK)
            .iter()
            .map(|f| f.config)
            .collect();
        assert_eq!(missing, ["VIRTIO_VSOCKETS", "9P_FS", "VIRTIO_FS"]);
        // Configuration-only features cannot be judged and are not reported.
        assert!(missing_in(ENGINES, None, "nodev\toverlay\n", &|_, _, _| true).is_empty());
    }

    #[test]
    fn filesystem_names_match_whole_words() {
        assert!(lists_filesystem(FS, "fuse"));
        assert!(!lists_filesystem(FS, "fuseblk"));
        assert!(!lists_filesystem("nodev\tfuseblk\n", "fuse"));
    }
}
