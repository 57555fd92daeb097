//! Foreign architectures (issue 22): in a `builtin:debian` guest on an
//! x86_64 host, our agent registers Debian's QEMU user-mode emulators in
//! `binfmt_misc` with flag `F`, so an arm64 static busybox from a shared
//! folder runs and says `aarch64`, even where the emulator's path is hidden
//! (as in a container); `binfmt: {enabled: false}` in `lima.yaml` turns it
//! off. The arm64 busybox is Debian's `busybox-static:arm64`, fetched with
//! `apt-get download` (`cargo xtask setup` adds the arm64 architecture to
//! dpkg). Needs `cargo xtask image debian`.
use std::path::{Path, PathBuf};

use lima_tests::Lima;

/// Debian's arm64 static busybox in `dest`.
fn arm64_busybox(lima: &Lima, dest: &Path) -> PathBuf {
    lima_tests::busybox::busybox(&lima.bin_dir, "arm64", dest)
}

#[track_caller]
fn sh(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script]).ok().stdout()
}

#[test]
#[ignore = "slow: issue 22, boots builtin:debian twice (TCG) and downloads an arm64 package"]
fn arm64_binaries_run_under_qemu_user_mode_in_the_debian_guest() {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: the image's emulators are for an x86_64 host");
        return;
    }
    let lima = Lima::new();
    let share = tempfile::tempdir().unwrap();
    arm64_busybox(&lima, share.path());
    let yaml = lima.home.path().join("binfmt.yaml");
    std::fs::write(
        &yaml,
        format!(
            "images:\n- location: builtin:debian\ncpus: 2\nmemory: 1GiB\n\
             mounts:\n- location: {}\n  mountPoint: /mnt/arm\n",
            share.path().display()
        ),
    )
    .unwrap();
    lima.limactl(&["start", "--timeout", "5m", yaml.to_str().unwrap()])
        .ok();

    // The default: every emulator the image keeps, registered with F.
    let entries = sh(&lima, "binfmt", "ls /proc/sys/fs/binfmt_misc");
    let mut qemu: Vec<&str> = entries
        .split_whitespace()
        .filter(|e| e.starts_with("qemu-"))
        .collect();
    qemu.sort();
    assert_eq!(qemu, ["qemu-aarch64", "qemu-arm"], "{entries}");
    let entry = sh(&lima, "binfmt", "cat /proc/sys/fs/binfmt_misc/qemu-aarch64");
    assert!(entry.lines().any(|l| l == "enabled"), "{entry}");
    let flags = entry
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or_default();
    assert!(flags.contains('F'), "{entry}");
    assert!(
        entry.contains("interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
        "{entry}"
    );
    // The other emulators were trimmed out of the image.
    assert_eq!(
        sh(
            &lima,
            "binfmt",
            "ls /usr/bin | grep '^qemu-.*-static$' | sort | tr '\\n' ' '"
        ),
        "qemu-aarch64-static qemu-arm-static "
    );
    // The agent said what it registered.
    let serial = std::fs::read_to_string(lima.instance_dir("binfmt").join("serial.log")).unwrap();
    assert!(
        serial.contains("binfmt: registered qemu-aarch64, qemu-arm (flag F)"),
        "no registration line in serial.log"
    );

    // An arm64 program from the shared folder, as the guest user.
    assert_eq!(
        sh(&lima, "binfmt", "/mnt/arm/busybox uname -m"),
        "aarch64\n"
    );
    assert_eq!(
        sh(&lima, "binfmt", "/mnt/arm/busybox echo hello from arm64"),
        "hello from arm64\n"
    );
    // Flag F: the kernel opened the emulator at registration, so it runs
    // where the emulator's path does not exist, as in a container's root.
    assert_eq!(
        sh(
            &lima,
            "binfmt",
            "sudo unshare -m sh -c 'mount -t tmpfs hidden /usr/libexec/qemu-binfmt && \
             mount -t tmpfs hidden /usr/bin && test ! -e /usr/bin/qemu-aarch64-static && \
             /mnt/arm/busybox uname -m'"
        ),
        "aarch64\n"
    );

    // Off: nothing registered, and the kernel refuses the arm64 program.
    lima.limactl(&["stop", "binfmt"]).ok();
    lima.limactl(&["edit", "binfmt", "--set", ".binfmt.enabled = false"])
        .ok();
    lima.limactl(&["start", "--timeout", "5m", "binfmt"]).ok();
    assert_eq!(
        sh(
            &lima,
            "binfmt",
            "ls /proc/sys/fs/binfmt_misc 2>/dev/null | grep -c '^qemu-' || true"
        )
        .trim(),
        "0"
    );
    let run = lima.shell("binfmt", &["/mnt/arm/busybox", "uname", "-m"]);
    assert_ne!(run.code(), 0, "an arm64 program ran with binfmt off");
    assert!(
        run.stderr().contains("Exec format error") || run.stderr().contains("cannot execute"),
        "{}",
        run.stderr()
    );
    lima.limactl(&["delete", "-f", "binfmt"]).ok();
}
