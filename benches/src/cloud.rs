//! The `cloud` suite: `limactl start` of a Debian 12 cloud image to ready,
//! each boot phase timed from the serial console, beside plain QEMU
//! booting the same qcow2 (a fresh overlay, the same firmware and the same
//! cloud-init seed) to a login prompt; then a second start of the same
//! instance beside a second plain boot of the same overlay.
//!
//! Phases are the host-clock times (from the command's start) at which
//! marker lines first appear in the console log, polled every 10 ms.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, DeleteOnDrop};

/// Console lines that mark each phase, in boot order.
const MARKERS: &[(&str, &str)] = &[
    ("kernel", "Linux version "),
    ("initramfs", "Run /init as init process"),
    ("systemd", "Welcome to "),
    ("cloud-init local", "running 'init-local'"),
    ("cloud-init network", "running 'init' at"),
    ("agent ready", "agent ready on vsock port"),
    ("login prompt", " login: "),
    ("cloud-init done", "finished at"),
];

/// When each marker first appeared.
type Timeline = Vec<(&'static str, Option<Duration>)>;

/// Watches `serial` from `t0` until `until` marker shows or `limit` passes.
fn watch(serial: &Path, t0: Instant, until: &str, limit: Duration) -> Timeline {
    let mut seen: Vec<Option<Duration>> = vec![None; MARKERS.len()];
    loop {
        let text = std::fs::read(serial).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        for (i, (_, m)) in MARKERS.iter().enumerate() {
            if seen[i].is_none() && text.contains(m) {
                seen[i] = Some(t0.elapsed());
            }
        }
        let done = MARKERS
            .iter()
            .zip(&seen)
            .any(|((name, _), s)| *name == until && s.is_some());
        if done || t0.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    MARKERS.iter().map(|(n, _)| *n).zip(seen).collect()
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "–".into())
}

fn firmware_files() -> anyhow::Result<(PathBuf, PathBuf)> {
    for (c, v) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(c).exists() && Path::new(v).exists() {
            return Ok((c.into(), v.into()));
        }
    }
    bail!("no OVMF firmware (install Debian's ovmf)")
}

/// Plain QEMU booting `disk` with `seed`, until `login:` (and cloud-init's
/// end, within a limit); killed afterwards.
fn plain_boot(disk: &Path, seed: &Path, vars: &Path, dir: &Path) -> anyhow::Result<Timeline> {
    let (code, _) = firmware_files()?;
    let serial = dir.join("plain-serial.log");
    let _ = std::fs::remove_file(&serial);
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "2048M",
            "-smp",
            "2",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,unit=0,format=raw,readonly=on,file={}",
            code.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,unit=1,format=raw,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ])
        .args(["-device", "virtio-rng-pci"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("qemu-system-x86_64")?;
    let t = watch(&serial, t0, "cloud-init done", Duration::from_secs(600));
    let _ = child.kill();
    let _ = child.wait();
    Ok(t)
}

/// `limactl start`, timing the console until `until` shows.
fn lima_start(
    limactl: &Path,
    home: &Path,
    args: &[&str],
    until: &str,
) -> anyhow::Result<(Timeline, Duration, Instant)> {
    let serial = home.join("cloud/serial.log");
    // The last boot's console must not count for this one.
    let _ = std::fs::remove_file(&serial);
    let t0 = Instant::now();
    let child = Command::new(limactl)
        .env("LIMA_HOME", home)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The console log appears once the VM is launched.
    let timeline = std::thread::scope(|s| {
        let w = s.spawn(|| watch(&serial, t0, until, Duration::from_secs(900)));
        let out = child.wait_with_output();
        let ready = t0.elapsed();
        (w.join(), out, ready)
    });
    let (timeline, out, ready) = timeline;
    let out = out?;
    if !out.status.success() {
        bail!(
            "limactl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((timeline.expect("watcher"), ready, t0))
}

pub fn run() -> anyhow::Result<()> {
    let image = crate::cloud_image("cloud")?;
    let limactl = bin_dir().join("limactl");
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let cache = tempfile::Builder::new()
        .prefix("lima-bc")
        .tempdir_in("/tmp")?;
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    let work = tempfile::tempdir()?;
    let yaml = work.path().join("cloud.yaml");
    std::fs::write(&yaml, crate::cloud_yaml(&image, "[]"))?;
    let _cleanup = DeleteOnDrop {
        limactl: &limactl,
        home: home.path(),
        name: "cloud",
    };
    eprintln!("cloud: first start of {}", image.display());
    let (first, first_ready, t_first) = lima_start(
        &limactl,
        home.path(),
        &[
            "start",
            "--name",
            "cloud",
            "--timeout",
            "15m",
            yaml.to_str().unwrap(),
        ],
        "agent ready",
    )?;
    // cloud-init goes on after the agent answered: time its end too.
    let first_rest = watch(
        &home.path().join("cloud/serial.log"),
        t_first,
        "cloud-init done",
        Duration::from_secs(900),
    );
    let seed = work.path().join("seed.img");
    std::fs::copy(home.path().join("cloud/cidata.img"), &seed)?;
    crate::run(
        Command::new(&limactl)
            .env("LIMA_HOME", home.path())
            .args(["stop", "cloud"]),
    )?;
    eprintln!("cloud: second start");
    let (second, second_ready, t_second) = lima_start(
        &limactl,
        home.path(),
        &["start", "cloud", "--timeout", "15m"],
        "agent ready",
    )?;
    let second_rest = watch(
        &home.path().join("cloud/serial.log"),
        t_second,
        "cloud-init done",
        Duration::from_secs(900),
    );
    crate::run(
        Command::new(&limactl)
            .env("LIMA_HOME", home.path())
            .args(["stop", "cloud"]),
    )?;

    eprintln!("cloud: plain QEMU, first and second boot of a fresh overlay");
    let disk = work.path().join("overlay.qcow2");
    crate::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&disk)
            .arg("8G"),
    )?;
    let vars = work.path().join("vars.fd");
    std::fs::copy(firmware_files()?.1, &vars)?;
    let plain1 = plain_boot(&disk, &seed, &vars, work.path())?;
    let plain2 = plain_boot(&disk, &seed, &vars, work.path())?;

    let merge = |a: &Timeline, b: &Timeline| -> Vec<Option<Duration>> {
        a.iter().zip(b).map(|((_, x), (_, y))| x.or(*y)).collect()
    };
    let ours1 = merge(&first, &first_rest);
    let ours2 = merge(&second, &second_rest);
    println!("\n## cloud: Debian 12 cloud image, seconds from the command's start (TCG)\n");
    println!("| phase (first console line) | limactl start | plain QEMU | 2nd start | plain QEMU, 2nd boot |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, (name, _)) in MARKERS.iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} | {} |",
            secs(ours1[i]),
            secs(plain1[i].1),
            secs(ours2[i]),
            secs(plain2[i].1)
        );
    }
    println!(
        "| `limactl start` returned (ready) | {} | | {} | |",
        secs(Some(first_ready)),
        secs(Some(second_ready))
    );
    Ok(())
}
