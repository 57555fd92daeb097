//! The seccomp filter: the syscalls a share server makes once it serves,
//! and nothing else.
//!
//! The list was taken from `strace -f` of the server under the share tests
//! (the end-to-end `shares`, `run` and `debian` tests, which run every
//! request kind, inotify, locks and shared memory) with glibc on x86_64,
//! and reads as what the code does: file calls relative to fds (never a
//! path of its own choosing but `/proc/self/fd/N`), socket I/O on the one
//! stream it was given, tokio's epoll and futexes, threads of its pools.
//! Not on it: `socket`, `connect`, `bind`, `accept`, `execve`, `ptrace`,
//! `mount`, `kill`, `mknodat`, `ioctl`, `open_by_handle_at` and every other
//! call the server has no use for.
//!
//! Arguments are checked where that is cheap and meaningful: threads only
//! (`clone` must share the address space; `clone3` cannot be checked, its
//! flags are behind a pointer, and glibc uses it), no executable mappings
//! (`mmap`/`mprotect` without `PROT_EXEC`), `fcntl` only for fd flags,
//! duplication and OFD locks, `prctl` only to name a thread, `prlimit64`
//! only to read our own limits, `tgkill` only to ourselves (`abort`),
//! `rt_sigaction` for any signal but `SIGSYS` (so the report below stays).
//!
//! **A call off the list stops the process** (`SECCOMP_RET_TRAP`, and the
//! `SIGSYS` handler below writes the syscall's number to the log, then
//! exits with 159 = 128 + SIGSYS); see docs/decisions.md for why not
//! EPERM. The guest then sees its share end, the host agent logs the
//! server's exit with the last lines of `fs-N.log`.
use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::ConfineError;

/// Exit status of a server stopped by its filter.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// Syscalls allowed with any arguments.
const ALWAYS: &[libc::c_long] = &[
    // Files, always relative to an fd the server holds.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    // The stream (the writer half-closes it at the end).
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    // tokio's poller (made, with its wakers, before the filter).
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    // Threads and memory.
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    // The thread that waits for SIGTERM to end the stream (sigwait).
    libc::SYS_rt_sigtimedwait,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// x86_64 keeps older names that glibc or tokio still call there.
#[cfg(target_arch = "x86_64")]
const ALWAYS_X86_64: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_gettimeofday];
#[cfg(not(target_arch = "x86_64"))]
const ALWAYS_X86_64: &[libc::c_long] = &[];

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
}

fn arg32(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// Syscalls allowed with some arguments only: each rule is a set of
/// conditions that must all hold; any one rule allows the call.
fn conditional() -> Result<Vec<(libc::c_long, Vec<SeccompRule>)>, BackendError> {
    use SeccompCmpOp::{Eq, MaskedEq, Ne};
    let one = |c: Vec<SeccompCondition>| SeccompRule::new(c);
    let no_exec = |i| arg(i, MaskedEq(libc::PROT_EXEC as u64), 0);
    let thread = libc::CLONE_THREAD as u64;
    let mut fcntl = Vec::new();
    for cmd in [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_DUPFD_CLOEXEC,
        libc::F_OFD_GETLK,
        libc::F_OFD_SETLK,
        libc::F_OFD_SETLKW,
    ] {
        fcntl.push(one(vec![arg32(1, Eq, cmd as u64)?])?);
    }
    Ok(vec![
        // Threads only (glibc falls back to clone where clone3 is missing).
        (
            libc::SYS_clone,
            vec![one(vec![arg(0, MaskedEq(thread), thread)?])?],
        ),
        (libc::SYS_mmap, vec![one(vec![no_exec(2)?])?]),
        (libc::SYS_mprotect, vec![one(vec![no_exec(2)?])?]),
        (libc::SYS_fcntl, fcntl),
        // glibc installs its own handlers when the first thread starts;
        // ours for SIGSYS stays.
        (
            libc::SYS_rt_sigaction,
            vec![one(vec![arg32(0, Ne, libc::SIGSYS as u64)?])?],
        ),
        (
            libc::SYS_prctl,
            vec![one(vec![arg32(0, Eq, libc::PR_SET_NAME as u64)?])?],
        ),
        // getrlimit(RLIMIT_NOFILE): our own (pid 0), no new limit.
        (
            libc::SYS_prlimit64,
            vec![one(vec![arg32(0, Eq, 0)?, arg(2, Eq, 0)?])?],
        ),
        // abort(): a signal to ourselves.
        (
            libc::SYS_tgkill,
            vec![one(vec![arg32(0, Eq, std::process::id().into())?])?],
        ),
    ])
}

/// The filter for this process, for the machine it runs on.
fn program() -> Result<BpfProgram, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in ALWAYS.iter().chain(ALWAYS_X86_64) {
        rules.insert(*nr, Vec::new());
    }
    for (nr, r) in conditional()? {
        rules.insert(nr, r);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)?.try_into()
}

/// Installs the filter on every thread of the process (there is one).
pub(super) fn install() -> Result<(), ConfineError> {
    let filter = program().map_err(|e| ConfineError::Seccomp(Box::new(e)))?;
    on_sigsys().map_err(|e| ConfineError::Seccomp(Box::new(e)))?;
    seccompiler::apply_filter_all_threads(&filter).map_err(|e| ConfineError::Seccomp(Box::new(e)))
}

/// Installs the handler that reports a refused syscall and exits.
fn on_sigsys() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = refused;
    act.sa_sigaction = handler as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act` is a valid sigaction whose handler only makes
    // async-signal-safe calls (write, _exit); the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `SIGSYS` from the filter: `lima-fs-server: seccomp refused syscall N`
/// on stderr, then exit. Only async-signal-safe calls, no allocation.
extern "C" fn refused(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo_t for SIGSYS (64-bit Linux): the union starts at byte 16 with
    // `void *_call_addr`, then `int _syscall`.
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO
    // handler; byte 24 lies within it (it is 128 bytes long).
    let nr = unsafe {
        info.cast::<u8>()
            .add(24)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let mut buf = [0u8; 96];
    let msg = message(nr, &mut buf);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is valid
    // for its length.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_SECCOMP);
    }
}

/// The report, formatted without allocating.
fn message(nr: libc::c_int, buf: &mut [u8; 96]) -> &[u8] {
    const HEAD: &[u8] = b"lima-fs-server: seccomp refused syscall ";
    const TAIL: &[u8] = b" (not on the allowlist); stopping\n";
    let mut digits = [0u8; 12];
    let mut n = i64::from(nr).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nr < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    let mut len = 0;
    for part in [HEAD, &digits[i..], TAIL] {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_the_report_names_the_call() {
        assert!(!program().unwrap().is_empty());
        let mut buf = [0u8; 96];
        assert_eq!(
            message(41, &mut buf),
            b"lima-fs-server: seccomp refused syscall 41 (not on the allowlist); stopping\n"
        );
        assert!(message(i32::MIN, &mut buf).ends_with(b"stopping\n"));
    }

    #[test]
    fn the_list_has_no_duplicates_and_none_of_the_dangerous_calls() {
        let mut all: Vec<libc::c_long> = ALWAYS.iter().chain(ALWAYS_X86_64).copied().collect();
        all.extend(conditional().unwrap().into_iter().map(|(nr, _)| nr));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a syscall is listed twice");
        for bad in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_kill,
            libc::SYS_ioctl,
            libc::SYS_mknodat,
            libc::SYS_open_by_handle_at,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!all.contains(&bad), "syscall {bad} is allowed");
        }
    }
}
