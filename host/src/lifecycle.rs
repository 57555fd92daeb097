//! What `limactl start/stop/delete/list` do to an instance, apart from
//! argument parsing: create from a template, spawn the host agent and follow
//! its events, stop it, remove the instance.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::LimaYaml;
use crate::events::{self, Event};
use crate::instance::{self, Instance, InstanceError, Status};
use crate::template;
use crate::units::human_size;

pub use crate::listing::{info, table, InstanceInfo};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error(transparent)]
    Base(#[from] crate::base::BaseError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("instance `{name}` is running; stop it first or use --force")]
    Running { name: String },
    #[error(transparent)]
    Manage(#[from] crate::manage::ManageError),
    #[error("instance `{name}` failed to start: {reason}\n  host agent log: {log}\n  serial console: {serial}{tail}")]
    StartFailed {
        name: String,
        reason: String,
        log: String,
        serial: String,
        /// The last lines of the log that shows why (see [`LogTail`]).
        tail: Box<LogTail>,
    },
    #[error("the guest agent of `{name}` did not answer within {timeout:?}; the instance was stopped.\n  serial console: {serial}\n  host agent log: {log}{tail}")]
    Timeout {
        name: String,
        timeout: Duration,
        serial: String,
        log: String,
        tail: Box<LogTail>,
    },
    #[error("instance `{name}` has no sshd: built-in images are reached with `limactl shell {name}`; a distro image (e.g. `template:debian-12`) runs sshd")]
    NoSsh { name: String },
    #[error(transparent)]
    Expr(#[from] crate::yq::YqError),
    #[error("instance `{name}` already exists ({dir})")]
    Exists { name: String, dir: String },
    #[error("Cannot edit a running instance `{name}`; stop it first with `limactl stop {name}`")]
    EditRunning { name: String },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The last lines of a log, shown under a failed start's error; empty
/// when the log is missing or empty.
#[derive(Debug, Default)]
pub struct LogTail {
    pub file: String,
    pub lines: Vec<String>,
}

/// How many lines of a log a failed start shows.
pub const TAIL_LINES: usize = 10;

impl LogTail {
    pub fn read(path: &Path, n: usize) -> Self {
        let bytes = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                // A serial console carries escape sequences and carriage
                // returns; keep what a terminal would show as text.
                let shown = l.rsplit('\r').find(|p| !p.trim().is_empty()).unwrap_or("");
                printable(shown).trim_end().to_string()
            })
            .filter(|l| !l.is_empty())
            .collect();
        let keep = lines.len().saturating_sub(n);
        lines.drain(..keep);
        Self {
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            lines,
        }
    }

    /// The log that says why: the guest's console once the VM ran, else
    /// the host agent's own.
    fn relevant(inst: &Instance) -> Self {
        let serial = Self::read(&inst.path(instance::SERIAL_LOG), TAIL_LINES);
        if inst.vm_was_launched() && !serial.lines.is_empty() {
            return serial;
        }
        Self::read(&inst.path(instance::HA_LOG), TAIL_LINES)
    }
}

/// `line` without terminal escape sequences (`ESC [ ... letter`) and
/// other control characters but tabs.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

impl std::fmt::Display for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lines.is_empty() {
            return Ok(());
        }
        write!(f, "\n  last lines of {}:", self.file)?;
        for l in &self.lines {
            write!(f, "\n    | {l}")?;
        }
        Ok(())
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LifecycleError {
    let what = what.into();
    move |source| LifecycleError::Io { what, source }
}

/// Creates `name` from `template` unless it exists; checks the config either way.
pub fn create(
    home: &Path,
    name: &str,
    template_locator: &str,
) -> Result<(Instance, bool), LifecycleError> {
    let inst = Instance::new(home, name)?;
    if inst.exists() {
        return Ok((inst, false));
    }
    let t = template::locate(template_locator)?;
    Ok((create_new(home, name, &t, &[])?, true))
}

/// [`create`] from a template already located (a remote one is fetched
/// once).
pub fn create_from_template(
    home: &Path,
    name: &str,
    t: &template::Template,
) -> Result<(Instance, bool), LifecycleError> {
    let inst = Instance::new(home, name)?;
    if inst.exists() {
        return Ok((inst, false));
    }
    Ok((create_new(home, name, t, &[])?, true))
}

/// Creates the new instance `name` from a located template, with `exprs`
/// (edit flags, `--set`) applied, as `limactl create` does. `base:` is
/// merged in first: the instance's `lima.yaml` is the whole result, as Lima
/// embeds bases when it creates an instance. The result is checked before
/// anything lands on disk; an existing instance is refused.
pub fn create_new(
    home: &Path,
    name: &str,
    t: &template::Template,
    exprs: &[String],
) -> Result<Instance, LifecycleError> {
    let inst = Instance::new(home, name)?;
    if inst.exists() {
        return Err(LifecycleError::Exists {
            name: inst.name.clone(),
            dir: inst.dir.display().to_string(),
        });
    }
    let text = crate::base::embed(t)?;
    let text = if exprs.is_empty() {
        text
    } else {
        crate::yq::edit_yaml_keeping_comments(&text, exprs)?
    };
    let cfg = check_yaml(&inst, &text, &t.origin)?;
    check_image(&cfg.image)?;
    crate::privacy::create_private_dir(&inst.dir)
        .map_err(io(format!("create {}", inst.dir.display())))?;
    std::fs::write(inst.path(instance::LIMA_YAML), &text).map_err(io("write lima.yaml"))?;
    Ok(inst)
}

/// Checks `lima.yaml` text for `inst` as `start` will take it: it parses,
/// its variables fill in, and its values resolve and fit this host.
/// `origin` names the text in errors.
pub fn check_yaml(
    inst: &Instance,
    text: &str,
    origin: &str,
) -> Result<crate::config::InstanceConfig, LifecycleError> {
    let mut yaml = LimaYaml::parse(text, origin)?;
    crate::tmplvars::expand_for(&mut yaml, &inst.name, &inst.dir, origin)?;
    let cfg = yaml.resolve(origin)?;
    cfg.check_host(origin)?;
    Ok(cfg)
}

/// Applies `exprs` to a stopped instance's `lima.yaml`, checks the result
/// and writes it (comments kept where the change allows). Returns whether
/// anything changed. A running instance is refused, as in Lima.
pub fn edit(inst: &Instance, exprs: &[String]) -> Result<bool, LifecycleError> {
    if inst.host_agent_running() {
        return Err(LifecycleError::EditRunning {
            name: inst.name.clone(),
        });
    }
    match edited_yaml(inst, exprs)? {
        Some(text) => {
            write_yaml(inst, &text)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The instance's `lima.yaml` with `exprs` applied and checked, or `None`
/// when they change nothing. Writes nothing.
pub fn edited_yaml(inst: &Instance, exprs: &[String]) -> Result<Option<String>, LifecycleError> {
    let path = inst.path(instance::LIMA_YAML);
    let text = std::fs::read_to_string(&path).map_err(io("read lima.yaml"))?;
    let out = crate::yq::edit_yaml_keeping_comments(&text, exprs)?;
    if out == text {
        return Ok(None);
    }
    check_yaml(inst, &out, &path.display().to_string())?;
    Ok(Some(out))
}

/// Checks `text` (see [`check_yaml`]) and then replaces the instance's
/// `lima.yaml` with it in one step (a crash leaves the old file or the new).
pub fn write_yaml(inst: &Instance, text: &str) -> Result<(), LifecycleError> {
    let path = inst.path(instance::LIMA_YAML);
    check_yaml(inst, text, &path.display().to_string())?;
    let tmp = inst.path("lima.yaml.tmp");
    std::fs::write(&tmp, text).map_err(io("write lima.yaml"))?;
    std::fs::rename(&tmp, &path).map_err(io("replace lima.yaml"))
}

/// Checks an image without fetching it or making anything.
fn check_image(image: &crate::config::Image) -> Result<(), LifecycleError> {
    if crate::image::is_disk_image(image) {
        crate::disk::check(image)?;
    } else {
        crate::image::resolve_kernel(image)?;
    }
    Ok(())
}

/// Spawns the host agent and waits until the guest agent answers.
pub fn start(inst: &Instance, timeout: Duration) -> Result<events::Event, LifecycleError> {
    start_host_agent(inst, timeout, false).map(|(ev, _)| ev)
}

/// [`start`], keeping the host agent as our child (`start --foreground`):
/// the caller waits for it, and the instance stops when it ends.
pub fn start_attached(
    inst: &Instance,
    timeout: Duration,
) -> Result<(events::Event, std::process::Child), LifecycleError> {
    let (ev, child) = start_host_agent(inst, timeout, true)?;
    Ok((ev, child.expect("kept when attached")))
}

fn start_host_agent(
    inst: &Instance,
    timeout: Duration,
    attached: bool,
) -> Result<(events::Event, Option<std::process::Child>), LifecycleError> {
    if inst.host_agent_running() {
        return Err(InstanceError::AlreadyRunning {
            name: inst.name.clone(),
        }
        .into());
    }
    let yaml = inst.yaml()?;
    for field in yaml.unused_fields() {
        tracing::warn!(
            "{}: `{field}` is accepted but not used by lima-rs yet",
            inst.path(instance::LIMA_YAML).display()
        );
    }
    let origin = inst.path(instance::LIMA_YAML).display().to_string();
    let cfg = yaml.resolve(&origin)?;
    cfg.check_host(&origin)?;
    // `provision:` and `probes:` are checked now, not after the boot.
    crate::provision::Provisioning::from_yaml(&yaml, Vec::new(), &origin)?;
    check_image(&cfg.image)?;
    if yaml.binfmt.is_some() && crate::image::is_disk_image(&cfg.image) {
        tracing::warn!(
            "{origin}: `binfmt` applies to built-in images only; on a distro image, install \
             qemu-user-static (Debian's registers its emulators with flag F)"
        );
    }
    if yaml.ca_certs.is_some() && !crate::image::is_disk_image(&cfg.image) {
        tracing::warn!(
            "{origin}: `caCerts` applies to distro images only (through cloud-init); \
             built-in images keep their own trust store"
        );
    }
    let mut phases = crate::progress::Progress::stderr();
    if crate::image::is_disk_image(&cfg.image) {
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !inst.path(instance::DIFFDISK).exists() {
            phases.phase("disk", &format!("from {}", cfg.image.location));
        }
        if let crate::disk::Prepared::Made { size, warning } =
            crate::disk::prepare(inst, &cfg.image, cfg.disk, progress)?
        {
            phases.phase("disk", &format!("ready ({} overlay)", human_size(size)));
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
        }
    }
    crate::image::resolve(&cfg.image, inst)?;
    for m in &cfg.mounts {
        if let Some(w) = crate::mounts::exposure_warning(m) {
            tracing::warn!("{origin}: {w}");
        }
    }
    // Shared folders must exist on the host now; a missing one in the temp
    // folder (the default template's /tmp/lima) is made.
    crate::mounts::create_missing(yaml.mounts.as_deref().unwrap_or(&[])).map_err(
        |(field, msg)| crate::config::ConfigError::Invalid {
            path: origin.clone(),
            field,
            msg,
        },
    )?;
    crate::mounts::resolve(
        yaml.mounts.as_deref().unwrap_or(&[]),
        yaml.mount_type.as_deref(),
        true,
    )
    .map_err(|(field, msg)| crate::config::ConfigError::Invalid {
        path: origin.clone(),
        field,
        msg,
    })?;
    inst.remove_runtime_files();
    let events_path = inst.path(instance::HA_EVENTS);
    let _ = std::fs::remove_file(&events_path);
    let _ = std::fs::remove_file(inst.path(instance::SERIAL_LOG));
    let log = std::fs::File::create(inst.path(instance::HA_LOG))
        .map_err(io("create the host agent log"))?;
    let exe = std::env::current_exe().map_err(io("find our own executable"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("hostagent").arg(&inst.name);
    cmd.env("LIMA_HOME", inst.dir.parent().unwrap_or(Path::new("/")));
    // The host agent stops waiting for probes before we give up.
    let deadline = std::time::SystemTime::now() + timeout;
    if let Ok(d) = deadline.duration_since(std::time::UNIX_EPOCH) {
        cmd.env("LIMA_START_DEADLINE_MS", d.as_millis().to_string());
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(log.try_clone().map_err(io("open the host agent log"))?)
        .stderr(log);
    // SAFETY: setsid in the child before exec; async-signal-safe. The host
    // agent gets its own session so it outlives this command and the terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(io("start the host agent"))?;
    let started = Instant::now();
    let mut seen = 0;
    loop {
        let all = events::read_all(&events_path);
        for rec in all.iter().skip(seen) {
            phases.event(rec);
            match &rec.event {
                ev @ Event::Running { .. } => {
                    if attached {
                        return Ok((ev.clone(), Some(child)));
                    }
                    // The child is detached; reap it from a thread if it exits.
                    std::thread::spawn(move || child.wait());
                    return Ok((ev.clone(), None));
                }
                Event::Failed { reason } => {
                    let _ = child.wait();
                    return Err(start_failed(inst, reason.clone()));
                }
                _ => {}
            }
        }
        seen = all.len();
        if let Ok(Some(st)) = child.try_wait() {
            // Read once more: the last event may have landed just now.
            if let Some(Event::Failed { reason }) = events::read_all(&events_path)
                .iter()
                .map(|r| &r.event)
                .find(|e| matches!(e, Event::Failed { .. }))
            {
                return Err(start_failed(inst, reason.clone()));
            }
            let tail = std::fs::read_to_string(inst.path(instance::HA_LOG)).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("");
            // The host agent logs in Lima's form: its last message.
            let last = crate::logfmt::message_of(last).unwrap_or_else(|| last.to_string());
            return Err(start_failed(
                inst,
                format!("the host agent exited ({st}) {last}"),
            ));
        }
        if started.elapsed() > timeout {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            if !wait_exit(&mut child, Duration::from_secs(30)) {
                let _ = child.kill();
                let _ = child.wait();
            }
            inst.remove_runtime_files();
            return Err(LifecycleError::Timeout {
                name: inst.name.clone(),
                timeout,
                serial: inst.path(instance::SERIAL_LOG).display().to_string(),
                log: inst.path(instance::HA_LOG).display().to_string(),
                tail: Box::new(LogTail::relevant(inst)),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn start_failed(inst: &Instance, reason: String) -> LifecycleError {
    LifecycleError::StartFailed {
        name: inst.name.clone(),
        log: inst.path(instance::HA_LOG).display().to_string(),
        serial: inst.path(instance::SERIAL_LOG).display().to_string(),
        tail: {
            // The host agent's last line is often the reason itself.
            let mut tail = LogTail::relevant(inst);
            tail.lines.retain(|l| !l.contains(reason.as_str()));
            Box::new(tail)
        },
        reason,
    }
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Stops the instance: graceful (the host agent shuts the guest down) unless
/// `force`, which kills the host agent and everything it started.
pub fn stop(inst: &Instance, force: bool) -> Result<(), LifecycleError> {
    if !inst.host_agent_running() {
        inst.remove_runtime_files();
        return Err(InstanceError::NotRunning {
            name: inst.name.clone(),
        }
        .into());
    }
    let ha = inst.read_pid(instance::HA_PID);
    if !force {
        if let Some(pid) = ha {
            let events_path = inst.path(instance::HA_EVENTS);
            let seen = events::read_all(&events_path).len();
            // The host agent's own grace for the guest, and time to spare.
            let wait = match inst.config() {
                Ok(c) if crate::image::is_disk_image(&c.image) => {
                    crate::bringup::DISTRO_SHUTDOWN_GRACE + Duration::from_secs(30)
                }
                _ => Duration::from_secs(60),
            };
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < wait {
                if !inst.host_agent_running() {
                    for rec in events::read_all(&events_path).iter().skip(seen) {
                        if let Event::Warning { message } = &rec.event {
                            tracing::warn!("`{}`: {message}", inst.name);
                        }
                    }
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(
                "`{}` did not stop within {}s; killing it (a forced stop: the guest's disk may need a file system check)",
                inst.name,
                wait.as_secs()
            );
        }
    }
    kill_all(inst);
    Ok(())
}

/// SIGKILL to the host agent, QEMU and the helpers; removes runtime files.
fn kill_all(inst: &Instance) {
    for file in [instance::HA_PID, instance::QEMU_PID] {
        if let Some(pid) = inst.read_pid(file) {
            if pid > 1 && pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
    let t = Instant::now();
    while inst.host_agent_running() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    inst.remove_runtime_files();
    // A killed host agent could not unlock its `limactl disk` disks.
    if let Some(home) = inst.dir.parent() {
        crate::lima_disks::unlock_all(home, inst);
    }
}

/// Removes the instance; a running one needs `force`, a protected one is
/// refused.
pub fn delete(inst: &Instance, force: bool) -> Result<(), LifecycleError> {
    crate::manage::check_unprotected(inst)?;
    if inst.host_agent_running() {
        if !force {
            return Err(LifecycleError::Running {
                name: inst.name.clone(),
            });
        }
        kill_all(inst);
    }
    std::fs::remove_dir_all(&inst.dir).map_err(io(format!("remove {}", inst.dir.display())))
}

/// What `limactl show-ssh` prints: the running instance's `ssh.config` in
/// the asked form.
pub fn show_ssh(inst: &Instance, format: crate::ssh::ShowFormat) -> Result<String, LifecycleError> {
    if inst.status() != Status::Running {
        return Err(InstanceError::NotRunning {
            name: inst.name.clone(),
        }
        .into());
    }
    let no_ssh = || LifecycleError::NoSsh {
        name: inst.name.clone(),
    };
    if crate::listing::ssh_port(inst).is_none() {
        return Err(no_ssh());
    }
    let text = std::fs::read_to_string(inst.path(instance::SSH_CONFIG)).map_err(|_| no_ssh())?;
    crate::ssh::show(&text, format).ok_or_else(no_ssh)
}

/// The transport of a running instance.
pub fn transport(inst: &Instance) -> Result<Box<dyn crate::vsock::Transport>, LifecycleError> {
    if !inst.host_agent_running() {
        return Err(InstanceError::NotRunning {
            name: inst.name.clone(),
        }
        .into());
    }
    let bytes =
        std::fs::read(inst.path(instance::TRANSPORT)).map_err(|_| InstanceError::NotRunning {
            name: inst.name.clone(),
        })?;
    let spec: crate::vsock::TransportSpec =
        serde_json::from_slice(&bytes).map_err(|e| LifecycleError::Io {
            what: "read transport.json".into(),
            source: std::io::Error::other(e),
        })?;
    Ok(spec.open())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_failed_start_shows_the_last_lines_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        // What a console leaves: colour codes, carriage returns, blank lines.
        text.push_str("\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r\n\r\n");
        text.push_str("progress 10%\rprogress 100%\n");
        std::fs::write(&log, text).unwrap();
        let tail = LogTail::read(&log, TAIL_LINES);
        assert_eq!(tail.lines.len(), TAIL_LINES);
        assert_eq!(tail.lines[0], "line 22");
        assert_eq!(tail.lines[8], "  OK  ] Started ssh.service");
        assert_eq!(tail.lines[9], "progress 100%");
        let err = LifecycleError::StartFailed {
            name: "d".into(),
            reason: "cloud-init failed".into(),
            log: "/x/ha.stderr.log".into(),
            serial: log.display().to_string(),
            tail: Box::new(tail),
        }
        .to_string();
        assert!(
            err.contains("\n  last lines of serial.log:\n    | line 22\n"),
            "{err}"
        );
        assert!(err.ends_with("    | progress 100%"), "{err}");
        // No log, no section.
        let none = LogTail::read(&dir.path().join("missing.log"), TAIL_LINES);
        assert_eq!(none.to_string(), "");
    }

    #[test]
    fn show_ssh_needs_a_running_instance_with_sshd() {
        let home = tempfile::tempdir().unwrap();
        let inst = Instance::new(home.path(), "stopped").unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        std::fs::write(
            inst.path(instance::LIMA_YAML),
            "images:\n- location: builtin:default\n",
        )
        .unwrap();
        let err = show_ssh(&inst, crate::ssh::ShowFormat::Cmd).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not running (start it with `limactl start stopped`)"),
            "{err}"
        );
    }

    /// An instance directory whose lima.yaml shares `kept`.
    fn instance(home: &Path, kept: &Path) -> Instance {
        let inst = Instance::new(home, "flags").unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        let yaml = format!(
            "images:\n- location: builtin:default\nmounts:\n- location: {}\n",
            kept.display()
        );
        std::fs::write(inst.path(instance::LIMA_YAML), yaml).unwrap();
        inst
    }

    fn locations(inst: &Instance) -> Vec<(PathBuf, bool)> {
        let cfg = inst.config().unwrap();
        cfg.mounts
            .iter()
            .map(|m| (m.location.clone(), m.writable))
            .collect()
    }

    #[test]
    fn edit_applies_expressions_and_keeps_comments() {
        let home = tempfile::tempdir().unwrap();
        let (kept, extra) = (home.path().join("kept"), home.path().join("extra"));
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::create_dir_all(&extra).unwrap();
        let inst = instance(home.path(), &kept);
        let p = inst.path(instance::LIMA_YAML);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("# mine\ncpus: 1 # one\n{text}")).unwrap();

        assert!(edit(&inst, &[".cpus = 2".to_string()]).unwrap());
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(after.starts_with("# mine\ncpus: 2 # one\n"), "{after}");
        assert!(!edit(&inst, &[".cpus = 2".to_string()]).unwrap());

        let add = format!(
            ".mounts += [{{\"location\": \"{}\", \"writable\": true}}]",
            extra.display()
        );
        assert!(edit(&inst, &[add]).unwrap());
        assert_eq!(
            locations(&inst),
            vec![(kept.clone(), false), (extra.clone(), true)]
        );
        assert_eq!(inst.config().unwrap().cpus, 2);
    }

    #[test]
    fn a_bad_edit_names_the_problem_and_leaves_lima_yaml_alone() {
        let home = tempfile::tempdir().unwrap();
        let kept = home.path().join("kept");
        std::fs::create_dir_all(&kept).unwrap();
        let inst = instance(home.path(), &kept);
        let before = std::fs::read_to_string(inst.path(instance::LIMA_YAML)).unwrap();

        for (expr, want) in [
            (".cpus = 0", "cpus"),
            (".vmType = \"vz\"", "vmType"),
            (".nosuchkey = 1", "nosuchkey"),
            (".mounts[0].mountPoint = \"/etc\"", "/etc"),
            (".cpus = ", "invalid expression"),
        ] {
            let err = edit(&inst, &[expr.to_string()]).unwrap_err().to_string();
            assert!(err.contains(want), "{expr}: {err}");
        }
        let after = std::fs::read_to_string(inst.path(instance::LIMA_YAML)).unwrap();
        assert_eq!(before, after);
    }
}
