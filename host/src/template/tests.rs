use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use super::*;

#[test]
fn builtin_and_file_templates() {
    let t = locate("template:default").unwrap();
    assert_eq!(t.suggested_name, "default");
    assert!(t.text.contains("builtin:default"));
    assert_eq!(locate("default").unwrap().origin, "template:default");
    let err = locate("template:nosuch").unwrap_err().to_string();
    assert!(err.contains("nosuch") && err.contains("default"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.yaml");
    std::fs::write(&p, "cpus: 1\n").unwrap();
    let t = locate(p.to_str().unwrap()).unwrap();
    assert_eq!(t.suggested_name, "mine");
    assert_eq!(t.relative_to, Relative::Dir(dir.path().to_path_buf()));
    assert!(locate("/no/such/file.yaml")
        .unwrap_err()
        .to_string()
        .contains("/no/such/file.yaml"));
}

#[test]
fn both_template_schemes_and_limas_aliases_find_the_shipped_templates() {
    for name in [
        "debian-12",
        "debian-13",
        "ubuntu-24.04",
        "fedora",
        "alpine",
        "archlinux",
        "almalinux",
        "rocky",
        "opensuse",
    ] {
        let a = locate(&format!("template:{name}")).unwrap();
        let b = locate(&format!("template://{name}")).unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(a.origin, format!("template:{name}"));
        assert_eq!(b.suggested_name, name);
    }
    for (alias, target) in [
        ("debian", "debian-13"),
        ("ubuntu", "ubuntu-24.04"),
        ("ubuntu-lts", "ubuntu-24.04"),
        ("opensuse-leap", "opensuse"),
    ] {
        let t = locate(&format!("template:{alias}")).unwrap();
        assert_eq!(t.origin, format!("template:{target}"));
        assert_eq!(t.suggested_name, alias);
    }
    assert!(names().contains(&"debian".to_string()));
    // As Lima's templates write their bases.
    let t = locate("template:_images/debian-12").unwrap();
    assert_eq!(t.origin, "template:debian-12");
    assert_eq!(t.suggested_name, "debian-12");
}

/// Templates whose upstream publishes no pinned image with a checksum;
/// docs/templates.md lists them too.
const NO_DIGEST: &[&str] = &["opensuse"];

/// Templates on our own images (`builtin:`, x86_64 only so far).
const OUR_IMAGES: &[&str] = &["default", "docker", "docker-rootful"];

#[test]
fn every_shipped_template_parses_validates_and_names_a_digested_image_per_arch() {
    let mut checked = 0;
    for (name, text) in builtin() {
        let origin = format!("template:{name}");
        let yaml = crate::config::LimaYaml::parse(text, &origin).unwrap();
        assert!(yaml.base.is_none(), "{name}: shipped templates are flat");
        if OUR_IMAGES.contains(&name) {
            // Variables filled as for an instance, then checked as at start.
            let mut y = yaml.clone();
            crate::tmplvars::expand_for(&mut y, name, std::path::Path::new("/lima/x"), &origin)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let c = y.resolve(&origin).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.image.location.starts_with("builtin:"), "{name}");
            continue;
        }
        for arch in ["x86_64", "aarch64"] {
            let mut y = yaml.clone();
            y.arch = Some(arch.into());
            let c = y
                .resolve(&origin)
                .unwrap_or_else(|e| panic!("{name} ({arch}): {e}"));
            let image = &c.image;
            assert_eq!(image.arch.as_deref(), Some(arch), "{name}");
            assert!(
                image.location.starts_with("https://"),
                "{name} ({arch}): {}",
                image.location
            );
            assert!(
                crate::image::is_disk_image(image),
                "{name} ({arch}): not a disk image: {}",
                image.location
            );
            match (&image.digest, NO_DIGEST.contains(&name)) {
                (Some(d), false) => {
                    let (algo, hex) = d.split_once(':').unwrap();
                    let want = match algo {
                        "sha256" => 64,
                        "sha512" => 128,
                        other => panic!("{name} ({arch}): digest algorithm {other}"),
                    };
                    assert_eq!(hex.len(), want, "{name} ({arch}): {d}");
                    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{d}");
                    crate::download::Expected::parse(&image.location, d).unwrap();
                }
                (None, true) => {}
                (d, _) => panic!("{name} ({arch}): digest {d:?} disagrees with NO_DIGEST"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 18, "nine distro templates, two arches each");
}

#[test]
fn instance_names_from_urls_follow_lima() {
    assert_eq!(
        name_from_locator("https://example.com/a/My-Fedora.yaml"),
        "my-fedora"
    );
    assert_eq!(
        name_from_locator("http://h/x/ubuntu-24.04.yml?x=1"),
        "ubuntu-24.04"
    );
    assert_eq!(name_from_locator("http://h/"), "h");
}

#[test]
fn relative_locators_join_the_templates_own_place() {
    let d = Relative::Dir("/srv/t".into());
    assert_eq!(d.join("b.yaml"), "/srv/t/b.yaml");
    assert_eq!(d.join("sub/b.yaml"), "/srv/t/sub/b.yaml");
    assert_eq!(d.join("/abs/b.yaml"), "/abs/b.yaml");
    assert_eq!(d.join("template:fedora"), "template:fedora");
    assert_eq!(d.join("fedora"), "fedora");
    let u = Relative::Url("http://h/t/child.yaml".into());
    assert_eq!(u.join("base.yaml"), "http://h/t/base.yaml");
    assert_eq!(u.join("https://o/x.yaml"), "https://o/x.yaml");
}

/// Serves `routes` (path → body; absent: 404) on 127.0.0.1 until dropped
/// with the test; returns the base URL.
fn serve(routes: Vec<(&'static str, Vec<u8>)>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let mut conn = conn;
            let _ = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| conn.write_all(body)),
                None => conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    url
}

#[test]
fn a_remote_template_is_fetched_named_and_its_relative_base_follows_the_url() {
    let url = serve(vec![
        (
            "/t/Remote-Box.yaml",
            b"base: [common.yaml, template:debian-12]\ncpus: 1\n".to_vec(),
        ),
        ("/t/common.yaml", b"memory: 1GiB\ncpus: 2\n".to_vec()),
        ("/big.yaml", vec![b'#'; (MAX_REMOTE_BYTES + 1) as usize]),
    ]);
    let t = locate(&format!("{url}/t/Remote-Box.yaml")).unwrap();
    assert_eq!(t.suggested_name, "remote-box");
    assert_eq!(t.origin, format!("{url}/t/Remote-Box.yaml"));
    let text = crate::base::embed(&t).unwrap();
    let mut y = crate::config::LimaYaml::parse(&text, &t.origin).unwrap();
    y.arch = Some("aarch64".into());
    let c = y.resolve(&t.origin).unwrap();
    assert_eq!((c.cpus, c.memory), (1, 1 << 30));
    assert!(c.image.location.contains("debian-12-genericcloud-arm64"));

    let err = locate(&format!("{url}/t/gone.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gone.yaml") && err.contains("404"), "{err}");
    let err = locate(&format!("{url}/big.yaml")).unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn an_unreachable_template_url_is_one_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x.yaml");
    let err = locate(&url).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot fetch template {url}: ")) && err.contains("network"),
        "{err}"
    );
}
