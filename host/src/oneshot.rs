//! `lima-run`: boot a throw-away VM, run one command in the current folder,
//! return its exit code, leave nothing behind.
//!
//! Everything lives in one scratch directory (`$XDG_RUNTIME_DIR` or the temp
//! dir, `lima-run-PID-N/`) that is removed on every way out; the VM and its
//! helpers are our children (killed on drop and with PR_SET_PDEATHSIG), so no
//! process survives us either. The VM runs in this process: no detached host
//! agent, no readiness file to poll, and the phases are timed where they
//! happen (`--timings`).
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lima_proto::errors::error_chain;
use tokio::signal::unix::SignalKind;

use crate::bringup::{self, BringUpError, Options, Phase, Shutdown, Stop};
use crate::exec::ExecError;
use crate::instance::{self, Instance};
use crate::shell::{self, ExecOptions};

/// What `lima-run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub argv: Vec<String>,
    pub cpus: Option<u32>,
    /// As in lima.yaml, e.g. `2GiB`.
    pub memory: Option<String>,
    /// A built image's name (`default`, `debian`) or a directory holding an
    /// `image.json`.
    pub image: String,
    /// `[HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]`
    pub ports: Vec<String>,
    pub env: Vec<(String, String)>,
    pub read_only: bool,
    pub boot_timeout: Duration,
    pub timings: bool,
    /// Shared at the same path in the guest; the command runs there.
    pub workdir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted before the command started")]
    Interrupted,
}

/// Guest memory when `--memory` is not given.
pub const DEFAULT_MEMORY: &str = "2GiB";

/// Phase names, in order, as `--timings` prints them.
pub const PHASES: &[&str] = &[
    "prepared",
    "qemu-spawned",
    "kernel-started",
    "agent-ready",
    "shares-mounted",
    "command-started",
    "command-done",
    "vm-gone",
];

struct Timings {
    t0: Instant,
    marks: Mutex<Vec<(&'static str, Duration)>>,
}

impl Timings {
    fn mark(&self, phase: &'static str) {
        let at = self.t0.elapsed();
        let mut m = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if !m.iter().any(|(p, _)| *p == phase) {
            m.push((phase, at));
        }
    }

    /// One line per phase: name, time since start, time since the previous one.
    fn report(&self) -> String {
        let mut m = self.marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        m.sort_by_key(|(_, at)| *at);
        let mut out = String::new();
        let mut prev = Duration::ZERO;
        for (phase, at) in m {
            out.push_str(&format!(
                "lima-run: timing {phase:<16} {:>9.1} ms  (+{:.1} ms)\n",
                at.as_secs_f64() * 1e3,
                (at - prev).as_secs_f64() * 1e3
            ));
            prev = at;
        }
        out
    }
}

/// The scratch directory; removed when dropped, whatever happened.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("LIMA_RUN_KEEP").is_some() {
            eprintln!("lima-run: kept {} (LIMA_RUN_KEEP)", self.0.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("lima-run: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

fn scratch_dir() -> std::io::Result<Scratch> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    for n in 0..1000u32 {
        let d = base.join(format!("lima-run-{pid}-{n}"));
        // 0700 from the start, whatever the umask.
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return Ok(Scratch(d)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free scratch directory name"))
}

/// One `-p` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct PortFlag {
    /// As given, for messages.
    pub flag: String,
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: &'static str,
}

/// Parses `[HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]` (docker's `-p` order).
pub fn parse_port(flag: &str) -> Result<PortFlag, String> {
    let bad = |why: &str| {
        format!(
            "-p {flag}: {why} (use [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp], e.g. 8080 or 8080:80)"
        )
    };
    let (spec, proto) = match flag.rsplit_once('/') {
        Some((s, "tcp")) => (s, "tcp"),
        Some((s, "udp")) => (s, "udp"),
        Some((_, p)) => return Err(bad(&format!("unknown protocol `{p}`"))),
        None => (flag, "tcp"),
    };
    let port = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!("`{s}` is not a port number"))),
        }
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, host_port, guest_port) = match parts.as_slice() {
        [g] => (IpAddr::V4(Ipv4Addr::LOCALHOST), port(g)?, port(g)?),
        [g, h] => (IpAddr::V4(Ipv4Addr::LOCALHOST), port(h)?, port(g)?),
        [g, h, ip] => (
            ip.trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| bad(&format!("`{ip}` is not an IP address")))?,
            port(h)?,
            port(g)?,
        ),
        _ => return Err(bad("empty")),
    };
    Ok(PortFlag {
        flag: flag.to_string(),
        host_ip,
        host_port,
        guest_port,
        proto,
    })
}

/// The instance's lima.yaml: the default template's settings with ours on top.
fn lima_yaml(opts: &RunOptions, image: &str, ports: &[PortFlag]) -> Result<String, RunError> {
    use serde_yaml_ng::{Mapping, Value};
    let mut m = Mapping::new();
    let v = |s: &str| Value::from(s);
    m.insert(v("vmType"), v("qemu"));
    let mut img = Mapping::new();
    img.insert(v("location"), Value::from(format!("builtin:{image}")));
    m.insert(v("images"), Value::Sequence(vec![Value::Mapping(img)]));
    if let Some(c) = opts.cpus {
        m.insert(v("cpus"), Value::from(c));
    }
    // 2 GiB unless asked: Lima's host-sized default (up to 4 GiB) costs a
    // throw-away VM ~0.5 s of boot under TCG (page tables and struct pages).
    m.insert(
        v("memory"),
        v(opts.memory.as_deref().unwrap_or(DEFAULT_MEMORY)),
    );
    let mut mount = Mapping::new();
    let dir = opts.workdir.display().to_string();
    mount.insert(v("location"), v(&dir));
    mount.insert(v("mountPoint"), v(&dir));
    mount.insert(v("writable"), Value::from(!opts.read_only));
    m.insert(v("mounts"), Value::Sequence(vec![Value::Mapping(mount)]));
    // Only the ports asked for reach the host; everything else is ignored.
    let mut rules = Vec::new();
    for p in ports {
        let mut r = Mapping::new();
        r.insert(v("guestPort"), Value::from(p.guest_port));
        r.insert(v("hostPort"), Value::from(p.host_port));
        r.insert(v("hostIP"), Value::from(p.host_ip.to_string()));
        r.insert(v("guestIPMustBeZero"), Value::from(false));
        r.insert(v("guestIP"), v("0.0.0.0"));
        r.insert(v("proto"), v(p.proto));
        rules.push(Value::Mapping(r));
    }
    let mut ignore = Mapping::new();
    ignore.insert(
        v("guestPortRange"),
        Value::Sequence(vec![Value::from(1), Value::from(65535)]),
    );
    ignore.insert(v("guestIP"), v("0.0.0.0"));
    ignore.insert(v("ignore"), Value::from(true));
    rules.push(Value::Mapping(ignore));
    m.insert(v("portForwards"), Value::Sequence(rules));
    serde_yaml_ng::to_string(&Value::Mapping(m)).map_err(|e| RunError::Failed(e.to_string()))
}

/// A host port that is taken fails now, before a VM boots for nothing.
fn check_host_ports(ports: &[PortFlag]) -> Result<(), RunError> {
    for p in ports {
        let taken = if p.proto == "udp" {
            std::net::UdpSocket::bind((p.host_ip, p.host_port)).err()
        } else {
            TcpListener::bind((p.host_ip, p.host_port)).err()
        };
        if let Some(e) = taken {
            return Err(RunError::Usage(format!(
                "-p {}: cannot listen on {}:{} on the host ({e}); choose another host port with -p HOSTPORT:{}",
                p.flag,
                p.host_ip, p.host_port, p.guest_port
            )));
        }
    }
    Ok(())
}

fn serial_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(the guest printed nothing)".into()
    } else {
        tail
    }
}

/// Runs the command in a fresh VM; returns its exit code (128+N for signal N).
pub async fn run(opts: RunOptions) -> Result<i32, RunError> {
    let timings = Arc::new(Timings {
        t0: Instant::now(),
        marks: Mutex::new(Vec::new()),
    });
    if opts.argv.is_empty() {
        return Err(RunError::Usage(
            "no command given; usage: lima-run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    if opts.workdir == Path::new("/") {
        return Err(RunError::Usage(
            "lima-run shares the current folder with the VM and will not share `/`; cd into a project folder first".into(),
        ));
    }
    let ports = opts
        .ports
        .iter()
        .map(|f| parse_port(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunError::Usage)?;
    check_host_ports(&ports)?;
    let image = if opts.image.contains('/') {
        std::fs::canonicalize(&opts.image)
            .map_err(|e| RunError::Usage(format!("--image {}: {e}", opts.image)))?
            .display()
            .to_string()
    } else {
        opts.image.clone()
    };
    let scratch = scratch_dir().map_err(|e| {
        RunError::Failed(format!("cannot create a scratch directory for the VM: {e}"))
    })?;
    let result = boot_and_run(&opts, &image, &ports, &scratch.0, &timings).await;
    drop(scratch);
    if opts.timings {
        let _ = std::io::stderr().write_all(timings.report().as_bytes());
    }
    result
}

async fn boot_and_run(
    opts: &RunOptions,
    image: &str,
    ports: &[PortFlag],
    home: &Path,
    timings: &Arc<Timings>,
) -> Result<i32, RunError> {
    let failed = |e: &dyn std::error::Error| RunError::Failed(error_chain(e));
    let inst = Instance::new(home, "run").map_err(|e| failed(&e))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&inst.dir)
        .map_err(|e| failed(&e))?;
    std::fs::write(
        inst.path(instance::LIMA_YAML),
        lima_yaml(opts, image, ports)?,
    )
    .map_err(|e| failed(&e))?;
    // The checks bring-up repeats, so that their errors come before a VM.
    let config = inst.config().map_err(|e| failed(&e))?;
    config.check_host("lima-run").map_err(|e| match e {
        crate::config::ConfigError::Invalid { field, msg, .. } => {
            RunError::Usage(format!("--{field}: {msg}"))
        }
        other => failed(&other),
    })?;
    crate::image::resolve_kernel(&config.image).map_err(|e| failed(&e))?;
    timings.mark("prepared");

    let observe: bringup::Observer = {
        let timings = timings.clone();
        Arc::new(move |phase| match phase {
            Phase::Spawned { .. } => timings.mark("qemu-spawned"),
            Phase::KernelStarted => timings.mark("kernel-started"),
            Phase::AgentReady(_) => timings.mark("agent-ready"),
            Phase::SharesMounted => timings.mark("shares-mounted"),
            Phase::Stopping | Phase::Forced(_) => {}
        })
    };
    let mut stop = Stop::on_signals(&[SignalKind::interrupt()]).map_err(|e| failed(&e))?;
    let options = Options {
        ready_timeout: Some(opts.boot_timeout),
        shutdown: Shutdown::Quick(Duration::from_secs(2)),
        watch_console: true,
        observe,
        data_disk: false,
    };
    let serial = inst.path(instance::SERIAL_LOG);
    let mut up = match bringup::bring_up(&inst, &mut stop, options).await {
        Ok(up) => up,
        Err(BringUpError::VmEnded(why)) => {
            return Err(RunError::Failed(format!(
                "the VM stopped before the guest agent answered ({why}); last lines of its console:\n{}",
                serial_tail(&serial, 15)
            )))
        }
        Err(BringUpError::NoAnswer(after)) => {
            return Err(RunError::Failed(format!(
                "the guest agent did not answer within {after:?}; the VM was stopped. Last lines of its console:\n{}\n(raise the limit with --boot-timeout)",
                serial_tail(&serial, 15)
            )))
        }
        Err(BringUpError::Stopped) => return Err(RunError::Interrupted),
        Err(BringUpError::Shares(e)) => {
            return Err(RunError::Failed(format!(
                "cannot share {}: {e}",
                opts.workdir.display()
            )))
        }
        Err(BringUpError::PortForwards { index, msg }) => {
            return Err(RunError::Usage(format!("port rule {index}: {msg}")))
        }
        Err(e @ (BringUpError::Prepare(_) | BringUpError::AgentVersion(_))) => {
            return Err(RunError::Failed(e.to_string()))
        }
    };

    // lima-run is a terminal program: the command gets our terminal (a
    // PTY when we have one) and our signals, as with `limactl shell`.
    let started = timings.clone();
    let outcome = shell::exec(
        up.transport(),
        ExecOptions {
            argv: opts.argv.clone(),
            env: opts.env.clone(),
            cwd: Some(opts.workdir.display().to_string()),
            // Shared at the same path: it is there, or the share failed.
            cwd_fallback: false,
            user: Some(config.user.name.clone()),
            login: true,
            tty: None,
            on_started: Some(Box::new(move || started.mark("command-started"))),
            stdin: None,
        },
    )
    .await;
    timings.mark("command-done");
    if let Err(ExecError::Lost) = &outcome {
        // Say why: usually the VM itself went away.
        let gone = up.ended_within(Duration::from_millis(500)).await;
        let how = match &gone {
            Some(why) => format!("the VM stopped ({why})"),
            None => "the VM was still running".to_string(),
        };
        up.close(gone.is_some()).await;
        return Err(RunError::Failed(format!(
            "lost the connection to the guest agent before the command finished; {how}. Last lines of its console:\n{}",
            serial_tail(&serial, 25)
        )));
    }
    // Share writes are synchronous (no writeback cache) and the root is an
    // in-memory layer, so there is nothing to flush: stop the VM at once.
    up.close(false).await;
    timings.mark("vm-gone");
    match outcome {
        Ok(code) => Ok(code),
        Err(ExecError::Failed(reason)) => {
            eprintln!("lima-run: {reason}");
            Ok(127)
        }
        Err(e) => Err(failed(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_flags_in_docker_order() {
        let p = parse_port("8080").unwrap();
        assert_eq!((p.host_port, p.guest_port, p.proto), (8080, 8080, "tcp"));
        assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let p = parse_port("9000:80").unwrap();
        assert_eq!((p.host_port, p.guest_port), (9000, 80));
        let p = parse_port("0.0.0.0:9000:80/udp").unwrap();
        assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(p.proto, "udp");
        let p = parse_port("[::1]:9000:80").unwrap();
        assert_eq!(p.host_ip, "::1".parse::<IpAddr>().unwrap());
        for bad in ["", "x", "0", "70000", "80/sctp", "nope:1:2", "1:2:3:4"] {
            let e = parse_port(bad).unwrap_err();
            assert!(e.contains("-p "), "{bad}: {e}");
        }
    }

    #[test]
    fn yaml_shares_the_folder_and_forwards_only_what_was_asked() {
        let opts = RunOptions {
            argv: vec!["true".into()],
            cpus: Some(1),
            memory: Some("1GiB".into()),
            image: "default".into(),
            ports: vec!["9000:80".into()],
            env: vec![],
            read_only: true,
            boot_timeout: Duration::from_secs(1),
            timings: false,
            workdir: PathBuf::from("/tmp"),
        };
        let ports = [parse_port("9000:80").unwrap()];
        let text = lima_yaml(&opts, "default", &ports).unwrap();
        let yaml = crate::config::LimaYaml::parse(&text, "test").unwrap();
        let cfg = yaml.resolve("test").unwrap();
        assert_eq!(cfg.cpus, 1);
        assert_eq!(cfg.memory, 1 << 30);
        assert_eq!(cfg.mounts.len(), 1);
        assert_eq!(cfg.mounts[0].location, PathBuf::from("/tmp"));
        assert!(!cfg.mounts[0].writable);
        let rules = crate::portfwd::resolve(&cfg.port_forwards, Path::new("/x")).unwrap();
        use crate::portfwd::{decide, Decision};
        use lima_proto::{GuestPort, PortProto};
        let at = |ip: &str, port: u16| GuestPort {
            proto: PortProto::Tcp,
            ip: ip.parse().unwrap(),
            port,
        };
        for ip in ["0.0.0.0", "127.0.0.1", "::"] {
            assert!(
                matches!(decide(&rules, &at(ip, 80)), Decision::Forward { .. }),
                "{ip}:80"
            );
            for port in [22, 8080] {
                assert!(
                    matches!(decide(&rules, &at(ip, port)), Decision::Ignore { .. }),
                    "{ip}:{port} must not be forwarded"
                );
            }
        }
    }

    #[test]
    fn timings_print_in_order_with_deltas() {
        let t = Timings {
            t0: Instant::now(),
            marks: Mutex::new(vec![
                ("agent-ready", Duration::from_millis(30)),
                ("qemu-spawned", Duration::from_millis(10)),
            ]),
        };
        t.mark("qemu-spawned"); // a second mark of a phase is ignored
        let r = t.report();
        let lines: Vec<&str> = r.lines().collect();
        assert!(lines[0].contains("qemu-spawned") && lines[0].contains("10.0 ms"));
        assert!(lines[1].contains("agent-ready") && lines[1].contains("(+20.0 ms)"));
    }
}
