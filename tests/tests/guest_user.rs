//! Issue 19: commands run as the guest user through its login shell, in the
//! host's current folder when a mount holds it; our own images make that
//! user at boot.
use std::os::unix::fs::MetadataExt;

use lima_tests::Lima;

/// Runs `sh -c SCRIPT` in the guest and returns its stdout; fails on error.
#[track_caller]
fn sh(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script]).ok().stdout()
}

/// `limactl shell NAME [ARGS]` started in `cwd` on the host.
fn shell_in(lima: &Lima, cwd: &std::path::Path, name: &str, args: &[&str]) -> lima_tests::Run {
    let mut a = vec!["shell", name];
    if !args.is_empty() {
        a.push("--");
        a.extend_from_slice(args);
    }
    lima.run(lima.cmd("limactl").current_dir(cwd).args(&a), None)
}

#[test]
fn commands_run_as_the_guest_user_through_its_login_shell() {
    let lima = Lima::new();
    let share = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::create_dir(share.path().join("sub")).unwrap();
    std::fs::write(share.path().join("from-host"), "h\n").unwrap();
    let yaml = lima.template(
        "gu.yaml",
        &format!(
            "user:\n  name: tester\n  uid: 4242\n\
             mounts:\n- location: {}\n  mountPoint: /mnt/proj\n  writable: true\n",
            share.path().display()
        ),
    );
    lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();

    // Who: the `user:` of lima.yaml, with its home made at boot.
    assert_eq!(
        sh(
            &lima,
            "gu",
            "id -un; id -u; id -g; echo $HOME $USER $LOGNAME"
        ),
        "tester\n4242\n4242\n/home/tester.guest tester tester\n"
    );
    assert_eq!(
        sh(
            &lima,
            "gu",
            "stat -c '%u %g %a' $HOME; readlink /home/tester.linux"
        ),
        "4242 4242 700\ntester.guest\n"
    );
    assert_eq!(
        sh(&lima, "gu", "grep ^tester: /etc/passwd"),
        "tester:x:4242:4242:tester:/home/tester.guest:/bin/sh\n",
        "no bash in the initramfs: the login shell falls back to /bin/sh"
    );
    // Not root: root's files stay root's.
    assert_ne!(lima.shell("gu", &["sh", "-c", "echo x > /etc/x"]).code(), 0);

    // Through the login shell: no command is the shell itself, named as a
    // login shell; with a command the profile is read first, and the
    // arguments arrive exactly as given.
    let r = lima
        .run(
            lima.cmd("limactl").args(["shell", "gu"]),
            Some(b"echo \"$0\"; pwd\n"),
        )
        .ok();
    assert_eq!(r.stdout(), "-sh\n/home/tester.guest\n");
    sh(&lima, "gu", "echo 'export FROM_PROFILE=yes' > ~/.profile");
    assert_eq!(sh(&lima, "gu", "echo $FROM_PROFILE"), "yes\n");
    let r = lima
        .shell("gu", &["printf", "%s|", "a b", "$HOME", "\"q\"", "", "*"])
        .ok();
    assert_eq!(r.stdout(), "a b|$HOME|\"q\"||*|");

    // Where: the host's current folder when a mount holds it (at its
    // mount point), else the home; `--workdir` wins and must exist.
    let r = shell_in(&lima, &share.path().join("sub"), "gu", &["pwd"]).ok();
    assert_eq!(r.stdout(), "/mnt/proj/sub\n");
    let r = shell_in(&lima, share.path(), "gu", &["pwd"]).ok();
    assert_eq!(r.stdout(), "/mnt/proj\n");
    let r = shell_in(&lima, std::path::Path::new("/"), "gu", &["pwd"]).ok();
    assert_eq!(r.stdout(), "/home/tester.guest\n");
    let r = lima
        .run(
            lima.cmd("limactl").current_dir(share.path()).args([
                "shell",
                "--workdir",
                "/tmp",
                "gu",
                "--",
                "pwd",
            ]),
            None,
        )
        .ok();
    assert_eq!(r.stdout(), "/tmp\n");
    lima.limactl(&["shell", "--workdir", "/no/such/dir", "gu", "--", "true"])
        .fails_with("working directory /no/such/dir does not exist in the guest");
    // `lima` follows the same rules.
    let r = lima
        .run(
            lima.cmd("lima")
                .current_dir(share.path().join("sub"))
                .env("LIMA_INSTANCE", "gu")
                .args(["sh", "-c", "id -un; pwd"]),
            None,
        )
        .ok();
    assert_eq!(r.stdout(), "tester\n/mnt/proj/sub\n");

    // The share: the guest user owns its files in the guest, creates files
    // there, and they are the host user's on the host.
    assert_eq!(
        sh(&lima, "gu", "stat -c %u /mnt/proj/from-host; echo by-guest > /mnt/proj/sub/by-guest; mkdir /mnt/proj/dir-by-guest"),
        "4242\n"
    );
    let host_uid = nix::unistd::geteuid().as_raw();
    for made in ["sub/by-guest", "dir-by-guest"] {
        let meta = std::fs::metadata(share.path().join(made)).unwrap();
        assert_eq!(meta.uid(), host_uid, "{made} on the host");
    }
    assert_eq!(
        std::fs::read_to_string(share.path().join("sub/by-guest")).unwrap(),
        "by-guest\n"
    );

    // A user the guest lacks (lima.yaml changed under a running instance):
    // one clear error, exit 127 like a command that cannot start.
    let inst_yaml = lima.instance_dir("gu").join("lima.yaml");
    let text = std::fs::read_to_string(&inst_yaml).unwrap();
    std::fs::write(&inst_yaml, text.replace("name: tester", "name: ghost")).unwrap();
    let r = lima
        .shell("gu", &["true"])
        .fails_with("user `ghost` does not exist in the guest");
    assert_eq!(r.code(), 127);
    std::fs::write(&inst_yaml, text).unwrap();
}
