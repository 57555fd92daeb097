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
    assert!(r.stderr().contains(&image), "{}", r.stderr());
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
    assert!(r.stderr().contains(&missing), "{}", r.stderr());

    let bad = server.route(
        "/t/bad.yaml",
        Reply::Bytes(b"base: template:fedora\ncpus: 1\nmemroy: 1GiB\n".to_vec()),
    );
    let r = lima.limactl(&["start", &bad]).fails_with("memroy");
    assert!(
        r.stderr().contains(&bad),
        "the error names the URL: {}",
        r.stderr()
    );

    let looped = server.route("/t/loop.yaml", Reply::Bytes(b"base: loop.yaml\n".to_vec()));
    lima.limactl(&["start", &looped]).fails_with("loop");
    assert!(lima.our_processes().is_empty());
}
