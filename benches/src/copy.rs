//! `copy`: `limactl copy` beside Lima's way, `scp` through the instance's
//! `ssh.config` (Lima's `copy` runs scp when the guest has no rsync, as a
//! fresh Debian cloud image has not), on one Debian 12 cloud guest.
//!
//! Figures, median of N alternating runs: one 64 MiB file to the guest,
//! the same back to the host, and a 2,000-file tree (20 folders × 100
//! small files) to the guest with `-r`. scp gets a ControlMaster
//! connection made beforehand (Lima keeps one per instance), so its figure
//! has no SSH handshake in it.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, ms, run, DeleteOnDrop, Stats};

const GUEST: &str = "copyb";
const BIG: usize = 64 << 20;
const DIRS: usize = 20;
const FILES: usize = 100;

pub struct Opts {
    pub runs: usize,
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run(cmd)?;
    Ok(t.elapsed())
}

pub fn run_suite(o: &Opts) -> anyhow::Result<()> {
    let limactl = bin_dir().join("limactl");
    let image = crate::cloud_image("copy")?;
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(&limactl);
        c.env("LIMA_HOME", home.path());
        c
    };
    let work = tempfile::tempdir()?;
    let big = work.path().join("big.bin");
    let bytes: Vec<u8> = (0..BIG).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&big, &bytes)?;
    let tree = work.path().join("tree");
    for d in 0..DIRS {
        let sub = tree.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..FILES {
            std::fs::write(sub.join(format!("f{f:02}")), format!("file {d} {f}\n"))?;
        }
    }
    let yaml = work.path().join("copy.yaml");
    std::fs::write(&yaml, crate::cloud_yaml(&image, "[]"))?;
    let _delete = DeleteOnDrop {
        limactl: &limactl,
        home: home.path(),
        name: GUEST,
    };
    eprintln!("copy: starting {}", image.display());
    run(lc()
        .args(["start", "--name", GUEST, "--timeout", "15m"])
        .arg(&yaml))?;

    let cfg = home.path().join(GUEST).join("ssh.config");
    let ctl = work.path().join("ctl");
    let host = format!("lima-{GUEST}");
    let ssh_opts = |c: &mut Command| {
        c.arg("-F")
            .arg(&cfg)
            .arg("-o")
            .arg(format!("ControlPath={}", ctl.display()));
    };
    let mut master = Command::new("ssh");
    ssh_opts(&mut master);
    run(master.args(["-M", "-f", "-N", "-o", "ControlPersist=yes", &host]))?;
    let scp = |args: &[&str]| {
        let mut c = Command::new("scp");
        ssh_opts(&mut c);
        c.arg("-q").args(args);
        c
    };
    let clean = || run(lc().args(["shell", GUEST, "--", "rm", "-rf", "/tmp/b", "/tmp/t"]));
    let back = work.path().join("back.bin");
    let (big_s, back_s, tree_s) = (
        big.display().to_string(),
        back.display().to_string(),
        tree.display().to_string(),
    );

    let mut figures: Vec<(&str, Vec<Duration>, Vec<Duration>)> = vec![
        ("one 64 MiB file, host → guest", vec![], vec![]),
        ("the same file, guest → host", vec![], vec![]),
        ("2,000 small files (`-r`), host → guest", vec![], vec![]),
    ];
    for _ in 0..o.runs {
        clean()?;
        figures[0].1.push(timed(lc().args([
            "copy",
            &big_s,
            &format!("{GUEST}:/tmp/b"),
        ]))?);
        figures[0]
            .2
            .push(timed(&mut scp(&[&big_s, &format!("{host}:/tmp/b")]))?);
        let _ = std::fs::remove_file(&back);
        figures[1].1.push(timed(lc().args([
            "copy",
            &format!("{GUEST}:/tmp/b"),
            &back_s,
        ]))?);
        check_same(&back, &bytes)?;
        std::fs::remove_file(&back)?;
        figures[1]
            .2
            .push(timed(&mut scp(&[&format!("{host}:/tmp/b"), &back_s]))?);
        check_same(&back, &bytes)?;
        clean()?;
        figures[2].1.push(timed(lc().args([
            "copy",
            "-r",
            &tree_s,
            &format!("{GUEST}:/tmp/t"),
        ]))?);
        clean()?;
        figures[2].2.push(timed(&mut scp(&[
            "-r",
            &tree_s,
            &format!("{host}:/tmp/t"),
        ]))?);
    }
    let mut exit = Command::new("ssh");
    ssh_opts(&mut exit);
    let _ = exit
        .args(["-O", "exit", &host])
        .stderr(Stdio::null())
        .status();
    println!(
        "| figure (Debian 12 cloud guest, n={}) | `limactl copy` | `scp` (Lima's way) |",
        o.runs
    );
    println!("| --- | --- | --- |");
    for (name, ours, theirs) in figures {
        println!(
            "| {name} | {} | {} |",
            ms(Stats::new(ours).median()),
            ms(Stats::new(theirs).median())
        );
    }
    Ok(())
}

fn check_same(path: &Path, want: &[u8]) -> anyhow::Result<()> {
    let got = std::fs::read(path)?;
    anyhow::ensure!(got == want, "{} differs from what was sent", path.display());
    Ok(())
}
