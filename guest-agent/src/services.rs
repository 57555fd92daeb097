//! Container engines that the agent starts and supervises: our images have
//! no systemd, so PID 1 (this agent) is the service manager.
//!
//! How an engine gets asked for: a template's provision step runs
//!
//! ```text
//! lima-guest-agent tool service start docker-rootful         (as root)
//! lima-guest-agent tool service start docker-rootless USER   (as root)
//! ```
//!
//! which sends that line to the agent over [`CONTROL_SOCKET`] (root only)
//! and prints the answer: `ok ...` once the engine answers its API, or
//! `error ...` with the daemon's last log lines, so a provision step (and
//! with it `limactl start`) fails with them. Asking again for a running
//! engine answers at once. Provision steps run on every start, as Lima's do,
//! so the engine starts on every boot.
//!
//! ```text
//! docker-rootful   containerd ──ready (socket)──▶ dockerd -H unix:///run/lima-docker/docker.sock
//! docker-rootless  dockerd-rootless.sh as USER (rootlesskit + slirp4netns, then dockerd)
//!                  -H unix:///run/user/UID/lima-docker/docker.sock
//! then, once GET /_ping answers OK: /run/docker.sock (rootful) or
//! /run/user/UID/docker.sock (rootless) → the engine's socket (a symlink)
//! ```
//!
//! The well-known socket path is a symlink made only once the engine
//! answers, and removed when the daemon exits: dockerd listens long before
//! it serves, and the host agent's Unix-socket forwarding waits for the
//! guest socket to accept before it makes the host's socket.
//!
//! A daemon that exits is started again after a pause that doubles from
//! [`BACKOFF_START`] to [`BACKOFF_MAX`] (reset once it ran for
//! [`BACKOFF_RESET`]). Each daemon logs to `/var/log/lima/NAME.log` on the
//! data disk; state changes go to the agent's log (the serial console), to
//! `/run/lima-guest-agent/services/NAME` (one line: the state), and to the
//! host as `GuestEvent::Service` on the Events stream ([`board`]), which
//! the host agent records in its events and `limactl list` shows.
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lima_proto::sync::lock;
use lima_proto::ExitStatus;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::exec::Reaper;
use crate::users::{self, Account};

/// Where the tool asks the agent for an engine (root only).
pub const CONTROL_SOCKET: &str = "/run/lima-guest-agent/services.sock";
/// One file per service, holding its state.
const STATE_DIR: &str = "/run/lima-guest-agent/services";
/// Daemon logs, on the data disk.
const LOG_DIR: &str = "/var/log/lima";
/// Lines of a daemon's log an error shows.
const TAIL_LINES: usize = 20;
/// How long a daemon may take to answer (TCG is slow: dockerd's first
/// start sets up its storage and network).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// The first subordinate ID of the rootless engine's user namespace.
const SUBID_START: u32 = 100_000;
const SUBID_COUNT: u32 = 65_536;

/// Modules the engines need loaded up front: a rootless engine's iptables
/// runs in a user namespace, where the kernel does not autoload modules.
/// The docker image carries them (`images/docker/modules.txt`); images
/// without them get a warning per module.
const ENGINE_MODULES: &[&str] = &[
    "bridge",
    "br_netfilter",
    "veth",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "nf_nat",
    "nf_conntrack",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_nat",
    "xt_tcpudp",
    "xt_mark",
    "xt_comment",
    "ipt_REJECT",
    "nft_reject_ipv4",
    "overlay",
    "tun",
];

/// Every daemon's current state line, for the Events stream.
pub struct Board {
    states: Mutex<BTreeMap<String, String>>,
    changed: watch::Sender<u64>,
}

/// The agent's one [`Board`].
pub fn board() -> &'static Board {
    static BOARD: std::sync::OnceLock<Board> = std::sync::OnceLock::new();
    BOARD.get_or_init(|| Board {
        states: Mutex::new(BTreeMap::new()),
        changed: watch::channel(0).0,
    })
}

impl Board {
    fn set(&self, name: &str, line: String) {
        lock(&self.states).insert(name.to_string(), line);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Follows the board: call [`Follower::next`] for what changed.
    pub fn follow(&self) -> Follower {
        Follower {
            rx: self.changed.subscribe(),
            seen: BTreeMap::new(),
        }
    }
}

/// One reader's view of the [`board`].
pub struct Follower {
    rx: watch::Receiver<u64>,
    seen: BTreeMap<String, String>,
}

impl Follower {
    /// The `(daemon, state)` pairs that changed since the last call (all of
    /// them the first time, possibly none); waits only when nothing did.
    pub async fn next(&mut self) -> Vec<(String, String)> {
        loop {
            self.rx.borrow_and_update();
            let now = lock(&board().states).clone();
            let changed: Vec<(String, String)> = now
                .iter()
                .filter(|(k, v)| self.seen.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.seen = now;
            if !changed.is_empty() {
                return changed;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What the tool can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    DockerRootful,
    DockerRootless { user: String },
}

impl Request {
    /// `start docker-rootful` | `start docker-rootless USER`.
    pub fn parse(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["start", "docker-rootful"] => Ok(Request::DockerRootful),
            ["start", "docker-rootless", user] => Ok(Request::DockerRootless {
                user: user.to_string(),
            }),
            ["start", "docker-rootless"] => {
                Err("docker-rootless needs the guest user: start docker-rootless USER".into())
            }
            _ => Err(format!(
                "unknown request {line:?}; ask `start docker-rootful` or `start docker-rootless USER`"
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Request::DockerRootful => "docker-rootful",
            Request::DockerRootless { .. } => "docker-rootless",
        }
    }
}

/// How a daemon shows it is ready.
#[derive(Debug, Clone)]
enum Ready {
    /// Its Unix socket accepts a connection.
    Accepts(PathBuf),
    /// `GET /_ping` on its Unix socket answers `OK` (the docker API).
    DockerPing(PathBuf),
}

/// One supervised process.
#[derive(Debug, Clone)]
struct Daemon {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Run as this account instead of root.
    user: Option<Account>,
    ready: Ready,
    /// `(link, target)`: made once ready, removed when the daemon exits.
    link: Option<(PathBuf, PathBuf)>,
}

/// A daemon's state, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting {
        attempt: u32,
    },
    Running {
        attempt: u32,
    },
    /// Exited (or never answered); `tail` is its last log lines.
    Exited {
        attempt: u32,
        why: String,
        tail: String,
    },
}

impl State {
    fn line(&self) -> String {
        match self {
            State::Starting { attempt } => format!("starting (attempt {attempt})"),
            State::Running { attempt } => format!("running (attempt {attempt})"),
            State::Exited { attempt, why, .. } => format!("exited (attempt {attempt}): {why}"),
        }
    }
}

/// The engines this agent runs: each request's daemons and their states.
pub struct Services {
    reaper: Arc<Reaper>,
    running: Mutex<HashMap<&'static str, Vec<watch::Receiver<State>>>>,
    /// One start at a time, so two tools asking at once start one engine.
    starting: tokio::sync::Mutex<()>,
}

impl Services {
    pub fn new(reaper: Arc<Reaper>) -> Arc<Self> {
        Arc::new(Services {
            reaper,
            running: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
        })
    }

    /// Serves [`CONTROL_SOCKET`] until the agent stops.
    pub fn serve(self: Arc<Self>) {
        let listener = match bind_control() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("services: cannot listen on {CONTROL_SOCKET}: {e}");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = conn.into_split();
                    let mut line = String::new();
                    if BufReader::new(rd).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let answer = match Request::parse(&line) {
                        Ok(req) => me.start(&req).await,
                        Err(e) => Err(e),
                    };
                    let text = match answer {
                        Ok(ok) => format!("ok {ok}\n"),
                        Err(e) => format!("error {e}\n"),
                    };
                    let _ = wr.write_all(text.as_bytes()).await;
                });
            }
        });
    }

    /// Starts the engine `req` names (once), and waits until every one of
    /// its daemons answers or one fails.
    pub async fn start(&self, req: &Request) -> Result<String, String> {
        let _one = self.starting.lock().await;
        let name = req.name();
        let known = lock(&self.running).get(name).cloned();
        let states = match known {
            Some(states) => states,
            None => {
                let daemons = daemons_for(req)?;
                load_engine_modules();
                prepare(req)?;
                for d in daemons {
                    // In order: dockerd needs containerd's socket. What
                    // started stays supervised (and known) even when a
                    // later one fails, so asking again starts no twin.
                    let rx = supervise(d.clone(), self.reaper.clone());
                    lock(&self.running)
                        .entry(name)
                        .or_default()
                        .push(rx.clone());
                    wait_first(&d.name, rx).await?;
                }
                lock(&self.running).get(name).cloned().unwrap_or_default()
            }
        };
        for rx in states {
            let state = rx.borrow().clone();
            if let State::Exited { why, tail, .. } = &state {
                return Err(format!("{name}: {why}; its last log lines:\n{tail}"));
            }
        }
        Ok(format!("{name} answers"))
    }
}

fn bind_control() -> std::io::Result<tokio::net::UnixListener> {
    let path = Path::new(CONTROL_SOCKET);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Waits for a daemon's first start: `Ok` once it runs, the reason and its
/// log's tail if it exits first.
async fn wait_first(name: &str, mut rx: watch::Receiver<State>) -> Result<(), String> {
    loop {
        match rx.borrow_and_update().clone() {
            State::Running { .. } => return Ok(()),
            State::Exited { why, tail, .. } => {
                return Err(format!(
                "{name} failed to start: {why}; its last log lines ({LOG_DIR}/{name}.log):\n{tail}"
            ))
            }
            State::Starting { .. } => {}
        }
        if rx.changed().await.is_err() {
            return Err(format!("{name}: its supervisor stopped"));
        }
    }
}

/// The daemons of `req`, in start order.
fn daemons_for(req: &Request) -> Result<Vec<Daemon>, String> {
    let path = ("PATH".to_string(), crate::exec::DEFAULT_PATH.to_string());
    match req {
        Request::DockerRootful => {
            let containerd_sock = PathBuf::from("/run/containerd/containerd.sock");
            let engine_sock = PathBuf::from("/run/lima-docker/docker.sock");
            Ok(vec![
                Daemon {
                    name: "containerd".into(),
                    argv: vec!["containerd".into()],
                    env: vec![path.clone()],
                    user: None,
                    ready: Ready::Accepts(containerd_sock.clone()),
                    link: None,
                },
                Daemon {
                    name: "dockerd".into(),
                    argv: vec![
                        "dockerd".into(),
                        format!("--containerd={}", containerd_sock.display()),
                        format!("--host=unix://{}", engine_sock.display()),
                    ],
                    env: vec![path],
                    user: None,
                    ready: Ready::DockerPing(engine_sock.clone()),
                    link: Some(("/run/docker.sock".into(), engine_sock)),
                },
            ])
        }
        Request::DockerRootless { user } => {
            let account = users::lookup(Some(user))?;
            if account.uid == 0 {
                return Err(format!(
                    "the rootless engine needs an ordinary user, and {user} is root; \
                     use the docker-rootful template"
                ));
            }
            let runtime = format!("/run/user/{}", account.uid);
            let engine_sock = PathBuf::from(format!("{runtime}/lima-docker/docker.sock"));
            let env = vec![
                path,
                ("HOME".into(), account.home.clone()),
                ("USER".into(), account.name.clone()),
                ("LOGNAME".into(), account.name.clone()),
                ("XDG_RUNTIME_DIR".into(), runtime.clone()),
            ];
            Ok(vec![Daemon {
                name: "dockerd-rootless".into(),
                argv: vec![
                    "/usr/share/docker.io/contrib/dockerd-rootless.sh".into(),
                    format!("--host=unix://{}", engine_sock.display()),
                ],
                env,
                user: Some(account),
                ready: Ready::DockerPing(engine_sock.clone()),
                link: Some((format!("{runtime}/docker.sock").into(), engine_sock)),
            }])
        }
    }
}

/// What the engine needs on disk before it starts: its log directory, and
/// for the rootless engine the user's runtime directory and subordinate
/// IDs.
fn prepare(req: &Request) -> Result<(), String> {
    std::fs::create_dir_all(LOG_DIR).map_err(|e| format!("cannot create {LOG_DIR}: {e}"))?;
    std::fs::create_dir_all(STATE_DIR).map_err(|e| format!("cannot create {STATE_DIR}: {e}"))?;
    // As systemd leaves it: mounts propagate, so the engine's mounts (and
    // rootlesskit's `--propagation=rslave`) work as on any distribution.
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    ) {
        tracing::warn!("services: cannot make / shared: {e}");
    }
    match req {
        Request::DockerRootful => {
            std::fs::create_dir_all("/run/lima-docker")
                .map_err(|e| format!("cannot create /run/lima-docker: {e}"))?;
        }
        Request::DockerRootless { user } => {
            let a = users::lookup(Some(user))?;
            let runtime = format!("/run/user/{}", a.uid);
            for (dir, mode) in [
                ("/run/user".to_string(), 0o755),
                (runtime.clone(), 0o700),
                (format!("{runtime}/lima-docker"), 0o700),
            ] {
                make_dir(&dir, mode, (dir != "/run/user").then_some((a.uid, a.gid)))?;
            }
            for file in ["/etc/subuid", "/etc/subgid"] {
                add_subids(file, &a.name)?;
            }
            // slirp4netns opens the TUN device as the user; devtmpfs makes
            // it 0600 and there is no udev here to apply the usual 0666.
            std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
                .map_err(|e| {
                    format!("cannot open /dev/net/tun to users (is the tun module loaded?): {e}")
                })?;
        }
    }
    Ok(())
}

fn make_dir(dir: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {dir}: {e}"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot hand {dir} to uid {uid}: {e}"))?;
    }
    Ok(())
}

/// Adds `NAME:100000:65536` to `/etc/subuid` or `/etc/subgid` unless the
/// user has a range there.
fn add_subids(file: &str, name: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let updated = with_subids(&text, name);
    if updated != text {
        std::fs::write(file, updated).map_err(|e| format!("cannot write {file}: {e}"))?;
    }
    Ok(())
}

fn with_subids(text: &str, name: &str) -> String {
    if text.lines().any(|l| l.split(':').next() == Some(name)) {
        return text.to_string();
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{name}:{SUBID_START}:{SUBID_COUNT}\n"));
    out
}

fn load_engine_modules() {
    match crate::modules::ModuleTree::open_running() {
        Ok(tree) => {
            for m in ENGINE_MODULES {
                if let Err(e) = tree.load(m, &crate::sys::RealLoader) {
                    tracing::warn!("services: module {m}: {e}");
                }
            }
        }
        Err(crate::modules::ModuleError::NoSupport) => {
            crate::features::warn_missing("services", crate::features::ENGINES)
        }
        Err(e) => tracing::warn!("services: no kernel modules: {e}"),
    }
}

/// Starts `d` and keeps it running; the receiver follows its state.
fn supervise(d: Daemon, reaper: Arc<Reaper>) -> watch::Receiver<State> {
    let (tx, rx) = watch::channel(State::Starting { attempt: 1 });
    tokio::spawn(async move {
        let mut backoff = BACKOFF_START;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let state = run_once(&d, &reaper, attempt, &tx).await;
            record(&d.name, &state);
            let _ = tx.send(state);
            if started.elapsed() > BACKOFF_RESET {
                backoff = BACKOFF_START;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
            let starting = State::Starting { attempt };
            record(&d.name, &starting);
            let _ = tx.send(starting);
        }
    });
    rx
}

/// One life of the daemon: spawn, wait until ready (then say so), wait for
/// its end. Returns the `Exited` state.
async fn run_once(d: &Daemon, reaper: &Reaper, attempt: u32, tx: &watch::Sender<State>) -> State {
    let log_path = Path::new(LOG_DIR).join(format!("{}.log", d.name));
    let exited = |why: String, from: u64| State::Exited {
        attempt,
        why,
        tail: tail(&log_path, from),
    };
    let (mut exit, from, pid) = match spawn(d, reaper, &log_path) {
        Ok(x) => x,
        Err(e) => return exited(format!("cannot run {}: {e}", d.argv[0]), 0),
    };
    tracing::info!("services: {} started (attempt {attempt})", d.name);
    let deadline = tokio::time::sleep(READY_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            status = &mut exit => return exited(describe(status.ok()), from),
            _ = &mut deadline => {
                // Stopped before the next attempt, so two never run at once.
                stop_group(pid, &mut exit).await;
                return exited(format!("did not answer within {}s", READY_TIMEOUT.as_secs()), from);
            }
            ready = is_ready(&d.ready) => if ready { break },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((link, target)) = &d.link {
        let _ = std::fs::remove_file(link);
        if let Err(e) = std::os::unix::fs::symlink(target, link) {
            tracing::warn!("services: cannot link {}: {e}", link.display());
        }
    }
    let running = State::Running { attempt };
    record(&d.name, &running);
    let _ = tx.send(running);
    let status = exit.await.ok();
    if let Some((link, _)) = &d.link {
        let _ = std::fs::remove_file(link);
    }
    exited(describe(status), from)
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(ExitStatus::Code(c)) => format!("exited with code {c}"),
        Some(ExitStatus::Signal(s)) => format!("killed by signal {s}"),
        None => "its status was lost".into(),
    }
}

/// How long a daemon that never answered gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM to the daemon's process group, SIGKILL after [`STOP_GRACE`];
/// returns once the daemon itself has exited.
async fn stop_group(pid: i32, exit: &mut tokio::sync::oneshot::Receiver<ExitStatus>) {
    use nix::sys::signal::{killpg, Signal};
    let group = nix::unistd::Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, &mut *exit).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = exit.await;
    }
}

/// Spawns the daemon in a process group of its own with its output
/// appended to its log; returns the exit status's receiver, the log's
/// length before this run, and the daemon's PID (its group's ID).
fn spawn(
    d: &Daemon,
    reaper: &Reaper,
    log_path: &Path,
) -> std::io::Result<(tokio::sync::oneshot::Receiver<ExitStatus>, u64, i32)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let from = log.metadata()?.len();
    let mut cmd = Command::new(&d.argv[0]);
    cmd.args(&d.argv[1..])
        .env_clear()
        .envs(d.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if let Some(a) = &d.user {
        cmd.uid(a.uid).gid(a.gid).current_dir(&a.home);
    } else {
        cmd.current_dir("/");
    }
    let (child, exit) = reaper.spawn(&mut cmd)?;
    let pid = child.id() as i32;
    drop(child);
    Ok((exit, from, pid))
}

async fn is_ready(ready: &Ready) -> bool {
    match ready {
        Ready::Accepts(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
        Ready::DockerPing(path) => docker_ping(path).await.unwrap_or(false),
    }
}

/// `GET /_ping` over the engine's socket: true when it answers 200 `OK`.
async fn docker_ping(path: &Path) -> std::io::Result<bool> {
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(ping_ok(&String::from_utf8_lossy(&answer)))
}

fn ping_ok(answer: &str) -> bool {
    let status_ok = answer
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    status_ok && answer.split("\r\n\r\n").nth(1).map(str::trim) == Some("OK")
}

/// The last [`TAIL_LINES`] lines written to `path` after offset `from`.
fn tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    last_lines(&text, TAIL_LINES)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Logs a state change and writes it to the service's state file.
fn record(name: &str, state: &State) {
    match state {
        State::Exited { tail, .. } => {
            tracing::warn!("services: {name} {}; last log lines:\n{tail}", state.line())
        }
        _ => tracing::info!("services: {name} {}", state.line()),
    }
    let _ = std::fs::write(
        Path::new(STATE_DIR).join(name),
        format!("{}\n", state.line()),
    );
    board().set(name, state.line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_what_to_ask() {
        assert_eq!(
            Request::parse("start docker-rootful\n"),
            Ok(Request::DockerRootful)
        );
        assert_eq!(
            Request::parse("start docker-rootless me"),
            Ok(Request::DockerRootless { user: "me".into() })
        );
        assert!(Request::parse("start docker-rootless")
            .unwrap_err()
            .contains("USER"));
        assert!(Request::parse("start podman")
            .unwrap_err()
            .contains("docker-rootful"));
    }

    #[test]
    fn subordinate_ids_are_added_once() {
        let once = with_subids("", "me");
        assert_eq!(once, "me:100000:65536\n");
        assert_eq!(with_subids(&once, "me"), once);
        assert_eq!(
            with_subids("other:100000:65536", "me"),
            "other:100000:65536\nme:100000:65536\n"
        );
        // A name that only starts like ours is someone else.
        assert_eq!(
            with_subids("meme:1:2\n", "me"),
            "meme:1:2\nme:100000:65536\n"
        );
    }

    #[test]
    fn the_ping_answer_must_be_200_ok() {
        assert!(ping_ok(
            "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK"
        ));
        assert!(!ping_ok("HTTP/1.0 500 Internal Server Error\r\n\r\nOK"));
        assert!(!ping_ok("HTTP/1.0 200 OK\r\n\r\nnot yet"));
        assert!(!ping_ok(""));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
