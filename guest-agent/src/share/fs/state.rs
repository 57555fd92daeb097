//! [`Shared`]: what the session threads, the reply callbacks and the tasks
//! of one share hold in common, with the bookkeeping of what the kernel
//! was told (attribute snapshots for the check at open, directory
//! attributes from change replies). The other files of this module give it
//! their behaviour; this one holds the data and the few operations all of
//! them need, so that each of them can import it and none of them imports
//! another to reach it.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{FileAttr, INodeNo, Notifier};
use lima_proto::fs::{Attr, DirEntry, Time};
use lima_proto::sync::lock;

use super::convert::to_file_attr;
use crate::share::cache::{self, Cache};
use crate::share::client::Client;
use crate::share::fresh::{Fresh, Sent};
use crate::share::{prime, shm};

/// How long the kernel may trust entries (positive and negative) and
/// attributes. Long on purpose: the host invalidates what changes.
pub(super) const TTL: Duration = Duration::from_secs(3600);

/// What the kernel was last told about a file's data, to decide at open
/// whether its page cache is still good.
pub(super) struct Snapshot {
    mtime: Time,
    size: u64,
    /// Written through this mount since: the page cache took those writes
    /// too, so a changed mtime/size is ours and no reason to drop it.
    guest_wrote: bool,
}

/// Directory entries fetched from the host but not yet handed to the kernel
/// (the host answers in batches of its choosing; the kernel asks with a
/// buffer of its own, usually one page).
pub(super) struct DirBuf {
    /// Offset of the first entry in `entries`.
    pub(super) offset: u64,
    pub(super) plus: bool,
    pub(super) entries: VecDeque<DirEntry>,
    /// The host's batch was short: the directory ends after `entries`.
    pub(super) last: bool,
}

impl DirBuf {
    /// Whether what is buffered answers a read from `offset` (entries from
    /// there, or the end, known from a short batch).
    pub(super) fn covers(&self, offset: u64, plus: bool) -> bool {
        self.offset == offset && (!self.entries.is_empty() || self.last) && (self.plus || !plus)
    }
}

/// State the session threads, the reply callbacks and the tasks share.
pub(in crate::share) struct Shared {
    pub(super) client: Arc<Client>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) snapshots: Mutex<HashMap<u64, Snapshot>>,
    pub(super) dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirBuf>>>>,
    /// Directory listings and node reference counts (see [`cache`]).
    pub(in crate::share) cache: Mutex<Cache>,
    /// Set once the FUSE handshake is done.
    pub(in crate::share) notifier: OnceLock<Notifier>,
    /// Directories to read through the mount once listed ([`crate::share::prime`]).
    pub(in crate::share) primer: Mutex<Option<std::sync::mpsc::Sender<std::path::PathBuf>>>,
    /// The priming threads' ids: their opendir is answered from the
    /// listing even if some names in it are unknown (they are left out).
    pub(in crate::share) primer_tids: prime::Tids,
    /// Directories opened with a listing: served without the host.
    pub(super) local_dirs: Mutex<HashMap<u64, LocalDir>>,
    pub(super) next_local_dir: AtomicU64,
    /// Handles of directories read from the host (see [`LOCAL_FH`]).
    pub(super) next_dir_fh: AtomicU64,
    /// Where each directory the kernel was handed sits, `id -> (parent,
    /// name)`, so the priming thread can open it by path.
    pub(super) dir_names: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// Lookups the kernel sent (whatever answered them).
    pub(in crate::share) lookups: AtomicU64,
    /// Host invalidations handed to the kernel so far.
    pub(in crate::share) invalidated: AtomicU64,
    /// Slots of shared memory for read and write data, if the VM has it.
    pub(super) shm: Option<Arc<shm::Shm>>,
    /// Directory attributes from change replies (see [`crate::share::fresh`]).
    pub(super) fresh: Mutex<Fresh>,
}

/// A directory opened while its listing was live: a snapshot of the
/// listing, read at offsets of our own (the index of the next entry; `.`
/// and `..` come first).
pub(super) struct LocalDir {
    pub(super) dir: u64,
    pub(super) entries: cache::Names,
    /// Opened by a priming thread, which only wants the kernel to get what
    /// the listing still holds.
    pub(super) primer: bool,
}

/// Handles of [`LocalDir`]s are numbered from here; those of directories
/// read from the host (with `ReaddirAt`, no host handle) count up from 1.
pub(super) const LOCAL_FH: u64 = 1 << 63;

impl Shared {
    /// A share's state before the FUSE handshake: no listings, no handles.
    pub(super) fn new(client: Arc<Client>, uid: u32, gid: u32, shm: Option<Arc<shm::Shm>>) -> Self {
        Shared {
            client,
            uid,
            gid,
            snapshots: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
            notifier: OnceLock::new(),
            primer: Mutex::new(None),
            primer_tids: Default::default(),
            local_dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
            next_local_dir: AtomicU64::new(LOCAL_FH),
            dir_names: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            shm,
            fresh: Mutex::new(Fresh::default()),
        }
    }

    /// Converts attributes for the kernel and remembers what it was told.
    pub(super) fn file_attr(&self, a: &Attr) -> FileAttr {
        let mut snaps = lock(&self.snapshots);
        let snap = snaps.entry(a.id).or_insert(Snapshot {
            mtime: a.mtime,
            size: a.size,
            guest_wrote: false,
        });
        if snap.mtime != a.mtime || snap.size != a.size {
            *snap = Snapshot {
                mtime: a.mtime,
                size: a.size,
                guest_wrote: false,
            };
        }
        drop(snaps);
        to_file_attr(a, self.uid, self.gid)
    }

    /// At open: may the kernel keep its page cache for `id`? If the file
    /// changed behind our back, also drop the cached attributes (size!).
    pub(super) fn still_cached(&self, id: u64, a: &Attr) -> bool {
        let mut snaps = lock(&self.snapshots);
        let keep = match snaps.get(&id) {
            Some(s) if s.mtime == a.mtime && s.size == a.size => true,
            Some(s) => s.guest_wrote,
            None => false,
        };
        snaps.insert(
            id,
            Snapshot {
                mtime: a.mtime,
                size: a.size,
                guest_wrote: false,
            },
        );
        drop(snaps);
        if !keep {
            if let Some(n) = self.notifier.get() {
                // Attributes only (offset < 0): never blocks on page locks.
                let _ = n.inval_inode(INodeNo(id), -1, 0);
            }
        }
        keep
    }

    pub(super) fn wrote(&self, id: u64) {
        if let Some(s) = lock(&self.snapshots).get_mut(&id) {
            s.guest_wrote = true;
        }
    }

    /// A request that changes directories `dirs` (see [`Fresh::sending`])
    /// is about to be sent.
    pub(super) fn changing(&self, dirs: &[u64], everywhere: bool) -> Sent {
        lock(&self.fresh).sending(dirs, everywhere)
    }

    /// Its reply is being handled, before the kernel sees it.
    pub(super) fn changed(&self, sent: Sent, parent: Option<Attr>) {
        lock(&self.fresh).answered(sent, parent);
    }
}
