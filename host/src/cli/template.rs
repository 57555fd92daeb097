//! `limactl template copy|validate|yq` (also `tmpl`; experimental in Lima,
//! and said so): a template by its locator written out, checked, or
//! queried.
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::msg;
use crate::{base, template};

#[derive(clap::Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    cmd: TemplateCmd,
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// Copy a template (by locator: name, template:NAME, file, URL) to a file, or `-` for stdout
    Copy {
        /// Merge the template's bases into it (`base:` goes away)
        #[arg(long)]
        embed: bool,
        /// The same as --embed (lima-rs makes no difference)
        #[arg(long)]
        embed_all: bool,
        /// Fill in defaults (not supported by lima-rs)
        #[arg(long)]
        fill: bool,
        /// Write the template as it is (the default in lima-rs)
        #[arg(long)]
        verbatim: bool,
        #[arg(value_name = "TEMPLATE")]
        template: String,
        #[arg(value_name = "DEST")]
        dest: String,
    },
    /// Check templates as `start` would take them (bases merged)
    Validate(super::validate::ValidateArgs),
    /// Run an expression (jq syntax) on a template with its bases merged
    Yq {
        #[arg(value_name = "TEMPLATE")]
        template: String,
        #[arg(value_name = "EXPR")]
        expr: String,
    },
}

pub fn run(home: &Path, a: TemplateArgs) -> anyhow::Result<ExitCode> {
    msg::warn("`limactl template` is experimental");
    match a.cmd {
        TemplateCmd::Copy {
            embed,
            embed_all,
            fill,
            verbatim,
            template: locator,
            dest,
        } => {
            if fill {
                bail!("--fill is not supported by lima-rs: `limactl template copy --embed` merges the bases, defaults stay implicit");
            }
            let embed = embed || embed_all;
            if embed && verbatim {
                bail!("--verbatim cannot be used with any of --embed, --embed-all, or --fill");
            }
            let t = template::locate(&locator)?;
            let text = if embed { base::embed(&t)? } else { t.text };
            if dest == "-" {
                print!("{text}");
            } else {
                std::fs::write(&dest, text).with_context(|| format!("cannot write {dest}"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCmd::Validate(v) => super::validate::run(home, v),
        TemplateCmd::Yq {
            template: locator,
            expr,
        } => {
            let t = template::locate(&locator)?;
            let text = base::embed(&t)?;
            print!("{}", super::yq::evaluate(&expr, &text, false, false)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
