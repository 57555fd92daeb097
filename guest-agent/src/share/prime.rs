//! Priming the kernel's dentry cache with a directory the cache just
//! listed.
//!
//! A listing answers lookups without a host round trip, but each lookup
//! still costs a FUSE round trip from the kernel to this agent, about 0.3 ms
//! under TCG: a cold `lstat` of 10,000 files spent 3 s on them. FUSE has no
//! way to push entries into the kernel except readdirplus: each entry of a
//! `READDIRPLUS` reply becomes a dentry with its inode and attributes. So
//! once a listing lands (the kernel has looked up two names there one by
//! one), a thread of ours reads that directory through the mount, and the
//! program's next lookups there never leave the kernel.
//!
//! The requests this thread causes are told apart by its thread id (the
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
use std::sync::Arc;

/// Starts the priming thread for the share mounted at `mount_point`; it
/// takes paths relative to it and ends when the returned sender is dropped.
/// Its thread id goes to `tid`, so requests from it can be told apart.
pub(super) fn spawn(mount_point: &str, tag: &str, tid: Arc<AtomicU32>) -> Option<Sender<PathBuf>> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mount_point = PathBuf::from(mount_point);
    let spawned = std::thread::Builder::new()
        .name("fuse-prime".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
            run(&mount_point, rx)
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!("share {tag}: cannot start the priming thread ({e}); lookups stay one round trip each");
            None
        }
    }
}

fn run(mount_point: &Path, rx: Receiver<PathBuf>) {
    while let Ok(path) = rx.recv() {
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
