//! Bulk data through shared memory: the part of the VM's ivshmem device
//! that belongs to one share ([`lima_proto::fs::ShmRegion`]), mapped from
//! the file QEMU backs the device with.
//!
//! Through the stream, a 1 MiB read or write is copied into a frame and
//! crosses vsock in 4 KiB packets, which under TCG caps a share at
//! ~15–25 MiB/s. With `ReadShm`/`WriteShm` only the request crosses; the
//! data is read into, or written from, this mapping by the host kernel
//! directly.
//!
//! The guest writes the mapping whenever it likes, so the server never
//! keeps a reference into it across a request, never reads from it
//! anything but file data it is asked to write, and checks every range
//! against the share's region: a guest can only ever reach its own region.
use std::os::fd::AsFd;
use std::path::Path;

use crate::sys::{self, SysResult};

pub struct Shm {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping lives as long as `Shm`; what is in it is plain bytes
// anybody may change (see the module docs), so sharing the pointer across
// threads adds no hazard beyond the one every access already handles.
unsafe impl Send for Shm {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shm {}

impl Shm {
    /// Maps `len` bytes of `file` from `offset` (a multiple of the page
    /// size).
    pub fn map(file: &Path, offset: u64, len: u64) -> std::io::Result<Shm> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)?;
        Self::map_file(&f, offset, len)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))
    }

    /// Maps `len` bytes of the open `file` (read-write) from `offset`; the
    /// file may be closed afterwards. How a share server maps the region
    /// it was handed as an fd.
    pub fn map_file(f: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Shm> {
        let size = f.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) || len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes at {offset} do not fit its {size} bytes"),
            ));
        }
        let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let base =
            sys::map_shared(f.as_fd(), offset, len).map_err(std::io::Error::from_raw_os_error)?;
        Ok(Shm { base, len })
    }

    /// Runs `f` on the `len` bytes at `at` (EINVAL if they leave the
    /// region).
    ///
    /// The slice aliases memory the guest may write concurrently; it only
    /// ever goes to `pread`/`pwrite` (the host kernel copies), and is gone
    /// before the reply is sent.
    pub(crate) fn with<T>(
        &self,
        at: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> SysResult<T>,
    ) -> SysResult<T> {
        let at = usize::try_from(at).map_err(|_| libc::EINVAL)?;
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(libc::EINVAL);
        }
        // SAFETY: in bounds (checked above) of a live mapping; see above
        // for what else may touch it.
        f(unsafe { std::slice::from_raw_parts_mut(self.base.add(at), len) })
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        sys::unmap(self.base, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_the_region_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm");
        std::fs::write(&path, vec![0u8; 3 << 12]).unwrap();
        // The region is the file's second and third page.
        let shm = Shm::map(&path, 1 << 12, 2 << 12).unwrap();
        let put = |at: u64, len: usize| {
            shm.with(at, len, |b| {
                b.fill(b'x');
                Ok(())
            })
        };
        shm.with(0, 4, |b| {
            b.copy_from_slice(b"abcd");
            Ok(())
        })
        .unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[1 << 12..(1 << 12) + 4], b"abcd");
        assert!(put((2 << 12) - 4, 4).is_ok());
        assert_eq!(put((2 << 12) - 3, 4), Err(libc::EINVAL));
        assert_eq!(put(u64::MAX, 1), Err(libc::EINVAL));
        assert_eq!(put(1, usize::MAX), Err(libc::EINVAL));
        // A region past the file's end is refused at map time.
        assert!(Shm::map(&path, 2 << 12, 2 << 12).is_err());
    }
}
