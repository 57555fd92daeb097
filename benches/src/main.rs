//! `lima-bench`: benchmarks that print our figure beside a baseline measured
//! in the same run. Run through `cargo xtask bench [SUITE]`; the latest table
//! lives in `docs/benchmarks.md`.
//!
//! Suites:
//! * `foundation`: `limactl start` to agent-ready (vs. the bare kernel boot of
//!   the same image in plain QEMU), `limactl shell NAME -- true` (vs. one raw
//!   vsock hello+ping round trip to the same agent).
//! * `ports`: detection latency from a guest `listen()` to the host port
//!   accepting, for the eBPF watcher, sock_diag polling every 1 s, and Lima's
//!   method (3 s rescan + rescan after `bind()`), all on one VM and measured
//!   on the guest clock; then round trip and throughput of a forwarded TCP
//!   connection beside QEMU's own `hostfwd` on the same VM.
//! * `shares`: one VM with the same tree shared three ways (vsockfs, 9p,
//!   virtiofs): stat, listing, creating files, `git status` (with the
//!   `builtin:debian` image), sequential I/O and host-edit visibility, timed
//!   in the guest (`shares.rs`).
//! * `run`: `lima-run -- true` wall time and each phase's share, beside the
//!   same kernel booting a Debian rootfs with systemd to a login prompt
//!   (`oneshot.rs`).
//! * `cloud`: `limactl start` of a Debian 12 cloud image to ready, each boot
//!   phase from the console, beside plain QEMU booting the same qcow2 to a
//!   login prompt; and a second start (`cloud.rs`).
//! * `docker`: the engine of `builtin:docker` from the host CLI: a published
//!   port answering (NAT rules from nf_tables notifications, beside Lima's
//!   3 s rescan), `docker run --rm` from the host beside in the guest,
//!   `docker build .` of 5,000 files on vsockfs, 9p and virtiofs, and start
//!   to engine-answers for both templates (`docker.rs`).
//! * `sync`: `limactl shell --sync` start-up on 10,000 files beside a full
//!   copy into the guest first (Lima's way), and the apply time of N
//!   changed files (`sync.rs`).
//! * `copy`: `limactl copy` of a big file both ways and of a tree, beside
//!   `scp` through a ControlMaster to the same Debian cloud guest
//!   (`copy.rs`).
//! * `mcp`: `limactl mcp serve`'s `read_file` and `run_shell_command`
//!   round trips beside sftp and ssh through a ControlMaster to the same
//!   Debian cloud guest (`mcp.rs`).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

mod cloud;
mod copy;
mod docker;
mod kernel;
mod mcp;
mod oneshot;
mod shares;
mod sync;

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
    /// Listens per detection method (ports suite)
    #[arg(long, default_value_t = 200)]
    listens: u16,
    /// Detection methods to measure, comma-separated: ebpf, poll, lima
    /// (ports suite)
    #[arg(long, default_value = "ebpf,poll,lima", value_delimiter = ',')]
    methods: Vec<String>,
    /// Listens per method for the second workload, a server that works
    /// `--gap-ms` between bind() and listen() (ports suite; 0 skips it)
    #[arg(long, default_value_t = 50)]
    gap_listens: u16,
    /// The second workload's pause between bind() and listen(), in ms
    #[arg(long, default_value_t = 5)]
    gap_ms: u64,
    /// Skip the data-path figures (ports suite)
    #[arg(long)]
    no_data_path: bool,
    /// MiB moved for the throughput figures (ports and shares suites)
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Fewer repetitions and smaller transfers (shares suite)
    #[arg(long)]
    quick: bool,
    /// Mount types to measure, vsockfs first (shares suite)
    #[arg(long, default_value = "vsockfs,9p,virtiofs", value_delimiter = ',')]
    kinds: Vec<String>,
    /// `lima-run -- true` runs (run suite)
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Classic systemd boots (run suite; each takes minutes under TCG)
    #[arg(long, default_value_t = 3)]
    classic_runs: usize,
    /// Runs of each repeated figure (docker suite)
    #[arg(long, default_value_t = 5)]
    docker_runs: usize,
    /// Builds per mount type (docker suite)
    #[arg(long, default_value_t = 1)]
    docker_build_runs: usize,
    /// Runs of each figure (sync suite)
    #[arg(long, default_value_t = 5)]
    sync_runs: usize,
    /// Files the session changes for the apply figure (sync suite)
    #[arg(long, default_value_t = 1000)]
    sync_changed: usize,
    /// Skip the rsync-over-ssh part on the Debian cloud image (sync suite)
    #[arg(long)]
    sync_no_rsync: bool,
    /// Runs of each figure (copy suite)
    #[arg(long, default_value_t = 5)]
    copy_runs: usize,
    /// Runs of each figure per kernel, alternating (kernel suite)
    #[arg(long, default_value_t = 5)]
    kernel_runs: usize,
    /// Skip starting `template:docker` (rootless) (docker suite)
    #[arg(long)]
    no_rootless: bool,
}

/// The Debian cloud image `cargo xtask bench` built for a suite
/// (`LIMA_BENCH_CLOUD_IMAGE`).
fn cloud_image(suite: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("LIMA_BENCH_CLOUD_IMAGE")
        .map(PathBuf::from)
        .with_context(|| {
            format!("LIMA_BENCH_CLOUD_IMAGE is not set (run through `cargo xtask bench {suite}`)")
        })
}

/// A `lima.yaml` of a cloud guest booting `image`, with `mounts` (YAML
/// list text, e.g. `[]`).
fn cloud_yaml(image: &std::path::Path, mounts: &str) -> String {
    format!(
        "images:\n- location: file://{}\ncpus: 2\nmemory: 2GiB\ndisk: 8GiB\nmounts: {mounts}\n",
        image.display()
    )
}

fn bin_dir() -> PathBuf {
    std::env::var_os("LIMA_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default()
        })
}

/// Deletes a benchmark instance when dropped, so a failed run leaves no VM
/// behind (and no host ports taken).
struct DeleteOnDrop<'a> {
    limactl: &'a Path,
    home: &'a Path,
    name: &'static str,
}

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.limactl)
            .env("LIMA_HOME", self.home)
            .args(["delete", "--force", self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
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
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.suite.as_str() {
        "foundation" => foundation(&args),
        "ports" => ports(&args),
        "shares" => {
            if args.kinds.first().map(String::as_str) != Some("vsockfs")
                || args
                    .kinds
                    .iter()
                    .any(|k| !shares::KINDS.contains(&k.as_str()))
            {
                bail!(
                    "--kinds {}: give vsockfs first, then any of 9p, virtiofs",
                    args.kinds.join(",")
                );
            }
            shares::shares(&shares::Opts {
                quick: args.quick,
                mib: args.mib,
                kinds: args.kinds.clone(),
            })
        }
        "run" => oneshot::run(&oneshot::Opts {
            runs: args.runs,
            classic_runs: args.classic_runs,
        }),
        "cloud" => cloud::run(),
        "kernel" => kernel::run_suite(&kernel::Opts {
            runs: args.kernel_runs,
        }),
        "mcp" => mcp::run(&mcp::Opts { runs: args.execs }),
        "copy" => copy::run_suite(&copy::Opts {
            runs: args.copy_runs,
        }),
        "docker" => docker::run(&docker::Opts {
            runs: args.docker_runs,
            build_runs: args.docker_build_runs,
            rootless: !args.no_rootless,
        }),
        "sync" => sync::run_suite(&sync::Opts {
            runs: args.sync_runs,
            changed: args.sync_changed,
            rsync: !args.sync_no_rsync,
        }),
        other => {
            bail!("unknown suite `{other}` (known: foundation, ports, shares, run, cloud, docker, sync, mcp, copy, kernel)")
        }
    }
}

fn foundation(args: &Args) -> anyhow::Result<()> {
    let bins = bin_dir();
    let limactl = bins.join("limactl");
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(&limactl);
        c.env("LIMA_HOME", home.path());
        c
    };
    let image = lima_host::image::open_builtin("default")
        .context("the default image (run `cargo xtask image`)")?;
    let accel = std::env::var("LIMA_QEMU_ACCEL").unwrap_or_else(|_| "probe".into());
    eprintln!(
        "benchmarking with {} (accelerator: {accel})",
        limactl.display()
    );

    // Baseline: the same kernel and initramfs in plain QEMU, with an init that
    // exits at once (the kernel then panics and QEMU quits): the boot floor.
    let mut floor = Vec::new();
    for _ in 0..args.boots {
        let t = Instant::now();
        let _ = Command::new("qemu-system-x86_64")
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
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "null",
            ])
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pings = Vec::new();
    for _ in 0..args.execs {
        let t = Instant::now();
        rt.block_on(lima_host::client::ping(transport.as_ref()))?;
        pings.push(t.elapsed());
    }
    run(lc().args(["delete", "--force", "bench"]))?;

    let (floor, starts, stops, execs, pings) = (
        Stats::new(floor),
        Stats::new(starts),
        Stats::new(stops),
        Stats::new(execs),
        Stats::new(pings),
    );
    println!("| figure | ours (median) | baseline (median) | baseline is |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `limactl start` → agent ready (n={}) | {} | {} | plain QEMU, same kernel+initramfs, init exits at once (boot floor) |",
        args.boots,
        ms(starts.median()),
        ms(floor.median())
    );
    println!(
        "| `limactl stop` (n={}) | {} | – | |",
        args.boots,
        ms(stops.median())
    );
    println!(
        "| `limactl shell NAME -- true` (n={}) | {} (p90 {}) | {} | one raw vsock hello+ping to the same agent |",
        args.execs,
        ms(execs.median()),
        ms(execs.pct(0.9)),
        ms(pings.median())
    );
    Ok(())
}

fn set_mode(
    transport: &dyn lima_host::vsock::Transport,
    rt: &tokio::runtime::Runtime,
    mode: lima_proto::WatchMode,
) -> anyhow::Result<String> {
    match rt.block_on(lima_host::client::control(
        transport,
        lima_proto::ControlRequest::SetWatchMode(mode),
    ))? {
        lima_proto::ControlReply::WatchMode(t) => Ok(t),
        other => bail!("setting the watch mode failed: {other:?}"),
    }
}

/// Guest-clock latencies from `listen()`, per listen.
#[derive(Default)]
struct Detection {
    /// ... to the agent writing the new port to the host.
    sent: Vec<Duration>,
    /// ... to the host's "forward ready" (sent after it bound the host port)
    /// reaching the agent: the detection latency.
    ready: Vec<Duration>,
    /// ... to the guest program accepting the host's first connection, made
    /// through the forward (the host polls every 0.5 ms).
    accepted: Vec<Duration>,
}

/// Runs the guest's listen-latency tool on `count` ports from `base` and
/// connects to each from the host until it accepts; returns the guest-clock
/// latencies.
fn detection(
    lc: &dyn Fn() -> Command,
    base: u16,
    count: u16,
    gap_ms: u64,
) -> anyhow::Result<Detection> {
    use std::io::BufRead;
    let mut child = guest_tool(
        lc,
        &[
            "listen-latency",
            &base.to_string(),
            &count.to_string(),
            &gap_ms.to_string(),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut out = Detection::default();
    for i in 0..count {
        let port = base + i;
        let t = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                // Hold the connection until the guest has accepted it.
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let line = lines.next().context("guest tool ended early")??;
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("bad line from the guest tool: {line:?}"))?;
                let [sent, ready, accepted] = f[..] else {
                    bail!("bad line from the guest tool: {line:?}");
                };
                out.sent.push(Duration::from_micros(sent));
                out.ready.push(Duration::from_micros(ready));
                out.accepted.push(Duration::from_micros(accepted));
                let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("port {port} never appeared on the host");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let _ = child.wait();
    Ok(out)
}

fn ping_pong(port: u16, n: usize) -> anyhow::Result<Stats> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut v = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        v.push(t.elapsed());
    }
    Ok(Stats::new(v))
}

fn throughput(port: u16, mib: usize) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let secs = t.elapsed().as_secs_f64();
    let got: usize = reply
        .trim()
        .parse()
        .with_context(|| format!("sink replied {reply:?}"))?;
    if got != mib << 20 {
        bail!("sink got {got} bytes, sent {}", mib << 20);
    }
    Ok(mib as f64 / secs)
}

/// `limactl shell bench -- lima-guest-agent tool ARGS...`, not started.
fn guest_tool(lc: &dyn Fn() -> Command, args: &[&str]) -> Command {
    let mut c = lc();
    c.args(["shell", "bench", "--", "lima-guest-agent", "tool"])
        .args(args);
    c
}

/// Starts `lima-guest-agent tool KIND tcp ADDR` in the bench VM.
fn guest_server(
    lc: &dyn Fn() -> Command,
    kind: &str,
    addr: &str,
) -> anyhow::Result<std::process::Child> {
    Ok(guest_tool(lc, &[kind, "tcp", addr])
        .stdin(Stdio::null())
        .spawn()?)
}

/// MiB/s of `mib` MiB downloaded from the source server behind `port`.
fn download(port: u16, mib: usize) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    s.write_all(format!("{mib}\n").as_bytes())?;
    let mut got = 0usize;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    if got != mib << 20 {
        bail!("source sent {got} bytes, asked for {}", mib << 20);
    }
    Ok(mib as f64 / secs)
}

fn ports(args: &Args) -> anyhow::Result<()> {
    let bins = bin_dir();
    let limactl = bins.join("limactl");
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let lc = || {
        let mut c = Command::new(&limactl);
        c.env("LIMA_HOME", home.path());
        // QEMU's own forwarding to the same guest servers, as the baseline.
        c.env(
            "LIMA_QEMU_HOSTFWD",
            "tcp:127.0.0.1:28080-:18080,tcp:127.0.0.1:28090-:18090,tcp:127.0.0.1:28070-:18070",
        );
        c
    };
    let _cleanup = DeleteOnDrop {
        limactl: &limactl,
        home: home.path(),
        name: "bench",
    };
    run(lc().args(["start", "--name", "bench", "--timeout", "10m"]))?;
    let inst = lima_host::instance::Instance::open(home.path(), "bench")?;
    let transport = lima_host::lifecycle::transport(&inst)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let methods = [
        ("ebpf", "eBPF watcher (ours)", lima_proto::WatchMode::Ebpf),
        (
            "poll",
            "sock_diag polling, 1 s",
            lima_proto::WatchMode::Poll { interval_ms: 1000 },
        ),
        (
            "lima",
            "Lima's method: 3 s rescan + rescan after bind()",
            lima_proto::WatchMode::LimaLike { interval_ms: 3000 },
        ),
    ];
    for m in &args.methods {
        if !methods.iter().any(|(key, ..)| key == m) {
            bail!("unknown detection method `{m}` (known: ebpf, poll, lima)");
        }
    }
    let mut rows = Vec::new();
    let workloads = [
        (args.listens, 0, String::new()),
        (
            args.gap_listens,
            args.gap_ms,
            format!(
                ", server works {} ms between bind() and listen()",
                args.gap_ms
            ),
        ),
    ];
    for (w, (listens, gap_ms, what)) in workloads.iter().enumerate() {
        if *listens == 0 {
            continue;
        }
        for (i, (key, name, mode)) in methods.iter().enumerate() {
            // Polling is blind to the gap; it only costs minutes.
            if !args.methods.iter().any(|m| m == key) || (w == 1 && *key == "poll") {
                continue;
            }
            let text = set_mode(transport.as_ref(), &rt, *mode)?;
            eprintln!("detection latency: {name} ({text}), {listens} listens{what}");
            let base = 20000 + (w as u16) * 5000 + (i as u16) * 1000;
            rows.push((
                format!("{name}{what} (n={listens})"),
                detection(&lc, base, *listens, *gap_ms)?,
            ));
        }
    }
    set_mode(transport.as_ref(), &rt, lima_proto::WatchMode::Ebpf)?;

    println!(
        "| detection method | listen → host forward ready: p50 | p99 | max | listen → sent to host: p50 / p99 | listen → first forwarded connection accepted: p50 / p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, d) in rows {
        let (ready, sent, accepted) = (
            Stats::new(d.ready),
            Stats::new(d.sent),
            Stats::new(d.accepted),
        );
        println!(
            "| {name} | {} | {} | {} | {} / {} | {} / {} |",
            ms(ready.median()),
            ms(ready.pct(0.99)),
            ms(*ready.samples.last().unwrap()),
            ms(sent.median()),
            ms(sent.pct(0.99)),
            ms(accepted.median()),
            ms(accepted.pct(0.99)),
        );
    }
    if args.no_data_path {
        return Ok(());
    }

    // Data path: one echo and one sink server, reached through us and hostfwd.
    let mut echo = guest_server(&lc, "echo", "0.0.0.0:18080")?;
    let mut sink = guest_server(&lc, "sink", "0.0.0.0:18090")?;
    let mut source = guest_server(&lc, "source", "0.0.0.0:18070")?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", 18090)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", 18080)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", 18070)).is_err()
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("guest servers did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rtt_ours = ping_pong(18080, 1000)?;
    let rtt_qemu = ping_pong(28080, 1000)?;
    let tp_ours = throughput(18090, args.mib)?;
    let tp_qemu = throughput(28090, args.mib)?;
    let down_ours = download(18070, args.mib)?;
    let down_qemu = download(28070, args.mib)?;
    for child in [&mut echo, &mut sink, &mut source] {
        let _ = child.kill();
        let _ = child.wait();
    }
    run(lc().args(["delete", "--force", "bench"]))?;

    println!();
    println!("| forwarded TCP | ours (vsock) | QEMU hostfwd (slirp) |");
    println!("| --- | --- | --- |");
    println!(
        "| round trip, 1 byte (n=1000), p50 | {} | {} |",
        ms(rtt_ours.median()),
        ms(rtt_qemu.median())
    );
    println!(
        "| round trip, 1 byte (n=1000), p99 | {} | {} |",
        ms(rtt_ours.pct(0.99)),
        ms(rtt_qemu.pct(0.99))
    );
    println!(
        "| throughput host→guest, {} MiB | {tp_ours:.0} MiB/s | {tp_qemu:.0} MiB/s |",
        args.mib
    );
    println!(
        "| throughput guest→host, {} MiB | {down_ours:.0} MiB/s | {down_qemu:.0} MiB/s |",
        args.mib
    );
    Ok(())
}
