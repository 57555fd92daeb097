//! `cargo xtask image`: the default guest image, our kernel plus an
//! initramfs whose `/init` is our guest agent.
//!
//! Why this shape: the VM needs nothing but a kernel and an initramfs to
//! boot to the agent, which makes a boot take seconds under TCG and keeps the
//! whole image a few megabytes that we build from packages instead of
//! downloading a cloud image (our build machines reach only the package
//! registries). The kernel is ours (`kernel.rs`: everything built in, no
//! modules); the names in `images/default/modules.txt` are checked against
//! its `modules.builtin`. With `--kernel debian`, Debian's
//! `linux-image-amd64` is used instead, and the initramfs carries those
//! modules with their dependencies and a `modules.dep`. Busybox-static gives
//! a shell and the usual tools for debugging and for `lima shell`; Debian's
//! `mke2fs` (with its libraries and loader, `mke2fs.rs`) formats an
//! instance's data disk.
//!
//! The result is cached by a hash of every input (the kernel's key or
//! Debian's kernel package, the other .debs, the agent binary, modules.txt
//! and [`RECIPE_VERSION`]) in
//! `target/images/cache/<hash>/`, and `target/images/default` is a symlink to
//! the current entry, so a rebuild with the same inputs does no work.
//!
//! Layout of the initramfs:
//!
//! ```text
//! /init                        -> /usr/bin/lima-guest-agent (PID 1)
//! /usr/bin/lima-guest-agent    static musl binary
//! /bin/busybox, /bin/<applet>  -> busybox
//! /sbin/modprobe               -> /bin/busybox (the kernel's request_module helper)
//! /sbin/mke2fs, /sbin/resize2fs, /etc/mke2fs.conf, /lib/x86_64-linux-gnu/*, /lib64/ld-linux-x86-64.so.2
//! /lib/modules/<release>/      kernel/..., modules.dep (depmod), modules.builtin, ...
//! /dev/console                 char 5:1, so the kernel can give /init a console
//! /etc/{passwd,group,hostname,resolv.conf,os-release}
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use object::elf::{FileHeader64, EM_X86_64, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian;

use crate::apt::{self, IndexedDeb};
use crate::build::{self, Profile};
use crate::cache::{images_dir, inputs_hash, scratch_dir, sha256_file};
use crate::fsutil::{copy, file_name, mib, remove_dir_if_present, set_mode, symlink, write};
use crate::{cmd, cpio, setup};

/// Bump whenever the recipe below changes what ends up in the image, so the
/// cache does not hand out an image built by the old recipe.
const RECIPE_VERSION: &str = "4";

/// Debian's metapackage that always depends on the current kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const AGENT_IN_IMAGE: &str = "usr/bin/lima-guest-agent";

/// Directories of the initramfs and their permissions.
const SKELETON_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("lib", 0o755),
    ("lib64", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
    // Kept across restarts on the data disk, writable by every user (FHS).
    ("var/tmp", 0o1777),
];

/// Which kernel the kernel + initramfs images boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Ours (`cargo xtask kernel`): everything built in, no modules.
    #[default]
    Lima,
    /// Debian's `linux-image-amd64` with the modules the image lists: the
    /// baseline. The image is named `<name>-debian-kernel`.
    Debian,
}

impl KernelChoice {
    /// The image's directory name under `target/images`.
    pub fn image_name(self, flavor: &Flavor) -> String {
        match self {
            KernelChoice::Lima => flavor.name.to_string(),
            KernelChoice::Debian => format!("{}-debian-kernel", flavor.name),
        }
    }
}

/// Which images `cargo xtask image` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Kernel + initramfs with busybox (target/images/default).
    Default,
    /// The default image plus a Debian root filesystem (target/images/debian).
    Debian,
    /// Both.
    All,
    /// The Debian image plus a container engine (Debian's docker.io,
    /// containerd, rootlesskit) and the netfilter/bridge modules it needs
    /// (target/images/docker).
    Docker,
    /// The `run` benchmark's baseline: a Debian rootfs with systemd and
    /// Debian's kernel and initramfs (target/images/debian-classic).
    DebianClassic,
    /// A Debian 12 cloud image: one qcow2 disk booted by UEFI, with
    /// systemd, cloud-init and sshd (target/images/debian-cloud). Prints
    /// the disk's path last on stdout.
    DebianCloud,
}

/// `cargo xtask image [WHICH]`: build (or, with `--agent`, take the given
/// agent and only set up), then assemble the image(s). Returns the directory
/// of the last one made (for `debian-cloud`, its disk: it needs no agent).
pub fn run(agent: Option<&Path>, which: Which, kernel: KernelChoice) -> Result<PathBuf> {
    ensure!(
        kernel == KernelChoice::Lima || which == Which::Default,
        "only the default image is made with Debian's kernel (the baseline, \
         target/images/default-debian-kernel); drop `--kernel debian` or ask for `default`"
    );
    if which == Which::DebianCloud {
        setup::run()?;
        return crate::cloud_image::assemble();
    }
    let agent = match agent {
        Some(agent) => {
            setup::run()?;
            agent.to_path_buf()
        }
        None => {
            build::run(Profile::Debug)?;
            build::agent_path()
        }
    };
    if which == Which::Docker {
        // Its own initramfs: the default one's modules plus the engine's.
        let base = assemble_flavor(&agent, &DOCKER_BASE, kernel)?;
        return crate::debian::assemble_docker(&base);
    }
    let default = assemble_flavor(&agent, &DEFAULT, kernel)?;
    match which {
        Which::Default => Ok(default),
        Which::Docker => unreachable!("handled above"),
        // The Debian image reuses the default image's kernel and initramfs.
        Which::Debian | Which::All => crate::debian::assemble(&default),
        Which::DebianClassic => crate::debian::assemble_classic(),
        Which::DebianCloud => unreachable!("handled above"),
    }
}

/// A kernel + initramfs image: its name under `target/images` and the
/// module lists (relative to the repository) whose union it carries.
pub struct Flavor {
    pub name: &'static str,
    pub module_lists: &'static [&'static str],
}

/// `target/images/default`.
pub const DEFAULT: Flavor = Flavor {
    name: "default",
    module_lists: &["images/default/modules.txt"],
};

/// The docker image's kernel and initramfs (`target/images/docker-base`):
/// the default modules plus `images/docker/modules.txt`. The Debian root
/// filesystem mounts the initramfs's `/lib/modules`, so the engine's modules
/// must be in the initramfs to be loadable at all.
pub const DOCKER_BASE: Flavor = Flavor {
    name: "docker-base",
    module_lists: &["images/default/modules.txt", "images/docker/modules.txt"],
};

/// Assembles the default image around `agent` with our kernel, or finds it
/// in the cache.
pub fn assemble(agent: &Path) -> Result<PathBuf> {
    assemble_flavor(agent, &DEFAULT, KernelChoice::Lima)
}

/// Where the kernel comes from: our build, or Debian's package.
enum KernelInput {
    Lima(crate::kernel::Built),
    Debian(apt::Deb),
}

/// Assembles `flavor` around `agent` booting `choice`'s kernel, or finds it
/// in the cache.
pub fn assemble_flavor(agent: &Path, flavor: &Flavor, choice: KernelChoice) -> Result<PathBuf> {
    let started = Instant::now();
    let name = choice.image_name(flavor);
    let image_dir = images_dir().join(&name);
    let images = images_dir();
    let downloads = images.join("download");
    fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;

    let packages = resolve_packages(&downloads)?;
    let kernel_input = match choice {
        KernelChoice::Lima => KernelInput::Lima(crate::kernel::ensure()?),
        KernelChoice::Debian => KernelInput::Debian(apt::download(&packages.kernel, &downloads)?),
    };
    let (kernel_label, kernel_key) = match &kernel_input {
        KernelInput::Lima(built) => ("kernel", built.hash.clone()),
        KernelInput::Debian(deb) => ("kernel.deb", deb.sha256.clone()),
    };
    let busybox_deb = apt::download(&packages.busybox, &downloads)?;
    let e2fs_debs = packages
        .e2fsprogs
        .iter()
        .map(|d| apt::download(d, &downloads))
        .collect::<Result<Vec<_>>>()?;
    // The default image's key is its one list's text, as before flavors.
    let mut modules_txt = String::new();
    for list in flavor.module_lists {
        let path = cmd::root().join(list);
        modules_txt += &fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    let agent_bytes = fs::read(agent).with_context(|| {
        format!(
            "cannot read the guest agent {} (build it with `cargo xtask build`)",
            agent.display()
        )
    })?;
    check_static_x86_64(&agent_bytes)
        .with_context(|| format!("guest agent {}", agent.display()))?;

    let e2fs_sums: Vec<String> = e2fs_debs.iter().map(|d| d.sha256.clone()).collect();
    let e2fs_sums = e2fs_sums.join(" ");
    let hash = inputs_hash(&[
        ("recipe", RECIPE_VERSION.as_bytes()),
        (kernel_label, kernel_key.as_bytes()),
        ("busybox.deb", busybox_deb.sha256.as_bytes()),
        ("e2fsprogs.debs", e2fs_sums.as_bytes()),
        ("agent", sha256_file(agent)?.as_bytes()),
        ("modules.txt", modules_txt.as_bytes()),
    ]);
    let cache = images.join("cache");
    let entry = cache.join(&hash);
    if entry.join("image.json").is_file() {
        point_image_at(&images, &name, &hash)?;
        eprintln!(
            "image: cached {} -> cache/{hash} ({:.1}s)",
            image_dir.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(image_dir);
    }

    // Build in a scratch directory of our own (engineers run tasks side by
    // side) and move the result into the cache only when it is complete, so
    // an interrupted build never looks like a cache hit.
    let scratch = scratch_dir(None)?;
    let (work, partial) = (scratch.join("work"), scratch.join("out"));
    remove_dir_if_present(&scratch)?;
    for dir in [&work, &partial, &cache] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The tree's permissions end up in the archive; do not let a strict
    // umask of whoever runs this leak into the guest.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));

    let recipe = Recipe {
        work: &work,
        tree: &work.join("initramfs"),
        out: &partial,
    };
    let built = (|| -> Result<_> {
        let kernel = match &kernel_input {
            KernelInput::Lima(built) => recipe.lima_kernel(built)?,
            KernelInput::Debian(deb) => recipe.kernel(&deb.path)?,
        };
        let modules = recipe.modules(&kernel, &parse_modules_txt(&modules_txt))?;
        recipe.busybox(&busybox_deb.path)?;
        let e2fs_paths: Vec<PathBuf> = e2fs_debs.iter().map(|d| d.path.clone()).collect();
        let libs = crate::mke2fs::stage(&e2fs_paths, recipe.work, recipe.tree)?;
        eprintln!("image: mke2fs with {}", libs.join(" "));
        recipe.agent(&agent_bytes)?;
        recipe.skeleton(&kernel)?;
        let initrd_size = recipe.initrd()?;
        recipe.image_json(&name, &kernel, &hash)?;
        // If a concurrent run got there first, its entry is as good as ours.
        if let Err(e) = fs::rename(&partial, &entry) {
            if !entry.join("image.json").is_file() {
                return Err(e).with_context(|| {
                    format!("cannot move {} to {}", partial.display(), entry.display())
                });
            }
        }
        Ok((kernel, modules, initrd_size))
    })();
    // The extracted kernel is 400 MB; do not leave it behind, even on error.
    remove_dir_if_present(&scratch)?;
    let (kernel, modules, initrd_size) = built?;
    point_image_at(&images, &name, &hash)?;

    let kernel_from = match &kernel_input {
        KernelInput::Lima(built) => built.vmlinux.display().to_string(),
        KernelInput::Debian(deb) => file_name(&deb.path),
    };
    eprintln!("image: kernel {} from {kernel_from}", kernel.release);
    eprintln!(
        "image: built into the kernel: {}",
        join_or_none(&modules.builtin)
    );
    eprintln!(
        "image: modules ({}): {}",
        modules.files.len(),
        join_or_none(&modules.names())
    );
    for note in &modules.notes {
        eprintln!("image: note: {note}");
    }
    eprintln!(
        "image: initrd.img {:.1} MiB, boots {} ({:.1} MiB)",
        mib(initrd_size),
        kernel.boot_file,
        mib(fs::metadata(entry.join(kernel.boot_file))?.len())
    );
    eprintln!(
        "image: built {} -> cache/{hash} in {:.1}s",
        image_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(image_dir)
}

/// The packages the image is made of, as the package index names them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Resolution {
    kernel: IndexedDeb,
    busybox: IndexedDeb,
    /// mke2fs and its libraries ([`crate::mke2fs::PACKAGES`]).
    e2fsprogs: Vec<IndexedDeb>,
}

/// Asks apt which kernel package `linux-image-amd64` stands for and what
/// the .debs are called; remembered in `download/index.json` until the
/// package lists change ([`apt::remembered`]).
fn resolve_packages(downloads: &Path) -> Result<Resolution> {
    apt::remembered(&downloads.join("index.json"), || {
        let depends =
            cmd::query_text(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
        let kernel = kernel_package(&depends).with_context(|| {
            format!("`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-* package")
        })?;
        let mut wanted = vec![kernel.as_str(), BUSYBOX_PACKAGE];
        wanted.extend(crate::mke2fs::PACKAGES);
        let mut debs = apt::print_uris(&wanted)?.into_iter();
        let mut next = || debs.next().expect("print_uris answers for every package");
        Ok(Resolution {
            kernel: next(),
            busybox: next(),
            e2fsprogs: crate::mke2fs::PACKAGES.iter().map(|_| next()).collect(),
        })
    })
}

/// The real kernel package from `apt-cache depends linux-image-amd64`,
/// e.g. `linux-image-6.1.0-56-amd64`.
fn kernel_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(|p| p.trim().trim_matches(['<', '>']))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
}

/// The agent runs as `/init` with no libc and no loader in the initramfs, so
/// it must be a static x86-64 ELF. Catches pointing `--agent` at a glibc build.
fn check_static_x86_64(elf: &[u8]) -> Result<()> {
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "is not a little-endian 64-bit ELF file"
    );
    let header = FileHeader64::<LittleEndian>::parse(elf).context("has a truncated ELF header")?;
    let endian = header.endian().context("has a truncated ELF header")?;
    ensure!(
        header.e_machine(endian) == EM_X86_64,
        "is not an x86-64 binary"
    );
    let segments = header
        .program_headers(endian, elf)
        .context("has a truncated program header table")?;
    ensure!(
        segments.iter().all(|s| s.p_type(endian) != PT_INTERP),
        "is dynamically linked (it names an ELF interpreter); the initramfs has no libc, \
         so build it for {}",
        setup::MUSL_TARGET
    );
    Ok(())
}

/// Module names from `modules.txt`: one per line, `#` starts a comment.
fn parse_modules_txt(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// The kernel's module name for a file name or alias-free name:
/// `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs`; `-` and `_` are the same.
fn module_name(name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// What the kernel package gave us.
struct Kernel {
    release: String,
    /// The file QEMU boots: `vmlinux` (PVH) or `vmlinuz`.
    boot_file: &'static str,
    /// `lib/modules/<release>` inside the extracted package; `None` for
    /// our kernel, which has no module support.
    modules_dir: Option<PathBuf>,
    /// Module names built into the kernel (our kernel's
    /// `modules.builtin`), checked against the image's modules.txt.
    builtin: Option<HashSet<String>>,
}

/// The modules the image carries.
struct Modules {
    /// (module name, path relative to `lib/modules/<release>`), in the order
    /// they were resolved: modules.txt order, dependencies after dependants.
    files: Vec<(String, String)>,
    /// Names from modules.txt (or dependencies) that are built in.
    builtin: Vec<String>,
    /// Things worth knowing that are not errors.
    notes: Vec<String>,
}

impl Modules {
    fn names(&self) -> Vec<String> {
        self.files.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// The steps of the recipe, sharing the scratch directories.
struct Recipe<'a> {
    /// Scratch space for extracted packages.
    work: &'a Path,
    /// The initramfs tree on disk (depmod needs the modules on disk).
    tree: &'a Path,
    /// The cache entry being filled.
    out: &'a Path,
}

impl Recipe<'_> {
    /// Extracts the kernel package and copies `vmlinuz` out.
    fn kernel(&self, deb: &Path) -> Result<Kernel> {
        let dir = self.work.join("kernel");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        let boot = dir.join("boot");
        let vmlinuz: Vec<String> = fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/ directory", deb.display()))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_string)
            })
            .collect();
        let [release] = vmlinuz.as_slice() else {
            bail!(
                "{} has {} boot/vmlinuz-* files, expected one",
                deb.display(),
                vmlinuz.len()
            );
        };
        let release = release.clone();
        copy(
            &boot.join(format!("vmlinuz-{release}")),
            &self.out.join("vmlinuz"),
            0o644,
        )?;
        let modules_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| dir.join(m).join(&release))
            .find(|d| d.is_dir())
            .with_context(|| format!("{} has no lib/modules/{release}", deb.display()))?;
        let boot_file = crate::pvh::kernel_to_boot(self.out)?;
        Ok(Kernel {
            release,
            boot_file,
            modules_dir: Some(modules_dir),
            builtin: None,
        })
    }

    /// Our kernel: `vmlinux`, booted at its PVH entry point.
    fn lima_kernel(&self, built: &crate::kernel::Built) -> Result<Kernel> {
        copy(&built.vmlinux, &self.out.join("vmlinux"), 0o644)?;
        Ok(Kernel {
            release: built.release.clone(),
            boot_file: "vmlinux",
            modules_dir: None,
            builtin: Some(
                crate::kernel::builtin_modules(built)?
                    .iter()
                    .map(|m| module_name(m))
                    .collect(),
            ),
        })
    }

    /// Copies the wanted modules and their dependencies into
    /// `lib/modules/<release>`, decompressed, and runs depmod there.
    fn modules(&self, kernel: &Kernel, wanted: &[String]) -> Result<Modules> {
        let Some(src) = &kernel.modules_dir else {
            return builtin_only(kernel, wanted);
        };
        let dst = self.tree.join("lib/modules").join(&kernel.release);
        let available = index_modules(src)?;
        let builtin: HashSet<String> = fs::read_to_string(src.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        let modinfo = cmd::system_tool("modinfo")?;
        let mut result = Modules {
            files: Vec::new(),
            builtin: Vec::new(),
            notes: Vec::new(),
        };
        let mut queue: VecDeque<(String, Option<String>)> =
            wanted.iter().map(|m| (m.clone(), None)).collect();
        let mut seen = HashSet::new();
        while let Some((name, needed_by)) = queue.pop_front() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(rel) = available.get(&name) else {
                if builtin.contains(&name) {
                    result.builtin.push(name);
                    continue;
                }
                match needed_by {
                    None => bail!(
                        "the image's modules.txt names `{name}`, but kernel {} has it neither \
                         as a module nor built in",
                        kernel.release
                    ),
                    Some(by) => bail!(
                        "module {by} depends on `{name}`, which kernel {} has neither as a module \
                         nor built in",
                        kernel.release
                    ),
                }
            };
            let rel_out = stage_module(&src.join(rel), &dst, rel)?;
            let staged = dst.join(&rel_out);
            let field =
                |f: &str| cmd::query_text(Command::new(&modinfo).args(["-F", f]).arg(&staged));
            for dep in field("depends")?
                .trim()
                .split(',')
                .filter(|d| !d.is_empty())
            {
                queue.push_back((module_name(dep), Some(name.clone())));
            }
            // softdep lines look like "pre: crc32c post: foo"; follow the
            // plain module names, report the aliases.
            for soft in field("softdep")?
                .split_whitespace()
                .filter(|w| !w.ends_with(':'))
            {
                let soft_name = module_name(soft);
                if available.contains_key(&soft_name) || builtin.contains(&soft_name) {
                    queue.push_back((soft_name, Some(name.clone())));
                } else {
                    result.notes.push(format!(
                        "{name} has soft dependency `{soft}`, not a module name; not followed"
                    ));
                }
            }
            result.files.push((name, rel_out));
        }

        for entry in fs::read_dir(src)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == "modules.order" || file.starts_with("modules.builtin") {
                copy(&entry.path(), &dst.join(&file), 0o644)?;
            }
        }
        let depmod = cmd::system_tool("depmod")?;
        cmd::run(
            Command::new(depmod)
                .arg("-b")
                .arg(self.tree)
                .arg(&kernel.release),
        )?;
        ensure!(
            dst.join("modules.dep").is_file(),
            "depmod wrote no {}",
            dst.join("modules.dep").display()
        );
        Ok(result)
    }

    /// `/bin/busybox` and a symlink per applet.
    fn busybox(&self, deb: &Path) -> Result<()> {
        let dir = self.work.join("busybox");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        let busybox = dir.join("bin/busybox");
        let applets = cmd::query_text(Command::new(&busybox).arg("--list"))?;
        let bin = self.tree.join("bin");
        copy(&busybox, &bin.join("busybox"), 0o755)?;
        for applet in applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/'))
        {
            let link = bin.join(applet);
            if link.symlink_metadata().is_err() {
                symlink("busybox", &link)?;
            }
        }
        // The kernel runs /sbin/modprobe to load modules on demand (e.g. a
        // crypto algorithm ext4 asks for); busybox's reads our modules.dep.
        symlink("/bin/busybox", &self.tree.join("sbin/modprobe"))
    }

    /// The agent, and `/init` pointing at it.
    fn agent(&self, bytes: &[u8]) -> Result<()> {
        let path = self.tree.join(AGENT_IN_IMAGE);
        write(&path, bytes, 0o755)?;
        symlink(&format!("/{AGENT_IN_IMAGE}"), &self.tree.join("init"))
    }

    /// Directories and the files in `/etc`.
    fn skeleton(&self, kernel: &Kernel) -> Result<()> {
        for (dir, mode) in SKELETON_DIRS {
            let path = self.tree.join(dir);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            set_mode(&path, *mode)?;
        }
        let os_release = format!(
            "NAME=\"lima-rs\"\n\
             ID=lima-rs\n\
             VARIANT=\"default image\"\n\
             VARIANT_ID=default\n\
             VERSION_ID={RECIPE_VERSION}\n\
             PRETTY_NAME=\"lima-rs default image (kernel {}, busybox)\"\n",
            kernel.release
        );
        let files = [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n".to_string()),
            ("etc/group", "root:x:0:\n".to_string()),
            ("etc/hostname", "lima\n".to_string()),
            // QEMU user networking's built-in DNS server.
            ("etc/resolv.conf", "nameserver 10.0.2.3\n".to_string()),
            ("etc/os-release", os_release),
        ];
        for (path, text) in files {
            write(&self.tree.join(path), text.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Packs the tree into `initrd.img` and returns its size.
    fn initrd(&self) -> Result<u64> {
        let mut archive = cpio::Archive::new();
        archive
            .add_tree(self.tree)
            .with_context(|| format!("cannot read the initramfs tree {}", self.tree.display()))?;
        // The kernel opens /dev/console for /init's stdio before anything
        // mounts devtmpfs; without the node, /init starts with no output.
        archive.char_device("dev/console", 0o600, 5, 1);
        let path = self.out.join("initrd.img");
        let file =
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        archive
            .write(BufWriter::new(file))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn image_json(&self, name: &str, kernel: &Kernel, hash: &str) -> Result<()> {
        let json = ImageJson {
            name,
            arch: "x86_64",
            kernel_release: &kernel.release,
            kernel: kernel.boot_file,
            initrd: "initrd.img",
            inputs_hash: hash,
        };
        let text = serde_json::to_string_pretty(&json)? + "\n";
        write(&self.out.join("image.json"), text.as_bytes(), 0o644)
    }
}

/// `image.json`, which tells the host runner what the files are.
#[derive(serde::Serialize)]
struct ImageJson<'a> {
    name: &'a str,
    arch: &'a str,
    kernel_release: &'a str,
    kernel: &'a str,
    initrd: &'a str,
    inputs_hash: &'a str,
}

/// A kernel without module support: every module the image's lists name
/// must be built in.
fn builtin_only(kernel: &Kernel, wanted: &[String]) -> Result<Modules> {
    let builtin = kernel.builtin.clone().unwrap_or_default();
    let missing: Vec<&String> = wanted.iter().filter(|m| !builtin.contains(*m)).collect();
    ensure!(
        missing.is_empty(),
        "kernel {} has no module support and does not have {} built in, which the image's \
         modules.txt names: add the options that build them to a fragment in kernel/",
        kernel.release,
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Modules {
        files: Vec::new(),
        builtin: wanted.to_vec(),
        notes: Vec::new(),
    })
}

/// Module name → path relative to `lib/modules/<release>`, for every module
/// file under `kernel/`.
fn index_modules(modules_dir: &Path) -> Result<HashMap<String, String>> {
    let mut index = HashMap::new();
    let mut dirs = vec![PathBuf::from("kernel")];
    while let Some(rel_dir) = dirs.pop() {
        let abs = modules_dir.join(&rel_dir);
        for entry in fs::read_dir(&abs).with_context(|| format!("cannot list {}", abs.display()))? {
            let entry = entry?;
            let rel = rel_dir.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                dirs.push(rel);
            } else {
                let rel = rel.to_string_lossy().into_owned();
                if rel.contains(".ko") {
                    index.insert(module_name(&rel), rel);
                }
            }
        }
    }
    ensure!(
        !index.is_empty(),
        "no kernel modules under {}",
        modules_dir.join("kernel").display()
    );
    Ok(index)
}

/// Copies one module file into `dst` at the same relative path, decompressing
/// `.ko.xz`/`.ko.zst`/`.ko.gz` (the agent hands plain `.ko` files to
/// `finit_module`). Returns the path it was written to, relative to `dst`.
fn stage_module(src: &Path, dst: &Path, rel: &str) -> Result<String> {
    let decompressor = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find(|(ext, _)| rel.ends_with(ext));
    match decompressor {
        None => {
            copy(src, &dst.join(rel), 0o644)?;
            Ok(rel.to_string())
        }
        Some((ext, tool)) => {
            let plain = rel.strip_suffix(ext).unwrap_or(rel).to_string();
            let bytes = cmd::query(Command::new(tool).arg("-dc").arg(src))?;
            write(&dst.join(&plain), &bytes, 0o644)?;
            Ok(plain)
        }
    }
}

/// Points `target/images/NAME` at `cache/<hash>`, replacing whatever was
/// there in one rename.
fn point_image_at(images: &Path, name: &str, hash: &str) -> Result<()> {
    let link = images.join(name);
    let new = images.join(format!("{name}.new-{}", std::process::id()));
    let _ = fs::remove_file(&new);
    symlink(&format!("cache/{hash}"), &new)?;
    if link.is_dir() && !link.is_symlink() {
        fs::remove_dir_all(&link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    fs::rename(&new, &link).with_context(|| format!("cannot replace {}", link.display()))
}

fn join_or_none(names: &[String]) -> String {
    let sorted: BTreeSet<&String> = names.iter().collect();
    if sorted.is_empty() {
        "(none)".to_string()
    } else {
        sorted.into_iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_txt_skips_comments_and_blank_lines() {
        let text = "# vsock\nvsock\n\n  9pnet_virtio  # transport\nvirtio-blk\n#fuse\n";
        assert_eq!(
            parse_modules_txt(text),
            ["vsock", "9pnet_virtio", "virtio_blk"]
        );
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko"), "virtiofs");
        assert_eq!(
            module_name("kernel/crypto/crc32c-intel.ko.xz"),
            "crc32c_intel"
        );
        assert_eq!(module_name("ext4"), "ext4");
    }

    #[test]
    fn the_docker_images_modules_cover_the_engines_needs() {
        let mut text = String::new();
        for list in DOCKER_BASE.module_lists {
            text += &fs::read_to_string(cmd::root().join(list)).unwrap();
        }
        let names = parse_modules_txt(&text);
        // Its bridge network, its iptables (nft backend) rules, overlay2,
        // the rootless engine's TUN device, foreign-arch binaries.
        for needed in [
            "bridge",
            "br_netfilter",
            "veth",
            "nf_tables",
            "nft_compat",
            "nft_chain_nat",
            "xt_MASQUERADE",
            "xt_addrtype",
            "xt_conntrack",
            "overlay",
            "tun",
            "binfmt_misc",
        ] {
            assert!(
                names.iter().any(|n| n == needed),
                "the docker image's modules lack {needed}"
            );
        }
        assert_eq!(DEFAULT.module_lists, ["images/default/modules.txt"]);
    }

    #[test]
    fn the_checked_in_modules_txt_parses() {
        let text = fs::read_to_string(cmd::root().join("images/default/modules.txt")).unwrap();
        let names = parse_modules_txt(&text);
        for needed in [
            "vsock",
            "vmw_vsock_virtio_transport",
            "fuse",
            "virtiofs",
            "9pnet_virtio",
            "ext4",
            "overlay",
        ] {
            assert!(
                names.iter().any(|n| n == needed),
                "modules.txt lacks {needed}"
            );
        }
    }

    #[test]
    fn kernel_package_from_apt_cache_depends() {
        let out =
            "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware\n";
        assert_eq!(
            kernel_package(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(kernel_package("linux-image-amd64\n"), None);
    }

    #[test]
    fn a_dynamically_linked_agent_is_refused() {
        // This test binary is linked against glibc, so it names an interpreter.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_static_x86_64(&me).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(check_static_x86_64(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn a_static_elf_header_is_accepted() {
        // A 64-byte ELF header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[0x12] = 62;
        check_static_x86_64(&elf).unwrap();
    }
}
