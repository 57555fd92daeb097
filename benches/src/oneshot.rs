//! The `run` suite: `lima-run -- true` wall time and its phases, beside the
//! classic path in the same run: Debian's kernel booting a Debian root
//! filesystem with systemd until the serial console offers a login
//! (`target/images/debian-classic`, built by `cargo xtask image debian-classic`).
//! `lima-run` boots the default image, whose kernel is ours since issue 24
//! (the `kernel` suite compares the two kernels alone).
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, ms, Stats};

pub struct Opts {
    pub runs: usize,
    pub classic_runs: usize,
}

/// One `lima-run --timings -- true`: wall time and the phases it printed.
fn one_run(lima_run: &Path, cwd: &Path) -> anyhow::Result<(Duration, BTreeMap<String, f64>)> {
    let t = Instant::now();
    let out = Command::new(lima_run)
        .args(["--timings", "--", "true"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .context("lima-run")?;
    let wall = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("lima-run -- true failed: {stderr}");
    }
    // "lima-run: timing PHASE   AT ms  (+DELTA ms)"
    let mut phases = BTreeMap::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("lima-run: timing ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        if let (Some(name), Some(at)) = (w.next(), w.next()) {
            if let Ok(at) = at.parse::<f64>() {
                phases.insert(name.to_string(), at);
            }
        }
    }
    Ok((wall, phases))
}

/// Boots the classic image until `login:` appears on the serial console.
fn classic_boot(dir: &Path, cpus: u32) -> anyhow::Result<Duration> {
    let serial = tempfile::NamedTempFile::new()?;
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "2048M"])
        .args(["-smp", &cpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        .args(["-append", "root=/dev/vda ro console=ttyS0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            dir.join("rootfs.ext4").display()
        ))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("qemu-system-x86_64")?;
    let mut seen = String::new();
    let mut f = std::fs::File::open(serial.path())?;
    let result = loop {
        let mut chunk = String::new();
        let _ = f.read_to_string(&mut chunk);
        seen.push_str(&chunk);
        if seen.contains("login:") {
            break Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(900) {
            break Err(anyhow::anyhow!(
                "the classic boot did not reach a login prompt in 15 minutes"
            ));
        }
        if let Some(st) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "QEMU exited ({st}) before the login prompt"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let lima_run = bin_dir().join("lima-run");
    let cwd = tempfile::Builder::new().prefix("lr-b").tempdir_in("/tmp")?;
    eprintln!("benchmarking {} ({} runs)", lima_run.display(), opts.runs);
    one_run(&lima_run, cwd.path())?; // warm the page cache
    let mut walls = Vec::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..opts.runs {
        let (wall, p) = one_run(&lima_run, cwd.path())?;
        walls.push(wall);
        for (k, v) in p {
            phases.entry(k).or_default().push(v);
        }
    }
    let mut classic = Vec::new();
    if opts.classic_runs > 0 {
        let classic_dir = lima_host::image::search_dirs()
            .into_iter()
            .map(|d| d.join("debian-classic"))
            .find(|d| d.join("rootfs.ext4").exists())
            .context("the classic image is missing: run `cargo xtask image debian-classic`")?;
        for i in 0..opts.classic_runs {
            eprintln!("classic boot {}/{}", i + 1, opts.classic_runs);
            classic.push(classic_boot(&classic_dir, 2)?);
        }
    }
    let walls = Stats::new(walls);
    println!("| figure | ours (median) | baseline (median) | baseline is |");
    println!("| --- | --- | --- | --- |");
    if classic.is_empty() {
        println!(
            "| `lima-run -- true` wall (n={}) | {} | – | (`--classic-runs 0`) |",
            opts.runs,
            ms(walls.median()),
        );
    } else {
        let classic = Stats::new(classic);
        println!(
            "| `lima-run -- true` wall (n={}) | {} | {} (n={}) | same kernel, Debian rootfs with systemd, boot to `login:` on the serial console |",
            opts.runs,
            ms(walls.median()),
            ms(classic.median()),
            opts.classic_runs
        );
        println!(
            "| ratio | {:.1}× shorter | | |",
            classic.median().as_secs_f64() / walls.median().as_secs_f64()
        );
    }
    println!();
    println!("| phase (lima-run) | ends at (median) | phase length | share of total |");
    println!("| --- | --- | --- | --- |");
    let mut prev = 0.0;
    let total = median(phases.get("vm-gone").cloned().unwrap_or_default());
    for phase in lima_host::oneshot::PHASES {
        let Some(v) = phases.get(*phase) else {
            continue;
        };
        let at = median(v.clone());
        println!(
            "| {phase} | {at:.1} ms | {:.1} ms | {:.0}% |",
            at - prev,
            100.0 * (at - prev) / total
        );
        prev = at;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
