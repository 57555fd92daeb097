//! `lima-bench`: benchmarks that print our figure beside a baseline measured
//! in the same run. Run through `cargo xtask bench [SUITE]`; the latest table
//! lives in `docs/benchmarks.md`.
//!
//! Suites:
//! * `foundation`: `limactl start` to agent-ready (vs. the bare kernel boot of
//!   the same image in plain QEMU), `limactl shell NAME -- true` (vs. one raw
//!   vsock hello+ping round trip to the same agent).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Which suite to run
    #[arg(default_value = "foundation")]
    suite: String,
    /// Start/stop cycles for the boot figure
    #[arg(long, default_value_t = 5)]
    boots: usize,
    /// Round trips for the exec figure
    #[arg(long, default_value_t = 20)]
    execs: usize,
}

fn bin_dir() -> PathBuf {
    std::env::var_os("LIMA_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
    })
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Stats { samples }
    }
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }
    fn median(&self) -> Duration {
        self.pct(0.5)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.suite.as_str() {
        "foundation" => foundation(&args),
        other => bail!("unknown suite `{other}` (known: foundation)"),
    }
}

fn foundation(args: &Args) -> anyhow::Result<()> {
    let bins = bin_dir();
    let limactl = bins.join("limactl");
    let home = tempfile::Builder::new().prefix("lima-b").tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(&limactl);
        c.env("LIMA_HOME", home.path());
        c
    };
    let image = lima_host::image::open_builtin("default").context("the default image (run `cargo xtask image`)")?;
    let accel = std::env::var("LIMA_QEMU_ACCEL").unwrap_or_else(|_| "probe".into());
    eprintln!("benchmarking with {} (accelerator: {accel})", limactl.display());

    // Baseline: the same kernel and initramfs in plain QEMU, with an init that
    // exits at once (the kernel then panics and QEMU quits): the boot floor.
    let mut floor = Vec::new();
    for _ in 0..args.boots {
        let t = Instant::now();
        let _ = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "2048M", "-smp", "2"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "null"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(image.initrd.as_ref().unwrap())
            .args(["-append", "console=ttyS0 panic=-1 rdinit=/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        floor.push(t.elapsed());
    }

    // Ours: `limactl start` until the guest agent answers, then stop.
    run(lc().args(["start", "--name", "bench", "--timeout", "10m"]))?;
    run(lc().args(["stop", "bench"]))?;
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..args.boots {
        let t = Instant::now();
        run(lc().args(["start", "bench", "--timeout", "10m"]))?;
        starts.push(t.elapsed());
        let t = Instant::now();
        run(lc().args(["stop", "bench"]))?;
        stops.push(t.elapsed());
    }
    run(lc().args(["start", "bench", "--timeout", "10m"]))?;

    // Exec round trip through the whole CLI.
    let mut execs = Vec::new();
    for _ in 0..args.execs {
        let t = Instant::now();
        run(lc().args(["shell", "bench", "--", "true"]))?;
        execs.push(t.elapsed());
    }
    // Baseline: one raw hello + ping on the same channel, in-process.
    let inst = lima_host::instance::Instance::open(home.path(), "bench")?;
    let transport = lima_host::lifecycle::transport(&inst)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut pings = Vec::new();
    for _ in 0..args.execs {
        let t = Instant::now();
        rt.block_on(lima_host::client::ping(transport.as_ref()))?;
        pings.push(t.elapsed());
    }
    run(lc().args(["delete", "--force", "bench"]))?;

    let (floor, starts, stops, execs, pings) =
        (Stats::new(floor), Stats::new(starts), Stats::new(stops), Stats::new(execs), Stats::new(pings));
    println!("| figure | ours (median) | baseline (median) | baseline is |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `limactl start` → agent ready (n={}) | {} | {} | plain QEMU, same kernel+initramfs, init exits at once (boot floor) |",
        args.boots,
        ms(starts.median()),
        ms(floor.median())
    );
    println!("| `limactl stop` (n={}) | {} | – | |", args.boots, ms(stops.median()));
    println!(
        "| `limactl shell NAME -- true` (n={}) | {} (p90 {}) | {} | one raw vsock hello+ping to the same agent |",
        args.execs,
        ms(execs.median()),
        ms(execs.pct(0.9)),
        ms(pings.median())
    );
    Ok(())
}
