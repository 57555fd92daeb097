//! The guest end of port forwarding: the Events stream (port changes to the
//! host) and Forward streams (one per host connection or UDP peer).
//!
//! Security: a Forward request is served only when its target listens right
//! now (per sock_diag), or a current NAT rule publishes it (then the agent
//! dials the rule's destination), or, for Unix sockets, when the host named
//! the path in its `Subscribe` (from `portForwards` rules). Nothing the host
//! sends makes the agent dial anywhere else. `reverse: true` rules go the
//! other way: the agent listens on their guest sockets (0600, the guest
//! user's) and each connection waits until the host claims it on a Forward
//! stream of its own; the host always dials, the guest never does.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::sync::lock;
use lima_proto::{
    read_frame_async, write_frame_async, Datagram, ForwardReply, ForwardRequest, GuestEvent,
    GuestPort, HostEvent, PortProto, Subscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ports::{diff, PortTable, Target};

/// Guest Unix sockets the host may reach, as named by its rules, and the
/// connections to reverse sockets waiting for the host to claim them.
#[derive(Clone, Default)]
pub struct AllowedSockets {
    paths: Arc<Mutex<BTreeSet<String>>>,
    waiting:
        Arc<Mutex<std::collections::HashMap<u64, (std::time::Instant, tokio::net::UnixStream)>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl AllowedSockets {
    fn set(&self, paths: Vec<String>) {
        *lock(&self.paths) = paths.into_iter().collect();
    }
    fn contains(&self, path: &str) -> bool {
        lock(&self.paths).contains(path)
    }
    /// Keeps a reverse connection until the host claims it; its number.
    /// One the host never claimed (its Events stream broke, say) is closed
    /// after [`REVERSE_CLAIM_LIMIT`], so its program is not left hanging.
    fn wait(&self, conn: tokio::net::UnixStream) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, (since, _)| since.elapsed() < REVERSE_CLAIM_LIMIT);
        waiting.insert(id, (std::time::Instant::now(), conn));
        id
    }
    fn claim(&self, id: u64) -> Option<tokio::net::UnixStream> {
        lock(&self.waiting).remove(&id).map(|(_, c)| c)
    }
    fn drop_waiting(&self) {
        lock(&self.waiting).clear();
    }
}

/// The listeners of `reverse: true` rules for one Events stream: each
/// accepted connection waits in `allowed` and is told on `tx`. Dropped
/// with the stream: the tasks end and the socket files go.
struct ReverseListeners {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    paths: Vec<String>,
    allowed: AllowedSockets,
}

/// How long a reverse connection waits for the host to claim it.
const REVERSE_CLAIM_LIMIT: Duration = Duration::from_secs(30);

impl ReverseListeners {
    fn start(
        paths: &[String],
        owner: (u32, u32),
        allowed: &AllowedSockets,
        tx: tokio::sync::mpsc::Sender<(u32, u64)>,
    ) -> ReverseListeners {
        let mut me = ReverseListeners {
            tasks: Vec::new(),
            paths: Vec::new(),
            allowed: allowed.clone(),
        };
        for (i, path) in paths.iter().enumerate() {
            let listener = match bind_reverse(path, owner) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("reverse socket {path}: {e}");
                    continue;
                }
            };
            me.paths.push(path.clone());
            let (allowed, tx) = (allowed.clone(), tx.clone());
            me.tasks.push(tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let id = allowed.wait(conn);
                    if tx.send((i as u32, id)).await.is_err() {
                        allowed.claim(id);
                        return;
                    }
                }
            }));
        }
        me
    }
}

impl Drop for ReverseListeners {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
        // Nobody is left to claim them.
        self.allowed.drop_waiting();
    }
}

/// Listens on `path` (its folder made if missing, a stale socket
/// replaced; anything else there is left alone), mode 0600 and owned by
/// the guest user, so only that user (and root) can connect.
///
/// The folder may be the user's, who could swap names in it while we
/// work: the socket is made, chmodded and given away inside a fresh
/// root-only folder beside it, then renamed into place (a rename replaces
/// a planted link instead of following it), and ownership only ever
/// changes with `lchown`.
fn bind_reverse(path: &str, owner: (u32, u32)) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{lchown, DirBuilderExt, FileTypeExt, PermissionsExt};
    let p = std::path::Path::new(path);
    let dir = p.parent().ok_or("the path has no folder")?;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(p).map_err(|e| format!("cannot replace it: {e}"))?
        }
        Ok(_) => return Err("something that is not a socket is there; left alone".into()),
        Err(_) => {}
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = lchown(dir, Some(owner.0), Some(owner.1));
    }
    let work = dir.join(format!(".lima-reverse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let made = work.join("socket");
    let bound = (|| {
        let l = tokio::net::UnixListener::bind(&made).map_err(|e| format!("cannot listen: {e}"))?;
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot chmod: {e}"))?;
        lchown(&made, Some(owner.0), Some(owner.1)).map_err(|e| format!("cannot chown: {e}"))?;
        std::fs::rename(&made, p).map_err(|e| format!("cannot move it into place: {e}"))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&work);
    bound
}

/// Serves the Events stream until the host hangs up.
pub async fn serve_events<S>(
    mut stream: S,
    table: PortTable,
    allowed: AllowedSockets,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(sub): Option<Subscribe> = read_frame_async(&mut stream).await? else {
        return Ok(());
    };
    allowed.set(sub.unix_sockets);
    let (reverse_tx, mut reverse_rx) = tokio::sync::mpsc::channel::<(u32, u64)>(64);
    let _reverse = ReverseListeners::start(&sub.reverse_sockets, sub.owner, &allowed, reverse_tx);
    let mut log = ForwardLog::new(FORWARDS_FILE);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut changes = table.subscribe();
    let mut nat = table.nat();
    let mut last = table.current();
    write_frame_async(&mut wr, &GuestEvent::Watcher(table.mode_text())).await?;
    let report = nat.borrow_and_update().report();
    write_frame_async(&mut wr, &GuestEvent::Published(report)).await?;
    write_frame_async(
        &mut wr,
        &GuestEvent::Ports {
            full: true,
            added: last.iter().copied().collect(),
            removed: vec![],
        },
    )
    .await?;
    log.update(&last.iter().copied().collect::<Vec<_>>(), &[]);
    let mut text = table.mode_text();
    let mut nat_open = true;
    // Container engines' states (services.rs), every one at first.
    let mut services = crate::services::board().follow();
    loop {
        tokio::select! {
            Some((socket, conn)) = reverse_rx.recv() => {
                write_frame_async(&mut wr, &GuestEvent::ReverseConnection { socket, conn }).await?;
            }
            states = services.next() => {
                for (name, state) in states {
                    write_frame_async(&mut wr, &GuestEvent::Service { name, state }).await?;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // NAT ports are told before they appear (or go) as ports,
                // so the host can name them.
                if nat.has_changed().unwrap_or(false) {
                    let report = nat.borrow_and_update().report();
                    write_frame_async(&mut wr, &GuestEvent::Published(report)).await?;
                }
                let now = changes.borrow_and_update().clone();
                let (added, removed) = diff(&last, &now);
                last = now;
                if !added.is_empty() || !removed.is_empty() {
                    for p in &added {
                        tracing::debug!("listening: {p}");
                    }
                    write_frame_async(&mut wr, &GuestEvent::Ports { full: false, added: added.clone(), removed: removed.clone() }).await?;
                    log.update(&added, &removed);
                }
                let t = table.mode_text();
                if t != text {
                    write_frame_async(&mut wr, &GuestEvent::Watcher(t.clone())).await?;
                    text = t;
                }
            }
            changed = nat.changed(), if nat_open => {
                if changed.is_err() {
                    // The NAT watcher stopped (it said why); listeners go on.
                    nat_open = false;
                    continue;
                }
                let report = nat.borrow_and_update().report();
                write_frame_async(&mut wr, &GuestEvent::Published(report)).await?;
            }
            msg = read_frame_async::<_, HostEvent>(&mut rd) => match msg? {
                Some(HostEvent::ForwardReady { port, host }) => {
                    tracing::debug!("host forwards {port} from {host}");
                    log.ready(port, host);
                }
                None => return Ok(()),
            },
        }
    }
}

/// Where the agent lists what the host forwards, for people and tools in the
/// guest (`tool listen-latency` reads it).
pub const FORWARDS_FILE: &str = "/run/lima-guest-agent/forwards";

/// Nanoseconds on CLOCK_MONOTONIC, the clock the forwards file uses.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer;
    // CLOCK_MONOTONIC always exists, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One guest listener told to the host on this Events stream.
struct Told {
    /// When the agent wrote it to the host (CLOCK_MONOTONIC ns).
    sent_ns: u64,
    /// The host address and when the host's "forward ready" arrived; `None`
    /// while the host has not answered, or when no rule forwards it.
    ready: Option<(String, u64)>,
}

/// The guest's view of forwarding, rewritten (atomically) to a file on every
/// change:
///
/// ```text
/// # proto guest host sent_ns ready_ns   (CLOCK_MONOTONIC; "-": not forwarded)
/// tcp 0.0.0.0:8080 127.0.0.1:8080 5021331022 5022514112
/// ```
struct ForwardLog {
    path: &'static str,
    told: std::collections::BTreeMap<GuestPort, Told>,
    warned: bool,
}

impl ForwardLog {
    fn new(path: &'static str) -> Self {
        let mut log = Self {
            path,
            told: Default::default(),
            warned: false,
        };
        log.write();
        log
    }

    /// Ports just told to the host as `added` and `removed`.
    fn update(&mut self, added: &[GuestPort], removed: &[GuestPort]) {
        let now = monotonic_ns();
        for p in removed {
            self.told.remove(p);
        }
        for p in added {
            self.told.insert(
                *p,
                Told {
                    sent_ns: now,
                    ready: None,
                },
            );
        }
        self.write();
    }

    fn ready(&mut self, port: GuestPort, host: String) {
        let now = monotonic_ns();
        if let Some(t) = self.told.get_mut(&port) {
            t.ready = Some((host, now));
            self.write();
        }
    }

    fn text(&self) -> String {
        let mut out = String::from(
            "# proto guest host sent_ns ready_ns   (CLOCK_MONOTONIC; \"-\": not forwarded)\n",
        );
        for (p, t) in &self.told {
            let (host, ready) = match &t.ready {
                Some((h, ns)) => (h.as_str(), ns.to_string()),
                None => ("-", "-".to_string()),
            };
            let guest = SocketAddr::new(p.ip, p.port);
            out.push_str(&format!(
                "{} {guest} {host} {} {ready}\n",
                p.proto, t.sent_ns
            ));
        }
        out
    }

    fn write(&mut self) {
        let path = std::path::Path::new(self.path);
        let tmp = path.with_extension("tmp");
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, self.text()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            if !self.warned {
                tracing::warn!("cannot write {}: {e}", self.path);
                self.warned = true;
            }
        }
    }
}

/// Where to connect for a listener: its own address, or loopback of its
/// family when it listens on all addresses.
fn dial_addr(ip: IpAddr, port: u16) -> SocketAddr {
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}

/// Where to connect for an allowed target.
fn dial(target: Target, ip: IpAddr, port: u16) -> SocketAddr {
    match target {
        Target::Listener => dial_addr(ip, port),
        Target::Published(destination) => destination,
    }
}

/// Serves one Forward stream.
pub async fn serve_forward<S>(
    mut stream: S,
    table: PortTable,
    allowed: AllowedSockets,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(req): Option<ForwardRequest> = read_frame_async(&mut stream).await? else {
        return Ok(());
    };
    let refuse = |why: String| ForwardReply::Refused(why);
    match req {
        ForwardRequest::Tcp { ip, port } => {
            let gp = GuestPort {
                proto: PortProto::Tcp,
                ip,
                port,
            };
            let Some(target) = table.target(&gp) else {
                write_frame_async(
                    &mut stream,
                    &refuse(format!("nothing listens on {gp} in the guest")),
                )
                .await?;
                return Ok(());
            };
            match tokio::net::TcpStream::connect(dial(target, ip, port)).await {
                Ok(conn) => {
                    let _ = conn.set_nodelay(true);
                    write_frame_async(&mut stream, &ForwardReply::Ok).await?;
                    let _ = lima_proto::relay::relay(conn, stream).await;
                }
                Err(e) => {
                    write_frame_async(&mut stream, &refuse(format!("connecting to {gp}: {e}")))
                        .await?
                }
            }
        }
        ForwardRequest::Unix { path } => {
            if !allowed.contains(&path) {
                write_frame_async(
                    &mut stream,
                    &refuse(format!("{path} is not named by a portForwards rule")),
                )
                .await?;
                return Ok(());
            }
            match tokio::net::UnixStream::connect(&path).await {
                Ok(conn) => {
                    write_frame_async(&mut stream, &ForwardReply::Ok).await?;
                    let _ = lima_proto::relay::relay(conn, stream).await;
                }
                Err(e) => {
                    write_frame_async(&mut stream, &refuse(format!("connecting to {path}: {e}")))
                        .await?
                }
            }
        }
        ForwardRequest::Reverse { conn } => match allowed.claim(conn) {
            Some(c) => {
                write_frame_async(&mut stream, &ForwardReply::Ok).await?;
                let _ = lima_proto::relay::relay(c, stream).await;
            }
            None => {
                write_frame_async(
                    &mut stream,
                    &refuse(format!("no reverse connection {conn} waits")),
                )
                .await?
            }
        },
        ForwardRequest::Udp { ip, port } => {
            let gp = GuestPort {
                proto: PortProto::Udp,
                ip,
                port,
            };
            let Some(target) = table.target(&gp) else {
                write_frame_async(
                    &mut stream,
                    &refuse(format!("nothing listens on {gp} in the guest")),
                )
                .await?;
                return Ok(());
            };
            let target = dial(target, ip, port);
            let local: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let sock = tokio::net::UdpSocket::bind(local).await?;
            sock.connect(target).await?;
            write_frame_async(&mut stream, &ForwardReply::Ok).await?;
            relay_udp(stream, sock).await?;
        }
    }
    Ok(())
}

/// Datagram frames ⇄ a connected UDP socket, until the host closes the
/// stream or nothing moves for 10 minutes.
async fn relay_udp<S>(stream: S, sock: tokio::net::UdpSocket) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            frame = read_frame_async::<_, Datagram>(&mut rd) => match frame? {
                Some(Datagram(d)) => { let _ = sock.send(&d).await; }
                None => return Ok(()),
            },
            got = sock.recv(&mut buf) => {
                if let Ok(n) = got {
                    write_frame_async(&mut wr, &Datagram(buf[..n].to_vec())).await?;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(600)) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwards_file_lists_ports_with_their_host_side() {
        let dir = std::env::temp_dir().join(format!("lima-fwdlog-{}", std::process::id()));
        let path: &'static str = Box::leak(
            dir.join("forwards")
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        );
        let mut log = ForwardLog::new(path);
        let web = GuestPort {
            proto: PortProto::Tcp,
            ip: "0.0.0.0".parse().unwrap(),
            port: 8080,
        };
        let dns = GuestPort {
            proto: PortProto::Udp,
            ip: "::".parse().unwrap(),
            port: 53,
        };
        log.update(&[web, dns], &[]);
        log.ready(web, "127.0.0.1:8080".into());
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0][..3], ["tcp", "0.0.0.0:8080", "127.0.0.1:8080"]);
        let (sent, ready): (u64, u64) =
            (lines[0][3].parse().unwrap(), lines[0][4].parse().unwrap());
        assert!(ready >= sent);
        // Not (yet) forwarded: dashes.
        assert_eq!(lines[1][..3], ["udp", "[::]:53", "-"]);
        assert_eq!(lines[1][4], "-");
        log.update(&[], &[web]);
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.contains("8080"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The security rule with a NAT publication, against the real kernel
    /// in a network namespace of the test's own: a port only a DNAT rule
    /// publishes is dialed at the rule's destination, while the rule
    /// exists; other ports are refused.
    #[test]
    #[ignore = "needs root and iptables: nf_tables in a network namespace (containers issue 22)"]
    fn a_nat_published_port_is_forwarded_to_its_destination_while_the_rule_exists() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) needs root");
        let sh = |line: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", line])
                .status()
                .unwrap();
            assert!(st.success(), "{line}: {st}");
        };
        // The "container": an address of this namespace, listening on 80.
        sh("ip link set lo up && ip addr add 172.17.0.2/32 dev lo");
        let rule = "-p tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let container = tokio::net::TcpListener::bind("172.17.0.2:80")
                .await
                .unwrap();
            let table = PortTable::start(&crate::ports::Watcher::unavailable("test"));
            let published = GuestPort {
                proto: PortProto::Tcp,
                ip: "0.0.0.0".parse().unwrap(),
                port: 8080,
            };
            let mut set = table.subscribe();
            sh(&format!("iptables -t nat -A PREROUTING {rule}"));
            tokio::time::timeout(
                Duration::from_secs(20),
                set.wait_for(|s| s.contains(&published)),
            )
            .await
            .expect("the publication joins the port set")
            .unwrap();

            // Forwarded: bytes reach the container and come back.
            let ask = |port: u16| {
                let table = table.clone();
                async move {
                    let (mut host, agent) = tokio::io::duplex(1 << 16);
                    tokio::spawn(serve_forward(agent, table, AllowedSockets::default()));
                    let ip = "0.0.0.0".parse().unwrap();
                    write_frame_async(&mut host, &ForwardRequest::Tcp { ip, port })
                        .await
                        .unwrap();
                    let reply: ForwardReply = read_frame_async(&mut host).await.unwrap().unwrap();
                    (reply, host)
                }
            };
            let (reply, host) = ask(8080).await;
            assert_eq!(reply, ForwardReply::Ok);
            let (mut user, relay_end) = tokio::io::duplex(1 << 16);
            tokio::spawn(lima_proto::relay::relay(relay_end, host));
            user.write_all(b"ping").await.unwrap();
            let (mut conn, _) = container.accept().await.unwrap();
            let mut got = [0u8; 4];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            conn.write_all(b"pong").await.unwrap();
            drop(conn);
            let mut back = Vec::new();
            user.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"pong");

            // Not published, not listening: refused.
            let (reply, _) = ask(9999).await;
            assert!(matches!(reply, ForwardReply::Refused(_)), "{reply:?}");

            // The rule goes: so does the publication, and the forward.
            sh(&format!("iptables -t nat -D PREROUTING {rule}"));
            tokio::time::timeout(
                Duration::from_secs(20),
                set.wait_for(|s| !s.contains(&published)),
            )
            .await
            .expect("the publication leaves the port set")
            .unwrap();
            let (reply, _) = ask(8080).await;
            assert!(matches!(reply, ForwardReply::Refused(_)), "{reply:?}");
        });
    }

    #[test]
    fn wildcard_listeners_are_dialed_on_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0".parse().unwrap(), 80),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            dial_addr("::".parse().unwrap(), 80),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            dial_addr("10.0.2.15".parse().unwrap(), 80),
            "10.0.2.15:80".parse().unwrap()
        );
    }
}
