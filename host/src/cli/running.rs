//! The instance a command works in, with Lima's messages when it does not
//! exist or is not running (`shell`, `copy`, `sync`, `mcp serve`).
use std::path::Path;

use anyhow::bail;

use crate::instance::Instance;

/// The instance `name`, which must exist.
pub fn existing(home: &Path, name: &str) -> anyhow::Result<Instance> {
    let inst = Instance::new(home, name)?;
    if !inst.exists() {
        bail!("instance \"{name}\" does not exist, run `limactl create {name}` to create a new instance");
    }
    Ok(inst)
}

/// The instance `name`, which must exist and run.
pub fn running(home: &Path, name: &str) -> anyhow::Result<Instance> {
    let inst = existing(home, name)?;
    if !inst.host_agent_running() {
        bail!("instance \"{name}\" is stopped, run `limactl start {name}` to start the instance");
    }
    Ok(inst)
}
