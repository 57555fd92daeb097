//! Running commands for the host: spawn with pipes or a pseudo-terminal,
//! stream stdin/stdout/stderr as frames, deliver signals and window-size
//! changes, and report the exit status.
//!
//! Exit statuses come from one [`Reaper`] that calls `waitpid(-1)` on every
//! SIGCHLD: as PID 1 the agent must reap orphans too, and a single reaper
//! avoids two parties racing for the same child. Consequently nothing else in
//! the agent may wait for children (no `Command::output()` once the reaper
//! runs).
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::sync::lock;
use lima_proto::{
    read_frame_async, write_frame_async, ExecInput, ExecOutput, ExecRequest, ExitStatus, WinSize,
    IO_CHUNK,
};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::users;

/// Nice value of the agent's own threads when it is PID 1. They serve the
/// shares' requests and prime the kernel's dentries for the programs that
/// walk them; at the walkers' priority a `git status` preload (20 threads
/// on two vCPUs) out-ran the priming and sent its lookups to us one by
/// one (docs/decisions.md). Commands it runs start at 0.
pub const AGENT_NICE: libc::c_int = -10;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Default)]
struct ReaperState {
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
}

/// Reaps every child and hands the statuses of the ones we spawned to their
/// waiters.
pub struct Reaper {
    state: Arc<Mutex<ReaperState>>,
}

impl Reaper {
    pub fn start() -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(ReaperState::default()));
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                reap_all(&st);
                // A periodic sweep as well: signals coalesce, and a child that
                // exited before the handler was installed sends none.
                let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
            }
        });
        Ok(Reaper { state })
    }

    /// Spawns `cmd` and registers it before the reaper can see its exit.
    /// The reaper owns the exit status: the caller may take the child's
    /// pipes, and drops the `Child` without waiting on it.
    pub(crate) fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut state = lock(&self.state);
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(child.id() as i32, tx);
        drop(state);
        // What exited while we held the lock (the reaper's own sweep skips
        // a held lock: see [`reap_all`]).
        reap_all(&self.state);
        Ok((child, rx))
    }
}

fn reap_all(state: &Mutex<ReaperState>) {
    // Held across waitpid: `Command::spawn` runs under the same lock, and when
    // exec fails std reaps that child itself and panics if it is already
    // gone. So no child may be reaped while a spawn is in progress.
    //
    // A spawn holds the lock until the child's execve is done, and that may
    // wait for a shared folder (a program on a vsockfs mount) whose replies
    // need a runtime worker; this runs on one, so it never waits for the
    // lock: the spawn sweeps once it lets go.
    let mut st = match state.try_lock() {
        Ok(st) => st,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(tx) = st.waiting.remove(&status.0.as_raw()) {
            let _ = tx.send(status.1);
        }
    }
}

/// The child's side of the terminal or the pipes, and our side of them.
enum Stdio3 {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

/// Who runs the command, where, and what the host should be told first.
struct Prepared {
    cmd: Command,
    account: users::Account,
    /// The account's groups, primary first (for `setgroups`).
    groups: Vec<libc::gid_t>,
    cwd: std::ffi::CString,
    /// Said on the command's stderr before its output (a cwd fallback).
    note: Option<String>,
}

/// Resolves the user and the working directory and builds the command.
fn prepare(req: &ExecRequest) -> std::io::Result<Prepared> {
    let account = users::lookup(req.user.as_deref())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
    let groups = users::groups_of(&account);
    let home = if Path::new(&account.home).is_dir() {
        account.home.clone()
    } else {
        "/".to_string()
    };
    let (cwd, note) = match &req.cwd {
        None => (home, None),
        Some(c) if Path::new(c).is_dir() => (c.clone(), None),
        Some(c) if req.cwd_fallback => (
            home.clone(),
            Some(format!(
                "lima-guest-agent: {c} does not exist in the guest; starting in {home}\n"
            )),
        ),
        Some(c) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("working directory {c} does not exist in the guest"),
            ))
        }
    };
    let cwd = std::ffi::CString::new(cwd)
        .map_err(|_| std::io::Error::other("the working directory holds a NUL byte"))?;
    Ok(Prepared {
        cmd: build_command(req, &account),
        account,
        groups,
        cwd,
        note,
    })
}

/// The program and its arguments. Through a login shell, as Lima runs
/// commands: `$SHELL -l -c LINE`, where LINE is the argv with each word
/// quoted for the shell, so the words reach the program exactly as given
/// while shell builtins (`cd`, `command -v`, `ulimit`) work as commands.
fn build_command(req: &ExecRequest, account: &users::Account) -> Command {
    let shell = account.usable_shell();
    let shell_name = Path::new(&shell)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let mut cmd = match (req.argv.split_first(), req.login) {
        (Some((program, args)), false) => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        (Some(_), true) => {
            let mut c = Command::new(&shell);
            c.args(["-l", "-c", &lima_proto::shellquote::join(&req.argv)]);
            c
        }
        // The shell itself; as a login shell its argv[0] starts with `-`.
        (None, true) => {
            let mut c = Command::new(&shell);
            c.arg0(format!("-{shell_name}"));
            c
        }
        (None, false) => Command::new(&shell),
    };
    cmd.env_clear();
    cmd.env("PATH", DEFAULT_PATH)
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &shell);
    if req.pty.is_some() {
        cmd.env("TERM", "xterm-256color");
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    cmd
}

/// In the child, before `execve`: the account's groups, group and user
/// (raw syscalls: the child of a threaded process may only make
/// async-signal-safe calls, and these apply to its one thread, which is
/// the whole process), then the working directory as that user, the
/// default priority and a session of its own.
///
/// # Safety
/// Only async-signal-safe calls: it runs between `fork` and `execve`.
unsafe fn enter(
    account: &users::Account,
    groups: &[libc::gid_t],
    cwd: &std::ffi::CStr,
) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let (uid, gid) = (account.uid as libc::c_long, account.gid as libc::c_long);
    // SAFETY: setgroups reads `groups.len()` gids from the live slice;
    // setresgid/setresuid take plain integers.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            groups.as_ptr(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    // SAFETY: `cwd` is a valid C string for the duration of the call.
    if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A started command, and what to tell the host before its output.
struct Spawned {
    pid: u32,
    exit: oneshot::Receiver<ExitStatus>,
    stdio: Stdio3,
    note: Option<String>,
}

fn spawn(reaper: &Reaper, req: &ExecRequest) -> std::io::Result<Spawned> {
    let Prepared {
        mut cmd,
        account,
        groups,
        cwd,
        note,
    } = prepare(req)?;
    let cmd_ref = &mut cmd;
    match req.pty {
        None => {
            cmd_ref
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: `enter` makes only async-signal-safe calls; the
            // command becomes the user, leaves the agent's priority and
            // gets a process group of its own so signals reach its job.
            unsafe {
                cmd_ref.pre_exec(move || enter(&account, &groups, &cwd));
            }
            let (mut child, exit) = reaper.spawn(cmd_ref)?;
            let stdin = OwnedFd::from(child.stdin.take().expect("piped"));
            let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
            let stderr = OwnedFd::from(child.stderr.take().expect("piped"));
            Ok(Spawned {
                pid: child.id(),
                exit,
                stdio: Stdio3::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                note,
            })
        }
        Some(size) => {
            let pty =
                nix::pty::openpty(Some(&winsize(size)), None).map_err(std::io::Error::from)?;
            let slave = pty.slave;
            cmd_ref
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: as above, plus ioctl(TIOCSCTTY), async-signal-safe:
            // the pty becomes the new session's controlling terminal.
            unsafe {
                cmd_ref.pre_exec(move || {
                    enter(&account, &groups, &cwd)?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let (child, exit) = reaper.spawn(cmd_ref)?;
            drop(cmd); // closes our copies of the slave side
            Ok(Spawned {
                pid: child.id(),
                exit,
                stdio: Stdio3::Pty { master: pty.master },
                note,
            })
        }
    }
}

fn winsize(size: WinSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_winsize(fd: &OwnedFd, size: WinSize) {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives for
    // the whole call; `fd` is an open pty master.
    unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &ws as *const nix::pty::Winsize,
        );
    }
}

/// An owned fd (pipe end or pty master) driven by tokio.
struct AsyncFile(tokio::io::unix::AsyncFd<std::fs::File>);

impl AsyncFile {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
        // SAFETY: the File owns the fd and moves into the AsyncFd, so the fd
        // stays open exactly as long as it is registered.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(std::fs::File::from(fd)) };
        Ok(AsyncFile(registered.map_err(std::io::Error::from)?))
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|f| f.get_ref().read(buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0), // pty slave closed
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        while !buf.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

async fn pump(
    src: Arc<AsyncFile>,
    tx: mpsc::Sender<ExecOutput>,
    stderr: bool,
    exited: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let read = if *exited.borrow() {
            // After the command exits, a background job may hold the pipe
            // open forever; stop once output goes quiet.
            match tokio::time::timeout(Duration::from_millis(300), src.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            let mut exited = exited.clone();
            tokio::select! {
                r = src.read(&mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let chunk = buf[..n].to_vec();
                let msg = if stderr {
                    ExecOutput::Stderr(chunk)
                } else {
                    ExecOutput::Stdout(chunk)
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves one exec connection after the hello.
pub async fn serve<S>(stream: S, reaper: Arc<Reaper>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let Some(req): Option<ExecRequest> = read_frame_async(&mut rd).await? else {
        return Ok(());
    };
    // Off the runtime: `spawn` returns once the child's execve is done, and
    // a program on a shared folder is read through the guest agent itself.
    let spawned = {
        let (reaper, req) = (reaper.clone(), req.clone());
        tokio::task::spawn_blocking(move || spawn(&reaper, &req))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("spawn task: {e}"))))
    };
    let Spawned {
        pid,
        exit: exit_rx,
        stdio,
        note,
    } = match spawned {
        Ok(x) => x,
        Err(e) => {
            let what = req
                .argv
                .first()
                .cloned()
                .unwrap_or_else(|| "a shell".into());
            let who = req.user.as_deref().unwrap_or("root");
            write_frame_async(
                &mut wr,
                &ExecOutput::Failed(format!("cannot run {what:?} as {who}: {e}")),
            )
            .await?;
            wr.shutdown().await.ok();
            return Ok(());
        }
    };
    tracing::debug!(pid, argv = ?req.argv, user = ?req.user, "exec started");
    let pgid = Pid::from_raw(pid as i32);
    let (out_tx, mut out_rx) = mpsc::channel::<ExecOutput>(16);
    out_tx.send(ExecOutput::Started { pid }).await.ok();
    if let Some(note) = note {
        out_tx
            .send(ExecOutput::Stderr(note.into_bytes()))
            .await
            .ok();
    }
    let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);

    // stdin side and the fds that outlive the spawn
    let mut pumps = Vec::new();
    let (stdin, pty_master): (Option<Arc<AsyncFile>>, Option<Arc<OwnedFd>>) = match stdio {
        Stdio3::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            pumps.push(tokio::spawn(pump(
                Arc::new(AsyncFile::new(stdout)?),
                out_tx.clone(),
                false,
                exited_rx.clone(),
            )));
            pumps.push(tokio::spawn(pump(
                Arc::new(AsyncFile::new(stderr)?),
                out_tx.clone(),
                true,
                exited_rx.clone(),
            )));
            (Some(Arc::new(AsyncFile::new(stdin)?)), None)
        }
        Stdio3::Pty { master } => {
            let dup = Arc::new(master.try_clone()?);
            let file = Arc::new(AsyncFile::new(master)?);
            pumps.push(tokio::spawn(pump(
                file.clone(),
                out_tx.clone(),
                false,
                exited_rx.clone(),
            )));
            (Some(file), Some(dup))
        }
    };
    let is_pty = pty_master.is_some();

    // Host → command.
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        loop {
            match read_frame_async::<_, ExecInput>(&mut rd).await {
                Ok(Some(ExecInput::Stdin(data))) => {
                    if let Some(f) = &stdin {
                        if f.write_all(&data).await.is_err() && !is_pty {
                            stdin = None; // command closed its stdin; drop further input
                        }
                    }
                }
                Ok(Some(ExecInput::StdinEof)) => {
                    if is_pty {
                        if let Some(f) = &stdin {
                            let _ = f.write_all(&[4]).await; // ^D
                        }
                    } else {
                        stdin = None;
                    }
                }
                Ok(Some(ExecInput::Signal(n))) => {
                    if let Ok(sig) = Signal::try_from(n) {
                        let _ = nix::sys::signal::killpg(pgid, sig);
                    }
                }
                Ok(Some(ExecInput::Resize(size))) => {
                    if let Some(m) = &pty_master {
                        set_winsize(m, size);
                        let _ = nix::sys::signal::killpg(pgid, Signal::SIGWINCH);
                    }
                }
                Ok(None) | Err(_) => {
                    // The host went away: the command goes with it.
                    return false;
                }
            }
        }
    });

    // Command → host.
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            write_frame_async(&mut wr, &msg).await?;
            if matches!(msg, ExecOutput::Exit(_)) {
                break;
            }
        }
        wr.flush().await?;
        wr.shutdown().await.ok();
        anyhow::Ok(())
    });

    let mut input = input;
    let mut exit_rx = exit_rx;
    let status = tokio::select! {
        st = &mut exit_rx => st.ok(),
        _ = &mut input => {
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGHUP);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            None
        }
    };
    let Some(status) = status else {
        return Ok(());
    };
    exited_tx.send(true).ok();
    for p in pumps {
        let _ = p.await;
    }
    out_tx.send(ExecOutput::Exit(status)).await.ok();
    drop(out_tx);
    input.abort();
    writer.await??;
    tracing::debug!(pid, ?status, "exec finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str], cwd: Option<&str>, cwd_fallback: bool, login: bool) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("A".into(), "b".into())],
            cwd: cwd.map(str::to_string),
            cwd_fallback,
            user: None,
            login,
            pty: None,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn account(shell: &str) -> users::Account {
        users::Account {
            name: "me".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/me".into(),
            shell: shell.into(),
        }
    }

    #[test]
    fn a_login_shell_gets_the_argv_as_one_quoted_line() {
        let a = account("/bin/sh");
        let cmd = build_command(
            &req(&["printf", "%s|", "a b", "$HOME"], None, false, true),
            &a,
        );
        assert_eq!(cmd.get_program(), "/bin/sh");
        assert_eq!(args(&cmd), ["-l", "-c", "printf '%s|' 'a b' '$HOME'"]);
        // The shell gives the words back as they were.
        let out = Command::new("/bin/sh")
            .args(&args(&cmd)[1..])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|$HOME|");
        let env: Vec<(String, String)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.into(), v?.to_str()?.into())))
            .collect();
        for want in [
            ("HOME", "/home/me"),
            ("USER", "me"),
            ("LOGNAME", "me"),
            ("SHELL", "/bin/sh"),
            ("A", "b"),
        ] {
            assert!(
                env.contains(&(want.0.into(), want.1.into())),
                "{want:?} not in {env:?}"
            );
        }
        // Without a command, the shell itself, named as a login shell.
        let cmd = build_command(&req(&[], None, false, true), &a);
        assert_eq!(cmd.get_program(), "/bin/sh");
        assert!(args(&cmd).is_empty());
        // Not a login: the program itself.
        let cmd = build_command(&req(&["true"], None, false, false), &a);
        assert_eq!(cmd.get_program(), "true");
        // A shell the guest lacks: /bin/sh.
        let cmd = build_command(&req(&[], None, false, true), &account("/no/such/zsh"));
        assert_eq!(cmd.get_program(), users::FALLBACK_SHELL);
    }

    #[test]
    fn a_missing_cwd_falls_back_to_home_only_when_asked() {
        // Root: this machine's /etc/passwd (or the built-in root) has /root.
        let p = prepare(&req(&["true"], None, false, false)).unwrap();
        let home = p.account.home.clone();
        assert_eq!(
            p.cwd.to_str().unwrap(),
            if Path::new(&home).is_dir() {
                home.as_str()
            } else {
                "/"
            }
        );
        assert!(p.note.is_none());
        let p = prepare(&req(&["true"], Some("/no/such/dir"), true, false)).unwrap();
        assert_eq!(
            p.cwd.to_str().unwrap(),
            if Path::new(&home).is_dir() {
                home.as_str()
            } else {
                "/"
            }
        );
        let note = p.note.unwrap();
        assert!(
            note.contains("/no/such/dir does not exist in the guest"),
            "{note}"
        );
        let e = prepare(&req(&["true"], Some("/no/such/dir"), false, false))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("working directory /no/such/dir"),
            "{e}"
        );
        let p = prepare(&req(&["true"], Some("/"), false, false)).unwrap();
        assert_eq!(p.cwd.to_str().unwrap(), "/");
    }

    #[test]
    fn a_missing_user_is_named() {
        let mut r = req(&["true"], None, false, true);
        r.user = Some("no-such-user-here".into());
        let e = prepare(&r).err().unwrap().to_string();
        assert!(
            e.contains("user `no-such-user-here` does not exist in the guest"),
            "{e}"
        );
    }
}
