//! `cargo xtask setup`: install the host tools the build, the image recipe
//! and the VM tests need, and skip whatever is already there.
//!
//! It is idempotent and cheap when everything is present (it only asks dpkg,
//! rustup and the filesystem), so every other task runs it first instead of
//! failing halfway with a missing tool. The bpf-linker recipe is the one
//! verified on our build machines (design guide, "Verified on our build
//! machines"): it must link against the nightly toolchain's own LLVM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Debian packages: QEMU for the VMs, kmod (`depmod`, `modinfo`) and
/// busybox-static for the image recipe, e2fsprogs and debootstrap for disk
/// images, libseccomp/libcap-ng for building virtiofsd. The cloud image
/// needs fdisk (`sfdisk`), dosfstools and mtools for its partitions,
/// qemu-utils (`qemu-img`) for the qcow2 (and instance disks), and ovmf to
/// boot it; its tests log in with the ssh client. iptables and nftables
/// make the rules the guest agent's NAT watcher tests read (as a container
/// engine does), in a network namespace of their own. docker-registry is
/// the local registry the docker tests push to and pull from (started by
/// the test itself; the package's service is never enabled here). rsync
/// is the `sync` benchmark's baseline (Lima's `--sync` copies with it).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "openssh-client",
    "fdisk",
    "dosfstools",
    "mtools",
    "kmod",
    "busybox-static",
    "e2fsprogs",
    "libseccomp-dev",
    "libcap-ng-dev",
    "debootstrap",
    "xz-utils",
    "iptables",
    "nftables",
    "docker-registry",
    "rsync",
    // Our guest kernel (`cargo xtask kernel`): Debian's source is
    // downloaded, not installed; these build it.
    "make",
    "gcc",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
];

/// The static guest agent is built for this target.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The host crates must build for macOS hosts too (the vz driver's); `cargo
/// xtask test` checks them for this target.
pub const MACOS_TARGET: &str = "aarch64-apple-darwin";

pub fn run() -> Result<()> {
    apt_packages()?;
    foreign_arch()?;
    rust_toolchains()?;
    bpf_linker()?;
    cargo_tool("vhost-device-vsock")?;
    // The `virtiofs` mount type (and the shared-folder benchmark baseline).
    cargo_tool("virtiofsd")?;
    // `cargo xtask fuzz` and the fuzz step of `cargo xtask test`. It builds
    // with the default toolchain; the fuzz targets build with nightly.
    cargo_tool_at("cargo-fuzz", CARGO_FUZZ_VERSION)?;
    system_wide(&["vhost-device-vsock", "virtiofsd"])?;
    // The MCP tests' clients (the official Python and TypeScript SDKs).
    crate::mcp_clients::ensure()?;
    Ok(())
}

/// As root, puts the helpers `cargo install` put in root's own
/// `~/.cargo/bin` into `/usr/local/bin` too, so that ordinary users (who
/// run `limactl`, and the end-to-end tests that run it as one) find them.
fn system_wide(names: &[&str]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dest_dir = Path::new("/usr/local/bin");
    for name in names {
        let Some(src) = cmd::find_program(name, &cargo_bin()) else {
            continue;
        };
        let dest = dest_dir.join(name);
        if src == dest {
            continue;
        }
        let same = std::fs::read(&src).ok() == std::fs::read(&dest).ok();
        if same {
            ok(&format!("{name} ({})", dest.display()));
            continue;
        }
        doing(&format!("{name} → {}", dest.display()));
        let tmp = dest_dir.join(format!(".{name}.tmp"));
        std::fs::copy(&src, &tmp)
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            })
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .with_context(|| format!("cannot install {}", dest.display()))?;
    }
    Ok(())
}

/// The cargo-fuzz release `setup` installs (`--locked`: the versions it
/// was released with, so a newer dependency cannot break the install).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn ok(what: &str) {
    eprintln!("setup: ok       {what}");
}

fn doing(what: &str) {
    eprintln!("setup: install  {what}");
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let status = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            let installed = status.as_deref() == Some("install ok installed");
            if installed {
                ok(&format!("apt {pkg}"));
            }
            !installed
        })
        .collect();
    // The image recipe runs `apt-get download`, which needs package lists.
    let lists_empty = !has_apt_lists();
    if missing.is_empty() && !lists_empty {
        return Ok(());
    }
    if lists_empty {
        doing("apt package lists (`apt-get download` needs them)");
    }
    cmd::run(cmd::privileged("apt-get").arg("update"))?;
    if !missing.is_empty() {
        doing(&format!("apt {}", missing.join(" ")));
        cmd::run(
            cmd::privileged("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y"])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// The Debian architecture whose packages the foreign-architecture test
/// fetches (`apt-get download busybox-static:arm64`, tests/tests/binfmt.rs).
pub const FOREIGN_ARCH: &str = "arm64";

/// Lets apt download (not install) packages of [`FOREIGN_ARCH`]: dpkg
/// learns the architecture, then `apt-get update` fetches its lists.
fn foreign_arch() -> Result<()> {
    let known =
        cmd::probe(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    if known.split_whitespace().any(|a| a == FOREIGN_ARCH) {
        ok(&format!("dpkg architecture {FOREIGN_ARCH}"));
        return Ok(());
    }
    doing(&format!(
        "dpkg architecture {FOREIGN_ARCH} and its package lists"
    ));
    cmd::run(cmd::privileged("dpkg").args(["--add-architecture", FOREIGN_ARCH]))?;
    cmd::run(cmd::privileged("apt-get").arg("update"))
}

/// Whether `apt-get update` has ever run (the lists may be compressed,
/// e.g. `..._Packages.lz4`).
fn has_apt_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

fn rust_toolchains() -> Result<()> {
    let toolchains = cmd::probe(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed; is rustup installed?")?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        ok("rust toolchain nightly");
    } else {
        doing("rust toolchain nightly");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }

    let components = cmd::probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.trim() == "rust-src") {
        ok("rust component rust-src (nightly)");
    } else {
        doing("rust component rust-src (nightly)");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // The default toolchain builds the agent; nightly gets musl too so the
    // agent can be built with it when experimenting (harmless otherwise).
    // The host crates are also checked for macOS hosts (`cargo xtask test`).
    for (target, toolchain) in [
        (MUSL_TARGET, None),
        (MUSL_TARGET, Some("nightly")),
        (MACOS_TARGET, None),
    ] {
        rust_target(target, toolchain)?;
    }
    Ok(())
}

/// `rustup target add TARGET` for `toolchain` (the default one if `None`),
/// unless it is installed already.
fn rust_target(target: &str, toolchain: Option<&str>) -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"]);
    let mut add = Command::new("rustup");
    add.args(["target", "add", target]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
        add.args(["--toolchain", t]);
    }
    let what = format!("rust target {target} ({})", toolchain.unwrap_or("default"));
    let installed = cmd::probe(&mut list).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == target) {
        ok(&what);
        Ok(())
    } else {
        doing(&what);
        cmd::run(&mut add)
    }
}

/// Directories besides `PATH` where `cargo install` may have put a tool.
fn cargo_bin() -> Vec<PathBuf> {
    cmd::cargo_bin_dir().into_iter().collect()
}

fn cargo_tool(name: &str) -> Result<()> {
    if let Some(path) = cmd::find_program(name, &cargo_bin()) {
        ok(&format!("{name} ({})", path.display()));
        return Ok(());
    }
    doing(name);
    cmd::run(Command::new("cargo").args(["install", name]))
}

/// [`cargo_tool`] at one `version`, installed `--locked`. A tool that is
/// there already is kept, whatever its version.
fn cargo_tool_at(name: &str, version: &str) -> Result<()> {
    if let Some(path) = cmd::find_program(name, &cargo_bin()) {
        ok(&format!("{name} ({})", path.display()));
        return Ok(());
    }
    doing(&format!("{name} {version}"));
    cmd::run(Command::new("cargo").args(["install", "--locked", "--version", version, name]))
}

/// bpf-linker must be built against the nightly toolchain's LLVM (the one
/// that compiles the eBPF crate), not a distribution LLVM.
fn bpf_linker() -> Result<()> {
    if let Some(path) = cmd::find_program("bpf-linker", &cargo_bin()) {
        ok(&format!("bpf-linker ({})", path.display()));
        return Ok(());
    }
    doing("bpf-linker");
    let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let (llvm_lib, major) = find_nightly_llvm(&libdir)?;

    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/lima-rs/llvm");
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&llvm_lib, &link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), llvm_lib.display()))?;
    eprintln!("setup: linked {} -> {}", link.display(), llvm_lib.display());

    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}")),
    )
}

/// Finds `lib/libLLVM.so.<major>.<minor>-rust-<ver>-nightly` in the nightly
/// sysroot and returns it with its LLVM major version.
fn find_nightly_llvm(libdir: &Path) -> Result<(PathBuf, u32)> {
    let entries = std::fs::read_dir(libdir)
        .with_context(|| format!("cannot list the nightly sysroot {}", libdir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(major) = llvm_major(&name) {
            return Ok((entry.path(), major));
        }
    }
    bail!("no libLLVM.so.*-rust-*-nightly in {}", libdir.display())
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    if !(version.contains("-rust-") && version.ends_with("-nightly")) {
        return None;
    }
    version.split(['.', '-']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_the_nightly_library_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.95.0-stable"), None);
        assert_eq!(llvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
    }
}
