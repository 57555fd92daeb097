//! macOS hosts: the same names as `linux.rs`, so the crate builds for the
//! vz driver's hosts, but no share can be served yet ([`SUPPORTED`] is
//! false, so `Server::new` refuses before any of these runs).
//!
//! macOS has no `openat2(RESOLVE_BENEATH)`, `O_PATH`, `/proc/self/fd`,
//! `getdents64` or inotify; what replaces each (`O_NOFOLLOW_ANY`,
//! `getattrlistbulk`, FSEvents or kqueue, ...) is the macOS port's choice, so
//! every call here answers ENOSYS until then. The guest speaks Linux: its
//! open flags, lock types, rename flags and errnos are Linux's numbers, which
//! the port must translate; the constants below are macOS's own where it has
//! one of the same meaning.
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::types::{RawDirent, Stat, StatVfs, SysResult};

/// Whether this host can serve shares at all (the availability probe
/// `Server::new` asks first).
pub const SUPPORTED: bool = false;

const NOT_YET: i32 = libc::ENOSYS;

pub use libc::{F_OFD_GETLK, F_OFD_SETLK};
pub const F_RDLCK: i32 = libc::F_RDLCK as i32;
pub const F_UNLCK: i32 = libc::F_UNLCK as i32;
pub const F_WRLCK: i32 = libc::F_WRLCK as i32;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_SWAP;
pub const RENAME_NOREPLACE: u32 = libc::RENAME_EXCL;
pub const S_IFBLK: u32 = libc::S_IFBLK as u32;
pub const S_IFCHR: u32 = libc::S_IFCHR as u32;
pub const S_IFDIR: u32 = libc::S_IFDIR as u32;
pub const S_IFIFO: u32 = libc::S_IFIFO as u32;
pub const S_IFLNK: u32 = libc::S_IFLNK as u32;
pub const S_IFMT: u32 = libc::S_IFMT as u32;
pub const S_IFREG: u32 = libc::S_IFREG as u32;
pub const S_IFSOCK: u32 = libc::S_IFSOCK as u32;
/// No such flag on macOS: calls that take it answer ENOSYS here.
pub const O_PATH: i32 = 0;

// The watcher's event kinds, with inotify's values: they only label the
// server's own changes here, since no watch can be set up on macOS yet.
pub const IN_ATTRIB: u32 = 0x0000_0004;
pub const IN_CREATE: u32 = 0x0000_0100;
pub const IN_DELETE: u32 = 0x0000_0200;
pub const IN_DELETE_SELF: u32 = 0x0000_0400;
pub const IN_EXCL_UNLINK: u32 = 0x0400_0000;
pub const IN_IGNORED: u32 = 0x0000_8000;
#[cfg(test)]
pub const IN_ISDIR: u32 = 0x4000_0000;
pub const IN_MODIFY: u32 = 0x0000_0002;
pub const IN_MOVED_FROM: u32 = 0x0000_0040;
pub const IN_MOVED_TO: u32 = 0x0000_0080;
pub const IN_MOVE_SELF: u32 = 0x0000_0800;
pub const IN_ONLYDIR: u32 = 0x0100_0000;
pub const IN_Q_OVERFLOW: u32 = 0x0000_4000;

pub fn open_beneath(
    _dir: BorrowedFd<'_>,
    _name: &CStr,
    _flags: i32,
    _mode: u32,
) -> SysResult<OwnedFd> {
    Err(NOT_YET)
}

pub fn reopen(_proc_fd: BorrowedFd<'_>, _fd: BorrowedFd<'_>, _flags: i32) -> SysResult<OwnedFd> {
    Err(NOT_YET)
}

pub fn fstat(_fd: BorrowedFd<'_>) -> SysResult<Stat> {
    Err(NOT_YET)
}

pub fn stat_at(_dir: BorrowedFd<'_>, _name: &CStr) -> SysResult<Stat> {
    Err(NOT_YET)
}

pub fn fstatvfs(_fd: BorrowedFd<'_>) -> SysResult<StatVfs> {
    Err(NOT_YET)
}

pub fn readlink(_fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    Err(NOT_YET)
}

pub fn rename_at(
    _old_dir: BorrowedFd<'_>,
    _old: &CStr,
    _new_dir: BorrowedFd<'_>,
    _new: &CStr,
    _flags: u32,
) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn link_fd(
    _proc_fd: BorrowedFd<'_>,
    _fd: BorrowedFd<'_>,
    _dir: BorrowedFd<'_>,
    _name: &CStr,
) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn chmod_fd_path(_proc_fd: BorrowedFd<'_>, _fd: BorrowedFd<'_>, _mode: u32) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn utimens_fd(
    _proc_fd: BorrowedFd<'_>,
    _fd: BorrowedFd<'_>,
    _times: &[libc::timespec; 2],
    _is_symlink: bool,
) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn fsync(_fd: BorrowedFd<'_>, _datasync: bool) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn getdents(_fd: BorrowedFd<'_>, _buf: &mut [u8]) -> SysResult<usize> {
    Err(NOT_YET)
}

/// Nothing to split: [`getdents`] never fills a buffer here.
pub fn parse_dirents(_buf: &[u8]) -> Vec<RawDirent<'_>> {
    Vec::new()
}

pub fn ofd_lock(_fd: BorrowedFd<'_>, _cmd: i32, _lock: &mut libc::flock) -> SysResult<()> {
    Err(NOT_YET)
}

pub fn inotify_init() -> SysResult<OwnedFd> {
    Err(NOT_YET)
}

pub fn inotify_watch(_inotify: BorrowedFd<'_>, _fd: BorrowedFd<'_>, _mask: u32) -> SysResult<i32> {
    Err(NOT_YET)
}

pub fn inotify_unwatch(_inotify: BorrowedFd<'_>, _wd: i32) {}

/// macOS has no `close_range`: children inherit what lacks `O_CLOEXEC`.
pub fn cloexec_above_stdio() {}

/// macOS has no parent-death signal; the host agent stops its children.
pub fn die_with_parent(_parent: libc::pid_t) -> SysResult<()> {
    Ok(())
}

/// Not read on macOS yet: the usual default.
pub fn process_umask() -> u32 {
    0o022
}
