//! The host folder as the apply (and the review) see it: never through
//! `std::fs` on joined paths, always through a confined `lima-fs-server`
//! on `DIR`, spoken to as the guest's FUSE client would (the fs protocol,
//! over a socketpair). The server walks one name at a time, never follows
//! a symlink and cannot leave `DIR` (Landlock), so a path the guest made
//! up cannot reach a host file outside `DIR`, even through a symlink on
//! the host side.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use lima_fs_server::confine::Mode;
use lima_fs_server::process::Spawn;
use lima_proto::fs::{
    Attr, Entry, FsReply, FsRequest, FsToGuest, FsToHost, SetTime, Time, MAX_IO, ROOT_ID,
};
use lima_proto::layer::{BaseStat, NodeKind};
use lima_proto::{read_frame_async, write_frame_async};
use tokio::net::UnixStream;

/// An errno from the host file server, or a broken connection (`EIO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

pub type FsResult<T> = Result<T, Errno>;

/// What is at a host path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNode {
    pub id: u64,
    pub kind: Option<NodeKind>,
    pub attr: Attr,
}

impl HostNode {
    pub fn matches(&self, base: &BaseStat) -> bool {
        self.kind == Some(base.kind)
            && (base.kind == NodeKind::Dir
                || (self.attr.size == base.size
                    && self.attr.mtime == base.mtime
                    && self.attr.ctime == base.ctime))
    }
}

fn kind_of(mode: u32) -> Option<NodeKind> {
    use lima_proto::fs::linux;
    match mode & linux::S_IFMT {
        linux::S_IFREG => Some(NodeKind::File),
        linux::S_IFDIR => Some(NodeKind::Dir),
        linux::S_IFLNK => Some(NodeKind::Symlink),
        _ => None,
    }
}

pub struct HostTree {
    stream: UnixStream,
    next: u64,
    /// Folders already looked up, by their path (kept for the session).
    dirs: HashMap<Vec<u8>, u64>,
    _child: tokio::process::Child,
}

impl HostTree {
    /// Starts `lima-fs-server` on `root` (writable or not), confined as
    /// `confine` says, logging to `log`.
    pub async fn open(
        program: &Path,
        confine: Mode,
        root: &Path,
        writable: bool,
        log: &Path,
    ) -> Result<HostTree, String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let running = crate::shares::serve(
            Spawn {
                program,
                root,
                writable,
                stream: OwnedFd::from(theirs),
                shm: None,
                log,
                confine,
                test_hook: None,
            },
            &root.display().to_string(),
        )
        .await?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("socket pair: {e}"))?;
        let stream = UnixStream::from_std(ours).map_err(|e| format!("socket pair: {e}"))?;
        Ok(HostTree {
            stream,
            next: 1,
            dirs: HashMap::new(),
            _child: running.child,
        })
    }

    async fn call(&mut self, req: FsRequest) -> FsResult<FsReply> {
        let id = self.next;
        self.next += 1;
        let eio = |_| Errno(libc::EIO);
        write_frame_async(&mut self.stream, &FsToHost::Request { id, req })
            .await
            .map_err(eio)?;
        loop {
            match read_frame_async::<_, FsToGuest>(&mut self.stream)
                .await
                .map_err(eio)?
            {
                None => return Err(Errno(libc::EIO)),
                Some(FsToGuest::Reply { id: got, reply }) if got == id => {
                    return match reply {
                        FsReply::Err(e) => Err(Errno(e)),
                        r => Ok(r),
                    }
                }
                // Invalidations (our own writes, host edits): nothing cached to drop.
                Some(_) => {}
            }
        }
    }

    async fn forget(&mut self, id: u64) {
        if id != ROOT_ID && !self.dirs.values().any(|d| *d == id) {
            let _ = write_frame_async(
                &mut self.stream,
                &FsToHost::Request {
                    id: 0,
                    req: FsRequest::Forget { id, nlookup: 1 },
                },
            )
            .await;
        }
    }

    async fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<Entry> {
        match self
            .call(FsRequest::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await?
        {
            FsReply::Entry(e) => Ok(e),
            _ => Err(Errno(libc::EIO)),
        }
    }

    /// The folder holding `parts` (all but the last): its node id. Every
    /// step must be a real folder (not a symlink to one); `ENOENT` or
    /// `ENOTDIR` otherwise.
    pub async fn parent(&mut self, parts: &[&[u8]]) -> FsResult<u64> {
        let mut id = ROOT_ID;
        let mut so_far: Vec<u8> = Vec::new();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !so_far.is_empty() {
                so_far.push(b'/');
            }
            so_far.extend_from_slice(part);
            if let Some(d) = self.dirs.get(&so_far) {
                id = *d;
                continue;
            }
            let e = self.lookup(id, part).await?;
            if kind_of(e.attr.mode) != Some(NodeKind::Dir) {
                self.forget(e.attr.id).await;
                return Err(Errno(libc::ENOTDIR));
            }
            id = e.attr.id;
            self.dirs.insert(so_far.clone(), id);
        }
        Ok(id)
    }

    /// What is at `parts` now; `None` when nothing is (or a parent is missing).
    pub async fn stat(&mut self, parts: &[&[u8]]) -> FsResult<Option<HostNode>> {
        let parent = match self.parent(parts).await {
            Ok(p) => p,
            Err(Errno(libc::ENOENT)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = parts.last().expect("a checked path has a component");
        match self.lookup(parent, name).await {
            Ok(e) => {
                let node = HostNode {
                    id: e.attr.id,
                    kind: kind_of(e.attr.mode),
                    attr: e.attr,
                };
                self.forget(node.id).await;
                Ok(Some(node))
            }
            Err(Errno(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A regular file's content, up to `limit` bytes (`None` past it).
    pub async fn read_file(&mut self, parts: &[&[u8]], limit: u64) -> FsResult<Option<Vec<u8>>> {
        let parent = self.parent(parts).await?;
        let e = self.lookup(parent, parts.last().expect("checked")).await?;
        let id = e.attr.id;
        let out = self.read_node(id, e.attr.mode, limit).await;
        self.forget(id).await;
        out
    }

    async fn read_node(&mut self, id: u64, mode: u32, limit: u64) -> FsResult<Option<Vec<u8>>> {
        match kind_of(mode) {
            Some(NodeKind::Symlink) => match self.call(FsRequest::Readlink { id }).await? {
                FsReply::Link(t) => Ok(Some(t)),
                _ => Err(Errno(libc::EIO)),
            },
            Some(NodeKind::File) => {
                let fh = match self
                    .call(FsRequest::Open {
                        id,
                        flags: lima_proto::fs::linux::O_RDONLY,
                    })
                    .await?
                {
                    FsReply::Opened { fh } => fh,
                    _ => return Err(Errno(libc::EIO)),
                };
                let mut data = Vec::new();
                let result = loop {
                    if data.len() as u64 > limit {
                        break Ok(None);
                    }
                    match self
                        .call(FsRequest::Read {
                            fh,
                            offset: data.len() as u64,
                            size: MAX_IO,
                        })
                        .await
                    {
                        Ok(FsReply::Data(d)) if d.is_empty() => break Ok(Some(())),
                        Ok(FsReply::Data(d)) => data.extend_from_slice(&d),
                        Ok(_) => break Err(Errno(libc::EIO)),
                        Err(e) => break Err(e),
                    }
                };
                let _ = self.call(FsRequest::Release { fh }).await;
                result.map(|done| done.map(|()| data))
            }
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// A new file `name` in folder `parent` (which must not exist), with
    /// `content` read from `src`, then `mode` and `mtime`; synced to disk.
    pub async fn write_new(
        &mut self,
        parent: u64,
        name: &[u8],
        src: &mut impl std::io::Read,
        mode: u32,
        mtime: Time,
    ) -> FsResult<()> {
        let (id, fh) = match self
            .call(FsRequest::Create {
                parent,
                name: name.to_vec(),
                mode: 0o600,
                umask: 0,
                flags: lima_proto::fs::linux::O_WRONLY | lima_proto::fs::linux::O_EXCL,
            })
            .await?
        {
            FsReply::Created { entry, fh, .. } => (entry.attr.id, fh),
            _ => return Err(Errno(libc::EIO)),
        };
        let result = async {
            let mut offset = 0u64;
            let mut buf = vec![0u8; MAX_IO as usize];
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
                if n == 0 {
                    break;
                }
                let mut done = 0;
                while done < n {
                    match self
                        .call(FsRequest::Write {
                            fh,
                            offset: offset + done as u64,
                            data: buf[done..n].to_vec(),
                        })
                        .await?
                    {
                        FsReply::Written(0) => return Err(Errno(libc::EIO)),
                        FsReply::Written(w) => done += w as usize,
                        _ => return Err(Errno(libc::EIO)),
                    }
                }
                offset += n as u64;
            }
            self.call(FsRequest::Setattr {
                id,
                fh: Some(fh),
                mode: Some(mode & super::MODE_BITS),
                size: None,
                atime: None,
                mtime: Some(SetTime::At(mtime)),
            })
            .await?;
            self.call(FsRequest::Fsync {
                fh,
                datasync: false,
            })
            .await?;
            Ok(())
        }
        .await;
        let _ = self.call(FsRequest::Release { fh }).await;
        self.forget(id).await;
        result
    }

    pub async fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> FsResult<()> {
        match self
            .call(FsRequest::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
            })
            .await?
        {
            FsReply::Made { entry, .. } => {
                self.forget(entry.attr.id).await;
                Ok(())
            }
            _ => Err(Errno(libc::EIO)),
        }
    }

    pub async fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> FsResult<()> {
        match self
            .call(FsRequest::Mkdir {
                parent,
                name: name.to_vec(),
                mode: mode & super::MODE_BITS,
                umask: 0,
            })
            .await?
        {
            FsReply::Made { entry, .. } => {
                self.forget(entry.attr.id).await;
                Ok(())
            }
            _ => Err(Errno(libc::EIO)),
        }
    }

    /// Sets a node's permission bits (not for symlinks).
    pub async fn chmod(&mut self, parts: &[&[u8]], mode: u32) -> FsResult<()> {
        let parent = self.parent(parts).await?;
        let e = self.lookup(parent, parts.last().expect("checked")).await?;
        let r = self
            .call(FsRequest::Setattr {
                id: e.attr.id,
                fh: None,
                mode: Some(mode & super::MODE_BITS),
                size: None,
                atime: None,
                mtime: None,
            })
            .await;
        self.forget(e.attr.id).await;
        r.map(|_| ())
    }

    /// `rename(2)` within `DIR`; `noreplace` refuses to replace a name.
    pub async fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        noreplace: bool,
    ) -> FsResult<()> {
        self.call(FsRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags: if noreplace {
                lima_proto::fs::linux::RENAME_NOREPLACE
            } else {
                0
            },
        })
        .await
        .map(|_| ())
    }

    pub async fn remove(&mut self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        let req = if dir {
            FsRequest::Rmdir {
                parent,
                name: name.to_vec(),
            }
        } else {
            FsRequest::Unlink {
                parent,
                name: name.to_vec(),
            }
        };
        self.call(req).await.map(|_| ())
    }

    /// Forgets the cached folder ids at and below `path` (it was removed
    /// or renamed).
    pub fn forget_dirs(&mut self, path: &[u8]) {
        self.dirs.retain(|p, _| !super::paths::is_within(p, path));
    }
}
