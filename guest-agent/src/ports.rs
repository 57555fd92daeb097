//! The port table: which sockets listen in the guest right now.
//!
//! The truth is a NETLINK_SOCK_DIAG dump ([`crate::sockdiag::dump`]); what
//! changes is *when* we dump. In [`WatchMode::Ebpf`] every eBPF socket event
//! triggers a dump at once (events arriving together share one dump). An
//! event can reach us before the kernel has finished hashing the socket (the
//! TCP tracepoint fires on the state change, before the port is published;
//! `sock_release` fires before the unhash), so when the dump does not yet
//! show what the event announced we dump again after 1, 4, 16, 64 and 256 ms.
//! Lost events (ring buffer drops, a lagging subscriber) also force a dump.
//! Without eBPF the table polls every second; [`WatchMode::Poll`] and
//! [`WatchMode::LimaLike`] exist so benchmarks can compare methods on one VM.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lima_proto::{GuestPort, PortProto, WatchMode};
use tokio::sync::{broadcast, watch};

use crate::watcher::{SocketEventKind, WatchEvent, Watcher};

pub type PortSet = Arc<BTreeSet<GuestPort>>;

/// Shared handle: the current set, and the mode switch.
#[derive(Clone)]
pub struct PortTable {
    current: watch::Receiver<PortSet>,
    mode: watch::Sender<WatchMode>,
    mode_text: watch::Receiver<String>,
    ebpf: bool,
}

const RETRY_DELAYS_MS: [u64; 5] = [1, 4, 16, 64, 256];
const FALLBACK_POLL: Duration = Duration::from_secs(1);

fn dump() -> BTreeSet<GuestPort> {
    match crate::sockdiag::dump() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sock_diag dump failed: {e}");
            BTreeSet::new()
        }
    }
}

impl PortTable {
    pub fn start(watcher: &Watcher) -> Self {
        let initial: PortSet = Arc::new(dump());
        let (tx, current) = watch::channel(initial);
        let default_mode = if watcher.is_active() {
            WatchMode::Ebpf
        } else {
            WatchMode::Poll {
                interval_ms: FALLBACK_POLL.as_millis() as u32,
            }
        };
        let (mode, mode_rx) = watch::channel(default_mode);
        let (text_tx, mode_text) = watch::channel(describe(default_mode, watcher));
        let events = watcher.is_active().then(|| watcher.subscribe());
        let status = watcher.status.to_string();
        // Some hooks missing (e.g. no UDP): events cover only part, so a
        // 1 s poll backs them up.
        let partial = matches!(watcher.status, crate::watcher::WatcherStatus::Partial(_));
        tokio::spawn(run(events, mode_rx, tx, text_tx, status, partial));
        PortTable {
            current,
            mode,
            mode_text,
            ebpf: watcher.is_active(),
        }
    }

    /// What listens now.
    pub fn current(&self) -> PortSet {
        self.current.borrow().clone()
    }

    /// Follows changes of the set.
    pub fn subscribe(&self) -> watch::Receiver<PortSet> {
        self.current.clone()
    }

    /// Whether `port` listens now; dumps afresh before saying no, so a
    /// listener the table has not caught up with yet is not refused.
    pub fn is_listening(&self, port: &GuestPort) -> bool {
        self.current.borrow().contains(port) || dump().contains(port)
    }

    pub fn set_mode(&self, mode: WatchMode) -> Result<String, String> {
        if mode == WatchMode::Ebpf && !self.ebpf {
            return Err("eBPF is unavailable in this guest; see the agent log".into());
        }
        self.mode.send_replace(mode);
        Ok(match mode {
            WatchMode::Ebpf => "ebpf".to_string(),
            WatchMode::Poll { interval_ms } => {
                format!("polling sock_diag every {interval_ms} ms (selected)")
            }
            WatchMode::LimaLike { interval_ms } => {
                format!("lima-like: rescan every {interval_ms} ms and after bind() (selected)")
            }
        })
    }

    /// The mode in words, as shown to users (`limactl list --format json`).
    pub fn mode_text(&self) -> String {
        self.mode_text.borrow().clone()
    }
}

fn describe(mode: WatchMode, watcher: &Watcher) -> String {
    match mode {
        WatchMode::Ebpf => watcher.status.to_string(),
        WatchMode::Poll { interval_ms } if !watcher.is_active() => {
            format!(
                "polling sock_diag every {interval_ms} ms ({})",
                watcher.status
            )
        }
        WatchMode::Poll { interval_ms } => {
            format!("polling sock_diag every {interval_ms} ms (selected)")
        }
        WatchMode::LimaLike { interval_ms } => {
            format!("lima-like: rescan every {interval_ms} ms and after bind() (selected)")
        }
    }
}

/// What an event announced, so we can tell whether a dump reflects it yet.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A TCP listener on this port (0: some new TCP listener).
    Listen(u16),
    /// Nothing on this port for this protocol.
    Gone(PortProto, u16),
    Nothing,
}

fn expectation(kind: SocketEventKind, ev: &lima_proto::ebpf::SockStateEvent) -> Expect {
    use lima_proto::ebpf::tcp_state::LISTEN;
    match kind {
        SocketEventKind::TcpState if ev.newstate == LISTEN => Expect::Listen(ev.sport),
        SocketEventKind::TcpState if ev.oldstate == LISTEN => {
            Expect::Gone(PortProto::Tcp, ev.sport)
        }
        SocketEventKind::Release if ev.sport != 0 => Expect::Gone(PortProto::Udp, ev.sport),
        _ => Expect::Nothing,
    }
}

fn satisfied(expect: Expect, before: &BTreeSet<GuestPort>, now: &BTreeSet<GuestPort>) -> bool {
    match expect {
        Expect::Listen(0) => now
            .iter()
            .any(|p| p.proto == PortProto::Tcp && !before.contains(p)),
        Expect::Listen(port) => now
            .iter()
            .any(|p| p.proto == PortProto::Tcp && p.port == port),
        Expect::Gone(proto, port) => !now.iter().any(|p| p.proto == proto && p.port == port),
        Expect::Nothing => true,
    }
}

async fn run(
    mut events: Option<broadcast::Receiver<WatchEvent>>,
    mut mode_rx: watch::Receiver<WatchMode>,
    tx: watch::Sender<PortSet>,
    text_tx: watch::Sender<String>,
    status: String,
    partial: bool,
) {
    let publish = |set: BTreeSet<GuestPort>| {
        tx.send_if_modified(|cur| {
            if **cur == set {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        });
    };
    let mut mode = *mode_rx.borrow();
    // Pending re-checks for events a dump did not reflect yet.
    let mut pending: Vec<(Expect, BTreeSet<GuestPort>, usize)> = Vec::new();
    loop {
        let tick = match mode {
            WatchMode::Ebpf if partial => Some(FALLBACK_POLL),
            WatchMode::Ebpf => None,
            WatchMode::Poll { interval_ms } | WatchMode::LimaLike { interval_ms } => {
                Some(Duration::from_millis(interval_ms.max(10) as u64))
            }
        };
        let retry = pending
            .iter()
            .map(|(_, _, n)| RETRY_DELAYS_MS[*n])
            .min()
            .map(Duration::from_millis);
        let wait = match (tick, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut batch = vec![ev];
                if let Some(rx) = events.as_mut() {
                    while let Ok(e) = rx.try_recv() {
                        batch.push(Ok(e));
                    }
                }
                let mut rescan = false;
                let mut expects = Vec::new();
                for ev in batch {
                    match ev {
                        Ok(WatchEvent::Socket { kind, event }) => match mode {
                            WatchMode::Ebpf => {
                                rescan = true;
                                expects.push(expectation(kind, &event));
                            }
                            WatchMode::LimaLike { .. } if kind == SocketEventKind::Bind => rescan = true,
                            _ => {}
                        },
                        Ok(WatchEvent::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            tracing::debug!("socket events lost; full dump");
                            rescan = !matches!(mode, WatchMode::Poll { .. });
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            tracing::warn!("eBPF events stopped; polling sock_diag every second");
                            events = None;
                            mode = WatchMode::Poll { interval_ms: FALLBACK_POLL.as_millis() as u32 };
                            text_tx.send_replace(format!("polling sock_diag every second (eBPF events stopped; {status})"));
                            rescan = true;
                        }
                    }
                }
                if rescan {
                    let before = tx.borrow().as_ref().clone();
                    let now = dump();
                    for e in expects {
                        if !satisfied(e, &before, &now) {
                            pending.push((e, before.clone(), 0));
                        }
                    }
                    publish(now);
                }
            }
            _ = sleep => {
                let now = dump();
                pending.retain_mut(|(e, before, n)| {
                    if satisfied(*e, before, &now) {
                        return false;
                    }
                    *n += 1;
                    *n < RETRY_DELAYS_MS.len()
                });
                publish(now);
            }
            changed = mode_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                mode = *mode_rx.borrow();
                let text = match mode {
                    WatchMode::Ebpf => status.clone(),
                    WatchMode::Poll { interval_ms } => format!("polling sock_diag every {interval_ms} ms (selected)"),
                    WatchMode::LimaLike { interval_ms } => format!("lima-like: rescan every {interval_ms} ms and after bind() (selected)"),
                };
                tracing::info!("port watcher mode: {text}");
                text_tx.send_replace(text);
                pending.clear();
                publish(dump());
            }
        }
    }
}

/// What changed from `old` to `new`.
pub fn diff(
    old: &BTreeSet<GuestPort>,
    new: &BTreeSet<GuestPort>,
) -> (Vec<GuestPort>, Vec<GuestPort>) {
    (
        new.difference(old).copied().collect(),
        old.difference(new).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(proto: PortProto, port: u16) -> GuestPort {
        GuestPort {
            proto,
            ip: "0.0.0.0".parse().unwrap(),
            port,
        }
    }

    #[test]
    fn diff_reports_added_and_removed() {
        let old: BTreeSet<_> = [p(PortProto::Tcp, 80), p(PortProto::Udp, 53)].into();
        let new: BTreeSet<_> = [p(PortProto::Tcp, 80), p(PortProto::Tcp, 443)].into();
        let (added, removed) = diff(&old, &new);
        assert_eq!(added, vec![p(PortProto::Tcp, 443)]);
        assert_eq!(removed, vec![p(PortProto::Udp, 53)]);
    }

    #[test]
    fn expectations_tell_when_a_dump_is_too_early() {
        let empty = BTreeSet::new();
        let with80: BTreeSet<_> = [p(PortProto::Tcp, 80)].into();
        assert!(!satisfied(Expect::Listen(80), &empty, &empty));
        assert!(satisfied(Expect::Listen(80), &empty, &with80));
        // listen() without bind(): the event has port 0; any new listener will do.
        assert!(satisfied(Expect::Listen(0), &empty, &with80));
        assert!(!satisfied(Expect::Listen(0), &with80, &with80));
        assert!(!satisfied(
            Expect::Gone(PortProto::Tcp, 80),
            &with80,
            &with80
        ));
        assert!(satisfied(
            Expect::Gone(PortProto::Udp, 80),
            &with80,
            &with80
        ));
    }
}
