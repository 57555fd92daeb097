//! `sync`: `limactl shell --sync DIR` on a 10,000-file tree (100 folders ×
//! 100 small files), one VM of the default image with no mounts.
//!
//! * start-up: `limactl shell --sync DIR --no NAME -- true`, whole (share,
//!   command, empty review), beside a full copy of the tree into the guest
//!   first, as Lima's `--sync` does with rsync over ssh. The default image
//!   has neither sshd nor rsync, so the copy is its stand-in: `tar` of the
//!   tree piped through `limactl shell NAME -- tar -x` (one stream, no
//!   per-file round trips: rsync's first copy does no better). Plain
//!   `limactl shell NAME -- true` is the floor of both.
//! * apply: a session whose command rewrites N files, with `--yes` (apply)
//!   beside the same session with `--no` (discard); the difference is the
//!   review-and-apply time of N files.
//! * Lima's way itself, on the local Debian cloud image (sshd; rsync
//!   installed from the mirror first, not timed): `--sync` start-up beside
//!   `ssh mkdir -p DEST` + `rsync -a --delete` of the tree over ssh (one
//!   ControlMaster connection made beforehand, as Lima keeps one) + the
//!   command, what Lima's `--sync` does before the command runs.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, ms, run, DeleteOnDrop, Stats};

const NAME: &str = "bench";
const DIRS: usize = 100;
const FILES: usize = 100;

pub struct Opts {
    pub runs: usize,
    /// Files changed for the apply figure.
    pub changed: usize,
    /// Also Lima's rsync way on the Debian cloud image.
    pub rsync: bool,
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run(cmd)?;
    Ok(t.elapsed())
}

fn tree(dir: &Path) -> anyhow::Result<()> {
    for d in 0..DIRS {
        let sub = dir.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..FILES {
            std::fs::write(sub.join(format!("f{f:02}")), format!("file {d} {f}\n"))?;
        }
    }
    Ok(())
}

pub fn run_suite(o: &Opts) -> anyhow::Result<()> {
    let limactl = bin_dir().join("limactl");
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(&limactl);
        c.env("LIMA_HOME", home.path());
        c
    };
    let work = tempfile::Builder::new()
        .prefix("lima-sync")
        .tempdir_in("/tmp")?;
    let proj = work.path().join("proj");
    tree(&proj)?;
    let p = proj.display().to_string();
    let yaml = work.path().join("bench.yaml");
    std::fs::write(
        &yaml,
        "images:\n- location: builtin:default\ncpus: 2\nmemory: 1GiB\nmounts: []\n",
    )?;
    run(lc()
        .args(["start", "--name", NAME, "--timeout", "10m"])
        .arg(&yaml))?;
    let _delete = DeleteOnDrop {
        limactl: &limactl,
        home: home.path(),
        name: NAME,
    };

    let (mut floor, mut synced, mut copied) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.runs {
        floor.push(timed(lc().args(["shell", NAME, "--", "true"]))?);
        synced.push(timed(
            lc().args(["shell", "--sync", &p, "--no", NAME, "--", "true"]),
        )?);
        run(lc().args(["shell", NAME, "--", "rm", "-rf", "/tmp/copy"]))?;
        let t = Instant::now();
        let mut tar = Command::new("tar")
            .args(["-C", &p, "-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("tar")?;
        let out = lc()
            .args(["shell", NAME, "--", "sh", "-c"])
            .arg("mkdir -p /tmp/copy && tar -C /tmp/copy -xf - && true")
            .stdin(tar.stdout.take().expect("piped"))
            .output()?;
        if !tar.wait()?.success() || !out.status.success() {
            bail!(
                "the tar copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        copied.push(t.elapsed());
    }

    let script = format!(
        "i=0; for d in d*; do for f in $d/f*; do [ $i -lt {} ] || exit 0; echo x >> $f; i=$((i+1)); done; done",
        o.changed
    );
    let (mut applied, mut discarded) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let before = std::fs::read(proj.join("d00/f00"))?;
        discarded.push(timed(lc().args([
            "shell", "--sync", &p, "--no", NAME, "--", "sh", "-c", &script,
        ]))?);
        applied.push(timed(lc().args([
            "shell", "--sync", &p, "--yes", NAME, "--", "sh", "-c", &script,
        ]))?);
        if std::fs::read(proj.join("d00/f00"))? == before {
            bail!("the --yes session did not apply its changes");
        }
    }

    let (floor, synced, copied, applied, discarded) = (
        Stats::new(floor),
        Stats::new(synced),
        Stats::new(copied),
        Stats::new(applied),
        Stats::new(discarded),
    );
    let n = o.runs;
    println!("| figure | ours (median) | baseline (median) | baseline is |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `shell --sync` of {} files, `-- true` (n={n}) | {} | {} | tar of the tree through `limactl shell -- tar -x` (stand-in for Lima's rsync: no sshd/rsync in the default image) |",
        DIRS * FILES,
        ms(synced.median()),
        ms(copied.median())
    );
    println!(
        "| `limactl shell -- true` (n={n}) | {} | | the floor of both |",
        ms(floor.median())
    );
    println!(
        "| session changing {} files, `--yes` (n={n}) | {} | {} | the same session with `--no` (difference: review + apply) |",
        o.changed,
        ms(applied.median()),
        ms(discarded.median())
    );
    drop(_delete);
    if o.rsync {
        rsync_suite(o, &limactl, &proj)?;
    }
    Ok(())
}

/// `--sync` against Lima's own way (rsync over ssh) on a Debian cloud guest.
fn rsync_suite(o: &Opts, limactl: &Path, proj: &Path) -> anyhow::Result<()> {
    const GUEST: &str = "rsyncb";
    let image = crate::cloud_image("sync")?;
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(limactl);
        c.env("LIMA_HOME", home.path());
        c
    };
    let work = tempfile::tempdir()?;
    let yaml = work.path().join("rsync.yaml");
    std::fs::write(&yaml, crate::cloud_yaml(&image, "[]"))?;
    let _delete = DeleteOnDrop {
        limactl,
        home: home.path(),
        name: GUEST,
    };
    eprintln!("sync: starting {}", image.display());
    run(lc()
        .args(["start", "--name", GUEST, "--timeout", "15m"])
        .arg(&yaml))?;
    eprintln!("sync: installing rsync in the guest (not timed)");
    run(lc().args([
        "shell",
        GUEST,
        "--",
        "sh",
        "-c",
        "sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync >/dev/null",
    ]))?;

    let cfg = home.path().join(GUEST).join("ssh.config");
    let ctl = work.path().join("ctl");
    let host = format!("lima-{GUEST}");
    let ssh = |args: &[&str]| {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&cfg).arg("-S").arg(&ctl).args(args);
        c
    };
    run(&mut ssh(&[
        "-M",
        "-f",
        "-N",
        "-o",
        "ControlPersist=yes",
        &host,
    ]))?;
    // Lima copies to the guest home plus the host path.
    let dest = format!("copy{}", proj.display());
    let rsh = format!("ssh -F {} -S {}", cfg.display(), ctl.display());
    let p = proj.display().to_string();

    let (mut synced, mut copied) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        synced.push(timed(
            lc().args(["shell", "--sync", &p, "--no", GUEST, "--", "true"]),
        )?);
        run(&mut ssh(&[&host, "rm", "-rf", "copy"]))?;
        let t = Instant::now();
        run(&mut ssh(&[&host, "mkdir", "-p", &dest]))?;
        run(Command::new("rsync")
            .args(["-a", "-q", "-r", "--delete", "-e", &rsh, "--"])
            .arg(format!("{p}/"))
            .arg(format!("{host}:{dest}/")))?;
        run(lc().args(["shell", "--workdir", "/", GUEST, "--", "true"]))?;
        copied.push(t.elapsed());
    }
    let _ = ssh(&["-O", "exit", &host]).stderr(Stdio::null()).status();
    let (synced, copied) = (Stats::new(synced), Stats::new(copied));
    println!(
        "| Debian 12 cloud guest: `shell --sync` of {} files, `-- true` (n={}) | {} | {} | Lima's way: `ssh mkdir -p`, `rsync -a --delete` over ssh (master connection made beforehand), then the command |",
        DIRS * FILES,
        o.runs,
        ms(synced.median()),
        ms(copied.median())
    );
    Ok(())
}
