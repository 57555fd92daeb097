//! The shared-folder protocol: the guest agent's FUSE client asks, the host's
//! `fs-server` answers, over one vsock stream per share.
//!
//! ```text
//!  host (fs-server)                        guest agent (FUSE client)
//!   | -- Hello{purpose: Share} ------------> |   host opens the stream
//!   | <-- HelloReply ------------------------ |
//!   | -- ShareSetup{tag, mount_point, ..} --> |   agent mounts FUSE there
//!   | <-- ShareReady | ShareFailed(reason) -- |
//!   | <-- FsToHost::Request{id, req}* ------- |   many in flight; ids unique per stream
//!   | -- FsToGuest::Reply{id, reply}* ------> |   in any order (none to Forget)
//!   | -- FsToGuest::Invalidate{..}* --------> |   host-side changes: drop caches
//! ```
//!
//! Node ids: 1 is the share's root; the server hands out others in `Entry`
//! replies and may drop them after `Forget`. Names are raw bytes (Linux file
//! names need not be UTF-8) and never contain `/`. Errors are Linux errno
//! values.
use serde::{Deserialize, Serialize};

pub const ROOT_ID: u64 = 1;

/// Linux's values of the mode and flag bits the protocol carries, for the
/// host side on systems whose `libc` spells them otherwise (macOS).
pub mod linux {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const RENAME_NOREPLACE: u32 = 1;
    pub const O_RDONLY: i32 = 0;
    pub const O_WRONLY: i32 = 0o1;
    pub const O_EXCL: i32 = 0o200;
}
/// Largest read or write in one request (FUSE max_write / max_read).
pub const MAX_IO: u32 = 1 << 20;
/// Entries in one `Readdir` reply with `plus`: the server fills every
/// batch to exactly this many unless the directory ends, so a shorter batch
/// is the last one (the guest relies on it: its directory prefetch stops
/// there, and its readdir answers the end without asking again). 256 holds
/// most directories in one round trip, in about 40 KiB.
pub const READDIRPLUS_MAX: usize = 256;
/// The same without `plus` (names and types only).
pub const READDIR_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSetup {
    /// Names the share in logs and `limactl list`.
    pub tag: String,
    pub mount_point: String,
    pub writable: bool,
    /// Files appear owned by this guest user and group.
    pub uid: u32,
    pub gid: u32,
    /// Where this share's part of the shared-memory device lies, if the VM
    /// has one (see [`ShmRegion`]).
    pub shm: Option<ShmRegion>,
    /// The virtio-serial port (its `name` in `/sys/class/virtio-ports`)
    /// that the host has connected for this share, if the VM has one: the
    /// guest serves the share's frames there instead of on this stream
    /// and answers [`ShareStatus::ReadyOnPort`].
    pub port: Option<String>,
    /// A copy-on-write review layer (`crate::layer`): the guest mounts
    /// this (read-only) share out of sight as the layer's lower folder and
    /// its own view of the layer at `mount_point`. Names the layer; an
    /// existing layer of that name is reused.
    pub layer: Option<String>,
}

/// A range of the VM's ivshmem device (PCI `1af4:1110`, BAR 2) that the
/// host maps too: bulk data of `ReadShm`/`WriteShm` travels through it
/// instead of the stream. The guest cuts it into [`MAX_IO`] slots; offsets
/// in requests (`at`) are relative to the range's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmRegion {
    /// Byte offset of the range within the device.
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareStatus {
    /// Mounted; the share's frames follow on this stream.
    Ready,
    Failed(String),
    /// Mounted; the share's frames go over [`ShareSetup::port`], and this
    /// stream carries nothing more.
    ReadyOnPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Time),
}

/// File attributes as the server sees them (`mode` includes the type bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub mode: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub blksize: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub attr: Attr,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Offset to pass to continue after this entry.
    pub next_offset: u64,
    /// Attributes for readdirplus (`None` for `.`/`..` or on a race).
    pub entry: Option<Entry>,
    /// File type bits (`mode & S_IFMT`).
    pub kind: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub start: u64,
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    Lookup {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Never answered (as in FUSE).
    Forget {
        id: u64,
        nlookup: u64,
    },
    Getattr {
        id: u64,
    },
    Setattr {
        id: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    Readlink {
        id: u64,
    },
    Mkdir {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    Unlink {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Rmdir {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Symlink {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    Rename {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: u64,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        /// RENAME_NOREPLACE / RENAME_EXCHANGE bits.
        flags: u32,
    },
    Link {
        id: u64,
        new_parent: u64,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
    },
    Open {
        id: u64,
        flags: i32,
    },
    Create {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `Read` into the shared-memory range at `at`; answered `Placed(n)`.
    ReadShm {
        fh: u64,
        offset: u64,
        size: u32,
        at: u64,
    },
    /// `Write` of `len` bytes taken from the shared-memory range at `at`;
    /// answered `Written(n)`.
    WriteShm {
        fh: u64,
        offset: u64,
        len: u32,
        at: u64,
    },
    Flush {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Release {
        fh: u64,
    },
    Opendir {
        id: u64,
    },
    /// With attributes (readdirplus) when `plus`.
    Readdir {
        fh: u64,
        offset: u64,
        plus: bool,
    },
    /// `Opendir` + `Readdir` + `Releasedir` in one: a batch of directory
    /// `id` from `offset` (a `next_offset` of an earlier batch, 0 to start)
    /// read through a descriptor of its own. Offsets are the host's
    /// directory cookies, valid across opens.
    ReaddirAt {
        id: u64,
        offset: u64,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Statfs,
    Getlk {
        fh: u64,
        owner: u64,
        lock: Lock,
    },
    /// `wait`: F_SETLKW semantics (the server may answer EAGAIN instead of blocking).
    Setlk {
        fh: u64,
        owner: u64,
        lock: Lock,
        wait: bool,
    },
    /// flock(2)-style whole-file locks.
    Flock {
        fh: u64,
        owner: u64,
        op: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Entry(Entry),
    Attr(Attr),
    Link(#[serde(with = "serde_bytes")] Vec<u8>),
    Opened {
        fh: u64,
    },
    /// The new (or opened) file and its handle. `parent`: the directory's
    /// attributes read right after the create (`None` if that failed); the
    /// guest kernel drops its copy after every create in a directory and
    /// would ask for them before the next one.
    Created {
        entry: Entry,
        fh: u64,
        parent: Option<Attr>,
    },
    /// The answer to `Mkdir`, `Symlink` and `Link`: the new entry, and the
    /// parent's attributes as in `Created`.
    Made {
        entry: Entry,
        parent: Option<Attr>,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// This many bytes were read into shared memory (`ReadShm`).
    Placed(u32),
    Written(u32),
    Dir(Vec<DirEntry>),
    Statfs(Statfs),
    Lock(Lock),
    Ok,
    /// A Linux errno.
    Err(i32),
}

/// Guest → host frames on a share stream (after the setup exchange).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsToHost {
    Request { id: u64, req: FsRequest },
}

/// Host → guest frames on a share stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsToGuest {
    Reply {
        id: u64,
        reply: FsReply,
    },
    /// The node's attributes or data changed on the host.
    InvalidateNode {
        id: u64,
    },
    /// `name` in directory `parent` appeared, vanished or was replaced.
    InvalidateEntry {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The host lost change events (its inotify queue overflowed): no
    /// directory listing the guest keeps can be trusted any more.
    /// `InvalidateNode` for every node follows.
    Overflow,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, read_frame};

    #[test]
    fn fs_messages_round_trip() {
        let t = Time { secs: 1, nanos: 2 };
        let attr = Attr {
            id: 5,
            size: 10,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            mode: 0o100644,
            nlink: 1,
            rdev: 0,
            blksize: 4096,
        };
        let frames = vec![
            FsToGuest::Reply {
                id: 1,
                reply: FsReply::Entry(Entry {
                    attr,
                    generation: 0,
                }),
            },
            FsToGuest::Reply {
                id: 2,
                reply: FsReply::Dir(vec![DirEntry {
                    name: b"a".to_vec(),
                    next_offset: 1,
                    entry: None,
                    kind: 0o040000,
                }]),
            },
            FsToGuest::Reply {
                id: 3,
                reply: FsReply::Err(2),
            },
            FsToGuest::Reply {
                id: 4,
                reply: FsReply::Created {
                    entry: Entry {
                        attr,
                        generation: 0,
                    },
                    fh: 7,
                    parent: Some(Attr { id: 1, ..attr }),
                },
            },
            FsToGuest::Reply {
                id: 5,
                reply: FsReply::Made {
                    entry: Entry {
                        attr,
                        generation: 0,
                    },
                    parent: None,
                },
            },
            FsToGuest::InvalidateEntry {
                parent: 1,
                name: vec![0xff, b'x'],
            },
        ];
        for f in frames {
            let b = encode_frame(&f).unwrap();
            assert_eq!(read_frame::<_, FsToGuest>(&mut &b[..]).unwrap().unwrap(), f);
        }
        let req = FsToHost::Request {
            id: 9,
            req: FsRequest::Write {
                fh: 3,
                offset: 4096,
                data: vec![1; 1 << 20],
            },
        };
        let b = encode_frame(&req).unwrap();
        assert!(b.len() < (1 << 20) + 64);
        assert_eq!(
            read_frame::<_, FsToHost>(&mut &b[..]).unwrap().unwrap(),
            req
        );
    }
}
