//! [`serve`] against a small in-process host server over a socket pair, on a
//! real FUSE mount of this machine. Ignored by default: they need root and
//! `/dev/fuse` (run `cargo test -p lima-guest-agent share -- --ignored`).
//!
//! The stand-in host ([`StandIn`]) keeps node ids → paths and answers from
//! `std::fs`; it is just enough of `fs-server` to drive every callback, and
//! lets a test send invalidations by hand.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lima_proto::fs::{
    Attr, DirEntry, Entry, FsReply, FsRequest, FsToGuest, FsToHost, SetTime, ShareSetup,
    ShareStatus, Statfs, Time, READDIRPLUS_MAX, READDIR_MAX, ROOT_ID,
};
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub(super) const UID: u32 = 4321;
pub(super) const GID: u32 = 8765;

pub(super) fn unique_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "lima-share-test-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn attr_of(id: u64, m: &std::fs::Metadata) -> Attr {
    let t = |secs, nanos: i64| Time {
        secs,
        nanos: nanos as u32,
    };
    Attr {
        id,
        size: m.size(),
        blocks: m.blocks(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime: t(m.ctime(), m.ctime_nsec()),
        mode: m.mode(),
        nlink: m.nlink() as u32,
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
    }
}

/// An open directory: its path and its (name, file type) entries, listed at opendir.
type OpenDir = (PathBuf, Vec<(Vec<u8>, u32)>);

#[derive(Default)]
struct Tables {
    paths: HashMap<u64, PathBuf>,
    ids: HashMap<(u64, u64), u64>,
    files: HashMap<u64, Arc<File>>,
    dirs: HashMap<u64, OpenDir>,
    next: u64,
}

/// Just enough of a host file server: ids for paths, std::fs for the rest.
struct StandIn {
    t: Mutex<Tables>,
    requests: AtomicU64,
    /// Largest read and write asked for, and readdirs with attributes.
    max_read: AtomicU64,
    max_write: AtomicU64,
    plus_readdirs: AtomicU64,
    /// Requests by kind (`Lookup`, `Flush`, ...).
    kinds: Mutex<HashMap<String, u64>>,
    /// Node references the guest holds, as a host counts them: one per
    /// entry sent, minus what `Forget` returns.
    refs: Mutex<HashMap<u64, i64>>,
}

type R = Result<FsReply, i32>;

impl StandIn {
    fn new(root: &Path) -> Arc<StandIn> {
        let mut t = Tables {
            next: ROOT_ID + 1,
            ..Default::default()
        };
        let m = std::fs::metadata(root).unwrap();
        t.paths.insert(ROOT_ID, root.to_path_buf());
        t.ids.insert((m.dev(), m.ino()), ROOT_ID);
        Arc::new(StandIn {
            t: Mutex::new(t),
            requests: AtomicU64::new(0),
            max_read: AtomicU64::new(0),
            max_write: AtomicU64::new(0),
            plus_readdirs: AtomicU64::new(0),
            kinds: Mutex::new(HashMap::new()),
            refs: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: u64) -> Result<PathBuf, i32> {
        self.t
            .lock()
            .unwrap()
            .paths
            .get(&id)
            .cloned()
            .ok_or(libc::ESTALE)
    }

    fn child(&self, parent: u64, name: &[u8]) -> Result<PathBuf, i32> {
        Ok(self.path(parent)?.join(std::ffi::OsStr::from_bytes(name)))
    }

    /// Ids follow host inodes (as in fs-server), so hard links share one.
    fn id_of(&self, path: &Path, m: &std::fs::Metadata) -> u64 {
        let mut t = self.t.lock().unwrap();
        let key = (m.dev(), m.ino());
        let id = match t.ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = t.next;
                t.next += 1;
                t.ids.insert(key, id);
                id
            }
        };
        t.paths.insert(id, path.to_path_buf());
        id
    }

    fn entry(&self, path: &Path) -> Result<Entry, i32> {
        let m = std::fs::symlink_metadata(path).map_err(|e| errno_of(&e))?;
        Ok(Entry {
            attr: attr_of(self.id_of(path, &m), &m),
            generation: 0,
        })
    }

    fn file(&self, fh: u64) -> Result<Arc<File>, i32> {
        self.t
            .lock()
            .unwrap()
            .files
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    fn add_file(&self, f: File) -> u64 {
        let mut t = self.t.lock().unwrap();
        let fh = t.next;
        t.next += 1;
        t.files.insert(fh, Arc::new(f));
        fh
    }

    fn handle(&self, req: FsRequest) -> FsReply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match &req {
            FsRequest::Read { size, .. } => {
                _ = self.max_read.fetch_max(u64::from(*size), Ordering::Relaxed)
            }
            FsRequest::Write { data, .. } => {
                _ = self
                    .max_write
                    .fetch_max(data.len() as u64, Ordering::Relaxed)
            }
            FsRequest::Readdir { plus: true, .. } | FsRequest::ReaddirAt { plus: true, .. } => {
                _ = self.plus_readdirs.fetch_add(1, Ordering::Relaxed)
            }
            _ => {}
        }
        *self.kinds.lock().unwrap().entry(kind_of(&req)).or_default() += 1;
        if let FsRequest::Forget { id, nlookup } = &req {
            *self.refs.lock().unwrap().entry(*id).or_default() -= *nlookup as i64;
        }
        let reply = self.answer(req).unwrap_or_else(FsReply::Err);
        let mut refs = self.refs.lock().unwrap();
        match &reply {
            FsReply::Entry(e) | FsReply::Created { entry: e, .. } => {
                *refs.entry(e.attr.id).or_default() += 1
            }
            FsReply::Dir(list) => {
                for e in list.iter().filter_map(|e| e.entry.as_ref()) {
                    *refs.entry(e.attr.id).or_default() += 1;
                }
            }
            _ => {}
        }
        reply
    }

    /// Requests of one kind so far.
    fn count(&self, kind: &str) -> u64 {
        self.kinds.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    fn kinds(&self) -> HashMap<String, u64> {
        self.kinds.lock().unwrap().clone()
    }

    /// References the guest holds on `path`'s node (0 if never seen).
    fn refs_of(&self, path: &Path) -> i64 {
        let m = std::fs::symlink_metadata(path).unwrap();
        let id = self.t.lock().unwrap().ids.get(&(m.dev(), m.ino())).copied();
        id.map_or(0, |id| {
            self.refs.lock().unwrap().get(&id).copied().unwrap_or(0)
        })
    }

    fn answer(&self, req: FsRequest) -> R {
        let io = |e: std::io::Error| errno_of(&e);
        Ok(match req {
            FsRequest::Lookup { parent, name } => {
                FsReply::Entry(self.entry(&self.child(parent, &name)?)?)
            }
            FsRequest::Forget { .. } => FsReply::Ok,
            FsRequest::Getattr { id } => FsReply::Attr(self.entry(&self.path(id)?)?.attr),
            FsRequest::Setattr {
                id,
                fh,
                mode,
                size,
                atime,
                mtime,
            } => {
                let p = self.path(id)?;
                if let Some(mode) = mode {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                        .map_err(io)?;
                }
                if let Some(size) = size {
                    match fh {
                        Some(fh) => self.file(fh)?.set_len(size).map_err(io)?,
                        None => OpenOptions::new()
                            .write(true)
                            .open(&p)
                            .and_then(|f| f.set_len(size))
                            .map_err(io)?,
                    }
                }
                if atime.is_some() || mtime.is_some() {
                    let ts = |t: Option<SetTime>| match t {
                        None => libc::timespec {
                            tv_sec: 0,
                            tv_nsec: libc::UTIME_OMIT,
                        },
                        Some(SetTime::Now) => libc::timespec {
                            tv_sec: 0,
                            tv_nsec: libc::UTIME_NOW,
                        },
                        Some(SetTime::At(t)) => libc::timespec {
                            tv_sec: t.secs,
                            tv_nsec: i64::from(t.nanos),
                        },
                    };
                    let times = [ts(atime), ts(mtime)];
                    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
                        .map_err(|_| libc::EINVAL)?;
                    // SAFETY: valid C string and a two-element timespec array.
                    if unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            c.as_ptr(),
                            times.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    } != 0
                    {
                        return Err(io(std::io::Error::last_os_error()));
                    }
                }
                FsReply::Attr(self.entry(&p)?.attr)
            }
            FsRequest::Readlink { id } => FsReply::Link(
                std::fs::read_link(self.path(id)?)
                    .map_err(io)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            ),
            FsRequest::Mkdir {
                parent,
                name,
                mode,
                umask,
            } => {
                let p = self.child(parent, &name)?;
                std::fs::DirBuilder::new()
                    .mode(mode & !umask)
                    .create(&p)
                    .map_err(io)?;
                FsReply::Entry(self.entry(&p)?)
            }
            FsRequest::Unlink { parent, name } => {
                std::fs::remove_file(self.child(parent, &name)?).map_err(io)?;
                FsReply::Ok
            }
            FsRequest::Rmdir { parent, name } => {
                std::fs::remove_dir(self.child(parent, &name)?).map_err(io)?;
                FsReply::Ok
            }
            FsRequest::Symlink {
                parent,
                name,
                target,
            } => {
                let p = self.child(parent, &name)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &p).map_err(io)?;
                FsReply::Entry(self.entry(&p)?)
            }
            FsRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                if flags != 0 {
                    return Err(libc::EINVAL);
                }
                let (from, to) = (
                    self.child(parent, &name)?,
                    self.child(new_parent, &new_name)?,
                );
                std::fs::rename(&from, &to).map_err(io)?;
                self.entry(&to)?; // the node's path is now `to`
                FsReply::Ok
            }
            FsRequest::Link {
                id,
                new_parent,
                new_name,
            } => {
                let to = self.child(new_parent, &new_name)?;
                std::fs::hard_link(self.path(id)?, &to).map_err(io)?;
                FsReply::Entry(self.entry(&to)?)
            }
            FsRequest::Open { id, flags } => {
                let f = open_with(&self.path(id)?, flags, 0).map_err(io)?;
                FsReply::Opened {
                    fh: self.add_file(f),
                }
            }
            FsRequest::Create {
                parent,
                name,
                mode,
                umask,
                flags,
            } => {
                let p = self.child(parent, &name)?;
                let f = open_with(&p, flags | libc::O_CREAT, mode & !umask).map_err(io)?;
                FsReply::Created {
                    entry: self.entry(&p)?,
                    fh: self.add_file(f),
                    parent: self.entry(&self.path(parent)?).ok().map(|e| e.attr),
                }
            }
            FsRequest::Read { fh, offset, size } => {
                let f = self.file(fh)?;
                let mut buf = vec![0; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f
                        .read_at(&mut buf[got..], offset + got as u64)
                        .map_err(io)?
                    {
                        0 => break,
                        n => got += n,
                    }
                }
                buf.truncate(got);
                FsReply::Data(buf)
            }
            FsRequest::Write { fh, offset, data } => {
                self.file(fh)?.write_all_at(&data, offset).map_err(io)?;
                FsReply::Written(data.len() as u32)
            }
            FsRequest::Flush { fh } => {
                self.file(fh)?;
                FsReply::Ok
            }
            FsRequest::Fsync { fh, .. } => {
                self.file(fh)?.sync_all().map_err(io)?;
                FsReply::Ok
            }
            FsRequest::Release { fh } => {
                self.t
                    .lock()
                    .unwrap()
                    .files
                    .remove(&fh)
                    .ok_or(libc::EBADF)?;
                FsReply::Ok
            }
            FsRequest::Opendir { id } => {
                let p = self.path(id)?;
                let mut list = vec![
                    (b".".to_vec(), libc::S_IFDIR),
                    (b"..".to_vec(), libc::S_IFDIR),
                ];
                for e in std::fs::read_dir(&p).map_err(io)? {
                    let e = e.map_err(io)?;
                    let m = e.metadata().map_err(io)?;
                    list.push((e.file_name().as_bytes().to_vec(), m.mode() & libc::S_IFMT));
                }
                let mut t = self.t.lock().unwrap();
                let fh = t.next;
                t.next += 1;
                t.dirs.insert(fh, (p, list));
                FsReply::Opened { fh }
            }
            FsRequest::Readdir { fh, offset, plus } => {
                let (dir, list) = self
                    .t
                    .lock()
                    .unwrap()
                    .dirs
                    .get(&fh)
                    .cloned()
                    .ok_or(libc::EBADF)?;
                let max = if plus { READDIRPLUS_MAX } else { READDIR_MAX };
                let mut out = Vec::new();
                for (i, (name, kind)) in list.iter().enumerate().skip(offset as usize).take(max) {
                    let dot = name == b"." || name == b"..";
                    let entry = if plus && !dot {
                        self.entry(&dir.join(std::ffi::OsStr::from_bytes(name)))
                            .ok()
                    } else {
                        None
                    };
                    out.push(DirEntry {
                        name: name.clone(),
                        next_offset: i as u64 + 1,
                        entry,
                        kind: *kind,
                    });
                }
                FsReply::Dir(out)
            }
            // Open, one batch, release (read_dir's order is stable, so
            // the indexes used as offsets carry over between opens).
            FsRequest::ReaddirAt { id, offset, plus } => {
                let Ok(FsReply::Opened { fh }) = self.answer(FsRequest::Opendir { id }) else {
                    return Err(libc::ENOTDIR);
                };
                let batch = self.answer(FsRequest::Readdir { fh, offset, plus });
                let _ = self.answer(FsRequest::Releasedir { fh });
                return batch;
            }
            FsRequest::Releasedir { fh } => {
                self.t.lock().unwrap().dirs.remove(&fh).ok_or(libc::EBADF)?;
                FsReply::Ok
            }
            // The stand-in offers no shared memory.
            FsRequest::ReadShm { .. } | FsRequest::WriteShm { .. } => return Err(libc::EINVAL),
            FsRequest::Statfs => {
                let s = nix::sys::statvfs::statvfs(&self.path(ROOT_ID)?).map_err(|e| e as i32)?;
                FsReply::Statfs(Statfs {
                    blocks: s.blocks(),
                    bfree: s.blocks_free(),
                    bavail: s.blocks_available(),
                    files: s.files(),
                    ffree: s.files_free(),
                    bsize: s.block_size() as u32,
                    namelen: s.name_max() as u32,
                    frsize: s.fragment_size() as u32,
                })
            }
            FsRequest::Getlk { .. } | FsRequest::Setlk { .. } | FsRequest::Flock { .. } => {
                return Err(libc::ENOSYS)
            }
        })
    }
}

/// A request's kind, as counted: `Lookup`, `Flush`, ...
pub(super) fn kind_of(req: &FsRequest) -> String {
    let kind = format!("{req:?}");
    kind.split([' ', '{']).next().unwrap_or("").to_string()
}

fn open_with(p: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
    let acc = flags & libc::O_ACCMODE;
    OpenOptions::new()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT))
        .create(flags & libc::O_CREAT != 0)
        .mode(mode)
        .open(p)
}

/// Answers requests concurrently; `extra` injects frames (invalidations).
async fn serve_stand_in<S: AsyncRead + AsyncWrite + Send + 'static>(
    host: Arc<StandIn>,
    stream: S,
    mut extra: mpsc::UnboundedReceiver<FsToGuest>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<FsToGuest>();
    let writer = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                m = extra.recv() => m,
            };
            let Some(msg) = msg else { break };
            if write_frame_async(&mut wr, &msg).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    while let Ok(Some(FsToHost::Request { id, req })) =
        read_frame_async::<_, FsToHost>(&mut rd).await
    {
        let (host, tx) = (host.clone(), tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(FsToGuest::Reply {
                id,
                reply: host.handle(req),
            });
        });
    }
    drop(tx);
    writer.abort();
}

/// Each mount's shared state by mount point, to count what the kernel asked.
pub(super) static MOUNTED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<super::fs::Shared>>>,
> = std::sync::LazyLock::new(Default::default);

/// Lookups the kernel has sent the agent serving `mount` so far.
fn kernel_lookups(mount: &Path) -> u64 {
    MOUNTED.lock().unwrap()[mount.to_str().unwrap()]
        .lookups
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The kernel's lookup count of node `id`, as the agent serving `mount` keeps it.
fn kernel_refs(mount: &Path, id: u64) -> u64 {
    let shared = MOUNTED.lock().unwrap()[mount.to_str().unwrap()].clone();
    let counts = shared.cache.lock().unwrap().counts(id);
    counts.map_or(0, |(_, kernel, _)| kernel)
}

struct Mounted {
    root: PathBuf,
    mount: PathBuf,
    host: Arc<StandIn>,
    inject: mpsc::UnboundedSender<FsToGuest>,
    /// Dropping it closes the stream (the host going away).
    server: tokio::task::JoinHandle<()>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the agent's share service on one end of a socket pair and sends
/// it `setup`; returns the service's task, the host's end and the status
/// the service answered with.
async fn start_share(
    setup: ShareSetup,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio::net::UnixStream,
    ShareStatus,
) {
    let (guest, mut host_end) = tokio::net::UnixStream::pair().unwrap();
    let agent = tokio::spawn(super::serve(guest));
    write_frame_async(&mut host_end, &setup).await.unwrap();
    let status: ShareStatus = read_frame_async(&mut host_end).await.unwrap().unwrap();
    (agent, host_end, status)
}

async fn mount_stand_in(writable: bool) -> Mounted {
    let root = unique_dir("root");
    let mount = unique_dir("mnt").join("deep/er");
    let (agent, host_end, status) = start_share(ShareSetup {
        tag: "test".into(),
        mount_point: mount.to_str().unwrap().into(),
        writable,
        uid: UID,
        gid: GID,
        shm: None,
        port: None,
        layer: None,
    })
    .await;
    assert_eq!(status, ShareStatus::Ready);
    let host = StandIn::new(&root);
    let (inject, extra) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve_stand_in(host.clone(), host_end, extra));
    Mounted {
        root,
        mount,
        host,
        inject,
        server,
        agent,
    }
}

/// `d` with `n` files `f0`.. on the host, looked up twice through the
/// mount (the second miss fetches it) and listed.
async fn listed_dir(m: &Mounted, n: usize) {
    std::fs::create_dir(m.root.join("d")).unwrap();
    for i in 0..n {
        std::fs::write(m.root.join(format!("d/f{i}")), format!("{i}")).unwrap();
    }
    blocking({
        let d = m.mount.join("d");
        move || {
            for i in 0..2 {
                assert!(d.join(format!("f{i}")).exists());
            }
        }
    })
    .await;
    until_listed(m.mount.join("d"), {
        let host = m.host.clone();
        move || host.count("Lookup")
    })
    .await;
}

/// Stops the stand-in and waits for the agent to unmount.
async fn finish(m: Mounted) {
    m.server.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), m.agent).await;
    let _ = std::fs::remove_dir_all(&m.root);
}

pub(super) fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// Waits until lookups in `dir` are answered from its listing: a name never
/// asked for there is refused with no host lookup (`lookups`: the host's
/// count so far). Each probe is a new name, so the kernel has no negative
/// dentry for it.
pub(super) async fn until_listed(
    dir: PathBuf,
    lookups: impl Fn() -> u64 + Send + Sync + Clone + 'static,
) {
    let probes = Arc::new(AtomicU64::new(0));
    eventually(&format!("{} listed", dir.display()), move || {
        let before = lookups();
        let n = probes.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            stat_errno(&dir.join(format!(".probe{n}"))),
            Some(libc::ENOENT)
        );
        lookups() == before
    })
    .await;
}

/// A non-waiting `fcntl` lock (`cmd`: `F_SETLK` or `F_OFD_SETLK`) of
/// kind `l_type` over all of `f`; whether it was granted.
pub(super) fn lock_whole(f: &std::fs::File, cmd: libc::c_int, l_type: libc::c_int) -> bool {
    let l = libc::flock {
        l_type: l_type as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: a valid fd and flock struct.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), cmd, &l) == 0 }
}

/// Runs blocking file operations off the runtime's workers, which serve them.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn share_round_trip_on_a_real_mount() {
    let m = mount_stand_in(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    assert!(is_mounted(&mnt));

    blocking(move || exercise(&root, &mnt)).await;
    // The kernel lists with attributes and moves data in MAX_IO pieces:
    // one 4 MiB write() and a cold 4 MiB read() (readahead raised to match).
    assert!(m.host.plus_readdirs.load(Ordering::Relaxed) > 0);
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    // A new host file: the host says so (the guest has listed the root).
    std::fs::write(root.join("4m-host"), vec![2u8; 4 << 20]).unwrap();
    m.inject
        .send(FsToGuest::InvalidateEntry {
            parent: ROOT_ID,
            name: b"4m-host".to_vec(),
        })
        .unwrap();
    eventually("4m-host appears", {
        let mnt = mnt.clone();
        move || mnt.join("4m-host").exists()
    })
    .await;
    blocking(move || {
        std::fs::write(mnt.join("4m"), vec![1u8; 4 << 20]).unwrap();
        assert_eq!(
            std::fs::read(mnt.join("4m-host")).unwrap(),
            vec![2u8; 4 << 20]
        );
    })
    .await;
    assert_eq!(
        m.host.max_write.load(Ordering::Relaxed),
        u64::from(lima_proto::fs::MAX_IO)
    );
    assert_eq!(
        m.host.max_read.load(Ordering::Relaxed),
        u64::from(lima_proto::fs::MAX_IO)
    );

    // Host-side edits. 1: same size, same mtime, so only the host's
    // invalidation can reveal it; the kernel's page cache answers before.
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    let hello_id = m.host.entry(&root.join("hello.txt")).unwrap().attr.id;
    let before = std::fs::metadata(root.join("hello.txt"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(root.join("hello.txt"), "HELLO FROM THE HOST\n").unwrap();
    File::options()
        .write(true)
        .open(root.join("hello.txt"))
        .unwrap()
        .set_modified(before)
        .unwrap();
    let cached = blocking({
        let mnt = mnt.clone();
        move || std::fs::read_to_string(mnt.join("hello.txt")).unwrap()
    })
    .await;
    assert_eq!(
        cached, "hello from the host\n",
        "served from the page cache"
    );
    m.inject
        .send(FsToGuest::InvalidateNode { id: hello_id })
        .unwrap();
    wait_for(&mnt.join("hello.txt"), "HELLO FROM THE HOST\n").await;

    // 2: a change of size and mtime without any invalidation: the check at
    // open notices.
    std::fs::write(root.join("hello.txt"), "changed again, and longer\n").unwrap();
    let seen = blocking({
        let mnt = mnt.clone();
        move || std::fs::read_to_string(mnt.join("hello.txt")).unwrap()
    })
    .await;
    assert_eq!(seen, "changed again, and longer\n");

    // 3: a name the guest looked up in vain appears on the host.
    let late = mnt.join("late.txt");
    assert!(
        blocking({
            let late = late.clone();
            move || !late.exists()
        })
        .await
    );
    std::fs::write(root.join("late.txt"), "late").unwrap();
    assert!(
        !blocking({
            let late = late.clone();
            move || late.exists()
        })
        .await,
        "negative entry cached"
    );
    m.inject
        .send(FsToGuest::InvalidateEntry {
            parent: ROOT_ID,
            name: b"late.txt".to_vec(),
        })
        .unwrap();
    wait_for(&late, "late").await;

    // The host goes away: the agent detaches the mount and returns.
    let mnt = m.mount.clone();
    drop(m.inject);
    m.server.abort();
    let _ = m.server.await;
    tokio::time::timeout(Duration::from_secs(10), m.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!is_mounted(&mnt));
    let _ = std::fs::remove_dir_all(&m.root);
}

/// The guest-side checks of a round trip: ls, cat, ownership, echo >, append,
/// truncate, chmod, utimes, mv, rm, mkdir, rmdir, ln -s, ln, mkfifo, a big
/// directory, statfs; `root` is the host directory behind `mnt`.
pub(super) fn exercise(root: &Path, mnt: &Path) {
    std::fs::write(root.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/a"), "a").unwrap();
    // A big directory: more entries than one kernel buffer or one host batch.
    std::fs::create_dir(root.join("many")).unwrap();
    for i in 0..1000 {
        std::fs::write(
            root.join(format!("many/file-with-a-longish-name-{i:04}")),
            "",
        )
        .unwrap();
    }

    // ls, cat, ownership
    let mut names: Vec<_> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hello.txt", "many", "sub"]);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from the host\n"
    );
    let md = std::fs::metadata(mnt.join("sub/a")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.len()), (UID, GID, 1));
    assert!(std::fs::metadata(mnt.join("sub")).unwrap().is_dir());

    // echo > file, append, truncate, chmod, utimes
    std::fs::write(mnt.join("new.txt"), "written in the guest").unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "written in the guest"
    );
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.join("new.txt"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"!").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read_to_string(mnt.join("new.txt")).unwrap(),
        "written in the guest!"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "written in the guest!"
    );
    OpenOptions::new()
        .write(true)
        .open(mnt.join("new.txt"))
        .unwrap()
        .set_len(7)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "written"
    );
    std::fs::set_permissions(mnt.join("new.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("new.txt")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(mnt.join("new.txt")).unwrap().mode() & 0o777,
        0o600
    );
    let when = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 5);
    File::options()
        .write(true)
        .open(mnt.join("new.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(
        std::fs::metadata(root.join("new.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        when
    );

    // mv, rm, mkdir, rmdir, ln -s, ln
    std::fs::rename(mnt.join("new.txt"), mnt.join("sub/moved.txt")).unwrap();
    assert!(!root.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("sub/moved.txt")).unwrap(),
        "written"
    );
    std::fs::remove_file(mnt.join("sub/moved.txt")).unwrap();
    assert!(!root.join("sub/moved.txt").exists());
    assert_eq!(
        std::fs::metadata(mnt.join("sub/moved.txt"))
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound
    );
    std::fs::create_dir_all(mnt.join("d1/d2")).unwrap();
    assert!(root.join("d1/d2").is_dir());
    std::fs::remove_dir(mnt.join("d1/d2")).unwrap();
    assert!(!root.join("d1/d2").exists());
    std::os::unix::fs::symlink("hello.txt", mnt.join("link")).unwrap();
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        Path::new("hello.txt")
    );
    assert_eq!(
        std::fs::read_link(mnt.join("link")).unwrap(),
        Path::new("hello.txt")
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("link")).unwrap(),
        "hello from the host\n"
    );
    std::fs::hard_link(mnt.join("sub/a"), mnt.join("a2")).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("a2")).unwrap().ino(),
        std::fs::metadata(root.join("sub/a")).unwrap().ino()
    );
    assert_eq!(std::fs::metadata(mnt.join("sub/a")).unwrap().nlink(), 2);
    // mkfifo is refused (no mknod in the protocol), a plain mknod works.
    let fifo = std::ffi::CString::new(mnt.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_ne!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    // A big directory (made on the host before the guest looked at the
    // share: the stand-in host sends no invalidations, and the guest's
    // listing of the share's root would not show a later host mkdir).
    let listed = std::fs::read_dir(mnt.join("many")).unwrap().count();
    assert_eq!(listed, 1000);
    let sizes: u64 = std::fs::read_dir(mnt.join("many"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(sizes, 0);

    // statfs
    let s = nix::sys::statvfs::statvfs(mnt).unwrap();
    assert!(s.blocks() > 0);
}

pub(super) async fn eventually(
    what: &str,
    cond: impl Fn() -> bool + Send + Sync + Clone + 'static,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if blocking(cond.clone()).await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn wait_for(p: &Path, content: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p2 = p.to_path_buf();
        let got = blocking(move || std::fs::read_to_string(p2).ok()).await;
        if got.as_deref() == Some(content) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still reads {got:?}",
            p.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn read_only_share_refuses_writes() {
    let m = mount_stand_in(false).await;
    std::fs::write(m.root.join("f"), "x").unwrap();
    let mnt = m.mount.clone();
    blocking(move || {
        assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "x");
        let e = std::fs::write(mnt.join("g"), "y").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = OpenOptions::new()
            .write(true)
            .open(mnt.join("f"))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    })
    .await;
    finish(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn a_mount_point_that_cannot_be_created_fails_with_its_name() {
    let file = unique_dir("file").join("plain");
    std::fs::write(&file, "").unwrap();
    let mount_point = file.join("sub").to_str().unwrap().to_string();
    let (agent, _host_end, status) = start_share(ShareSetup {
        tag: "t".into(),
        mount_point: mount_point.clone(),
        writable: true,
        uid: 0,
        gid: 0,
        shm: None,
        port: None,
        layer: None,
    })
    .await;
    match status {
        ShareStatus::Failed(reason) => assert!(reason.contains(&mount_point), "{reason}"),
        other => panic!("{other:?}"),
    }
    agent.await.unwrap().unwrap();
}

/// Prints throughput and latency on this host's FUSE mount (no assertions
/// on time): `cargo test -p lima-guest-agent --release share_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE and measures: needs root and /dev/fuse (shared folders issue)"]
async fn share_throughput() {
    let m = mount_stand_in(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    let host = m.host.clone();
    let requests = move || Some(host.requests.load(Ordering::Relaxed));
    blocking(move || measure(&root, &mnt, requests)).await;
    finish(m).await;
}

/// Prints write, cold read, cached read and stat figures for `mnt`; the
/// host request counts when `requests` can tell them.
pub(super) fn measure(root: &Path, mnt: &Path, requests: impl Fn() -> Option<u64>) {
    // Before the guest looks: a host without invalidations (the stand-in)
    // would otherwise leave them out of the guest's listing of the root.
    for i in 0..200 {
        std::fs::write(root.join(format!("s{i}")), "").unwrap();
    }
    let count = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .map_or("?".to_string(), |(a, b)| (b - a).to_string())
    };
    const SIZE: usize = 256 << 20;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = File::create(mnt.join("big")).unwrap();
    for _ in 0..SIZE / chunk.len() {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let w = t.elapsed();
    assert_eq!(
        std::fs::metadata(root.join("big")).unwrap().len(),
        SIZE as u64
    );
    // A file written on the host has no pages in the guest: the first
    // read goes to the host, the second comes from the page cache.
    std::fs::write(root.join("cold"), vec![0xa5u8; SIZE]).unwrap();
    let read_all = |p: &Path| {
        let f = File::open(p).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (t, mut total) = (Instant::now(), 0);
        loop {
            match std::io::Read::read(&mut &f, &mut buf).unwrap() {
                0 => break (total, t.elapsed()),
                n => total += n,
            }
        }
    };
    let (total, r) = read_all(&mnt.join("cold"));
    let (total2, r2) = read_all(&mnt.join("cold"));
    assert_eq!((total, total2), (SIZE, SIZE));
    let mb = |n: usize, d: Duration| n as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!("write {} MiB: {:.0} MiB/s", SIZE >> 20, mb(SIZE, w));
    println!("read (first) : {:.0} MiB/s", mb(total, r));
    println!("read (cached): {:.0} MiB/s", mb(total2, r2));

    // Metadata latency: stat of distinct new names (each a round trip),
    // then of the same name (kernel cache).
    let n0 = requests();
    let t = Instant::now();
    for i in 0..200 {
        std::fs::metadata(mnt.join(format!("s{i}"))).unwrap();
    }
    let cold = t.elapsed() / 200;
    let n1 = requests();
    let t = Instant::now();
    for i in 0..200 {
        std::fs::metadata(mnt.join(format!("s{i}"))).unwrap();
    }
    let warm = t.elapsed() / 200;
    let n2 = requests();
    println!(
        "stat (lookup round trip): {cold:?} each, {} host requests for 200",
        count(n0, n1)
    );
    println!(
        "stat (cached)           : {warm:?} each, {} host requests for 200",
        count(n1, n2)
    );
}

/// Requests of each kind between two snapshots of [`StandIn::kinds`].
pub(super) fn since(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The names in directory `dir`, sorted.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn total(kinds: &HashMap<String, u64>) -> u64 {
    kinds.values().sum()
}

fn stat_errno(p: &Path) -> Option<i32> {
    std::fs::symlink_metadata(p).err().map(|e| errno_of(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn subdirectories_are_fetched_and_primed_ahead_of_lookups() {
    let m = mount_stand_in(true).await;
    for d in 0..10 {
        std::fs::create_dir_all(m.root.join(format!("t/d{d}"))).unwrap();
        for f in 0..20 {
            std::fs::write(m.root.join(format!("t/d{d}/f{f}")), "x").unwrap();
        }
    }
    let mnt = m.mount.clone();
    // Two misses in `t`: it is fetched, and its subdirectories after it.
    blocking(move || {
        assert!(mnt.join("t/d0").is_dir());
        assert!(mnt.join("t/d1").is_dir());
    })
    .await;
    // Each of them is listed and primed although nobody looked inside: the
    // kernel holds even the last file of the last one.
    for d in 0..10 {
        let id = m
            .host
            .entry(&m.root.join(format!("t/d{d}/f19")))
            .unwrap()
            .attr
            .id;
        eventually(&format!("t/d{d} primed"), {
            let mount = m.mount.clone();
            move || kernel_refs(&mount, id) == 1
        })
        .await;
    }
    let mount = m.mount.clone();
    let looked_up = kernel_lookups(&mount);
    let k0 = m.host.kinds();
    let walked = blocking(move || {
        (0..10).all(|d| (0..20).all(|f| mount.join(format!("t/d{d}/f{f}")).exists()))
            && kernel_lookups(&mount) == looked_up
    });
    assert!(
        walked.await,
        "lookups reached the agent after fetching ahead"
    );
    assert_eq!(total(&since(&k0, &m.host.kinds())), 0);
    finish(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn lookups_in_a_directory_are_answered_from_its_listing() {
    let m = mount_stand_in(true).await;
    for d in ["d", "e"] {
        std::fs::create_dir(m.root.join(d)).unwrap();
        for i in 0..100 {
            std::fs::write(m.root.join(format!("{d}/f{i}")), format!("{i}")).unwrap();
        }
    }
    let mnt = m.mount.clone();
    let host = m.host.clone();
    let cold = blocking({
        let (mnt, host) = (mnt.clone(), host.clone());
        move || {
            assert!(mnt.join("d").is_dir()); // the share's root is not the subject
            assert!(mnt.join("e").is_dir());
            let k0 = host.kinds();
            // The first miss goes to the host alone, the second also
            // starts fetching the directory (unless listing the root
            // already fetched it ahead: then none do).
            for i in 0..2 {
                assert!(mnt.join(format!("d/f{i}")).exists());
            }
            since(&k0, &host.kinds())
        }
    })
    .await;
    assert!(cold.get("Lookup").copied().unwrap_or(0) <= 2, "{cold:?}");
    until_listed(mnt.join("d"), {
        let host = host.clone();
        move || host.count("Lookup")
    })
    .await;
    assert!(host.count("ReaddirAt") >= 1);
    let warm = blocking({
        let (mnt, host) = (mnt.clone(), host.clone());
        move || {
            let k1 = host.kinds();
            for i in 0..100 {
                let md = std::fs::symlink_metadata(mnt.join(format!("d/f{i}"))).unwrap();
                assert_eq!(md.len(), format!("{i}").len() as u64);
            }
            // Names the kernel never looked up: answered from the listing.
            for i in 0..40 {
                assert_eq!(
                    stat_errno(&mnt.join(format!("d/missing{i}"))),
                    Some(libc::ENOENT)
                );
            }
            since(&k1, &host.kinds())
        }
    })
    .await;
    // Before listings: one Lookup each (140). Now: two at most, and the fetch.
    println!("2 cold lookups in one directory: {cold:?}, 140 more: {warm:?}");
    assert_eq!(total(&warm), 0, "{warm:?}");

    // A listed directory holds host references through the listing and,
    // once primed, the kernel's dentries; host invalidations of names the
    // program never asked for give both back, down to zero.
    let (mnt, host, root) = (m.mount.clone(), m.host.clone(), m.root.clone());
    blocking(move || {
        for i in 0..3 {
            assert!(mnt.join(format!("e/f{i}")).exists());
        }
    })
    .await;
    let e_id = m.host.entry(&m.root.join("e")).unwrap().attr.id;
    eventually("e listed", {
        let (host, root) = (host.clone(), root.clone());
        move || host.refs_of(&root.join("e/f99")) == 1
    })
    .await;
    // And primed: the kernel holds names it never asked for ...
    let f99 = m.host.entry(&m.root.join("e/f99")).unwrap().attr.id;
    eventually("e primed", {
        let mount = m.mount.clone();
        move || kernel_refs(&mount, f99) == 1
    })
    .await;
    // ... and finds them without asking.
    let mount = m.mount.clone();
    let looked_up = kernel_lookups(&mount);
    let primed = blocking(move || {
        (3..100).all(|i| mount.join(format!("e/f{i}")).exists())
            && kernel_lookups(&mount) == looked_up
    });
    assert!(primed.await, "lookups reached the agent after priming");

    // Reading the listed directory asks the host nothing, and lists it all.
    let mut want: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    want.sort();
    let k0 = m.host.kinds();
    let e = m.mount.join("e");
    assert_eq!(blocking(move || sorted_names(&e)).await, want);
    let asked = since(&k0, &m.host.kinds());
    // (A getattr of the directory may come: reading it made its atime stale.)
    for op in ["Opendir", "Readdir", "Lookup"] {
        assert_eq!(asked.get(op), None, "{asked:?}");
    }
    // A name the host reports makes the listing incomplete: the next read
    // goes to the host and shows it.
    std::fs::write(m.root.join("e/new"), "").unwrap();
    m.inject
        .send(FsToGuest::InvalidateEntry {
            parent: e_id,
            name: b"new".to_vec(),
        })
        .unwrap();
    want.push("new".into());
    want.sort();
    eventually("the host's new name listed", {
        let (e, want) = (m.mount.join("e"), want.clone());
        move || sorted_names(&e) == want
    })
    .await;
    for i in 3..100 {
        m.inject
            .send(FsToGuest::InvalidateEntry {
                parent: e_id,
                name: format!("f{i}").into_bytes(),
            })
            .unwrap();
    }
    eventually("unused references given back", {
        let (host, root) = (host.clone(), root.clone());
        move || (3..100).all(|i| host.refs_of(&root.join(format!("e/f{i}"))) == 0)
    })
    .await;
    for i in 0..3 {
        assert!(m.host.refs_of(&m.root.join(format!("e/f{i}"))) >= 1);
    }
    assert!(m.host.refs.lock().unwrap().values().all(|n| *n >= 0));
    // Unknown names are asked for again, and still found.
    let mnt = m.mount.clone();
    blocking(move || assert!(mnt.join("e/f50").exists())).await;

    finish(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn guest_changes_keep_the_listing_right_and_creates_are_cheap() {
    // The stand-in sends no invalidations: whatever the guest sees after
    // its own changes comes from the kernel or from our listing.
    let m = mount_stand_in(true).await;
    // Until the listing lands, lookups go to the host, and changes made
    // while the fetch runs leave their names unknown in it (a loaded CI
    // machine got there).
    listed_dir(&m, 10).await;
    let (mnt, host, root) = (m.mount.clone(), m.host.clone(), m.root.clone());
    blocking(move || {
        let d = mnt.join("d");
        assert_eq!(stat_errno(&d.join("nope")), Some(libc::ENOENT));
        let k0 = host.kinds();
        // unlink, rename away, rename over, create, mkdir, symlink, link
        std::fs::remove_file(d.join("f1")).unwrap();
        assert_eq!(stat_errno(&d.join("f1")), Some(libc::ENOENT));
        std::fs::rename(d.join("f2"), d.join("g2")).unwrap();
        assert_eq!(stat_errno(&d.join("f2")), Some(libc::ENOENT));
        assert_eq!(std::fs::read_to_string(d.join("g2")).unwrap(), "2");
        std::fs::rename(d.join("f3"), d.join("f4")).unwrap();
        assert_eq!(stat_errno(&d.join("f3")), Some(libc::ENOENT));
        assert_eq!(std::fs::read_to_string(d.join("f4")).unwrap(), "3");
        std::fs::write(d.join("new"), "new").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("d/new")).unwrap(), "new");
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("new", d.join("ln")).unwrap();
        std::fs::hard_link(d.join("f5"), d.join("f5b")).unwrap();
        assert_eq!(std::fs::metadata(d.join("f5")).unwrap().nlink(), 2);
        std::fs::remove_dir(d.join("sub")).unwrap();
        assert_eq!(stat_errno(&d.join("sub")), Some(libc::ENOENT));
        // The git lock-file dance.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join("index.lock"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"index").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(root.join("d/index.lock")).unwrap(),
            "index"
        );
        std::fs::rename(d.join("index.lock"), d.join("index")).unwrap();
        assert_eq!(stat_errno(&d.join("index.lock")), Some(libc::ENOENT));
        assert_eq!(std::fs::read_to_string(d.join("index")).unwrap(), "index");
        let changes = since(&k0, &host.kinds());
        // The names looked up after the changes were answered locally.
        assert_eq!(changes.get("Lookup"), None, "{changes:?}");

        // Creates in a directory the guest made: no lookup, no flush.
        std::fs::create_dir(d.join("many")).unwrap();
        let k1 = host.kinds();
        for i in 0..50 {
            std::fs::write(d.join(format!("many/f{i}")), "x").unwrap();
        }
        let creates = since(&k1, &host.kinds());
        println!("50 creates: {creates:?}");
        assert_eq!(creates.get("Lookup"), None, "{creates:?}");
        assert_eq!(creates.get("Flush"), None, "{creates:?}");
        assert_eq!(creates.get("Create"), Some(&50), "{creates:?}");
        for i in 0..50 {
            assert_eq!(
                std::fs::read(root.join(format!("d/many/f{i}"))).unwrap(),
                b"x"
            );
        }
    })
    .await;
    // Every Release still reaches the host (nobody waits for it).
    eventually("handles released", {
        let host = m.host.clone();
        move || host.t.lock().unwrap().files.is_empty()
    })
    .await;

    // A handle that took a lock: its close costs no flush either (the
    // host's locks go with the release, which does reach it).
    let mnt = m.mount.clone();
    blocking(move || {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("d/f0"))
            .unwrap();
        // The stand-in has no locks (ENOSYS): the request is what counts.
        let _ = lock_whole(&f, libc::F_SETLK, libc::F_WRLCK);
        drop(f);
    })
    .await;
    eventually("the locked handle released", {
        let host = m.host.clone();
        move || host.t.lock().unwrap().files.is_empty()
    })
    .await;
    assert_eq!(m.host.count("Flush"), 0);
    assert!(m.host.count("Setlk") >= 1);
    finish(m).await;
}

/// A directory read from its listing while the host invalidates names in
/// it (its node budget does, for whatever the guest used least recently):
/// every name still there is listed, one gone on the host is not. (Entries
/// the listing lost went without attributes, as inode 0, and libc's
/// `readdir` skips those: `find` missed files.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn a_listing_read_while_names_are_invalidated_lists_them_all() {
    let m = mount_stand_in(true).await;
    listed_dir(&m, 10).await;
    let (mnt, host) = (m.mount.clone(), m.host.clone());
    // Opened now: read from the listing as it is.
    let dir = blocking({
        let d = mnt.join("d");
        move || std::fs::read_dir(d).unwrap()
    })
    .await;
    let readdirs = host.count("ReaddirAt");
    std::fs::remove_file(m.root.join("d/f9")).unwrap();
    let d_id = host.entry(&m.root.join("d")).unwrap().attr.id;
    for i in (0..10).rev() {
        m.inject
            .send(FsToGuest::InvalidateEntry {
                parent: d_id,
                name: format!("f{i}").into_bytes(),
            })
            .unwrap();
    }
    // f0's went last: once a lookup of it reaches the host, all are in.
    eventually("invalidations applied", {
        let (host, f0) = (host.clone(), mnt.join("d/f0"));
        move || {
            let before = host.count("Lookup");
            assert!(f0.exists());
            host.count("Lookup") > before
        }
    })
    .await;
    let mut names = blocking(move || {
        dir.map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    names.sort();
    let want: Vec<String> = (0..9).map(|i| format!("f{i}")).collect();
    assert_eq!(names, want);
    // Still the listing's read: the names it lost were looked up, one by one.
    assert_eq!(host.count("ReaddirAt"), readdirs);
    // And what the kernel was handed is right.
    let (mnt, root) = (m.mount.clone(), m.root.clone());
    blocking(move || {
        for i in 0..9 {
            let g = std::fs::metadata(mnt.join(format!("d/f{i}"))).unwrap();
            let h = std::fs::metadata(root.join(format!("d/f{i}"))).unwrap();
            assert_eq!(
                (g.len(), g.modified().unwrap()),
                (h.len(), h.modified().unwrap())
            );
        }
        assert!(!mnt.join("d/f9").exists());
    })
    .await;
    finish(m).await;
}

/// `ShareSetup::layer`: the share goes out of sight, the layer's view
/// takes its mount point; writes stay in the guest; when the host goes
/// away the view is unmounted and the layer kept, and a second session
/// with the same id sees it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
async fn a_layer_share_mounts_a_view_and_keeps_the_layer() {
    use lima_proto::layer::{LayerReply, LayerRequest};
    let root = unique_dir("root");
    std::fs::write(root.join("a.txt"), "host\n").unwrap();
    let mount = unique_dir("mnt").join("project");
    let id = format!("hook-{}", std::process::id());
    let session = |id: String, root: PathBuf, mount: PathBuf| async move {
        let (agent, host_end, status) = start_share(ShareSetup {
            tag: "sync".into(),
            mount_point: mount.to_str().unwrap().into(),
            writable: false,
            uid: UID,
            gid: GID,
            shm: None,
            port: None,
            layer: Some(id),
        })
        .await;
        assert_eq!(status, ShareStatus::Ready);
        let host = StandIn::new(&root);
        let (_inject, extra) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve_stand_in(host, host_end, extra));
        (agent, server, _inject)
    };
    let (agent, server, inject) = session(id.clone(), root.clone(), mount.clone()).await;
    let lower = crate::layer::lower_path(&id);
    assert!(is_mounted(&lower) && is_mounted(&mount));
    blocking({
        let mount = mount.clone();
        move || {
            assert_eq!(
                std::fs::read_to_string(mount.join("a.txt")).unwrap(),
                "host\n"
            );
            std::fs::write(mount.join("a.txt"), "guest\n").unwrap();
            std::fs::write(mount.join("b.txt"), "new\n").unwrap();
            assert_eq!(
                std::fs::read_to_string(mount.join("a.txt")).unwrap(),
                "guest\n"
            );
        }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(root.join("a.txt")).unwrap(),
        "host\n"
    );
    assert!(!root.join("b.txt").exists());
    // The host goes away: both mounts go, the layer stays.
    server.abort();
    drop(inject);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    assert!(!is_mounted(&mount) && !is_mounted(&lower));
    let store = crate::layer::Store::default();
    let LayerReply::Changes(c) =
        crate::layer::service::handle(&store, LayerRequest::Changes { id: id.clone() })
    else {
        panic!("no changes")
    };
    assert_eq!(c.len(), 2);
    // A second session reuses it.
    let (agent, server, inject) = session(id.clone(), root.clone(), mount.clone()).await;
    let body = blocking({
        let mount = mount.clone();
        move || std::fs::read_to_string(mount.join("a.txt")).unwrap()
    })
    .await;
    assert_eq!(body, "guest\n");
    server.abort();
    drop(inject);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    assert_eq!(
        crate::layer::service::handle(&store, LayerRequest::Discard { id }),
        LayerReply::Done
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `f` on a thread of its own that acts as the share's user
/// ([`UID`]/[`GID`], no supplementary groups, no capabilities).
fn as_share_user<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let no_groups: [libc::gid_t; 0] = [];
        // SAFETY: raw syscalls change this thread's credentials only;
        // setgroups reads 0 entries of a live (empty) array.
        let rcs = unsafe {
            [
                libc::syscall(libc::SYS_setgroups, 0, no_groups.as_ptr()),
                libc::syscall(libc::SYS_setresgid, GID, GID, GID),
                libc::syscall(libc::SYS_setresuid, UID, UID, UID),
            ]
        };
        assert_eq!(rcs, [0, 0, 0], "{}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// The kernel's first `GETATTR` of a fresh mount's root, answered only once
/// a host `InvalidateNode` of the root (a file the host made there) was
/// applied: the kernel drops that reply's attributes and checks the
/// share user's access against what it made the root with at mount time
/// (`mount::ROOT_PLACEHOLDER_MODE`). With no permission bits there, the
/// user's first open in a fresh share failed with EACCES while the host
/// wrote into it (`cargo xtask bench mcp`: files written right after
/// `limactl start`, then read by the guest user).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn the_share_user_gets_in_even_if_the_first_getattr_of_the_root_is_dropped() {
    let root = unique_dir("root");
    let top = unique_dir("mnt");
    let mount = top.join("m");
    std::fs::write(root.join("f"), "hello").unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The way to the mount point must be open to the user.
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (agent, host_end, status) = start_share(ShareSetup {
        tag: "test".into(),
        mount_point: mount.to_str().unwrap().into(),
        writable: true,
        uid: UID,
        gid: GID,
        shm: None,
        port: None,
        layer: None,
    })
    .await;
    assert_eq!(status, ShareStatus::Ready);
    let shared = MOUNTED.lock().unwrap()[mount.to_str().unwrap()].clone();
    let host = StandIn::new(&root);
    let (mut rd, mut wr) = tokio::io::split(host_end);
    let (tx, mut rx) = mpsc::unbounded_channel::<FsToGuest>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if write_frame_async(&mut wr, &msg).await.is_err() {
                break;
            }
        }
    });
    let server = tokio::spawn(async move {
        let mut first = true;
        while let Ok(Some(FsToHost::Request { id, req })) =
            read_frame_async::<_, FsToHost>(&mut rd).await
        {
            let (host, tx, shared) = (host.clone(), tx.clone(), shared.clone());
            let hold = first && matches!(req, FsRequest::Getattr { id: ROOT_ID });
            first &= !hold;
            tokio::spawn(async move {
                if hold {
                    // The kernel sent this getattr; the invalidation
                    // reaches it before the reply does.
                    let before = shared.invalidated.load(Ordering::Relaxed);
                    tx.send(FsToGuest::InvalidateNode { id: ROOT_ID }).unwrap();
                    while shared.invalidated.load(Ordering::Relaxed) == before {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let reply = tokio::task::spawn_blocking(move || host.handle(req))
                    .await
                    .unwrap();
                let _ = tx.send(FsToGuest::Reply { id, reply });
            });
        }
    });
    let got = blocking({
        let f = mount.join("f");
        move || as_share_user(move || std::fs::read_to_string(f).map_err(|e| errno_of(&e)))
    })
    .await;
    assert_eq!(got, Ok("hello".to_string()));
    // Later checks use the host's attributes.
    let m = blocking({
        let mount = mount.clone();
        move || std::fs::metadata(mount).unwrap()
    })
    .await;
    assert_eq!((m.uid(), m.mode() & 0o7777), (UID, 0o755));
    server.abort();
    writer.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = std::fs::remove_dir_all(&root);
}
