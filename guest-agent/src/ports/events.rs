//! What the eBPF programs report, and the seam it reaches the agent
//! through: the [`SockEvent`] records of the ring buffer, the hook each one
//! came from ([`SocketEventKind`]), their text for the log (both decoded in
//! `lima_proto::ebpf`, where `fuzz/` reaches them), and [`EventSource`],
//! the one trait between the privileged loader ([`super::ebpf`]) and the
//! watcher, so that the watcher is tested with a fake source and no root.
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
use std::{future::Future, io};

use lima_proto::ebpf::SockEvent;
// The pure decoding lives in proto, where `fuzz/` feeds it without building
// the agent.
pub use lima_proto::ebpf::{describe, SocketEventKind};

/// Where events come from: the ring buffer, or a fake in tests.
pub(super) trait EventSource: Send + 'static {
    /// Waits until at least one event is ready and appends what is ready to
    /// `out`. An error ends the watcher.
    fn read(&mut self, out: &mut Vec<SockEvent>) -> impl Future<Output = io::Result<()>> + Send;

    /// How many events the programs have dropped since they were loaded.
    fn dropped(&mut self) -> io::Result<u64>;
}

#[cfg(test)]
pub(super) mod tests {
    use lima_proto::ebpf::{IPPROTO_UDP, KIND_TCP_STATE, SOCK_DGRAM};

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
}
