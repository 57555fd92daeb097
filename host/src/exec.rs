//! Running a command in the guest as a library call: the caller gives the
//! request, where input comes from and where output goes, and gets the exit
//! status. `limactl shell` (`shell.rs`) is a terminal layer on top; a caller
//! without a terminal (`lima-run`, an MCP server, `limactl copy`) uses
//! [`start`] and [`Session::finish`] directly, or [`capture`].
//!
//! ```text
//! start():  ExecRequest ─▶            ◀─ Started | Failed
//! finish(): Stdin/StdinEof/Signal/Resize ─▶
//!                                     ◀─ Stdout/Stderr ... Exit
//! ```
use std::io::Write;

use lima_proto::{
    read_frame_async, write_frame_async, ExecInput, ExecOutput, ExecRequest, ExitStatus, Purpose,
    IO_CHUNK,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::client::{self, ClientError};
use crate::vsock::{BoxStream, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent could not start the command (it answers why).
    #[error("{0}")]
    Failed(String),
    #[error("lost the connection to the guest agent before the command finished")]
    Lost,
    /// Writing the command's stdout failed (the reader went away, as with
    /// `| head`); the command was left to the agent.
    #[error("the command's output could not be written")]
    StdoutClosed,
}

/// A started command: the guest runs it and waits for [`Session::finish`].
pub struct Session {
    rd: ReadHalf<BoxStream>,
    wr: WriteHalf<BoxStream>,
    /// The command's process id in the guest.
    pub pid: u32,
}

/// Where a command's input comes from and its output goes.
pub struct Io<'a> {
    /// Read until its end, then the command sees end of file.
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    /// Signals and window-size changes for the command; the sender's drop
    /// ends nothing.
    pub events: Option<mpsc::Receiver<ExecInput>>,
}

/// Asks the agent to start the command; returns once it runs.
pub async fn start(transport: &dyn Transport, req: &ExecRequest) -> Result<Session, ExecError> {
    let (stream, _) = client::connect(transport, Purpose::Exec).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    write_frame_async(&mut wr, req)
        .await
        .map_err(ClientError::from)?;
    match read_frame_async::<_, ExecOutput>(&mut rd)
        .await
        .map_err(ClientError::from)?
    {
        Some(ExecOutput::Started { pid }) => Ok(Session { rd, wr, pid }),
        Some(ExecOutput::Failed(reason)) => Err(ExecError::Failed(reason)),
        Some(other) => Err(ClientError::Unexpected(format!("{other:?}")).into()),
        None => Err(ExecError::Lost),
    }
}

impl Session {
    /// Streams input in and output out until the command exits.
    pub async fn finish(self, io: Io<'_>) -> Result<ExitStatus, ExecError> {
        let Session { mut rd, mut wr, .. } = self;
        let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(8);
        let stdin_tx = in_tx.clone();
        let mut stdin = io.stdin;
        let reader = tokio::spawn(async move {
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
        let forwarder = io.events.map(|mut events| {
            let tx = in_tx.clone();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            })
        });
        drop(in_tx);
        let sender = tokio::spawn(async move {
            while let Some(msg) = in_rx.recv().await {
                if write_frame_async(&mut wr, &msg).await.is_err() {
                    return;
                }
            }
        });

        let result = loop {
            match read_frame_async::<_, ExecOutput>(&mut rd).await {
                Ok(Some(ExecOutput::Stdout(data))) => {
                    if io
                        .stdout
                        .write_all(&data)
                        .and_then(|_| io.stdout.flush())
                        .is_err()
                    {
                        break Err(ExecError::StdoutClosed);
                    }
                }
                Ok(Some(ExecOutput::Stderr(data))) => {
                    let _ = io.stderr.write_all(&data).and_then(|_| io.stderr.flush());
                }
                Ok(Some(ExecOutput::Exit(status))) => break Ok(status),
                Ok(Some(ExecOutput::Failed(reason))) => break Err(ExecError::Failed(reason)),
                Ok(Some(ExecOutput::Started { .. })) => {}
                Ok(None) | Err(_) => break Err(ExecError::Lost),
            }
        };
        sender.abort();
        reader.abort();
        if let Some(f) = forwarder {
            f.abort();
        }
        result
    }
}

/// What [`capture`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A request for `argv` as root in `/`, with no terminal and the agent's
/// own environment: what the host agent runs for itself (checks, setup).
pub fn as_root(argv: Vec<String>) -> ExecRequest {
    ExecRequest {
        argv,
        env: Vec::new(),
        cwd: Some("/".into()),
        cwd_fallback: true,
        user: None,
        login: false,
        pty: None,
    }
}

/// Runs a command with `stdin` as its input and collects its output.
pub async fn capture(
    transport: &dyn Transport,
    req: &ExecRequest,
    stdin: Vec<u8>,
) -> Result<Captured, ExecError> {
    let session = start(transport, req).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = session
        .finish(Io {
            stdin: Box::new(std::io::Cursor::new(stdin)),
            stdout: &mut stdout,
            stderr: &mut stderr,
            events: None,
        })
        .await?;
    Ok(Captured {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lima_proto::{Hello, HelloReply, PROTOCOL_VERSION};
    use std::sync::Mutex;

    /// A transport whose one connection is served by a scripted agent.
    struct Scripted(Mutex<Option<BoxStream>>);

    impl Transport for Scripted {
        fn connect(&self, _port: u32) -> crate::vsock::ConnectFuture<'_> {
            let s = self.0.lock().unwrap().take();
            Box::pin(async move { s.ok_or_else(|| std::io::Error::other("used")) })
        }
    }

    /// An agent that echoes stdin to stdout, says "e" on stderr, and exits
    /// with the number of stdin bytes it got.
    async fn agent(stream: tokio::net::UnixStream, start: Option<&str>) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let _: Hello = read_frame_async(&mut rd).await.unwrap().unwrap();
        let info = lima_proto::AgentInfo {
            agent_version: "test".into(),
            kernel_release: "test".into(),
            pid1: false,
            watcher: "test".into(),
        };
        write_frame_async(
            &mut wr,
            &HelloReply {
                version: PROTOCOL_VERSION,
                result: Ok(info),
            },
        )
        .await
        .unwrap();
        let _: ExecRequest = read_frame_async(&mut rd).await.unwrap().unwrap();
        if let Some(why) = start {
            let _ = write_frame_async(&mut wr, &ExecOutput::Failed(why.into())).await;
            return;
        }
        write_frame_async(&mut wr, &ExecOutput::Started { pid: 42 })
            .await
            .unwrap();
        write_frame_async(&mut wr, &ExecOutput::Stderr(b"e".to_vec()))
            .await
            .unwrap();
        let mut n = 0;
        loop {
            match read_frame_async::<_, ExecInput>(&mut rd).await.unwrap() {
                Some(ExecInput::Stdin(d)) => {
                    n += d.len();
                    write_frame_async(&mut wr, &ExecOutput::Stdout(d))
                        .await
                        .unwrap();
                }
                Some(ExecInput::StdinEof) | None => break,
                Some(_) => {}
            }
        }
        write_frame_async(&mut wr, &ExecOutput::Exit(ExitStatus::Code(n as i32)))
            .await
            .unwrap();
    }

    fn transport() -> (Scripted, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        (Scripted(Mutex::new(Some(Box::new(ours)))), theirs)
    }

    fn req() -> ExecRequest {
        ExecRequest {
            argv: vec!["cat".into()],
            env: vec![],
            cwd: None,
            cwd_fallback: false,
            user: None,
            login: false,
            pty: None,
        }
    }

    #[tokio::test]
    async fn capture_collects_output_and_status() {
        let (t, theirs) = transport();
        let guest = tokio::spawn(agent(theirs, None));
        let got = capture(&t, &req(), b"hello".to_vec()).await.unwrap();
        guest.await.unwrap();
        assert_eq!(got.stdout, b"hello");
        assert_eq!(got.stderr, b"e");
        assert_eq!(got.status, ExitStatus::Code(5));
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_says_why() {
        let (t, theirs) = transport();
        let guest = tokio::spawn(agent(theirs, Some("no-such-program: not found")));
        match start(&t, &req()).await {
            Err(ExecError::Failed(why)) => assert!(why.contains("no-such-program")),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("started"),
        }
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_stdout_is_reported() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (t, theirs) = transport();
        let guest = tokio::spawn(agent(theirs, None));
        let session = start(&t, &req()).await.unwrap();
        assert_eq!(session.pid, 42);
        let r = session
            .finish(Io {
                stdin: Box::new(std::io::Cursor::new(b"x".to_vec())),
                stdout: &mut Closed,
                stderr: &mut Vec::new(),
                events: None,
            })
            .await;
        assert!(matches!(r, Err(ExecError::StdoutClosed)), "{r:?}");
        drop(guest);
    }
}
