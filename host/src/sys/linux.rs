//! Linux host specifics.

/// Total RAM of the host in bytes.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Identifies the current host boot, so per-boot probe results can be cached.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Makes a child die with its parent (the host agent), so a killed host agent
/// never leaves QEMU or helpers behind. Call from `pre_exec`.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The accelerator QEMU should try first on this OS.
pub const NATIVE_ACCEL: &str = "kvm";

/// Whether the native accelerator's device is usable at all.
pub fn native_accel_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether the kernel's vhost-vsock device exists and opens.
pub fn kernel_vsock_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock")
        .is_ok()
}

/// Connects to `cid:port` with the kernel's AF_VSOCK.
pub async fn vsock_connect(cid: u32, port: u32) -> std::io::Result<crate::vsock::BoxStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid start value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let raw = fd.as_raw_fd();
    tokio::task::spawn_blocking(move || {
        // SAFETY: addr is a valid sockaddr_vm for the duration of the call.
        let rc = unsafe {
            libc::connect(
                raw,
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    // A vsock stream behaves like a Unix stream socket for tokio's purposes.
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    Ok(Box::new(tokio::net::UnixStream::from_std(std_stream)?))
}

/// The HTTP client for image downloads (rustls).
pub fn http_agent() -> ureq::Agent {
    ureq::agent()
}
