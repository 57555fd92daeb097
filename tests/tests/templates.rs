//! `limactl start` with remote templates and `base:`, up to the point where
//! an image would be downloaded: no VM, no internet (a local HTTP server).
use lima_tests::http::{Reply, Server};
use lima_tests::Lima;

#[test]
fn a_remote_template_with_a_base_is_fetched_once_merged_and_named_in_errors() {
    let lima = Lima::new();
    let server = Server::start();
    // The child's image comes before debian-12's (Lima's list rule), so the
    // start reaches for the local server's (absent) image and stops there.
    let image = server.url("/images/child.qcow2");
    let template = server.route(
        "/t/Remote-Box.yaml",
        Reply::Bytes(
            format!(
                "base: [template:debian-12, common.yaml]\nimages:\n- location: {image}\n  arch: x86_64\n- location: {image}\n  arch: aarch64\ncpus: 1\n"
            )
            .into_bytes(),
        ),
    );
    server.route(
        "/t/common.yaml",
        Reply::Bytes(b"memory: 512MiB\ncpus: 2\n".to_vec()),
    );
    let r = lima.limactl(&["start", &template]).fails_with("404");
    assert!(r.messages().contains(&image), "{}", r.stderr());
    assert_eq!(server.hits("/t/Remote-Box.yaml"), 1, "fetched once");
    assert_eq!(
        server.hits("/t/common.yaml"),
        1,
        "the relative base follows the URL"
    );
    assert!(!lima.instance_dir("remote-box").exists());
}

#[test]
fn remote_template_errors_are_clear() {
    let lima = Lima::new();
    let server = Server::start();
    let missing = server.url("/t/missing.yaml");
    let r = lima.limactl(&["start", &missing]).fails_with("404");
    assert!(r.messages().contains(&missing), "{}", r.stderr());

    let bad = server.route(
        "/t/bad.yaml",
        Reply::Bytes(b"base: template:fedora\ncpus: 1\nmemroy: 1GiB\n".to_vec()),
    );
    let r = lima.limactl(&["start", &bad]).fails_with("memroy");
    assert!(
        r.messages().contains(&bad),
        "the error names the URL: {}",
        r.stderr()
    );

    let looped = server.route("/t/loop.yaml", Reply::Bytes(b"base: loop.yaml\n".to_vec()));
    lima.limactl(&["start", &looped]).fails_with("loop");
    assert!(lima.our_processes().is_empty());
}

/// `base: template:debian-12` with the template's own image (the local
/// Debian 12 cloud image from `cargo xtask image debian-cloud`) in front:
/// the merged instance boots it, and its `lima.yaml` is the merge.
#[test]
#[ignore = "slow: cargo xtask test --slow (a Debian cloud image boots, about a minute under TCG)"]
fn a_template_based_on_debian_12_boots_the_local_debian_image() {
    use sha2::Digest;
    let lima = Lima::as_ordinary_user();
    let image = lima.debian_cloud_image();
    let digest = format!(
        "sha512:{}",
        hex::encode(sha2::Sha512::digest(std::fs::read(&image).unwrap()))
    );
    let server = Server::start();
    let url = server.route("/local-debian-12.qcow2", Reply::File(image));
    let yaml = lima.home.path().join("based.yaml");
    std::fs::write(
        &yaml,
        format!(
            "base: template:debian-12\nimages:\n- location: {url}\n  arch: x86_64\n  digest: {digest}\ncpus: 2\nmemory: 1GiB\ndisk: 8GiB\n"
        ),
    )
    .unwrap();
    lima.limactl(&["start", "--timeout", "10m", yaml.to_str().unwrap()])
        .ok();
    assert_eq!(server.hits("/local-debian-12.qcow2"), 1);
    let os = lima
        .shell("based", &["cat", "/etc/os-release"])
        .ok()
        .stdout();
    assert!(os.contains("VERSION_ID=\"12\""), "{os}");
    let merged = std::fs::read_to_string(lima.instance_dir("based").join("lima.yaml")).unwrap();
    let ours = merged.find(&url).expect("our image in lima.yaml");
    let upstream = merged
        .find("debian-12-genericcloud-amd64")
        .expect("debian-12's images follow");
    assert!(ours < upstream, "{merged}");
    assert!(merged.contains("mountTypesUnsupported"), "{merged}");
    assert!(!merged.contains("base:"), "{merged}");
    lima.limactl(&["stop", "based"]).ok();
}
