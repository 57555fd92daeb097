//! `vsockfs` shares: one Share stream per mount, served by `fs-server`.
//!
//! The host agent opens the stream (hello with purpose Share), sends
//! `ShareSetup`, and once the guest answers `Ready` (it mounted FUSE) hands
//! the stream to an `fs-server` for the mount's folder. The server runs until
//! the VM goes away.
//!
//! The VM's plan may give the shares a shared-memory device (on q35: ivshmem
//! backed by the instance's `fs-shm`); each share gets
//! [`SHM_PER_SHARE`](crate::plan::SHM_PER_SHARE) of it, mapped here and
//! announced in `ShareSetup`, and the guest moves read and write data
//! through it (see `lima_fs_server::Shm`).
//!
//! The plan may also give each share (the first
//! [`PORTS_MAX`](crate::plan::PORTS_MAX)) a virtio-serial port whose host end
//! listens on `fs-N.sock` in the instance directory. We connect to it before
//! the setup, which names the port; the guest then answers `ReadyOnPort` and
//! the server runs on the port instead of the vsock stream: under TCG a round
//! trip there costs less than half as much (see docs/decisions.md). If the
//! guest cannot open it, it answers `Ready` and the vsock stream carries the
//! share as before. `LIMA_VSOCKFS_PORTS=off` keeps shares on vsock (to
//! compare the two).
use lima_proto::errors::error_chain;
use lima_proto::fs::{ShareSetup, ShareStatus, ShmRegion};
use lima_proto::{read_frame_async, write_frame_async, Purpose};

use crate::client;
use crate::mounts::Mount;
use crate::plan::VsockfsDevices;
use crate::vsock::Transport;

/// Mounts `m`, the `nth` vsockfs share (counting from 0), with what
/// `devices` the VM has.
pub async fn mount(
    m: &Mount,
    transport: &dyn Transport,
    devices: &VsockfsDevices,
    nth: u64,
) -> Result<(), String> {
    let name = format!("mounts[{}] ({})", m.index, m.location.display());
    let server =
        lima_fs_server::Server::new(&m.location, m.writable).map_err(|e| format!("{name}: {e}"))?;
    let region = devices.region(nth).and_then(|(file, offset, len)| {
        let region = ShmRegion { offset, len };
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
    let ports_off = std::env::var("LIMA_VSOCKFS_PORTS").is_ok_and(|v| v == "off");
    let mut port = None;
    let given = devices.port(nth).filter(|_| !ports_off);
    if let Some(path) = given.map(|p| &p.socket) {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => port = Some(s),
            Err(e) => tracing::warn!(
                "{name}: cannot connect {} ({e}); the share goes over vsock",
                path.display()
            ),
        }
    }
    let (mut stream, _) = client::connect(transport, Purpose::Share)
        .await
        .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
    let setup = ShareSetup {
        tag: m.tag.clone(),
        mount_point: m.mount_point.clone(),
        writable: m.writable,
        uid: 0,
        gid: 0,
        shm: region,
        port: given.filter(|_| port.is_some()).map(|p| p.name.clone()),
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
        match given.filter(|_| port.is_some()) {
            Some(p) => p.name.as_str(),
            None => "vsock",
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
