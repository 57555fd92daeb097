//! Request multiplexing on one share stream: many requests in flight, each
//! waiting on a oneshot keyed by its id, or handing its reply to a callback
//! that the reader loop runs as the reply arrives ([`Client::call_then`]:
//! no task to wake, which under TCG is a good part of a round trip); one
//! writer task owns the write half
//! (frames are encoded by the callers, so encoding runs in parallel and the
//! writer only copies bytes), one reader loop owns the read half.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lima_proto::encode_frame;
use lima_proto::fs::{FsReply, FsRequest, FsToHost};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

/// Frames buffered before a flush; small requests (lookups, getattrs) issued
/// together leave in one write.
const WRITE_BUFFER: usize = 256 << 10;

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

pub(super) struct Client {
    next_id: AtomicU64,
    /// `None` once the stream has closed: every later call fails at once.
    waiting: Mutex<Option<Waiters>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
}

impl Client {
    /// The client and the frames it wants written, for [`write_loop`].
    pub(super) fn new() -> (Arc<Client>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let client = Client {
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(Some(HashMap::new())),
            out,
        };
        (Arc::new(client), rx)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Waiters>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `req` and waits for its reply; `Err(EIO)` when the stream is gone.
    pub(super) async fn call(&self, req: FsRequest) -> FsReply {
        let (tx, rx) = oneshot::channel();
        self.submit(req, Waiter::Task(tx));
        rx.await.unwrap_or(FsReply::Err(libc::EIO))
    }

    /// Sends `req`; `then` gets its reply on the reader loop (so it must not
    /// block), or `Err(EIO)` at once or when the stream goes.
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
        if self.out.send(frame).is_err() {
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
            let _ = self.out.send(frame);
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

/// Writes queued frames to the stream, flushing whenever the queue runs dry.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    w: W,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
    while let Some(frame) = frames.recv().await {
        w.write_all(&frame).await?;
        while let Ok(frame) = frames.try_recv() {
            w.write_all(&frame).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_reach_their_callers_in_any_order() {
        let (client, mut frames) = Client::new();
        let a = tokio::spawn({
            let c = client.clone();
            async move { c.call(FsRequest::Getattr { id: 1 }).await }
        });
        let b = tokio::spawn({
            let c = client.clone();
            async move { c.call(FsRequest::Statfs).await }
        });
        let mut ids = Vec::new();
        for _ in 0..2 {
            let frame = frames.recv().await.unwrap();
            let FsToHost::Request { id, .. } = lima_proto::decode_body(&frame[4..]).unwrap();
            ids.push(id);
        }
        client.deliver(ids[1], FsReply::Ok);
        client.deliver(ids[0], FsReply::Err(2));
        client.deliver(999, FsReply::Ok); // unknown ids are ignored
        let (ra, rb) = (a.await.unwrap(), b.await.unwrap());
        // Whichever request got which id, each caller got its own reply.
        assert_eq!([ra, rb].iter().filter(|r| **r == FsReply::Ok).count(), 1);
    }

    #[tokio::test]
    async fn close_fails_pending_and_later_calls() {
        let (client, _frames) = Client::new();
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
