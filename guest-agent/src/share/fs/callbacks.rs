//! The fuser [`Filesystem`]: one method per kernel request. Each answers
//! from what the agent knows (a listing, fresh directory attributes) or
//! becomes a protocol request through [`super::dispatch`], with a callback
//! that turns the host's reply into the kernel's and keeps the caches
//! right. Every match on a reply ends in [`error_of`] for the host's
//! errors and for answers of the wrong kind.
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lima_proto::fs::{FsReply, FsRequest, Lock, MAX_IO};
use lima_proto::sync::lock;

use super::convert::{errno, error_of, made_in, negative_attr, set_time};
use super::dispatch::ShareFs;
use super::state::{DirBuf, LocalDir, Shared, LOCAL_FH, TTL};
use crate::share::cache::{self, Answer, Cache};
use crate::share::prime;

/// Requests the kernel may have queued in the background (readahead, async
/// reads, releases) before it throttles; the default 12 starves big reads.
const MAX_BACKGROUND: u16 = 64;

impl ShareFs {
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
}

impl Shared {
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
        // [`crate::share::prime`]).
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
                if !prime::is_primer(&s.primer_tids, req.pid())
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
        let primer = prime::is_primer(&s.primer_tids, req.pid());
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
