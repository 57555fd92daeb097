//! Runs the guest agent's socket watcher on this machine and prints what it
//! sees: `sudo cargo run -p lima-guest-agent --example watch`, then start and
//! stop a server (`python3 -m http.server 8765`) in another shell.
//!
//! Exits 1 at once if the watcher is unavailable, with the reason.
#[path = "../src/watcher.rs"]
mod watcher;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();

    let watcher = watcher::start().await;
    tracing::info!("socket watcher: {}", watcher.status);
    if watcher.status != watcher::WatcherStatus::Ebpf {
        std::process::exit(1);
    }
    // The watcher logs every event itself; a subscriber sees the same stream.
    let mut events = watcher.subscribe();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Ok(event) => tracing::debug!("subscriber got {event:?}"),
                Err(e) => tracing::warn!("subscriber: {e}"),
            },
        }
    }
}
