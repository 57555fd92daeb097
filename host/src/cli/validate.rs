//! `limactl validate FILE…`: check lima.yaml files as `start` would take
//! them (bases merged), creating nothing.
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::template;

#[derive(clap::Args)]
pub struct ValidateArgs {
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

pub fn run(home: &Path, a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for f in &a.files {
        let checked = (|| -> anyhow::Result<()> {
            let t = template::locate(f)?;
            let text = crate::base::embed(&t)?;
            crate::tmplvars::resolve_as(&text, &t.origin, home, &t.suggested_name)?;
            Ok(())
        })();
        match checked {
            Ok(()) => msg::info(format!("\"{f}\": OK")),
            Err(e) => {
                msg::error(msg::chain(&e));
                failed = true;
            }
        }
    }
    Ok(super::each::exit_code(failed))
}
