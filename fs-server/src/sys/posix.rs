//! Calls every Unix host has, with the same types and meaning on each,
//! written once for all of them (see the module docs of `sys`).
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use super::types::{Errno, SysResult};

pub(super) fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Turns a `-1`-on-error return value into `Err(errno)`.
pub(super) fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

pub(super) fn check_fd(ret: libc::c_long) -> SysResult<OwnedFd> {
    if ret < 0 {
        return Err(errno());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Opens a path the server itself chose (the share root, `/proc/self/fd`).
pub fn open_path(path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let ret = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    check_fd(ret.into())
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated. mkdirat never follows a trailing symlink.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> SysResult<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated. The target is stored, not resolved.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| libc::EFBIG)?;
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// Sets times on an open file (`futimens`).
pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `times` points at two timespecs, as the call requires.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let offset = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    let offset = i64::try_from(offset).map_err(|_| libc::EFBIG)?;
    // SAFETY: `buf` is readable for `buf.len()` bytes.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// `close(dup(fd))`: gives the underlying filesystem its flush-on-close
/// without closing our descriptor (FUSE flush semantics, as virtiofsd).
pub fn flush(fd: BorrowedFd<'_>) -> SysResult<()> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    // SAFETY: we own `dup` and close it exactly once here.
    check(unsafe { libc::close(dup.into_raw_fd()) }).map(drop)
}

pub fn lseek_set(fd: BorrowedFd<'_>, offset: u64) -> SysResult<()> {
    let offset = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: plain syscall on a borrowed fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, libc::SEEK_SET) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

pub fn flock(fd: BorrowedFd<'_>, op: i32) -> SysResult<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

fn nofile_rlimit() -> SysResult<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every node the guest
/// has looked up holds an fd.
pub fn raise_nofile_limit() -> SysResult<u64> {
    let mut lim = nofile_rlimit()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// The soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> SysResult<u64> {
    Ok(nofile_rlimit()?.rlim_cur)
}

/// Maps `len` bytes of `fd` from `offset`, shared and read-write.
pub fn map_shared(fd: BorrowedFd<'_>, offset: u64, len: usize) -> SysResult<*mut u8> {
    let offset = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: a fresh mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p.cast())
    }
}

/// Undoes [`map_shared`].
pub fn unmap(p: *mut u8, len: usize) {
    // SAFETY: `p`/`len` came from `map_shared` and nothing uses them after.
    unsafe { libc::munmap(p.cast(), len) };
}

/// Lets `fd` survive `exec` (clears `FD_CLOEXEC`): how a child is handed
/// the fds it is named on its command line. Async-signal-safe, for
/// `pre_exec`.
pub fn clear_cloexec(fd: RawFd) -> SysResult<()> {
    // SAFETY: fcntl(F_SETFD) on an fd number; a closed one gives EBADF.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Whether `fd` is open in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: fcntl(F_GETFD) only reads the fd's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// The signal a share server takes as "end the stream and go": its
/// parent-death signal on Linux, and what a host stops it with.
pub const END_SIGNAL: libc::c_int = libc::SIGTERM;

fn end_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill the set we own; an all-zero
    // sigset_t is a valid value to start from.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, END_SIGNAL);
        set
    }
}

/// Blocks [`END_SIGNAL`] in the calling thread (and so in every thread it
/// starts later, and across exec): it stays pending until
/// [`wait_end_signal`] takes it. Async-signal-safe (for `pre_exec`).
pub fn block_end_signal() -> SysResult<()> {
    let set = end_set();
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(rc);
    }
    Ok(())
}

/// Waits until [`END_SIGNAL`] (blocked in every thread) is sent to the
/// process, and takes it (`sigwait`, i.e. `rt_sigtimedwait`).
pub fn wait_end_signal() -> SysResult<()> {
    let set = end_set();
    let mut sig = 0;
    loop {
        // SAFETY: `set` and `sig` are valid for the call.
        match unsafe { libc::sigwait(&set, &mut sig) } {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}
