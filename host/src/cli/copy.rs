//! `limactl copy [-r] SOURCE… TARGET` (also `cp`): files between the host
//! and running instances, `INSTANCE:PATH` for a guest path.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::copy::{self, Guest, Place, Side};

#[derive(clap::Args)]
#[command(
    after_help = "Prefix a guest path with the instance name and a colon; a relative guest path\n\
is relative to the guest user's home. Example: limactl copy default:/etc/os-release ."
)]
pub struct CopyArgs {
    /// Copy folders and everything in them
    #[arg(short, long)]
    recursive: bool,
    /// Say what is copied where
    #[arg(short, long)]
    verbose: bool,
    /// Lima's choice of scp or rsync; accepted for its scripts, lima-rs always copies through its guest agent
    #[arg(long, value_parser = ["auto", "rsync", "scp"], default_value = "auto")]
    backend: String,
    /// SOURCE... TARGET
    #[arg(required = true, num_args = 2.., value_name = "SOURCE... TARGET")]
    paths: Vec<String>,
}

pub fn run(home: &Path, a: CopyArgs) -> anyhow::Result<ExitCode> {
    let places = a
        .paths
        .iter()
        .map(|p| Place::parse(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.backend != "auto" {
        msg::debug(format!(
            "--backend={} asked; lima-rs copies through its guest agent",
            a.backend
        ));
    }
    // Each instance once: it must run, and the copy acts as its guest user.
    let mut guests: BTreeMap<String, Guest> = BTreeMap::new();
    for name in places.iter().filter_map(Place::instance) {
        if guests.contains_key(name) {
            continue;
        }
        let inst = super::running::running(home, name)?;
        let user = inst.config()?.user.name;
        let transport = crate::lifecycle::transport(&inst)?;
        guests.insert(
            name.to_string(),
            Guest {
                instance: name.to_string(),
                transport,
                user,
            },
        );
    }
    let side = |p: &Place| match p.instance() {
        None => Side::Host,
        Some(n) => Side::Guest(&guests[n]),
    };
    let (target, sources) = places.split_last().expect("clap asks for two paths");
    let kind = copy::kind(side(target), target.path())?;
    let dests = copy::plan(sources, target.path(), kind)?;
    let mut failed = false;
    for (src, dest) in sources.iter().zip(&dests) {
        let r = copy::copy(side(src), src.path(), side(target), dest, a.recursive);
        match r {
            Ok(()) if a.verbose => {
                let into = match (&dest.name, target) {
                    (Some(n), Place::Guest { instance, .. }) => {
                        format!("{instance}:{}/{n}", dest.dir)
                    }
                    (Some(n), Place::Host(_)) => format!("{}/{n}", dest.dir),
                    (None, _) => target.to_string(),
                };
                msg::info(format!("copied {src} to {into}"));
            }
            Ok(()) => {}
            Err(e) => {
                msg::error(msg::chain(&e));
                failed = true;
            }
        }
    }
    Ok(super::each::exit_code(failed))
}
