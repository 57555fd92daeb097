//! A layer's changes, from its upper folder and records alone (the lower
//! folder need not be there): an upper entry is Added when the lower had
//! nothing there, Renamed when it came from a lower path (to a name the
//! lower folder did not have), Modified when
//! the lower had something else (a copy-up that changed nothing is not a
//! change); a whiteout is Deleted unless a rename took its file away.
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lima_proto::layer::{Change, ChangeKind, LayerPath, NodeInfo, NodeKind};

use super::journal::{Seen, State};
use super::overlay::{kind_of, mtime_of};
use super::path::{child, under};

/// Whether the upper entry `m` is the lower one `s` unchanged.
fn same(s: &Seen, m: &std::fs::Metadata, kind: NodeKind) -> bool {
    if s.base.kind != kind {
        return false;
    }
    match kind {
        NodeKind::Dir => s.mode == m.mode() & 0o7777,
        NodeKind::Symlink => s.base.size == m.size() && s.base.mtime == mtime_of(m),
        NodeKind::File => {
            s.base.size == m.size() && s.base.mtime == mtime_of(m) && s.mode == m.mode() & 0o7777
        }
    }
}

/// Every upper entry below `root`: (path, metadata), parents first.
pub(crate) fn walk(root: &Path) -> std::io::Result<Vec<(Vec<u8>, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(under(root, &dir))? {
            let e = e?;
            let p = child(&dir, e.file_name().as_bytes());
            let m = std::fs::symlink_metadata(under(root, &p))?;
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m));
        }
    }
    Ok(out)
}

pub(crate) fn compute(upper: &Path, state: &State) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut upper_paths = BTreeSet::new();
    for (p, m) in walk(upper)? {
        upper_paths.insert(p.clone());
        let Some(kind) = kind_of(&m) else { continue };
        let now = Some(NodeInfo {
            kind,
            mode: m.mode() & 0o7777,
            size: m.size(),
            mtime: mtime_of(&m),
        });
        // A file moved over a lower one is reviewed as that one modified
        // and the original deleted: each with its own base for the host to
        // check (a rename carries only the base of where it came from).
        let origin = state
            .origins
            .get(&p)
            .filter(|_| !state.seen.contains_key(&p));
        let (kind, base) = if let Some(from) = origin {
            let seen = state.seen.get(from);
            let modified = seen.is_none_or(|s| !same(s, &m, kind));
            (
                ChangeKind::Renamed {
                    from: LayerPath(from.clone()),
                    modified,
                },
                seen.map(|s| s.base),
            )
        } else if let Some(s) = state.seen.get(&p) {
            if same(s, &m, kind) {
                continue;
            }
            (ChangeKind::Modified, Some(s.base))
        } else {
            (ChangeKind::Added, None)
        };
        out.push(Change {
            path: LayerPath(p),
            kind,
            now,
            base,
        });
    }
    let moved: BTreeSet<&Vec<u8>> = state
        .origins
        .iter()
        .filter(|(p, _)| !state.seen.contains_key(*p))
        .map(|(_, from)| from)
        .collect();
    for w in &state.whiteouts {
        if moved.contains(w) || upper_paths.contains(w) {
            continue;
        }
        out.push(Change {
            path: LayerPath(w.clone()),
            kind: ChangeKind::Deleted,
            now: None,
            base: state.seen.get(w).map(|s| s.base),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
