//! `limactl list` and `limactl info` as Lima's, none needing a VM: the
//! instances are folders with a `lima.yaml` written under the test's
//! `LIMA_HOME`. Outputs are compared with golden files written from Lima's
//! shapes (tests/golden/list-*, info-keys).
use lima_tests::golden::assert_golden;
use lima_tests::{Lima, Run};

/// foo, bar and baz: stopped instances of sizes the table shows.
fn three() -> Lima {
    let lima = Lima::new();
    for (name, cpus, memory, disk) in [
        ("foo", 1, "512MiB", "1GiB"),
        ("bar", 2, "1GiB", "2GiB"),
        ("baz", 4, "1536MiB", "3GiB"),
    ] {
        write_instance(
            &lima,
            name,
            &format!("cpus: {cpus}\nmemory: {memory}\ndisk: {disk}\n"),
        );
    }
    lima
}

/// An instance folder whose `lima.yaml` is our image plus `extra`, with a
/// fixed guest user so the output does not depend on who runs the test.
fn write_instance(lima: &Lima, name: &str, extra: &str) {
    let dir = lima.instance_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("lima.yaml"),
        format!(
            "images:\n- location: builtin:default\n{extra}user:\n  name: tester\n  comment: Tester\n  home: /home/tester.linux\n  shell: /bin/bash\n  uid: 1000\n"
        ),
    )
    .unwrap();
}

/// Paths under the test's LIMA_HOME as `$LIMA_HOME`.
fn norm(lima: &Lima, text: &str) -> String {
    text.replace(lima.home.path().to_str().unwrap(), "$LIMA_HOME")
}

/// As [`norm`], and the host's architecture as `$ARCH`.
fn norm_arch(lima: &Lima, text: &str) -> String {
    norm(lima, text).replace(std::env::consts::ARCH, "$ARCH")
}

fn list(lima: &Lima, args: &[&str]) -> Run {
    let mut a = vec!["list"];
    a.extend_from_slice(args);
    lima.limactl(&a)
}

const TEMPLATE: &str = r#"{{.Name}} {{.Status}} {{.CPUs}} {{.Memory}} {{.Disk}} {{.SSHLocalPort}} {{.VMType}} {{.Arch}} {{.Dir}} {{.HostOS}} {{.LimaHome}} {{.Protected}} {{if eq .Status "Stopped"}}down{{end}}"#;

#[test]
fn every_format_has_limas_shape() {
    let lima = three();
    let table = list(&lima, &[]).ok();
    assert_golden("list-table", &norm(&lima, &table.stdout()));
    assert_eq!(table.stderr(), "", "nothing to warn about");
    // `ls` is the same command.
    assert_eq!(lima.limactl(&["ls"]).ok().stdout(), table.stdout());

    let json = list(&lima, &["--format", "json", "foo", "bar"])
        .ok()
        .stdout();
    assert_golden("list-json", &norm_arch(&lima, &json));
    assert_eq!(list(&lima, &["--json", "foo", "bar"]).ok().stdout(), json);

    let yaml = list(&lima, &["--format", "yaml", "foo", "bar"])
        .ok()
        .stdout();
    assert_golden("list-yaml", &norm_arch(&lima, &yaml));
    // The YAML documents hold what the JSON lines hold.
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs, lines);

    let t = list(&lima, &["--format", TEMPLATE, "foo", "bar"])
        .ok()
        .stdout();
    assert_golden("list-template", &norm_arch(&lima, &t));

    let fields = list(&lima, &["--list-fields"]).ok().stdout();
    assert_golden("list-fields", &fields);
}

#[test]
fn names_in_the_order_given_and_unknown_ones_exit_1_after_the_rest() {
    let lima = three();
    let names = |r: &Run| -> Vec<String> {
        r.stdout()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let r = list(&lima, &["foo", "bar"]).ok();
    assert_eq!(names(&r), ["foo", "bar"]);
    assert_eq!(
        list(&lima, &["-q", "baz", "foo"]).ok().stdout(),
        "baz\nfoo\n"
    );
    assert_eq!(list(&lima, &["--quiet"]).ok().stdout(), "bar\nbaz\nfoo\n");

    let r = list(&lima, &["foo", "nope", "bar"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(names(&r), ["foo", "bar"], "the others are still listed");
    assert!(
        r.messages().contains("No instance matching nope found."),
        "{}",
        r.stderr()
    );
    assert!(
        r.messages().contains("unmatched instances"),
        "{}",
        r.stderr()
    );
    let r = list(&lima, &["-q", "nope", "foo"]);
    assert_eq!((r.code(), r.stdout().as_str()), (1, "foo\n"));
}

#[test]
fn conflicting_options_are_refused_in_limas_words() {
    let lima = three();
    for (args, needle) in [
        (
            &["-q", "--format", "json"][..],
            "option --quiet can only be used with '--format table'",
        ),
        (
            &["-q", "--format", "yaml"],
            "option --quiet can only be used with '--format table'",
        ),
        (
            &["-q", "--format", "{{.Name}}"],
            "option --quiet can only be used with '--format table'",
        ),
        (
            &["--json", "--format", "json"],
            "option --json conflicts with option --format",
        ),
        (
            &["--list-fields", "--format", "json"],
            "option --list-fields conflicts with option --format",
        ),
        (
            &["--yq", ".name", "--format", "table"],
            "option --yq only works with --format json or yaml",
        ),
        (
            &["--yq", ".name", "--format", "{{.Name}}"],
            "option --yq only works with --format json or yaml",
        ),
        (
            &["--list-fields", "--yq", "."],
            "option --list-fields conflicts with option --yq",
        ),
        (
            &["--list-fields", "-l", ".cpus"],
            "option --list-fields conflicts with option --filter",
        ),
        (&["--yq", "env.HOME"], "env operations have been disabled"),
    ] {
        let r = list(&lima, args).fails_with(needle);
        assert_eq!((r.code(), r.stdout().as_str()), (1, ""), "{args:?}");
    }
}

#[test]
fn no_instances_is_a_warning_not_an_error() {
    let lima = Lima::new();
    for args in [&[][..], &["--format", "json"]] {
        let r = list(&lima, args).ok();
        assert_eq!(r.stdout(), "");
        assert!(
            r.messages()
                .contains("No instance found. Run `limactl create` to create an instance."),
            "{}",
            r.stderr()
        );
    }
}

#[test]
fn a_folder_without_lima_yaml_is_listed_broken_with_a_warning() {
    let lima = Lima::new();
    write_instance(
        &lima,
        "arm",
        "arch: aarch64\ncpus: 1\nmemory: 512MiB\ndisk: 1GiB\n",
    );
    std::fs::create_dir(lima.instance_dir("junk")).unwrap();
    // Lima's own folders are not instances.
    std::fs::create_dir(lima.home.path().join("_config")).unwrap();
    let r = list(&lima, &[]).ok();
    assert_golden("list-table-broken", &norm(&lima, &r.stdout()));
    let err = norm(&lima, &r.messages());
    assert!(
        err.contains("\"$LIMA_HOME\" does not look like a valid Lima directory")
            && err.contains("$LIMA_HOME/junk/lima.yaml"),
        "{err}"
    );
    assert!(err.contains("instance \"junk\" has errors"), "{err}");
    let info = lima.info("junk");
    assert_eq!(info["status"], "Broken");
    assert!(
        info["errors"][0].as_str().unwrap().contains("lima.yaml"),
        "{info}"
    );
    assert_eq!(list(&lima, &["-q"]).ok().stdout(), "arm\njunk\n");
}

#[test]
fn go_templates_name_what_they_cannot_do() {
    let lima = three();
    let r = list(&lima, &["--format", "{{.Unknown}}", "foo"])
        .fails_with("can't evaluate field Unknown");
    assert_eq!(r.stdout(), "");
    let r = list(&lima, &["--format", "{{slice .Name 1}}", "foo"])
        .fails_with("`slice` is not supported");
    assert_eq!(r.stdout(), "");
    list(&lima, &["--format", "{{.Name", "foo"]).fails_with("invalid go template");
    // Lima's functions and deprecated host fields work.
    let out = list(
        &lima,
        &[
            "--format",
            "{{missing \"none\" .Message}} {{.HostArch}} {{json .Name}}",
            "foo",
        ],
    )
    .ok()
    .stdout();
    assert_eq!(out, format!("none {} \"foo\"\n", std::env::consts::ARCH));
    let out = list(&lima, &["--format", "{{json .}}", "foo"])
        .ok()
        .stdout();
    assert_eq!(out, list(&lima, &["--json", "foo"]).ok().stdout());
}

#[test]
fn yq_and_filter_run_jq_expressions_over_each_instance() {
    let lima = three();
    assert_eq!(
        list(&lima, &["--yq", ".name"]).ok().stdout(),
        "bar\nbaz\nfoo\n"
    );
    assert_eq!(
        list(
            &lima,
            &["--yq", ".config", "--yq", ".user", "--yq", ".uid", "foo"]
        )
        .ok()
        .stdout(),
        "1000\n"
    );
    let r = list(&lima, &["--yq", ".config", "--format", "yaml", "baz"]).ok();
    assert!(
        r.stdout().lines().any(|l| l == "disk: 3GiB"),
        "{}",
        r.stdout()
    );
    assert!(
        list(&lima, &["--yq", ".config", "baz"])
            .ok()
            .stdout()
            .starts_with("{\""),
        "--yq means JSON"
    );
    // --filter keeps instances, in every format; several are ANDed.
    assert_eq!(
        list(&lima, &["-l", ".cpus > 1", "-q"]).ok().stdout(),
        "bar\nbaz\n"
    );
    let r = list(
        &lima,
        &["--filter", ".cpus > 1", "--filter", ".name == \"baz\""],
    )
    .ok();
    assert_eq!(r.stdout().lines().count(), 2, "{}", r.stdout());
    assert!(r.stdout().lines().nth(1).unwrap().starts_with("baz "));
    assert_eq!(
        list(&lima, &["-q", "--yq", "select(.name == \"foo\")"])
            .ok()
            .stdout(),
        "foo\n"
    );
    list(&lima, &["--yq", ".name |"]).fails_with(".name |");
}

#[test]
fn info_has_limas_keys_and_our_values() {
    let lima = Lima::new();
    let out = lima.limactl(&["info"]).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::Null => "null",
    };
    // Keys in the order printed (not the parsed map's).
    let keys: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("    \""))
        .filter_map(|l| l.split_once("\":"))
        .map(|(k, _)| format!("{k}: {}\n", kind(&v[k])))
        .collect();
    assert_golden("info-keys", &keys);
    assert_eq!(v["limaHome"], lima.home.path().to_str().unwrap());
    assert_eq!(v["hostArch"], std::env::consts::ARCH);
    assert!(v["templates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "default"));
    assert_eq!(
        v["defaultTemplate"]["images"][0]["location"],
        "builtin:default"
    );
    assert!(v["shellEnvBlock"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "SSH_*"));
    assert_eq!(
        lima.limactl(&["info", "--yq", ".limaHome"]).ok().stdout(),
        format!("{}\n", lima.home.path().display())
    );
    assert_eq!(
        lima.limactl(&["info", "--yq", ".vmTypes"]).ok().stdout(),
        "[\n    \"qemu\"\n]\n"
    );
}
