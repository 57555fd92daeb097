//! `limactl clone OLD NEW` and `limactl rename OLD NEW` (`[--start]`
//! `[edit flags]`): a stopped instance copied or moved under a new name,
//! the edit flags applied to the result.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::editflags::EditFlags;
use super::msg;
use crate::{instance, lifecycle, manage};

#[derive(clap::Args)]
#[command(
    after_help = "Not to be confused with `limactl copy` (`limactl cp`), which copies files."
)]
pub struct CloneArgs {
    #[command(flatten)]
    pub flags: EditFlags,
    /// Start the new instance afterwards
    #[arg(long)]
    pub start: bool,
    /// How long `--start` waits for the guest agent
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// The instance to copy (or rename); it must be stopped
    #[arg(value_name = "OLDINST")]
    pub old: String,
    /// Its new name
    #[arg(value_name = "NEWINST")]
    pub new: String,
}

pub fn run(home: &Path, a: CloneArgs, rename: bool) -> anyhow::Result<ExitCode> {
    let old = instance::Instance::new(home, &a.old)?;
    if !old.exists() {
        bail!("instance \"{}\" not found", a.old);
    }
    // The flags are checked against the old configuration first, so a bad
    // one makes nothing.
    let exprs = a.flags.expressions(false)?;
    let edited = if exprs.is_empty() {
        None
    } else {
        lifecycle::edited_yaml(&old, &exprs)?
    };
    let new = manage::clone(home, &old, &a.new, rename)?;
    let done = if rename { "Renamed" } else { "Cloned" };
    msg::info(format!("{done} \"{}\" to \"{}\"", old.name, new.name));
    if let Some(text) = edited {
        lifecycle::write_yaml(&new, &text)?;
        msg::info(format!("Instance \"{}\" configuration edited", new.name));
    }
    if a.start {
        return super::start::boot(&new, false, a.timeout);
    }
    Ok(ExitCode::SUCCESS)
}
