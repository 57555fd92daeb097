//! The instance store: one directory per instance under `LIMA_HOME` (default
//! `~/.lima`), laid out like Lima's so its users find their way.
//!
//! ```text
//! $LIMA_HOME/NAME/
//!   lima.yaml            the instance's configuration
//!   ha.lock              flock held by the running host agent: "running" is
//!                        "this lock is taken", so a crash never leaves a stale state
//!   ha.pid               host agent PID (to signal it)
//!   ha.stderr.log        host agent log
//!   ha.events.jsonl      lifecycle events (booting, running, failed, stopping, stopped)
//!   serial.log           the guest's serial console
//!   qemu.pid qmp.sock qemu.stderr.log
//!   vhost-vsock.sock vsock.sock transport.json   the vsock channel
//!   ports.json           forwarded ports and the guest's watcher mode
//!   datadisk             qcow2 that keeps /var and /home of our own images
//!   sock/                host ends of forwarded guest Unix sockets
//!   fs-shm               shared memory that vsockfs shares move data through
//!   fs-N.sock            QEMU's end of the Nth vsockfs share's serial port
//!   fs-N.log             the Nth vsockfs share's file server (lima-fs-server)
//!   virtiofsd-TAG.sock virtiofsd-TAG.log   a virtiofs share's daemon
//!   basedisk diffdisk    a distro image and the overlay the guest writes
//!   cidata.img           the cloud-init seed (made at every start)
//!   efi-vars.fd          the UEFI variable store
//!   ssh.config           `ssh -F` this to reach the guest's sshd
//!   sync-ID.log          a `shell --sync` session's read-only file server (layer ID)
//!   sync-ID-host.log     the file server that applies layer ID's changes
//! ```
//!
//! This module names the files; the features that use them import it, never
//! the other way round.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{ConfigError, InstanceConfig, LimaYaml};

pub const LIMA_YAML: &str = "lima.yaml";
pub const HA_LOCK: &str = "ha.lock";
pub const HA_PID: &str = "ha.pid";
pub const HA_LOG: &str = "ha.stderr.log";
pub const HA_EVENTS: &str = "ha.events.jsonl";
pub const SERIAL_LOG: &str = "serial.log";
pub const QEMU_PID: &str = "qemu.pid";
pub const QEMU_LOG: &str = "qemu.stderr.log";
pub const QMP_SOCK: &str = "qmp.sock";
pub const VHOST_VSOCK_SOCK: &str = "vhost-vsock.sock";
pub const VSOCK_SOCK: &str = "vsock.sock";
pub const VSOCK_HELPER_LOG: &str = "vhost-device-vsock.log";
pub const TRANSPORT: &str = "transport.json";
/// Backing file of the shared-memory device that `vsockfs` shares move bulk
/// data through (see `shares::vsockfs`).
pub const FS_SHM: &str = "fs-shm";
/// A distro image's instance disk: the image as fetched (a hard link into
/// the download cache, or a copy), and the qcow2 overlay the guest writes.
pub const BASEDISK: &str = "basedisk";
pub const DIFFDISK: &str = "diffdisk";
/// The cloud-init NoCloud seed volume, made anew at every start.
pub const CIDATA: &str = "cidata.img";
/// The UEFI variable store (a copy of the firmware's template).
pub const EFI_VARS: &str = "efi-vars.fd";
/// An OpenSSH client configuration for reaching the guest's sshd.
pub const SSH_CONFIG: &str = "ssh.config";
/// The data disk of our own images (qcow2, `/var` and `/home` in the guest).
pub const DATA_DISK: &str = "datadisk";
/// Forwarded ports, for `limactl list` (written by the forwarder).
pub const PORTS_FILE: &str = "ports.json";
/// Present when the instance is protected from `delete` and
/// `factory-reset` (`limactl protect`).
pub const PROTECTED: &str = "protected";
/// The version of Lima (or lima-rs) that created the instance.
pub const LIMA_VERSION: &str = "lima-version";

/// Files that only exist while the instance runs.
pub const RUNTIME_FILES: &[&str] = &[
    HA_PID,
    FS_SHM,
    QEMU_PID,
    QMP_SOCK,
    VHOST_VSOCK_SOCK,
    VSOCK_SOCK,
    TRANSPORT,
    PORTS_FILE,
];

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance name `{0}` is invalid: use letters and digits, optionally joined by `.`, `_` or `-` (at most 76 characters)")]
    BadName(String),
    #[error("instance `{name}` does not exist (create it with `limactl start --name {name}`)")]
    NotFound { name: String },
    #[error("instance `{name}` is not running (start it with `limactl start {name}`)")]
    NotRunning { name: String },
    #[error("instance `{name}` is already running (use `limactl shell {name}`, or `limactl stop {name}` first)")]
    AlreadyRunning { name: String },
    #[error("instance directory {0} makes socket paths longer than the OS allows; use a shorter LIMA_HOME")]
    PathTooLong(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `$LIMA_HOME`, or `~/.lima`.
pub fn lima_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LIMA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".lima")
}

/// Lima's rule for names (`names.rs`).
pub fn validate_name(name: &str) -> Result<(), InstanceError> {
    if crate::names::is_valid_name(name) {
        Ok(())
    } else {
        Err(InstanceError::BadName(name.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    Running,
    Stopped,
    Broken,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "Running",
            Status::Stopped => "Stopped",
            Status::Broken => "Broken",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub dir: PathBuf,
}

impl Instance {
    pub fn new(home: &Path, name: &str) -> Result<Self, InstanceError> {
        validate_name(name)?;
        let dir = home.join(name);
        // sockaddr_un holds 108 bytes on Linux, 104 on macOS.
        let longest = dir.join(VHOST_VSOCK_SOCK);
        if longest.as_os_str().len() >= 104 {
            return Err(InstanceError::PathTooLong(dir));
        }
        Ok(Instance {
            name: name.to_string(),
            dir,
        })
    }

    /// The instance, which must exist.
    pub fn open(home: &Path, name: &str) -> Result<Self, InstanceError> {
        let inst = Self::new(home, name)?;
        if !inst.exists() {
            return Err(InstanceError::NotFound {
                name: name.to_string(),
            });
        }
        Ok(inst)
    }

    pub fn exists(&self) -> bool {
        self.dir.join(LIMA_YAML).exists()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// QEMU's end of the `nth` vsockfs share's serial port.
    pub fn share_port_socket(&self, nth: u64) -> PathBuf {
        self.dir.join(format!("fs-{nth}.sock"))
    }

    /// The log (stderr) of the `nth` vsockfs share's file server.
    pub fn share_server_log(&self, nth: u64) -> PathBuf {
        self.dir.join(format!("fs-{nth}.log"))
    }

    /// The log of a `shell --sync` session's read-only file server.
    pub fn sync_share_log(&self, layer: &str) -> PathBuf {
        self.dir.join(format!("sync-{layer}.log"))
    }

    /// The log of the file server that applies a layer's changes.
    pub fn sync_apply_log(&self, layer: &str) -> PathBuf {
        self.dir.join(format!("sync-{layer}-host.log"))
    }

    /// The socket and log of a virtiofs share's `virtiofsd`.
    pub fn virtiofsd_files(&self, tag: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("virtiofsd-{tag}.sock")),
            self.dir.join(format!("virtiofsd-{tag}.log")),
        )
    }

    /// `lima.yaml` with its template variables filled (`tmplvars.rs`).
    pub fn yaml(&self) -> Result<LimaYaml, InstanceError> {
        let path = self.path(LIMA_YAML);
        let mut yaml = LimaYaml::load(&path)?;
        crate::tmplvars::expand_for(
            &mut yaml,
            &self.name,
            &self.dir,
            &path.display().to_string(),
        )?;
        Ok(yaml)
    }

    pub fn config(&self) -> Result<InstanceConfig, InstanceError> {
        let path = self.path(LIMA_YAML);
        let mut cfg = self.yaml()?.resolve(&path.display().to_string())?;
        // `{{.Name}}` in `user.home` names this instance.
        cfg.user = crate::config::resolve_user(cfg.user_yaml.as_ref(), &self.name)?;
        Ok(cfg)
    }

    /// Running while a host agent holds `ha.lock`; Broken when its
    /// configuration is invalid or its last start failed ([`Self::errors`]).
    pub fn status(&self) -> Status {
        if !self.exists() {
            return Status::Broken;
        }
        if self.host_agent_running() {
            Status::Running
        } else if self.errors().is_empty() {
            Status::Stopped
        } else {
            Status::Broken
        }
    }

    /// Why a stopped instance is Broken: its configuration's error, or the
    /// reason its last start failed (cleared by the next start).
    pub fn errors(&self) -> Vec<String> {
        if let Err(e) = self.config() {
            return vec![lima_proto::errors::error_chain(&e)];
        }
        crate::events::read_all(&self.path(HA_EVENTS))
            .into_iter()
            .filter_map(|r| match r.event {
                crate::events::Event::Failed { reason } => Some(reason),
                _ => None,
            })
            .collect()
    }

    /// Whether the last start got as far as launching the VM.
    pub fn vm_was_launched(&self) -> bool {
        crate::events::read_all(&self.path(HA_EVENTS))
            .iter()
            .any(|r| matches!(r.event, crate::events::Event::Booting { .. }))
    }

    pub fn host_agent_running(&self) -> bool {
        let Ok(file) = std::fs::File::open(self.path(HA_LOCK)) else {
            return false;
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_unlocked_on_drop) => false,
            Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
        }
    }

    pub fn read_pid(&self, file: &str) -> Option<i32> {
        std::fs::read_to_string(self.path(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every instance in `home`, sorted by name: as Lima counts them, every
    /// folder not starting with `.` or `_` (`_config` …), so a folder that
    /// lost its `lima.yaml` is listed (Broken) rather than forgotten.
    pub fn list(home: &Path) -> Vec<Instance> {
        let mut v: Vec<Instance> = std::fs::read_dir(home)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(['.', '_']) {
                    return None;
                }
                Instance::new(home, &name).ok()
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Removes what only a running instance has.
    pub fn remove_runtime_files(&self) {
        for f in RUNTIME_FILES {
            let _ = std::fs::remove_file(self.path(f));
        }
        self.remove_share_port_sockets();
    }

    /// Removes every `fs-N.sock` a VM of this instance may have left.
    pub fn remove_share_port_sockets(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let numbered = name
                .strip_prefix("fs-")
                .and_then(|n| n.strip_suffix(".sock"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if numbered {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_limas_rules() {
        for ok in ["default", "dev", "my-vm.2", "a_b", "A1"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            "x-",
            "a..b",
            "a b",
            "x.yaml",
            "../etc",
            "a/b",
            &"x".repeat(77),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_follows_the_lock() {
        let home = tempfile::tempdir().unwrap();
        let inst = Instance::new(home.path(), "t").unwrap();
        assert!(!inst.exists());
        std::fs::create_dir_all(&inst.dir).unwrap();
        std::fs::write(
            inst.path(LIMA_YAML),
            "images: [{location: builtin:default}]\n",
        )
        .unwrap();
        assert_eq!(inst.status(), Status::Stopped);
        let lock = std::fs::File::create(inst.path(HA_LOCK)).unwrap();
        let held =
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(inst.status(), Status::Running);
        drop(held);
        assert_eq!(inst.status(), Status::Stopped);
        std::fs::write(inst.path(LIMA_YAML), "bogus: 1\n").unwrap();
        assert_eq!(inst.status(), Status::Broken);
        assert_eq!(Instance::list(home.path()).len(), 1);
        // A folder without lima.yaml is an instance, Broken; `_config` is not.
        std::fs::create_dir_all(home.path().join("junk")).unwrap();
        std::fs::create_dir_all(home.path().join("_config")).unwrap();
        let all = Instance::list(home.path());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "junk");
        assert_eq!(all[0].status(), Status::Broken);
    }
}
