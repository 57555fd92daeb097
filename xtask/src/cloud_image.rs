//! `cargo xtask image debian-cloud`: a bootable Debian 12 cloud image, made
//! from Debian's packages, for the tests of `images:` (they serve it from a
//! local HTTP server, since our machines reach no cloud-image site) and as
//! the plain-QEMU baseline of the benchmarks.
//!
//! It is what a cloud image is: one qcow2 disk, booted by UEFI firmware,
//! configured at first boot by cloud-init from a NoCloud seed. Nothing here
//! is ours but the recipe: systemd, udev, cloud-init, openssh-server, sudo,
//! Debian's generic kernel (`linux-image-amd64`) and its initramfs.
//!
//! ```text
//! disk.qcow2 (GPT, 512-byte sectors)
//!   1 MiB    p1  EFI system, FAT32, 127 MiB
//!                \EFI\BOOT\BOOTX64.EFI      systemd-boot (package systemd-boot-efi)
//!                \loader\loader.conf        default entry, timeout 0
//!                \loader\entries\debian.conf  kernel, initrd, root=PARTUUID=... console=ttyS0
//!                \vmlinuz-<release>, \initrd.img-<release>
//!   128 MiB  p2  Linux root (x86-64), ext4, to the end of the disk
//! ```
//!
//! Built without loop devices, mounts or `grub-install`, so it works on a
//! fresh CI machine: `debootstrap` into a directory, `mke2fs -d` packs the
//! tree into the root partition's file, `mkfs.vfat` and mtools make the
//! ESP's file, `sfdisk` writes the GPT into a sparse raw file, `dd` puts the
//! two partitions at their offsets, and `qemu-img convert` makes the qcow2.
//! The UUIDs are derived from the cache key, so one key always gives the
//! same identities.
//!
//! Cached like the other images: `target/images/cache/cloud-<hash>/`, keyed
//! by the suite, the mirror, the package list and [`RECIPE_VERSION`];
//! `target/images/debian-cloud` points at the current entry. The command's
//! last line on stdout is the absolute path of the cached `disk.qcow2`.
//!
//! Kernel updates inside the guest land in `/boot`, not on the ESP, so the
//! guest keeps booting the kernel it was built with. Fine for a test image.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::cache::{images_dir, inputs_hash};
use crate::cmd;
use crate::debian::{check_forbidden, mirror, point_at, tree_usage, unmount_under, SUITE};
use crate::fsutil::{mib, remove_dir_if_present, write};

/// Bump whenever the recipe changes what ends up in the disk.
const RECIPE_VERSION: &str = "2";

/// On top of debootstrap's minbase. The network path is ifupdown with
/// isc-dhcp-client: cloud-init's first choice of renderer (`eni`) on Debian,
/// and dhclient writes `/etc/resolv.conf` itself (cloud-init depends on
/// isc-dhcp-client anyway). dbus and libpam-systemd give ssh logins a
/// logind session (`XDG_RUNTIME_DIR`, `systemctl --user`). cloud-guest-utils
/// has `growpart`; fdisk and gdisk give it `sfdisk`/`sgdisk`. zstd is what
/// initramfs-tools compresses with. python3-cffi-backend is named because
/// debootstrap does not resolve virtual packages, and python3-cryptography
/// (cloud-init needs it) depends on one only it provides.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "cloud-init",
    "python3-cffi-backend",
    "cloud-guest-utils",
    "openssh-server",
    "openssh-sftp-server",
    "sudo",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "systemd-boot-efi",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "ca-certificates",
    "e2fsprogs",
    "fdisk",
    "gdisk",
    "kmod",
    "procps",
    "tzdata",
];

/// Must not come in through a dependency: a second network stack would
/// change which renderer cloud-init picks, and GRUB's packages would try to
/// install themselves onto a disk the build does not have.
const FORBIDDEN: &[&str] = &[
    "netplan.io",
    "network-manager",
    "systemd-resolved",
    "grub-pc",
    "grub-efi-amd64",
];

/// Where systemd-boot's EFI binary lives in the tree.
const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

const DISK_FILE: &str = "disk.qcow2";
/// Written last: an entry without it is not complete.
const MANIFEST: &str = "cloud-image.json";
const ROOT_LABEL: &str = "debian-root";
const ESP_LABEL: &str = "ESP";

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The ESP: 1 MiB in (GPT and alignment before it), 127 MiB long, so the
/// root partition starts at 128 MiB.
const ESP_START: u64 = MIB;
const ESP_SIZE: u64 = 127 * MIB;
const ROOT_START: u64 = ESP_START + ESP_SIZE;
/// Room at the end of the disk for the backup GPT (33 sectors, rounded up).
const TAIL: u64 = MIB;
/// The smallest virtual disk: room to work in even before cloud-init grows
/// the root partition to the size of a bigger overlay.
const MIN_DISK: u64 = 2 << 30;

/// GPT partition types: EFI system, and Linux root (x86-64) as in the
/// Discoverable Partitions Specification.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Compress the qcow2 (zlib, as Debian's own cloud images are): about half
/// the size to cache and to serve, for a little CPU when QEMU reads it.
const COMPRESS: bool = true;

/// The ext4 features the root filesystem gets, whatever the build host's
/// `/etc/mke2fs.conf` says: bookworm's own defaults, which bookworm's kernel
/// and e2fsck know (a newer host's mke2fs may add features they do not).
const MKE2FS_CONF: &str = "[defaults]\n\
    \tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\
    \tdefault_mntopts = acl,user_xattr\n\
    \tenable_periodic_fsck = 0\n\
    \tblocksize = 4096\n\
    \tinode_size = 256\n\
    \tinode_ratio = 16384\n\
    [fs_types]\n\
    \text4 = {\n\
    \t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\
    \t}\n";

/// `target/images/debian-cloud`.
pub fn dir() -> PathBuf {
    images_dir().join("debian-cloud")
}

/// The identities the disk's parts get, derived from the cache key.
struct Ids {
    disk: String,
    esp_part: String,
    root_part: String,
    root_fs: String,
    /// FAT volume ID, 8 hex digits (`XXXXXXXX`; `XXXX-XXXX` in fstab).
    esp_fs: String,
}

impl Ids {
    fn new(hash: &str) -> Ids {
        let id = |what: &str| {
            uuid_from(&inputs_hash(&[
                ("id", what.as_bytes()),
                ("of", hash.as_bytes()),
            ]))
        };
        let esp_fs =
            inputs_hash(&[("id", b"esp-fs"), ("of", hash.as_bytes())])[..8].to_ascii_uppercase();
        Ids {
            disk: id("disk"),
            esp_part: id("esp-part"),
            root_part: id("root-part"),
            root_fs: id("root-fs"),
            esp_fs,
        }
    }

    /// The ESP's volume ID as fstab and `/dev/disk/by-uuid` spell it.
    fn esp_fs_dashed(&self) -> String {
        format!("{}-{}", &self.esp_fs[..4], &self.esp_fs[4..])
    }
}

/// A version-4-shaped UUID from the first 32 hex digits of `hex`.
fn uuid_from(hex: &str) -> String {
    let mut h: Vec<char> = hex[..32].to_ascii_lowercase().chars().collect();
    h[12] = '4';
    // The variant: 10xx in the top bits of the 17th digit.
    let v = h[16].to_digit(16).unwrap_or(0);
    h[16] = char::from_digit(8 | (v & 3), 16).unwrap_or('8');
    let s: String = h.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// The kernel command line: the root by partition UUID (the initramfs finds
/// it whatever the disk is called), the console on the first serial port.
fn cmdline(ids: &Ids) -> String {
    format!("root=PARTUUID={} ro console=ttyS0", ids.root_part)
}

fn loader_conf() -> &'static str {
    // timeout 0: no menu, the default entry boots at once (holding a key
    // at boot still shows the menu).
    "default debian.conf\ntimeout 0\neditor no\n"
}

fn loader_entry(release: &str, ids: &Ids) -> String {
    format!(
        "title Debian GNU/Linux 12 (bookworm)\nversion {release}\n\
         linux /vmlinuz-{release}\ninitrd /initrd.img-{release}\noptions {}\n",
        cmdline(ids)
    )
}

fn fstab(ids: &Ids) -> String {
    format!(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID={} / ext4 errors=remount-ro 0 1\n\
         UUID={} /boot/efi vfat umask=0077,nofail 0 0\n",
        ids.root_fs,
        ids.esp_fs_dashed()
    )
}

/// The `sfdisk` script for a disk of `disk_size` bytes.
fn sfdisk_script(disk_size: u64, ids: &Ids) -> String {
    let root_size = disk_size - ROOT_START - TAIL;
    format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n\
         start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"EFI system\"\n\
         start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"root\"\n",
        ids.disk,
        ESP_START / SECTOR,
        ESP_SIZE / SECTOR,
        ids.esp_part,
        ROOT_START / SECTOR,
        root_size / SECTOR,
        ids.root_part,
    )
}

/// The virtual disk size for a tree of `bytes` in `inodes` entries: the
/// filesystem with half again as much free room, rounded up to 256 MiB, at
/// least [`MIN_DISK`].
fn disk_size(bytes: u64, inodes: u64) -> u64 {
    let data = bytes + inodes * 4096;
    let root = data + data / 2 + 64 * MIB;
    let quantum = 256 * MIB;
    let size = (ROOT_START + root + TAIL).div_ceil(quantum) * quantum;
    size.max(MIN_DISK)
}

/// The plain-QEMU command line that boots the image to a login prompt under
/// TCG, as our tests and the benchmarks' baseline do: q35 with Debian's
/// OVMF (`code` read-only, `vars` a private writable copy of
/// `OVMF_VARS_4M.fd`), the disk (an overlay of `disk.qcow2`) on virtio-blk,
/// user networking on virtio-net with `ssh_port` forwarded to port 22, the
/// NoCloud `seed` as a second virtio disk, and the console into `serial`.
pub fn plain_qemu_args(
    code: &Path,
    vars: &Path,
    disk: &Path,
    seed: Option<&Path>,
    ssh_port: Option<u16>,
    serial: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "2G",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let mut pair = |flag: &str, value: OsString| {
        args.push(flag.into());
        args.push(value);
    };
    let with_path = |prefix: &str, path: &Path, suffix: &str| {
        let mut s = OsString::from(prefix);
        s.push(path.as_os_str());
        s.push(suffix);
        s
    };
    pair(
        "-drive",
        with_path("if=pflash,format=raw,readonly=on,file=", code, ""),
    );
    pair("-drive", with_path("if=pflash,format=raw,file=", vars, ""));
    pair(
        "-drive",
        with_path("file=", disk, ",format=qcow2,if=virtio"),
    );
    if let Some(seed) = seed {
        pair(
            "-drive",
            with_path("file=", seed, ",format=raw,if=virtio,readonly=on"),
        );
    }
    let netdev = match ssh_port {
        Some(port) => format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        None => "user,id=n0".to_string(),
    };
    pair("-netdev", netdev.into());
    pair("-device", "virtio-net-pci,netdev=n0".into());
    pair("-serial", with_path("file:", serial, ""));
    args
}

/// The tools the recipe runs, found before any work starts.
struct Tools {
    debootstrap: PathBuf,
    mke2fs: PathBuf,
    mkfs_vfat: PathBuf,
    sfdisk: PathBuf,
    mmd: PathBuf,
    mcopy: PathBuf,
    qemu_img: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        let tool = |name: &str, package: &str| {
            cmd::system_tool(name).with_context(|| {
                format!("{name} is missing; `cargo xtask setup` installs it (package {package})")
            })
        };
        Ok(Tools {
            debootstrap: tool("debootstrap", "debootstrap")?,
            mke2fs: tool("mke2fs", "e2fsprogs")?,
            mkfs_vfat: tool("mkfs.vfat", "dosfstools")?,
            sfdisk: tool("sfdisk", "fdisk")?,
            mmd: tool("mmd", "mtools")?,
            mcopy: tool("mcopy", "mtools")?,
            qemu_img: tool("qemu-img", "qemu-utils")?,
        })
    }
}

/// `cargo xtask image debian-cloud`: the cached `disk.qcow2` for the current
/// inputs, built if missing. Returns its absolute path (in the cache entry,
/// which never changes once made).
pub fn assemble() -> Result<PathBuf> {
    let started = Instant::now();
    let images = images_dir();
    let cache = images.join("cache");
    let mirror = mirror();
    let packages = PACKAGES.join(",");
    let hash = inputs_hash(&[
        ("cloud-recipe", RECIPE_VERSION.as_bytes()),
        ("suite", SUITE.as_bytes()),
        ("mirror", mirror.as_bytes()),
        ("packages", packages.as_bytes()),
        ("compress", if COMPRESS { b"zlib" } else { b"none" }),
    ]);
    let name = format!("cloud-{hash}");
    let entry = cache.join(&name);
    let disk = entry.join(DISK_FILE);
    if entry.join(MANIFEST).is_file() {
        point_at(&images, "debian-cloud", &name)?;
        eprintln!(
            "image: cached {} -> cache/{name} ({:.0} MiB, {:.1}s)",
            dir().display(),
            mib(fs::metadata(&disk)?.len()),
            started.elapsed().as_secs_f64()
        );
        print_plain_qemu(&disk);
        return Ok(disk);
    }

    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "building the Debian cloud image runs debootstrap, which needs root; \
         run `cargo xtask image debian-cloud` as root"
    );
    let tools = Tools::find()?;
    let scratch = images_dir()
        .join("tmp")
        .join(format!("{}-cloud", std::process::id()));
    unmount_under(&scratch);
    remove_dir_if_present(&scratch)?;
    let out = scratch.join("out");
    for dir in [&out, &cache] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The tree's permissions go into the filesystems as they are; do not
    // let a strict umask of whoever runs this leak into the guest.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));

    let recipe = Recipe {
        tools: &tools,
        scratch: &scratch,
        tree: scratch.join("root"),
        ids: Ids::new(&hash),
    };
    let built = recipe
        .build(&mirror, &packages, &out, &hash)
        .and_then(|report| {
            if let Err(e) = fs::rename(&out, &entry) {
                if !entry.join(MANIFEST).is_file() {
                    return Err(e).with_context(|| {
                        format!("cannot move {} to {}", out.display(), entry.display())
                    });
                }
            }
            Ok(report)
        });
    // The tree and the raw disk are gigabytes; never leave them behind. A
    // failed build's error matters more than a failed cleanup's.
    unmount_under(&scratch);
    let cleaned = remove_dir_if_present(&scratch);
    let report = match (built, cleaned) {
        (Ok(report), Ok(())) => report,
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), cleaned) => {
            if let Err(c) = cleaned {
                eprintln!("image: warning: {c:#}");
            }
            return Err(e);
        }
    };
    point_at(&images, "debian-cloud", &name)?;
    eprintln!(
        "image: debian-cloud {DISK_FILE} {:.0} MiB (virtual {:.0} MiB), kernel {}; \
         debootstrap {:.0}s, filesystems {:.1}s, qcow2 {:.1}s, total {:.0}s",
        mib(fs::metadata(&disk)?.len()),
        mib(report.virtual_size),
        report.release,
        report.debootstrap_secs,
        report.filesystems_secs,
        report.qcow2_secs,
        started.elapsed().as_secs_f64()
    );
    eprintln!("image: {} -> cache/{name}", dir().display());
    print_plain_qemu(&disk);
    Ok(disk)
}

/// Shows how to boot the image by hand (what the benchmark baseline runs).
fn print_plain_qemu(disk: &Path) {
    let args = plain_qemu_args(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        Path::new("VARS.fd"),
        Path::new("overlay.qcow2"),
        Some(Path::new("seed.img")),
        Some(2222),
        Path::new("console.log"),
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(args);
    eprintln!(
        "image: to boot it: cp /usr/share/OVMF/OVMF_VARS_4M.fd VARS.fd; \
         qemu-img create -f qcow2 -b {} -F qcow2 overlay.qcow2 20G; {}",
        disk.display(),
        cmd::display(&qemu)
    );
}

struct Recipe<'a> {
    tools: &'a Tools,
    scratch: &'a Path,
    tree: PathBuf,
    ids: Ids,
}

/// What a build measured, for the log.
struct Report {
    release: String,
    virtual_size: u64,
    debootstrap_secs: f64,
    filesystems_secs: f64,
    qcow2_secs: f64,
}

impl Recipe<'_> {
    fn build(&self, mirror: &str, packages: &str, out: &Path, hash: &str) -> Result<Report> {
        let t = Instant::now();
        self.debootstrap(mirror, packages)?;
        let debootstrap_secs = t.elapsed().as_secs_f64();
        check_forbidden(&self.tree, FORBIDDEN)?;
        check_configured(&self.tree)?;

        let t = Instant::now();
        let release = self.kernel_release()?;
        self.configure()?;
        self.clean()?;
        let (bytes, inodes) = tree_usage(&self.tree)?;
        let virtual_size = disk_size(bytes, inodes);
        let root = self.scratch.join("root.ext4");
        self.make_root(&root, virtual_size - ROOT_START - TAIL)?;
        let esp = self.scratch.join("esp.vfat");
        self.make_esp(&esp, &release)?;
        let raw = self.scratch.join("disk.raw");
        self.make_disk(&raw, virtual_size, &esp, &root)?;
        let filesystems_secs = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let disk = out.join(DISK_FILE);
        let mut convert = Command::new(&self.tools.qemu_img);
        convert.args(["convert", "-f", "raw", "-O", "qcow2"]);
        if COMPRESS {
            convert.arg("-c");
        }
        cmd::run(convert.arg(&raw).arg(&disk))?;
        fs::remove_file(&raw).with_context(|| format!("cannot remove {}", raw.display()))?;
        let qcow2_secs = t.elapsed().as_secs_f64();
        let sha256 = crate::cache::sha256_file(&disk)?;

        let manifest = serde_json::json!({
            "name": "debian-cloud",
            "arch": "x86_64",
            "suite": SUITE,
            "disk": DISK_FILE,
            "format": "qcow2",
            "sha256": sha256,
            "virtual_size": virtual_size,
            "kernel_release": release,
            "cmdline": cmdline(&self.ids),
            "root_partuuid": self.ids.root_part,
            "root_fs_uuid": self.ids.root_fs,
            "packages": PACKAGES,
            "mirror": mirror,
            "inputs_hash": hash,
        });
        let text = serde_json::to_string_pretty(&manifest)? + "\n";
        write(&out.join(MANIFEST), text.as_bytes(), 0o644)?;
        Ok(Report {
            release,
            virtual_size,
            debootstrap_secs,
            filesystems_secs,
            qcow2_secs,
        })
    }

    fn debootstrap(&self, mirror: &str, packages: &str) -> Result<()> {
        // Package files are kept (shared with the other Debian images), so
        // a rebuild downloads only what changed.
        let debs = images_dir().join("download/debootstrap");
        fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
        eprintln!("image: debootstrap {SUITE} (minbase + {packages}) from {mirror}");
        let result = cmd::run(
            Command::new(&self.tools.debootstrap)
                .arg("--variant=minbase")
                .arg(format!("--include={packages}"))
                .arg(format!("--cache-dir={}", debs.display()))
                .arg(SUITE)
                .arg(&self.tree)
                .arg(mirror),
        );
        // debootstrap can leave the target's /proc mounted.
        unmount_under(&self.tree);
        result
    }

    /// The release of the one kernel in `/boot`, with its initrd next to it.
    fn kernel_release(&self) -> Result<String> {
        let boot = self.tree.join("boot");
        let releases: Vec<String> = fs::read_dir(&boot)
            .context("the tree has no /boot")?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_string)
            })
            .collect();
        let [release] = releases.as_slice() else {
            bail!("expected one /boot/vmlinuz-* in the tree, found {releases:?}");
        };
        let initrd = boot.join(format!("initrd.img-{release}"));
        ensure!(
            initrd.is_file(),
            "the kernel package made no {}",
            initrd.display()
        );
        Ok(release.clone())
    }

    /// Turns the debootstrapped tree into a cloud image: what must be
    /// unique per instance is removed (cloud-init and systemd make it at
    /// first boot), what the build host leaked in is replaced.
    fn configure(&self) -> Result<()> {
        let tree = &self.tree;
        let files: &[(&str, String)] = &[
            ("etc/fstab", fstab(&self.ids)),
            ("etc/hostname", "debian\n".into()),
            (
                "etc/hosts",
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
                    .into(),
            ),
            // debootstrap copied the build host's; dhclient writes the
            // guest's own when the network comes up.
            ("etc/resolv.conf", String::new()),
            // Empty: systemd makes a new machine ID at first boot.
            ("etc/machine-id", String::new()),
            // cloud-init's own default; with it set, cc_locale has nothing
            // to generate (bookworm's cloud-init would otherwise run
            // locale-gen at first boot).
            ("etc/default/locale", "LANG=C.UTF-8\n".into()),
            (
                // Last in the directory, so it wins over a list debconf
                // may write into 90_dpkg.cfg. User data can override the
                // second setting, not the first.
                "etc/cloud/cloud.cfg.d/99_lima-rs.cfg",
                "# lima-rs: only the NoCloud seed (a CIDATA disk, or ds=nocloud on the\n\
                 # kernel command line), else None. Probing for cloud metadata\n\
                 # services would cost every boot its timeouts.\n\
                 datasource_list: [ NoCloud, None ]\n\
                 # The hostname from the seed goes into /etc/hosts, so that sudo\n\
                 # and others can resolve it.\n\
                 manage_etc_hosts: true\n"
                    .into(),
            ),
            (
                // cloud-init makes the host keys at first boot (they must
                // differ per instance); should it not run, sshd still starts.
                // The empty line resets the list, so the keys exist before
                // the unit's own config check runs.
                "etc/systemd/system/ssh.service.d/host-keys.conf",
                "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n\
                 ExecStartPre=/usr/sbin/sshd -t\n"
                    .into(),
            ),
        ];
        for (path, text) in files {
            let path = tree.join(path);
            // debootstrap may leave a symlink here; replace it, never follow it.
            if path.symlink_metadata().is_ok() {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot replace {}", path.display()))?;
            }
            write(&path, text.as_bytes(), 0o644)?;
        }
        fs::create_dir_all(tree.join("boot/efi")).context("cannot create /boot/efi")?;

        // Host keys made by openssh-server's postinst would be shared by
        // every instance.
        for entry in fs::read_dir(tree.join("etc/ssh")).context("the tree has no /etc/ssh")? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        let dbus_id = tree.join("var/lib/dbus/machine-id");
        if dbus_id.symlink_metadata().is_ok_and(|m| m.is_file()) {
            fs::remove_file(&dbus_id)
                .with_context(|| format!("cannot remove {}", dbus_id.display()))?;
        }
        lock_root(tree)?;
        self.check_network_config()
    }

    /// cloud-init writes its network config to `/etc/network/interfaces.d`,
    /// which ifupdown reads only if the main file sources it.
    fn check_network_config(&self) -> Result<()> {
        let path = self.tree.join("etc/network/interfaces");
        let text = fs::read_to_string(&path).unwrap_or_default();
        if !text.lines().any(|l| {
            let l = l.trim();
            l.starts_with("source") && l.contains("/etc/network/interfaces.d")
        }) {
            write(
                &path,
                b"# cloud-init writes the interfaces into interfaces.d.\n\
                  source /etc/network/interfaces.d/*\n",
                0o644,
            )?;
        }
        Ok(())
    }

    /// `apt-get clean`, and the package lists, logs and caches the build left.
    fn clean(&self) -> Result<()> {
        cmd::run(
            Command::new("chroot")
                .arg(&self.tree)
                .args(["apt-get", "clean"]),
        )?;
        for (dir, keep) in [
            ("var/lib/apt/lists", &["partial", "lock"][..]),
            ("var/log/apt", &[][..]),
            (
                "var/cache/debconf",
                &["config.dat", "passwords.dat", "templates.dat"][..],
            ),
            ("tmp", &[][..]),
            ("var/tmp", &[][..]),
        ] {
            let dir = self.tree.join(dir);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if keep.contains(&entry.file_name().to_str().unwrap_or_default()) {
                    continue;
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
                .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        // The build's own logs; wtmp and the like stay.
        for entry in fs::read_dir(self.tree.join("var/log")).context("the tree has no /var/log")? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") && path.is_file() {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The root partition's ext4, `size` bytes, filled from the tree.
    fn make_root(&self, image: &Path, size: u64) -> Result<()> {
        let conf = self.scratch.join("mke2fs.conf");
        write(&conf, MKE2FS_CONF.as_bytes(), 0o644)?;
        cmd::run(
            Command::new(&self.tools.mke2fs)
                .env("MKE2FS_CONFIG", &conf)
                .args([
                    "-q",
                    "-t",
                    "ext4",
                    "-L",
                    ROOT_LABEL,
                    "-U",
                    &self.ids.root_fs,
                ])
                // Write the inode tables now, so the guest's first mount
                // has no lazy initialisation to do behind its back.
                .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg("-d")
                .arg(&self.tree)
                .arg(image)
                .arg(format!("{}k", size / 1024)),
        )
    }

    /// The ESP: FAT32 with systemd-boot as the removable-media loader, its
    /// configuration, and the kernel and initrd it boots.
    fn make_esp(&self, image: &Path, release: &str) -> Result<()> {
        cmd::run(
            Command::new(&self.tools.mkfs_vfat)
                .args(["-F", "32", "-n", ESP_LABEL, "-i", &self.ids.esp_fs, "-C"])
                .arg(image)
                .arg((ESP_SIZE / 1024).to_string()),
        )?;
        let staging = self.scratch.join("esp");
        write(
            &staging.join("loader.conf"),
            loader_conf().as_bytes(),
            0o644,
        )?;
        write(
            &staging.join("debian.conf"),
            loader_entry(release, &self.ids).as_bytes(),
            0o644,
        )?;
        let mtools = |program: &Path| {
            let mut c = Command::new(program);
            // mtools refuses a FAT it thinks odd unless told not to check.
            c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(image);
            c
        };
        cmd::run(mtools(&self.tools.mmd).args([
            "::/EFI",
            "::/EFI/BOOT",
            "::/loader",
            "::/loader/entries",
        ]))?;
        let boot = self.tree.join("boot");
        for (from, to) in [
            (
                self.tree.join(SYSTEMD_BOOT),
                "::/EFI/BOOT/BOOTX64.EFI".to_string(),
            ),
            (staging.join("loader.conf"), "::/loader/loader.conf".into()),
            (
                staging.join("debian.conf"),
                "::/loader/entries/debian.conf".into(),
            ),
            (
                boot.join(format!("vmlinuz-{release}")),
                format!("::/vmlinuz-{release}"),
            ),
            (
                boot.join(format!("initrd.img-{release}")),
                format!("::/initrd.img-{release}"),
            ),
        ] {
            ensure!(from.is_file(), "the tree has no {}", from.display());
            cmd::run(mtools(&self.tools.mcopy).arg(&from).arg(&to))?;
        }
        Ok(())
    }

    /// A sparse raw disk of `size` bytes with the GPT and both partitions.
    fn make_disk(&self, raw: &Path, size: u64, esp: &Path, root: &Path) -> Result<()> {
        let file =
            fs::File::create(raw).with_context(|| format!("cannot create {}", raw.display()))?;
        file.set_len(size)
            .with_context(|| format!("cannot size {}", raw.display()))?;
        drop(file);
        let script = sfdisk_script(size, &self.ids);
        let mut sfdisk = Command::new(&self.tools.sfdisk);
        sfdisk
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(raw);
        run_with_stdin(&mut sfdisk, &script)?;
        check_partitions(&self.tools.sfdisk, raw, &self.ids, size)?;
        for (part, offset, room) in [
            (esp, ESP_START, ESP_SIZE),
            (root, ROOT_START, size - ROOT_START - TAIL),
        ] {
            let len = fs::metadata(part)
                .with_context(|| format!("cannot stat {}", part.display()))?
                .len();
            ensure!(
                len <= room,
                "{} is {len} bytes, its partition {room}",
                part.display()
            );
            // conv=sparse skips the zero blocks, so the raw disk stays sparse.
            cmd::run(
                Command::new("dd")
                    .arg(format!("if={}", part.display()))
                    .arg(format!("of={}", raw.display()))
                    .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                    .arg(format!("seek={}", offset / MIB)),
            )?;
            fs::remove_file(part).with_context(|| format!("cannot remove {}", part.display()))?;
        }
        Ok(())
    }
}

/// Locks root's password (`*`): nobody logs in as root with a password;
/// cloud-init makes the users and their keys.
fn lock_root(tree: &Path) -> Result<()> {
    let path = tree.join("etc/shadow");
    let text = fs::read_to_string(&path).context("the tree has no /etc/shadow")?;
    let locked = lock_root_in_shadow(&text).context("/etc/shadow has no root line")?;
    if locked != text {
        write(&path, locked.as_bytes(), 0o640)?;
    }
    Ok(())
}

fn lock_root_in_shadow(text: &str) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"root") && fields.len() > 1 {
                found = true;
                if !fields[1].starts_with(['*', '!']) {
                    fields[1] = "*";
                }
            }
            fields.join(":")
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

/// debootstrap carries on when a package fails to configure (it warns and
/// retries), so check dpkg's own record: every package fully installed.
fn check_configured(tree: &Path) -> Result<()> {
    let status = fs::read_to_string(tree.join("var/lib/dpkg/status"))
        .context("debootstrap left no var/lib/dpkg/status")?;
    let broken = unconfigured(&status);
    ensure!(
        broken.is_empty(),
        "debootstrap left packages not fully installed: {}; see {}",
        broken.join(", "),
        tree.join("debootstrap/debootstrap.log").display()
    );
    Ok(())
}

/// `Package (Status)` of every stanza of a dpkg status file whose status is
/// neither `install ok installed` nor a removed package's.
fn unconfigured(status: &str) -> Vec<String> {
    status
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let package = field("Package:")?;
            let state = field("Status:")?;
            let fine = state == "install ok installed" || state.ends_with(" not-installed");
            (!fine).then(|| format!("{package} ({state})"))
        })
        .collect()
}

/// Runs `cmd` (echoed) with `input` on its stdin; fails unless it exits 0.
fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    eprintln!("$ {} <<EOF\n{input}EOF", cmd::display(cmd));
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("cannot write to `{}`", cmd::display(cmd)))?;
    let status = child.wait()?;
    ensure!(status.success(), "`{}` failed: {status}", cmd::display(cmd));
    Ok(())
}

/// Reads the partition table back (`sfdisk --json`) and checks it is the
/// one asked for.
fn check_partitions(sfdisk: &Path, raw: &Path, ids: &Ids, size: u64) -> Result<()> {
    let text = cmd::query_text(Command::new(sfdisk).arg("--json").arg(raw))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("`sfdisk --json` printed something else")?;
    let table = &json["partitiontable"];
    let parts = table["partitions"]
        .as_array()
        .context("`sfdisk --json` lists no partitions")?;
    let summary: Vec<(u64, u64, String)> = parts
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap_or_default(),
                p["size"].as_u64().unwrap_or_default(),
                p["uuid"].as_str().unwrap_or_default().to_ascii_lowercase(),
            )
        })
        .collect();
    let expected = vec![
        (ESP_START / SECTOR, ESP_SIZE / SECTOR, ids.esp_part.clone()),
        (
            ROOT_START / SECTOR,
            (size - ROOT_START - TAIL) / SECTOR,
            ids.root_part.clone(),
        ),
    ];
    ensure!(
        table["label"] == "gpt" && summary == expected,
        "the partition table of {} is {summary:?}, expected {expected:?}",
        raw.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Ids {
        Ids::new(&"ab".repeat(32))
    }

    #[test]
    fn ids_are_well_formed_distinct_and_stable() {
        let a = ids();
        let all = [&a.disk, &a.esp_part, &a.root_part, &a.root_fs];
        for id in all {
            assert_eq!(id.len(), 36, "{id}");
            let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
            assert_eq!(dashes, [8, 13, 18, 23], "{id}");
            assert_eq!(&id[14..15], "4", "{id}");
            assert!("89ab".contains(&id[19..20]), "{id}");
        }
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(a.esp_fs.len(), 8);
        assert!(a.esp_fs.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a.esp_fs_dashed().len(), 9);
        assert_eq!(ids().root_part, a.root_part);
        assert_ne!(Ids::new(&"cd".repeat(32)).root_part, a.root_part);
    }

    #[test]
    fn boot_config_names_the_root_by_partuuid_and_uses_the_serial_console() {
        let ids = ids();
        let entry = loader_entry("6.1.0-9-amd64", &ids);
        assert!(entry.contains("linux /vmlinuz-6.1.0-9-amd64\n"), "{entry}");
        assert!(
            entry.contains("initrd /initrd.img-6.1.0-9-amd64\n"),
            "{entry}"
        );
        assert!(
            entry.contains(&format!(
                "options root=PARTUUID={} ro console=ttyS0\n",
                ids.root_part
            )),
            "{entry}"
        );
        assert!(loader_conf().contains("timeout 0\n"));
        assert!(loader_conf().contains("default debian.conf\n"));
        let fstab = fstab(&ids);
        assert!(
            fstab.contains(&format!("UUID={} / ext4 ", ids.root_fs)),
            "{fstab}"
        );
        assert!(fstab.contains(&format!("UUID={} /boot/efi vfat", ids.esp_fs_dashed())));
        assert!(!fstab.contains("/dev/"), "{fstab}");
    }

    #[test]
    fn partition_table_puts_the_root_last_and_aligned() {
        let ids = ids();
        let size = 2 << 30;
        let script = sfdisk_script(size, &ids);
        assert!(script.starts_with("label: gpt\n"), "{script}");
        let lines: Vec<&str> = script.lines().filter(|l| l.starts_with("start=")).collect();
        assert_eq!(lines.len(), 2, "{script}");
        assert!(
            lines[0].starts_with("start=2048, size=260096, type=C12A7328"),
            "{script}"
        );
        assert!(lines[0].contains(&ids.esp_part));
        // The root is the last partition (growpart grows it into new space),
        // starts at 128 MiB and leaves 1 MiB for the backup GPT.
        let root_sectors = (size - 129 * MIB) / SECTOR;
        assert!(
            lines[1].starts_with(&format!("start=262144, size={root_sectors}, type=4F68BCE3")),
            "{script}"
        );
        assert!(lines[1].contains(&ids.root_part));
    }

    #[test]
    fn disk_size_leaves_room_and_has_a_floor() {
        assert_eq!(disk_size(0, 0), MIN_DISK);
        let size = disk_size(2 << 30, 50_000);
        assert_eq!(size % (256 * MIB), 0);
        assert!(size - ROOT_START - TAIL > (2u64 << 30) * 3 / 2, "{size}");
    }

    #[test]
    fn root_gets_locked_and_others_are_kept() {
        let shadow = "root::19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";
        assert_eq!(
            lock_root_in_shadow(shadow).unwrap(),
            "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        );
        let hashed = "root:$6$salt$hash:19000:0:99999:7:::\n";
        assert_eq!(
            lock_root_in_shadow(hashed).unwrap(),
            "root:*:19000:0:99999:7:::\n"
        );
        let locked = "root:!:19000::::::\n";
        assert_eq!(lock_root_in_shadow(locked).unwrap(), locked);
        assert_eq!(lock_root_in_shadow("daemon:*:1::::::\n"), None);
    }

    #[test]
    fn half_configured_packages_are_named() {
        let status = "Package: ok\nStatus: install ok installed\n\n\
                      Package: python3-cryptography\nStatus: install ok unpacked\n\n\
                      Package: gone\nStatus: purge ok not-installed\n\n\
                      Package: cloud-init\nStatus: install ok half-configured\n";
        assert_eq!(
            unconfigured(status),
            [
                "python3-cryptography (install ok unpacked)",
                "cloud-init (install ok half-configured)"
            ]
        );
        assert!(unconfigured("Package: a\nStatus: install ok installed\n").is_empty());
    }

    #[test]
    fn packages_have_what_a_cloud_image_needs_and_nothing_forbidden() {
        for needed in [
            "systemd-sysv",
            "cloud-init",
            "cloud-guest-utils",
            "openssh-server",
            "linux-image-amd64",
            "systemd-boot-efi",
            "isc-dhcp-client",
        ] {
            assert!(PACKAGES.contains(&needed), "{needed}");
        }
        for f in FORBIDDEN {
            assert!(!PACKAGES.contains(f), "{f}");
        }
    }

    #[test]
    fn plain_qemu_boots_the_disk_with_firmware_seed_and_ssh() {
        let args = plain_qemu_args(
            Path::new("/fw/CODE.fd"),
            Path::new("/x/VARS.fd"),
            Path::new("/x/overlay.qcow2"),
            Some(Path::new("/x/seed.img")),
            Some(2222),
            Path::new("/x/console.log"),
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for needed in [
            "-machine q35,accel=tcg",
            "-drive if=pflash,format=raw,readonly=on,file=/fw/CODE.fd",
            "-drive if=pflash,format=raw,file=/x/VARS.fd",
            "-drive file=/x/overlay.qcow2,format=qcow2,if=virtio",
            "-drive file=/x/seed.img,format=raw,if=virtio,readonly=on",
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22",
            "-device virtio-net-pci,netdev=n0",
            "-serial file:/x/console.log",
        ] {
            assert!(joined.contains(needed), "{needed} not in {joined}");
        }
        let bare = plain_qemu_args(
            Path::new("/c"),
            Path::new("/v"),
            Path::new("/d"),
            None,
            None,
            Path::new("/s"),
        );
        let bare: Vec<String> = bare
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(bare.contains(&"user,id=n0".to_string()), "{bare:?}");
        assert_eq!(bare.iter().filter(|a| *a == "-drive").count(), 3);
    }
}
