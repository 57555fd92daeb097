//! The calls the server is built on, as Linux has them: `openat2`
//! (`RESOLVE_BENEATH`), `renameat2`, `getdents64`, inotify, `O_PATH` fds
//! (stat'ed with `AT_EMPTY_PATH`, reopened through `/proc/self/fd`), OFD
//! locks, `fdatasync`.
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::posix::{check, check_fd, errno};
use super::types::{RawDirent, Stat, StatVfs, SysResult};

/// Whether this host can serve shares at all (the availability probe
/// `Server::new` asks first).
pub const SUPPORTED: bool = true;

#[cfg(test)]
pub use libc::IN_ISDIR;
pub use libc::{
    F_OFD_GETLK, F_OFD_SETLK, F_RDLCK, F_UNLCK, F_WRLCK, IN_ATTRIB, IN_CREATE, IN_DELETE,
    IN_DELETE_SELF, IN_EXCL_UNLINK, IN_IGNORED, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO,
    IN_MOVE_SELF, IN_ONLYDIR, IN_Q_OVERFLOW, O_PATH, RENAME_EXCHANGE, RENAME_NOREPLACE, S_IFBLK,
    S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};

#[expect(
    clippy::unnecessary_cast,
    reason = "libc's field types differ between Linux architectures; on each some casts are no-ops"
)]
fn stat_of(st: &libc::stat) -> Stat {
    Stat {
        st_dev: st.st_dev as u64,
        st_ino: st.st_ino as u64,
        st_mode: st.st_mode as u32,
        st_nlink: st.st_nlink as u64,
        st_size: st.st_size as i64,
        st_blocks: st.st_blocks as i64,
        st_rdev: st.st_rdev as u64,
        st_blksize: st.st_blksize as i64,
        st_atime: st.st_atime as i64,
        st_atime_nsec: st.st_atime_nsec as i64,
        st_mtime: st.st_mtime as i64,
        st_mtime_nsec: st.st_mtime_nsec as i64,
        st_ctime: st.st_ctime as i64,
        st_ctime_nsec: st.st_ctime_nsec as i64,
    }
}

#[expect(
    clippy::unnecessary_cast,
    reason = "libc's field types differ between Linux architectures; on each some casts are no-ops"
)]
fn statvfs_of(st: &libc::statvfs) -> StatVfs {
    StatVfs {
        f_bsize: st.f_bsize as u64,
        f_frsize: st.f_frsize as u64,
        f_blocks: st.f_blocks as u64,
        f_bfree: st.f_bfree as u64,
        f_bavail: st.f_bavail as u64,
        f_files: st.f_files as u64,
        f_ffree: st.f_ffree as u64,
        f_namemax: st.f_namemax as u64,
    }
}

/// `struct open_how` from `linux/openat2.h` (libc's is `#[non_exhaustive]`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Set once `openat2` answered ENOSYS (kernel < 5.6): use the fallback from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Resolution rules for everything the guest names: stay beneath the
/// directory fd and follow no symlink at all (magic links included).
const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

/// Opens `name` (one component) beneath `dir` without following symlinks.
/// With `O_PATH | O_NOFOLLOW` a symlink yields an fd on the link itself;
/// otherwise opening a symlink fails with ELOOP.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow {
            flags: flags as u32 as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                u64::from(mode)
            } else {
                0
            },
            resolve: RESOLVE,
        };
        // SAFETY: `how` is a valid open_how of the size we pass; `name` is NUL-terminated;
        // the kernel does not keep either pointer after the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match check_fd(ret) {
            Err(libc::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // EAGAIN: RESOLVE_BENEATH raced with a rename elsewhere; the caller may retry.
            other => return other,
        }
    }
    // Fallback: a single component with O_NOFOLLOW cannot leave `dir` either.
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let ret = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) };
    check_fd(ret.into())
}

/// Reopens the file behind `fd` (often an `O_PATH` fd) with new `flags`,
/// through `/proc/self/fd/N`: the magic link jumps straight to the inode, no
/// path is walked. `proc_fd` is an fd on `/proc/self/fd`. Never call this on
/// a symlink node (the caller checks the type).
pub fn reopen(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let name = fd_name(fd);
    let flags = (flags | libc::O_CLOEXEC) & !(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_EXCL);
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let ret = unsafe { libc::openat(proc_fd.as_raw_fd(), name.as_ptr(), flags) };
    check_fd(ret.into())
}

fn fd_name(fd: BorrowedFd<'_>) -> std::ffi::CString {
    std::ffi::CString::new(fd.as_raw_fd().to_string()).expect("digits contain no NUL")
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the empty string is NUL-terminated; `st` is large enough and is
    // fully written by the kernel when the call succeeds.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: the call succeeded, so the kernel initialised `st`.
    Ok(stat_of(&unsafe { st.assume_init() }))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never a link's target.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated; `st` is written by the kernel on success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: the call succeeded, so the kernel initialised `st`.
    Ok(stat_of(&unsafe { st.assume_init() }))
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<StatVfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is written by the call on success; fstatvfs accepts O_PATH fds.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: the call succeeded.
    Ok(statvfs_of(&unsafe { st.assume_init() }))
}

/// Reads the target of a symlink held as an `O_PATH | O_NOFOLLOW` fd.
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the empty name with an
    // O_PATH fd reads that link (Linux >= 2.6.39).
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated; renameat2 follows no symlinks in
    // single-component names.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Hard-links the inode behind `fd` (an `O_PATH` fd) as `dir/name`, through
/// `/proc/self/fd/N` so that no capability is needed (virtiofsd does the same).
pub fn link_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> SysResult<()> {
    let src = fd_name(fd);
    // SAFETY: both names are NUL-terminated. AT_SYMLINK_FOLLOW makes the magic
    // link resolve to our own fd's inode; nothing else is walked.
    check(unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            src.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `chmod` of the inode behind an `O_PATH` fd (not a symlink: Linux cannot).
pub fn chmod_fd_path(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    let name = fd_name(fd);
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::fchmodat(proc_fd.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
        .map(drop)
}

/// Sets times on the inode behind an `O_PATH` fd, symlinks included
/// (`utimensat(fd, "", AT_EMPTY_PATH)`), falling back to `/proc/self/fd/N`
/// on kernels that refuse the empty path.
pub fn utimens_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
    is_symlink: bool,
) -> SysResult<()> {
    // SAFETY: the empty name is NUL-terminated; `times` points at two timespecs.
    let ret = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Err(libc::EINVAL | libc::ENOENT) if !is_symlink => {
            let name = fd_name(fd);
            // SAFETY: as above; the magic link resolves to our own fd's inode.
            check(unsafe { libc::utimensat(proc_fd.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) })
                .map(drop)
        }
        other => other.map(drop),
    }
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    // SAFETY: plain syscalls on a borrowed fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// Fills `buf` with `linux_dirent64` records from the directory's current
/// position; `Ok(0)` at the end.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Splits a `getdents64` result into entries (checked: a short or odd buffer
/// ends the walk instead of reading past it).
pub fn parse_dirents(buf: &[u8]) -> Vec<RawDirent<'_>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    const HEADER: usize = 19;
    while pos + HEADER <= buf.len() {
        let rec = &buf[pos..];
        let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
        let off = u64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes"));
        let reclen = usize::from(u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")));
        let typ = rec[18];
        if reclen < HEADER || reclen > rec.len() {
            break;
        }
        let name_field = &rec[HEADER..reclen];
        let len = name_field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_field.len());
        out.push(RawDirent {
            ino,
            off,
            typ,
            name: &name_field[..len],
        });
        pos += reclen;
    }
    out
}

/// `fcntl(F_OFD_GETLK / F_OFD_SETLK)`: locks owned by the open file
/// description, so two of our descriptors conflict like two processes.
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &mut libc::flock) -> SysResult<()> {
    // SAFETY: `lock` is a valid, exclusively borrowed flock struct for the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) }).map(drop)
}

/// A non-blocking inotify instance.
pub fn inotify_init() -> SysResult<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    check_fd(fd.into())
}

/// Watches the directory behind `fd` (an `O_PATH` fd) via `/proc/self/fd/N`.
pub fn inotify_watch(inotify: BorrowedFd<'_>, fd: BorrowedFd<'_>, mask: u32) -> SysResult<i32> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let path = std::ffi::CString::new(path).expect("no NUL");
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) })
}

pub fn inotify_unwatch(inotify: BorrowedFd<'_>, wd: i32) {
    // SAFETY: plain syscall; a stale wd just gives EINVAL, which we ignore.
    unsafe { libc::inotify_rm_watch(inotify.as_raw_fd(), wd) };
}

/// Makes this (forked, not yet exec'd) child end with the thread that
/// started it: a share server never outlives its host agent. The signal
/// is [`END_SIGNAL`](super::END_SIGNAL), which the server blocks and
/// waits for to end its stream cleanly (a SIGKILL would close it with
/// requests unread, which the vsock relay does not pass on). Call from
/// `pre_exec`, with `parent` the pid the parent had before the fork:
/// async-signal-safe syscalls only. A parent already gone by then sent
/// no signal, so the child sends it to itself (it stays pending, blocked,
/// across exec).
pub fn die_with_parent(parent: libc::pid_t) -> SysResult<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            super::END_SIGNAL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: getppid takes nothing.
    let now = unsafe { libc::getppid() };
    if now != parent {
        // To the process, not the thread (as `raise` would): the thread
        // that takes it after exec is not this one.
        // SAFETY: kill and getpid take integers only.
        check(unsafe { libc::kill(libc::getpid(), super::END_SIGNAL) })?;
    }
    Ok(())
}

/// Marks every fd from 3 up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11): a child then inherits only what it
/// is handed afterwards, not whatever its parent inherited. Older kernels
/// refuse, and leave the rest to `O_CLOEXEC`. For `pre_exec`: one syscall.
pub fn cloexec_above_stdio() {
    // SAFETY: close_range takes integers only; it changes fd flags, not
    // memory.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// The process umask, read without changing it (`/proc/self/status`), or 022.
pub fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::open_path;
    use std::os::fd::AsFd;

    /// Both paths of `open_beneath` refuse to follow a symlink and open
    /// plain entries. (Forcing the fallback is process-wide, but it is as
    /// strict as openat2 for single components, so other tests are unaffected.)
    #[test]
    fn open_beneath_never_follows_with_or_without_openat2() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("l")).unwrap();
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let root = open_path(&c, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        for fallback in [false, true] {
            NO_OPENAT2.store(fallback, Ordering::Relaxed);
            assert!(open_beneath(root.as_fd(), c"f", libc::O_RDONLY, 0).is_ok());
            assert_eq!(
                open_beneath(root.as_fd(), c"l", libc::O_RDONLY, 0).unwrap_err(),
                libc::ELOOP
            );
            let link = open_beneath(root.as_fd(), c"l", libc::O_PATH, 0).unwrap();
            assert_eq!(
                fstat(link.as_fd()).unwrap().st_mode & libc::S_IFMT,
                libc::S_IFLNK
            );
            assert_eq!(readlink(link.as_fd()).unwrap(), b"/etc/hostname");
            assert_eq!(
                open_beneath(root.as_fd(), c"l", libc::O_CREAT | libc::O_WRONLY, 0o644)
                    .unwrap_err(),
                libc::ELOOP
            );
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
        // openat2 itself refuses multi-component escapes, should a name ever get through.
        assert_eq!(
            open_beneath(root.as_fd(), c"../x", libc::O_PATH, 0).unwrap_err(),
            libc::EXDEV
        );
        assert_eq!(
            open_beneath(root.as_fd(), c"/etc", libc::O_PATH, 0).unwrap_err(),
            libc::EXDEV
        );
    }

    #[test]
    fn dirents_parse_and_stop_at_torn_records() {
        let mut buf = Vec::new();
        for (ino, off, name) in [(1u64, 10u64, &b"."[..]), (2, 20, b"file")] {
            let reclen = (19 + name.len() + 1 + 7) & !7;
            buf.extend_from_slice(&ino.to_ne_bytes());
            buf.extend_from_slice(&off.to_ne_bytes());
            buf.extend_from_slice(&(reclen as u16).to_ne_bytes());
            buf.push(libc::DT_REG);
            let mut n = name.to_vec();
            n.resize(reclen - 19, 0);
            buf.extend_from_slice(&n);
        }
        let mut torn = buf.clone();
        torn.extend_from_slice(&[0; 16]); // header cut short
        let ents = parse_dirents(&torn);
        assert_eq!(ents.len(), 2);
        assert_eq!(
            (ents[1].ino, ents[1].off, ents[1].name),
            (2, 20, &b"file"[..])
        );
        let mut bad = buf.clone();
        bad[16] = 200; // reclen past the end
        assert!(parse_dirents(&bad).is_empty());
    }
}
