//! Lima's instance housekeeping on our built-in image: `protect` and
//! `unprotect` (a protected instance survives `delete -f` and
//! `factory-reset`), `snapshot` (the stopped disks taken back), `clone` (with edit flags and `--start`: an
//! independent copy of the disks), `rename`, and `factory-reset` (the data
//! disk starts over). Started by an ordinary user.
use lima_tests::Lima;

#[test]
fn protect_clone_rename_and_factory_reset() {
    let lima = Lima::as_ordinary_user();
    lima.start("m1", &["--mount-none"]);
    // The home is on the instance's data disk, which survives a restart.
    lima.shell("m1", &["sh", "-c", "echo kept > ~/mark"]).ok();

    // Protection.
    lima.limactl(&["protect", "m1"]).ok();
    assert_eq!(lima.info("m1")["protected"], true);
    let r = lima.limactl(&["protect", "m1"]).ok();
    assert!(
        r.messages()
            .contains("Instance `m1` is already protected. Skipping."),
        "{}",
        r.stderr()
    );
    let r = lima.limactl(&["delete", "-f", "m1"]).fails_with(
        "instance \"m1\" is protected to prohibit accidental removal (Hint: use `limactl unprotect m1`)",
    );
    assert_eq!(r.code(), 1);
    lima.limactl(&["factory-reset", "m1"])
        .fails_with("is protected");
    assert_eq!(lima.info("m1")["status"], "Running");
    lima.limactl(&["unprotect", "m1"]).ok();
    let r = lima.limactl(&["unprotect", "m1"]).ok();
    assert!(
        r.messages()
            .contains("Instance `m1` isn't protected. Skipping."),
        "{}",
        r.stderr()
    );
    lima.limactl(&["protect", "nosuch"]).fails_with("nosuch");

    // A clone needs a stopped instance; then it is an independent copy,
    // with the edit flags applied.
    lima.limactl(&["clone", "m1", "m2"])
        .fails_with("cannot clone a running instance");
    lima.limactl(&["snapshot", "create", "m1", "--tag", "s1"])
        .fails_with("cannot take or apply a snapshot of a running instance");
    lima.limactl(&["stop", "m1"]).ok();
    // A snapshot of the stopped disks, to go back to below.
    lima.limactl(&["snapshot", "create", "m1"])
        .fails_with("expected tag");
    lima.limactl(&["snapshot", "create", "m1", "--tag", "s1"])
        .ok();
    lima.limactl(&["clone", "m1", "m1"])
        .fails_with("must be different");
    lima.limactl(&[
        "clone",
        "m1",
        "m2",
        "--cpus",
        "1",
        "--start",
        "--timeout",
        "5m",
    ])
    .ok();
    assert_eq!(lima.info("m2")["cpus"], 1);
    assert_eq!(lima.shell("m2", &["cat", "mark"]).ok().stdout(), "kept\n");
    lima.shell("m2", &["sh", "-c", "echo clone > ~/mark2"]).ok();
    lima.limactl(&["stop", "m2"]).ok();
    lima.limactl(&["clone", "m1", "m2"])
        .fails_with("instance \"m2\" already exists");
    lima.start("m1", &[]);
    assert_eq!(
        lima.shell(
            "m1",
            &[
                "sh",
                "-c",
                "cat mark; test -e mark2 && echo shared || echo own"
            ]
        )
        .ok()
        .stdout(),
        "kept\nown\n"
    );

    // Back to the snapshot: what was written since is gone.
    lima.shell("m1", &["sh", "-c", "echo later > ~/after"]).ok();
    lima.limactl(&["stop", "m1"]).ok();
    assert_eq!(
        lima.limactl(&["snapshot", "list", "m1", "-q"])
            .ok()
            .stdout(),
        "s1\n"
    );
    let table = lima.limactl(&["snapshot", "ls", "m1"]).ok().stdout();
    assert!(table.starts_with("ID") && table.contains(" s1 "), "{table}");
    lima.limactl(&["snapshot", "apply", "m1", "--tag", "nope"])
        .fails_with("snapshot \"nope\" not found in instance \"m1\"");
    lima.limactl(&["snapshot", "apply", "m1", "--tag", "s1"])
        .ok();
    lima.start("m1", &[]);
    assert_eq!(
        lima.shell(
            "m1",
            &[
                "sh",
                "-c",
                "cat mark; test -e after && echo after || echo before"
            ]
        )
        .ok()
        .stdout(),
        "kept\nbefore\n"
    );
    lima.limactl(&["stop", "m1"]).ok();
    lima.limactl(&["snapshot", "delete", "m1", "--tag", "s1"])
        .ok();
    assert_eq!(
        lima.limactl(&["snapshot", "list", "m1", "-q"])
            .ok()
            .stdout(),
        ""
    );

    // Rename: the name moves, the disks with it.
    lima.limactl(&["rename", "m2", "m3"]).ok();
    assert!(!lima.instance_dir("m2").exists());
    lima.start("m3", &[]);
    assert_eq!(lima.shell("m3", &["cat", "mark2"]).ok().stdout(), "clone\n");

    // Factory reset of a running instance: stopped, disks gone, the
    // configuration kept; the next start begins from the image.
    lima.limactl(&["factory-reset", "m3"]).ok();
    assert_eq!(lima.info("m3")["status"], "Stopped");
    assert!(lima.instance_dir("m3").join("lima.yaml").exists());
    assert!(!lima.instance_dir("m3").join("datadisk").exists());
    assert_eq!(lima.info("m3")["cpus"], 1);
    lima.start("m3", &[]);
    assert_eq!(
        lima.shell(
            "m3",
            &["sh", "-c", "test -e mark2 && echo kept || echo gone"]
        )
        .ok()
        .stdout(),
        "gone\n"
    );
    // Nothing to reset is not a failure (Lima's answer).
    let r = lima.limactl(&["factory-reset", "nosuch"]).ok();
    assert!(
        r.messages().contains("Instance \"nosuch\" not found"),
        "{}",
        r.stderr()
    );
}

/// `prune` empties the download cache; `--keep-referred` keeps what an
/// instance (or a built-in template) names. No VM: cache entries are made
/// by hand, the instance is only created.
#[test]
fn prune_keeps_what_instances_refer_to() {
    let lima = Lima::new();
    let url = "http://127.0.0.1:9/referred.img";
    let yaml = format!("images:\n- location: {url}\n");
    lima.run(
        lima.cmd("limactl").args(["create", "--name", "p", "-"]),
        Some(yaml.as_bytes()),
    )
    .ok();
    let by_url = lima.cache.path().join("lima-rs/download/by-url-sha256");
    let entry = |u: &str| by_url.join(lima_tests::sha256_hex(u.as_bytes()));
    for u in [url, "http://127.0.0.1:9/orphan.img"] {
        std::fs::create_dir_all(entry(u)).unwrap();
        std::fs::write(entry(u).join("data"), "disk").unwrap();
    }
    let r = lima.limactl(&["prune", "--keep-referred"]).ok();
    assert!(r.messages().contains("Pruning"), "{}", r.stderr());
    assert!(entry(url).join("data").exists());
    assert!(!entry("http://127.0.0.1:9/orphan.img").exists());
    lima.limactl(&["prune"]).ok();
    assert!(!lima.cache.path().join("lima-rs/download").exists());
    // The instance is untouched.
    assert_eq!(lima.info("p")["status"], "Stopped");
}

/// `limactl disk` and `additionalDisks:`: a disk made on the host gets a
/// file system in the first guest that uses it, is mounted on
/// `/mnt/lima-NAME`, is locked while that instance runs, and carries its
/// files to the next instance.
#[test]
fn a_named_disk_moves_between_instances() {
    let lima = Lima::as_ordinary_user();
    let r = lima
        .limactl(&["disk", "create", "d1", "--size", "64MiB"])
        .ok();
    assert!(
        r.messages()
            .contains("Creating qcow2 disk \"d1\" with size 64MiB"),
        "{}",
        r.stderr()
    );
    lima.limactl(&["disk", "create", "d1", "--size", "1GiB"])
        .fails_with("disk \"d1\" already exists");
    let set = ".additionalDisks = [\"d1\"]";
    lima.start("a", &["--mount-none", "--set", set]);
    let out = lima
        .shell(
            "a",
            &[
                "sh",
                "-c",
                "grep ' /mnt/lima-d1 ' /proc/mounts | cut -d' ' -f3; echo moved > /mnt/lima-d1/f",
            ],
        )
        .ok()
        .stdout();
    assert_eq!(out, "ext4\n");
    let table = lima.limactl(&["disk", "ls"]).ok().stdout();
    let row = table
        .lines()
        .find(|l| l.starts_with("d1 "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("64MiB") && row.contains("qcow2") && row.trim_end().ends_with(" a"),
        "{table}"
    );
    // In use: no delete, no resize, no second instance.
    lima.limactl(&["disk", "delete", "d1"])
        .fails_with("cannot delete disk \"d1\" in use by instance \"a\"");
    lima.limactl(&["disk", "resize", "d1", "--size", "128MiB"])
        .fails_with("in use by instance \"a\"");
    let r = lima.limactl(&[
        "start",
        "--name",
        "b",
        "--mount-none",
        "--set",
        set,
        "--timeout",
        "5m",
    ]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.messages()
            .contains("disk \"d1\" is in use by instance \"a\""),
        "{}",
        r.stderr()
    );

    // Stopped, it is free: grown, then the next instance finds the file.
    lima.limactl(&["stop", "a"]).ok();
    assert!(!lima.home.path().join("_disks/d1/in_use_by").exists());
    lima.limactl(&["disk", "resize", "d1", "--size", "128MiB"])
        .ok();
    // The failed first start of `b` left nothing behind.
    assert!(!lima.instance_dir("b").exists());
    lima.start("b", &["--mount-none", "--set", set]);
    let out = lima
        .shell(
            "b",
            &[
                "sh",
                "-c",
                "cat /mnt/lima-d1/f; df -k /mnt/lima-d1 | tail -1 | awk '{print ($2 > 100000)}'",
            ],
        )
        .ok()
        .stdout();
    assert_eq!(out, "moved\n1\n");
    let json = lima
        .limactl(&["disk", "list", "--json", "d1"])
        .ok()
        .stdout();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["instance"].as_str()),
        (Some("d1"), Some("b"))
    );
    lima.limactl(&["stop", "b"]).ok();
    // Referenced by stopped instances: skipped without --force.
    let r = lima.limactl(&["disk", "delete", "d1"]).ok();
    assert!(
        r.messages().contains("Skipping deleting disk \"d1\""),
        "{}",
        r.stderr()
    );
    lima.limactl(&["disk", "rm", "--force", "d1"]).ok();
    assert!(!lima.home.path().join("_disks/d1").exists());
    lima.limactl(&["start", "a", "--timeout", "5m"])
        .fails_with("disk \"d1\" does not exist");
}

/// `start --foreground`: the command stays until the instance stops, and
/// a SIGTERM to it (a service manager's stop) stops the instance cleanly;
/// `limactl watch` sees it boot, run and stop.
#[test]
fn start_in_the_foreground_until_a_signal() {
    let lima = Lima::as_ordinary_user();
    lima.limactl(&["watch", "nosuch"])
        .fails_with("instance \"nosuch\" does not exist");
    // `limactl watch --json` follows every instance, new ones included.
    let mut watch = lima
        .cmd("limactl")
        .args(["watch", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let lines = lines.clone();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&l).unwrap());
            }
        })
    };
    let watched = |event: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["instance"] == "fg" && v["event"] == event)
    };
    let mut child = lima
        .cmd("limactl")
        .args([
            "start",
            "--foreground",
            "--name",
            "fg",
            "--mount-none",
            "--timeout",
            "5m",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let events = lima.instance_dir("fg").join("ha.events.jsonl");
    lima.wait_until("fg is ready", std::time::Duration::from_secs(300), || {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"event\":\"running\""))
    });
    assert_eq!(lima.shell("fg", &["echo", "up"]).ok().stdout(), "up\n");
    // Still in the foreground.
    assert!(child.try_wait().unwrap().is_none());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Instance `fg` stopped"), "{stderr}");
    assert_eq!(lima.info("fg")["status"], "Stopped");
    lima.wait_until(
        "watch saw the stop",
        std::time::Duration::from_secs(30),
        || watched("booting") && watched("running") && watched("stopped"),
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
    reader.join().unwrap();
}
