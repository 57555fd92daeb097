//! Setting up an instance's shared folders once the guest agent answers:
//! 9p and virtiofs are devices QEMU (or virtiofsd) already provides, so the
//! guest only has to mount them; `vsockfs` opens a Share stream per mount
//! and serves it with a confined `lima-fs-server` process (`vsockfs.rs`).
mod vsockfs;

pub use vsockfs::{handshake, serve};

use std::path::PathBuf;
use std::time::Duration;

use lima_fs_server::confine::Mode;
use lima_proto::errors::error_chain;
use lima_proto::{ControlReply, ControlRequest};
use tokio::task::JoinHandle;

use crate::client;
use crate::instance::Instance;
use crate::mounts::{Mount, MountType};
use crate::plan::VsockfsDevices;
use crate::vsock::Transport;

/// How vsockfs shares' file servers are started, settled before the VM
/// boots so that a missing binary or a bad `LIMA_FS_CONFINE` fails first.
pub struct FileServers {
    /// `lima-fs-server`; `None` when no mount is vsockfs.
    program: Option<PathBuf>,
    confine: Mode,
    instance: Instance,
}

/// The `lima-fs-server` binary and how to confine it (`LIMA_FS_CONFINE`).
pub fn server_program() -> Result<(PathBuf, Mode), String> {
    let confine = Mode::from_env().map_err(|e| error_chain(&e))?;
    let program = crate::programs::fs_server().map_err(|e| error_chain(&e))?;
    Ok((program, confine))
}

impl FileServers {
    pub fn prepare(mounts: &[Mount], inst: &Instance) -> Result<FileServers, String> {
        let confine = Mode::from_env().map_err(|e| error_chain(&e))?;
        let program = if mounts.iter().any(|m| m.kind == MountType::Vsockfs) {
            Some(server_program()?.0)
        } else {
            None
        };
        Ok(FileServers {
            program,
            confine,
            instance: inst.clone(),
        })
    }

    fn log(&self, nth: u64) -> PathBuf {
        self.instance.share_server_log(nth)
    }
}

/// The running file servers of the vsockfs shares (each one's waiting task).
#[derive(Default)]
pub struct Served(Vec<JoinHandle<()>>);

impl Served {
    /// Once the VM is gone: each server ends when the guest's end of its
    /// stream closes; one that has not within `grace` is killed. Nothing
    /// is lost either way: every write it was asked for was made before
    /// its reply.
    pub async fn stop(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in self.0 {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                // Dropping its child kills the server (kill_on_drop).
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Mounts everything; the error names the mount that failed. `devices` are
/// what the VM's plan gave vsockfs shares; `owner` (uid, gid) is the guest
/// user, who owns the files of vsockfs shares in the guest (as the host
/// user owns them on the host).
pub async fn mount_all(
    mounts: &[Mount],
    transport: &dyn Transport,
    devices: &VsockfsDevices,
    servers: &FileServers,
    owner: (u32, u32),
) -> Result<Served, String> {
    let mut served = Served::default();
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
                served
                    .0
                    .push(vsockfs::mount(m, transport, devices, vsockfs, servers, owner).await?);
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
    Ok(served)
}
