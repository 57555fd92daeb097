//! The GitHub Action (`action.yml` at the repository root), run the way a
//! runner runs a composite action: its `run:` steps in order, `${{ }}`
//! expressions filled from the inputs and the runner's contexts, `if:`
//! conditions honoured, `GITHUB_PATH`/`GITHUB_ENV`/`GITHUB_OUTPUT` files
//! read back after each step; `uses:` steps are only checked for their
//! inputs. Then a later step's script runs inside the instance through
//! `shell: lima bash -eo pipefail {0}`, `{0}` being the script's file as on
//! GitHub.
//!
//! The shape checks need no VM; the run boots the local Debian cloud image
//! (slow tier).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lima_tests::http::{Reply, Server};
use lima_tests::Lima;
use serde_yaml_ng::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn action() -> Value {
    let text = std::fs::read_to_string(repo_root().join("action.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("action.yml parses")
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The runner's expression contexts, flattened: `inputs.template`,
/// `github.workspace`, `steps.start.outputs.instance`, ...
#[derive(Default)]
struct Contexts(BTreeMap<String, String>);

impl Contexts {
    fn lookup(&self, path: &str) -> String {
        match self.0.get(path) {
            Some(v) => v.clone(),
            // The runner gives '' for a missing step output; anything else
            // here is a name this test (and maybe the runner) does not know.
            None if path.starts_with("steps.") => String::new(),
            None => panic!("expression names `{path}`, which is not defined"),
        }
    }

    /// One expression, in the forms action.yml uses: a context path, a
    /// quoted string, or `A == B` / `A != B` (GitHub compares strings
    /// case-insensitively).
    fn eval(&self, expr: &str) -> String {
        let expr = expr.trim();
        for (op, want) in [("==", true), ("!=", false)] {
            if let Some((a, b)) = expr.split_once(op) {
                let same = self.eval(a).eq_ignore_ascii_case(&self.eval(b));
                return (same == want).to_string();
            }
        }
        if let Some(lit) = expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
            return lit.replace("''", "'");
        }
        assert!(
            expr.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "an expression form this test does not evaluate: `{expr}`"
        );
        self.lookup(expr)
    }

    /// `text` with each `${{ expr }}` replaced by its value.
    fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${{") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find("}}").expect("`${{` without `}}`") + i;
            out.push_str(&self.eval(&rest[i + 3..end]));
            rest = &rest[end + 2..];
        }
        out + rest
    }

    /// An `if:`: with or without `${{ }}` around it, as the runner allows.
    fn condition(&self, cond: Option<&Value>) -> bool {
        let Some(c) = cond else { return true };
        let c = str_of(c);
        let c = c.trim();
        let inner = c
            .strip_prefix("${{")
            .and_then(|c| c.strip_suffix("}}"))
            .unwrap_or(c);
        match self.eval(inner).as_str() {
            "true" => true,
            "false" | "" => false,
            other => panic!("`if: {c}` gave `{other}`"),
        }
    }
}

/// The contexts for `with` (unknown inputs fail, as the runner warns and
/// ignores them), defaults filled from action.yml.
fn contexts(action: &Value, with: &[(&str, &str)], workspace: &Path) -> Contexts {
    let mut ctx = Contexts::default();
    let inputs = action["inputs"].as_mapping().expect("inputs");
    for (k, v) in inputs {
        ctx.0.insert(
            format!("inputs.{}", str_of(k)),
            v.get("default").map(str_of).unwrap_or_default(),
        );
    }
    for (k, v) in with {
        assert!(
            inputs.contains_key(*k),
            "`with: {k}` is not an input of action.yml"
        );
        ctx.0.insert(format!("inputs.{k}"), v.to_string());
    }
    for (k, v) in [
        ("github.workspace", workspace.display().to_string()),
        ("github.action_path", repo_root().display().to_string()),
        ("runner.os", "Linux".into()),
        ("runner.arch", "X64".into()),
    ] {
        ctx.0.insert(k.into(), v);
    }
    ctx
}

fn steps(action: &Value) -> &Vec<Value> {
    assert_eq!(action["runs"]["using"], "composite");
    action["runs"]["steps"].as_sequence().expect("steps")
}

/// Every `${{ inputs.X }}` anywhere in action.yml names an input.
fn input_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("inputs.") {
                let name: String = rest[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                out.push(name);
                rest = &rest[i + 7..];
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| input_references(v, out)),
        Value::Mapping(m) => m.values().for_each(|v| input_references(v, out)),
        _ => {}
    }
}

#[test]
fn action_yml_is_a_composite_action_whose_steps_use_only_its_inputs() {
    let action = action();
    let inputs = action["inputs"].as_mapping().unwrap();
    for (name, spec) in inputs {
        assert!(
            spec.get("description").is_some() && spec.get("default").is_some(),
            "input {name:?} needs a description and a default"
        );
    }
    assert_eq!(action["inputs"]["template"]["default"], "debian-12");
    let mut refs = Vec::new();
    input_references(&action, &mut refs);
    assert!(refs.contains(&"template".to_string()));
    for r in &refs {
        assert!(
            inputs.contains_key(r.as_str()),
            "inputs.{r} is not declared"
        );
    }

    let workspace = Path::new("/home/runner/work/p/p");
    let ctx = contexts(&action, &[("template", "fedora")], workspace);
    let mut cache_steps = 0;
    for step in steps(&action) {
        if let Some(uses) = step.get("uses") {
            // A `uses:` step: only its inputs are checked.
            let uses = str_of(uses);
            assert!(uses.starts_with("actions/cache@v"), "{uses}");
            let with = step["with"].as_mapping().unwrap();
            for k in with.keys() {
                let k = str_of(k);
                assert!(
                    [
                        "path",
                        "key",
                        "restore-keys",
                        "lookup-only",
                        "fail-on-cache-miss"
                    ]
                    .contains(&k.as_str()),
                    "actions/cache has no input `{k}`"
                );
            }
            assert_eq!(
                ctx.expand(&str_of(&with[&Value::from("path")])),
                "~/.cache/lima-rs"
            );
            let key = ctx.expand(&str_of(&with[&Value::from("key")]));
            let restore = ctx.expand(&str_of(&with[&Value::from("restore-keys")]));
            assert_eq!(key, "lima-rs-images-Linux-X64-fedora");
            assert!(key.starts_with(&restore), "{key} / {restore}");
            assert!(ctx.condition(step.get("if")));
            cache_steps += 1;
        } else {
            assert_eq!(step["shell"], "bash", "{step:?}");
            // Inputs reach scripts through `env:`: an input with shell
            // syntax in it must not become code.
            let run = str_of(&step["run"]);
            assert!(!run.contains("${{"), "an expression inside `run:`:\n{run}");
        }
    }
    assert_eq!(cache_steps, 1);

    // `install: false` and `cache: false` skip their steps.
    let names_run = |with: &[(&str, &str)]| -> Vec<String> {
        let ctx = contexts(&action, with, workspace);
        steps(&action)
            .iter()
            .filter(|s| ctx.condition(s.get("if")))
            .map(|s| str_of(&s["name"]))
            .collect()
    };
    let all = names_run(&[]);
    let fewer = names_run(&[("install", "false"), ("cache", "false")]);
    assert_eq!(all.len(), fewer.len() + 2, "{all:?} / {fewer:?}");
    assert!(all.iter().any(|n| n.contains("install")));
    assert!(!fewer
        .iter()
        .any(|n| n.contains("install") || n.contains("Cache")));
}

#[test]
fn the_expander_fills_expressions_as_the_runner_does() {
    let mut ctx = Contexts::default();
    ctx.0.insert("inputs.cache".into(), "TRUE".into());
    ctx.0.insert("inputs.t".into(), "debian-12".into());
    assert_eq!(
        ctx.expand("a-${{ inputs.t }}-${{inputs.t}}"),
        "a-debian-12-debian-12"
    );
    assert!(ctx.condition(Some(&Value::from("${{ inputs.cache == 'true' }}"))));
    assert!(ctx.condition(Some(&Value::from("inputs.t != 'fedora'"))));
    assert!(!ctx.condition(Some(&Value::from("inputs.t == 'fedora'"))));
    assert_eq!(ctx.expand("${{ steps.x.outputs.y }}"), "");
    let unknown = std::panic::catch_unwind(|| ctx.expand("${{ inputs.nope }}"));
    assert!(unknown.is_err());
}

/// The workflow in docs/github-actions.md: three distros, this action with
/// inputs it has, and steps in the VM.
#[test]
fn the_documented_workflow_runs_tests_on_three_distros() {
    let doc = std::fs::read_to_string(repo_root().join("docs/github-actions.md")).unwrap();
    let block = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block");
    let wf: Value = serde_yaml_ng::from_str(block).expect("the workflow parses");
    let job = &wf["jobs"]["test"];
    let distros = job["strategy"]["matrix"]["template"].as_sequence().unwrap();
    assert_eq!(distros.len(), 3, "{distros:?}");
    let steps = job["steps"].as_sequence().unwrap();
    let ours = steps
        .iter()
        .find(|s| {
            s.get("uses")
                .is_some_and(|u| str_of(u).contains("/lima-rs@"))
        })
        .expect("a step uses this action");
    let inputs = action()["inputs"].as_mapping().unwrap().clone();
    for k in ours["with"].as_mapping().unwrap().keys() {
        assert!(inputs.contains_key(k), "{k:?} is not an input");
    }
    assert_eq!(ours["with"]["template"], "${{ matrix.template }}");
    let in_vm = steps
        .iter()
        .filter(|s| {
            s.get("shell")
                .is_some_and(|sh| sh == "lima bash -eo pipefail {0}")
        })
        .count();
    assert!(in_vm >= 1);
}

/// A file the fixture's user may write (the runner's file commands).
fn user_file(lima: &Lima, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, "").unwrap();
    if let Some(u) = &lima.user {
        std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
    }
    p
}

/// `NAME=VALUE` lines of a file command (and `NAME<<EOF` blocks).
fn file_command(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some((k, delim)) = l.split_once("<<") {
            let v: Vec<&str> = lines.by_ref().take_while(|x| *x != delim).collect();
            out.push((k.to_string(), v.join("\n")));
        } else if let Some((k, v)) = l.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// What the runner keeps between steps.
struct Runner<'a> {
    lima: &'a Lima,
    workspace: PathBuf,
    temp: PathBuf,
    path: Vec<String>,
    env: BTreeMap<String, String>,
    steps: usize,
}

impl Runner<'_> {
    /// Runs `script` with the custom shell `shell` (`{0}` = the script's
    /// file), in `cwd`, with the step's `env`; reads the file commands
    /// back. Returns (exit code, stdout, stderr, outputs).
    fn run(
        &mut self,
        shell: &str,
        script: &str,
        cwd: &Path,
        step_env: &[(String, String)],
    ) -> (i32, String, String, Vec<(String, String)>) {
        self.steps += 1;
        let file = self.temp.join(format!("step-{}.sh", self.steps));
        std::fs::write(&file, script).unwrap();
        let files = self.lima.user_dir(&format!("file-commands-{}", self.steps));
        let gh_path = user_file(self.lima, &files, "path");
        let gh_env = user_file(self.lima, &files, "env");
        let gh_out = user_file(self.lima, &files, "output");
        let mut words = shell
            .split_whitespace()
            .map(|w| w.replace("{0}", &file.display().to_string()));
        let program = words.next().unwrap();
        // The runner looks the shell up on PATH, as the step sees it.
        let path = self
            .path
            .iter()
            .rev()
            .cloned()
            .chain(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(String::from))
            .collect::<Vec<_>>();
        let exe = path
            .iter()
            .map(|d| Path::new(d).join(&program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("`{program}` is not on PATH {path:?}"));
        let mut cmd = self.lima.command(&exe);
        cmd.args(words)
            .current_dir(cwd)
            .env("PATH", path.join(":"))
            .env("LIMA_HOME", self.lima.home.path())
            .env("XDG_CACHE_HOME", self.lima.cache.path())
            .env_remove("LIMA_INSTANCE")
            .env("GITHUB_WORKSPACE", &self.workspace)
            .env("GITHUB_ACTION_PATH", repo_root())
            .env("RUNNER_TEMP", &self.temp)
            .env("GITHUB_PATH", &gh_path)
            .env("GITHUB_ENV", &gh_env)
            .env("GITHUB_OUTPUT", &gh_out)
            .envs(&self.env)
            .envs(step_env.iter().cloned());
        let r = self.lima.run(&mut cmd, None);
        self.path.extend(
            std::fs::read_to_string(&gh_path)
                .unwrap()
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
        self.env.extend(file_command(&gh_env));
        (r.code(), r.stdout(), r.stderr(), file_command(&gh_out))
    }
}

#[test]
#[ignore = "slow: cargo xtask test --slow (the action boots a Debian cloud image, minutes under TCG)"]
fn the_action_starts_a_vm_that_later_steps_run_in() {
    let lima = Lima::as_ordinary_user();
    let image = lima.debian_cloud_image();
    let server = Server::start();
    let url = server.route("/debian-12.qcow2", Reply::File(image));
    let template = lima.home.path().join("debian-action.yaml");
    std::fs::write(
        &template,
        format!("images:\n- location: {url}\n  arch: x86_64\ncpus: 2\nmemory: 2GiB\ndisk: 8GiB\n"),
    )
    .unwrap();
    let workspace = lima.user_dir("workspace");
    let temp = lima.user_dir("runner-temp");
    let action = action();
    let mut ctx = contexts(
        &action,
        &[
            ("template", template.to_str().unwrap()),
            ("name", "ci"),
            ("install", "false"),
            ("timeout", "10m"),
        ],
        &workspace,
    );
    let mut runner = Runner {
        lima: &lima,
        workspace: workspace.clone(),
        temp: temp.clone(),
        // `install: false`: the built binaries are already on PATH.
        path: vec![lima.bin_dir.display().to_string()],
        env: BTreeMap::new(),
        steps: 0,
    };
    let mut ran = Vec::new();
    let mut start_stderr = String::new();
    for step in steps(&action) {
        let name = str_of(&step["name"]);
        if !ctx.condition(step.get("if")) {
            continue;
        }
        if step.get("uses").is_some() {
            for v in step["with"].as_mapping().unwrap().values() {
                ctx.expand(&str_of(v));
            }
            continue;
        }
        let step_env: Vec<(String, String)> = step
            .get("env")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .map(|(k, v)| (str_of(k), ctx.expand(&str_of(v))))
            .collect();
        let cwd = step
            .get("working-directory")
            .map(|d| PathBuf::from(ctx.expand(&str_of(d))))
            .unwrap_or_else(|| workspace.clone());
        let (code, stdout, stderr, outputs) = runner.run(
            "bash --noprofile --norc -eo pipefail {0}",
            &ctx.expand(&str_of(&step["run"])),
            &cwd,
            &step_env,
        );
        assert_eq!(
            code, 0,
            "step `{name}` failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        if let Some(id) = step.get("id") {
            for (k, v) in outputs {
                ctx.0.insert(format!("steps.{}.outputs.{k}", str_of(id)), v);
            }
        }
        if name.starts_with("Start") {
            start_stderr = stderr;
        }
        ran.push(name);
    }
    assert!(!ran.iter().any(|n| n.contains("install")), "{ran:?}");
    assert!(ran.iter().any(|n| n.starts_with("Start")), "{ran:?}");
    assert_eq!(
        runner.env.get("LIMA_INSTANCE").map(String::as_str),
        Some("ci")
    );
    assert_eq!(
        ctx.expand(&str_of(&action["outputs"]["instance"]["value"])),
        "ci"
    );
    // `limactl start` showed its phases, each an info log line.
    for phase in [
        " level=info msg=\"disk: from ",
        " level=info msg=\"booting: ",
        " level=info msg=\"running: guest agent ready",
    ] {
        assert!(
            start_stderr.contains(phase),
            "no {phase:?} in\n{start_stderr}"
        );
    }
    assert_eq!(server.hits("/debian-12.qcow2"), 1);

    // A later step, `shell: lima bash -eo pipefail {0}`: it runs in the
    // guest, in the workspace, and what it writes there is on the host.
    let shell = "lima bash -eo pipefail {0}";
    let script = format!(
        "test \"$PWD\" = {}\n. /etc/os-release\necho \"$ID $(id -un)\" > from-guest\necho in-the-vm\n",
        workspace.display()
    );
    let (code, stdout, stderr, _) = runner.run(shell, &script, &workspace, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "in-the-vm\n");
    let user = match &lima.user {
        Some(u) => u.name.clone(),
        None => std::env::var("USER").unwrap(),
    };
    assert_eq!(
        std::fs::read_to_string(workspace.join("from-guest")).unwrap(),
        format!("debian {user}\n")
    );
    // pipefail: a failing command inside a pipe fails the step.
    let (code, _, _, _) = runner.run(shell, "false | true\ntouch not-reached\n", &workspace, &[]);
    assert_ne!(code, 0);
    assert!(!workspace.join("not-reached").exists());

    // `limactl show-ssh`: the cmd form is a working ssh command line, the
    // config form has the instance's port.
    let (code, stdout, stderr, _) = runner.run(
        "bash --noprofile --norc -eo pipefail {0}",
        // The action waited for cloud-init, so sshd is up.
        "eval \"$(limactl show-ssh ci) id -un\"\nlimactl show-ssh --format config ci\n",
        &workspace,
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let port = lima.info("ci")["sshLocalPort"].as_u64().unwrap();
    assert!(
        stdout.starts_with(&format!("{user}\nHost lima-ci\n")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("\n  Port {port}\n")), "{stdout}");
}
