//! The port watcher: which sockets listen in the guest, kept current from
//! eBPF socket events checked against sock_diag dumps, for the host's
//! forwards.
//!
//! - `watcher.rs`: loads the eBPF programs and hands their socket events
//!   to subscribers;
//! - `table.rs`: the port table, a sock_diag dump after each batch of
//!   events (or on a timer without eBPF), and what was added or removed;
//! - `sockdiag.rs`: the dump itself.
mod sockdiag;
mod table;
mod watcher;

pub use table::{diff, PortTable};
pub use watcher::start as start_watcher;
