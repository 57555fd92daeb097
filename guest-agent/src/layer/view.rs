//! The layer's FUSE view: each kernel request becomes an [`Overlay`]
//! operation on a path. Inode numbers are handed out per path and kept for
//! the mount's life (a rename moves the number with the entry), so they
//! are stable however often the kernel forgets them. Files appear owned by
//! the guest user; the kernel checks permissions (`default_permissions`).
//! Attributes and entries are cached briefly ([`TTL`]): everything but the
//! host's own changes to the lower folder and a `Drop` goes through here.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lima_proto::fs::MAX_IO;
use lima_proto::sync::lock;

use super::overlay::{io_errno, set_times, Found, Overlay};
use super::path::child;
use super::store::Inner;

/// How long the kernel keeps attributes and entries.
const TTL: Duration = Duration::from_secs(1);

/// Paths ↔ inode numbers (1 is the root, `""`).
struct Inodes {
    by_path: HashMap<Vec<u8>, u64>,
    paths: HashMap<u64, Vec<u8>>,
    next: u64,
}

impl Inodes {
    fn new() -> Inodes {
        let mut i = Inodes {
            by_path: HashMap::new(),
            paths: HashMap::new(),
            next: 2,
        };
        i.by_path.insert(Vec::new(), 1);
        i.paths.insert(1, Vec::new());
        i
    }

    fn ino(&mut self, p: &[u8]) -> u64 {
        if let Some(n) = self.by_path.get(p) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.by_path.insert(p.to_vec(), n);
        self.paths.insert(n, p.to_vec());
        n
    }

    /// The entry at `p` is gone: a new one there gets a new number (the
    /// kernel refuses a node whose type changes under one number).
    fn removed(&mut self, p: &[u8]) {
        self.by_path.remove(p);
    }

    /// `from` (and, for a directory, all below it) is now at `to`.
    fn moved(&mut self, from: &[u8], to: &[u8], dir: bool) {
        if let Some(old) = self.by_path.remove(to) {
            self.paths.remove(&old);
        }
        let keys: Vec<Vec<u8>> = if dir {
            self.by_path
                .keys()
                .filter(|k| super::path::is_under(k, from))
                .cloned()
                .chain(std::iter::once(from.to_vec()))
                .collect()
        } else {
            vec![from.to_vec()]
        };
        for k in keys {
            if let Some(n) = self.by_path.remove(&k) {
                let new = super::path::rebase(&k, from, to);
                self.paths.insert(n, new.clone());
                self.by_path.insert(new, n);
            }
        }
    }
}

/// An open directory: (inode, type, name) of each entry, `.` and `..` first.
type Listing = Vec<(u64, FileType, Vec<u8>)>;

pub(crate) struct View {
    pub(crate) overlay: Arc<Overlay>,
    uid: u32,
    gid: u32,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
}

fn e(n: i32) -> Errno {
    Errno::from_i32(n)
}

fn file_type(m: &Metadata) -> FileType {
    kind(m.file_type())
}

fn kind(t: std::fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}

impl View {
    pub(crate) fn new(overlay: Arc<Overlay>, uid: u32, gid: u32) -> View {
        View {
            overlay,
            uid,
            gid,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn attr(&self, ino: u64, m: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: file_type(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: self.uid,
            gid: self.gid,
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<Vec<u8>, Errno> {
        Ok(child(&self.path(parent)?, name.as_bytes()))
    }

    /// Runs a mutation under the layer's lock.
    fn with_inner<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, i32>) -> Result<T, Errno> {
        let mut inner = lock(&self.overlay.layer.inner);
        f(&mut inner).map_err(e)
    }

    fn entry_of(&self, p: &[u8], reply: ReplyEntry) {
        match self.overlay.find(p) {
            Ok(f) => {
                let ino = lock(&self.inodes).ino(p);
                reply.entry(&TTL, &self.attr(ino, f.meta()), Generation(0))
            }
            Err(n) => reply.error(e(n)),
        }
    }

    fn add_file(&self, f: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(f));
        fh
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Opens `p` with `flags`; a write first copies it up.
    fn open_path(&self, p: &[u8], flags: i32) -> Result<File, Errno> {
        let acc = flags & libc::O_ACCMODE;
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let ov = &self.overlay;
        let on = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .append(flags & libc::O_APPEND != 0)
                .truncate(flags & libc::O_TRUNC != 0)
                // (The kernel opens no symlink; one here is a swap since.)
                .custom_flags(
                    flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME) | libc::O_NOFOLLOW,
                )
                .open(path)
                .map_err(|err| e(io_errno(&err)))
        };
        if writes {
            // Copied up and opened under one hold of the lock.
            let mut inner = lock(&ov.layer.inner);
            ov.copy_up(&mut inner, p, flags & libc::O_TRUNC == 0)
                .map_err(e)?;
            return on(&ov.upper(p));
        }
        match ov.find(p).map_err(e)? {
            Found::Upper(_) => {
                let _inner = lock(&ov.layer.inner);
                ov.check_upper_parents(p).map_err(e)?;
                on(&ov.upper(p))
            }
            Found::Lower(m) => {
                let f = on(&ov.lower.join(OsStr::from_bytes(p)))?;
                self.with_inner(|inner| ov.note_seen(inner, p, &m))?;
                Ok(f)
            }
        }
    }
}

impl Filesystem for View {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child_path(parent, name) {
            Ok(p) => self.entry_of(&p, reply),
            Err(n) => reply.error(n),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .path(ino)
            .and_then(|p| self.overlay.find(&p).map_err(e));
        match r {
            Ok(f) => reply.attr(&TTL, &self.attr(ino.0, f.meta())),
            Err(n) => reply.error(n),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let p = match self.path(ino) {
            Ok(p) => p,
            Err(n) => return reply.error(n),
        };
        let ov = &self.overlay;
        // Owners are the guest user's, always: chown is accepted, ignored.
        if mode.is_some() || size.is_some() || atime.is_some() || mtime.is_some() {
            let r = self.with_inner(|inner| {
                ov.copy_up(inner, &p, size != Some(0))?;
                let up = ov.upper(&p);
                let io = |err: std::io::Error| io_errno(&err);
                let meta = std::fs::symlink_metadata(&up).map_err(io)?;
                if let Some(mode) = mode {
                    if !meta.file_type().is_symlink() {
                        std::fs::set_permissions(
                            &up,
                            std::fs::Permissions::from_mode(mode & 0o7777),
                        )
                        .map_err(io)?;
                    }
                }
                if let Some(size) = size {
                    let open = fh.and_then(|fh| lock(&self.files).get(&fh.0).cloned());
                    match open {
                        Some(f) if f.set_len(size).is_ok() => {}
                        _ => std::fs::OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&up)
                            .and_then(|f| f.set_len(size))
                            .map_err(io)?,
                    }
                }
                if atime.is_some() || mtime.is_some() {
                    set_times(&up, timespec(atime), timespec(mtime))?;
                }
                Ok(())
            });
            if let Err(n) = r {
                return reply.error(n);
            }
        }
        match ov.find(&p) {
            Ok(f) => reply.attr(&TTL, &self.attr(ino.0, f.meta())),
            Err(n) => reply.error(e(n)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ov = &self.overlay;
        let r = self.path(ino).and_then(|p| {
            let (path, lower) = match ov.find(&p).map_err(e)? {
                Found::Upper(_) => (ov.upper(&p), None),
                Found::Lower(m) => (ov.lower.join(OsStr::from_bytes(&p)), Some(m)),
            };
            let target = std::fs::read_link(path).map_err(|err| e(io_errno(&err)))?;
            if let Some(m) = lower {
                self.with_inner(|inner| ov.note_seen(inner, &p, &m))?;
            }
            Ok(target)
        });
        match r {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(n) => reply.error(n),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing else could be applied to the host.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let r = self.child_path(parent, name).and_then(|p| {
            self.make_file(req, &p, mode, umask, libc::O_WRONLY)
                .map(|_| p)
        });
        match r {
            Ok(p) => self.entry_of(&p, reply),
            Err(n) => reply.error(n),
        }
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
        let ov = &self.overlay;
        let r = self.child_path(parent, name).and_then(|p| {
            self.with_inner(|inner| {
                ov.make_room(inner, &p, true)?;
                let up = ov.upper(&p);
                std::fs::create_dir(&up).map_err(|err| io_errno(&err))?;
                std::fs::set_permissions(
                    &up,
                    std::fs::Permissions::from_mode(mode & !umask & 0o7777),
                )
                .map_err(|err| io_errno(&err))
            })?;
            Ok(p)
        });
        match r {
            Ok(p) => self.entry_of(&p, reply),
            Err(n) => reply.error(n),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child_path(parent, name).and_then(|p| {
            self.with_inner(|inner| self.overlay.unlink(inner, &p))?;
            lock(&self.inodes).removed(&p);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(n) => reply.error(n),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child_path(parent, name).and_then(|p| {
            self.with_inner(|inner| self.overlay.rmdir(inner, &p))?;
            lock(&self.inodes).removed(&p);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(n) => reply.error(n),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let ov = &self.overlay;
        let r = self.child_path(parent, link_name).and_then(|p| {
            self.with_inner(|inner| {
                ov.make_room(inner, &p, false)?;
                std::os::unix::fs::symlink(target, ov.upper(&p)).map_err(|err| io_errno(&err))
            })?;
            Ok(p)
        });
        match r {
            Ok(p) => self.entry_of(&p, reply),
            Err(n) => reply.error(n),
        }
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
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self.child_path(parent, name).and_then(|p| {
            let q = self.child_path(newparent, newname)?;
            let dir = self.with_inner(|inner| {
                let dir = self.overlay.resolve(&inner.state, &p)?.is_dir();
                self.overlay.rename(inner, &p, &q, noreplace)?;
                Ok(dir)
            })?;
            lock(&self.inodes).moved(&p, &q, dir);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(n) => reply.error(n),
        }
    }

    /// Hard links would tie an upper file to a lower one: `EXDEV`, which
    /// tools (git, cargo, `cp -l`) answer by copying or renaming.
    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EXDEV);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.path(ino).and_then(|p| self.open_path(&p, flags.0)) {
            Ok(f) => reply.opened(FileHandle(self.add_file(f)), FopenFlags::empty()),
            Err(n) => reply.error(n),
        }
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
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(n) => return reply.error(n),
        };
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return reply.error(e(io_errno(&err))),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.file(fh).and_then(|f| {
            f.write_all_at(data, offset)
                .map_err(|err| e(io_errno(&err)))
        }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(n) => reply.error(n),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

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
        lock(&self.files).remove(&fh.0);
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
        let r = self.file(fh).and_then(|f| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(|err| e(io_errno(&err)))
        });
        let r = r.and_then(|()| {
            lock(&self.overlay.layer.inner)
                .journal
                .sync()
                .map_err(|_| Errno::EIO)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(n) => reply.error(n),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let ov = &self.overlay;
            let names = {
                let inner = lock(&ov.layer.inner);
                ov.list(&inner.state, &p).map_err(e)?
            };
            let mut inodes = lock(&self.inodes);
            let parent = if p.is_empty() {
                1
            } else {
                inodes.ino(super::path::parent(&p))
            };
            let mut list = vec![
                (ino.0, FileType::Directory, b".".to_vec()),
                (parent, FileType::Directory, b"..".to_vec()),
            ];
            for (name, t) in names {
                list.push((inodes.ino(&child(&p, &name)), kind(t), name));
            }
            Ok(list)
        });
        match r {
            Ok(list) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, list);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(n) => reply.error(n),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = lock(&self.dirs);
        let Some(list) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.overlay.layer.inner).journal.sync() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.overlay.layer.upper) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(n) => reply.error(e(n as i32)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        use std::os::fd::AsRawFd;
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(n) => return reply.error(n),
        };
        // SAFETY: fallocate on a descriptor `f` holds open.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) };
        if r == 0 {
            reply.ok()
        } else {
            reply.error(e(io_errno(&std::io::Error::last_os_error())))
        }
    }

    // ENOSYS tells the kernel once and it stops asking (xattrs fail with
    // EOPNOTSUPP, access() is decided from the modes, lseek and
    // copy_file_range fall back); these overrides only keep fuser from
    // logging each first call as a warning.
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

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.child_path(parent, name).and_then(|p| {
            let f = match self.make_file(req, &p, mode, umask, flags) {
                // Made meanwhile: an open of what is there.
                Err(n) if n == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                    self.open_path(&p, flags)?
                }
                r => r?,
            };
            let found = self.overlay.find(&p).map_err(e)?;
            let ino = lock(&self.inodes).ino(&p);
            Ok((f, self.attr(ino, found.meta())))
        });
        match r {
            Ok((f, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(self.add_file(f)),
                FopenFlags::empty(),
            ),
            Err(n) => reply.error(n),
        }
    }
}

impl View {
    /// A new regular file at `p`, opened with `flags`.
    fn make_file(
        &self,
        _req: &Request,
        p: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<File, Errno> {
        let ov = &self.overlay;
        self.with_inner(|inner| {
            ov.make_room(inner, p, false)?;
            let acc = flags & libc::O_ACCMODE;
            let f = std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(true)
                .append(flags & libc::O_APPEND != 0)
                .create_new(true)
                .mode(0o600)
                .open(ov.upper(p))
                .map_err(|err| io_errno(&err))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(|err| io_errno(&err))?;
            Ok(f)
        })
    }
}
