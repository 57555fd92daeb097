//! Finding the helper programs we run (QEMU, virtiofsd, vhost-device-vsock,
//! our own lima-fs-server).

use std::path::PathBuf;

/// Looks a program up on PATH and in `~/.cargo/bin` (where `cargo xtask setup`
/// installs our helpers).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Names the `lima-fs-server` binary to run for shares (tests, development).
pub const FS_SERVER_ENV: &str = "LIMA_FS_SERVER";

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("the share file server {0} does not exist (it is installed beside limactl; {FS_SERVER_ENV} names another)")]
    NoFsServer(PathBuf),
    #[error("cannot find our own executable")]
    NoSelf(#[source] std::io::Error),
}

/// The share file server: `$LIMA_FS_SERVER`, else `lima-fs-server` beside
/// our own executable (where `cargo build` and an install put it, as with
/// `limactl`, `lima` and `lima-run`).
pub fn fs_server() -> Result<PathBuf, ProgramError> {
    let path = match std::env::var_os(FS_SERVER_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(ProgramError::NoSelf)?
            .with_file_name("lima-fs-server"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProgramError::NoFsServer(path))
    }
}
