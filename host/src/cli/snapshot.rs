//! `limactl snapshot create|apply|delete|list INSTANCE [--tag TAG] [-q]`:
//! named snapshots of a stopped instance's disks (experimental in Lima,
//! and said so).
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::msg;
use crate::{instance, snapshot};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    cmd: SnapshotCmd,
}

#[derive(clap::Args)]
struct Tagged {
    /// The instance
    instance: String,
    /// Name of the snapshot
    #[arg(long, default_value = "")]
    tag: String,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Create (save) a snapshot of the stopped instance's disks
    #[command(visible_alias = "save")]
    Create(Tagged),
    /// Apply (load) a snapshot: the disks go back to it
    #[command(visible_alias = "load")]
    Apply(Tagged),
    /// Delete (del) a snapshot
    #[command(visible_alias = "del")]
    Delete(Tagged),
    /// List the snapshots
    #[command(visible_alias = "ls")]
    List {
        /// The instance
        instance: String,
        /// Only show tags
        #[arg(short, long)]
        quiet: bool,
    },
}

pub fn run(home: &Path, a: SnapshotArgs) -> anyhow::Result<ExitCode> {
    msg::warn("`limactl snapshot` is experimental");
    match a.cmd {
        SnapshotCmd::Create(t) => {
            snapshot::create(&instance::Instance::open(home, &t.instance)?, &t.tag)?
        }
        SnapshotCmd::Apply(t) => {
            snapshot::apply(&instance::Instance::open(home, &t.instance)?, &t.tag)?
        }
        SnapshotCmd::Delete(t) => {
            snapshot::delete(&instance::Instance::open(home, &t.instance)?, &t.tag)?
        }
        SnapshotCmd::List {
            instance: name,
            quiet,
        } => {
            let table = snapshot::list(&instance::Instance::open(home, &name)?)?;
            if quiet {
                for tag in snapshot::tags_of_table(&table) {
                    println!("{tag}");
                }
            } else {
                print!("{table}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
