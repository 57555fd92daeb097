//! Protocol tests: an in-process client talks to a real `Server` over
//! `tokio::io::duplex`, on a temporary directory. No root, no VM.
//!
//! Every test builds `tmp/share` (the root) beside `tmp/outside/secret`,
//! which nothing the client sends may reach.
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::fs::*;
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::fs::Fs;
use crate::Server;

const RW: i32 = libc::O_RDWR;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<FsReply>>>>;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("share");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    Env {
        _tmp: tmp,
        root,
        outside,
    }
}

struct Client {
    wr: tokio::sync::Mutex<WriteHalf<DuplexStream>>,
    pending: Pending,
    next: AtomicU64,
    inval: tokio::sync::Mutex<mpsc::UnboundedReceiver<FsToGuest>>,
    fs: Arc<Fs>,
    served: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

fn start(root: &Path, writable: bool) -> Client {
    let server = Server::new(root, writable).unwrap();
    let fs = server.fs();
    let (ours, theirs) = tokio::io::duplex(4 << 20);
    let served = tokio::spawn(server.serve(theirs));
    let (mut rd, wr) = tokio::io::split(ours);
    let pending: Pending = Arc::default();
    let (itx, irx) = mpsc::unbounded_channel();
    let p = pending.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = read_frame_async::<_, FsToGuest>(&mut rd).await {
            match msg {
                FsToGuest::Reply { id, reply } => {
                    let tx = p
                        .lock()
                        .unwrap()
                        .remove(&id)
                        .expect("a reply for a request we sent");
                    let _ = tx.send(reply);
                }
                other => {
                    let _ = itx.send(other);
                }
            }
        }
    });
    Client {
        wr: tokio::sync::Mutex::new(wr),
        pending,
        next: AtomicU64::new(1),
        inval: tokio::sync::Mutex::new(irx),
        fs,
        served: Mutex::new(Some(served)),
    }
}

fn entry(r: FsReply) -> Result<Entry, i32> {
    match r {
        FsReply::Entry(e) | FsReply::Made { entry: e, .. } => Ok(e),
        FsReply::Err(e) => Err(e),
        other => panic!("not an entry: {other:?}"),
    }
}

impl Client {
    async fn call(&self, req: FsRequest) -> FsReply {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        write_frame_async(&mut *self.wr.lock().await, &FsToHost::Request { id, req })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("reply in time")
            .unwrap()
    }

    async fn err(&self, req: FsRequest) -> i32 {
        match self.call(req.clone()).await {
            FsReply::Err(e) => e,
            other => panic!("{req:?} should fail, got {other:?}"),
        }
    }

    /// Sends a `Forget` (which has no reply), then a round trip behind it:
    /// requests are taken in order, so it has been applied on return.
    async fn forget(&self, id: u64, nlookup: u64) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let req = FsRequest::Forget { id, nlookup };
        write_frame_async(
            &mut *self.wr.lock().await,
            &FsToHost::Request { id: n, req },
        )
        .await
        .unwrap();
        assert!(matches!(
            self.call(FsRequest::Statfs).await,
            FsReply::Statfs(_)
        ));
    }

    async fn ok(&self, req: FsRequest) {
        assert_eq!(self.call(req.clone()).await, FsReply::Ok, "{req:?}");
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<Entry, i32> {
        entry(
            self.call(FsRequest::Lookup {
                parent,
                name: name.into(),
            })
            .await,
        )
    }

    async fn getattr(&self, id: u64) -> Attr {
        match self.call(FsRequest::Getattr { id }).await {
            FsReply::Attr(a) => a,
            other => panic!("getattr: {other:?}"),
        }
    }

    async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Entry, u64), i32> {
        match self
            .call(FsRequest::Create {
                parent,
                name: name.into(),
                mode,
                umask,
                flags,
            })
            .await
        {
            FsReply::Created { entry, fh, .. } => Ok((entry, fh)),
            FsReply::Err(e) => Err(e),
            other => panic!("create: {other:?}"),
        }
    }

    async fn open(&self, id: u64, flags: i32) -> Result<u64, i32> {
        match self.call(FsRequest::Open { id, flags }).await {
            FsReply::Opened { fh } => Ok(fh),
            FsReply::Err(e) => Err(e),
            other => panic!("open: {other:?}"),
        }
    }

    async fn opendir(&self, id: u64) -> Result<u64, i32> {
        match self.call(FsRequest::Opendir { id }).await {
            FsReply::Opened { fh } => Ok(fh),
            FsReply::Err(e) => Err(e),
            other => panic!("opendir: {other:?}"),
        }
    }

    async fn read(&self, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        match self.call(FsRequest::Read { fh, offset, size }).await {
            FsReply::Data(d) => d,
            other => panic!("read: {other:?}"),
        }
    }

    async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> u32 {
        match self
            .call(FsRequest::Write {
                fh,
                offset,
                data: data.to_vec(),
            })
            .await
        {
            FsReply::Written(n) => n,
            other => panic!("write: {other:?}"),
        }
    }

    async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Entry, i32> {
        entry(
            self.call(FsRequest::Mkdir {
                parent,
                name: name.into(),
                mode,
                umask: 0o022,
            })
            .await,
        )
    }

    /// Lists a directory to the end, following `next_offset`.
    async fn readdir_all(&self, id: u64, plus: bool) -> Vec<DirEntry> {
        let fh = self.opendir(id).await.unwrap();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let FsReply::Dir(batch) = self.call(FsRequest::Readdir { fh, offset, plus }).await
            else {
                panic!("readdir")
            };
            let Some(last) = batch.last() else { break };
            offset = last.next_offset;
            out.extend(batch);
        }
        self.ok(FsRequest::Releasedir { fh }).await;
        out
    }

    /// Waits up to `within` for an invalidation matching `want`.
    async fn invalidated(&self, within: Duration, want: impl Fn(&FsToGuest) -> bool) -> bool {
        let mut rx = self.inval.lock().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) if want(&m) => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    }

    async fn close(self) -> std::io::Result<()> {
        let served = self.served.lock().unwrap().take().unwrap();
        self.wr.into_inner().shutdown().await.unwrap();
        drop(self.pending);
        // Dropping our halves closes the stream; the server then returns.
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returns")
            .unwrap()
    }
}

fn host_mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_write_append_truncate() {
    let e = env();
    let c = start(&e.root, true);
    let (en, fh) = c.create(ROOT_ID, "f", 0o640, 0o022, RW).await.unwrap();
    assert_eq!(en.attr.mode, libc::S_IFREG | 0o640);
    assert_eq!(host_mode(&e.root.join("f")) & 0o7777, 0o640);
    assert_eq!(c.write(fh, 0, b"hello").await, 5);
    assert_eq!(c.write(fh, 5, b" world").await, 6);
    assert_eq!(c.read(fh, 0, 100).await, b"hello world");
    assert_eq!(c.read(fh, 6, 3).await, b"wor");
    assert_eq!(c.read(fh, 100, 3).await, b"");
    c.ok(FsRequest::Flush { fh }).await;
    c.ok(FsRequest::Fsync {
        fh,
        datasync: false,
    })
    .await;
    c.ok(FsRequest::Fsync { fh, datasync: true }).await;
    c.ok(FsRequest::Release { fh }).await;
    assert_eq!(std::fs::read(e.root.join("f")).unwrap(), b"hello world");

    // O_APPEND writes land at the end whatever the offset.
    let fh = c
        .open(en.attr.id, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    c.write(fh, 0, b"!").await;
    c.ok(FsRequest::Release { fh }).await;
    assert_eq!(std::fs::read(e.root.join("f")).unwrap(), b"hello world!");

    // Truncate by setattr, without and with a handle.
    let set = |fh, size| FsRequest::Setattr {
        id: en.attr.id,
        fh,
        mode: None,
        size: Some(size),
        atime: None,
        mtime: None,
    };
    let FsReply::Attr(a) = c.call(set(None, 3)).await else {
        panic!()
    };
    assert_eq!(a.size, 3);
    let fh = c.open(en.attr.id, libc::O_RDONLY).await.unwrap();
    let FsReply::Attr(a) = c.call(set(Some(fh), 2)).await else {
        panic!()
    };
    assert_eq!(a.size, 2);
    assert_eq!(c.read(fh, 0, 10).await, b"he");
    c.ok(FsRequest::Release { fh }).await;
    // O_TRUNC on open.
    let fh = c
        .open(en.attr.id, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    assert_eq!(c.getattr(en.attr.id).await.size, 0);
    c.ok(FsRequest::Release { fh }).await;

    // O_EXCL on an existing file; create without it opens the existing one.
    assert_eq!(
        c.create(ROOT_ID, "f", 0o600, 0, RW | libc::O_EXCL)
            .await
            .unwrap_err(),
        libc::EEXIST
    );
    std::fs::write(e.root.join("f"), b"again").unwrap();
    let (en2, fh) = c.create(ROOT_ID, "f", 0o600, 0, RW).await.unwrap();
    assert_eq!(en2.attr.id, en.attr.id, "same inode, same id");
    assert_eq!(c.read(fh, 0, 10).await, b"again");
    assert_eq!(
        host_mode(&e.root.join("f")) & 0o7777,
        0o640,
        "an existing file keeps its mode"
    );
    c.ok(FsRequest::Release { fh }).await;

    // The guest's umask wins over the process umask (022 here).
    let (g, fh) = c.create(ROOT_ID, "g", 0o666, 0o002, RW).await.unwrap();
    assert_eq!(host_mode(&e.root.join("g")) & 0o7777, 0o664);
    assert_eq!(g.attr.mode & 0o7777, 0o664);
    c.ok(FsRequest::Release { fh }).await;
    let d = c
        .call(FsRequest::Mkdir {
            parent: ROOT_ID,
            name: b"gd".to_vec(),
            mode: 0o777,
            umask: 0o002,
        })
        .await;
    assert!(matches!(d, FsReply::Made { .. }));
    assert_eq!(host_mode(&e.root.join("gd")) & 0o7777, 0o775);
    assert_eq!(c.fs.open_handles(), 0);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_over_noreplace_exchange() {
    let e = env();
    std::fs::write(e.root.join("a"), b"A").unwrap();
    std::fs::write(e.root.join("b"), b"B").unwrap();
    std::fs::write(e.root.join("c"), b"C").unwrap();
    std::fs::create_dir(e.root.join("dir")).unwrap();
    let c = start(&e.root, true);
    let a = c.lookup(ROOT_ID, "a").await.unwrap();
    let dir = c.lookup(ROOT_ID, "dir").await.unwrap();
    let rename = |name: &str, new_parent, new_name: &str, flags| FsRequest::Rename {
        parent: ROOT_ID,
        name: name.into(),
        new_parent,
        new_name: new_name.into(),
        flags,
    };
    c.ok(rename("a", ROOT_ID, "b", 0)).await;
    assert_eq!(std::fs::read(e.root.join("b")).unwrap(), b"A");
    assert!(!e.root.join("a").exists());
    // The node follows its inode, not the name.
    assert_eq!(c.lookup(ROOT_ID, "b").await.unwrap().attr.id, a.attr.id);
    assert_eq!(
        c.err(rename("b", ROOT_ID, "c", libc::RENAME_NOREPLACE))
            .await,
        libc::EEXIST
    );
    c.ok(rename("b", ROOT_ID, "c", libc::RENAME_EXCHANGE)).await;
    assert_eq!(std::fs::read(e.root.join("b")).unwrap(), b"C");
    assert_eq!(std::fs::read(e.root.join("c")).unwrap(), b"A");
    c.ok(rename("c", dir.attr.id, "moved", 0)).await;
    assert_eq!(std::fs::read(e.root.join("dir/moved")).unwrap(), b"A");
    assert_eq!(c.err(rename("nope", ROOT_ID, "x", 0)).await, libc::ENOENT);
    assert_eq!(
        c.err(rename("b", ROOT_ID, "x", libc::RENAME_WHITEOUT))
            .await,
        libc::EINVAL
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlink_while_open_mkdir_rmdir() {
    let e = env();
    let c = start(&e.root, true);
    let (f, fh) = c.create(ROOT_ID, "f", 0o644, 0, RW).await.unwrap();
    c.write(fh, 0, b"still here").await;
    c.ok(FsRequest::Unlink {
        parent: ROOT_ID,
        name: b"f".to_vec(),
    })
    .await;
    assert!(!e.root.join("f").exists());
    assert_eq!(c.lookup(ROOT_ID, "f").await.unwrap_err(), libc::ENOENT);
    assert_eq!(c.read(fh, 0, 100).await, b"still here");
    assert_eq!(c.getattr(f.attr.id).await.nlink, 0);
    c.write(fh, 10, b"!").await;
    assert_eq!(c.read(fh, 0, 100).await, b"still here!");
    c.ok(FsRequest::Release { fh }).await;

    let d = c.mkdir(ROOT_ID, "d", 0o755).await.unwrap();
    assert_eq!(d.attr.mode, libc::S_IFDIR | 0o755);
    assert_eq!(
        c.mkdir(ROOT_ID, "d", 0o755).await.unwrap_err(),
        libc::EEXIST
    );
    let sub = c.mkdir(d.attr.id, "sub", 0o700).await.unwrap();
    assert!(e.root.join("d/sub").is_dir());
    let rmdir = |parent, name: &str| FsRequest::Rmdir {
        parent,
        name: name.into(),
    };
    assert_eq!(c.err(rmdir(ROOT_ID, "d")).await, libc::ENOTEMPTY);
    assert_eq!(
        c.err(FsRequest::Unlink {
            parent: d.attr.id,
            name: b"sub".to_vec()
        })
        .await,
        libc::EISDIR
    );
    c.ok(rmdir(d.attr.id, "sub")).await;
    c.ok(rmdir(ROOT_ID, "d")).await;
    assert!(!e.root.join("d").exists());
    // Stale but known nodes answer from their fd.
    assert_eq!(c.getattr(sub.attr.id).await.nlink, 0);
    std::fs::write(e.root.join("file"), b"").unwrap();
    assert_eq!(c.err(rmdir(ROOT_ID, "file")).await, libc::ENOTDIR);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn symlink_readlink_link_chmod_utimens() {
    let e = env();
    let c = start(&e.root, true);
    let target = b"../../etc/passwd\xff".to_vec();
    let l = entry(
        c.call(FsRequest::Symlink {
            parent: ROOT_ID,
            name: b"l".to_vec(),
            target: target.clone(),
        })
        .await,
    )
    .unwrap();
    assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        c.call(FsRequest::Readlink { id: l.attr.id }).await,
        FsReply::Link(target)
    );
    assert_eq!(
        c.open(l.attr.id, libc::O_RDONLY).await.unwrap_err(),
        libc::ELOOP
    );
    assert_eq!(
        c.err(FsRequest::Readlink { id: ROOT_ID }).await,
        libc::EINVAL
    );

    let (f, fh) = c.create(ROOT_ID, "f", 0o644, 0, RW).await.unwrap();
    c.ok(FsRequest::Release { fh }).await;
    let g = entry(
        c.call(FsRequest::Link {
            id: f.attr.id,
            new_parent: ROOT_ID,
            new_name: b"g".to_vec(),
        })
        .await,
    )
    .unwrap();
    assert_eq!(g.attr.id, f.attr.id);
    assert_eq!(g.attr.nlink, 2);
    assert_eq!(
        std::fs::metadata(e.root.join("g")).unwrap().ino(),
        std::fs::metadata(e.root.join("f")).unwrap().ino()
    );
    // Hard links to symlinks link the link itself.
    let l2 = entry(
        c.call(FsRequest::Link {
            id: l.attr.id,
            new_parent: ROOT_ID,
            new_name: b"l2".to_vec(),
        })
        .await,
    )
    .unwrap();
    assert_eq!(l2.attr.id, l.attr.id);
    assert!(std::fs::symlink_metadata(e.root.join("l2"))
        .unwrap()
        .file_type()
        .is_symlink());
    let d = c.mkdir(ROOT_ID, "d", 0o755).await.unwrap();
    assert_eq!(
        c.err(FsRequest::Link {
            id: d.attr.id,
            new_parent: ROOT_ID,
            new_name: b"d2".to_vec()
        })
        .await,
        libc::EPERM
    );

    let set = |id, mode, atime, mtime| FsRequest::Setattr {
        id,
        fh: None,
        mode,
        size: None,
        atime,
        mtime,
    };
    let FsReply::Attr(a) = c.call(set(f.attr.id, Some(0o4600), None, None)).await else {
        panic!()
    };
    assert_eq!(a.mode, libc::S_IFREG | 0o4600);
    assert_eq!(host_mode(&e.root.join("f")), libc::S_IFREG | 0o4600);
    let t = Time {
        secs: 1_000_000_000,
        nanos: 123_456_789,
    };
    let FsReply::Attr(a) = c
        .call(set(
            f.attr.id,
            None,
            Some(SetTime::At(t)),
            Some(SetTime::At(t)),
        ))
        .await
    else {
        panic!()
    };
    assert_eq!((a.atime, a.mtime), (t, t));
    let m = std::fs::metadata(e.root.join("f")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
    let FsReply::Attr(a) = c.call(set(f.attr.id, None, None, Some(SetTime::Now))).await else {
        panic!()
    };
    assert!(a.mtime.secs > 1_600_000_000);
    assert_eq!(a.atime, t, "atime untouched");
    // Times on the symlink itself, not its (outside) target.
    let FsReply::Attr(a) = c
        .call(set(
            l.attr.id,
            None,
            Some(SetTime::At(t)),
            Some(SetTime::At(t)),
        ))
        .await
    else {
        panic!()
    };
    assert_eq!(a.mtime, t);
    assert_eq!(
        std::fs::symlink_metadata(e.root.join("l")).unwrap().mtime(),
        t.secs
    );
    assert_eq!(
        c.err(set(l.attr.id, Some(0o777), None, None)).await,
        libc::EOPNOTSUPP
    );
    let bad = Time {
        secs: 0,
        nanos: 2_000_000_000,
    };
    assert_eq!(
        c.err(set(f.attr.id, None, Some(SetTime::At(bad)), None))
            .await,
        libc::EINVAL
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readdir_plus_many_entries_and_forget() {
    let e = env();
    let n = 1000;
    for i in 0..n {
        std::fs::write(e.root.join(format!("file{i:04}")), i.to_string()).unwrap();
    }
    std::fs::create_dir(e.root.join("dir")).unwrap();
    std::os::unix::fs::symlink("/etc", e.root.join("esc")).unwrap();
    let c = start(&e.root, true);

    let plain = c.readdir_all(ROOT_ID, false).await;
    let names: HashSet<Vec<u8>> = plain.iter().map(|d| d.name.clone()).collect();
    assert_eq!(plain.len(), n + 2 + 2, "files, dir, esc, . and ..");
    assert_eq!(names.len(), plain.len(), "no entry twice");
    assert!(plain.iter().all(|d| d.entry.is_none()));
    assert_eq!(c.fs.nodes.count(), 1, "plain readdir takes no references");

    let plus = c.readdir_all(ROOT_ID, true).await;
    assert_eq!(plus.len(), plain.len());
    let mut ids = Vec::new();
    for d in &plus {
        match &d.name[..] {
            b"." | b".." => {
                assert!(d.entry.is_none());
                assert_eq!(d.kind, libc::S_IFDIR);
            }
            name => {
                let en = d.entry.as_ref().expect("attributes in plus mode");
                assert_eq!(d.kind, en.attr.mode & libc::S_IFMT);
                ids.push(en.attr.id);
                if name == b"esc" {
                    assert_eq!(d.kind, libc::S_IFLNK);
                }
                if name == b"file0999" {
                    assert_eq!(en.attr.size, 3);
                }
            }
        }
    }
    assert_eq!(c.fs.nodes.count(), 1 + n + 2);
    assert_eq!(
        c.fs.watches.as_ref().unwrap().count(),
        2,
        "root and dir are watched"
    );
    // Restarting from a middle offset continues without repeats.
    let fh = c.opendir(ROOT_ID).await.unwrap();
    let mid = plain[500].next_offset;
    let FsReply::Dir(rest) = c
        .call(FsRequest::Readdir {
            fh,
            offset: mid,
            plus: false,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(rest[0].name, plain[501].name);
    c.ok(FsRequest::Releasedir { fh }).await;
    // ReaddirAt reads the same batches without a handle, its offsets
    // carrying over between the opens it makes; a file is no directory.
    let mut at = Vec::new();
    let mut offset = 0;
    loop {
        let FsReply::Dir(batch) = c
            .call(FsRequest::ReaddirAt {
                id: ROOT_ID,
                offset,
                plus: false,
            })
            .await
        else {
            panic!("readdir_at")
        };
        let Some(last) = batch.last() else { break };
        offset = last.next_offset;
        at.extend(batch.into_iter().map(|d| d.name));
    }
    assert_eq!(at, plain.iter().map(|d| d.name.clone()).collect::<Vec<_>>());
    let file = c.lookup(ROOT_ID, "file0001").await.unwrap().attr.id;
    let not_dir = c
        .call(FsRequest::ReaddirAt {
            id: file,
            offset: 0,
            plus: false,
        })
        .await;
    assert_eq!(not_dir, FsReply::Err(libc::ENOTDIR));
    c.forget(file, 1).await;
    for id in ids {
        c.forget(id, 1).await;
    }
    assert_eq!(c.fs.nodes.count(), 1, "forget drops every node");
    assert_eq!(c.fs.watches.as_ref().unwrap().count(), 1);
    c.forget(12345, 1).await;
    c.forget(ROOT_ID, 99).await;
    assert!(
        c.lookup(ROOT_ID, "dir").await.is_ok(),
        "root survives a forget"
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statfs_and_bad_ids() {
    let e = env();
    let c = start(&e.root, true);
    let FsReply::Statfs(s) = c.call(FsRequest::Statfs).await else {
        panic!()
    };
    assert!(s.blocks > 0 && s.bsize > 0 && s.namelen >= 255, "{s:?}");
    assert_eq!(c.err(FsRequest::Getattr { id: 999 }).await, libc::ESTALE);
    let long = "x".repeat(300);
    assert_eq!(
        c.lookup(ROOT_ID, &long).await.unwrap_err(),
        libc::ENAMETOOLONG
    );
    let rename = FsRequest::Rename {
        parent: ROOT_ID,
        name: b"a".to_vec(),
        new_parent: ROOT_ID,
        new_name: long.into(),
        flags: 0,
    };
    assert_eq!(c.err(rename).await, libc::ENAMETOOLONG);
    let symlink = FsRequest::Symlink {
        parent: ROOT_ID,
        name: b"s".to_vec(),
        target: vec![b'a'; 8 << 20],
    };
    assert_eq!(c.err(symlink).await, libc::ENAMETOOLONG);
    assert_eq!(
        c.err(FsRequest::Read {
            fh: 999,
            offset: 0,
            size: 1
        })
        .await,
        libc::EBADF
    );
    assert_eq!(c.err(FsRequest::Release { fh: 999 }).await, libc::EBADF);
    let dh = c.opendir(ROOT_ID).await.unwrap();
    assert_eq!(
        c.err(FsRequest::Read {
            fh: dh,
            offset: 0,
            size: 1
        })
        .await,
        libc::EBADF
    );
    assert_eq!(
        c.err(FsRequest::Release { fh: dh }).await,
        libc::EBADF,
        "a dir handle is released with releasedir"
    );
    c.ok(FsRequest::Releasedir { fh: dh }).await;
    assert_eq!(
        c.open(ROOT_ID, libc::O_RDWR).await.unwrap_err(),
        libc::EISDIR
    );
    std::fs::write(e.root.join("f"), b"").unwrap();
    let f = c.lookup(ROOT_ID, "f").await.unwrap();
    assert_eq!(c.opendir(f.attr.id).await.unwrap_err(), libc::ENOTDIR);
    assert_eq!(c.lookup(f.attr.id, "x").await.unwrap_err(), libc::ENOTDIR);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_and_flock_locks() {
    let e = env();
    let c = Arc::new(start(&e.root, true));
    let (f, fh1) = c.create(ROOT_ID, "lockfile", 0o644, 0, RW).await.unwrap();
    let fh2 = c.open(f.attr.id, RW).await.unwrap();
    let wr = |start, end| Lock {
        start,
        end,
        typ: libc::F_WRLCK,
        pid: 0,
    };
    let setlk = |fh, owner, lock, wait| FsRequest::Setlk {
        fh,
        owner,
        lock,
        wait,
    };

    c.ok(setlk(fh1, 1, wr(0, 9), false)).await;
    // The same owner may re-lock; another owner conflicts on the overlap only.
    c.ok(setlk(fh1, 1, wr(0, 4), false)).await;
    let FsReply::Lock(l) = c
        .call(FsRequest::Getlk {
            fh: fh2,
            owner: 2,
            lock: wr(5, 5),
        })
        .await
    else {
        panic!()
    };
    assert_eq!((l.typ, l.start, l.end), (libc::F_WRLCK, 0, 9));
    let FsReply::Lock(l) = c
        .call(FsRequest::Getlk {
            fh: fh2,
            owner: 2,
            lock: wr(10, u64::MAX),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(l.typ, libc::F_UNLCK);
    assert_eq!(c.err(setlk(fh2, 2, wr(5, 20), false)).await, libc::EAGAIN);
    c.ok(setlk(fh2, 2, wr(10, 20), false)).await;
    // The same owner through another handle of the same file does not conflict (POSIX).
    c.ok(setlk(fh2, 1, wr(0, 9), false)).await;

    // A waiting lock is granted once the holder lets go.
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.call(setlk(fh2, 2, wr(0, 9), true)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "waits while owner 1 holds the range");
    c.ok(setlk(
        fh1,
        1,
        Lock {
            typ: libc::F_UNLCK,
            ..wr(0, u64::MAX)
        },
        false,
    ))
    .await;
    assert_eq!(waiter.await.unwrap(), FsReply::Ok);
    c.ok(setlk(
        fh1,
        3,
        Lock {
            typ: libc::F_UNLCK,
            ..wr(0, 1)
        },
        false,
    ))
    .await;

    // Releasing the handles drops owner 2's locks.
    let fh3 = c.open(f.attr.id, RW).await.unwrap();
    assert_eq!(c.err(setlk(fh3, 4, wr(0, 0), false)).await, libc::EAGAIN);
    c.ok(FsRequest::Release { fh: fh1 }).await;
    c.ok(FsRequest::Release { fh: fh2 }).await;
    c.ok(setlk(fh3, 4, wr(0, 100), false)).await;

    // flock: per open file.
    let fh4 = c.open(f.attr.id, libc::O_RDONLY).await.unwrap();
    let flock = |fh, op| FsRequest::Flock { fh, owner: fh, op };
    c.ok(flock(fh3, libc::LOCK_EX | libc::LOCK_NB)).await;
    assert_eq!(
        c.err(flock(fh4, libc::LOCK_SH | libc::LOCK_NB)).await,
        libc::EWOULDBLOCK
    );
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.call(flock(fh4, libc::LOCK_SH)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    c.ok(flock(fh3, libc::LOCK_UN)).await;
    assert_eq!(waiter.await.unwrap(), FsReply::Ok);
    assert_eq!(c.err(flock(fh4, 99)).await, libc::EINVAL);

    // A waiter still waiting when the guest goes away is answered EINTR and
    // does not hold up the end of `serve`.
    let c2 = c.clone();
    let stuck = tokio::spawn(async move { c2.call(flock(fh3, libc::LOCK_EX)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stuck.is_finished());
    c.wr.lock().await.shutdown().await.unwrap();
    assert_eq!(stuck.await.unwrap(), FsReply::Err(libc::EINTR));
    let served = c.served.lock().unwrap().take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_reads_and_writes_in_flight() {
    let e = env();
    let c = Arc::new(start(&e.root, true));
    let (f, fh) = c.create(ROOT_ID, "big", 0o644, 0, RW).await.unwrap();
    let max = MAX_IO as usize;
    let data: Vec<u8> = (0..4 * max).map(|i| (i * 7 + i / 4096) as u8).collect();
    // Four MAX_IO writes at once.
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (c, chunk) = (c.clone(), data[k * max..(k + 1) * max].to_vec());
        tasks.push(tokio::spawn(async move {
            c.write(fh, (k * max) as u64, &chunk).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), MAX_IO);
    }
    assert_eq!(
        c.err(FsRequest::Write {
            fh,
            offset: 0,
            data: vec![0; max + 1]
        })
        .await,
        libc::EINVAL
    );
    assert_eq!(c.getattr(f.attr.id).await.size, data.len() as u64);
    assert_eq!(std::fs::read(e.root.join("big")).unwrap(), data);
    // 64 reads in flight (more than MAX_IN_FLIGHT), answered in any order.
    let mut tasks = Vec::new();
    for k in 0..64u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            (k, c.read(fh, k * 65536, MAX_IO).await)
        }));
    }
    for t in tasks {
        let (k, got) = t.await.unwrap();
        let off = (k * 65536) as usize;
        assert_eq!(got.len(), max.min(data.len() - off));
        assert!(got == data[off..off + got.len()], "read at {off}");
    }
    // A read asking for more than MAX_IO gets at most MAX_IO.
    assert_eq!(c.read(fh, 0, u32::MAX).await.len(), max);
    c.ok(FsRequest::Release { fh }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_share_answers_erofs() {
    let e = env();
    std::fs::write(e.root.join("f"), b"data").unwrap();
    std::fs::create_dir(e.root.join("d")).unwrap();
    let c = start(&e.root, false);
    let f = c.lookup(ROOT_ID, "f").await.unwrap();
    let d = c.lookup(ROOT_ID, "d").await.unwrap();
    let id = f.attr.id;
    let erofs = [
        FsRequest::Create {
            parent: ROOT_ID,
            name: b"n".to_vec(),
            mode: 0o644,
            umask: 0,
            flags: RW,
        },
        FsRequest::Create {
            parent: ROOT_ID,
            name: b"n".to_vec(),
            mode: 0o644,
            umask: 0,
            flags: libc::O_RDONLY,
        },
        FsRequest::Mkdir {
            parent: ROOT_ID,
            name: b"n".to_vec(),
            mode: 0o755,
            umask: 0,
        },
        FsRequest::Unlink {
            parent: ROOT_ID,
            name: b"f".to_vec(),
        },
        FsRequest::Rmdir {
            parent: ROOT_ID,
            name: b"d".to_vec(),
        },
        FsRequest::Symlink {
            parent: ROOT_ID,
            name: b"n".to_vec(),
            target: b"f".to_vec(),
        },
        FsRequest::Rename {
            parent: ROOT_ID,
            name: b"f".to_vec(),
            new_parent: d.attr.id,
            new_name: b"f".to_vec(),
            flags: 0,
        },
        FsRequest::Link {
            id,
            new_parent: ROOT_ID,
            new_name: b"n".to_vec(),
        },
        FsRequest::Setattr {
            id,
            fh: None,
            mode: Some(0o777),
            size: None,
            atime: None,
            mtime: None,
        },
        FsRequest::Setattr {
            id,
            fh: None,
            mode: None,
            size: Some(0),
            atime: None,
            mtime: None,
        },
        FsRequest::Setattr {
            id,
            fh: None,
            mode: None,
            size: None,
            atime: Some(SetTime::Now),
            mtime: None,
        },
        FsRequest::Open {
            id,
            flags: libc::O_WRONLY,
        },
        FsRequest::Open {
            id,
            flags: libc::O_RDWR,
        },
        FsRequest::Open {
            id,
            flags: libc::O_RDONLY | libc::O_TRUNC,
        },
        FsRequest::Open {
            id,
            flags: libc::O_RDONLY | libc::O_CREAT,
        },
    ];
    for req in erofs {
        assert_eq!(c.err(req.clone()).await, libc::EROFS, "{req:?}");
    }
    let fh = c.open(id, libc::O_RDONLY).await.unwrap();
    assert_eq!(c.read(fh, 0, 10).await, b"data");
    assert_eq!(
        c.err(FsRequest::Write {
            fh,
            offset: 0,
            data: b"x".to_vec()
        })
        .await,
        libc::EROFS
    );
    assert_eq!(c.readdir_all(ROOT_ID, true).await.len(), 4);
    // Read locks work; write locks need a writable file, which cannot exist.
    let lock = Lock {
        start: 0,
        end: 0,
        typ: libc::F_RDLCK,
        pid: 0,
    };
    c.ok(FsRequest::Setlk {
        fh,
        owner: 1,
        lock,
        wait: false,
    })
    .await;
    let wr = Lock {
        typ: libc::F_WRLCK,
        ..lock
    };
    assert_eq!(
        c.err(FsRequest::Setlk {
            fh,
            owner: 2,
            lock: wr,
            wait: false
        })
        .await,
        libc::EBADF
    );
    c.ok(FsRequest::Release { fh }).await;
    assert_eq!(std::fs::read(e.root.join("f")).unwrap(), b"data");
    assert_eq!(std::fs::read_dir(&e.root).unwrap().count(), 2);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_cannot_escape() {
    let e = env();
    std::os::unix::fs::symlink("/etc", e.root.join("esc")).unwrap();
    std::os::unix::fs::symlink(&e.outside, e.root.join("out")).unwrap();
    std::os::unix::fs::symlink(e.outside.join("new"), e.root.join("dangling")).unwrap();
    std::fs::create_dir(e.root.join("sub")).unwrap();
    let c = start(&e.root, true);
    let sub = c.lookup(ROOT_ID, "sub").await.unwrap().attr.id;
    let bad: [&[u8]; 9] = [
        b"..",
        b".",
        b"",
        b"a/b",
        b"/etc",
        b"/",
        b"../outside",
        b"sub/../../outside",
        b"x\0y",
    ];
    for name in bad {
        let name = name.to_vec();
        for parent in [ROOT_ID, sub] {
            assert_eq!(
                entry(
                    c.call(FsRequest::Lookup {
                        parent,
                        name: name.clone()
                    })
                    .await
                )
                .unwrap_err(),
                libc::EINVAL,
                "{name:?}"
            );
        }
        let reqs = [
            FsRequest::Mkdir {
                parent: ROOT_ID,
                name: name.clone(),
                mode: 0o755,
                umask: 0,
            },
            FsRequest::Create {
                parent: ROOT_ID,
                name: name.clone(),
                mode: 0o644,
                umask: 0,
                flags: RW,
            },
            FsRequest::Unlink {
                parent: ROOT_ID,
                name: name.clone(),
            },
            FsRequest::Rmdir {
                parent: ROOT_ID,
                name: name.clone(),
            },
            FsRequest::Symlink {
                parent: ROOT_ID,
                name: name.clone(),
                target: b"x".to_vec(),
            },
            FsRequest::Rename {
                parent: ROOT_ID,
                name: b"sub".to_vec(),
                new_parent: ROOT_ID,
                new_name: name.clone(),
                flags: 0,
            },
            FsRequest::Rename {
                parent: ROOT_ID,
                name: name.clone(),
                new_parent: ROOT_ID,
                new_name: b"z".to_vec(),
                flags: 0,
            },
            FsRequest::Link {
                id: sub,
                new_parent: ROOT_ID,
                new_name: name.clone(),
            },
        ];
        for req in reqs {
            let err = c.err(req.clone()).await;
            assert!(
                err == libc::EINVAL
                    || (err == libc::EPERM && matches!(req, FsRequest::Link { .. })),
                "{req:?}: {err}"
            );
        }
    }
    // A symlink is a symlink node; nothing resolves through it on the host.
    for link in ["esc", "out"] {
        let l = c.lookup(ROOT_ID, link).await.unwrap();
        assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{link}");
        for name in ["passwd", "secret", "hostname"] {
            assert_eq!(
                c.lookup(l.attr.id, name).await.unwrap_err(),
                libc::ENOTDIR,
                "{link}/{name}"
            );
        }
        assert_eq!(c.opendir(l.attr.id).await.unwrap_err(), libc::ELOOP);
        assert_eq!(
            c.open(l.attr.id, libc::O_RDONLY).await.unwrap_err(),
            libc::ELOOP
        );
        assert_eq!(
            c.mkdir(l.attr.id, "x", 0o755).await.unwrap_err(),
            libc::ENOTDIR
        );
        let e2 = c.create(l.attr.id, "x", 0o644, 0, RW).await.unwrap_err();
        assert_eq!(e2, libc::ENOTDIR);
        let setsize = FsRequest::Setattr {
            id: l.attr.id,
            fh: None,
            mode: None,
            size: Some(0),
            atime: None,
            mtime: None,
        };
        assert_eq!(c.err(setsize).await, libc::EINVAL);
    }
    // Creating through a dangling link (O_CREAT would follow it) is refused.
    assert_eq!(
        c.create(ROOT_ID, "dangling", 0o644, 0, RW)
            .await
            .unwrap_err(),
        libc::ELOOP
    );
    assert_eq!(
        c.create(ROOT_ID, "out", 0o644, 0, RW | libc::O_TRUNC)
            .await
            .unwrap_err(),
        libc::ELOOP
    );
    assert!(!e.outside.join("new").exists());
    // Renaming onto a link replaces the link, not its target.
    std::fs::write(e.root.join("f"), b"mine").unwrap();
    c.ok(FsRequest::Rename {
        parent: ROOT_ID,
        name: b"f".to_vec(),
        new_parent: ROOT_ID,
        new_name: b"out".to_vec(),
        flags: 0,
    })
    .await;
    assert!(e.outside.is_dir());
    assert_eq!(
        std::fs::read(e.outside.join("secret")).unwrap(),
        b"host secret"
    );
    assert_eq!(std::fs::read_dir(&e.outside).unwrap().count(), 1);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn symlink_swapped_in_after_lookup_does_not_escape() {
    let e = env();
    std::fs::create_dir(e.root.join("d")).unwrap();
    std::fs::write(e.root.join("d/inner"), b"inner").unwrap();
    std::fs::write(e.root.join("f"), b"original").unwrap();
    let c = start(&e.root, true);
    let d = c.lookup(ROOT_ID, "d").await.unwrap();
    let f = c.lookup(ROOT_ID, "f").await.unwrap();

    // The host (or a racing guest request) swaps symlinks in.
    std::fs::rename(e.root.join("d"), e.root.join("d.old")).unwrap();
    std::os::unix::fs::symlink(&e.outside, e.root.join("d")).unwrap();
    std::fs::rename(e.root.join("f"), e.root.join("f.old")).unwrap();
    std::os::unix::fs::symlink(e.outside.join("secret"), e.root.join("f")).unwrap();

    // The old nodes still name the old inodes.
    assert_eq!(
        c.lookup(d.attr.id, "secret").await.unwrap_err(),
        libc::ENOENT
    );
    assert!(c.lookup(d.attr.id, "inner").await.is_ok());
    let names: Vec<_> = c
        .readdir_all(d.attr.id, false)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&b"inner".to_vec()) && !names.contains(&b"secret".to_vec()));
    let fh = c.create(d.attr.id, "made", 0o644, 0, RW).await.unwrap().1;
    c.ok(FsRequest::Release { fh }).await;
    assert!(e.root.join("d.old/made").exists() && !e.outside.join("made").exists());
    let fh = c.open(f.attr.id, libc::O_RDONLY).await.unwrap();
    assert_eq!(c.read(fh, 0, 100).await, b"original");
    c.ok(FsRequest::Release { fh }).await;
    let fh = c
        .open(f.attr.id, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    c.ok(FsRequest::Release { fh }).await;
    assert_eq!(
        std::fs::read(e.outside.join("secret")).unwrap(),
        b"host secret"
    );

    // A fresh lookup sees the links, and cannot go through them.
    let d2 = c.lookup(ROOT_ID, "d").await.unwrap();
    assert_eq!(d2.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        c.lookup(d2.attr.id, "secret").await.unwrap_err(),
        libc::ENOTDIR
    );
    let f2 = c.lookup(ROOT_ID, "f").await.unwrap();
    assert_eq!(
        c.open(f2.attr.id, libc::O_RDONLY).await.unwrap_err(),
        libc::ELOOP
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_edits_are_invalidated_within_a_second() {
    let e = env();
    std::fs::create_dir(e.root.join("d")).unwrap();
    std::fs::write(e.root.join("d/f"), b"v1").unwrap();
    let c = start(&e.root, true);
    let d = c.lookup(ROOT_ID, "d").await.unwrap().attr.id;
    let f = c.lookup(d, "f").await.unwrap().attr.id;
    let second = Duration::from_secs(1);

    std::fs::write(e.root.join("d/f"), b"v2").unwrap();
    assert!(
        c.invalidated(second, |m| *m == FsToGuest::InvalidateNode { id: f })
            .await,
        "data change"
    );
    std::fs::set_permissions(e.root.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        c.invalidated(second, |m| *m == FsToGuest::InvalidateNode { id: f })
            .await,
        "chmod"
    );
    std::fs::write(e.root.join("d/new"), b"").unwrap();
    assert!(
        c.invalidated(second, |m| *m
            == FsToGuest::InvalidateEntry {
                parent: d,
                name: b"new".to_vec()
            })
        .await
    );
    std::fs::rename(e.root.join("d/new"), e.root.join("renamed")).unwrap();
    assert!(
        c.invalidated(second, |m| *m
            == FsToGuest::InvalidateEntry {
                parent: d,
                name: b"new".to_vec()
            })
        .await
    );
    assert!(
        c.invalidated(second, |m| *m
            == FsToGuest::InvalidateEntry {
                parent: ROOT_ID,
                name: b"renamed".to_vec()
            })
        .await
    );
    std::fs::remove_file(e.root.join("d/f")).unwrap();
    assert!(
        c.invalidated(second, |m| *m
            == FsToGuest::InvalidateEntry {
                parent: d,
                name: b"f".to_vec()
            })
        .await
    );
    // A forgotten directory is no longer watched.
    c.forget(d, 1).await;
    std::fs::write(e.root.join("d/later"), b"").unwrap();
    assert!(
        !c.invalidated(
            Duration::from_millis(300),
            |m| matches!(m, FsToGuest::InvalidateEntry { parent, .. } if *parent == d)
        )
        .await
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guest_changes_are_not_echoed_and_carry_the_parents_attributes() {
    let e = env();
    std::fs::create_dir(e.root.join("d")).unwrap();
    let c = start(&e.root, true);
    let d = c.lookup(ROOT_ID, "d").await.unwrap().attr.id;
    let before = c.getattr(d).await;

    let FsReply::Created { entry, fh, parent } = c
        .call(FsRequest::Create {
            parent: d,
            name: "f".into(),
            mode: 0o644,
            umask: 0o022,
            flags: RW,
        })
        .await
    else {
        panic!("create")
    };
    c.ok(FsRequest::Release { fh }).await;
    // The directory as it is after the create, as a getattr would say.
    let parent = parent.expect("the parent's attributes");
    assert_eq!(parent, c.getattr(d).await);
    assert_eq!(parent.id, d);
    assert_ne!((parent.mtime, parent.size), (before.mtime, before.size));
    let made = |r: FsReply| match r {
        FsReply::Made {
            entry,
            parent: Some(p),
        } => (entry, p),
        other => panic!("{other:?}"),
    };
    let (sub, p) = made(
        c.call(FsRequest::Mkdir {
            parent: d,
            name: "sub".into(),
            mode: 0o755,
            umask: 0o022,
        })
        .await,
    );
    assert_eq!((p.id, p.nlink), (d, 3));
    assert_eq!(sub.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    made(
        c.call(FsRequest::Symlink {
            parent: d,
            name: "ln".into(),
            target: "f".into(),
        })
        .await,
    );
    made(
        c.call(FsRequest::Link {
            id: entry.attr.id,
            new_parent: d,
            new_name: "hard".into(),
        })
        .await,
    );
    c.ok(FsRequest::Rename {
        parent: d,
        name: "f".into(),
        new_parent: ROOT_ID,
        new_name: "g".into(),
        flags: 0,
    })
    .await;
    // Onto a hard link of itself: does nothing, causes nothing.
    c.ok(FsRequest::Rename {
        parent: ROOT_ID,
        name: "g".into(),
        new_parent: d,
        new_name: "hard".into(),
        flags: 0,
    })
    .await;
    c.ok(FsRequest::Unlink {
        parent: d,
        name: "hard".into(),
    })
    .await;
    c.ok(FsRequest::Rmdir {
        parent: d,
        name: "sub".into(),
    })
    .await;

    // A host edit in the same directory still gets through, and nothing
    // about the guest's own names came before it.
    std::fs::write(e.root.join("d/host"), b"").unwrap();
    let mut seen = Vec::new();
    let mut inval = c.inval.lock().await;
    let host = FsToGuest::InvalidateEntry {
        parent: d,
        name: b"host".to_vec(),
    };
    while !seen.contains(&host) {
        match tokio::time::timeout(Duration::from_secs(2), inval.recv()).await {
            Ok(Some(m)) => seen.push(m),
            _ => panic!("the host's create was not reported; saw {seen:?}"),
        }
    }
    let ours = |m: &FsToGuest| {
        matches!(m, FsToGuest::InvalidateEntry { name, .. }
            if ["f", "sub", "ln", "hard", "g"].iter().any(|n| n.as_bytes() == name.as_slice()))
    };
    assert!(!seen.iter().any(ours), "{seen:?}");
    // The same names changed on the host are reported.
    std::fs::remove_file(e.root.join("d/ln")).unwrap();
    let ln = FsToGuest::InvalidateEntry {
        parent: d,
        name: b"ln".to_vec(),
    };
    while !seen.contains(&ln) {
        match tokio::time::timeout(Duration::from_secs(2), inval.recv()).await {
            Ok(Some(m)) => seen.push(m),
            _ => panic!("the host's unlink was not reported; saw {seen:?}"),
        }
    }
    drop(inval);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_the_connection() {
    let e = env();
    let server = Server::new(&e.root, true).unwrap();
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(server.serve(theirs));
    ours.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let err = served.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // A frame longer than the limit too.
    let server = Server::new(&e.root, true).unwrap();
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(server.serve(theirs));
    ours.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(served.await.unwrap().is_err());
}

/// Found by the fuzzer (`crash-a33e630f…`): a 27-byte frame whose byte
/// string claims a length of ~3.4 EiB. The decoder allocated the claimed
/// length before reading, which aborted the whole process (the host agent).
/// Now the claim is checked against a limit first and the frame is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_claimed_length_is_refused_not_allocated() {
    const CRASH: &[u8] = &[
        0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x6d, 0xfb, 0xed, 0x01, 0x00, 0x1b,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0xfd, 0x8c, 0xeb, 0xd1, 0xd1, 0xd0, 0xd1, 0xd1,
        0x2f, 0x6f, 0x75, 0x74, 0x73, 0x69, 0x64, 0x65, 0x2f, 0x73, 0x65, 0x63, 0x72, 0x65, 0x74,
        0x06, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x01, 0x64, 0x04, 0xfd, 0xff, 0x00, 0x01,
        0x0b, 0x02, 0x04, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0x01, 0x06, 0x00, 0x00, 0x00, 0x01, 0x02, 0x13, 0x01, 0x00, 0x01, 0x06, 0x00,
        0x00, 0x15, 0x04, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x03,
    ];
    // The second frame alone is what used to abort.
    assert!(matches!(
        lima_proto::decode_body::<FsToHost>(&CRASH[18..18 + 27]),
        Err(lima_proto::FrameError::Decode(_))
    ));
    let e = env();
    let server = Server::new(&e.root, true).unwrap();
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(server.serve(theirs));
    ours.write_all(CRASH).await.unwrap();
    let err = served.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(
        std::fs::read(e.outside.join("secret")).unwrap(),
        b"host secret"
    );
}

#[test]
fn new_names_the_bad_path() {
    let e = env();
    let missing = e.root.join("nope");
    let err = Server::new(&missing, true).err().unwrap();
    assert!(matches!(err, crate::FsError::Missing(_)));
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    let file = e.outside.join("secret");
    let err = Server::new(&file, true).err().unwrap();
    assert!(matches!(err, crate::FsError::NotADirectory(_)));
    assert!(
        err.to_string().contains("secret") && err.to_string().contains("not a directory"),
        "{err}"
    );
}

#[tokio::test]
async fn over_the_node_budget_the_guest_is_asked_to_forget_the_oldest() {
    let e = env();
    for i in 0..40 {
        std::fs::write(e.root.join(format!("f{i:02}")), b"x").unwrap();
    }
    let c = start(&e.root, true);
    c.fs.node_budget.store(20, Ordering::Relaxed);
    let mut ids = Vec::new();
    for i in 0..19 {
        ids.push(
            c.lookup(ROOT_ID, &format!("f{i:02}"))
                .await
                .unwrap()
                .attr
                .id,
        );
    }
    // 20 nodes with the root: at the budget, nothing asked yet. Use f00
    // again so that it is not among the oldest.
    c.call(FsRequest::Getattr { id: ids[0] }).await;
    assert!(c.inval.lock().await.try_recv().is_err());
    for i in 19..30 {
        c.lookup(ROOT_ID, &format!("f{i:02}")).await.unwrap();
    }
    // Over it: the least recently used entries, by name, down to 90%.
    let mut asked = Vec::new();
    let mut inval = c.inval.lock().await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), inval.recv()).await {
        match m {
            FsToGuest::InvalidateEntry { parent, name } => {
                assert_eq!(parent, ROOT_ID);
                asked.push(String::from_utf8(name).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!asked.is_empty(), "no eviction asked for");
    assert!(asked.contains(&"f01".to_string()), "{asked:?}");
    assert!(
        !asked.contains(&"f00".to_string()),
        "recently used f00 evicted: {asked:?}"
    );
    assert!(
        !asked.iter().any(|n| n.as_str() >= "f19"),
        "new nodes evicted: {asked:?}"
    );
    // The guest's forgets close the fds.
    drop(inval);
    let before = c.fs.nodes.count();
    for name in &asked {
        let id = c.lookup(ROOT_ID, name).await.unwrap().attr.id;
        c.forget(id, 2).await;
    }
    assert_eq!(c.fs.nodes.count(), before - asked.len());
}

/// A host chmod between the server reading a new node's attributes and
/// putting the node in its table: the watcher, which reports changes only
/// for nodes the table holds, drops the chmod's event, so the reply must
/// carry the new mode (the kernel would otherwise keep the old one for an
/// hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_chmod_while_a_lookup_makes_the_node_is_in_the_reply() {
    let env = env();
    let f = env.root.join("chmod-race");
    std::fs::write(&f, "x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = start(&env.root, true);
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
    let marker = env.root.join("marker");
    *crate::fs::PAUSE_BEFORE_INTERN.lock().unwrap() = Some((
        b"chmod-race".to_vec(),
        Box::new(move || {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            // Its event comes after the chmod's: once the guest hears of
            // it, the watcher has been through the chmod's.
            std::fs::write(&marker, "").unwrap();
            // (The server answers lookups on a runtime worker: let the
            // runtime move its other tasks off this one meanwhile.)
            tokio::task::block_in_place(|| {
                seen_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the marker's invalidation")
            });
        }),
    ));
    let (reply, ()) = tokio::join!(
        c.call(FsRequest::Lookup {
            parent: ROOT_ID,
            name: b"chmod-race".to_vec(),
        }),
        async {
            let seen = c
                .invalidated(
                    Duration::from_secs(30),
                    |m| matches!(m, FsToGuest::InvalidateEntry { name, .. } if name == b"marker"),
                )
                .await;
            assert!(seen, "no invalidation for the marker");
            seen_tx.send(()).unwrap();
        }
    );
    let e = entry(reply).unwrap();
    assert_eq!(e.attr.mode & 0o7777, 0o644);
    c.close().await.unwrap();
}
