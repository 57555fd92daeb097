//! `limactl protect INSTANCE…` and `limactl unprotect INSTANCE…`: a
//! protected instance is refused by `delete` and `factory-reset` (not by
//! `rm -rf`).
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::{instance, manage};

#[derive(clap::Args)]
pub struct ProtectArgs {
    #[arg(required = true, value_name = "INSTANCE")]
    pub instances: Vec<String>,
}

pub fn run(home: &Path, a: ProtectArgs, on: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in &a.instances {
        let r = instance::Instance::open(home, name)
            .map_err(manage::ManageError::from)
            .and_then(|inst| manage::set_protected(&inst, on));
        match r {
            Ok(true) if on => msg::info(format!("Protected `{name}`")),
            Ok(true) => msg::info(format!("Unprotected `{name}`")),
            Ok(false) if on => {
                msg::warn(format!("Instance `{name}` is already protected. Skipping."))
            }
            Ok(false) => msg::warn(format!("Instance `{name}` isn't protected. Skipping.")),
            Err(e) => {
                msg::error(msg::chain(&e.into()));
                failed = true;
            }
        }
    }
    Ok(super::each::exit_code(failed))
}
