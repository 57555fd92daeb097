//! Request multiplexing on one share stream: many requests in flight, each
//! waiting on a oneshot keyed by its id, or handing its reply to a callback
//! that the reader thread runs as the reply arrives ([`Client::call_then`]:
//! no task to wake).
//!
//! The stream is a plain blocking socket: no writer task, no reactor. The
//! thread that sends a frame writes it itself, and frames others send while
//! it writes leave with its next write ([`Out`]); one thread reads replies
//! (see `super::read_loop`). Under TCG the reactor's wake-ups were most of
//! a round trip's cost in the guest: 1.3 ms of agent CPU per host lookup,
//! nearly all of it in the runtime's worker threads.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lima_proto::encode_frame;
use lima_proto::fs::{FsReply, FsRequest, FsToHost};
use tokio::sync::oneshot;

/// What a request's reply goes to.
enum Waiter {
    Task(oneshot::Sender<FsReply>),
    Then(Box<dyn FnOnce(FsReply) + Send>),
}

impl Waiter {
    fn answer(self, reply: FsReply) {
        match self {
            Waiter::Task(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Then(f) => f(reply),
        }
    }
}

type Waiters = HashMap<u64, Waiter>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The write side of the stream, shared by every thread that sends.
///
/// Whoever finds it idle writes (and stays to write whatever was queued
/// meanwhile, in one `write` per batch); whoever finds it busy appends to
/// the queue and returns. Frames are never interleaved, and no thread
/// waits for another's write to finish. Frames sent before the stream is
/// attached wait in the queue.
#[derive(Default)]
pub(super) struct Out {
    state: Mutex<OutState>,
}

#[derive(Default)]
struct OutState {
    queued: Vec<u8>,
    /// The buffer last written, kept for its capacity.
    spare: Vec<u8>,
    busy: bool,
    sink: Option<Arc<File>>,
    broken: bool,
}

impl Out {
    /// Queues or writes `frame`; false once the stream is broken.
    fn send(&self, frame: Vec<u8>) -> bool {
        let mut st = lock(&self.state);
        if st.broken {
            return false;
        }
        match st.sink.clone() {
            // Idle with nothing queued: write this frame as it is (no copy
            // of a 1 MiB write's data).
            Some(sink) if !st.busy && st.queued.is_empty() => {
                st.busy = true;
                drop(st);
                let written = (&*sink).write_all(&frame);
                self.drain(lock(&self.state), &sink, written)
            }
            _ => {
                st.queued.extend_from_slice(&frame);
                true
            }
        }
    }

    /// Starts writing to `sink`, queued frames first.
    pub(super) fn attach(&self, sink: File) {
        let sink = Arc::new(sink);
        let mut st = lock(&self.state);
        st.sink = Some(sink.clone());
        if !st.busy {
            st.busy = true;
            self.drain(st, &sink, Ok(()));
        }
    }

    /// After a write (`written`), with `st` locked and busy: writes what
    /// was queued meanwhile until nothing is, then leaves it idle.
    fn drain<'a>(
        &'a self,
        mut st: MutexGuard<'a, OutState>,
        sink: &File,
        mut written: std::io::Result<()>,
    ) -> bool {
        loop {
            if let Err(e) = written {
                tracing::debug!("share: writing to the host: {e}");
                st.broken = true;
                st.busy = false;
                st.queued = Vec::new();
                // The reader thread sees the end too and fails the rest.
                // SAFETY: shutdown on a descriptor we hold open.
                unsafe { libc::shutdown(sink.as_raw_fd(), libc::SHUT_RDWR) };
                return false;
            }
            if st.queued.is_empty() {
                st.busy = false;
                return true;
            }
            let mut batch = std::mem::take(&mut st.spare);
            std::mem::swap(&mut batch, &mut st.queued);
            drop(st);
            written = (&*sink).write_all(&batch);
            batch.clear();
            st = lock(&self.state);
            st.spare = batch;
        }
    }
}

pub(super) struct Client {
    next_id: AtomicU64,
    /// `None` once the stream has closed: every later call fails at once.
    waiting: Mutex<Option<Waiters>>,
    out: Out,
}

impl Client {
    /// A client whose frames wait until [`Client::attach`].
    pub(super) fn new() -> Arc<Client> {
        Arc::new(Client {
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(Some(HashMap::new())),
            out: Out::default(),
        })
    }

    /// Frames go to `sink` (a blocking socket) from now on.
    pub(super) fn attach(&self, sink: File) {
        self.out.attach(sink);
    }

    fn waiting(&self) -> MutexGuard<'_, Option<Waiters>> {
        lock(&self.waiting)
    }

    /// Sends `req` and waits for its reply; `Err(EIO)` when the stream is gone.
    pub(super) async fn call(&self, req: FsRequest) -> FsReply {
        let (tx, rx) = oneshot::channel();
        self.submit(req, Waiter::Task(tx));
        rx.await.unwrap_or(FsReply::Err(libc::EIO))
    }

    /// Sends `req`; `then` gets its reply on the reader thread (so it must
    /// not block), or `Err(EIO)` at once or when the stream goes.
    pub(super) fn call_then(&self, req: FsRequest, then: impl FnOnce(FsReply) + Send + 'static) {
        self.submit(req, Waiter::Then(Box::new(then)));
    }

    fn submit(&self, req: FsRequest, waiter: Waiter) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = match encode_frame(&FsToHost::Request { id, req }) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("share: cannot encode a request: {e}");
                return waiter.answer(FsReply::Err(libc::EIO));
            }
        };
        match self.waiting().as_mut() {
            Some(map) => map.insert(id, waiter),
            None => return waiter.answer(FsReply::Err(libc::EIO)),
        };
        if !self.out.send(frame) {
            let waiter = self.waiting().as_mut().and_then(|map| map.remove(&id));
            if let Some(w) = waiter {
                w.answer(FsReply::Err(libc::EIO));
            }
        }
    }

    /// Sends `req` without waiting (forget has no answer in FUSE; a reply the
    /// host sends anyway finds no waiter and is dropped).
    pub(super) fn send(&self, req: FsRequest) {
        if self.waiting().is_none() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(frame) = encode_frame(&FsToHost::Request { id, req }) {
            self.out.send(frame);
        }
    }

    /// Hands a reply from the host to its waiter.
    pub(super) fn deliver(&self, id: u64, reply: FsReply) {
        let waiter = self.waiting().as_mut().and_then(|map| map.remove(&id));
        match waiter {
            Some(w) => w.answer(reply),
            None => tracing::trace!("share: reply {id} has no waiter"),
        }
    }

    /// The stream is gone: fail everything in flight and whatever comes next.
    pub(super) fn close(&self) {
        let waiting = self.waiting().take();
        for (_, w) in waiting.into_iter().flatten() {
            w.answer(FsReply::Err(libc::EIO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// A client attached to one end of a socket pair, and the other end.
    fn attached() -> (Arc<Client>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let client = Client::new();
        client.attach(File::from(OwnedFd::from(ours)));
        (client, theirs)
    }

    fn next_id(r: &mut UnixStream) -> u64 {
        let FsToHost::Request { id, .. } = lima_proto::read_frame(r).unwrap().unwrap();
        id
    }

    #[tokio::test]
    async fn replies_reach_their_callers_in_any_order() {
        let (client, mut host) = attached();
        let a = tokio::spawn({
            let c = client.clone();
            async move { c.call(FsRequest::Getattr { id: 1 }).await }
        });
        let b = tokio::spawn({
            let c = client.clone();
            async move { c.call(FsRequest::Statfs).await }
        });
        let ids = tokio::task::spawn_blocking(move || [next_id(&mut host), next_id(&mut host)])
            .await
            .unwrap();
        client.deliver(ids[1], FsReply::Ok);
        client.deliver(ids[0], FsReply::Err(2));
        client.deliver(999, FsReply::Ok); // unknown ids are ignored
        let (ra, rb) = (a.await.unwrap(), b.await.unwrap());
        // Whichever request got which id, each caller got its own reply.
        assert_eq!([ra, rb].iter().filter(|r| **r == FsReply::Ok).count(), 1);
    }

    #[test]
    fn frames_sent_before_attach_go_first_and_many_senders_never_interleave() {
        let client = Client::new();
        for _ in 0..3 {
            client.send(FsRequest::Statfs);
        }
        let (ours, mut host) = UnixStream::pair().unwrap();
        // Both ends buffer little: senders find the writer busy and queue.
        let reader = std::thread::spawn(move || {
            let mut ids: Vec<u64> = (0..3 + 8 * 200).map(|_| next_id(&mut host)).collect();
            let early = ids[..3].to_vec();
            ids.sort_unstable();
            (early, ids)
        });
        client.attach(File::from(OwnedFd::from(ours)));
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let c = client.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        // Big enough that writes take a while.
                        c.send(FsRequest::Symlink {
                            parent: 1,
                            name: vec![b'n'; 3000],
                            target: vec![b't'; 3000],
                        });
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let (early, ids) = reader.join().unwrap();
        assert_eq!(early, vec![1, 2, 3]);
        // Every frame decoded whole, each id once.
        assert_eq!(ids, (1..=3 + 8 * 200).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_broken_stream_fails_calls_at_once() {
        let (client, host) = attached();
        drop(host);
        // The first write may still land in the socket buffer before the
        // peer's close is seen; later ones fail.
        let mut last = FsReply::Ok;
        for _ in 0..3 {
            last = client.call(FsRequest::Statfs).await;
            if last == FsReply::Err(libc::EIO) {
                break;
            }
        }
        assert_eq!(last, FsReply::Err(libc::EIO));
    }

    #[tokio::test]
    async fn close_fails_pending_and_later_calls() {
        let (client, _host) = attached();
        let pending = tokio::spawn({
            let c = client.clone();
            async move { c.call(FsRequest::Statfs).await }
        });
        tokio::task::yield_now().await;
        while client.waiting().as_ref().is_some_and(|m| m.is_empty()) {
            tokio::task::yield_now().await;
        }
        client.close();
        assert_eq!(pending.await.unwrap(), FsReply::Err(libc::EIO));
        assert_eq!(
            client.call(FsRequest::Statfs).await,
            FsReply::Err(libc::EIO)
        );
    }
}
