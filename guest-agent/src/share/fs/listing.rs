//! Glue between the kernel's requests and the listing cache
//! ([`crate::share::cache`]): fetching a directory's listing in the
//! background (and its small subdirectories ahead of need) and having it
//! primed, answering reads of directories opened while listed, knowing
//! where each directory sits, and passing on the host's invalidations and
//! the kernel's forgets. The cache decides what is known; this file does
//! the round trips and the bookkeeping around its decisions.
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Instant;

use fuser::{Errno, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use lima_proto::fs::{DirEntry, Entry, FsReply, FsRequest, READDIRPLUS_MAX};
use lima_proto::sync::lock;

use super::convert::{error_of, file_type, negative_attr, placeholder_ino};
use super::dispatch::ShareFs;
use super::state::{LocalDir, Shared, TTL};
use crate::share::cache::{self, Cache};

/// Directories fetched ahead at once (see [`cache::Cache::speculate`]).
const AHEAD_AT_ONCE: usize = 4;

/// A local readdirplus that met an entry its listing lost: the reply, how
/// many entries it holds already, and the entries from there on (`next`
/// offset, name, entry).
pub(super) struct Lost {
    reply: ReplyDirectoryPlus,
    added: usize,
    dir: u64,
    rest: Vec<(u64, Vec<u8>, Option<Entry>)>,
}

/// Entries a [`Lost`] carries at most: more than a reply holds (the rest
/// comes with the kernel's next read).
const LOST_REST_MAX: usize = 256;

impl ShareFs {
    /// The kernel's forgets: what we kept for nodes the kernel no longer
    /// holds goes, and the host's references go back once nobody here
    /// needs them. A forget may come late: after `drop_caches` the kernel
    /// queues tens of thousands, and a node it looked up again meanwhile
    /// keeps its place (its path, for priming).
    pub(super) fn forget_all(&self, nodes: &[(u64, u64)]) {
        let s = &self.shared;
        let gone: Vec<u64> = s.with_cache(|c, out| {
            nodes
                .iter()
                .filter(|&&(id, nlookup)| !c.kernel_forget(id, nlookup, out))
                .map(|&(id, _)| id)
                .collect()
        });
        if gone.is_empty() {
            return;
        }
        let (mut snapshots, mut dir_names, mut fresh) =
            (lock(&s.snapshots), lock(&s.dir_names), lock(&s.fresh));
        for &id in &gone {
            snapshots.remove(&id);
            dir_names.remove(&id);
            // Its id may come back for another inode.
            fresh.invalidated(id);
        }
    }
}

impl Shared {
    /// Runs `f` on the cache and sends the `Forget`s it produced.
    pub(super) fn with_cache<T>(
        &self,
        f: impl FnOnce(&mut Cache, &mut Vec<cache::Forget>) -> T,
    ) -> T {
        let mut out = Vec::new();
        let t = f(&mut lock(&self.cache), &mut out);
        self.client.send_all(
            out.into_iter()
                .map(|(id, nlookup)| FsRequest::Forget { id, nlookup }),
        );
        t
    }

    /// The host's `InvalidateEntry`: called by the reader before any later
    /// reply is delivered.
    pub(in crate::share) fn host_invalidated_entry(&self, parent: u64, name: &[u8]) {
        self.with_cache(|c, out| c.invalidate_entry(parent, name, out));
    }

    /// The host lost change events: no listing can be trusted.
    pub(in crate::share) fn host_overflowed(&self) {
        self.with_cache(|c, out| c.drop_all_listings(out));
    }

    /// The host's `InvalidateNode`.
    pub(in crate::share) fn host_invalidated_node(&self, id: u64) {
        lock(&self.fresh).invalidated(id);
        self.with_cache(|c, out| c.invalidate_node(id, out));
    }

    /// An entry the host made for `name` in `parent` (create, mkdir,
    /// symlink, link), on its way to the kernel.
    pub(super) fn made(&self, parent: u64, name: &[u8], e: &Entry) {
        self.with_cache(|c, out| {
            c.entry_to_kernel(e.attr.id);
            c.created(parent, name, e, out);
        });
    }

    /// Fetches `dir` with attributes for the cache: `ReaddirAt` batches
    /// until a short one (the host fills every batch but the last), one
    /// round trip for most directories. Gives up beyond
    /// [`cache::PREFETCH_MAX`] entries.
    ///
    /// `ahead`: fetched ahead of lookups ([`Cache::speculate`]), to be
    /// primed at that path; otherwise lookups asked for it, and its
    /// subdirectories are fetched ahead in turn.
    ///
    /// Returns how many entries it listed (0 if it gave up).
    pub(super) async fn prefetch(
        self: Arc<Self>,
        dir: u64,
        token: u64,
        ahead: Option<std::path::PathBuf>,
    ) -> usize {
        let started = Instant::now();
        let mut entries: Vec<DirEntry> = Vec::new();
        // Reading it may update its atime.
        let reading = self.changing(&[dir], false);
        let mut offset = 0;
        let complete = loop {
            if !lock(&self.cache).fetch_wanted(dir, token) {
                break false;
            }
            let batch = match self
                .client
                .call(FsRequest::ReaddirAt {
                    id: dir,
                    offset,
                    plus: true,
                })
                .await
            {
                FsReply::Dir(batch) => batch,
                _ => break false,
            };
            {
                // Counted on arrival: each holds a host reference.
                let mut c = lock(&self.cache);
                for e in &batch {
                    if let Some(x) = &e.entry {
                        c.buffered(x.attr.id);
                    }
                }
            }
            let n = batch.len();
            if let Some(last) = batch.last() {
                offset = last.next_offset;
            }
            entries.extend(batch);
            if n < READDIRPLUS_MAX {
                break true;
            }
            // +2: `.` and `..`.
            if entries.len() > cache::PREFETCH_MAX + 2 {
                break false;
            }
        };
        self.changed(reading, None);
        let subdirs: Vec<(u64, Vec<u8>)> = if complete && ahead.is_none() {
            entries
                .iter()
                .filter_map(|e| {
                    let x = e.entry.as_ref()?;
                    let dir = x.attr.mode & libc::S_IFMT == libc::S_IFDIR;
                    // A directory's size grows with its entries (ext4: a
                    // 4 KiB block per ~100 short names): big ones only
                    // when asked for.
                    let small = x.attr.size <= cache::AHEAD_DIR_SIZE_MAX;
                    (dir && small && e.name != b"." && e.name != b"..")
                        .then(|| (x.attr.id, e.name.clone()))
                })
                .take(cache::SPECULATE_MAX)
                .collect()
        } else {
            Vec::new()
        };
        let entries_len = entries.len();
        self.with_cache(|c, out| {
            if complete {
                c.fetched(dir, token, entries, started + TTL, out);
            } else {
                c.fetch_failed(dir, token, Instant::now());
                for e in &entries {
                    if let Some(x) = &e.entry {
                        c.drop_buffered(x.attr.id, out);
                    }
                }
            }
        });
        if !complete {
            return 0;
        }
        let listed = entries_len;
        match ahead {
            Some(path) => self.prime_at(dir, path),
            None => {
                self.prime(dir);
                if let (false, Some(base)) = (subdirs.is_empty(), self.path_of(dir)) {
                    tokio::spawn(self.fetch_ahead(base, subdirs));
                }
            }
        }
        listed
    }

    /// Fetches (and primes) `subdirs` of the directory at `base`, a few at
    /// a time, each only if [`Cache::speculate`] agrees. Boxed: it and
    /// [`Self::prefetch`] spawn each other.
    fn fetch_ahead(
        self: Arc<Self>,
        base: std::path::PathBuf,
        subdirs: Vec<(u64, Vec<u8>)>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut running = tokio::task::JoinSet::new();
            let mut listed = 0;
            for (id, name) in subdirs {
                while running.len() >= AHEAD_AT_ONCE {
                    listed += running.join_next().await.and_then(Result::ok).unwrap_or(0);
                }
                // What one walk may pull in ahead of itself.
                if listed >= cache::AHEAD_ENTRIES_MAX {
                    break;
                }
                let token = self.with_cache(|c, out| c.speculate(id, Instant::now(), out));
                let Some(token) = token else {
                    continue;
                };
                let path = base.join(OsStr::from_bytes(&name));
                running.spawn(self.clone().prefetch(id, token, Some(path)));
            }
            while running.join_next().await.is_some() {}
        })
    }

    /// The kernel is handed `e` as `name` in `parent`: remember where a
    /// directory sits.
    pub(super) fn handed(&self, parent: u64, name: &[u8], e: &Entry) {
        if e.attr.mode & libc::S_IFMT == libc::S_IFDIR {
            lock(&self.dir_names).insert(e.attr.id, (parent, name.to_vec()));
        }
    }

    /// `dir`'s path under the mount point as far as we know it (a rename
    /// we did not see makes it wrong: priming then reads whatever is
    /// there, still answered from that directory's own listing).
    fn path_of(&self, mut dir: u64) -> Option<std::path::PathBuf> {
        let names = lock(&self.dir_names);
        let mut parts = Vec::new();
        while dir != lima_proto::fs::ROOT_ID {
            let (parent, name) = names.get(&dir)?;
            parts.push(OsStr::from_bytes(name).to_owned());
            dir = *parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        Some(parts.iter().rev().collect())
    }

    /// After a listing of `dir` landed: has a priming thread read it.
    pub(super) fn prime(&self, dir: u64) {
        if let Some(path) = self.path_of(dir) {
            self.prime_at(dir, path);
        }
    }

    fn prime_at(&self, dir: u64, path: std::path::PathBuf) {
        lock(&self.cache).priming(dir, Instant::now());
        if let Some(p) = &*lock(&self.primer) {
            let _ = p.send(path);
        }
    }

    /// The entries of a [`LocalDir`] from `offset` as the kernel sees them,
    /// `.` and `..` first, each with the offset that follows it.
    fn local_entries(
        d: &LocalDir,
        offset: u64,
    ) -> impl Iterator<Item = (u64, &[u8], Option<&Entry>)> {
        let dots = [(&b"."[..], None), (&b".."[..], None)];
        let rest = d.entries.iter().map(|(n, e)| (n.as_slice(), Some(e)));
        dots.into_iter()
            .chain(rest)
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, e))| (i as u64 + 1, name, e))
    }

    /// Readdirplus on a [`LocalDir`] handle: each entry still in the
    /// listing is counted as a kernel lookup as it is handed over (like a
    /// hit). An entry the listing lost since the snapshot (a host
    /// invalidation, the host's node budget, a change of ours) must not
    /// simply go without attributes: node id 0 is also the inode number
    /// the program reads, and libc's `readdir` skips entries with inode 0,
    /// so the name would vanish from the listing. From the first such entry
    /// on, the rest of the reply is returned for [`Self::local_readdirplus_rest`].
    /// A priming thread's read just leaves such entries out: it only hands
    /// the kernel dentries, and asking the host would cost a round trip
    /// for a name nobody asked for.
    pub(super) fn local_readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) -> Option<Lost> {
        let dirs = lock(&self.local_dirs);
        let Some(d) = dirs.get(&fh) else {
            reply.error(Errno::EBADF);
            return None;
        };
        let mut entries = Self::local_entries(d, offset);
        let mut added = 0;
        while let Some((next, name, e)) = entries.next() {
            if let Some(e) = e {
                if !lock(&self.cache).hand_to_kernel(d.dir, name, e.attr.id) {
                    if d.primer {
                        continue;
                    }
                    let first = (next, name.to_vec(), Some(e.clone()));
                    let rest = entries
                        .take(LOST_REST_MAX)
                        .map(|(next, name, e)| (next, name.to_vec(), e.cloned()));
                    return Some(Lost {
                        reply,
                        added,
                        dir: d.dir,
                        rest: std::iter::once(first).chain(rest).collect(),
                    });
                }
            }
            if self.add_listed(&mut reply, d.dir, next, name, e) {
                break;
            }
            added += 1;
        }
        drop(entries);
        drop(dirs);
        reply.ok();
        None
    }

    /// The rest of a local readdirplus from an entry the listing lost: each
    /// such name is looked up on the host (an answer goes to the kernel
    /// like any lookup's; a name gone there is left out, as a host readdir
    /// would; another error ends the reply there).
    pub(super) async fn local_readdirplus_rest(self: Arc<Self>, lost: Lost) {
        let Lost {
            mut reply,
            mut added,
            dir,
            rest,
        } = lost;
        for (next, name, e) in rest {
            let e = match e {
                Some(e) if !lock(&self.cache).hand_to_kernel(dir, &name, e.attr.id) => {
                    let req = FsRequest::Lookup {
                        parent: dir,
                        name: name.clone(),
                    };
                    match self.client.call(req).await {
                        FsReply::Entry(e) => {
                            self.with_cache(|c, _| c.entry_to_kernel(e.attr.id));
                            Some(e)
                        }
                        FsReply::Err(libc::ENOENT) => continue,
                        // Never a silent gap: the entries so far go, and
                        // the kernel's next read starts at this name; if it
                        // is the first, the read fails.
                        r if added == 0 => {
                            return reply.error(error_of("a lookup", &r));
                        }
                        _ => break,
                    }
                }
                e => e,
            };
            if self.add_listed(&mut reply, dir, next, &name, e.as_ref()) {
                break;
            }
            added += 1;
        }
        reply.ok();
    }

    /// Adds an entry of a listing to a readdirplus reply: `e`, already
    /// counted as a kernel lookup, with its attributes; `.` and `..` (no
    /// entry) with a placeholder inode, never cached by the kernel. True
    /// if the reply is full (and the lookup given back).
    fn add_listed(
        &self,
        reply: &mut ReplyDirectoryPlus,
        dir: u64,
        next: u64,
        name: &[u8],
        e: Option<&Entry>,
    ) -> bool {
        let (attr, generation) = match e {
            Some(e) => {
                self.handed(dir, name, e);
                (self.file_attr(&e.attr), e.generation)
            }
            None => {
                let mut attr = negative_attr();
                attr.ino = INodeNo(placeholder_ino(dir, name));
                attr.kind = FileType::Directory;
                (attr, 0)
            }
        };
        let full = reply.add(
            attr.ino,
            next,
            OsStr::from_bytes(name),
            &TTL,
            &attr,
            Generation(generation),
        );
        if full {
            if let Some(e) = e {
                self.with_cache(|c, out| c.kernel_forget(e.attr.id, 1, out));
            }
        }
        full
    }

    /// Readdir (no attributes) on a [`LocalDir`] handle.
    pub(super) fn local_readdir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let dirs = lock(&self.local_dirs);
        let Some(d) = dirs.get(&fh) else {
            return reply.error(Errno::EBADF);
        };
        for (next, name, e) in Self::local_entries(d, offset) {
            let (ino, kind) = match e {
                Some(e) => (e.attr.id, file_type(e.attr.mode)),
                None => (placeholder_ino(d.dir, name), FileType::Directory),
            };
            if reply.add(INodeNo(ino), next, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        drop(dirs);
        reply.ok();
    }
}
