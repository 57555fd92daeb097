//! The control, exec, events, forward and share-setup frames (`lima_proto`'s
//! length-prefixed bincode), as each side decodes what the other sends.
//!
//! Input: one selector byte naming the message type (`TYPES`, modulo its
//! length), then a stream of frames of that type. The stream is decoded
//! until its end or the first error, the way a connection is, by both
//! `read_frame` and `read_frame_async`. Checks: neither panics nor allocates
//! past libFuzzer's limits, both agree (values and how they stopped), and
//! every decoded value encodes and decodes back to itself.
//!
//! `cargo xtask fuzz` writes seeds made from real messages (xtask's
//! `fuzz/seeds.rs`), whose first byte follows the same table: keep the two
//! in step.
#![no_main]

use std::fmt::Debug;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lima_proto::fs::{FsToGuest, FsToHost, ShareSetup, ShareStatus};
use lima_proto::{
    encode_frame, read_frame, read_frame_async, ControlReply, ControlRequest, Datagram, ExecInput,
    ExecOutput, ExecRequest, ForwardReply, ForwardRequest, GuestEvent, Hello, HelloReply,
    HostEvent, Subscribe,
};
use serde::{de::DeserializeOwned, Serialize};

/// What the host decodes from the guest, then what the guest decodes from
/// the host (`Datagram` goes both ways).
const TYPES: [fn(&[u8]); 17] = [
    // guest → host
    check::<HelloReply>,
    check::<ControlReply>,
    check::<ExecOutput>,
    check::<GuestEvent>,
    check::<ForwardReply>,
    check::<Datagram>,
    check::<ShareStatus>,
    check::<FsToHost>,
    // host → guest
    check::<Hello>,
    check::<ControlRequest>,
    check::<ExecRequest>,
    check::<ExecInput>,
    check::<Subscribe>,
    check::<HostEvent>,
    check::<ForwardRequest>,
    check::<ShareSetup>,
    check::<FsToGuest>,
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

/// The values a stream of frames decodes to, and how it ended.
type Decoded<T> = (Vec<T>, String);

fn ending<E: Debug>(r: Result<Option<()>, E>) -> String {
    match r {
        Ok(_) => "end of stream".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

fn decode_sync<T: DeserializeOwned>(mut data: &[u8]) -> Decoded<T> {
    let mut values = Vec::new();
    loop {
        match read_frame::<_, T>(&mut data) {
            Ok(Some(v)) => values.push(v),
            other => return (values, ending(other.map(|_| None))),
        }
    }
}

async fn decode_async<T: DeserializeOwned>(mut data: &[u8]) -> Decoded<T> {
    let mut values = Vec::new();
    loop {
        match read_frame_async::<_, T>(&mut data).await {
            Ok(Some(v)) => values.push(v),
            other => return (values, ending(other.map(|_| None))),
        }
    }
}

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let (values, end) = decode_sync::<T>(data);
    let (async_values, async_end) = runtime().block_on(decode_async::<T>(data));
    assert_eq!(
        values, async_values,
        "read_frame and read_frame_async disagree"
    );
    assert_eq!(
        end, async_end,
        "read_frame and read_frame_async stop differently"
    );
    for v in &values {
        let frame = encode_frame(v).expect("a decoded message encodes again");
        let back: T = read_frame(&mut &frame[..])
            .expect("a re-encoded message decodes")
            .expect("a re-encoded message is a whole frame");
        assert_eq!(
            &back, v,
            "a message changed on its way through encode and decode"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, frames)) = data.split_first() {
        TYPES[selector as usize % TYPES.len()](frames);
    }
});
