//! Issue 23, `limactl shell --sync DIR`: the command works on a private
//! copy-on-write view of DIR; nothing reaches the host before it is
//! reviewed and applied (`limactl sync`). One instance of the default
//! image, a 10,000-file tree.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lima_tests::Lima;

const NAME: &str = "sy";

/// Every entry under `d`: path, content (a symlink's target), mode, mtime.
fn snapshot(d: &Path) -> Vec<(String, Vec<u8>, u32, i64)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>, u32, i64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((rel, t.display().to_string().into_bytes(), 0, m.mtime()));
            } else if m.is_dir() {
                out.push((rel, Vec::new(), mode, 0));
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap(), mode, m.mtime()));
            }
        }
    }
    let mut out = Vec::new();
    walk(d, d, &mut out);
    out.sort();
    out
}

/// Without mtimes (applied files carry the guest's).
fn contents(d: &Path) -> Vec<(String, Vec<u8>, u32)> {
    snapshot(d)
        .into_iter()
        .map(|(p, c, m, _)| (p, c, m))
        .collect()
}

/// `proj/d00..d99/f00..f99` (10,000 files) and a few named ones.
fn project(base: &Path) -> PathBuf {
    let proj = base.join("proj");
    for d in 0..100 {
        let dir = proj.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:02}")), format!("file {d} {f}\n")).unwrap();
        }
    }
    for (f, text) in [
        ("edit.txt", "line one\nline two\n"),
        ("del.txt", "delete me\n"),
        ("old.txt", "move me\n"),
        ("conflict.txt", "host version\n"),
    ] {
        std::fs::write(proj.join(f), text).unwrap();
    }
    proj
}

/// `limactl sync list` rows: (dir, changes, state).
fn layers(lima: &Lima) -> Vec<(String, u64, String)> {
    let r = lima.limactl(&["sync", "list", NAME]).ok();
    r.stdout()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[3].to_string())
        })
        .collect()
}

#[test]
fn sync_review_apply_conflict_discard_and_kill() {
    // As our users run it: an ordinary user's limactl, file servers and
    // folders.
    let lima = Lima::as_ordinary_user();
    let base = lima.user_dir("sy-base");
    let proj = project(&base);
    let p = proj.display().to_string();
    let writable = base.join("w");
    std::fs::create_dir_all(writable.join("sub")).unwrap();
    if let Some(u) = &lima.user {
        let owner = format!("{}:{}", u.uid, u.gid);
        let st = std::process::Command::new("chown")
            .args(["-R", &owner])
            .arg(&base)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let yaml = lima.template(
        "sy.yaml",
        &format!(
            "mounts:\n- location: {}\n  writable: true\n",
            writable.display()
        ),
    );
    lima.limactl(&["start", "--name", NAME, "--timeout", "5m", &yaml])
        .ok();

    // A folder the instance mounts writable, one inside it, one above it:
    // the guest could write around the review.
    for dir in [
        writable.display().to_string(),
        writable.join("sub").display().to_string(),
        base.display().to_string(),
    ] {
        lima.limactl(&["shell", "--sync", &dir, NAME, "--", "true"])
            .fails_with("writable");
    }

    // --no: the host stays byte for byte as it was; no layer is left.
    let before = snapshot(&proj);
    let r = lima.limactl(&[
        "shell",
        "--sync",
        &p,
        "--no",
        NAME,
        "--",
        "sh",
        "-ec",
        "echo x > d00/f00; rm d01/f01; echo new > n.txt; mkdir nd; pwd",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout().trim(), p, "the command runs in DIR");
    assert!(
        r.messages().contains("discarded 4 changes"),
        "{}",
        r.messages()
    );
    assert_eq!(snapshot(&proj), before);
    assert!(layers(&lima).is_empty());

    // No terminal, neither --yes nor --no: the layer is kept; the exit code
    // is the command's.
    let script = "echo added > added.txt; mkdir newdir; echo n > newdir/n.txt; \
                  echo 'line three' >> edit.txt; rm del.txt; mv old.txt renamed.txt; \
                  echo guest >> conflict.txt; chmod 755 d07/f07; exit 3";
    let r = lima.limactl(&["shell", "--sync", &p, NAME, "--", "sh", "-c", script]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(
        r.messages().contains("limactl sync diff sy"),
        "{}",
        r.messages()
    );
    assert_eq!(snapshot(&proj), before, "nothing reached the host");
    assert_eq!(layers(&lima), [(p.clone(), 8, "pending".to_string())]);

    // The review lists exactly those changes, then the diffs.
    let diff = lima.limactl(&["sync", "diff", NAME]).ok().stdout();
    let listed: Vec<&str> = diff.lines().skip(1).take(8).collect();
    assert_eq!(
        listed,
        [
            "A  added.txt",
            "M  conflict.txt",
            "M  d07/f07",
            "D  del.txt",
            "M  edit.txt",
            "A  newdir/",
            "A  newdir/n.txt",
            "R  old.txt -> renamed.txt",
        ],
        "{diff}"
    );
    for want in [
        " line two\n+line three\n",
        "old mode 100644\nnew mode 100755\n",
        "rename from old.txt\nrename to renamed.txt\n",
        "-delete me\n",
    ] {
        assert!(diff.contains(want), "no {want:?} in:\n{diff}");
    }

    // The person edits a file the guest changed too: a conflict, kept.
    std::fs::write(proj.join("conflict.txt"), "host edit\n").unwrap();
    let r = lima.limactl(&["sync", "apply", NAME]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.messages()
            .contains("M  conflict.txt: changed on the host"),
        "{}",
        r.messages()
    );
    let edit = |want: &mut Vec<(String, Vec<u8>, u32)>, path: &str, to: Option<(&str, u32)>| {
        want.retain(|(p, _, _)| p != path);
        if let Some((c, m)) = to {
            want.push((path.to_string(), c.as_bytes().to_vec(), m));
        }
    };
    let mut want: Vec<_> = before
        .iter()
        .map(|(p, c, m, _)| (p.clone(), c.clone(), *m))
        .collect();
    edit(&mut want, "conflict.txt", Some(("host edit\n", 0o644)));
    edit(&mut want, "added.txt", Some(("added\n", 0o644)));
    edit(&mut want, "newdir", Some(("", 0o755)));
    edit(&mut want, "newdir/n.txt", Some(("n\n", 0o644)));
    edit(
        &mut want,
        "edit.txt",
        Some(("line one\nline two\nline three\n", 0o644)),
    );
    edit(&mut want, "del.txt", None);
    edit(&mut want, "old.txt", None);
    edit(&mut want, "renamed.txt", Some(("move me\n", 0o644)));
    edit(&mut want, "d07/f07", Some(("file 7 7\n", 0o755)));
    want.sort();
    assert_eq!(contents(&proj), want);
    assert_eq!(layers(&lima), [(p.clone(), 1, "pending".to_string())]);
    // Discarding it leaves the host as it is.
    let now = snapshot(&proj);
    lima.limactl(&["sync", "discard", NAME]).ok();
    assert_eq!(snapshot(&proj), now);
    assert!(layers(&lima).is_empty());

    // --yes applies at the end of the session.
    let r = lima.limactl(&[
        "shell",
        "--sync",
        &p,
        "--yes",
        NAME,
        "--",
        "sh",
        "-c",
        "echo y > yes.txt",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(std::fs::read(proj.join("yes.txt")).unwrap(), b"y\n");
    assert!(layers(&lima).is_empty());

    // A killed limactl loses nothing: the layer stays, and can be applied.
    // The command keeps the share busy (16 loops, each looking up a new
    // name each time, which no cache answers), so the file server likely
    // dies with requests unread: it must still end the stream so that the
    // guest hears it. (fs-server/tests/parent_death.rs makes sure of it.)
    let busy = "echo k > killed.txt; for j in $(seq 16); do \
                (i=0; while :; do i=$((i+1)); cat miss-$j-$i 2>/dev/null; done) & done; wait";
    let mut child = lima
        .cmd("limactl")
        .args(["shell", "--sync", &p, NAME, "--", "sh", "-c", busy])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lima.wait_until("the session's change", Duration::from_secs(60), || {
        layers(&lima) == [(p.clone(), 1, "running".to_string())]
    });
    child.kill().unwrap();
    child.wait().unwrap();
    lima.wait_until("the view to go", Duration::from_secs(30), || {
        layers(&lima) == [(p.clone(), 1, "pending".to_string())]
    });
    assert!(!proj.join("killed.txt").exists());
    lima.limactl(&["sync", "apply", NAME]).ok();
    assert_eq!(std::fs::read(proj.join("killed.txt")).unwrap(), b"k\n");
    assert!(layers(&lima).is_empty());
}
