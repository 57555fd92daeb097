//! Applying a reviewed snapshot to the host folder, through the confined
//! file server only ([`HostTree`]), change by change:
//!
//! 1. each change is checked against the host as it is now
//!    ([`conflict::check`]), and against the layer as it is now (a change
//!    the guest made after the review is not the one reviewed);
//! 2. new content goes to a temporary name beside its target, gets its
//!    mode and mtime, is synced, and is renamed into place (so a host file
//!    is never half written); deletions and moves are made last-minute
//!    after the check;
//! 3. every change applied (or found already applied) is dropped from the
//!    layer in batches; conflicts and failures stay in it.
//!
//! Order: folders are made first (parents before children), then moves,
//! then files and symlinks, then deletions (deepest first). Killing the
//! apply at any point loses nothing: what was not dropped is still in the
//! layer, and a change already on the host is recognised as done.
use lima_proto::layer::{ChangeKind, LayerPath, NodeKind};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conflict::{self, Verdict};
use super::host::{Errno, HostTree};
use super::layer::{LayerClient, LayerError};
use super::paths;
use super::snapshot::{Snapshot, Staged};

/// Changes dropped from the layer in one request.
const DROP_BATCH: usize = 256;

#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines of the changes applied (or found already applied).
    pub applied: Vec<String>,
    /// Lines and reasons of the changes kept in the layer.
    pub conflicts: Vec<(String, String)>,
}

fn phase(s: &Staged) -> (u8, i64) {
    let depth = s.path().iter().filter(|b| **b == b'/').count() as i64;
    match (&s.change.kind, s.kind()) {
        (ChangeKind::Added | ChangeKind::Modified, Some(NodeKind::Dir)) => (0, depth),
        (ChangeKind::Renamed { .. }, _) => (1, depth),
        (ChangeKind::Deleted, _) => (3, -depth),
        _ => (2, depth),
    }
}

/// Every change of `snap` whose index `chosen` accepts, in apply order;
/// an added folder above a chosen change comes with it.
fn order(snap: &Snapshot, chosen: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut take: Vec<bool> = (0..snap.changes.len()).map(chosen).collect();
    for i in 0..snap.changes.len() {
        if !take[i] {
            continue;
        }
        for (j, s) in snap.changes.iter().enumerate() {
            if matches!(s.change.kind, ChangeKind::Added)
                && s.kind() == Some(NodeKind::Dir)
                && snap.changes[i].path() != s.path()
                && paths::is_within(snap.changes[i].path(), s.path())
            {
                take[j] = true;
            }
        }
    }
    let mut idx: Vec<usize> = (0..snap.changes.len()).filter(|i| take[*i]).collect();
    idx.sort_by_key(|i| (phase(&snap.changes[*i]), *i));
    idx
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// Applies the chosen changes of `snap`. Errors only when the layer cannot
/// be reached (what was applied and dropped until then stays so).
pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    snap: &Snapshot,
    chosen: &dyn Fn(usize) -> bool,
    host: &mut HostTree,
    layer: &mut LayerClient<S>,
) -> Result<Outcome, ApplyError> {
    let current = layer.changes(&snap.id).await?;
    let mut out = Outcome::default();
    let mut to_drop: Vec<LayerPath> = Vec::new();
    for i in order(snap, chosen) {
        let s = &snap.changes[i];
        let line = s.line();
        if !current.contains(&s.change) {
            out.conflicts
                .push((line, "changed in the guest since the review".into()));
            continue;
        }
        match conflict::check(host, snap, s).await {
            Verdict::Conflict(why) => out.conflicts.push((line, why)),
            Verdict::Done => {
                to_drop.push(s.change.path.clone());
                out.applied.push(line);
            }
            Verdict::Ready => match one(host, snap, s).await {
                Ok(()) => {
                    to_drop.push(s.change.path.clone());
                    out.applied.push(line);
                }
                Err(why) => out.conflicts.push((line, why)),
            },
        }
        if to_drop.len() >= DROP_BATCH {
            layer
                .drop_changes(&snap.id, std::mem::take(&mut to_drop))
                .await?;
        }
    }
    layer.drop_changes(&snap.id, to_drop).await?;
    Ok(out)
}

fn why(what: &str, e: Errno) -> String {
    format!("cannot {what}: {e}")
}

/// A fresh name for a temporary file in a folder.
fn temp_name(n: u32) -> Vec<u8> {
    format!(".lima-sync-{}-{n}.tmp", std::process::id()).into_bytes()
}

/// Writes `s`'s new content (file or symlink) under a temporary name in
/// `parent` and renames it to `name`.
async fn put(
    host: &mut HostTree,
    snap: &Snapshot,
    s: &Staged,
    parent: u64,
    name: &[u8],
    noreplace: bool,
) -> Result<(), String> {
    let now = s.change.now.as_ref().expect("not a deletion");
    let mut n = 0;
    let tmp = loop {
        let tmp = temp_name(n);
        let made = match now.kind {
            NodeKind::Symlink => {
                let target = snap.staged_bytes(s).map_err(|e| format!("staging: {e}"))?;
                host.symlink(parent, &tmp, &target).await
            }
            _ => {
                let path = s.content.as_ref().expect("staged");
                let mut f = std::fs::File::open(path).map_err(|e| format!("staging: {e}"))?;
                host.write_new(parent, &tmp, &mut f, now.mode, now.mtime)
                    .await
            }
        };
        match made {
            Ok(()) => break tmp,
            Err(Errno(libc::EEXIST)) if n < 100 => n += 1,
            Err(e) => return Err(why("write a temporary file", e)),
        }
    };
    // The host file may have changed since the check: look again, right
    // before replacing it.
    if let (false, Some(base)) = (noreplace, s.change.base) {
        let parts = paths::components(s.path()).expect("checked");
        let same = matches!(host.stat(&parts).await, Ok(Some(n)) if n.matches(&base));
        if !same {
            let _ = host.remove(parent, &tmp, false).await;
            return Err("changed on the host since the guest read it".into());
        }
    }
    if let Err(e) = host.rename(parent, &tmp, parent, name, noreplace).await {
        let _ = host.remove(parent, &tmp, false).await;
        return Err(why("move the new file into place", e));
    }
    Ok(())
}

async fn one(host: &mut HostTree, snap: &Snapshot, s: &Staged) -> Result<(), String> {
    let parts = paths::components(s.path()).expect("checked");
    let name = *parts.last().expect("checked");
    let parent = host
        .parent(&parts)
        .await
        .map_err(|e| why("reach its folder on the host", e))?;
    let now = s.change.now.as_ref();
    match (&s.change.kind, now.map(|n| n.kind)) {
        (ChangeKind::Deleted, _) => {
            let dir = s.change.base.map(|b| b.kind) == Some(NodeKind::Dir);
            match host.remove(parent, name, dir).await {
                Ok(()) => {}
                Err(Errno(libc::ENOTEMPTY)) => {
                    return Err("the host folder holds files the guest did not delete".into())
                }
                Err(e) => return Err(why("delete it", e)),
            }
            if dir {
                host.forget_dirs(s.path());
            }
            Ok(())
        }
        (_, Some(NodeKind::Dir)) if !matches!(s.change.kind, ChangeKind::Renamed { .. }) => {
            let mode = now.expect("not a deletion").mode;
            match host.mkdir(parent, name, mode).await {
                Ok(()) => Ok(()),
                Err(Errno(libc::EEXIST)) => host
                    .chmod(&parts, mode)
                    .await
                    .map_err(|e| why("set its mode", e)),
                Err(e) => Err(why("make the folder", e)),
            }
        }
        (ChangeKind::Renamed { from, modified }, kind) => {
            let from_parts = paths::components(&from.0).expect("checked");
            let from_name = *from_parts.last().expect("checked");
            let from_parent = host
                .parent(&from_parts)
                .await
                .map_err(|e| why("reach its old folder on the host", e))?;
            if *modified && kind != Some(NodeKind::Dir) {
                put(host, snap, s, parent, name, true).await?;
                host.remove(from_parent, from_name, false)
                    .await
                    .map_err(|e| why("remove the old name", e))
            } else {
                host.rename(from_parent, from_name, parent, name, true)
                    .await
                    .map_err(|e| why("move it", e))?;
                host.forget_dirs(&from.0);
                Ok(())
            }
        }
        (kind, _) => {
            put(
                host,
                snap,
                s,
                parent,
                name,
                matches!(kind, ChangeKind::Added),
            )
            .await
        }
    }
}
