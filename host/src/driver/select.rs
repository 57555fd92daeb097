//! Which driver runs a `vmType`.
use super::{qemu, Driver, DriverError};

/// The driver for a `vmType`.
pub fn for_vm_type(vm_type: &str) -> Result<Box<dyn Driver>, DriverError> {
    match vm_type {
        "qemu" => Ok(Box::new(qemu::Qemu::find()?)),
        other => Err(DriverError::Failed(format!(
            "vmType `{other}` is not available on this host"
        ))),
    }
}
