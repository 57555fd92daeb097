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
//! - **The cgroup hooks are a bonus, not a condition.** UDP has no listen and
//!   no tracepoint, so binds and releases come from `cgroup/post_bind4`,
//!   `cgroup/post_bind6` and `cgroup/sock_release` programs attached to the
//!   cgroup2 root (Linux 4.17+, and 5.9+ for `sock_release`; they need a
//!   mounted cgroup2). If any of them cannot attach, the TCP tracepoint still
//!   runs and the status says what is missing and why
//!   ([`WatcherStatus::Partial`], e.g. `ebpf (tcp only: no cgroup2 filesystem
//!   is mounted)`).
//! - **Losses are announced.** A full ring buffer drops events; the programs
//!   count the drops in the per-CPU `DROPPED` map, and after each batch the
//!   reader compares the total with the last one it saw and broadcasts
//!   [`WatchEvent::Lost`] when it grew, so subscribers re-dump.
//! - **One narrow seam for the privileged part.** Everything that needs
//!   privilege or a real kernel (RLIMIT_MEMLOCK, mounting tracefs, loading and
//!   attaching the programs, reading the maps) lives in [`kernel`] and
//!   reaches the rest only through [`EventSource`]. The rest (status, event
//!   decoding and text, loss detection, fan-out) is tested without root
//!   through a fake source.
//! - **Port 0 means "ask sock_diag".** The kernel fires the LISTEN
//!   transition before it picks a port for a socket that was never bound
//!   (`listen()` without `bind()`), so that event carries port 0; the close
//!   carries the real port. Bound sockets (every server in practice) report
//!   their port on bind and on listen.
//! - **Events come before the socket tables change.** The tracepoint fires
//!   before a new listener is hashed, and `sock_release` before the socket is
//!   unhashed, so a dump made at once may not show the change yet.
//! - **No BTF needed.** The programs read their contexts at fixed offsets
//!   (the tracepoint record, stable since 4.16; `struct bpf_sock`, UAPI), so
//!   kernels without `/sys/kernel/btf/vmlinux` work too.
//! - **Quiet by default.** Each event is logged at `debug` (a busy guest
//!   binds many sockets); losses and failures at `warn`.
use std::{
    fmt,
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use lima_proto::ebpf::{
    tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND, KIND_LISTENED,
    KIND_RELEASE, KIND_TCP_STATE,
};
use tokio::sync::broadcast;

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

/// Which hook an event came from (the event's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEventKind {
    /// A TCP socket entered or left LISTEN (`sock:inet_sock_set_state`).
    TcpState,
    /// `bind()` gave a TCP or UDP socket its port (`cgroup/post_bind4/6`).
    Bind,
    /// A UDP socket whose bind was seen was closed (`cgroup/sock_release`).
    Release,
    /// A TCP `listen()` succeeded (kretprobe on `inet_csk_listen_start`): the
    /// listener announced by an earlier `TcpState` event is in the tables now.
    Listened,
}

impl SocketEventKind {
    /// The kind for a `SockEvent::kind` value, if it is one we know.
    pub fn from_raw(kind: u16) -> Option<Self> {
        match kind {
            KIND_TCP_STATE => Some(Self::TcpState),
            KIND_BIND => Some(Self::Bind),
            KIND_RELEASE => Some(Self::Release),
            KIND_LISTENED => Some(Self::Listened),
            _ => None,
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

/// Why the eBPF watcher (or one of its hooks) could not start. Each variant
/// names the step.
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
    #[error("attaching a kretprobe to the kernel function {function}")]
    Probe {
        function: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("opening the cgroup {path}")]
    OpenCgroup {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching {hook} to the cgroup {path}")]
    AttachCgroup {
        hook: &'static str,
        path: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("opening the map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the async runtime")]
    Poll(#[source] io::Error),
}

/// What the privileged half hands back: the event source, and the cgroup
/// hooks that could not be attached with the first reason.
struct Attached<S> {
    source: S,
    missing: Option<MissingHooks>,
    /// Whether the `listen_done` kretprobe is attached.
    listened: bool,
}

/// cgroup hooks that are not attached, and why the first of them is not.
#[derive(Debug)]
struct MissingHooks {
    hooks: Vec<&'static str>,
    /// Whether the bind hooks (both of them) are among the missing: then
    /// there are no UDP events at all.
    no_binds: bool,
    reason: WatchError,
}

impl MissingHooks {
    fn new(hooks: Vec<&'static str>, reason: WatchError) -> Self {
        let no_binds = hooks.contains(&"cgroup/post_bind4") && hooks.contains(&"cgroup/post_bind6");
        Self {
            hooks,
            no_binds,
            reason,
        }
    }

    /// The text of [`WatcherStatus::Partial`].
    fn text(&self) -> String {
        let reason = shorten(&error_chain(&self.reason));
        if self.no_binds {
            format!("tcp only: {reason}")
        } else {
            format!("no {}: {reason}", self.hooks.join(", "))
        }
    }
}

/// Loads and attaches the eBPF programs and starts the reader task. Never
/// fails: on error the status says why and the agent carries on.
pub async fn start() -> Watcher {
    start_with(kernel::attach)
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

/// Where events come from: the ring buffer, or a fake in tests.
trait EventSource: Send + 'static {
    /// Waits until at least one event is ready and appends what is ready to
    /// `out`. An error ends the watcher.
    fn read(&mut self, out: &mut Vec<SockEvent>) -> impl Future<Output = io::Result<()>> + Send;

    /// How many events the programs have dropped since they were loaded.
    fn dropped(&mut self) -> io::Result<u64>;
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
fn event_from_bytes(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<SockEvent>() bytes (checked
    // above), the read is unaligned, and SockEvent is #[repr(C)] plain
    // integers and byte arrays, so every bit pattern is a valid value.
    Some(unsafe { bytes.as_ptr().cast::<SockEvent>().read_unaligned() })
}

/// The cgroup2 mount to attach the cgroup hooks to, from the mount table
/// (`/proc/self/mounts` format): `/sys/fs/cgroup` if it is cgroup2 (the
/// agent mounts it there as init, and so do unified-hierarchy distros), else
/// the first cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid systems).
fn cgroup2_mount(mounts: &str) -> Option<String> {
    let mut first = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(dir), Some(fstype)) = (fields.next(), fields.next()) else {
            continue;
        };
        if fstype != "cgroup2" {
            continue;
        }
        // The mount table escapes space, tab, newline and backslash in octal.
        let dir = dir
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\");
        if dir == "/sys/fs/cgroup" {
            return Some(dir);
        }
        first.get_or_insert(dir);
    }
    first
}

/// The socket's local address (`saddr:sport`), if the family is IPv4/IPv6.
pub fn local_addr(event: &SockEvent) -> Option<SocketAddr> {
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
/// `tcp listen closed [::]:8080`, `udp bind [::]:53`, `udp release [::]:53`.
pub fn describe(event: &SockEvent) -> String {
    let protocol = match event.protocol {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        132 => "sctp".to_owned(),
        262 => "mptcp".to_owned(),
        other => format!("protocol {other}"),
    };
    let what = match SocketEventKind::from_raw(event.kind) {
        Some(SocketEventKind::TcpState) if event.newstate == tcp_state::LISTEN => "listen",
        Some(SocketEventKind::TcpState) if event.oldstate == tcp_state::LISTEN => "listen closed",
        Some(SocketEventKind::TcpState) => "state change",
        Some(SocketEventKind::Bind) => "bind",
        Some(SocketEventKind::Release) => "release",
        Some(SocketEventKind::Listened) => return "listen() returned".to_owned(),
        None => "event",
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
        maps::{MapData, PerCpuArray, RingBuf},
        programs::{CgroupAttachMode, CgroupSock, KProbe, TracePoint},
        Ebpf,
    };
    use lima_proto::ebpf::{SockEvent, DROPPED_INDEX};
    use tokio::io::{unix::AsyncFd, Interest};

    use super::{cgroup2_mount, event_from_bytes, Attached, EventSource, MissingHooks, WatchError};

    const PROGRAM: &str = "inet_sock_set_state";
    const CATEGORY: &str = "sock";
    const TRACEPOINT: &str = "inet_sock_set_state";
    /// (program, kernel function) of the kretprobe that reports a finished
    /// TCP `listen()`.
    const LISTENED: (&str, &str) = ("listen_done", "inet_csk_listen_start");
    /// The cgroup sock programs: (program name, hook name for messages).
    /// The attach type comes from each program's ELF section.
    const CGROUP_HOOKS: [(&str, &str); 3] = [
        ("post_bind4", "cgroup/post_bind4"),
        ("post_bind6", "cgroup/post_bind6"),
        ("sock_release", "cgroup/sock_release"),
    ];
    const EVENTS_MAP: &str = "EVENTS";
    const DROPPED_MAP: &str = "DROPPED";
    /// Where aya looks for tracefs (it caches the answer on first use).
    const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

    /// The object built from `guest-ebpf` by `build.rs`.
    fn object() -> &'static [u8] {
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lima-guest-ebpf"))
    }

    /// The loaded programs and their maps. Owns the [`Ebpf`]: dropping it
    /// detaches the tracepoint and the cgroup hooks.
    pub(super) struct RingSource {
        ring: AsyncFd<RingBuf<MapData>>,
        dropped: PerCpuArray<MapData, u64>,
        _ebpf: Ebpf,
    }

    pub(super) fn attach() -> Result<Attached<RingSource>, WatchError> {
        let object = object();
        if object.is_empty() {
            return Err(WatchError::NoObject);
        }
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(object).map_err(WatchError::Load)?;
        start_ebpf_logger(&mut ebpf);

        program::<TracePoint>(&mut ebpf, PROGRAM)?
            .load()
            .map_err(|source| WatchError::Program {
                name: PROGRAM,
                source,
            })?;
        // After the load, so that a missing privilege is reported as the
        // kernel's refusal to load rather than as a failed mount.
        ensure_tracefs()?;
        attach_tracepoint(&mut ebpf, PROGRAM, CATEGORY, TRACEPOINT)?;

        let missing = attach_cgroup_hooks(&mut ebpf);
        let listened = match attach_kretprobe(&mut ebpf, LISTENED.0, LISTENED.1) {
            Ok(()) => true,
            Err(e) => {
                // Only a shortcut: new listeners are then found by re-dumping.
                tracing::info!(
                    "no kretprobe on {} ({}); new listeners are found by re-checking",
                    LISTENED.1,
                    super::error_chain(&e)
                );
                false
            }
        };

        let map = ebpf.take_map(EVENTS_MAP).ok_or(WatchError::Missing {
            kind: "map",
            name: EVENTS_MAP,
        })?;
        let ring = RingBuf::try_from(map).map_err(|source| WatchError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        let map = ebpf.take_map(DROPPED_MAP).ok_or(WatchError::Missing {
            kind: "map",
            name: DROPPED_MAP,
        })?;
        let dropped = PerCpuArray::try_from(map).map_err(|source| WatchError::Map {
            name: DROPPED_MAP,
            source,
        })?;
        // SAFETY: the RingBuf owns the map's fd (an OwnedFd in MapData) and
        // always returns that same fd; the AsyncFd owns the RingBuf, so the fd
        // stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| WatchError::Poll(e.into()))?;
        Ok(Attached {
            source: RingSource {
                ring,
                dropped,
                _ebpf: ebpf,
            },
            missing,
            listened,
        })
    }

    /// The program `name` in the object, as its type `T`.
    fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, WatchError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        ebpf.program_mut(name)
            .ok_or(WatchError::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|source| WatchError::Program { name, source })
    }

    /// Attaches the loaded tracepoint program `name` to `category:tracepoint`.
    fn attach_tracepoint(
        ebpf: &mut Ebpf,
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), WatchError> {
        program::<TracePoint>(ebpf, name)?
            .attach(category, tracepoint)
            .map_err(|source| WatchError::Attach {
                category,
                name: tracepoint,
                source,
            })?;
        Ok(())
    }

    /// Loads the kretprobe program `name` and attaches it to the kernel
    /// function `function`.
    fn attach_kretprobe(
        ebpf: &mut Ebpf,
        name: &'static str,
        function: &'static str,
    ) -> Result<(), WatchError> {
        let program = program::<KProbe>(ebpf, name)?;
        program
            .load()
            .map_err(|source| WatchError::Program { name, source })?;
        program
            .attach(function, 0)
            .map_err(|source| WatchError::Probe { function, source })?;
        Ok(())
    }

    /// Loads and attaches the cgroup sock programs to the cgroup2 root. Each
    /// one that fails is left out; the result names them and the first
    /// reason.
    fn attach_cgroup_hooks(ebpf: &mut Ebpf) -> Option<MissingHooks> {
        let all = || CGROUP_HOOKS.iter().map(|(_, hook)| *hook).collect();
        let (path, dir) = match open_cgroup2() {
            Ok(cgroup) => cgroup,
            Err(reason) => return Some(MissingHooks::new(all(), reason)),
        };
        let mut hooks = Vec::new();
        let mut reason = None;
        for (name, hook) in CGROUP_HOOKS {
            if let Err(error) = attach_cgroup_hook(ebpf, name, hook, &path, &dir) {
                hooks.push(hook);
                reason.get_or_insert(error);
            }
        }
        reason.map(|reason| MissingHooks::new(hooks, reason))
    }

    /// The cgroup2 root, opened.
    fn open_cgroup2() -> Result<(String, std::fs::File), WatchError> {
        let path = std::fs::read_to_string("/proc/self/mounts")
            .ok()
            .and_then(|mounts| cgroup2_mount(&mounts))
            .ok_or(WatchError::NoCgroup2)?;
        match std::fs::File::open(&path) {
            Ok(dir) => Ok((path, dir)),
            Err(source) => Err(WatchError::OpenCgroup { path, source }),
        }
    }

    fn attach_cgroup_hook(
        ebpf: &mut Ebpf,
        name: &'static str,
        hook: &'static str,
        path: &str,
        dir: &std::fs::File,
    ) -> Result<(), WatchError> {
        let program = program::<CgroupSock>(ebpf, name)?;
        program
            .load()
            .map_err(|source| WatchError::Program { name, source })?;
        // On 5.7+ aya attaches through a bpf_link, which always lives beside
        // other programs on the same hook (systemd's, a container
        // runtime's) and refuses any flag: AllowMultiple would fail there
        // with EINVAL. (Before 5.7 it falls back to BPF_PROG_ATTACH, where
        // Single is exclusive; our guest kernels are newer.)
        program
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|source| WatchError::AttachCgroup {
                hook,
                path: path.to_owned(),
                source,
            })?;
        Ok(())
    }

    impl EventSource for RingSource {
        async fn read(&mut self, out: &mut Vec<SockEvent>) -> io::Result<()> {
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

        fn dropped(&mut self) -> io::Result<u64> {
            let per_cpu = self
                .dropped
                .get(&DROPPED_INDEX, 0)
                .map_err(io::Error::other)?;
            Ok(per_cpu.iter().sum())
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
    use lima_proto::ebpf::SOCK_DGRAM;

    use super::*;

    fn event(
        family: u16,
        protocol: u16,
        oldstate: i32,
        newstate: i32,
        addr: &[u8],
        port: u16,
    ) -> SockEvent {
        let mut saddr = [0; 16];
        saddr[..addr.len()].copy_from_slice(addr);
        SockEvent {
            kind: KIND_TCP_STATE,
            family,
            protocol,
            oldstate,
            newstate,
            saddr,
            sport: port,
            ..Default::default()
        }
    }

    fn udp(kind: u16, family: u16, addr: &[u8], port: u16) -> SockEvent {
        let mut saddr = [0; 16];
        saddr[..addr.len()].copy_from_slice(addr);
        SockEvent {
            kind,
            family,
            protocol: IPPROTO_UDP,
            sock_type: SOCK_DGRAM,
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
    fn describes_bind_and_release() {
        let bind6 = udp(KIND_BIND, AF_INET6, &[0; 16], 9999);
        assert_eq!(describe(&bind6), "udp bind [::]:9999");
        let release4 = udp(KIND_RELEASE, AF_INET, &[127, 0, 0, 1], 53);
        assert_eq!(describe(&release4), "udp release 127.0.0.1:53");
        let tcp_bind = SockEvent {
            kind: KIND_BIND,
            protocol: IPPROTO_TCP,
            ..event(AF_INET, 6, 0, 0, &[10, 0, 2, 15], 8765)
        };
        assert_eq!(describe(&tcp_bind), "tcp bind 10.0.2.15:8765");
        let unknown = SockEvent { kind: 99, ..bind6 };
        assert_eq!(describe(&unknown), "udp event [::]:9999");
    }

    #[test]
    fn kinds_from_raw() {
        assert_eq!(
            SocketEventKind::from_raw(KIND_TCP_STATE),
            Some(SocketEventKind::TcpState)
        );
        assert_eq!(
            SocketEventKind::from_raw(KIND_BIND),
            Some(SocketEventKind::Bind)
        );
        assert_eq!(
            SocketEventKind::from_raw(KIND_RELEASE),
            Some(SocketEventKind::Release)
        );
        assert_eq!(SocketEventKind::from_raw(0), None);
    }

    #[test]
    fn decodes_ring_buffer_records() {
        let e = udp(KIND_BIND, AF_INET, &[10, 0, 2, 15], 443);
        // SAFETY: SockEvent is #[repr(C)] plain data without padding (its
        // layout is asserted in lima_proto), so all its bytes are initialized.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const SockEvent).cast::<u8>(),
                size_of::<SockEvent>(),
            )
        };
        assert_eq!(size_of::<SockEvent>(), 64);
        // The documented layout, byte by byte.
        assert_eq!(&bytes[8..10], &KIND_BIND.to_ne_bytes());
        assert_eq!(&bytes[10..12], &AF_INET.to_ne_bytes());
        assert_eq!(&bytes[12..14], &IPPROTO_UDP.to_ne_bytes());
        assert_eq!(&bytes[14..16], &SOCK_DGRAM.to_ne_bytes());
        assert_eq!(&bytes[24..26], &443u16.to_ne_bytes());
        assert_eq!(&bytes[32..36], &[10, 0, 2, 15]);
        assert_eq!(event_from_bytes(bytes), Some(e));
        assert_eq!(event_from_bytes(&bytes[..10]), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        assert_eq!(cgroup2_mount(unified).as_deref(), Some("/sys/fs/cgroup"));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let both = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n\
                    cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(both).as_deref(), Some("/sys/fs/cgroup"));
        let escaped = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(escaped).as_deref(), Some("/mnt/my cg"));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\nbad\n"), None);
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
