//! Socket watcher: learns about every TCP `listen()` and close of a listening
//! socket, and every TCP/UDP `bind()` and UDP release, the moment they
//! happen, from the eBPF programs in `guest-ebpf`.
//!
//! ```text
//!  kernel: sock:inet_sock_set_state ─▶ inet_sock_set_state (keeps *→LISTEN, LISTEN→*)
//!          cgroup/post_bind4, 6     ─▶ post_bind4/6 (TCP and UDP binds)   │ RingBuf "EVENTS"
//!          cgroup/sock_release      ─▶ sock_release (bound UDP sockets)   │ (SockEvent)
//!                                      ring full? count in "DROPPED" ─────┤
//!  agent:  reader task (AsyncFd on the ring) ──▶ tracing::debug! + broadcast (WatchEvent)
//!            after each batch: DROPPED grew? ──▶ WatchEvent::Lost          └─▶ port table
//! ```
//!
//! Why it is shaped this way:
//!
//! - **It never stops the agent.** Loading eBPF needs root (or CAP_BPF +
//!   CAP_PERFMON), a kernel with ring buffers (5.8+) and tracefs. When any of
//!   that is missing [`start`] returns a watcher whose status is
//!   [`WatcherStatus::Unavailable`] with the whole cause chain, the agent says
//!   so to the host, and the port table falls back to polling sock_diag.
//!   Events are hints in any case: the port table reconciles them with a
//!   sock_diag dump, which is the truth.
//! - **Losses are announced.** A full ring buffer drops events; the programs
//!   count the drops in the per-CPU `DROPPED` map, and after each batch the
//!   reader compares the total with the last one it saw and broadcasts
//!   [`WatchEvent::Lost`] when it grew, so subscribers re-dump.
//! - **One narrow seam for the privileged part.** Everything that needs
//!   privilege or a real kernel (RLIMIT_MEMLOCK, mounting tracefs, loading and
//!   attaching the programs, reading the maps) lives in [`super::ebpf`] and
//!   reaches the rest only through [`EventSource`] ([`super::events`]). The
//!   rest (status, event decoding and text, loss detection, fan-out) is
//!   tested without root through a fake source.
//! - **Quiet by default.** Each event is logged at `debug` (a busy guest
//!   binds many sockets); losses and failures at `warn`.
use std::fmt;

use lima_proto::ebpf::SockEvent;
use tokio::sync::broadcast;

use super::ebpf::{self, shorten, Attached, WatchError};
use super::events::{describe, EventSource, SocketEventKind};
use lima_proto::errors::error_chain;

/// How many events a slow subscriber may lag behind before it misses some
/// (it then gets `RecvError::Lagged` and should re-dump sock_diag).
const BROADCAST_CAPACITY: usize = 1024;

/// Whether the watcher runs, for logs and for the hello to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatcherStatus {
    /// All programs are attached and their events are being read.
    Ebpf,
    /// The TCP tracepoint runs but some cgroup hooks do not: what is missing
    /// and why (`tcp only: <why>`, `no cgroup/sock_release: <why>`).
    Partial(String),
    /// No eBPF; the reason, with its whole cause chain.
    Unavailable(String),
}

impl fmt::Display for WatcherStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ebpf => f.write_str("ebpf"),
            Self::Partial(missing) => write!(f, "ebpf ({missing})"),
            Self::Unavailable(reason) => write!(f, "unavailable: {reason}"),
        }
    }
}

/// What subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// One socket event from eBPF.
    Socket {
        kind: SocketEventKind,
        event: SockEvent,
    },
    /// Events may have been lost (ring buffer drops seen in DROPPED);
    /// consumers re-dump.
    Lost,
}

/// A started (or failed) watcher. Dropping it does not stop the reader task;
/// events keep flowing for the life of the agent.
pub struct Watcher {
    pub status: WatcherStatus,
    /// Whether finished `listen()`s are reported ([`SocketEventKind::Listened`]);
    /// without them a new listener is found by re-dumping after its
    /// `TcpState` event until it shows.
    pub listened: bool,
    events: broadcast::Sender<WatchEvent>,
}

impl Watcher {
    /// Socket events from now on. With an unavailable watcher the receiver
    /// never yields an event.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    /// Whether eBPF events flow (all hooks, or the TCP tracepoint at least).
    pub fn is_active(&self) -> bool {
        matches!(self.status, WatcherStatus::Ebpf | WatcherStatus::Partial(_))
    }
}

impl Watcher {
    /// A watcher without eBPF (the port table then polls sock_diag), for
    /// tests elsewhere in the agent that must not load programs.
    #[cfg(test)]
    pub fn unavailable(why: &str) -> Self {
        Watcher {
            status: WatcherStatus::Unavailable(why.into()),
            listened: false,
            events: broadcast::channel(1).0,
        }
    }
}

/// Loads and attaches the eBPF programs and starts the reader task. Never
/// fails: on error the status says why and the agent carries on.
pub async fn start() -> Watcher {
    start_with(ebpf::attach)
}

/// [`start`] with the privileged half passed in (a fake in tests).
fn start_with<S, F>(attach: F) -> Watcher
where
    S: EventSource,
    F: FnOnce() -> Result<Attached<S>, WatchError>,
{
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let mut listened = false;
    let status = match attach() {
        Ok(Attached {
            source,
            missing,
            listened: hooked,
        }) => {
            listened = hooked;
            tokio::spawn(read_events(source, events.clone()));
            match missing {
                None => WatcherStatus::Ebpf,
                Some(missing) => WatcherStatus::Partial(missing.text()),
            }
        }
        Err(e) => {
            let reason = error_chain(&e);
            let short = shorten(&reason);
            if short.len() < reason.len() {
                tracing::debug!("socket watcher unavailable, in full: {reason}");
            }
            WatcherStatus::Unavailable(short)
        }
    };
    Watcher {
        status,
        listened,
        events,
    }
}

/// The reader task: logs each event, hands it to the subscribers, and
/// announces losses.
async fn read_events<S: EventSource>(mut source: S, events: broadcast::Sender<WatchEvent>) {
    let mut batch = Vec::new();
    let mut dropped_seen = 0;
    let mut dropped_unreadable = false;
    loop {
        if let Err(e) = source.read(&mut batch).await {
            tracing::error!("socket watcher stopped: reading eBPF events: {e}");
            return;
        }
        for event in batch.drain(..) {
            let Some(kind) = SocketEventKind::from_raw(event.kind) else {
                tracing::warn!(
                    "eBPF ring buffer: ignored an event of unknown kind {}",
                    event.kind
                );
                continue;
            };
            tracing::debug!("{}", describe(&event));
            // No subscriber yet is fine: events are hints, sock_diag is truth.
            let _ = events.send(WatchEvent::Socket { kind, event });
        }
        match source.dropped() {
            Ok(total) if total > dropped_seen => {
                tracing::warn!(
                    "eBPF ring buffer was full: {} socket events lost; the port table re-reads \
                     sock_diag",
                    total - dropped_seen
                );
                dropped_seen = total;
                let _ = events.send(WatchEvent::Lost);
            }
            Ok(_) => {}
            Err(e) => {
                // Without the count, assume the worst after every batch.
                if !dropped_unreadable {
                    tracing::warn!("cannot read the eBPF drop counter: {e}");
                    dropped_unreadable = true;
                }
                let _ = events.send(WatchEvent::Lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use lima_proto::ebpf::{tcp_state, AF_INET, AF_INET6, KIND_BIND, KIND_RELEASE};

    use super::super::ebpf::MissingHooks;
    use super::super::events::tests::{event, udp};
    use super::*;

    #[test]
    fn status_text() {
        assert_eq!(WatcherStatus::Ebpf.to_string(), "ebpf");
        assert_eq!(
            WatcherStatus::Partial("tcp only: no cgroup2 filesystem is mounted".into()).to_string(),
            "ebpf (tcp only: no cgroup2 filesystem is mounted)"
        );
        assert_eq!(
            WatcherStatus::Unavailable("no BTF".into()).to_string(),
            "unavailable: no BTF"
        );
    }

    /// A source that yields its batches one per read, then waits forever.
    /// Each batch comes with the drop counter the source reports after it
    /// (`None`: reading the counter fails).
    struct Fake {
        batches: Vec<(Vec<SockEvent>, Option<u64>)>,
        dropped: Option<u64>,
    }

    impl Fake {
        fn new(batches: Vec<Vec<SockEvent>>) -> Self {
            Self::with_drops(batches.into_iter().map(|b| (b, Some(0))).collect())
        }

        fn with_drops(batches: Vec<(Vec<SockEvent>, Option<u64>)>) -> Self {
            Self {
                batches,
                dropped: Some(0),
            }
        }
    }

    impl EventSource for Fake {
        async fn read(&mut self, out: &mut Vec<SockEvent>) -> io::Result<()> {
            if self.batches.is_empty() {
                std::future::pending::<()>().await;
            }
            let (batch, dropped) = self.batches.remove(0);
            out.extend(batch);
            self.dropped = dropped;
            Ok(())
        }

        fn dropped(&mut self) -> io::Result<u64> {
            self.dropped.ok_or_else(|| io::Error::other("no such map"))
        }
    }

    fn attached(source: Fake) -> Result<Attached<Fake>, WatchError> {
        Ok(Attached {
            source,
            missing: None,
            listened: true,
        })
    }

    #[tokio::test]
    async fn failure_is_a_status_with_the_whole_chain() {
        let watcher = start_with(|| -> Result<Attached<Fake>, WatchError> {
            Err(WatchError::Tracefs {
                path: "/sys/kernel/tracing",
                source: nix::Error::EPERM,
            })
        });
        assert_eq!(
            watcher.status.to_string(),
            "unavailable: tracefs is not mounted and mounting it at /sys/kernel/tracing failed: \
             EPERM: Operation not permitted"
        );
        assert!(!watcher.is_active());
    }

    #[tokio::test]
    async fn missing_cgroup_hooks_are_partial_mode() {
        let all = vec![
            "cgroup/post_bind4",
            "cgroup/post_bind6",
            "cgroup/sock_release",
        ];
        let watcher = start_with(|| {
            Ok(Attached {
                source: Fake::new(vec![]),
                missing: Some(MissingHooks::new(all, WatchError::NoCgroup2)),
                listened: false,
            })
        });
        assert_eq!(
            watcher.status.to_string(),
            "ebpf (tcp only: no cgroup2 filesystem is mounted)"
        );
        assert!(watcher.is_active());

        let old_kernel = WatchError::OpenCgroup {
            path: "/sys/fs/cgroup".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let watcher = start_with(|| {
            Ok(Attached {
                source: Fake::new(vec![]),
                missing: Some(MissingHooks::new(vec!["cgroup/sock_release"], old_kernel)),
                listened: false,
            })
        });
        assert_eq!(
            watcher.status.to_string(),
            "ebpf (no cgroup/sock_release: opening the cgroup /sys/fs/cgroup: Invalid argument \
             (os error 22))"
        );
        assert!(watcher.is_active());
    }

    #[tokio::test]
    async fn events_reach_subscribers_with_their_kind() {
        let listen = event(
            AF_INET,
            6,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &[0; 4],
            8765,
        );
        let bind = udp(KIND_BIND, AF_INET6, &[0; 16], 9999);
        let release = udp(KIND_RELEASE, AF_INET6, &[0; 16], 9999);
        let unknown = SockEvent { kind: 42, ..bind };
        let source = Fake::new(vec![vec![listen, bind, unknown], vec![release]]);
        let watcher = start_with(|| attached(source));
        // Subscribing before the reader task first runs: the test runtime is
        // single-threaded and this task has not yielded yet.
        let mut events = watcher.subscribe();
        assert_eq!(watcher.status, WatcherStatus::Ebpf);
        assert!(watcher.is_active());
        let expected = [
            (SocketEventKind::TcpState, listen),
            (SocketEventKind::Bind, bind),
            (SocketEventKind::Release, release),
        ];
        for (kind, event) in expected {
            assert_eq!(
                events.recv().await.unwrap(),
                WatchEvent::Socket { kind, event }
            );
        }
    }

    #[tokio::test]
    async fn a_growing_drop_counter_means_lost_events() {
        let bind = udp(KIND_BIND, AF_INET, &[0; 4], 53);
        let source = Fake::with_drops(vec![
            (vec![bind], Some(3)),
            (vec![bind], Some(3)),
            (vec![bind], Some(5)),
            (vec![bind], None),
            (vec![bind], None),
        ]);
        let watcher = start_with(|| attached(source));
        let mut events = watcher.subscribe();
        let socket = WatchEvent::Socket {
            kind: SocketEventKind::Bind,
            event: bind,
        };
        let expected = [
            &socket,
            &WatchEvent::Lost,
            // The count did not change: nothing lost in between.
            &socket,
            &socket,
            &WatchEvent::Lost,
            // An unreadable count: assume the worst after every batch.
            &socket,
            &WatchEvent::Lost,
            &socket,
            &WatchEvent::Lost,
        ];
        for want in expected {
            assert_eq!(&events.recv().await.unwrap(), want);
        }
        assert!(events.try_recv().is_err());
    }
}
