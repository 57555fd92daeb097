//! `limactl stop [-f] [NAME…]` (default `default`).
use std::path::Path;
use std::process::ExitCode;

use super::each::each_instance;
use crate::lifecycle;

#[derive(clap::Args)]
pub struct StopArgs {
    /// Kill instead of shutting the guest down
    #[arg(short, long)]
    pub force: bool,
    pub instances: Vec<String>,
}

pub fn run(home: &Path, a: StopArgs) -> anyhow::Result<ExitCode> {
    let names = if a.instances.is_empty() {
        vec!["default".to_string()]
    } else {
        a.instances
    };
    Ok(each_instance(home, names, "Stopped", |inst| {
        lifecycle::stop(inst, a.force)
    }))
}
