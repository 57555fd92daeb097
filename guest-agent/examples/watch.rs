//! Runs the guest agent's socket watcher and sock_diag dump on this machine
//! and prints what they see:
//!
//! ```text
//! sudo cargo run -p lima-guest-agent --example watch
//! # in another shell:
//! python3 -m http.server 8765                      # tcp bind + listen, then listen closed
//! python3 -c "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
//!             s.bind(('::',9999)); input()"          # udp bind, then release
//! ```
//!
//! At start it prints the listening sockets and how long one dump takes;
//! after each batch of events, what the dump added or removed (a dump made
//! at once may not show the change yet: the events come first).
//!
//! `cargo run -p lima-guest-agent --example watch -- --dump` prints the dump
//! and its timing and exits (no root needed). Exits 1 at once if the watcher
//! is unavailable, with the reason.
#[path = "../src/ports/ebpf.rs"]
mod ebpf;
#[path = "../src/ports/events.rs"]
mod events;
#[path = "../src/ports/sockdiag.rs"]
mod sockdiag;
#[path = "../src/ports/watcher.rs"]
#[allow(
    dead_code,
    reason = "the agent uses more of the module than this example"
)]
mod watcher;

use std::{collections::BTreeSet, time::Instant};

use lima_proto::GuestPort;

/// How many dumps the timing averages over.
const TIMING_RUNS: u32 = 1000;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();

    let mut ports = match sockdiag::dump() {
        Ok(ports) => ports,
        Err(e) => {
            tracing::error!("sockdiag::dump(): {e}");
            std::process::exit(1);
        }
    };
    let ports_text: Vec<String> = ports.iter().map(ToString::to_string).collect();
    tracing::info!("listening now ({}): {}", ports.len(), ports_text.join(" "));
    time_dumps();
    if std::env::args().nth(1).as_deref() == Some("--dump") {
        return;
    }

    let watcher = watcher::start().await;
    tracing::info!("socket watcher: {}", watcher.status);
    if !watcher.is_active() {
        std::process::exit(1);
    }
    let mut events = watcher.subscribe();
    loop {
        let first = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => event,
        };
        let mut batch = vec![first];
        while let Ok(event) = events.try_recv() {
            batch.push(Ok(event));
        }
        for event in batch {
            match event {
                Ok(watcher::WatchEvent::Socket { kind, event }) => {
                    tracing::info!("{kind:?}: {}", events::describe(&event))
                }
                Ok(watcher::WatchEvent::Lost) => tracing::warn!("events lost"),
                Err(e) => tracing::warn!("subscriber: {e}"),
            }
        }
        match sockdiag::dump() {
            Ok(now) => {
                print_changes(&ports, &now);
                ports = now;
            }
            Err(e) => tracing::warn!("sockdiag::dump(): {e}"),
        }
    }
}

/// Logs the mean time of one dump.
fn time_dumps() {
    let start = Instant::now();
    for _ in 0..TIMING_RUNS {
        if let Err(e) = sockdiag::dump() {
            tracing::warn!("timing sockdiag::dump(): {e}");
            return;
        }
    }
    let mean = start.elapsed() / TIMING_RUNS;
    tracing::info!("one sockdiag::dump() takes {mean:?} (mean of {TIMING_RUNS})");
}

fn print_changes(before: &BTreeSet<GuestPort>, now: &BTreeSet<GuestPort>) {
    for port in now.difference(before) {
        tracing::info!("  dump: + {port}");
    }
    for port in before.difference(now) {
        tracing::info!("  dump: - {port}");
    }
    if before == now {
        tracing::info!("  dump: no change (yet)");
    }
}
