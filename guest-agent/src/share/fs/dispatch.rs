//! [`ShareFs`] and the way a kernel request travels. The session thread
//! sends one protocol request (or two at once) and goes back to the
//! device; the reply object goes with a callback that the stream's reader
//! loop runs as the host's answer arrives ([`ShareFs::call`],
//! [`ShareFs::call_both`]), or with a task for replies that take long to
//! hand on ([`ShareFs::call_apart`]). Nothing here knows what the requests
//! mean: that is the callbacks' part.
use std::future::Future;
use std::sync::{Arc, Mutex};

use lima_proto::fs::{FsReply, FsRequest};
use lima_proto::sync::lock;
use tokio::runtime::Handle;

use super::state::Shared;
use crate::share::client::Client;
use crate::share::shm::Shm;

/// The state of a [`ShareFs::call_both`]: the reply that came first, and
/// what the second one completes.
struct Pair<R, H> {
    first: Option<FsReply>,
    rest: Option<(R, H)>,
}

pub(in crate::share) struct ShareFs {
    rt: Handle,
    pub(super) shared: Arc<Shared>,
}

impl ShareFs {
    pub(in crate::share) fn new(
        rt: Handle,
        client: Arc<Client>,
        uid: u32,
        gid: u32,
        shm: Option<Arc<Shm>>,
    ) -> (ShareFs, Arc<Shared>) {
        let shared = Arc::new(Shared::new(client, uid, gid, shm));
        (
            ShareFs {
                rt,
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// Runs one request's round trip on the runtime; `f` owns the reply.
    pub(super) fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.shared.clone()));
    }

    /// The common shape: one request, a reply built from the answer (on
    /// the stream's reader loop, as it arrives: `handle` must not block).
    pub(super) fn call<R, H>(&self, req: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply) + Send + 'static,
    {
        let s = self.shared.clone();
        self.shared
            .client
            .call_then(req, move |answer| handle(&s, reply, answer));
    }

    /// Two requests sent at once; `handle` gets both replies (in the order
    /// the requests were given) on the reader thread when the second one
    /// arrives, so no task has to be woken (see [`Client::call_then`]).
    pub(super) fn call_both<R, H>(&self, a: FsRequest, b: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply, FsReply) + Send + 'static,
    {
        let pair = Arc::new(Mutex::new(Pair {
            first: None,
            rest: Some((reply, handle)),
        }));
        for (second, req) in [(false, a), (true, b)] {
            let (s, pair) = (self.shared.clone(), pair.clone());
            self.shared.client.call_then(req, move |answer| {
                let mut p = lock(&pair);
                let Some(other) = p.first.take() else {
                    p.first = Some(answer);
                    return;
                };
                let Some((reply, handle)) = p.rest.take() else {
                    return;
                };
                drop(p);
                let (ra, rb) = if second {
                    (other, answer)
                } else {
                    (answer, other)
                };
                handle(&s, reply, ra, rb);
            });
        }
    }

    /// [`Self::call`] for replies that take long to hand on (1 MiB of read
    /// data to copy and write to /dev/fuse): handled on a task of its own,
    /// so readahead's replies go to the kernel in parallel and the reader
    /// loop stays free.
    pub(super) fn call_apart<R, H>(&self, req: FsRequest, reply: R, handle: H)
    where
        R: Send + 'static,
        H: FnOnce(&Shared, R, FsReply) + Send + 'static,
    {
        self.run(move |s| async move {
            let answer = s.client.call(req).await;
            handle(&s, reply, answer);
        });
    }
}
