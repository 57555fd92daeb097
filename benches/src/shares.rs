//! `shares`: one VM, one host folder content in three copies, mounted three
//! ways (`vsockfs`, `9p`, `virtiofs`, all writable, each with our defaults,
//! which are Lima's for 9p and virtiofs). Every figure is timed inside the
//! guest (`lima-guest-agent tool time|stat-files`), except the host-edit
//! latency, which is timed on the host from its write to the guest's "seen".
//!
//! Per mount, under `/mnt/TYPE`:
//! * `tree/`: 100 dirs × 100 small files (stat rows, known paths, like
//!   `git status` walking its index);
//! * `ls/`: the same again, listed with `ls -lR`;
//! * `repo/`: the same again as a git repository committed on the host,
//!   only when the `builtin:debian` image exists (the default image has no
//!   git);
//! * `edit`: rewritten by the host while the guest polls it.
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, run, Stats};

/// Every mount type, ours first; `--kinds` picks some of them.
pub const KINDS: [&str; 3] = ["vsockfs", "9p", "virtiofs"];
const DIRS: usize = 100;
const FILES: usize = 100;
const CREATES: usize = 1000;
const NAME: &str = "bench";
/// Drops the guest's caches, then lets the forgets that follow settle: the
/// kernel hands vsockfs tens of thousands of them at once, which its agent
/// and the host work through for a moment (9p and virtiofs have nobody in
/// the guest to do that). Run before each mount's cold figure, so no mount
/// is measured while the drop is still being dealt with.
const DROP_CACHES: &str = "sync; sudo -n sh -c 'echo 3 > /proc/sys/vm/drop_caches'; sleep 2";

pub struct Opts {
    pub quick: bool,
    pub mib: usize,
    /// Mount types to measure, `vsockfs` first (checked by the caller).
    pub kinds: Vec<String>,
}

/// One table cell per mount type.
enum Cell {
    /// A duration; lower is better.
    Time(Duration),
    /// MiB/s; higher is better.
    Rate(f64),
    /// Not measured, with the reason.
    Na(String),
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Time(d) => crate::ms(*d),
            Cell::Rate(r) => format!("{r:.0} MiB/s"),
            Cell::Na(why) => format!("n/a ({why})"),
        }
    }

    /// How many times faster `self` is than `other` (>1: `self` wins).
    fn speedup(&self, other: &Cell) -> String {
        match (self, other) {
            (Cell::Time(a), Cell::Time(b)) => {
                format!("{:.2}×", b.as_secs_f64() / a.as_secs_f64().max(1e-9))
            }
            (Cell::Rate(a), Cell::Rate(b)) => format!("{:.2}×", a / b.max(1e-9)),
            _ => "–".into(),
        }
    }
}

struct Vm {
    limactl: std::path::PathBuf,
    home: tempfile::TempDir,
}

impl Vm {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.limactl);
        c.env("LIMA_HOME", self.home.path());
        c
    }

    /// Runs a guest shell script, returns its stdout; fails on a non-zero exit.
    fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.sh_in(script, None)
    }

    fn sh_in(&self, script: &str, stdin: Option<&[u8]>) -> anyhow::Result<String> {
        let mut child = self
            .cmd()
            .args(["shell", NAME, "--", "sh", "-ec", script])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(data) = stdin {
            let mut w = child.stdin.take().context("stdin")?;
            let data = data.to_vec();
            std::thread::spawn(move || w.write_all(&data));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "guest script failed ({}):\n{script}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lima-guest-agent tool time ARGV`: the command's wall time in the guest.
    fn time(&self, argv: &[&str]) -> anyhow::Result<Duration> {
        let mut a = vec!["shell", NAME, "--", "lima-guest-agent", "tool", "time"];
        a.extend_from_slice(argv);
        let out = self.cmd().args(&a).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "{argv:?} failed in the guest ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("tool time printed {:?}", out.stdout))?;
        Ok(Duration::from_nanos(ns))
    }

    /// `tool time sh -c SCRIPT`
    fn time_sh(&self, script: &str) -> anyhow::Result<Duration> {
        self.time(&["sh", "-ec", script])
    }

    /// lstat of every path in the guest list file.
    fn stat_files(&self, list: &str, want: usize) -> anyhow::Result<Duration> {
        let out = self.sh(&format!("lima-guest-agent tool stat-files {list}"))?;
        let v: Vec<u64> = out
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("stat-files printed {out:?}"))?;
        if v.len() != 3 || v[0] != want as u64 {
            bail!("stat-files found {out:?}, want {want} present");
        }
        Ok(Duration::from_nanos(v[2]))
    }
}

/// 100 × 100 small files under `dir`.
fn make_tree(dir: &Path) -> anyhow::Result<()> {
    for i in 0..DIRS {
        let d = dir.join(format!("d{i}"));
        std::fs::create_dir_all(&d)?;
        for j in 0..FILES {
            std::fs::write(d.join(format!("f{j}")), format!("file {i} {j}\n"))?;
        }
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args))
}

fn median_of(
    n: usize,
    mut f: impl FnMut(usize) -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(f(i)?);
    }
    Ok(Stats::new(v).median())
}

/// Host rewrites `edit` while the guest polls it (`tool watch-file`); the
/// latency runs from the end of the host's write to the guest's "seen"
/// line arriving on the host, so it includes one guest→host stdout hop.
fn edit_latency(
    vm: &Vm,
    host_file: &Path,
    guest_file: &str,
    mode: &str,
    rounds: usize,
    counter: &mut usize,
) -> anyhow::Result<Duration> {
    let mut child = vm
        .cmd()
        .args([
            "shell",
            NAME,
            "--",
            "lima-guest-agent",
            "tool",
            "watch-file",
            guest_file,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    let expect = |what: &str| -> anyhow::Result<Instant> {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((line, at)) if line == what => Ok(at),
            Ok((line, _)) => bail!("watch-file said {line:?}, want {what:?}"),
            Err(_) => bail!("{mode}: the guest did not report {what:?} within 60 s"),
        }
    };
    let mut out = Vec::new();
    for _ in 0..rounds {
        *counter += 1;
        // Lengths alternate so a half-written (truncated) file never matches.
        let text = format!(
            "gen {:04}{}",
            *counter,
            if *counter % 2 == 1 { "+" } else { "" }
        );
        writeln!(input, "{mode} {text}")?;
        input.flush()?;
        expect("armed")?;
        // Let the guest settle into its polling loop on cached data.
        std::thread::sleep(Duration::from_millis(30));
        std::fs::write(host_file, format!("{text}\n"))?;
        let t0 = Instant::now();
        let seen = expect("seen")?;
        out.push(seen.saturating_duration_since(t0));
    }
    drop(input);
    let _ = child.wait();
    Ok(Stats::new(out).median())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn shares(opts: &Opts) -> anyhow::Result<()> {
    let reps = if opts.quick { 1 } else { 3 };
    let io_reps = if opts.quick { 1 } else { 3 };
    let edits = if opts.quick { 5 } else { 20 };
    let mib = if opts.quick {
        opts.mib.min(64)
    } else {
        opts.mib
    };
    let kinds: Vec<&str> = opts.kinds.iter().map(String::as_str).collect();
    let kinds = kinds.as_slice();
    let git_image = lima_host::image::open_builtin("debian").is_ok();
    let image = if git_image { "debian" } else { "default" };
    let load_start = load_average();

    let host = tempfile::Builder::new()
        .prefix("lima-bs")
        .tempdir_in("/tmp")?;
    let t = Instant::now();
    for kind in kinds {
        let root = host.path().join(kind);
        make_tree(&root.join("tree"))?;
        make_tree(&root.join("ls"))?;
        std::fs::write(root.join("edit"), "start\n")?;
        if git_image {
            let repo = root.join("repo");
            make_tree(&repo)?;
            git(&repo, &["init", "-q"])?;
            git(&repo, &["add", "."])?;
            git(&repo, &["commit", "-q", "-m", "tree"])?;
        }
    }
    // Commands run as the guest user, not root: 9p and virtiofs pass the
    // host's owners and modes through, so the trees must be writable by
    // that user (vsockfs shows them as the guest user's own).
    run(Command::new("chmod")
        .arg("-R")
        .arg("a+rwX")
        .arg(host.path()))?;
    eprintln!(
        "host trees ready in {:.1} s under {} (image builtin:{image})",
        t.elapsed().as_secs_f64(),
        host.path().display()
    );

    let vm = Vm {
        limactl: bin_dir().join("limactl"),
        home: tempfile::Builder::new()
            .prefix("lima-b")
            .tempdir_in("/tmp")?,
    };
    let mut yaml =
        format!("images:\n- location: builtin:{image}\ncpus: 2\nmemory: 2GiB\nmounts:\n");
    for kind in kinds {
        yaml += &format!(
            "- location: {}\n  mountPoint: /mnt/{kind}\n  writable: true\n  mountType: {kind}\n",
            host.path().join(kind).display()
        );
    }
    let yaml_path = vm.home.path().join(format!("{NAME}.yaml"));
    std::fs::write(&yaml_path, yaml)?;
    let yaml_path = yaml_path.to_string_lossy().into_owned();
    run(vm.cmd().args(["start", "--timeout", "10m", &yaml_path]))?;
    let result = measure(
        &vm,
        host.path(),
        kinds,
        git_image,
        reps,
        io_reps,
        edits,
        mib,
    );
    let _ = run(vm.cmd().args(["delete", "--force", NAME]));
    let rows = result?;

    let others = &kinds[1..];
    let mut head = format!("| figure | {} (ours) |", kinds[0]);
    for k in others {
        head += &format!(" {k} |");
    }
    for k in others {
        head += &format!(" {} vs {k} |", kinds[0]);
    }
    println!("{head}");
    println!("|{}", " --- |".repeat(1 + kinds.len() + others.len()));
    for (name, cells) in &rows {
        let mut line = format!("| {name} |");
        for c in cells {
            line += &format!(" {} |", c.show());
        }
        for c in &cells[1..] {
            line += &format!(" {} |", cells[0].speedup(c));
        }
        println!("{line}");
    }
    println!();
    println!(
        "Ratios are how many times faster vsockfs is (>1: ours faster). Host load average at start {load_start}, at end {}.",
        load_average()
    );
    Ok(())
}

type Row = (String, Vec<Cell>);

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn measure(
    vm: &Vm,
    host: &Path,
    kinds: &[&str],
    git_image: bool,
    reps: usize,
    io_reps: usize,
    edits: usize,
    mib: usize,
) -> anyhow::Result<Vec<Row>> {
    let n = DIRS * FILES;
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: String, cells: Vec<Cell>| {
        eprintln!(
            "{name}: {}",
            cells.iter().map(Cell::show).collect::<Vec<_>>().join(" | ")
        );
        rows.push((name, cells));
    };
    // The path lists for stat-files, made on the host, kept in guest /tmp.
    for kind in kinds {
        let mut list = String::new();
        for i in 0..DIRS {
            for j in 0..FILES {
                list += &format!("/mnt/{kind}/tree/d{i}/f{j}\n");
            }
        }
        vm.sh_in(&format!("cat > /tmp/list-{kind}"), Some(list.as_bytes()))?;
    }
    let mounts = vm.sh("grep -E ' /mnt/(vsockfs|9p|virtiofs) ' /proc/mounts")?;
    eprintln!("{}", mounts.trim_end());
    if git_image {
        // 9p and virtiofs show the host's owners as they are; the guest
        // user's git must accept repositories another user owns.
        vm.sh("git config --global --add safe.directory '*'")?;
    }

    // Each tree is touched for the first time by its cold row.
    let cells = kinds
        .iter()
        .map(|k| vm.stat_files(&format!("/tmp/list-{k}"), n).map(Cell::Time))
        .collect::<anyhow::Result<_>>()?;
    row(
        format!("`lstat` {n} files, cold (first after mount)"),
        cells,
    );
    let cells = kinds
        .iter()
        .map(|k| median_of(reps, |_| vm.stat_files(&format!("/tmp/list-{k}"), n)).map(Cell::Time))
        .collect::<anyhow::Result<_>>()?;
    row(format!("`lstat` {n} files, warm (median of {reps})"), cells);

    // Dropping the guest's caches before each mount's cold run makes it
    // cold for every mount type alike, and lets vsockfs release the host
    // fds of the nodes the kernel forgets (one per cached inode; see
    // benchmarks.md).
    let cells = kinds
        .iter()
        .map(|k| {
            vm.sh(DROP_CACHES)?;
            vm.time(&["ls", "-lR", &format!("/mnt/{k}/ls")])
                .map(Cell::Time)
        })
        .collect::<anyhow::Result<_>>()?;
    row(format!("`ls -lR` {n} files, cold"), cells);
    let cells = kinds
        .iter()
        .map(|k| {
            median_of(reps, |_| vm.time(&["ls", "-lR", &format!("/mnt/{k}/ls")])).map(Cell::Time)
        })
        .collect::<anyhow::Result<_>>()?;
    row(
        format!("`ls -lR` {n} files, warm (median of {reps})"),
        cells,
    );

    let cells = kinds
        .iter()
        .map(|k| {
            median_of(reps, |r| {
                let d = format!("/mnt/{k}/new{r}");
                vm.sh(&format!("mkdir {d}"))?;
                vm.time_sh(&format!(
                    "cd {d}; i=0; while [ $i -lt {CREATES} ]; do echo x > f$i; i=$((i+1)); done"
                ))
            })
            .map(Cell::Time)
        })
        .collect::<anyhow::Result<_>>()?;
    row(
        format!("create {CREATES} small files (`echo x > f$i`, median of {reps})"),
        cells,
    );

    if git_image {
        let status = |k: &str| -> anyhow::Result<Duration> {
            vm.time(&[
                "git",
                "-c",
                "safe.directory=*",
                "-C",
                &format!("/mnt/{k}/repo"),
                "status",
                "--porcelain",
            ])
        };
        let cells = kinds
            .iter()
            .map(|k| {
                vm.sh(DROP_CACHES)?;
                status(k).map(Cell::Time)
            })
            .collect::<anyhow::Result<_>>()?;
        row(
            format!("`git status`, {n}-file repo committed on the host, cold"),
            cells,
        );
        let cells = kinds
            .iter()
            .map(|k| median_of(reps, |_| status(k)).map(Cell::Time))
            .collect::<anyhow::Result<_>>()?;
        row(format!("`git status`, warm (median of {reps})"), cells);
        for k in kinds {
            let dirty = vm.sh(&format!(
                "git -c safe.directory='*' -C /mnt/{k}/repo status --porcelain | wc -l"
            ))?;
            if dirty.trim() != "0" {
                eprintln!(
                    "warning: git status on {k} lists {} changed paths",
                    dirty.trim()
                );
            }
        }
    } else {
        let na = || Cell::Na("no git in image; build `cargo xtask image debian`".into());
        row("`git status`, cold".into(), vec![na(), na(), na()]);
        row("`git status`, warm".into(), vec![na(), na(), na()]);
    }

    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for k in kinds {
        let f = format!("/mnt/{k}/big");
        let (mut w, mut r) = (Vec::new(), Vec::new());
        for _ in 0..io_reps {
            w.push(vm.time_sh(&format!(
                "dd if=/dev/zero of={f} bs=1M count={mib} 2>/dev/null; sync"
            ))?);
            vm.sh(DROP_CACHES)?;
            r.push(vm.time(&["dd", &format!("if={f}"), "of=/dev/null", "bs=1M"])?);
            vm.sh(&format!("rm {f}"))?;
        }
        let rate = |v: Vec<Duration>| Cell::Rate(mib as f64 / Stats::new(v).median().as_secs_f64());
        writes.push(rate(w));
        reads.push(rate(r));
    }
    row(
        format!("sequential write {mib} MiB (`dd bs=1M` + `sync`, median of {io_reps})"),
        writes,
    );
    row(
        format!("sequential read {mib} MiB after `drop_caches` (median of {io_reps})"),
        reads,
    );

    let mut counter = 0;
    for (mode, what) in [
        ("stat", "host edit → guest `stat` sees it"),
        ("read", "host edit → guest read sees it"),
    ] {
        let cells = kinds
            .iter()
            .map(|k| {
                edit_latency(
                    vm,
                    &host.join(k).join("edit"),
                    &format!("/mnt/{k}/edit"),
                    mode,
                    edits,
                    &mut counter,
                )
                .map(Cell::Time)
            })
            .collect::<anyhow::Result<_>>()?;
        row(format!("{what} (1 ms polls, median of {edits})"), cells);
    }
    Ok(rows)
}
