//! The share server process, started exactly as the host agent starts it
//! (`lima_fs_server::process::spawn`, the real binary), confined and not:
//! what the kernel refuses once it is confined, with our own path checks
//! out of the way (the test-only requests of `lima_fs_server::test_hook`),
//! and that a confined server still serves every kind of request.
//!
//! Needs a kernel with Landlock (ABI 3 or later) and seccomp; no root, no VM.
#![cfg(target_os = "linux")]

use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};

use lima_fs_server::confine::{Confinement, Mode};
use lima_fs_server::process::{self, Running, Spawn, SpawnError};
use lima_proto::fs::{FsReply, FsRequest, FsToGuest, FsToHost, ROOT_ID};
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const EACCES: &str = "errno 13";

struct Dirs {
    _tmp: tempfile::TempDir,
    share: PathBuf,
    secret: PathBuf,
    log: PathBuf,
}

/// `tmp/share/inside` (a file) and `tmp/outside/secret`.
fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(share.join("inside"), b"shared").unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    Dirs {
        share,
        secret: outside.join("secret"),
        log: tmp.path().join("fs-0.log"),
        _tmp: tmp,
    }
}

/// A started server: the guest's end of its stream, and the test hook.
struct Server {
    running: Running,
    guest: UnixStream,
    hook: BufReader<UnixStream>,
    next_id: u64,
}

async fn start(d: &Dirs, writable: bool, confine: Mode) -> Result<Server, SpawnError> {
    let (guest, theirs) = StdStream::pair().unwrap();
    let (hook, hook_theirs) = StdStream::pair().unwrap();
    let running = process::spawn(Spawn {
        program: Path::new(env!("CARGO_BIN_EXE_lima-fs-server")),
        root: &d.share,
        writable,
        stream: theirs.into(),
        shm: None,
        log: &d.log,
        confine,
        test_hook: Some(hook_theirs.into()),
    })
    .await?;
    let tokio_stream = |s: StdStream| {
        s.set_nonblocking(true).unwrap();
        UnixStream::from_std(s).unwrap()
    };
    Ok(Server {
        running,
        guest: tokio_stream(guest),
        hook: BufReader::new(tokio_stream(hook)),
        next_id: 1,
    })
}

impl Server {
    /// A test request; its answer, or `None` if the server went away.
    async fn hook(&mut self, line: &str) -> Option<String> {
        self.hook
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        let mut answer = String::new();
        match self.hook.read_line(&mut answer).await {
            Ok(n) if n > 0 => Some(answer.trim_end().to_string()),
            _ => None,
        }
    }

    /// A guest request through the share stream, as the FUSE client sends it.
    async fn call(&mut self, req: FsRequest) -> FsReply {
        let id = self.next_id;
        self.next_id += 1;
        write_frame_async(&mut self.guest, &FsToHost::Request { id, req })
            .await
            .unwrap();
        loop {
            match read_frame_async::<_, FsToGuest>(&mut self.guest).await {
                Ok(Some(FsToGuest::Reply { id: got, reply })) if got == id => return reply,
                Ok(Some(_)) => continue, // invalidations
                other => panic!("no reply: {other:?}"),
            }
        }
    }

    /// Closes the guest's end, as a VM that went away; the exit status.
    async fn close(mut self) -> std::process::ExitStatus {
        drop(self.guest);
        drop(self.hook);
        self.running.child.wait().await.unwrap()
    }

    /// [`Self::close`], and the server must have ended cleanly.
    async fn done(self, log: &Path) {
        let status = self.close().await;
        assert!(
            status.success(),
            "{status}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn node(reply: FsReply) -> u64 {
    match reply {
        FsReply::Entry(e) => e.attr.id,
        FsReply::Made { entry, .. } | FsReply::Created { entry, .. } => entry.attr.id,
        other => panic!("not an entry: {other:?}"),
    }
}

fn fh(reply: FsReply) -> u64 {
    match reply {
        FsReply::Opened { fh } | FsReply::Created { fh, .. } => fh,
        other => panic!("not opened: {other:?}"),
    }
}

/// The test: a path outside the share, opened with our checks
/// skipped, is refused by the kernel once the server is confined (EACCES
/// from Landlock) and opens without confinement, so the kernel is what
/// refused it.
#[tokio::test]
async fn the_kernel_refuses_a_path_outside_the_share() {
    let d = dirs();
    let secret = d.secret.display();

    let mut s = start(&d, true, Mode::Require).await.unwrap();
    assert!(
        s.running.confinement.is_full(),
        "{:?}",
        s.running.confinement
    );
    // As the kernel sees the process: no new privileges, a seccomp filter.
    let pid = s.running.child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for line in ["NoNewPrivs:\t1", "Seccomp:\t2"] {
        assert!(status.contains(line), "no {line:?} in\n{status}");
    }
    assert_eq!(s.hook(&format!("open {secret}")).await.unwrap(), EACCES);
    assert_eq!(s.hook("open /etc/passwd").await.unwrap(), EACCES);
    assert_eq!(
        s.hook(&format!(
            "create {}",
            d.secret.with_file_name("new").display()
        ))
        .await
        .unwrap(),
        EACCES
    );
    // What is inside stays reachable.
    let inside = format!("open {}", d.share.join("inside").display());
    assert_eq!(s.hook(&inside).await.unwrap(), "ok");
    s.done(&d.log).await;

    let mut s = start(&d, true, Mode::Off).await.unwrap();
    assert_eq!(s.running.confinement, Confinement::NONE);
    assert_eq!(s.hook(&format!("open {secret}")).await.unwrap(), "ok");
    assert_eq!(s.hook(&inside).await.unwrap(), "ok");
    s.done(&d.log).await;
}

/// A read-only share gives the confined server no right to change it,
/// whatever its own checks say.
#[tokio::test]
async fn a_read_only_share_is_read_only_to_the_kernel() {
    let d = dirs();
    let new = format!("create {}", d.share.join("new").display());
    let inside = format!("open {}", d.share.join("inside").display());

    let mut s = start(&d, false, Mode::Require).await.unwrap();
    assert_eq!(s.hook(&new).await.unwrap(), EACCES);
    assert_eq!(s.hook(&inside).await.unwrap(), "ok");
    s.done(&d.log).await;
    assert!(!d.share.join("new").exists());

    let mut s = start(&d, false, Mode::Off).await.unwrap();
    assert_eq!(s.hook(&new).await.unwrap(), "ok");
    s.done(&d.log).await;
    assert!(d.share.join("new").exists());
}

/// A syscall off the allowlist (a new socket) stops the confined server,
/// and its log names the syscall; unconfined, the same call works.
#[tokio::test]
async fn a_syscall_off_the_allowlist_stops_the_server() {
    let d = dirs();
    let mut s = start(&d, true, Mode::Require).await.unwrap();
    assert_eq!(s.hook("socket").await, None);
    let status = s.close().await;
    assert_eq!(status.code(), Some(159), "{status}");
    let log = std::fs::read_to_string(&d.log).unwrap();
    let named = format!("seccomp refused syscall {}", libc::SYS_socket);
    assert!(log.contains(&named), "{log}");

    let mut s = start(&d, true, Mode::Off).await.unwrap();
    assert_eq!(s.hook("socket").await.unwrap(), "ok");
    s.done(&d.log).await;
}

/// Confined, the server still does everything a guest asks of a share:
/// reads through the `/proc/self/fd` reopen, creates, writes, truncates,
/// renames across directories, links, symlinks, removes, lists, locks.
#[tokio::test]
async fn a_confined_server_serves_every_kind_of_request() {
    let d = dirs();
    let mut s = start(&d, true, Mode::Require).await.unwrap();
    let inside = node(
        s.call(FsRequest::Lookup {
            parent: ROOT_ID,
            name: b"inside".to_vec(),
        })
        .await,
    );
    let f = fh(s
        .call(FsRequest::Open {
            id: inside,
            flags: libc::O_RDONLY,
        })
        .await);
    assert_eq!(
        s.call(FsRequest::Read {
            fh: f,
            offset: 0,
            size: 100
        })
        .await,
        FsReply::Data(b"shared".to_vec())
    );
    assert_eq!(s.call(FsRequest::Release { fh: f }).await, FsReply::Ok);

    let sub = node(
        s.call(FsRequest::Mkdir {
            parent: ROOT_ID,
            name: b"sub".to_vec(),
            mode: 0o755,
            umask: 0o022,
        })
        .await,
    );
    let created = s
        .call(FsRequest::Create {
            parent: ROOT_ID,
            name: b"new".to_vec(),
            mode: 0o644,
            umask: 0o022,
            flags: libc::O_RDWR,
        })
        .await;
    let new = node(created.clone());
    let f = fh(created);
    assert_eq!(
        s.call(FsRequest::Write {
            fh: f,
            offset: 0,
            data: b"hello world".to_vec()
        })
        .await,
        FsReply::Written(11)
    );
    assert_eq!(
        s.call(FsRequest::Fsync {
            fh: f,
            datasync: false
        })
        .await,
        FsReply::Ok
    );
    let lock = lima_proto::fs::Lock {
        start: 0,
        end: u64::MAX,
        typ: libc::F_WRLCK,
        pid: 1,
    };
    assert_eq!(
        s.call(FsRequest::Setlk {
            fh: f,
            owner: 7,
            lock,
            wait: false
        })
        .await,
        FsReply::Ok
    );
    assert_eq!(
        s.call(FsRequest::Flock {
            fh: f,
            owner: 7,
            op: libc::LOCK_EX | libc::LOCK_NB
        })
        .await,
        FsReply::Ok
    );
    assert!(matches!(
        s.call(FsRequest::Setattr {
            id: new,
            fh: None,
            mode: Some(0o600),
            size: Some(5),
            atime: None,
            mtime: None,
        })
        .await,
        FsReply::Attr(_)
    ));
    assert_eq!(s.call(FsRequest::Release { fh: f }).await, FsReply::Ok);
    // Across directories: Landlock's Refer right.
    assert_eq!(
        s.call(FsRequest::Rename {
            parent: ROOT_ID,
            name: b"new".to_vec(),
            new_parent: sub,
            new_name: b"moved".to_vec(),
            flags: 0,
        })
        .await,
        FsReply::Ok
    );
    node(
        s.call(FsRequest::Link {
            id: new,
            new_parent: ROOT_ID,
            new_name: b"hard".to_vec(),
        })
        .await,
    );
    node(
        s.call(FsRequest::Symlink {
            parent: sub,
            name: b"link".to_vec(),
            target: b"../inside".to_vec(),
        })
        .await,
    );
    match s
        .call(FsRequest::ReaddirAt {
            id: sub,
            offset: 0,
            plus: true,
        })
        .await
    {
        FsReply::Dir(entries) => {
            let mut names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
            names.sort();
            names.retain(|n| !n.starts_with(b"."));
            assert_eq!(names, [&b"link"[..], b"moved"], "{entries:?}");
        }
        other => panic!("readdir: {other:?}"),
    }
    assert!(matches!(
        s.call(FsRequest::Statfs).await,
        FsReply::Statfs(_)
    ));
    assert_eq!(
        s.call(FsRequest::Unlink {
            parent: ROOT_ID,
            name: b"hard".to_vec(),
        })
        .await,
        FsReply::Ok
    );
    s.done(&d.log).await;

    assert_eq!(std::fs::read(d.share.join("sub/moved")).unwrap(), b"hello");
    assert!(!d.share.join("hard").exists());
    assert_eq!(
        std::fs::read_link(d.share.join("sub/link")).unwrap(),
        Path::new("../inside")
    );
}

/// A server that cannot serve exits before the ready line, and `spawn`
/// says why with the last lines of its log.
#[tokio::test]
async fn a_server_that_cannot_start_says_why() {
    let mut d = dirs();
    d.share = d.share.join("missing");
    match start(&d, true, Mode::Warn).await {
        Err(SpawnError::Failed { log_tail, .. }) => {
            assert!(log_tail.contains("no such directory"), "{log_tail}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a missing folder was served"),
    }
}
