//! A share server whose parent dies (a `limactl` or host agent killed with
//! SIGKILL) ends its stream with a plain end, even with the guest's
//! requests unread in it: the vsock relay (`vhost-device-vsock` 0.3)
//! passes a plain end on to the guest, but drops the `ECONNRESET` that a
//! server simply dying would leave, and the guest's mount would hang.
//!
//! The real binary, started by `lima_fs_server::process::spawn` in a
//! second process (this test binary run again, as [`parent`]), which the
//! test then kills. No VM; needs Landlock and seccomp like `confine.rs`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use lima_fs_server::confine::Mode;
use lima_fs_server::process::{self, Spawn};
use lima_proto::fs::{FsRequest, FsToHost};

/// The fd of the server's end of the stream, in [`parent`].
const STREAM_FD: &str = "LIMA_TEST_PARENT_STREAM_FD";
const SHARE: &str = "LIMA_TEST_PARENT_SHARE";
const LOG: &str = "LIMA_TEST_PARENT_LOG";
/// What [`parent`] prints once the server serves.
const PID_LINE: &str = "server pid ";

/// Not a test on its own: the parent process that the test below starts
/// and kills. Spawns the server exactly as the host agent does, says its
/// pid, and waits to be killed.
#[test]
#[ignore = "the parent process of a_server_whose_parent_dies_ends_its_stream_with_a_plain_end"]
fn parent() {
    let fd: i32 = std::env::var(STREAM_FD)
        .expect("started by a_server_whose_parent_dies_ends_its_stream_with_a_plain_end")
        .parse()
        .unwrap();
    let (share, log) = (std::env::var(SHARE).unwrap(), std::env::var(LOG).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = process::spawn(Spawn {
            program: Path::new(env!("CARGO_BIN_EXE_lima-fs-server")),
            root: Path::new(&share),
            writable: true,
            stream: process::inherited_fd(fd).unwrap(),
            shm: None,
            log: Path::new(&log),
            confine: Mode::Require,
            test_hook: None,
        })
        .await
        .unwrap();
        println!("{PID_LINE}{}", running.child.id().unwrap());
        std::future::pending::<()>().await
    });
}

#[test]
fn a_server_whose_parent_dies_ends_its_stream_with_a_plain_end() {
    // The orphaned server is re-parented to us, so we see how it exits.
    // SAFETY: prctl takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let log = tmp.path().join("fs-0.log");

    let (mut guest, theirs) = UnixStream::pair().unwrap();
    let raw = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "parent", "--ignored", "--nocapture"])
        .env(STREAM_FD, raw.to_string())
        .env(SHARE, &share)
        .env(LOG, &log)
        .stdout(std::process::Stdio::piped());
    // SAFETY: only fcntl, on a number taken before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut parent = cmd.spawn().unwrap();
    drop(theirs);
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let pid: libc::pid_t = loop {
        let line = lines
            .next()
            .expect("the parent ended before the server served")
            .unwrap();
        if let Some(pid) = line.strip_prefix(PID_LINE) {
            break pid.parse().unwrap();
        }
    };

    // Requests the server answers into a socket nobody reads, until it
    // stops reading them: the replies fill our end, then the requests
    // stay unread in the server's.
    let mut requests = Vec::new();
    let (mut next_id, mut sent, mut stalled) = (1u64, 0usize, 0);
    guest.set_nonblocking(true).unwrap();
    while stalled < 3 {
        if requests.is_empty() {
            for _ in 0..1000 {
                let req = FsToHost::Request {
                    id: next_id,
                    req: FsRequest::Statfs,
                };
                next_id += 1;
                requests.extend(lima_proto::encode_frame(&req).unwrap());
            }
        }
        match guest.write(&requests) {
            Ok(n) => {
                requests.drain(..n);
                sent += n;
                stalled = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalled += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("writing requests: {e}"),
        }
        assert!(sent < 256 << 20, "the server kept reading requests");
    }

    // The parent dies as a killed limactl does.
    parent.kill().unwrap();
    parent.wait().unwrap();

    // The replies already sent, then a plain end (not ECONNRESET).
    guest.set_nonblocking(false).unwrap();
    guest
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match guest.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the stream ended with {e}, not a plain end; server log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    // The guest closes its end once told; the server then exits.
    drop(guest);
    let mut status = 0;
    // SAFETY: `status` is valid for the call; `pid` is our child now.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the server ended with status {status:#x}; its log:\n{log}"
    );
    assert!(log.contains("SIGTERM"), "{log}");
}
