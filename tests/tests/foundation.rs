//! Issue "foundation": instances boot a real VM (TCG on our machines), the
//! guest agent answers over vsock, and commands run in it through the real
//! `limactl` and `lima` binaries.
use std::time::Duration;

use lima_tests::{sha256_hex, Lima};

/// One VM through its whole life: start, exec semantics, second start, stop,
/// start again, delete.
#[test]
fn instance_lifecycle_and_exec() {
    let lima = Lima::new();
    let started = lima.start("dev", &[]);
    // Each phase an info log line (`PHASE: detail`), the agent's
    // readiness after the boot.
    let log = started.messages();
    let at = |prefix: &str| log.lines().position(|l| l.starts_with(prefix));
    let (booting, running) = (
        at("booting: accelerator "),
        at("running: guest agent ready"),
    );
    assert!(
        booting.is_some() && running.is_some() && booting < running,
        "{}",
        started.stderr()
    );
    assert!(
        started
            .stderr()
            .lines()
            .any(|l| l.contains(" level=info msg=\"booting: accelerator ")),
        "{}",
        started.stderr()
    );
    let info = lima.info("dev");
    assert_eq!(info["status"], "Running");
    // Our image has no sshd: show-ssh says how to get in instead.
    lima.limactl(&["show-ssh", "dev"]).fails_with(
        "instance `dev` has no sshd: built-in images are reached with `limactl shell dev`",
    );
    assert_eq!(info["arch"], "x86_64");
    assert!(info["hostAgentPID"].as_i64().unwrap() > 0);

    // The guest runs the image's kernel.
    let release = lima.shell("dev", &["uname", "-r"]).ok().stdout();
    assert_eq!(
        release.trim(),
        lima.image_manifest()["kernel_release"].as_str().unwrap()
    );
    // Our own kernel (`cargo xtask kernel`): everything built in, no
    // module support, its configuration readable for check-config scripts.
    assert!(release.trim().ends_with("-lima"), "{release}");
    lima.shell("dev", &["test", "!", "-e", "/proc/modules"])
        .ok();
    lima.shell("dev", &["test", "-e", "/proc/config.gz"]).ok();

    // Exit codes, including 128+N for a signal.
    assert_eq!(lima.shell("dev", &["true"]).code(), 0);
    assert_eq!(lima.shell("dev", &["false"]).code(), 1);
    assert_eq!(lima.shell("dev", &["sh", "-c", "exit 7"]).code(), 7);
    assert_eq!(
        lima.shell("dev", &["sh", "-c", "kill -TERM $$"]).code(),
        128 + 15
    );
    let missing = lima.shell("dev", &["no-such-program"]);
    assert_eq!(missing.code(), 127);
    assert!(
        missing.messages().contains("no-such-program"),
        "{}",
        missing.stderr()
    );

    // stdin piped through cat, binary-safe.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = lima
        .run(
            lima.cmd("limactl").args(["shell", "dev", "--", "cat"]),
            Some(&input),
        )
        .ok();
    assert_eq!(r.out.stdout, input);

    // 10 MiB of stdout arrive intact.
    let sum = lima
        .shell(
            "dev",
            &[
                "sh",
                "-c",
                "head -c 10485760 /dev/urandom > /tmp/big && sha256sum /tmp/big",
            ],
        )
        .ok()
        .stdout();
    let guest_sum = sum.split_whitespace().next().unwrap().to_string();
    let big = lima.shell("dev", &["cat", "/tmp/big"]).ok();
    assert_eq!(big.out.stdout.len(), 10 << 20);
    assert_eq!(sha256_hex(&big.out.stdout), guest_sum);

    // stderr stays apart from stdout.
    let r = lima
        .shell(
            "dev",
            &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
        )
        .ok();
    assert_eq!(r.stdout(), "to-out\nmore-out\n");
    assert_eq!(r.stderr(), "to-err\n");

    // Environment, working directory, leading NAME=VALUE words.
    let r = lima
        .limactl(&[
            "shell",
            "--workdir",
            "/tmp",
            "dev",
            "--",
            "FOO=bar",
            "sh",
            "-c",
            "echo $FOO $PWD",
        ])
        .ok();
    assert_eq!(r.stdout(), "bar /tmp\n");
    lima.limactl(&["shell", "--workdir", "/no/such/dir", "dev", "--", "true"])
        .fails_with("/no/such/dir");

    // `lima` runs in $LIMA_INSTANCE.
    let r = lima
        .run(
            lima.cmd("lima")
                .env("LIMA_INSTANCE", "dev")
                .args(["echo", "via", "lima"]),
            None,
        )
        .ok();
    assert_eq!(r.stdout(), "via lima\n");

    // A second start of a running instance only says so (Lima: not an
    // error); it keeps running.
    let r = lima.limactl(&["start", "dev"]).ok();
    assert!(
        r.messages()
            .contains("The instance \"dev\" is already running"),
        "{}",
        r.stderr()
    );
    assert_eq!(lima.shell("dev", &["true"]).code(), 0);

    // Stop: guest powered off, nothing left running.
    lima.limactl(&["stop", "dev"]).ok();
    assert_eq!(lima.info("dev")["status"], "Stopped");
    assert!(
        lima.our_processes().is_empty(),
        "stray: {:?}",
        lima.our_processes()
    );
    lima.shell("dev", &["true"])
        .fails_with("instance \"dev\" is stopped, run `limactl start dev` to start the instance");
    let serial = std::fs::read_to_string(lima.instance_dir("dev").join("serial.log")).unwrap();
    assert!(
        serial.contains("Power down"),
        "guest did not power off cleanly:\n{serial}"
    );

    // Start again.
    lima.limactl(&["start", "dev", "--timeout", "5m"]).ok();
    assert_eq!(
        lima.shell("dev", &["echo", "again"]).ok().stdout(),
        "again\n"
    );

    // Delete of a running instance needs --force, then leaves nothing.
    lima.limactl(&["delete", "dev"]).fails_with("--force");
    lima.limactl(&["delete", "--force", "dev"]).ok();
    assert!(!lima.instance_dir("dev").exists());
    lima.wait_until("processes gone", Duration::from_secs(10), || {
        lima.our_processes().is_empty()
    });
    assert_eq!(std::fs::read_dir(lima.home.path()).unwrap().count(), 0);
}

/// Errors that need no VM: each gets one clear line and a non-zero exit, and
/// creates nothing.
#[test]
fn clear_errors_without_a_vm() {
    let lima = Lima::new();
    lima.shell("nosuch", &["true"])
        .fails_with("instance \"nosuch\" does not exist, run `limactl create nosuch`");
    lima.limactl(&["stop", "nosuch"])
        .fails_with("does not exist");
    lima.limactl(&["start", "template:nosuch"])
        .fails_with("template `nosuch` does not exist");
    lima.limactl(&["start", "--name", "bad name"])
        .fails_with("invalid");

    let yaml = lima.home.path().join("broken.yaml");
    std::fs::write(
        &yaml,
        "images: [{location: builtin:default}]\ncpus: 1\nmemroy: 1GiB\n",
    )
    .unwrap();
    lima.limactl(&["start", yaml.to_str().unwrap()])
        .fails_with("memroy");
    let yaml = lima.home.path().join("noimage.yaml");
    std::fs::write(&yaml, "images: [{location: builtin:nosuch}]\n").unwrap();
    lima.limactl(&["start", yaml.to_str().unwrap()])
        .fails_with("cargo xtask image");
    // Nothing was created for the bad ones.
    for n in ["nosuch", "broken", "noimage"] {
        assert!(!lima.instance_dir(n).exists(), "{n} was created");
    }
    let list = lima.limactl(&["list", "--format", "json"]).ok();
    assert_eq!(list.stdout(), "");
}

/// A guest whose agent never comes up: `start` gives up at its timeout with
/// one error naming the serial log, and leaves nothing running.
#[test]
fn guest_that_never_answers() {
    let lima = Lima::new();
    let yaml = lima.home.path().join("mute.yaml");
    // No init in the initramfs and `panic=0`: the kernel hangs, QEMU stays up.
    std::fs::write(
        &yaml,
        "images:\n- location: builtin:default\n  kernel:\n    cmdline: rdinit=/no/such/init panic=0\ncpus: 1\nmemory: 512MiB\n",
    )
    .unwrap();
    let r = lima.limactl(&["start", "--timeout", "20s", yaml.to_str().unwrap()]);
    let r = r.fails_with("did not answer within 20s");
    assert!(r.messages().contains("serial.log"), "{}", r.stderr());
    assert!(lima.instance_dir("mute").join("serial.log").exists());
    lima.wait_until("processes gone", Duration::from_secs(10), || {
        lima.our_processes().is_empty()
    });
    assert_eq!(lima.info("mute")["status"], "Stopped");
    // The serial log shows why.
    let serial = std::fs::read_to_string(lima.instance_dir("mute").join("serial.log")).unwrap();
    assert!(
        serial.contains("Kernel panic") || serial.contains("No working init"),
        "{serial}"
    );
}

/// CPUs and memory beyond the host's are refused before anything is made,
/// naming the field and the host's figure; a LIMA_HOME open to other users
/// is warned about with the fix.
#[test]
fn host_limits_are_checked_before_anything_is_made() {
    let lima = Lima::new();
    for (name, extra, needle) in [
        (
            "huge",
            "memory: 900TiB\n",
            "memory: 900TiB is more than this host has (".to_string(),
        ),
        (
            "wide",
            "cpus: 10000\n",
            "cpus: 10000 is more than a VM can have; give at most 255".to_string(),
        ),
    ] {
        let yaml = lima.home.path().join(format!("{name}.yaml"));
        std::fs::write(
            &yaml,
            format!("images: [{{location: builtin:default}}]\n{extra}"),
        )
        .unwrap();
        lima.limactl(&["start", yaml.to_str().unwrap()])
            .fails_with(&needle);
        assert!(!lima.instance_dir(name).exists(), "{name} was created");
    }
    assert_eq!(
        lima.limactl(&["list", "--format", "json"]).ok().stdout(),
        ""
    );

    // lima-run says which flag, exits 125 and leaves no scratch directory.
    let dir = tempfile::tempdir().unwrap();
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["--memory", "900TiB", "--", "true"]),
        None,
    );
    assert_eq!(r.code(), 125, "{}", r.stderr());
    assert!(
        r.messages()
            .contains("--memory: 900TiB is more than this host has"),
        "{}",
        r.stderr()
    );
    assert!(lima.leftovers().is_empty(), "{:?}", lima.leftovers());

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lima.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = lima.limactl(&["start", "template:nosuch"]);
    std::fs::set_permissions(lima.home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        r.messages().contains("is open to other users (mode 755)")
            && r.messages().contains("chmod 700"),
        "{}",
        r.stderr()
    );
}

/// A new instance whose VM never ran is removed; one whose VM ran and then
/// failed stays, listed as Broken with the reason, until a start succeeds.
#[test]
fn failed_starts_clean_up_or_leave_a_broken_instance() {
    let lima = Lima::new();
    let yaml = lima.template("early.yaml", "");
    lima.run(
        lima.cmd("limactl")
            .env("LIMA_QEMU_MACHINE", "nope")
            .args(["start", &yaml]),
        None,
    )
    .fails_with("LIMA_QEMU_MACHINE=nope");
    assert!(!lima.instance_dir("early").exists());

    // No init and `panic=-1`: the kernel panics and QEMU exits at once.
    let yaml = lima.home.path().join("late.yaml");
    std::fs::write(
        &yaml,
        "images:\n- location: builtin:default\n  kernel:\n    cmdline: rdinit=/no/such/init panic=-1\ncpus: 1\nmemory: 512MiB\n",
    )
    .unwrap();
    lima.limactl(&["start", "--timeout", "5m", yaml.to_str().unwrap()])
        .fails_with("the VM stopped before the guest agent answered");
    let info = lima.info("late");
    assert_eq!(info["status"], "Broken", "{info}");
    assert!(
        info["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("the VM stopped before the guest agent answered"),
        "{info}"
    );
    let list = lima.limactl(&["list"]).ok();
    assert!(list.stdout().contains("Broken"), "{}", list.stdout());
    assert!(
        list.messages().contains("instance \"late\" has errors"),
        "{}",
        list.stderr()
    );
    assert!(lima.our_processes().is_empty());
}
