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

/// The local time zone's offset from UTC, in seconds east, at `unix_secs`
/// (the C library's reading of `TZ` and `/etc/localtime`); 0 if unknown.
pub fn utc_offset_secs(unix_secs: i64) -> i64 {
    #[allow(
        clippy::unnecessary_cast,
        reason = "time_t is narrower than i64 on some platforms"
    )]
    let t = unix_secs as libc::time_t;
    // SAFETY: `tm` is plain old data (integers and a nullable pointer), so
    // all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `t` and writes only into `tm`, both ours
    // and valid for the call; it is the thread-safe form.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    #[allow(
        clippy::useless_conversion,
        reason = "tm_gmtoff is a C long, narrower than i64 on some platforms"
    )]
    if ok {
        i64::from(tm.tm_gmtoff)
    } else {
        0
    }
}
