//! Running one action over several named instances, as `stop`, `delete`
//! and friends do: each outcome is reported, one failure does not stop
//! the others, and it makes the exit code 1.
use std::path::Path;
use std::process::ExitCode;

use super::msg;
use crate::{instance, lifecycle};

pub fn each_instance(
    home: &Path,
    names: Vec<String>,
    done: &str,
    act: impl Fn(&instance::Instance) -> Result<(), lifecycle::LifecycleError>,
) -> ExitCode {
    let mut failed = false;
    for n in names {
        let r = instance::Instance::open(home, &n)
            .map_err(anyhow::Error::from)
            .and_then(|inst| Ok(act(&inst)?));
        match r {
            Ok(()) => msg::info(format!("{done} `{n}`")),
            Err(e) => {
                msg::error(msg::chain(&e));
                failed = true;
            }
        }
    }
    exit_code(failed)
}

/// 1 when any item failed (each said why), else 0.
pub fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
