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
use std::path::Path;

use lima_proto::fs::{ShareSetup, ShareStatus, ShmRegion};
use lima_proto::{read_frame_async, write_frame_async, Purpose};

use crate::client;
use crate::mounts::Mount;
use crate::vsock::Transport;

/// Shared memory per share: 32 slots of 1 MiB, twice the readahead window.
pub const SHM_PER_SHARE: u64 = 32 << 20;
/// Shares that get shared memory; later ones carry their data over vsock.
pub const SHM_SHARES_MAX: u64 = 8;

/// Mounts `m`, the `nth` vsockfs share (counting from 0); `shm` is the
/// backing file of the VM's ivshmem device, if it has one.
pub async fn mount(
    m: &Mount,
    transport: &dyn Transport,
    shm: Option<&Path>,
    nth: u64,
) -> Result<(), String> {
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
    };
    write_frame_async(&mut stream, &setup)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    match read_frame_async::<_, ShareStatus>(&mut stream).await {
        Ok(Some(ShareStatus::Ready)) => {}
        Ok(Some(ShareStatus::Failed(why))) => return Err(format!("{name}: {why}")),
        Ok(None) => {
            return Err(format!(
                "{name}: the guest agent closed the share stream (does it support vsockfs shares?)"
            ))
        }
        Err(e) => return Err(format!("{name}: {e}")),
    }
    tracing::info!(
        "mounted {} on {} (vsockfs)",
        m.location.display(),
        m.mount_point
    );
    let tag = m.tag.clone();
    tokio::spawn(async move {
        if let Err(e) = server.serve(stream).await {
            tracing::warn!("share {tag} ended: {e}");
        }
    });
    Ok(())
}
