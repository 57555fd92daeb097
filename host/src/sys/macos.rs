//! macOS host specifics (compiled with `cargo check --target aarch64-apple-darwin`).

pub fn total_memory() -> Option<u64> {
    let out = std::process::Command::new("sysctl")
        .args(["-n", "hw.memsize"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

pub fn boot_id() -> Option<String> {
    let out = std::process::Command::new("sysctl")
        .args(["-n", "kern.boottime"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// macOS has no parent-death signal; the host agent kills its children on exit.
pub fn die_with_parent() -> std::io::Result<()> {
    Ok(())
}

pub const NATIVE_ACCEL: &str = "hvf";

pub fn native_accel_device_usable() -> bool {
    true
}

pub fn kernel_vsock_usable() -> bool {
    false
}

pub async fn vsock_connect(_cid: u32, _port: u32) -> std::io::Result<crate::vsock::BoxStream> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "AF_VSOCK does not exist on macOS hosts",
    ))
}

/// The HTTP client for image downloads (the system's TLS).
pub fn http_agent() -> ureq::Agent {
    use ureq::tls::{TlsConfig, TlsProvider};
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .provider(TlsProvider::NativeTls)
                .build(),
        )
        .build()
        .into()
}
