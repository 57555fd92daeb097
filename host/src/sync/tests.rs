//! The host side of `--sync` against a fake layer (an in-process server of
//! the layer stream, over `tokio::io::duplex`) and a real `lima-fs-server`
//! process on a temporary folder: no VM, no root.
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lima_proto::fs::Time;
use lima_proto::layer::*;
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::DuplexStream;

use super::apply;
use super::conflict::Verdict;
use super::host::HostTree;
use super::layer::LayerClient;
use super::snapshot::Snapshot;
use super::*;

const ID: &str = "0123456789abcdef";

/// The guest's side of a layer, in memory.
#[derive(Default)]
struct Fake {
    changes: Vec<Change>,
    /// Upper content (file data or symlink target) by path.
    upper: HashMap<Vec<u8>, Vec<u8>>,
    fail_drop: bool,
    discarded: bool,
    mounted: bool,
}

type Shared = Arc<Mutex<Fake>>;

async fn serve(mut s: DuplexStream, fake: Shared) {
    while let Ok(Some(req)) = read_frame_async::<_, LayerRequest>(&mut s).await {
        let reply = {
            let mut f = fake.lock().unwrap();
            match req {
                LayerRequest::List => LayerReply::Layers(vec![LayerInfo {
                    id: ID.into(),
                    mount_point: "/x".into(),
                    mounted: f.mounted,
                    changes: f.changes.len() as u64,
                }]),
                LayerRequest::Changes { .. } => LayerReply::Changes(f.changes.clone()),
                LayerRequest::Read {
                    path, offset, len, ..
                } => match f.upper.get(&path) {
                    Some(d) => {
                        let start = (offset as usize).min(d.len());
                        let end = (start + len as usize).min(d.len());
                        LayerReply::Data(d[start..end].to_vec())
                    }
                    None => LayerReply::Error("no such file".into()),
                },
                LayerRequest::Drop { paths, .. } if f.fail_drop => {
                    let _ = paths;
                    LayerReply::Error("disk full".into())
                }
                LayerRequest::Drop { paths, .. } => {
                    f.changes.retain(|c| !paths.contains(&c.path));
                    LayerReply::Done
                }
                LayerRequest::Discard { .. } => {
                    f.changes.clear();
                    f.discarded = true;
                    LayerReply::Done
                }
            }
        };
        if write_frame_async(&mut s, &reply).await.is_err() {
            return;
        }
    }
}

fn client(fake: &Shared) -> LayerClient<DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(serve(theirs, fake.clone()));
    LayerClient::new(ours)
}

fn fs_server() -> PathBuf {
    if let Some(p) = std::env::var_os(crate::programs::FS_SERVER_ENV) {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lima-fs-server");
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p lima-fs-server` first (or set {})",
        p.display(),
        crate::programs::FS_SERVER_ENV
    );
    p
}

async fn tree(root: &Path, writable: bool) -> HostTree {
    let log = root.parent().unwrap().join(format!("fs-{writable}.log"));
    HostTree::open(
        &fs_server(),
        lima_fs_server::confine::Mode::Warn,
        root,
        writable,
        &log,
    )
    .await
    .unwrap()
}

/// `tmp/dir` (the synced folder) beside `tmp/outside`.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    outside: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    Env {
        _tmp: tmp,
        dir,
        outside,
    }
}

fn base(p: &Path) -> BaseStat {
    let m = std::fs::symlink_metadata(p).unwrap();
    let kind = if m.is_dir() {
        NodeKind::Dir
    } else if m.file_type().is_symlink() {
        NodeKind::Symlink
    } else {
        NodeKind::File
    };
    BaseStat {
        kind,
        size: m.size(),
        mtime: Time {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        },
        ctime: Time {
            secs: m.ctime(),
            nanos: m.ctime_nsec() as u32,
        },
    }
}

const T: Time = Time {
    secs: 1_700_000_000,
    nanos: 5,
};

fn lp(p: &str) -> LayerPath {
    LayerPath(p.as_bytes().to_vec())
}

impl Fake {
    fn file(
        &mut self,
        kind: ChangeKind,
        path: &str,
        data: &[u8],
        mode: u32,
        base: Option<BaseStat>,
    ) {
        self.node(kind, path, NodeKind::File, data, mode, base);
    }

    fn node(
        &mut self,
        kind: ChangeKind,
        path: &str,
        nk: NodeKind,
        data: &[u8],
        mode: u32,
        base: Option<BaseStat>,
    ) {
        self.upper.insert(path.as_bytes().to_vec(), data.to_vec());
        self.changes.push(Change {
            path: lp(path),
            kind,
            now: Some(NodeInfo {
                kind: nk,
                mode,
                size: data.len() as u64,
                mtime: T,
            }),
            base,
        });
    }

    fn deleted(&mut self, path: &str, base: BaseStat) {
        self.changes.push(Change {
            path: lp(path),
            kind: ChangeKind::Deleted,
            now: None,
            base: Some(base),
        });
    }
}

/// A host tree and a layer over it that adds, edits, deletes, renames,
/// makes a folder, a symlink, a binary file, and changes a mode.
fn scene(e: &Env) -> Shared {
    let d = &e.dir;
    std::fs::write(d.join("keep.txt"), "same\n").unwrap();
    std::fs::write(d.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(d.join("del.txt"), "bye\n").unwrap();
    std::fs::write(d.join("old.txt"), "moved\n").unwrap();
    std::fs::write(d.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::create_dir(d.join("gone")).unwrap();
    std::fs::write(d.join("gone/inner"), "x").unwrap();
    let mut f = Fake::default();
    f.file(ChangeKind::Added, "add.txt", b"new file\n", 0o644, None);
    f.node(ChangeKind::Added, "newdir", NodeKind::Dir, b"", 0o750, None);
    f.file(
        ChangeKind::Added,
        "newdir/f.bin",
        b"\0\x01\x02",
        0o600,
        None,
    );
    f.node(
        ChangeKind::Added,
        "link",
        NodeKind::Symlink,
        b"edit.txt",
        0o777,
        None,
    );
    let b = base(&d.join("edit.txt"));
    f.file(
        ChangeKind::Modified,
        "edit.txt",
        b"one\nTWO\nthree\n",
        0o644,
        Some(b),
    );
    let b = base(&d.join("run.sh"));
    f.file(
        ChangeKind::Modified,
        "run.sh",
        b"#!/bin/sh\n",
        0o755,
        Some(b),
    );
    f.deleted("del.txt", base(&d.join("del.txt")));
    f.deleted("gone/inner", base(&d.join("gone/inner")));
    f.deleted("gone", base(&d.join("gone")));
    let m = std::fs::metadata(d.join("old.txt")).unwrap();
    f.changes.push(Change {
        path: lp("new.txt"),
        kind: ChangeKind::Renamed {
            from: lp("old.txt"),
            modified: false,
        },
        now: Some(NodeInfo {
            kind: NodeKind::File,
            mode: m.mode() & 0o7777,
            size: m.size(),
            mtime: Time {
                secs: m.mtime(),
                nanos: m.mtime_nsec() as u32,
            },
        }),
        base: Some(base(&d.join("old.txt"))),
    });
    Arc::new(Mutex::new(f))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file under `d`, with content (or link target) and mode.
fn listing(d: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((rel, t.display().to_string().into_bytes(), 0));
            } else if m.is_dir() {
                out.push((rel, Vec::new(), mode(&p)));
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap(), mode(&p)));
            }
        }
    }
    walk(d, d, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn apply_makes_the_host_match_and_empties_the_layer() {
    let e = env();
    let fake = scene(&e);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
    assert_eq!(out.applied.len(), 10);
    let d = &e.dir;
    assert_eq!(std::fs::read(d.join("add.txt")).unwrap(), b"new file\n");
    assert_eq!(
        std::fs::read(d.join("newdir/f.bin")).unwrap(),
        b"\0\x01\x02"
    );
    assert_eq!(mode(&d.join("newdir")), 0o750);
    assert_eq!(mode(&d.join("newdir/f.bin")), 0o600);
    assert_eq!(
        std::fs::read_link(d.join("link")).unwrap(),
        Path::new("edit.txt")
    );
    assert_eq!(
        std::fs::read(d.join("edit.txt")).unwrap(),
        b"one\nTWO\nthree\n"
    );
    assert_eq!(mode(&d.join("run.sh")), 0o755);
    // The layer's mtime travels with the content.
    assert_eq!(
        std::fs::metadata(d.join("edit.txt")).unwrap().mtime(),
        T.secs
    );
    assert!(!d.join("del.txt").exists());
    assert!(!d.join("gone").exists());
    assert!(!d.join("old.txt").exists());
    assert_eq!(std::fs::read(d.join("new.txt")).unwrap(), b"moved\n");
    assert_eq!(std::fs::read(d.join("keep.txt")).unwrap(), b"same\n");
    // No temporary file is left behind.
    assert!(listing(d)
        .iter()
        .all(|(p, _, _)| !p.contains(".lima-sync-")));
    assert!(fake.lock().unwrap().changes.is_empty());

    // Again: nothing left to do.
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    assert!(snap.changes.is_empty());
}

#[tokio::test]
async fn a_host_edit_made_meanwhile_is_a_conflict_and_kept() {
    let e = env();
    let fake = scene(&e);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    // The person edits a file and makes one where the guest added one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(e.dir.join("edit.txt"), "one\ntwo\nthree\nfour\n").unwrap();
    std::fs::write(e.dir.join("add.txt"), "mine\n").unwrap();
    std::fs::write(e.dir.join("gone/other"), "new on the host").unwrap();
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    let kept: Vec<&str> = out.conflicts.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        kept,
        ["A  add.txt", "M  edit.txt", "D  gone/"],
        "{:?}",
        out.conflicts
    );
    assert_eq!(
        std::fs::read(e.dir.join("edit.txt")).unwrap(),
        b"one\ntwo\nthree\nfour\n"
    );
    assert_eq!(std::fs::read(e.dir.join("add.txt")).unwrap(), b"mine\n");
    assert_eq!(
        std::fs::read(e.dir.join("gone/other")).unwrap(),
        b"new on the host"
    );
    // The rest went through; the conflicts stay in the layer.
    assert!(e.dir.join("new.txt").exists());
    let left: Vec<Vec<u8>> = fake
        .lock()
        .unwrap()
        .changes
        .iter()
        .map(|c| c.path.0.clone())
        .collect();
    assert_eq!(
        left,
        [b"add.txt".to_vec(), b"edit.txt".to_vec(), b"gone".to_vec()]
    );
}

#[tokio::test]
async fn paths_out_of_the_folder_are_refused_and_symlinks_not_followed() {
    let e = env();
    // A host symlink inside DIR pointing out of it.
    std::os::unix::fs::symlink(&e.outside, e.dir.join("out")).unwrap();
    let mut f = Fake::default();
    f.file(ChangeKind::Added, "../outside/evil", b"x", 0o644, None);
    f.file(ChangeKind::Added, "/tmp/evil", b"x", 0o644, None);
    f.file(ChangeKind::Added, "out/evil", b"x", 0o644, None);
    f.file(
        ChangeKind::Added,
        "a/../../outside/evil2",
        b"x",
        0o644,
        None,
    );
    let secret = base(&e.outside.join("secret"));
    f.file(
        ChangeKind::Modified,
        "out/secret",
        b"pwned",
        0o644,
        Some(secret),
    );
    f.deleted("out/secret", secret);
    let fake = Arc::new(Mutex::new(f));
    let before = listing(&e.outside);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    assert_eq!(
        snap.changes.iter().filter(|s| s.refused.is_some()).count(),
        3
    );
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(out.conflicts.len(), 6, "{:?}", out.conflicts);
    assert_eq!(listing(&e.outside), before);
    assert!(!e.dir.parent().unwrap().join("evil").exists());
    assert_eq!(fake.lock().unwrap().changes.len(), 6);
}

#[tokio::test]
async fn an_apply_killed_before_the_drop_loses_nothing_and_finishes_later() {
    let e = env();
    let fake = scene(&e);
    fake.lock().unwrap().fail_drop = true;
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let mut host = tree(&e.dir, true).await;
    // The layer could not drop what was applied: an error, all kept.
    assert!(apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .is_err());
    assert_eq!(fake.lock().unwrap().changes.len(), 10);
    let applied = listing(&e.dir);
    // A later apply finds every change already on the host and drops it.
    fake.lock().unwrap().fail_drop = false;
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let v = review::verdicts(&mut host, &snap).await;
    assert!(v.iter().all(|v| *v == Verdict::Done), "{v:?}");
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
    assert_eq!(listing(&e.dir), applied);
    assert!(fake.lock().unwrap().changes.is_empty());
}

#[tokio::test]
async fn choosing_applies_only_the_chosen_and_their_new_folders() {
    let e = env();
    let fake = scene(&e);
    let before = listing(&e.dir);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let pick = snap
        .changes
        .iter()
        .position(|s| s.path() == b"newdir/f.bin")
        .unwrap();
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|i| i == pick, &mut host, &mut layer)
        .await
        .unwrap();
    assert_eq!(out.applied, ["A  newdir/", "A  newdir/f.bin"]);
    let mut want = before;
    want.push(("newdir".into(), Vec::new(), 0o750));
    want.push(("newdir/f.bin".into(), b"\0\x01\x02".to_vec(), 0o600));
    want.sort();
    assert_eq!(listing(&e.dir), want);
    assert_eq!(fake.lock().unwrap().changes.len(), 8);
}

#[tokio::test]
async fn a_change_made_in_the_guest_after_the_review_is_not_applied() {
    let e = env();
    let fake = scene(&e);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    {
        let mut f = fake.lock().unwrap();
        let c = f
            .changes
            .iter_mut()
            .find(|c| c.path == lp("edit.txt"))
            .unwrap();
        c.now.as_mut().unwrap().size = 3;
        f.upper.insert(b"edit.txt".to_vec(), b"bad".to_vec());
    }
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    assert_eq!(out.conflicts.len(), 1);
    assert!(
        out.conflicts[0].1.contains("in the guest"),
        "{:?}",
        out.conflicts
    );
    assert_eq!(
        std::fs::read(e.dir.join("edit.txt")).unwrap(),
        b"one\ntwo\nthree\n"
    );
}

#[tokio::test]
async fn the_review_lists_each_change_and_diffs_text_files() {
    let e = env();
    let fake = scene(&e);
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let mut host = tree(&e.dir, false).await;
    let text = review::render(&e.dir, &mut host, &snap).await;
    let head: Vec<&str> = text.lines().take(11).collect();
    assert_eq!(
        head,
        [
            format!("10 changes to {} (layer {ID}):", e.dir.display()).as_str(),
            "A  add.txt",
            "D  del.txt",
            "M  edit.txt",
            "D  gone/",
            "D  gone/inner",
            "A  link",
            "R  old.txt -> new.txt",
            "A  newdir/",
            "A  newdir/f.bin",
            "M  run.sh",
        ]
    );
    for want in [
        "--- a/edit.txt\n+++ b/edit.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
        "--- /dev/null\n+++ b/add.txt\n@@ -0,0 +1 @@\n+new file\n",
        "--- a/del.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n",
        "Binary files /dev/null and b/newdir/f.bin differ\n",
        "symlink to edit.txt\n",
        "rename from old.txt\nrename to new.txt\n",
        "diff --lima a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    // A host edit shows as a conflict in the list.
    std::fs::write(e.dir.join("edit.txt"), "changed\n").unwrap();
    let text = review::render(&e.dir, &mut host, &snap).await;
    assert!(
        text.contains("M  edit.txt   [conflict: changed on the host since the guest read it]"),
        "{text}"
    );
    // The read-only server wrote nothing.
    assert!(!e.dir.join("add.txt").exists());
}

#[tokio::test]
async fn set_id_bits_never_reach_the_host() {
    let e = env();
    let mut f = Fake::default();
    f.file(ChangeKind::Added, "suid", b"#!/bin/sh\n", 0o4755, None);
    f.node(
        ChangeKind::Added,
        "sticky",
        NodeKind::Dir,
        b"",
        0o3777,
        None,
    );
    let fake = Arc::new(Mutex::new(f));
    let mut layer = client(&fake);
    let snap = Snapshot::take(&mut layer, ID).await.unwrap();
    let mut host = tree(&e.dir, false).await;
    let text = review::render(&e.dir, &mut host, &snap).await;
    assert!(text.contains("new mode 100755\n(its setuid"), "{text}");
    let mut host = tree(&e.dir, true).await;
    let out = apply::apply(&snap, &|_| true, &mut host, &mut layer)
        .await
        .unwrap();
    assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
    assert_eq!(mode(&e.dir.join("suid")), 0o755);
    assert_eq!(mode(&e.dir.join("sticky")), 0o777);
}

#[tokio::test]
async fn a_session_ends_applied_discarded_or_kept() {
    use super::finish::{self, Mode as End, Target};
    let server = (fs_server(), lima_fs_server::confine::Mode::Warn);
    for end in [End::All, End::Discard, End::Keep] {
        let said = Mutex::new(Vec::new());
        let e = env();
        let fake = scene(&e);
        let before = listing(&e.dir);
        let mut layer = client(&fake);
        let log = e.dir.parent().unwrap().join("host.log");
        let t = Target {
            instance: "vm",
            dir: &e.dir,
            id: ID,
            log: &log,
            server: &server,
            say: &|l, m| said.lock().unwrap().push((l, m)),
        };
        let left = finish::finish(&t, &mut layer, end).await.unwrap();
        let f = fake.lock().unwrap();
        let said: Vec<String> = said
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let dir = e.dir.display();
        match end {
            End::All => {
                assert_eq!((left, f.changes.len()), (0, 0));
                assert!(e.dir.join("add.txt").exists());
                assert_eq!(said, [format!("applied 10 changes to {dir}")]);
            }
            End::Discard => {
                assert_eq!(left, 0);
                assert!(f.discarded);
                assert_eq!(listing(&e.dir), before);
                assert_eq!(said, [format!("discarded 10 changes to {dir}")]);
            }
            _ => {
                assert_eq!((left, f.changes.len(), f.discarded), (10, 10, false));
                assert_eq!(listing(&e.dir), before);
                assert_eq!(said.len(), 1);
                assert!(
                    said[0].starts_with(&format!("10 changes to {dir} kept in instance \"vm\": review them with `limactl sync diff vm`")),
                    "{said:?}"
                );
            }
        }
    }
    // Nothing changed: the empty layer goes.
    let e = env();
    let fake: Shared = Arc::default();
    let mut layer = client(&fake);
    let log = e.dir.parent().unwrap().join("host.log");
    let t = Target {
        instance: "vm",
        dir: &e.dir,
        id: ID,
        log: &log,
        server: &server,
        say: &|_, _| {},
    };
    assert_eq!(finish::finish(&t, &mut layer, End::Keep).await.unwrap(), 0);
    assert!(fake.lock().unwrap().discarded);
}

#[tokio::test]
async fn the_command_waits_for_the_view() {
    let fake: Shared = Arc::default();
    let mut layer = client(&fake);
    let short = std::time::Duration::from_millis(200);
    let e = session::wait_mounted(&mut layer, ID, short)
        .await
        .unwrap_err();
    assert!(e.contains("did not mount the view"), "{e}");
    fake.lock().unwrap().mounted = true;
    session::wait_mounted(&mut layer, ID, short).await.unwrap();
}

#[test]
fn the_layer_id_is_the_folders() {
    let a = layer_id(Path::new("/home/u/p"));
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a, layer_id(Path::new("/home/u/p")));
    assert_ne!(a, layer_id(Path::new("/home/u/q")));
}

#[test]
fn dirs_are_absolute_clean_existing_folders() {
    let e = env();
    let d = e.dir.display().to_string();
    assert_eq!(resolve_dir(&format!("{d}/./")).unwrap(), e.dir);
    assert_eq!(resolve_dir(&format!("{d}/../dir")).unwrap(), e.dir);
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(resolve_dir(".").unwrap(), cwd);
    let err = resolve_dir(&format!("{d}/nope")).unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    let err = resolve_dir(&format!("{}/secret", e.outside.display())).unwrap_err();
    assert!(err.contains("is not a folder"), "{err}");
}

#[test]
fn a_writable_mount_at_above_or_below_the_folder_is_found() {
    let e = env();
    let sub = e.dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mounts = |loc: &Path, writable| {
        crate::mounts::resolve(
            &[crate::mounts::MountYaml {
                location: loc.display().to_string(),
                writable: Some(writable),
                ..Default::default()
            }],
            None,
            true,
        )
        .unwrap()
    };
    for loc in [&e.dir, e.dir.parent().unwrap(), &sub] {
        assert!(
            writable_overlap(&mounts(loc, true), &e.dir).is_some(),
            "{loc:?}"
        );
        assert!(
            writable_overlap(&mounts(loc, false), &e.dir).is_none(),
            "{loc:?}"
        );
    }
    assert!(writable_overlap(&mounts(&e.outside, true), &e.dir).is_none());
    // Through a symlink to the folder.
    let link = e.outside.join("link");
    std::os::unix::fs::symlink(&e.dir, &link).unwrap();
    assert!(writable_overlap(&mounts(&link, true), &e.dir).is_some());
}
