//! The eBPF loader: loads the programs built from `guest-ebpf` (embedded by
//! `build.rs`), attaches them with aya, and hands back their ring buffer
//! as an [`EventSource`], or says why it could not ([`WatchError`]; the
//! cgroup hooks that did not attach in [`MissingHooks`]). Everything here
//! that calls into the kernel needs root or a real kernel; the watcher
//! reaches it only through [`attach`], which its tests replace.
//!
//! - **The cgroup hooks are a bonus, not a condition.** UDP has no listen and
//!   no tracepoint, so binds and releases come from `cgroup/post_bind4`,
//!   `cgroup/post_bind6` and `cgroup/sock_release` programs attached to the
//!   cgroup2 root (Linux 4.17+, and 5.9+ for `sock_release`; they need a
//!   mounted cgroup2). If any of them cannot attach, the TCP tracepoint still
//!   runs and the status says what is missing and why
//!   ([`WatcherStatus::Partial`](super::watcher::WatcherStatus::Partial), e.g. `ebpf (tcp only: no cgroup2 filesystem
//!   is mounted)`).
//! - **No BTF needed.** The programs read their contexts at fixed offsets
//!   (the tracepoint record, stable since 4.16; `struct bpf_sock`, UAPI), so
//!   kernels without `/sys/kernel/btf/vmlinux` work too.
use lima_proto::errors::error_chain;
use std::io;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, KProbe, TracePoint},
    Ebpf,
};
use lima_proto::ebpf::{SockEvent, DROPPED_INDEX};
use tokio::io::{unix::AsyncFd, Interest};

use super::events::EventSource;

/// Why the eBPF watcher (or one of its hooks) could not start. Each variant
/// names the step.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the agent was built without the eBPF object (AYA_BUILD_SKIP)")]
    NoObject,
    #[error("tracefs is not mounted and mounting it at {path} failed")]
    Tracefs {
        path: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("loading the program {name} into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to the tracepoint {category}:{name}")]
    Attach {
        category: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching a kretprobe to the kernel function {function}")]
    Probe {
        function: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("opening the cgroup {path}")]
    OpenCgroup {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching {hook} to the cgroup {path}")]
    AttachCgroup {
        hook: &'static str,
        path: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("opening the map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the async runtime")]
    Poll(#[source] io::Error),
}

/// What the privileged half hands back: the event source, and the cgroup
/// hooks that could not be attached with the first reason.
pub(super) struct Attached<S> {
    pub(super) source: S,
    pub(super) missing: Option<MissingHooks>,
    /// Whether the `listen_done` kretprobe is attached.
    pub(super) listened: bool,
}

/// cgroup hooks that are not attached, and why the first of them is not.
#[derive(Debug)]
pub(super) struct MissingHooks {
    hooks: Vec<&'static str>,
    /// Whether the bind hooks (both of them) are among the missing: then
    /// there are no UDP events at all.
    no_binds: bool,
    reason: WatchError,
}

impl MissingHooks {
    pub(super) fn new(hooks: Vec<&'static str>, reason: WatchError) -> Self {
        let no_binds = hooks.contains(&"cgroup/post_bind4") && hooks.contains(&"cgroup/post_bind6");
        Self {
            hooks,
            no_binds,
            reason,
        }
    }

    /// The text of [`WatcherStatus::Partial`](super::watcher::WatcherStatus::Partial).
    pub(super) fn text(&self) -> String {
        let reason = shorten(&error_chain(&self.reason));
        if self.no_binds {
            format!("tcp only: {reason}")
        } else {
            format!("no {}: {reason}", self.hooks.join(", "))
        }
    }
}

/// Longest reason a status carries. A verifier rejection brings the whole
/// verifier log (thousands of lines); its verdict is at the end.
const MAX_REASON: usize = 2048;

/// `reason` cut to about [`MAX_REASON`] bytes: its start (which step failed)
/// and its end (the kernel's verdict).
pub(super) fn shorten(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    let head_end = floor_char_boundary(reason, MAX_REASON / 4);
    let tail_start = floor_char_boundary(reason, reason.len() - MAX_REASON * 3 / 4);
    format!(
        "{} [... {} bytes elided ...] {}",
        &reason[..head_end],
        tail_start - head_end,
        &reason[tail_start..]
    )
}

/// The largest char boundary in `s` at or before `index`.
fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The cgroup2 mount to attach the cgroup hooks to, from the mount table
/// (`/proc/self/mounts` format): `/sys/fs/cgroup` if it is cgroup2 (the
/// agent mounts it there as init, and so do unified-hierarchy distros), else
/// the first cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid systems).
fn cgroup2_mount(mounts: &str) -> Option<String> {
    let mut first = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(dir), Some(fstype)) = (fields.next(), fields.next()) else {
            continue;
        };
        if fstype != "cgroup2" {
            continue;
        }
        // The mount table escapes space, tab, newline and backslash in octal.
        let dir = dir
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\");
        if dir == "/sys/fs/cgroup" {
            return Some(dir);
        }
        first.get_or_insert(dir);
    }
    first
}

const PROGRAM: &str = "inet_sock_set_state";
const CATEGORY: &str = "sock";
const TRACEPOINT: &str = "inet_sock_set_state";
/// (program, kernel function) of the kretprobe that reports a finished
/// TCP `listen()`.
const LISTENED: (&str, &str) = ("listen_done", "inet_csk_listen_start");
/// The cgroup sock programs: (program name, hook name for messages).
/// The attach type comes from each program's ELF section.
const CGROUP_HOOKS: [(&str, &str); 3] = [
    ("post_bind4", "cgroup/post_bind4"),
    ("post_bind6", "cgroup/post_bind6"),
    ("sock_release", "cgroup/sock_release"),
];
const EVENTS_MAP: &str = "EVENTS";
const DROPPED_MAP: &str = "DROPPED";
/// Where aya looks for tracefs (it caches the answer on first use).
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The object built from `guest-ebpf` by `build.rs`.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lima-guest-ebpf"))
}

/// The loaded programs and their maps. Owns the [`Ebpf`]: dropping it
/// detaches the tracepoint and the cgroup hooks.
pub(super) struct RingSource {
    ring: AsyncFd<RingBuf<MapData>>,
    dropped: PerCpuArray<MapData, u64>,
    _ebpf: Ebpf,
}

pub(super) fn attach() -> Result<Attached<RingSource>, WatchError> {
    let object = object();
    if object.is_empty() {
        return Err(WatchError::NoObject);
    }
    raise_memlock_limit();
    let mut ebpf = Ebpf::load(object).map_err(WatchError::Load)?;
    start_ebpf_logger(&mut ebpf);

    program::<TracePoint>(&mut ebpf, PROGRAM)?
        .load()
        .map_err(|source| WatchError::Program {
            name: PROGRAM,
            source,
        })?;
    // After the load, so that a missing privilege is reported as the
    // kernel's refusal to load rather than as a failed mount.
    ensure_tracefs()?;
    attach_tracepoint(&mut ebpf, PROGRAM, CATEGORY, TRACEPOINT)?;

    let missing = attach_cgroup_hooks(&mut ebpf);
    let listened = match attach_kretprobe(&mut ebpf, LISTENED.0, LISTENED.1) {
        Ok(()) => true,
        Err(e) => {
            // Only a shortcut: new listeners are then found by re-dumping.
            tracing::info!(
                "no kretprobe on {} ({}); new listeners are found by re-checking",
                LISTENED.1,
                error_chain(&e)
            );
            false
        }
    };

    let map = ebpf.take_map(EVENTS_MAP).ok_or(WatchError::Missing {
        kind: "map",
        name: EVENTS_MAP,
    })?;
    let ring = RingBuf::try_from(map).map_err(|source| WatchError::Map {
        name: EVENTS_MAP,
        source,
    })?;
    let map = ebpf.take_map(DROPPED_MAP).ok_or(WatchError::Missing {
        kind: "map",
        name: DROPPED_MAP,
    })?;
    let dropped = PerCpuArray::try_from(map).map_err(|source| WatchError::Map {
        name: DROPPED_MAP,
        source,
    })?;
    // SAFETY: the RingBuf owns the map's fd (an OwnedFd in MapData) and
    // always returns that same fd; the AsyncFd owns the RingBuf, so the fd
    // stays open for as long as it is registered.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| WatchError::Poll(e.into()))?;
    Ok(Attached {
        source: RingSource {
            ring,
            dropped,
            _ebpf: ebpf,
        },
        missing,
        listened,
    })
}

/// The program `name` in the object, as its type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, WatchError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(WatchError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| WatchError::Program { name, source })
}

/// Attaches the loaded tracepoint program `name` to `category:tracepoint`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> Result<(), WatchError> {
    program::<TracePoint>(ebpf, name)?
        .attach(category, tracepoint)
        .map_err(|source| WatchError::Attach {
            category,
            name: tracepoint,
            source,
        })?;
    Ok(())
}

/// Loads the kretprobe program `name` and attaches it to the kernel
/// function `function`.
fn attach_kretprobe(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &'static str,
) -> Result<(), WatchError> {
    let program = program::<KProbe>(ebpf, name)?;
    program
        .load()
        .map_err(|source| WatchError::Program { name, source })?;
    program
        .attach(function, 0)
        .map_err(|source| WatchError::Probe { function, source })?;
    Ok(())
}

/// Loads and attaches the cgroup sock programs to the cgroup2 root. Each
/// one that fails is left out; the result names them and the first
/// reason.
fn attach_cgroup_hooks(ebpf: &mut Ebpf) -> Option<MissingHooks> {
    let all = || CGROUP_HOOKS.iter().map(|(_, hook)| *hook).collect();
    let (path, dir) = match open_cgroup2() {
        Ok(cgroup) => cgroup,
        Err(reason) => return Some(MissingHooks::new(all(), reason)),
    };
    let mut hooks = Vec::new();
    let mut reason = None;
    for (name, hook) in CGROUP_HOOKS {
        if let Err(error) = attach_cgroup_hook(ebpf, name, hook, &path, &dir) {
            hooks.push(hook);
            reason.get_or_insert(error);
        }
    }
    reason.map(|reason| MissingHooks::new(hooks, reason))
}

/// The cgroup2 root, opened.
fn open_cgroup2() -> Result<(String, std::fs::File), WatchError> {
    let path = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| cgroup2_mount(&mounts))
        .ok_or(WatchError::NoCgroup2)?;
    match std::fs::File::open(&path) {
        Ok(dir) => Ok((path, dir)),
        Err(source) => Err(WatchError::OpenCgroup { path, source }),
    }
}

fn attach_cgroup_hook(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: &'static str,
    path: &str,
    dir: &std::fs::File,
) -> Result<(), WatchError> {
    let program = program::<CgroupSock>(ebpf, name)?;
    program
        .load()
        .map_err(|source| WatchError::Program { name, source })?;
    // On 5.7+ aya attaches through a bpf_link, which always lives beside
    // other programs on the same hook (systemd's, a container
    // runtime's) and refuses any flag: AllowMultiple would fail there
    // with EINVAL. (Before 5.7 it falls back to BPF_PROG_ATTACH, where
    // Single is exclusive; our guest kernels are newer.)
    program
        .attach(dir, CgroupAttachMode::Single)
        .map_err(|source| WatchError::AttachCgroup {
            hook,
            path: path.to_owned(),
            source,
        })?;
    Ok(())
}

impl EventSource for RingSource {
    async fn read(&mut self, out: &mut Vec<SockEvent>) -> io::Result<()> {
        while out.is_empty() {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                match SockEvent::from_bytes(&item) {
                    Some(event) => out.push(event),
                    None => {
                        tracing::warn!("eBPF ring buffer: ignored a {}-byte record", item.len())
                    }
                }
            }
            guard.clear_ready();
        }
        Ok(())
    }

    fn dropped(&mut self) -> io::Result<u64> {
        let per_cpu = self
            .dropped
            .get(&DROPPED_INDEX, 0)
            .map_err(io::Error::other)?;
        Ok(per_cpu.iter().sum())
    }
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK (newer ones
/// use the memory cgroup). Raise it if it is finite; failing is not fatal
/// here, the load then fails with the kernel's reason.
fn raise_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we pass and nothing else.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if got == 0 && limit.rlim_cur == libc::RLIM_INFINITY {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the rlimit we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

/// aya finds tracepoints through tracefs. The agent mounts it when it is
/// init; on a distro that did not, mount it here.
fn ensure_tracefs() -> Result<(), WatchError> {
    if tracefs_mounted() {
        return Ok(());
    }
    let path = TRACEFS_DIRS[0];
    nix::mount::mount(
        Some("tracefs"),
        path,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| WatchError::Tracefs { path, source })?;
    tracing::info!("mounted tracefs at {path}");
    Ok(())
}

/// Whether tracefs is mounted where aya looks, by the mount table (its
/// directories are not readable without privilege), or by looking when
/// there is no /proc.
fn tracefs_mounted() -> bool {
    match std::fs::read_to_string("/proc/self/mounts") {
        Ok(mounts) => mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(dir), Some(fstype)) = (fields.next(), fields.next()) else {
                return false;
            };
            fstype == "tracefs" && TRACEFS_DIRS.contains(&dir)
        }),
        Err(_) => TRACEFS_DIRS
            .iter()
            .any(|dir| std::path::Path::new(dir).join("events").is_dir()),
    }
}

/// Forwards the program's own log lines (aya-log) to our log. The logger
/// owns the AYA_LOGS map and must live as long as the program: it moves
/// into its own task. Without it the program still works.
fn start_ebpf_logger(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("eBPF log forwarding unavailable: {}", error_chain(&e));
            return;
        }
    };
    // SAFETY: the logger owns the AYA_LOGS ring buffer and its fd and
    // always returns that same fd; the AsyncFd owns the logger.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("eBPF log forwarding unavailable: {}", io::Error::from(e));
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let mut guard = match logger.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::warn!("eBPF log forwarding stopped: {e}");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        assert_eq!(cgroup2_mount(unified).as_deref(), Some("/sys/fs/cgroup"));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let both = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n\
                    cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(both).as_deref(), Some("/sys/fs/cgroup"));
        let escaped = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(escaped).as_deref(), Some("/mnt/my cg"));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\nbad\n"), None);
    }

    #[test]
    fn long_reasons_keep_both_ends() {
        let reason = format!(
            "loading the program x: {}verdict: bad ctx access",
            "0: (bf) r6 = r1 é\n".repeat(1000)
        );
        let short = shorten(&reason);
        assert!(short.len() <= MAX_REASON + 64, "{} bytes", short.len());
        assert!(short.starts_with("loading the program x: "));
        assert!(short.ends_with("verdict: bad ctx access"));
        assert!(short.contains("bytes elided"));
        assert_eq!(shorten("short"), "short");
    }
}
