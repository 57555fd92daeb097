//! eBPF side of the guest agent's port watcher.
//!
//! One program, `inet_sock_set_state`, on the `sock:inet_sock_set_state`
//! tracepoint. The kernel fires it on every TCP (and SCTP/MPTCP) socket state
//! change; we keep only transitions into or out of `TCP_LISTEN`, i.e. a
//! `listen()` and the close of a listening socket, and push each as a
//! [`SockStateEvent`] into the `EVENTS` ring buffer that the agent reads
//! (`guest-agent/src/watcher.rs`).
//!
//! The tracepoint record is read straight from the program's context (a plain
//! load the verifier bounds-checks), at offsets hardcoded from the format file,
//! so the program needs neither BTF/CO-RE relocations nor GPL-only helpers.
//!
//! Build by hand (the agent's `build.rs` does the same through aya-build):
//! `cargo +nightly build --release --target bpfel-unknown-none -Z build-std=core`
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use lima_proto::ebpf::{tcp_state, SockStateEvent, AF_INET, AF_INET6};

/// Events for the agent. 256 KiB holds ~3600 events, far more than a burst of
/// listen/close calls produces between two wake-ups of the reader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

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
    let event = SockStateEvent {
        // SAFETY: a helper call without arguments or preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        oldstate,
        newstate,
        sport: field(&ctx, offset::SPORT),
        dport: field(&ctx, offset::DPORT),
        family,
        protocol: field(&ctx, offset::PROTOCOL),
        saddr,
        daddr,
    };
    match EVENTS.reserve::<SockStateEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        // The agent's sock_diag reconciliation repairs the missed state; the
        // log line says why it had to.
        None => warn!(
            &ctx,
            "EVENTS ring buffer full: dropped a listen event for port {}", event.sport
        ),
    }
    0
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

/// The kernel wants a license string. We call no GPL-only helper (the record
/// is read by plain loads, not `bpf_probe_read_kernel`), so the program can
/// carry the project's own license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
