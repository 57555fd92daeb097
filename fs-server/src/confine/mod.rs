//! Confinement of a share's server process: what is left to a guest that
//! finds a bug in the decoder or the path rules.
//!
//! The server answers a guest we do not trust. Our own checks (single-name
//! components, `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, never
//! following a link) keep every request inside the shared folder; this
//! module is the second wall, built by the kernel, for when one of those
//! checks has a bug. Once the share is open and the shared memory mapped,
//! and before the first guest request is read, the process (one per share,
//! started by [`process::spawn`](crate::process::spawn)) gives up, in this
//! order:
//!
//! ```text
//! open the share root, /proc/self/fd, inotify; map the shm region
//!   │   (everything opened by path happens here, before)
//!   ▼
//! PR_SET_NO_NEW_PRIVS    no exec can ever gain privileges again
//!   ▼
//! Landlock (landlock.rs) files: only beneath the share root's fd, read-only
//!   │                    rights for a read-only share; no TCP bind/connect,
//!   │                    no signals or abstract sockets outside the process
//!   ▼
//! seccomp (seccomp.rs)   only the syscalls the server makes; anything else
//!   │                    stops the process, naming the syscall in its log
//!   ▼
//! tokio runtime, threads, serving: every thread inherits all of the above
//! ```
//!
//! Both filters apply to the calling thread and the threads it starts
//! later, so [`apply`] runs while the process has one thread (it checks)
//! and the runtime is built after it.
//!
//! [`Mode`] says what to do where the kernel lacks a part: `warn` (the
//! default) serves with what there is and says so, `require` refuses to
//! serve, `off` confines nothing (debugging, and the test that shows the
//! kernel is what refuses). The host side picks it from `LIMA_FS_CONFINE`.
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod seccomp;

use std::os::fd::BorrowedFd;

/// Environment variable the host side reads the [`Mode`] from.
pub const MODE_ENV: &str = "LIMA_FS_CONFINE";

/// How strictly a share server confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No confinement at all.
    Off,
    /// Everything the kernel offers; where it lacks Landlock (or part of
    /// it), serve anyway and warn.
    #[default]
    Warn,
    /// Refuse to serve unless Landlock and seccomp are fully in force.
    Require,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Warn => "warn",
            Mode::Require => "require",
        }
    }

    /// From [`MODE_ENV`]; unset or empty is [`Mode::Warn`].
    pub fn from_env() -> Result<Mode, ConfineError> {
        match std::env::var(MODE_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(Mode::default()),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfineError;
    fn from_str(s: &str) -> Result<Mode, ConfineError> {
        match s {
            "off" => Ok(Mode::Off),
            "warn" => Ok(Mode::Warn),
            "require" => Ok(Mode::Require),
            other => Err(ConfineError::BadMode(other.to_string())),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Landlock enforces on this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlock {
    /// Not asked for ([`Mode::Off`]).
    Off,
    /// Every file right we restrict is enforced (kernel ABI 3 or later).
    Full { abi: u32 },
    /// Enforced in part: ABI 1 or 2 (5.13–6.1) restricts opening and
    /// creating files but not truncation, and always refuses renames and
    /// links across directories (EXDEV to the guest).
    Partial { abi: u32 },
    /// The kernel has no Landlock, or it is not enabled at boot.
    Unavailable,
}

/// What [`apply`] put in force; reported to the host on the ready line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    pub landlock: Landlock,
    pub seccomp: bool,
}

impl Confinement {
    pub const NONE: Confinement = Confinement {
        landlock: Landlock::Off,
        seccomp: false,
    };

    /// Whether Landlock and seccomp are both fully in force.
    pub fn is_full(&self) -> bool {
        matches!(self.landlock, Landlock::Full { .. }) && self.seccomp
    }

    /// What Landlock leaves open, in a sentence; `None` when it is fully
    /// in force or turned off on purpose.
    fn landlock_gap(&self) -> Option<String> {
        match self.landlock {
            Landlock::Off | Landlock::Full { .. } => None,
            Landlock::Partial { abi } => Some(format!(
                "this kernel's Landlock (ABI {abi}) confines the file server to the shared folder only in part (it does not restrict truncation, and renames across directories fail)"
            )),
            Landlock::Unavailable => Some(
                "this kernel has no Landlock (or it is not enabled at boot): the file server is not confined to the shared folder, only by its syscall filter"
                    .to_string(),
            ),
        }
    }

    /// What is missing, in a sentence for a log; `None` when nothing is or
    /// confinement was turned off on purpose.
    pub fn warning(&self) -> Option<String> {
        let seccomp = (!self.seccomp && self.landlock != Landlock::Off)
            .then(|| "the file server runs without its syscall filter".to_string());
        let gaps: Vec<String> = self.landlock_gap().into_iter().chain(seccomp).collect();
        (!gaps.is_empty()).then(|| {
            format!(
                "{}; set {MODE_ENV}=require to refuse to serve shares instead",
                gaps.join("; ")
            )
        })
    }

    /// One line for the host: `landlock=full:7 seccomp=on`.
    pub fn to_line(&self) -> String {
        let landlock = match self.landlock {
            Landlock::Off => "off".to_string(),
            Landlock::Full { abi } => format!("full:{abi}"),
            Landlock::Partial { abi } => format!("partial:{abi}"),
            Landlock::Unavailable => "none".to_string(),
        };
        let seccomp = if self.seccomp { "on" } else { "off" };
        format!("landlock={landlock} seccomp={seccomp}")
    }

    /// Reads what [`Self::to_line`] wrote.
    pub fn parse_line(line: &str) -> Option<Confinement> {
        let mut landlock = None;
        let mut seccomp = None;
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("landlock=") {
                let abi = |s: &str| s.parse::<u32>().ok();
                landlock = match v.split_once(':') {
                    Some(("full", n)) => abi(n).map(|abi| Landlock::Full { abi }),
                    Some(("partial", n)) => abi(n).map(|abi| Landlock::Partial { abi }),
                    None if v == "off" => Some(Landlock::Off),
                    None if v == "none" => Some(Landlock::Unavailable),
                    _ => None,
                };
            } else if let Some(v) = word.strip_prefix("seccomp=") {
                seccomp = match v {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                };
            }
        }
        Some(Confinement {
            landlock: landlock?,
            seccomp: seccomp?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{MODE_ENV}={0}: use off, warn or require")]
    BadMode(String),
    #[error("confinement must be applied while the process has one thread, it has {0}")]
    Threads(usize),
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("cannot apply the Landlock ruleset")]
    Landlock(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{MODE_ENV}=require, but {0}")]
    Required(String),
    #[error(
        "confining the file server is not supported on {} hosts",
        std::env::consts::OS
    )]
    Unsupported,
}

/// Confines this process to serving the share whose root is `root`
/// (read-only rights unless `writable`), as `mode` says. Call it once,
/// after everything is opened and mapped and before any thread is started.
#[cfg(target_os = "linux")]
pub(crate) fn apply(
    root: BorrowedFd<'_>,
    writable: bool,
    mode: Mode,
) -> Result<Confinement, ConfineError> {
    if mode == Mode::Off {
        return Ok(Confinement::NONE);
    }
    let threads = thread_count();
    if threads != 1 {
        return Err(ConfineError::Threads(threads));
    }
    no_new_privs()?;
    let landlock = landlock::restrict(root, writable)?;
    if mode == Mode::Require {
        let got = Confinement {
            landlock,
            seccomp: false,
        };
        if let Some(gap) = got.landlock_gap() {
            return Err(ConfineError::Required(gap));
        }
    }
    seccomp::install()?;
    Ok(Confinement {
        landlock,
        seccomp: true,
    })
}

/// Every host but Linux: only [`Mode::Off`] (the server itself does not
/// run there yet either).
#[cfg(not(target_os = "linux"))]
pub(crate) fn apply(
    _root: BorrowedFd<'_>,
    _writable: bool,
    mode: Mode,
) -> Result<Confinement, ConfineError> {
    match mode {
        Mode::Off => Ok(Confinement::NONE),
        _ => Err(ConfineError::Unsupported),
    }
}

#[cfg(target_os = "linux")]
fn no_new_privs() -> Result<(), ConfineError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Threads of this process (`/proc/self/status`), 0 if unknown.
#[cfg(target_os = "linux")]
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_the_ready_line_round_trips() {
        assert_eq!("require".parse::<Mode>().unwrap(), Mode::Require);
        assert_eq!("off".parse::<Mode>().unwrap(), Mode::Off);
        let e = "strict".parse::<Mode>().unwrap_err().to_string();
        assert!(
            e.contains("LIMA_FS_CONFINE=strict") && e.contains("require"),
            "{e}"
        );
        for c in [
            Confinement::NONE,
            Confinement {
                landlock: Landlock::Full { abi: 7 },
                seccomp: true,
            },
            Confinement {
                landlock: Landlock::Partial { abi: 2 },
                seccomp: true,
            },
            Confinement {
                landlock: Landlock::Unavailable,
                seccomp: false,
            },
        ] {
            assert_eq!(Confinement::parse_line(&c.to_line()), Some(c));
        }
        assert_eq!(Confinement::parse_line("landlock=full seccomp=on"), None);
        assert_eq!(Confinement::parse_line("seccomp=on"), None);
    }

    #[test]
    fn only_what_is_missing_is_warned_about() {
        let full = Confinement {
            landlock: Landlock::Full { abi: 3 },
            seccomp: true,
        };
        assert!(full.is_full());
        assert_eq!(full.warning(), None);
        assert_eq!(Confinement::NONE.warning(), None);
        let none = Confinement {
            landlock: Landlock::Unavailable,
            seccomp: true,
        };
        let w = none.warning().unwrap();
        assert!(
            w.contains("no Landlock") && w.contains("LIMA_FS_CONFINE=require"),
            "{w}"
        );
        let partial = Confinement {
            landlock: Landlock::Partial { abi: 1 },
            seccomp: true,
        };
        assert!(partial.warning().unwrap().contains("ABI 1"));
    }
}
