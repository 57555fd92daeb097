//! Reading [`SockEvent`] records on the agent's side: the bytes of one ring
//! buffer record, which hook wrote it, and its text for the log.
//!
//! The records come from the kernel, written by our own programs, but the
//! agent treats them as untrusted bytes all the same: any length, any field
//! value. This lives here rather than in the agent so that `fuzz/`
//! (`port_event`) can feed it without building the agent and its eBPF
//! object. Decoding is safe code, field by field in native byte order, which
//! is what the programs write.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{
    tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND, KIND_LISTENED,
    KIND_RELEASE, KIND_TCP_STATE,
};

/// Size of one record.
pub const SOCK_EVENT_SIZE: usize = core::mem::size_of::<SockEvent>();

impl SockEvent {
    /// Decodes one ring buffer record; `None` if it is shorter than
    /// [`SOCK_EVENT_SIZE`]. Bytes past the event are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Option<SockEvent> {
        let b = bytes.get(..SOCK_EVENT_SIZE)?;
        let at = |offset: usize, out: &mut [u8]| {
            out.copy_from_slice(&b[offset..offset + out.len()]);
        };
        let u16_at = |offset| {
            let mut v = [0; 2];
            at(offset, &mut v);
            u16::from_ne_bytes(v)
        };
        let u32_at = |offset| {
            let mut v = [0; 4];
            at(offset, &mut v);
            u32::from_ne_bytes(v)
        };
        let mut ktime_ns = [0; 8];
        at(0, &mut ktime_ns);
        let mut saddr = [0; 16];
        at(32, &mut saddr);
        let mut daddr = [0; 16];
        at(48, &mut daddr);
        Some(SockEvent {
            ktime_ns: u64::from_ne_bytes(ktime_ns),
            kind: u16_at(8),
            family: u16_at(10),
            protocol: u16_at(12),
            sock_type: u16_at(14),
            oldstate: u32_at(16) as i32,
            newstate: u32_at(20) as i32,
            sport: u16_at(24),
            dport: u16_at(26),
            reserved: u32_at(28),
            saddr,
            daddr,
        })
    }

    /// The record as the programs write it (tests, fuzz seeds).
    pub fn to_bytes(&self) -> [u8; SOCK_EVENT_SIZE] {
        let mut b = [0; SOCK_EVENT_SIZE];
        let mut put = |offset: usize, v: &[u8]| b[offset..offset + v.len()].copy_from_slice(v);
        put(0, &self.ktime_ns.to_ne_bytes());
        put(8, &self.kind.to_ne_bytes());
        put(10, &self.family.to_ne_bytes());
        put(12, &self.protocol.to_ne_bytes());
        put(14, &self.sock_type.to_ne_bytes());
        put(16, &self.oldstate.to_ne_bytes());
        put(20, &self.newstate.to_ne_bytes());
        put(24, &self.sport.to_ne_bytes());
        put(26, &self.dport.to_ne_bytes());
        put(28, &self.reserved.to_ne_bytes());
        put(32, &self.saddr);
        put(48, &self.daddr);
        b
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
mod tests {
    use super::super::{SOCK_DGRAM, SOCK_STREAM};
    use super::*;

    fn tcp(oldstate: i32, newstate: i32, family: u16, addr: &[u8], port: u16) -> SockEvent {
        let mut saddr = [0; 16];
        saddr[..addr.len()].copy_from_slice(addr);
        SockEvent {
            kind: KIND_TCP_STATE,
            family,
            protocol: IPPROTO_TCP,
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

    /// The bytes of `e` as they sit in memory, which is what the eBPF
    /// programs hand over.
    fn memory_of(e: &SockEvent) -> &[u8] {
        // SAFETY: SockEvent is #[repr(C)] plain data without padding (its
        // layout is asserted in the parent module), so all its bytes are
        // initialized, and the slice borrows `e`.
        unsafe { std::slice::from_raw_parts((e as *const SockEvent).cast::<u8>(), SOCK_EVENT_SIZE) }
    }

    #[test]
    fn decodes_ring_buffer_records() {
        let e = udp(KIND_BIND, AF_INET, &[10, 0, 2, 15], 443);
        let bytes = memory_of(&e);
        assert_eq!(SOCK_EVENT_SIZE, 64);
        // The documented layout, byte by byte.
        assert_eq!(&bytes[8..10], &KIND_BIND.to_ne_bytes());
        assert_eq!(&bytes[10..12], &AF_INET.to_ne_bytes());
        assert_eq!(&bytes[12..14], &IPPROTO_UDP.to_ne_bytes());
        assert_eq!(&bytes[14..16], &SOCK_DGRAM.to_ne_bytes());
        assert_eq!(&bytes[24..26], &443u16.to_ne_bytes());
        assert_eq!(&bytes[32..36], &[10, 0, 2, 15]);
        assert_eq!(SockEvent::from_bytes(bytes), Some(e));
        assert_eq!(SockEvent::from_bytes(&bytes[..10]), None);
        assert_eq!(SockEvent::from_bytes(&bytes[..63]), None);
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(SockEvent::from_bytes(&longer), Some(e));
    }

    #[test]
    fn every_field_reads_back_from_memory() {
        let e = SockEvent {
            ktime_ns: 0x0102_0304_0506_0708,
            kind: 0x1112,
            family: 0x2122,
            protocol: 0x3132,
            sock_type: SOCK_STREAM,
            oldstate: -2,
            newstate: i32::MIN,
            sport: 0x4142,
            dport: 0x5152,
            reserved: 0x6162_6364,
            saddr: core::array::from_fn(|i| i as u8),
            daddr: core::array::from_fn(|i| 0x80 + i as u8),
        };
        assert_eq!(e.to_bytes(), memory_of(&e));
        assert_eq!(SockEvent::from_bytes(&e.to_bytes()), Some(e));
    }

    #[test]
    fn describes_listen_and_close() {
        use tcp_state::{CLOSE, LISTEN};
        let listen4 = tcp(CLOSE, LISTEN, AF_INET, &[0, 0, 0, 0], 8080);
        assert_eq!(describe(&listen4), "tcp listen 0.0.0.0:8080");
        let closed6 = tcp(LISTEN, CLOSE, AF_INET6, &[0; 16], 8080);
        assert_eq!(describe(&closed6), "tcp listen closed [::]:8080");
        let loopback6 = tcp(CLOSE, LISTEN, AF_INET6, &Ipv6Addr::LOCALHOST.octets(), 22);
        assert_eq!(describe(&loopback6), "tcp listen [::1]:22");
        let sctp = SockEvent {
            protocol: 132,
            ..tcp(CLOSE, LISTEN, AF_INET, &[127, 0, 0, 1], 9)
        };
        assert_eq!(describe(&sctp), "sctp listen 127.0.0.1:9");
        let odd = tcp(CLOSE, LISTEN, 1, &[], 5);
        assert_eq!(describe(&odd), "tcp listen (family 1) port 5");
        assert_eq!(local_addr(&odd), None);
        let listened = SockEvent {
            kind: KIND_LISTENED,
            ..Default::default()
        };
        assert_eq!(describe(&listened), "listen() returned");
    }

    #[test]
    fn describes_bind_and_release() {
        let bind6 = udp(KIND_BIND, AF_INET6, &[0; 16], 9999);
        assert_eq!(describe(&bind6), "udp bind [::]:9999");
        let release4 = udp(KIND_RELEASE, AF_INET, &[127, 0, 0, 1], 53);
        assert_eq!(describe(&release4), "udp release 127.0.0.1:53");
        let tcp_bind = SockEvent {
            kind: KIND_BIND,
            ..tcp(0, 0, AF_INET, &[10, 0, 2, 15], 8765)
        };
        assert_eq!(describe(&tcp_bind), "tcp bind 10.0.2.15:8765");
        let unknown = SockEvent { kind: 99, ..bind6 };
        assert_eq!(describe(&unknown), "udp event [::]:9999");
        let other = SockEvent {
            protocol: 255,
            ..bind6
        };
        assert_eq!(describe(&other), "protocol 255 bind [::]:9999");
    }

    #[test]
    fn kinds_from_raw() {
        use SocketEventKind::*;
        for (raw, kind) in [
            (KIND_TCP_STATE, Some(TcpState)),
            (KIND_BIND, Some(Bind)),
            (KIND_RELEASE, Some(Release)),
            (KIND_LISTENED, Some(Listened)),
            (0, None),
            (5, None),
        ] {
            assert_eq!(SocketEventKind::from_raw(raw), kind);
        }
    }
}
