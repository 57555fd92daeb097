//! The host end of port forwarding, run by the host agent.
//!
//! It follows the guest's Events stream (what listens in the guest), decides
//! per listener with the `portForwards` rules, binds the host side, and for
//! every accepted host connection (or new UDP peer) opens its own vsock
//! Forward stream to the guest agent. Listeners close when the guest port
//! closes. The state is written to `ports.json` for `limactl list`.
//!
//! Ports that a NAT rule alone publishes in the guest (a container engine
//! without a userland proxy) come as listeners too; `GuestEvent::Published`
//! says which, so a host port that is taken is reported with the container
//! that publishes it. A host port that could not be bound is tried again
//! every [`RETRY_BIND`] until it is free (or the guest port goes).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::{
    read_frame_async, write_frame_async, Datagram, ForwardReply, ForwardRequest, GuestEvent,
    GuestPort, HostEvent, NatPublication, NatReport, PortProto, Purpose, Subscribe,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::client;
use crate::events::{emit, Event};
use crate::portfwd::{decide, Decision, Rule};
use crate::vsock::{BoxStream, Transport};

/// How long a UDP peer's session lives without traffic.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// How often a host port that something else holds is tried again, while
/// it does (a bind on the host; the guest does nothing for it).
pub const RETRY_BIND: Duration = Duration::from_secs(1);

/// One line of `ports.json` / `limactl list --format json` `forwards`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForwardInfo {
    pub proto: String,
    pub guest: String,
    pub host: String,
    pub rule: String,
    /// "forwarding", or why not.
    pub status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PortsFile {
    /// How the guest detects listeners ("ebpf", or the polling fallback).
    pub watcher: String,
    pub forwards: Vec<ForwardInfo>,
    /// How the guest detects ports published by NAT rules alone, and how
    /// many times it read the rules (it must not while idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatStatus>,
    /// Daemons the guest agent supervises (container engines) → their
    /// state line, as last reported.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, String>,
}

/// `ports.json` `nat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NatStatus {
    pub watcher: String,
    pub dumps: u64,
}

struct HostListener {
    /// Guest listeners that map to this host address (e.g. 0.0.0.0:80 and [::]:80).
    sources: Arc<Mutex<BTreeSet<GuestPort>>>,
    task: JoinHandle<()>,
    rule: String,
}

struct State {
    listeners: BTreeMap<(PortProto, SocketAddr), HostListener>,
    /// Guest ports that could not be forwarded, with the reason.
    failed: BTreeMap<GuestPort, ForwardInfo>,
    watcher: String,
    /// The guest's NAT watcher, and the ports NAT rules publish.
    nat: Option<NatReport>,
    /// Daemons the guest agent supervises → their state line.
    services: BTreeMap<String, String>,
}

impl State {
    fn published(&self, p: &GuestPort) -> Option<&NatPublication> {
        self.nat
            .as_ref()?
            .publications
            .iter()
            .find(|n| n.port == *p)
    }
}

/// "the container web (172.17.0.2:80)", or its address alone.
fn publisher(n: &NatPublication) -> String {
    match &n.container {
        Some(name) => format!("the container {name} ({})", n.destination),
        None => format!("a container at {} (NAT rule {})", n.destination, n.rule),
    }
}

/// Runs forwarding for one instance until the task is dropped. `unix_paths`
/// collects host socket paths to remove when the host agent exits.
pub async fn run(
    transport: Arc<dyn Transport>,
    rules: Vec<Rule>,
    dir: PathBuf,
    unix_paths: Arc<Mutex<Vec<PathBuf>>>,
    kick: Arc<tokio::sync::Notify>,
    owner: (u32, u32),
) {
    let events = dir.join(crate::instance::HA_EVENTS);
    let ports_file = dir.join(crate::instance::PORTS_FILE);
    let mut unix_sockets = Vec::new();
    let reverse: Vec<(String, PathBuf)> = rules
        .iter()
        .filter(|r| r.reverse)
        .filter_map(|r| r.sockets.clone())
        .collect();
    for rule in rules.iter().filter(|r| !r.reverse) {
        if let Some((guest, host)) = &rule.sockets {
            unix_sockets.push(guest.clone());
            tokio::spawn(forward_unix_when_ready(
                transport.clone(),
                guest.clone(),
                host.clone(),
                rule.name(),
                events.clone(),
                unix_paths.clone(),
                kick.clone(),
            ));
        }
    }
    let mut state = State {
        listeners: BTreeMap::new(),
        failed: BTreeMap::new(),
        watcher: String::new(),
        nat: None,
        services: BTreeMap::new(),
    };
    loop {
        if let Err(e) = follow(
            &transport,
            &rules,
            (&unix_sockets, &reverse, owner),
            &mut state,
            &events,
            &ports_file,
        )
        .await
        {
            tracing::warn!("guest events stream ended: {e:#}; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn warn(events: &Path, message: String) {
    tracing::warn!("{message}");
    emit(events, Event::Warning { message });
}

/// Guest sockets forwarded to the host, reverse ones (guest, host) and
/// the guest user they belong to.
type Sockets<'a> = (&'a [String], &'a [(String, PathBuf)], (u32, u32));

async fn follow(
    transport: &Arc<dyn Transport>,
    rules: &[Rule],
    (unix_sockets, reverse, owner): Sockets<'_>,
    state: &mut State,
    events: &Path,
    ports_file: &Path,
) -> anyhow::Result<()> {
    let (stream, _) = client::connect(transport.as_ref(), Purpose::Events).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    write_frame_async(
        &mut wr,
        &Subscribe {
            unix_sockets: unix_sockets.to_vec(),
            reverse_sockets: reverse.iter().map(|(g, _)| g.clone()).collect(),
            owner,
        },
    )
    .await?;
    // Frames are read by a task of their own (a frame read is not
    // cancel-safe), so that retrying taken host ports can wait beside it.
    let (tx, mut frames) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame_async::<_, GuestEvent>(&mut rd).await;
            let end = !matches!(frame, Ok(Some(_)));
            if tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let _stop_reader = AbortOnDrop(reader);
    loop {
        // Only ports taken by something else can become free.
        let taken: Vec<GuestPort> = state
            .failed
            .iter()
            .filter(|(_, f)| f.status.contains(" is already in use"))
            .map(|(p, _)| *p)
            .collect();
        let retry = async {
            if taken.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY_BIND).await;
        };
        let ev = tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(Some(ev))) => ev,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => return Ok(()),
            },
            () = retry => {
                for p in taken {
                    if let Some(host) = add(state, rules, transport, p, events, true) {
                        tracing::info!("host {host}/{} is free now: forwarding guest {p}", p.proto);
                        let ready = HostEvent::ForwardReady { port: p, host: host.to_string() };
                        let _ = write_frame_async(&mut wr, &ready).await;
                    }
                }
                write_ports_file(state, ports_file);
                continue;
            }
        };
        match ev {
            GuestEvent::Watcher(text) => {
                tracing::info!("guest port watcher: {text}");
                state.watcher = text;
            }
            GuestEvent::Published(report) => {
                if state.nat.as_ref().map(|n| &n.watcher) != Some(&report.watcher) {
                    tracing::info!("guest NAT watcher: {}", report.watcher);
                }
                let before = state.nat.replace(report);
                name_taken(state, before.as_ref(), events);
            }
            GuestEvent::Service { name, state: line } => {
                tracing::info!("guest service {name}: {line}");
                emit(
                    events,
                    Event::Service {
                        name: name.clone(),
                        state: line.clone(),
                    },
                );
                state.services.insert(name, line);
            }
            GuestEvent::ReverseConnection { socket, conn } => {
                if let Some((guest, host)) = reverse.get(socket as usize) {
                    tokio::spawn(reverse_connection(
                        transport.clone(),
                        conn,
                        guest.clone(),
                        host.clone(),
                    ));
                }
            }
            GuestEvent::Ports {
                full,
                added,
                removed,
            } => {
                let mut gone = removed;
                if full {
                    // Everything not in the full set is gone.
                    let now: BTreeSet<GuestPort> = added.iter().copied().collect();
                    for l in state.listeners.values() {
                        gone.extend(
                            l.sources
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .iter()
                                .filter(|p| !now.contains(p)),
                        );
                    }
                    state.failed.retain(|p, _| now.contains(p));
                }
                for p in gone {
                    remove(state, &p);
                }
                for p in added {
                    if let Some(host) = add(state, rules, transport, p, events, false) {
                        let _ = write_frame_async(
                            &mut wr,
                            &HostEvent::ForwardReady {
                                port: p,
                                host: host.to_string(),
                            },
                        )
                        .await;
                    }
                }
            }
        }
        write_ports_file(state, ports_file);
    }
}

/// A taken host port whose container the guest has just named (the engine
/// lists a container only once it has started, after its NAT rule): the
/// status and one more warning say which container it is.
fn name_taken(state: &mut State, before: Option<&NatReport>, events: &Path) {
    let named_before = |p: &GuestPort| {
        before.is_some_and(|b| {
            b.publications
                .iter()
                .any(|n| n.port == *p && n.container.is_some())
        })
    };
    let newly: Vec<(GuestPort, NatPublication)> = state
        .failed
        .keys()
        .filter(|p| !named_before(p))
        .filter_map(|p| {
            state
                .published(p)
                .filter(|n| n.container.is_some())
                .map(|n| (*p, n.clone()))
        })
        .collect();
    for (p, n) in newly {
        let Some(info) = state.failed.get_mut(&p) else {
            continue;
        };
        let why = info
            .status
            .split(" (published by")
            .next()
            .unwrap_or_default()
            .to_string();
        info.status = format!("{why} (published by {})", publisher(&n));
        warn(
            events,
            format!(
                "{why}; guest {p} is published by {}, and is forwarded once the host port is free",
                publisher(&n)
            ),
        );
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn remove(state: &mut State, p: &GuestPort) {
    state.failed.remove(p);
    let mut emptied = Vec::new();
    for (key, l) in &state.listeners {
        let mut sources = l.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.remove(p) && sources.is_empty() {
            emptied.push(*key);
        }
    }
    for key in emptied {
        if let Some(l) = state.listeners.remove(&key) {
            l.task.abort();
            tracing::info!("stopped forwarding {} {} (guest {p} closed)", key.0, key.1);
        }
    }
}

/// Starts forwarding `p` if a rule says so; returns the host address.
/// `retry`: `p` failed before and was reported then; a new failure is not
/// reported again.
fn add(
    state: &mut State,
    rules: &[Rule],
    transport: &Arc<dyn Transport>,
    p: GuestPort,
    events: &Path,
    retry: bool,
) -> Option<SocketAddr> {
    let (host, rule) = match decide(rules, &p) {
        Decision::Forward { host, rule } => (host, rule),
        Decision::Ignore { rule } => {
            tracing::info!("not forwarding guest {p}: ignored by {}", rule.name());
            return None;
        }
        Decision::None => {
            tracing::debug!("not forwarding guest {p}: no rule matches");
            return None;
        }
    };
    if let Some(l) = state.listeners.get(&(p.proto, host)) {
        l.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p);
        state.failed.remove(&p);
        return Some(host);
    }
    let sources = Arc::new(Mutex::new(BTreeSet::from([p])));
    let bound = match p.proto {
        PortProto::Tcp => std_tcp_listener(host)
            .map(|l| tokio::spawn(accept_tcp(l, transport.clone(), sources.clone()))),
        PortProto::Udp => std_udp_socket(host)
            .map(|s| tokio::spawn(relay_udp(s, transport.clone(), sources.clone()))),
    };
    match bound {
        Ok(task) => {
            state.failed.remove(&p);
            tracing::info!("forwarding guest {p} to host {host} ({})", rule.name());
            state.listeners.insert(
                (p.proto, host),
                HostListener {
                    sources,
                    task,
                    rule: rule.name(),
                },
            );
            Some(host)
        }
        Err(e) => {
            let mut why = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("host port {host}/{} is already in use", p.proto)
            } else {
                format!("cannot listen on host {host}/{}: {e}", p.proto)
            };
            let guest = match state.published(&p) {
                Some(n) => format!("guest {p}, published by {},", publisher(n)),
                None => format!("guest {p}"),
            };
            if !retry {
                warn(
                    events,
                    format!(
                        "{why}; {guest} (matched {}) is not forwarded until the host port is free",
                        rule.name()
                    ),
                );
            }
            if let Some(n) = state.published(&p) {
                why = format!("{why} (published by {})", publisher(n));
            }
            state.failed.insert(
                p,
                ForwardInfo {
                    proto: p.proto.to_string(),
                    guest: p.to_string(),
                    host: host.to_string(),
                    rule: rule.name(),
                    status: why,
                },
            );
            None
        }
    }
}

fn std_tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

fn std_udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s)
}

/// Makes the host socket of a `guestSocket` rule once the guest socket
/// accepts a connection, so a client never finds a host socket that leads
/// nowhere (a container engine's socket appears once the engine answers:
/// see the guest agent's `services.rs`). The guest is asked again after a
/// pause that grows to [`UNIX_PROBE_MAX`]; the host socket is mode 0600.
async fn forward_unix_when_ready(
    transport: Arc<dyn Transport>,
    guest: String,
    host: PathBuf,
    rule: String,
    events: PathBuf,
    unix_paths: Arc<Mutex<Vec<PathBuf>>>,
    kick: Arc<tokio::sync::Notify>,
) {
    let mut pause = UNIX_PROBE_START;
    loop {
        let probe = open_forward(
            transport.as_ref(),
            ForwardRequest::Unix {
                path: guest.clone(),
            },
        )
        .await;
        if probe.is_some() {
            break;
        }
        // A kick (see [`settle_unix`]) asks again at once.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = kick.notified() => {}
        }
        pause = (pause * 2).min(UNIX_PROBE_MAX);
    }
    match bind_unix(&host) {
        Ok(l) => {
            unix_paths
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(host.clone());
            tracing::info!("forwarding guest {guest} to host {}", host.display());
            accept_unix(l, transport, guest).await;
        }
        Err(e) => warn(
            &events,
            format!("cannot listen on {} ({rule}): {e}", host.display()),
        ),
    }
}

/// Before the host agent says `running` (after provisioning, which may
/// have started the engine behind a `guestSocket`): each rule's guest
/// socket that accepts now gets its host socket before this returns (or
/// within [`SETTLE_LIMIT`]), so `limactl start && docker ...` works.
pub async fn settle_unix(
    transport: &dyn Transport,
    rules: &[Rule],
    unix_paths: &Mutex<Vec<PathBuf>>,
    kick: &tokio::sync::Notify,
) {
    let bound = |host: &PathBuf| {
        unix_paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(host)
    };
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    let forwarded = rules.iter().filter(|r| !r.reverse);
    for (guest, host) in forwarded.filter_map(|r| r.sockets.as_ref()) {
        if bound(host) {
            continue;
        }
        let req = ForwardRequest::Unix {
            path: guest.clone(),
        };
        if open_forward(transport, req).await.is_none() {
            continue;
        }
        while !bound(host) && tokio::time::Instant::now() < deadline {
            kick.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const SETTLE_LIMIT: Duration = Duration::from_secs(5);
const UNIX_PROBE_START: Duration = Duration::from_millis(100);
const UNIX_PROBE_MAX: Duration = Duration::from_secs(2);

/// Binds `path` (replacing a stale socket) with mode 0600: only its owner
/// may reach the guest through it.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let l = bind_unix_any_mode(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn bind_unix_any_mode(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A stale socket from a crashed run; refuse to replace anything else.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
    }
    tokio::net::UnixListener::bind(path)
}

/// Opens a Forward stream and sends the request; `None` if the guest refused.
async fn open_forward(transport: &dyn Transport, req: ForwardRequest) -> Option<BoxStream> {
    let (mut s, _) = client::connect(transport, Purpose::Forward).await.ok()?;
    write_frame_async(&mut s, &req).await.ok()?;
    match read_frame_async::<_, ForwardReply>(&mut s).await {
        Ok(Some(ForwardReply::Ok)) => Some(s),
        Ok(Some(ForwardReply::Refused(why))) => {
            tracing::debug!("guest refused {req:?}: {why}");
            None
        }
        _ => None,
    }
}

fn pick(sources: &Mutex<BTreeSet<GuestPort>>) -> Option<GuestPort> {
    sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .next()
        .copied()
}

async fn accept_tcp(
    l: tokio::net::TcpListener,
    transport: Arc<dyn Transport>,
    sources: Arc<Mutex<BTreeSet<GuestPort>>>,
) {
    loop {
        let Ok((conn, _)) = l.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let Some(target) = pick(&sources) else { return };
        let transport = transport.clone();
        tokio::spawn(async move {
            if let Some(s) = open_forward(
                transport.as_ref(),
                ForwardRequest::Tcp {
                    ip: target.ip,
                    port: target.port,
                },
            )
            .await
            {
                let _ = lima_proto::relay::relay(conn, s).await;
            }
        });
    }
}

/// A guest program connected to a reverse socket: the host socket is
/// dialled and the guest's connection claimed. When the host socket does
/// not answer the claimed connection is closed, so the guest program sees
/// the end at once instead of waiting.
async fn reverse_connection(
    transport: Arc<dyn Transport>,
    conn: u64,
    guest: String,
    host: PathBuf,
) {
    let dialled = tokio::net::UnixStream::connect(&host).await;
    let claimed = open_forward(transport.as_ref(), ForwardRequest::Reverse { conn }).await;
    match (dialled, claimed) {
        (Ok(h), Some(g)) => {
            let _ = lima_proto::relay::relay(h, g).await;
        }
        (Err(e), _) => {
            tracing::warn!(
                "reverse socket {guest}: cannot connect to {}: {e}",
                host.display()
            )
        }
        (Ok(_), None) => tracing::debug!("reverse socket {guest}: connection {conn} is gone"),
    }
}

async fn accept_unix(l: tokio::net::UnixListener, transport: Arc<dyn Transport>, guest: String) {
    loop {
        let Ok((conn, _)) = l.accept().await else {
            continue;
        };
        let transport = transport.clone();
        let path = guest.clone();
        tokio::spawn(async move {
            if let Some(s) = open_forward(transport.as_ref(), ForwardRequest::Unix { path }).await {
                let _ = lima_proto::relay::relay(conn, s).await;
            }
        });
    }
}

/// One host UDP socket; one guest session per peer address.
async fn relay_udp(
    sock: tokio::net::UdpSocket,
    transport: Arc<dyn Transport>,
    sources: Arc<Mutex<BTreeSet<GuestPort>>>,
) {
    let sock = Arc::new(sock);
    let sessions: Arc<Mutex<HashMap<SocketAddr, tokio::sync::mpsc::Sender<Vec<u8>>>>> =
        Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let data = buf[..n].to_vec();
        let existing = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned();
        if let Some(tx) = existing {
            if tx.try_send(data).is_ok() {
                continue;
            }
            // The session ended or is full: drop the datagram (UDP semantics).
            continue;
        }
        let Some(target) = pick(&sources) else { return };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let _ = tx.try_send(data);
        sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, tx);
        let (sock, transport, sessions) = (sock.clone(), transport.clone(), sessions.clone());
        tokio::spawn(async move {
            udp_session(&sock, transport.as_ref(), target, peer, rx).await;
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&peer);
        });
    }
}

async fn udp_session(
    sock: &tokio::net::UdpSocket,
    transport: &dyn Transport,
    target: GuestPort,
    peer: SocketAddr,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let Some(s) = open_forward(
        transport,
        ForwardRequest::Udp {
            ip: target.ip,
            port: target.port,
        },
    )
    .await
    else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(s);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(d) => if write_frame_async(&mut wr, &Datagram(d)).await.is_err() { return },
                None => return,
            },
            back = read_frame_async::<_, Datagram>(&mut rd) => match back {
                Ok(Some(Datagram(d))) => { let _ = sock.send_to(&d, peer).await; }
                _ => return,
            },
            _ = tokio::time::sleep(UDP_IDLE) => return,
        }
    }
}

fn write_ports_file(state: &State, path: &Path) {
    let mut forwards: Vec<ForwardInfo> = Vec::new();
    for ((proto, host), l) in &state.listeners {
        for g in l.sources.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            forwards.push(ForwardInfo {
                proto: proto.to_string(),
                guest: g.to_string(),
                host: host.to_string(),
                rule: l.rule.clone(),
                status: "forwarding".into(),
            });
        }
    }
    forwards.extend(state.failed.values().cloned());
    let file = PortsFile {
        watcher: state.watcher.clone(),
        forwards,
        nat: state.nat.as_ref().map(|n| NatStatus {
            watcher: n.watcher.clone(),
            dumps: n.dumps,
        }),
        services: state.services.clone(),
    };
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&file).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::read_all;

    fn state_with(nat: Option<NatReport>) -> State {
        State {
            listeners: BTreeMap::new(),
            failed: BTreeMap::new(),
            watcher: String::new(),
            nat,
            services: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_taken_port_names_the_publisher_and_is_forwarded_once_free() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("ha.events.jsonl");
        let rules = crate::portfwd::resolve(&[], dir.path()).unwrap();
        // Never dialed: nothing connects in this test.
        let transport: Arc<dyn Transport> = Arc::new(crate::vsock::Hybrid {
            path: dir.path().join("none.sock"),
        });
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = blocker.local_addr().unwrap().port();
        let p = GuestPort {
            proto: PortProto::Tcp,
            ip: "0.0.0.0".parse().unwrap(),
            port,
        };
        let mut state = state_with(Some(NatReport {
            watcher: "nftables notifications".into(),
            dumps: 2,
            publications: vec![NatPublication {
                port: p,
                destination: "172.17.0.2:80".parse().unwrap(),
                rule: "ip nat DOCKER".into(),
                container: None,
            }],
        }));

        assert_eq!(add(&mut state, &rules, &transport, p, &events, false), None);
        let warnings: Vec<String> = read_all(&events)
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Warning { message } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(
            w.contains(&format!("host port 127.0.0.1:{port}/tcp is already in use"))
                && w.contains("a container at 172.17.0.2:80 (NAT rule ip nat DOCKER)"),
            "{w}"
        );
        let status = &state.failed[&p].status;
        assert!(
            status.contains("already in use") && status.contains("172.17.0.2:80"),
            "{status}"
        );

        // Still taken: tried again without a second warning.
        assert_eq!(add(&mut state, &rules, &transport, p, &events, true), None);
        assert_eq!(read_all(&events).len(), 1);

        // Freed: forwarded, and no longer listed as failed.
        drop(blocker);
        let host = add(&mut state, &rules, &transport, p, &events, true);
        assert_eq!(host, Some(format!("127.0.0.1:{port}").parse().unwrap()));
        assert!(state.failed.is_empty());
        let file = dir.path().join("ports.json");
        write_ports_file(&state, &file);
        let written: PortsFile = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written.forwards.len(), 1);
        assert_eq!(written.forwards[0].status, "forwarding");
        assert_eq!(
            written.nat,
            Some(NatStatus {
                watcher: "nftables notifications".into(),
                dumps: 2
            })
        );
        remove(&mut state, &p);
        assert!(state.listeners.is_empty());
    }

    #[tokio::test]
    async fn a_name_learned_later_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("ha.events.jsonl");
        let rules = crate::portfwd::resolve(&[], dir.path()).unwrap();
        let transport: Arc<dyn Transport> = Arc::new(crate::vsock::Hybrid {
            path: dir.path().join("none.sock"),
        });
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = blocker.local_addr().unwrap().port();
        let p = GuestPort {
            proto: PortProto::Tcp,
            ip: "0.0.0.0".parse().unwrap(),
            port,
        };
        let report = |container: Option<&str>| NatReport {
            watcher: "nftables notifications".into(),
            dumps: 2,
            publications: vec![NatPublication {
                port: p,
                destination: "172.17.0.2:80".parse().unwrap(),
                rule: "ip nat DOCKER".into(),
                container: container.map(str::to_string),
            }],
        };
        let mut state = state_with(Some(report(None)));
        assert_eq!(add(&mut state, &rules, &transport, p, &events, false), None);
        let before = state.nat.replace(report(Some("web")));
        name_taken(&mut state, before.as_ref(), &events);
        let before = state.nat.replace(report(Some("web")));
        name_taken(&mut state, before.as_ref(), &events);
        let warnings: Vec<String> = read_all(&events)
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Warning { message } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[1].starts_with(&format!(
                "host port 127.0.0.1:{port}/tcp is already in use; "
            )) && warnings[1].contains("published by the container web (172.17.0.2:80)"),
            "{}",
            warnings[1]
        );
        assert_eq!(
            state.failed[&p].status,
            format!(
                "host port 127.0.0.1:{port}/tcp is already in use (published by the container \
                 web (172.17.0.2:80))"
            )
        );
        drop(blocker);
    }
}
