//! The `--sync` session's share: `DIR` served read-only to the guest by a
//! confined `lima-fs-server` of this `limactl` process, the share's setup
//! naming the layer. The guest agent mounts it out of sight as the
//! layer's lower folder and its copy-on-write view at `DIR`. Ending the
//! server (dropping [`Share`], or this process dying) ends the share: the
//! view goes, the layer stays.
//!
//! # Ending the stream
//!
//! The guest must hear that the stream ended, or its view stays mounted.
//! Killing the server is not enough: a socket closed with data still
//! unread in it (requests the guest sent meanwhile, e.g. the primer's
//! listings) makes the peer's next read fail with `ECONNRESET` rather
//! than end, and `vhost-device-vsock` (0.3) drops such a read error on the
//! floor: it neither resets the guest's connection nor watches the socket
//! again, so the guest waits for ever. The server itself ends its stream
//! properly when it gets SIGTERM (see `lima_fs_server::process`): that is
//! how [`Share::stop`] stops it, and its parent-death signal, should this
//! process be killed. For a server that dies by itself (a crash, a
//! seccomp stop), this process also keeps a copy of the channel, and once
//! the server is gone shuts its sending side down (the relay reads a
//! plain end and tells the guest), reads and discards what still comes
//! until the relay closes its end (the guest closed the connection), and
//! only then closes it; after a SIGTERM the server did all that already.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use lima_fs_server::process::Spawn;
use lima_proto::fs::{ShareSetup, ShareStatus};

use super::layer::LayerClient;
use crate::vsock::Transport;

/// How long the guest gets to close the connection once told the stream
/// ended; past that the channel is closed anyway.
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// The running lower share; dropping it stops the server.
pub struct Share {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ended: tokio::task::JoinHandle<()>,
}

impl Share {
    /// Watches `child`, the server of `channel` (our copy of its stream):
    /// when it ends, or is stopped, the channel is closed as the module
    /// says.
    pub(crate) fn watch(child: tokio::process::Child, channel: OwnedFd, name: String) -> Share {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let ended = tokio::spawn(watch(child, channel, stopped, name));
        Share {
            stop: Some(stop),
            ended,
        }
    }

    /// Stops the server and ends the stream, so that the guest has seen
    /// the share end before the review reads the layer.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.ended).await;
    }
}

async fn watch(
    mut child: tokio::process::Child,
    channel: OwnedFd,
    stopped: tokio::sync::oneshot::Receiver<()>,
    name: String,
) {
    tokio::select! {
        st = child.wait() => tracing::debug!("{name}: the file server ended by itself ({})",
            st.map_or_else(|e| e.to_string(), |st| st.to_string())),
        // Stopped, or the share dropped: the server ends the stream
        // (SIGTERM), within its own bound; a server that does not is killed.
        _ = stopped => {
            lima_fs_server::process::stop(&child);
            let bound = lima_fs_server::process::END_WITHIN + Duration::from_secs(5);
            if tokio::time::timeout(bound, child.wait()).await.is_err() {
                tracing::warn!("{name}: the file server did not end within {bound:?}; killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
    let started = Instant::now();
    let how = tokio::task::spawn_blocking(move || close_channel(channel, CLOSE_WITHIN))
        .await
        .unwrap_or_else(|e| format!("the closing thread failed: {e}"));
    tracing::debug!("{name}: stream closed after {:?}: {how}", started.elapsed());
}

/// Ends a stream whose server is gone: our sending side shut down, what
/// still arrives read and discarded until the far end closes (or
/// `within` passed), then closed with nothing unread. Says how it ended.
pub(crate) fn close_channel(channel: OwnedFd, within: Duration) -> String {
    let fd = channel.as_raw_fd();
    // SAFETY: shutdown on a descriptor `channel` holds open.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
        return format!("shutdown: {}", std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 64 << 10];
    let mut discarded = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return format!("the far end stayed open ({discarded} bytes discarded)");
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return format!("poll: {e}");
        }
        // SAFETY: `buf` is writable for its length; `fd` is open.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        match n {
            0 => return format!("the far end closed ({discarded} bytes discarded)"),
            n if n > 0 => discarded += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                    _ => return format!("{e} ({discarded} bytes discarded)"),
                }
            }
        }
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
    let (channel, ours) = stream
        .as_fd()
        .try_clone_to_owned()
        .and_then(|c| Ok((c, stream.as_fd().try_clone_to_owned()?)))
        .map_err(|e| format!("{name}: {e}"))?;
    drop(stream);
    let running = match crate::shares::serve(
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
    .await
    {
        Ok(running) => running,
        Err(e) => {
            // The guest mounted the view: it must hear the end too.
            let _ = tokio::task::spawn_blocking(move || close_channel(ours, CLOSE_WITHIN)).await;
            return Err(e);
        }
    };
    Ok(Share::watch(running.child, ours, name))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;

    /// `program` holding `fd` open as a file server holds its stream.
    fn holder(program: &[&str], fd: &OwnedFd) -> tokio::process::Child {
        let raw = fd.as_raw_fd();
        let mut cmd = std::process::Command::new(program[0]);
        cmd.args(&program[1..]);
        // SAFETY: only fcntl, on a number taken before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// The relay's side (`vhost-device-vsock`): requests the server never
    /// read, then how its next read ends; then more requests, and the
    /// guest closes the connection.
    fn relay(relay: UnixStream) -> std::thread::JoinHandle<Result<usize, std::io::ErrorKind>> {
        std::thread::spawn(move || {
            let mut relay = relay;
            relay.write_all(&[1u8; 4096]).unwrap();
            let mut buf = [0u8; 16];
            let end = relay.read(&mut buf).map_err(|e| e.kind());
            let _ = relay.write_all(&[2u8; 4096]);
            end
        })
    }

    #[tokio::test]
    async fn a_stopped_share_ends_its_stream_with_a_plain_end_even_with_requests_unread() {
        let (theirs, ours) = UnixStream::pair().unwrap();
        let ours = OwnedFd::from(ours);
        let share = Share::watch(holder(&["sleep", "600"], &ours), ours, "test".into());
        let relay = relay(theirs);
        // Killing the only holder of the stream would make that read fail
        // with ECONNRESET, which the relay ignores.
        share.stop().await;
        assert_eq!(relay.join().unwrap(), Ok(0));
    }

    #[tokio::test]
    async fn a_server_that_dies_by_itself_ends_the_stream_too() {
        let (theirs, ours) = UnixStream::pair().unwrap();
        let ours = OwnedFd::from(ours);
        let (tx, rx) = std::sync::mpsc::channel();
        let relay = std::thread::spawn(move || {
            let mut relay = theirs;
            relay.write_all(&[1u8; 4096]).unwrap();
            // The server is gone before anybody stops the share.
            let mut buf = [0u8; 16];
            let end = relay.read(&mut buf).map_err(|e| e.kind());
            tx.send(end).unwrap();
        });
        let share = Share::watch(
            holder(&["sh", "-c", "sleep 0.2"], &ours),
            ours,
            "test".into(),
        );
        let end = tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
        assert_eq!(end, Ok(0));
        relay.join().unwrap();
        share.stop().await;
    }
}
