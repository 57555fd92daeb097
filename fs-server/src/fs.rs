//! Request handlers: one blocking function per `FsRequest`, answering an
//! `FsReply` (errors as errno).
//!
//! The rules that keep the guest inside the share:
//!
//! * Every name is one component ([`check_name`]): no empty name, no `.`,
//!   no `..`, no `/`, no NUL.
//! * Every open is relative to the parent node's `O_PATH` fd through
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)`;
//!   every other call is an `*at` call on the parent's fd with that single
//!   component and no symlink following. The server never follows a
//!   symlink: the guest kernel resolves links in its own namespace with
//!   `Readlink`, so a link to `/etc` is a link node, never the host's `/etc`.
//! * Nodes hold fds, not paths (see [`crate::nodes`]), so swapping a symlink
//!   in for a directory the guest already looked up changes nothing.
//! * Reopening a node for I/O goes through `/proc/self/fd/N` of our own fd,
//!   and only for regular files and directories: symlinks answer ELOOP,
//!   devices, FIFOs and sockets EPERM (the guest kernel handles special files
//!   itself and never asks to open them).
//! * A read-only share is enforced here alone: every mutating request, and
//!   any open for writing or with `O_TRUNC`/`O_CREAT`, answers EROFS.
//!
//! POSIX record locks map to OFD locks (`F_OFD_SETLK`) on one extra
//! descriptor per (node, lock owner), so two guest owners conflict exactly
//! like two processes; the descriptor, and with it its locks, is closed when
//! the last file handle that used it is released. `flock` locks go straight
//! to the handle's own descriptor (one open file description per guest open).
//! Waiting lock requests are retried by the caller, never blocked on here.
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lima_proto::fs::{
    Attr, DirEntry, Entry, FsReply, FsRequest, FsToGuest, Lock, SetTime, Statfs, Time, MAX_IO,
};
use lima_proto::sync::lock;

use crate::nodes::{Node, NodeHooks, Nodes};
use crate::sys::{self, Errno, SysResult};
use crate::watch::Watches;

use libc::{EBADF, EINVAL, ENAMETOOLONG, ESTALE};

/// Most entries in one `Readdir` reply. The request carries no buffer size,
/// so the guest may get more than fits its kernel buffer; it continues from
/// the `next_offset` of the last entry it used (offsets are the host's
/// stable `d_off` cookies). In plus mode every entry returned with `Some`
/// attributes holds a node reference the guest must forget if it drops it.
pub const READDIR_MAX: usize = lima_proto::fs::READDIR_MAX;
pub const READDIRPLUS_MAX: usize = lima_proto::fs::READDIRPLUS_MAX;

/// Most open file handles plus lock-owner descriptors per share: every one
/// is a host fd in the host agent's process, and the guest must not be able
/// to exhaust them. Beyond it, opens answer EMFILE and new lock owners ENOLCK.
pub const MAX_HANDLES: usize = 1 << 16;

/// `open` flags passed through to the host; the rest (`O_CREAT`, `O_EXCL`,
/// `O_DIRECT`, `O_NOATIME`, `O_PATH`, ...) are dropped or set by us.
const PASSED_OPEN_FLAGS: i32 =
    libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_DSYNC | libc::O_SYNC;

pub(crate) struct FileHandle {
    node: Arc<Node>,
    fd: OwnedFd,
}

pub(crate) struct DirHandle {
    node: Arc<Node>,
    /// Seek + getdents must not interleave between two readdirs.
    fd: Mutex<OwnedFd>,
}

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

/// The descriptor carrying one lock owner's OFD locks on one node.
struct LockOwner {
    fd: Arc<OwnedFd>,
    /// File handles that used it; the fd closes when the last is released.
    fhs: HashSet<u64>,
}

pub(crate) struct Fs {
    pub(crate) writable: bool,
    pub(crate) nodes: Arc<Nodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    locks: Mutex<HashMap<(u64, u64), LockOwner>>,
    /// `/proc/self/fd`, to reopen `O_PATH` fds.
    proc_fd: OwnedFd,
    pub(crate) watches: Option<Arc<Watches>>,
    /// The process umask: permission bits the host kernel removes from what
    /// we create, which we add back when the guest asked for them.
    umask: u32,
    /// A fixed node budget (tests); 0: [`default_node_budget`].
    pub(crate) node_budget: AtomicUsize,
    /// This share's region of the VM's shared memory, if it has one.
    pub(crate) shm: std::sync::OnceLock<crate::shm::Shm>,
}

/// Shares served by this process right now; they split the fd limit.
pub(crate) static SHARES: AtomicUsize = AtomicUsize::new(0);

/// fds kept free for everything else: open files, directory handles,
/// inotify, sockets.
const FD_RESERVE: usize = 2048;

/// Each of `shares` shares may hold an equal part of the fd limit, less a
/// reserve; `LIMA_FS_NODE_BUDGET` sets the part outright (tests, hosts
/// where other programs in the process need the fds).
fn default_node_budget(shares: usize) -> usize {
    static FIXED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let fixed = FIXED.get_or_init(|| {
        std::env::var("LIMA_FS_NODE_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
    });
    if let Some(n) = fixed {
        return *n;
    }
    let limit = sys::nofile_limit().unwrap_or(1024) as usize;
    (limit.saturating_sub(FD_RESERVE) / shares.max(1)).max(256)
}

impl Drop for Fs {
    fn drop(&mut self) {
        SHARES.fetch_sub(1, Ordering::Relaxed);
    }
}

struct NoHooks;
impl NodeHooks for NoHooks {
    fn added(&self, _: &Node) {}
    fn removed(&self, _: &Node) {}
}

/// Accepts one path component and nothing else.
pub(crate) fn check_name(name: &[u8]) -> SysResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(EINVAL);
    }
    if name.len() > 255 {
        return Err(ENAMETOOLONG);
    }
    CString::new(name).map_err(|_| EINVAL)
}

fn time(secs: i64, nanos: i64) -> Time {
    Time {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

pub(crate) fn attr(id: u64, st: &sys::Stat) -> Attr {
    Attr {
        id,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        mode: st.st_mode,
        nlink: st.st_nlink.try_into().unwrap_or(u32::MAX),
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

fn timespec(t: Option<SetTime>) -> SysResult<libc::timespec> {
    Ok(match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) if t.nanos < 1_000_000_000 => libc::timespec {
            tv_sec: t.secs,
            tv_nsec: t.nanos.into(),
        },
        Some(SetTime::At(_)) => return Err(EINVAL),
    })
}

fn dtype_to_kind(t: u8) -> u32 {
    match t {
        libc::DT_DIR => sys::S_IFDIR,
        libc::DT_REG => sys::S_IFREG,
        libc::DT_LNK => sys::S_IFLNK,
        libc::DT_CHR => sys::S_IFCHR,
        libc::DT_BLK => sys::S_IFBLK,
        libc::DT_FIFO => sys::S_IFIFO,
        libc::DT_SOCK => sys::S_IFSOCK,
        _ => 0,
    }
}

/// `fcntl` lock from a protocol lock (`end` inclusive; i64::MAX or more = to EOF).
fn to_flock(l: &Lock) -> SysResult<libc::flock> {
    let typ = match l.typ {
        sys::F_RDLCK | sys::F_WRLCK | sys::F_UNLCK => l.typ as libc::c_short,
        _ => return Err(EINVAL),
    };
    let start = i64::try_from(l.start).map_err(|_| EINVAL)?;
    let len = if l.end >= i64::MAX as u64 {
        0
    } else if l.end < l.start {
        return Err(EINVAL);
    } else {
        (l.end - l.start + 1) as i64
    };
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = typ;
    f.l_whence = libc::SEEK_SET as libc::c_short;
    f.l_start = start;
    f.l_len = len;
    f.l_pid = 0; // required by OFD locks
    Ok(f)
}

/// Reads from `offset` until `buf` is full or the file ends; a failure
/// after some bytes ends the read there.
fn read_into(f: &FileHandle, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        match sys::pread(f.fd.as_fd(), &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(libc::EINTR) => {}
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// Writes all of `data` at `offset`, or as much as the host takes.
fn write_from(f: &FileHandle, data: &[u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(f.fd.as_fd(), &data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(libc::EINTR) => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

fn from_flock(f: &libc::flock) -> Lock {
    let start = f.l_start.max(0) as u64;
    let end = if f.l_len == 0 {
        i64::MAX as u64
    } else {
        start.saturating_add(f.l_len as u64 - 1)
    };
    // OFD locks report pid -1: the holder is one of our descriptors, not a process.
    Lock {
        start,
        end,
        typ: f.l_type.into(),
        pid: 0,
    }
}

impl Fs {
    pub fn new(
        root_fd: OwnedFd,
        root_st: &sys::Stat,
        writable: bool,
        proc_fd: OwnedFd,
        watches: Option<Watches>,
    ) -> Fs {
        let fs = Fs {
            writable,
            nodes: Arc::new(Nodes::new(root_fd, root_st)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            locks: Mutex::new(HashMap::new()),
            proc_fd,
            watches: watches.map(Arc::new),
            umask: sys::process_umask(),
            node_budget: AtomicUsize::new(0),
            shm: std::sync::OnceLock::new(),
        };
        SHARES.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = fs.watches.as_ref() {
            w.added(&fs.nodes.root());
        }
        fs
    }

    fn hooks(&self) -> &dyn NodeHooks {
        match &self.watches {
            Some(w) => &**w,
            None => &NoHooks,
        }
    }

    /// Nodes this share may hold before it asks the guest to forget some
    /// (see [`Fs::evictions`]).
    pub(crate) fn node_budget(&self) -> usize {
        match self.node_budget.load(Ordering::Relaxed) {
            0 => default_node_budget(SHARES.load(Ordering::Relaxed)),
            fixed => fixed,
        }
    }

    /// When the table holds more nodes than [`Fs::node_budget`]: an
    /// `InvalidateEntry` for each of the least recently used nodes that
    /// brings it back to 90% of the budget. The guest kernel drops those
    /// dentries, forgets the inodes nobody uses, and the forgets close the
    /// fds here. Without this, a guest walking a tree larger than the fd
    /// limit (every node holds an `O_PATH` fd) would get EMFILE.
    pub(crate) fn evictions(&self) -> Vec<FsToGuest> {
        let budget = self.node_budget();
        let count = self.nodes.count();
        if count <= budget {
            return Vec::new();
        }
        let excess = count - budget * 9 / 10;
        self.nodes
            .least_recently_used(excess)
            .into_iter()
            .filter_map(|node| node.place())
            .map(|(parent, name)| FsToGuest::InvalidateEntry { parent, name })
            .collect()
    }

    fn node(&self, id: u64) -> SysResult<Arc<Node>> {
        self.nodes.get(id).ok_or(ESTALE)
    }

    fn file(&self, fh: u64) -> SysResult<Arc<FileHandle>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(EBADF),
        }
    }

    fn dir(&self, fh: u64) -> SysResult<Arc<DirHandle>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(EBADF),
        }
    }

    fn add_handle(&self, h: Handle) -> SysResult<u64> {
        let mut handles = lock(&self.handles);
        if handles.len() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, h);
        Ok(fh)
    }

    fn check_writable(&self) -> SysResult<()> {
        if self.writable {
            Ok(())
        } else {
            Err(libc::EROFS)
        }
    }

    /// Opens a node's inode for I/O (never a symlink, never a special file).
    fn reopen(&self, node: &Node, flags: i32) -> SysResult<OwnedFd> {
        match node.kind {
            sys::S_IFREG | sys::S_IFDIR => {
                sys::reopen(self.proc_fd.as_fd(), node.fd.as_fd(), flags)
            }
            sys::S_IFLNK => Err(libc::ELOOP),
            _ => Err(libc::EPERM),
        }
    }

    /// Looks `name` up beneath `parent` and takes one reference on its node.
    fn lookup_at(&self, parent: &Node, name: &CStr) -> SysResult<Entry> {
        let fd = sys::open_beneath(parent.fd.as_fd(), name, sys::O_PATH, 0)?;
        self.entry_for_fd(fd, parent, name)
    }

    /// The entry for `fd`, found as `name` in `parent`, with one reference.
    fn entry_for_fd(&self, fd: OwnedFd, parent: &Node, name: &CStr) -> SysResult<Entry> {
        let st = sys::fstat(fd.as_fd())?;
        #[cfg(test)]
        pause_before_intern(name);
        let node = self.nodes.intern(fd, &st, self.hooks());
        node.set_place(parent.id, name.to_bytes());
        // Read again now that the table holds the node: the watcher reports
        // host changes only for nodes it holds (`watch::child_id`), so one
        // made between the first read and `intern` would be lost, and the
        // guest would keep the attributes from before it. (Type, device
        // and inode come from the first read: they cannot change.)
        let st = sys::fstat(node.fd.as_fd()).unwrap_or(st);
        Ok(Entry {
            attr: attr(node.id, &st),
            generation: 0,
        })
    }

    /// Adds back permission bits the process umask removed from a new inode.
    fn fix_mode(&self, fd: &OwnedFd, wanted: u32, is_open_file: bool) -> SysResult<()> {
        if wanted & self.umask == 0 {
            return Ok(());
        }
        let st = sys::fstat(fd.as_fd())?;
        let mode = (st.st_mode & 0o7777) | (wanted & self.umask);
        if is_open_file {
            sys::fchmod(fd.as_fd(), mode)
        } else {
            sys::chmod_fd_path(self.proc_fd.as_fd(), fd.as_fd(), mode)
        }
    }

    /// Runs `change`, a syscall that on success causes the inotify entry
    /// events `events` (`(directory node, IN_* type, name)`), so that the
    /// watcher drops them instead of echoing the guest's own change back to
    /// it (see [`crate::watch`]).
    fn own<T>(
        &self,
        events: &[(u64, u32, &CStr)],
        change: impl FnOnce() -> SysResult<T>,
    ) -> SysResult<T> {
        let Some(w) = &self.watches else {
            return change();
        };
        let c = w.change();
        let r = change();
        if r.is_ok() {
            c.caused(events);
        }
        r
    }

    /// `dir`'s attributes for a reply that changed its entries: taken right
    /// after the change, so the guest can answer the kernel's next getattr
    /// of `dir` itself (it drops its copy after each such change).
    fn parent_attr(dir: &Node) -> Option<Attr> {
        sys::fstat(dir.fd.as_fd()).ok().map(|st| attr(dir.id, &st))
    }

    /// Answers one request. Blocking: run it on the blocking pool.
    pub fn handle(&self, req: &FsRequest) -> FsReply {
        let r = match req {
            FsRequest::Lookup { parent, name } => self.lookup(*parent, name),
            FsRequest::Forget { id, nlookup } => {
                self.forget(*id, *nlookup);
                Ok(FsReply::Ok)
            }
            FsRequest::Getattr { id } => self.getattr(*id),
            FsRequest::Setattr {
                id,
                fh,
                mode,
                size,
                atime,
                mtime,
            } => self.setattr(*id, *fh, *mode, *size, *atime, *mtime),
            FsRequest::Readlink { id } => self.readlink(*id),
            FsRequest::Mkdir {
                parent,
                name,
                mode,
                umask,
            } => self.mkdir(*parent, name, *mode, *umask),
            FsRequest::Unlink { parent, name } => self.unlink(*parent, name, false),
            FsRequest::Rmdir { parent, name } => self.unlink(*parent, name, true),
            FsRequest::Symlink {
                parent,
                name,
                target,
            } => self.symlink(*parent, name, target),
            FsRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => self.rename(*parent, name, *new_parent, new_name, *flags),
            FsRequest::Link {
                id,
                new_parent,
                new_name,
            } => self.link(*id, *new_parent, new_name),
            FsRequest::Open { id, flags } => self.open(*id, *flags),
            FsRequest::Create {
                parent,
                name,
                mode,
                umask,
                flags,
            } => self.create(*parent, name, *mode, *umask, *flags),
            FsRequest::Read { fh, offset, size } => self.read(*fh, *offset, *size),
            FsRequest::Write { fh, offset, data } => self.write(*fh, *offset, data),
            FsRequest::ReadShm {
                fh,
                offset,
                size,
                at,
            } => self.read_shm(*fh, *offset, *size, *at),
            FsRequest::WriteShm {
                fh,
                offset,
                len,
                at,
            } => self.write_shm(*fh, *offset, *len, *at),
            FsRequest::Flush { fh } => self
                .file(*fh)
                .and_then(|f| sys::flush(f.fd.as_fd()))
                .map(|()| FsReply::Ok),
            FsRequest::Fsync { fh, datasync } => self.fsync(*fh, *datasync),
            FsRequest::Release { fh } => self.release(*fh),
            FsRequest::Opendir { id } => self.opendir(*id),
            FsRequest::Readdir { fh, offset, plus } => self.readdir(*fh, *offset, *plus),
            FsRequest::ReaddirAt { id, offset, plus } => self.readdir_at(*id, *offset, *plus),
            FsRequest::Releasedir { fh } => self.releasedir(*fh),
            FsRequest::Statfs => self.statfs(),
            FsRequest::Getlk { fh, owner, lock } => self.getlk(*fh, *owner, lock),
            FsRequest::Setlk {
                fh,
                owner,
                lock,
                wait: _,
            } => self.setlk(*fh, *owner, lock),
            FsRequest::Flock { fh, owner: _, op } => self.flock(*fh, *op),
        };
        r.unwrap_or_else(FsReply::Err)
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> SysResult<FsReply> {
        let name = check_name(name)?;
        let parent = self.node(parent)?;
        self.lookup_at(&parent, &name).map(FsReply::Entry)
    }

    pub fn forget(&self, id: u64, nlookup: u64) {
        self.nodes.forget(id, nlookup, self.hooks());
    }

    fn getattr(&self, id: u64) -> SysResult<FsReply> {
        let node = self.node(id)?;
        Ok(FsReply::Attr(attr(id, &sys::fstat(node.fd.as_fd())?)))
    }

    fn setattr(
        &self,
        id: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> SysResult<FsReply> {
        self.check_writable()?;
        let node = self.node(id)?;
        // An open handle on the same node, if the guest named one.
        let file = match fh {
            Some(fh) => Some(self.file(fh)?).filter(|f| f.node.id == id),
            None => None,
        };
        if let Some(mode) = mode {
            let mode = mode & 0o7777;
            match &file {
                Some(f) => sys::fchmod(f.fd.as_fd(), mode)?,
                None if node.is_symlink() => return Err(libc::EOPNOTSUPP),
                None => sys::chmod_fd_path(self.proc_fd.as_fd(), node.fd.as_fd(), mode)?,
            }
        }
        if let Some(size) = size {
            match node.kind {
                sys::S_IFDIR => return Err(libc::EISDIR),
                sys::S_IFREG => {}
                _ => return Err(EINVAL),
            }
            match &file {
                Some(f) if sys::ftruncate(f.fd.as_fd(), size).is_ok() => {}
                // No handle, or one opened read-only (FUSE may pass either).
                _ => sys::ftruncate(self.reopen(&node, libc::O_WRONLY)?.as_fd(), size)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime)?, timespec(mtime)?];
            match &file {
                Some(f) => sys::futimens(f.fd.as_fd(), &times)?,
                None => sys::utimens_fd(
                    self.proc_fd.as_fd(),
                    node.fd.as_fd(),
                    &times,
                    node.is_symlink(),
                )?,
            }
        }
        Ok(FsReply::Attr(attr(id, &sys::fstat(node.fd.as_fd())?)))
    }

    fn readlink(&self, id: u64) -> SysResult<FsReply> {
        let node = self.node(id)?;
        if !node.is_symlink() {
            return Err(EINVAL);
        }
        sys::readlink(node.fd.as_fd()).map(FsReply::Link)
    }

    fn mkdir(&self, parent: u64, name: &[u8], mode: u32, umask: u32) -> SysResult<FsReply> {
        self.check_writable()?;
        let name = check_name(name)?;
        let parent = self.node(parent)?;
        let wanted = mode & !umask & 0o7777;
        self.own(&[(parent.id, sys::IN_CREATE, name.as_c_str())], || {
            sys::mkdir_at(parent.fd.as_fd(), &name, wanted)
        })?;
        let parent_attr = Self::parent_attr(&parent);
        let fd = sys::open_beneath(parent.fd.as_fd(), &name, sys::O_PATH, 0)?;
        // Best effort: the directory exists whatever chmod says.
        let _ = self.fix_mode(&fd, wanted, false);
        let entry = self.entry_for_fd(fd, &parent, &name)?;
        Ok(FsReply::Made {
            entry,
            parent: parent_attr,
        })
    }

    fn unlink(&self, parent: u64, name: &[u8], dir: bool) -> SysResult<FsReply> {
        self.check_writable()?;
        let name = check_name(name)?;
        let parent = self.node(parent)?;
        self.own(&[(parent.id, sys::IN_DELETE, name.as_c_str())], || {
            sys::unlink_at(parent.fd.as_fd(), &name, dir)
        })
        .map(|()| FsReply::Ok)
    }

    fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> SysResult<FsReply> {
        self.check_writable()?;
        let name = check_name(name)?;
        if target.is_empty() {
            return Err(libc::ENOENT);
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(ENAMETOOLONG);
        }
        // The target is stored as given and never resolved by us.
        let target = CString::new(target).map_err(|_| EINVAL)?;
        let parent = self.node(parent)?;
        self.own(&[(parent.id, sys::IN_CREATE, name.as_c_str())], || {
            sys::symlink_at(&target, parent.fd.as_fd(), &name)
        })?;
        let parent_attr = Self::parent_attr(&parent);
        let entry = self.lookup_at(&parent, &name)?;
        Ok(FsReply::Made {
            entry,
            parent: parent_attr,
        })
    }

    fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> SysResult<FsReply> {
        self.check_writable()?;
        if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0 {
            return Err(EINVAL); // RENAME_WHITEOUT is for overlayfs, not guests
        }
        let name = check_name(name)?;
        let new_name = check_name(new_name)?;
        let parent = self.node(parent)?;
        let new_parent = self.node(new_parent)?;
        let rename = || {
            sys::rename_at(
                parent.fd.as_fd(),
                &name,
                new_parent.fd.as_fd(),
                &new_name,
                flags,
            )
        };
        // Renaming a name onto a hard link of the same inode does nothing
        // and causes no event: nothing to expect then.
        let same = |a: &sys::Stat, b: &sys::Stat| (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino);
        let no_op = match (
            sys::stat_at(parent.fd.as_fd(), &name),
            sys::stat_at(new_parent.fd.as_fd(), &new_name),
        ) {
            (Ok(a), Ok(b)) => same(&a, &b),
            _ => false,
        };
        if no_op {
            return rename().map(|()| FsReply::Ok);
        }
        let (from, to) = (parent.id, new_parent.id);
        let mut events = vec![
            (from, sys::IN_MOVED_FROM, name.as_c_str()),
            (to, sys::IN_MOVED_TO, new_name.as_c_str()),
        ];
        if flags & sys::RENAME_EXCHANGE != 0 {
            // Both ways: the kernel reports the second move too.
            events.push((to, sys::IN_MOVED_FROM, new_name.as_c_str()));
            events.push((from, sys::IN_MOVED_TO, name.as_c_str()));
        }
        self.own(&events, rename).map(|()| FsReply::Ok)
    }

    fn link(&self, id: u64, new_parent: u64, new_name: &[u8]) -> SysResult<FsReply> {
        self.check_writable()?;
        let new_name = check_name(new_name)?;
        let node = self.node(id)?;
        if node.is_dir() {
            return Err(libc::EPERM);
        }
        let new_parent = self.node(new_parent)?;
        self.own(
            &[(new_parent.id, sys::IN_CREATE, new_name.as_c_str())],
            || {
                sys::link_fd(
                    self.proc_fd.as_fd(),
                    node.fd.as_fd(),
                    new_parent.fd.as_fd(),
                    &new_name,
                )
            },
        )?;
        let parent_attr = Self::parent_attr(&new_parent);
        let entry = self.lookup_at(&new_parent, &new_name)?;
        Ok(FsReply::Made {
            entry,
            parent: parent_attr,
        })
    }

    fn check_open_flags(&self, flags: i32) -> SysResult<i32> {
        if !self.writable
            && (flags & libc::O_ACCMODE != libc::O_RDONLY
                || flags & (libc::O_TRUNC | libc::O_CREAT) != 0)
        {
            return Err(libc::EROFS);
        }
        if flags & libc::O_ACCMODE == libc::O_ACCMODE {
            return Err(EINVAL);
        }
        Ok(flags & PASSED_OPEN_FLAGS)
    }

    fn open(&self, id: u64, flags: i32) -> SysResult<FsReply> {
        let flags = self.check_open_flags(flags)?;
        let node = self.node(id)?;
        if node.is_dir() && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(libc::EISDIR);
        }
        let fd = self.reopen(&node, flags)?;
        Ok(FsReply::Opened {
            fh: self.add_handle(Handle::File(Arc::new(FileHandle { node, fd })))?,
        })
    }

    fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> SysResult<FsReply> {
        self.check_writable()?;
        let name = check_name(name)?;
        let excl = flags & libc::O_EXCL != 0;
        let flags = self.check_open_flags(flags)?;
        let parent = self.node(parent)?;
        let wanted = mode & !umask & 0o7777;
        // O_EXCL first, so we know whether we made the file (and may fix its mode).
        let made = self.own(&[(parent.id, sys::IN_CREATE, name.as_c_str())], || {
            sys::open_beneath(
                parent.fd.as_fd(),
                &name,
                flags | libc::O_CREAT | libc::O_EXCL,
                wanted,
            )
        });
        let (fd, created) = match made {
            Ok(fd) => (fd, true),
            // Non-blocking: a FIFO the host just made there must not hang
            // the server (it is refused below); no effect on regular files.
            Err(libc::EEXIST) if !excl => (
                sys::open_beneath(parent.fd.as_fd(), &name, flags | libc::O_NONBLOCK, 0)?,
                false,
            ),
            Err(e) => return Err(e),
        };
        let parent_attr = Self::parent_attr(&parent);
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & sys::S_IFMT != sys::S_IFREG {
            return Err(libc::EPERM); // an existing FIFO or device: never opened for the guest
        }
        if created {
            let _ = self.fix_mode(&fd, wanted, true);
        }
        let path_fd = sys::reopen(self.proc_fd.as_fd(), fd.as_fd(), sys::O_PATH)?;
        let entry = self.entry_for_fd(path_fd, &parent, &name)?;
        let node = self.node(entry.attr.id)?;
        let fh = self.add_handle(Handle::File(Arc::new(FileHandle { node, fd })))?;
        Ok(FsReply::Created {
            entry,
            fh,
            parent: parent_attr,
        })
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<FsReply> {
        let f = self.file(fh)?;
        let mut buf = vec![0u8; size.min(MAX_IO) as usize];
        let got = read_into(&f, &mut buf, offset)?;
        buf.truncate(got);
        Ok(FsReply::Data(buf))
    }

    fn read_shm(&self, fh: u64, offset: u64, size: u32, at: u64) -> SysResult<FsReply> {
        let f = self.file(fh)?;
        let shm = self.shm.get().ok_or(EINVAL)?;
        let got = shm.with(at, size.min(MAX_IO) as usize, |b| read_into(&f, b, offset))?;
        Ok(FsReply::Placed(got as u32))
    }

    fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<FsReply> {
        self.check_writable()?;
        if data.len() > MAX_IO as usize {
            return Err(EINVAL);
        }
        let f = self.file(fh)?;
        write_from(&f, data, offset).map(|n| FsReply::Written(n as u32))
    }

    fn write_shm(&self, fh: u64, offset: u64, len: u32, at: u64) -> SysResult<FsReply> {
        self.check_writable()?;
        if len > MAX_IO {
            return Err(EINVAL);
        }
        let f = self.file(fh)?;
        let shm = self.shm.get().ok_or(EINVAL)?;
        let done = shm.with(at, len as usize, |b| write_from(&f, b, offset))?;
        Ok(FsReply::Written(done as u32))
    }

    fn fsync(&self, fh: u64, datasync: bool) -> SysResult<FsReply> {
        let handle = match lock(&self.handles).get(&fh) {
            Some(Handle::File(f)) => Handle::File(f.clone()),
            Some(Handle::Dir(d)) => Handle::Dir(d.clone()),
            None => return Err(EBADF),
        };
        match handle {
            Handle::File(f) => sys::fsync(f.fd.as_fd(), datasync),
            Handle::Dir(d) => sys::fsync(lock(&d.fd).as_fd(), datasync),
        }
        .map(|()| FsReply::Ok)
    }

    fn release(&self, fh: u64) -> SysResult<FsReply> {
        {
            let mut handles = lock(&self.handles);
            match handles.get(&fh) {
                Some(Handle::File(_)) => handles.remove(&fh),
                _ => return Err(EBADF),
            };
        }
        // Close lock-owner descriptors no other handle uses: their locks go too.
        lock(&self.locks).retain(|_, owner| {
            owner.fhs.remove(&fh);
            !owner.fhs.is_empty()
        });
        Ok(FsReply::Ok)
    }

    /// Directory `id` opened for reading.
    fn open_dir(&self, id: u64) -> SysResult<DirHandle> {
        let node = self.node(id)?;
        if !node.is_dir() {
            return Err(if node.is_symlink() {
                libc::ELOOP
            } else {
                libc::ENOTDIR
            });
        }
        let fd = self.reopen(&node, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(DirHandle {
            node,
            fd: Mutex::new(fd),
        })
    }

    fn opendir(&self, id: u64) -> SysResult<FsReply> {
        let d = self.open_dir(id)?;
        Ok(FsReply::Opened {
            fh: self.add_handle(Handle::Dir(Arc::new(d)))?,
        })
    }

    fn readdir(&self, fh: u64, offset: u64, plus: bool) -> SysResult<FsReply> {
        self.read_dir(&*self.dir(fh)?, offset, plus)
    }

    fn readdir_at(&self, id: u64, offset: u64, plus: bool) -> SysResult<FsReply> {
        self.read_dir(&self.open_dir(id)?, offset, plus)
    }

    /// One batch of `d` from `offset`.
    fn read_dir(&self, d: &DirHandle, offset: u64, plus: bool) -> SysResult<FsReply> {
        let max = if plus { READDIRPLUS_MAX } else { READDIR_MAX };
        let fd = lock(&d.fd);
        sys::lseek_set(fd.as_fd(), offset)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        'fill: while out.len() < max {
            let n = sys::getdents(fd.as_fd(), &mut buf)?;
            if n == 0 {
                break;
            }
            for e in sys::parse_dirents(&buf[..n]) {
                if out.len() >= max {
                    break 'fill;
                }
                let dot = e.name == b"." || e.name == b"..";
                let mut kind = dtype_to_kind(e.typ);
                let entry = if plus && !dot {
                    CString::new(e.name)
                        .ok()
                        .and_then(|name| self.lookup_at(&d.node, &name).ok())
                } else {
                    None
                };
                if let Some(en) = &entry {
                    kind = en.attr.mode & sys::S_IFMT;
                } else if kind == 0 && !dot {
                    if let Ok(st) = CString::new(e.name)
                        .map_err(|_| EINVAL)
                        .and_then(|n| sys::stat_at(d.node.fd.as_fd(), &n))
                    {
                        kind = st.st_mode & sys::S_IFMT;
                    }
                }
                let _ = e.ino; // host inode numbers are not shown to the guest
                out.push(DirEntry {
                    name: e.name.to_vec(),
                    next_offset: e.off,
                    entry,
                    kind,
                });
            }
        }
        Ok(FsReply::Dir(out))
    }

    fn releasedir(&self, fh: u64) -> SysResult<FsReply> {
        let mut handles = lock(&self.handles);
        match handles.get(&fh) {
            Some(Handle::Dir(_)) => {
                handles.remove(&fh);
                Ok(FsReply::Ok)
            }
            _ => Err(EBADF),
        }
    }

    fn statfs(&self) -> SysResult<FsReply> {
        let st = sys::fstatvfs(self.nodes.root().fd.as_fd())?;
        Ok(FsReply::Statfs(Statfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        }))
    }

    /// The descriptor holding `owner`'s locks on the handle's node.
    fn lock_fd(&self, fh: u64, owner: u64) -> SysResult<Arc<OwnedFd>> {
        let f = self.file(fh)?;
        let mut locks = lock(&self.locks);
        if let Some(o) = locks.get_mut(&(f.node.id, owner)) {
            o.fhs.insert(fh);
            return Ok(o.fd.clone());
        }
        if locks.len() >= MAX_HANDLES {
            return Err(libc::ENOLCK);
        }
        // Read-write when we may, so one owner can hold both lock types
        // (the guest kernel already checked the mode of the guest's fd).
        let fd = if self.writable {
            self.reopen(&f.node, libc::O_RDWR)
                .or_else(|_| self.reopen(&f.node, libc::O_RDONLY))
        } else {
            self.reopen(&f.node, libc::O_RDONLY)
        }
        .or_else(|_| self.reopen(&f.node, libc::O_WRONLY))?;
        let fd = Arc::new(fd);
        locks.insert(
            (f.node.id, owner),
            LockOwner {
                fd: fd.clone(),
                fhs: HashSet::from([fh]),
            },
        );
        Ok(fd)
    }

    fn getlk(&self, fh: u64, owner: u64, l: &Lock) -> SysResult<FsReply> {
        let mut f = to_flock(l)?;
        let fd = self.lock_fd(fh, owner)?;
        sys::ofd_lock(fd.as_fd(), sys::F_OFD_GETLK, &mut f)?;
        if i32::from(f.l_type) == sys::F_UNLCK {
            return Ok(FsReply::Lock(Lock {
                typ: sys::F_UNLCK,
                pid: 0,
                ..*l
            }));
        }
        Ok(FsReply::Lock(from_flock(&f)))
    }

    /// Never blocks: a conflicting lock answers EAGAIN and the caller retries
    /// when the guest asked to wait.
    fn setlk(&self, fh: u64, owner: u64, l: &Lock) -> SysResult<FsReply> {
        let mut f = to_flock(l)?;
        if l.typ == sys::F_UNLCK {
            // Nothing to release if this owner never locked here.
            let node = self.file(fh)?.node.id;
            let Some(fd) = lock(&self.locks).get(&(node, owner)).map(|o| o.fd.clone()) else {
                return Ok(FsReply::Ok);
            };
            return sys::ofd_lock(fd.as_fd(), sys::F_OFD_SETLK, &mut f).map(|()| FsReply::Ok);
        }
        let fd = self.lock_fd(fh, owner)?;
        sys::ofd_lock(fd.as_fd(), sys::F_OFD_SETLK, &mut f).map(|()| FsReply::Ok)
    }

    /// `flock` on the handle's own open file description; never blocks.
    fn flock(&self, fh: u64, op: i32) -> SysResult<FsReply> {
        let base = op & !libc::LOCK_NB;
        if !matches!(base, libc::LOCK_SH | libc::LOCK_EX | libc::LOCK_UN) {
            return Err(EINVAL);
        }
        let f = self.file(fh)?;
        sys::flock(f.fd.as_fd(), base | libc::LOCK_NB).map(|()| FsReply::Ok)
    }

    #[cfg(all(test, target_os = "linux"))]
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }
}

/// Whether an EAGAIN answer to `req` means "retry later" (the guest asked to
/// wait for the lock) rather than a final answer.
pub(crate) fn waits(req: &FsRequest) -> bool {
    match req {
        FsRequest::Setlk { wait, lock, .. } => *wait && lock.typ != sys::F_UNLCK,
        FsRequest::Flock { op, .. } => op & libc::LOCK_NB == 0 && op & libc::LOCK_UN == 0,
        _ => false,
    }
}

/// The errno a would-block lock answers with.
pub(crate) const WOULD_BLOCK: Errno = libc::EAGAIN;

/// Test-only: `(name, f)` runs `f` once, when an entry named `name` has been
/// stat-ed and its node is not yet in the table.
#[cfg(test)]
pub(crate) static PAUSE_BEFORE_INTERN: Mutex<Option<(Vec<u8>, PauseHook)>> = Mutex::new(None);

#[cfg(test)]
pub(crate) type PauseHook = Box<dyn FnOnce() + Send>;

#[cfg(test)]
fn pause_before_intern(name: &CStr) {
    let hook = {
        let mut h = lock(&PAUSE_BEFORE_INTERN);
        match &*h {
            Some((n, _)) if n.as_slice() == name.to_bytes() => h.take(),
            _ => None,
        }
    };
    if let Some((_, f)) = hook {
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/",
            b"/etc",
            b"a\0b",
            b"../x",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name(&[b'x'; 256]), Err(ENAMETOOLONG));
        for good in [&b"a"[..], b"...", b".hidden", b"a b", &[0xff, 0xfe]] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn lock_ranges_convert_both_ways() {
        let l = Lock {
            start: 10,
            end: 19,
            typ: sys::F_WRLCK,
            pid: 7,
        };
        let f = to_flock(&l).unwrap();
        assert_eq!((f.l_start, f.l_len, f.l_pid), (10, 10, 0));
        assert_eq!(from_flock(&f), Lock { pid: 0, ..l });
        let eof = Lock {
            start: 5,
            end: u64::MAX,
            typ: sys::F_RDLCK,
            pid: 0,
        };
        let f = to_flock(&eof).unwrap();
        assert_eq!(f.l_len, 0);
        assert_eq!(from_flock(&f).end, i64::MAX as u64);
        assert!(to_flock(&Lock {
            start: 5,
            end: 4,
            typ: sys::F_RDLCK,
            pid: 0
        })
        .is_err());
        assert!(to_flock(&Lock {
            start: u64::MAX,
            end: u64::MAX,
            typ: sys::F_RDLCK,
            pid: 0
        })
        .is_err());
        assert!(to_flock(&Lock {
            start: 0,
            end: 1,
            typ: 99,
            pid: 0
        })
        .is_err());
    }
}
