//! The host end of port forwarding, run by the host agent.
//!
//! It follows the guest's Events stream (what listens in the guest), decides
//! per listener with the `portForwards` rules, binds the host side, and for
//! every accepted host connection (or new UDP peer) opens its own vsock
//! Forward stream to the guest agent. Listeners close when the guest port
//! closes. The state is written to `ports.json` for `limactl list`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::{
    read_frame_async, write_frame_async, Datagram, ForwardReply, ForwardRequest, GuestEvent,
    GuestPort, HostEvent, PortProto, Purpose, Subscribe,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::client;
use crate::events::{emit, Event};
use crate::portfwd::{decide, Decision, Rule};
use crate::vsock::{BoxStream, Transport};

/// How long a UDP peer's session lives without traffic.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

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
    /// Daemons the guest agent supervises (container engines) → their
    /// state line, as last reported.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, String>,
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
    /// Daemons the guest agent supervises → their state line.
    services: BTreeMap<String, String>,
}

/// Runs forwarding for one instance until the task is dropped. `unix_paths`
/// collects host socket paths to remove when the host agent exits.
pub async fn run(
    transport: Arc<dyn Transport>,
    rules: Vec<Rule>,
    dir: PathBuf,
    unix_paths: Arc<Mutex<Vec<PathBuf>>>,
    kick: Arc<tokio::sync::Notify>,
) {
    let events = dir.join(crate::instance::HA_EVENTS);
    let ports_file = dir.join(crate::instance::PORTS_FILE);
    let mut unix_sockets = Vec::new();
    for rule in &rules {
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
        services: BTreeMap::new(),
    };
    loop {
        if let Err(e) = follow(
            &transport,
            &rules,
            &unix_sockets,
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

async fn follow(
    transport: &Arc<dyn Transport>,
    rules: &[Rule],
    unix_sockets: &[String],
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
        },
    )
    .await?;
    while let Some(ev) = read_frame_async::<_, GuestEvent>(&mut rd).await? {
        match ev {
            GuestEvent::Watcher(text) => {
                tracing::info!("guest port watcher: {text}");
                state.watcher = text;
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
                    if let Some(host) = add(state, rules, transport, p, events) {
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
    Ok(())
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
fn add(
    state: &mut State,
    rules: &[Rule],
    transport: &Arc<dyn Transport>,
    p: GuestPort,
    events: &Path,
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
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("host port {host}/{} is already in use", p.proto)
            } else {
                format!("cannot listen on host {host}/{}: {e}", p.proto)
            };
            warn(
                events,
                format!(
                    "{why}; guest {p} (matched {}) is not forwarded",
                    rule.name()
                ),
            );
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
    for (guest, host) in rules.iter().filter_map(|r| r.sockets.as_ref()) {
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
        services: state.services.clone(),
    };
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&file).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
