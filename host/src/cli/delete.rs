//! `limactl delete [-f] NAME…` (also `rm`, `remove`).
use std::path::Path;
use std::process::ExitCode;

use super::each::each_instance;
use crate::lifecycle;

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Stop a running instance first
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub instances: Vec<String>,
}

pub fn run(home: &Path, a: DeleteArgs) -> anyhow::Result<ExitCode> {
    Ok(each_instance(home, a.instances, "Deleted", |inst| {
        lifecycle::delete(inst, a.force)
    }))
}
