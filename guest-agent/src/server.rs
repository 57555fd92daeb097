//! The vsock listener: accepts only the host (CID 2), checks the hello, and
//! hands each connection to the part that serves its purpose.
use std::sync::Arc;

use lima_proto::{
    read_frame_async, write_frame_async, AgentInfo, ControlReply, ControlRequest, Hello,
    HelloReply, Purpose, AGENT_VSOCK_PORT, HOST_CID, MAGIC, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use crate::exec::Reaper;
use crate::forward::AllowedSockets;
use crate::ports::PortTable;

/// Returned when the host asked for a shutdown.
pub struct ShutdownRequested;

/// What connections are served with.
#[derive(Clone)]
pub struct Context {
    pub reaper: Arc<Reaper>,
    pub ports: PortTable,
    pub allowed: AllowedSockets,
}

/// How many bytes the host may send on one connection before the agent has
/// read them (the vsock credit window). The kernel's default, 256 KiB, makes
/// the host wait for a credit update every 256 KiB of a bulk transfer
/// (forwarded uploads, share reads); accepted connections inherit this from
/// the listener. It is a limit, not an allocation.
const VSOCK_BUFFER: u64 = 2 << 20;

/// Sets the vsock buffer size (and its maximum, which caps it) of `socket`;
/// best effort, the default only costs speed.
fn set_vsock_buffer(socket: &impl std::os::fd::AsRawFd, bytes: u64) {
    // linux/vm_sockets.h
    const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
    const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;
    for option in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
        // SAFETY: setsockopt reads a u64 through a valid pointer of the
        // length given; the fd is the listener's, open for this call.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::AF_VSOCK,
                option,
                (&bytes as *const u64).cast(),
                size_of::<u64>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(
                "cannot set the vsock buffer size: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
    }
}

/// Serves connections until the host asks us to shut down.
pub async fn serve(info: AgentInfo, ctx: Context) -> anyhow::Result<ShutdownRequested> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_VSOCK_PORT))
        .map_err(|e| anyhow::anyhow!("cannot listen on vsock port {AGENT_VSOCK_PORT}: {e} (is the vsock transport module loaded?)"))?;
    set_vsock_buffer(&listener, VSOCK_BUFFER);
    tracing::info!("agent ready on vsock port {AGENT_VSOCK_PORT}");
    let info = Arc::new(info);
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("vsock accept: {e}");
                        continue;
                    }
                };
                if peer.cid() != HOST_CID {
                    tracing::warn!("refused a connection from CID {} (only the host, CID {HOST_CID}, may connect)", peer.cid());
                    continue;
                }
                let info = info.clone();
                let ctx = ctx.clone();
                let shutdown_tx = shutdown_tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &info, ctx, shutdown_tx).await {
                        tracing::warn!("connection from the host failed: {e:#}");
                    }
                });
            }
            _ = shutdown_rx.recv() => return Ok(ShutdownRequested),
        }
    }
}

async fn handle<S>(
    mut stream: S,
    info: &AgentInfo,
    ctx: Context,
    shutdown: mpsc::Sender<()>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + std::os::fd::AsRawFd + Unpin + Send + 'static,
{
    let Some(hello): Option<Hello> = read_frame_async(&mut stream).await? else {
        return Ok(()); // a readiness probe that hung up
    };
    if let Err(reason) = check_hello(&hello) {
        write_frame_async(
            &mut stream,
            &HelloReply {
                version: PROTOCOL_VERSION,
                result: Err(reason.clone()),
            },
        )
        .await?;
        anyhow::bail!("{reason}");
    }
    write_frame_async(
        &mut stream,
        &HelloReply {
            version: PROTOCOL_VERSION,
            result: Ok(info.clone()),
        },
    )
    .await?;
    match hello.purpose {
        Purpose::Control => {
            while let Some(req) = read_frame_async::<_, ControlRequest>(&mut stream).await? {
                match req {
                    ControlRequest::Ping => {
                        write_frame_async(&mut stream, &ControlReply::Pong).await?
                    }
                    ControlRequest::Shutdown => {
                        tracing::info!("the host asked for a shutdown");
                        write_frame_async(&mut stream, &ControlReply::ShuttingDown).await?;
                        let _ = shutdown.send(()).await;
                        return Ok(());
                    }
                    ControlRequest::Mount {
                        fstype,
                        source,
                        target,
                        options,
                        read_only,
                    } => {
                        let reply = match crate::init::mount_share(
                            &fstype, &source, &target, &options, read_only,
                        ) {
                            Ok(()) => ControlReply::Mounted,
                            Err(e) => ControlReply::Error(e),
                        };
                        write_frame_async(&mut stream, &reply).await?;
                    }
                    ControlRequest::Disk {
                        serial,
                        name,
                        format,
                        fs_type,
                        fs_args,
                        owner,
                    } => {
                        let reply = match tokio::task::spawn_blocking(move || {
                            crate::disks::prepare(&serial, &name, format, &fs_type, &fs_args, owner)
                        })
                        .await
                        {
                            Ok(Ok(())) => ControlReply::Mounted,
                            Ok(Err(e)) => ControlReply::Error(e),
                            Err(e) => ControlReply::Error(format!("the disk task failed: {e}")),
                        };
                        write_frame_async(&mut stream, &reply).await?;
                    }
                    ControlRequest::SetWatchMode(mode) => {
                        let reply = match ctx.ports.set_mode(mode) {
                            Ok(text) => ControlReply::WatchMode(text),
                            Err(e) => ControlReply::Error(e),
                        };
                        write_frame_async(&mut stream, &reply).await?;
                    }
                }
            }
            Ok(())
        }
        Purpose::Exec => crate::exec::serve(stream, ctx.reaper).await,
        Purpose::Events => crate::forward::serve_events(stream, ctx.ports, ctx.allowed).await,
        Purpose::Forward => crate::forward::serve_forward(stream, ctx.ports, ctx.allowed).await,
        Purpose::Share => crate::share::serve(stream).await,
        Purpose::Layer => crate::layer::serve(stream).await,
        Purpose::Files => crate::files::serve(stream).await,
    }
}

/// Accepts our magic and protocol version only.
fn check_hello(hello: &Hello) -> Result<(), String> {
    if hello.magic != MAGIC {
        return Err("not a lima-rs hello".into());
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported; this agent speaks version {PROTOCOL_VERSION} (update the host tools or rebuild the image)",
            hello.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks_magic_and_version() {
        assert!(check_hello(&Hello::new(Purpose::Exec)).is_ok());
        let mut h = Hello::new(Purpose::Control);
        h.version = PROTOCOL_VERSION + 1;
        assert!(check_hello(&h).unwrap_err().contains("version"));
        h.magic = *b"HTTP";
        assert!(check_hello(&h).is_err());
    }
}
