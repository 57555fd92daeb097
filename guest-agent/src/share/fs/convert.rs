//! Conversions between the protocol's types and fuser's: attributes,
//! times, file types, and a host reply that is not the answer a request
//! expects into the errno the kernel gets. Apart from the rest because they
//! hold no state and need no mount to test; nothing here knows of the
//! callbacks, the caches or the channel.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use lima_proto::fs::{Attr, FsReply, SetTime, Time};

pub(super) fn errno(n: i32) -> Errno {
    Errno::from_i32(n)
}

/// The error to give the kernel for a reply that is not the answer `op`
/// expects: the host's own errno, or `EIO` (logged) for a reply of another
/// kind. The tail of every callback's match on the host's reply.
pub(super) fn error_of(op: &str, r: &FsReply) -> Errno {
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
pub(super) fn made_in(r: &FsReply) -> Option<Attr> {
    match r {
        FsReply::Made { parent, .. } => *parent,
        _ => None,
    }
}

/// An inode number to show for an entry the host sent without attributes
/// (only `d_ino` in `readdir`, never used by the kernel to find a node):
/// the directory itself for `.`, otherwise a stable nonzero hash of the
/// name, with the top bit set to stay clear of the host's small ids.
pub(super) fn placeholder_ino(dir: u64, name: &[u8]) -> u64 {
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
pub(super) fn negative_attr() -> FileAttr {
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

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
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
