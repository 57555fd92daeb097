//! Which sockets listen right now, from the kernel's NETLINK_SOCK_DIAG
//! interface: the truth that the port table reconciles eBPF events with, and
//! what it polls when there is no eBPF.
//!
//! ```text
//!  agent                                   kernel (agent's network namespace)
//!  socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG)
//!  ── SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, inet_diag_req_v2 ──▶   for each of
//!  ◀── inet_diag_msg, inet_diag_msg, ... (several reads) ──   AF_INET, AF_INET6
//!  ◀── NLMSG_DONE (or NLMSG_ERROR: errno) ─────────────────   × TCP (LISTEN), UDP (all)
//! ```
//!
//! - **Hand-rolled, on purpose.** Four fixed requests and one reply format
//!   (`linux/inet_diag.h`, stable UAPI) do not justify a netlink crate
//!   (`netlink-packet-sock-diag` was measured slower per dump, several times
//!   so on musl: `docs/decisions.md`). The bytes are built and parsed with
//!   explicit offsets, so the only unsafe code is the three syscalls,
//!   wrapped in [`DiagSocket`].
//! - **What "listening" means.** TCP sockets in LISTEN (the kernel filters by
//!   the state mask), and UDP sockets with a local port and no remote port
//!   (bound, not connected). An unbound UDP socket that sent a datagram has a
//!   port too, and is reported: the kernel cannot tell it from a server.
//!   IPv4-mapped IPv6 addresses are reported as they are.
//! - **Unprivileged.** Dumping the sockets of one's own network namespace
//!   needs no capability, so the tests run on the build host.
//! - **A missing diag module is not fatal.** `tcp_diag` and `udp_diag` are
//!   modules in Debian's kernel, loaded on first use through modprobe; when a
//!   protocol has no handler the kernel answers ENOENT and that part of the
//!   dump is skipped with a warning (once), so TCP still works without
//!   `udp_diag`.
//! - **Cost.** One dump (4 requests) takes ~80 µs on the build host (Linux
//!   6.18, x86_64, 2 vCPUs, one listening socket in the namespace) and
//!   ~240 µs with 200 (100 TCP listeners, 100 bound UDP sockets): mean of
//!   1000 runs of `examples/watch.rs --dump`, release build. Most of it is
//!   the kernel walking its UDP hash table, so dumping on every eBPF event
//!   is cheap.
use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use lima_proto::{GuestPort, PortProto};

/// Every listening socket in the agent's own network namespace: TCP sockets in LISTEN,
/// and bound UDP sockets that are not connected (dst port 0), IPv4 and IPv6.
pub fn dump() -> io::Result<BTreeSet<GuestPort>> {
    dump_protocols(&[PortProto::Tcp, PortProto::Udp])
}

/// [`dump`] for some protocols only: a TCP event needs no walk of the UDP
/// hash table, the larger part of a dump's cost.
pub fn dump_protocols(protocols: &[PortProto]) -> io::Result<BTreeSet<GuestPort>> {
    let socket = DiagSocket::open()?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut ports = BTreeSet::new();
    let mut seq = 0;
    for (index, query) in QUERIES.iter().enumerate() {
        if !protocols.contains(&query.protocol) {
            continue;
        }
        let mut attempts = 0;
        let found = loop {
            seq += 1;
            attempts += 1;
            match socket.run(*query, seq, &mut buf) {
                Ok(reply) if reply.interrupted && attempts < MAX_ATTEMPTS => continue,
                Ok(reply) => break reply.ports,
                Err(e) if unsupported(&e) => {
                    if !WARNED[index].swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "sock_diag cannot list {} sockets ({e}); they are left out \
                             (is the {} module available?)",
                            query.name(),
                            query.module()
                        );
                    }
                    break Vec::new();
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("sock_diag dump of {} sockets: {e}", query.name()),
                    ))
                }
            }
        };
        ports.extend(found);
    }
    Ok(ports)
}

/// A dump the kernel marks as interrupted (NLM_F_DUMP_INTR: the table changed
/// under it) is repeated this many times at most; then the last one counts.
const MAX_ATTEMPTS: usize = 3;

/// Room for one netlink read. The kernel fills at most 32 KiB per dump skb.
const RECV_BUF: usize = 64 * 1024;

/// How long to wait for the kernel before giving up on a dump.
const RECV_TIMEOUT_SECS: u16 = 5;

// Netlink and sock_diag constants (linux/netlink.h, linux/sock_diag.h,
// linux/inet_diag.h, net/tcp_states.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const TCP_LISTEN: u8 = 10;
/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

/// One request: a family and a protocol, and the TCP states to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Query {
    family: u8,
    protocol: PortProto,
}

const QUERIES: [Query; 4] = [
    Query {
        family: libc::AF_INET as u8,
        protocol: PortProto::Tcp,
    },
    Query {
        family: libc::AF_INET6 as u8,
        protocol: PortProto::Tcp,
    },
    Query {
        family: libc::AF_INET as u8,
        protocol: PortProto::Udp,
    },
    Query {
        family: libc::AF_INET6 as u8,
        protocol: PortProto::Udp,
    },
];

/// Whether the "cannot list" warning was given, per query.
static WARNED: [AtomicBool; QUERIES.len()] = [const { AtomicBool::new(false) }; QUERIES.len()];

impl Query {
    /// `tcp/ipv4` and so on, for messages.
    fn name(self) -> String {
        let family = if i32::from(self.family) == libc::AF_INET6 {
            "ipv6"
        } else {
            "ipv4"
        };
        format!("{}/{family}", self.protocol)
    }

    /// The kernel module that answers this query.
    fn module(self) -> &'static str {
        match self.protocol {
            PortProto::Tcp => "tcp_diag",
            PortProto::Udp => "udp_diag",
        }
    }

    fn ip_protocol(self) -> u8 {
        match self.protocol {
            PortProto::Tcp => libc::IPPROTO_TCP as u8,
            PortProto::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    /// The `idiag_states` mask: TCP listeners only; every UDP socket (UDP
    /// "states" are just TCP_CLOSE and TCP_ESTABLISHED, for connected ones).
    fn states(self) -> u32 {
        match self.protocol {
            PortProto::Tcp => 1 << TCP_LISTEN,
            PortProto::Udp => u32::MAX,
        }
    }

    /// The request message: `nlmsghdr` + `inet_diag_req_v2` with an empty
    /// socket id (no filter besides family, protocol and states).
    fn request(self, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
        let mut msg = [0u8; NLMSG_HDRLEN + REQ_LEN];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in our port id.
        let req = &mut msg[NLMSG_HDRLEN..];
        req[0] = self.family;
        req[1] = self.ip_protocol();
        // idiag_ext 0 (no extra attributes), pad 0.
        req[4..8].copy_from_slice(&self.states().to_ne_bytes());
        msg
    }

    /// The port an `inet_diag_msg` describes, if it listens.
    fn port(self, msg: &[u8]) -> Option<GuestPort> {
        let (family, state) = (msg[0], msg[1]);
        // inet_diag_sockid at offset 4: sport, dport (network byte order),
        // src[16], dst[16], ...
        let sport = u16::from_be_bytes([msg[4], msg[5]]);
        let dport = u16::from_be_bytes([msg[6], msg[7]]);
        let src = &msg[8..24];
        let ip = match i32::from(family) {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
            libc::AF_INET6 => {
                let octets: [u8; 16] = src.try_into().expect("a 16-byte slice");
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return None,
        };
        let listening = match self.protocol {
            PortProto::Tcp => state == TCP_LISTEN,
            PortProto::Udp => sport != 0 && dport == 0,
        };
        listening.then_some(GuestPort {
            proto: self.protocol,
            ip,
            port: sport,
        })
    }
}

/// Whether a query failed because the kernel cannot answer it at all (no
/// diag handler for the protocol, or no such family), rather than by chance.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
    )
}

/// What the replies to one query said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reply {
    ports: Vec<GuestPort>,
    /// The kernel flagged the dump as inconsistent (NLM_F_DUMP_INTR).
    interrupted: bool,
    /// NLMSG_DONE was seen: the dump is complete.
    done: bool,
}

impl Reply {
    /// Takes in one datagram of replies to `query` sent with `seq`.
    fn parse(&mut self, query: Query, seq: u32, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() && !self.done {
            if buf.len() < NLMSG_HDRLEN {
                return Err(invalid(format!(
                    "{} bytes left, too short for a netlink header",
                    buf.len()
                )));
            }
            let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            let msg_seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
            if len < NLMSG_HDRLEN || len > buf.len() {
                return Err(invalid(format!(
                    "a netlink message claims {len} bytes, {} are there",
                    buf.len()
                )));
            }
            let payload = &buf[NLMSG_HDRLEN..len];
            // Messages are padded to 4 bytes; the last one may not be.
            buf = &buf[align4(len).min(buf.len())..];
            if msg_seq != seq {
                // Not an answer to this request (cannot happen on a socket
                // used for one request at a time, but cheap to be sure).
                continue;
            }
            if flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match kind {
                NLMSG_DONE => {
                    // Since Linux 4.x the DONE message carries the dump's
                    // own error code.
                    if let Some(code) = error_code(payload) {
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    self.done = true;
                }
                NLMSG_ERROR => match error_code(payload) {
                    Some(0) => self.done = true,
                    Some(code) => return Err(io::Error::from_raw_os_error(code.saturating_neg())),
                    None => return Err(invalid("an NLMSG_ERROR without an error code".into())),
                },
                SOCK_DIAG_BY_FAMILY => {
                    if payload.len() < MSG_LEN {
                        return Err(invalid(format!(
                            "an inet_diag_msg of {} bytes (want {MSG_LEN})",
                            payload.len()
                        )));
                    }
                    self.ports.extend(query.port(payload));
                }
                // NLMSG_NOOP and anything new: nothing for us.
                _ => {}
            }
        }
        Ok(())
    }
}

/// The `int error` that starts an NLMSG_ERROR/NLMSG_DONE payload.
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn invalid(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad sock_diag reply: {what}"),
    )
}

/// Bounds every blocking receive on `fd` to `secs` seconds (`SO_RCVTIMEO`):
/// a netlink answer that never comes becomes an error instead of a hang.
/// The NAT watcher's dump socket uses it too.
pub(crate) fn set_recv_timeout(fd: std::os::fd::BorrowedFd<'_>, secs: i64) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::{TimeVal, TimeValLike};
    setsockopt(&fd, ReceiveTimeout, &TimeVal::seconds(secs)).map_err(io::Error::from)
}

/// A NETLINK_SOCK_DIAG socket; closed on drop.
struct DiagSocket(OwnedFd);

impl DiagSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: socket() takes no pointers; we check its result.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket we just opened and own; nothing else holds it.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        set_recv_timeout(socket.0.as_fd(), RECV_TIMEOUT_SECS.into())?;
        Ok(socket)
    }

    /// Sends `query` and reads its replies to the end.
    fn run(&self, query: Query, seq: u32, buf: &mut [u8]) -> io::Result<Reply> {
        let request = query.request(seq);
        // An unconnected netlink socket sends to the kernel.
        // SAFETY: send reads request.len() bytes from a live array; the fd is
        // open.
        let sent = retry_eintr(|| unsafe {
            libc::send(
                self.0.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        })?;
        if sent != request.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} request bytes",
                request.len()
            )));
        }
        let mut reply = Reply::default();
        while !reply.done {
            // MSG_TRUNC: return the datagram's real length, so a reply that
            // did not fit is noticed instead of parsed in part.
            // SAFETY: recv writes at most buf.len() bytes into buf, which is
            // live and exclusively ours; the fd is open.
            let got = retry_eintr(|| unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            })
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply from the kernel within {RECV_TIMEOUT_SECS} s"),
                ),
                _ => e,
            })?;
            if got > buf.len() {
                return Err(invalid(format!(
                    "a {got}-byte datagram does not fit in {} bytes",
                    buf.len()
                )));
            }
            if got == 0 {
                return Err(invalid(
                    "the kernel ended the dump without NLMSG_DONE".into(),
                ));
            }
            reply.parse(query, seq, &buf[..got])?;
        }
        Ok(reply)
    }
}

/// Runs a syscall that returns a byte count or -1, again on EINTR.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use super::*;

    const TCP4: Query = QUERIES[0];
    const UDP6: Query = QUERIES[3];

    /// One netlink message: header + payload, padded to 4 bytes.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut msg = Vec::new();
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&4242u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(align4(msg.len()), 0);
        msg
    }

    /// An `inet_diag_msg` for a socket.
    fn diag_msg(family: i32, state: u8, src: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = family as u8;
        msg[1] = state;
        msg[4..6].copy_from_slice(&sport.to_be_bytes());
        msg[6..8].copy_from_slice(&dport.to_be_bytes());
        match src {
            IpAddr::V4(ip) => msg[8..12].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => msg[8..24].copy_from_slice(&ip.octets()),
        }
        // idiag_inode, so the bytes after the id are not all zero.
        msg[68..72].copy_from_slice(&12345u32.to_ne_bytes());
        msg
    }

    fn tcp(ip: &str, port: u16) -> GuestPort {
        GuestPort {
            proto: PortProto::Tcp,
            ip: ip.parse().unwrap(),
            port,
        }
    }

    fn udp(ip: &str, port: u16) -> GuestPort {
        GuestPort {
            proto: PortProto::Udp,
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn request_bytes() {
        let req = TCP4.request(7);
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(&req[16..20], &[2, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 10);
        assert!(req[24..].iter().all(|b| *b == 0));
        let req = UDP6.request(8);
        assert_eq!(&req[16..20], &[10, 17, 0, 0]);
        assert_eq!(
            u32::from_ne_bytes(req[20..24].try_into().unwrap()),
            u32::MAX
        );
    }

    #[test]
    fn parses_a_multi_part_tcp_dump() {
        let v4 = |ip: &str| ip.parse::<IpAddr>().unwrap();
        let mut first = message(
            SOCK_DIAG_BY_FAMILY,
            0,
            1,
            &diag_msg(libc::AF_INET, TCP_LISTEN, v4("127.0.0.1"), 8080, 0),
        );
        first.extend(message(
            SOCK_DIAG_BY_FAMILY,
            0,
            1,
            &diag_msg(libc::AF_INET, TCP_LISTEN, v4("0.0.0.0"), 22, 0),
        ));
        let mut reply = Reply::default();
        reply.parse(TCP4, 1, &first).unwrap();
        assert!(!reply.done);
        // A second datagram: one more socket (not listening: the kernel
        // filters by state, we check anyway), a stale answer, then DONE.
        let mut second = message(
            SOCK_DIAG_BY_FAMILY,
            0,
            1,
            &diag_msg(libc::AF_INET, 1, v4("10.0.2.15"), 5555, 443),
        );
        second.extend(message(
            SOCK_DIAG_BY_FAMILY,
            0,
            99,
            &diag_msg(libc::AF_INET, TCP_LISTEN, v4("0.0.0.0"), 1, 0),
        ));
        second.extend(message(NLMSG_DONE, 0, 1, &0i32.to_ne_bytes()));
        reply.parse(TCP4, 1, &second).unwrap();
        assert!(reply.done && !reply.interrupted);
        assert_eq!(
            reply.ports,
            vec![tcp("127.0.0.1", 8080), tcp("0.0.0.0", 22)]
        );
    }

    #[test]
    fn keeps_bound_unconnected_udp_only() {
        let v6 = |ip: &str| ip.parse::<IpAddr>().unwrap();
        let mut buf = Vec::new();
        for (ip, sport, dport) in [
            ("::", 9999, 0),             // a server: kept
            ("::1", 5353, 0),            // kept
            ("::ffff:127.0.0.1", 53, 0), // v4-mapped, as is: kept
            ("::", 0, 0),                // no port yet: dropped
            ("fe80::1", 40000, 53),      // connected: dropped
        ] {
            buf.extend(message(
                SOCK_DIAG_BY_FAMILY,
                0,
                3,
                &diag_msg(libc::AF_INET6, 7, v6(ip), sport, dport),
            ));
        }
        buf.extend(message(NLMSG_DONE, NLM_F_DUMP_INTR, 3, &0i32.to_ne_bytes()));
        let mut reply = Reply::default();
        reply.parse(UDP6, 3, &buf).unwrap();
        assert!(reply.done && reply.interrupted);
        assert_eq!(
            reply.ports,
            vec![
                udp("::", 9999),
                udp("::1", 5353),
                udp("::ffff:127.0.0.1", 53)
            ]
        );
    }

    #[test]
    fn errors_are_reported() {
        // NLMSG_ERROR: -errno, then the request's header.
        let mut payload = (-libc::ENOENT).to_ne_bytes().to_vec();
        payload.extend_from_slice(&TCP4.request(5)[..NLMSG_HDRLEN]);
        let err = Reply::default()
            .parse(TCP4, 5, &message(NLMSG_ERROR, 0, 5, &payload))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(unsupported(&err));

        let done_with_error = message(NLMSG_DONE, 0, 5, &(-libc::EINVAL).to_ne_bytes());
        let err = Reply::default()
            .parse(TCP4, 5, &done_with_error)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(!unsupported(&err));

        // An ACK (error 0) ends the exchange.
        let mut ack = payload.clone();
        ack[0..4].copy_from_slice(&0i32.to_ne_bytes());
        let mut reply = Reply::default();
        reply
            .parse(TCP4, 5, &message(NLMSG_ERROR, 0, 5, &ack))
            .unwrap();
        assert!(reply.done);
    }

    #[test]
    fn malformed_replies_are_refused() {
        let short_header = [0u8; 10];
        let err = Reply::default().parse(TCP4, 1, &short_header).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut overlong = message(NLMSG_DONE, 0, 1, &0i32.to_ne_bytes());
        overlong[0..4].copy_from_slice(&100u32.to_ne_bytes());
        let err = Reply::default().parse(TCP4, 1, &overlong).unwrap_err();
        assert!(err.to_string().contains("claims 100 bytes"), "{err}");

        let short_msg = message(SOCK_DIAG_BY_FAMILY, 0, 1, &[2, 10, 0, 0]);
        let err = Reply::default().parse(TCP4, 1, &short_msg).unwrap_err();
        assert!(
            err.to_string().contains("inet_diag_msg of 4 bytes"),
            "{err}"
        );
    }

    /// The real kernel, unprivileged: our own sockets come and go.
    #[test]
    fn live_dump_sees_our_own_sockets() {
        let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp_socket = UdpSocket::bind("[::1]:0").unwrap();
        let tcp_port = tcp("127.0.0.1", tcp_listener.local_addr().unwrap().port());
        let udp_port = udp("::1", udp_socket.local_addr().unwrap().port());

        let ports = dump().unwrap();
        assert!(ports.contains(&tcp_port), "{tcp_port} not in {ports:?}");
        assert!(ports.contains(&udp_port), "{udp_port} not in {ports:?}");
        // A connected UDP socket is not a listener.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(tcp_listener.local_addr().unwrap()).unwrap();
        let client_port = udp("127.0.0.1", client.local_addr().unwrap().port());
        assert!(!dump().unwrap().contains(&client_port));

        drop(tcp_listener);
        drop(udp_socket);
        let ports = dump().unwrap();
        assert!(!ports.contains(&tcp_port), "{tcp_port} still in {ports:?}");
        assert!(!ports.contains(&udp_port), "{udp_port} still in {ports:?}");
    }
}
