//! `limactl restart [INSTANCE] [-f] [edit flags]`: stop the instance (if it
//! runs), apply the edit flags, start it again.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::editflags::EditFlags;
use super::msg;
use crate::{instance, lifecycle};

#[derive(clap::Args)]
pub struct RestartArgs {
    /// Kill instead of shutting the guest down
    #[arg(short, long)]
    pub force: bool,
    #[command(flatten)]
    pub flags: EditFlags,
    /// How long to wait for the guest agent (e.g. 10m, 90s)
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// The instance (default: `default`)
    pub instance: Option<String>,
}

pub fn run(home: &Path, a: RestartArgs) -> anyhow::Result<ExitCode> {
    let name = a.instance.as_deref().unwrap_or("default");
    let inst = instance::Instance::open(home, name)?;
    // The flags are applied and checked before the instance is stopped: a
    // bad flag leaves it running as it was.
    let exprs = a.flags.expressions(false)?;
    let edited = if exprs.is_empty() {
        None
    } else {
        lifecycle::edited_yaml(&inst, &exprs)?
    };
    if inst.host_agent_running() {
        lifecycle::stop(&inst, a.force)?;
        msg::info(format!("Stopped \"{}\"", inst.name));
    }
    if let Some(text) = edited {
        lifecycle::write_yaml(&inst, &text)?;
        msg::info(format!("Instance \"{}\" configuration edited", inst.name));
    }
    super::start::boot(&inst, false, a.timeout)
}
