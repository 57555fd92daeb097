//! VM drivers behind one small trait. The host agent holds a `dyn Driver` and
//! a `dyn RunningVm` and never asks which one it got; QEMU is the driver on
//! Linux and macOS, Virtualization.framework will join as `vz`.
pub mod accel;
pub mod qemu;

use std::future::Future;
use std::pin::Pin;

use crate::config::InstanceConfig;
use crate::image::BootImage;
use crate::instance::Instance;
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
    pub instance: &'a Instance,
    pub config: &'a InstanceConfig,
    pub image: &'a BootImage,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub trait Driver {
    fn name(&self) -> &'static str;
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
    /// Asks the hypervisor to stop the VM (QMP `quit` for QEMU), then kills it
    /// if it is still there after `grace`.
    fn terminate(&mut self, grace: std::time::Duration) -> BoxFuture<'_, ()>;
}

/// The driver for a `vmType`.
pub fn for_vm_type(vm_type: &str) -> Result<Box<dyn Driver>, DriverError> {
    match vm_type {
        "qemu" => Ok(Box::new(qemu::Qemu::find()?)),
        other => Err(DriverError::Failed(format!(
            "vmType `{other}` is not available on this host"
        ))),
    }
}

/// Looks a program up on PATH and in `~/.cargo/bin` (where `cargo xtask setup`
/// installs our helpers).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
