//! `vsockfs` shares: one Share stream per mount, served by `fs-server`.
use crate::mounts::Mount;
use crate::vsock::Transport;

pub async fn mount(m: &Mount, _transport: &dyn Transport) -> Result<(), String> {
    Err(format!(
        "mounts[{}] ({}): mountType vsockfs is not available in this build; use 9p or virtiofs",
        m.index,
        m.location.display()
    ))
}
