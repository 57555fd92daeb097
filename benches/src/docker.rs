//! The `docker` suite (issue 22): the engine of `builtin:docker` driven from
//! the host's docker CLI through the forwarded socket, each figure beside a
//! baseline measured in the same run:
//!
//! 1. `docker run -d -p PORT:80` of a busybox httpd → the host port
//!    answering HTTP, with NAT rules only (`"userland-proxy": false`, found
//!    from nf_tables notifications). Baseline: Lima's method, a rescan of
//!    the rules every 3 s, computed (not run): the rule exists by the time
//!    `docker run -d` returns, so a 3 s poll of random phase sees it on
//!    average 1.5 s later (0 to 3 s), before its forward is even set up.
//! 2. `docker run --rm IMG true` from the host CLI, beside the same command
//!    run in the guest (`limactl shell NAME docker run ...`): the socket
//!    forwarding's cost.
//! 3. `docker build .` of a 5,000-file context, run in the guest in a
//!    shared folder, on a vsockfs, a 9p and a virtiofs mount of one VM.
//! 4. `limactl start` until the host's `docker version` answers, for
//!    `template:docker-rootful` (with the mounts above) and
//!    `template:docker`; and the guest-side engine start (the agent's
//!    `services: ... started` / `running` console lines, guest clock).
//!
//! Needs `cargo xtask image docker` and the host docker CLI
//! (/usr/local/bin/docker); the classic builder (`DOCKER_BUILDKIT=0`), as
//! the tests use.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, DeleteOnDrop, Stats};

pub struct Opts {
    /// Runs of each repeated figure.
    pub runs: usize,
    /// Builds per mount type (figure 3; each takes minutes under TCG).
    pub build_runs: usize,
    /// Also start `template:docker` (rootless) for figure 4.
    pub rootless: bool,
}

/// Files in the build context.
const FILES: usize = 5000;
/// The mount types of figure 3, with their guest mount points.
const MOUNTS: &[(&str, &str)] = &[
    ("vsockfs", "/mnt/vs"),
    ("9p", "/mnt/9p"),
    ("virtiofs", "/mnt/vfs"),
];

struct Env {
    limactl: PathBuf,
    home: PathBuf,
    docker_config: PathBuf,
}

impl Env {
    fn sock(&self, name: &str) -> PathBuf {
        self.home.join(name).join("sock/docker.sock")
    }

    /// The host's docker CLI against `name`'s forwarded socket.
    fn docker(&self, name: &str) -> Command {
        let cli = ["/usr/local/bin/docker", "/usr/bin/docker"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| "docker".into());
        let mut c = Command::new(cli);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.sock(name).display()),
        )
        .env("DOCKER_CONFIG", &self.docker_config)
        .env_remove("DOCKER_CONTEXT")
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null());
        c
    }

    fn limactl(&self) -> Command {
        let mut c = Command::new(&self.limactl);
        c.env("LIMA_HOME", &self.home).stdin(Stdio::null());
        c
    }

    /// `sh -c script` in the guest; its stdout.
    fn guest(&self, name: &str, script: &str) -> anyhow::Result<String> {
        let out = ok(self.limactl().args(["shell", name, "sh", "-c", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn ok(c: &mut Command) -> anyhow::Result<Output> {
    let out = c.output().with_context(|| format!("{c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The body of `GET /` on the host's 127.0.0.1:`port`, if it answers.
fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Debian's static busybox (the tests' download cache, else `apt-get
/// download`) into `dest`, with a Dockerfile `FROM scratch`.
fn busybox_context(dest: &Path) -> anyhow::Result<()> {
    let dir = bin_dir().join("../images/download/amd64");
    std::fs::create_dir_all(&dir)?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("busybox-static_") && n.ends_with("_amd64.deb")).then(|| e.path())
        })
    };
    let deb = match find() {
        Some(d) => d,
        None => {
            ok(Command::new("apt-get")
                .args(["download", "busybox-static:amd64"])
                .current_dir(&dir))?;
            find().context("apt-get download left no busybox-static deb")?
        }
    };
    let tree = tempfile::tempdir()?;
    ok(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(tree.path()))?;
    std::fs::create_dir_all(dest)?;
    std::fs::copy(tree.path().join("bin/busybox"), dest.join("busybox"))?;
    std::fs::write(
        dest.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /busybox\nCMD [\"/busybox\", \"echo\", \"hi\"]\n",
    )?;
    Ok(())
}

/// A context of [`FILES`] small files in 50 folders, copied by its
/// Dockerfile (so every build reads them all).
fn many_files_context(dest: &Path) -> anyhow::Result<()> {
    for i in 0..FILES {
        let sub = dest.join(format!("files/d{:02}", i / 100));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:04}.txt")), format!("file {i}\n"))?;
    }
    std::fs::write(dest.join("Dockerfile"), "FROM scratch\nCOPY files /files\n")?;
    Ok(())
}

/// `limactl start` of `what` in the background; times until the host's
/// `docker version` answers and until the start returns.
fn start(env: &Env, name: &str, what: &str) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let mut child = env
        .limactl()
        .args(["start", "--name", name, "--timeout", "15m", what])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut answered = None;
    let returned = loop {
        if answered.is_none()
            && env
                .docker(name)
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            answered = Some(t0.elapsed());
        }
        if let Some(st) = child.try_wait()? {
            let t = t0.elapsed();
            if !st.success() {
                let mut e = String::new();
                child.stderr.take().map(|mut s| s.read_to_string(&mut e));
                bail!("limactl start {what} failed: {e}");
            }
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The socket answers once the provision step saw the engine; if the
    // start returned first, wait for the forward.
    while answered.is_none() {
        if t0.elapsed() > returned + Duration::from_secs(120) {
            bail!("{name}: the host's docker CLI never reached the engine");
        }
        if env
            .docker(name)
            .args(["version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            answered = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((answered.unwrap(), returned))
}

/// Guest-side engine start, on the guest clock: the agent's console lines
/// `services: NAME started` and `services: NAME running` (its first start),
/// for containerd (first) to dockerd running, and for dockerd alone.
fn engine_start(env: &Env, name: &str) -> (Option<f64>, Option<f64>) {
    let text = std::fs::read(env.home.join(name).join("serial.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let at = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .and_then(|l| rfc3339_secs(l.split_whitespace().next()?))
    };
    // The rootless engine is one service, `dockerd-rootless` (rootlesskit
    // with its own containerd); the rootful one is containerd, then dockerd.
    let engine = if text.contains("services: dockerd-rootless ") {
        "dockerd-rootless"
    } else {
        "dockerd"
    };
    let dockerd = at(&format!("services: {engine} started"));
    let first = at("services: containerd started").or(dockerd);
    let running = at(&format!("services: {engine} running"));
    let d = |a: Option<f64>| Some(running? - a?);
    (d(first), d(dockerd))
}

/// Seconds of the day in an RFC 3339 time (enough for differences within
/// one start).
fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = s.split('T').nth(1)?.trim_end_matches('Z');
    let mut p = t.split(':');
    let h: f64 = p.next()?.parse().ok()?;
    let m: f64 = p.next()?.parse().ok()?;
    let sec: f64 = p.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

fn cell(s: &[Duration]) -> String {
    let st = Stats::new(s.to_vec());
    format!(
        "{:.2} s ({:.2}–{:.2})",
        st.median().as_secs_f64(),
        st.samples[0].as_secs_f64(),
        st.samples[st.samples.len() - 1].as_secs_f64()
    )
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let runs = opts.runs.max(1);
    let home = tempfile::Builder::new()
        .prefix("lima-bd")
        .tempdir_in("/tmp")?;
    let work = tempfile::Builder::new()
        .prefix("lima-bdw")
        .tempdir_in("/tmp")?;
    let env = Env {
        limactl: bin_dir().join("limactl"),
        home: home.path().to_path_buf(),
        docker_config: work.path().join("docker-config"),
    };
    let bb = work.path().join("bb");
    busybox_context(&bb)?;
    let mut mounts = String::new();
    for (kind, point) in MOUNTS {
        let ctx = work.path().join(format!("ctx-{kind}"));
        many_files_context(&ctx)?;
        mounts += &format!("- location: {}\n  mountPoint: {point}\n", ctx.display());
        if *kind != "vsockfs" {
            mounts += &format!("  mountType: {kind}\n");
        }
    }
    // template:docker-rootful, with the three mounts and NAT rules only.
    let yaml = work.path().join("rootful.yaml");
    std::fs::write(
        &yaml,
        format!(
            "vmType: qemu\narch: x86_64\nimages:\n- location: builtin:docker\n  arch: x86_64\n\
             cpus: 2\nmemory: 2GiB\ndisk: 100GiB\nmounts:\n{mounts}\
             provision:\n- mode: system\n  script: |\n    #!/bin/sh\n    set -e\n\
             \x20   usermod -aG docker \"{{{{.User}}}}\"\n    mkdir -p /etc/docker\n\
             \x20   echo '{{\"userland-proxy\": false}}' > /etc/docker/daemon.json\n\
             \x20   exec lima-guest-agent tool service start docker-rootful\n\
             portForwards:\n- guestSocket: /run/docker.sock\n  hostSocket: \"{{{{.Dir}}}}/sock/docker.sock\"\n"
        ),
    )?;
    let _cleanup = DeleteOnDrop {
        limactl: &env.limactl,
        home: &env.home,
        name: "bd",
    };
    eprintln!("docker: starting the rootful instance (three mounts)");
    let (rootful_answer, rootful_return) = start(&env, "bd", &yaml.to_string_lossy())?;
    let rootful_engine = engine_start(&env, "bd");
    eprintln!(
        "docker: rootful engine answered at {:.1} s, start returned at {:.1} s, guest engine start {:?}",
        rootful_answer.as_secs_f64(),
        rootful_return.as_secs_f64(),
        rootful_engine
    );
    ok(env
        .docker("bd")
        .args(["build", "-q", "-t", "lima-bb"])
        .arg(&bb))?;

    // 1. A published port answering on the host.
    eprintln!("docker: published ports ({runs} runs)");
    let mut ours = Vec::new();
    let mut after_return = Vec::new();
    let mut returned_at = Vec::new();
    for i in 0..runs {
        let port = 18080 + i as u16;
        let name = format!("web{i}");
        let t0 = Instant::now();
        ok(env.docker("bd").args([
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("{port}:80"),
            "lima-bb",
            "/busybox",
            "sh",
            "-c",
            "/busybox mkdir -p /www && echo ok > /www/index.html && exec /busybox httpd -f -p 80 -h /www",
        ]))?;
        let ret = t0.elapsed();
        loop {
            if http_get(port).is_some_and(|b| b.contains("ok")) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("host port {port} never answered");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = t0.elapsed();
        ours.push(t);
        after_return.push(t - ret);
        returned_at.push(ret);
        ok(env.docker("bd").args(["rm", "-f", &name]))?;
    }
    // Lima's 3 s rescan: the rule is there when `docker run -d` returns;
    // a poll of random phase sees it 1.5 s later on average (0 to 3 s).
    let lima_mean: Vec<Duration> = returned_at
        .iter()
        .map(|r| *r + Duration::from_millis(1500))
        .collect();
    let r = Stats::new(returned_at.clone());
    let lima_lo = r.samples[0];
    let lima_hi = r.samples[r.samples.len() - 1] + Duration::from_secs(3);

    println!("\n1. docker run -d -p PORT:80 → host port answers (median, range; {runs} runs)");
    println!("| | time |");
    println!("| --- | --- |");
    println!(
        "| ours (NAT rules from nf_tables notifications), from `docker run` | {} |",
        cell(&ours)
    );
    println!(
        "| ours, after `docker run -d` returned | {} |",
        cell(&after_return)
    );
    println!(
        "| `docker run -d` returned (rule in place) | {} |",
        cell(&returned_at)
    );
    println!(
        "| Lima's 3 s rescan (computed: return + 1.5 s mean; range return+0..+3 s) | {} ({:.2}–{:.2}) |",
        format_args!("{:.2} s", Stats::new(lima_mean).median().as_secs_f64()),
        lima_lo.as_secs_f64(),
        lima_hi.as_secs_f64()
    );

    // 2. `docker run --rm IMG true`: host CLI against guest CLI.
    eprintln!("docker: run --rm ({runs} runs each)");
    let mut host_run = Vec::new();
    let mut guest_run = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        ok(env
            .docker("bd")
            .args(["run", "--rm", "lima-bb", "/busybox", "true"]))?;
        host_run.push(t.elapsed());
        let t = Instant::now();
        ok(env.limactl().args([
            "shell", "bd", "docker", "run", "--rm", "lima-bb", "/busybox", "true",
        ]))?;
        guest_run.push(t.elapsed());
    }

    println!("\n2. docker run --rm IMG true ({runs} runs)");
    println!("| host CLI → forwarded socket | in the guest (`limactl shell`) |");
    println!("| --- | --- |");
    println!("| {} | {} |", cell(&host_run), cell(&guest_run));

    // 3. `docker build .` in each shared folder, in the guest (no cache, so
    // every run copies the context).
    eprintln!("docker: build of a {FILES}-file context");
    let builds_runs = opts.build_runs.max(1);
    println!("\n3. docker build . ({FILES} files, in the guest, {builds_runs} run(s) per mount)");
    println!("| mount type | time |");
    println!("| --- | --- |");
    for (kind, point) in MOUNTS {
        let mut v = Vec::new();
        for _ in 0..builds_runs {
            let ns = env.guest(
                "bd",
                &format!(
                    "cd {point} && s=$(date +%s%N) && DOCKER_BUILDKIT=0 docker build -q --no-cache . >/dev/null && echo $(( $(date +%s%N) - s ))"
                ),
            )?;
            let ns: u64 = ns.parse().with_context(|| format!("build time `{ns}`"))?;
            v.push(Duration::from_nanos(ns));
        }
        println!("| {kind} | {} |", cell(&v));
    }
    drop(_cleanup);

    // 4. The rootless template, as shipped.
    let rootless = if opts.rootless {
        let _c = DeleteOnDrop {
            limactl: &env.limactl,
            home: &env.home,
            name: "bdr",
        };
        eprintln!("docker: starting template:docker (rootless)");
        let (a, r) = start(&env, "bdr", "template:docker")?;
        Some((a, r, engine_start(&env, "bdr")))
    } else {
        None
    };

    println!("\n4. start → engine answers on the host");
    println!("| template | `docker version` answers | `limactl start` returned | engine start in the guest (first daemon started → dockerd running) | dockerd started → running |");
    println!("| --- | --- | --- | --- | --- |");
    let eng = |e: Option<f64>| e.map_or("–".into(), |e| format!("{e:.1} s"));
    println!(
        "| docker-rootful (+3 mounts) | {:.1} s | {:.1} s | {} | {} |",
        rootful_answer.as_secs_f64(),
        rootful_return.as_secs_f64(),
        eng(rootful_engine.0),
        eng(rootful_engine.1)
    );
    if let Some((a, r, e)) = rootless {
        println!(
            "| docker (rootless) | {:.1} s | {:.1} s | {} | {} |",
            a.as_secs_f64(),
            r.as_secs_f64(),
            eng(e.0),
            eng(e.1)
        );
    }
    Ok(())
}
