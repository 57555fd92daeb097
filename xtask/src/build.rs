//! `cargo xtask build`: the host binaries and the static guest agent.
//!
//! The agent runs as PID 1 in an initramfs that has no libc, so it is always
//! a static musl binary, and always release (size and speed matter inside the
//! guest; nobody debugs it with a debugger there). The host profile follows
//! `--release`.

use std::path::PathBuf;

use anyhow::Result;

use crate::{cmd, setup};

/// Cargo profile of the host binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Self {
        if release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    /// The directory under `target/` where cargo puts this profile's output.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

pub fn run(profile: Profile) -> Result<()> {
    setup::run()?;
    let mut host = cmd::cargo();
    // The host agent runs lima-fs-server (one process per share) from
    // beside itself.
    host.args(["build", "-p", "lima-host", "-p", "lima-fs-server"]);
    if profile == Profile::Release {
        host.arg("--release");
    }
    cmd::run(&mut host)?;
    link_wrappers(&host_bin_dir(profile))?;
    cmd::run(cmd::cargo().args([
        "build",
        "-p",
        "lima-guest-agent",
        "--release",
        "--target",
        setup::MUSL_TARGET,
    ]))?;
    Ok(())
}

/// Lima's wrapper commands are modes of the `lima` binary, picked by the
/// name it runs as: `docker.lima` and `nerdctl.lima` link to it.
pub const WRAPPERS: &[&str] = &["docker.lima", "nerdctl.lima"];

fn link_wrappers(dir: &std::path::Path) -> Result<()> {
    for name in WRAPPERS {
        let link = dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == std::path::Path::new("lima")) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        crate::fsutil::symlink("lima", &link)?;
    }
    Ok(())
}

/// Where the host binaries (`limactl`, `lima`, `lima-run`, `lima-fs-server`)
/// end up.
pub fn host_bin_dir(profile: Profile) -> PathBuf {
    cmd::target_dir().join(profile.dir_name())
}

/// Where `run` leaves the static guest agent.
pub fn agent_path() -> PathBuf {
    cmd::target_dir()
        .join(setup::MUSL_TARGET)
        .join("release/lima-guest-agent")
}
