//! The daemons a QEMU VM needs beside it: `virtiofsd` per virtiofs share,
//! and `vhost-device-vsock` when the host kernel has no vhost-vsock.
use std::path::{Path, PathBuf};

use tokio::process::Child;

use super::process::{spawn, wait_for_socket};
use crate::driver::DriverError;
use crate::programs::find_program;

/// Starts `virtiofsd` for a share and waits for its socket.
pub async fn virtiofsd(
    shared_dir: &Path,
    read_only: bool,
    socket: &Path,
    log: &Path,
) -> Result<Child, DriverError> {
    let program = find_program("virtiofsd")
        .or_else(|| Some(PathBuf::from("/usr/libexec/virtiofsd")).filter(|p| p.exists()))
        .ok_or_else(|| DriverError::Missing {
            program: "virtiofsd".into(),
            hint:
                "mountType virtiofs needs it; run `cargo xtask setup` or `cargo install virtiofsd`"
                    .into(),
        })?;
    let _ = std::fs::remove_file(socket);
    let mut vc = std::process::Command::new(program);
    vc.arg(format!("--socket-path={}", socket.display()));
    vc.arg(format!("--shared-dir={}", shared_dir.display()));
    vc.args(["--cache=auto", "--sandbox=none"]);
    if read_only {
        vc.arg("--readonly");
    }
    let mut h = spawn(vc, "virtiofsd", log)?;
    wait_for_socket(socket, &mut h, "virtiofsd").await?;
    Ok(h)
}

/// Starts `vhost-device-vsock` with guest CID `cid`: QEMU connects to
/// `vhost_sock`, we reach the guest through the hybrid socket `uds`.
pub async fn vhost_device_vsock(
    cid: u32,
    vhost_sock: &Path,
    uds: &Path,
    log: &Path,
) -> Result<Child, DriverError> {
    let _ = std::fs::remove_file(vhost_sock);
    let _ = std::fs::remove_file(uds);
    let program = find_program("vhost-device-vsock").ok_or_else(|| DriverError::Missing {
        program: "vhost-device-vsock".into(),
        hint: "this host has no /dev/vhost-vsock, so the vsock channel needs it; run `cargo xtask setup` or `cargo install vhost-device-vsock`".into(),
    })?;
    let mut hc = std::process::Command::new(program);
    hc.arg("--guest-cid").arg(cid.to_string());
    hc.arg("--socket")
        .arg(vhost_sock)
        .arg("--uds-path")
        .arg(uds);
    let mut h = spawn(hc, "vhost-device-vsock", log)?;
    wait_for_socket(vhost_sock, &mut h, "vhost-device-vsock").await?;
    Ok(h)
}
