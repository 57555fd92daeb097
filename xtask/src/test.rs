//! `cargo xtask test`: everything the end-to-end tests need, then the tests.
//!
//! The VM tests drive the real binaries and boot the real image, so they are
//! built first; `LIMA_BIN_DIR` tells the tests where the host binaries are
//! (cargo does not put other packages' binaries into a test's environment).
//! Kept as one function so switching to nextest later is a one-line change.

use anyhow::Result;

use crate::build::{self, Profile};
use crate::{cmd, image};

pub fn run(args: &[String]) -> Result<()> {
    build::run(Profile::Debug)?;
    let default = image::assemble(&build::agent_path())?;
    // Cached after the first run (debootstrap takes minutes once).
    crate::debian::assemble(&default)?;
    cmd::run(
        cmd::cargo()
            .env("LIMA_BIN_DIR", build::host_bin_dir(Profile::Debug))
            .args(["test", "--workspace"])
            .args(args),
    )
}
