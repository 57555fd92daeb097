//! `limactl show-ssh [-f FORMAT] NAME`: the ssh command line of a running
//! distro instance (deprecated in Lima, as in ours).
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::{instance, lifecycle};

#[derive(clap::Args)]
pub struct ShowSshArgs {
    /// cmd, args, options or config
    #[arg(short, long, default_value = "cmd")]
    pub format: crate::ssh::ShowFormat,
    pub instance: String,
}

pub fn run(home: &Path, a: ShowSshArgs) -> anyhow::Result<ExitCode> {
    let inst = instance::Instance::open(home, &a.instance)?;
    let text = lifecycle::show_ssh(&inst, a.format)?;
    msg::warn(format!(
        "`show-ssh` is deprecated; use `ssh -F {} lima-{}`",
        inst.path(instance::SSH_CONFIG).display(),
        inst.name
    ));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
