//! What the sys calls answer in, the same shape on every host: libc's
//! `stat` and `statvfs` differ in field types between Linux and macOS (and
//! between Linux architectures), so each platform converts into these.

/// An errno value; what `FsReply::Err` carries.
pub type Errno = i32;
pub type SysResult<T> = Result<T, Errno>;

/// The fields of `struct stat` the server uses, named as in libc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub st_dev: u64,
    pub st_ino: u64,
    /// File type and permission bits (`S_IFMT` and `0o7777`).
    pub st_mode: u32,
    pub st_nlink: u64,
    pub st_size: i64,
    pub st_blocks: i64,
    pub st_rdev: u64,
    pub st_blksize: i64,
    pub st_atime: i64,
    pub st_atime_nsec: i64,
    pub st_mtime: i64,
    pub st_mtime_nsec: i64,
    pub st_ctime: i64,
    pub st_ctime_nsec: i64,
}

/// The fields of `struct statvfs` the server uses, named as in libc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatVfs {
    pub f_bsize: u64,
    pub f_frsize: u64,
    pub f_blocks: u64,
    pub f_bfree: u64,
    pub f_bavail: u64,
    pub f_files: u64,
    pub f_ffree: u64,
    pub f_namemax: u64,
}

/// One directory entry as the host lists it.
pub struct RawDirent<'a> {
    pub ino: u64,
    /// The cookie to seek to for the entry after this one.
    pub off: u64,
    pub typ: u8,
    pub name: &'a [u8],
}
