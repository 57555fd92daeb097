//! The connection loop: frames in; metadata requests answered on the
//! reader, the rest onto a bounded blocking pool; replies (and
//! invalidations) out through one writer task.
//!
//! ```text
//!  reader ──metadata (lookup, create, readdir…): Fs::handle inline ──────┐
//!     │──data, fsync, locks──▶ [semaphore: MAX_IN_FLIGHT] ──▶ spawn_blocking(Fs::handle)
//!     └─ Forget: inline too (keeps ref counts in guest order)           ▼
//!  inotify task ──Invalidate*──▶ mpsc ◀──────────────── Reply{id,reply} ┘
//!                                  └──▶ writer task ──▶ stream
//! ```
//!
//! Why this shape: a metadata request is a few syscalls on the disk, and
//! under a VM on two cores the two thread hand-offs of the pool cost more
//! than the work (a host lookup took 177 µs end to end through FUSE on this
//! machine). Data requests and fsync can be slow, and lock requests may
//! wait, so each gets its own task and a slow one never holds up the others;
//! the semaphore bounds threads and the memory of in-flight 1 MiB buffers
//! and, once full, stops the reader (back-pressure on the guest). Replies
//! go out in completion order. Lock requests that should wait are retried
//! with a short sleep, without holding a pool slot, until they succeed or
//! the stream closes.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use lima_proto::fs::{FsReply, FsRequest, FsToGuest, FsToHost, MAX_IO};
use lima_proto::{read_frame_async, write_frame_async, FrameError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::fs::{waits, Fs, WOULD_BLOCK};
use crate::sys;
use crate::watch::{self, Watches};

/// Requests handled at once (blocking-pool threads this server may occupy).
pub const MAX_IN_FLIGHT: usize = 32;
/// Frames queued for the writer before request tasks wait.
const OUT_QUEUE: usize = 64;

/// Why a share cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("shared folder {0}: no such directory")]
    Missing(PathBuf),
    #[error("shared folder {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("shared folder {path}: cannot open")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open /proc/self/fd (is /proc mounted?)")]
    Proc(#[source] std::io::Error),
    #[error("shared folder {0}: serving shares is not supported on {os} hosts yet", os = std::env::consts::OS)]
    Unsupported(PathBuf),
}

/// Serves one host directory to one guest connection.
pub struct Server {
    fs: Arc<Fs>,
}

fn errno_to_io(e: sys::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

impl Server {
    /// Opens `root` (which must be an existing directory; symlinks in the
    /// path itself are the host's choice and are followed). With
    /// `writable == false` every mutating request answers EROFS.
    pub fn new(root: &Path, writable: bool) -> Result<Server, FsError> {
        if !sys::SUPPORTED {
            return Err(FsError::Unsupported(root.to_owned()));
        }
        static RLIMIT: Once = Once::new();
        RLIMIT.call_once(|| match sys::raise_nofile_limit() {
            Ok(n) => tracing::debug!(nofile = n, "fd limit"),
            Err(e) => tracing::warn!(errno = e, "cannot raise RLIMIT_NOFILE"),
        });
        let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FsError::Missing(root.to_owned()),
            _ => FsError::Open {
                path: root.to_owned(),
                source: e,
            },
        })?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory(root.to_owned()));
        }
        let open_err = |e| FsError::Open {
            path: root.to_owned(),
            source: errno_to_io(e),
        };
        let c = CString::new(root.as_os_str().as_bytes()).map_err(|_| FsError::Open {
            path: root.to_owned(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let root_fd = sys::open_path(&c, sys::O_PATH | libc::O_DIRECTORY).map_err(open_err)?;
        let st = sys::fstat(std::os::fd::AsFd::as_fd(&root_fd)).map_err(open_err)?;
        let proc_fd = sys::open_path(c"/proc/self/fd", sys::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| FsError::Proc(errno_to_io(e)))?;
        let watches = match Watches::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %errno_to_io(e), "no inotify; host changes will not reach the guest until its caches expire");
                None
            }
        };
        Ok(Server {
            fs: Arc::new(Fs::new(root_fd, &st, writable, proc_fd, watches)),
        })
    }

    /// Serves bulk data of `ReadShm`/`WriteShm` through `shm` (this
    /// share's region of the VM's shared memory); without it those
    /// requests fail with EINVAL and the guest uses `Read`/`Write`.
    pub fn attach_shm(&self, shm: crate::shm::Shm) {
        let _ = self.fs.shm.set(shm);
    }

    /// Confines this whole process to serving this share (see
    /// [`confine`](crate::confine)): call it after [`Self::attach_shm`],
    /// while the process has one thread, before the first request. For a
    /// process that serves this one share and nothing else.
    pub fn confine(
        &self,
        mode: crate::confine::Mode,
    ) -> Result<crate::confine::Confinement, crate::confine::ConfineError> {
        let root = self.fs.nodes.root();
        crate::confine::apply(std::os::fd::AsFd::as_fd(&root.fd), self.fs.writable, mode)
    }

    /// Answers requests from `stream` until the guest closes it (then
    /// `Ok(())`, after in-flight requests finished) or sends something that
    /// is not a frame (`InvalidData`). Open files and nodes are dropped with
    /// the server.
    pub async fn serve<S>(self, stream: S) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<FsToGuest>(OUT_QUEUE);
        let writer = tokio::spawn(write_loop(wr, rx));
        let watcher =
            self.fs.watches.clone().map(|watches| {
                tokio::spawn(watch::run(watches, self.fs.nodes.clone(), tx.clone()))
            });
        let sem = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let closing = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let mut last_eviction: Option<std::time::Instant> = None;

        let result = loop {
            let frame = match read_frame_async::<_, FsToHost>(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(FrameError::Io(e)) => break Err(e),
                Err(e) => break Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            };
            let FsToHost::Request { id, req } = frame;
            if tracing::enabled!(tracing::Level::TRACE) {
                let mut d = format!("{req:?}");
                d.truncate(60);
                tracing::trace!("req {id} {d}");
            }
            if let FsRequest::Forget { id: node, nlookup } = req {
                // No syscall worth a thread; and forgetting in arrival order
                // keeps counts right against the lookups before it. No
                // reply: FUSE's forget has none, and after a `drop_caches`
                // the guest sends tens of thousands at once.
                self.fs.forget(node, nlookup);
                continue;
            }
            if let Some(errno) = oversized(&req) {
                // Refuse before it occupies a slot: bounds what a guest can pin.
                if tx
                    .send(FsToGuest::Reply {
                        id,
                        reply: FsReply::Err(errno),
                    })
                    .await
                    .is_err()
                {
                    break Ok(());
                }
                continue;
            }
            if quick(&req) {
                // A few syscalls on metadata: answered here, in order,
                // without the two thread hand-offs of the pool.
                let reply = self.fs.handle(&req);
                if tx.send(FsToGuest::Reply { id, reply }).await.is_err() {
                    break Ok(());
                }
            } else {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break Ok(());
                };
                let (fs, reply_tx, sem, closing) =
                    (self.fs.clone(), tx.clone(), sem.clone(), closing.clone());
                tasks.spawn(async move {
                    let (reply, permit) = run_request(fs, req, permit, sem, closing).await;
                    let _ = reply_tx.send(FsToGuest::Reply { id, reply }).await;
                    // Held until the reply is queued: a guest that stops reading
                    // stops the reader instead of piling up 1 MiB replies.
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            // Near the fd budget: ask the guest to forget the least recently
            // used nodes (at most every 100 ms; its forgets take a moment).
            if self.fs.nodes.count() > self.fs.node_budget()
                && last_eviction.is_none_or(|t| t.elapsed() > Duration::from_millis(100))
            {
                last_eviction = Some(std::time::Instant::now());
                let fs = self.fs.clone();
                let asks = tokio::task::spawn_blocking(move || fs.evictions())
                    .await
                    .unwrap_or_default();
                tracing::debug!(
                    nodes = self.fs.nodes.count(),
                    asks = asks.len(),
                    "over the node budget"
                );
                for ask in asks {
                    if tx.send(ask).await.is_err() {
                        break;
                    }
                }
            }
        };

        closing.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        if let Some(watcher) = watcher {
            watcher.abort();
            let _ = watcher.await;
        }
        drop(tx);
        let written = writer.await.map_err(std::io::Error::other)?;
        result.and(written)
    }
}

/// Requests answered on the reader itself: metadata work of a few
/// syscalls (a directory batch is at most 256 entries). Data (reads,
/// writes, flush, fsync) and locks (which may wait) go to the pool, so a
/// big or slow one never holds up the rest.
fn quick(req: &FsRequest) -> bool {
    !matches!(
        req,
        FsRequest::Read { .. }
            | FsRequest::Write { .. }
            | FsRequest::ReadShm { .. }
            | FsRequest::WriteShm { .. }
            | FsRequest::Flush { .. }
            | FsRequest::Fsync { .. }
            | FsRequest::Getlk { .. }
            | FsRequest::Setlk { .. }
            | FsRequest::Flock { .. }
    )
}

/// Payloads larger than any valid request needs (the frame limit is far above).
fn oversized(req: &FsRequest) -> Option<sys::Errno> {
    let long_name = |n: &[u8]| n.len() > 255;
    match req {
        FsRequest::Write { data, .. } if data.len() > MAX_IO as usize => Some(libc::EINVAL),
        FsRequest::Symlink { target, .. } if target.len() >= libc::PATH_MAX as usize => {
            Some(libc::ENAMETOOLONG)
        }
        FsRequest::Lookup { name, .. }
        | FsRequest::Mkdir { name, .. }
        | FsRequest::Unlink { name, .. }
        | FsRequest::Rmdir { name, .. }
        | FsRequest::Symlink { name, .. }
        | FsRequest::Create { name, .. }
        | FsRequest::Link { new_name: name, .. }
            if long_name(name) =>
        {
            Some(libc::ENAMETOOLONG)
        }
        FsRequest::Rename { name, new_name, .. } if long_name(name) || long_name(new_name) => {
            Some(libc::ENAMETOOLONG)
        }
        _ => None,
    }
}

/// Runs one request on the blocking pool; retries lock requests that should
/// wait (F_SETLKW, blocking flock) without holding a slot in between.
async fn run_request(
    fs: Arc<Fs>,
    req: FsRequest,
    mut permit: OwnedSemaphorePermit,
    sem: Arc<Semaphore>,
    closing: Arc<AtomicBool>,
) -> (FsReply, OwnedSemaphorePermit) {
    let req = Arc::new(req);
    let mut backoff = Duration::from_millis(1);
    loop {
        let (fs2, req2) = (fs.clone(), req.clone());
        let reply = match tokio::task::spawn_blocking(move || fs2.handle(&req2)).await {
            Ok(r) => r,
            Err(_) => FsReply::Err(libc::EIO),
        };
        if reply != FsReply::Err(WOULD_BLOCK) || !waits(&req) {
            return (reply, permit);
        }
        if closing.load(Ordering::Relaxed) {
            return (FsReply::Err(libc::EINTR), permit);
        }
        drop(permit);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
        permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the semaphore is never closed"),
        };
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<FsToGuest>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let to_io = |e: FrameError| match e {
        FrameError::Io(e) => e,
        e => std::io::Error::other(e),
    };
    while let Some(msg) = rx.recv().await {
        write_frame_async(&mut wr, &msg).await.map_err(to_io)?;
        // Batch whatever is already queued, then flush once.
        while let Ok(msg) = rx.try_recv() {
            write_frame_async(&mut wr, &msg).await.map_err(to_io)?;
        }
        wr.flush().await?;
    }
    wr.shutdown().await.or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotConnected {
            Ok(())
        } else {
            Err(e)
        }
    })
}

// For the protocol tests (`tests.rs`).
#[cfg(all(test, target_os = "linux"))]
impl Server {
    pub(crate) fn fs(&self) -> Arc<Fs> {
        self.fs.clone()
    }
}
