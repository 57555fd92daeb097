//! What the eBPF programs report, and the seam it reaches the agent
//! through: the [`SockEvent`] records of the ring buffer, the hook each one
//! came from ([`SocketEventKind`]), their text for the log, and
//! [`EventSource`], the one trait between the privileged loader
//! ([`super::ebpf`]) and the watcher, so that the watcher is tested with a
//! fake source and no root.
//!
//! Two things to keep in mind when acting on an event:
//!
//! - **Port 0 means "ask sock_diag".** The kernel fires the LISTEN
//!   transition before it picks a port for a socket that was never bound
//!   (`listen()` without `bind()`), so that event carries port 0; the close
//!   carries the real port. Bound sockets (every server in practice) report
//!   their port on bind and on listen.
//! - **Events come before the socket tables change.** The tracepoint fires
//!   before a new listener is hashed, and `sock_release` before the socket is
//!   unhashed, so a dump made at once may not show the change yet.
use std::{
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use lima_proto::ebpf::{
    tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND, KIND_LISTENED,
    KIND_RELEASE, KIND_TCP_STATE,
};

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

/// Where events come from: the ring buffer, or a fake in tests.
pub(super) trait EventSource: Send + 'static {
    /// Waits until at least one event is ready and appends what is ready to
    /// `out`. An error ends the watcher.
    fn read(&mut self, out: &mut Vec<SockEvent>) -> impl Future<Output = io::Result<()>> + Send;

    /// How many events the programs have dropped since they were loaded.
    fn dropped(&mut self) -> io::Result<u64>;
}

/// Decodes one ring buffer record; `None` if it is too short.
pub(super) fn event_from_bytes(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<SockEvent>() bytes (checked
    // above), the read is unaligned, and SockEvent is #[repr(C)] plain
    // integers and byte arrays, so every bit pattern is a valid value.
    Some(unsafe { bytes.as_ptr().cast::<SockEvent>().read_unaligned() })
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

#[cfg(test)]
pub(super) mod tests {
    use lima_proto::ebpf::SOCK_DGRAM;

    use super::*;

    pub(in super::super) fn event(
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

    pub(in super::super) fn udp(kind: u16, family: u16, addr: &[u8], port: u16) -> SockEvent {
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
}
