//! `provision:` and `probes:`: run by the host agent through the guest
//! agent's exec once the agent answers and the guest user exists, the same
//! way on our own images and on distro images.
//!
//! ```text
//! Running? ─ no ─ bring_up ─▶ boot ─▶ data ─▶ dependency ─▶ system ─▶ user ─▶ probes ─▶ Running
//!                               (root)  (root)  (root)        (root)   (guest   (guest user,
//!                                                                      user)    retried)
//! ```
//!
//! Every start runs every step again (Lima runs them on every boot), in
//! Lima's order of modes and, within a mode, in the order of `lima.yaml`.
//! A step that fails fails the start: the error names it (`provision[N]`,
//! its mode) and shows its last output lines. Probes are retried until
//! they pass or the start's deadline; one that never passes fails the
//! start with its `hint:`.
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lima_proto::{ExecRequest, ExitStatus};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::config::{ConfigError, LimaYaml};
use crate::vsock::Transport;

/// Output lines a failure shows.
pub const TAIL_LINES: usize = 20;
/// How long probes are retried when the start gives no deadline (Lima's
/// own: 60 tries 10 s apart).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two tries of a probe.
const PROBE_PAUSE: Duration = Duration::from_secs(2);

/// Lima's modes, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Boot,
    Data,
    Dependency,
    System,
    User,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Boot => "boot",
            Mode::Data => "data",
            Mode::Dependency => "dependency",
            Mode::System => "system",
            Mode::User => "user",
        }
    }
}

/// A `data` step: a file written as root.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    pub path: String,
    pub content: String,
    pub owner: String,
    pub permissions: String,
    pub overwrite: bool,
}

/// One `provision:` entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its index in `provision:`.
    pub index: usize,
    pub mode: Mode,
    /// The script (every mode but data).
    pub script: String,
    pub data: Option<DataFile>,
}

impl Step {
    pub fn label(&self) -> String {
        format!("provision[{}] (mode: {})", self.index, self.mode.name())
    }
}

/// One `probes:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub index: usize,
    pub description: Option<String>,
    pub script: String,
    pub hint: Option<String>,
}

impl Probe {
    pub fn label(&self) -> String {
        match &self.description {
            Some(d) => format!("probes[{}] ({d})", self.index),
            None => format!("probes[{}]", self.index),
        }
    }
}

/// What a start runs after the agent answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provisioning {
    /// In the order they run.
    pub steps: Vec<Step>,
    pub probes: Vec<Probe>,
    /// `env:` and `PARAM_*` for every step and probe.
    pub env: Vec<(String, String)>,
    /// `env:` alone, for the guest's `/etc/environment` (services and SSH
    /// logins read it).
    pub etc_environment: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProvisionYaml {
    mode: Option<String>,
    script: Option<String>,
    file: Option<FileYaml>,
    path: Option<String>,
    content: Option<String>,
    owner: Option<String>,
    permissions: Option<Value>,
    overwrite: Option<bool>,
    /// Lima's own package installs are what this skips; lima-rs has none.
    #[allow(dead_code, reason = "accepted for Lima templates; nothing to skip")]
    skip_default_dependency_resolution: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProbeYaml {
    mode: Option<String>,
    description: Option<String>,
    script: Option<String>,
    file: Option<FileYaml>,
    hint: Option<String>,
}

/// `file:`: a path, or Lima 2's `{location, digest}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileYaml {
    Path(String),
    Located {
        location: String,
        digest: Option<String>,
    },
}

impl Provisioning {
    /// Checks `provision:` and `probes:` of an expanded `lima.yaml`
    /// (`tmplvars.rs`), reading `file:` scripts.
    pub fn from_yaml(
        yaml: &LimaYaml,
        params: Vec<(String, String)>,
        origin: &str,
    ) -> Result<Self, ConfigError> {
        let invalid = |field: String, msg: String| ConfigError::Invalid {
            path: origin.to_string(),
            field,
            msg,
        };
        let mut steps = Vec::new();
        for (index, v) in list(&yaml.provision, "provision", origin)?
            .iter()
            .enumerate()
        {
            let field = |f: &str| format!("provision[{index}]{f}");
            let p: ProvisionYaml = serde_yaml_ng::from_value(v.clone())
                .map_err(|e| invalid(field(""), e.to_string()))?;
            let mode = match p.mode.as_deref() {
                None | Some("system") => Mode::System,
                Some("user") => Mode::User,
                Some("boot") => Mode::Boot,
                Some("dependency") => Mode::Dependency,
                Some("data") => Mode::Data,
                Some("ansible") => {
                    return Err(invalid(
                        field(".mode"),
                        "`ansible` runs on the host in Lima; lima-rs does not run it: use a system script".into(),
                    ))
                }
                Some(other) => {
                    return Err(invalid(
                        field(".mode"),
                        format!("`{other}` is not one of system, user, boot, dependency, data"),
                    ))
                }
            };
            if mode == Mode::Data {
                let path = p.path.filter(|s| s.starts_with('/')).ok_or_else(|| {
                    invalid(
                        field(".path"),
                        "a data file needs an absolute `path`".into(),
                    )
                })?;
                let content = match (p.content, &p.file) {
                    (Some(c), None) => c,
                    (None, Some(f)) => {
                        read_file(f, origin).map_err(|m| invalid(field(".file"), m))?
                    }
                    (None, None) => String::new(),
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            field(""),
                            "give `content` or `file`, not both".into(),
                        ))
                    }
                };
                let permissions = match p.permissions {
                    None => "644".to_string(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s,
                    Some(_) => {
                        return Err(invalid(
                            field(".permissions"),
                            "must be octal, e.g. 644".into(),
                        ))
                    }
                };
                if permissions.is_empty()
                    || permissions.len() > 4
                    || !permissions.chars().all(|c| ('0'..='7').contains(&c))
                {
                    return Err(invalid(
                        field(".permissions"),
                        format!("`{permissions}` is not octal permissions like 644"),
                    ));
                }
                let owner = p.owner.unwrap_or_else(|| "root:root".into());
                if owner.is_empty() || owner.contains(char::is_whitespace) {
                    return Err(invalid(
                        field(".owner"),
                        format!("`{owner}` is not USER[:GROUP]"),
                    ));
                }
                steps.push(Step {
                    index,
                    mode,
                    script: String::new(),
                    data: Some(DataFile {
                        path,
                        content,
                        owner,
                        permissions,
                        overwrite: p.overwrite.unwrap_or(true),
                    }),
                });
                continue;
            }
            let script =
                script(p.script, p.file.as_ref(), origin).map_err(|m| invalid(field(""), m))?;
            steps.push(Step {
                index,
                mode,
                script,
                data: None,
            });
        }
        // Stable: the file's order within each mode.
        steps.sort_by_key(|s| s.mode);
        let mut probes = Vec::new();
        for (index, v) in list(&yaml.probes, "probes", origin)?.iter().enumerate() {
            let field = |f: &str| format!("probes[{index}]{f}");
            let p: ProbeYaml = serde_yaml_ng::from_value(v.clone())
                .map_err(|e| invalid(field(""), e.to_string()))?;
            if let Some(m) = p.mode.as_deref().filter(|m| *m != "readiness") {
                return Err(invalid(
                    field(".mode"),
                    format!("`{m}` is not a probe mode; use readiness"),
                ));
            }
            let script =
                script(p.script, p.file.as_ref(), origin).map_err(|m| invalid(field(""), m))?;
            probes.push(Probe {
                index,
                description: p.description,
                script,
                hint: p.hint,
            });
        }
        let mut env: Vec<(String, String)> = yaml
            .env
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &env {
            let name = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !name {
                return Err(invalid(
                    format!("env.{k}"),
                    "a variable name is letters, digits and `_`, not starting with a digit".into(),
                ));
            }
            if v.contains(['\n', '\r', '\0']) {
                return Err(invalid(
                    format!("env.{k}"),
                    "the value must be one line".into(),
                ));
            }
        }
        let etc_environment = env.clone();
        env.extend(params);
        Ok(Provisioning {
            steps,
            probes,
            env,
            etc_environment,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.probes.is_empty() && self.etc_environment.is_empty()
    }
}

fn list<'a>(v: &'a Option<Value>, name: &str, origin: &str) -> Result<&'a [Value], ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Sequence(s)) => Ok(s),
        Some(_) => Err(ConfigError::Invalid {
            path: origin.to_string(),
            field: name.to_string(),
            msg: "must be a list".into(),
        }),
    }
}

fn script(inline: Option<String>, file: Option<&FileYaml>, origin: &str) -> Result<String, String> {
    match (inline, file) {
        (Some(s), None) if !s.trim().is_empty() => Ok(s),
        (None, Some(f)) => read_file(f, origin),
        (Some(_), Some(_)) => Err("give `script` or `file`, not both".into()),
        _ => Err("needs a `script` (or a `file`)".into()),
    }
}

/// A `file:`: an `http(s)` URL (fetched, its `digest` checked when
/// given), or a host path: absolute, `~/...`, `file://`, or relative to
/// the folder of `lima.yaml`.
fn read_file(f: &FileYaml, origin: &str) -> Result<String, String> {
    let (loc, digest) = match f {
        FileYaml::Path(p) => (p.as_str(), None),
        FileYaml::Located { location, digest } => (location.as_str(), digest.as_deref()),
    };
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return fetch_script(loc, digest);
    }
    let p = loc.strip_prefix("file://").unwrap_or(loc);
    let path = if let Some(rest) = p.strip_prefix("~/") {
        Path::new(&std::env::var("HOME").unwrap_or_default()).join(rest)
    } else if Path::new(p).is_absolute() {
        Path::new(p).to_path_buf()
    } else {
        Path::new(origin).parent().unwrap_or(Path::new(".")).join(p)
    };
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Largest script we fetch.
const SCRIPT_LIMIT: u64 = 4 << 20;

/// Fetches a script from `url`, checking `digest` (`sha256:HEX` or
/// `sha512:HEX`) when given.
fn fetch_script(url: &str, digest: Option<&str>) -> Result<String, String> {
    use sha2::Digest;
    let expected = digest
        .map(|d| crate::download::Expected::parse(url, d))
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut resp = crate::download::get(url).map_err(|why| format!("cannot fetch {url}: {why}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(SCRIPT_LIMIT)
        .read_to_vec()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if let Some(e) = expected {
        let got = match e.algo_name() {
            "sha256" => hex::encode(sha2::Sha256::digest(&body)),
            _ => hex::encode(sha2::Sha512::digest(&body)),
        };
        if got != e.hex() {
            return Err(format!(
                "{url}: digest mismatch: expected {}:{}, got {}:{got}",
                e.algo_name(),
                e.hex(),
                e.algo_name()
            ));
        }
    }
    String::from_utf8(body).map_err(|_| format!("{url} is not a text script (not UTF-8)"))
}

/// A progress report, for `ha.events.jsonl`.
pub enum Progress<'a> {
    Started(&'a str),
    Done(&'a str, Duration),
}

/// Output of a step: the whole of it for the log, the last lines for errors.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

/// Keeps at most this much output per step.
const OUTPUT_LIMIT: usize = 256 << 10;

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut v = lima_proto::sync::lock(&self.0);
        v.extend_from_slice(buf);
        if v.len() > OUTPUT_LIMIT {
            let cut = v.len() - OUTPUT_LIMIT;
            v.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&lima_proto::sync::lock(&self.0)).into_owned()
    }
}

/// The last `n` lines of `text`, indented, for an error message.
pub fn tail(text: &str, n: usize) -> String {
    let mut last: VecDeque<&str> = VecDeque::with_capacity(n);
    for line in text.lines() {
        if last.len() == n {
            last.pop_front();
        }
        last.push_back(line);
    }
    last.iter()
        .map(|l| format!("\n  | {l}"))
        .collect::<String>()
}

/// Why `label` failed, with its last output lines.
pub fn failure(label: &str, status: &str, output: &str) -> String {
    let lines = tail(output, TAIL_LINES);
    if lines.is_empty() {
        format!("{label} failed ({status}) and printed nothing")
    } else {
        format!("{label} failed ({status}); its last output:{lines}")
    }
}

fn status_text(s: ExitStatus) -> String {
    match s {
        ExitStatus::Code(c) => format!("exit code {c}"),
        ExitStatus::Signal(n) => format!("killed by signal {n}"),
    }
}

/// The shell around a script: written to a private file, run by its `#!`
/// line or by `/bin/sh`, and removed after.
const RUNNER: &str = r#"d=$(mktemp -d) || exit 1
cat > "$d/script" || exit 1
chmod 700 "$d/script"
IFS= read -r first < "$d/script"
case $first in
'#!'*) "$d/script" ;;
*) /bin/sh "$d/script" ;;
esac
rc=$?
rm -rf "$d"
exit $rc
"#;

/// Writes a data file as root: `overwrite: false` keeps one that exists.
const DATA_WRITER: &str = r#"p=$1 owner=$2 mode=$3 overwrite=$4
if [ "$overwrite" = false ] && [ -e "$p" ]; then echo "$p exists; kept (overwrite: false)"; exit 0; fi
mkdir -p "$(dirname "$p")" || exit 1
t="$p.lima-new.$$"
cat > "$t" && chown "$owner" "$t" && chmod "$mode" "$t" && mv -f "$t" "$p" || { rm -f "$t"; exit 1; }
"#;

/// Replaces our block of `/etc/environment` with its stdin.
const ENV_WRITER: &str = r#"f=/etc/environment t=/etc/environment.lima-new.$$
{ if [ -e "$f" ]; then sed '/^#LIMA-START$/,/^#LIMA-END$/d' "$f"; fi; cat; } > "$t" && chmod 644 "$t" && mv -f "$t" "$f" || { rm -f "$t"; exit 1; }
"#;

/// Our block of `/etc/environment` (pam_env's format: a value with
/// spaces or quotes in double quotes).
pub fn etc_environment_block(env: &[(String, String)]) -> String {
    let mut out = String::from("#LIMA-START\n");
    for (k, v) in env {
        if v.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '#')
        {
            out.push_str(&format!("{k}=\"{}\"\n", v.replace('"', "")));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out.push_str("#LIMA-END\n");
    out
}

/// The request and input that run `step`.
pub fn request(step: &Step, user: &str, env: &[(String, String)]) -> (ExecRequest, Vec<u8>) {
    let as_user = step.mode == Mode::User;
    let (argv, stdin) = match &step.data {
        Some(d) => (
            vec![
                "/bin/sh".into(),
                "-c".into(),
                DATA_WRITER.into(),
                "lima-data".into(),
                d.path.clone(),
                d.owner.clone(),
                d.permissions.clone(),
                d.overwrite.to_string(),
            ],
            d.content.clone().into_bytes(),
        ),
        None => (
            vec![
                "/bin/sh".into(),
                "-c".into(),
                RUNNER.into(),
                "lima-provision".into(),
            ],
            step.script.clone().into_bytes(),
        ),
    };
    let req = ExecRequest {
        argv,
        env: env.to_vec(),
        cwd: if as_user { None } else { Some("/".into()) },
        cwd_fallback: true,
        user: as_user.then(|| user.to_string()),
        login: as_user,
        pty: None,
    };
    (req, stdin)
}

async fn run_one(
    transport: &dyn Transport,
    req: &ExecRequest,
    stdin: Vec<u8>,
) -> Result<(ExitStatus, String), String> {
    let out = Output::default();
    let session = crate::exec::start(transport, req)
        .await
        .map_err(|e| e.to_string())?;
    let (mut o, mut e) = (out.clone(), out.clone());
    let status = session
        .finish(crate::exec::Io {
            stdin: Box::new(std::io::Cursor::new(stdin)),
            stdout: &mut o,
            stderr: &mut e,
            events: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, out.text()))
}

/// Waits for a distro guest's cloud-init to finish (`cloud-init status
/// --wait`, as root), as a step of its own: provisioning follows it, as in
/// Lima, where provision scripts run from cloud-init's own stages and may
/// need what cloud-init set up (packages, users, the network). Exit 2
/// (finished with recoverable errors, newer cloud-init) counts as done.
pub async fn wait_for_cloud_init(
    transport: &dyn Transport,
    report: &(dyn Fn(Progress<'_>) + Send + Sync),
) -> Result<(), String> {
    let label = "cloud-init";
    report(Progress::Started(label));
    let t = Instant::now();
    let req = crate::exec::as_root(vec!["cloud-init".into(), "status".into(), "--wait".into()]);
    let (status, output) = run_one(transport, &req, Vec::new())
        .await
        .map_err(|e| format!("{label} could not be asked: {e}"))?;
    log_output(label, &output);
    if !matches!(status, ExitStatus::Code(0) | ExitStatus::Code(2)) {
        return Err(failure(label, &status_text(status), &output));
    }
    report(Progress::Done(label, t.elapsed()));
    Ok(())
}

/// Runs every step, then waits for every probe (until `deadline`).
/// The error is the whole message for the user.
pub async fn run(
    p: &Provisioning,
    transport: &dyn Transport,
    user: &str,
    deadline: Option<Instant>,
    report: &(dyn Fn(Progress<'_>) + Send + Sync),
) -> Result<(), String> {
    if !p.etc_environment.is_empty() {
        let req = crate::exec::as_root(vec!["/bin/sh".into(), "-c".into(), ENV_WRITER.into()]);
        let input = etc_environment_block(&p.etc_environment).into_bytes();
        match run_one(transport, &req, input).await {
            Ok((ExitStatus::Code(0), _)) => {}
            Ok((s, out)) => tracing::warn!(
                "env: could not write /etc/environment ({}): {}",
                status_text(s),
                out.trim()
            ),
            Err(e) => tracing::warn!("env: could not write /etc/environment: {e}"),
        }
    }
    for step in &p.steps {
        let label = step.label();
        report(Progress::Started(&label));
        let t = Instant::now();
        let (req, stdin) = request(step, user, &p.env);
        let (status, output) = run_one(transport, &req, stdin)
            .await
            .map_err(|e| format!("{label} could not run: {e}"))?;
        log_output(&label, &output);
        if status != ExitStatus::Code(0) {
            return Err(failure(&label, &status_text(status), &output));
        }
        report(Progress::Done(&label, t.elapsed()));
    }
    let deadline = deadline.unwrap_or_else(|| Instant::now() + PROBE_TIMEOUT);
    for probe in &p.probes {
        let label = probe.label();
        report(Progress::Started(&label));
        let t = Instant::now();
        let step = Step {
            index: probe.index,
            mode: Mode::User,
            script: probe.script.clone(),
            data: None,
        };
        let (req, stdin) = request(&step, user, &p.env);
        loop {
            let (status, output) = match run_one(transport, &req, stdin.clone()).await {
                Ok(r) => r,
                Err(e) => (ExitStatus::Code(-1), e),
            };
            if status == ExitStatus::Code(0) {
                break;
            }
            if Instant::now() + PROBE_PAUSE >= deadline {
                log_output(&label, &output);
                let mut msg = failure(
                    &label,
                    &format!("still {} after {:.0?}", status_text(status), t.elapsed()),
                    &output,
                );
                if let Some(h) = &probe.hint {
                    msg.push_str(&format!("\nhint: {}", h.trim_end()));
                }
                return Err(msg);
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        report(Progress::Done(&label, t.elapsed()));
    }
    Ok(())
}

fn log_output(label: &str, output: &str) {
    for line in output.lines() {
        tracing::info!("{label}: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Provisioning, ConfigError> {
        let y =
            LimaYaml::parse(&format!("images: [{{location: x}}]\n{text}"), "/d/t.yaml").unwrap();
        Provisioning::from_yaml(&y, vec![("PARAM_A".into(), "1".into())], "/d/t.yaml")
    }

    #[test]
    fn steps_run_in_limas_order_of_modes_then_file_order() {
        let p = parse(
            "env: {E: x}\nprovision:\n- {mode: user, script: u0}\n- {script: s1}\n- {mode: boot, script: b2}\n- {mode: data, path: /etc/d, content: c}\n- {mode: system, script: s4}\n- {mode: dependency, script: d5, skipDefaultDependencyResolution: true}\n- {mode: boot, script: b6}\n",
        )
        .unwrap();
        let order: Vec<(usize, &str)> = p.steps.iter().map(|s| (s.index, s.mode.name())).collect();
        assert_eq!(
            order,
            vec![
                (2, "boot"),
                (6, "boot"),
                (3, "data"),
                (5, "dependency"),
                (1, "system"),
                (4, "system"),
                (0, "user")
            ]
        );
        let d = p.steps[2].data.as_ref().unwrap();
        assert_eq!(
            (d.owner.as_str(), d.permissions.as_str(), d.overwrite),
            ("root:root", "644", true)
        );
        assert_eq!(
            p.env,
            vec![("E".into(), "x".into()), ("PARAM_A".into(), "1".into())]
        );
    }

    #[test]
    fn requests_run_system_as_root_and_user_as_the_user() {
        let p = parse("provision:\n- {mode: user, script: 'echo u'}\n- {mode: system, script: 'echo s'}\n- {mode: data, path: /x, content: hi, owner: 'a:b', permissions: 600, overwrite: false}\n").unwrap();
        let (r, input) = request(&p.steps[2], "ada", &p.env);
        assert_eq!(r.user.as_deref(), Some("ada"));
        assert!(r.login);
        assert_eq!(input, b"echo u");
        let (r, _) = request(&p.steps[1], "ada", &p.env);
        assert_eq!(r.user, None);
        assert!(!r.login);
        assert_eq!(r.env, vec![("PARAM_A".to_string(), "1".to_string())]);
        let (r, input) = request(&p.steps[0], "ada", &p.env);
        assert_eq!(r.user, None);
        assert_eq!(&r.argv[4..], ["/x", "a:b", "600", "false"]);
        assert_eq!(input, b"hi");
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            (
                "provision:\n- {mode: sytem, script: x}",
                "provision[0].mode: `sytem` is not one of",
            ),
            (
                "provision:\n- {mode: system}",
                "provision[0]: needs a `script`",
            ),
            (
                "provision:\n- {mode: data, path: rel, content: x}",
                "provision[0].path: a data file needs an absolute",
            ),
            (
                "provision:\n- {mode: data, path: /x, permissions: 999}",
                "`999` is not octal",
            ),
            (
                "provision:\n- {script: x, scirpt: y}",
                "unknown field `scirpt`",
            ),
            (
                "provision:\n- {file: /no/such/file}",
                "cannot read /no/such/file",
            ),
            ("probes:\n- {mode: liveness, script: x}", "probes[0].mode"),
            ("probes: {script: x}", "probes: must be a list"),
            ("env: {'A-B': x}", "env.A-B: a variable name"),
            ("env: {A: \"x\\ny\"}", "env.A: the value must be one line"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("/d/t.yaml: "), "{e}");
        }
    }

    #[test]
    fn file_scripts_are_read_relative_to_the_yaml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.sh"), "echo from file\n").unwrap();
        let origin = dir.path().join("lima.yaml").display().to_string();
        let y = LimaYaml::parse(
            "images: [{location: x}]\nprovision:\n- {mode: system, file: s.sh}\n- {mode: user, file: {location: s.sh}}\n",
            &origin,
        )
        .unwrap();
        let p = Provisioning::from_yaml(&y, vec![], &origin).unwrap();
        assert_eq!(p.steps[0].script, "echo from file\n");
        assert_eq!(p.steps[1].script, "echo from file\n");
    }

    #[test]
    fn etc_environment_gets_a_marked_block() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two words".to_string()),
        ];
        assert_eq!(
            etc_environment_block(&env),
            "#LIMA-START\nA=1\nB=\"two words\"\n#LIMA-END\n"
        );
    }

    /// Serves `body` once per connection on 127.0.0.1; returns the URL.
    fn serve(body: &'static str) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/s.sh", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut c = c;
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        url
    }

    #[test]
    fn url_scripts_are_fetched_and_their_digest_checked() {
        use sha2::Digest;
        let url = serve("echo fetched\n");
        let good = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"echo fetched\n"))
        );
        let p = parse(&format!(
            "provision:\n- {{mode: system, file: '{url}'}}\n- {{mode: user, file: {{location: '{url}', digest: '{good}'}}}}\n"
        ))
        .unwrap();
        assert_eq!(p.steps[0].script, "echo fetched\n");
        assert_eq!(p.steps[1].script, "echo fetched\n");
        let bad = format!("sha256:{}", "0".repeat(64));
        let e = parse(&format!(
            "probes:\n- file: {{location: '{url}', digest: '{bad}'}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("probes[0]: ") && e.contains("digest mismatch"),
            "{e}"
        );
    }

    #[test]
    fn failures_show_the_last_lines() {
        let out: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let m = failure("provision[1] (mode: system)", "exit code 3", &out);
        assert!(
            m.starts_with(
                "provision[1] (mode: system) failed (exit code 3); its last output:\n  | line 11\n"
            ),
            "{m}"
        );
        assert!(m.ends_with("\n  | line 30"), "{m}");
        assert!(!m.contains("line 10\n"), "{m}");
        assert_eq!(
            failure("probes[0]", "exit code 1", ""),
            "probes[0] failed (exit code 1) and printed nothing"
        );
    }
}
