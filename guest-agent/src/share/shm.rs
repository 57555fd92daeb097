//! The guest half of the shared-memory data path (see
//! `lima_proto::fs::ShmRegion`): the VM's ivshmem device (PCI `1af4:1110`)
//! mapped through sysfs, and this share's region of it cut into
//! [`MAX_IO`] slots. A read or write takes a slot for the time of its round
//! trip; the host reads file data into it or writes file data from it, and
//! only the small request crosses vsock. With no slot free, or no device,
//! requests carry their data inline as before.
//!
//! Mapped through `resource2` the BAR is uncached in the guest's page
//! tables. Under TCG that costs nothing (memory types are not emulated);
//! under KVM it would make every access slow, and a driver mapping it
//! write-back would be needed first.
use std::sync::{Arc, Mutex, OnceLock};

use lima_proto::fs::{ShmRegion, MAX_IO};
use lima_proto::sync::lock;

/// The whole device, mapped once per agent and never unmapped.
struct Device {
    base: *mut u8,
    len: usize,
}

// SAFETY: a fixed mapping; access goes through `Slot`s, which are handed
// out to one owner at a time.
unsafe impl Send for Device {}
// SAFETY: as for `Send`.
unsafe impl Sync for Device {}

static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();

/// ivshmem's PCI ids.
#[cfg(not(test))]
const VENDOR: &str = "0x1af4";
#[cfg(not(test))]
const DEVICE_ID: &str = "0x1110";

fn map_device() -> Result<Device, String> {
    #[cfg(test)]
    return map_file(&test_device());
    #[cfg(not(test))]
    find_device()
}

/// Where unit tests keep the "device": a file the host half maps too.
#[cfg(test)]
pub(super) fn test_device() -> std::path::PathBuf {
    static MADE: OnceLock<std::path::PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        // No destructor runs for a static: remove the files of test
        // processes that are gone instead (64 MiB each, sparse).
        const PREFIX: &str = "lima-test-ivshmem-";
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(PREFIX).unwrap_or_default();
            if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let p = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        p
    })
    .clone()
}

#[cfg(not(test))]
fn find_device() -> Result<Device, String> {
    let root = std::path::Path::new("/sys/bus/pci/devices");
    let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for e in entries.flatten() {
        let dir = e.path();
        let id = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if id("vendor").trim() != VENDOR || id("device").trim() != DEVICE_ID {
            continue;
        }
        // No driver enables it; memory decoding must be on to reach the BAR.
        let _ = std::fs::write(dir.join("enable"), "1");
        return map_file(&dir.join("resource2"));
    }
    Err("no ivshmem device".into())
}

/// Maps all of `path` (the BAR's sysfs `resource2`), shared.
fn map_file(path: &std::path::Path) -> Result<Device, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len() as usize;
    // SAFETY: a fresh shared mapping of the BAR at an address of the
    // kernel's choosing; kept for the life of the process.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mapping {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Device {
        base: p.cast(),
        len,
    })
}

/// One share's region: its base in our mapping and the free slots.
pub(super) struct Shm {
    base: *mut u8,
    free: Mutex<Vec<u32>>,
}

// SAFETY: see `Device`; `free` hands each slot to one owner at a time.
unsafe impl Send for Shm {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shm {}

impl Shm {
    /// Maps the device (once) and checks that `region` lies in it.
    pub(super) fn open(region: ShmRegion) -> Result<Arc<Shm>, String> {
        let dev = DEVICE
            .get_or_init(map_device)
            .as_ref()
            .map_err(Clone::clone)?;
        let (offset, len) = (region.offset as usize, region.len as usize);
        if offset.checked_add(len).is_none_or(|end| end > dev.len) {
            return Err(format!(
                "region {offset}+{len} lies outside the {}-byte device",
                dev.len
            ));
        }
        Ok(Arc::new(Self::over(
            // SAFETY: in bounds, checked above.
            unsafe { dev.base.add(offset) },
            len,
        )))
    }

    /// A region of `len` bytes at `base` (tests use plain memory).
    fn over(base: *mut u8, len: usize) -> Shm {
        let slots = (len / MAX_IO as usize) as u32;
        Shm {
            base,
            free: Mutex::new((0..slots).rev().collect()),
        }
    }

    /// A free slot, if there is one.
    pub(super) fn take(self: &Arc<Self>) -> Option<Slot> {
        let index = lock(&self.free).pop()?;
        Some(Slot {
            shm: self.clone(),
            index,
        })
    }
}

/// One [`MAX_IO`]-byte slot, ours until dropped.
pub(super) struct Slot {
    shm: Arc<Shm>,
    index: u32,
}

impl Slot {
    /// Its offset in the region, as requests name it.
    pub(super) fn at(&self) -> u64 {
        u64::from(self.index) * u64::from(MAX_IO)
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: `at() + MAX_IO` is within the region (slots fit whole).
        unsafe { self.shm.base.add(self.at() as usize) }
    }

    /// Copies `data` (at most [`MAX_IO`] bytes) into the slot.
    pub(super) fn fill(&self, data: &[u8]) {
        let n = data.len().min(MAX_IO as usize);
        // SAFETY: the slot is ours and holds `MAX_IO` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(), n) };
    }

    /// A copy of the first `n` bytes, as the host left them. A copy, not
    /// a borrow: /dev/fuse pins the pages of a reply's buffer, and device
    /// memory (the BAR) cannot be pinned.
    pub(super) fn copy_out(&self, n: u32) -> Vec<u8> {
        let n = n.min(MAX_IO) as usize;
        // SAFETY: the slot is ours, so the host wrote it before replying
        // and touches it no more; nobody else in the guest does.
        unsafe { std::slice::from_raw_parts(self.ptr(), n) }.to_vec()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shm.free).push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_come_back() {
        let mut mem = vec![0u8; 2 * MAX_IO as usize];
        let shm = Arc::new(Shm::over(mem.as_mut_ptr(), mem.len()));
        let a = shm.take().unwrap();
        let b = shm.take().unwrap();
        assert!(shm.take().is_none(), "two slots only");
        assert_ne!(a.at(), b.at());
        a.fill(b"hello");
        b.fill(b"world");
        assert_eq!(a.copy_out(5), b"hello");
        assert_eq!(b.copy_out(5), b"world");
        let at = a.at();
        drop(a);
        assert_eq!(shm.take().unwrap().at(), at);
    }

    #[test]
    fn a_region_outside_the_device_is_refused() {
        // No ivshmem device where unit tests run: a clear error either way.
        let r = Shm::open(ShmRegion {
            offset: u64::MAX - 1,
            len: 2,
        });
        assert!(r.is_err());
    }
}
