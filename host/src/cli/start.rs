//! `limactl start [NAME|TEMPLATE]`: create the instance if needed, then
//! boot it and wait for the guest agent.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::msg;
use crate::{instance, lifecycle, template};

#[derive(clap::Args)]
pub struct StartArgs {
    /// Instance name (default: the template's name, or `default`)
    #[arg(long)]
    pub name: Option<String>,
    /// Share a host folder (DIR[:w] for writable); adds to the template's mounts
    #[arg(long = "mount", value_name = "DIR[:w]")]
    pub mounts: Vec<String>,
    /// Like --mount, but replaces the template's mounts
    #[arg(long = "mount-only", value_name = "DIR[:w]")]
    pub mount_only: Vec<String>,
    /// How long to wait for the guest agent (e.g. 10m, 90s)
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// An existing instance, or a template: `template:NAME` (debian-12, fedora, ...), NAME, a .yaml path, or an http(s) URL
    pub target: Option<String>,
}

pub fn run(home: &Path, a: StartArgs) -> anyhow::Result<ExitCode> {
    let StartArgs {
        name,
        mounts,
        mount_only,
        timeout,
        target,
    } = a;
    crate::privacy::create_private_dir(home)
        .with_context(|| format!("cannot create LIMA_HOME {}", home.display()))?;
    if let Some(w) = crate::privacy::home_warning(home) {
        msg::warn(w);
    }
    let (inst, created) = match (&name, &target) {
        (None, Some(t)) if instance::Instance::open(home, t).is_ok() => {
            (instance::Instance::open(home, t)?, false)
        }
        _ => {
            let locator = target.clone().unwrap_or_else(|| "template:default".into());
            match &name {
                Some(n) => lifecycle::create(home, n, &locator)?,
                None if target.is_none() => lifecycle::create(home, "default", &locator)?,
                None => {
                    // Located once: a remote template is fetched once.
                    let t = template::locate(&locator)?;
                    lifecycle::create_from_template(home, &t.suggested_name.clone(), &t)?
                }
            }
        }
    };
    if !created && inst.host_agent_running() {
        return Err(instance::InstanceError::AlreadyRunning {
            name: inst.name.clone(),
        }
        .into());
    }
    if let Err(e) = lifecycle::apply_mount_flags(&inst, &mounts, &mount_only) {
        if created {
            let _ = std::fs::remove_dir_all(&inst.dir);
        }
        return Err(e.into());
    }
    if created {
        msg::info(format!(
            "Created instance `{}` in {}",
            inst.name,
            inst.dir.display()
        ));
    }
    boot(&inst, created, timeout)
}

/// Boots a created instance and waits for its agent, then prints READY
/// and the template's `message:`.
pub fn boot(
    inst: &instance::Instance,
    created: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    msg::info(format!(
        "Starting `{}` (waiting up to {:?} for the guest agent)...",
        inst.name, timeout
    ));
    let ev = match lifecycle::start(inst, timeout) {
        Ok(ev) => ev,
        Err(e) => {
            // A new instance whose VM never ran is not kept; one that
            // failed later stays, listed as Broken with why.
            let launched = matches!(
                e,
                lifecycle::LifecycleError::StartFailed { .. }
                    | lifecycle::LifecycleError::Timeout { .. }
            ) && inst.vm_was_launched();
            if created && !launched {
                let _ = std::fs::remove_dir_all(&inst.dir);
            }
            return Err(e.into());
        }
    };
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
    // `message:` (its variables filled), after READY as in Lima.
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
    Ok(ExitCode::SUCCESS)
}
