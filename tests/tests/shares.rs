//! Issue "shared folders": host folders in the guest through vsockfs (our
//! fs-server + FUSE), and the 9p and virtiofs mount types.
use std::time::{Duration, Instant};

use lima_tests::{sha256_hex, Lima};

/// Runs a shell script in the guest; fails the test with its output if it fails.
fn guest_sh(lima: &Lima, name: &str, script: &str) -> String {
    let r = lima.shell(name, &["sh", "-ec", script]);
    assert_eq!(
        r.code(),
        0,
        "guest script failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
        r.stdout(),
        r.stderr()
    );
    r.stdout()
}

#[test]
fn vsockfs_share_semantics() {
    let lima = Lima::new();
    let share = tempfile::tempdir_in("/tmp").unwrap();
    let ro = tempfile::tempdir_in("/tmp").unwrap();
    let (s, r) = (
        share.path().display().to_string(),
        ro.path().display().to_string(),
    );
    std::fs::write(ro.path().join("hello.txt"), "read only\n").unwrap();
    // A secret next to the share that escapes must not reach.
    let outside = share.path().parent().unwrap().join(format!(
        "{}-secret",
        share.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&outside, "TOP-SECRET-CONTENT\n").unwrap();
    let yaml = lima.template(
        "sh.yaml",
        &format!("mounts:\n- location: {s}\n  mountPoint: /mnt/share\n  writable: true\n- location: {r}\n  mountPoint: /mnt/ro\n"),
    );
    lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();

    // Both shares' frames go over their own virtio-serial ports.
    let log = std::fs::read_to_string(lima.instance_dir("sh").join("ha.stderr.log")).unwrap();
    for (dir, mp, port) in [
        (&s, "/mnt/share", "lima.fs.0"),
        (&r, "/mnt/ro", "lima.fs.1"),
    ] {
        let line = format!("mounted {dir} on {mp} (vsockfs, over {port})");
        assert!(
            log.contains(&line),
            "no {line:?} in the host agent log:\n{log}"
        );
    }
    // The guest user's first access to the fresh share, right after the
    // host made a file in its top folder 0600 and opened it up to 0644
    // (`cargo xtask bench mcp` does so): the host's mode, and the file
    // read. (A first getattr of the root lost to the host's invalidation
    // once failed it with EACCES; see `ROOT_PLACEHOLDER_MODE` in
    // guest-agent/src/share/mount.rs.)
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let late = share.path().join("late.txt");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&late)
            .unwrap();
        f.write_all(b"late\n").unwrap();
        drop(f);
        std::fs::set_permissions(&late, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let r0 = lima.shell(
        "sh",
        &[
            "sh",
            "-c",
            "cat /mnt/share/late.txt && stat -c %a /mnt/share/late.txt",
        ],
    );
    assert_eq!(
        (r0.code(), r0.stdout().as_str()),
        (0, "late\n644\n"),
        "{}",
        r0.stderr()
    );
    // A program that lives on the share runs from there: its execve reads
    // it through the guest agent that is spawning it.
    // It also says its nice value and the agent's: commands run at the
    // default priority, the agent above them.
    std::fs::write(
        share.path().join("prog.sh"),
        "#!/bin/sh\necho ran \"$@\" $(awk '{print $19}' /proc/self/stat) $(awk '{print $19}' /proc/1/stat)\n",
    )
    .unwrap();
    std::fs::set_permissions(
        share.path().join("prog.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r1 = lima.shell("sh", &["/mnt/share/prog.sh", "from-share"]);
    assert_eq!(
        (r1.code(), r1.stdout().trim()),
        (0, "ran from-share 0 -10"),
        "{}",
        r1.stderr()
    );

    // File operations inside the guest.
    guest_sh(
        &lima,
        "sh",
        r#"cd /mnt/share
grep -q ' /mnt/share fuse' /proc/mounts
echo one > f; echo two >> f; [ "$(cat f)" = "$(printf 'one\ntwo')" ]
: > f; [ ! -s f ]; echo abcdef > t; truncate -s 3 t 2>/dev/null || dd if=/dev/null of=t bs=1 seek=3 2>/dev/null; [ "$(cat t)" = abc ]
echo old > a; echo new > b; mv b a; [ "$(cat a)" = new ]; [ ! -e b ]
echo keep > u; exec 3< u; rm u; [ ! -e u ]; [ "$(cat <&3)" = keep ]; exec 3<&-
mkdir -p d/e; rmdir d/e; rmdir d; [ ! -e d ]
ln -s a sl; [ "$(readlink sl)" = a ]; [ "$(cat sl)" = new ]
ln a hl; [ "$(stat -c %h a)" = 2 ]; echo more >> hl; [ "$(cat a)" = "$(printf 'new\nmore')" ]
chmod 751 a; [ "$(stat -c %a a)" = 751 ]
touch -d '2001-02-03 04:05:06' a; [ "$(stat -c %Y a)" = "$(date -d '2001-02-03 04:05:06' +%s)" ]
[ "$(stat -c %u a)" = "$(id -u)" ] && [ "$(id -u)" != 0 ]
for i in 1 2 3 4; do (for j in $(seq 1 200); do echo "$i-$j"; done > w$i) & done; wait
for i in 1 2 3 4; do [ "$(wc -l < w$i)" = 200 ]; done
echo guest-wrote > from-guest
"#,
    );
    // Guest writes are on the host at once.
    assert_eq!(
        std::fs::read_to_string(share.path().join("from-guest")).unwrap(),
        "guest-wrote\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("a")).unwrap(),
        "new\nmore\n"
    );
    assert!(std::fs::symlink_metadata(share.path().join("sl"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Inode numbers are the host's (git's index compares them).
    use std::os::unix::fs::MetadataExt;
    let guest_ino = guest_sh(
        &lima,
        "sh",
        "stat -c %i /mnt/share/a /mnt/share/hl /mnt/share/t",
    );
    let host_ino: Vec<String> = ["a", "hl", "t"]
        .iter()
        .map(|f| {
            std::fs::metadata(share.path().join(f))
                .unwrap()
                .ino()
                .to_string()
        })
        .collect();
    assert_eq!(
        guest_ino.split_whitespace().collect::<Vec<_>>(),
        host_ino,
        "guest st_ino differs from the host's"
    );

    // A host edit is seen in the guest within 1 s (the guest read it before, so it is cached).
    std::fs::write(share.path().join("edit"), "v1\n").unwrap();
    assert_eq!(
        guest_sh(&lima, "sh", "cat /mnt/share/edit; ls /mnt/share >/dev/null"),
        "v1\n"
    );
    std::fs::write(share.path().join("edit"), "version2\n").unwrap();
    std::fs::write(share.path().join("new-on-host"), "x\n").unwrap();
    let t = Instant::now();
    loop {
        let out = lima
            .shell("sh", &["sh", "-c", "cat /mnt/share/edit; ls /mnt/share"])
            .stdout();
        if out.starts_with("version2\n") && out.contains("new-on-host") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "host edit not visible in the guest: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The guest caches entries and attributes for an hour (fs::TTL), so
    // seeing the edit at all proves the host's invalidation reached it; how
    // fast is measured by `cargo xtask bench shares`, not asserted here.
    eprintln!("host edit visible in the guest after {:?}", t.elapsed());

    // 200 MiB with matching checksums both ways, and an mmap read.
    let big: Vec<u8> = (0..200u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(share.path().join("big"), &big).unwrap();
    let host_sum = sha256_hex(&big);
    drop(big);
    let out = guest_sh(
        &lima,
        "sh",
        "cd /mnt/share; sha256sum big | cut -d' ' -f1; cp big big2; sync",
    );
    assert_eq!(out.trim(), host_sum);
    assert_eq!(
        sha256_hex(&std::fs::read(share.path().join("big2")).unwrap()),
        host_sum
    );
    std::fs::write(share.path().join("mm"), b"mapped bytes\n").unwrap();
    let r = lima
        .shell(
            "sh",
            &["lima-guest-agent", "tool", "mmap-cat", "/mnt/share/mm"],
        )
        .ok();
    assert_eq!(r.stdout(), "mapped bytes\n");
    guest_sh(&lima, "sh", "rm /mnt/share/big /mnt/share/big2");

    // Read-only: writes refused, reads fine.
    assert_eq!(
        guest_sh(&lima, "sh", "cat /mnt/ro/hello.txt"),
        "read only\n"
    );
    for cmd in [
        "echo x > /mnt/ro/new",
        "echo x >> /mnt/ro/hello.txt",
        "rm /mnt/ro/hello.txt",
        "mkdir /mnt/ro/d",
        "chmod 777 /mnt/ro/hello.txt",
    ] {
        let r = lima.shell("sh", &["sh", "-c", cmd]);
        assert_ne!(r.code(), 0, "{cmd} succeeded on a read-only share");
    }
    assert_eq!(
        std::fs::read_to_string(ro.path().join("hello.txt")).unwrap(),
        "read only\n"
    );
    assert_eq!(std::fs::read_dir(ro.path()).unwrap().count(), 1);

    // Escapes stay inside: `..` at the root, absolute and relative symlinks
    // made on the host, and a directory swapped for a symlink mid-walk.
    let secret_name = outside.file_name().unwrap().to_string_lossy().into_owned();
    let elsewhere = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::write(elsewhere.path().join("host-only-marker"), "secret\n").unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), share.path().join("abs")).unwrap();
    std::os::unix::fs::symlink(format!("../{secret_name}"), share.path().join("rel")).unwrap();
    std::fs::create_dir(share.path().join("dir")).unwrap();
    std::fs::write(share.path().join("dir/inner"), "inner\n").unwrap();
    let out = lima.shell(
        "sh",
        &["sh", "-c", &format!(
            "cat /mnt/share/../share/rel 2>&1; echo; cat /mnt/share/rel 2>&1; echo; ls /mnt/share/abs/ 2>&1 | head -3; echo; cat /mnt/share/dir/inner; cat /mnt/{secret_name} 2>&1"
        )],
    );
    // The guest resolves symlinks in its own namespace, where neither the
    // secret nor the absolute target exists.
    assert!(
        !out.stdout().contains("TOP-SECRET-CONTENT") && !out.stdout().contains("host-only-marker"),
        "escaped the share: {}",
        out.stdout()
    );
    assert!(out.stdout().contains("inner"), "{}", out.stdout());
    // Swap `dir` for a symlink to the parent of the share while the guest walks it.
    std::fs::rename(share.path().join("dir"), share.path().join("dir.old")).unwrap();
    std::os::unix::fs::symlink(share.path().parent().unwrap(), share.path().join("dir")).unwrap();
    let out = lima.shell(
        "sh",
        &[
            "sh",
            "-c",
            &format!("cat /mnt/share/dir/{secret_name} 2>&1; ls /mnt/share/dir/ 2>&1"),
        ],
    );
    assert!(
        !out.stdout().contains("TOP-SECRET-CONTENT"),
        "escaped through a swapped symlink: {}",
        out.stdout()
    );
    std::fs::remove_file(&outside).unwrap();
}

#[test]
fn nine_p_and_virtiofs_mount_types() {
    // Also vsockfs kept on vsock (LIMA_VSOCKFS_PORTS=off): the fallback
    // when the guest cannot open its port.
    let lima = Lima::new();
    let a = tempfile::tempdir_in("/tmp").unwrap();
    let b = tempfile::tempdir_in("/tmp").unwrap();
    let c = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::write(a.path().join("in-9p"), "9p\n").unwrap();
    std::fs::write(b.path().join("in-virtiofs"), "virtiofs\n").unwrap();
    std::fs::write(c.path().join("in-vsockfs"), "vsockfs\n").unwrap();
    // The guest user is another user than the host's when the tests run as
    // root, and 9p and virtiofs show host owners and modes as they are.
    for d in [&a, &b] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let yaml = lima.template(
        "mt.yaml",
        &format!(
            "mounts:\n- location: {}\n  mountPoint: /mnt/9p\n  writable: true\n  mountType: 9p\n- location: {}\n  mountPoint: /mnt/vfs\n  writable: true\n  mountType: virtiofs\n- location: {}\n  mountPoint: /mnt/vs\n  writable: true\n",
            a.path().display(),
            b.path().display(),
            c.path().display()
        ),
    );
    let started = lima.run(
        lima.cmd("limactl").env("LIMA_VSOCKFS_PORTS", "off").args([
            "start",
            "--timeout",
            "5m",
            &yaml,
        ]),
        None,
    );
    assert_eq!(started.code(), 0, "{}", started.stderr());
    let log = std::fs::read_to_string(lima.instance_dir("mt").join("ha.stderr.log")).unwrap();
    let line = format!(
        "mounted {} on /mnt/vs (vsockfs, over vsock)",
        c.path().display()
    );
    assert!(
        log.contains(&line),
        "no {line:?} in the host agent log:\n{log}"
    );
    let out = guest_sh(&lima, "mt", "cat /mnt/9p/in-9p /mnt/vfs/in-virtiofs /mnt/vs/in-vsockfs; grep -E ' /mnt/(9p|vfs) ' /proc/mounts | cut -d' ' -f3; echo w > /mnt/9p/back; echo w > /mnt/vfs/back; echo w > /mnt/vs/back");
    assert_eq!(out, "9p\nvirtiofs\nvsockfs\n9p\nvirtiofs\n");
    for d in [&a, &b, &c] {
        assert_eq!(
            std::fs::read_to_string(d.path().join("back")).unwrap(),
            "w\n"
        );
    }
}

#[test]
fn mount_errors_name_the_mount() {
    let lima = Lima::new();
    // A host folder that does not exist: refused before anything starts.
    let yaml = lima.template("missing.yaml", "mounts:\n- location: /no/such/folder\n");
    lima.limactl(&["start", &yaml])
        .fails_with("/no/such/folder does not exist");
    assert!(!lima.instance_dir("missing").exists());
    // A mount point the guest cannot create (under a file): start fails naming it.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let yaml = lima.template(
        "badpoint.yaml",
        &format!(
            "mounts:\n- location: {}\n  mountPoint: /proc/version/x\n",
            dir.path().display()
        ),
    );
    lima.limactl(&["start", "--timeout", "5m", &yaml])
        .fails_with("/proc/version/x");
    lima.wait_until("processes gone", Duration::from_secs(20), || {
        lima.our_processes().is_empty()
    });
}

/// Runs `sh -c SCRIPT` in the guest; returns (stdout, stderr), failing the
/// test if it fails or if anything complains about a lock.
fn guest_git(lima: &Lima, name: &str, script: &str) -> (String, String) {
    let r = lima.shell(name, &["sh", "-ec", script]);
    let (out, err) = (r.stdout(), r.stderr());
    assert_eq!(
        r.code(),
        0,
        "guest script failed:\n{script}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let lower = err.to_lowercase();
    assert!(
        !lower.contains("lock") && !lower.contains("unable to") && !lower.contains("fatal"),
        "git complained:\n{script}\n{err}"
    );
    (out, err)
}

/// git on a vsockfs share from a `builtin:debian` guest (needs
/// `cargo xtask image debian`): init, add, commit and status in the guest;
/// host edits show up in the guest's `git status`; the host's own git reads
/// what the guest committed. git's index.lock dance (O_EXCL create, write,
/// rename over the index) must work without complaints.
#[test]
fn git_on_a_vsockfs_share() {
    let lima = Lima::new();
    let share = tempfile::tempdir_in("/tmp").unwrap();
    let root = share.path();
    std::fs::write(root.join("a.txt"), "alpha\n").unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("dir/f{i}")), format!("file {i}\n")).unwrap();
    }
    let yaml = lima.home.path().join("git.yaml");
    std::fs::write(
        &yaml,
        format!(
            "images:\n- location: builtin:debian\ncpus: 2\nmemory: 1GiB\nmounts:\n- location: {}\n  mountPoint: /mnt/share\n  writable: true\n",
            root.display()
        ),
    )
    .unwrap();
    lima.limactl(&["start", "--timeout", "5m", yaml.to_str().unwrap()])
        .ok();
    let git = "git -c user.name=guest -c user.email=guest@localhost";
    guest_git(
        &lima,
        "git",
        &format!("cd /mnt/share; {git} init -q; {git} add .; {git} commit -q -m first"),
    );
    let (status, _) = guest_git(&lima, "git", "cd /mnt/share; git status --porcelain");
    assert_eq!(status, "", "fresh commit not clean");

    // A host edit and a host-created file reach the guest's git status.
    std::fs::write(root.join("a.txt"), "alpha\nedited on the host\n").unwrap();
    std::fs::write(root.join("dir/new-on-host"), "new\n").unwrap();
    let mut last = String::new();
    lima.wait_until(
        "host edits in the guest's git status",
        Duration::from_secs(30),
        || {
            last = guest_git(&lima, "git", "cd /mnt/share; git status --porcelain").0;
            last == " M a.txt\n?? dir/new-on-host\n"
        },
    );
    assert_eq!(last, " M a.txt\n?? dir/new-on-host\n");
    let (diff, _) = guest_git(&lima, "git", "cd /mnt/share; git diff --stat");
    assert!(diff.contains("a.txt | 1 +"), "{diff}");

    // Commit the host's changes from the guest; status is clean again, and
    // the host's git agrees (it reads the index and objects the guest wrote).
    guest_git(
        &lima,
        "git",
        &format!("cd /mnt/share; {git} add -A; {git} commit -q -m second; {git} gc -q"),
    );
    let (status, _) = guest_git(&lima, "git", "cd /mnt/share; git status --porcelain");
    assert_eq!(status, "");
    assert!(!root.join(".git/index.lock").exists());
    let host_git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["-c", "safe.directory=*"])
            .args(args)
            .output()
            .expect("host git");
        assert!(out.status.success(), "host git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(host_git(&["log", "--format=%s"]), "second\nfirst\n");
    assert_eq!(host_git(&["status", "--porcelain"]), "");
    assert_eq!(
        host_git(&["show", "HEAD:a.txt"]),
        "alpha\nedited on the host\n"
    );
}

/// A tree with more nodes than the file server may hold fds for: with a
/// budget of 150 (`LIMA_FS_NODE_BUDGET`), the server asks the guest to forget
/// its least recently used entries, so every file still reads right and the
/// host agent's fds stay bounded (without it: one fd per cached node, and
/// EMFILE once a tree outgrows the fd limit).
#[test]
fn a_tree_larger_than_the_node_budget() {
    let lima = Lima::new();
    let share = tempfile::tempdir_in("/tmp").unwrap();
    for d in 0..20 {
        let dir = share.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..25 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let s = share.path().display().to_string();
    let yaml = lima.template(
        "budget.yaml",
        &format!("mounts:\n- location: {s}\n  mountPoint: /mnt/share\n"),
    );
    lima.run(
        lima.cmd("limactl")
            .args(["start", "--timeout", "5m", &yaml])
            .env("LIMA_FS_NODE_BUDGET", "150"),
        None,
    )
    .ok();
    // find's own errors go to stderr, shown if the count is wrong.
    let script = "cd /mnt/share; find . -type f | wc -l; cat d*/f* | wc -l; cat d7/f13";
    for _ in 0..2 {
        let r = lima.shell("budget", &["sh", "-ec", script]);
        let out = r.stdout();
        assert_eq!(
            (r.code(), out.split_whitespace().collect::<Vec<_>>()),
            (0, vec!["500", "500", "7/13"]),
            "stdout:\n{out}\nstderr:\n{}",
            r.stderr()
        );
    }
    let pid = std::fs::read_to_string(lima.instance_dir("budget").join("ha.pid")).unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", pid.trim()))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    };
    // 520 nodes were walked; the server holds at most the budget of them,
    // plus its other fds (sockets, QEMU's, inotify).
    lima.wait_until(
        "host agent fds back under the budget",
        Duration::from_secs(30),
        || fds() < 150 + 100,
    );
}
