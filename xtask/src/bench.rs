//! `cargo xtask bench`: release binaries, the image, then the benchmark
//! runner in `benches/` (which prints our numbers beside its baselines).
//!
//! Benchmarks measure release builds only; a debug host would make every
//! number about our debug overhead instead of the data path. `LIMA_BIN_DIR`
//! names the release binaries, as `cargo xtask test` does for debug ones.

use anyhow::Result;

use crate::build::{self, Profile};
use crate::{cmd, image};

pub fn run(args: &[String]) -> Result<()> {
    build::run(Profile::Release)?;
    image::assemble(&build::agent_path())?;
    cmd::run(
        cmd::cargo()
            .env("LIMA_BIN_DIR", build::host_bin_dir(Profile::Release))
            .args(["run", "--release", "-p", "lima-benches", "--"])
            .args(args),
    )
}
