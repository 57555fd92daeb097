//! Shared folders: the guest half of `lima_proto::fs`. The host opens a
//! Share stream and sends a [`ShareSetup`]; we mount a FUSE filesystem at its
//! mount point and turn each kernel request into a protocol request, on the
//! share's virtio-serial port if the setup names one we can open (see
//! [`port`]) or else on the same stream, until that closes; then we detach
//! the mount.
//!
//! # Threading
//!
//! ```text
//!  kernel ── /dev/fuse ──▶ 2 fuser threads ──▶ Client::call_then: id → callback
//!     ▲                    (cloned fds; never     │ (reads: a tokio task per request)
//!     │                     wait for the host)    ▼
//!     └──── reply written by the callback ◀── reader loop ◀── stream ◀── writer task
//!                                               │
//!                                               └─ invalidations ─▶ invalidation thread
//! ```
//!
//! fuser reads `/dev/fuse` on two threads, each on its own cloned fd.
//! Answers the agent knows (listed names, local readdirs) are given
//! right there; everything else becomes a request whose reply object goes
//! with a callback into the client's table, so the thread goes straight back
//! to the device and any number of requests (readahead, async reads,
//! parallel lookups) are in flight at once; the host answers in any order.
//! One writer task owns the write half and batches whatever frames are
//! queued into one flush; the reader loop runs each reply's callback as it
//! arrives (no task to wake: under TCG each wake-up is a good part of a
//! round trip), except reads, whose 1 MiB replies are handed on by tasks of
//! their own so readahead's replies reach the kernel in parallel.
//! Callbacks never block. Invalidations run on a thread of their own: the
//! kernel may block them on a page or directory lock held by a request that
//! is waiting for a reply, and the reader loop must stay free to deliver it.
//!
//! # Caching
//!
//! The kernel caches entries, negative entries, attributes, symlink targets,
//! directory listings and file pages for `TTL` (an hour, `fs/state.rs`) and keeps
//! pages across opens (`FOPEN_KEEP_CACHE`): a warm tree is served without a
//! round trip. Coherence with the host comes from the host's invalidations
//! (`InvalidateNode` drops a node's attributes and pages, `InvalidateEntry` a
//! name), plus a check at open: a getattr runs beside the open, and if the
//! file's mtime or size differ from what the kernel was last told (and not
//! because of our own writes), the open drops the page cache and the cached
//! attributes. Writes are not cached (no writeback cache): each one reaches
//! the host before `write(2)` returns, so host tools see guest writes at once.
//! The host does not report entry changes the guest made through it (the
//! kernel and [`cache`] already know them; see fs-server's `watch`).
//!
//! The kernel drops a directory's attributes after each entry it makes in
//! it, and needs them for the next create's permission check; the host's
//! reply to a create, mkdir, symlink or link carries them, and [`fresh`]
//! answers that one getattr when nothing else changed the directory meanwhile.
//!
//! Below the kernel, [`cache`] keeps listings of directories in which the
//! kernel looks names up one by one: fetched once with attributes
//! (readdirplus), they answer later lookups there, positive and negative,
//! without a round trip; host invalidations and our own changes keep them
//! current. Closing a file costs no round trip either: the first `FLUSH` is
//! refused as not implemented, so the kernel sends no more (see
//! [`fs::ShareFs`]'s `flush`), and `RELEASE` goes to the host without
//! anybody waiting for it.
//!
//! # Sync layers
//!
//! A setup that names a [`ShareSetup::layer`] is mounted read-only at
//! `/run/lima-guest-agent/layers/ID/lower` instead, and the layer's
//! copy-on-write view ([`crate::layer`]) at the mount point; `Ready` means
//! both are up. When the stream ends the view and then the share are
//! unmounted, and the layer stays on the guest's disk for the host to
//! review, apply or discard over a Layer stream.
//!
//! Files appear owned by the share's `uid`/`gid`; the kernel checks
//! permissions against the reported modes (`default_permissions`); chown is
//! accepted and ignored. The root's mode until the host's first reply
//! about it is applied is [`mount::ROOT_PLACEHOLDER_MODE`] (a reply the
//! kernel drops because a host invalidation overtook it leaves that). flock(2) locks stay inside the guest (fuser cannot
//! tell them from POSIX locks, which do go to the host).
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, INodeNo, Notifier, Session, SessionACL};
use lima_proto::errors::error_chain;
use lima_proto::fs::{FsToGuest, ShareSetup, ShareStatus, MAX_IO};
use lima_proto::sync::lock;
use lima_proto::{read_frame, read_frame_async, write_frame_async, FrameError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::{AsyncRead, AsyncWrite};

mod cache;
mod client;
mod fresh;
mod fs;
#[cfg(test)]
mod fs_server_tests;
pub(crate) mod mount;
mod port;
mod prime;
mod shm;
#[cfg(test)]
mod tests;

use client::Client;
pub(crate) use mount::unescape;

/// How long the kernel may take to send FUSE_INIT after the mount.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads serving kernel requests.
const FUSE_THREADS: usize = 2;
/// Read buffer for the stream: holds several 1 MiB replies.
const READ_BUFFER: usize = 4 << 20;

enum Invalidation {
    Node(u64),
    Entry(u64, Vec<u8>),
}

/// Serves one share stream (positioned after the hello) until it closes.
pub async fn serve<S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static>(
    stream: S,
) -> anyhow::Result<()> {
    let mut stream = stream;
    let Some(setup): Option<ShareSetup> = read_frame_async(&mut stream).await? else {
        return Ok(());
    };
    let tag = setup.tag.clone();
    // A port of its own if the host connected one; this stream otherwise.
    let port = match setup.port.clone() {
        Some(name) => match tokio::task::spawn_blocking(move || port::open(&name)).await? {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("share {tag}: {e}; serving it over vsock");
                None
            }
        },
        None => None,
    };
    let client = Client::new();
    // A sync layer: the share goes out of sight, the layer's view at its
    // mount point (see `crate::layer`).
    let lower_setup = match &setup.layer {
        Some(id) => match crate::layer::store::check_id(id).and_then(|()| private_lowers()) {
            Ok(()) => ShareSetup {
                mount_point: crate::layer::lower_path(id).to_string_lossy().into_owned(),
                writable: false,
                ..setup.clone()
            },
            Err(reason) => {
                tracing::warn!("share {tag}: {reason}");
                write_frame_async(&mut stream, &ShareStatus::Failed(reason)).await?;
                return Ok(());
            }
        },
        None => setup.clone(),
    };
    let running = match start(&lower_setup, client.clone()).await {
        Ok(running) => running,
        Err(reason) => {
            tracing::warn!("share {tag}: {reason}");
            write_frame_async(&mut stream, &ShareStatus::Failed(reason)).await?;
            return Ok(());
        }
    };
    let view = match &setup.layer {
        Some(id) => match start_layer_view(&setup, id, &lower_setup.mount_point).await {
            Ok(view) => Some(view),
            Err(reason) => {
                tracing::warn!("share {tag}: {reason}");
                lock(&running.shared.primer).take();
                drop(running.mount);
                write_frame_async(&mut stream, &ShareStatus::Failed(reason)).await?;
                return Ok(());
            }
        },
        None => None,
    };
    let status = match port {
        Some(_) => ShareStatus::ReadyOnPort,
        None => ShareStatus::Ready,
    };
    write_frame_async(&mut stream, &status).await?;
    tracing::info!(
        "share {tag}: mounted at {} ({})",
        setup.mount_point,
        if setup.writable {
            "read-write"
        } else {
            "read-only"
        }
    );
    // Best effort, after the handshake (which caps readahead at 128 KiB).
    running.mount.set_readahead_kib(READAHEAD_KIB);

    // From here on the stream is a blocking socket of ours (or the port):
    // frames are written by whichever thread sends them and read by a
    // thread that hands each reply on at once (see `client`).
    let socket = match port.map_or_else(|| take_over(stream), Ok) {
        Ok(socket) => socket,
        Err(e) => {
            // Nothing went through the mount yet: give up on it.
            tracing::warn!("share {tag}: cannot take over the stream: {e}");
            lock(&running.shared.primer).take();
            return Err(anyhow::Error::new(e).context("taking over the share stream"));
        }
    };
    let invalidations = spawn_invalidator(running.notifier, running.shared.clone(), &tag);
    let (done, finished) = tokio::sync::oneshot::channel();
    let spawned = socket.try_clone().and_then(|sink| {
        client.attach(client::Sink::new(sink)?)?;
        let (client, shared) = (client.clone(), running.shared.clone());
        std::thread::Builder::new()
            .name("share-reader".into())
            .spawn(move || {
                let _ = done.send(read_loop(socket, &client, &shared, &invalidations));
            })
    });
    let result = match spawned {
        Ok(_) => finished
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the share reader thread died"))),
        Err(e) => Err(anyhow::Error::new(e).context("starting the share reader")),
    };
    client.close();
    // Ends the priming thread, which holds the mount's root open.
    lock(&running.shared.primer).take();
    // The view first: it reads the lower mount. (Off the runtime: the
    // layer's data is synced to disk.)
    let _ = tokio::task::spawn_blocking(move || drop(view)).await;
    drop(running.mount);
    tracing::info!("share {tag}: stream closed, {} detached", setup.mount_point);
    result
}

/// A layer's view, unmounted (the layer kept) when the share ends.
struct LayerView(String);

impl Drop for LayerView {
    fn drop(&mut self) {
        crate::layer::stop_view(&crate::layer::Store::default(), &self.0);
        tracing::info!("layer {}: view unmounted, layer kept", self.0);
    }
}

/// The folder of lower shares is root's alone.
fn private_lowers() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &crate::layer::store::lowers();
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Mounts the view of `setup`'s layer over the lower share at `lower`.
async fn start_layer_view(setup: &ShareSetup, id: &str, lower: &str) -> Result<LayerView, String> {
    let (id, lower, point) = (id.to_string(), lower.to_string(), setup.mount_point.clone());
    let (uid, gid) = (setup.uid, setup.gid);
    tokio::task::spawn_blocking(move || {
        crate::layer::start_view(
            &crate::layer::Store::default(),
            &id,
            Path::new(&lower),
            &point,
            uid,
            gid,
        )
        .map(|()| LayerView(id))
    })
    .await
    .map_err(|e| format!("mounting the layer view: {e}"))?
}

struct Running {
    mount: mount::FuseMount,
    notifier: Notifier,
    shared: Arc<fs::Shared>,
}

/// Readahead window of a share: 16 requests of [`MAX_IO`] in flight. Each
/// request waits a vsock round trip; with a 1 MiB window a sequential read
/// of 128 MiB ran at ~20 MiB/s here (TCG), with 4 MiB ~25, with 16 MiB ~28.
const READAHEAD_KIB: u32 = 16 * MAX_IO / 1024;

/// Mounts the share and completes the FUSE handshake; the error is the
/// reason to send the host, naming the mount point.
async fn start(setup: &ShareSetup, client: Arc<Client>) -> Result<Running, String> {
    let shm = setup.shm.and_then(|region| match shm::Shm::open(region) {
        Ok(shm) => Some(shm),
        Err(e) => {
            tracing::warn!(
                "share {}: no shared memory ({e}); data goes over vsock",
                setup.tag
            );
            None
        }
    });
    let (fs, shared) = fs::ShareFs::new(
        tokio::runtime::Handle::current(),
        client,
        setup.uid,
        setup.gid,
        shm,
    );
    let target = Path::new(&setup.mount_point).to_path_buf();
    let (source, read_only) = (setup.tag.clone(), !setup.writable);
    let mounted = tokio::task::spawn_blocking(move || {
        let fd = mount::open_device()?;
        let mount = mount::mount(&fd, &source, &target, read_only)?;
        Ok::<_, mount::MountError>((fd, mount))
    })
    .await
    .map_err(|e| format!("mounting {}: {e}", setup.mount_point))?;
    let (fd, mount) = mounted.map_err(|e| error_chain(&e))?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let name = format!("share {}", setup.tag);
    let spawned = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let mut config = Config::default();
            config.acl = SessionACL::All;
            // Two readers of /dev/fuse (each its own cloned fd): `git
            // status` lstat-s from up to 20 threads, and one reader made
            // them queue behind each other and behind the priming reads.
            config.n_threads = Some(FUSE_THREADS);
            config.clone_fd = true;
            // from_fd reads FUSE_INIT and answers it (fs.init picks the options).
            match Session::from_fd(fs, fd, SessionACL::All, config) {
                Ok(session) => {
                    let _ = ready_tx.send(Ok(session.notifier()));
                    if let Err(e) = session.run() {
                        tracing::warn!("{name}: FUSE session ended: {e}");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    if let Err(e) = spawned {
        return Err(format!(
            "serving FUSE on {}: cannot start a thread: {e}",
            setup.mount_point
        ));
    }
    let notifier = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(notifier))) => notifier,
        Ok(Ok(Err(e))) => {
            return Err(format!(
                "the FUSE handshake on {} failed: {e}",
                setup.mount_point
            ))
        }
        Ok(Err(_)) => {
            return Err(format!(
                "the FUSE session on {} stopped during the handshake",
                setup.mount_point
            ))
        }
        Err(_) => {
            return Err(format!(
                "the kernel sent no FUSE_INIT for {} within {HANDSHAKE_TIMEOUT:?}",
                setup.mount_point
            ))
        }
    };
    let _ = shared.notifier.set(notifier.clone());
    #[cfg(test)]
    tests::MOUNTED
        .lock()
        .unwrap()
        .insert(setup.mount_point.clone(), shared.clone());
    *lock(&shared.primer) =
        prime::spawn(&setup.mount_point, &setup.tag, shared.primer_tids.clone());
    Ok(Running {
        mount,
        notifier,
        shared,
    })
}

/// Reads the host's frames until the stream ends.
/// Invalidations reach our own directory cache here, in stream order (a
/// reply read after an invalidation sees it applied), and the kernel's on
/// the invalidation thread.
fn read_loop(
    socket: std::fs::File,
    client: &Client,
    shared: &fs::Shared,
    invalidations: &std::sync::mpsc::Sender<Invalidation>,
) -> anyhow::Result<()> {
    let mut r = std::io::BufReader::with_capacity(READ_BUFFER, Waiting(socket));
    loop {
        let frame = match read_frame::<_, FsToGuest>(&mut r) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            // Our own writer shut the socket down after a failed write.
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(anyhow::Error::new(e).context("reading from the host")),
        };
        match frame {
            FsToGuest::Reply { id, reply } => client.deliver(id, reply),
            FsToGuest::InvalidateNode { id } => {
                shared.host_invalidated_node(id);
                let _ = invalidations.send(Invalidation::Node(id));
            }
            FsToGuest::InvalidateEntry { parent, name } => {
                shared.host_invalidated_entry(parent, &name);
                let _ = invalidations.send(Invalidation::Entry(parent, name));
            }
            // The kernel hears of it through the InvalidateNode that follow.
            FsToGuest::Overflow => shared.host_overflowed(),
        }
    }
}

/// Reads that wait for data on a non-blocking port (a blocking socket
/// never says `WouldBlock`).
struct Waiting(std::fs::File);

impl std::io::Read for Waiting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    client::wait_for(&self.0, libc::POLLIN)?
                }
                r => return r,
            }
        }
    }
}

/// `stream` as a blocking socket of ours: its descriptor duplicated, the
/// stream dropped (the runtime no longer polls it), then `O_NONBLOCK`
/// cleared.
fn take_over<S: AsRawFd>(stream: S) -> std::io::Result<std::fs::File> {
    let socket = blocking_socket(&stream)?;
    drop(stream);
    set_blocking(&socket)?;
    Ok(socket)
}

/// A blocking descriptor of its own for `stream` (the runtime's stays
/// non-blocking until it is dropped; `O_NONBLOCK` belongs to the open
/// file, so it is cleared only once the runtime no longer polls it).
fn blocking_socket(stream: &impl AsRawFd) -> std::io::Result<std::fs::File> {
    // SAFETY: duplicating a descriptor the stream holds open.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Clears `O_NONBLOCK` on `f`.
fn set_blocking(f: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor `f` holds open.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: as above.
        || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Applies invalidations in order on a thread of their own (they may block
/// in the kernel); it ends when the sender is dropped.
fn spawn_invalidator(
    notifier: Notifier,
    shared: Arc<fs::Shared>,
    tag: &str,
) -> std::sync::mpsc::Sender<Invalidation> {
    let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
    let tag = tag.to_string();
    let spawned = std::thread::Builder::new()
        .name("fuse-inval".into())
        .spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            for inv in rx {
                // ENOENT (nothing cached) is already swallowed by fuser.
                let result = match &inv {
                    // Offset 0, length 0: attributes and every cached page.
                    Invalidation::Node(id) => notifier.inval_inode(INodeNo(*id), 0, 0),
                    Invalidation::Entry(parent, name) => {
                        notifier.inval_entry(INodeNo(*parent), std::ffi::OsStr::from_bytes(name))
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("share {tag}: invalidation failed: {e}");
                }
                shared
                    .invalidated
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "share: cannot start the invalidation thread ({e}); host changes may show late"
        );
    }
    tx
}
