//! The guest side of the tools: a `Files` stream to the guest agent (kept
//! open between calls, opened again when it broke) and commands through
//! the exec path, both as the instance's guest user.
use std::io::Write;
use std::time::Duration;

use lima_proto::files::{FilesReply, FilesRequest};
use lima_proto::{read_frame_async, write_frame_async, ExecInput, ExecRequest, Purpose};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::client::{self, ClientError};
use crate::exec::{self, ExecError};
use crate::vsock::{BoxStream, Transport};

/// An open Files stream, acting as one guest user.
pub struct Files {
    rd: ReadHalf<BoxStream>,
    wr: WriteHalf<BoxStream>,
}

impl Files {
    /// Connects and names the user; the agent refuses an unknown user.
    pub async fn open(transport: &dyn Transport, user: &str) -> Result<Files, String> {
        let (stream, _) = client::connect(transport, Purpose::Files)
            .await
            .map_err(|e| client_error(&e))?;
        let (rd, wr) = tokio::io::split(stream);
        let mut files = Files { rd, wr };
        match files
            .call(&FilesRequest::Open {
                user: user.to_string(),
            })
            .await?
        {
            FilesReply::Opened => Ok(files),
            FilesReply::Error(e) => Err(e.message),
            other => Err(format!("unexpected reply from the guest agent: {other:?}")),
        }
    }

    /// One request and its reply; `Err` when the stream broke.
    pub async fn call(&mut self, req: &FilesRequest) -> Result<FilesReply, String> {
        write_frame_async(&mut self.wr, req)
            .await
            .map_err(|e| client_error(&ClientError::from(e)))?;
        read_frame_async(&mut self.rd)
            .await
            .map_err(|e| client_error(&ClientError::from(e)))?
            .ok_or_else(|| client_error(&ClientError::Closed))
    }
}

/// The error and its causes, as one line.
fn client_error(e: &ClientError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// A buffer that keeps the first `cap` bytes written to it.
pub struct Capped {
    pub data: Vec<u8>,
    pub cap: usize,
    pub truncated: bool,
}

impl Capped {
    pub fn new(cap: usize) -> Capped {
        Capped {
            data: Vec::new(),
            cap,
            truncated: false,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.cap.saturating_sub(self.data.len());
        if buf.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a command did.
pub struct CommandRun {
    pub stdout: Capped,
    pub stderr: Capped,
    /// The exit code (128 + signal for a signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

/// Runs `req` with no input; after `timeout` its process group is killed
/// (the guest agent delivers signals to the command's process group).
pub async fn run_command(
    transport: &dyn Transport,
    req: &ExecRequest,
    timeout: Duration,
    cap: usize,
) -> Result<CommandRun, String> {
    let session = exec::start(transport, req).await.map_err(|e| match e {
        ExecError::Client(c) => client_error(&c),
        other => other.to_string(),
    })?;
    let (mut stdout, mut stderr) = (Capped::new(cap), Capped::new(cap));
    let (events_tx, events_rx) = mpsc::channel(4);
    let mut timed_out = false;
    let status = {
        let finish = session.finish(exec::Io {
            stdin: Box::new(tokio::io::empty()),
            stdout: &mut stdout,
            stderr: &mut stderr,
            events: Some(events_rx),
        });
        tokio::pin!(finish);
        tokio::select! {
            r = &mut finish => r,
            _ = tokio::time::sleep(timeout) => {
                timed_out = true;
                let _ = events_tx.send(ExecInput::Signal(libc::SIGKILL)).await;
                match tokio::time::timeout(Duration::from_secs(30), &mut finish).await {
                    Ok(r) => r,
                    Err(_) => Err(ExecError::Lost),
                }
            }
        }
    };
    drop(events_tx);
    let exit_code = match status {
        Ok(s) => Some(s.shell_code()),
        Err(ExecError::Lost) if timed_out => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(CommandRun {
        stdout,
        stderr,
        exit_code,
        timed_out,
    })
}
