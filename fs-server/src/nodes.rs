//! The node table: which host inode each guest node id stands for.
//!
//! Like virtiofsd, a node holds an `O_PATH` fd on its inode rather than a
//! path. A host-side rename or a symlink swapped into a path the guest has
//! already looked up therefore changes nothing for that node: it still names
//! the very inode the lookup found, and every later operation is relative to
//! that fd. The same host `(dev, ino)` always maps to the same id (hard links
//! included), which is what the guest kernel expects of inode numbers.
//!
//! Ids are handed out by lookup-like requests and counted: each `Entry` reply
//! adds one reference, `Forget{nlookup}` removes that many; at zero the node
//! and its fd go away. Id 1 (the root) is never dropped.
//!
//! **An id is the host inode number** whenever it can be: the guest sees the
//! id as `st_ino`, and tools that record inode numbers (git's index above
//! all) then see the same numbers on both sides and across remounts. Inodes
//! on another device than the share's root (a mount inside the share), and
//! the rare inode numbered 1 (the root's id), get ids from
//! [`FOREIGN_BASE`] up instead. An id can come back after its node was
//! forgotten, for the same inode or for a new file that reused the number;
//! the kernel has dropped its inode by then (that is what the forget meant),
//! and while a node lives its `O_PATH` fd keeps the host inode, and so its
//! number, from being reused. `generation` is therefore always 0.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lima_proto::fs::ROOT_ID;
use lima_proto::sync::lock;

use crate::sys;

pub(crate) struct Node {
    pub id: u64,
    /// `O_PATH | O_NOFOLLOW` fd on the inode (on the link itself for symlinks).
    pub fd: OwnedFd,
    pub dev: u64,
    pub ino: u64,
    /// `st_mode & S_IFMT`; an inode's type never changes.
    pub kind: u32,
    /// When the guest last used the node ([`Nodes::get`]), on a counter.
    last_used: AtomicU64,
    /// The parent id and name the node was last reached by, so the server
    /// can ask the guest to forget it ([`Nodes::least_recently_used`]).
    place: Mutex<Option<(u64, Vec<u8>)>>,
}

/// The clock of `last_used`: one tick per use.
static TICK: AtomicU64 = AtomicU64::new(0);

impl Node {
    pub fn new(id: u64, fd: OwnedFd, st: &sys::Stat) -> Node {
        Node {
            id,
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & sys::S_IFMT,
            last_used: AtomicU64::new(TICK.fetch_add(1, Ordering::Relaxed)),
            place: Mutex::new(None),
        }
    }

    /// Records that the node was reached as `name` in `parent`.
    pub fn set_place(&self, parent: u64, name: &[u8]) {
        *lock(&self.place) = Some((parent, name.to_vec()));
    }

    pub fn place(&self) -> Option<(u64, Vec<u8>)> {
        lock(&self.place).clone()
    }

    fn touch(&self) {
        self.last_used
            .store(TICK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn is_dir(&self) -> bool {
        self.kind == sys::S_IFDIR
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == sys::S_IFLNK
    }
}

struct Slot {
    node: Arc<Node>,
    refs: u64,
}

/// First id for inodes whose own number cannot be their id. Far above any
/// inode number a Linux filesystem hands out in practice.
pub(crate) const FOREIGN_BASE: u64 = 1 << 63;

struct Table {
    by_id: HashMap<u64, Slot>,
    by_ino: HashMap<(u64, u64), u64>,
    /// The share root's device: its inodes keep their numbers as ids.
    root_dev: u64,
    next_foreign: u64,
}

impl Table {
    /// The id for a new node on `(dev, ino)`.
    fn new_id(&mut self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev
            && ino != ROOT_ID
            && ino < FOREIGN_BASE
            && !self.by_id.contains_key(&ino)
        {
            return ino;
        }
        while self.by_id.contains_key(&self.next_foreign) {
            self.next_foreign += 1;
        }
        let id = self.next_foreign;
        self.next_foreign += 1;
        id
    }
}

pub(crate) struct Nodes {
    table: Mutex<Table>,
}

/// Called under the table lock when a node is added or removed, so that
/// watches (keyed by inode in the kernel) stay in step with the table.
pub(crate) trait NodeHooks {
    fn added(&self, node: &Node);
    fn removed(&self, node: &Node);
}

impl Nodes {
    pub fn new(root_fd: OwnedFd, st: &sys::Stat) -> Nodes {
        let root = Node::new(ROOT_ID, root_fd, st);
        let mut table = Table {
            by_id: HashMap::new(),
            by_ino: HashMap::new(),
            root_dev: root.dev,
            next_foreign: FOREIGN_BASE,
        };
        table.by_ino.insert((root.dev, root.ino), ROOT_ID);
        table.by_id.insert(
            ROOT_ID,
            Slot {
                node: Arc::new(root),
                refs: 1,
            },
        );
        Nodes {
            table: Mutex::new(table),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the maps consistent enough
        // (each operation is a few inserts/removes); keep serving.
        lock(&self.table)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        let node = self.lock().by_id.get(&id).map(|s| s.node.clone())?;
        node.touch();
        Some(node)
    }

    /// How many nodes (fds) the table holds, the root included.
    pub fn count(&self) -> usize {
        self.lock().by_id.len()
    }

    /// The `n` nodes the guest used least recently, the root excepted.
    pub fn least_recently_used(&self, n: usize) -> Vec<Arc<Node>> {
        let mut all: Vec<Arc<Node>> = self
            .lock()
            .by_id
            .values()
            .filter(|s| s.node.id != ROOT_ID)
            .map(|s| s.node.clone())
            .collect();
        all.sort_by_key(|node| node.last_used.load(Ordering::Relaxed));
        all.truncate(n);
        all
    }

    pub fn root(&self) -> Arc<Node> {
        self.get(ROOT_ID).expect("the root node is never removed")
    }

    pub fn id_of(&self, dev: u64, ino: u64) -> Option<u64> {
        self.lock().by_ino.get(&(dev, ino)).copied()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.lock().by_id.keys().copied().collect()
    }

    /// Adds one reference to the node for `st`'s inode, creating it around
    /// `fd` if it is new (otherwise `fd` is closed: the existing node's fd
    /// names the same inode).
    pub fn intern(&self, fd: OwnedFd, st: &sys::Stat, hooks: &dyn NodeHooks) -> Arc<Node> {
        let mut t = self.lock();
        if let Some(&id) = t.by_ino.get(&(st.st_dev, st.st_ino)) {
            let slot = t.by_id.get_mut(&id).expect("by_ino and by_id agree");
            slot.refs += 1;
            return slot.node.clone();
        }
        let id = t.new_id(st.st_dev, st.st_ino);
        let node = Arc::new(Node::new(id, fd, st));
        hooks.added(&node);
        t.by_ino.insert((node.dev, node.ino), id);
        t.by_id.insert(
            id,
            Slot {
                node: node.clone(),
                refs: 1,
            },
        );
        node
    }

    /// Drops `n` references; removes the node at zero. Unknown ids and the
    /// root are ignored (the guest may forget what it never had, e.g. after
    /// a reconnect).
    pub fn forget(&self, id: u64, n: u64, hooks: &dyn NodeHooks) {
        if id == ROOT_ID {
            return;
        }
        let mut t = self.lock();
        let Some(slot) = t.by_id.get_mut(&id) else {
            return;
        };
        slot.refs = slot.refs.saturating_sub(n);
        if slot.refs == 0 {
            let slot = t.by_id.remove(&id).expect("just seen");
            t.by_ino.remove(&(slot.node.dev, slot.node.ino));
            hooks.removed(&slot.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Record(RefCell<Vec<(bool, u64)>>);
    impl NodeHooks for Record {
        fn added(&self, node: &Node) {
            self.0.borrow_mut().push((true, node.id));
        }
        fn removed(&self, node: &Node) {
            self.0.borrow_mut().push((false, node.id));
        }
    }

    fn open(path: &str) -> (OwnedFd, sys::Stat) {
        let c = std::ffi::CString::new(path).unwrap();
        let fd = crate::sys::open_path(&c, crate::sys::O_PATH).unwrap();
        let st = crate::sys::fstat(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        (fd, st)
    }

    /// A table rooted at a temporary directory holding one file `f`, and
    /// that file's path.
    fn table_with_one_file() -> (tempfile::TempDir, Nodes, Record, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let (rfd, rst) = open(dir.path().to_str().unwrap());
        let nodes = Nodes::new(rfd, &rst);
        let f = dir.path().join("f");
        (dir, nodes, Record::default(), f)
    }

    #[test]
    fn same_inode_same_id_and_counted() {
        let (_dir, nodes, hooks, f) = table_with_one_file();
        let (fd, st) = open(f.to_str().unwrap());
        let a = nodes.intern(fd, &st, &hooks);
        let (fd, st) = open(f.to_str().unwrap());
        let b = nodes.intern(fd, &st, &hooks);
        assert_eq!(a.id, b.id);
        // The id is the host inode number, as the guest's st_ino.
        assert_eq!(a.id, st.st_ino);
        assert_ne!(a.id, ROOT_ID);
        assert_eq!(nodes.count(), 2);
        nodes.forget(a.id, 1, &hooks);
        assert!(nodes.get(a.id).is_some());
        nodes.forget(a.id, 1, &hooks);
        assert!(nodes.get(a.id).is_none());
        assert_eq!(nodes.id_of(st.st_dev, st.st_ino), None);
        nodes.forget(ROOT_ID, 100, &hooks);
        assert!(nodes.get(ROOT_ID).is_some());
        assert_eq!(*hooks.0.borrow(), vec![(true, a.id), (false, a.id)]);
        // A new lookup after the forget gets the inode's number again.
        let (fd, st) = open(f.to_str().unwrap());
        assert_eq!(nodes.intern(fd, &st, &hooks).id, st.st_ino);
    }

    #[test]
    fn inodes_that_cannot_keep_their_number_get_foreign_ids() {
        let (_dir, nodes, hooks, f) = table_with_one_file();
        // The same inode seen as if on another device (a mount in the share).
        let (fd, mut st) = open(f.to_str().unwrap());
        st.st_dev ^= 1;
        let other = nodes.intern(fd, &st, &hooks);
        assert_eq!(other.id, FOREIGN_BASE);
        // An inode numbered like the root's id.
        let (fd, mut st) = open(f.to_str().unwrap());
        st.st_ino = ROOT_ID;
        assert_eq!(nodes.intern(fd, &st, &hooks).id, FOREIGN_BASE + 1);
        // The real one keeps its number.
        let (fd, st) = open(f.to_str().unwrap());
        assert_eq!(nodes.intern(fd, &st, &hooks).id, st.st_ino);
    }
}
