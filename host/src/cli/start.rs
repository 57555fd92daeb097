//! `limactl start [NAME|TEMPLATE|FILE.yaml|URL|-]`: create the instance if
//! needed (as `limactl create`, edit flags and all), then boot it and wait
//! for the guest agent. For an existing instance the edit flags change its
//! `lima.yaml` first, as in Lima.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::create::{self, Target};
use super::editflags::EditFlags;
use super::msg;
use crate::{instance, lifecycle};

#[derive(clap::Args)]
pub struct StartArgs {
    /// Instance name (default: the template's name, or `default`)
    #[arg(long)]
    pub name: Option<String>,
    /// List the templates and exit
    #[arg(long = "list-templates")]
    pub list_templates: bool,
    #[command(flatten)]
    pub flags: EditFlags,
    /// How long to wait for the guest agent (e.g. 10m, 90s)
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// Stay in the foreground until the instance stops; SIGINT or SIGTERM stops it
    #[arg(long)]
    pub foreground: bool,
    /// An existing instance, a new instance NAME, a template (`template:NAME`,
    /// a built-in NAME such as debian-12), a .yaml path, an http(s) URL, or `-` (stdin; needs --name)
    pub target: Option<String>,
}

pub fn run(home: &Path, a: StartArgs) -> anyhow::Result<ExitCode> {
    let StartArgs {
        name,
        list_templates,
        flags,
        timeout,
        foreground,
        target,
    } = a;
    if list_templates {
        return Ok(create::list_templates());
    }
    crate::privacy::create_private_dir(home)
        .with_context(|| format!("cannot create LIMA_HOME {}", home.display()))?;
    if let Some(w) = crate::privacy::home_warning(home) {
        msg::warn(w);
    }
    let (inst, created) = match create::target(home, name.as_deref(), target.as_deref())? {
        Target::Existing(inst) => {
            msg::info(format!("Using the existing instance \"{}\"", inst.name));
            if inst.host_agent_running() {
                msg::info(format!(
                    "The instance \"{}\" is already running. Run `{}` to open the shell.",
                    inst.name,
                    shell_cmd(&inst.name)
                ));
                return Ok(ExitCode::SUCCESS);
            }
            let exprs = flags.expressions(false)?;
            if !exprs.is_empty() {
                lifecycle::edit(&inst, &exprs).with_context(|| {
                    format!(
                        "failed to apply the edit flags to instance \"{}\"",
                        inst.name
                    )
                })?;
            }
            (inst, false)
        }
        Target::New { name, template } => {
            let exprs = flags.expressions(true)?;
            let inst = lifecycle::create_new(home, &name, &template, &exprs)?;
            msg::info(format!(
                "Created instance `{}` in {}",
                inst.name,
                inst.dir.display()
            ));
            (inst, true)
        }
    };
    if foreground {
        return boot_foreground(&inst, created, timeout);
    }
    boot(&inst, created, timeout)
}

/// `start --foreground`: boots as [`boot`] does, then stays until the host
/// agent ends, passing SIGINT, SIGTERM and SIGHUP on to it as a stop (as
/// a service manager running `limactl start --foreground NAME` expects).
fn boot_foreground(
    inst: &instance::Instance,
    created: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Listening from the start: a signal during the boot stops the
    // instance as soon as it is up, instead of killing us and leaving it.
    let mut sigs = rt.block_on(async {
        let mut v = Vec::new();
        for kind in [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ] {
            v.push(signal(kind)?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    starting(inst, timeout);
    let (started, early) = rt.block_on(async {
        let boot = {
            let inst = inst.clone();
            tokio::task::spawn_blocking(move || lifecycle::start_attached(&inst, timeout))
        };
        tokio::pin!(boot);
        let mut early = false;
        loop {
            let (a, b) = sigs.split_at_mut(1);
            let (b, c) = b.split_at_mut(1);
            tokio::select! {
                r = &mut boot => return (r, early),
                _ = a[0].recv() => {}
                _ = b[0].recv() => {}
                _ = c[0].recv() => {}
            }
            if !early {
                msg::info("A signal came in: the instance stops once it is up");
            }
            early = true;
        }
    });
    let (ev, mut child) = match started.map_err(anyhow::Error::from)? {
        Ok(r) => r,
        Err(e) => return Err(forget_unlaunched(inst, created, e)),
    };
    ready(inst, ev);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stop = || {
        msg::info("Stopping the instance (a signal came in)");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
    };
    if early {
        stop();
    }
    let status = rt.block_on(async move {
        let mut wait = tokio::task::spawn_blocking(move || child.wait());
        loop {
            let (a, b) = sigs.split_at_mut(1);
            let (b, c) = b.split_at_mut(1);
            tokio::select! {
                st = &mut wait => return st.map_err(std::io::Error::other)?,
                _ = a[0].recv() => {}
                _ = b[0].recv() => {}
                _ = c[0].recv() => {}
            }
            stop();
        }
    })?;
    inst.remove_runtime_files();
    if status.success() {
        msg::info(format!("Instance `{}` stopped", inst.name));
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!(
            "the host agent of `{}` ended with {status}; see {}",
            inst.name,
            inst.path(instance::HA_LOG).display()
        )
    }
}

/// The command that opens a shell in `name` (Lima's hint).
pub fn shell_cmd(name: &str) -> String {
    if name == "default" {
        "lima".into()
    } else {
        format!("limactl shell {name}")
    }
}

/// Boots a created instance and waits for its agent, then prints READY
/// and the template's `message:`.
pub fn boot(
    inst: &instance::Instance,
    created: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    starting(inst, timeout);
    let ev = match lifecycle::start(inst, timeout) {
        Ok(ev) => ev,
        Err(e) => return Err(forget_unlaunched(inst, created, e)),
    };
    ready(inst, ev);
    Ok(ExitCode::SUCCESS)
}

fn starting(inst: &instance::Instance, timeout: Duration) {
    msg::info(format!(
        "Starting `{}` (waiting up to {:?} for the guest agent)...",
        inst.name, timeout
    ));
}

/// A new instance whose VM never ran is not kept; one that failed later
/// stays, listed as Broken with why.
fn forget_unlaunched(
    inst: &instance::Instance,
    created: bool,
    e: lifecycle::LifecycleError,
) -> anyhow::Error {
    let launched = matches!(
        e,
        lifecycle::LifecycleError::StartFailed { .. } | lifecycle::LifecycleError::Timeout { .. }
    ) && inst.vm_was_launched();
    if created && !launched {
        let _ = std::fs::remove_dir_all(&inst.dir);
    }
    e.into()
}

/// READY, then the template's `message:` (its variables filled) as Lima
/// prints them.
fn ready(inst: &instance::Instance, ev: crate::events::Event) {
    if let crate::events::Event::Running {
        kernel_release,
        boot_ms,
        ..
    } = ev
    {
        msg::info(format!(
            "READY in {:.1}s (kernel {kernel_release}). Run `limactl shell {}` or `lima` to use it.",
            boot_ms as f64 / 1000.0,
            inst.name
        ));
    }
    if let Some(m) = inst
        .config()
        .ok()
        .map(|c| c.message)
        .filter(|m| !m.trim().is_empty())
    {
        println!(
            "Message from the instance `{}`:\n{}",
            inst.name,
            m.trim_end()
        );
    }
}
