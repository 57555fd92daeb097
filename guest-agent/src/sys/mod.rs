//! The one seam for privileged calls (mount, finit_module, reboot). Linux is the
//! only guest OS, so there is a single implementation.
mod linux;
pub use linux::*;
