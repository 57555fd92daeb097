//! `vsockfs` shares: one Share stream per mount, served by `fs-server`.
//!
//! The host agent opens the stream (hello with purpose Share), sends
//! `ShareSetup`, and once the guest answers `Ready` (it mounted FUSE) hands
//! the stream to an `fs-server` for the mount's folder. The server runs until
//! the VM goes away.
use lima_proto::fs::{ShareSetup, ShareStatus};
use lima_proto::{read_frame_async, write_frame_async, Purpose};

use crate::client;
use crate::mounts::Mount;
use crate::vsock::Transport;

pub async fn mount(m: &Mount, transport: &dyn Transport) -> Result<(), String> {
    let name = format!("mounts[{}] ({})", m.index, m.location.display());
    let server =
        lima_fs_server::Server::new(&m.location, m.writable).map_err(|e| format!("{name}: {e}"))?;
    let (mut stream, _) = client::connect(transport, Purpose::Share)
        .await
        .map_err(|e| format!("{name}: {}", crate::hostagent::error_chain(&e)))?;
    let setup = ShareSetup {
        tag: m.tag.clone(),
        mount_point: m.mount_point.clone(),
        writable: m.writable,
        uid: 0,
        gid: 0,
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
