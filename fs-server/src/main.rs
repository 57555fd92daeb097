//! `lima-fs-server`: serves one shared folder with the share protocol.
//!
//! * `--stream-fd N` (how the host agent runs it, one process per share;
//!   see `lima_fs_server::process`): serves the connected stream it
//!   inherited, confined to the folder (`lima_fs_server::confine`), and
//!   exits when the guest closes it.
//! * `--listen PATH`: serves every connection on a Unix socket, straight to
//!   requests (no hello/setup exchange). For fuzzing, benchmarks and poking
//!   at the server without a VM; not confined (each connection opens the
//!   folder again).
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lima_fs_server::confine::Mode;
use lima_fs_server::{process, Server, Shm};

#[derive(Parser)]
#[command(
    version,
    about = "Serve a directory with the lima-rs share protocol",
    group = clap::ArgGroup::new("channel").required(true).args(["listen", "stream_fd"]),
)]
struct Args {
    /// Directory to share.
    #[arg(long)]
    root: PathBuf,
    /// Answer every mutating request with EROFS (and, confined, hold no
    /// right to change the folder).
    #[arg(long)]
    read_only: bool,
    /// Unix socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Serve this inherited, connected stream socket.
    #[arg(long, value_name = "FD")]
    stream_fd: Option<i32>,
    /// Inherited shared-memory file whose region carries bulk data.
    #[arg(long, value_name = "FD", requires_all = ["shm_offset", "shm_len"], requires = "stream_fd")]
    shm_fd: Option<i32>,
    #[arg(long, value_name = "BYTES")]
    shm_offset: Option<u64>,
    #[arg(long, value_name = "BYTES")]
    shm_len: Option<u64>,
    /// With --stream-fd: off, warn (serve with what the kernel offers) or
    /// require (refuse without full Landlock and seccomp).
    #[arg(long, default_value = "warn")]
    confine: Mode,
    /// Tests only: take test requests on this inherited socket.
    #[arg(long, value_name = "FD", hide = true, requires = "stream_fd")]
    test_hook_fd: Option<i32>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match args.stream_fd {
        Some(fd) => serve_fd(&args, fd),
        None => listen(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lima-fs-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A tokio stream on an inherited socket fd. Before confinement: making
/// it non-blocking is an `ioctl`, which the seccomp filter refuses.
fn register(fd: OwnedFd) -> anyhow::Result<tokio::net::UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    Ok(tokio::net::UnixStream::from_std(std)?)
}

/// One share on one inherited stream, confined.
fn serve_fd(args: &Args, fd: i32) -> anyhow::Result<()> {
    // Before any thread: a SIGTERM (the parent died, or the host stops
    // us) waits for the end below, which ends the stream cleanly.
    process::hold_end_signal().context("blocking SIGTERM")?;
    let stream = process::inherited_fd(fd).context("--stream-fd")?;
    let hook = args
        .test_hook_fd
        .map(process::inherited_fd)
        .transpose()
        .context("--test-hook-fd")?;
    let server = Server::new(&args.root, !args.read_only)?;
    if let (Some(fd), Some(offset), Some(len)) = (args.shm_fd, args.shm_offset, args.shm_len) {
        let file = std::fs::File::from(process::inherited_fd(fd).context("--shm-fd")?);
        let shm = Shm::map_file(&file, offset, len).context("mapping the shared memory")?;
        server.attach_shm(shm);
    }
    // Everything that opens, maps or creates happens before confinement:
    // the runtime's poller, its signal pipe, the streams' registrations.
    // One thread: the runtime starts its blocking pool's threads later,
    // from the confined thread, so they inherit every restriction.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // A second handle on the stream, to end it with when told to.
    let ender = stream.try_clone().context("--stream-fd")?;
    let (stream, mut ender, hook) = {
        let _in = rt.enter();
        (
            register(stream)?,
            register(ender)?,
            hook.map(register).transpose()?,
        )
    };

    let confinement = server
        .confine(args.confine)
        .context("confining the file server")?;
    if let Some(w) = confinement.warning() {
        tracing::warn!("{w}");
    }
    tracing::info!(
        root = %args.root.display(),
        read_only = args.read_only,
        confinement = %confinement.to_line(),
        "serving"
    );
    process::report_ready(&confinement).context("reporting ready")?;

    let ended = rt.block_on(async move {
        if let Some(hook) = hook {
            tokio::spawn(lima_fs_server::test_hook::serve(hook));
        }
        // Started here: a thread of the confined process.
        let end = process::end_signal().context("starting the SIGTERM thread")?;
        tokio::select! {
            served = server.serve(stream) => match served {
                // The guest went away while we still had something to say.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    tracing::debug!("the guest closed the share: {e}");
                    Ok(false)
                }
                other => other.map(|()| false).context("serving the share"),
            },
            Ok(()) = end => {
                // Requests in flight are dropped: the guest hears the end
                // instead of their replies.
                let how = process::end_stream(&mut ender, process::END_WITHIN).await;
                tracing::info!("SIGTERM (the host agent went away, or stopped the share): ended the stream; {how}");
                Ok(true)
            }
        }
    })?;
    if ended {
        // Do not wait for requests still on the blocking pool.
        rt.shutdown_background();
    }
    Ok(())
}

fn listen(args: &Args) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;

    let listen = args.listen.clone().context("--listen or --stream-fd")?;
    let (root, writable) = (args.root.clone(), !args.read_only);
    // Fail early, with the path, if the root is unusable.
    Server::new(&root, writable)?;
    if let Ok(m) = std::fs::symlink_metadata(&listen) {
        anyhow::ensure!(
            m.file_type().is_socket(),
            "{} exists and is not a socket",
            listen.display()
        );
        std::fs::remove_file(&listen)
            .with_context(|| format!("removing stale {}", listen.display()))?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&listen)
            .with_context(|| format!("listening on {}", listen.display()))?;
        tracing::info!(root = %root.display(), listen = %listen.display(), read_only = !writable, "serving");
        loop {
            let (stream, _) = listener.accept().await.context("accepting a connection")?;
            let server = match Server::new(&root, writable) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve connection");
                    continue;
                }
            };
            tokio::spawn(async move {
                match server.serve(stream).await {
                    Ok(()) => tracing::debug!("connection closed"),
                    Err(e) => tracing::warn!(error = %e, "connection ended"),
                }
            });
        }
    })
}
