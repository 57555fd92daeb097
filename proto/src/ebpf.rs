//! Events written by the guest eBPF programs into their ring buffer and read by
//! the guest agent. Plain `#[repr(C)]` data: both sides see the same layout.

/// TCP state numbers as the kernel's `include/net/tcp_states.h` has them.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// Address family numbers (`AF_INET`, `AF_INET6`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One `sock:inet_sock_set_state` transition, as seen by the tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateEvent {
    /// Kernel time of the event (`bpf_ktime_get_ns`), for latency measurement.
    pub ktime_ns: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
