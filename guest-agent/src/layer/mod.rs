//! Copy-on-write review layers: the guest half of `limactl shell --sync
//! DIR` (`lima_proto::layer`).
//!
//! ```text
//!  command in the guest
//!        │  (guest user)
//!        ▼
//!  view: FUSE at DIR's guest path ── writes ──▶ upper folder on the guest's disk
//!        │ reads of what was not written             + journal (whiteouts, ...)
//!        ▼
//!  lower: the read-only vsockfs share of DIR, mounted out of sight
//! ```
//!
//! The view works like overlayfs, in userspace because the lower folder is
//! the host's and may change underneath (undefined for the kernel's
//! overlayfs): reads fall through to the lower folder until a path is
//! copied up; a write, truncate, chmod or utimens copies it up first;
//! deleting a lower entry leaves a whiteout; a directory made where a lower
//! one was deleted is opaque. Renaming a lower file or symlink copies it up
//! under its new name and whites out the old one, remembering the origin,
//! so the review can say "renamed"; renaming a lower directory is refused
//! with `EXDEV` (as overlayfs without `redirect_dir`: `mv` then copies).
//! Hard links are refused with `EXDEV` too.
//!
//! Nothing is scanned when a view starts: the lower folder is only stat-ed
//! and listed where the command looks. The first time a lower file is
//! read or copied up, its state (the host's stat, through the share) is
//! recorded, so that applying can refuse a host file changed since. All
//! records go to an append-only journal ([`journal`]), so a layer outlives
//! its view: listed, read, applied and discarded without the lower folder.
//!
//! Modules: [`store`] (folders, the layer objects), [`journal`],
//! [`overlay`] (the rules), [`view`] (FUSE), [`mount`], [`changes`],
//! [`service`] (the Layer stream), [`path`].
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) mod changes;
pub(crate) mod journal;
pub(crate) mod mount;
pub(crate) mod overlay;
pub(crate) mod path;
pub(crate) mod service;
pub(crate) mod store;
#[cfg(test)]
mod tests;
pub(crate) mod view;

pub(crate) use service::serve;
pub(crate) use store::Store;

use journal::Record;
use lima_proto::sync::lock;

/// Where the lower share of layer `id` is mounted.
pub(crate) fn lower_path(id: &str) -> PathBuf {
    store::lowers().join(id).join("lower")
}

/// Mounts the view of layer `id` (made if new, reused if not) over `lower`
/// at `mount_point`.
pub(crate) fn start_view(
    store: &Store,
    id: &str,
    lower: &Path,
    mount_point: &str,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    let layer = store.open(id, true)?;
    if store.mounted(id) {
        return Err(format!(
            "layer {id:?} is in use by another session (its view is mounted)"
        ));
    }
    {
        let mut inner = lock(&layer.inner);
        if inner.state.mount_point.as_deref() != Some(mount_point) {
            inner
                .record(Record::Mount(mount_point.to_string()))
                .and_then(|()| inner.journal.sync())
                .map_err(|e| lima_proto::errors::error_chain(&e))?;
        }
    }
    let overlay = Arc::new(overlay::Overlay::new(layer, lower.to_path_buf()));
    let view = mount::mount_view(overlay, Path::new(mount_point), uid, gid)?;
    store
        .add_view(id, view)
        .map_err(|_| format!("layer {id:?} is in use by another session"))
}

/// Unmounts the view of layer `id`, keeping the layer.
pub(crate) fn stop_view(store: &Store, id: &str) {
    store.unmount(id);
}
