//! `cargo xtask image debian`: the default image's kernel and initramfs plus
//! a Debian root filesystem (`rootfs.ext4`), so the guest has python3, gcc,
//! git and apt while still booting with the agent as PID 1 (no systemd, no
//! cloud-init).
//!
//! The root filesystem comes from `debootstrap --variant=minbase` plus a
//! short package list, trimmed (apt caches, docs, man pages, locales) and
//! packed by `mke2fs -d` into an ext4 image, with no loop mount. The guest
//! agent mounts it read-only from virtio-blk with a tmpfs overlay on top and
//! switches its root into it (`lima.root=` on the kernel command line, see
//! `guest-agent/src/init.rs`).
//!
//! Two cache levels, both in `target/images/cache/`:
//!
//! - `rootfs-<hash>/rootfs.ext4`, keyed by the suite, the mirror, the
//!   package list and [`ROOTFS_RECIPE_VERSION`]. The agent is not an input,
//!   so rebuilding the agent does not re-run debootstrap.
//! - `<hash>/`, the image directory itself (`vmlinuz`, `initrd.img`,
//!   `rootfs.ext4` hard-linked from the default image and the rootfs entry,
//!   plus `image.json`), keyed by both. `target/images/debian` points at it.
//!
//! The mirror is the one this host's apt uses for the suite (our build
//! machines reach only their configured mirror), else deb.debian.org;
//! `LIMA_DEBIAN_MIRROR` overrides it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::cache::{images_dir, inputs_hash};
use crate::cmd;
use crate::fsutil::{mib, remove_dir_if_present, symlink, write};

/// Bump whenever the recipe changes what ends up in `rootfs.ext4`.
const ROOTFS_RECIPE_VERSION: &str = "2";
/// Bump when the image directory's layout changes (not the rootfs).
const IMAGE_LAYOUT_VERSION: &str = "2";
pub(crate) const SUITE: &str = "bookworm";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";
/// On top of minbase (which already has apt, dpkg, bash, coreutils).
/// `kmod` gives the kernel a `/sbin/modprobe` to load modules on demand
/// after the switch; `netbase` gives `/etc/services` and `/etc/protocols`.
const PACKAGES: &[&str] = &[
    "python3",
    "gcc",
    "libc6-dev",
    "make",
    "git",
    "ca-certificates",
    "procps",
    "iproute2",
    "kmod",
    "netbase",
    // The guest user's passwordless sudo (the agent writes its sudoers line).
    "sudo",
    // Foreign architectures: the agent registers these emulators in
    // binfmt_misc (guest-agent/src/binfmt.rs); trimmed to EMULATORS.
    "qemu-user-static",
];
/// The `qemu-user-static` emulators the image keeps (QEMU's names): arm64
/// and 32-bit arm, the foreign platforms images are most often built for.
/// The package's other 30 (360 MiB) go.
const EMULATORS: &[&str] = &["aarch64", "arm"];
/// Must never be in the image: the agent is init.
const FORBIDDEN: &[&str] = &["systemd-sysv", "systemd", "cloud-init", "linux-image-amd64"];
const ROOTFS_FILE: &str = "rootfs.ext4";
const LABEL: &str = "lima-root";

/// What goes into a root filesystem.
struct Recipe {
    /// Also an input of the cache key, except for the agent image's own
    /// recipe (keeps existing caches valid).
    flavor: &'static str,
    packages: Vec<&'static str>,
    forbidden: &'static [&'static str],
    /// Copy the tree's `/boot/vmlinuz-*` and `/boot/initrd.img-*` out as
    /// `vmlinuz` and `initrd.img` next to `rootfs.ext4`.
    boot_files: bool,
}

/// The image the agent boots into (no init system, no kernel package).
fn agent_recipe() -> Recipe {
    Recipe {
        flavor: "agent",
        packages: PACKAGES.to_vec(),
        forbidden: FORBIDDEN,
        boot_files: false,
    }
}

/// Packages the docker image adds to [`PACKAGES`]: the engine (Debian's
/// docker.io 20.10 with containerd and runc), iptables (Debian's default
/// nft backend) for its bridge network, and the rootless engine's helpers
/// (rootlesskit, slirp4netns, newuidmap/newgidmap from uidmap). One name a
/// line, so more (qemu-user-static, ...) are one line each.
pub(crate) const DOCKER_PACKAGES: &[&str] = &[
    "docker.io",
    "containerd",
    "runc",
    "iptables",
    "rootlesskit",
    "slirp4netns",
    "uidmap",
];

/// The docker image's root filesystem: the agent image's plus the engine.
fn docker_recipe() -> Recipe {
    let mut packages = PACKAGES.to_vec();
    packages.extend_from_slice(DOCKER_PACKAGES);
    Recipe {
        flavor: "docker",
        packages,
        forbidden: FORBIDDEN,
        boot_files: false,
    }
}

/// `target/images/docker`.
pub fn docker_dir() -> PathBuf {
    images_dir().join("docker")
}

/// Assembles `builtin:docker` around the kernel and initramfs in
/// `base_dir` (the default image's, with the engine's modules added), or
/// finds it in the cache.
pub fn assemble_docker(base_dir: &Path) -> Result<PathBuf> {
    assemble_as(base_dir, &docker_recipe(), "docker")?;
    Ok(docker_dir())
}

/// Packages the classic image adds: an init system and a kernel with
/// Debian's own initramfs, as a stock Debian VM boots.
const CLASSIC_EXTRA: &[&str] = &[
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
];

/// The benchmarks' baseline: the same userland booted the classic way, by
/// Debian's initramfs and systemd to a login prompt.
fn classic_recipe() -> Recipe {
    let mut packages = PACKAGES.to_vec();
    packages.extend_from_slice(CLASSIC_EXTRA);
    Recipe {
        flavor: "classic",
        packages,
        forbidden: &["cloud-init"],
        boot_files: true,
    }
}

/// `target/images/debian-classic`.
pub fn classic_dir() -> PathBuf {
    images_dir().join("debian-classic")
}

/// `cargo xtask image debian-classic`: the Debian rootfs with systemd and a
/// kernel package, plus that kernel and Debian's initramfs, for the `run`
/// benchmark's classic boot (not an image `limactl` boots: no image.json).
pub fn assemble_classic() -> Result<PathBuf> {
    let images = images_dir();
    let file = rootfs(&images.join("cache"), &classic_recipe())?;
    let entry = file.parent().context("rootfs has no parent")?;
    let name = entry
        .file_name()
        .and_then(|n| n.to_str())
        .context("rootfs cache entry has no name")?;
    let hash = name.strip_prefix("rootfs-").unwrap_or(name);
    point_at(&images, "debian-classic", &format!("rootfs-{hash}"))?;
    eprintln!("image: {} -> cache/rootfs-{hash}", classic_dir().display());
    Ok(classic_dir())
}

/// `target/images/debian`.
pub fn dir() -> PathBuf {
    images_dir().join("debian")
}

/// Assembles the Debian image around the default image in `default_dir`
/// (its kernel and initramfs), or finds it in the cache.
pub fn assemble(default_dir: &Path) -> Result<PathBuf> {
    assemble_as(default_dir, &agent_recipe(), "debian")?;
    Ok(dir())
}

/// An image named `name`: the kernel and initramfs of `default_dir` and
/// the root filesystem of `recipe`.
fn assemble_as(default_dir: &Path, recipe: &Recipe, name: &str) -> Result<()> {
    let started = Instant::now();
    let images = images_dir();
    let cache = images.join("cache");
    let base = default_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", default_dir.display()))?;
    let base_json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(base.join("image.json"))
            .with_context(|| format!("cannot read {}/image.json", base.display()))?,
    )
    .with_context(|| format!("{}/image.json", base.display()))?;
    let base_hash = base_json["inputs_hash"]
        .as_str()
        .context("the default image's image.json has no inputs_hash")?;
    let kernel_release = base_json["kernel_release"]
        .as_str()
        .context("the default image's image.json has no kernel_release")?;

    let rootfs = rootfs(&cache, recipe)?;
    let rootfs_hash = rootfs
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("rootfs-"))
        .context("rootfs cache entry has an unexpected name")?
        .to_string();

    let mut inputs: Vec<(&str, &[u8])> = vec![
        ("debian-image", ROOTFS_RECIPE_VERSION.as_bytes()),
        ("layout", IMAGE_LAYOUT_VERSION.as_bytes()),
        ("base", base_hash.as_bytes()),
        ("rootfs", rootfs_hash.as_bytes()),
    ];
    // The Debian image's key stays what it was before other names.
    if name != "debian" {
        inputs.push(("name", name.as_bytes()));
    }
    let hash = inputs_hash(&inputs);
    let entry = cache.join(&hash);
    if !entry.join("image.json").is_file() {
        let partial = cache.join(format!("{hash}.partial-{}", std::process::id()));
        remove_dir_if_present(&partial)?;
        fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let kernel_file = base_json["kernel"]
            .as_str()
            .context("the default image's image.json has no kernel")?;
        link_or_copy(&base.join(kernel_file), &partial.join(kernel_file))?;
        link_or_copy(&base.join("initrd.img"), &partial.join("initrd.img"))?;
        link_or_copy(&rootfs, &partial.join(ROOTFS_FILE))?;
        let json = serde_json::json!({
            "name": name,
            "arch": "x86_64",
            "kernel_release": kernel_release,
            "kernel": kernel_file,
            "initrd": "initrd.img",
            "rootfs": ROOTFS_FILE,
            "suite": SUITE,
            "inputs_hash": hash,
        });
        let text = serde_json::to_string_pretty(&json)? + "\n";
        write(&partial.join("image.json"), text.as_bytes(), 0o644)?;
        if let Err(e) = fs::rename(&partial, &entry) {
            remove_dir_if_present(&partial)?;
            if !entry.join("image.json").is_file() {
                return Err(e).with_context(|| format!("cannot create {}", entry.display()));
            }
        }
    }
    point_at(&images, name, &hash)?;
    eprintln!(
        "image: {} -> cache/{hash} (kernel and initramfs of cache/{base_hash}, rootfs-{rootfs_hash}) in {:.1}s",
        images.join(name).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cached `rootfs.ext4` for the current inputs, built if missing.
fn rootfs(cache: &Path, recipe: &Recipe) -> Result<PathBuf> {
    let started = Instant::now();
    let mirror = mirror();
    let packages = recipe.packages.join(",");
    let mut inputs: Vec<(&str, &[u8])> = vec![
        ("recipe", ROOTFS_RECIPE_VERSION.as_bytes()),
        ("suite", SUITE.as_bytes()),
        ("mirror", mirror.as_bytes()),
        ("packages", packages.as_bytes()),
    ];
    if recipe.flavor != "agent" {
        inputs.push(("flavor", recipe.flavor.as_bytes()));
    }
    let hash = inputs_hash(&inputs);
    let entry = cache.join(format!("rootfs-{hash}"));
    let file = entry.join(ROOTFS_FILE);
    if file.is_file() {
        eprintln!(
            "image: cached rootfs cache/rootfs-{hash} ({:.0} MiB, {SUITE} from {mirror})",
            mib(fs::metadata(&file)?.len())
        );
        return Ok(file);
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "building the Debian root filesystem runs debootstrap, which needs root; \
         run `cargo xtask image debian` as root"
    );
    let debootstrap = cmd::system_tool("debootstrap")
        .context("debootstrap is missing; `cargo xtask setup` installs it")?;
    let mke2fs = cmd::system_tool("mke2fs")
        .context("mke2fs is missing; `cargo xtask setup` installs e2fsprogs")?;

    // Build in a scratch directory of our own and move the result into the
    // cache only when complete, so an interrupted build is never a hit.
    let scratch = images_dir()
        .join("tmp")
        .join(std::process::id().to_string());
    unmount_under(&scratch);
    remove_dir_if_present(&scratch)?;
    let tree = scratch.join("root");
    // Package files, kept so a change of the package list downloads only
    // what is new (debootstrap checks them against the index).
    let debs = images_dir().join("download/debootstrap");
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let out = scratch.join("out");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let built = (|| -> Result<(f64, f64, u64, u64)> {
        eprintln!("image: debootstrap {SUITE} (minbase + {packages}) from {mirror}");
        let t = Instant::now();
        let result = cmd::run(
            Command::new(&debootstrap)
                .arg("--variant=minbase")
                .arg(format!("--include={packages}"))
                .arg(format!("--cache-dir={}", debs.display()))
                .arg(SUITE)
                .arg(&tree)
                .arg(&mirror),
        );
        // debootstrap can leave the target's /proc mounted.
        unmount_under(&tree);
        result?;
        let debootstrap_secs = t.elapsed().as_secs_f64();
        check_forbidden(&tree, recipe.forbidden)?;
        if recipe.boot_files {
            copy_boot_files(&tree, &out)?;
        }
        let trimmed = trim(&tree)?;
        configure(&tree)?;
        let t = Instant::now();
        let image = out.join(ROOTFS_FILE);
        make_ext4(&mke2fs, &tree, &image)?;
        let mke2fs_secs = t.elapsed().as_secs_f64();
        Ok((
            debootstrap_secs,
            mke2fs_secs,
            trimmed,
            fs::metadata(&image)?.len(),
        ))
    })();
    let result = built.and_then(|stats| {
        if let Err(e) = fs::rename(&out, &entry) {
            if !file.is_file() {
                return Err(e).with_context(|| {
                    format!("cannot move {} to {}", out.display(), entry.display())
                });
            }
        }
        Ok(stats)
    });
    // The tree is a few hundred megabytes; do not leave it behind. A failed
    // build's error matters more than a failed cleanup's.
    unmount_under(&scratch);
    let cleaned = remove_dir_if_present(&scratch);
    let (debootstrap_secs, mke2fs_secs, trimmed, size) = match (result, cleaned) {
        (Ok(stats), Ok(())) => stats,
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), cleaned) => {
            if let Err(c) = cleaned {
                eprintln!("image: warning: {c:#}");
            }
            return Err(e);
        }
    };
    eprintln!(
        "image: rootfs.ext4 {:.0} MiB (trimmed {:.0} MiB of caches and docs); \
         debootstrap {debootstrap_secs:.0}s, mke2fs {mke2fs_secs:.1}s, total {:.0}s",
        mib(size),
        mib(trimmed),
        started.elapsed().as_secs_f64()
    );
    Ok(file)
}

/// `LIMA_DEBIAN_MIRROR`, else the host apt's mirror for [`SUITE`], else
/// deb.debian.org.
pub(crate) fn mirror() -> String {
    if let Some(m) = std::env::var("LIMA_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
    {
        return m;
    }
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        sources.extend(more);
    }
    sources
        .iter()
        .filter_map(|path| {
            let text = fs::read_to_string(path).ok()?;
            match path.extension().and_then(|e| e.to_str()) {
                Some("sources") => mirror_from_deb822(&text, SUITE),
                _ if path.ends_with("sources.list")
                    || path.extension() == Some("list".as_ref()) =>
                {
                    mirror_from_one_line(&text, SUITE)
                }
                _ => None,
            }
        })
        .next()
        .unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// The first `deb` URI serving `suite` in one-line `sources.list` format.
fn mirror_from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .find_map(|line| {
            let mut words = line.split_whitespace().peekable();
            if words.next()? != "deb" {
                return None;
            }
            // Options: `[arch=amd64 signed-by=...]`, possibly several words.
            if words.peek()?.starts_with('[') {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            let uri = words.next()?;
            (words.next()? == suite && is_http(uri)).then(|| uri.to_string())
        })
}

/// The first `Types: deb` stanza's URI serving `suite` in deb822 format.
fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    let stanzas = text.split("\n\n").map(|s| {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect::<Vec<_>>()
    });
    for fields in stanzas {
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let enabled = get("enabled").is_none_or(|v| v != "no");
        let deb = get("types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let serves = get("suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if enabled && deb && serves {
            if let Some(uri) = get("uris").and_then(|u| u.split_whitespace().find(|u| is_http(u))) {
                return Some(uri.to_string());
            }
        }
    }
    None
}

fn is_http(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

/// `/boot/vmlinuz-*` and `/boot/initrd.img-*` of the tree, as `vmlinuz`
/// and `initrd.img` in `out`.
fn copy_boot_files(tree: &Path, out: &Path) -> Result<()> {
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
        let found = fs::read_dir(tree.join("boot"))
            .context("the classic rootfs has no /boot")?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("the classic rootfs has no /boot/{prefix}*"))?;
        fs::copy(&found, out.join(name))
            .with_context(|| format!("cannot copy {}", found.display()))?;
        eprintln!("image: classic boot file {}", found.display());
    }
    Ok(())
}

/// Fails if a package in `forbidden` got in through a dependency, or if
/// the tree has suspiciously few packages.
pub(crate) fn check_forbidden(tree: &Path, forbidden: &[&str]) -> Result<()> {
    let status = fs::read_to_string(tree.join("var/lib/dpkg/status"))
        .context("debootstrap left no var/lib/dpkg/status")?;
    let installed: Vec<&str> = status
        .split("\n\n")
        .filter(|s| s.contains("Status: install ok installed"))
        .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    let found: Vec<&&str> = forbidden.iter().filter(|f| installed.contains(f)).collect();
    if !found.is_empty() {
        bail!("the Debian rootfs would contain {found:?}, which this image must not have");
    }
    ensure!(
        installed.len() > 50,
        "var/lib/dpkg/status lists only {} packages",
        installed.len()
    );
    Ok(())
}

/// Removes what a read-only guest root does not need, returns bytes freed.
/// dpkg keeps its file lists, so `apt-get install` in the guest still works.
fn trim(tree: &Path) -> Result<u64> {
    let mut freed = 0;
    // Directories whose contents go, but for the named entries, which apt
    // and dpkg expect to exist.
    let trims: &[(&str, &[&str])] = &[
        ("var/cache/apt/archives", &["partial"]),
        ("var/cache/apt", &["archives"]),
        ("var/lib/apt/lists", &["partial"]),
        ("var/cache/debconf", &[]),
        ("var/log", &["apt"]),
        ("usr/share/doc", &[]),
        ("usr/share/man", &[]),
        ("usr/share/info", &[]),
        ("usr/share/locale", &[]),
        ("usr/share/lintian", &[]),
    ];
    freed += trim_emulators(tree)?;
    for (dir, keep) in trims {
        let dir = tree.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if keep.contains(&entry.file_name().to_str().unwrap_or_default()) {
                continue;
            }
            let path = entry.path();
            freed += du(&path);
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(freed)
}

/// Removes the `qemu-user-static` emulators not in [`EMULATORS`], with their
/// binfmt files, so the agent registers only what is there.
fn trim_emulators(tree: &Path) -> Result<u64> {
    let mut freed = 0;
    let Ok(entries) = fs::read_dir(tree.join("usr/bin")) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(arch) = file
            .to_str()
            .and_then(|f| f.strip_prefix("qemu-"))
            .and_then(|f| f.strip_suffix("-static"))
        else {
            continue;
        };
        if EMULATORS.contains(&arch) {
            continue;
        }
        for path in [
            entry.path(),
            tree.join(format!("usr/lib/binfmt.d/qemu-{arch}.conf")),
            tree.join(format!("usr/share/binfmts/qemu-{arch}")),
            tree.join(format!("usr/libexec/qemu-binfmt/{arch}-binfmt-P")),
        ] {
            if path.symlink_metadata().is_ok() {
                freed += du(&path);
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    Ok(freed)
}

/// Bytes under `path` (apparent sizes; symlinks not followed).
fn du(path: &Path) -> u64 {
    let Ok(meta) = path.symlink_metadata() else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| du(&e.path()))
        .sum::<u64>()
        + meta.len()
}

/// Files the guest needs that debootstrap copied from the build host or left
/// unconfigured.
fn configure(tree: &Path) -> Result<()> {
    let files = [
        // QEMU user networking's DNS; the agent rewrites it at boot too.
        ("etc/resolv.conf", "nameserver 10.0.2.3\n"),
        ("etc/hostname", "lima\n"),
        (
            "etc/hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        ),
        // Keep `apt-get install` in the guest as lean as the image.
        (
            "etc/dpkg/dpkg.cfg.d/lima-no-docs",
            "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n\
             path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n\
             path-exclude=/usr/share/locale/*\n",
        ),
    ];
    for (path, text) in files {
        let path = tree.join(path);
        // debootstrap may leave a symlink here; replace it, never follow it.
        if path.symlink_metadata().is_ok() {
            fs::remove_file(&path).with_context(|| format!("cannot replace {}", path.display()))?;
        }
        write(&path, text.as_bytes(), 0o644)?;
    }
    // The agent bind-mounts itself here, so `lima-guest-agent tool` works.
    let agent = tree.join("usr/bin/lima-guest-agent");
    if agent.symlink_metadata().is_err() {
        write(&agent, b"", 0o755)?;
    }
    symlink_if_missing("/proc/self/mounts", &tree.join("etc/mtab"))
}

fn symlink_if_missing(target: &str, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    symlink(target, link)
}

/// `mke2fs -d`: an ext4 image of `tree`, sized to the tree plus headroom,
/// with enough inodes for Debian's many small files, then shrunk to its
/// minimum by `resize2fs -M` (which needs a forced `e2fsck` first). No
/// journal and no reserved blocks: the guest mounts it read-only.
fn make_ext4(mke2fs: &Path, tree: &Path, image: &Path) -> Result<()> {
    let (bytes, inodes) = tree_usage(tree)?;
    let size_mib = sizing(bytes, inodes);
    let inode_count = inodes + inodes / 5 + 1024;
    cmd::run(
        Command::new(mke2fs)
            .args(["-q", "-t", "ext4", "-b", "4096", "-I", "256"])
            .args(["-O", "^has_journal", "-m", "0", "-L", LABEL])
            .arg("-N")
            .arg(inode_count.to_string())
            .arg("-d")
            .arg(tree)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )?;
    // e2fsck exits 1 when it only optimised something: not an error.
    let status = cmd::status(
        Command::new(cmd::system_tool("e2fsck")?)
            .arg("-fy")
            .arg(image),
    )?;
    ensure!(
        matches!(status.code(), Some(0 | 1)),
        "`e2fsck -fy {}` found errors: {status}",
        image.display()
    );
    cmd::run(
        Command::new(cmd::system_tool("resize2fs")?)
            .arg("-M")
            .arg(image),
    )
}

/// Image size in MiB for `bytes` of files in `inodes` files: every file takes
/// at least a 4 KiB block, plus 15% and 32 MiB for metadata.
fn sizing(bytes: u64, inodes: u64) -> u64 {
    let data = bytes + inodes * 4096;
    (data + data * 15 / 100) / (1 << 20) + 32
}

/// Apparent bytes and number of entries under `tree`.
pub(crate) fn tree_usage(tree: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut count) = (0, 0);
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            count += 1;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok((bytes, count))
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces and such as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        eprintln!("image: unmounting {}", p.display());
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("image: warning: cannot unmount {}: {e}", p.display());
        }
    }
}

/// Hard-links `from` to `to`, copying when they are on different filesystems.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Points `target/images/NAME` at `cache/<hash>` in one rename.
pub(crate) fn point_at(images: &Path, name: &str, hash: &str) -> Result<()> {
    let link = images.join(name);
    let new = images.join(format!("{name}.new-{}", std::process::id()));
    let _ = fs::remove_file(&new);
    symlink(&format!("cache/{hash}"), &new)?;
    fs::rename(&new, &link).with_context(|| format!("cannot replace {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_a_deb822_file() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                    URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(mirror_from_deb822(text, "trixie"), None);
        let disabled = "Types: deb\nURIs: http://a/debian\nSuites: bookworm\nEnabled: no\n\n\
                        Types: deb-src deb\nURIs: cdrom:/x http://b/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_deb822(disabled, "bookworm").as_deref(),
            Some("http://b/debian")
        );
    }

    #[test]
    fn mirror_from_a_one_line_file() {
        let text = "# deb http://old/debian bookworm main\n\
                    deb-src http://src/debian bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb file:/srv bookworm main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn image_size_leaves_room_for_metadata() {
        // 300 MiB in 20k files: more than data plus a block per file.
        let size = sizing(300 << 20, 20_000);
        assert!(size > 300 + 78 && size < 500, "{size}");
        assert_eq!(sizing(0, 0), 32);
    }

    #[test]
    fn only_the_kept_emulators_and_their_binfmt_files_stay() {
        let tree = std::env::temp_dir().join(format!("xtask-emulators-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tree);
        let files = |arch: &str| {
            [
                format!("usr/bin/qemu-{arch}-static"),
                format!("usr/lib/binfmt.d/qemu-{arch}.conf"),
                format!("usr/share/binfmts/qemu-{arch}"),
            ]
        };
        for arch in ["aarch64", "arm", "mips", "riscv64"] {
            for f in files(arch) {
                write(&tree.join(f), b"x", 0o644).unwrap();
            }
            let link = tree.join(format!("usr/libexec/qemu-binfmt/{arch}-binfmt-P"));
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            symlink(&format!("../../bin/qemu-{arch}-static"), &link).unwrap();
        }
        write(&tree.join("usr/bin/python3"), b"x", 0o755).unwrap();
        assert!(trim_emulators(&tree).unwrap() >= 6);
        for arch in ["aarch64", "arm"] {
            assert!(files(arch).iter().all(|f| tree.join(f).exists()), "{arch}");
        }
        for arch in ["mips", "riscv64"] {
            assert!(files(arch).iter().all(|f| !tree.join(f).exists()), "{arch}");
            let link = tree.join(format!("usr/libexec/qemu-binfmt/{arch}-binfmt-P"));
            assert!(link.symlink_metadata().is_err(), "{arch}");
        }
        assert!(tree.join("usr/bin/python3").exists());
        fs::remove_dir_all(&tree).unwrap();
    }

    #[test]
    fn nothing_forbidden_is_asked_for() {
        for f in FORBIDDEN {
            assert!(!PACKAGES.contains(f), "{f}");
            assert!(!DOCKER_PACKAGES.contains(f), "{f}");
        }
    }
}
