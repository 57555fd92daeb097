//! Socket watcher: learns about TCP `listen()` and the close of listening
//! sockets the moment they happen, from the eBPF program in `guest-ebpf`.
//!
//! ```text
//!  kernel: sock:inet_sock_set_state ──▶ guest-ebpf (keeps *→LISTEN, LISTEN→*)
//!                                          │ RingBuf "EVENTS" (SockStateEvent)
//!  agent:  reader task (AsyncFd on the ring) ──▶ tracing::info! + broadcast
//!                                                   └─▶ port watcher (subscribe)
//! ```
//!
//! Why it is shaped this way:
//!
//! - **It never stops the agent.** Loading eBPF needs root (or CAP_BPF +
//!   CAP_PERFMON), a kernel with ring buffers (5.8+) and tracefs. When any of
//!   that is missing [`start`] returns a watcher whose status is
//!   [`WatcherStatus::Unavailable`] with the whole cause chain, the agent says
//!   so to the host, and the port watcher falls back to polling sock_diag.
//!   Events are hints in any case: the port watcher reconciles them with a
//!   sock_diag dump, which is the truth (a full ring buffer drops events).
//! - **One narrow seam for the privileged part.** Everything that needs
//!   privilege or a real kernel (RLIMIT_MEMLOCK, mounting tracefs, loading and
//!   attaching the program, reading the ring buffer) lives in [`kernel`] and
//!   reaches the rest only through [`EventSource`]. The rest (status, event
//!   decoding and text, fan-out) is tested without root through a fake source.
//! - **Port 0 means "ask sock_diag".** The kernel fires the LISTEN
//!   transition before it picks a port for a socket that was never bound
//!   (`listen()` without `bind()`), so that event carries port 0; the close
//!   carries the real port. Bound sockets (every server in practice) report
//!   their port on listen.
//! - **No BTF needed.** The program reads the tracepoint record at fixed
//!   offsets (stable since 4.16), so kernels without `/sys/kernel/btf/vmlinux`
//!   work too.
use std::{
    fmt,
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use lima_proto::ebpf::{tcp_state, SockStateEvent, AF_INET, AF_INET6};
use tokio::sync::broadcast;

/// How many events a slow subscriber may lag behind before it misses some
/// (it then gets `RecvError::Lagged` and should re-dump sock_diag).
const BROADCAST_CAPACITY: usize = 1024;

/// Whether the watcher runs, for logs and for the hello to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatcherStatus {
    /// The eBPF program is attached and its events are being read.
    Ebpf,
    /// No eBPF; the reason, with its whole cause chain.
    Unavailable(String),
}

impl fmt::Display for WatcherStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ebpf => f.write_str("ebpf"),
            Self::Unavailable(reason) => write!(f, "unavailable: {reason}"),
        }
    }
}

/// A started (or failed) watcher. Dropping it does not stop the reader task;
/// events keep being logged for the life of the agent.
pub struct Watcher {
    pub status: WatcherStatus,
    events: broadcast::Sender<SockStateEvent>,
}

impl Watcher {
    /// Listen/close events from now on. With an unavailable watcher the
    /// receiver never yields an event.
    #[allow(
        dead_code,
        reason = "the port watcher (next issue) and examples/watch.rs subscribe"
    )]
    pub fn subscribe(&self) -> broadcast::Receiver<SockStateEvent> {
        self.events.subscribe()
    }
}

/// Why the eBPF watcher could not start. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the agent was built without the eBPF object (AYA_BUILD_SKIP)")]
    NoObject,
    #[error("tracefs is not mounted and mounting it at {path} failed")]
    Tracefs {
        path: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("loading the program {name} into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to the tracepoint {category}:{name}")]
    Attach {
        category: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("opening the ring buffer {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the async runtime")]
    Poll(#[source] io::Error),
}

/// Loads and attaches the eBPF program and starts the reader task. Never
/// fails: on error the status says why and the agent carries on.
pub async fn start() -> Watcher {
    start_with(kernel::attach)
}

/// [`start`] with the privileged half passed in (a fake in tests).
fn start_with<S, F>(attach: F) -> Watcher
where
    S: EventSource,
    F: FnOnce() -> Result<S, WatchError>,
{
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let status = match attach() {
        Ok(source) => {
            tokio::spawn(read_events(source, events.clone()));
            WatcherStatus::Ebpf
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
    Watcher { status, events }
}

/// Where events come from: the ring buffer, or a fake in tests.
trait EventSource: Send + 'static {
    /// Waits until at least one event is ready and appends what is ready to
    /// `out`. An error ends the watcher.
    fn read(
        &mut self,
        out: &mut Vec<SockStateEvent>,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// The reader task: logs each event and hands it to the subscribers.
async fn read_events<S: EventSource>(mut source: S, events: broadcast::Sender<SockStateEvent>) {
    let mut batch = Vec::new();
    loop {
        if let Err(e) = source.read(&mut batch).await {
            tracing::error!("socket watcher stopped: reading eBPF events: {e}");
            return;
        }
        for event in batch.drain(..) {
            tracing::info!("{}", describe(&event));
            // No subscriber yet is fine: events are hints, sock_diag is truth.
            let _ = events.send(event);
        }
    }
}

/// `a: b: c` from an error and its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors (aya's among them) repeat their source in their own
        // message; say each thing once.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Longest reason a status carries. A verifier rejection brings the whole
/// verifier log (thousands of lines); its verdict is at the end.
const MAX_REASON: usize = 2048;

/// `reason` cut to about [`MAX_REASON`] bytes: its start (which step failed)
/// and its end (the kernel's verdict).
fn shorten(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    let head_end = floor_char_boundary(reason, MAX_REASON / 4);
    let tail_start = floor_char_boundary(reason, reason.len() - MAX_REASON * 3 / 4);
    format!(
        "{} [... {} bytes elided ...] {}",
        &reason[..head_end],
        tail_start - head_end,
        &reason[tail_start..]
    )
}

/// The largest char boundary in `s` at or before `index`.
fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Decodes one ring buffer record; `None` if it is too short.
fn event_from_bytes(bytes: &[u8]) -> Option<SockStateEvent> {
    if bytes.len() < size_of::<SockStateEvent>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<SockStateEvent>() bytes (checked
    // above), the read is unaligned, and SockStateEvent is #[repr(C)] plain
    // integers and byte arrays, so every bit pattern is a valid value.
    Some(unsafe { bytes.as_ptr().cast::<SockStateEvent>().read_unaligned() })
}

/// The socket's local address (`saddr:sport`), if the family is IPv4/IPv6.
pub fn local_addr(event: &SockStateEvent) -> Option<SocketAddr> {
    match event.family {
        AF_INET => {
            let [a, b, c, d, ..] = event.saddr;
            Some(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), event.sport).into())
        }
        AF_INET6 => Some(SocketAddrV6::new(Ipv6Addr::from(event.saddr), event.sport, 0, 0).into()),
        _ => None,
    }
}

/// One line for the log: `tcp listen 0.0.0.0:8080`,
/// `tcp listen closed [::]:8080`.
pub fn describe(event: &SockStateEvent) -> String {
    let protocol = match event.protocol {
        6 => "tcp".to_owned(),
        132 => "sctp".to_owned(),
        262 => "mptcp".to_owned(),
        other => format!("protocol {other}"),
    };
    let what = if event.newstate == tcp_state::LISTEN {
        "listen"
    } else if event.oldstate == tcp_state::LISTEN {
        "listen closed"
    } else {
        "state change"
    };
    let addr = match local_addr(event) {
        Some(addr) => addr.to_string(),
        None => format!("(family {}) port {}", event.family, event.sport),
    };
    format!("{protocol} {what} {addr}")
}

/// The privileged half: every call here needs root or a real kernel. Kept to
/// one function and one reader type so the rest of the module stays testable.
mod kernel {
    use std::io;

    use aya::{
        maps::{MapData, RingBuf},
        programs::TracePoint,
        Ebpf,
    };
    use lima_proto::ebpf::SockStateEvent;
    use tokio::io::{unix::AsyncFd, Interest};

    use super::{event_from_bytes, EventSource, WatchError};

    const PROGRAM: &str = "inet_sock_set_state";
    const CATEGORY: &str = "sock";
    const TRACEPOINT: &str = "inet_sock_set_state";
    const EVENTS_MAP: &str = "EVENTS";
    /// Where aya looks for tracefs (it caches the answer on first use).
    const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

    /// The object built from `guest-ebpf` by `build.rs`.
    fn object() -> &'static [u8] {
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lima-guest-ebpf"))
    }

    /// The loaded program and its ring buffer. Owns the [`Ebpf`]: dropping it
    /// detaches the tracepoint.
    pub(super) struct RingSource {
        ring: AsyncFd<RingBuf<MapData>>,
        _ebpf: Ebpf,
    }

    pub(super) fn attach() -> Result<RingSource, WatchError> {
        let object = object();
        if object.is_empty() {
            return Err(WatchError::NoObject);
        }
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(object).map_err(WatchError::Load)?;
        start_ebpf_logger(&mut ebpf);

        let program: &mut TracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or(WatchError::Missing {
                kind: "program",
                name: PROGRAM,
            })?
            .try_into()
            .map_err(|source| WatchError::Program {
                name: PROGRAM,
                source,
            })?;
        program.load().map_err(|source| WatchError::Program {
            name: PROGRAM,
            source,
        })?;
        // After the loads, so that a missing privilege is reported as the
        // kernel's refusal to load rather than as a failed mount.
        ensure_tracefs()?;
        program
            .attach(CATEGORY, TRACEPOINT)
            .map_err(|source| WatchError::Attach {
                category: CATEGORY,
                name: TRACEPOINT,
                source,
            })?;

        let map = ebpf.take_map(EVENTS_MAP).ok_or(WatchError::Missing {
            kind: "map",
            name: EVENTS_MAP,
        })?;
        let ring = RingBuf::try_from(map).map_err(|source| WatchError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        // SAFETY: the RingBuf owns the map's fd (an OwnedFd in MapData) and
        // always returns that same fd; the AsyncFd owns the RingBuf, so the fd
        // stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| WatchError::Poll(e.into()))?;
        Ok(RingSource { ring, _ebpf: ebpf })
    }

    impl EventSource for RingSource {
        async fn read(&mut self, out: &mut Vec<SockStateEvent>) -> io::Result<()> {
            while out.is_empty() {
                let mut guard = self.ring.readable_mut().await?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match event_from_bytes(&item) {
                        Some(event) => out.push(event),
                        None => {
                            tracing::warn!("eBPF ring buffer: ignored a {}-byte record", item.len())
                        }
                    }
                }
                guard.clear_ready();
            }
            Ok(())
        }
    }

    /// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK (newer ones
    /// use the memory cgroup). Raise it if it is finite; failing is not fatal
    /// here, the load then fails with the kernel's reason.
    fn raise_memlock_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the rlimit we pass and nothing else.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if got == 0 && limit.rlim_cur == libc::RLIM_INFINITY {
            return;
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit only reads the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            tracing::debug!(
                "cannot raise RLIMIT_MEMLOCK: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// aya finds tracepoints through tracefs. The agent mounts it when it is
    /// init; on a distro that did not, mount it here.
    fn ensure_tracefs() -> Result<(), WatchError> {
        if tracefs_mounted() {
            return Ok(());
        }
        let path = TRACEFS_DIRS[0];
        nix::mount::mount(
            Some("tracefs"),
            path,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| WatchError::Tracefs { path, source })?;
        tracing::info!("mounted tracefs at {path}");
        Ok(())
    }

    /// Whether tracefs is mounted where aya looks, by the mount table (its
    /// directories are not readable without privilege), or by looking when
    /// there is no /proc.
    fn tracefs_mounted() -> bool {
        match std::fs::read_to_string("/proc/self/mounts") {
            Ok(mounts) => mounts.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                let (Some(dir), Some(fstype)) = (fields.next(), fields.next()) else {
                    return false;
                };
                fstype == "tracefs" && TRACEFS_DIRS.contains(&dir)
            }),
            Err(_) => TRACEFS_DIRS
                .iter()
                .any(|dir| std::path::Path::new(dir).join("events").is_dir()),
        }
    }

    /// Forwards the program's own log lines (aya-log) to our log. The logger
    /// owns the AYA_LOGS map and must live as long as the program: it moves
    /// into its own task. Without it the program still works.
    fn start_ebpf_logger(ebpf: &mut Ebpf) {
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(logger) => logger,
            Err(e) => {
                tracing::warn!(
                    "eBPF log forwarding unavailable: {}",
                    super::error_chain(&e)
                );
                return;
            }
        };
        // SAFETY: the logger owns the AYA_LOGS ring buffer and its fd and
        // always returns that same fd; the AsyncFd owns the logger.
        let mut logger =
            match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
                Ok(logger) => logger,
                Err(e) => {
                    tracing::warn!("eBPF log forwarding unavailable: {}", io::Error::from(e));
                    return;
                }
            };
        tokio::spawn(async move {
            loop {
                let mut guard = match logger.readable_mut().await {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!("eBPF log forwarding stopped: {e}");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        family: u16,
        protocol: u16,
        oldstate: i32,
        newstate: i32,
        addr: &[u8],
        port: u16,
    ) -> SockStateEvent {
        let mut saddr = [0; 16];
        saddr[..addr.len()].copy_from_slice(addr);
        SockStateEvent {
            family,
            protocol,
            oldstate,
            newstate,
            saddr,
            sport: port,
            ..Default::default()
        }
    }

    #[test]
    fn describes_listen_and_close() {
        let listen4 = event(
            AF_INET,
            6,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &[0, 0, 0, 0],
            8080,
        );
        assert_eq!(describe(&listen4), "tcp listen 0.0.0.0:8080");
        let closed6 = event(
            AF_INET6,
            6,
            tcp_state::LISTEN,
            tcp_state::CLOSE,
            &[0; 16],
            8080,
        );
        assert_eq!(describe(&closed6), "tcp listen closed [::]:8080");
        let loopback6 = event(
            AF_INET6,
            6,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &Ipv6Addr::LOCALHOST.octets(),
            22,
        );
        assert_eq!(describe(&loopback6), "tcp listen [::1]:22");
        let sctp = event(
            AF_INET,
            132,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &[127, 0, 0, 1],
            9,
        );
        assert_eq!(describe(&sctp), "sctp listen 127.0.0.1:9");
        let odd = event(1, 6, tcp_state::CLOSE, tcp_state::LISTEN, &[], 5);
        assert_eq!(describe(&odd), "tcp listen (family 1) port 5");
        assert_eq!(local_addr(&odd), None);
    }

    #[test]
    fn decodes_ring_buffer_records() {
        let e = event(
            AF_INET,
            6,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &[10, 0, 2, 15],
            443,
        );
        // SAFETY: SockStateEvent is #[repr(C)] plain data without padding
        // (8 + 4 + 4 + 4 * 2 + 16 + 16 = 56 bytes), so all its bytes are initialized.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const SockStateEvent).cast::<u8>(),
                size_of::<SockStateEvent>(),
            )
        };
        assert_eq!(size_of::<SockStateEvent>(), 56);
        assert_eq!(event_from_bytes(bytes), Some(e));
        assert_eq!(event_from_bytes(&bytes[..10]), None);
    }

    #[test]
    fn long_reasons_keep_both_ends() {
        let reason = format!(
            "loading the program x: {}verdict: bad ctx access",
            "0: (bf) r6 = r1 é\n".repeat(1000)
        );
        let short = shorten(&reason);
        assert!(short.len() <= MAX_REASON + 64, "{} bytes", short.len());
        assert!(short.starts_with("loading the program x: "));
        assert!(short.ends_with("verdict: bad ctx access"));
        assert!(short.contains("bytes elided"));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn status_text() {
        assert_eq!(WatcherStatus::Ebpf.to_string(), "ebpf");
        assert_eq!(
            WatcherStatus::Unavailable("no BTF".into()).to_string(),
            "unavailable: no BTF"
        );
    }

    /// A source that yields one batch, then waits forever.
    struct Fake(Option<Vec<SockStateEvent>>);

    impl EventSource for Fake {
        async fn read(&mut self, out: &mut Vec<SockStateEvent>) -> io::Result<()> {
            match self.0.take() {
                Some(batch) => {
                    out.extend(batch);
                    Ok(())
                }
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn failure_is_a_status_with_the_whole_chain() {
        let watcher = start_with(|| -> Result<Fake, WatchError> {
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
    }

    #[tokio::test]
    async fn events_reach_subscribers() {
        let listen = event(
            AF_INET,
            6,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            &[0; 4],
            8765,
        );
        let watcher = start_with(|| Ok(Fake(Some(vec![listen]))));
        // Subscribing before the reader task first runs: the test runtime is
        // single-threaded and this task has not yielded yet.
        let mut events = watcher.subscribe();
        assert_eq!(watcher.status, WatcherStatus::Ebpf);
        assert_eq!(events.recv().await.unwrap(), listen);
    }
}
