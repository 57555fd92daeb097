//! Events written by the guest eBPF programs into their ring buffer and read by
//! the guest agent. Plain `#[repr(C)]` data: both sides see the same layout.
//!
//! Three hooks write the same [`SockEvent`], told apart by [`SockEvent::kind`]:
//!
//! | kind | hook | fires on | fields set |
//! | --- | --- | --- | --- |
//! | [`KIND_TCP_STATE`] | tracepoint `sock:inet_sock_set_state` | a TCP socket enters or leaves LISTEN | all but `sock_type` |
//! | [`KIND_BIND`] | `cgroup/post_bind4`, `cgroup/post_bind6` | `bind()` gave a TCP or UDP socket its port | `family`, `protocol`, `sock_type`, `saddr`, `sport` |
//! | [`KIND_RELEASE`] | `cgroup/sock_release` | the last close of a UDP socket whose `bind()` we saw | `family`, `protocol`, `sock_type`, `saddr`, `sport` (from the bind), `dport` |
//! | [`KIND_LISTENED`] | kretprobe on `inet_csk_listen_start` | a TCP `listen()` succeeded: the listener is in the socket tables now | none |
//!
//! Fields a hook does not set are zero.
//!
//! With `std`, [`SockEvent::from_bytes`], [`SocketEventKind`], [`local_addr`]
//! and [`describe`] read the records on the agent's side (`ebpf/decode.rs`).

#[cfg(feature = "std")]
mod decode;
#[cfg(feature = "std")]
pub use decode::{describe, local_addr, SocketEventKind, SOCK_EVENT_SIZE};

/// TCP state numbers as the kernel's `include/net/tcp_states.h` has them.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// Address family numbers (`AF_INET`, `AF_INET6`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Protocol numbers (`IPPROTO_TCP`, `IPPROTO_UDP`).
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// Socket types (`SOCK_STREAM`, `SOCK_DGRAM`).
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;

/// [`SockEvent::kind`]: a TCP state change into or out of LISTEN.
pub const KIND_TCP_STATE: u16 = 1;
/// [`SockEvent::kind`]: a TCP or UDP socket was bound to a local port.
pub const KIND_BIND: u16 = 2;
/// [`SockEvent::kind`]: a bound UDP socket was released (closed for good).
pub const KIND_RELEASE: u16 = 3;
/// [`SockEvent::kind`]: a `listen()` call succeeded. The LISTEN state change
/// ([`KIND_TCP_STATE`]) fires before the kernel publishes the listener; this
/// one fires after, so a sock_diag dump made on it sees the listener.
pub const KIND_LISTENED: u16 = 4;

/// Index of the one counter in the `DROPPED` map (a per-CPU array of `u64`):
/// how many events the programs could not reserve room for in `EVENTS`.
pub const DROPPED_INDEX: u32 = 0;

/// One socket event. 64 bytes, no implicit padding:
///
/// ```text
/// offset  size  field
///      0     8  ktime_ns
///      8     2  kind        KIND_*
///     10     2  family      AF_INET / AF_INET6
///     12     2  protocol    IPPROTO_*
///     14     2  sock_type   SOCK_* (0 from the TCP tracepoint, which does not say)
///     16     4  oldstate    TCP state before (KIND_TCP_STATE only)
///     20     4  newstate    TCP state after  (KIND_TCP_STATE only)
///     24     2  sport       local port, host byte order
///     26     2  dport       remote port, host byte order
///     28     4  reserved    zero
///     32    16  saddr       local address, network byte order; IPv4 in the first 4 bytes
///     48    16  daddr       remote address, likewise (KIND_TCP_STATE only)
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEvent {
    /// Kernel time of the event (`bpf_ktime_get_ns`), for latency measurement.
    pub ktime_ns: u64,
    /// What happened: [`KIND_TCP_STATE`], [`KIND_BIND`], [`KIND_RELEASE`] or
    /// [`KIND_LISTENED`].
    pub kind: u16,
    pub family: u16,
    pub protocol: u16,
    pub sock_type: u16,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    /// Zero; keeps the layout free of implicit padding.
    pub reserved: u32,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The event's former name, from when the TCP tracepoint was the only hook.
pub type SockStateEvent = SockEvent;

// The layout is shared with the eBPF object; fail the build if it moves.
const _: () = {
    assert!(core::mem::size_of::<SockEvent>() == 64);
    assert!(core::mem::offset_of!(SockEvent, kind) == 8);
    assert!(core::mem::offset_of!(SockEvent, oldstate) == 16);
    assert!(core::mem::offset_of!(SockEvent, sport) == 24);
    assert!(core::mem::offset_of!(SockEvent, reserved) == 28);
    assert!(core::mem::offset_of!(SockEvent, saddr) == 32);
    assert!(core::mem::offset_of!(SockEvent, daddr) == 48);
};
