//! Private state (docs/security.md): while an instance runs with a share in
//! use, and a `lima-run` runs beside it, nothing under `LIMA_HOME` or the
//! scratch directory has a group or other permission bit, and another
//! unprivileged user can open, list or connect to none of it.
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lima_tests::Lima;

/// Every entry below `dir` (not `dir` itself), with its kind for the probe.
fn walk(dir: &Path, out: &mut Vec<(char, PathBuf)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue; // gone meanwhile
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_socket() {
            's'
        } else if ft.is_file() {
            'f'
        } else {
            continue;
        };
        out.push((kind, e.path()));
        if ft.is_dir() {
            walk(&e.path(), out);
        }
    }
}

/// What a user who is not us reaches: the probe prints each path it could
/// open (files), list (directories) or connect to (sockets).
const PROBE: &str = r#"
import os, socket, sys
for arg in sys.argv[1:]:
    kind, path = arg[0], arg[2:]
    try:
        if kind == "f":
            os.close(os.open(path, os.O_RDONLY))
        elif kind == "d":
            os.listdir(path)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
        print("reached", path)
    except OSError:
        pass
"#;

#[test]
fn nothing_of_a_running_instance_is_open_to_other_users() {
    let lima = Lima::new();
    let share = tempfile::Builder::new()
        .prefix("lima-ps")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(share.path().join("secret"), "TOP-SECRET\n").unwrap();
    let yaml = lima.template(
        "priv.yaml",
        &format!(
            "mounts:\n- location: {}\n  mountPoint: /mnt/s\n  writable: true\n",
            share.path().display()
        ),
    );
    lima.limactl(&["start", &yaml]).ok();
    // The guest reads the file: its data crosses fs-shm.
    let out = lima.shell("priv", &["cat", "/mnt/s/secret"]).ok();
    assert_eq!(out.stdout(), "TOP-SECRET\n");

    // A lima-run beside it, holding its VM while we look.
    let mut run = lima
        .lima_run(
            share.path(),
            &[
                "--memory",
                "512MiB",
                "--",
                "sh",
                "-c",
                "cat secret; sleep 600",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = run.stdout.take().unwrap();
    let mut first = [0u8; 11];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"TOP-SECRET\n");

    // Every directory in LIMA_HOME is ours (the instance, the scratch
    // directory); the files beside them are the test's own (priv.yaml).
    let mut entries = Vec::new();
    for e in std::fs::read_dir(lima.home.path()).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            entries.push(('d', e.path()));
            walk(&e.path(), &mut entries);
        }
    }
    let scratch: Vec<_> = entries
        .iter()
        .filter(|(k, p)| {
            *k == 'd'
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lima-run-"))
        })
        .collect();
    assert_eq!(scratch.len(), 1, "{entries:?}");
    let common = [
        "fs-shm",
        "qmp.sock",
        "serial.log",
        "lima.yaml",
        "fs-0.sock",
        "qemu.pid",
    ];
    let expected = common
        .iter()
        .chain(&["ha.events.jsonl", "ha.stderr.log", "ha.lock"])
        .map(|n| lima.instance_dir("priv").join(n))
        .chain(common.iter().map(|n| scratch[0].1.join("run").join(n)));
    for path in expected {
        assert!(
            entries.iter().any(|(_, p)| *p == path),
            "{} missing: the check would not cover it",
            path.display()
        );
    }
    let open: Vec<String> = entries
        .iter()
        .filter_map(|(_, p)| {
            let mode = std::fs::symlink_metadata(p).ok()?.mode() & 0o777;
            (mode & 0o077 != 0).then(|| format!("{} {mode:03o}", p.display()))
        })
        .collect();
    assert!(open.is_empty(), "group/other bits on: {open:#?}");

    if nix::unistd::geteuid().is_root() {
        // As `nobody`, with the parent folder made passable so that only
        // our own modes stand in the way.
        let home = lima.home.path();
        let saved = std::fs::metadata(home).unwrap().permissions();
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o711)).unwrap();
        // A system interpreter: one under root's home (pyenv) is not
        // reachable by `nobody`.
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let probe = std::process::Command::new(python)
            .arg("-c")
            .arg(PROBE)
            .args(entries.iter().map(|(k, p)| format!("{k}:{}", p.display())))
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        std::fs::set_permissions(home, saved).unwrap();
        assert!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let reached = String::from_utf8_lossy(&probe.stdout);
        assert!(reached.is_empty(), "another user reached:\n{reached}");
    } else {
        eprintln!("not root: checked the modes only (switching to another user needs root)");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let _ = run.wait();
    lima.wait_until("lima-run gone", Duration::from_secs(60), || {
        lima.leftovers().iter().all(|l| !l.starts_with("lima-run-"))
    });
}
