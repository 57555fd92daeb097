//! VM drivers behind one small trait. The bring-up holds a `dyn Driver` and
//! a `dyn RunningVm` and never asks which one it got; QEMU is the driver on
//! Linux and macOS, Virtualization.framework will join as `vz`.
//!
//! A driver gets a [`VmPlan`] (which devices exist is decided there, from
//! what [`Driver::caps`] says it can offer) and turns it into its own
//! arguments or API calls; [`select::for_vm_type`] picks one by `vmType`.
pub mod accel;
pub mod qemu;
pub mod select;

use std::future::Future;
use std::pin::Pin;

use crate::instance::Instance;
use crate::plan::{Caps, VmPlan};
use crate::vsock::TransportSpec;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{program} not found on PATH; {hint}")]
    Missing { program: String, hint: String },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// What a driver needs to launch an instance.
pub struct Launch<'a> {
    /// Where the driver keeps its own files (sockets, pid, logs).
    pub instance: &'a Instance,
    pub plan: &'a VmPlan,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub trait Driver {
    fn name(&self) -> &'static str;
    /// The optional devices this driver can give a VM.
    fn caps(&self) -> Caps;
    /// Launches the VM; returns once its process runs (not once it booted).
    fn start<'a>(
        &'a self,
        launch: Launch<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn RunningVm>, DriverError>>;
}

pub trait RunningVm {
    /// How to reach the guest's vsock ports.
    fn transport(&self) -> TransportSpec;
    /// The accelerator in use ("kvm", "hvf", "tcg").
    fn accel(&self) -> &str;
    /// Resolves when the VM process has exited, with a description of how.
    fn wait(&mut self) -> BoxFuture<'_, String>;
    /// Asks the guest's firmware/OS to power off (the ACPI power button);
    /// returns once asked, not once off.
    fn powerdown(&mut self) -> BoxFuture<'_, Result<(), String>>;
    /// Asks the hypervisor to stop the VM (QMP `quit` for QEMU), then kills it
    /// if it is still there after `grace`.
    fn terminate(&mut self, grace: std::time::Duration) -> BoxFuture<'_, ()>;
}
