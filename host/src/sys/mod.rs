//! Platform-specific host calls behind one set of names.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::*;

/// The host TSC's rate in kHz, measured against the monotonic clock over
/// 20 ms (good to about 0.1%). Under TCG a guest's TSC counts at this rate.
#[cfg(target_arch = "x86_64")]
pub fn tsc_khz() -> Option<u64> {
    // SAFETY: RDTSC has no preconditions on x86_64.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (std::time::Instant::now(), tsc());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (c1, dt) = (tsc(), t0.elapsed());
    let khz = (c1.wrapping_sub(c0) as f64 / dt.as_secs_f64() / 1000.0) as u64;
    (khz > 100_000).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn tsc_khz() -> Option<u64> {
    None
}

/// Bytes free for an unprivileged user on the file system holding `path`.
pub fn free_space(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "the field types differ by platform"
    )]
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}
