//! Where layers live on the guest's disk, and the one [`Layer`] object per
//! layer that the view and the Layer service share.
//!
//! ```text
//! /var/lib/lima-guest-agent/layers/   0700 root
//!   ID/upper/     the layer's files (what the command wrote)
//!   ID/work/      copy-ups in progress (renamed into upper/ when whole)
//!   ID/journal    see `journal`
//! /run/lima-guest-agent/layers/ID/lower   the read-only share, out of sight
//! ```
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use lima_proto::sync::lock;

use super::journal::{Journal, JournalError, Record, State};
use super::mount::ViewMount;

/// Layers on the guest's disk (`/var` is the data disk on our images).
pub(crate) const LAYERS: &str = "/var/lib/lima-guest-agent/layers";
/// Where lower shares are mounted, out of the guest user's way.
pub(crate) const LOWERS: &str = "/run/lima-guest-agent/layers";

/// A folder of layers.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub root: PathBuf,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            root: test_root().map_or_else(|| PathBuf::from(LAYERS), |r| r.join("layers")),
        }
    }
}

/// The folder of lower shares.
pub(crate) fn lowers() -> PathBuf {
    test_root().map_or_else(|| PathBuf::from(LOWERS), |r| r.join("lowers"))
}

/// Tests keep the default store and lowers in a folder of their own.
fn test_root() -> Option<PathBuf> {
    cfg!(test)
        .then(|| std::env::temp_dir().join(format!("lima-layers-test-{}", std::process::id())))
}

/// One layer: its folders and its records.
pub(crate) struct Layer {
    pub id: String,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub inner: Mutex<Inner>,
}

pub(crate) struct Inner {
    pub state: State,
    pub journal: Journal,
}

impl Inner {
    /// Journals and applies one event.
    pub(crate) fn record(&mut self, r: Record) -> Result<(), JournalError> {
        self.journal.append(std::slice::from_ref(&r))?;
        self.state.apply(r);
        Ok(())
    }
}

/// What the agent holds: each layer opened (by folder), and the views
/// mounted.
#[derive(Default)]
struct Registry {
    layers: HashMap<PathBuf, Arc<Layer>>,
    views: HashMap<PathBuf, ViewMount>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Checks a layer id from the host: it names a folder.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a layer id (1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`)"
        ))
    }
}

fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

impl Store {
    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The layer `id`, loaded once; with `create`, made if missing.
    pub(crate) fn open(&self, id: &str, create: bool) -> Result<Arc<Layer>, String> {
        check_id(id)?;
        let dir = self.dir(id);
        let mut reg = lock(&REGISTRY);
        if let Some(l) = reg.layers.get(&dir) {
            return Ok(l.clone());
        }
        if !dir.is_dir() {
            if !create {
                return Err(format!("no layer {id:?} in this guest"));
            }
            if let Some(parent) = dir.parent() {
                private_dir(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
        }
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&dir, &upper] {
            private_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        // Copy-ups a crash left half done.
        let _ = std::fs::remove_dir_all(&work);
        private_dir(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let (journal, state) =
            Journal::load(&dir.join("journal")).map_err(|e| lima_proto::errors::error_chain(&e))?;
        let layer = Arc::new(Layer {
            id: id.to_string(),
            upper,
            work,
            inner: Mutex::new(Inner { state, journal }),
        });
        reg.layers.insert(dir, layer.clone());
        Ok(layer)
    }

    /// Ids of the layers on disk.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("upper").is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_id(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    /// Whether the layer's view is mounted.
    pub(crate) fn mounted(&self, id: &str) -> bool {
        lock(&REGISTRY).views.contains_key(&self.dir(id))
    }

    /// Keeps a mounted view until [`Store::unmount`].
    pub(crate) fn add_view(&self, id: &str, view: ViewMount) -> Result<(), ViewMount> {
        let mut reg = lock(&REGISTRY);
        let dir = self.dir(id);
        if reg.views.contains_key(&dir) {
            return Err(view);
        }
        reg.views.insert(dir, view);
        Ok(())
    }

    /// Unmounts the layer's view if mounted; its records reach the disk.
    pub(crate) fn unmount(&self, id: &str) {
        let dir = self.dir(id);
        let (view, layer) = {
            let mut reg = lock(&REGISTRY);
            (reg.views.remove(&dir), reg.layers.get(&dir).cloned())
        };
        drop(view);
        if let Some(layer) = layer {
            // What the view wrote reaches the disk, not only the records.
            if let Ok(dir) = std::fs::File::open(&layer.upper) {
                use std::os::fd::AsRawFd;
                // SAFETY: syncfs on a descriptor `dir` holds open.
                if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                    tracing::warn!("layer {id}: syncfs: {}", std::io::Error::last_os_error());
                }
            }
            if let Err(e) = lock(&layer.inner).journal.sync() {
                tracing::warn!("layer {id}: {}", lima_proto::errors::error_chain(&e));
            }
        }
    }

    /// The overlay of the layer's mounted view (tests: to count its calls).
    #[cfg(test)]
    pub(crate) fn overlay(&self, id: &str) -> Option<Arc<super::overlay::Overlay>> {
        lock(&REGISTRY)
            .views
            .get(&self.dir(id))
            .map(|v| v.overlay.clone())
    }

    /// Forgets the loaded layer (tests: the next open replays its journal).
    #[cfg(test)]
    pub(crate) fn evict(&self, id: &str) {
        lock(&REGISTRY).layers.remove(&self.dir(id));
    }

    /// Unmounts and deletes the layer.
    pub(crate) fn remove(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        let dir = self.dir(id);
        self.unmount(id);
        lock(&REGISTRY).layers.remove(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("no layer {id:?} in this guest"))
            }
            Err(e) => Err(format!("cannot delete {}: {e}", dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_folders_only() {
        for good in ["a", "proj-1.2_x", "0123456789abcdef"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
