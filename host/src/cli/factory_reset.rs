//! `limactl factory-reset [INSTANCE]`: stop the instance and remove all
//! but its configuration, so the next start begins from the image again.
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::{instance, lifecycle, manage};

#[derive(clap::Args)]
pub struct FactoryResetArgs {
    /// The instance (default: `default`)
    pub instance: Option<String>,
}

pub fn run(home: &Path, a: FactoryResetArgs) -> anyhow::Result<ExitCode> {
    let name = a.instance.as_deref().unwrap_or("default");
    let inst = instance::Instance::new(home, name)?;
    if !inst.exists() {
        // Lima's answer: nothing to reset is not a failure.
        msg::info(format!("Instance \"{name}\" not found"));
        return Ok(ExitCode::SUCCESS);
    }
    manage::check_unprotected(&inst)?;
    if inst.host_agent_running() {
        lifecycle::stop(&inst, true)?;
    }
    for path in manage::factory_reset(&inst)? {
        msg::info(format!("Removing \"{}\"", path.display()));
    }
    msg::info(format!("Instance \"{name}\" has been factory reset"));
    Ok(ExitCode::SUCCESS)
}
