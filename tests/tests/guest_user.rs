//! Issue 19: commands run as the guest user through its login shell, in the
//! host's current folder when a mount holds it; our own images make that
//! user at boot and keep `/var` and `/home` on the instance's data disk.
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

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

#[test]
fn home_and_var_survive_a_restart_on_the_data_disk() {
    let lima = Lima::new();
    let yaml = lima.template("keep.yaml", "disk: 8GiB\n");
    lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();
    let disk = lima.instance_dir("keep").join("datadisk");
    assert!(disk.is_file(), "no data disk in the instance directory");
    // qcow2, sparse: far smaller than its 8 GiB.
    assert_eq!(&std::fs::read(&disk).unwrap()[..4], b"QFI\xfb");
    assert!(std::fs::metadata(&disk).unwrap().len() < 1 << 30);
    let mounts = sh(&lima, "keep", "cat /proc/mounts");
    for m in [" /mnt/lima-data ext4 ", " /var ext4 ", " /home ext4 "] {
        assert!(mounts.contains(m), "no {m:?} in\n{mounts}");
    }
    sh(
        &lima,
        "keep",
        "echo in-home > ~/kept; mkdir -p ~/dir/deeper; echo deep > ~/dir/deeper/f; \
         echo in-var > /var/tmp/kept; echo gone > /tmp/gone",
    );

    lima.limactl(&["stop", "keep"]).ok();
    let serial = std::fs::read_to_string(lima.instance_dir("keep").join("serial.log")).unwrap();
    assert!(
        serial.contains("data disk: unmounted cleanly"),
        "the data disk was not unmounted at power-off:\n{serial}"
    );

    lima.limactl(&["start", "keep", "--timeout", "5m"]).ok();
    assert_eq!(
        sh(
            &lima,
            "keep",
            "cat ~/kept ~/dir/deeper/f /var/tmp/kept; stat -c %a ~; test -e /tmp/gone || echo tmp-is-new"
        ),
        "in-home\ndeep\nin-var\n700\ntmp-is-new\n"
    );
    let serial = std::fs::read_to_string(lima.instance_dir("keep").join("serial.log")).unwrap();
    assert!(
        serial.contains("is ext4, cleanly unmounted") && !serial.contains("replays its journal"),
        "the second boot did not find a clean file system:\n{serial}"
    );

    // The disk goes with its instance; another instance has one of its own.
    lima.limactl(&["delete", "--force", "keep"]).ok();
    assert!(!disk.exists());
    let other = lima.template("other.yaml", "disk: 8GiB\n");
    lima.limactl(&["start", "--timeout", "5m", &other]).ok();
    assert_eq!(
        sh(
            &lima,
            "other",
            "test -e ~/kept || test -e /var/tmp/kept || echo nothing-shared"
        ),
        "nothing-shared\n"
    );
    assert!(lima.instance_dir("other").join("datadisk").is_file());
    lima.limactl(&["delete", "--force", "other"]).ok();
    lima.wait_until("processes gone", Duration::from_secs(10), || {
        lima.our_processes().is_empty()
    });
}
