//! limactl's messages in Lima's log form, and its usage errors in cobra's
//! words with Lima's exit code 1; none needs a VM.
use lima_tests::{golden, Lima, Run};

/// stderr with each log line's time replaced by `TIME`, after checking
/// it is RFC 3339 to the second (`2026-12-06T07:10:00Z` or `…+09:00`).
fn normalised(stderr: &str) -> String {
    let mut out = String::new();
    for line in stderr.lines() {
        let (before, after) = if let Some(rest) = line.strip_prefix("time=\"") {
            ("time=\"", rest)
        } else if let Some(at) = line.find("\"time\":\"") {
            (
                &line[..at + "\"time\":\"".len()],
                &line[at + "\"time\":\"".len()..],
            )
        } else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let end = after.find('"').expect("time ends");
        let time = &after[..end];
        let b = time.as_bytes();
        assert!(
            (time.len() == 20 && time.ends_with('Z') || time.len() == 25)
                && b[4] == b'-'
                && b[10] == b'T'
                && b[13] == b':',
            "not RFC 3339: {time:?} in {line}"
        );
        out.push_str(before);
        out.push_str("TIME");
        out.push_str(&after[end..]);
        out.push('\n');
    }
    out
}

fn validate_good_file(lima: &Lima, global: &[&str]) -> Run {
    std::fs::write(
        lima.home.path().join("good.yaml"),
        "images: [{location: builtin:default}]\n",
    )
    .unwrap();
    let mut cmd = lima.cmd("limactl");
    cmd.current_dir(lima.home.path())
        .args(global)
        .args(["validate", "good.yaml"]);
    lima.run(&mut cmd, None).ok()
}

#[test]
fn a_message_in_text_and_json_form() {
    let lima = Lima::new();
    let r = validate_good_file(&lima, &[]);
    golden::assert_golden("log-text.txt", &normalised(&r.stderr()));
    let r = validate_good_file(&lima, &["--log-format", "json"]);
    golden::assert_golden("log-json.txt", &normalised(&r.stderr()));
    // Every JSON line parses, with Lima's three keys.
    for line in r.stderr().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["time"].is_string(),
            "{line}"
        );
    }
    // --log-level hides what is below it; the exit code stays.
    let r = validate_good_file(&lima, &["--log-level", "warn"]);
    assert_eq!(r.stderr(), "");
}

/// One `level=fatal` line (time normalised) and exit 1.
#[track_caller]
fn fatal(r: &Run, msg: &str) {
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(
        normalised(&r.stderr()),
        format!("time=\"TIME\" level=fatal msg={msg}\n"),
        "stdout: {}",
        r.stdout()
    );
}

#[test]
fn usage_errors_in_cobras_words_exit_1() {
    let lima = Lima::new();
    fatal(&lima.limactl(&["stop", "--foo"]), "\"unknown flag: --foo\"");
    fatal(
        &lima.limactl(&["--foo=bar", "list"]),
        "\"unknown flag: --foo\"",
    );
    fatal(
        &lima.limactl(&["delete", "-fx", "a"]),
        "\"unknown shorthand flag: 'x' in -fx\"",
    );
    // Our old verbose flag is gone: `-v` is the version, on the root only.
    fatal(
        &lima.limactl(&["list", "-v"]),
        "\"unknown shorthand flag: 'v' in -v\"",
    );

    // Argument counts as cobra's validators put them, wrapped as Lima's
    // WrapArgsError does (one log line: the newlines are quoted).
    let r = lima.limactl(&["delete"]);
    assert_eq!(r.code(), 1);
    let line = normalised(&r.stderr());
    assert!(
        line.starts_with(
            "time=\"TIME\" level=fatal msg=\"\\\"limactl delete\\\" requires at least 1 arg(s), only received 0.\\nSee 'limactl delete --help'.\\n\\nUsage:  limactl delete "
        ) && line.lines().count() == 1,
        "{line}"
    );
    let r = lima.limactl(&["start", "a", "b"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.messages()
            .starts_with("\"limactl start\" accepts at most 1 arg(s), received 2.\n"),
        "{}",
        r.stderr()
    );
    let r = lima.limactl(&["validate"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.messages()
            .starts_with("\"limactl validate\" requires at least 1 arg(s), only received 0.\n"),
        "{}",
        r.stderr()
    );

    // An unknown command (after looking for a plugin).
    let r = lima.limactl(&["nosuchcommand"]);
    assert_eq!(r.code(), 1);
    assert_eq!(lima_tests::log_level(r.stderr().trim()), Some("fatal"));
    assert!(
        r.messages()
            .starts_with("unknown command \"nosuchcommand\" for \"limactl\""),
        "{}",
        r.stderr()
    );

    // Bad values of the log flags.
    fatal(
        &lima.limactl(&["--log-level", "loud", "list"]),
        "\"not a valid logrus Level: \\\"loud\\\" (--log-level takes trace, debug, info, warn, error, fatal or panic)\"",
    );
    fatal(
        &lima.limactl(&["list", "--log-format=xml"]),
        "\"unsupported log-format: \\\"xml\\\" (--log-format takes text or json)\"",
    );
}

#[test]
fn unknown_instances_are_one_error_and_exit_1() {
    let lima = Lima::new();
    for args in [&["stop", "nosuch"][..], &["shell", "nosuch", "true"]] {
        let r = lima.limactl(args).fails_with("nosuch");
        assert_eq!(r.code(), 1, "{args:?}");
        let line = r.stderr();
        let level = lima_tests::log_level(line.trim());
        assert!(matches!(level, Some("error" | "fatal")), "{args:?}: {line}");
        assert!(r.messages().contains("does not exist"), "{args:?}: {line}");
    }
    // JSON form: the same error, one object.
    let r = lima.limactl(&["--log-format", "json", "shell", "nosuch", "true"]);
    assert_eq!(r.code(), 1);
    let v: serde_json::Value = serde_json::from_str(r.stderr().trim()).expect("one JSON line");
    assert_eq!(v["level"], "fatal");
    assert!(v["msg"].as_str().unwrap().contains("nosuch"), "{v}");
}

#[test]
fn version_and_help_print_on_stdout_and_exit_0() {
    let lima = Lima::new();
    for flag in ["--version", "-v"] {
        let r = lima.limactl(&[flag]).ok();
        assert_eq!(
            r.stdout(),
            format!("limactl version {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(r.stderr(), "");
    }
    let r = lima.limactl(&["--help"]).ok();
    assert!(
        r.stdout().contains("--log-format") && r.stdout().contains("--debug"),
        "{}",
        r.stdout()
    );
    // Nothing to run: the help, as cobra prints it.
    let r = lima.limactl(&[]).ok();
    assert!(r.stdout().contains("Usage: limactl"), "{}", r.stdout());
}

#[test]
fn tty_and_yes_together_are_refused_as_in_lima() {
    let lima = Lima::new();
    let r = lima
        .limactl(&["--tty=false", "-y", "list"])
        .fails_with("cannot use both --tty and --yes flags at the same time");
    assert_eq!(r.code(), 1);
    lima.limactl(&["-y", "list"]).ok();
    lima.limactl(&["--tty=false", "list"]).ok();
}
