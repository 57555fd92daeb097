//! `vsockfs` shares: one Share stream per mount, served by `fs-server`.
//!
//! The host agent opens the stream (hello with purpose Share), sends
//! `ShareSetup`, and once the guest answers `Ready` (it mounted FUSE) hands
//! the stream to an `fs-server` for the mount's folder. The server runs until
//! the VM goes away.
//!
//! On q35 the VM also has an ivshmem device backed by the instance's
//! `fs-shm` file; each share gets [`SHM_PER_SHARE`] of it, mapped here and
//! announced in `ShareSetup`, and the guest moves read and write data
//! through it (see `lima_fs_server::Shm`).
//!
//! The VM also has a virtio-serial port per share (the first
//! [`PORTS_MAX`]), whose QEMU end listens on `fs-N.sock` in the instance
//! directory. We connect to it before the setup, which names the port; the
//! guest then answers `ReadyOnPort` and the server runs on the port
//! instead of the vsock stream: under TCG a round trip there costs less
//! than half as much (see docs/decisions.md). If the guest cannot open it,
//! it answers `Ready` and the vsock stream carries the share as before.
use std::path::{Path, PathBuf};

use lima_proto::fs::{ShareSetup, ShareStatus, ShmRegion};
use lima_proto::{read_frame_async, write_frame_async, Purpose};

use crate::client;
use crate::mounts::Mount;
use crate::vsock::Transport;

/// Shared memory per share: 32 slots of 1 MiB, twice the readahead window.
pub const SHM_PER_SHARE: u64 = 32 << 20;
/// Shares that get shared memory; later ones carry their data over vsock.
pub const SHM_SHARES_MAX: u64 = 8;
/// Shares that get a virtio-serial port (one device holds 31).
pub const PORTS_MAX: u64 = 30;

/// The port of the `nth` vsockfs share, as the guest sees its name.
pub fn port_name(nth: u64) -> String {
    format!("lima.fs.{nth}")
}

/// The Unix socket QEMU listens on for the `nth` share's port.
pub fn port_socket(instance_dir: &Path, nth: u64) -> PathBuf {
    instance_dir.join(format!("fs-{nth}.sock"))
}

/// Removes the ports' sockets a VM of `instance_dir` may have left.
pub fn remove_port_sockets(instance_dir: &Path) {
    for n in 0..PORTS_MAX {
        let _ = std::fs::remove_file(port_socket(instance_dir, n));
    }
}

/// What the VM was given for vsockfs shares besides vsock.
#[derive(Debug, Default, Clone)]
pub struct ShareDevices {
    /// Backing file of the VM's ivshmem device.
    pub shm: Option<PathBuf>,
    /// Directory of the ports' sockets ([`port_socket`]).
    pub ports: Option<PathBuf>,
}

impl ShareDevices {
    /// What the VM of `inst` has, judged by the files its launch left.
    pub fn of(inst: &crate::instance::Instance) -> ShareDevices {
        let shm = inst.path(crate::instance::FS_SHM);
        let dir = inst.path("");
        // LIMA_VSOCKFS_PORTS=off keeps shares on vsock (to compare the two).
        let ports_off = std::env::var("LIMA_VSOCKFS_PORTS").is_ok_and(|v| v == "off");
        ShareDevices {
            shm: shm.exists().then_some(shm),
            ports: port_socket(&dir, 0)
                .exists()
                .then_some(dir)
                .filter(|_| !ports_off),
        }
    }
}

/// Mounts `m`, the `nth` vsockfs share (counting from 0), with what
/// `devices` the VM has.
pub async fn mount(
    m: &Mount,
    transport: &dyn Transport,
    devices: &ShareDevices,
    nth: u64,
) -> Result<(), String> {
    let shm = devices.shm.as_deref();
    let name = format!("mounts[{}] ({})", m.index, m.location.display());
    let server =
        lima_fs_server::Server::new(&m.location, m.writable).map_err(|e| format!("{name}: {e}"))?;
    let region = shm.filter(|_| nth < SHM_SHARES_MAX).and_then(|file| {
        let region = ShmRegion {
            offset: nth * SHM_PER_SHARE,
            len: SHM_PER_SHARE,
        };
        match lima_fs_server::Shm::map(file, region.offset, region.len) {
            Ok(mapped) => {
                server.attach_shm(mapped);
                Some(region)
            }
            Err(e) => {
                tracing::warn!("{name}: no shared memory ({e}); data goes over vsock");
                None
            }
        }
    });
    // Connected before the guest is told of it: its reads end while
    // nobody is at our end.
    let mut port = None;
    if let Some(dir) = devices.ports.as_deref().filter(|_| nth < PORTS_MAX) {
        let path = port_socket(dir, nth);
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => port = Some(s),
            Err(e) => tracing::warn!(
                "{name}: cannot connect {} ({e}); the share goes over vsock",
                path.display()
            ),
        }
    }
    let (mut stream, _) = client::connect(transport, Purpose::Share)
        .await
        .map_err(|e| format!("{name}: {}", crate::hostagent::error_chain(&e)))?;
    let setup = ShareSetup {
        tag: m.tag.clone(),
        mount_point: m.mount_point.clone(),
        writable: m.writable,
        uid: 0,
        gid: 0,
        shm: region,
        port: port.as_ref().map(|_| port_name(nth)),
    };
    write_frame_async(&mut stream, &setup)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    // The channel the guest chose: the port, or (`None`) this stream.
    let port = match read_frame_async::<_, ShareStatus>(&mut stream).await {
        Ok(Some(ShareStatus::Ready)) => None,
        Ok(Some(ShareStatus::ReadyOnPort)) if port.is_some() => port,
        Ok(Some(ShareStatus::ReadyOnPort)) => {
            return Err(format!(
                "{name}: the guest agent answered on a port it was not given"
            ))
        }
        Ok(Some(ShareStatus::Failed(why))) => return Err(format!("{name}: {why}")),
        Ok(None) => {
            return Err(format!(
                "{name}: the guest agent closed the share stream (does it support vsockfs shares?)"
            ))
        }
        Err(e) => return Err(format!("{name}: {e}")),
    };
    tracing::info!(
        "mounted {} on {} (vsockfs, over {})",
        m.location.display(),
        m.mount_point,
        if port.is_some() {
            port_name(nth)
        } else {
            "vsock".to_string()
        }
    );
    let tag = m.tag.clone();
    tokio::spawn(async move {
        let served = match port {
            Some(port) => {
                drop(stream);
                server.serve(port).await
            }
            None => server.serve(stream).await,
        };
        if let Err(e) = served {
            tracing::warn!("share {tag} ended: {e}");
        }
    });
    Ok(())
}
