//! Setting up an instance's shared folders once the guest agent answers:
//! 9p and virtiofs are devices QEMU (or virtiofsd) already provides, so the
//! guest only has to mount them; `vsockfs` opens a Share stream per mount
//! and serves it with `fs-server` (`vsockfs.rs`).
mod vsockfs;

use lima_proto::errors::error_chain;
use lima_proto::{ControlReply, ControlRequest};

use crate::client;
use crate::mounts::{Mount, MountType};
use crate::plan::VsockfsDevices;
use crate::vsock::Transport;

/// Mounts everything; the error names the mount that failed. `devices` are
/// what the VM's plan gave vsockfs shares.
pub async fn mount_all(
    mounts: &[Mount],
    transport: &dyn Transport,
    devices: &VsockfsDevices,
) -> Result<(), String> {
    let mut vsockfs = 0;
    for m in mounts {
        let (fstype, options) = match m.kind {
            MountType::NineP => (
                "9p",
                format!(
                    "trans=virtio,version=9p2000.L,msize={},cache={}",
                    m.msize, m.cache_9p
                ),
            ),
            MountType::Virtiofs => ("virtiofs", String::new()),
            MountType::Vsockfs => {
                vsockfs::mount(m, transport, devices, vsockfs).await?;
                vsockfs += 1;
                continue;
            }
        };
        let req = ControlRequest::Mount {
            fstype: fstype.into(),
            source: m.tag.clone(),
            target: m.mount_point.clone(),
            options,
            read_only: !m.writable,
        };
        match client::control(transport, req).await {
            Ok(ControlReply::Mounted) => {
                tracing::info!(
                    "mounted {} on {} ({fstype})",
                    m.location.display(),
                    m.mount_point
                );
            }
            Ok(ControlReply::Error(e)) => {
                return Err(format!(
                    "mounts[{}] ({}): {e}",
                    m.index,
                    m.location.display()
                ))
            }
            Ok(other) => return Err(format!("mounts[{}]: unexpected reply {other:?}", m.index)),
            Err(e) => return Err(format!("mounts[{}]: {}", m.index, error_chain(&e))),
        }
    }
    Ok(())
}
