//! Test-only requests that skip our own path checks, so a test can show
//! that the kernel (Landlock, seccomp) is what stops them.
//!
//! They never arrive from a guest: they come on a socket of their own,
//! which exists only when the process that started the server passed
//! `--test-hook-fd` (the host agent never does; see
//! [`Spawn::test_hook`](crate::process::Spawn::test_hook)). A guest reaches
//! a server only through its share stream and shared-memory region, and
//! can add neither arguments nor fds to a process on the host.
//!
//! One request per line, one answer per line:
//!
//! ```text
//! open PATH     open(PATH, O_RDONLY)               → ok | errno N
//! create PATH   open(PATH, O_WRONLY|O_CREAT, 0600)  → ok | errno N
//! socket        socket(AF_UNIX, SOCK_DGRAM)        → ok | errno N
//! ```
//!
//! Each runs on the blocking pool, like the server's data requests: on a
//! thread started after confinement, so the answer shows what serving
//! threads may do.
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Answers test requests on `stream` until it closes.
pub async fn serve(stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = tokio::task::spawn_blocking(move || answer(&line))
            .await
            .unwrap_or_else(|e| format!("error {e}"));
        wr.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

fn answer(line: &str) -> String {
    let done = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("errno {n}"),
            None => format!("error {e}"),
        },
    };
    match line.split_once(' ') {
        Some(("open", path)) => done(std::fs::File::open(path).map(drop)),
        Some(("create", path)) => {
            use std::os::unix::fs::OpenOptionsExt;
            done(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(path)
                    .map(drop),
            )
        }
        None if line == "socket" => done(std::os::unix::net::UnixDatagram::unbound().map(drop)),
        _ => format!("error unknown request {line:?}"),
    }
}
