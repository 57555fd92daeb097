//! Host-side change notification: inotify on the directories the guest has
//! looked up, turned into `InvalidateEntry` / `InvalidateNode` frames so the
//! guest kernel drops caches it would otherwise trust (it runs with caching
//! on; see the shares design).
//!
//! Watching directories only is enough: a directory's watch reports changes
//! to its entries (create, delete, rename) and to its children's data and
//! attributes (modify, attrib) by name; the child's node is found by
//! `fstatat(dir, name)` → `(dev, ino)` → id. Watches are added as directory
//! nodes appear and removed when they are forgotten, both under the node
//! table lock (the kernel keys watches by inode, so a forget racing a new
//! lookup of the same directory must not remove the new node's watch). At
//! most [`MAX_WATCHES`] are held; directories beyond that are not watched
//! (the guest then relies on its cache timeouts).
//!
//! Changes the server itself makes are reported too: suppressing them would
//! need to tell them apart from host edits made at the same moment, and an
//! extra invalidation only costs the guest a re-read.
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use lima_proto::fs::FsToGuest;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::fs::Fs;
use crate::nodes::{Node, NodeHooks};
use crate::sys;

/// Upper bound of inotify watches per share (the kernel's per-user default
/// is often 8192 or more, shared with other programs).
pub const MAX_WATCHES: usize = 4096;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

#[derive(Default)]
struct Map {
    by_wd: HashMap<i32, u64>,
    by_node: HashMap<u64, i32>,
}

pub(crate) struct Watches {
    inotify: OwnedFd,
    map: Mutex<Map>,
}

impl Watches {
    pub fn new() -> sys::SysResult<Watches> {
        Ok(Watches {
            inotify: sys::inotify_init()?,
            map: Mutex::new(Map::default()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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

    #[cfg(test)]
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

impl Fs {
    /// Turns a batch of events into invalidations, each sent once.
    fn translate(&self, events: Vec<Event>) -> Vec<FsToGuest> {
        let Some(watches) = self.watches.as_ref() else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
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
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                // Lost events: every cached thing may be stale.
                for id in self.nodes.ids() {
                    push(Key::Node(id));
                }
                continue;
            }
            let Some(dir) = watches.node_for(ev.wd) else {
                continue;
            };
            if ev.mask & libc::IN_IGNORED != 0 {
                watches.watch_gone(ev.wd);
                continue;
            }
            if ev.name.is_empty() {
                push(Key::Node(dir));
                continue;
            }
            if ev.mask
                & (libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO)
                != 0
            {
                push(Key::Entry(dir, ev.name.clone()));
                push(Key::Node(dir));
            }
            if ev.mask & (libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_MOVED_TO) != 0 {
                if let Some(child) = self.child_id(dir, &ev.name) {
                    push(Key::Node(child));
                }
            }
        }
        out
    }

    fn child_id(&self, dir: u64, name: &[u8]) -> Option<u64> {
        let dir = self.nodes.get(dir)?;
        let name = std::ffi::CString::new(name).ok()?;
        let st = sys::stat_at(dir.fd.as_fd(), &name).ok()?;
        self.nodes.id_of(st.st_dev, st.st_ino)
    }
}

/// Lends the inotify fd to tokio's reactor; the `Arc<Fs>` keeps it open.
struct Registered(Arc<Fs>);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0
            .watches
            .as_ref()
            .expect("only registered with watches")
            .inotify
            .as_raw_fd()
    }
}

/// Reads inotify events until the receiver goes away; runs beside `serve`.
pub(crate) async fn run(fs: Arc<Fs>, tx: mpsc::Sender<FsToGuest>) {
    if fs.watches.is_none() {
        return;
    }
    // SAFETY: `Registered` holds an `Arc<Fs>`, whose `Watches` own the
    // inotify fd and never replace or close it while the Fs lives; so the fd
    // stays open and the same for the whole life of the AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(Registered(fs.clone()), Interest::READABLE) };
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
        let mut events = Vec::new();
        loop {
            let inotify = fs.watches.as_ref().expect("checked above").inotify.as_fd();
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
        let fs2 = fs.clone();
        let Ok(msgs) = tokio::task::spawn_blocking(move || fs2.translate(events)).await else {
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

    #[test]
    fn parses_events_and_stops_at_garbage() {
        let mut buf = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_CREATE, &b"abc"[..]),
            (2, libc::IN_ATTRIB, b""),
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
            (1, libc::IN_CREATE, &b"abc"[..])
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
