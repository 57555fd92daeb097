//! One process per share: how the host agent starts `lima-fs-server` for a
//! share, and what the two sides agree on. Both ends are here so the
//! contract (arguments, inherited fds, the ready line) lives in one file.
//!
//! ```text
//! host agent                                   lima-fs-server (child)
//! ──────────                                   ──────────────────────
//! share setup with the guest (ShareSetup/Status)
//! spawn(Spawn{stream, shm, ..}) ── fork ──▶   pre_exec: SIGTERM blocked, PR_SET_PDEATHSIG
//!   argv: --root DIR [--read-only]            (SIGTERM), every fd but stdio and the
//!                                             named ones CLOEXEC
//!         --stream-fd N [--shm-fd M           exec: open the root, map the shm,
//!         --shm-offset O --shm-len L]               build the runtime
//!         --confine MODE                      confine (crate::confine)
//!   stderr → fs-N.log in the instance dir     stdout: "ready landlock=full:7 seccomp=on"
//! ◀── reads the ready line ─────────────────  serves the stream until the guest closes it
//! warns if confinement is partial
//! waits for the exit, logs a failure          SIGTERM (the parent died, or [`stop`]):
//!                                             end the stream, see below
//! ```
//!
//! # Ending the stream
//!
//! A server that simply dies closes its stream with the guest's latest
//! requests unread in it; the peer's next read then fails with
//! `ECONNRESET` instead of ending, and `vhost-device-vsock` (0.3) drops
//! that error: the guest is never told, and its mount hangs. So the
//! server's parent-death signal is SIGTERM, not SIGKILL, and the server
//! keeps it blocked in every thread; a thread of its own waits for it
//! ([`end_signal`]), then the server shuts its sending side down (the
//! relay reads a plain end and tells the guest), reads and discards what
//! still comes until the guest closes its end, or [`END_WITHIN`] passed,
//! and exits ([`end_stream`]). The same happens when the host stops a
//! server with [`stop`].
//!
//! The stream is the already-connected channel (the share's virtio-serial
//! port or its vsock stream) and the shm region an open file; the child
//! opens nothing of the host agent's by path. A child that cannot serve
//! (root gone, confinement required but missing) exits before the ready
//! line, and [`spawn`] returns its log's last lines.
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::confine::{Confinement, Mode};
use crate::sys;

/// What the child prints on stdout once confined, before serving.
const READY: &str = "ready ";

/// How long a server told to end waits for the guest to close the stream.
pub const END_WITHIN: Duration = Duration::from_secs(30);

/// How long a child gets to open, confine and report.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A share's region of the shared-memory file, handed over open.
pub struct ShmFd {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
}

/// What a share server is started with.
pub struct Spawn<'a> {
    /// The `lima-fs-server` binary.
    pub program: &'a Path,
    /// The shared folder.
    pub root: &'a Path,
    pub writable: bool,
    /// The connected channel to the guest's FUSE client (a stream socket).
    pub stream: OwnedFd,
    pub shm: Option<ShmFd>,
    /// Where the child's stderr goes (created, or truncated).
    pub log: &'a Path,
    pub confine: Mode,
    /// Tests only: a socket on which the child takes test requests (see
    /// `lima-fs-server --test-hook-fd`). The host agent passes `None`.
    pub test_hook: Option<OwnedFd>,
}

/// A share server that is serving.
pub struct Running {
    pub child: tokio::process::Child,
    pub confinement: Confinement,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the file server's log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Start {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the file server stopped before serving ({status}): {log_tail}")]
    Failed { status: String, log_tail: String },
    #[error("the file server did not report ready within {READY_WITHIN:?} (see {log})")]
    Silent { log: PathBuf },
}

/// Starts the server for one share and waits until it serves, confined
/// as `s.confine` says. The child ends its stream and exits when the
/// calling thread ends (`PR_SET_PDEATHSIG` follows the thread, not the
/// process; see "Ending the stream"), so call this
/// from a thread that lives as long as the share.
pub async fn spawn(s: Spawn<'_>) -> Result<Running, SpawnError> {
    let log = std::fs::File::create(s.log).map_err(|source| SpawnError::Log {
        path: s.log.to_owned(),
        source,
    })?;
    let mut cmd = std::process::Command::new(s.program);
    cmd.arg("--root").arg(s.root);
    if !s.writable {
        cmd.arg("--read-only");
    }
    let mut inherit = vec![s.stream.as_raw_fd()];
    cmd.arg("--stream-fd").arg(s.stream.as_raw_fd().to_string());
    if let Some(shm) = &s.shm {
        inherit.push(shm.file.as_raw_fd());
        cmd.arg("--shm-fd")
            .arg(shm.file.as_raw_fd().to_string())
            .arg("--shm-offset")
            .arg(shm.offset.to_string())
            .arg("--shm-len")
            .arg(shm.len.to_string());
    }
    if let Some(hook) = &s.test_hook {
        inherit.push(hook.as_raw_fd());
        cmd.arg("--test-hook-fd").arg(hook.as_raw_fd().to_string());
    }
    cmd.arg("--confine").arg(s.confine.as_str());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls run
    // (pthread_sigmask, prctl, getppid, getpid, kill, close_range, fcntl), on
    // numbers taken before the fork; `inherit` is only read.
    unsafe {
        cmd.pre_exec(move || {
            // Pending, not fatal, until the server waits for it.
            sys::block_end_signal().map_err(std::io::Error::from_raw_os_error)?;
            sys::die_with_parent(parent).map_err(std::io::Error::from_raw_os_error)?;
            // Nothing but stdio and the named fds, even what the host
            // agent inherited without O_CLOEXEC.
            sys::cloexec_above_stdio();
            for fd in &inherit {
                sys::clear_cloexec(*fd).map_err(std::io::Error::from_raw_os_error)?;
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError::Start {
            program: s.program.to_owned(),
            source,
        })?;
    // Our copies: the child holds the channel now.
    drop(s.stream);
    drop(s.shm);
    drop(s.test_hook);

    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = tokio::time::timeout(
        READY_WITHIN,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    if let Some(confinement) = line
        .trim_end()
        .strip_prefix(READY)
        .and_then(Confinement::parse_line)
    {
        return Ok(Running { child, confinement });
    }
    if read.is_err() {
        return Err(SpawnError::Silent {
            log: s.log.to_owned(),
        });
    }
    let status = match child.wait().await {
        Ok(st) => st.to_string(),
        Err(e) => e.to_string(),
    };
    Err(SpawnError::Failed {
        status,
        log_tail: log_tail(s.log, 3),
    })
}

/// The last `n` non-empty lines of a log, joined with " / ".
pub fn log_tail(log: &Path, n: usize) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// The child's side: reports on stdout that it is confined and about to
/// serve (the line [`spawn`] waits for).
pub fn report_ready(c: &Confinement) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{}", c.to_line())?;
    out.flush()
}

/// The child's side: takes ownership of fd `n`, which [`spawn`] named on
/// the command line. Refuses stdio and fds that are not open.
pub fn inherited_fd(n: RawFd) -> std::io::Result<OwnedFd> {
    if n <= 2 || !sys::fd_is_open(n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fd {n} was not handed to this process"),
        ));
    }
    // SAFETY: the parent opened `n` for this process alone and named it on
    // our command line; it is open (checked above), and nothing else in
    // this process took it, since this is called once per argument at
    // start-up.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The host's side: asks a running server to end its stream and exit
/// (SIGTERM; see the module docs). Wait for the child afterwards.
pub fn stop(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill takes integers only; `pid` is our child, not yet
        // reaped (tokio's `id` is `None` once it is).
        unsafe { libc::kill(pid as libc::pid_t, sys::END_SIGNAL) };
    }
}

/// The child's side, first thing in `main` (before any thread starts):
/// keeps the end signal pending for [`end_signal`], whoever started the
/// process ([`spawn`] blocks it already).
pub fn hold_end_signal() -> std::io::Result<()> {
    sys::block_end_signal().map_err(std::io::Error::from_raw_os_error)
}

/// The child's side, once confined and inside the runtime: a thread that
/// waits for the end signal (the parent died, or [`stop`]); the receiver
/// resolves when it came.
pub fn end_signal() -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("end-signal".into())
        .spawn(move || match sys::wait_end_signal() {
            Ok(()) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(errno = e, "cannot wait for SIGTERM"),
        })?;
    Ok(rx)
}

/// The child's side: ends `stream` so that the vsock relay tells the
/// guest (see the module docs): our sending side shut down, then what
/// still arrives read and discarded until the guest closes its end, or
/// `within` passed. Says how it ended.
pub async fn end_stream(stream: &mut tokio::net::UnixStream, within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if let Err(e) = stream.shutdown().await {
        return format!("shutdown: {e}");
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut discarded = 0usize;
    let drain = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return format!("the guest closed it ({discarded} bytes discarded)"),
                Ok(n) => discarded += n,
                Err(e) => return format!("{e} ({discarded} bytes discarded)"),
            }
        }
    };
    match tokio::time::timeout(within, drain).await {
        Ok(how) => how,
        Err(_) => format!("the guest kept it open for {within:?}"),
    }
}
