//! Host-side change notification: inotify on the directories the guest has
//! looked up, turned into `InvalidateEntry` / `InvalidateNode` frames so the
//! guest kernel drops caches it would otherwise trust (it runs with caching
//! on; see the shares design).
//!
//! Watching directories only is enough: a directory's watch reports changes
//! to its entries (create, delete, rename) and to its children's data and
//! attributes (modify, attrib) by name; the child's node is found by
//! `fstatat(dir, name)` → `(dev, ino)` → id. A child whose node the table
//! does not hold is skipped: the guest holds no attributes of it, since a
//! reply's attributes are read only once its node is in the table
//! (`Fs::entry_for_fd`), so they are newer than any change skipped here.
//! Watches are added as directory
//! nodes appear and removed when they are forgotten, both under the node
//! table lock (the kernel keys watches by inode, so a forget racing a new
//! lookup of the same directory must not remove the new node's watch). At
//! most [`MAX_WATCHES`] are held; directories beyond that are not watched
//! (the guest then relies on its cache timeouts).
//!
//! # The server's own changes
//!
//! A change the guest asks for (create, mkdir, symlink, link, unlink,
//! rmdir, rename) comes back from inotify like a host edit. Reporting it
//! would undo the guest kernel's own bookkeeping: `InvalidateEntry` drops
//! the dentry it just made, `InvalidateNode` the directory's attributes,
//! and the guest's listing forgets the name, so each create in a directory
//! cost a getattr (and lookups) more. So each such change records the entry
//! events it caused, `(watch, IN_* type, name)`, and the watcher drops one
//! matching event per record. Only entry events (`IN_CREATE`, `IN_DELETE`,
//! `IN_MOVED_FROM`, `IN_MOVED_TO`) are dropped, never `IN_MODIFY` or
//! `IN_ATTRIB`: inotify merges identical consecutive events, so a host write
//! right after ours could hide in our event.
//!
//! Why a dropped event cannot hide a host edit:
//!
//! * A record is made only after the syscall succeeded, and inotify queues
//!   an event before the syscall returns. A batch read from the inotify fd
//!   is matched only once every change that was running when the read
//!   ended has recorded (or given up, see below): an event of ours is never
//!   matched before its record exists, so it cannot pass and leave the
//!   record behind.
//! * A record lives until the first read that began after it was made has
//!   been matched: that read holds its event (queued before the record), so
//!   a record it did not use will get none and is discarded. A record whose
//!   event never comes (renaming a name onto a hard link of the same inode
//!   does nothing; such renames are not recorded, see `Fs::rename`, but a
//!   host edit may race that check) can so take at most one host event, of
//!   that very name, within milliseconds; and none outlives [`EXPECT_FOR`].
//! * Entry events of one name alternate: a name is created once until it is
//!   deleted or moved away, and every move has its own cookie, so inotify
//!   never merges two of them, and a host process racing the guest on the
//!   same name produces events of other types that still get through. If a
//!   host event does take our record (it came first), our own event, later
//!   in the queue, finds none and is reported: the guest hears of that name
//!   after the host's change all the same, only later, as if inotify had
//!   been slow.
//! * A change still running after [`EXPECT_FOR`] while its batch waits is
//!   given up: it records nothing, and its event is reported like a host
//!   edit (one extra invalidation).
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lima_proto::fs::FsToGuest;
use lima_proto::sync::lock;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::nodes::{Node, NodeHooks, Nodes};
use crate::sys;

/// Upper bound of inotify watches per share (the kernel's per-user default
/// is often 8192 or more, shared with other programs).
pub const MAX_WATCHES: usize = 4096;

const MASK: u32 = sys::IN_CREATE
    | sys::IN_DELETE
    | sys::IN_MOVED_FROM
    | sys::IN_MOVED_TO
    | sys::IN_MODIFY
    | sys::IN_ATTRIB
    | sys::IN_DELETE_SELF
    | sys::IN_MOVE_SELF
    | sys::IN_ONLYDIR
    | sys::IN_EXCL_UNLINK;

/// Entry events: the ones a change of our own may have dropped.
const ENTRY_EVENTS: u32 = sys::IN_CREATE | sys::IN_DELETE | sys::IN_MOVED_FROM | sys::IN_MOVED_TO;

/// Longest an expected event is waited for, and longest a batch of events
/// waits for the changes still running to record theirs (normally the next
/// read settles both at once; see the module docs).
pub(crate) const EXPECT_FOR: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Map {
    by_wd: HashMap<i32, u64>,
    by_node: HashMap<u64, i32>,
}

/// An entry event: watch, one `IN_*` type of [`ENTRY_EVENTS`], name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Expect {
    wd: i32,
    kind: u32,
    name: Vec<u8>,
}

/// The server's own changes: which are running, which events they caused.
#[derive(Default)]
struct Own {
    /// Ids of changes running; each batch waits for those begun before it
    /// was read.
    running: BTreeSet<u64>,
    next: u64,
    /// Running changes a batch stopped waiting for: they record nothing.
    abandoned: HashSet<u64>,
    /// Read rounds begun.
    round: u64,
    /// Events expected, each with the round counter when it was recorded
    /// and its deadline.
    expected: HashMap<Expect, VecDeque<(u64, Instant)>>,
}

impl Own {
    fn begin(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        self.running.insert(id);
        id
    }

    /// Change `id` ended; it caused `events` (none if it failed).
    fn end(&mut self, id: u64, events: Vec<Expect>, now: Instant) {
        self.running.remove(&id);
        if self.abandoned.remove(&id) {
            return;
        }
        for e in events {
            self.expected
                .entry(e)
                .or_default()
                .push_back((self.round, now + EXPECT_FOR));
        }
    }

    /// A read of the inotify fd begins: returns its round.
    fn begin_round(&mut self) -> u64 {
        self.round += 1;
        self.round
    }

    /// Whether every change begun before `upto` (a value of `next`) ended.
    fn settled(&self, upto: u64) -> bool {
        self.running.first().is_none_or(|id| *id >= upto)
    }

    fn abandon(&mut self, upto: u64) {
        let late: Vec<u64> = self.running.range(..upto).copied().collect();
        self.abandoned.extend(late);
    }

    /// Whether `ev` is one of ours; if so its record is used up.
    fn take(&mut self, ev: &Event, now: Instant) -> bool {
        let kind = ev.mask & ENTRY_EVENTS;
        if kind == 0 || ev.name.is_empty() || ev.mask & sys::IN_Q_OVERFLOW != 0 {
            return false;
        }
        let key = Expect {
            wd: ev.wd,
            kind,
            name: ev.name.clone(),
        };
        let Some(records) = self.expected.get_mut(&key) else {
            return false;
        };
        while let Some((_, deadline)) = records.pop_front() {
            if deadline > now {
                if records.is_empty() {
                    self.expected.remove(&key);
                }
                return true;
            }
        }
        self.expected.remove(&key);
        false
    }

    /// Round `round` was matched: records made before it began had their
    /// events in it, so those left over will get none.
    fn end_round(&mut self, round: u64, now: Instant) {
        self.expected.retain(|_, records| {
            records.retain(|(r, deadline)| *r >= round && *deadline > now);
            !records.is_empty()
        });
    }
}

pub(crate) struct Watches {
    inotify: OwnedFd,
    map: Mutex<Map>,
    own: Mutex<Own>,
    /// Signalled when a change ends (a batch may be waiting for it).
    ended: Condvar,
}

/// A change of the server's own in progress ([`Watches::change`]). Dropped
/// without [`Change::caused`]: it failed and caused nothing.
pub(crate) struct Change<'a> {
    watches: &'a Watches,
    id: u64,
    events: Vec<Expect>,
}

impl Change<'_> {
    /// It succeeded and caused these entry events: `(directory node, IN_*
    /// type, name)`; events in directories without a watch are left out.
    pub fn caused(mut self, events: &[(u64, u32, &CStr)]) {
        let map = self.watches.map();
        self.events = events
            .iter()
            .filter_map(|(dir, kind, name)| {
                map.by_node.get(dir).map(|wd| Expect {
                    wd: *wd,
                    kind: *kind,
                    name: name.to_bytes().to_vec(),
                })
            })
            .collect();
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        let events = std::mem::take(&mut self.events);
        self.watches.own().end(self.id, events, Instant::now());
        self.watches.ended.notify_all();
    }
}

impl Watches {
    pub fn new() -> sys::SysResult<Watches> {
        Ok(Watches {
            inotify: sys::inotify_init()?,
            map: Mutex::new(Map::default()),
            own: Mutex::new(Own::default()),
            ended: Condvar::new(),
        })
    }

    fn map(&self) -> MutexGuard<'_, Map> {
        lock(&self.map)
    }

    fn own(&self) -> MutexGuard<'_, Own> {
        lock(&self.own)
    }

    /// Call before a syscall that changes entries; then
    /// [`Change::caused`] if it succeeded.
    pub fn change(&self) -> Change<'_> {
        Change {
            watches: self,
            id: self.own().begin(),
            events: Vec::new(),
        }
    }

    /// Removes from a batch read in `round` the events our own changes
    /// caused, after waiting (at most [`EXPECT_FOR`]) for the changes begun
    /// before the read ended (`upto`) to record theirs.
    fn drop_own(&self, mut events: Vec<Event>, round: u64, upto: u64) -> Vec<Event> {
        let mut own = self.own();
        let candidates = events
            .iter()
            .any(|e| e.mask & ENTRY_EVENTS != 0 && !e.name.is_empty());
        if candidates {
            let give_up = Instant::now() + EXPECT_FOR;
            while !own.settled(upto) {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    own.abandon(upto);
                    break;
                }
                own = self
                    .ended
                    .wait_timeout(own, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let now = Instant::now();
        events.retain(|e| !own.take(e, now));
        own.end_round(round, now);
        events
    }

    fn node_for(&self, wd: i32) -> Option<u64> {
        self.map().by_wd.get(&wd).copied()
    }

    fn watch_gone(&self, wd: i32) {
        let mut m = self.map();
        if let Some(id) = m.by_wd.remove(&wd) {
            m.by_node.remove(&id);
        }
    }

    #[cfg(all(test, target_os = "linux"))]
    pub fn count(&self) -> usize {
        self.map().by_node.len()
    }
}

impl NodeHooks for Watches {
    fn added(&self, node: &Node) {
        if !node.is_dir() {
            return;
        }
        let mut m = self.map();
        if m.by_node.len() >= MAX_WATCHES {
            return;
        }
        match sys::inotify_watch(self.inotify.as_fd(), node.fd.as_fd(), MASK) {
            Ok(wd) => {
                m.by_wd.insert(wd, node.id);
                m.by_node.insert(node.id, wd);
            }
            Err(e) => tracing::debug!(node = node.id, errno = e, "no inotify watch"),
        }
    }

    fn removed(&self, node: &Node) {
        let mut m = self.map();
        if let Some(wd) = m.by_node.remove(&node.id) {
            m.by_wd.remove(&wd);
            sys::inotify_unwatch(self.inotify.as_fd(), wd);
        }
    }
}

/// A raw inotify event, copied out of the read buffer.
pub(crate) struct Event {
    wd: i32,
    mask: u32,
    name: Vec<u8>,
}

fn parse_events(buf: &[u8], out: &mut Vec<Event>) {
    // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[len]; }
    const HEADER: usize = 16;
    let mut pos = 0;
    while pos + HEADER <= buf.len() {
        let h = &buf[pos..pos + HEADER];
        let wd = i32::from_ne_bytes(h[0..4].try_into().expect("4 bytes"));
        let mask = u32::from_ne_bytes(h[4..8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
        let end = (pos + HEADER).saturating_add(len).min(buf.len());
        let raw = &buf[pos + HEADER..end];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        out.push(Event {
            wd,
            mask,
            name: name.to_vec(),
        });
        pos = end;
    }
}

#[derive(PartialEq, Eq, Hash)]
enum Key {
    Node(u64),
    Entry(u64, Vec<u8>),
}

impl Watches {
    /// Turns a batch of events into invalidations of `nodes`, each sent once.
    fn translate(&self, nodes: &Nodes, events: Vec<Event>) -> Vec<FsToGuest> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let (mut out_first, mut overflowed) = (Vec::new(), false);
        let mut push = |k: Key| {
            if seen.insert(match &k {
                Key::Node(id) => Key::Node(*id),
                Key::Entry(p, n) => Key::Entry(*p, n.clone()),
            }) {
                out.push(match k {
                    Key::Node(id) => FsToGuest::InvalidateNode { id },
                    Key::Entry(parent, name) => FsToGuest::InvalidateEntry { parent, name },
                });
            }
        };
        for ev in events {
            if ev.mask & sys::IN_Q_OVERFLOW != 0 {
                // Lost events: every cached thing may be stale; the guest's
                // listings first (a directory's InvalidateNode alone keeps
                // its listing, since entry changes come by name).
                if !overflowed {
                    overflowed = true;
                    out_first.push(FsToGuest::Overflow);
                }
                for id in nodes.ids() {
                    push(Key::Node(id));
                }
                continue;
            }
            let Some(dir) = self.node_for(ev.wd) else {
                continue;
            };
            if ev.mask & sys::IN_IGNORED != 0 {
                self.watch_gone(ev.wd);
                continue;
            }
            if ev.name.is_empty() {
                push(Key::Node(dir));
                continue;
            }
            if ev.mask & (sys::IN_CREATE | sys::IN_DELETE | sys::IN_MOVED_FROM | sys::IN_MOVED_TO)
                != 0
            {
                push(Key::Entry(dir, ev.name.clone()));
                push(Key::Node(dir));
            }
            if ev.mask & (sys::IN_MODIFY | sys::IN_ATTRIB | sys::IN_MOVED_TO) != 0 {
                if let Some(child) = child_id(nodes, dir, &ev.name) {
                    push(Key::Node(child));
                }
            }
        }
        out_first.extend(out);
        out_first
    }
}

/// The node of entry `name` in directory `dir`, if the table holds it.
fn child_id(nodes: &Nodes, dir: u64, name: &[u8]) -> Option<u64> {
    let dir = nodes.get(dir)?;
    let name = std::ffi::CString::new(name).ok()?;
    let st = sys::stat_at(dir.fd.as_fd(), &name).ok()?;
    nodes.id_of(st.st_dev, st.st_ino)
}

/// Lends the inotify fd to tokio's reactor; the `Arc<Watches>` keeps it open.
struct Registered(Arc<Watches>);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0.inotify.as_raw_fd()
    }
}

/// Reads inotify events and sends the invalidations of `nodes` they mean
/// until the receiver goes away; runs beside `serve`.
pub(crate) async fn run(watches: Arc<Watches>, nodes: Arc<Nodes>, tx: mpsc::Sender<FsToGuest>) {
    // SAFETY: `Registered` holds an `Arc<Watches>`, which owns the inotify
    // fd and never replaces or closes it while it lives; so the fd stays
    // open and the same for the whole life of the AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(Registered(watches.clone()), Interest::READABLE) };
    let afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll inotify; host changes will not be reported");
            return;
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let round = watches.own().begin_round();
        let mut events = Vec::new();
        loop {
            let inotify = watches.inotify.as_fd();
            match sys::read(inotify, &mut buf) {
                Ok(n) => parse_events(&buf[..n], &mut events),
                Err(libc::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(libc::EINTR) => {}
                Err(e) => {
                    tracing::warn!(
                        errno = e,
                        "inotify read failed; host changes will not be reported"
                    );
                    return;
                }
            }
        }
        // Changes begun from here on cannot have caused what was read.
        let upto = watches.own().next;
        let (watches2, nodes2) = (watches.clone(), nodes.clone());
        let translated = tokio::task::spawn_blocking(move || {
            watches2.translate(&nodes2, watches2.drop_own(events, round, upto))
        });
        let Ok(msgs) = translated.await else {
            return;
        };
        for m in msgs {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(wd: i32, mask: u32, name: &str) -> Event {
        Event {
            wd,
            mask,
            name: name.as_bytes().to_vec(),
        }
    }

    fn expect(wd: i32, kind: u32, name: &str) -> Expect {
        Expect {
            wd,
            kind,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_expected_event_is_dropped_once_and_others_pass() {
        let now = Instant::now();
        let mut own = Own::default();
        let round = own.begin_round();
        let id = own.begin();
        own.end(id, vec![expect(1, sys::IN_CREATE, "f")], now);
        // Another name, type or watch, and a write to the same name: host edits.
        assert!(!own.take(&ev(1, sys::IN_CREATE, "g"), now));
        assert!(!own.take(&ev(1, sys::IN_DELETE, "f"), now));
        assert!(!own.take(&ev(2, sys::IN_CREATE, "f"), now));
        assert!(!own.take(&ev(1, sys::IN_MODIFY, "f"), now));
        // Ours (mkdir sets IN_ISDIR too), once.
        assert!(own.take(&ev(1, sys::IN_CREATE | sys::IN_ISDIR, "f"), now));
        assert!(!own.take(&ev(1, sys::IN_CREATE, "f"), now));
        own.end_round(round, now);
        assert!(own.expected.is_empty());

        // Two changes expecting the same event drop two, not more.
        let (a, b) = (own.begin(), own.begin());
        own.end(a, vec![expect(1, sys::IN_DELETE, "f")], now);
        own.end(b, vec![expect(1, sys::IN_DELETE, "f")], now);
        assert!(own.take(&ev(1, sys::IN_DELETE, "f"), now));
        assert!(own.take(&ev(1, sys::IN_DELETE, "f"), now));
        assert!(!own.take(&ev(1, sys::IN_DELETE, "f"), now));

        // A failed change (no events) expects nothing.
        let id = own.begin();
        own.end(id, Vec::new(), now);
        assert!(!own.take(&ev(1, sys::IN_DELETE, "f"), now));
    }

    #[test]
    fn expectations_end_with_the_next_read_or_in_a_few_seconds() {
        let now = Instant::now();
        let mut own = Own::default();
        // Recorded before a read began: its event was in that read; left
        // over, it is dropped at the end of that round.
        let id = own.begin();
        own.end(id, vec![expect(1, sys::IN_MOVED_FROM, "a")], now);
        let round = own.begin_round();
        // Recorded while that read runs: its event may be in the next one.
        let id = own.begin();
        own.end(id, vec![expect(1, sys::IN_MOVED_TO, "b")], now);
        own.end_round(round, now);
        assert!(!own.take(&ev(1, sys::IN_MOVED_FROM, "a"), now));
        assert!(own.take(&ev(1, sys::IN_MOVED_TO, "b"), now));

        // However many rounds, not past EXPECT_FOR.
        let id = own.begin();
        own.end(id, vec![expect(1, sys::IN_CREATE, "c")], now);
        let later = now + EXPECT_FOR + Duration::from_millis(1);
        assert!(!own.take(&ev(1, sys::IN_CREATE, "c"), later));
        let id = own.begin();
        own.end(id, vec![expect(1, sys::IN_CREATE, "d")], now);
        own.end_round(own.round, later);
        assert!(own.expected.is_empty());
    }

    #[test]
    fn a_batch_waits_only_for_changes_begun_before_it_was_read() {
        let now = Instant::now();
        let mut own = Own::default();
        let early = own.begin();
        let upto = own.next;
        let late = own.begin();
        assert!(!own.settled(upto));
        own.end(early, Vec::new(), now);
        assert!(own.settled(upto));
        // One it gave up on records nothing: its event went through.
        own.end(late, Vec::new(), now);
        let slow = own.begin();
        let upto = own.next;
        own.abandon(upto);
        own.end(slow, vec![expect(1, sys::IN_CREATE, "f")], now);
        assert!(own.settled(upto));
        assert!(!own.take(&ev(1, sys::IN_CREATE, "f"), now));
    }

    #[test]
    fn an_overflow_tells_the_guest_first_then_invalidates_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let root = sys::open_path(&path, sys::O_PATH | libc::O_DIRECTORY).unwrap();
        let st = sys::fstat(root.as_fd()).unwrap();
        let nodes = Nodes::new(root, &st);
        let out = Watches::new().unwrap().translate(
            &nodes,
            vec![Event {
                wd: -1,
                mask: sys::IN_Q_OVERFLOW,
                name: Vec::new(),
            }],
        );
        assert_eq!(out.first(), Some(&FsToGuest::Overflow));
        assert!(out.contains(&FsToGuest::InvalidateNode {
            id: lima_proto::fs::ROOT_ID
        }));
        assert_eq!(out.iter().filter(|m| **m == FsToGuest::Overflow).count(), 1);
    }

    #[test]
    fn parses_events_and_stops_at_garbage() {
        let mut buf = Vec::new();
        for (wd, mask, name) in [
            (1i32, sys::IN_CREATE, &b"abc"[..]),
            (2, sys::IN_ATTRIB, b""),
        ] {
            let padded = if name.is_empty() { 0 } else { 16 };
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            buf.extend_from_slice(&n);
        }
        buf.extend_from_slice(&[1, 2, 3]); // a torn header is ignored
        let mut out = Vec::new();
        parse_events(&buf, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].wd, out[0].mask, &out[0].name[..]),
            (1, sys::IN_CREATE, &b"abc"[..])
        );
        assert_eq!((out[1].wd, out[1].name.len()), (2, 0));
        // A length running past the buffer is clamped.
        let mut bad = 7i32.to_ne_bytes().to_vec();
        bad.extend_from_slice(&[0; 8]);
        bad.extend_from_slice(&1000u32.to_ne_bytes());
        bad.extend_from_slice(b"xy");
        let mut out = Vec::new();
        parse_events(&bad, &mut out);
        assert_eq!(out[0].name, b"xy");
    }
}
