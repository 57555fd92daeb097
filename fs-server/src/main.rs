//! `lima-fs-server --root DIR [--read-only] --listen PATH`: serves the share
//! protocol (no hello/setup exchange, straight to requests) to every
//! connection on a Unix socket. For fuzzing, benchmarks and poking at the
//! server without a VM; the host agent links the library instead.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Serve a directory with the lima-rs share protocol on a Unix socket"
)]
struct Args {
    /// Directory to share.
    #[arg(long)]
    root: PathBuf,
    /// Answer every mutating request with EROFS.
    #[arg(long)]
    read_only: bool,
    /// Unix socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    listen: PathBuf,
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
        .init();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lima-fs-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;

    // Fail early, with the path, if the root is unusable.
    lima_fs_server::Server::new(&args.root, !args.read_only)?;
    if let Ok(m) = std::fs::symlink_metadata(&args.listen) {
        anyhow::ensure!(
            m.file_type().is_socket(),
            "{} exists and is not a socket",
            args.listen.display()
        );
        std::fs::remove_file(&args.listen)
            .with_context(|| format!("removing stale {}", args.listen.display()))?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&args.listen)
            .with_context(|| format!("listening on {}", args.listen.display()))?;
        tracing::info!(root = %args.root.display(), listen = %args.listen.display(), read_only = args.read_only, "serving");
        loop {
            let (stream, _) = listener.accept().await.context("accepting a connection")?;
            let server = match lima_fs_server::Server::new(&args.root, !args.read_only) {
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
