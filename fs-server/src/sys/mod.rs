//! Every raw syscall the server makes, in one place.
//!
//! Why raw `libc`: the server needs calls `std` does not offer (`openat2`,
//! `renameat2`, OFD locks, `getdents64`, inotify) and it needs them relative to
//! directory fds, never by path. Each wrapper takes and returns owning types
//! (`OwnedFd`) or borrowed fds, and reports failure as a plain errno (`i32`),
//! which is what the protocol sends back to the guest.
//!
//! Names passed in are `&CStr`: the caller has already checked that they are
//! single path components (see `crate::fs::check_name`).
//!
//! One name for the rest of the crate, whatever the host (crosvm's layout):
//!
//! ```text
//! sys (this file: the names)
//!  ├─ linux.rs   openat2, renameat2, getdents64, inotify, O_PATH fds
//!  │             reopened through /proc/self/fd, OFD locks: what the server is built on
//!  ├─ macos.rs   the same names; ENOSYS until the macOS port (SUPPORTED = false)
//!  ├─ posix.rs   calls every Unix host has, written once
//!  └─ types.rs   what the calls answer in, the same shape on every host
//! ```
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
mod posix;
mod types;

#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(target_os = "macos")]
pub use macos::*;
pub use posix::*;
pub use types::*;
