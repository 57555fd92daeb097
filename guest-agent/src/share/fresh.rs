//! Directory attributes that came with a change's reply, kept to answer
//! the kernel's next `GETATTR` of that directory without a round trip.
//!
//! The kernel drops a directory's attributes after every create, mkdir,
//! symlink or link in it, and with `default_permissions` it needs them for
//! the permission check of the next one: `echo x > f$i` in a loop cost a
//! getattr of the directory per file. The host now sends the directory's
//! attributes, read right after the change, with the reply (`Created`,
//! `Made`); they answer the next getattr of that directory here, once.
//!
//! They must never be older than the directory. Host changes come as
//! `InvalidateNode` of the directory (the host no longer reports our own
//! entry changes, so those cannot be relied on to drop anything); our own
//! changes are the requests that change the directory: entry changes in it,
//! setattr of it, and host readdirs of it (they may update its atime). So
//! the attributes of a reply are stored only if no other such request to
//! that directory overlapped this one (none was in flight when it was sent,
//! none was sent before its reply was handled) and no host invalidation of
//! the directory came in between: the reply is handled by a task of its
//! own, possibly after invalidations read behind it, which may report a
//! change made after the host read the attributes. A rename may move a
//! directory, whose ctime then changes, and the directory moved is not
//! always known: a rename that may move one overlaps every directory. Any
//! of those also drops attributes already stored, as does the kernel's
//! forget of the node (its id may come back for another inode). What is
//! left is the host's own latency: a host change between the reply and its
//! invalidation is missed by that one getattr, as by any attributes the
//! kernel caches.
use std::collections::HashMap;

use lima_proto::fs::Attr;

/// Requests in flight that change one directory, and what is stored for it.
#[derive(Default)]
struct Dir {
    in_flight: u32,
    /// The tick of the last change sent or host invalidation.
    last: u64,
    attr: Option<Attr>,
}

#[derive(Default)]
pub(super) struct Fresh {
    dirs: HashMap<u64, Dir>,
    /// Changes that may touch any directory: in flight, and the tick of the
    /// last one sent.
    everywhere: (u32, u64),
    tick: u64,
}

/// A change on its way to the host ([`Fresh::sending`]), to hand back to
/// [`Fresh::answered`] with its reply.
#[must_use]
pub(super) struct Sent {
    tick: u64,
    /// The directories it changes, each with whether no other change to it
    /// was in flight when it was sent.
    dirs: Vec<(u64, bool)>,
    everywhere: bool,
}

impl Fresh {
    fn next(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A request that changes `dirs` is about to be sent (`everywhere`: it
    /// may change any directory, e.g. a rename that may move one).
    pub(super) fn sending(&mut self, dirs: &[u64], everywhere: bool) -> Sent {
        let tick = self.next();
        let all_busy = self.everywhere.0 > 0;
        if everywhere {
            self.everywhere = (self.everywhere.0 + 1, tick);
            self.dirs.retain(|_, d| {
                d.attr = None;
                d.in_flight > 0
            });
        }
        let mut sent = Sent {
            tick,
            dirs: Vec::with_capacity(dirs.len()),
            everywhere,
        };
        for &id in dirs {
            if sent.dirs.iter().any(|(d, _)| *d == id) {
                continue;
            }
            let d = self.dirs.entry(id).or_default();
            sent.dirs.push((id, d.in_flight == 0 && !all_busy));
            d.in_flight += 1;
            d.last = tick;
            d.attr = None;
        }
        sent
    }

    /// The reply to `sent` is being handled; `parent` is the directory's
    /// attributes it carried, if any. Stored only if nothing overlapped.
    pub(super) fn answered(&mut self, sent: Sent, parent: Option<Attr>) {
        if sent.everywhere {
            self.everywhere.0 = self.everywhere.0.saturating_sub(1);
        }
        let everywhere_since = self.everywhere.1 > sent.tick;
        for (id, alone) in sent.dirs {
            let Some(d) = self.dirs.get_mut(&id) else {
                continue;
            };
            d.in_flight = d.in_flight.saturating_sub(1);
            if let Some(a) = parent.filter(|a| a.id == id) {
                if alone && d.last == sent.tick && !everywhere_since {
                    d.attr = Some(a);
                }
            }
            if d.in_flight == 0 && d.attr.is_none() {
                self.dirs.remove(&id);
            }
        }
    }

    /// The host reported `id` changed, or the kernel forgot it.
    pub(super) fn invalidated(&mut self, id: u64) {
        let tick = self.next();
        if let Some(d) = self.dirs.get_mut(&id) {
            d.last = tick;
            d.attr = None;
            if d.in_flight == 0 {
                self.dirs.remove(&id);
            }
        }
    }

    /// The kernel's getattr of `id`: the attributes stored for it, once.
    pub(super) fn take(&mut self, id: u64) -> Option<Attr> {
        let d = self.dirs.get_mut(&id)?;
        let attr = d.attr.take();
        if d.in_flight == 0 {
            self.dirs.remove(&id);
        }
        attr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lima_proto::fs::Time;

    fn attr(id: u64, size: u64) -> Attr {
        let t = Time { secs: 0, nanos: 0 };
        Attr {
            id,
            size,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            mode: 0o040755,
            nlink: 2,
            rdev: 0,
            blksize: 4096,
        }
    }

    #[test]
    fn a_change_alone_leaves_the_attributes_for_one_getattr() {
        let mut f = Fresh::default();
        let s = f.sending(&[7], false);
        f.answered(s, Some(attr(7, 1)));
        assert_eq!(f.take(7), Some(attr(7, 1)));
        assert_eq!(f.take(7), None);
        // Attributes of another node than the one changed are not kept.
        let s = f.sending(&[7], false);
        f.answered(s, Some(attr(8, 1)));
        assert_eq!((f.take(7), f.take(8)), (None, None));
        // A new change (to it, or maybe to any directory), a host
        // invalidation or a forget drops them.
        let undo: [fn(&mut Fresh); 3] = [
            |f| drop(f.sending(&[7], false)),
            |f| drop(f.sending(&[8], true)),
            |f| f.invalidated(7),
        ];
        for undo in undo {
            let mut f = Fresh::default();
            let s = f.sending(&[7], false);
            f.answered(s, Some(attr(7, 1)));
            undo(&mut f);
            assert_eq!(f.take(7), None);
        }
        assert!(Fresh::default().take(7).is_none());
    }

    #[test]
    fn overlapping_changes_store_nothing() {
        // B is sent while A is in flight; B's reply is handled first, then
        // A's: the host may have run B after A read the attributes.
        let mut f = Fresh::default();
        let a = f.sending(&[7], false);
        let b = f.sending(&[7], false);
        f.answered(b, Some(attr(7, 2)));
        assert_eq!(f.take(7), None);
        f.answered(a, Some(attr(7, 1)));
        assert_eq!(f.take(7), None);
        // In the other order neither is stored either (B was not alone).
        let a = f.sending(&[7], false);
        let b = f.sending(&[7], false);
        f.answered(a, Some(attr(7, 1)));
        f.answered(b, Some(attr(7, 2)));
        assert_eq!(f.take(7), None);
        // Afterwards, a change alone is stored again.
        let c = f.sending(&[7], false);
        f.answered(c, Some(attr(7, 3)));
        assert_eq!(f.take(7), Some(attr(7, 3)));
        // Changes to other directories do not matter; ones that may touch
        // any directory (a rename) do.
        let a = f.sending(&[7], false);
        let other = f.sending(&[8], false);
        f.answered(other, None);
        f.answered(a, Some(attr(7, 4)));
        assert_eq!(f.take(7), Some(attr(7, 4)));
        let a = f.sending(&[7], false);
        let rename = f.sending(&[8, 9], true);
        f.answered(rename, None);
        f.answered(a, Some(attr(7, 5)));
        assert_eq!(f.take(7), None);
        let s = f.sending(&[7], false);
        f.answered(s, Some(attr(7, 6)));
        let rename = f.sending(&[8], true);
        assert_eq!(f.take(7), None, "a rename drops what is stored");
        let a = f.sending(&[7], false);
        f.answered(rename, None);
        f.answered(a, Some(attr(7, 7)));
        assert_eq!(f.take(7), None, "sent while a rename was in flight");
    }

    #[test]
    fn a_host_invalidation_that_raced_the_reply_stores_nothing() {
        // The host changed the directory after reading its attributes for
        // the reply; the reader applied the invalidation before the task
        // handling the reply ran.
        let mut f = Fresh::default();
        let a = f.sending(&[7], false);
        f.invalidated(7);
        f.answered(a, Some(attr(7, 1)));
        assert_eq!(f.take(7), None);
        // Nothing is left behind: the next change alone is stored.
        assert!(f.dirs.is_empty());
        let a = f.sending(&[7], false);
        f.answered(a, Some(attr(7, 2)));
        assert_eq!(f.take(7), Some(attr(7, 2)));
        assert!(f.dirs.is_empty());
    }
}
