//! Host file server for shared folders: serves one host directory to the
//! guest agent's FUSE client over one stream (vsock in production), speaking
//! the protocol in [`lima_proto::fs`].
//!
//! The caller (the host agent) opens the stream and does the share setup
//! exchange (hello, `ShareSetup`, `ShareStatus`); then it hands the stream to
//! [`Server::serve`], which answers `FsToHost::Request`s until the guest
//! closes it and pushes invalidations when host files change.
//!
//! Why it is built the way it is:
//!
//! * **The guest is not trusted.** Nothing it sends may reach a host file
//!   outside the share. Nodes are `O_PATH` fds, names are single components,
//!   opens go through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and
//!   the server never follows a symlink (the guest kernel does, in its own
//!   namespace). Read-only shares are enforced here. See [`fs`](crate::fs)
//!   for the rules, [`nodes`](crate::nodes) for why fds and not paths.
//! * **Many requests in flight.** The guest kernel issues reads, writes and
//!   lookups in parallel; they run concurrently on a bounded blocking pool
//!   and answers go back in completion order (see `server`).
//! * **Coherent caches.** The guest mounts with caching on, so host edits
//!   must be announced: inotify on looked-up directories becomes
//!   `InvalidateEntry`/`InvalidateNode` frames (see `watch`).
//! * **Bulk data through shared memory** when the VM has the device:
//!   `ReadShm`/`WriteShm` move file data through a mapped region instead
//!   of the stream (see `shm`).
//! * **Raw syscalls in one place** (`sys`), each with its `SAFETY` note, so
//!   the rest of the crate is safe code on owned fds.
//!
//! * **A process per share, confined.** The host agent starts this crate's
//!   binary for each share ([`process`]), which opens the folder, then
//!   gives up everything else before the first request: Landlock to the
//!   folder, a seccomp allowlist, no new privileges ([`confine`]).
//!
//! Linux hosts only for now (openat2, inotify, OFD locks): the crate builds
//! for macOS, where `sys/macos.rs` answers ENOSYS and [`Server::new`] refuses
//! with [`FsError::Unsupported`] until the macOS port.

pub mod confine;
mod fs;
mod nodes;
pub mod process;
mod server;
mod shm;
mod sys;
pub mod test_hook;
mod watch;

// Serves real directories: needs the Linux calls.
#[cfg(all(test, target_os = "linux"))]
mod tests;

pub use fs::{MAX_HANDLES, READDIRPLUS_MAX, READDIR_MAX};
pub use server::{FsError, Server, MAX_IN_FLIGHT};
pub use shm::Shm;
pub use watch::MAX_WATCHES;
