//! The guest agent's reading of eBPF ring buffer records
//! (`lima_proto::ebpf::SockEvent::from_bytes`, then the event's kind,
//! address and log line), which the port watcher acts on.
//!
//! Input: records, each a length byte and that many bytes (the ring buffer
//! hands over records of any length). Checks: nothing panics; a record
//! decodes exactly when it holds a whole event, to what an unaligned read of
//! the `#[repr(C)]` struct gives (how the agent read records before), and
//! back to its own bytes; the address and the log line agree with the
//! fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lima_proto::ebpf::{describe, local_addr, SockEvent, SocketEventKind, SOCK_EVENT_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (record, next) = tail.split_at((len as usize).min(tail.len()));
        rest = next;
        let event = SockEvent::from_bytes(record);
        let unaligned = (record.len() >= SOCK_EVENT_SIZE).then(|| {
            // SAFETY: `record` holds at least size_of::<SockEvent>() bytes,
            // the read is unaligned, and SockEvent is #[repr(C)] integers
            // and byte arrays, so every bit pattern is a valid value.
            unsafe { record.as_ptr().cast::<SockEvent>().read_unaligned() }
        });
        assert_eq!(
            event, unaligned,
            "from_bytes differs from the struct's memory"
        );
        let Some(event) = event else { continue };
        assert_eq!(
            event.to_bytes(),
            record[..SOCK_EVENT_SIZE],
            "to_bytes differs"
        );
        let text = describe(&event);
        let listened = SocketEventKind::from_raw(event.kind) == Some(SocketEventKind::Listened);
        match local_addr(&event) {
            Some(addr) => {
                assert_eq!(addr.port(), event.sport);
                assert!(listened || text.ends_with(&addr.to_string()), "{text}");
            }
            None => assert!(listened || text.contains("(family "), "{text}"),
        }
    }
});
