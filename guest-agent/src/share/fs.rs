//! The fuser [`Filesystem`]: a kernel request the agent cannot answer
//! itself becomes one protocol request whose reply object goes with a
//! callback (or, for reads, a tokio task), so the session threads never
//! wait for the host (see the module docs of [`super`] for the caching and
//! threading rationale).
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use lima_proto::fs::{
    Attr, DirEntry, Entry, FsReply, FsRequest, Lock, SetTime, Time, MAX_IO, READDIRPLUS_MAX,
    READDIR_MAX,
};
use lima_proto::sync::lock;
use tokio::runtime::Handle;

use super::cache::{self, Answer, Cache};
use super::client::Client;
use super::fresh::{Fresh, Sent};

/// How long the kernel may trust entries (positive and negative) and
/// attributes. Long on purpose: the host invalidates what changes.
pub(super) const TTL: Duration = Duration::from_secs(3600);

/// Requests the kernel may have queued in the background (readahead, async
/// reads, releases) before it throttles; the default 12 starves big reads.
const MAX_BACKGROUND: u16 = 64;
/// Directories fetched ahead at once (see [`cache::Cache::speculate`]).
const AHEAD_AT_ONCE: usize = 4;

/// What the kernel was last told about a file's data, to decide at open
/// whether its page cache is still good.
struct Snapshot {
    mtime: Time,
    size: u64,
    /// Written through this mount since: the page cache took those writes
    /// too, so a changed mtime/size is ours and no reason to drop it.
    guest_wrote: bool,
}

/// Directory entries fetched from the host but not yet handed to the kernel
/// (the host answers in batches of its choosing; the kernel asks with a
/// buffer of its own, usually one page).
struct DirBuf {
    /// Offset of the first entry in `entries`.
    offset: u64,
    plus: bool,
    entries: VecDeque<DirEntry>,
    /// The host's batch was short: the directory ends after `entries`.
    last: bool,
}

impl DirBuf {
    /// Whether what is buffered answers a read from `offset` (entries from
    /// there, or the end, known from a short batch).
    fn covers(&self, offset: u64, plus: bool) -> bool {
        self.offset == offset && (!self.entries.is_empty() || self.last) && (self.plus || !plus)
    }
}

/// The two kinds of directory read [`ShareFs::read_dir`] answers from a
/// [`DirBuf`].
trait DirReply: Send + 'static {
    /// With attributes (readdirplus).
    const PLUS: bool;
    fn fail(self, e: Errno);
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64);
}

impl DirReply for ReplyDirectory {
    const PLUS: bool = false;
    fn fail(self, e: Errno) {
        self.error(e)
    }
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64) {
        s.readdir_from(buf, dir, self)
    }
}

impl DirReply for ReplyDirectoryPlus {
    const PLUS: bool = true;
    fn fail(self, e: Errno) {
        self.error(e)
    }
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64) {
        s.readdirplus_from(buf, dir, self)
    }
}

/// State the session threads, the reply callbacks and the tasks share.
pub(super) struct Shared {
    client: Arc<Client>,
    uid: u32,
    gid: u32,
    snapshots: Mutex<HashMap<u64, Snapshot>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirBuf>>>>,
    /// Directory listings and node reference counts (see [`cache`]).
    pub(super) cache: Mutex<Cache>,
    /// Set once the FUSE handshake is done.
    pub(super) notifier: OnceLock<Notifier>,
    /// Directories to read through the mount once listed ([`super::prime`]).
    pub(super) primer: Mutex<Option<std::sync::mpsc::Sender<std::path::PathBuf>>>,
    /// The priming threads' ids: their opendir is answered from the
    /// listing even if some names in it are unknown (they are left out).
    pub(super) primer_tids: super::prime::Tids,
    /// Directories opened with a listing: served without the host.
    local_dirs: Mutex<HashMap<u64, LocalDir>>,
    next_local_dir: AtomicU64,
    /// Handles of directories read from the host (see [`LOCAL_FH`]).
    next_dir_fh: AtomicU64,
    /// Where each directory the kernel was handed sits, `id -> (parent,
    /// name)`, so the priming thread can open it by path.
    dir_names: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// Lookups the kernel sent (whatever answered them).
    pub(super) lookups: AtomicU64,
    /// Slots of shared memory for read and write data, if the VM has it.
    shm: Option<Arc<super::shm::Shm>>,
    /// Directory attributes from change replies (see [`super::fresh`]).
    pub(super) fresh: Mutex<Fresh>,
}

/// A directory opened while its listing was live: a snapshot of the
/// listing, read at offsets of our own (the index of the next entry; `.`
/// and `..` come first).
struct LocalDir {
    dir: u64,
    entries: cache::Names,
    /// Opened by a priming thread, which only wants the kernel to get what
    /// the listing still holds.
    primer: bool,
}

/// A local readdirplus that met an entry its listing lost: the reply, how
/// many entries it holds already, and the entries from there on (`next`
/// offset, name, entry).
struct Lost {
    reply: ReplyDirectoryPlus,
    added: usize,
    dir: u64,
    rest: Vec<(u64, Vec<u8>, Option<Entry>)>,
}

/// Entries a [`Lost`] carries at most: more than a reply holds (the rest
/// comes with the kernel's next read).
const LOST_REST_MAX: usize = 256;

/// The state of a [`ShareFs::call_both`]: the reply that came first, and
/// what the second one completes.
struct Pair<R, H> {
    first: Option<FsReply>,
    rest: Option<(R, H)>,
}

/// Handles of [`LocalDir`]s are numbered from here; those of directories
/// read from the host (with `ReaddirAt`, no host handle) count up from 1.
const LOCAL_FH: u64 = 1 << 63;

fn errno(n: i32) -> Errno {
    Errno::from_i32(n)
}

pub(super) struct ShareFs {
    rt: Handle,
    shared: Arc<Shared>,
}

impl ShareFs {
    pub(super) fn new(
        rt: Handle,
        client: Arc<Client>,
        uid: u32,
        gid: u32,
        shm: Option<Arc<super::shm::Shm>>,
    ) -> (ShareFs, Arc<Shared>) {
        let shared = Arc::new(Shared {
            client,
            uid,
            gid,
            snapshots: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
            notifier: OnceLock::new(),
            primer: Mutex::new(None),
            primer_tids: Default::default(),
            local_dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
            next_local_dir: AtomicU64::new(LOCAL_FH),
            dir_names: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
            shm,
            fresh: Mutex::new(Fresh::default()),
        });
        (
            ShareFs {
                rt,
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// Runs one request's round trip on the runtime; `f` owns the reply.
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.shared.clone()));
    }

    /// A readdir(plus) of host-read handle `fh`: if what is buffered
    /// covers `offset`, the reply is given here, on the session thread
    /// (under TCG a hop to a runtime worker is a good part of a request's
    /// cost); otherwise a task fills the buffer from the host first.
    fn read_dir<R: DirReply>(&self, fh: u64, dir: u64, offset: u64, reply: R) {
        let Some(buf) = self.shared.dir(fh) else {
            return reply.fail(Errno::EBADF);
        };
        if let Ok(mut b) = buf.try_lock() {
            if b.covers(offset, R::PLUS) {
                return reply.answer(&self.shared, &mut b, dir);
            }
        }
        self.run(move |s| async move {
            let mut buf = buf.lock().await;
            if let Err(e) = s.fill(&mut buf, dir, offset, R::PLUS).await {
                return reply.fail(e);
            }
            reply.answer(&s, &mut buf, dir);
        });
    }

    /// The kernel's forgets: what we kept for nodes the kernel no longer
    /// holds goes, and the host's references go back once nobody here
    /// needs them. A forget may come late: after `drop_caches` the kernel
    /// queues tens of thousands, and a node it looked up again meanwhile
    /// keeps its place (its path, for priming).
    fn forget_all(&self, nodes: &[(u64, u64)]) {
        let s = &self.shared;
        let gone: Vec<u64> = s.with_cache(|c, out| {
            nodes
                .iter()
                .filter(|&&(id, nlookup)| !c.kernel_forget(id, nlookup, out))
                .map(|&(id, _)| id)
                .collect()
        });
        if gone.is_empty() {
            return;
        }
        let (mut snapshots, mut dir_names, mut fresh) =
            (lock(&s.snapshots), lock(&s.dir_names), lock(&s.fresh));
        for &id in &gone {
            snapshots.remove(&id);
            dir_names.remove(&id);
            // Its id may come back for another inode.
            fresh.invalidated(id);
        }
    }

    /// The common shape: one request, a reply built from the answer (on
    /// the stream's reader loop, as it arrives: `handle` must not block).
    fn call<R, H>(&self, req: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply) + Send + 'static,
    {
        let s = self.shared.clone();
        self.shared
            .client
            .call_then(req, move |answer| handle(&s, reply, answer));
    }

    /// Two requests sent at once; `handle` gets both replies (in the order
    /// the requests were given) on the reader thread when the second one
    /// arrives, so no task has to be woken (see [`Client::call_then`]).
    fn call_both<R, H>(&self, a: FsRequest, b: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply, FsReply) + Send + 'static,
    {
        let pair = Arc::new(Mutex::new(Pair {
            first: None,
            rest: Some((reply, handle)),
        }));
        for (second, req) in [(false, a), (true, b)] {
            let (s, pair) = (self.shared.clone(), pair.clone());
            self.shared.client.call_then(req, move |answer| {
                let mut p = lock(&pair);
                let Some(other) = p.first.take() else {
                    p.first = Some(answer);
                    return;
                };
                let Some((reply, handle)) = p.rest.take() else {
                    return;
                };
                drop(p);
                let (ra, rb) = if second {
                    (other, answer)
                } else {
                    (answer, other)
                };
                handle(&s, reply, ra, rb);
            });
        }
    }

    /// Unlink or rmdir of `name` in `dir`: on success the name is gone from
    /// the listing (see [`Cache::removed`]) and `gone` runs on the node it
    /// named there, if any; on failure the name is asked of the host again.
    fn remove(
        &self,
        req: FsRequest,
        dir: u64,
        name: Vec<u8>,
        reply: ReplyEmpty,
        gone: fn(&mut Cache, u64, &mut Vec<cache::Forget>),
    ) {
        let since = lock(&self.shared.cache).stamp();
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| {
            s.changed(sent, None);
            s.with_cache(|c, out| {
                if r == FsReply::Ok {
                    let id = c.listed_id(dir, &name);
                    c.removed(dir, &name, since, out);
                    if let Some(id) = id {
                        gone(c, id, out);
                    }
                } else {
                    c.invalidate_entry(dir, &name, out);
                }
            });
            s.reply_empty(reply, r)
        });
    }

    /// [`Self::call`] for replies that take long to hand on (1 MiB of read
    /// data to copy and write to /dev/fuse): handled on a task of its own,
    /// so readahead's replies go to the kernel in parallel and the reader
    /// loop stays free.
    fn call_apart<R, H>(&self, req: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply) + Send + 'static,
    {
        self.run(move |s| async move {
            let answer = s.client.call(req).await;
            handle(&s, reply, answer);
        });
    }
}

impl Shared {
    /// Converts attributes for the kernel and remembers what it was told.
    fn file_attr(&self, a: &Attr) -> FileAttr {
        let mut snaps = lock(&self.snapshots);
        let snap = snaps.entry(a.id).or_insert(Snapshot {
            mtime: a.mtime,
            size: a.size,
            guest_wrote: false,
        });
        if snap.mtime != a.mtime || snap.size != a.size {
            *snap = Snapshot {
                mtime: a.mtime,
                size: a.size,
                guest_wrote: false,
            };
        }
        drop(snaps);
        to_file_attr(a, self.uid, self.gid)
    }

    /// At open: may the kernel keep its page cache for `id`? If the file
    /// changed behind our back, also drop the cached attributes (size!).
    fn still_cached(&self, id: u64, a: &Attr) -> bool {
        let mut snaps = lock(&self.snapshots);
        let keep = match snaps.get(&id) {
            Some(s) if s.mtime == a.mtime && s.size == a.size => true,
            Some(s) => s.guest_wrote,
            None => false,
        };
        snaps.insert(
            id,
            Snapshot {
                mtime: a.mtime,
                size: a.size,
                guest_wrote: false,
            },
        );
        drop(snaps);
        if !keep {
            if let Some(n) = self.notifier.get() {
                // Attributes only (offset < 0): never blocks on page locks.
                let _ = n.inval_inode(INodeNo(id), -1, 0);
            }
        }
        keep
    }

    fn wrote(&self, id: u64) {
        if let Some(s) = lock(&self.snapshots).get_mut(&id) {
            s.guest_wrote = true;
        }
    }

    /// Runs `f` on the cache and sends the `Forget`s it produced.
    fn with_cache<T>(&self, f: impl FnOnce(&mut Cache, &mut Vec<cache::Forget>) -> T) -> T {
        let mut out = Vec::new();
        let t = f(&mut lock(&self.cache), &mut out);
        self.client.send_all(
            out.into_iter()
                .map(|(id, nlookup)| FsRequest::Forget { id, nlookup }),
        );
        t
    }

    /// The host's `InvalidateEntry`: called by the reader before any later
    /// reply is delivered.
    pub(super) fn host_invalidated_entry(&self, parent: u64, name: &[u8]) {
        self.with_cache(|c, out| c.invalidate_entry(parent, name, out));
    }

    /// The host lost change events: no listing can be trusted.
    pub(super) fn host_overflowed(&self) {
        self.with_cache(|c, out| c.drop_all_listings(out));
    }

    /// The host's `InvalidateNode`.
    pub(super) fn host_invalidated_node(&self, id: u64) {
        lock(&self.fresh).invalidated(id);
        self.with_cache(|c, out| c.invalidate_node(id, out));
    }

    /// A request that changes directories `dirs` (see [`Fresh::sending`])
    /// is about to be sent.
    fn changing(&self, dirs: &[u64], everywhere: bool) -> Sent {
        lock(&self.fresh).sending(dirs, everywhere)
    }

    /// Its reply is being handled, before the kernel sees it.
    fn changed(&self, sent: Sent, parent: Option<Attr>) {
        lock(&self.fresh).answered(sent, parent);
    }

    /// An entry the host made for `name` in `parent` (create, mkdir,
    /// symlink, link), on its way to the kernel.
    fn made(&self, parent: u64, name: &[u8], e: &Entry) {
        self.with_cache(|c, out| {
            c.entry_to_kernel(e.attr.id);
            c.created(parent, name, e, out);
        });
    }

    /// Replies to an entry-making request and records the new name.
    fn reply_made(&self, reply: ReplyEntry, parent: u64, name: &[u8], r: FsReply) {
        match r {
            FsReply::Entry(e) | FsReply::Made { entry: e, .. } => {
                self.made(parent, name, &e);
                self.handed(parent, name, &e);
                reply.entry(&TTL, &self.file_attr(&e.attr), Generation(e.generation))
            }
            FsReply::Err(n) => {
                // What the name holds now is not known (EEXIST: our
                // listing may have missed a host change).
                self.with_cache(|c, out| c.invalidate_entry(parent, name, out));
                reply.error(errno(n))
            }
            other => reply.error(error_of("an entry request", &other)),
        }
    }

    /// Fetches `dir` with attributes for the cache: `ReaddirAt` batches
    /// until a short one (the host fills every batch but the last), one
    /// round trip for most directories. Gives up beyond
    /// [`cache::PREFETCH_MAX`] entries.
    ///
    /// `ahead`: fetched ahead of lookups ([`Cache::speculate`]), to be
    /// primed at that path; otherwise lookups asked for it, and its
    /// subdirectories are fetched ahead in turn.
    ///
    /// Returns how many entries it listed (0 if it gave up).
    async fn prefetch(
        self: Arc<Self>,
        dir: u64,
        token: u64,
        ahead: Option<std::path::PathBuf>,
    ) -> usize {
        let started = Instant::now();
        let mut entries: Vec<DirEntry> = Vec::new();
        // Reading it may update its atime.
        let reading = self.changing(&[dir], false);
        let mut offset = 0;
        let complete = loop {
            if !lock(&self.cache).fetch_wanted(dir, token) {
                break false;
            }
            let batch = match self
                .client
                .call(FsRequest::ReaddirAt {
                    id: dir,
                    offset,
                    plus: true,
                })
                .await
            {
                FsReply::Dir(batch) => batch,
                _ => break false,
            };
            {
                // Counted on arrival: each holds a host reference.
                let mut c = lock(&self.cache);
                for e in &batch {
                    if let Some(x) = &e.entry {
                        c.buffered(x.attr.id);
                    }
                }
            }
            let n = batch.len();
            if let Some(last) = batch.last() {
                offset = last.next_offset;
            }
            entries.extend(batch);
            if n < READDIRPLUS_MAX {
                break true;
            }
            // +2: `.` and `..`.
            if entries.len() > cache::PREFETCH_MAX + 2 {
                break false;
            }
        };
        self.changed(reading, None);
        let subdirs: Vec<(u64, Vec<u8>)> = if complete && ahead.is_none() {
            entries
                .iter()
                .filter_map(|e| {
                    let x = e.entry.as_ref()?;
                    let dir = x.attr.mode & libc::S_IFMT == libc::S_IFDIR;
                    // A directory's size grows with its entries (ext4: a
                    // 4 KiB block per ~100 short names): big ones only
                    // when asked for.
                    let small = x.attr.size <= cache::AHEAD_DIR_SIZE_MAX;
                    (dir && small && e.name != b"." && e.name != b"..")
                        .then(|| (x.attr.id, e.name.clone()))
                })
                .take(cache::SPECULATE_MAX)
                .collect()
        } else {
            Vec::new()
        };
        let entries_len = entries.len();
        self.with_cache(|c, out| {
            if complete {
                c.fetched(dir, token, entries, started + TTL, out);
            } else {
                c.fetch_failed(dir, token, Instant::now());
                for e in &entries {
                    if let Some(x) = &e.entry {
                        c.drop_buffered(x.attr.id, out);
                    }
                }
            }
        });
        if !complete {
            return 0;
        }
        let listed = entries_len;
        match ahead {
            Some(path) => self.prime_at(dir, path),
            None => {
                self.prime(dir);
                if let (false, Some(base)) = (subdirs.is_empty(), self.path_of(dir)) {
                    tokio::spawn(self.fetch_ahead(base, subdirs));
                }
            }
        }
        listed
    }

    /// Fetches (and primes) `subdirs` of the directory at `base`, a few at
    /// a time, each only if [`Cache::speculate`] agrees. Boxed: it and
    /// [`Self::prefetch`] spawn each other.
    fn fetch_ahead(
        self: Arc<Self>,
        base: std::path::PathBuf,
        subdirs: Vec<(u64, Vec<u8>)>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut running = tokio::task::JoinSet::new();
            let mut listed = 0;
            for (id, name) in subdirs {
                while running.len() >= AHEAD_AT_ONCE {
                    listed += running.join_next().await.and_then(Result::ok).unwrap_or(0);
                }
                // What one walk may pull in ahead of itself.
                if listed >= cache::AHEAD_ENTRIES_MAX {
                    break;
                }
                let token = self.with_cache(|c, out| c.speculate(id, Instant::now(), out));
                let Some(token) = token else {
                    continue;
                };
                let path = base.join(OsStr::from_bytes(&name));
                running.spawn(self.clone().prefetch(id, token, Some(path)));
            }
            while running.join_next().await.is_some() {}
        })
    }

    /// The kernel is handed `e` as `name` in `parent`: remember where a
    /// directory sits.
    fn handed(&self, parent: u64, name: &[u8], e: &Entry) {
        if e.attr.mode & libc::S_IFMT == libc::S_IFDIR {
            lock(&self.dir_names).insert(e.attr.id, (parent, name.to_vec()));
        }
    }

    /// `dir`'s path under the mount point as far as we know it (a rename
    /// we did not see makes it wrong: priming then reads whatever is
    /// there, still answered from that directory's own listing).
    fn path_of(&self, mut dir: u64) -> Option<std::path::PathBuf> {
        let names = lock(&self.dir_names);
        let mut parts = Vec::new();
        while dir != lima_proto::fs::ROOT_ID {
            let (parent, name) = names.get(&dir)?;
            parts.push(OsStr::from_bytes(name).to_owned());
            dir = *parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        Some(parts.iter().rev().collect())
    }

    /// After a listing of `dir` landed: has a priming thread read it.
    fn prime(&self, dir: u64) {
        if let Some(path) = self.path_of(dir) {
            self.prime_at(dir, path);
        }
    }

    fn prime_at(&self, dir: u64, path: std::path::PathBuf) {
        lock(&self.cache).priming(dir, Instant::now());
        if let Some(p) = &*lock(&self.primer) {
            let _ = p.send(path);
        }
    }

    /// The entries of a [`LocalDir`] from `offset` as the kernel sees them,
    /// `.` and `..` first, each with the offset that follows it.
    fn local_entries(
        d: &LocalDir,
        offset: u64,
    ) -> impl Iterator<Item = (u64, &[u8], Option<&Entry>)> {
        let dots = [(&b"."[..], None), (&b".."[..], None)];
        let rest = d.entries.iter().map(|(n, e)| (n.as_slice(), Some(e)));
        dots.into_iter()
            .chain(rest)
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, e))| (i as u64 + 1, name, e))
    }

    /// Readdirplus on a [`LocalDir`] handle: each entry still in the
    /// listing is counted as a kernel lookup as it is handed over (like a
    /// hit). An entry the listing lost since the snapshot (a host
    /// invalidation, the host's node budget, a change of ours) must not
    /// simply go without attributes: node id 0 is also the inode number
    /// the program reads, and libc's `readdir` skips entries with inode 0,
    /// so the name would vanish from the listing. From the first such entry
    /// on, the rest of the reply is returned for [`Self::local_readdirplus_rest`].
    /// A priming thread's read just leaves such entries out: it only hands
    /// the kernel dentries, and asking the host would cost a round trip
    /// for a name nobody asked for.
    fn local_readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) -> Option<Lost> {
        let dirs = lock(&self.local_dirs);
        let Some(d) = dirs.get(&fh) else {
            reply.error(Errno::EBADF);
            return None;
        };
        let mut entries = Self::local_entries(d, offset);
        let mut added = 0;
        while let Some((next, name, e)) = entries.next() {
            if let Some(e) = e {
                if !lock(&self.cache).hand_to_kernel(d.dir, name, e.attr.id) {
                    if d.primer {
                        continue;
                    }
                    let first = (next, name.to_vec(), Some(e.clone()));
                    let rest = entries
                        .take(LOST_REST_MAX)
                        .map(|(next, name, e)| (next, name.to_vec(), e.cloned()));
                    return Some(Lost {
                        reply,
                        added,
                        dir: d.dir,
                        rest: std::iter::once(first).chain(rest).collect(),
                    });
                }
            }
            if self.add_listed(&mut reply, d.dir, next, name, e) {
                break;
            }
            added += 1;
        }
        drop(entries);
        drop(dirs);
        reply.ok();
        None
    }

    /// The rest of a local readdirplus from an entry the listing lost: each
    /// such name is looked up on the host (an answer goes to the kernel
    /// like any lookup's; a name gone there is left out, as a host readdir
    /// would; another error ends the reply there).
    async fn local_readdirplus_rest(self: Arc<Self>, lost: Lost) {
        let Lost {
            mut reply,
            mut added,
            dir,
            rest,
        } = lost;
        for (next, name, e) in rest {
            let e = match e {
                Some(e) if !lock(&self.cache).hand_to_kernel(dir, &name, e.attr.id) => {
                    let req = FsRequest::Lookup {
                        parent: dir,
                        name: name.clone(),
                    };
                    match self.client.call(req).await {
                        FsReply::Entry(e) => {
                            self.with_cache(|c, _| c.entry_to_kernel(e.attr.id));
                            Some(e)
                        }
                        FsReply::Err(libc::ENOENT) => continue,
                        // Never a silent gap: the entries so far go, and
                        // the kernel's next read starts at this name; if it
                        // is the first, the read fails.
                        r if added == 0 => {
                            return reply.error(error_of("a lookup", &r));
                        }
                        _ => break,
                    }
                }
                e => e,
            };
            if self.add_listed(&mut reply, dir, next, &name, e.as_ref()) {
                break;
            }
            added += 1;
        }
        reply.ok();
    }

    /// Adds an entry of a listing to a readdirplus reply: `e`, already
    /// counted as a kernel lookup, with its attributes; `.` and `..` (no
    /// entry) with a placeholder inode, never cached by the kernel. True
    /// if the reply is full (and the lookup given back).
    fn add_listed(
        &self,
        reply: &mut ReplyDirectoryPlus,
        dir: u64,
        next: u64,
        name: &[u8],
        e: Option<&Entry>,
    ) -> bool {
        let (attr, generation) = match e {
            Some(e) => {
                self.handed(dir, name, e);
                (self.file_attr(&e.attr), e.generation)
            }
            None => {
                let mut attr = negative_attr();
                attr.ino = INodeNo(placeholder_ino(dir, name));
                attr.kind = FileType::Directory;
                (attr, 0)
            }
        };
        let full = reply.add(
            attr.ino,
            next,
            OsStr::from_bytes(name),
            &TTL,
            &attr,
            Generation(generation),
        );
        if full {
            if let Some(e) = e {
                self.with_cache(|c, out| c.kernel_forget(e.attr.id, 1, out));
            }
        }
        full
    }

    /// Readdir (no attributes) on a [`LocalDir`] handle.
    fn local_readdir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let dirs = lock(&self.local_dirs);
        let Some(d) = dirs.get(&fh) else {
            return reply.error(Errno::EBADF);
        };
        for (next, name, e) in Self::local_entries(d, offset) {
            let (ino, kind) = match e {
                Some(e) => (e.attr.id, file_type(e.attr.mode)),
                None => (placeholder_ino(d.dir, name), FileType::Directory),
            };
            if reply.add(INodeNo(ino), next, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        drop(dirs);
        reply.ok();
    }

    /// Answers a readdir from `buf`, filled from its offset.
    fn readdir_from(&self, buf: &mut DirBuf, dir: u64, mut reply: ReplyDirectory) {
        while let Some(e) = buf.entries.front() {
            let ino = e
                .entry
                .as_ref()
                .map_or_else(|| placeholder_ino(dir, &e.name), |x| x.attr.id);
            if reply.add(
                INodeNo(ino),
                e.next_offset,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
            if let Some(e) = buf.entries.pop_front() {
                buf.offset = e.next_offset;
                // Fetched with attributes, handed over without: the
                // kernel holds no reference, so give the host's back.
                if let Some(entry) = e.entry {
                    self.with_cache(|c, out| c.drop_buffered(entry.attr.id, out));
                }
            }
        }
        reply.ok();
    }

    /// Answers a readdirplus from `buf`, filled from its offset.
    fn readdirplus_from(&self, buf: &mut DirBuf, dir: u64, mut reply: ReplyDirectoryPlus) {
        while let Some(e) = buf.entries.front() {
            let (attr, generation) = match &e.entry {
                // Counted as a lookup by the host and by the kernel.
                Some(entry) => (self.file_attr(&entry.attr), entry.generation),
                // Node id 0 tells the kernel "no entry to cache"; `.`
                // and `..` are never cached, so they may show an inode.
                None => {
                    let ino = if e.name == b"." || e.name == b".." {
                        placeholder_ino(dir, &e.name)
                    } else {
                        0
                    };
                    let mut attr = negative_attr();
                    attr.ino = INodeNo(ino);
                    attr.kind = file_type(e.kind);
                    (attr, 0)
                }
            };
            let name = OsStr::from_bytes(&e.name);
            if reply.add(
                attr.ino,
                e.next_offset,
                name,
                &TTL,
                &attr,
                Generation(generation),
            ) {
                break;
            }
            if let Some(e) = buf.entries.pop_front() {
                buf.offset = e.next_offset;
                if let Some(entry) = e.entry {
                    lock(&self.cache).buffered_to_kernel(entry.attr.id);
                    self.handed(dir, &e.name, &entry);
                }
            }
        }
        reply.ok();
    }

    /// The answer to a write of node `id`.
    fn reply_written(&self, id: u64, reply: ReplyWrite, r: FsReply) {
        match r {
            FsReply::Written(n) => {
                self.wrote(id);
                self.with_cache(|c, out| c.invalidate_node(id, out));
                reply.written(n);
            }
            r => reply.error(error_of("write", &r)),
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, r: FsReply) {
        match r {
            FsReply::Entry(e) => {
                reply.entry(&TTL, &self.file_attr(&e.attr), Generation(e.generation))
            }
            r => reply.error(error_of("an entry request", &r)),
        }
    }

    fn reply_attr(&self, reply: ReplyAttr, r: FsReply) {
        match r {
            FsReply::Attr(a) => reply.attr(&TTL, &self.file_attr(&a)),
            r => reply.error(error_of("getattr/setattr", &r)),
        }
    }

    fn reply_empty(&self, reply: ReplyEmpty, r: FsReply) {
        match r {
            FsReply::Ok => reply.ok(),
            r => reply.error(error_of("a request", &r)),
        }
    }

    fn dir(&self, fh: u64) -> Option<Arc<tokio::sync::Mutex<DirBuf>>> {
        lock(&self.dirs).get(&fh).cloned()
    }

    /// Gives back the host references of entries the kernel never saw.
    fn discard(&self, buf: &mut DirBuf) {
        self.with_cache(|c, out| {
            for e in buf.entries.drain(..) {
                if let Some(entry) = e.entry {
                    c.drop_buffered(entry.attr.id, out);
                }
            }
        });
    }

    /// Makes `buf` start at `offset` with entries of the wanted kind,
    /// asking the host unless what is buffered already fits.
    async fn fill(&self, buf: &mut DirBuf, dir: u64, offset: u64, plus: bool) -> Result<(), Errno> {
        if buf.covers(offset, plus) {
            return Ok(());
        }
        self.discard(buf);
        // A host readdir may update the directory's atime.
        let reading = self.changing(&[dir], false);
        let req = FsRequest::ReaddirAt {
            id: dir,
            offset,
            plus,
        };
        let answer = self.client.call(req).await;
        self.changed(reading, None);
        match answer {
            FsReply::Dir(list) => {
                {
                    let mut c = lock(&self.cache);
                    for e in &list {
                        if let Some(x) = &e.entry {
                            c.buffered(x.attr.id);
                        }
                    }
                }
                let max = if plus { READDIRPLUS_MAX } else { READDIR_MAX };
                *buf = DirBuf {
                    offset,
                    plus,
                    last: list.len() < max,
                    entries: list.into(),
                };
                Ok(())
            }
            r => Err(error_of("readdir", &r)),
        }
    }
}

impl Filesystem for ShareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        // Not asked for, on purpose: WRITEBACK_CACHE (writes must reach the
        // host at once), AUTO_INVAL_DATA (it drops the page cache after each
        // of our own writes; host invalidations and the check at open cover
        // host-side changes), FLOCK_LOCKS (fuser cannot tell flock from
        // fcntl locks, so the kernel keeps flock locks guest-local),
        // READDIRPLUS_AUTO (every page of a listing must link its entries,
        // not only the first, or priming primes a page; see
        // [`super::prime`]).
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_LOCKS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let s = &self.shared;
        s.lookups.fetch_add(1, Ordering::Relaxed);
        let answer = s.with_cache(|c, out| c.lookup(dir, &name, Instant::now(), out));
        let (unknown, fetch) = match answer {
            Answer::Hit(e) => {
                s.handed(dir, &name, &e);
                // (Not for the priming threads' own walks to a directory.)
                if !super::prime::is_primer(&s.primer_tids, req.pid())
                    && lock(&s.cache).reprime(dir, Instant::now())
                {
                    s.prime(dir);
                }
                return reply.entry(&TTL, &s.file_attr(&e.attr), Generation(e.generation));
            }
            // Never longer than the listing itself is trusted.
            Answer::Absent(ttl) => return reply.entry(&ttl, &negative_attr(), Generation(0)),
            Answer::Miss { unknown, fetch } => (unknown, fetch),
        };
        if let Some(token) = fetch {
            // In the background: this lookup (and any during the fetch)
            // goes to the host at once, so a fetch never adds latency.
            self.run(move |s| async move {
                s.prefetch(dir, token, None).await;
            });
        }
        let req = FsRequest::Lookup {
            parent: dir,
            name: name.clone(),
        };
        self.call(req, reply, move |s, reply, r| match r {
            FsReply::Entry(e) => {
                s.with_cache(|c, out| {
                    c.entry_to_kernel(e.attr.id);
                    if let Some(mark) = unknown {
                        c.looked_up(dir, &name, mark, Some(&e), out);
                    }
                });
                s.handed(dir, &name, &e);
                reply.entry(&TTL, &s.file_attr(&e.attr), Generation(e.generation))
            }
            // A negative entry with a timeout: the kernel remembers the
            // name is absent until the host says it appeared.
            FsReply::Err(libc::ENOENT) => {
                if let Some(mark) = unknown {
                    s.with_cache(|c, out| c.looked_up(dir, &name, mark, None, out));
                }
                reply.entry(&TTL, &negative_attr(), Generation(0))
            }
            r => s.reply_entry(reply, r),
        });
    }

    // fuser runs BATCH_FORGET through this one by one (its `ForgetOne`
    // cannot be named outside the crate); the host's side leaves lazily
    // (`Client::send_all`), so a batch still goes out in a few writes.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.forget_all(&[(ino.0, nlookup)]);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // A directory we just changed alone: its attributes came with the
        // reply (the kernel dropped its copy when it handled it).
        let fresh = lock(&self.shared.fresh).take(ino.0);
        if let Some(a) = fresh {
            return reply.attr(&TTL, &self.shared.file_attr(&a));
        }
        self.call(FsRequest::Getattr { id: ino.0 }, reply, |s, reply, r| {
            s.reply_attr(reply, r)
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let sh = &self.shared;
        if uid.is_some_and(|u| u != sh.uid) || gid.is_some_and(|g| g != sh.gid) {
            // Every file shows the share's owner; a chown cannot change
            // that, and failing it would break `cp -a` and `tar` as root.
            tracing::debug!("share: ignoring chown of node {} to {uid:?}:{gid:?}", ino.0);
        }
        let req = if mode.is_none() && size.is_none() && atime.is_none() && mtime.is_none() {
            FsRequest::Getattr { id: ino.0 }
        } else {
            FsRequest::Setattr {
                id: ino.0,
                fh: fh.map(|f| f.0),
                mode: mode.map(|m| m & 0o7777),
                size,
                atime: atime.map(set_time),
                mtime: mtime.map(set_time),
            }
        };
        let changes = !matches!(req, FsRequest::Getattr { .. });
        let sent = changes.then(|| sh.changing(&[ino.0], false));
        self.call(req, reply, move |s, reply, r| {
            if let Some(sent) = sent {
                s.changed(sent, None);
                // Listed attributes of this node are stale now.
                s.with_cache(|c, out| c.invalidate_node(ino.0, out));
            }
            s.reply_attr(reply, r)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.call(
            FsRequest::Readlink { id: ino.0 },
            reply,
            |_, reply, r| match r {
                FsReply::Link(target) => reply.data(&target),
                r => reply.error(error_of("readlink", &r)),
            },
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // The protocol has no mknod: regular files are created and closed;
        // devices, fifos and sockets are refused.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let req = FsRequest::Create {
            parent: dir,
            name: name.clone(),
            mode,
            umask,
            flags: libc::O_WRONLY | libc::O_EXCL | libc::O_CREAT,
        };
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| match r {
            FsReply::Created { entry, fh, parent } => {
                // Nothing depends on the handle being gone.
                s.client.send(FsRequest::Release { fh });
                s.changed(sent, parent);
                s.reply_made(reply, dir, &name, FsReply::Entry(entry));
            }
            r => {
                s.changed(sent, None);
                s.reply_made(reply, dir, &name, r)
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let req = FsRequest::Mkdir {
            parent: dir,
            name: name.clone(),
            mode,
            umask,
        };
        let since = lock(&self.shared.cache).stamp();
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| {
            s.changed(sent, made_in(&r));
            if let FsReply::Entry(e) | FsReply::Made { entry: e, .. } = &r {
                // Made empty just now: lookups in it need not ask. (The host
                // watches it from the moment the mkdir reply was made.)
                lock(&s.cache).new_empty_dir(e.attr.id, since, Instant::now() + TTL);
            }
            s.reply_made(reply, dir, &name, r)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let req = FsRequest::Unlink {
            parent: dir,
            name: name.clone(),
        };
        // Its link count changed wherever else it is listed.
        self.remove(req, dir, name, reply, Cache::invalidate_node);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let req = FsRequest::Rmdir {
            parent: dir,
            name: name.clone(),
        };
        self.remove(req, dir, name, reply, Cache::drop_listing);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (dir, name) = (parent.0, link_name.as_bytes().to_vec());
        let req = FsRequest::Symlink {
            parent: dir,
            name: name.clone(),
            target: target.as_os_str().as_bytes().to_vec(),
        };
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| {
            s.changed(sent, made_in(&r));
            s.reply_made(reply, dir, &name, r)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, name) = (parent.0, name.as_bytes().to_vec());
        let (to, new_name) = (newparent.0, newname.as_bytes().to_vec());
        let exchange = flags.bits() & libc::RENAME_EXCHANGE != 0;
        let req = FsRequest::Rename {
            parent: from,
            name: name.clone(),
            new_parent: to,
            new_name: new_name.clone(),
            flags: flags.bits(),
        };
        let since = lock(&self.shared.cache).stamp();
        // A directory moved changes too (its ctime), and which one that is
        // is known only from a listing.
        let may_move_dir = {
            let c = lock(&self.shared.cache);
            let is_dir = |dir, name: &[u8]| {
                c.listed_kind(dir, name)
                    .is_none_or(|kind| kind == libc::S_IFDIR)
            };
            is_dir(from, &name) || (exchange && is_dir(to, &new_name))
        };
        let sent = self.shared.changing(&[from, to], may_move_dir);
        self.call(req, reply, move |s, reply, r| {
            s.changed(sent, None);
            s.with_cache(|c, out| {
                let moved = c.listed_id(from, &name);
                let replaced = c.listed_id(to, &new_name);
                if r == FsReply::Ok && !exchange {
                    // The source name is gone for sure (the git lock-file
                    // dance looks it up again); the target's attributes
                    // (ctime) changed, so it is asked for next time.
                    c.removed(from, &name, since, out);
                } else {
                    c.invalidate_entry(from, &name, out);
                }
                c.invalidate_entry(to, &new_name, out);
                for id in [moved, replaced].into_iter().flatten() {
                    c.invalidate_node(id, out);
                }
            });
            s.reply_empty(reply, r)
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (dir, name) = (newparent.0, newname.as_bytes().to_vec());
        let req = FsRequest::Link {
            id: ino.0,
            new_parent: dir,
            new_name: name.clone(),
        };
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| {
            s.changed(sent, made_in(&r));
            if r != FsReply::Err(libc::EEXIST) {
                // Its link count changed wherever it is listed.
                s.with_cache(|c, out| c.invalidate_node(ino.0, out));
            }
            s.reply_made(reply, dir, &name, r)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let id = ino.0;
        // The getattr goes beside the open, so checking whether the cached
        // pages are still current costs no extra round trip.
        let (open, getattr) = (
            FsRequest::Open { id, flags: flags.0 },
            FsRequest::Getattr { id },
        );
        self.call_both(
            open,
            getattr,
            reply,
            move |s, reply, opened, attr| match opened {
                FsReply::Opened { fh } => {
                    if flags.0 & libc::O_TRUNC != 0 {
                        s.with_cache(|c, out| c.invalidate_node(id, out));
                    }
                    let keep = matches!(&attr, FsReply::Attr(a) if s.still_cached(id, a));
                    let flags = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags);
                }
                r => reply.error(error_of("open", &r)),
            },
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (dir, name) = (parent.0, name.as_bytes().to_vec());
        let req = FsRequest::Create {
            parent: dir,
            name: name.clone(),
            mode,
            umask,
            flags,
        };
        let sent = self.shared.changing(&[dir], false);
        self.call(req, reply, move |s, reply, r| match r {
            FsReply::Created { entry, fh, parent } => {
                s.changed(sent, parent);
                s.with_cache(|c, out| {
                    // An existing file may have been opened (and truncated).
                    c.invalidate_node(entry.attr.id, out);
                    c.entry_to_kernel(entry.attr.id);
                    c.created(dir, &name, &entry, out);
                });
                reply.created(
                    &TTL,
                    &s.file_attr(&entry.attr),
                    Generation(entry.generation),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            FsReply::Err(n) => {
                s.changed(sent, None);
                s.with_cache(|c, out| c.invalidate_entry(dir, &name, out));
                reply.error(errno(n))
            }
            other => {
                s.changed(sent, None);
                reply.error(error_of("create", &other))
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let size = size.min(MAX_IO);
        if let Some(slot) = self.shared.shm.as_ref().and_then(|m| m.take()) {
            let req = FsRequest::ReadShm {
                fh: fh.0,
                offset,
                size,
                at: slot.at(),
            };
            return self.call_apart(req, reply, move |_, reply, r| match r {
                FsReply::Placed(n) => reply.data(&slot.copy_out(n)),
                r => reply.error(error_of("read", &r)),
            });
        }
        let req = FsRequest::Read {
            fh: fh.0,
            offset,
            size,
        };
        self.call_apart(req, reply, |_, reply, r| match r {
            FsReply::Data(data) => reply.data(&data),
            r => reply.error(error_of("read", &r)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let id = ino.0;
        if let Some(slot) = self.shared.shm.as_ref().and_then(|m| m.take()) {
            slot.fill(data);
            let req = FsRequest::WriteShm {
                fh: fh.0,
                offset,
                len: data.len().min(MAX_IO as usize) as u32,
                at: slot.at(),
            };
            return self.call(req, reply, move |s, reply, r| {
                drop(slot);
                s.reply_written(id, reply, r)
            });
        }
        let req = FsRequest::Write {
            fh: fh.0,
            offset,
            data: data.to_vec(),
        };
        self.call(req, reply, move |s, reply, r| s.reply_written(id, reply, r));
    }

    /// Every `close(2)` sends one, and the process waits for the answer.
    /// The host's flush would be `close(dup(fd))`, which on a local host
    /// filesystem has nothing to do: our writes are already in the host's
    /// page cache (each `write(2)` waits for the host), and the host's
    /// POSIX locks live on lock-owner OFD descriptors that only a release
    /// closes. So the first one is answered "not implemented", and the
    /// kernel never sends another: a close costs no round trip at all, not
    /// even one to us (it still writes back dirty mmap pages before it
    /// would have sent the flush).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Answered at once: the kernel does not make `close(2)` wait for a
    /// release, and nothing later depends on the host having closed its
    /// descriptor (requests are handled in any order there anyway). The
    /// host's lock-owner descriptors (and their locks) still go with it.
    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.client.send(FsRequest::Release { fh: fh.0 });
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.call(
            FsRequest::Fsync { fh: fh.0, datasync },
            reply,
            |s, reply, r| s.reply_empty(reply, r),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        // A live listing serves the whole read: no host round trip (the
        // priming thread takes it even with names unknown).
        let primer = super::prime::is_primer(&s.primer_tids, req.pid());
        let listed = lock(&s.cache).present(ino.0, Instant::now());
        if let Some((entries, complete)) = listed {
            if complete || primer {
                let fh = s.next_local_dir.fetch_add(1, Ordering::Relaxed);
                let d = LocalDir {
                    dir: ino.0,
                    entries,
                    primer,
                };
                lock(&s.local_dirs).insert(fh, d);
                // No FOPEN_CACHE_DIR: the kernel must not keep our offsets
                // (a read it continues from its cache would send them to
                // the host).
                return reply.opened(FileHandle(fh), FopenFlags::empty());
            }
        }
        // No host handle: each batch is a `ReaddirAt` of the directory
        // itself, which saves the opendir round trip (a directory the host
        // cannot read fails at the first readdir instead of at open; the
        // kernel already checked the mode bits).
        let fh = s.next_dir_fh.fetch_add(1, Ordering::Relaxed);
        let buf = DirBuf {
            offset: 0,
            plus: false,
            entries: VecDeque::new(),
            last: false,
        };
        lock(&s.dirs).insert(fh, Arc::new(tokio::sync::Mutex::new(buf)));
        // The kernel caches the listing too; creates, unlinks and host
        // invalidations of the directory reset that cache.
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let dir = ino.0;
        if fh.0 >= LOCAL_FH {
            return self.shared.local_readdir(fh.0, offset, reply);
        }
        self.read_dir(fh.0, dir, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let dir = ino.0;
        if fh.0 >= LOCAL_FH {
            if let Some(lost) = self.shared.local_readdirplus(fh.0, offset, reply) {
                self.run(move |s| s.local_readdirplus_rest(lost));
            }
            return;
        }
        self.read_dir(fh.0, dir, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if lock(&self.shared.local_dirs).remove(&fh.0).is_some() {
            return reply.ok();
        }
        // No host handle to release.
        let buf = lock(&self.shared.dirs).remove(&fh.0);
        reply.ok();
        if let Some(buf) = buf {
            self.run(move |s| async move { s.discard(&mut *buf.lock().await) });
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // ENOSYS makes the kernel treat directory fsync as done from now on.
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.call(FsRequest::Statfs, reply, |_, reply, r| match r {
            FsReply::Statfs(f) => reply.statfs(
                f.blocks, f.bfree, f.bavail, f.files, f.ffree, f.bsize, f.namelen, f.frsize,
            ),
            r => reply.error(error_of("statfs", &r)),
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let req = FsRequest::Getlk {
            fh: fh.0,
            owner: lock_owner.0,
            lock: Lock {
                start,
                end,
                typ,
                pid,
            },
        };
        self.call(req, reply, |_, reply, r| match r {
            FsReply::Lock(l) => reply.locked(l.start, l.end, l.typ, l.pid),
            r => reply.error(error_of("getlk", &r)),
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let req = FsRequest::Setlk {
            fh: fh.0,
            owner: lock_owner.0,
            lock: Lock {
                start,
                end,
                typ,
                pid,
            },
            wait: sleep,
        };
        self.call(req, reply, |s, reply, r| s.reply_empty(reply, r));
    }

    // Not in the protocol. ENOSYS tells the kernel once, and it stops
    // asking (xattrs fail with EOPNOTSUPP, access() is decided from the
    // mode bits, lseek and fallocate fall back or fail generically); these
    // overrides only keep fuser from logging each first call as a warning.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }
}

/// The error to give the kernel for a reply that is not the answer `op`
/// expects: the host's own errno, or `EIO` (logged) for a reply of another
/// kind. The tail of every callback's match on the host's reply.
fn error_of(op: &str, r: &FsReply) -> Errno {
    match r {
        FsReply::Err(n) => errno(*n),
        other => {
            tracing::warn!("share: unexpected answer to {op}: {}", reply_name(other));
            Errno::EIO
        }
    }
}

fn reply_name(r: &FsReply) -> &'static str {
    match r {
        FsReply::Entry(_) => "Entry",
        FsReply::Attr(_) => "Attr",
        FsReply::Link(_) => "Link",
        FsReply::Opened { .. } => "Opened",
        FsReply::Created { .. } => "Created",
        FsReply::Made { .. } => "Made",
        FsReply::Data(_) => "Data",
        FsReply::Placed(_) => "Placed",
        FsReply::Written(_) => "Written",
        FsReply::Dir(_) => "Dir",
        FsReply::Statfs(_) => "Statfs",
        FsReply::Lock(_) => "Lock",
        FsReply::Ok => "Ok",
        FsReply::Err(_) => "Err",
    }
}

/// The parent's attributes an entry-making reply carried.
fn made_in(r: &FsReply) -> Option<Attr> {
    match r {
        FsReply::Made { parent, .. } => *parent,
        _ => None,
    }
}

/// An inode number to show for an entry the host sent without attributes
/// (only `d_ino` in `readdir`, never used by the kernel to find a node):
/// the directory itself for `.`, otherwise a stable nonzero hash of the
/// name, with the top bit set to stay clear of the host's small ids.
fn placeholder_ino(dir: u64, name: &[u8]) -> u64 {
    if name == b"." {
        return dir;
    }
    // FNV-1a.
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    hash | 1 << 63
}

/// Attributes for "no such entry" (node id 0).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The file type encoded in `mode`'s `S_IFMT` bits.
pub(super) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub(super) fn system_time(t: Time) -> SystemTime {
    let since = |secs: u64| Duration::from_secs(secs);
    let base = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(since(t.secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(since(t.secs.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(Duration::from_nanos(u64::from(t.nanos))))
        .unwrap_or(UNIX_EPOCH)
}

pub(super) fn proto_time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            // Before 1970: whole seconds down, nanoseconds up.
            let d = e.duration();
            let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
            if nanos == 0 {
                Time {
                    secs: -secs,
                    nanos: 0,
                }
            } else {
                Time {
                    secs: -secs - 1,
                    nanos: 1_000_000_000 - nanos,
                }
            }
        }
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(proto_time(t)),
    }
}

/// The kernel's view of a host file: its type and permission bits, but
/// owned by the share's user.
pub(super) fn to_file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.id),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid,
        gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_take_the_share_owner_and_the_type_from_the_mode() {
        let t = Time {
            secs: 1_700_000_000,
            nanos: 5,
        };
        let a = Attr {
            id: 7,
            size: 3,
            blocks: 8,
            atime: t,
            mtime: t,
            ctime: t,
            mode: 0o104755,
            nlink: 1,
            rdev: 0,
            blksize: 4096,
        };
        let f = to_file_attr(&a, 501, 20);
        assert_eq!(
            (f.ino, f.uid, f.gid, f.kind, f.perm),
            (INodeNo(7), 501, 20, FileType::RegularFile, 0o4755)
        );
        assert_eq!(
            f.mtime.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 5)
        );
        for (mode, kind) in [
            (0o040755, FileType::Directory),
            (0o120777, FileType::Symlink),
            (0o010644, FileType::NamedPipe),
            (0o140755, FileType::Socket),
            (0o020600, FileType::CharDevice),
            (0o060600, FileType::BlockDevice),
        ] {
            assert_eq!(file_type(mode), kind);
        }
    }

    #[test]
    fn times_round_trip_including_before_1970() {
        for t in [
            Time { secs: 0, nanos: 0 },
            Time {
                secs: 12,
                nanos: 999_999_999,
            },
            Time {
                secs: -2,
                nanos: 250,
            },
        ] {
            assert_eq!(proto_time(system_time(t)), t);
        }
        assert_eq!(
            proto_time(UNIX_EPOCH - Duration::from_millis(1500)),
            Time {
                secs: -2,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn placeholder_inodes_are_nonzero_and_stable() {
        assert_eq!(placeholder_ino(9, b"."), 9);
        let a = placeholder_ino(9, b"..");
        assert_ne!(a, 0);
        assert_eq!(a, placeholder_ino(3, b".."));
        assert_ne!(placeholder_ino(1, b"x"), placeholder_ino(1, b"y"));
    }
}
