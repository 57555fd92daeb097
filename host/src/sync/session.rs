//! The `--sync` session's share: `DIR` served read-only to the guest by a
//! confined `lima-fs-server` of this `limactl` process, the share's setup
//! naming the layer. The guest agent mounts it out of sight as the
//! layer's lower folder and its copy-on-write view at `DIR`. Ending the
//! server (dropping [`Share`], or this process dying) ends the share: the
//! view goes, the layer stays.
use std::os::fd::AsFd;
use std::path::Path;

use lima_fs_server::process::Spawn;
use lima_proto::fs::{ShareSetup, ShareStatus};

use super::layer::LayerClient;
use crate::vsock::Transport;

/// The running lower share; dropping it stops the server.
pub struct Share {
    child: tokio::process::Child,
}

impl Share {
    /// Stops the server and waits for it, so that the guest has seen the
    /// share end before the review reads the layer.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Opens layer `id`'s lower share of `dir` for the guest user
/// (`owner`: uid, gid) and starts its server; returns once the guest
/// mounted the view.
pub async fn open(
    transport: &dyn Transport,
    dir: &Path,
    id: &str,
    owner: (u32, u32),
    log: &Path,
) -> Result<Share, String> {
    let (program, confine) = crate::shares::server_program()?;
    let mount_point = dir
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", dir.display()))?
        .to_string();
    let setup = ShareSetup {
        tag: format!("sync-{id}"),
        mount_point,
        writable: false,
        uid: owner.0,
        gid: owner.1,
        shm: None,
        port: None,
        layer: Some(id.to_string()),
    };
    let name = format!("--sync {}", dir.display());
    let (stream, status) = crate::shares::handshake(transport, &setup)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    match status {
        ShareStatus::Ready => {}
        ShareStatus::ReadyOnPort => {
            return Err(format!(
                "{name}: the guest agent answered on a port it was not given"
            ))
        }
        ShareStatus::Failed(why) => return Err(format!("{name}: the guest agent: {why}")),
    }
    let channel = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("{name}: {e}"))?;
    drop(stream);
    let running = crate::shares::serve(
        Spawn {
            program: &program,
            root: dir,
            writable: false,
            stream: channel,
            shm: None,
            log,
            confine,
            test_hook: None,
        },
        &name,
    )
    .await?;
    Ok(Share {
        child: running.child,
    })
}

/// Waits until the guest lists layer `id` as mounted (its view is at
/// `DIR`), so that the command never runs in a bare folder.
pub async fn wait_mounted<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    layer: &mut LayerClient<S>,
    id: &str,
    within: std::time::Duration,
) -> Result<(), String> {
    wait_view(layer, id, true, within).await
}

/// Waits until the guest no longer lists layer `id` as mounted: it
/// unmounts the view once the share's stream ends, and the review must
/// read a layer nothing writes to any more.
pub async fn wait_unmounted<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    layer: &mut LayerClient<S>,
    id: &str,
    within: std::time::Duration,
) -> Result<(), String> {
    wait_view(layer, id, false, within).await
}

async fn wait_view<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    layer: &mut LayerClient<S>,
    id: &str,
    mounted: bool,
    within: std::time::Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let layers = layer
            .list()
            .await
            .map_err(|e| lima_proto::errors::error_chain(&e))?;
        if layers.iter().any(|l| l.id == id && l.mounted) == mounted {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let what = if mounted { "mount" } else { "unmount" };
            return Err(format!(
                "the guest agent did not {what} the view of layer {id} within {within:?}"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
