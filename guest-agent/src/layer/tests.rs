//! The layer's view on real FUSE mounts of this machine, over a plain
//! lower folder, and the Layer service's answers. The mounting tests are
//! ignored by default: they need root and `/dev/fuse` (`cargo xtask test`
//! runs them where it can; by hand: `cargo test -p lima-guest-agent layer
//! -- --ignored`). The rest run anywhere.
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lima_proto::layer::{ChangeKind, LayerPath, LayerReply, LayerRequest, NodeKind};

use super::journal::Record;
use super::service::handle;
use super::store::Store;

const UID: u32 = 4321;
const GID: u32 = 8765;

fn unique(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "lima-layer-test-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A lower folder, a store and a mount point.
struct Fixture {
    base: PathBuf,
    lower: PathBuf,
    store: Store,
    mnt: PathBuf,
    id: String,
}

impl Fixture {
    fn new() -> Fixture {
        let base = unique("fx");
        let lower = base.join("lower");
        std::fs::create_dir(&lower).unwrap();
        std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture {
            base: base.clone(),
            lower,
            store: Store {
                root: base.join("layers"),
            },
            mnt: base.join("mnt/project"),
            id: "test-layer".into(),
        }
    }

    fn mount(&self) {
        super::start_view(
            &self.store,
            &self.id,
            &self.lower,
            self.mnt.to_str().unwrap(),
            UID,
            GID,
        )
        .unwrap();
    }

    fn unmount(&self) {
        super::stop_view(&self.store, &self.id);
    }

    fn lower_calls(&self) -> u64 {
        self.store
            .overlay(&self.id)
            .map(|o| o.lower_calls.load(Ordering::Relaxed))
            .unwrap()
    }

    fn changes(&self) -> Vec<(String, String)> {
        match handle(
            &self.store,
            LayerRequest::Changes {
                id: self.id.clone(),
            },
        ) {
            LayerReply::Changes(c) => c
                .into_iter()
                .map(|c| {
                    let kind = match c.kind {
                        ChangeKind::Renamed { from, modified } => format!(
                            "renamed from {}{}",
                            String::from_utf8_lossy(&from.0),
                            if modified { " (modified)" } else { "" }
                        ),
                        k => format!("{k:?}").to_lowercase(),
                    };
                    (String::from_utf8_lossy(&c.path.0).into_owned(), kind)
                })
                .collect(),
            other => panic!("Changes: {other:?}"),
        }
    }

    fn read(&self, path: &str, offset: u64, len: u32) -> LayerReply {
        handle(
            &self.store,
            LayerRequest::Read {
                id: self.id.clone(),
                path: path.as_bytes().to_vec(),
                offset,
                len,
            },
        )
    }
}

impl Drop for Fixture {
    /// A failed test leaves no mount behind.
    fn drop(&mut self) {
        super::stop_view(&self.store, &self.id);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Every entry below `root`: path → (mode, content or link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.mode(), body),
            );
        }
    }
    out
}

fn write(p: &Path, body: impl AsRef<[u8]>) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, body).unwrap();
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
fn edits_land_in_the_layer_and_changes_name_exactly_them() {
    let fx = Fixture::new();
    let lo = &fx.lower;
    write(&lo.join("a.txt"), "alpha\n");
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    write(&lo.join("bin.dat"), &binary);
    write(&lo.join("gone.txt"), "bye\n");
    write(&lo.join("ren.txt"), "moving\n");
    write(&lo.join("sub/x"), "x\n");
    write(&lo.join("mode.sh"), "#!/bin/sh\n");
    write(&lo.join("tree/a"), "a");
    write(&lo.join("tree/b/c"), "c");
    write(&lo.join("keep/k"), "k");
    std::os::unix::fs::symlink("a.txt", lo.join("link")).unwrap();
    std::fs::set_permissions(lo.join("mode.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = snapshot(lo);

    fx.mount();
    let m = &fx.mnt;
    // What the lower folder holds shows through, owned by the guest user.
    assert_eq!(std::fs::read_to_string(m.join("a.txt")).unwrap(), "alpha\n");
    assert_eq!(std::fs::read(m.join("bin.dat")).unwrap(), binary);
    assert_eq!(
        std::fs::read_link(m.join("link")).unwrap(),
        Path::new("a.txt")
    );
    let meta = std::fs::metadata(m.join("sub/x")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID, GID));
    assert_eq!(std::fs::metadata(m).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(fx.changes(), []);

    write(&m.join("new.txt"), "new\n");
    std::fs::write(m.join("a.txt"), "alpha, edited\n").unwrap();
    let mut edited = binary.clone();
    edited[7] = 0;
    edited.extend_from_slice(&[0xff, 0, 0xfe]);
    std::fs::write(m.join("bin.dat"), &edited).unwrap();
    std::fs::remove_file(m.join("gone.txt")).unwrap();
    std::fs::create_dir(m.join("moved")).unwrap();
    std::fs::rename(m.join("ren.txt"), m.join("moved/ren2.txt")).unwrap();
    std::fs::rename(m.join("sub/x"), m.join("x2")).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("x2"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
        .unwrap();
    std::os::unix::fs::symlink("./a.txt", m.join("newlink")).unwrap();
    std::fs::set_permissions(m.join("mode.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(m.join("newdir")).unwrap();
    std::fs::create_dir(m.join("tmpdir")).unwrap();
    std::fs::remove_dir(m.join("tmpdir")).unwrap();
    std::fs::remove_dir_all(m.join("tree")).unwrap();
    // A lower directory does not move (mv copies); hard links are refused.
    assert_eq!(
        errno(std::fs::rename(m.join("keep"), m.join("kept"))),
        Some(libc::EXDEV)
    );
    assert_eq!(
        errno(std::fs::hard_link(m.join("new.txt"), m.join("hard"))),
        Some(libc::EXDEV)
    );
    // rm -rf then mkdir: the new directory does not show the old entries.
    std::fs::create_dir(m.join("tree")).unwrap();
    assert_eq!(std::fs::read_dir(m.join("tree")).unwrap().count(), 0);
    std::fs::remove_dir(m.join("tree")).unwrap();

    // The view.
    assert_eq!(
        std::fs::read_to_string(m.join("a.txt")).unwrap(),
        "alpha, edited\n"
    );
    assert_eq!(std::fs::read(m.join("bin.dat")).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(m.join("x2")).unwrap(), "x\nmore\n");
    assert_eq!(
        std::fs::read_to_string(m.join("moved/ren2.txt")).unwrap(),
        "moving\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.join("newlink")).unwrap(),
        "alpha, edited\n"
    );
    assert_eq!(
        std::fs::metadata(m.join("mode.sh")).unwrap().mode() & 0o7777,
        0o755
    );
    let mut names: Vec<String> = std::fs::read_dir(m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "a.txt", "bin.dat", "keep", "link", "mode.sh", "moved", "new.txt", "newdir", "newlink",
            "sub", "x2"
        ]
    );
    assert!(std::fs::read_dir(m.join("sub")).unwrap().next().is_none());
    assert_eq!(
        errno(std::fs::metadata(m.join("gone.txt"))),
        Some(libc::ENOENT)
    );
    // The lower folder is untouched.
    assert_eq!(snapshot(lo), before);

    let want = pairs(&[
        ("a.txt", "modified"),
        ("bin.dat", "modified"),
        ("gone.txt", "deleted"),
        ("mode.sh", "modified"),
        ("moved", "added"),
        ("moved/ren2.txt", "renamed from ren.txt"),
        ("new.txt", "added"),
        ("newdir", "added"),
        ("newlink", "added"),
        ("tree", "deleted"),
        ("tree/a", "deleted"),
        ("tree/b", "deleted"),
        ("tree/b/c", "deleted"),
        ("x2", "renamed from sub/x (modified)"),
    ]);
    assert_eq!(fx.changes(), want);

    // Bases are the lower files as first seen; `now` the layer's state.
    let LayerReply::Changes(full) = handle(&fx.store, LayerRequest::Changes { id: fx.id.clone() })
    else {
        panic!()
    };
    let a = full.iter().find(|c| c.path.0 == b"a.txt").unwrap();
    let lm = std::fs::metadata(lo.join("a.txt")).unwrap();
    let base = a.base.unwrap();
    assert_eq!(
        (base.kind, base.size, base.mtime.secs),
        (NodeKind::File, 6, lm.mtime())
    );
    assert_eq!(a.now.as_ref().unwrap().size, 14);
    let nl = full.iter().find(|c| c.path.0 == b"newlink").unwrap();
    assert_eq!(nl.now.as_ref().unwrap().kind, NodeKind::Symlink);
    assert!(nl.base.is_none());

    // Read: new bytes, in chunks; a symlink's target.
    let mut got = Vec::new();
    loop {
        let LayerReply::Data(d) = fx.read("bin.dat", got.len() as u64, 1000) else {
            panic!()
        };
        if d.is_empty() {
            break;
        }
        got.extend(d);
    }
    assert_eq!(got, edited);
    assert_eq!(
        fx.read("newlink", 0, 100),
        LayerReply::Data(b"./a.txt".to_vec())
    );
    for bad in ["/etc/passwd", "../x", "a//b", "sub/../a.txt"] {
        assert!(matches!(fx.read(bad, 0, 10), LayerReply::Error(_)), "{bad}");
    }
    assert!(matches!(fx.read("keep/k", 0, 10), LayerReply::Error(_)));

    // Drop what "was applied": gone from the layer, the rest stays.
    let drop = |paths: &[&str]| {
        handle(
            &fx.store,
            LayerRequest::Drop {
                id: fx.id.clone(),
                paths: paths
                    .iter()
                    .map(|p| LayerPath(p.as_bytes().to_vec()))
                    .collect(),
            },
        )
    };
    assert_eq!(drop(&["new.txt", "gone.txt", "x2"]), LayerReply::Done);
    let mut left = want.clone();
    left.retain(|(p, _)| !["new.txt", "gone.txt", "x2"].contains(&p.as_str()));
    assert_eq!(fx.changes(), left);
    assert!(matches!(drop(&["/abs"]), LayerReply::Error(_)));
    // The view shows the lower folder where a change was dropped (the
    // host has applied it there).
    assert_eq!(
        errno(std::fs::metadata(m.join("new.txt"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::read_to_string(m.join("gone.txt")).unwrap(),
        "bye\n"
    );
    // An added directory still holding an undropped change stays; a
    // deleted tree goes whole.
    let applied = ["moved", "tree", "tree/a", "tree/b", "tree/b/c"];
    assert_eq!(drop(&applied), LayerReply::Done);
    left.retain(|(p, _)| !applied.contains(&p.as_str()));
    assert_eq!(fx.changes(), left);
    assert!(m.join("moved/ren2.txt").exists());

    // Listed as mounted; discard unmounts and deletes.
    let LayerReply::Layers(list) = handle(&fx.store, LayerRequest::List) else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, fx.id);
    assert!(list[0].mounted);
    assert_eq!(list[0].mount_point, fx.mnt.to_str().unwrap());
    assert_eq!(list[0].changes, left.len() as u64);
    assert_eq!(
        handle(&fx.store, LayerRequest::Discard { id: fx.id.clone() }),
        LayerReply::Done
    );
    assert!(!is_mounted(&fx.mnt));
    assert_eq!(
        handle(&fx.store, LayerRequest::List),
        LayerReply::Layers(vec![])
    );
    assert!(matches!(
        handle(&fx.store, LayerRequest::Changes { id: fx.id.clone() }),
        LayerReply::Error(_)
    ));
    assert_eq!(snapshot(lo), before);
}

fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

#[test]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
fn a_large_tree_is_not_walked_and_the_journal_outlives_the_view() {
    let fx = Fixture::new();
    for d in 0..100 {
        let dir = fx.lower.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:02}")), format!("{d} {f}\n")).unwrap();
        }
    }
    fx.mount();
    // Starting the view stat-ed the lower root, nothing more.
    assert!(fx.lower_calls() <= 1, "{}", fx.lower_calls());
    let m = &fx.mnt;
    assert_eq!(
        std::fs::read_to_string(m.join("d42/f17")).unwrap(),
        "42 17\n"
    );
    // A lookup per component, not per file in the tree.
    assert!(fx.lower_calls() <= 5, "{}", fx.lower_calls());
    // Listing a directory lists it once, no stat per entry.
    let before = fx.lower_calls();
    assert_eq!(std::fs::read_dir(m.join("d50")).unwrap().count(), 100);
    assert!(
        fx.lower_calls() - before <= 2,
        "{}",
        fx.lower_calls() - before
    );

    std::fs::write(m.join("d01/f01"), "edited\n").unwrap();
    std::fs::remove_file(m.join("d02/f02")).unwrap();
    std::fs::rename(m.join("d03/f03"), m.join("d04/moved")).unwrap();
    write(&m.join("d99/new"), "new\n");
    let want = pairs(&[
        ("d01/f01", "modified"),
        ("d02/f02", "deleted"),
        ("d04/moved", "renamed from d03/f03"),
        ("d99/new", "added"),
    ]);
    assert_eq!(fx.changes(), want);
    assert!(fx.lower_calls() < 100, "{}", fx.lower_calls());

    // The session ends (limactl killed): the view goes, the layer stays,
    // and it is read back from its journal without the lower folder.
    fx.unmount();
    assert!(!is_mounted(&fx.mnt));
    fx.store.evict(&fx.id);
    let hidden = fx.lower.with_extension("away");
    std::fs::rename(&fx.lower, &hidden).unwrap();
    assert_eq!(fx.changes(), want);
    let LayerReply::Layers(list) = handle(&fx.store, LayerRequest::List) else {
        panic!()
    };
    assert!(!list[0].mounted);
    assert_eq!(list[0].changes, 4);
    assert_eq!(
        fx.read("d01/f01", 0, 100),
        LayerReply::Data(b"edited\n".to_vec())
    );

    // A second session reuses the layer.
    std::fs::rename(&hidden, &fx.lower).unwrap();
    fx.store.evict(&fx.id);
    fx.mount();
    assert_eq!(
        std::fs::read_to_string(m.join("d01/f01")).unwrap(),
        "edited\n"
    );
    assert_eq!(
        errno(std::fs::metadata(m.join("d02/f02"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno(std::fs::metadata(m.join("d03/f03"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::read_to_string(m.join("d04/moved")).unwrap(),
        "3 3\n"
    );
    assert_eq!(fx.changes(), want);
    assert_eq!(
        handle(&fx.store, LayerRequest::Discard { id: fx.id.clone() }),
        LayerReply::Done
    );
}

#[test]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
fn the_guest_user_works_in_the_view() {
    let fx = Fixture::new();
    write(&fx.lower.join("a.txt"), "alpha\n");
    write(&fx.lower.join("src/main.rs"), "fn main() {}\n");
    fx.mount();
    // A shell as the guest user (not root): create, edit, mkdir, rename.
    let script = "set -e; cd \"$1\"; echo hi > f; mkdir d; cat a.txt >> f; mv f d/g; \
                  echo '// more' >> src/main.rs; rm a.txt; id -u > d/who";
    let st = std::process::Command::new("/bin/sh")
        .args(["-c", script, "sh"])
        .arg(&fx.mnt)
        .uid(UID)
        .gid(GID)
        .status()
        .unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(
        std::fs::read_to_string(fx.mnt.join("d/g")).unwrap(),
        "hi\nalpha\n"
    );
    assert_eq!(
        std::fs::read_to_string(fx.mnt.join("d/who")).unwrap(),
        format!("{UID}\n")
    );
    assert_eq!(
        fx.changes(),
        pairs(&[
            ("a.txt", "deleted"),
            ("d", "added"),
            ("d/g", "added"),
            ("d/who", "added"),
            ("src/main.rs", "modified"),
        ])
    );
    // Another user is refused by the modes the view shows (0644 files).
    let st = std::process::Command::new("/bin/sh")
        .args(["-c", "echo x >> \"$1/src/main.rs\"", "sh"])
        .arg(&fx.mnt)
        .uid(UID + 1)
        .gid(GID + 1)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    assert_eq!(
        handle(&fx.store, LayerRequest::Discard { id: fx.id.clone() }),
        LayerReply::Done
    );
}

use std::os::unix::process::CommandExt;

/// Without a mount: records and the upper folder alone make the changes.
#[test]
fn changes_come_from_the_upper_folder_and_the_records() {
    let fx = Fixture::new();
    let layer = fx.store.open(&fx.id, true).unwrap();
    let seen = |size| super::journal::Seen {
        base: lima_proto::layer::BaseStat {
            kind: NodeKind::File,
            size,
            mtime: lima_proto::fs::Time { secs: 1, nanos: 0 },
            ctime: lima_proto::fs::Time { secs: 1, nanos: 0 },
        },
        mode: 0o644,
    };
    {
        let mut inner = layer.inner.lock().unwrap();
        for r in [
            Record::Mount("/p".into()),
            Record::Seen(b"old".to_vec(), seen(3)),
            Record::Whiteout(b"old".to_vec()),
            Record::Seen(b"from".to_vec(), seen(4)),
            Record::Whiteout(b"from".to_vec()),
            Record::Origin(b"to".to_vec(), b"from".to_vec()),
            Record::Seen(b"edit".to_vec(), seen(1)),
        ] {
            inner.record(r).unwrap();
        }
    }
    write(&layer.upper.join("to"), "1234");
    write(&layer.upper.join("edit"), "changed");
    write(&layer.upper.join("added"), "");
    assert_eq!(
        fx.changes(),
        pairs(&[
            ("added", "added"),
            ("edit", "modified"),
            ("old", "deleted"),
            ("to", "renamed from from (modified)"),
        ])
    );
    // Replayed from the journal alone.
    drop(layer);
    fx.store.evict(&fx.id);
    assert_eq!(fx.changes().len(), 4);
    assert!(matches!(fx.read("..", 0, 1), LayerReply::Error(_)));
    assert!(matches!(
        handle(&fx.store, LayerRequest::Changes { id: "../x".into() }),
        LayerReply::Error(_)
    ));
    // Dropping everything removes the layer.
    let LayerReply::Changes(all) = handle(&fx.store, LayerRequest::Changes { id: fx.id.clone() })
    else {
        panic!()
    };
    let paths = all.into_iter().map(|c| c.path).collect();
    assert_eq!(
        handle(
            &fx.store,
            LayerRequest::Drop {
                id: fx.id.clone(),
                paths
            }
        ),
        LayerReply::Done
    );
    assert_eq!(
        handle(&fx.store, LayerRequest::List),
        LayerReply::Layers(vec![])
    );
}

#[test]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
fn renames_truncates_and_touches_are_reviewed_as_what_they_did() {
    let fx = Fixture::new();
    for name in ["a", "b", "c", "d", "f", "h", "r", "t", "dir/e"] {
        write(&fx.lower.join(name), format!("{name}\n"));
    }
    fx.mount();
    let m = &fx.mnt;
    // Over a lower file: reviewed as that file modified and the original
    // deleted, so the host checks both.
    std::fs::rename(m.join("a"), m.join("b")).unwrap();
    // Truncated, touched.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("c"))
        .unwrap();
    let st = std::process::Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg("2001-01-01")
        .arg(m.join("d"))
        .status()
        .unwrap();
    assert!(st.success());
    // A new file saved over a lower one (an editor's save-by-rename).
    std::fs::write(m.join("dir/.e.swp"), "new e\n").unwrap();
    std::fs::rename(m.join("dir/.e.swp"), m.join("dir/e")).unwrap();
    // There and back again; opened for writing, nothing written.
    std::fs::rename(m.join("f"), m.join("g")).unwrap();
    std::fs::rename(m.join("g"), m.join("f")).unwrap();
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("h"))
            .unwrap(),
    );
    // Moved, then deleted: the original is deleted.
    std::fs::rename(m.join("r"), m.join("r2")).unwrap();
    std::fs::remove_file(m.join("r2")).unwrap();
    assert_eq!(
        errno(std::fs::hard_link(m.join("f"), m.join("h2"))),
        Some(libc::EXDEV)
    );

    // Space reserved in a new file.
    let fa = std::fs::File::create(m.join("fa")).unwrap();
    // SAFETY: posix_fallocate on a descriptor `fa` holds open.
    let r = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&fa), 0, 4096) };
    assert_eq!(r, 0);
    assert_eq!(fa.metadata().unwrap().len(), 4096);
    drop(fa);
    // A file becomes a directory (a new node for the kernel).
    assert!(std::fs::metadata(m.join("t")).unwrap().is_file());
    std::fs::remove_file(m.join("t")).unwrap();
    std::fs::create_dir(m.join("t")).unwrap();
    assert!(std::fs::metadata(m.join("t")).unwrap().is_dir());
    write(&m.join("t/inside"), "x");
    assert_eq!(std::fs::read_to_string(m.join("b")).unwrap(), "a\n");
    assert_eq!(std::fs::read_to_string(m.join("dir/e")).unwrap(), "new e\n");
    assert_eq!(std::fs::metadata(m.join("c")).unwrap().len(), 0);
    assert_eq!(
        fx.changes(),
        pairs(&[
            ("a", "deleted"),
            ("b", "modified"),
            ("c", "modified"),
            ("d", "modified"),
            ("dir/e", "modified"),
            ("fa", "added"),
            ("r", "deleted"),
            ("t", "modified"),
            ("t/inside", "added"),
        ])
    );
    // Applied and dropped, the moved-over file leaves nothing behind: a
    // new `b` later is just added.
    let drop = LayerRequest::Drop {
        id: fx.id.clone(),
        paths: vec![LayerPath(b"b".to_vec())],
    };
    assert_eq!(handle(&fx.store, drop), LayerReply::Done);
    assert!(!fx.changes().iter().any(|(p, _)| p == "b"));
    assert!(fx.changes().contains(&("a".into(), "deleted".into())));
    fx.unmount();
}

/// Git's own ways of writing (lock files renamed into place, hard links
/// refused and replaced, fsync) work in the view, and a clone of a repo
/// in the lower folder can commit without touching it.
#[test]
#[ignore = "mounts FUSE: needs root and /dev/fuse (issue 23, shell --sync)"]
fn git_commits_in_the_view() {
    let fx = Fixture::new();
    // As the guest user in the view (git refuses a repo owned by another).
    let git = |dir: &Path, args: &[&str]| {
        let mut cmd = std::process::Command::new("git");
        if dir.starts_with(&fx.mnt) {
            cmd.uid(UID).gid(GID).env("HOME", "/nonexistent");
        }
        let out = cmd
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .expect("git (the test needs it)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    write(&fx.lower.join("README"), "hello\n");
    git(&fx.lower, &["init", "-q"]);
    git(&fx.lower, &["add", "README"]);
    git(&fx.lower, &["commit", "-qm", "one"]);
    let before = snapshot(&fx.lower);
    fx.mount();
    let m = &fx.mnt;
    assert_eq!(git(m, &["status", "--porcelain"]), "");
    std::fs::write(m.join("README"), "hello, world\n").unwrap();
    write(&m.join("src/lib.rs"), "// lib\n");
    git(m, &["add", "-A"]);
    git(m, &["commit", "-qm", "two"]);
    assert_eq!(git(m, &["log", "--format=%s"]), "two\none\n");
    assert_eq!(git(m, &["status", "--porcelain"]), "");
    assert_eq!(snapshot(&fx.lower), before);
    let changed: Vec<String> = fx.changes().into_iter().map(|(p, _)| p).collect();
    assert!(changed.contains(&"README".to_string()), "{changed:?}");
    assert!(changed.contains(&".git/index".to_string()), "{changed:?}");
    assert!(
        changed.iter().any(|p| p.starts_with(".git/objects/")),
        "{changed:?}"
    );
    fx.unmount();
}
