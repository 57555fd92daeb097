//! Issue 23, the flow of an agent installed from npm on a distro image: a
//! Debian cloud image started with `--mount-only .:w` from a project
//! folder, `lima sudo apt-get install -y npm`, `lima sudo npm install -g`
//! of a package from the npm registry, and the package's program run with
//! `lima` in the project folder, its output landing on the host.
use std::path::Path;

use lima_tests::Lima;

fn in_dir(lima: &Lima, cwd: &Path, args: &[&str]) -> lima_tests::Run {
    let mut c = lima.cmd("lima");
    c.current_dir(cwd)
        .env("LIMA_INSTANCE", "npm23")
        .env_remove("LIMA_WORKDIR")
        .env_remove("LIMA_SHELL")
        .args(args);
    lima.run(&mut c, None)
}

#[test]
#[ignore = "slow: cargo xtask test --slow (a Debian cloud image installs npm from the network under TCG)"]
fn an_npm_program_runs_in_the_project_folder_on_debian() {
    let lima = Lima::as_ordinary_user();
    let image = lima.debian_cloud_image();
    let folder = lima.home_folder("lima-agent-npm");
    let project = folder.0.clone();
    // The registry is reached over HTTPS; a machine whose traffic goes
    // through an inspecting proxy trusts its CA through the host's local
    // trust anchors, which `caCerts` hands to the guest as a user would.
    let local_cas: Vec<String> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .map(|p| format!("  - {}\n", p.display()))
        .collect();
    let ca_certs = if local_cas.is_empty() {
        String::new()
    } else {
        format!("caCerts:\n  files:\n{}", local_cas.concat())
    };
    let yaml = lima.home.path().join("debian.yaml");
    std::fs::write(
        &yaml,
        format!(
            "images:\n- location: {}\n  arch: x86_64\ncpus: 2\nmemory: 2GiB\ndisk: 8GiB\n{ca_certs}",
            image.display()
        ),
    )
    .unwrap();
    let mut c = lima.cmd("limactl");
    c.current_dir(&project).args([
        "start",
        "--name",
        "npm23",
        "--timeout",
        "10m",
        "--mount-only",
        ".:w",
        yaml.to_str().unwrap(),
    ]);
    lima.run(&mut c, None).ok();

    in_dir(&lima, &project, &["sudo", "apt-get", "update", "-q"]).ok();
    in_dir(
        &lima,
        &project,
        &[
            "sudo",
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-q",
            "npm",
        ],
    )
    .ok();
    in_dir(
        &lima,
        &project,
        &["sudo", "npm", "install", "-g", "cowsay@1.6.0"],
    )
    .ok();
    // The program runs as the user, in the project folder; what it writes
    // there is the host's.
    let r = in_dir(
        &lima,
        &project,
        &["sh", "-c", "cowsay from the sandbox > said && pwd"],
    )
    .ok();
    assert_eq!(r.stdout(), format!("{}\n", project.display()));
    let said = std::fs::read_to_string(project.join("said")).unwrap();
    assert!(said.contains("< from the sandbox >"), "{said}");

    lima.limactl(&["stop", "npm23"]).ok();
}
