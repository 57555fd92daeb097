//! Mounting a layer's view: `/dev/fuse` and mount(2) as shares do
//! (`share::mount`), a fuser session on a thread of its own.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, Session, SessionACL};
use lima_proto::errors::error_chain;

use super::overlay::Overlay;
use super::view::View;
use crate::share::mount::{self as fuse, FuseMount};

/// How long the kernel may take to send FUSE_INIT after the mount.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A mounted view; dropping it unmounts (lazily) and ends the session.
pub(crate) struct ViewMount {
    pub overlay: Arc<Overlay>,
    _mount: FuseMount,
}

impl Drop for ViewMount {
    fn drop(&mut self) {
        tracing::debug!(
            "layer {}: view unmounted ({} lower stats and listings)",
            self.overlay.layer.id,
            self.overlay
                .lower_calls
                .load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// Mounts `overlay` at `target` (made if missing), files shown as owned by
/// `uid`/`gid`. Blocks until the kernel's handshake is done.
pub(crate) fn mount_view(
    overlay: Arc<Overlay>,
    target: &Path,
    uid: u32,
    gid: u32,
) -> Result<ViewMount, String> {
    let fd = fuse::open_device().map_err(|e| error_chain(&e))?;
    let mount = fuse::mount(&fd, "lima-layer", target, false).map_err(|e| error_chain(&e))?;
    let view = View::new(overlay.clone(), uid, gid);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = format!("layer {}", overlay.layer.id);
    std::thread::Builder::new()
        .name("layer-fuse".into())
        .spawn(move || {
            let mut config = Config::default();
            config.acl = SessionACL::All;
            config.n_threads = Some(2);
            config.clone_fd = true;
            match Session::from_fd(view, fd, SessionACL::All, config) {
                Ok(session) => {
                    let _ = ready_tx.send(Ok(()));
                    if let Err(e) = session.run() {
                        tracing::warn!("{name}: FUSE session ended: {e}");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| {
            format!(
                "serving FUSE on {}: cannot start a thread: {e}",
                target.display()
            )
        })?;
    match ready_rx.recv_timeout(HANDSHAKE_TIMEOUT) {
        Ok(Ok(())) => Ok(ViewMount {
            overlay,
            _mount: mount,
        }),
        Ok(Err(e)) => Err(format!(
            "the FUSE handshake on {} failed: {e}",
            target.display()
        )),
        Err(_) => Err(format!(
            "no FUSE handshake on {} within {HANDSHAKE_TIMEOUT:?}",
            target.display()
        )),
    }
}
