//! The port watcher: which sockets listen in the guest, kept current from
//! eBPF socket events checked against sock_diag dumps, for the host's
//! forwards.
//!
//! ```text
//!  guest-ebpf programs ─ring buffer─▶ ebpf.rs ─EventSource─▶ watcher.rs ─WatchEvent─▶ table.rs
//!                                                                                      │ dump
//!  kernel NETLINK_SOCK_DIAG ◀──────────────────────────────────────────────── sockdiag.rs
//! ```
//!
//! - `events.rs`: what the programs report, and [`EventSource`](events::EventSource),
//!   the seam between the privileged loader and the rest (tests use a fake);
//! - `ebpf.rs`: the loader (aya: load, attach, open the maps), and why it failed;
//! - `watcher.rs`: the reader task: status, loss detection, fan-out;
//! - `table.rs`: the port table: when to dump, events checked against the
//!   dump, what was added or removed;
//! - `sockdiag.rs`: the dump itself (the truth);
//! - `nat/`: ports that NAT rules alone publish (a container engine without
//!   a userland proxy), from nf_tables change notifications.
//!
//! Imports run one way (table → watcher → ebpf → events, table → sockdiag,
//! table → nat),
//! and nothing here imports the rest of the agent.
mod ebpf;
mod events;
pub mod nat;
pub(crate) mod sockdiag;
mod table;
mod watcher;

pub use table::{diff, PortTable, Target};
pub use watcher::start as start_watcher;
#[cfg(test)]
pub use watcher::Watcher;
