//! The Layer stream: the host lists layers, reads their changes and files,
//! drops what it applied and discards what it does not want. Requests
//! are answered one at a time, each on a blocking thread (disk work).
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use lima_proto::layer::{
    Change, ChangeKind, LayerInfo, LayerPath, LayerReply, LayerRequest, NodeKind, MAX_READ,
};
use lima_proto::sync::lock;
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncRead, AsyncWrite};

use super::changes;
use super::journal::{Record, Seen};
use super::overlay::seen_of;
use super::path::{ancestors, check, under};
use super::store::{Inner, Layer, Store};

/// Serves one Layer stream (after the hello) until the host closes it.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> anyhow::Result<()> {
    while let Some(req) = read_frame_async::<_, LayerRequest>(&mut stream).await? {
        let store = Store::default();
        let reply = tokio::task::spawn_blocking(move || handle(&store, req))
            .await
            .unwrap_or_else(|e| LayerReply::Error(format!("the layer request failed: {e}")));
        write_frame_async(&mut stream, &reply).await?;
    }
    Ok(())
}

/// Answers one request.
pub(crate) fn handle(store: &Store, req: LayerRequest) -> LayerReply {
    let r = match req {
        LayerRequest::List => list(store).map(LayerReply::Layers),
        LayerRequest::Changes { id } => store
            .open(&id, false)
            .and_then(|l| changes_of(&l))
            .map(LayerReply::Changes),
        LayerRequest::Read {
            id,
            path,
            offset,
            len,
        } => store
            .open(&id, false)
            .and_then(|l| read(&l, &path, offset, len))
            .map(LayerReply::Data),
        LayerRequest::Drop { id, paths } => {
            drop_paths(store, &id, &paths).map(|()| LayerReply::Done)
        }
        LayerRequest::Discard { id } => store.remove(&id).map(|()| LayerReply::Done),
    };
    r.unwrap_or_else(LayerReply::Error)
}

fn compute(layer: &Layer, inner: &mut Inner) -> Result<Vec<Change>, String> {
    // The host acts on what it is told: the records reach the disk first.
    inner
        .journal
        .sync()
        .map_err(|e| lima_proto::errors::error_chain(&e))?;
    changes::compute(&layer.upper, &inner.state)
        .map_err(|e| format!("reading the layer {:?}: {e}", layer.id))
}

fn changes_of(layer: &Layer) -> Result<Vec<Change>, String> {
    let mut inner = lock(&layer.inner);
    compute(layer, &mut inner)
}

fn list(store: &Store) -> Result<Vec<LayerInfo>, String> {
    let mut out = Vec::new();
    for id in store.ids() {
        let layer = store.open(&id, false)?;
        let mut inner = lock(&layer.inner);
        let changes = compute(&layer, &mut inner)?.len() as u64;
        out.push(LayerInfo {
            id: id.clone(),
            mount_point: inner.state.mount_point.clone().unwrap_or_default(),
            mounted: store.mounted(&id),
            changes,
        });
    }
    Ok(out)
}

/// Part of an upper file, or a symlink's target. Never follows a symlink
/// out of the upper folder.
fn read(layer: &Layer, path: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, String> {
    let path = check(path)?;
    let shown = String::from_utf8_lossy(path).into_owned();
    for a in ancestors(path).skip(1) {
        match std::fs::symlink_metadata(under(&layer.upper, a)) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(format!("{shown:?} is not in the layer")),
        }
    }
    let p = under(&layer.upper, path);
    let m = std::fs::symlink_metadata(&p).map_err(|_| format!("{shown:?} is not in the layer"))?;
    let len = len.min(MAX_READ) as usize;
    if m.file_type().is_symlink() {
        let target = std::fs::read_link(&p).map_err(|e| format!("{shown:?}: {e}"))?;
        let b = target.as_os_str().as_bytes();
        let start = (offset as usize).min(b.len());
        return Ok(b[start..(start + len).min(b.len())].to_vec());
    }
    if !m.is_file() {
        return Err(format!("{shown:?} is a directory, not a file"));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(|e| format!("{shown:?}: {e}"))?;
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{shown:?}: {e}")),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Forgets applied changes: the host now has them, so the view shows
/// the lower folder there again. A layer left with no change is removed
/// (unless its view is mounted).
fn drop_paths(store: &Store, id: &str, paths: &[LayerPath]) -> Result<(), String> {
    for p in paths {
        check(&p.0)?;
    }
    let layer = store.open(id, false)?;
    let empty = {
        let mut inner = lock(&layer.inner);
        let by_path: BTreeMap<Vec<u8>, Change> = compute(&layer, &mut inner)?
            .into_iter()
            .map(|c| (c.path.0.clone(), c))
            .collect();
        // Children before their parents.
        let mut order: Vec<&Change> = paths.iter().filter_map(|p| by_path.get(&p.0)).collect();
        order.sort_by(|a, b| b.path.cmp(&a.path));
        order.dedup_by(|a, b| a.path == b.path);
        for c in order {
            forget(&layer, &mut inner, c)
                .map_err(|e| format!("dropping {:?}: {e}", String::from_utf8_lossy(&c.path.0)))?;
        }
        let left = compute(&layer, &mut inner)?;
        left.is_empty()
    };
    if empty && !store.mounted(id) {
        store.remove(id)?;
    }
    Ok(())
}

fn forget(layer: &Layer, inner: &mut Inner, c: &Change) -> Result<(), String> {
    let p = &c.path.0;
    let rec = |inner: &mut Inner, r| {
        inner
            .record(r)
            .map_err(|e| lima_proto::errors::error_chain(&e))
    };
    let up = under(&layer.upper, p);
    if let Some(now) = &c.now {
        let gone = if now.kind == NodeKind::Dir {
            std::fs::remove_dir(&up).is_ok()
        } else {
            std::fs::remove_file(&up).map_err(|e| e.to_string())?;
            true
        };
        if gone {
            if inner.state.opaque.contains(p) {
                rec(inner, Record::Unopaque(p.clone()))?;
            }
            if inner.state.seen.contains_key(p) {
                rec(inner, Record::Forget(p.clone()))?;
            }
        } else if let Ok(m) = std::fs::symlink_metadata(&up) {
            // Still holds changes of its own: the host's folder is this one now.
            if let Some(s) = seen_of(&m) {
                rec(
                    inner,
                    Record::Seen(
                        p.clone(),
                        Seen {
                            base: s.base,
                            mode: m.mode() & 0o7777,
                        },
                    ),
                )?;
            }
        }
    }
    // (A file moved over a lower one has an origin too, reviewed as Modified.)
    if inner.state.origins.contains_key(p) {
        rec(inner, Record::Unorigin(p.clone()))?;
    }
    match &c.kind {
        ChangeKind::Renamed { from, .. } => {
            rec(inner, Record::Unwhiteout(from.0.clone()))?;
            rec(inner, Record::Forget(from.0.clone()))?;
        }
        ChangeKind::Deleted => {
            rec(inner, Record::Unwhiteout(p.clone()))?;
            if inner.state.seen.contains_key(p) {
                rec(inner, Record::Forget(p.clone()))?;
            }
        }
        ChangeKind::Added | ChangeKind::Modified => {}
    }
    Ok(())
}
