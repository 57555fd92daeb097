//! The port table: which sockets listen in the guest right now.
//!
//! The truth is a NETLINK_SOCK_DIAG dump ([`super::sockdiag::dump`]); what
//! changes is *when* we dump. In [`WatchMode::Ebpf`] every eBPF socket event
//! triggers a dump at once (events arriving together share one dump), with
//! one exception: a TCP LISTEN state change fires before the kernel has
//! hashed the listener, so when the `listen()` return is hooked too
//! ([`SocketEventKind::Listened`]) the dump waits for that event, which
//! comes microseconds later and usually in the same batch. An event can
//! still reach us before the socket tables show it (no return hook;
//! `sock_release` fires before the unhash), so when a dump does not yet
//! show what an event announced we dump again after 1, 4, 16, 64 and
//! 256 ms (a deferred listen starts at the 16 ms step).
//! Lost events (ring buffer drops, a lagging subscriber) also force a dump.
//! Without eBPF the table polls every second; [`WatchMode::Poll`] and
//! [`WatchMode::LimaLike`] exist so benchmarks can compare methods on one VM.
//!
//! Ports that NAT rules publish ([`super::nat`]) join the listeners in the
//! set the host sees; a forwarded connection to one of them goes to the
//! rule's destination ([`PortTable::target`]).
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lima_proto::{GuestPort, PortProto, WatchMode};
use tokio::sync::{broadcast, watch};

use super::events::SocketEventKind;
use super::nat::NatSnapshot;
use super::watcher::{WatchEvent, Watcher};

pub type PortSet = Arc<BTreeSet<GuestPort>>;

/// Shared handle: the current set, and the mode switch.
#[derive(Clone)]
pub struct PortTable {
    /// Listeners and NAT publications: what the host forwards.
    current: watch::Receiver<PortSet>,
    /// Listeners only (sock_diag).
    listeners: watch::Receiver<PortSet>,
    nat: watch::Receiver<NatSnapshot>,
    mode: watch::Sender<WatchMode>,
    mode_text: watch::Receiver<String>,
    ebpf: bool,
}

const RETRY_DELAYS_MS: [u64; 5] = [1, 4, 16, 64, 256];
const FALLBACK_POLL: Duration = Duration::from_secs(1);

fn dump() -> BTreeSet<GuestPort> {
    match super::sockdiag::dump() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sock_diag dump failed: {e}");
            BTreeSet::new()
        }
    }
}

/// Which protocols a batch of events needs dumped afresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Scope {
    tcp: bool,
    udp: bool,
}

impl Scope {
    const ALL: Scope = Scope {
        tcp: true,
        udp: true,
    };

    fn add(&mut self, proto: PortProto) {
        match proto {
            PortProto::Tcp => self.tcp = true,
            PortProto::Udp => self.udp = true,
        }
    }

    fn any(self) -> bool {
        self.tcp || self.udp
    }

    fn covers(self, proto: PortProto) -> bool {
        match proto {
            PortProto::Tcp => self.tcp,
            PortProto::Udp => self.udp,
        }
    }

    /// `current` with the protocols in scope replaced by a fresh dump of
    /// them.
    fn refresh(self, current: &BTreeSet<GuestPort>) -> BTreeSet<GuestPort> {
        if self == Scope::ALL {
            return dump();
        }
        let protocols: Vec<PortProto> = [PortProto::Tcp, PortProto::Udp]
            .into_iter()
            .filter(|p| self.covers(*p))
            .collect();
        match super::sockdiag::dump_protocols(&protocols) {
            Ok(fresh) => current
                .iter()
                .filter(|p| !self.covers(p.proto))
                .copied()
                .chain(fresh)
                .collect(),
            Err(e) => {
                tracing::warn!("sock_diag dump failed: {e}");
                current.clone()
            }
        }
    }
}

/// Which protocols an eBPF event can change in the table. A TCP `bind()`
/// changes nothing (the listener appears with its LISTEN event).
fn scope_of(kind: SocketEventKind, ev: &lima_proto::ebpf::SockEvent) -> Option<PortProto> {
    use lima_proto::ebpf::IPPROTO_UDP;
    match kind {
        SocketEventKind::TcpState | SocketEventKind::Listened => Some(PortProto::Tcp),
        SocketEventKind::Bind | SocketEventKind::Release if ev.protocol == IPPROTO_UDP => {
            Some(PortProto::Udp)
        }
        SocketEventKind::Bind | SocketEventKind::Release => None,
    }
}

impl PortTable {
    pub fn start(watcher: &Watcher) -> Self {
        let initial: PortSet = Arc::new(dump());
        let (tx, listeners) = watch::channel(initial);
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
        let partial = matches!(watcher.status, super::watcher::WatcherStatus::Partial(_));
        tokio::spawn(run(
            events,
            mode_rx,
            tx,
            text_tx,
            status,
            partial,
            watcher.listened,
        ));
        let nat = super::nat::start();
        let current = merged(listeners.clone(), nat.clone());
        PortTable {
            current,
            listeners,
            nat,
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
        self.listeners.borrow().contains(port) || dump().contains(port)
    }

    /// Where a forwarded connection to `port` may go: the security rule.
    /// A listener is dialed itself; a port only a current NAT rule
    /// publishes, at the rule's destination; anything else is refused.
    pub fn target(&self, port: &GuestPort) -> Option<Target> {
        if self.is_listening(port) {
            return Some(Target::Listener);
        }
        let nat = self.nat.borrow();
        nat.publications
            .get(port)
            .map(|p| Target::Published(p.destination))
    }

    /// The NAT watcher's state, and its changes.
    pub fn nat(&self) -> watch::Receiver<NatSnapshot> {
        self.nat.clone()
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

/// Where a forwarded connection goes ([`PortTable::target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The listening socket itself.
    Listener,
    /// A NAT rule's destination (a container's address and port).
    Published(std::net::SocketAddr),
}

/// Listeners and NAT publications in one set.
fn union(listeners: &BTreeSet<GuestPort>, nat: &super::nat::NatState) -> BTreeSet<GuestPort> {
    listeners
        .iter()
        .chain(nat.publications.keys())
        .copied()
        .collect()
}

/// A set kept equal to the union of the two, by a task of its own.
fn merged(
    mut listeners: watch::Receiver<PortSet>,
    mut nat: watch::Receiver<NatSnapshot>,
) -> watch::Receiver<PortSet> {
    let first = union(&listeners.borrow_and_update(), &nat.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let (mut l_open, mut n_open) = (true, true);
        while l_open || n_open {
            tokio::select! {
                r = listeners.changed(), if l_open => l_open = r.is_ok(),
                r = nat.changed(), if n_open => n_open = r.is_ok(),
            }
            let set = union(&listeners.borrow_and_update(), &nat.borrow_and_update());
            tx.send_if_modified(|cur| {
                if **cur == set {
                    false
                } else {
                    *cur = Arc::new(set);
                    true
                }
            });
        }
    });
    rx
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

/// An event a dump did not reflect yet, re-checked on every dump and at
/// its own deadline until it shows or its retries run out.
struct Pending {
    expect: Expect,
    /// The table before the event (for `Expect::Listen(0)`).
    before: BTreeSet<GuestPort>,
    /// Index into [`RETRY_DELAYS_MS`] of the next delay.
    attempt: usize,
    deadline: tokio::time::Instant,
}

impl Pending {
    fn new(expect: Expect, before: BTreeSet<GuestPort>, attempt: usize) -> Self {
        Pending {
            expect,
            before,
            attempt,
            deadline: tokio::time::Instant::now() + Duration::from_millis(RETRY_DELAYS_MS[attempt]),
        }
    }
}

/// Drops the pending checks `now` satisfies, and those past their deadline
/// with no retries left; moves the deadline of the rest that are due.
fn recheck(pending: &mut Vec<Pending>, now: &BTreeSet<GuestPort>) {
    let t = tokio::time::Instant::now();
    pending.retain_mut(|p| {
        if satisfied(p.expect, &p.before, now) {
            return false;
        }
        if p.deadline > t {
            return true;
        }
        p.attempt += 1;
        match RETRY_DELAYS_MS.get(p.attempt) {
            Some(ms) => {
                p.deadline = t + Duration::from_millis(*ms);
                true
            }
            None => false,
        }
    });
}

async fn run(
    mut events: Option<broadcast::Receiver<WatchEvent>>,
    mut mode_rx: watch::Receiver<WatchMode>,
    tx: watch::Sender<PortSet>,
    text_tx: watch::Sender<String>,
    status: String,
    partial: bool,
    listened: bool,
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
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let tick = match mode {
            WatchMode::Ebpf if partial => Some(FALLBACK_POLL),
            WatchMode::Ebpf => None,
            WatchMode::Poll { interval_ms } | WatchMode::LimaLike { interval_ms } => {
                Some(Duration::from_millis(interval_ms.max(10) as u64))
            }
        };
        let next_retry = pending.iter().map(|p| p.deadline).min();
        let wake = match (tick.map(|d| tokio::time::Instant::now() + d), next_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
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
                let mut scope = Scope::default();
                let mut expects = Vec::new();
                for ev in batch {
                    match ev {
                        Ok(WatchEvent::Socket { kind, event }) => match mode {
                            WatchMode::Ebpf => {
                                let expect = expectation(kind, &event);
                                // A new listener is not in the tables until
                                // listen() returns; with that hook, its own
                                // event triggers the dump.
                                let deferred = listened && matches!(expect, Expect::Listen(_));
                                if let Some(proto) = scope_of(kind, &event).filter(|_| !deferred) {
                                    scope.add(proto);
                                }
                                expects.push((expect, deferred));
                            }
                            // Lima rescans everything on every bind() return.
                            WatchMode::LimaLike { .. } if kind == SocketEventKind::Bind => scope = Scope::ALL,
                            _ => {}
                        },
                        Ok(WatchEvent::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            tracing::debug!("socket events lost; full dump");
                            if !matches!(mode, WatchMode::Poll { .. }) {
                                scope = Scope::ALL;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            tracing::warn!("eBPF events stopped; polling sock_diag every second");
                            events = None;
                            mode = WatchMode::Poll { interval_ms: FALLBACK_POLL.as_millis() as u32 };
                            text_tx.send_replace(format!("polling sock_diag every second (eBPF events stopped; {status})"));
                            scope = Scope::ALL;
                        }
                    }
                }
                let before = tx.borrow().as_ref().clone();
                let now = scope.any().then(|| scope.refresh(&before));
                for (expect, deferred) in expects {
                    let seen = now.as_ref().is_some_and(|now| satisfied(expect, &before, now));
                    if !seen && !matches!(expect, Expect::Nothing) {
                        // Deferred: the listen() return normally comes within
                        // microseconds; the later retries are a safety net.
                        pending.push(Pending::new(expect, before.clone(), if deferred { 2 } else { 0 }));
                    }
                }
                if let Some(now) = now {
                    recheck(&mut pending, &now);
                    publish(now);
                }
            }
            _ = sleep => {
                let now = dump();
                recheck(&mut pending, &now);
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

    fn event(protocol: u16) -> lima_proto::ebpf::SockEvent {
        lima_proto::ebpf::SockEvent {
            protocol,
            ..Default::default()
        }
    }

    #[test]
    fn events_dump_only_the_protocol_they_can_change() {
        use lima_proto::ebpf::{IPPROTO_TCP, IPPROTO_UDP};
        use SocketEventKind::*;
        assert_eq!(scope_of(Bind, &event(IPPROTO_TCP)), None);
        assert_eq!(scope_of(Bind, &event(IPPROTO_UDP)), Some(PortProto::Udp));
        assert_eq!(scope_of(Release, &event(IPPROTO_UDP)), Some(PortProto::Udp));
        assert_eq!(
            scope_of(TcpState, &event(IPPROTO_TCP)),
            Some(PortProto::Tcp)
        );
        assert_eq!(scope_of(Listened, &event(0)), Some(PortProto::Tcp));
    }

    #[test]
    fn a_partial_refresh_keeps_the_other_protocol() {
        // Whatever this host has listening, a TCP-only refresh must keep a
        // UDP entry it did not dump, and drop a TCP entry nobody holds.
        let udp = p(PortProto::Udp, 1);
        let gone_tcp = GuestPort {
            proto: PortProto::Tcp,
            ip: "192.0.2.1".parse().unwrap(),
            port: 1,
        };
        let before: BTreeSet<_> = [udp, gone_tcp].into();
        let tcp_only = Scope {
            tcp: true,
            udp: false,
        };
        let after = tcp_only.refresh(&before);
        assert!(after.contains(&udp));
        assert!(!after.contains(&gone_tcp));
        assert!(after
            .iter()
            .all(|q| q.proto == PortProto::Tcp || before.contains(q)));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_checks_retry_then_give_up() {
        let empty = BTreeSet::new();
        let with80: BTreeSet<_> = [p(PortProto::Tcp, 80)].into();
        let mut pending = vec![Pending::new(Expect::Listen(80), empty.clone(), 0)];
        // Not due yet and not satisfied: kept as it is.
        recheck(&mut pending, &empty);
        assert_eq!(pending[0].attempt, 0);
        // Due: moves on to the next delay.
        tokio::time::advance(Duration::from_millis(RETRY_DELAYS_MS[0])).await;
        recheck(&mut pending, &empty);
        assert_eq!(pending[0].attempt, 1);
        // Satisfied by any dump: gone.
        recheck(&mut pending, &with80);
        assert!(pending.is_empty());
        // Never satisfied: dropped after the last delay.
        let mut pending = vec![Pending::new(Expect::Listen(80), empty.clone(), 0)];
        for ms in RETRY_DELAYS_MS {
            assert_eq!(pending.len(), 1);
            tokio::time::advance(Duration::from_millis(ms)).await;
            recheck(&mut pending, &empty);
        }
        assert!(pending.is_empty());
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
