//! eBPF side of the guest agent's port watcher.
//!
//! Five programs, all pushing [`SockEvent`]s into the `EVENTS` ring buffer
//! that the agent reads (`guest-agent/src/ports/ebpf.rs`):
//!
//! - `inet_sock_set_state`, on the `sock:inet_sock_set_state` tracepoint. The
//!   kernel fires it on every TCP (and SCTP/MPTCP) socket state change; we
//!   keep only transitions into or out of `TCP_LISTEN`, i.e. a `listen()` and
//!   the close of a listening socket ([`KIND_TCP_STATE`]). The record is read
//!   straight from the program's context at offsets hardcoded from the format
//!   file, so the program needs neither BTF/CO-RE relocations nor GPL-only
//!   helpers.
//! - `post_bind4` and `post_bind6`, `cgroup/post_bind{4,6}` programs on the
//!   cgroup2 root: `bind()` just gave a TCP or UDP socket its local address and
//!   port ([`KIND_BIND`]). UDP has no listen and no tracepoint of its own, so
//!   this is how a UDP server is seen. They must return 1 (0 would fail the
//!   `bind()` with EPERM); they always do.
//! - `sock_release`, a `cgroup/sock_release` program (Linux 5.9+): the last
//!   close of an inet socket. The kernel does not let this hook read the local
//!   address or port, so `post_bind*` remembers each bound UDP socket by its
//!   socket cookie in `UDP_BOUND`, and the release of one of those is reported
//!   with that address ([`KIND_RELEASE`]). UDP sockets whose `bind()` we did
//!   not see (bound before the programs were attached, or given a port by
//!   `connect()`/`sendto()` without `bind()`) produce no release event.
//! - `listen_done`, a kretprobe on `inet_csk_listen_start`: a TCP `listen()`
//!   has published its listener ([`KIND_LISTENED`]). The LISTEN state change
//!   fires before the kernel hashes the new listener, so a sock_diag dump made
//!   on that event alone can miss it; one made on this event cannot. (A
//!   kretprobe costs only calls of that one function; a `syscalls:` tracepoint
//!   would put every syscall of every task on the slow path.)
//!
//! An event that does not fit in `EVENTS` is counted in `DROPPED` (per-CPU
//! `u64`, index [`DROPPED_INDEX`]); the agent checks it after each batch and
//! re-reads the truth (sock_diag) when it grew.
//!
//! Build by hand (the agent's `build.rs` does the same through aya-build):
//! `cargo +nightly build --release --target bpfel-unknown-none -Z build-std=core`
#![no_std]
#![no_main]

use core::mem::offset_of;

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock, kretprobe, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{RetProbeContext, SockContext, TracePointContext},
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use lima_proto::ebpf::{
    tcp_state, SockEvent, AF_INET, AF_INET6, DROPPED_INDEX, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND,
    KIND_LISTENED, KIND_RELEASE, KIND_TCP_STATE, SOCK_DGRAM, SOCK_STREAM,
};

/// Events for the agent. 256 KiB holds ~4000 events, far more than a burst of
/// bind/listen/close calls produces between two wake-ups of the reader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that did not fit in [`EVENTS`], one counter per CPU (no atomics
/// needed; the agent sums them).
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Where a UDP socket is bound, remembered from its `bind()` for its release.
#[repr(C)]
#[derive(Clone, Copy)]
struct Bound {
    saddr: [u8; 16],
    family: u16,
    sport: u16,
    /// Zero; keeps the value free of implicit padding.
    reserved: u32,
}

/// UDP sockets whose `bind()` we saw, by socket cookie. LRU, so sockets that
/// are never released through our hook (a cgroup detached in between) cannot
/// fill it; past 8192 bound UDP sockets at once the oldest lose their release
/// event (the agent's next dump still drops them).
#[map]
static UDP_BOUND: LruHashMap<u64, Bound> = LruHashMap::with_max_entries(8192, 0);

/// What a `cgroup/*` sock program returns to let the operation go on.
const ALLOW: i32 = 1;

/// Field offsets in the `sock:inet_sock_set_state` record, from
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` (read on
/// Linux 6.18; the layout has been the same since 4.16 through 5.x and 6.x):
///
/// ```text
/// field:const void * skaddr;  offset:8;  size:8;
/// field:int oldstate;         offset:16; size:4;
/// field:int newstate;         offset:20; size:4;
/// field:__u16 sport;          offset:24; size:2;   (host byte order)
/// field:__u16 dport;          offset:26; size:2;   (host byte order)
/// field:__u16 family;         offset:28; size:2;
/// field:__u16 protocol;       offset:30; size:2;
/// field:__u8 saddr[4];        offset:32; size:4;
/// field:__u8 daddr[4];        offset:36; size:4;
/// field:__u8 saddr_v6[16];    offset:40; size:16;
/// field:__u8 daddr_v6[16];    offset:56; size:16;
/// ```
mod offset {
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let oldstate: i32 = field(&ctx, offset::OLDSTATE);
    let newstate: i32 = field(&ctx, offset::NEWSTATE);
    if oldstate != tcp_state::LISTEN && newstate != tcp_state::LISTEN {
        return 0;
    }
    let family: u16 = field(&ctx, offset::FAMILY);
    // Addresses are read as whole words at constant offsets: the verifier
    // refuses loads through a ctx pointer that was moved (as a byte-copy loop
    // over the record would do).
    let (saddr, daddr) = match family {
        AF_INET => (
            ipv4(field(&ctx, offset::SADDR)),
            ipv4(field(&ctx, offset::DADDR)),
        ),
        AF_INET6 => (
            ipv6(
                field(&ctx, offset::SADDR_V6),
                field(&ctx, offset::SADDR_V6 + 8),
            ),
            ipv6(
                field(&ctx, offset::DADDR_V6),
                field(&ctx, offset::DADDR_V6 + 8),
            ),
        ),
        _ => return 0,
    };
    let event = SockEvent {
        // SAFETY: a helper call without arguments or preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        kind: KIND_TCP_STATE,
        family,
        protocol: field(&ctx, offset::PROTOCOL),
        // The record does not say; a TCP socket is SOCK_STREAM.
        sock_type: 0,
        oldstate,
        newstate,
        sport: field(&ctx, offset::SPORT),
        dport: field(&ctx, offset::DPORT),
        reserved: 0,
        saddr,
        daddr,
    };
    if !emit(&event) {
        // The agent's sock_diag reconciliation repairs the missed state; the
        // log line says why it had to.
        warn!(
            &ctx,
            "EVENTS ring buffer full: dropped a listen event for port {}", event.sport
        );
    }
    0
}

#[kretprobe]
pub fn listen_done(ctx: RetProbeContext) -> u32 {
    // `int inet_csk_listen_start(...)`: 0 when the listener is hashed.
    let ret: i32 = ctx.ret();
    if ret == 0 {
        emit(&SockEvent {
            // SAFETY: a helper call without arguments or preconditions.
            ktime_ns: unsafe { bpf_ktime_get_ns() },
            kind: KIND_LISTENED,
            ..SockEvent::default()
        });
    }
    0
}

/// `bind()` on an IPv4 socket gave it a local address and port.
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    let addr: u32 = sock_field(&ctx, offset_of!(bpf_sock, src_ip4));
    on_bind(&ctx, AF_INET, ipv4(addr));
    ALLOW
}

/// `bind()` on an IPv6 socket gave it a local address and port.
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    // One 4-byte load per word: the kernel allows no wider loads here.
    let base = offset_of!(bpf_sock, src_ip6);
    let words: [u32; 4] = [
        sock_field(&ctx, base),
        sock_field(&ctx, base + 4),
        sock_field(&ctx, base + 8),
        sock_field(&ctx, base + 12),
    ];
    on_bind(&ctx, AF_INET6, ipv6_words(words));
    ALLOW
}

/// The last close of an inet socket. Reports UDP sockets whose bind we saw.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let protocol: u32 = sock_field(&ctx, offset_of!(bpf_sock, protocol));
    if protocol != u32::from(IPPROTO_UDP) {
        return ALLOW;
    }
    // SAFETY: bpf_get_socket_cookie takes the program's own context (a
    // `struct bpf_sock *` in this program type), unmodified.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(bound) = UDP_BOUND.get_ptr(cookie) else {
        return ALLOW;
    };
    // SAFETY: the map returned a pointer to a live `Bound` value; we copy it
    // out at once. A concurrent update of the same key cannot happen (the
    // socket is being released, its bind is over).
    let bound = unsafe { *bound };
    let _ = UDP_BOUND.remove(cookie);
    let sock_type: u32 = sock_field(&ctx, offset_of!(bpf_sock, type_));
    emit(&SockEvent {
        // SAFETY: a helper call without arguments or preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        kind: KIND_RELEASE,
        family: bound.family,
        protocol: IPPROTO_UDP,
        sock_type: sock_type as u16,
        sport: bound.sport,
        saddr: bound.saddr,
        ..SockEvent::default()
    });
    ALLOW
}

/// The common part of `post_bind4`/`post_bind6`: keep TCP and UDP sockets,
/// remember UDP ones for their release, report the bind.
#[inline(always)]
fn on_bind(ctx: &SockContext, family: u16, saddr: [u8; 16]) {
    let sock_type: u32 = sock_field(ctx, offset_of!(bpf_sock, type_));
    let protocol: u32 = sock_field(ctx, offset_of!(bpf_sock, protocol));
    let (sock_type, protocol) = (sock_type as u16, protocol as u16);
    let tcp = sock_type == SOCK_STREAM && protocol == IPPROTO_TCP;
    let udp = sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP;
    if !tcp && !udp {
        return;
    }
    // Host byte order in `struct bpf_sock`.
    let port: u32 = sock_field(ctx, offset_of!(bpf_sock, src_port));
    let sport = port as u16;
    if udp {
        // SAFETY: bpf_get_socket_cookie takes the program's own context (a
        // `struct bpf_sock *` in this program type), unmodified.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let bound = Bound {
            saddr,
            family,
            sport,
            reserved: 0,
        };
        // A full LRU map evicts its oldest entry; an error here only costs
        // this socket's release event.
        let _ = UDP_BOUND.insert(cookie, bound, 0);
    }
    emit(&SockEvent {
        // SAFETY: a helper call without arguments or preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        kind: KIND_BIND,
        family,
        protocol,
        sock_type,
        sport,
        saddr,
        ..SockEvent::default()
    });
}

/// Writes `event` to [`EVENTS`]; when it does not fit, counts it in
/// [`DROPPED`] and returns false.
#[inline(always)]
fn emit(event: &SockEvent) -> bool {
    match EVENTS.reserve::<SockEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
            true
        }
        None => {
            if let Some(count) = DROPPED.get_ptr_mut(DROPPED_INDEX) {
                // SAFETY: the pointer is this CPU's slot of a live per-CPU
                // array entry; a program runs with migration disabled, so no
                // other CPU touches this slot.
                unsafe { *count += 1 };
            }
            false
        }
    }
}

/// Reads the `struct bpf_sock` field of type `T` at `offset` from a
/// `cgroup/sock` program's context.
#[inline(always)]
fn sock_field<T: Copy>(ctx: &SockContext, offset: usize) -> T {
    // SAFETY: a cgroup sock program may load from its context directly; the
    // verifier rejects the program unless each load is one the attach type
    // allows (`sock_filter_is_valid_access`: src_ip4 in post_bind4 only,
    // src_ip6 in post_bind6 only, src_port in both, family/type/protocol in
    // all), lies inside `struct bpf_sock`, has the field's size and uses the
    // unmodified ctx pointer with a constant offset. Every `T` read here is a
    // `u32`, the size of the field (or of one word of src_ip6). Volatile
    // keeps LLVM from merging neighbouring loads into a wider one.
    unsafe {
        ctx.as_ptr()
            .cast::<u8>()
            .add(offset)
            .cast::<T>()
            .read_volatile()
    }
}

/// Reads the tracepoint record field of type `T` at `offset`.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: a tracepoint program may load from its context directly; the
    // verifier rejects the program unless every such load lies inside the
    // record, is aligned to its size and uses the unmodified ctx pointer with a
    // constant offset (`tp_prog_is_valid_access`). The offsets come from the
    // format file, every `T` read is an integer the size of its field (or a
    // naturally aligned 8-byte half of an address), and the context is 8-byte
    // aligned. Volatile keeps LLVM from merging or splitting the loads.
    unsafe {
        ctx.as_ptr()
            .cast::<u8>()
            .add(offset)
            .cast::<T>()
            .read_volatile()
    }
}

/// An IPv4 address (4 bytes in network order, read as one `u32`) in the
/// event's 16-byte field.
#[inline(always)]
fn ipv4(word: u32) -> [u8; 16] {
    let [a, b, c, d] = word.to_ne_bytes();
    [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// An IPv6 address from its four words, each read as one `u32` (network byte
/// order in memory, so the native-endian bytes are the address bytes).
#[inline(always)]
fn ipv6_words(words: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = words[0].to_ne_bytes();
    let [e, f, g, h] = words[1].to_ne_bytes();
    let [i, j, k, l] = words[2].to_ne_bytes();
    let [m, n, o, p] = words[3].to_ne_bytes();
    [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p]
}

/// An IPv6 address from its two halves, each read as one `u64`.
#[inline(always)]
fn ipv6(high: u64, low: u64) -> [u8; 16] {
    let [a, b, c, d, e, f, g, h] = high.to_ne_bytes();
    let [i, j, k, l, m, n, o, p] = low.to_ne_bytes();
    [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel wants a license string. We call no GPL-only helper (contexts
/// are read by plain loads, not `bpf_probe_read_kernel`; ring buffer, map,
/// ktime and socket-cookie helpers are not GPL-only), so the programs can
/// carry the project's own license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
