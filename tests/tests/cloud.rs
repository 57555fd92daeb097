//! Distro cloud images (`images:` with a disk image): downloads, the
//! instance disk, cloud-init, the guest user and SSH.
//!
//! `bad_downloads_fail_clearly_and_leave_nothing` needs no VM. The Debian
//! test is in the slow tier (`cargo xtask test --slow`): it needs the image
//! from `cargo xtask image debian-cloud`, served from a local HTTP server
//! (no test reaches the internet).
use std::path::{Path, PathBuf};

use lima_tests::http::{Reply, Server};
use lima_tests::Lima;

/// A small but real qcow2 (blank), made with qemu-img.
fn small_qcow2(dir: &Path) -> PathBuf {
    let p = dir.join("small.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    p
}

fn sha512_of(p: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(p).unwrap();
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)))
}

/// Everything under `dir`, for "nothing was left behind".
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn bad_downloads_fail_clearly_and_leave_nothing() {
    let lima = Lima::new();
    let server = Server::start();
    let img_dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(img_dir.path());
    let good = sha512_of(&img);
    let wrong = format!("sha512:{}", "ab".repeat(64));
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "digest",
            server.route("/a.qcow2", Reply::File(img.clone())),
            wrong,
            "digest mismatch",
        ),
        ("404", server.url("/missing.qcow2"), good.clone(), "404"),
        (
            "truncated",
            server.route("/cut.qcow2", Reply::Truncated(img.clone())),
            good.clone(),
            "connection ended after",
        ),
        (
            "html",
            server.route(
                "/page.qcow2",
                Reply::Bytes(b"<html><body>moved</body></html>".to_vec()),
            ),
            // No digest: the check that it is a disk image still applies.
            String::new(),
            "not a disk image",
        ),
    ];
    for (name, url, digest, needle) in cases {
        let digest_line = if digest.is_empty() {
            String::new()
        } else {
            format!("  digest: {digest}\n")
        };
        let yaml = lima.home.path().join(format!("{name}.yaml"));
        std::fs::write(
            &yaml,
            format!("images:\n- location: {url}\n{digest_line}cpus: 1\nmemory: 512MiB\n"),
        )
        .unwrap();
        let r = lima
            .limactl(&["start", "--name", name, yaml.to_str().unwrap()])
            .fails_with(needle);
        assert!(
            r.messages().contains(&url),
            "{name}: the error names the URL:\n{}",
            r.stderr()
        );
        assert!(
            !lima.instance_dir(name).exists(),
            "{name}: the new instance was removed"
        );
        assert_eq!(
            files_under(lima.cache.path()),
            Vec::<String>::new(),
            "{name}: nothing half-made in the cache"
        );
        assert!(lima.our_processes().is_empty(), "{name}: nothing running");
    }
    use std::os::unix::fs::PermissionsExt;
    let top = lima.cache.path().join("lima-rs");
    assert_eq!(
        std::fs::metadata(&top).unwrap().permissions().mode() & 0o077,
        0,
        "the cache folder is private"
    );
}

/// `limactl shell NAME -- sh -c SCRIPT`, stdout trimmed.
fn sh(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script])
        .ok()
        .stdout()
        .trim()
        .to_string()
}

/// One Debian 12 cloud image VM, started by an ordinary host user from a
/// `lima.yaml` whose image comes from a local HTTP server with its sha512,
/// carries every happy-path check.
#[test]
#[ignore = "slow: cargo xtask test --slow (a Debian cloud image boots twice, minutes under TCG)"]
fn debian_cloud_image_end_to_end() {
    let lima = Lima::as_ordinary_user();
    let image = lima.debian_cloud_image();
    let server = Server::start();
    let url = server.route("/debian-12.qcow2", Reply::File(image.clone()));
    let vsockfs_dir = lima.user_dir("vsockfs-share");
    let ninep_dir = lima.user_dir("9p-share");
    std::fs::write(vsockfs_dir.join("from-host"), "hello guest\n").unwrap();
    let yaml = lima.home.path().join("debian.yaml");
    std::fs::write(
        &yaml,
        format!(
            "images:\n- location: {url}\n  arch: x86_64\n  digest: {}\ncpus: 2\nmemory: 2GiB\ndisk: 8GiB\nmounts:\n- location: {}\n  writable: true\n- location: {}\n  mountType: 9p\n  writable: true\n",
            sha512_of(&image),
            vsockfs_dir.display(),
            ninep_dir.display()
        ),
    )
    .unwrap();
    let name = "debian";
    lima.limactl(&[
        "start",
        "--name",
        name,
        "--timeout",
        "10m",
        yaml.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(server.hits("/debian-12.qcow2"), 1);

    // Nothing the start made is open to other users: the instance (disks,
    // seed, ssh.config, firmware variables), the key pair, the cache.
    use std::os::unix::fs::PermissionsExt;
    for f in files_under(lima.home.path())
        .into_iter()
        .chain(files_under(lima.cache.path()))
    {
        let meta = std::fs::symlink_metadata(&f).unwrap();
        if meta.file_type().is_symlink() || f.ends_with(".yaml") || f.contains("-share/") {
            continue;
        }
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{f} is open to others"
        );
    }

    // cloud-init ran to the end, from our NoCloud seed.
    lima.shell(name, &["cloud-init", "status", "--wait"]).ok();
    let result = sh(&lima, name, "cat /run/cloud-init/result.json");
    assert!(result.contains("DataSourceNoCloud"), "{result}");
    assert!(result.contains("\"errors\": []"), "{result}");

    // The guest user: the host user's name and UID, Lima 2's home with
    // Lima 1's path as a link, passwordless sudo, our hostname.
    let (user, uid) = match &lima.user {
        Some(u) => (u.name.clone(), u.uid),
        None => (
            std::env::var("USER").unwrap(),
            nix::unistd::getuid().as_raw(),
        ),
    };
    let home = format!("/home/{user}.guest");
    let passwd = sh(&lima, name, &format!("getent passwd {user}"));
    let fields: Vec<&str> = passwd.split(':').collect();
    assert_eq!(
        (fields[2], fields[5]),
        (uid.to_string().as_str(), home.as_str()),
        "{passwd}"
    );
    assert_eq!(
        sh(&lima, name, &format!("readlink /home/{user}.linux")),
        format!("{user}.guest")
    );
    assert_eq!(sh(&lima, name, "hostname"), "lima-debian");
    // `limactl shell` runs as that user, in its home (the test's folder is
    // not shared); with no command, its login shell reads stdin.
    assert_eq!(
        sh(&lima, name, "id -un; id -u; pwd"),
        format!("{user}\n{uid}\n{home}")
    );
    let r = lima
        .run(
            lima.cmd("limactl").args(["shell", name]),
            Some(b"echo $0; shopt -q login_shell && echo login\n"),
        )
        .ok();
    assert_eq!(r.stdout().trim(), "-bash\nlogin");

    // SSH with the generated config, as the guest user, with sudo.
    let ssh_config = lima.instance_dir(name).join("ssh.config");
    let info = lima.info(name);
    assert_eq!(info["sshConfigFile"], ssh_config.display().to_string());
    assert!(
        info["sshLocalPort"].as_u64().is_some_and(|p| p > 0),
        "{info}"
    );
    let mut ssh = lima.command(Path::new("/usr/bin/ssh"));
    ssh.arg("-F")
        .arg(&ssh_config)
        .arg(format!("lima-{name}"))
        .arg("id -un; id -u; sudo -n id -u; pwd");
    let r = lima.run(&mut ssh, None).ok();
    assert_eq!(
        r.stdout().lines().collect::<Vec<_>>(),
        [user.as_str(), &uid.to_string(), "0", home.as_str()]
    );

    // Shares: vsockfs and 9p, both ways.
    let vsockfs_guest = vsockfs_dir.display().to_string();
    let ninep_guest = ninep_dir.display().to_string();
    assert_eq!(
        sh(&lima, name, &format!("cat {vsockfs_guest}/from-host")),
        "hello guest"
    );
    sh(
        &lima,
        name,
        &format!("echo via-vsockfs > {vsockfs_guest}/from-guest && echo via-9p > {ninep_guest}/from-guest"),
    );
    assert_eq!(
        std::fs::read_to_string(vsockfs_dir.join("from-guest")).unwrap(),
        "via-vsockfs\n"
    );
    assert_eq!(
        std::fs::read_to_string(ninep_dir.join("from-guest")).unwrap(),
        "via-9p\n"
    );

    // A guest listener appears on the host.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _server = lima.spawn_shell(
        name,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    lima.wait_until(
        "the guest's web server on the host",
        std::time::Duration::from_secs(120),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|mut s| {
                    use std::io::{Read, Write};
                    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    let mut b = [0u8; 12];
                    s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.0 200")
                })
                .unwrap_or(false)
        },
    );
    drop(_server);

    // What the guest writes survives stop and start, on a file system that
    // needed no recovery; the second start downloads nothing.
    sh(
        &lima,
        name,
        &format!("echo kept > {home}/kept && sudo -n sh -c 'echo kept > /var/lib/kept'"),
    );
    let r = lima.limactl(&["stop", name]).ok();
    assert!(!r.messages().contains("forced"), "{}", r.stderr());
    lima.limactl(&["start", name, "--timeout", "10m"]).ok();
    assert_eq!(
        sh(&lima, name, &format!("cat {home}/kept /var/lib/kept")),
        "kept\nkept"
    );
    let kernel_log = sh(&lima, name, "sudo -n dmesg");
    assert!(kernel_log.contains("EXT4-fs (vda"), "{kernel_log}");
    assert!(
        !kernel_log.contains("recovery complete") && !kernel_log.contains("orphan"),
        "{kernel_log}"
    );
    assert_eq!(server.total(), 1, "the second start downloaded nothing");
    lima.limactl(&["stop", name]).ok();
}
