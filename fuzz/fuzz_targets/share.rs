//! The share protocol, as a guest speaks it to the host's file server:
//! arbitrary bytes → the frame decoder → (if they decode) a real `Server`
//! over a fresh temporary share, then a check that nothing outside the share
//! changed.
//!
//! Layout per input: `tmp/share/{f, d/g, esc -> ../outside, abs -> /abs/outside,
//! etc -> /etc}` and `tmp/outside/secret`. Node ids are small integers handed
//! out in order (1 = root), file handles likewise, so the fuzzer reaches
//! deep requests quickly. After the server returns: `outside/` still holds
//! exactly `secret` with its content and one link, and `tmp/` holds exactly
//! `share` and `outside`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lima_proto::fs::{FsToGuest, FsToHost};
use lima_proto::{encode_frame, read_frame, read_frame_async};
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(8)
            .enable_all()
            .build()
            .unwrap()
    })
}

const SECRET: &[u8] = b"host secret";

fn layout() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(share.join("d")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), SECRET).unwrap();
    std::fs::write(share.join("f"), b"0123456789").unwrap();
    std::fs::write(share.join("d/g"), b"g").unwrap();
    std::os::unix::fs::symlink("../outside", share.join("esc")).unwrap();
    std::os::unix::fs::symlink(&outside, share.join("abs")).unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc")).unwrap();
    tmp
}

fn check_outside_untouched(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let mut top: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["outside", "share"],
        "something appeared beside the share"
    );
    let outside = tmp.join("outside");
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "outside/ changed");
    let meta = std::fs::symlink_metadata(outside.join("secret")).unwrap();
    assert_eq!(meta.nlink(), 1, "outside/secret was hard-linked");
    assert_eq!(meta.mode() & 0o7777, 0o644, "outside/secret was chmodded");
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        SECRET,
        "outside/secret was written"
    );
}

fuzz_target!(|data: &[u8]| {
    // Decode as many whole frames as the input holds.
    let mut rest = data;
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = read_frame::<_, FsToHost>(&mut rest) {
        frames.push(frame);
    }
    if frames.is_empty() {
        return;
    }
    let tail = rest.to_vec();
    let tmp = layout();
    let share = tmp.path().join("share");
    runtime().block_on(async move {
        let server = lima_fs_server::Server::new(&share, true).unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(server.serve(theirs));
        let (mut rd, mut wr) = tokio::io::split(ours);
        // Drain replies so the server never blocks on a full pipe.
        let reader = tokio::spawn(async move {
            while let Ok(Some(_)) = read_frame_async::<_, FsToGuest>(&mut rd).await {}
        });
        for f in &frames {
            if wr.write_all(&encode_frame(f).unwrap()).await.is_err() {
                break;
            }
        }
        // Whatever did not decode goes to the server's own decoder.
        let _ = wr.write_all(&tail).await;
        let _ = wr.shutdown().await;
        let result = tokio::time::timeout(Duration::from_secs(20), served)
            .await
            .expect("serve returns after EOF");
        let _ = result.expect("serve does not panic");
        let _ = reader.await;
    });
    check_outside_untouched(tmp.path());
});
