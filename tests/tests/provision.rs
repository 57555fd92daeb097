//! Issue 20: `provision:` in every mode, `probes:`, `env:`, `param:` and
//! the template variables, run by the host agent through the guest agent.
use std::time::Duration;

use lima_tests::Lima;

#[track_caller]
fn sh(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script]).ok().stdout()
}

/// Where in `text` each needle first appears; panics naming a missing one.
#[track_caller]
fn positions(text: &str, needles: &[&str]) -> Vec<usize> {
    needles
        .iter()
        .map(|n| {
            text.find(n)
                .unwrap_or_else(|| panic!("{n:?} missing from:\n{text}"))
        })
        .collect()
}

#[test]
fn provision_scripts_probes_env_params_and_message_on_our_image() {
    let lima = Lima::new();
    let yaml = lima.template(
        "prov.yaml",
        r#"param:
  GREETING: hello-param
env:
  FROM_ENV: env-value
provision:
- mode: user
  script: |
    #!/bin/sh
    echo "user $(id -un) {{.Param.GREETING}} $PARAM_GREETING $FROM_ENV" >> /run/prov/log
- mode: system
  script: echo "system $(id -u) {{.Name}} {{.User}} {{.UID}} {{.Home}} $FROM_ENV" >> /run/prov/log
- mode: boot
  script: |
    mkdir -p /run/prov && chmod 777 /run/prov
    echo "boot $(id -u)" > /run/prov/log
    chmod 666 /run/prov/log
- mode: dependency
  skipDefaultDependencyResolution: true
  script: echo "dependency $(id -u) $PARAM_GREETING" >> /run/prov/log
- mode: data
  path: /etc/lima-test/data.txt
  content: "data {{.Param.GREETING}}\n"
  owner: "{{.User}}"
  permissions: 640
probes:
- description: the data file is in place
  script: test -s /etc/lima-test/data.txt
  hint: this hint is not shown when the probe passes
message: |
  Hello from {{.Name}} ({{.Param.GREETING}}) in {{.Dir}}
"#,
    );
    let r = lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();
    let err = r.messages();

    // Each step and the probe on stderr, in Lima's order of modes.
    let done = positions(
        &err,
        &[
            "provision[2] (mode: boot) done",
            "provision[4] (mode: data) done",
            "provision[3] (mode: dependency) done",
            "provision[1] (mode: system) done",
            "provision[0] (mode: user) done",
            "probes[0] (the data file is in place) done",
            "READY",
        ],
    );
    assert!(done.windows(2).all(|w| w[0] < w[1]), "order:\n{err}");
    assert!(!err.contains("hint"), "{err}");

    // The message after READY, on stdout, its variables filled.
    let dir = lima.instance_dir("prov");
    assert_eq!(
        r.stdout(),
        format!(
            "Message from the instance `prov`:\nHello from prov (hello-param) in {}\n",
            dir.display()
        )
    );

    // Every script ran, in order, as root or as the guest user, with
    // `param:` expanded and in the environment, and `env:` set.
    let user = sh(&lima, "prov", "id -un").trim().to_string();
    let uid = sh(&lima, "prov", "id -u").trim().to_string();
    let home = sh(&lima, "prov", "echo $HOME").trim().to_string();
    assert_eq!(
        sh(&lima, "prov", "cat /run/prov/log"),
        format!(
            "boot 0\ndependency 0 hello-param\nsystem 0 prov {user} {uid} {home} env-value\nuser {user} hello-param hello-param env-value\n"
        )
    );
    // The data file: content expanded, owner and permissions as asked.
    assert_eq!(
        sh(
            &lima,
            "prov",
            "cat /etc/lima-test/data.txt; stat -c '%U %a' /etc/lima-test/data.txt"
        ),
        format!("data hello-param\n{user} 640\n")
    );

    // `env:` reaches `limactl shell` and `lima`; a NAME=VALUE word wins.
    assert_eq!(sh(&lima, "prov", "echo $FROM_ENV"), "env-value\n");
    // And the guest's /etc/environment, for services and SSH logins.
    assert_eq!(
        sh(&lima, "prov", "grep -x FROM_ENV=env-value /etc/environment"),
        "FROM_ENV=env-value\n"
    );
    assert_eq!(
        lima.shell("prov", &["FROM_ENV=word", "sh", "-c", "echo $FROM_ENV"])
            .ok()
            .stdout(),
        "word\n"
    );
    let r = lima
        .run(
            lima.cmd("lima")
                .env("LIMA_INSTANCE", "prov")
                .args(["sh", "-c", "echo $FROM_ENV"]),
            None,
        )
        .ok();
    assert_eq!(r.stdout(), "env-value\n");
    lima.limactl(&["delete", "--force", "prov"]).ok();

    // A probe that never passes fails the start with its hint and its
    // last output, and the VM does not stay up.
    let yaml = lima.template(
        "probe.yaml",
        r#"provision:
- mode: system
  script: echo provisioned
probes:
- description: a file nobody makes
  script: |
    echo "looking for /nonexistent"
    test -e /nonexistent
  hint: |
    Create /nonexistent first.
"#,
    );
    let r = lima
        .limactl(&["start", "--timeout", "2m", &yaml])
        .fails_with("probes[0] (a file nobody makes) failed");
    let err = r.messages();
    assert!(err.contains("provision[0] (mode: system) done"), "{err}");
    assert!(err.contains("  | looking for /nonexistent"), "{err}");
    assert!(err.contains("hint: Create /nonexistent first."), "{err}");
    lima.wait_until(
        "the failed instance's VM to go",
        Duration::from_secs(60),
        || lima.our_processes().is_empty(),
    );
    let list = lima.limactl(&["list", "--json"]).ok().stdout();
    assert!(list.contains("Broken"), "{list}");

    // A failing script fails the next start, named with its mode and its
    // last 20 output lines; the steps after it do not run.
    std::fs::write(
        lima.instance_dir("probe").join("lima.yaml"),
        "images:\n- location: builtin:default\ncpus: 2\nmemory: 1GiB\nprovision:\n- mode: user\n  script: echo never\n- mode: system\n  script: |\n    for i in $(seq 1 30); do echo out $i; done\n    exit 3\n",
    )
    .unwrap();
    let r = lima
        .limactl(&["start", "--timeout", "2m", "probe"])
        .fails_with("provision[1] (mode: system) failed (exit code 3); its last output:");
    let err = r.messages();
    assert!(
        err.contains("  | out 11\n") && err.contains("  | out 30\n"),
        "{err}"
    );
    assert!(!err.contains("  | out 10\n"), "{err}");
    assert!(!err.contains("provision[0]"), "{err}");
    lima.wait_until(
        "the failed instance's VM to go",
        Duration::from_secs(60),
        || lima.our_processes().is_empty(),
    );
}

/// On a Debian cloud image (`cargo xtask image debian-cloud`, or
/// `$LIMA_TEST_CLOUD_IMAGE`): the same runner after cloud-init made the
/// guest user.
#[test]
#[ignore = "slow: cargo xtask test --slow (a Debian cloud image boots under TCG, minutes)"]
fn provision_on_a_debian_cloud_image() {
    let lima = Lima::new();
    let image = lima.debian_cloud_image();
    let yaml = lima.home.path().join("cloudprov.yaml");
    std::fs::write(
        &yaml,
        format!(
            r#"images:
- location: {}
  arch: x86_64
cpus: 2
memory: 2GiB
disk: 8GiB
param:
  WHO: cloud
provision:
- mode: user
  script: |
    #!/bin/bash
    echo "user $(id -un) $HOME {{{{.Param.WHO}}}}" > ~/user-ran
- mode: system
  script: |
    #!/bin/bash
    echo "system $(id -u) $PARAM_WHO" > /root/system-ran
- mode: data
  path: /etc/lima-test/data.conf
  content: "who={{{{.Param.WHO}}}}\n"
  owner: "{{{{.User}}}}"
  permissions: "600"
"#,
            image.display()
        ),
    )
    .unwrap();
    let r = lima
        .limactl(&["start", "--timeout", "10m", yaml.to_str().unwrap()])
        .ok();
    let err = r.messages();
    let done = positions(
        &err,
        &[
            "provision[2] (mode: data) done",
            "provision[1] (mode: system) done",
            "provision[0] (mode: user) done",
            "READY",
        ],
    );
    assert!(done.windows(2).all(|w| w[0] < w[1]), "order:\n{err}");
    let user = sh(&lima, "cloudprov", "id -un").trim().to_string();
    let home = sh(&lima, "cloudprov", "echo $HOME").trim().to_string();
    assert_eq!(
        sh(&lima, "cloudprov", "sudo cat /root/system-ran"),
        "system 0 cloud\n"
    );
    assert_eq!(
        sh(&lima, "cloudprov", "cat ~/user-ran"),
        format!("user {user} {home} cloud\n")
    );
    assert_eq!(
        sh(
            &lima,
            "cloudprov",
            "sudo cat /etc/lima-test/data.conf; sudo stat -c '%U %a' /etc/lima-test/data.conf"
        ),
        format!("who=cloud\n{user} 600\n")
    );
}
