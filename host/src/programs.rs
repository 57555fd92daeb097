//! Finding the helper programs we run (QEMU, virtiofsd, vhost-device-vsock).

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
