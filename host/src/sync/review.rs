//! The review: the list of changes (`A`dded, `M`odified, `D`eleted,
//! `R`enamed, each conflict marked with why), then a unified diff of each
//! text file between the host's copy now and the layer's; binary files,
//! symlink targets and mode changes get a line each.
use std::fmt::Write as _;
use std::path::Path;

use lima_proto::layer::{ChangeKind, NodeKind};

use super::conflict::{self, Verdict};
use super::host::HostTree;
use super::paths;
use super::snapshot::{Snapshot, Staged};

/// Files larger than this are not diffed (a line says so).
pub const DIFF_MAX: u64 = 4 << 20;

/// Each change's verdict, in the snapshot's order.
pub async fn verdicts(host: &mut HostTree, snap: &Snapshot) -> Vec<Verdict> {
    let mut out = Vec::with_capacity(snap.changes.len());
    for s in &snap.changes {
        out.push(conflict::check(host, snap, s).await);
    }
    out
}

/// The list part: a header, then one line per change.
pub fn list(dir: &Path, snap: &Snapshot, verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let n = snap.changes.len();
    let _ = writeln!(
        out,
        "{n} change{} to {} (layer {}):",
        if n == 1 { "" } else { "s" },
        dir.display(),
        snap.id
    );
    for (s, v) in snap.changes.iter().zip(verdicts) {
        match v {
            Verdict::Conflict(why) => {
                let _ = writeln!(out, "{}   [conflict: {why}]", s.line());
            }
            Verdict::Done => {
                let _ = writeln!(out, "{}   [already on the host]", s.line());
            }
            Verdict::Ready => {
                let _ = writeln!(out, "{}", s.line());
            }
        }
    }
    out
}

/// The whole review: the list, then the diffs.
pub async fn render(dir: &Path, host: &mut HostTree, snap: &Snapshot) -> String {
    let v = verdicts(host, snap).await;
    let mut out = list(dir, snap, &v);
    for s in &snap.changes {
        if s.refused.is_none() {
            out.push('\n');
            out.push_str(&diff(host, snap, s).await);
        }
    }
    out
}

/// What one side of a diff holds.
enum Side {
    None,
    Text(Vec<u8>),
    Link(Vec<u8>),
    TooLarge(u64),
    Unreadable(String),
}

async fn host_side(host: &mut HostTree, path: &[u8]) -> (Side, Option<u32>) {
    let parts = paths::components(path).expect("checked");
    let node = match host.stat(&parts).await {
        Ok(Some(n)) => n,
        Ok(None) => return (Side::None, None),
        Err(e) => return (Side::Unreadable(e.to_string()), None),
    };
    let mode = Some(node.attr.mode);
    let side = match node.kind {
        Some(NodeKind::Dir) => Side::None,
        Some(NodeKind::File) if node.attr.size > DIFF_MAX => Side::TooLarge(node.attr.size),
        Some(k @ (NodeKind::File | NodeKind::Symlink)) => {
            match host.read_file(&parts, DIFF_MAX).await {
                Ok(Some(d)) if k == NodeKind::Symlink => Side::Link(d),
                Ok(Some(d)) => Side::Text(d),
                Ok(None) => Side::TooLarge(node.attr.size),
                Err(e) => Side::Unreadable(e.to_string()),
            }
        }
        None => Side::Unreadable("not a file, folder or symlink".into()),
    };
    (side, mode)
}

fn guest_side(snap: &Snapshot, s: &Staged) -> Side {
    let Some(now) = &s.change.now else {
        return Side::None;
    };
    match now.kind {
        NodeKind::Dir => Side::None,
        NodeKind::File if now.size > DIFF_MAX => Side::TooLarge(now.size),
        k => match snap.staged_bytes(s) {
            Ok(d) if k == NodeKind::Symlink => Side::Link(d),
            Ok(d) => Side::Text(d),
            Err(e) => Side::Unreadable(e.to_string()),
        },
    }
}

fn is_binary(d: &[u8]) -> bool {
    d.iter().take(8000).any(|b| *b == 0) || std::str::from_utf8(d).is_err()
}

fn type_bits(kind: NodeKind) -> u32 {
    match kind {
        NodeKind::File => 0o100000,
        NodeKind::Dir => 0o040000,
        NodeKind::Symlink => 0o120000,
    }
}

/// One change's part of the review.
async fn diff(host: &mut HostTree, snap: &Snapshot, s: &Staged) -> String {
    let path = paths::show(s.path());
    let old_path = s.from().map(paths::show).unwrap_or_else(|| path.clone());
    let mut out = format!("diff --lima a/{old_path} b/{path}\n");
    let (old, old_mode) = match s.change.kind {
        ChangeKind::Added => (Side::None, None),
        _ => host_side(host, s.from().unwrap_or(s.path())).await,
    };
    let new = guest_side(snap, s);
    let new_mode = s
        .change
        .now
        .as_ref()
        .map(|n| type_bits(n.kind) | (n.mode & super::MODE_BITS));

    match (&s.change.kind, old_mode, new_mode) {
        (ChangeKind::Added, _, Some(m)) => {
            let _ = writeln!(out, "new mode {m:o}");
        }
        (ChangeKind::Deleted, Some(m), _) => {
            let _ = writeln!(out, "deleted mode {m:o}");
        }
        (_, Some(a), Some(b)) if a & !0o7000 != b => {
            let _ = writeln!(out, "old mode {a:o}\nnew mode {b:o}");
        }
        _ => {}
    }
    if s.change.now.as_ref().is_some_and(|n| n.mode & 0o7000 != 0) {
        let _ = writeln!(out, "(its setuid, setgid or sticky bit is not applied)");
    }
    if let ChangeKind::Renamed { modified, .. } = s.change.kind {
        let _ = writeln!(out, "rename from {old_path}\nrename to {path}");
        if !modified {
            return out;
        }
    }
    let (a_name, b_name) = (
        if matches!(old, Side::None) {
            "/dev/null".to_string()
        } else {
            format!("a/{old_path}")
        },
        if matches!(new, Side::None) {
            "/dev/null".to_string()
        } else {
            format!("b/{path}")
        },
    );
    match (&old, &new) {
        (Side::Unreadable(e), _) => {
            let _ = writeln!(out, "(the host's copy cannot be read: {e})");
        }
        (_, Side::Unreadable(e)) => {
            let _ = writeln!(out, "(the staged copy cannot be read: {e})");
        }
        (Side::TooLarge(n), _) | (_, Side::TooLarge(n)) => {
            let _ = writeln!(out, "(too large to show: {n} bytes; files differ)");
        }
        (Side::Link(a), Side::Link(b)) => {
            let _ = writeln!(
                out,
                "symlink target {} -> {}",
                paths::show(a),
                paths::show(b)
            );
        }
        (_, Side::Link(b)) => {
            let _ = writeln!(out, "symlink to {}", paths::show(b));
        }
        (Side::Link(a), _) => {
            let _ = writeln!(out, "was a symlink to {}", paths::show(a));
        }
        (Side::None, Side::None) => {}
        (a, b) => {
            let bytes = |s: &Side| match s {
                Side::Text(d) => d.clone(),
                _ => Vec::new(),
            };
            let (a, b) = (bytes(a), bytes(b));
            if a == b {
                // Only the mode (shown above) changed.
            } else if is_binary(&a) || is_binary(&b) {
                let _ = writeln!(out, "Binary files {a_name} and {b_name} differ");
            } else {
                let (a, b) = (
                    String::from_utf8(a).expect("checked"),
                    String::from_utf8(b).expect("checked"),
                );
                let d = similar::TextDiff::from_lines(&a, &b);
                let _ = write!(
                    out,
                    "{}",
                    d.unified_diff().context_radius(3).header(&a_name, &b_name)
                );
            }
        }
    }
    out
}
