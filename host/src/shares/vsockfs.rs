//! `vsockfs` shares: one Share stream per mount, served by `fs-server`.
//!
//! The host agent opens the stream (hello with purpose Share), sends
//! `ShareSetup`, and once the guest answers `Ready` (it mounted FUSE) hands
//! the stream to a process of its own: `lima-fs-server` for the mount's
//! folder (`lima_fs_server::process`), which confines itself to that folder
//! before it reads a request and logs to `fs-N.log`. It serves until the
//! VM goes away, and dies with us.
//!
//! The VM's plan may give the shares a shared-memory device (on q35: ivshmem
//! backed by the instance's `fs-shm`); each share gets
//! [`SHM_PER_SHARE`](crate::plan::SHM_PER_SHARE) of it, announced in
//! `ShareSetup` and handed to the server as an open file, which maps it;
//! the guest moves read and write data through it (see
//! `lima_fs_server::Shm`).
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
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use lima_fs_server::process::{self, ShmFd, Spawn};
use lima_proto::errors::error_chain;
use lima_proto::fs::{ShareSetup, ShareStatus, ShmRegion};
use lima_proto::{read_frame_async, write_frame_async, Purpose};
use tokio::task::JoinHandle;

use super::FileServers;
use crate::client;
use crate::mounts::Mount;
use crate::plan::VsockfsDevices;
use crate::vsock::{BoxStream, Transport};

/// Mounts `m`, the `nth` vsockfs share (counting from 0), with what
/// `devices` the VM has; returns the task that waits for its server.
pub async fn mount(
    m: &Mount,
    transport: &dyn Transport,
    devices: &VsockfsDevices,
    nth: u64,
    servers: &FileServers,
    (uid, gid): (u32, u32),
) -> Result<JoinHandle<()>, String> {
    let name = format!("mounts[{}] ({})", m.index, m.location.display());
    let program = servers
        .program
        .as_deref()
        .ok_or_else(|| format!("{name}: no file server program"))?;
    let shm =
        devices
            .region(nth)
            .and_then(|(file, offset, len)| match shm_file(file, offset, len) {
                Ok(f) => Some((f, ShmRegion { offset, len })),
                Err(e) => {
                    tracing::warn!("{name}: no shared memory ({e}); data goes over vsock");
                    None
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
    let setup = ShareSetup {
        tag: m.tag.clone(),
        mount_point: m.mount_point.clone(),
        writable: m.writable,
        uid,
        gid,
        shm: shm.as_ref().map(|(_, region)| *region),
        port: given.filter(|_| port.is_some()).map(|p| p.name.clone()),
        layer: None,
    };
    let (stream, status) = handshake(transport, &setup)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    // The channel the guest chose: the port, or (`None`) this stream.
    let port = match status {
        ShareStatus::Ready => None,
        ShareStatus::ReadyOnPort if port.is_some() => port,
        ShareStatus::ReadyOnPort => {
            return Err(format!(
                "{name}: the guest agent answered on a port it was not given"
            ))
        }
        ShareStatus::Failed(why) => return Err(format!("{name}: {why}")),
    };
    let over = match given.filter(|_| port.is_some()) {
        Some(p) => p.name.clone(),
        None => "vsock".to_string(),
    };
    // The server takes the channel; ours closes (and leaves our poller).
    let channel: std::io::Result<OwnedFd> = match port {
        Some(port) => {
            drop(stream);
            port.into_std().map(OwnedFd::from)
        }
        None => {
            let fd = stream.as_fd().try_clone_to_owned();
            drop(stream);
            fd
        }
    };
    let channel = channel.map_err(|e| format!("{name}: {e}"))?;
    let log = servers.log(nth);
    let running = serve(
        Spawn {
            program,
            root: &m.location,
            writable: m.writable,
            stream: channel,
            shm: shm.map(|(file, region)| ShmFd {
                file,
                offset: region.offset,
                len: region.len,
            }),
            log: &log,
            confine: servers.confine,
            test_hook: None,
        },
        &name,
    )
    .await?;
    tracing::info!(
        "mounted {} on {} (vsockfs, over {over}), served by lima-fs-server pid {} ({})",
        m.location.display(),
        m.mount_point,
        running.child.id().unwrap_or(0),
        running.confinement.to_line(),
    );
    Ok(tokio::spawn(watch(running.child, name, log)))
}

/// Opens a Share stream and sends `setup`; returns the stream and the
/// guest's answer once it is `Ready`, `ReadyOnPort` or `Failed`. Used by
/// the instance's mounts and by `limactl shell --sync` (a layer's lower
/// share).
pub async fn handshake(
    transport: &dyn Transport,
    setup: &ShareSetup,
) -> Result<(BoxStream, ShareStatus), String> {
    let (mut stream, _) = client::connect(transport, Purpose::Share)
        .await
        .map_err(|e| error_chain(&e))?;
    write_frame_async(&mut stream, setup)
        .await
        .map_err(|e| e.to_string())?;
    match read_frame_async::<_, ShareStatus>(&mut stream).await {
        Ok(Some(status)) => Ok((stream, status)),
        Ok(None) => {
            Err("the guest agent closed the share stream (does it support vsockfs shares?)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Starts the confined `lima-fs-server` for a share and waits until it
/// serves; a partial confinement is a warning naming the share. The child
/// dies with the calling thread (see [`process::spawn`]).
pub async fn serve(s: Spawn<'_>, name: &str) -> Result<process::Running, String> {
    let running = process::spawn(s)
        .await
        .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
    if let Some(w) = running.confinement.warning() {
        tracing::warn!("{name}: {w}");
    }
    Ok(running)
}

/// The shared-memory file, open for the server, if the region fits in it.
fn shm_file(file: &std::path::Path, offset: u64, len: u64) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let size = f.metadata()?.len();
    if offset.checked_add(len).is_none_or(|end| end > size) || len == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: {len} bytes at {offset} do not fit its {size} bytes",
                file.display()
            ),
        ));
    }
    Ok(f)
}

/// Waits for a share's server to end: at the VM's end it exits by itself
/// (the guest closed the stream); anything else is logged with its reason.
async fn watch(mut child: tokio::process::Child, name: String, log: PathBuf) {
    match child.wait().await {
        Ok(st) if st.success() => tracing::debug!("{name}: file server ended"),
        Ok(st) => tracing::warn!(
            "{name}: file server stopped ({st}): {} (see {})",
            process::log_tail(&log, 3),
            log.display()
        ),
        Err(e) => tracing::warn!("{name}: cannot wait for the file server: {e}"),
    }
}
