//! Issue "lima-run": one-shot VMs. Every test also checks that nothing is
//! left behind: no scratch directory, no process.
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use lima_tests::Lima;

/// One test at a time in this file: `four_at_once_do_not_collide` boots
/// four VMs, and on a 2-core TCG machine a fifth from a neighbouring test
/// starves them all.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lr-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[track_caller]
fn assert_clean(lima: &Lima) {
    let left = lima.leftovers();
    assert!(left.is_empty(), "lima-run left things behind: {left:?}");
}

#[test]
fn exit_code_stdin_env_and_shared_folder() {
    let _one = serial();
    let lima = Lima::new();
    let dir = workdir();
    std::fs::write(dir.path().join("input.txt"), "from the host\n").unwrap();
    let r = lima.run(
        &mut lima.lima_run(
            dir.path(),
            &[
                "-e",
                "FOO=bar baz",
                "--timings",
                "--",
                "sh",
                "-c",
                "read line; echo \"stdin: $line\"; echo \"pwd: $(pwd)\"; echo \"FOO=$FOO\"; cat input.txt; echo made > made.txt; echo oops >&2; exit 7",
            ],
        ),
        Some(b"hello\n"),
    );
    assert_eq!(r.code(), 7, "stderr: {}", r.stderr());
    let dir_s = dir.path().display().to_string();
    assert_eq!(
        r.stdout(),
        format!("stdin: hello\npwd: {dir_s}\nFOO=bar baz\nfrom the host\n")
    );
    assert!(r.messages().contains("oops"), "{}", r.stderr());
    for phase in lima_host::oneshot::PHASES {
        assert!(
            r.messages().contains(&format!("timing {phase} ")),
            "--timings misses {phase}: {}",
            r.stderr()
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("made.txt")).unwrap(),
        "made\n"
    );
    assert_clean(&lima);

    // Read-only sharing: the write fails, the host folder is untouched.
    let r = lima.run(
        &mut lima.lima_run(
            dir.path(),
            &[
                "--read-only",
                "--",
                "sh",
                "-c",
                "cat made.txt; echo x > new.txt",
            ],
        ),
        None,
    );
    assert_ne!(r.code(), 0);
    assert_eq!(r.stdout(), "made\n");
    assert!(!dir.path().join("new.txt").exists());
    assert_clean(&lima);
}

#[test]
fn signals_give_128_plus_n_and_ctrl_c_stops_everything() {
    let _one = serial();
    let lima = Lima::new();
    let dir = workdir();
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["--", "sh", "-c", "kill -TERM $$"]),
        None,
    );
    assert_eq!(r.code(), 128 + 15, "stderr: {}", r.stderr());
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["--", "no-such-command"]),
        None,
    );
    assert_eq!(r.code(), 127, "stderr: {}", r.stderr());
    assert_clean(&lima);

    // A forwarded port is reachable while the command runs; SIGINT (Ctrl-C
    // without a terminal) then ends the command, the VM and lima-run.
    let port = free_port();
    let mut child = lima
        .lima_run(
            dir.path(),
            &[
                "-p",
                &format!("{port}:7000"),
                "--",
                "lima-guest-agent",
                "tool",
                "echo",
                "tcp",
                "0.0.0.0:7000",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut echoed = String::new();
    lima.wait_until(
        "the forwarded port to echo",
        Duration::from_secs(300),
        || {
            assert!(child.try_wait().unwrap().is_none(), "lima-run ended early");
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if s.write_all(b"ping\n").is_err() {
                return false;
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            echoed.clear();
            s.read_to_string(&mut echoed).is_ok() && echoed == "ping\n"
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&lima);
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn four_at_once_do_not_collide() {
    let _one = serial();
    let lima = Lima::new();
    let dirs: Vec<_> = (0..4).map(|_| workdir()).collect();
    let children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            lima.lima_run(
                d.path(),
                &[
                    "--cpus",
                    "1",
                    "--memory",
                    "512MiB",
                    "-e",
                    &format!("N={i}"),
                    "--",
                    "sh",
                    "-c",
                    "echo run $N > who.txt; echo $N; exit $N",
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(i as i32),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
        assert_eq!(
            std::fs::read_to_string(dirs[i].path().join("who.txt")).unwrap(),
            format!("run {i}\n")
        );
    }
    assert_clean(&lima);
}

#[test]
fn bad_input_and_guests_that_never_boot_fail_clearly_and_clean_up() {
    let _one = serial();
    let lima = Lima::new();
    let dir = workdir();
    // A host port that is taken: refused before anything boots.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["-p", &format!("{port}:80"), "--", "true"]),
        None,
    );
    assert_eq!(r.code(), 125);
    assert!(
        r.messages().contains(&format!("-p {port}:80")) && r.messages().contains("host port"),
        "{}",
        r.stderr()
    );
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["--image", "no-such-image", "--", "true"]),
        None,
    );
    assert_eq!(r.code(), 125);
    assert!(r.messages().contains("no-such-image"), "{}", r.stderr());
    // A share server that cannot be started as asked: refused before booting.
    let r = lima.run(
        lima.lima_run(dir.path(), &["--", "true"])
            .env("LIMA_FS_CONFINE", "strict"),
        None,
    );
    assert_eq!(r.code(), 125);
    assert!(
        r.messages().contains("LIMA_FS_CONFINE=strict"),
        "{}",
        r.stderr()
    );
    let r = lima.run(
        lima.lima_run(dir.path(), &["--", "true"])
            .env("LIMA_FS_SERVER", dir.path().join("no-such-server")),
        None,
    );
    assert_eq!(r.code(), 125);
    assert!(r.messages().contains("no-such-server"), "{}", r.stderr());
    assert_clean(&lima);

    // A guest whose initramfs is garbage: the kernel panics, the VM stops.
    let image = tempfile::tempdir_in("/tmp").unwrap();
    let good = lima.image_dir();
    let manifest = lima.image_manifest();
    for f in [manifest["kernel"].as_str().unwrap(), "image.json"] {
        std::fs::copy(good.join(f), image.path().join(f)).unwrap();
    }
    std::fs::write(image.path().join("initrd.img"), vec![0x5a; 4096]).unwrap();
    let r = lima.run(
        &mut lima.lima_run(
            dir.path(),
            &["--image", &image.path().display().to_string(), "--", "true"],
        ),
        None,
    );
    assert_eq!(r.code(), 125, "stderr: {}", r.stderr());
    assert!(
        r.messages()
            .contains("the VM stopped before the guest agent answered"),
        "{}",
        r.stderr()
    );
    assert_clean(&lima);

    // A guest that does not answer in time.
    let r = lima.run(
        &mut lima.lima_run(dir.path(), &["--boot-timeout", "100ms", "--", "true"]),
        None,
    );
    assert_eq!(r.code(), 125, "stderr: {}", r.stderr());
    assert!(
        r.messages()
            .contains("the guest agent did not answer within 100ms"),
        "{}",
        r.stderr()
    );
    assert_clean(&lima);
}

#[test]
fn debian_image_runs_python() {
    let _one = serial();
    let lima = Lima::new();
    let dir = workdir();
    std::fs::write(dir.path().join("hello.py"), "print(6 * 7)\n").unwrap();
    let r = lima.run(
        &mut lima.lima_run(
            dir.path(),
            &["--image", "debian", "--", "python3", "hello.py"],
        ),
        None,
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr());
    assert_eq!(r.stdout(), "42\n");
    assert_clean(&lima);
}
