//! `builtin:debian`: a Debian userland on the fast boot path. The agent is
//! still PID 1 (no systemd, no cloud-init), switched into the image's
//! read-only ext4 root under a tmpfs overlay; commands run as the guest
//! user through bash as a login shell; python3, gcc, git and apt work,
//! `/var` and `/home` survive a restart on the data disk while other writes
//! do not, and shares and port forwarding still work after the switch.
//! Needs `cargo xtask image debian`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lima_tests::Lima;

/// Runs `sh -c SCRIPT` in the guest and returns its stdout; fails on error.
#[track_caller]
fn sh(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script]).ok().stdout()
}

/// A lima.yaml for the Debian image plus `extra` YAML; returns its path.
fn template(lima: &Lima, file: &str, extra: &str) -> String {
    let p = lima.home.path().join(file);
    std::fs::write(
        &p,
        format!("images:\n- location: builtin:debian\ncpus: 2\nmemory: 1GiB\n{extra}"),
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

/// The guest user's name when `lima.yaml` has no `user:`: ours, or `lima`
/// when we are root (the tests run as root on our build machines).
fn default_guest_user() -> String {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return "lima".into();
    }
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "lima".into())
}

/// Opens a host folder to the guest user, who is another user than the
/// host's when the tests run as root: 9p and virtiofs show host owners and
/// modes as they are (vsockfs shows the guest user as the owner).
fn open_to_all(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reply = String::new();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && reply.starts_with("HTTP/1.0 200")
}

#[test]
fn debian_userland_on_an_overlay_root() {
    let lima = Lima::new();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("from-host"), "host side\n").unwrap();
    let (nine_p, virtiofs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    open_to_all(nine_p.path());
    open_to_all(virtiofs.path());
    let guest_port = 18301;
    let host_port = free_port();
    // A host socket the guest reaches through a `reverse: true` rule: it
    // answers each connection's line with `pong LINE`.
    let host_sock = lima.home.path().join("echo.sock");
    let echo = std::os::unix::net::UnixListener::bind(&host_sock).unwrap();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            let mut line = String::new();
            let mut r = std::io::BufReader::new(&conn);
            if std::io::BufRead::read_line(&mut r, &mut line).is_ok() {
                let _ = (&conn).write_all(format!("pong {line}").as_bytes());
            }
        }
    });
    let yaml = template(
        &lima,
        "deb.yaml",
        &format!(
            "mounts:\n- location: {}\n  mountPoint: /mnt/share\n  writable: true\n\
             - location: {}\n  mountPoint: /mnt/9p\n  writable: true\n  mountType: 9p\n\
             - location: {}\n  mountPoint: /mnt/vfs\n  writable: true\n  mountType: virtiofs\n\
             portForwards:\n- guestPort: {guest_port}\n  hostPort: {host_port}\n\
             - guestSocket: /tmp/rev/echo.sock\n  hostSocket: {}\n  reverse: true\n",
            share.path().display(),
            nine_p.path().display(),
            virtiofs.path().display(),
            host_sock.display(),
        ),
    );
    let t = Instant::now();
    lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();
    eprintln!(
        "builtin:debian: limactl start -> ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Debian, with the agent as init.
    assert!(
        sh(&lima, "deb", "cat /etc/debian_version").starts_with("12."),
        "not Debian 12"
    );
    // The reverse socket: the guest user's alone, each connection reaches
    // the host's socket.
    assert_eq!(
        sh(&lima, "deb", "stat -c '%a %U' /tmp/rev/echo.sock"),
        format!("600 {}\n", sh(&lima, "deb", "id -un").trim())
    );
    for word in ["one", "two"] {
        let script = format!(
            "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect(\"/tmp/rev/echo.sock\"); s.sendall(b\"{word}\\n\"); print(s.makefile().readline(), end=\"\")'"
        );
        assert_eq!(sh(&lima, "deb", &script), format!("pong {word}\n"));
    }
    // PID 1 is the initramfs's /init (the agent), and the disk has no init.
    assert_eq!(sh(&lima, "deb", "tr '\\0' ' ' < /proc/1/cmdline"), "/init ");
    assert_eq!(
        lima.shell(
            "deb",
            &[
                "sh",
                "-c",
                "test -e /sbin/init || test -e /usr/bin/cloud-init"
            ]
        )
        .code(),
        1,
        "an init system or cloud-init is installed"
    );
    // The guest user, made at boot, through bash as a login shell (Debian's
    // /etc/profile sets a user's PATH).
    let user = default_guest_user();
    assert_eq!(
        sh(&lima, "deb", "id -un; echo $HOME; echo $SHELL; pwd"),
        format!("{user}\n/home/{user}.guest\n/bin/bash\n/home/{user}.guest\n")
    );
    let r = lima
        .run(
            lima.cmd("limactl").args(["shell", "deb"]),
            Some(b"echo $0; shopt -q login_shell && echo login; echo $PATH\n"),
        )
        .ok();
    assert_eq!(
        r.stdout(),
        "-bash\nlogin\n/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games\n"
    );
    // Debian's skeleton dotfiles came with the new home.
    sh(&lima, "deb", "test -f ~/.bashrc && test -f ~/.profile");

    // The userland.
    assert_eq!(sh(&lima, "deb", "python3 -c 'print(6*7)'"), "42\n");
    let c = b"#include <stdio.h>\nint main(void) { printf(\"hello from gcc %d\\n\", 6 * 7); return 0; }\n";
    let r = lima
        .run(
            lima.cmd("limactl").args([
                "shell",
                "deb",
                "--",
                "sh",
                "-c",
                "cat > /tmp/hello.c && gcc -O2 -o /tmp/hello /tmp/hello.c && /tmp/hello",
            ]),
            Some(c),
        )
        .ok();
    assert_eq!(r.stdout(), "hello from gcc 42\n");
    assert!(sh(&lima, "deb", "git --version").starts_with("git version "));
    assert_eq!(
        sh(
            &lima,
            "deb",
            "cd /tmp && git init -q repo && cd repo && echo x > f && git add f && \
             git -c user.name=t -c user.email=t@example.org commit -qm one && git log --format=%s"
        ),
        "one\n"
    );
    assert!(sh(&lima, "deb", "apt-get --version").starts_with("apt "));
    assert!(sh(
        &lima,
        "deb",
        "dpkg -s python3 gcc git | grep -c '^Status: install ok installed'"
    )
    .starts_with('3'));
    // apt would resolve its mirror through this.
    assert!(sh(&lima, "deb", "cat /etc/resolv.conf").contains("nameserver 10.0.2.3"));

    // `/` is the overlay, writable (where the user may write), and the
    // kernel modules are reachable.
    let mounts = sh(&lima, "deb", "cat /proc/mounts");
    // The last mount on `/` is the one processes see.
    let root_type = mounts
        .lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&"/"))
        .map(|f| f[2].to_string());
    assert_eq!(root_type.as_deref(), Some("overlay"), "{mounts}");
    sh(
        &lima,
        "deb",
        "echo t > /tmp/t && echo h > ~/kept && echo v > /var/tmp/kept",
    );
    assert_eq!(sh(&lima, "deb", "cat /tmp/t"), "t\n");
    // `/var` and `/home` are the data disk's.
    for m in [" /var ext4 ", " /home ext4 "] {
        assert!(mounts.contains(m), "no {m:?} in {mounts}");
    }
    // Our kernel: everything built in, nothing to load.
    sh(
        &lima,
        "deb",
        "test ! -e /proc/modules && uname -r | grep -q -- '-lima$'",
    );

    // A vsockfs share, both ways.
    assert!(mounts.contains(" /mnt/share fuse"), "{mounts}");
    assert_eq!(sh(&lima, "deb", "cat /mnt/share/from-host"), "host side\n");
    sh(&lima, "deb", "echo guest side > /mnt/share/from-guest");
    assert_eq!(
        std::fs::read_to_string(share.path().join("from-guest")).unwrap(),
        "guest side\n"
    );

    // 9p and virtiofs, built into the kernel.
    sh(
        &lima,
        "deb",
        "echo 9p > /mnt/9p/from-guest && echo vfs > /mnt/vfs/from-guest",
    );
    assert_eq!(
        std::fs::read_to_string(nine_p.path().join("from-guest")).unwrap(),
        "9p\n"
    );
    assert_eq!(
        std::fs::read_to_string(virtiofs.path().join("from-guest")).unwrap(),
        "vfs\n"
    );
    assert!(mounts.contains(" /mnt/9p 9p"), "{mounts}");
    assert!(mounts.contains(" /mnt/vfs virtiofs"), "{mounts}");

    // The eBPF port watcher sees a Debian program's listener.
    let watcher = lima.info("deb")["watcher"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        watcher.starts_with("ebpf"),
        "eBPF watcher not in use: {watcher}"
    );
    let _server = lima.spawn_shell(
        "deb",
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/tmp",
            &guest_port.to_string(),
        ],
    );
    lima.wait_until(
        "python3 http.server through the forwarded port",
        Duration::from_secs(90),
        || http_get_ok(host_port),
    );
    drop(_server);

    // Writes live in memory, but for /var and /home: a restart starts from
    // the image again with the data disk's /var and /home.
    lima.limactl(&["stop", "deb"]).ok();
    let t = Instant::now();
    lima.limactl(&["start", "deb", "--timeout", "5m"]).ok();
    eprintln!(
        "builtin:debian: second start -> ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        lima.shell("deb", &["sh", "-c", "test -e /tmp/t"]).code(),
        1,
        "a write to /tmp survived the restart"
    );
    assert_eq!(sh(&lima, "deb", "cat ~/kept /var/tmp/kept"), "h\nv\n");
    // Debian's own /var came along (seeded on the first boot).
    sh(&lima, "deb", "test -f /var/lib/dpkg/status");
    assert_eq!(sh(&lima, "deb", "python3 -c 'print(6*7)'"), "42\n");
}

/// A root device that cannot be mounted: the agent says why on the console
/// and serves from the initramfs (PID 1 never panics over it).
#[test]
fn an_unusable_root_device_leaves_the_agent_in_the_initramfs() {
    let lima = Lima::new();
    let p = lima.home.path().join("bad.yaml");
    // /dev/null exists at once (no wait for a disk) and is no ext4.
    std::fs::write(
        &p,
        "images:\n- location: builtin:default\n  kernel:\n    location: \"\"\n    \
         cmdline: lima.root=/dev/null\ncpus: 1\nmemory: 512MiB\n",
    )
    .unwrap();
    lima.limactl(&["start", "--timeout", "5m", p.to_str().unwrap()])
        .ok();
    assert!(sh(&lima, "bad", "cat /etc/os-release").contains("ID=lima-rs"));
    let serial = std::fs::read_to_string(lima.instance_dir("bad").join("serial.log")).unwrap();
    assert!(
        serial.contains("root: cannot switch to /dev/null")
            && serial.contains("staying in the initramfs"),
        "{serial}"
    );
    // Nothing of the attempt is left mounted.
    assert!(!sh(&lima, "bad", "cat /proc/mounts").contains("/.lima/"));
}
