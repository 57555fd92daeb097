//! The chunk framing of a forwarded connection (`lima_proto::relay`), as the
//! host reads what a guest sends back on a Forward stream.
//!
//! Input: the bytes arriving on the vsock side. `relay` runs against an
//! in-memory local socket whose own side ends at once; checks: it returns,
//! without panicking, and delivers exactly the chunks a plain reading of the
//! framing gives (each a little-endian `u32` length and that many bytes;
//! length 0 ends, a missing length ends quietly, a chunk longer than
//! `CHUNK` or cut short is an error).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lima_proto::relay::{relay, CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

/// What `relay` should deliver locally, and whether it should succeed.
fn expected(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return (out, true);
        };
        let n = u32::from_le_bytes(*len) as usize;
        if n == 0 {
            return (out, true);
        }
        if n > CHUNK || tail.len() < n {
            return (out, false);
        }
        out.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    let (want, ok) = expected(data);
    runtime().block_on(async {
        let (local_ours, local_theirs) = tokio::io::duplex(1 << 16);
        let (framed_ours, framed_theirs) = tokio::io::duplex(1 << 16);
        let peer = async {
            let (mut local_rd, mut local_wr) = tokio::io::split(local_ours);
            let (_framed_rd, mut framed_wr) = tokio::io::split(framed_ours);
            // Our local socket has nothing to say: relay sends an EOF chunk.
            local_wr.shutdown().await.unwrap();
            // The relay may stop reading early (an error): the rest may not fit.
            let _ = framed_wr.write_all(data).await;
            let _ = framed_wr.shutdown().await;
            let mut got = Vec::new();
            local_rd.read_to_end(&mut got).await.unwrap();
            got
        };
        let (result, got) = tokio::join!(relay(local_theirs, framed_theirs), peer);
        assert_eq!(
            got, want,
            "relay delivered other bytes than the chunks hold"
        );
        match result {
            Ok((_, back)) => {
                assert!(ok, "relay accepted a bad chunk");
                assert_eq!(back as usize, want.len(), "relay miscounted");
            }
            Err(e) => assert!(!ok, "relay failed on good chunks: {e}"),
        }
    });
});
