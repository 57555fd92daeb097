//! Issue 23: the flow Lima shows for AI agents. From a project folder,
//! `limactl start --mount-only .:w` shares only that folder, writable;
//! `lima CMD` runs in it, writes land on the host, and nothing else of the
//! host is visible in the guest.
use std::path::Path;

use lima_tests::Lima;

/// `PROGRAM ARGS` run from `cwd` with `LIMA_INSTANCE=name`.
fn in_dir(lima: &Lima, cwd: &Path, name: &str, program: &str, args: &[&str]) -> lima_tests::Run {
    let mut c = lima.cmd(program);
    c.current_dir(cwd)
        .env("LIMA_INSTANCE", name)
        .env_remove("LIMA_WORKDIR")
        .env_remove("LIMA_SHELL")
        .args(args);
    lima.run(&mut c, None)
}

/// The mounts `limactl create` wrote into an instance's `lima.yaml`, as
/// (location, writable) pairs.
fn written_mounts(lima: &Lima, name: &str) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(lima.instance_dir(name).join("lima.yaml")).unwrap();
    let y: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    y["mounts"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| {
            (
                m["location"].as_str().unwrap().to_owned(),
                m["writable"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Every spelling of the project folder names the folder itself; no VM.
#[test]
fn mount_only_spellings_name_the_project_folder() {
    let lima = Lima::as_ordinary_user();
    let folder = lima.home_folder("lima-agent-spell");
    let project = folder.0.clone();
    let base = project.file_name().unwrap().to_str().unwrap().to_owned();
    let want = vec![(project.display().to_string(), true)];
    for (i, (cwd, spelling)) in [
        (project.clone(), ".:w".to_owned()),
        (project.clone(), "./:w".to_owned()),
        (project.join("sub"), "..:w".to_owned()),
        (project.clone(), "sub/../:w".to_owned()),
        (project.join("sub"), format!("~/{base}:w")),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("sp{i}");
        in_dir(
            &lima,
            &cwd,
            &name,
            "limactl",
            &["create", "--name", &name, "--mount-only", &spelling],
        )
        .ok();
        assert_eq!(
            written_mounts(&lima, &name),
            want,
            "{spelling} from {cwd:?}"
        );
    }
}

/// One VM of the default template, started by an ordinary user from the
/// project folder.
#[test]
fn mount_only_shares_just_the_project_folder() {
    let lima = Lima::as_ordinary_user();
    let folder = lima.home_folder("lima-agent-flow");
    let project = folder.0.clone();
    std::fs::write(project.join("README"), "project notes\n").unwrap();
    // Beside the project, in the same home: must stay out of the guest.
    let sibling = project.with_extension("secret");
    std::fs::write(&sibling, "host only\n").unwrap();
    struct Gone<'a>(&'a Path);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _gone = Gone(&sibling);
    if let Some(u) = &lima.user {
        for p in [project.join("README"), sibling.clone()] {
            std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid)).unwrap();
        }
    }

    in_dir(
        &lima,
        &project,
        "ag23",
        "limactl",
        &[
            "start",
            "--name",
            "ag23",
            "--timeout",
            "5m",
            "--mount-only",
            ".:w",
        ],
    )
    .ok();

    // `lima` runs in the project folder.
    let r = in_dir(&lima, &project, "ag23", "lima", &["cat", "README"]).ok();
    assert_eq!(r.stdout(), "project notes\n");
    let r = in_dir(&lima, &project.join("sub"), "ag23", "lima", &["pwd"]).ok();
    assert_eq!(r.stdout(), format!("{}\n", project.join("sub").display()));

    // Writes land on the host, owned by the user.
    in_dir(
        &lima,
        &project,
        "ag23",
        "lima",
        &[
            "sh",
            "-c",
            "echo from the guest > sub/made && mkdir -p out/deep",
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(project.join("sub/made")).unwrap(),
        "from the guest\n"
    );
    assert!(project.join("out/deep").is_dir());
    if let Some(u) = &lima.user {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(project.join("sub/made")).unwrap();
        assert_eq!((m.uid(), m.gid()), (u.uid, u.gid));
    }

    // Nothing else: the file beside the project, the default template's
    // home and /tmp/lima shares are absent, and the guest's mount table
    // holds exactly one shared folder.
    let r = in_dir(
        &lima,
        &project,
        "ag23",
        "lima",
        &["cat", sibling.to_str().unwrap()],
    );
    assert_ne!(r.code(), 0, "the sibling is visible: {}", r.stdout());
    let home = project.parent().unwrap();
    let r = in_dir(
        &lima,
        &project,
        "ag23",
        "lima",
        &["ls", "-A", home.to_str().unwrap()],
    )
    .ok();
    assert_eq!(
        r.stdout(),
        format!("{}\n", project.file_name().unwrap().to_str().unwrap())
    );
    let r = in_dir(
        &lima,
        &project,
        "ag23",
        "lima",
        &["test", "-e", "/tmp/lima"],
    );
    assert_eq!(r.code(), 1, "/tmp/lima is shared: {}", r.stderr());
    let r = in_dir(&lima, &project, "ag23", "lima", &["cat", "/proc/mounts"]).ok();
    let shared: Vec<String> = r
        .stdout()
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse")))
        .map(|l| l.split(' ').nth(1).unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        shared,
        vec![project.display().to_string()],
        "{}",
        r.stdout()
    );

    lima.limactl(&["stop", "ag23"]).ok();
}
