//! Whether a change may be applied to the host folder as it is now: the
//! rules that keep an apply from overwriting what the person changed on
//! the host meanwhile.
//!
//! * A file or symlink the guest changed, deleted or moved away is written
//!   only while the host's still has the size, mtime, ctime and kind the
//!   guest first saw (`base`). A folder is checked by kind only (its times
//!   change with every file applied inside it).
//! * An added path is written only where the host has nothing.
//! * A path that already holds exactly what the change would write (an
//!   apply interrupted before it dropped the change) is done: dropped
//!   without writing. The same for a deletion already made.
//!
//! Anything else is a conflict: listed, not written, kept in the layer.
use lima_proto::layer::{ChangeKind, NodeKind};

use super::host::{FsResult, HostNode, HostTree};
use super::paths;
use super::snapshot::{Snapshot, Staged};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// The host already matches the change.
    Done,
    Conflict(String),
}

/// The host's state at a path: what is there, or why it cannot be known.
async fn at(host: &mut HostTree, path: &[u8]) -> FsResult<Option<HostNode>> {
    let parts = paths::components(path).expect("a staged path was checked");
    host.stat(&parts).await
}

/// Whether the host node holds exactly what `s` would write.
async fn holds(host: &mut HostTree, snap: &Snapshot, s: &Staged, node: &HostNode) -> bool {
    let Some(now) = &s.change.now else {
        return false;
    };
    if node.kind != Some(now.kind) {
        return false;
    }
    match now.kind {
        NodeKind::Dir => node.attr.mode & 0o7777 == now.mode & super::MODE_BITS,
        NodeKind::File | NodeKind::Symlink => {
            if now.kind == NodeKind::File && node.attr.mode & 0o7777 != now.mode & super::MODE_BITS
            {
                return false;
            }
            if s.content.is_none() {
                // A plain move: the moved file keeps its size and mtime.
                return node.attr.size == now.size && node.attr.mtime == now.mtime;
            }
            if node.attr.size != now.size {
                return false;
            }
            let parts = paths::components(s.path()).expect("checked");
            match (host.read_file(&parts, now.size).await, snap.staged_bytes(s)) {
                (Ok(Some(a)), Ok(b)) => a == b,
                _ => false,
            }
        }
    }
}

pub async fn check(host: &mut HostTree, snap: &Snapshot, s: &Staged) -> Verdict {
    if let Some(why) = &s.refused {
        return Verdict::Conflict(why.to_string());
    }
    let failed = |e| Verdict::Conflict(format!("cannot look at the host file: {e}"));
    let target = match at(host, s.path()).await {
        Ok(t) => t,
        Err(e) if e.0 == libc::ENOTDIR => {
            return Verdict::Conflict("a folder above it is not a folder on the host".into())
        }
        Err(e) => return failed(e),
    };
    match &s.change.kind {
        ChangeKind::Added => match target {
            None => Verdict::Ready,
            Some(n) if holds(host, snap, s, &n).await => Verdict::Done,
            Some(n) if n.kind == Some(NodeKind::Dir) && s.kind() == Some(NodeKind::Dir) => {
                Verdict::Ready // made on the host too: its mode is set
            }
            Some(_) => Verdict::Conflict("the host has a file there now".into()),
        },
        ChangeKind::Modified | ChangeKind::Deleted => {
            let deleted = matches!(s.change.kind, ChangeKind::Deleted);
            let Some(base) = s.change.base else {
                return Verdict::Conflict("the guest recorded no first state for it".into());
            };
            match target {
                None if deleted => Verdict::Done,
                None => Verdict::Conflict("deleted on the host since the guest read it".into()),
                Some(n) if n.matches(&base) => Verdict::Ready,
                Some(n) if !deleted && holds(host, snap, s, &n).await => Verdict::Done,
                Some(_) => Verdict::Conflict("changed on the host since the guest read it".into()),
            }
        }
        ChangeKind::Renamed { from, .. } => {
            let Some(base) = s.change.base else {
                return Verdict::Conflict("the guest recorded no first state for it".into());
            };
            let source = match at(host, &from.0).await {
                Ok(n) => n,
                Err(e) => return failed(e),
            };
            match (source, target) {
                (Some(src), None) if src.matches(&base) => Verdict::Ready,
                (Some(src), Some(_)) if src.matches(&base) => {
                    Verdict::Conflict("the host has a file at the new name now".into())
                }
                (None, Some(n)) if holds(host, snap, s, &n).await => Verdict::Done,
                (None, _) => {
                    Verdict::Conflict(format!("{} is gone from the host", paths::show(&from.0)))
                }
                (Some(_), _) => Verdict::Conflict(format!(
                    "{} changed on the host since the guest read it",
                    paths::show(&from.0)
                )),
            }
        }
    }
}
