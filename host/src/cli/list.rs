//! `limactl list [NAME…]` (also `ls`): the instances as a table or JSON.
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::{instance, lifecycle};

#[derive(clap::Args)]
pub struct ListArgs {
    /// table or json (one JSON object per line)
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Same as --format json
    #[arg(long)]
    pub json: bool,
    /// Only names
    #[arg(short, long)]
    pub quiet: bool,
    pub instances: Vec<String>,
}

pub fn run(home: &Path, a: ListArgs) -> anyhow::Result<ExitCode> {
    let ListArgs {
        format,
        json,
        quiet,
        instances,
    } = a;
    let mut all = instance::Instance::list(home);
    let mut missing = false;
    if !instances.is_empty() {
        for n in &instances {
            if !all.iter().any(|i| &i.name == n) {
                msg::error(format!("instance `{n}` does not exist"));
                missing = true;
            }
        }
        all.retain(|i| instances.contains(&i.name));
    }
    let rows: Vec<_> = all.iter().map(lifecycle::info).collect();
    let format = if json { "json".to_string() } else { format };
    if quiet {
        for r in &rows {
            println!("{}", r.name);
        }
    } else if format == "json" {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else if format == "table" {
        if rows.is_empty() && instances.is_empty() {
            msg::info("No instances found. Run `limactl start` to create one.");
        } else {
            print!("{}", lifecycle::table(&rows));
        }
        for r in rows.iter().filter(|r| !r.errors.is_empty()) {
            msg::warn(format!(
                "instance `{}` is broken: {}",
                r.name,
                r.errors.join("; ")
            ));
        }
    } else {
        anyhow::bail!("unknown --format `{format}`; use table or json");
    }
    Ok(if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
