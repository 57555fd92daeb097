//! Lima's command line beyond the instance verbs, none needing a VM:
//! `validate`, `template`, `completion`, and plugins (`limactl-FOO` on PATH).
use lima_tests::Lima;

#[test]
fn validate_checks_each_file_and_exits_1_when_one_is_bad() {
    let lima = Lima::new();
    let dir = lima.home.path();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "base: template:debian-12\ncpus: 1\n").unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "images: [{location: builtin:default}]\nmemroy: 1GiB\n",
    )
    .unwrap();
    let r = lima.limactl(&["validate", good.to_str().unwrap()]).ok();
    assert!(
        r.messages()
            .contains(&format!("\"{}\": OK", good.display())),
        "{}",
        r.stderr()
    );
    let r = lima
        .limactl(&["validate", good.to_str().unwrap(), bad.to_str().unwrap()])
        .fails_with("memroy");
    assert_eq!(r.code(), 1);
    assert!(
        r.messages().contains("good.yaml\": OK"),
        "the good file is still reported"
    );
    assert!(
        std::fs::read_dir(dir).unwrap().count() == 2,
        "validate creates nothing"
    );
    // Template variables are filled as for an instance of that name: the
    // default template's `{{.GlobalTempDir}}/lima` mount is valid.
    let r = lima.limactl(&["validate", "template:default"]).ok();
    assert!(
        r.messages().contains("\"template:default\": OK"),
        "{}",
        r.stderr()
    );
}

#[test]
fn completion_scripts_name_our_commands() {
    let lima = Lima::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = lima.limactl(&["completion", shell]).ok().stdout();
        assert!(out.contains("limactl"), "{shell}");
        assert!(
            out.contains("show-ssh") && out.contains("validate"),
            "{shell}"
        );
    }
    lima.limactl(&["completion", "tcsh"]).fails_with("tcsh");
}

#[test]
fn a_plugin_on_path_runs_as_a_command_and_an_unknown_one_is_named() {
    let lima = Lima::new();
    let bin = lima.home.path().join("plugins");
    std::fs::create_dir(&bin).unwrap();
    let plugin = bin.join("limactl-hello");
    std::fs::write(&plugin, "#!/bin/sh\necho \"hello: $*\"\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r = lima.run(
        lima.cmd("limactl")
            .env("PATH", &path)
            .args(["hello", "a", "--b"]),
        None,
    );
    assert_eq!(r.code(), 3, "the plugin's exit code is ours");
    assert_eq!(r.stdout(), "hello: a --b\n");
    let r = lima
        .limactl(&["nosuchcommand"])
        .fails_with("unknown command \"nosuchcommand\" for \"limactl\"");
    assert_eq!(r.code(), 1);
}

/// `limactl template copy|validate|yq` (and `tmpl`): Lima's experimental
/// warning, a built-in template written out, checked and queried.
#[test]
fn template_copy_validate_and_yq() {
    let lima = Lima::new();
    let r = lima
        .limactl(&["template", "copy", "template:docker", "-"])
        .ok();
    assert!(
        r.messages().contains("`limactl template` is experimental"),
        "{}",
        r.stderr()
    );
    assert!(r.stdout().contains("builtin:docker"), "{}", r.stdout());
    let file = lima.home.path().join("copied.yaml");
    lima.limactl(&["tmpl", "copy", "--embed", "docker", file.to_str().unwrap()])
        .ok();
    let copied = std::fs::read_to_string(&file).unwrap();
    assert!(copied.contains("builtin:docker"), "{copied}");
    let r = lima
        .limactl(&["template", "validate", file.to_str().unwrap()])
        .ok();
    assert!(r.messages().contains("copied.yaml\": OK"), "{}", r.stderr());
    let r = lima
        .limactl(&["template", "yq", "template:debian-12", ".images[0].arch"])
        .ok();
    assert_eq!(r.stdout(), "x86_64\n");
    lima.limactl(&["template", "copy", "--embed", "--verbatim", "docker", "-"])
        .fails_with("--verbatim cannot be used with any of --embed, --embed-all, or --fill");
    lima.limactl(&["template", "copy", "nosuch", "-"])
        .fails_with("template `nosuch` does not exist");
}
