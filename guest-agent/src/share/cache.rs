//! Client-side directory listings and node reference counts.
//!
//! Every lookup that reaches the host costs a vsock round trip (~2 ms under
//! TCG), so a directory whose names are looked up one by one (`git status`,
//! `ls -l` of known paths, a build system stat-ing its inputs) is fetched
//! once, with attributes, and later lookups in it are answered here: a name
//! in the listing is a positive entry, a name missing from a complete
//! listing is a negative one.
//!
//! # Reference counts
//!
//! The host keeps a node (and an fd) alive while it holds references from
//! us: each `Entry` it sends (lookup, create, mkdir, symlink, link, and each
//! readdirplus entry with attributes) adds one, `Forget{nlookup}` removes
//! that many. We no longer pass the kernel's forgets straight through;
//! instead [`Refs`] counts, per node, the references the host holds for us
//! (`server`) and who needs the node here: the kernel (its lookup count),
//! listing slots naming it, and readdir entries fetched but not yet handed
//! on. While anyone needs it we keep all host references; when the last
//! user goes, one `Forget` returns exactly what the host counted. So the
//! host's count is exact however lookups and listings interleave, and a
//! node the kernel forgot stays alive on the host as long as a cached
//! listing names it (an answer from the listing hands the kernel an id the
//! host still knows).
//!
//! # Coherence
//!
//! * Host changes: the host's `InvalidateEntry{parent, name}` turns that
//!   slot into [`Slot::Unknown`] (the next lookup of the name asks the host
//!   and stores the answer), `InvalidateNode{id}` does the same for every
//!   slot naming `id` (its attributes changed). A directory's own
//!   `InvalidateNode` does not touch its listing: the host reports entry
//!   changes name by name, and dropping the listing on every create in the
//!   directory would refetch it after each file the guest writes.
//! * Invalidations and guest changes that arrive while a listing is being
//!   fetched are recorded and applied when it lands (the host may have read
//!   the directory before the change): those names are unknown, also when
//!   the fetch did not see them at all. A per-name lookup stores its answer
//!   only if the slot was not invalidated again while it was in flight
//!   (marks are never reused, across listings either).
//! * Guest changes through this client (create, mkdir, symlink, link,
//!   unlink, rmdir, rename, writes and setattr) update or mark the slots
//!   they affect. A reply is handled by its own task, possibly after host
//!   invalidations read behind it; so a removal, or a new directory's empty
//!   listing, is believed only if no host report that may be newer came in
//!   since the request was sent ([`Cache::stamp`]).
//! * A listing lives at most `TTL` (`fs/state.rs`), the time the kernel
//!   is told it may trust an entry, and negative answers carry the
//!   listing's remaining lifetime, so nothing is believed longer than the
//!   kernel would believe it (directories the host cannot watch, beyond its
//!   inotify limit, are no worse than the kernel's own dentry cache).
//!
//! # Size limits
//!
//! Every listed entry pins a host fd (the host's fd limit is ~20000 and its
//! nodes share it with open files), so: a directory with more than
//! [`PREFETCH_MAX`] entries is not listed (the fetch stops there, gives the
//! references back and lookups in it go to the host one by one, as before;
//! it is tried again after [`NO_LISTING_RETRY`]); all listings together hold
//! at most [`LISTED_MAX`] entries, least recently used listings go first;
//! at most [`FETCHES_MAX`] fetches run at once.
//!
//! # Fetching ahead
//!
//! When lookups made us fetch a directory, its subdirectories are likely
//! next (`git status` and build tools walk trees): up to [`SPECULATE_MAX`]
//! of them are fetched too, a few at a time, and primed (see
//! `super::prime`), while half the fetch budget and a quarter of the entry budget are free
//! ([`Cache::speculate`]; listings idle for [`IDLE_LISTING`] make room);
//! only small ones ([`AHEAD_DIR_SIZE_MAX`]), and at most
//! [`AHEAD_ENTRIES_MAX`] entries in all per directory. Those listings do not fetch further ahead
//! themselves, so one walk pulls in one level more than it asked for.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lima_proto::fs::{DirEntry, Entry, ROOT_ID};

/// Largest directory we list in full (entries, `.`/`..` excluded).
pub(super) const PREFETCH_MAX: usize = 4096;
/// Entries all listings may hold together (the host's node budget, ~18,000
/// fds per share by default, bounds what they pin in any case).
pub(super) const LISTED_MAX: usize = 16384;
/// Fetches in flight at once: `git status` lstat-s from 20 threads, each in
/// a directory of its own; with 4, most of them waited, asking name by name.
pub(super) const FETCHES_MAX: usize = 16;
/// How long a directory found too big (or unreadable) is looked up name by name.
pub(super) const NO_LISTING_RETRY: Duration = Duration::from_secs(300);
/// Subdirectories of a fetched directory fetched ahead, at most, per fetch.
pub(super) const SPECULATE_MAX: usize = 128;
/// Entries the subdirectories fetched ahead for one directory may hold
/// together (checked before each fetch, so a little more).
pub(super) const AHEAD_ENTRIES_MAX: usize = 8192;
/// Only subdirectories this small (`st_size`) are fetched ahead: on ext4
/// that is up to a few hundred entries.
pub(super) const AHEAD_DIR_SIZE_MAX: u64 = 16 << 10;
/// Fetching ahead stops once all listings hold this many entries: it must
/// never crowd out listings that lookups asked for.
const SPECULATE_LISTED_MAX: usize = LISTED_MAX / 4 * 3;
/// A listing no lookup used for this long may make room for fetching ahead.
const IDLE_LISTING: Duration = Duration::from_secs(30);
/// Lookups a listing answers before it is primed again ([`Cache::reprime`]).
const REPRIME_AFTER: u32 = 8;
/// ... and not sooner than this after it was last primed.
const REPRIME_GAP: Duration = Duration::from_secs(2);
/// Lookups that miss in a directory before it is fetched. The first one
/// goes to the host alone: a path walked once (`cat a/b/c`) should not pull
/// in every sibling on the way.
const MISSES_BEFORE_FETCH: u32 = 1;

/// Names and their entries, from a listing.
pub(super) type Names = Vec<(Vec<u8>, Entry)>;

/// A `Forget` to send: node id and count.
pub(super) type Forget = (u64, u64);

/// Who holds a node on this side, and how many references the host holds.
#[derive(Default, Debug)]
struct Refs {
    /// `Entry` replies received for it, not yet forgotten.
    server: u64,
    /// The kernel's lookup count.
    kernel: u64,
    /// Readdir entries with attributes, fetched and not yet used.
    buffered: u64,
    /// Listing slots naming it: `(directory, name)`.
    places: Vec<(u64, Vec<u8>)>,
}

impl Refs {
    fn unused(&self) -> bool {
        self.kernel == 0 && self.buffered == 0 && self.places.is_empty()
    }
}

#[derive(Debug, Clone)]
pub(super) enum Slot {
    Present(Entry),
    /// The name may exist; ask the host. The number is the invalidation
    /// that made it unknown, so a lookup answer that raced a newer one is
    /// not stored.
    Unknown(u64),
}

struct Listing {
    names: HashMap<Vec<u8>, Slot>,
    expires: Instant,
    /// The tick its fetch started at (for a directory the guest made, its
    /// mkdir was sent): host changes reported before then, when there was
    /// no listing to mark, may or may not be in it.
    started: u64,
    /// Last use, for eviction.
    used: u64,
    /// Lookups it answered with an entry since it was last primed: each is
    /// a name the kernel did not hold (see [`Cache::reprime`]).
    hits: u32,
    /// When it was last handed to the priming threads.
    primed: Option<Instant>,
    /// When a lookup last used it.
    last_used: Instant,
}

enum Dir {
    /// No listing yet; lookups that missed.
    Seen {
        misses: u32,
    },
    Fetching {
        token: u64,
        /// Names and nodes invalidated while the fetch runs.
        names: HashSet<Vec<u8>>,
        nodes: HashSet<u64>,
    },
    Listed(Listing),
    NoListing {
        until: Instant,
    },
}

/// What a lookup should do.
#[derive(Debug)]
pub(super) enum Answer {
    /// From the listing; the kernel's count is already taken.
    Hit(Entry),
    /// Absent from a complete listing; trust it this long.
    Absent(Duration),
    /// Ask the host. `unknown`: the slot's mark, to store the answer with
    /// [`Cache::looked_up`]. `fetch`: start fetching the directory with
    /// this token ([`Cache::fetched`] / [`Cache::fetch_failed`]).
    Miss {
        unknown: Option<u64>,
        fetch: Option<u64>,
    },
}

#[derive(Default)]
pub(super) struct Cache {
    nodes: HashMap<u64, Refs>,
    dirs: HashMap<u64, Dir>,
    /// Slots in all listings.
    listed: usize,
    fetching: usize,
    /// Counter for tokens, invalidation marks and LRU ticks.
    tick: u64,
    /// The mark of the last host `InvalidateEntry` in a directory that has
    /// neither listing nor fetch and that the kernel does not hold: one the
    /// guest just made may be such (see [`Self::new_empty_dir`]). Others
    /// are rare (host changes in directories the guest never looked up),
    /// so one mark for all of them is enough.
    stray: u64,
}

impl Cache {
    fn next(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn refs(&mut self, id: u64) -> Option<&mut Refs> {
        if id == ROOT_ID {
            return None; // never forgotten on either side
        }
        Some(self.nodes.entry(id).or_default())
    }

    /// An `Entry` from the host goes straight to the kernel.
    pub(super) fn entry_to_kernel(&mut self, id: u64) {
        if let Some(r) = self.refs(id) {
            r.server += 1;
            r.kernel += 1;
        }
    }

    /// A readdirplus entry with attributes arrived (held until
    /// [`Self::buffered_to_kernel`] or [`Self::drop_buffered`]).
    pub(super) fn buffered(&mut self, id: u64) {
        if let Some(r) = self.refs(id) {
            r.server += 1;
            r.buffered += 1;
        }
    }

    pub(super) fn buffered_to_kernel(&mut self, id: u64) {
        if let Some(r) = self.refs(id) {
            r.buffered = r.buffered.saturating_sub(1);
            r.kernel += 1;
        }
    }

    pub(super) fn drop_buffered(&mut self, id: u64, out: &mut Vec<Forget>) {
        if let Some(r) = self.nodes.get_mut(&id) {
            r.buffered = r.buffered.saturating_sub(1);
        }
        self.release_if_unused(id, out);
    }

    /// The kernel's `FORGET`; whether the kernel still holds the node (it
    /// looked it up again before this forget came).
    pub(super) fn kernel_forget(&mut self, id: u64, n: u64, out: &mut Vec<Forget>) -> bool {
        let holds = match self.nodes.get_mut(&id) {
            Some(r) => {
                r.kernel = r.kernel.saturating_sub(n);
                r.kernel > 0
            }
            None => false,
        };
        self.release_if_unused(id, out);
        holds
    }

    /// Gives the host its references once nobody here needs the node; its
    /// listing (if it is a directory) goes too, since without a node the
    /// host no longer watches it.
    fn release_if_unused(&mut self, id: u64, out: &mut Vec<Forget>) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            if !self.nodes.get(&id).is_some_and(Refs::unused) {
                continue;
            }
            let r = self.nodes.remove(&id).expect("just seen");
            if r.server > 0 {
                out.push((id, r.server));
            }
            if let Some(dir) = self.dirs.remove(&id) {
                work.extend(self.unplace_all(id, dir));
            }
        }
    }

    /// Removes a listing's slots from their nodes; returns nodes that may
    /// now be unused.
    fn unplace_all(&mut self, dir: u64, state: Dir) -> Vec<u64> {
        match state {
            Dir::Listed(l) => {
                self.listed -= l.names.len();
                l.names
                    .into_iter()
                    .filter_map(|(name, slot)| match slot {
                        Slot::Present(e) => {
                            self.unplace(e.attr.id, dir, &name);
                            Some(e.attr.id)
                        }
                        Slot::Unknown(_) => None,
                    })
                    .collect()
            }
            Dir::Fetching { .. } => {
                // Its result finds no fetch and is given back then.
                self.fetching -= 1;
                Vec::new()
            }
            Dir::Seen { .. } | Dir::NoListing { .. } => Vec::new(),
        }
    }

    fn unplace(&mut self, id: u64, dir: u64, name: &[u8]) {
        if let Some(r) = self.nodes.get_mut(&id) {
            if let Some(i) = r.places.iter().position(|(d, n)| *d == dir && n == name) {
                r.places.swap_remove(i);
            }
        }
    }

    /// Sets one slot of `dir`'s listing (if it has one), keeping node
    /// places and counts in step. `None` removes the name (absent).
    fn set_slot(&mut self, dir: u64, name: &[u8], slot: Option<Slot>, out: &mut Vec<Forget>) {
        let Some(Dir::Listed(l)) = self.dirs.get_mut(&dir) else {
            return;
        };
        let old = match slot.clone() {
            Some(s) => l.names.insert(name.to_vec(), s),
            None => l.names.remove(name),
        };
        match (&old, &slot) {
            (None, Some(_)) => self.listed += 1,
            (Some(_), None) => self.listed -= 1,
            _ => {}
        }
        if let Some(Slot::Present(e)) = &slot {
            if let Some(r) = self.refs(e.attr.id) {
                r.places.push((dir, name.to_vec()));
            }
        }
        if let Some(Slot::Present(e)) = old {
            self.unplace(e.attr.id, dir, name);
            self.release_if_unused(e.attr.id, out);
        }
    }

    /// Decides how to answer the kernel's `LOOKUP(dir, name)`.
    pub(super) fn lookup(
        &mut self,
        dir: u64,
        name: &[u8],
        now: Instant,
        out: &mut Vec<Forget>,
    ) -> Answer {
        let tick = self.next();
        let miss = Answer::Miss {
            unknown: None,
            fetch: None,
        };
        match self.dirs.get_mut(&dir) {
            Some(Dir::Listed(l)) if l.expires > now => {
                l.used = tick;
                l.last_used = now;
                let left = l.expires - now;
                return match l.names.get(name) {
                    Some(Slot::Present(e)) => {
                        l.hits = l.hits.saturating_add(1);
                        let e = e.clone();
                        if let Some(r) = self.refs(e.attr.id) {
                            r.kernel += 1;
                        }
                        Answer::Hit(e)
                    }
                    Some(Slot::Unknown(mark)) => Answer::Miss {
                        unknown: Some(*mark),
                        fetch: None,
                    },
                    None => Answer::Absent(left),
                };
            }
            Some(Dir::Listed(_)) => {
                // Expired: drop it and start over.
                let state = self.dirs.remove(&dir).expect("just seen");
                for id in self.unplace_all(dir, state) {
                    self.release_if_unused(id, out);
                }
            }
            Some(Dir::Fetching { .. }) => return miss,
            Some(Dir::NoListing { until }) if *until > now => return miss,
            _ => {}
        }
        let misses = match self.dirs.get(&dir) {
            Some(Dir::Seen { misses }) => *misses,
            _ => 0,
        };
        if misses < MISSES_BEFORE_FETCH || self.fetching >= FETCHES_MAX {
            self.dirs.insert(dir, Dir::Seen { misses: misses + 1 });
            return miss;
        }
        self.fetching += 1;
        self.dirs.insert(
            dir,
            Dir::Fetching {
                token: tick,
                names: HashSet::new(),
                nodes: HashSet::new(),
            },
        );
        Answer::Miss {
            unknown: None,
            fetch: Some(tick),
        }
    }

    /// Whether to prime listed `dir` again: the kernel has looked up
    /// [`REPRIME_AFTER`] names in it since it was last primed, at least
    /// [`REPRIME_GAP`] ago, so it lost the dentries priming gave it (memory
    /// pressure, `drop_caches`) while the listing lived on. (Lookups racing
    /// a priming in progress are no such sign.) Counting starts over.
    pub(super) fn reprime(&mut self, dir: u64, now: Instant) -> bool {
        match self.dirs.get_mut(&dir) {
            Some(Dir::Listed(l))
                if l.hits >= REPRIME_AFTER
                    && l.primed
                        .is_none_or(|t| now.duration_since(t) >= REPRIME_GAP) =>
            {
                l.hits = 0;
                l.primed = Some(now);
                true
            }
            _ => false,
        }
    }

    /// `dir`'s listing goes to the priming threads now.
    pub(super) fn priming(&mut self, dir: u64, now: Instant) {
        if let Some(Dir::Listed(l)) = self.dirs.get_mut(&dir) {
            l.hits = 0;
            l.primed = Some(now);
        }
    }

    /// Starts fetching `dir` ahead of any lookup in it (it is a
    /// subdirectory of a directory that lookups made us fetch), unless it
    /// is listed, being fetched, or known not to list, or half the fetch budget
    /// or three quarters of the entry budget are spent. The token is for
    /// [`Self::fetched`] / [`Self::fetch_failed`], as from [`Self::lookup`].
    pub(super) fn speculate(
        &mut self,
        dir: u64,
        now: Instant,
        out: &mut Vec<Forget>,
    ) -> Option<u64> {
        if self.listed >= SPECULATE_LISTED_MAX {
            self.evict_idle(now, out);
        }
        if dir == ROOT_ID
            || self.fetching >= FETCHES_MAX / 2
            || self.listed >= SPECULATE_LISTED_MAX
            || !matches!(self.dirs.get(&dir), None | Some(Dir::Seen { .. }))
            // Only a node a listing holds: the host still knows it.
            || self.nodes.get(&dir).is_none_or(|r| r.places.is_empty())
        {
            return None;
        }
        let tick = self.next();
        self.fetching += 1;
        self.dirs.insert(
            dir,
            Dir::Fetching {
                token: tick,
                names: HashSet::new(),
                nodes: HashSet::new(),
            },
        );
        Some(tick)
    }

    /// A host answer to a lookup that missed on an unknown slot: stored if
    /// nothing invalidated the name since. `entry` is `None` for ENOENT.
    pub(super) fn looked_up(
        &mut self,
        dir: u64,
        name: &[u8],
        mark: u64,
        entry: Option<&Entry>,
        out: &mut Vec<Forget>,
    ) {
        let current = match self.dirs.get(&dir) {
            Some(Dir::Listed(l)) => l.names.get(name),
            _ => None,
        };
        if !matches!(current, Some(Slot::Unknown(m)) if *m == mark) {
            return;
        }
        let slot = entry.map(|e| Slot::Present(e.clone()));
        self.set_slot(dir, name, slot, out);
    }

    /// A tick to take before sending a request that changes a directory,
    /// for [`Self::removed`] / [`Self::new_empty_dir`]: its reply may be
    /// handled after host invalidations read behind it (the reader applies
    /// those at once, the reply waits for its task), and any of them may
    /// report a change made after ours.
    pub(super) fn stamp(&mut self) -> u64 {
        self.next()
    }

    /// Whether the fetch with `token` is still wanted.
    pub(super) fn fetch_wanted(&self, dir: u64, token: u64) -> bool {
        matches!(self.dirs.get(&dir), Some(Dir::Fetching { token: t, .. }) if *t == token)
    }

    /// A fetch ended without a listing: more than [`PREFETCH_MAX`] entries,
    /// or an error (e.g. a directory we may search but not read). Either
    /// way, lookups in it go to the host one by one for a while.
    pub(super) fn fetch_failed(&mut self, dir: u64, token: u64, now: Instant) {
        if !self.fetch_wanted(dir, token) {
            return;
        }
        self.fetching -= 1;
        self.dirs.insert(
            dir,
            Dir::NoListing {
                until: now + NO_LISTING_RETRY,
            },
        );
    }

    /// A complete listing arrived. Every entry with attributes was counted
    /// with [`Self::buffered`] on arrival; they move into the listing, or
    /// are given back if the fetch is no longer wanted.
    pub(super) fn fetched(
        &mut self,
        dir: u64,
        token: u64,
        entries: Vec<DirEntry>,
        expires: Instant,
        out: &mut Vec<Forget>,
    ) {
        let wanted = self.fetch_wanted(dir, token);
        let held: Vec<u64> = entries
            .iter()
            .filter_map(|e| e.entry.as_ref().map(|x| x.attr.id))
            .collect();
        if wanted {
            let Some(Dir::Fetching { names, nodes, .. }) = self.dirs.remove(&dir) else {
                unreachable!("checked by fetch_wanted")
            };
            self.fetching -= 1;
            // A fresh mark, never one an older listing handed out: a lookup
            // answered before this fetch must not fill its slots.
            let mark = self.next();
            let mut listing = Listing {
                names: HashMap::with_capacity(entries.len()),
                expires,
                started: token,
                used: mark,
                hits: 0,
                primed: None,
                last_used: Instant::now(),
            };
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let slot = match e.entry {
                    Some(x) if !names.contains(&e.name) && !nodes.contains(&x.attr.id) => {
                        if let Some(r) = self.refs(x.attr.id) {
                            r.places.push((dir, e.name.clone()));
                        }
                        Slot::Present(x)
                    }
                    // Invalidated during the fetch, or the host had no
                    // attributes for it (a race with a host change).
                    _ => Slot::Unknown(mark),
                };
                listing.names.insert(e.name, slot);
            }
            // Names made or changed during the fetch that it did not see
            // (the host read the directory first) may exist: unknown, not
            // absent.
            for name in names {
                listing.names.entry(name).or_insert(Slot::Unknown(mark));
            }
            self.listed += listing.names.len();
            self.dirs.insert(dir, Dir::Listed(listing));
        }
        for id in held {
            self.drop_buffered(id, out);
        }
        if wanted {
            self.evict(dir, out);
        }
    }

    /// Drops least recently used listings that no lookup used for
    /// [`IDLE_LISTING`] until fetching ahead fits again (the listings of a
    /// walk long done, after `drop_caches` made the kernel forget it).
    fn evict_idle(&mut self, now: Instant, out: &mut Vec<Forget>) {
        while self.listed >= SPECULATE_LISTED_MAX {
            let oldest = self
                .dirs
                .iter()
                .filter_map(|(id, d)| match d {
                    Dir::Listed(l)
                        if now.saturating_duration_since(l.last_used) >= IDLE_LISTING =>
                    {
                        Some((l.used, *id))
                    }
                    _ => None,
                })
                .min();
            let Some((_, id)) = oldest else { return };
            self.drop_listing(id, out);
        }
    }

    /// Drops least recently used listings (never `keep`) until all fit.
    fn evict(&mut self, keep: u64, out: &mut Vec<Forget>) {
        while self.listed > LISTED_MAX {
            let oldest = self
                .dirs
                .iter()
                .filter_map(|(id, d)| match d {
                    Dir::Listed(l) if *id != keep => Some((l.used, *id)),
                    _ => None,
                })
                .min();
            let Some((_, id)) = oldest else { return };
            self.drop_listing(id, out);
        }
    }

    /// Forgets what we know of `dir`'s entries.
    pub(super) fn drop_listing(&mut self, dir: u64, out: &mut Vec<Forget>) {
        if let Some(state) = self.dirs.remove(&dir) {
            for id in self.unplace_all(dir, state) {
                self.release_if_unused(id, out);
            }
        }
    }

    /// Drops every listing and fetch (the host lost change events).
    pub(super) fn drop_all_listings(&mut self, out: &mut Vec<Forget>) {
        let dirs: Vec<u64> = self
            .dirs
            .iter()
            .filter(|(_, d)| matches!(d, Dir::Listed(_) | Dir::Fetching { .. }))
            .map(|(id, _)| *id)
            .collect();
        for dir in dirs {
            self.drop_listing(dir, out);
        }
    }

    /// The host says `name` in `dir` changed (or the guest changed it in a
    /// way we cannot describe exactly).
    pub(super) fn invalidate_entry(&mut self, dir: u64, name: &[u8], out: &mut Vec<Forget>) {
        let mark = self.next();
        match self.dirs.get_mut(&dir) {
            Some(Dir::Fetching { names, .. }) => {
                names.insert(name.to_vec());
            }
            Some(Dir::Listed(_)) => self.set_slot(dir, name, Some(Slot::Unknown(mark)), out),
            _ if dir != ROOT_ID && self.nodes.get(&dir).is_none_or(|r| r.kernel == 0) => {
                self.stray = mark;
            }
            _ => {}
        }
    }

    /// `id`'s attributes changed: every slot naming it becomes unknown.
    pub(super) fn invalidate_node(&mut self, id: u64, out: &mut Vec<Forget>) {
        // Runs after every guest write: skip the scan when nothing is fetched.
        if self.fetching > 0 {
            for d in self.dirs.values_mut() {
                if let Dir::Fetching { nodes, .. } = d {
                    nodes.insert(id);
                }
            }
        }
        let places = match self.nodes.get(&id) {
            Some(r) if !r.places.is_empty() => r.places.clone(),
            _ => return,
        };
        for (dir, name) in places {
            self.invalidate_entry(dir, &name, out);
        }
    }

    /// The guest made `name` in `dir` (create, mkdir, symlink, link): the
    /// reply's entry is what the name now holds. The host reference it
    /// carries is counted by [`Self::entry_to_kernel`].
    pub(super) fn created(&mut self, dir: u64, name: &[u8], entry: &Entry, out: &mut Vec<Forget>) {
        if let Some(Dir::Fetching { names, .. }) = self.dirs.get_mut(&dir) {
            names.insert(name.to_vec());
        }
        self.set_slot(dir, name, Some(Slot::Present(entry.clone())), out);
    }

    /// The guest made an empty directory (its mkdir was sent at `since`):
    /// its listing is known, unless the host may have reported a name in
    /// it meanwhile (that invalidation found no listing to mark).
    pub(super) fn new_empty_dir(&mut self, id: u64, since: u64, expires: Instant) {
        if id == ROOT_ID || self.dirs.contains_key(&id) || self.stray > since {
            return;
        }
        let used = self.next();
        self.dirs.insert(
            id,
            Dir::Listed(Listing {
                names: HashMap::new(),
                expires,
                started: since,
                used,
                hits: 0,
                primed: None,
                last_used: Instant::now(),
            }),
        );
    }

    /// The guest removed `name` from `dir` (unlink, rmdir, rename source;
    /// the request was sent at `since`). If the host reported the name
    /// since, or the listing was fetched since, the host may have made it
    /// again after our removal: unknown, not absent.
    pub(super) fn removed(&mut self, dir: u64, name: &[u8], since: u64, out: &mut Vec<Forget>) {
        let raced = match self.dirs.get_mut(&dir) {
            Some(Dir::Fetching { names, .. }) => {
                names.insert(name.to_vec());
                return;
            }
            Some(Dir::Listed(l)) => {
                l.started > since
                    || matches!(l.names.get(name), Some(Slot::Unknown(m)) if *m > since)
            }
            _ => return,
        };
        let slot = if raced {
            Some(Slot::Unknown(self.next()))
        } else {
            None
        };
        self.set_slot(dir, name, slot, out);
    }

    /// The node a listing slot names, if known.
    pub(super) fn listed_id(&self, dir: u64, name: &[u8]) -> Option<u64> {
        match self.dirs.get(&dir) {
            Some(Dir::Listed(l)) => match l.names.get(name) {
                Some(Slot::Present(e)) => Some(e.attr.id),
                _ => None,
            },
            _ => None,
        }
    }

    /// The file type (`S_IFMT` bits) a listing slot names, if known.
    pub(super) fn listed_kind(&self, dir: u64, name: &[u8]) -> Option<u32> {
        match self.dirs.get(&dir) {
            Some(Dir::Listed(l)) => match l.names.get(name) {
                Some(Slot::Present(e)) => Some(e.attr.mode & libc::S_IFMT),
                _ => None,
            },
            _ => None,
        }
    }

    /// The names a live listing of `dir` holds entries for, to serve a
    /// readdir from, and whether that is all of them (no name unknown).
    pub(super) fn present(&self, dir: u64, now: Instant) -> Option<(Names, bool)> {
        match self.dirs.get(&dir) {
            Some(Dir::Listed(l)) if l.expires > now => {
                let mut complete = true;
                let entries = l
                    .names
                    .iter()
                    .filter_map(|(name, slot)| match slot {
                        Slot::Present(e) => Some((name.clone(), e.clone())),
                        Slot::Unknown(_) => {
                            complete = false;
                            None
                        }
                    })
                    .collect();
                Some((entries, complete))
            }
            _ => None,
        }
    }

    /// A readdirplus served from the listing is about to hand the kernel `name` in `dir` as
    /// node `id`: true (and counted as a kernel lookup, like a hit) if the
    /// listing still says so; the slot may have changed since
    /// [`Self::present`].
    pub(super) fn hand_to_kernel(&mut self, dir: u64, name: &[u8], id: u64) -> bool {
        if self.listed_id(dir, name) != Some(id) {
            return false;
        }
        match self.refs(id) {
            Some(r) => {
                r.kernel += 1;
                true
            }
            None => false,
        }
    }

    /// Host references and local users of `id`: `(server, kernel, others)`.
    #[cfg(test)]
    pub(super) fn counts(&self, id: u64) -> Option<(u64, u64, u64)> {
        self.nodes
            .get(&id)
            .map(|r| (r.server, r.kernel, r.buffered + r.places.len() as u64))
    }

    /// References the host holds for us in total.
    #[cfg(test)]
    pub(super) fn server_refs(&self) -> u64 {
        self.nodes.values().map(|r| r.server).sum()
    }

    #[cfg(test)]
    pub(super) fn is_listed(&self, dir: u64) -> bool {
        matches!(self.dirs.get(&dir), Some(Dir::Listed(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two misses in `dir` (the second starts a fetch); the fetch's token.
    fn start_fetch(c: &mut Cache, dir: u64, now: Instant, out: &mut Vec<Forget>) -> u64 {
        c.lookup(dir, b"miss-1", now, out);
        let Answer::Miss {
            fetch: Some(token), ..
        } = c.lookup(dir, b"miss-2", now, out)
        else {
            panic!("the second miss in {dir} should start a fetch")
        };
        token
    }
    use lima_proto::fs::{Attr, Time};

    fn entry(id: u64) -> Entry {
        let t = Time { secs: 0, nanos: 0 };
        Entry {
            attr: Attr {
                id,
                size: 0,
                blocks: 0,
                atime: t,
                mtime: t,
                ctime: t,
                mode: 0o100644,
                nlink: 1,
                rdev: 0,
                blksize: 4096,
            },
            generation: 0,
        }
    }

    fn dirent(name: &str, id: u64) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            next_offset: 0,
            entry: Some(entry(id)),
            kind: libc::S_IFREG,
        }
    }

    /// Fetches `dir` with `names` (ids 100, 101, ...) through the second miss.
    fn list(c: &mut Cache, dir: u64, names: &[&str], now: Instant) -> Vec<Forget> {
        list_from(c, dir, names, 100, now)
    }

    fn list_from(c: &mut Cache, dir: u64, names: &[&str], base: u64, now: Instant) -> Vec<Forget> {
        let mut out = Vec::new();
        assert!(matches!(
            c.lookup(dir, b"zz-first", now, &mut out),
            Answer::Miss { fetch: None, .. }
        ));
        let Answer::Miss {
            fetch: Some(token), ..
        } = c.lookup(dir, b"zz-second", now, &mut out)
        else {
            panic!("second miss should fetch")
        };
        let entries: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| dirent(n, base + i as u64))
            .collect();
        for e in &entries {
            c.buffered(e.entry.as_ref().unwrap().attr.id);
        }
        c.fetched(dir, token, entries, now + Duration::from_secs(60), &mut out);
        out
    }

    #[test]
    fn listing_answers_hits_and_misses_and_forgets_exactly() {
        let now = Instant::now();
        let mut c = Cache::default();
        assert!(list(&mut c, 7, &["a", "b"], now).is_empty());
        let mut out = Vec::new();
        let Answer::Hit(e) = c.lookup(7, b"a", now, &mut out) else {
            panic!()
        };
        assert_eq!(e.attr.id, 100);
        assert_eq!(c.counts(100), Some((1, 1, 1)));
        assert!(
            matches!(c.lookup(7, b"nope", now, &mut out), Answer::Absent(d) if d <= Duration::from_secs(60))
        );
        // The kernel forgets `a`: the listing still names it, nothing sent.
        c.kernel_forget(100, 1, &mut out);
        assert!(out.is_empty());
        // Dropping the listing gives back both nodes' references.
        c.drop_listing(7, &mut out);
        out.sort();
        assert_eq!(out, vec![(100, 1), (101, 1)]);
        assert_eq!(c.server_refs(), 0);
    }

    #[test]
    fn a_late_forget_says_whether_the_kernel_still_holds_the_node() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["a"], now);
        let mut out = Vec::new();
        // Looked up, forgotten (drop_caches), looked up again; the old
        // forget comes after the new lookup.
        assert!(matches!(c.lookup(7, b"a", now, &mut out), Answer::Hit(_)));
        assert!(matches!(c.lookup(7, b"a", now, &mut out), Answer::Hit(_)));
        assert!(c.kernel_forget(100, 1, &mut out));
        assert!(!c.kernel_forget(100, 1, &mut out));
        assert!(!c.kernel_forget(999, 1, &mut out)); // never seen
        assert!(out.is_empty()); // the listing still holds it
    }

    #[test]
    fn a_listing_the_kernel_keeps_asking_is_primed_again() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["a", "b"], now);
        let mut out = Vec::new();
        c.priming(7, now);
        let mut at = now;
        for round in 0..2 {
            for i in 0..REPRIME_AFTER {
                assert!(!c.reprime(7, at), "round {round}, hit {i}");
                assert!(matches!(c.lookup(7, b"a", now, &mut out), Answer::Hit(_)));
            }
            // Hits soon after a priming race it: not yet.
            assert!(!c.reprime(7, at + REPRIME_GAP / 2), "round {round}");
            at += REPRIME_GAP;
            assert!(c.reprime(7, at), "round {round}");
        }
        // Absent names are the kernel's negative dentries, not lost ones.
        for _ in 0..2 * REPRIME_AFTER {
            assert!(matches!(
                c.lookup(7, b"zz", now, &mut out),
                Answer::Absent(_)
            ));
        }
        assert!(!c.reprime(7, at + 10 * REPRIME_GAP));
        assert!(!c.reprime(8, at)); // not listed
    }

    #[test]
    fn subdirectories_of_a_listing_are_fetched_ahead_within_budget() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["sub", "other"], now); // ids 100, 101
        let mut out = Vec::new();
        // A node no listing holds is never fetched ahead (the host may have
        // forgotten it), nor is the root.
        assert_eq!(c.speculate(555, now, &mut out), None);
        assert_eq!(c.speculate(ROOT_ID, now, &mut out), None);
        let token = c
            .speculate(100, now, &mut out)
            .expect("a listed subdirectory");
        // Once: it is being fetched now.
        assert_eq!(c.speculate(100, now, &mut out), None);
        c.buffered(200);
        c.fetched(
            100,
            token,
            vec![dirent("f", 200)],
            now + Duration::from_secs(60),
            &mut out,
        );
        assert!(c.is_listed(100));
        assert!(matches!(c.lookup(100, b"f", now, &mut out), Answer::Hit(_)));
        assert!(matches!(
            c.lookup(100, b"g", now, &mut out),
            Answer::Absent(_)
        ));
        // Listed: not fetched again.
        assert_eq!(c.speculate(100, now, &mut out), None);

        // Half the fetch budget busy with lookups' fetches: none ahead.
        for dir in 0..(FETCHES_MAX / 2) as u64 {
            start_fetch(&mut c, 1000 + dir, now, &mut out);
        }
        assert_eq!(c.speculate(101, now, &mut out), None);

        // Three quarters of the entry budget listed: none ahead either.
        let mut c = Cache::default();
        list(&mut c, 7, &["sub"], now);
        c.listed = SPECULATE_LISTED_MAX;
        assert_eq!(c.speculate(100, now, &mut out), None);
        c.listed = 1;
        assert!(c.speculate(100, now, &mut out).is_some());
    }

    #[test]
    fn idle_listings_make_room_for_fetching_ahead() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["sub"], now); // "sub" is node 100
        let names: Vec<String> = (0..SPECULATE_LISTED_MAX).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        list_from(&mut c, 8, &names, 10_000, now);
        let mut out = Vec::new();
        // Everything in use: no room.
        assert_eq!(c.speculate(100, now, &mut out), None);
        assert!(out.is_empty());
        // Later, 7 was just used and 8 was not: 8 goes, 100 is fetched.
        let later = now + IDLE_LISTING + Duration::from_secs(1);
        assert!(matches!(
            c.lookup(7, b"sub", later, &mut out),
            Answer::Hit(_)
        ));
        assert!(c.speculate(100, later, &mut out).is_some());
        assert!(c.is_listed(7));
        assert!(!c.is_listed(8));
        assert_eq!(out.len(), SPECULATE_LISTED_MAX);
    }

    #[test]
    fn a_node_the_kernel_holds_outlives_the_listing() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["a"], now);
        let mut out = Vec::new();
        assert!(matches!(c.lookup(7, b"a", now, &mut out), Answer::Hit(_)));
        // A direct lookup of the same node adds a host reference.
        c.entry_to_kernel(100);
        c.drop_listing(7, &mut out);
        assert!(out.is_empty());
        c.kernel_forget(100, 2, &mut out);
        assert_eq!(out, vec![(100, 2)]);
    }

    #[test]
    fn invalidations_during_a_fetch_are_applied_when_it_lands() {
        let now = Instant::now();
        let mut c = Cache::default();
        let mut out = Vec::new();
        let token = start_fetch(&mut c, 7, now, &mut out);
        c.invalidate_entry(7, b"a", &mut out);
        c.invalidate_node(101, &mut out);
        c.buffered(100);
        c.buffered(101);
        c.buffered(102);
        c.fetched(
            7,
            token,
            vec![dirent("a", 100), dirent("b", 101), dirent("c", 102)],
            now + Duration::from_secs(60),
            &mut out,
        );
        // a and b became unknown: their references went back at once.
        out.sort();
        assert_eq!(out, vec![(100, 1), (101, 1)]);
        for n in [&b"a"[..], b"b"] {
            assert!(matches!(
                c.lookup(7, n, now, &mut out),
                Answer::Miss {
                    unknown: Some(_),
                    ..
                }
            ));
        }
        assert!(matches!(c.lookup(7, b"c", now, &mut out), Answer::Hit(_)));
    }

    #[test]
    fn host_invalidation_makes_a_name_unknown_and_a_lookup_fills_it() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["a"], now);
        let mut out = Vec::new();
        c.invalidate_entry(7, b"new", &mut out);
        let Answer::Miss {
            unknown: Some(mark),
            ..
        } = c.lookup(7, b"new", now, &mut out)
        else {
            panic!()
        };
        // An answer that raced a newer invalidation is not stored.
        c.invalidate_entry(7, b"new", &mut out);
        c.entry_to_kernel(200);
        c.looked_up(7, b"new", mark, Some(&entry(200)), &mut out);
        let Answer::Miss {
            unknown: Some(mark),
            ..
        } = c.lookup(7, b"new", now, &mut out)
        else {
            panic!()
        };
        c.entry_to_kernel(200);
        c.looked_up(7, b"new", mark, Some(&entry(200)), &mut out);
        assert!(matches!(c.lookup(7, b"new", now, &mut out), Answer::Hit(_)));
        assert_eq!(c.counts(200), Some((2, 3, 1)));
        // Deleted on the host: unknown, then absent once the host says so.
        c.invalidate_entry(7, b"new", &mut out);
        let Answer::Miss {
            unknown: Some(mark),
            ..
        } = c.lookup(7, b"new", now, &mut out)
        else {
            panic!()
        };
        c.looked_up(7, b"new", mark, None, &mut out);
        assert!(matches!(
            c.lookup(7, b"new", now, &mut out),
            Answer::Absent(_)
        ));
        c.kernel_forget(200, 3, &mut out);
        assert_eq!(out, vec![(200, 2)]);
    }

    #[test]
    fn guest_changes_update_the_listing() {
        let now = Instant::now();
        let mut c = Cache::default();
        list(&mut c, 7, &["a"], now);
        let mut out = Vec::new();
        c.entry_to_kernel(300);
        c.created(7, b"n", &entry(300), &mut out);
        assert!(matches!(c.lookup(7, b"n", now, &mut out), Answer::Hit(_)));
        let since = c.stamp();
        c.removed(7, b"a", since, &mut out);
        assert_eq!(out, vec![(100, 1)]);
        assert!(matches!(
            c.lookup(7, b"a", now, &mut out),
            Answer::Absent(_)
        ));
        let since = c.stamp();
        c.new_empty_dir(400, since, now + Duration::from_secs(60));
        assert!(matches!(
            c.lookup(400, b"x", now, &mut out),
            Answer::Absent(_)
        ));
    }

    #[test]
    fn big_directories_are_not_listed_and_expired_listings_are_refetched() {
        let now = Instant::now();
        let mut c = Cache::default();
        let mut out = Vec::new();
        let token = start_fetch(&mut c, 7, now, &mut out);
        c.fetch_failed(7, token, now);
        for _ in 0..3 {
            assert!(matches!(
                c.lookup(7, b"z", now, &mut out),
                Answer::Miss {
                    fetch: None,
                    unknown: None
                }
            ));
        }
        // Later it is treated like a directory not seen before.
        let later = now + NO_LISTING_RETRY + Duration::from_secs(1);
        assert!(matches!(
            c.lookup(7, b"z", later, &mut out),
            Answer::Miss { fetch: None, .. }
        ));
        assert!(matches!(
            c.lookup(7, b"z", later, &mut out),
            Answer::Miss { fetch: Some(_), .. }
        ));

        list(&mut c, 8, &["a"], now);
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            c.lookup(8, b"a", later, &mut out),
            Answer::Miss { fetch: None, .. }
        ));
        assert_eq!(out, vec![(100, 1)]);
    }

    #[test]
    fn releasing_a_directory_node_drops_its_listing() {
        let now = Instant::now();
        let mut c = Cache::default();
        c.entry_to_kernel(7);
        list(&mut c, 7, &["a"], now);
        let mut out = Vec::new();
        c.kernel_forget(7, 1, &mut out);
        out.sort();
        assert_eq!(out, vec![(7, 1), (100, 1)]);
        assert!(!c.is_listed(7));
    }

    #[test]
    fn least_recently_used_listings_go_first() {
        let now = Instant::now();
        let mut c = Cache::default();
        let names: Vec<String> = (0..LISTED_MAX / 2).map(|i| format!("f{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        list_from(&mut c, 7, &names, 10_000, now);
        list_from(&mut c, 8, &names, 20_000, now);
        let mut out = Vec::new();
        assert!(matches!(c.lookup(7, b"f0", now, &mut out), Answer::Hit(_)));
        let out = list_from(&mut c, 9, &["x"], 30_000, now);
        assert!(!c.is_listed(8) && c.is_listed(7) && c.is_listed(9));
        assert_eq!(out.len(), LISTED_MAX / 2);
    }

    /// Not answered "absent": the host is asked (`Unknown`) or it is a hit.
    fn not_absent(c: &mut Cache, dir: u64, name: &[u8], now: Instant) -> bool {
        !matches!(c.lookup(dir, name, now, &mut Vec::new()), Answer::Absent(_))
    }

    #[test]
    fn an_overflow_drops_every_listing_and_fetch() {
        let now = Instant::now();
        let mut c = Cache::default();
        let mut out = Vec::new();
        list(&mut c, 7, &["a"], now);
        let token = start_fetch(&mut c, 8, now, &mut out);
        c.drop_all_listings(&mut out);
        assert!(!c.is_listed(7));
        // Nothing is answered from what was listed: the host is asked.
        assert!(matches!(
            c.lookup(7, b"a", now, &mut out),
            Answer::Miss { .. }
        ));
        assert!(
            !c.fetch_wanted(8, token),
            "a fetch in flight is dropped too"
        );
        assert_eq!(c.server_refs(), 0, "listed entries were given back");
    }

    #[test]
    fn names_made_during_a_fetch_are_not_absent_when_it_lands() {
        // git's lost object: `.git/objects` is being fetched when git makes
        // `ab` in it; the host read the directory first, so the listing
        // lacks `ab`. Once the kernel drops its dentry (memory pressure,
        // the host's ask to forget), the next lookup of `ab` comes here.
        let now = Instant::now();
        let mut c = Cache::default();
        let mut out = Vec::new();
        let token = start_fetch(&mut c, 7, now, &mut out);
        // mkdir, create, link or symlink by the guest:
        c.entry_to_kernel(300);
        c.created(7, b"ab", &entry(300), &mut out);
        // rename into it by the guest (the target is invalidated):
        c.invalidate_entry(7, b"moved", &mut out);
        // made by the host:
        c.invalidate_entry(7, b"host-new", &mut out);
        c.buffered(100);
        c.fetched(
            7,
            token,
            vec![dirent("a", 100)],
            now + Duration::from_secs(60),
            &mut out,
        );
        assert!(matches!(c.lookup(7, b"a", now, &mut out), Answer::Hit(_)));
        for n in [&b"ab"[..], b"moved", b"host-new"] {
            assert!(
                not_absent(&mut c, 7, n, now),
                "{}",
                String::from_utf8_lossy(n)
            );
        }
        assert!(!not_absent(&mut c, 7, b"never", now));
    }

    #[test]
    fn an_answer_from_an_older_listing_is_not_stored_in_a_newer_one() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut c = Cache::default();
        let mut out = Vec::new();
        // A fetch of 7 that finds `lock` as node `id`, during which the host
        // reports `lock` changed.
        let fetch_while_lock_changes = |c: &mut Cache, id: u64, out: &mut Vec<Forget>| {
            let token = start_fetch(c, 7, now, out);
            c.invalidate_entry(7, b"lock", out);
            c.buffered(id);
            c.fetched(7, token, vec![dirent("lock", id)], later, out);
        };
        // `lock` changed during the first fetch: unknown; a lookup asks.
        fetch_while_lock_changes(&mut c, 100, &mut out);
        let Answer::Miss {
            unknown: Some(old), ..
        } = c.lookup(7, b"lock", now, &mut out)
        else {
            panic!()
        };
        // The listing goes (evicted, expired) and is fetched again while
        // `lock` is made anew on the host.
        c.drop_listing(7, &mut out);
        fetch_while_lock_changes(&mut c, 101, &mut out);
        // The first lookup's answer (ENOENT, from before) arrives late.
        c.looked_up(7, b"lock", old, None, &mut out);
        assert!(not_absent(&mut c, 7, b"lock", now));
    }

    #[test]
    fn a_removal_that_raced_a_host_change_leaves_the_name_unknown() {
        let now = Instant::now();
        let mut c = Cache::default();
        let mut out = Vec::new();
        list(&mut c, 7, &["x"], now);
        // unlink(7, x) is sent; the host makes `x` again right after it and
        // reports it; the reader applies that before the task handling the
        // unlink's reply (read just before) runs.
        let since = c.stamp();
        c.invalidate_entry(7, b"x", &mut out);
        c.removed(7, b"x", since, &mut out);
        assert!(not_absent(&mut c, 7, b"x", now));

        // The same when the directory had no listing to mark yet: it was
        // fetched (with the new `x`) while the unlink was in flight.
        let since = c.stamp();
        c.invalidate_entry(8, b"x", &mut out);
        list_from(&mut c, 8, &["x"], 200, now);
        c.removed(8, b"x", since, &mut out);
        assert!(not_absent(&mut c, 8, b"x", now));

        // Nothing raced: the name is gone.
        list_from(&mut c, 9, &["x"], 300, now);
        let since = c.stamp();
        c.removed(9, b"x", since, &mut out);
        assert!(!not_absent(&mut c, 9, b"x", now));
    }

    #[test]
    fn a_new_directory_the_host_changed_is_not_listed_empty() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut c = Cache::default();
        let mut out = Vec::new();
        // mkdir is sent; the host makes `f` in the new directory and
        // reports it before the task handling the mkdir's reply runs (the
        // directory is nothing to the cache yet).
        let since = c.stamp();
        c.invalidate_entry(400, b"f", &mut out);
        c.new_empty_dir(400, since, later);
        assert!(not_absent(&mut c, 400, b"f", now));
        // Nothing raced: known empty.
        let since = c.stamp();
        c.new_empty_dir(401, since, later);
        assert!(!not_absent(&mut c, 401, b"f", now));
    }
}
