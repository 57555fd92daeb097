//! `limactl shell` / `lima`: the terminal layer over [`crate::exec`]. The
//! command gets our stdin, stdout and stderr and its exit code becomes ours.
//! A pseudo-terminal is used when stdin and stdout are both terminals; then the
//! local terminal is in raw mode and window-size changes follow; without one,
//! our signals are forwarded to the command.
use std::io::IsTerminal;
use std::os::fd::AsFd;

use lima_proto::{ExecInput, ExecRequest, WinSize};
use tokio::signal::unix::{signal, SignalKind};

use crate::exec::{self, ExecError};
use crate::vsock::Transport;

pub struct ExecOptions {
    /// Empty: the guest user's login shell.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `None`: the user's home.
    pub cwd: Option<String>,
    /// A `cwd` the guest lacks means the home (with a note), not an error.
    pub cwd_fallback: bool,
    /// The guest user to run as (`None`: root).
    pub user: Option<String>,
    /// Through the user's login shell.
    pub login: bool,
    /// None: decide from whether stdin and stdout are terminals.
    pub tty: Option<bool>,
    /// Called once the guest has started the command (`lima-run --timings`).
    pub on_started: Option<Box<dyn FnOnce() + Send>>,
    /// The command's stdin; `None`: ours (`tokio::io::stdin`).
    pub stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
}

/// Puts the terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSADRAIN, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSADRAIN,
            &self.saved,
        );
    }
}

/// The terminal size of stdout, when it is a terminal.
pub fn window_size() -> Option<WinSize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            libc::STDOUT_FILENO,
            libc::TIOCGWINSZ,
            &mut ws as *mut nix::pty::Winsize,
        )
    };
    (rc == 0 && ws.ws_row > 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Runs the command; returns its exit code in the shell convention
/// (`ExecError::StdoutClosed` becomes 141, as a shell's SIGPIPE would).
pub async fn exec(transport: &dyn Transport, opts: ExecOptions) -> Result<i32, ExecError> {
    let tty = opts
        .tty
        .unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let pty = if tty {
        Some(window_size().unwrap_or(WinSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let mut env = opts.env;
    if tty {
        if let Ok(term) = std::env::var("TERM") {
            env.push(("TERM".into(), term));
        }
    }
    let req = ExecRequest {
        argv: opts.argv,
        env,
        cwd: opts.cwd,
        cwd_fallback: opts.cwd_fallback,
        user: opts.user,
        login: opts.login,
        pty,
    };
    let stdin = opts.stdin;
    let session = exec::start(transport, &req).await?;
    if let Some(f) = opts.on_started {
        f();
    }
    let raw = if tty { RawMode::enter() } else { None };

    // Signals and window changes → guest.
    let (tx, events) = tokio::sync::mpsc::channel::<ExecInput>(8);
    if tty {
        if let Ok(mut winch) = signal(SignalKind::window_change()) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(ws) = window_size() {
                        if tx.send(ExecInput::Resize(ws)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    } else {
        // Without a terminal, our signals are the command's signals.
        for (kind, num) in [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
            (SignalKind::quit(), libc::SIGQUIT),
        ] {
            let tx = tx.clone();
            if let Ok(mut s) = signal(kind) {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(ExecInput::Signal(num)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
    drop(tx);
    let result = session
        .finish(exec::Io {
            stdin: stdin.unwrap_or_else(|| Box::new(tokio::io::stdin())),
            stdout: &mut std::io::stdout(),
            stderr: &mut std::io::stderr(),
            events: Some(events),
        })
        .await;
    drop(raw);
    match result {
        Ok(status) => Ok(status.shell_code()),
        // Our stdout is gone (e.g. `| head`): stop like a shell would.
        Err(ExecError::StdoutClosed) => Ok(141),
        Err(e) => Err(e),
    }
}
