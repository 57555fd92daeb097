//! Wire types shared by the host (`limactl`, host agent), the guest agent and
//! the guest eBPF programs.
//!
//! The crate is `no_std` without the `std` feature so that `guest-ebpf` can use
//! the event structs in [`ebpf`]; everything that needs serde lives behind
//! `std`.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod ebpf;

#[cfg(feature = "std")]
pub mod errors;
#[cfg(feature = "std")]
pub mod shellquote;
#[cfg(feature = "std")]
pub mod sync;

#[cfg(feature = "std")]
pub mod files;
#[cfg(feature = "std")]
pub mod fs;
#[cfg(feature = "std")]
pub mod layer;
#[cfg(feature = "tokio")]
pub mod relay;
#[cfg(feature = "std")]
pub mod wire;
#[cfg(feature = "std")]
pub use wire::*;
