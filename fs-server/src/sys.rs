//! Every raw syscall the server makes, in one place (Linux only).
//!
//! Why raw `libc`: the server needs calls `std` does not offer (`openat2`,
//! `renameat2`, OFD locks, `getdents64`, inotify) and it needs them relative to
//! directory fds, never by path. Each wrapper takes and returns owning types
//! (`OwnedFd`) or borrowed fds, and reports failure as a plain errno (`i32`),
//! which is what the protocol sends back to the guest.
//!
//! Names passed in are `&CStr`: the caller has already checked that they are
//! single path components (see `crate::fs::check_name`).
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An errno value; what `FsReply::Err` carries.
pub type Errno = i32;
pub type SysResult<T> = Result<T, Errno>;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Turns a `-1`-on-error return value into `Err(errno)`.
fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn check_fd(ret: libc::c_long) -> SysResult<OwnedFd> {
    if ret < 0 {
        return Err(errno());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
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

/// Opens a path the server itself chose (the share root, `/proc/self/fd`).
pub fn open_path(path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let ret = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
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

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
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
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never a link's target.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
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
    Ok(unsafe { st.assume_init() })
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is written by the call on success; fstatvfs accepts O_PATH fds.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: the call succeeded.
    Ok(unsafe { st.assume_init() })
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

/// One entry of a `getdents64` buffer.
pub struct RawDirent<'a> {
    pub ino: u64,
    /// The cookie to seek to for the entry after this one.
    pub off: u64,
    pub typ: u8,
    pub name: &'a [u8],
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

pub fn flock(fd: BorrowedFd<'_>, op: i32) -> SysResult<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;
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
