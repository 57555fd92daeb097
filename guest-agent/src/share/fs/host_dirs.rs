//! Directory reads the listing cache does not answer: `ReaddirAt`
//! batches from the host, buffered per open handle ([`DirBuf`]), because
//! the host answers in batches of its choosing and the kernel asks a page
//! at a time. A read the buffer covers is answered on the session thread;
//! one it does not goes to a task that fills the buffer first.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use lima_proto::fs::{FsReply, FsRequest, READDIRPLUS_MAX, READDIR_MAX};
use lima_proto::sync::lock;

use super::convert::{error_of, file_type, negative_attr, placeholder_ino};
use super::dispatch::ShareFs;
use super::state::{DirBuf, Shared, TTL};

/// The two kinds of directory read [`ShareFs::read_dir`] answers from a
/// [`DirBuf`].
pub(super) trait DirReply: Send + 'static {
    /// With attributes (readdirplus).
    const PLUS: bool;
    fn fail(self, e: Errno);
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64);
}

impl DirReply for ReplyDirectory {
    const PLUS: bool = false;
    fn fail(self, e: Errno) {
        self.error(e)
    }
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64) {
        s.readdir_from(buf, dir, self)
    }
}

impl DirReply for ReplyDirectoryPlus {
    const PLUS: bool = true;
    fn fail(self, e: Errno) {
        self.error(e)
    }
    fn answer(self, s: &Shared, buf: &mut DirBuf, dir: u64) {
        s.readdirplus_from(buf, dir, self)
    }
}

impl ShareFs {
    /// A readdir(plus) of host-read handle `fh`: if what is buffered
    /// covers `offset`, the reply is given here, on the session thread
    /// (under TCG a hop to a runtime worker is a good part of a request's
    /// cost); otherwise a task fills the buffer from the host first.
    pub(super) fn read_dir<R: DirReply>(&self, fh: u64, dir: u64, offset: u64, reply: R) {
        let Some(buf) = self.shared.dir(fh) else {
            return reply.fail(Errno::EBADF);
        };
        if let Ok(mut b) = buf.try_lock() {
            if b.covers(offset, R::PLUS) {
                return reply.answer(&self.shared, &mut b, dir);
            }
        }
        self.run(move |s| async move {
            let mut buf = buf.lock().await;
            if let Err(e) = s.fill(&mut buf, dir, offset, R::PLUS).await {
                return reply.fail(e);
            }
            reply.answer(&s, &mut buf, dir);
        });
    }
}

impl Shared {
    /// Answers a readdir from `buf`, filled from its offset.
    fn readdir_from(&self, buf: &mut DirBuf, dir: u64, mut reply: ReplyDirectory) {
        while let Some(e) = buf.entries.front() {
            let ino = e
                .entry
                .as_ref()
                .map_or_else(|| placeholder_ino(dir, &e.name), |x| x.attr.id);
            if reply.add(
                INodeNo(ino),
                e.next_offset,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
            if let Some(e) = buf.entries.pop_front() {
                buf.offset = e.next_offset;
                // Fetched with attributes, handed over without: the
                // kernel holds no reference, so give the host's back.
                if let Some(entry) = e.entry {
                    self.with_cache(|c, out| c.drop_buffered(entry.attr.id, out));
                }
            }
        }
        reply.ok();
    }

    /// Answers a readdirplus from `buf`, filled from its offset.
    fn readdirplus_from(&self, buf: &mut DirBuf, dir: u64, mut reply: ReplyDirectoryPlus) {
        while let Some(e) = buf.entries.front() {
            let (attr, generation) = match &e.entry {
                // Counted as a lookup by the host and by the kernel.
                Some(entry) => (self.file_attr(&entry.attr), entry.generation),
                // Node id 0 tells the kernel "no entry to cache"; `.`
                // and `..` are never cached, so they may show an inode.
                None => {
                    let ino = if e.name == b"." || e.name == b".." {
                        placeholder_ino(dir, &e.name)
                    } else {
                        0
                    };
                    let mut attr = negative_attr();
                    attr.ino = INodeNo(ino);
                    attr.kind = file_type(e.kind);
                    (attr, 0)
                }
            };
            let name = OsStr::from_bytes(&e.name);
            if reply.add(
                attr.ino,
                e.next_offset,
                name,
                &TTL,
                &attr,
                Generation(generation),
            ) {
                break;
            }
            if let Some(e) = buf.entries.pop_front() {
                buf.offset = e.next_offset;
                if let Some(entry) = e.entry {
                    lock(&self.cache).buffered_to_kernel(entry.attr.id);
                    self.handed(dir, &e.name, &entry);
                }
            }
        }
        reply.ok();
    }

    fn dir(&self, fh: u64) -> Option<Arc<tokio::sync::Mutex<DirBuf>>> {
        lock(&self.dirs).get(&fh).cloned()
    }

    /// Gives back the host references of entries the kernel never saw.
    pub(super) fn discard(&self, buf: &mut DirBuf) {
        self.with_cache(|c, out| {
            for e in buf.entries.drain(..) {
                if let Some(entry) = e.entry {
                    c.drop_buffered(entry.attr.id, out);
                }
            }
        });
    }

    /// Makes `buf` start at `offset` with entries of the wanted kind,
    /// asking the host unless what is buffered already fits.
    async fn fill(&self, buf: &mut DirBuf, dir: u64, offset: u64, plus: bool) -> Result<(), Errno> {
        if buf.covers(offset, plus) {
            return Ok(());
        }
        self.discard(buf);
        // A host readdir may update the directory's atime.
        let reading = self.changing(&[dir], false);
        let req = FsRequest::ReaddirAt {
            id: dir,
            offset,
            plus,
        };
        let answer = self.client.call(req).await;
        self.changed(reading, None);
        match answer {
            FsReply::Dir(list) => {
                {
                    let mut c = lock(&self.cache);
                    for e in &list {
                        if let Some(x) = &e.entry {
                            c.buffered(x.attr.id);
                        }
                    }
                }
                let max = if plus { READDIRPLUS_MAX } else { READDIR_MAX };
                *buf = DirBuf {
                    offset,
                    plus,
                    last: list.len() < max,
                    entries: list.into(),
                };
                Ok(())
            }
            r => Err(error_of("readdir", &r)),
        }
    }
}
