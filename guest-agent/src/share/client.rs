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
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lima_proto::encode_frame;
use lima_proto::fs::{FsReply, FsRequest, FsToHost};
use lima_proto::sync::lock;
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

/// The write side of the stream, shared by every thread that sends.
///
/// Whoever finds it idle writes (and stays to write whatever was queued
/// meanwhile, in one `send` per batch); whoever finds it busy appends to
/// the queue and returns. Frames are never interleaved, and no thread
/// waits for another's write to finish. Frames sent before the stream is
/// attached wait in the queue.
///
/// No sender ever blocks: writes are `MSG_DONTWAIT`, and when the socket is
/// full the rest is left to a flusher thread that waits for room. The
/// reader thread sends too (forgets, from reply handlers); if it blocked
/// on a full socket while the host blocked writing a reply to it, neither
/// would ever move again.
#[derive(Default)]
pub(super) struct Out {
    state: Mutex<OutState>,
    /// Wakes the flusher: the socket filled up, or the stream closed.
    stalled: std::sync::Condvar,
}

#[derive(Default)]
struct OutState {
    queued: Vec<u8>,
    /// The buffer last written, kept for its capacity.
    spare: Vec<u8>,
    /// A thread is writing (or the flusher owns the queue).
    busy: bool,
    /// The socket was full: the flusher owns the queue until it is empty.
    flushing: bool,
    sink: Option<Arc<Sink>>,
    broken: bool,
    closed: bool,
    /// Frames that may wait (forgets) are queued while idle: the next
    /// frame sent takes them along, or the flusher writes them shortly.
    lazy: bool,
}

/// How long frames sent with [`Out::send_lazy`] may wait for company.
const LAZY_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
/// Lazy frames queued past this size are written at once.
const LAZY_MAX: usize = 64 << 10;

/// Where frames go: a blocking socket (vsock), or a virtio-serial port
/// opened `O_NONBLOCK` (a character device has no `MSG_DONTWAIT`, and its
/// one open file is shared with the reader, so it never blocks and
/// whoever must wait polls).
pub(super) struct Sink {
    file: File,
    socket: bool,
}

impl Sink {
    pub(super) fn new(file: File) -> std::io::Result<Sink> {
        let socket = file.metadata()?.file_type().is_socket();
        Ok(Sink { file, socket })
    }

    /// Writes all of `buf`, waiting for room as long as it takes.
    fn write_all_waiting(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            match (&self.file).write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_for(&self.file, libc::POLLOUT)?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a failed write: makes the reader see the end too (a port's
    /// writes fail only once the host is gone, and its reads then end).
    fn shut(&self) {
        if self.socket {
            // SAFETY: shutdown on a descriptor we hold open.
            unsafe { libc::shutdown(self.file.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// Blocks until `f` is ready for `events` (or has hung up or failed: the
/// next read or write then says how).
pub(super) fn wait_for(f: &File, events: libc::c_short) -> std::io::Result<()> {
    poll(f, events, -1).map(drop)
}

/// `poll(2)` of `f` for `events`, waiting at most `timeout_ms` (-1: for
/// ever); the events that came (`revents`).
pub(super) fn poll(
    f: &File,
    events: libc::c_short,
    timeout_ms: i32,
) -> std::io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, timeout_ms) } >= 0 {
            return Ok(p.revents);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends what the socket takes without waiting: the bytes sent, or the error.
fn send_some(sink: &Sink, buf: &[u8]) -> std::io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        let rest = &buf[sent..];
        let fd = sink.file.as_raw_fd();
        // SAFETY: a valid buffer and a descriptor `sink` holds open.
        let n = unsafe {
            if sink.socket {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            } else {
                libc::write(fd, rest.as_ptr().cast(), rest.len())
            }
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => break,
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
    Ok(sent)
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
                let sent = send_some(&sink, &frame);
                self.drain(lock(&self.state), &sink, frame, sent)
            }
            // Idle with lazy frames queued: they go first, with this one.
            Some(sink) if !st.busy => {
                st.busy = true;
                st.lazy = false;
                let mut batch = std::mem::take(&mut st.queued);
                batch.extend_from_slice(&frame);
                drop(st);
                let sent = send_some(&sink, &batch);
                self.drain(lock(&self.state), &sink, batch, sent)
            }
            _ => {
                st.queued.extend_from_slice(&frame);
                true
            }
        }
    }

    /// Like [`Self::send`] for frames nobody waits on (forgets): while the
    /// writer is idle they gather for up to [`LAZY_DELAY`], so a burst
    /// leaves in a few writes instead of one each.
    fn send_lazy(&self, frame: Vec<u8>) -> bool {
        let mut st = lock(&self.state);
        if st.broken {
            return false;
        }
        st.queued.extend_from_slice(&frame);
        if st.busy || st.sink.is_none() {
            return true;
        }
        if st.queued.len() >= LAZY_MAX {
            let sink = st.sink.clone().expect("checked");
            st.busy = true;
            st.lazy = false;
            let batch = std::mem::take(&mut st.queued);
            drop(st);
            let sent = send_some(&sink, &batch);
            return self.drain(lock(&self.state), &sink, batch, sent);
        }
        if !st.lazy {
            st.lazy = true;
            self.stalled.notify_one();
        }
        true
    }

    /// Starts writing to `sink`, queued frames first; a flusher thread
    /// stands by for when the socket is full.
    pub(super) fn attach(self: &Arc<Self>, sink: Sink) -> std::io::Result<()> {
        let sink = Arc::new(sink);
        let out = self.clone();
        let flusher = sink.clone();
        std::thread::Builder::new()
            .name("share-flush".into())
            .spawn(move || out.flusher(&flusher))?;
        let mut st = lock(&self.state);
        st.sink = Some(sink.clone());
        if !st.busy {
            st.busy = true;
            self.drain(st, &sink, Vec::new(), Ok(0));
        }
        Ok(())
    }

    /// Ends the flusher; later sends fail.
    fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.broken = true;
        self.stalled.notify_all();
    }

    /// After sending `sent` bytes of `buf`, with `st` locked and busy:
    /// sends what was queued meanwhile until nothing is, then leaves it
    /// idle; leaves the rest to the flusher if the socket fills up.
    fn drain<'a>(
        &'a self,
        mut st: MutexGuard<'a, OutState>,
        sink: &Sink,
        mut buf: Vec<u8>,
        mut sent: std::io::Result<usize>,
    ) -> bool {
        loop {
            match sent {
                Err(e) => {
                    self.fail(st, sink, e);
                    return false;
                }
                Ok(n) if n < buf.len() => {
                    // Full: the unsent rest goes before anything queued.
                    let mut rest = buf.split_off(n);
                    rest.append(&mut st.queued);
                    st.queued = rest;
                    st.flushing = true;
                    self.stalled.notify_one();
                    return true;
                }
                Ok(_) => {}
            }
            buf.clear();
            if st.spare.capacity() < buf.capacity() {
                st.spare = buf;
            }
            st.lazy = false;
            if st.queued.is_empty() {
                st.busy = false;
                return true;
            }
            buf = std::mem::take(&mut st.spare);
            std::mem::swap(&mut buf, &mut st.queued);
            drop(st);
            sent = send_some(sink, &buf);
            st = lock(&self.state);
        }
    }

    fn fail(&self, mut st: MutexGuard<'_, OutState>, sink: &Sink, e: std::io::Error) {
        tracing::debug!("share: writing to the host: {e}");
        st.broken = true;
        st.busy = false;
        st.flushing = false;
        st.lazy = false;
        st.queued = Vec::new();
        // The reader thread sees the end too and fails the rest.
        sink.shut();
    }

    /// Waits for a full socket, then writes the queue out with blocking
    /// writes until it is empty; writes lazy frames nobody took along.
    fn flusher(&self, sink: &Sink) {
        let mut st = lock(&self.state);
        loop {
            while !st.flushing && !st.closed && !st.lazy {
                st = self
                    .stalled
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if st.closed {
                return;
            }
            if !st.flushing {
                // Lazy frames: give others a moment to join them (or to
                // take them along), then write them if still idle.
                st = self
                    .stalled
                    .wait_timeout(st, LAZY_DELAY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                if st.flushing || st.closed || !st.lazy || st.busy {
                    continue;
                }
                st.lazy = false;
                st.busy = true;
                let batch = std::mem::take(&mut st.queued);
                drop(st);
                let sent = send_some(sink, &batch);
                self.drain(lock(&self.state), sink, batch, sent);
                st = lock(&self.state);
                continue;
            }
            if st.queued.is_empty() {
                st.flushing = false;
                st.busy = false;
                continue;
            }
            let batch = std::mem::take(&mut st.queued);
            drop(st);
            let written = sink.write_all_waiting(&batch);
            st = lock(&self.state);
            if let Err(e) = written {
                self.fail(st, sink, e);
                st = lock(&self.state);
            }
        }
    }
}

pub(super) struct Client {
    next_id: AtomicU64,
    /// `None` once the stream has closed: every later call fails at once.
    waiting: Mutex<Option<Waiters>>,
    out: Arc<Out>,
}

impl Client {
    /// A client whose frames wait until [`Client::attach`].
    pub(super) fn new() -> Arc<Client> {
        Arc::new(Client {
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(Some(HashMap::new())),
            out: Arc::new(Out::default()),
        })
    }

    /// Frames go to `sink` from now on.
    pub(super) fn attach(&self, sink: Sink) -> std::io::Result<()> {
        self.out.attach(sink)
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

    /// [`Self::send`] for many requests nobody waits on (forgets), as one
    /// frame batch that may wait a moment for company (a `drop_caches`
    /// makes the kernel forget tens of thousands of nodes, one by one).
    pub(super) fn send_all(&self, reqs: impl IntoIterator<Item = FsRequest>) {
        if self.waiting().is_none() {
            return;
        }
        let mut frames = Vec::new();
        for req in reqs {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Ok(frame) = encode_frame(&FsToHost::Request { id, req }) {
                frames.extend_from_slice(&frame);
            }
        }
        if !frames.is_empty() {
            self.out.send_lazy(frames);
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
        self.out.close();
        let waiting = self.waiting().take();
        for (_, w) in waiting.into_iter().flatten() {
            w.answer(FsReply::Err(libc::EIO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    /// A client attached to one end of a socket pair, and the other end.
    fn attached() -> (Arc<Client>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let client = Client::new();
        client
            .attach(Sink::new(File::from(OwnedFd::from(ours))).unwrap())
            .unwrap();
        (client, theirs)
    }

    /// A request of about 6 KB.
    fn big_request() -> FsRequest {
        FsRequest::Symlink {
            parent: 1,
            name: vec![b'n'; 3000],
            target: vec![b't'; 3000],
        }
    }

    /// `threads` threads each sending `each` frames big enough (6 KB)
    /// that writes take a while and fill buffers.
    fn big_senders(
        client: &Arc<Client>,
        threads: usize,
        each: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..threads)
            .map(|_| {
                let c = client.clone();
                std::thread::spawn(move || {
                    for _ in 0..each {
                        c.send(big_request());
                    }
                })
            })
            .collect()
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
    fn a_non_blocking_character_stream_carries_every_frame_when_it_fills() {
        // A virtio-serial port is opened O_NONBLOCK and is no socket; a pipe
        // with both ends non-blocking behaves alike (writes say WouldBlock
        // when full, reads when empty).
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds.
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(made, 0);
        // SAFETY: pipe2 just made both; each is owned once.
        let (rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let client = Client::new();
        client.attach(Sink::new(wr).unwrap()).unwrap();
        let senders = big_senders(&client, 4, 100);
        // Let the pipe (64 KiB) fill before anyone reads.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut r = std::io::BufReader::new(super::super::Waiting(rd));
        let mut ids: Vec<u64> = (0..400)
            .map(|_| {
                let FsToHost::Request { id, req } =
                    lima_proto::read_frame(&mut r).unwrap().unwrap();
                assert!(matches!(req, FsRequest::Symlink { .. }));
                id
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 400);
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
        client
            .attach(Sink::new(File::from(OwnedFd::from(ours))).unwrap())
            .unwrap();
        let senders = big_senders(&client, 8, 200);
        for s in senders {
            s.join().unwrap();
        }
        let (early, ids) = reader.join().unwrap();
        assert_eq!(early, vec![1, 2, 3]);
        // Every frame decoded whole, each id once.
        assert_eq!(ids, (1..=3 + 8 * 200).collect::<Vec<u64>>());
    }

    #[test]
    fn sends_never_block_on_a_full_socket() {
        let (client, mut host) = attached();
        const N: u64 = 2000; // ~12 MB: far more than the socket buffers
        let (done, finished) = std::sync::mpsc::channel();
        let c = client.clone();
        std::thread::spawn(move || {
            for _ in 0..N {
                c.send(big_request());
            }
            done.send(()).unwrap();
        });
        // Nobody reads yet: a blocking send would never return.
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a send blocked on the full socket");
        // The flusher writes the rest once there is room, in order.
        let ids: Vec<u64> = (0..N).map(|_| next_id(&mut host)).collect();
        assert_eq!(ids, (1..=N).collect::<Vec<u64>>());
    }

    #[test]
    fn lazy_forgets_go_out_in_order_alone_or_before_the_next_request() {
        let (client, mut host) = attached();
        let forget = |id| FsRequest::Forget { id, nlookup: 1 };
        // Alone: the flusher writes them shortly.
        for n in 0..50 {
            client.send_all([forget(n)]);
        }
        let got: Vec<u64> = (0..50).map(|_| next_id(&mut host)).collect();
        assert_eq!(got, (1..=50).collect::<Vec<u64>>());
        // Followed by a request: they go first, with it.
        for n in 0..50 {
            client.send_all([forget(n)]);
        }
        client.send(FsRequest::Statfs);
        let got: Vec<u64> = (0..51).map(|_| next_id(&mut host)).collect();
        assert_eq!(got, (51..=101).collect::<Vec<u64>>());
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
