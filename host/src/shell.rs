//! `limactl shell` / `lima`: runs a command in the guest over one exec
//! stream, with stdin, stdout and stderr streamed and the exit code returned.
//! A pseudo-terminal is used when stdin and stdout are both terminals; then the
//! local terminal is in raw mode and window-size changes follow.
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use lima_proto::{
    read_frame_async, write_frame_async, ExecInput, ExecOutput, ExecRequest, Purpose, WinSize,
    IO_CHUNK,
};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::client::{self, ClientError};
use crate::vsock::Transport;

pub struct ExecOptions {
    /// Empty: the guest user's login shell.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// None: decide from whether stdin and stdout are terminals.
    pub tty: Option<bool>,
    /// Called once the guest has started the command (`lima-run --timings`).
    pub on_started: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Failed(String),
    #[error("lost the connection to the guest agent before the command finished")]
    Lost,
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

fn window_size() -> Option<WinSize> {
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

/// Runs the command; returns its exit code in the shell convention.
pub async fn exec(transport: &dyn Transport, opts: ExecOptions) -> Result<i32, ShellError> {
    let tty = opts
        .tty
        .unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let (stream, _) = client::connect(transport, Purpose::Exec).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
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
        pty,
    };
    write_frame_async(&mut wr, &req)
        .await
        .map_err(ClientError::from)?;
    match read_frame_async::<_, ExecOutput>(&mut rd)
        .await
        .map_err(ClientError::from)?
    {
        Some(ExecOutput::Started { .. }) => {
            if let Some(f) = opts.on_started {
                f();
            }
        }
        Some(ExecOutput::Failed(reason)) => return Err(ShellError::Failed(reason)),
        Some(other) => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
        None => return Err(ShellError::Lost),
    }
    let raw = if tty { RawMode::enter() } else { None };

    // Local stdin, signals and window changes → guest.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<ExecInput>(8);
    let stdin_tx = in_tx.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; IO_CHUNK];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.send(ExecInput::StdinEof).await;
                    return;
                }
                Ok(n) => {
                    if stdin_tx
                        .send(ExecInput::Stdin(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    if tty {
        let tx = in_tx.clone();
        if let Ok(mut winch) = signal(SignalKind::window_change()) {
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
            let tx = in_tx.clone();
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
    drop(in_tx);
    let sender = tokio::spawn(async move {
        while let Some(msg) = in_rx.recv().await {
            if write_frame_async(&mut wr, &msg).await.is_err() {
                return;
            }
        }
    });

    // Guest → local stdout/stderr.
    let result = loop {
        match read_frame_async::<_, ExecOutput>(&mut rd).await {
            Ok(Some(ExecOutput::Stdout(data))) => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&data).and_then(|_| out.flush()).is_err() {
                    // Our stdout is gone (e.g. `| head`): stop like a shell would.
                    break Ok(141);
                }
            }
            Ok(Some(ExecOutput::Stderr(data))) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&data).and_then(|_| err.flush());
            }
            Ok(Some(ExecOutput::Exit(status))) => break Ok(status.shell_code()),
            Ok(Some(ExecOutput::Failed(reason))) => break Err(ShellError::Failed(reason)),
            Ok(Some(ExecOutput::Started { .. })) => {}
            Ok(None) | Err(_) => break Err(ShellError::Lost),
        }
    };
    sender.abort();
    drop(raw);
    result
}
