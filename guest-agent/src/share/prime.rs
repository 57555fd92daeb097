//! Priming the kernel's dentry cache with a directory the cache just
//! listed.
//!
//! A listing answers lookups without a host round trip, but each lookup
//! still costs a FUSE round trip from the kernel to this agent, about 0.3 ms
//! under TCG: a cold `lstat` of 10,000 files spent 3 s on them. FUSE has no
//! way to push entries into the kernel except readdirplus: each entry of a
//! `READDIRPLUS` reply becomes a dentry with its inode and attributes. So
//! once a listing lands (the kernel has looked up two names there one by
//! one, or it was fetched ahead as a subdirectory of such a directory), one
//! of a few threads of ours reads that directory through the mount, and the
//! program's next lookups there never leave the kernel.
//!
//! The requests these threads cause are told apart by thread id (the
//! `pid` FUSE reports is the caller's thread): its `OPENDIR` and
//! `READDIRPLUS` are answered from the listing just fetched, with no host
//! round trip (see `Shared::prime_readdirplus`). The directory is opened by
//! path, rebuilt from the names the kernel was handed; opening it by handle
//! (`open_by_handle_at`) would be simpler but makes the kernel drop the
//! directory's own dentry, and the lookup that brings it back would count
//! as a miss in the parent, priming every ancestor in turn. Readdirplus must
//! be used for every page, not only the first (no `FUSE_READDIRPLUS_AUTO`).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use lima_proto::sync::lock;

/// Priming threads per share: directories fetched ahead arrive many at a
/// time, and each read waits on FUSE round trips.
pub(super) const THREADS: usize = 4;

/// The priming threads' ids (0: not started).
pub(super) type Tids = Arc<[AtomicU32; THREADS]>;

/// Whether the request came from one of the priming threads.
pub(super) fn is_primer(tids: &Tids, pid: u32) -> bool {
    pid != 0 && tids.iter().any(|t| t.load(Ordering::Relaxed) == pid)
}

/// Starts the priming threads for the share mounted at `mount_point`; they
/// take paths relative to it and end when the returned sender is dropped.
/// Their thread ids go to `tids`, so requests from them can be told apart.
pub(super) fn spawn(mount_point: &str, tag: &str, tids: Tids) -> Option<Sender<PathBuf>> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..THREADS {
        let (mount_point, rx, tids) = (PathBuf::from(mount_point), rx.clone(), tids.clone());
        let spawned = std::thread::Builder::new()
            .name("fuse-prime".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tids[i].store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
                run(&mount_point, &rx)
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::warn!("share {tag}: cannot start a priming thread ({e})"),
        }
    }
    if started == 0 {
        tracing::warn!("share {tag}: no priming thread; lookups stay one round trip each");
        return None;
    }
    Some(tx)
}

fn run(mount_point: &Path, rx: &Mutex<Receiver<PathBuf>>) {
    loop {
        let next = lock(rx).recv();
        let Ok(path) = next else { return };
        if let Err(e) = read_dir(&mount_point.join(&path)) {
            tracing::debug!("share: priming {}: {e}", path.display());
        }
    }
}

/// Reads directory `path` to the end, entries unused.
fn read_dir(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        entry?;
    }
    Ok(())
}
