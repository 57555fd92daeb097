//! Distro cloud images (`images:` with a disk image): downloads, the
//! instance disk, cloud-init, the guest user and SSH.
//!
//! `bad_downloads_fail_clearly_and_leave_nothing` needs no VM. The Debian
//! test needs the image from `cargo xtask image debian-cloud`, served from
//! a local HTTP server (no test reaches the internet).
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
            r.stderr().contains(&url),
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
