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
    let default = image::assemble(&build::agent_path())?;
    // The shares bench boots `builtin:debian` (for git): it must carry the
    // agent just built too, not whichever one its last assembly had.
    crate::debian::assemble(&default)?;
    let mut runner = cmd::cargo();
    if args.iter().any(|a| a == "docker") {
        // `builtin:docker` around the release agent: its own initramfs
        // (the engine's modules) under the engine's root filesystem.
        let base = image::assemble_flavor(
            &build::agent_path(),
            &image::DOCKER_BASE,
            image::KernelChoice::Lima,
        )?;
        crate::debian::assemble_docker(&base)?;
    }
    if args.iter().any(|a| a == "kernel") {
        // The baseline: the same image around Debian's kernel.
        image::assemble_flavor(
            &build::agent_path(),
            &image::DEFAULT,
            image::KernelChoice::Debian,
        )?;
    }
    if args
        .iter()
        .any(|a| a == "cloud" || a == "mcp" || a == "sync" || a == "copy")
    {
        runner.env("LIMA_BENCH_CLOUD_IMAGE", crate::cloud_image::assemble()?);
    }
    cmd::run(
        runner
            .env("LIMA_BIN_DIR", build::host_bin_dir(Profile::Release))
            .args(["run", "--release", "-p", "lima-benches", "--"])
            .args(args),
    )
}
