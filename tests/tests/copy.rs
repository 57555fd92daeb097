//! `limactl copy` (`cp`): files and folders between the host and a running
//! instance through the guest agent, named as scp names them, as the guest
//! user, on an instance without mounts (so nothing reaches the guest any
//! other way); and `copyToHost:` at start and stop. One VM of our built-in
//! image, started by an ordinary user.
use std::os::unix::fs::{symlink, PermissionsExt};

use lima_tests::{sha256_hex, Lima};

#[test]
fn copy_between_host_and_guest() {
    let lima = Lima::as_ordinary_user();
    let host = lima.user_dir("copy-host");
    let src = host.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    // Big enough to take many frames, not all one byte.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("sub/b.bin"), &big).unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    symlink("a.txt", src.join("link")).unwrap();
    if let Some(u) = &lima.user {
        for p in ["src", "src/sub", "src/a.txt", "src/sub/b.bin", "src/run.sh"] {
            std::os::unix::fs::chown(host.join(p), Some(u.uid), Some(u.gid)).unwrap();
        }
        std::os::unix::fs::lchown(src.join("link"), Some(u.uid), Some(u.gid)).unwrap();
    }
    let p = |rel: &str| host.join(rel).display().to_string();

    // Before the VM: Lima's messages for a bad operand or instance.
    lima.limactl(&["copy", &p("src/a.txt"), "cp:"]).fails_with(
        "instance \"cp\" does not exist, run `limactl create cp` to create a new instance",
    );
    lima.limactl(&["cp", &p("src/a.txt"), "cp:a:b"])
        .fails_with("path \"cp:a:b\" contains multiple colons");

    // copyToHost: a guest file copied out at start, removed at stop; a
    // missing one is skipped when asked.
    let copy_to_host = r#".copyToHost = [{"guest": "/etc/os-release", "host": "{{.Dir}}/copied-from-guest/os-release", "deleteOnStop": true}, {"guest": "/nope", "host": "{{.Dir}}/nope", "skipIfMissing": true}]"#;
    lima.start("cp", &["--mount-none", "--set", copy_to_host]);
    let copied = lima.instance_dir("cp").join("copied-from-guest/os-release");
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        lima.shell("cp", &["cat", "/etc/os-release"]).ok().stdout()
    );
    assert_eq!(
        std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!lima.instance_dir("cp").join("nope").exists());
    let guest = |cmd: &str| lima.shell("cp", &["sh", "-c", cmd]).ok().stdout();

    // A file to the guest user's home (`cp:`), and to a new name.
    lima.limactl(&["copy", &p("src/a.txt"), "cp:"]).ok();
    assert_eq!(guest("cat ~/a.txt"), "alpha\n");
    lima.limactl(&["cp", &p("src/a.txt"), "cp:/tmp/renamed.txt"])
        .ok();
    assert_eq!(guest("cat /tmp/renamed.txt"), "alpha\n");
    // It belongs to the guest user, not root.
    assert_eq!(guest("stat -c %U ~/a.txt").trim(), guest("id -un").trim());

    // A folder needs -r; with it, into an existing folder under its name:
    // contents, the executable bit and the symbolic link kept.
    lima.limactl(&["cp", &p("src"), "cp:/tmp/"])
        .fails_with("is a folder (copy folders with -r)");
    assert_eq!(
        guest("test -e /tmp/src && echo made || echo none"),
        "none\n"
    );
    lima.limactl(&["cp", "-r", &p("src"), "cp:/tmp/"]).ok();
    assert_eq!(
        guest("sha256sum < /tmp/src/sub/b.bin | cut -d' ' -f1").trim(),
        sha256_hex(&big)
    );
    assert_eq!(guest("readlink /tmp/src/link"), "a.txt\n");
    assert_eq!(
        guest("stat -c %a /tmp/src/run.sh && /tmp/src/run.sh"),
        "750\nran\n"
    );

    // Back to the host: a folder to a new name, then several sources into
    // an existing folder.
    lima.limactl(&["cp", "-r", "cp:/tmp/src", &p("back")]).ok();
    assert_eq!(std::fs::read(host.join("back/sub/b.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(host.join("back/link")).unwrap().to_str(),
        Some("a.txt")
    );
    let mode = std::fs::metadata(host.join("back/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    lima.limactl(&["cp", "cp:/tmp/renamed.txt", "cp:a.txt", &p("back/sub")])
        .ok();
    assert_eq!(
        std::fs::read_to_string(host.join("back/sub/renamed.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("back/sub/a.txt")).unwrap(),
        "alpha\n"
    );

    // Guest to guest, both ends in the guest.
    lima.limactl(&["cp", "-r", "cp:/tmp/src", "cp:copied"]).ok();
    assert_eq!(guest("cat ~/copied/link"), "alpha\n");

    // Errors: one line each, exit 1, nothing half-made.
    let r = lima
        .limactl(&["cp", "cp:/tmp/nosuch", &p("x")])
        .fails_with("/tmp/nosuch: no such file or folder");
    assert_eq!(r.code(), 1);
    assert!(!host.join("x").exists());
    // As the guest user: a folder only root may write to is refused.
    let r = lima.limactl(&["cp", &p("src/a.txt"), "cp:/etc/"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.messages().contains("Permission denied"), "{}", r.stderr());
    lima.limactl(&["cp", &p("src/a.txt"), &p("src/sub/b.bin"), "cp:/tmp/none/"])
        .fails_with("is not an existing folder");
    // The `--backend` of Lima's scripts is accepted.
    lima.limactl(&["cp", "--backend=rsync", &p("src/a.txt"), "cp:/tmp/b.txt"])
        .ok();

    lima.limactl(&["stop", "cp"]).ok();
    assert!(!copied.exists(), "deleteOnStop");
    lima.limactl(&["cp", &p("src/a.txt"), "cp:"])
        .fails_with("instance \"cp\" is stopped, run `limactl start cp` to start the instance");
    // A guest file that is missing, not skipped: the start fails naming it.
    lima.limactl(&[
        "edit",
        "cp",
        "--set",
        r#".copyToHost += [{"guest": "/nope", "host": "{{.Dir}}/nope"}]"#,
    ])
    .ok();
    let r = lima.limactl(&["start", "cp", "--timeout", "5m"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.messages()
            .contains("copyToHost[2] (/nope): no such file in the guest"),
        "{}",
        r.stderr()
    );
}
