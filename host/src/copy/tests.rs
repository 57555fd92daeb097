use super::*;

fn host(p: &str) -> Place {
    Place::Host(p.into())
}

#[test]
fn operands_follow_lima_colon_rule() {
    assert_eq!(Place::parse("a/b").unwrap(), host("a/b"));
    assert_eq!(
        Place::parse("default:/etc/os-release").unwrap(),
        Place::Guest {
            instance: "default".into(),
            path: "/etc/os-release".into()
        }
    );
    // An empty guest path is the home.
    assert_eq!(Place::parse("vm:").unwrap().path(), ".");
    let e = Place::parse("vm:a:b").unwrap_err().to_string();
    assert_eq!(e, "path \"vm:a:b\" contains multiple colons");
    assert!(Place::parse("").is_err());
}

#[test]
fn an_existing_folder_receives_each_source_under_its_name() {
    let d = plan(
        &[host("x/a.txt"), host("dir/"), host(".")],
        "/tmp",
        Kind::Folder,
    )
    .unwrap();
    assert_eq!(
        d,
        vec![
            Dest {
                dir: "/tmp".into(),
                name: Some("a.txt".into())
            },
            Dest {
                dir: "/tmp".into(),
                name: Some("dir".into())
            },
            // `.`: the sender's own name for the folder.
            Dest {
                dir: "/tmp".into(),
                name: None
            },
        ]
    );
}

#[test]
fn otherwise_the_one_source_becomes_the_target() {
    let one = |target, kind| plan(&[host("a")], target, kind);
    assert_eq!(
        one("/tmp/b.txt", Kind::Missing).unwrap(),
        vec![Dest {
            dir: "/tmp".into(),
            name: Some("b.txt".into())
        }]
    );
    assert_eq!(
        one("b", Kind::Other).unwrap(),
        vec![Dest {
            dir: ".".into(),
            name: Some("b".into())
        }]
    );
    assert_eq!(
        one("/b", Kind::Missing).unwrap(),
        vec![Dest {
            dir: "/".into(),
            name: Some("b".into())
        }]
    );
    let e = one("/tmp/new/", Kind::Missing).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = plan(&[host("a"), host("b")], "f", Kind::Other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an existing folder"), "{e}");
    assert!(one("..", Kind::Missing).is_err());
}

/// A tar stream of `(path, body)` files, with folders for paths ending in `/`.
fn archive(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        } else {
            h.set_mode(0o640);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, path, body.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn names(tar: &[u8]) -> Vec<(String, String)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            (e.path().unwrap().display().to_string(), body)
        })
        .collect()
}

#[test]
fn the_top_entry_is_renamed_and_the_rest_kept() {
    let long = format!("d/{}", "n".repeat(150));
    let input = archive(&[("d/", ""), ("d/x", "1"), ("./d/sub/", ""), (&long, "2")]);
    let mut out = Vec::new();
    rename_top(&input[..], &mut out, Some("new")).unwrap();
    assert_eq!(
        names(&out),
        vec![
            ("new".into(), "".into()),
            ("new/x".into(), "1".into()),
            ("new/sub".into(), "".into()),
            (format!("new/{}", "n".repeat(150)), "2".into()),
        ]
    );
    // No new name: kept.
    let mut out = Vec::new();
    rename_top(&archive(&[("f", "body")])[..], &mut out, None).unwrap();
    assert_eq!(names(&out), vec![("f".into(), "body".into())]);
}

/// One file entry named `name` as written, without the tar crate's checks.
fn raw_entry(name: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_size(0);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn streams_that_leave_the_copy_are_refused() {
    let refused = |stream: Vec<u8>| {
        let mut out = Vec::new();
        format!(
            "{:#}",
            rename_top(&stream[..], &mut out, Some("n")).unwrap_err()
        )
    };
    // Two top entries.
    let e = refused(archive(&[("d/", ""), ("e/x", "1")]));
    assert!(e.contains("more than one top entry"), "{e}");
    // Climbing out, or absolute.
    for name in [&b"d/../../x"[..], b"/etc/pw"] {
        let mut stream = archive(&[("d/", "")]);
        stream.truncate(stream.len() - 1024);
        stream.extend(raw_entry(name));
        stream.extend([0u8; 1024]);
        let e = refused(stream);
        assert!(e.contains("leaves the copy"), "{e}");
    }
}

#[test]
fn host_to_host_copies_files_and_folders_with_their_links() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f"), "hello").unwrap();
    std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o750)).unwrap();
    symlink("sub/f", src.join("link")).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let s = src.to_str().unwrap();
    let o = out.to_str().unwrap();

    // A folder without -r is refused and nothing is made.
    let dest = plan(&[host(s)], o, Kind::Folder).unwrap().remove(0);
    let e = copy(Side::Host, s, Side::Host, &dest, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a folder (copy folders with -r)"), "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    copy(Side::Host, s, Side::Host, &dest, true).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("src/sub/f")).unwrap(),
        "hello"
    );
    let mode = std::fs::metadata(out.join("src/sub/f"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    // Group/world write bits go through the user's umask (0o022 here).
    std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o777)).unwrap();
    copy(Side::Host, s, Side::Host, &dest, true).unwrap();
    let mode = std::fs::metadata(out.join("src/sub/f"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out.join("src/link")).unwrap(),
        Path::new("sub/f")
    );

    // A file to a new name; then over an existing file.
    let f = src.join("sub/f");
    let target = out.join("renamed");
    let dest = plan(
        &[host(f.to_str().unwrap())],
        target.to_str().unwrap(),
        Kind::Missing,
    )
    .unwrap()
    .remove(0);
    copy(Side::Host, f.to_str().unwrap(), Side::Host, &dest, false).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "hello");
    std::fs::write(&f, "again").unwrap();
    copy(Side::Host, f.to_str().unwrap(), Side::Host, &dest, false).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "again");

    // A missing source and a missing target folder: one clear error each.
    let e = copy(Side::Host, "/nonexistent/x", Side::Host, &dest, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read /nonexistent/x"), "{e}");
    let nowhere = Dest {
        dir: "/nonexistent".into(),
        name: Some("x".into()),
    };
    let e = msg_of(copy(
        Side::Host,
        f.to_str().unwrap(),
        Side::Host,
        &nowhere,
        false,
    ));
    assert!(e.contains("/nonexistent: no such folder"), "{e}");
}

fn msg_of(r: Result<()>) -> String {
    format!("{:#}", r.unwrap_err())
}
