//! `limactl disk create|list|delete|unlock|resize|import`: Lima's named
//! disks, which instances attach with `additionalDisks:`.
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::msg;
use crate::lima_disks::{self, DiskError};
use crate::listing::{bytes_size, tabwriter};

#[derive(clap::Args)]
pub struct DiskArgs {
    #[command(subcommand)]
    cmd: DiskCmd,
}

#[derive(Subcommand)]
enum DiskCmd {
    /// Create a disk (the guest makes its file system on first use)
    Create {
        #[arg(value_name = "DISK")]
        name: String,
        /// The disk's size, e.g. 10GiB
        #[arg(long, required = true)]
        size: String,
        /// qcow2 or raw
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// List disks: NAME SIZE FORMAT DIR IN-USE-BY
    #[command(visible_alias = "ls")]
    List {
        /// One JSON object per disk
        #[arg(long)]
        json: bool,
        #[arg(value_name = "DISK")]
        names: Vec<String>,
    },
    /// Delete disks (one in use is refused; one an instance names needs --force)
    #[command(visible_aliases = ["remove", "rm"])]
    Delete {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "DISK")]
        names: Vec<String>,
    },
    /// Clear the lock of disks no running instance uses
    Unlock {
        #[arg(required = true, value_name = "DISK")]
        names: Vec<String>,
    },
    /// Grow a disk no running instance uses
    Resize {
        #[arg(value_name = "DISK")]
        name: String,
        #[arg(long, required = true)]
        size: String,
    },
    /// Make a disk from an image file (qcow2 or raw)
    Import {
        #[arg(value_name = "DISK")]
        name: String,
        #[arg(value_name = "FILE")]
        file: String,
    },
}

pub fn run(home: &Path, a: DiskArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        DiskCmd::Create { name, size, format } => {
            let bytes = crate::units::parse_size(&size).map_err(anyhow::Error::msg)?;
            msg::info(format!(
                "Creating {format} disk \"{name}\" with size {}",
                bytes_size(bytes)
            ));
            lima_disks::create(home, &name, bytes, &format)?;
        }
        DiskCmd::List { json, names } => list(home, json, names)?,
        DiskCmd::Delete { force, names } => return delete(home, force, names),
        DiskCmd::Unlock { names } => {
            for name in names {
                match lima_disks::inspect(home, &name) {
                    Err(DiskError::NotFound(_)) => {
                        msg::warn(format!("Ignoring non-existent disk \"{name}\""))
                    }
                    Err(e) => return Err(e.into()),
                    Ok(d) if !d.instance.is_empty() => msg::warn(format!(
                        "Cannot unlock disk \"{name}\" used by running instance \"{}\"",
                        d.instance
                    )),
                    Ok(d) if lima_disks::locked_by(home, &name).is_none() => {
                        msg::warn(format!("Ignoring unlocked disk \"{name}\""));
                        let _ = d;
                    }
                    Ok(d) => {
                        lima_disks::unlock(home, &name, None)?;
                        msg::info(format!(
                            "Unlocked disk \"{name}\" (\"{}\")",
                            d.dir.display()
                        ));
                    }
                }
            }
        }
        DiskCmd::Resize { name, size } => {
            let bytes = crate::units::parse_size(&size).map_err(anyhow::Error::msg)?;
            lima_disks::resize(home, &name, bytes)?;
            let d = lima_disks::inspect(home, &name)?;
            msg::info(format!("Resized disk \"{name}\" (\"{}\")", d.dir.display()));
        }
        DiskCmd::Import { name, file } => {
            let d = lima_disks::import(home, &name, Path::new(&file))?;
            msg::info(format!(
                "Imported {} as {} disk \"{name}\" with size {}",
                file,
                d.format,
                bytes_size(d.size)
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(home: &Path, json: bool, names: Vec<String>) -> anyhow::Result<()> {
    let all = lima_disks::names(home);
    let chosen: Vec<String> = if names.is_empty() {
        all
    } else {
        names
            .into_iter()
            .filter(|n| {
                let found = all.contains(n);
                if !found {
                    msg::warn(format!("No disk matching {n} found."));
                }
                found
            })
            .collect()
    };
    if !json && chosen.is_empty() {
        msg::warn("No disk found. Run `limactl disk create DISK --size SIZE` to create a disk.");
    }
    let mut rows = vec![["NAME", "SIZE", "FORMAT", "DIR", "IN-USE-BY"]
        .map(String::from)
        .to_vec()];
    for name in chosen {
        let d = match lima_disks::inspect(home, &name) {
            Ok(d) => d,
            Err(e) => {
                msg::error(msg::chain(&e.into()));
                continue;
            }
        };
        if json {
            println!("{}", serde_json::to_string(&d)?);
        } else {
            rows.push(vec![
                d.name,
                bytes_size(d.size),
                d.format,
                d.dir.display().to_string(),
                d.instance,
            ]);
        }
    }
    if !json {
        print!("{}", tabwriter(&rows));
    }
    Ok(())
}

fn delete(home: &Path, force: bool, names: Vec<String>) -> anyhow::Result<ExitCode> {
    let referring = |disk: &str| -> Vec<String> {
        crate::instance::Instance::list(home)
            .into_iter()
            .filter(|i| {
                i.config()
                    .is_ok_and(|c| c.additional_disks.iter().any(|d| d.name == disk))
            })
            .map(|i| i.name)
            .collect()
    };
    for name in names {
        let d = match lima_disks::inspect(home, &name) {
            Err(DiskError::NotFound(_)) => {
                msg::warn(format!("Ignoring non-existent disk \"{name}\""));
                continue;
            }
            r => r?,
        };
        if !d.instance.is_empty() {
            anyhow::bail!(
                "cannot delete disk \"{name}\" in use by instance \"{}\"",
                d.instance
            );
        }
        let refs = referring(&name);
        if !force && !refs.is_empty() {
            msg::warn(format!(
                "Skipping deleting disk \"{name}\", disk is referenced by one or more non-running instances: {refs:?}"
            ));
            msg::warn(format!(
                "To delete anyway, run \"limactl disk delete --force {name}\""
            ));
            continue;
        }
        lima_disks::delete(home, &name)?;
        msg::info(format!("Deleted \"{name}\" (\"{}\")", d.dir.display()));
    }
    Ok(ExitCode::SUCCESS)
}
