//! The overlay's rules on paths, apart from FUSE: where a path resolves
//! (upper, else lower unless hidden), copy-up, whiteouts, opaque
//! directories and renames. Errors are errno values for the kernel.
//!
//! A lower path is hidden when it is whited out or lies under an opaque
//! upper directory. Mutations hold the layer's lock for their whole
//! length, so records and the upper folder change together.
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lima_proto::fs::Time;
use lima_proto::layer::{BaseStat, NodeKind};

use super::journal::{Record, Seen, State};
use super::path::{ancestors, child, is_under, parent, rebase, under};
use super::store::{Inner, Layer};

pub(crate) type Errno = i32;

/// Where a path of the view is.
pub(crate) enum Found {
    Upper(Metadata),
    Lower(Metadata),
}

impl Found {
    pub(crate) fn meta(&self) -> &Metadata {
        match self {
            Found::Upper(m) | Found::Lower(m) => m,
        }
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.meta().is_dir()
    }
}

pub(crate) struct Overlay {
    pub layer: Arc<Layer>,
    pub lower: PathBuf,
    /// Stats and listings of the lower folder, for tests that a mount does
    /// not walk it.
    pub lower_calls: AtomicU64,
    /// Whether the upper root has the lower root's mode and times yet.
    root_adopted: std::sync::atomic::AtomicBool,
}

pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn journal_errno(e: super::journal::JournalError) -> Errno {
    tracing::warn!("layer: {}", lima_proto::errors::error_chain(&e));
    libc::EIO
}

pub(crate) fn kind_of(m: &Metadata) -> Option<NodeKind> {
    let t = m.file_type();
    if t.is_file() {
        Some(NodeKind::File)
    } else if t.is_dir() {
        Some(NodeKind::Dir)
    } else if t.is_symlink() {
        Some(NodeKind::Symlink)
    } else {
        None
    }
}

pub(crate) fn mtime_of(m: &Metadata) -> Time {
    Time {
        secs: m.mtime(),
        nanos: m.mtime_nsec() as u32,
    }
}

pub(crate) fn seen_of(m: &Metadata) -> Option<Seen> {
    Some(Seen {
        base: BaseStat {
            kind: kind_of(m)?,
            size: m.size(),
            mtime: mtime_of(m),
            ctime: Time {
                secs: m.ctime(),
                nanos: m.ctime_nsec() as u32,
            },
        },
        mode: m.mode() & 0o7777,
    })
}

fn lstat(p: &Path) -> Result<Metadata, Errno> {
    std::fs::symlink_metadata(p).map_err(|e| match io_errno(&e) {
        libc::ENOTDIR => libc::ENOENT,
        n => n,
    })
}

/// Whether the lower path `p` shows through.
pub(crate) fn lower_visible(state: &State, p: &[u8]) -> bool {
    !state.whiteouts.contains(p)
        && (state.opaque.is_empty() || !ancestors(p).any(|a| state.opaque.contains(a)))
}

/// Sets atime and mtime of `p` (not following a symlink).
pub(crate) fn set_times(
    p: &Path,
    atime: libc::timespec,
    mtime: libc::timespec,
) -> Result<(), Errno> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let times = [atime, mtime];
    // SAFETY: a valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io_errno(&std::io::Error::last_os_error()))
    }
}

fn ts(secs: i64, nanos: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    }
}

impl Overlay {
    pub(crate) fn new(layer: Arc<Layer>, lower: PathBuf) -> Overlay {
        Overlay {
            layer,
            lower,
            lower_calls: AtomicU64::new(0),
            root_adopted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn upper(&self, p: &[u8]) -> PathBuf {
        under(&self.layer.upper, p)
    }

    fn lower_path(&self, p: &[u8]) -> PathBuf {
        under(&self.lower, p)
    }

    /// The lower entry at `p`, if it shows through.
    pub(crate) fn lower_stat(&self, state: &State, p: &[u8]) -> Option<Metadata> {
        if !lower_visible(state, p) {
            return None;
        }
        self.lower_calls.fetch_add(1, Ordering::Relaxed);
        lstat(&self.lower_path(p)).ok()
    }

    /// Refuses a path whose upper parents are not all directories. The
    /// kernel only sends `a/b` when `a` was a directory; if a symlink has
    /// taken its place since, the request is stale, and following the
    /// symlink would let the agent (root) act outside the layer. Called
    /// under the layer's lock, which every change to upper holds too.
    pub(crate) fn check_upper_parents(&self, p: &[u8]) -> Result<(), Errno> {
        for a in ancestors(p).skip(1) {
            match std::fs::symlink_metadata(self.upper(a)) {
                Ok(m) if !m.is_dir() => return Err(libc::ENOENT),
                _ => {}
            }
        }
        Ok(())
    }

    /// Where `p` is in the view.
    pub(crate) fn resolve(&self, state: &State, p: &[u8]) -> Result<Found, Errno> {
        match lstat(&self.upper(p)) {
            Ok(m) => return Ok(Found::Upper(m)),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        self.lower_stat(state, p)
            .map(Found::Lower)
            .ok_or(libc::ENOENT)
    }

    /// Resolves `p` holding the lock only to see whether the lower path
    /// shows through (lookups do not wait on each other's lower stats).
    pub(crate) fn find(&self, p: &[u8]) -> Result<Found, Errno> {
        if p.is_empty() {
            if let Err(n) = self.adopt_root() {
                tracing::warn!(
                    "layer {}: cannot read the lower folder's root: {}",
                    self.layer.id,
                    std::io::Error::from_raw_os_error(n)
                );
            }
        }
        let visible = lower_visible(&self.layer.inner.lock().map_err(|_| libc::EIO)?.state, p);
        match lstat(&self.upper(p)) {
            Ok(m) => return Ok(Found::Upper(m)),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if !visible {
            return Err(libc::ENOENT);
        }
        self.lower_calls.fetch_add(1, Ordering::Relaxed);
        lstat(&self.lower_path(p)).map(Found::Lower)
    }

    /// Gives the upper root the lower root's mode and times once, so the
    /// view's root looks like `DIR` (the upper folder itself is made 0700).
    /// At the first request for the root, not at mount time: the lower
    /// share answers only once the host has heard that the share is ready.
    fn adopt_root(&self) -> Result<(), Errno> {
        if self.root_adopted.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut inner = self.layer.inner.lock().map_err(|_| libc::EIO)?;
        self.root_adopted.store(true, Ordering::Release);
        if inner.state.seen.contains_key(&b""[..]) {
            return Ok(());
        }
        let m = lstat(&self.lower)?;
        let up = &self.layer.upper;
        std::fs::set_permissions(up, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| io_errno(&e))?;
        set_times(
            up,
            ts(m.atime(), m.atime_nsec()),
            ts(m.mtime(), m.mtime_nsec()),
        )?;
        self.note_seen(&mut inner, b"", &m)
    }

    /// Records the first-seen state of the lower entry at `p`.
    pub(crate) fn note_seen(&self, inner: &mut Inner, p: &[u8], m: &Metadata) -> Result<(), Errno> {
        if inner.state.seen.contains_key(p) {
            return Ok(());
        }
        match seen_of(m) {
            Some(s) => inner
                .record(Record::Seen(p.to_vec(), s))
                .map_err(journal_errno),
            None => Ok(()),
        }
    }

    /// The names in directory `p` of the view, with their types (from the
    /// listings alone: no stat per entry).
    pub(crate) fn list(
        &self,
        state: &State,
        p: &[u8],
    ) -> Result<Vec<(Vec<u8>, std::fs::FileType)>, Errno> {
        let mut names = std::collections::BTreeMap::new();
        let upper = self.upper(p);
        let mut in_upper = false;
        if let Ok(rd) = std::fs::read_dir(&upper) {
            in_upper = true;
            for e in rd.flatten() {
                if let Ok(t) = e.file_type() {
                    names.insert(e.file_name().as_bytes().to_vec(), t);
                }
            }
        }
        let mut in_lower = false;
        if !state.opaque.contains(p) && lower_visible(state, p) {
            self.lower_calls.fetch_add(1, Ordering::Relaxed);
            if let Ok(rd) = std::fs::read_dir(self.lower_path(p)) {
                in_lower = true;
                for e in rd.flatten() {
                    let name = e.file_name().as_bytes().to_vec();
                    if names.contains_key(&name) || state.whiteouts.contains(&child(p, &name)) {
                        continue;
                    }
                    if let Ok(t) = e.file_type() {
                        names.insert(name, t);
                    }
                }
            }
        }
        if !in_upper && !in_lower {
            return Err(libc::ENOENT);
        }
        Ok(names.into_iter().collect())
    }

    /// Copies the parents of `p` up (as directories, with their modes).
    pub(crate) fn copy_up_parents(&self, inner: &mut Inner, p: &[u8]) -> Result<(), Errno> {
        for a in ancestors(p).skip(1) {
            if lstat(&self.upper(a)).is_err() {
                self.copy_up(inner, a, true)?;
            }
        }
        Ok(())
    }

    /// Makes `p` an upper entry, a copy of the lower one (without its data
    /// when `data` is false: it is about to be truncated).
    pub(crate) fn copy_up(&self, inner: &mut Inner, p: &[u8], data: bool) -> Result<(), Errno> {
        self.check_upper_parents(p)?;
        if lstat(&self.upper(p)).is_ok() {
            return Ok(());
        }
        let m = self.lower_stat(&inner.state, p).ok_or(libc::ENOENT)?;
        self.copy_up_parents(inner, p)?;
        self.note_seen(inner, p, &m)?;
        let from = self.lower_path(p);
        let to = self.upper(p);
        let io = |e: std::io::Error| io_errno(&e);
        let mode = m.mode() & 0o7777;
        let t = m.file_type();
        let (atime, mtime) = (ts(m.atime(), m.atime_nsec()), ts(m.mtime(), m.mtime_nsec()));
        if t.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&to)
                .map_err(io)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).map_err(io)?;
            return set_times(&to, atime, mtime);
        }
        // Whole or not at all: made in work/, renamed into place.
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = self
            .layer
            .work
            .join(format!("copy-{}", N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&tmp);
        if t.is_symlink() {
            let target = std::fs::read_link(&from).map_err(io)?;
            std::os::unix::fs::symlink(&target, &tmp).map_err(io)?;
        } else if t.is_file() {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            if data {
                let mut src = std::fs::File::open(&from).map_err(io)?;
                if let Err(e) = std::io::copy(&mut src, &mut out) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(e));
                }
            }
            out.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io)?;
        } else {
            return Err(libc::EPERM);
        }
        set_times(&tmp, atime, mtime)?;
        std::fs::rename(&tmp, &to).map_err(io)
    }

    /// An entry is about to be made at `p` in upper: a whiteout there
    /// goes, and a directory made over one is opaque.
    pub(crate) fn occupy(&self, inner: &mut Inner, p: &[u8], dir: bool) -> Result<(), Errno> {
        if inner.state.whiteouts.contains(p) {
            inner
                .record(Record::Unwhiteout(p.to_vec()))
                .map_err(journal_errno)?;
            if dir {
                inner
                    .record(Record::Opaque(p.to_vec()))
                    .map_err(journal_errno)?;
            }
        }
        Ok(())
    }

    /// Removes the non-directory `p` from the view.
    pub(crate) fn unlink(&self, inner: &mut Inner, p: &[u8]) -> Result<(), Errno> {
        let found = self.resolve(&inner.state, p)?;
        if found.is_dir() {
            return Err(libc::EISDIR);
        }
        self.remove_entry(inner, p, found)
    }

    /// Removes the empty directory `p` from the view.
    pub(crate) fn rmdir(&self, inner: &mut Inner, p: &[u8]) -> Result<(), Errno> {
        let found = self.resolve(&inner.state, p)?;
        if !found.is_dir() {
            return Err(libc::ENOTDIR);
        }
        if !self.list(&inner.state, p)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(inner, p, found)
    }

    fn remove_entry(&self, inner: &mut Inner, p: &[u8], found: Found) -> Result<(), Errno> {
        self.check_upper_parents(p)?;
        let dir = found.is_dir();
        if let Found::Upper(_) = found {
            let up = self.upper(p);
            if dir {
                std::fs::remove_dir(&up)
            } else {
                std::fs::remove_file(&up)
            }
            .map_err(|e| io_errno(&e))?;
            if inner.state.origins.contains_key(p) {
                inner
                    .record(Record::Unorigin(p.to_vec()))
                    .map_err(journal_errno)?;
            }
            if inner.state.opaque.contains(p) {
                inner
                    .record(Record::Unopaque(p.to_vec()))
                    .map_err(journal_errno)?;
            }
        }
        if let Some(m) = self.lower_stat(&inner.state, p) {
            self.note_seen(inner, p, &m)?;
            inner
                .record(Record::Whiteout(p.to_vec()))
                .map_err(journal_errno)?;
        }
        Ok(())
    }

    /// Renames `p` to `q` in the view. A lower directory (or one that
    /// replaced a lower one) cannot move: `EXDEV`, and `mv` copies.
    pub(crate) fn rename(
        &self,
        inner: &mut Inner,
        p: &[u8],
        q: &[u8],
        noreplace: bool,
    ) -> Result<(), Errno> {
        self.check_upper_parents(p)?;
        self.check_upper_parents(q)?;
        let src = self.resolve(&inner.state, p)?;
        let dst = match self.resolve(&inner.state, q) {
            Ok(f) => Some(f),
            Err(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if noreplace && dst.is_some() {
            return Err(libc::EEXIST);
        }
        if p == q {
            return Ok(());
        }
        let src_dir = src.is_dir();
        if src_dir && is_under(q, p) {
            return Err(libc::EINVAL);
        }
        let src_lower = self.lower_stat(&inner.state, p);
        if src_dir && (src_lower.is_some() || inner.state.opaque.contains(p)) {
            return Err(libc::EXDEV);
        }
        if let Some(d) = dst {
            let dst_dir = d.is_dir();
            if src_dir && !dst_dir {
                return Err(libc::ENOTDIR);
            }
            if !src_dir && dst_dir {
                return Err(libc::EISDIR);
            }
            if dst_dir && !self.list(&inner.state, q)?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            if let Found::Upper(_) = d {
                if dst_dir {
                    std::fs::remove_dir(self.upper(q)).map_err(|e| io_errno(&e))?;
                }
                if inner.state.origins.contains_key(q) {
                    inner
                        .record(Record::Unorigin(q.to_vec()))
                        .map_err(journal_errno)?;
                }
                if inner.state.opaque.contains(q) {
                    inner
                        .record(Record::Unopaque(q.to_vec()))
                        .map_err(journal_errno)?;
                }
            }
            if let Some(m) = self.lower_stat(&inner.state, q) {
                self.note_seen(inner, q, &m)?;
                inner
                    .record(Record::Whiteout(q.to_vec()))
                    .map_err(journal_errno)?;
            }
        }
        if let Found::Lower(_) = src {
            self.copy_up(inner, p, true)?;
        }
        self.copy_up_parents(inner, q)?;
        self.occupy(inner, q, src_dir)?;
        std::fs::rename(self.upper(p), self.upper(q)).map_err(|e| io_errno(&e))?;
        let origin = match inner.state.origins.get(p).cloned() {
            Some(o) => {
                inner
                    .record(Record::Unorigin(p.to_vec()))
                    .map_err(journal_errno)?;
                Some(o)
            }
            None => src_lower.is_some().then(|| p.to_vec()),
        };
        if let Some(m) = &src_lower {
            self.note_seen(inner, p, m)?;
            inner
                .record(Record::Whiteout(p.to_vec()))
                .map_err(journal_errno)?;
        }
        if let Some(o) = origin {
            if o != q {
                inner
                    .record(Record::Origin(q.to_vec(), o))
                    .map_err(journal_errno)?;
            }
        }
        if src_dir {
            let moved: Vec<(Vec<u8>, Vec<u8>)> = inner
                .state
                .origins
                .iter()
                .filter(|(k, _)| is_under(k, p))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in moved {
                inner
                    .record(Record::Unorigin(k.clone()))
                    .map_err(journal_errno)?;
                inner
                    .record(Record::Origin(rebase(&k, p, q), v))
                    .map_err(journal_errno)?;
            }
        }
        Ok(())
    }

    /// Prepares `p` (absent from the view) for a new entry: parents up,
    /// whiteout gone.
    pub(crate) fn make_room(&self, inner: &mut Inner, p: &[u8], dir: bool) -> Result<(), Errno> {
        self.check_upper_parents(p)?;
        match self.resolve(&inner.state, p) {
            Ok(_) => return Err(libc::EEXIST),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        match self.resolve(&inner.state, parent(p)) {
            Ok(f) if f.is_dir() => {}
            Ok(_) => return Err(libc::ENOTDIR),
            Err(e) => return Err(e),
        }
        self.copy_up_parents(inner, p)?;
        self.occupy(inner, p, dir)
    }
}
