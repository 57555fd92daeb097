//! `cargo xtask test`: everything the end-to-end tests need, then the tests.
//!
//! The VM tests drive the real binaries and boot the real image, so they are
//! built first; `LIMA_BIN_DIR` tells the tests where the host binaries are
//! (cargo does not put other packages' binaries into a test's environment).
//! Kept as one function so switching to nextest later is a one-line change.
//! A full run (no extra arguments) ends with every fuzz target for a
//! bounded time (`fuzz::ci`).
//!
//! `--slow` runs the slow tier instead: the end-to-end tests marked
//! `#[ignore = "slow: …"]` in `tests/` (distro cloud images, minutes each
//! under TCG), after building what they need (`cargo xtask image
//! debian-cloud`, cached). CI runs the default tier; an issue is resolved
//! when both pass (docs/testing.md).

use anyhow::Result;

use crate::build::{self, Profile};
use crate::{cmd, fuzz, image, setup};

/// The crates that run on the host, which must build for macOS hosts too.
const HOST_CRATES: &[&str] = &["lima-host", "lima-fs-server"];

pub fn run(args: &[String], slow: bool) -> Result<()> {
    if slow {
        return run_slow(args);
    }
    build::run(Profile::Debug)?;
    check_macos()?;
    let default = image::assemble(&build::agent_path())?;
    // Cached after the first run (debootstrap takes minutes once).
    crate::debian::assemble(&default)?;
    // tests/tests/docker.rs (issue 22): its own initramfs (the engine's
    // modules) and a second debootstrap, also cached.
    let docker_base = image::assemble_flavor(
        &build::agent_path(),
        &image::DOCKER_BASE,
        image::KernelChoice::Lima,
    )?;
    crate::debian::assemble_docker(&docker_base)?;
    // tests/tests/mcp.rs drives `limactl mcp serve` with the official SDKs.
    crate::mcp_clients::ensure()?;
    cmd::run(
        cmd::cargo()
            .env("LIMA_BIN_DIR", build::host_bin_dir(Profile::Debug))
            .args(["test", "--workspace"])
            .args(args),
    )?;
    if args.is_empty() {
        fuse_tests()?;
        nat_tests()?;
        // Bounded to 5 minutes in all, building included (`fuzz::CI_BUDGET`).
        fuzz::ci()?;
    }
    Ok(())
}

/// The slow tier: every `#[ignore]`d end-to-end test of `lima-tests`.
fn run_slow(args: &[String]) -> Result<()> {
    build::run(Profile::Debug)?;
    let default = image::assemble(&build::agent_path())?;
    // tests/tests/binfmt.rs boots builtin:debian (cached after once).
    crate::debian::assemble(&default)?;
    let cloud = crate::cloud_image::assemble()?;
    cmd::run(
        cmd::cargo()
            .env("LIMA_BIN_DIR", build::host_bin_dir(Profile::Debug))
            .env("LIMA_TEST_CLOUD_IMAGE", &cloud)
            .args(["test", "-p", "lima-tests", "--", "--ignored"])
            .args(args),
    )
}

/// `cargo check` of the host crates for macOS (setup installs the target):
/// nothing runs there yet, but what builds stays building.
fn check_macos() -> Result<()> {
    let mut check = cmd::cargo();
    check.arg("check");
    for krate in HOST_CRATES {
        check.args(["-p", krate]);
    }
    cmd::run(check.args(["--target", setup::MACOS_TARGET]))
}

/// The guest agent's NAT watcher tests make iptables and nftables rules in
/// a network namespace of their own and read them back through the
/// kernel's nf_tables notifications: root, and the two tools (`cargo xtask
/// setup` installs them).
fn nat_tests() -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["iptables", "nft"]
        .iter()
        .all(|t| cmd::probe(std::process::Command::new(t).arg("--version")).is_some());
    if !(root && tools) {
        eprintln!(
            "xtask test: skipping the guest agent's NAT watcher tests (they need root, iptables \
             and nftables; run `cargo test -p lima-guest-agent nat -- --ignored` where they \
             are)"
        );
        return Ok(());
    }
    cmd::run(cmd::cargo().args([
        "test",
        "-p",
        "lima-guest-agent",
        // ports::nat::tests and forward::tests::a_nat_published_port_...
        "nat",
        "--",
        "--ignored",
    ]))
}

/// The guest agent's FUSE tests mount real FUSE file systems on this
/// machine (against a test server, and against the real fs-server), so
/// they are `#[ignore]`d for a plain `cargo test`; a full run includes them
/// wherever they can run, and says so where they cannot. The two that only
/// measure (`*throughput`) stay out.
fn fuse_tests() -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !(root && fuse) {
        eprintln!(
            "xtask test: skipping the guest agent's FUSE tests (they need root and /dev/fuse; \
             run `cargo test -p lima-guest-agent share -- --ignored` where both are)"
        );
        return Ok(());
    }
    cmd::run(cmd::cargo().args([
        "test",
        "-p",
        "lima-guest-agent",
        "share",
        "--",
        "--ignored",
        "--skip",
        "throughput",
    ]))?;
    // The sync layers' views (issue 23).
    cmd::run(cmd::cargo().args(["test", "-p", "lima-guest-agent", "layer", "--", "--ignored"]))
}
