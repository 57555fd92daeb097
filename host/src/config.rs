//! `lima.yaml`: parsed strictly (an unknown field is an error naming the field
//! and the file), then checked and filled with defaults into [`InstanceConfig`].
//!
//! Every top-level field Lima knows is accepted so that Lima templates load.
//! Fields lima-rs does not act on yet are kept as raw YAML and reported as
//! warnings by [`LimaYaml::unused_fields`].
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::units::{human_size, parse_size};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}: {field}: {msg}")]
    Invalid {
        path: String,
        field: String,
        msg: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimaYaml {
    pub minimum_lima_version: Option<String>,
    pub base: Option<Value>,
    pub vm_type: Option<String>,
    pub vm_opts: Option<Value>,
    pub os: Option<String>,
    pub os_opts: Option<Value>,
    pub arch: Option<String>,
    #[serde(default)]
    pub images: Vec<Image>,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub additional_disks: Option<Value>,
    pub mounts: Option<Vec<crate::mounts::MountYaml>>,
    pub mount_types_unsupported: Option<Value>,
    pub mount_type: Option<String>,
    pub mount_inotify: Option<bool>,
    pub ssh: Option<Value>,
    pub ca_certs: Option<Value>,
    pub upgrade_packages: Option<bool>,
    pub containerd: Option<Value>,
    pub provision: Option<Value>,
    pub probes: Option<Value>,
    pub guest_install_prefix: Option<String>,
    pub port_forwards: Option<Vec<crate::portfwd::PortForwardYaml>>,
    pub copy_to_host: Option<Value>,
    pub message: Option<String>,
    pub networks: Option<Value>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub param: Option<Value>,
    pub dns: Option<Value>,
    pub host_resolver: Option<Value>,
    pub propagate_proxy_env: Option<bool>,
    pub plain: Option<bool>,
    pub timezone: Option<String>,
    pub nested_virtualization: Option<bool>,
    pub tpm: Option<bool>,
    pub user: Option<Value>,
    pub firmware: Option<Value>,
    pub audio: Option<Value>,
    pub video: Option<Value>,
    pub cpu_type: Option<Value>,
    pub rosetta: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Image {
    pub location: String,
    pub arch: Option<String>,
    pub digest: Option<String>,
    pub variant: Option<String>,
    pub arch_variant: Option<String>,
    pub kernel: Option<Kernel>,
    pub initrd: Option<FileRef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kernel {
    /// Empty with a `builtin:` image: keep the image's kernel, add `cmdline`.
    #[serde(default)]
    pub location: String,
    pub arch: Option<String>,
    pub digest: Option<String>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileRef {
    pub location: String,
    pub arch: Option<String>,
    pub digest: Option<String>,
}

impl LimaYaml {
    /// Parses YAML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field `{path}`: {inner}")
            };
            ConfigError::Parse {
                path: origin.to_string(),
                msg,
            }
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Fields that are set but that lima-rs does not act on yet.
    pub fn unused_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let checks: [(&'static str, bool); 14] = [
            ("base", self.base.is_some()),
            ("additionalDisks", self.additional_disks.is_some()),
            ("ssh", self.ssh.is_some()),
            ("caCerts", self.ca_certs.is_some()),
            ("containerd", self.containerd.is_some()),
            ("provision", self.provision.is_some()),
            ("probes", self.probes.is_some()),
            ("copyToHost", self.copy_to_host.is_some()),
            ("networks", self.networks.is_some()),
            ("dns", self.dns.is_some()),
            ("hostResolver", self.host_resolver.is_some()),
            ("firmware", self.firmware.is_some()),
            ("audio", self.audio.is_some()),
            ("video", self.video.is_some()),
        ];
        for (name, set) in checks {
            if set {
                v.push(name);
            }
        }
        v
    }

    /// Checks the values and fills defaults.
    pub fn resolve(&self, origin: &str) -> Result<InstanceConfig, ConfigError> {
        let invalid = |field: &str, msg: String| ConfigError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            msg,
        };
        let vm_type = match self.vm_type.as_deref() {
            None | Some("default") | Some("qemu") => "qemu".to_string(),
            Some(other) => {
                return Err(invalid(
                    "vmType",
                    format!("`{other}` is not supported on this host; use `qemu`"),
                ))
            }
        };
        let host_arch = host_arch();
        let arch = match self.arch.as_deref() {
            None | Some("default") => host_arch.to_string(),
            Some(a @ ("x86_64" | "aarch64")) => a.to_string(),
            Some(other) => {
                return Err(invalid(
                    "arch",
                    format!("`{other}` is not supported; use x86_64 or aarch64"),
                ))
            }
        };
        let image = self
            .images
            .iter()
            .find(|i| i.arch.as_deref().is_none_or(|a| a == arch))
            .cloned()
            .ok_or_else(|| {
                invalid(
                    "images",
                    format!("no image for arch {arch}; add one with `arch: {arch}`"),
                )
            })?;
        let cpus = match self.cpus {
            Some(0) => return Err(invalid("cpus", "must be at least 1".into())),
            Some(n) => n,
            None => host_cpus().min(4),
        };
        let memory = match &self.memory {
            Some(s) => parse_size(s).map_err(|m| invalid("memory", m))?,
            None => (host_memory() / 2).min(4 << 30),
        };
        if memory < 128 << 20 {
            return Err(invalid(
                "memory",
                format!("{} is too small; give at least 128MiB", human_size(memory)),
            ));
        }
        let disk = match &self.disk {
            Some(s) => parse_size(s).map_err(|m| invalid("disk", m))?,
            None => 100 << 30,
        };
        let port_forwards = self.port_forwards.clone().unwrap_or_default();
        if let Err((i, msg)) = crate::portfwd::resolve(&port_forwards, Path::new("/")) {
            return Err(invalid(&format!("portForwards[{i}]"), msg));
        }
        let mounts = crate::mounts::resolve(
            self.mounts.as_deref().unwrap_or(&[]),
            self.mount_type.as_deref(),
            false,
        )
        .map_err(|(f, m)| invalid(&f, m))?;
        let user = GuestUser::stand_in(self.user.as_ref()).map_err(|(f, m)| invalid(&f, m))?;
        Ok(InstanceConfig {
            user,
            mounts,
            port_forwards,
            vm_type,
            arch,
            image,
            cpus,
            memory,
            disk,
            env: self.env.clone().unwrap_or_default(),
            message: self.message.clone().unwrap_or_default(),
        })
    }
}

impl InstanceConfig {
    /// Checks CPUs and memory against this host, before anything is made:
    /// QEMU would otherwise fail (or thrash) only after the instance exists.
    pub fn check_host(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, msg: String| ConfigError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            msg,
        };
        if let Some(total) = crate::sys::total_memory() {
            if self.memory > total {
                return Err(invalid(
                    "memory",
                    format!(
                        "{} is more than this host has ({}); give at most {}",
                        human_size(self.memory),
                        human_size(total),
                        human_size(total)
                    ),
                ));
            }
        }
        let cpus = host_cpus();
        if self.cpus > cpus {
            return Err(invalid(
                "cpus",
                format!(
                    "{} is more than this host has ({cpus}); give at most {cpus}",
                    self.cpus
                ),
            ));
        }
        Ok(())
    }
}

/// The checked configuration the host agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    pub vm_type: String,
    pub arch: String,
    pub image: Image,
    pub cpus: u32,
    /// bytes
    pub memory: u64,
    /// bytes
    pub disk: u64,
    pub env: std::collections::BTreeMap<String, String>,
    pub message: String,
    /// `portForwards` as written (checked); resolved per instance directory
    /// by [`crate::portfwd::resolve`].
    pub port_forwards: Vec<crate::portfwd::PortForwardYaml>,
    /// Checked mounts (host folders are checked again at start).
    pub mounts: Vec<crate::mounts::Mount>,
    /// Who commands run as in the guest.
    pub user: GuestUser,
}

// ---------------------------------------------------------------------------
// STAND-IN for `GuestUser::resolve` (being written on another branch): the
// guest user's rule, kept in this one place so the lead can replace it.
// Rule: `lima` (uid 1000, Lima's fallback) when the host user is root or
// has a name Linux would not take, else the host user's name and uid;
// home `/home/NAME.guest`, shell `/bin/bash`; `user:` in lima.yaml
// overrides each field.
// ---------------------------------------------------------------------------

/// The guest user: whom `limactl shell`, `lima` and `lima-run` run as, who
/// owns the files of shares in the guest, and whom our own images make at
/// boot (`lima.user=` on the kernel command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestUser {
    pub name: String,
    pub uid: u32,
    /// Its primary group (same number as the uid, as `useradd` does when free).
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// `user:` as Lima spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserYaml {
    name: Option<String>,
    comment: Option<String>,
    home: Option<String>,
    shell: Option<String>,
    uid: Option<u32>,
    passwordless_sudo: Option<bool>,
}

/// The guest user's name: the host user's, `lima` for root (stand-in).
pub fn guest_user_name(host_uid: u32, host_name: Option<&str>) -> String {
    match host_name {
        Some(n) if host_uid != 0 && valid_user_name(n) => n.to_string(),
        _ => "lima".to_string(),
    }
}

/// Lima's rule for names it passes on: what `useradd` takes, and not `admin`.
fn valid_user_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && n != "admin"
}

impl GuestUser {
    /// The rule above, from this host's user and `user:` (stand-in).
    pub fn stand_in(yaml: Option<&Value>) -> Result<Self, (String, String)> {
        let uid = nix::unistd::geteuid().as_raw();
        let host_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .or_else(|| std::env::var("USER").ok());
        Self::from_host(uid, host_name.as_deref(), yaml)
    }

    fn from_host(
        host_uid: u32,
        host_name: Option<&str>,
        yaml: Option<&Value>,
    ) -> Result<Self, (String, String)> {
        let y: UserYaml = match yaml {
            None | Some(Value::Null) => UserYaml::default(),
            Some(v) => serde_yaml_ng::from_value(v.clone())
                .map_err(|e| ("user".to_string(), e.to_string()))?,
        };
        // `comment` and `passwordlessSudo` are for cloud images (no sudo in ours).
        let _ = (&y.comment, &y.passwordless_sudo);
        let name = match y.name {
            Some(n) if valid_user_name(&n) => n,
            Some(n) => {
                return Err((
                    "user.name".into(),
                    format!("`{n}` is not a valid Linux user name (use a-z, 0-9, `_` and `-`, starting with a letter or `_`)"),
                ))
            }
            None => guest_user_name(host_uid, host_name),
        };
        let uid = match y.uid {
            Some(0) => return Err(("user.uid".into(), "0 is root's; choose another".into())),
            Some(u) => u,
            None if host_uid == 0 => 1000,
            None => host_uid,
        };
        let home = y.home.unwrap_or_else(|| format!("/home/{name}.guest"));
        let shell = y.shell.unwrap_or_else(|| "/bin/bash".into());
        for (field, path) in [("user.home", &home), ("user.shell", &shell)] {
            if !path.starts_with('/') || path.contains(|c: char| c == ':' || c.is_whitespace()) {
                return Err((
                    field.into(),
                    format!("`{path}` must be an absolute guest path without `:` or spaces"),
                ));
            }
        }
        Ok(GuestUser {
            name,
            uid,
            gid: uid,
            home,
            shell,
        })
    }

    /// The kernel parameter that makes this user in our own images.
    pub fn kernel_param(&self) -> String {
        format!(
            "lima.user={}:{}:{}:{}:{}",
            self.name, self.uid, self.gid, self.home, self.shell
        )
    }
}

pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn host_memory() -> u64 {
    crate::sys::total_memory().unwrap_or(4 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_parses_and_resolves() {
        let y = LimaYaml::parse(
            include_str!("../../images/templates/default.yaml"),
            "default.yaml",
        )
        .unwrap();
        let c = y.resolve("default.yaml").unwrap();
        assert_eq!(c.vm_type, "qemu");
        assert_eq!(c.image.location, "builtin:default");
        assert_eq!(c.memory, 2 << 30);
        assert_eq!(c.disk, 100 << 30);
        assert!(y.unused_fields().is_empty());
    }

    #[test]
    fn the_guest_user_follows_the_host_user_and_lima_yaml() {
        let yaml = |t: &str| serde_yaml_ng::from_str::<Value>(t).unwrap();
        let u = GuestUser::from_host(1234, Some("alice"), None).unwrap();
        assert_eq!(
            u,
            GuestUser {
                name: "alice".into(),
                uid: 1234,
                gid: 1234,
                home: "/home/alice.guest".into(),
                shell: "/bin/bash".into(),
            }
        );
        // Root on the host, or a name Linux would refuse: `lima`, uid 1000.
        let root = GuestUser::from_host(0, Some("root"), None).unwrap();
        assert_eq!((root.name.as_str(), root.uid), ("lima", 1000));
        let odd = GuestUser::from_host(501, Some("Bob Smith"), None).unwrap();
        assert_eq!((odd.name.as_str(), odd.uid), ("lima", 501));
        // `user:` overrides each field.
        let y = yaml(
            "name: tester
uid: 4242
home: /home/tester
shell: /bin/sh
",
        );
        let u = GuestUser::from_host(0, Some("root"), Some(&y)).unwrap();
        assert_eq!(u.name, "tester");
        assert_eq!((u.uid, u.gid), (4242, 4242));
        assert_eq!(u.home, "/home/tester");
        assert_eq!(
            u.kernel_param(),
            "lima.user=tester:4242:4242:/home/tester:/bin/sh"
        );
        for (bad, field) in [
            (
                "name: Root
",
                "user.name",
            ),
            (
                "uid: 0
", "user.uid",
            ),
            (
                "home: relative
",
                "user.home",
            ),
            (
                "home: /a b
",
                "user.home",
            ),
            (
                "shell: /bin/x:y
",
                "user.shell",
            ),
            (
                "nmae: x
", "user",
            ),
        ] {
            let e = GuestUser::from_host(1000, Some("alice"), Some(&yaml(bad))).unwrap_err();
            assert_eq!(e.0, field, "{bad}: {}", e.1);
        }
    }

    #[test]
    fn unknown_field_names_field_and_file() {
        let err = LimaYaml::parse("cpus: 2\nmemroy: 4GiB\n", "/x/lima.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/lima.yaml"), "{err}");
        assert!(err.contains("memroy"), "{err}");
        let err = LimaYaml::parse("images:\n- location: a\n  kernal: {}\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("images[0]") && err.contains("kernal"), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        let err = LimaYaml::parse("cpus: many\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpus"), "{err}");
    }

    #[test]
    fn lima_fields_we_do_not_use_are_accepted_and_reported() {
        let y = LimaYaml::parse(
            "images: [{location: x}]\nprovision:\n- mode: system\n  script: echo hi\ncontainerd: {system: false}\nmounts: []\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(y.unused_fields(), vec!["containerd", "provision"]);
    }

    #[test]
    fn cpus_and_memory_beyond_the_host_name_the_field_and_the_host() {
        let cfg = |extra: &str| {
            LimaYaml::parse(&format!("images: [{{location: x}}]\n{extra}"), "t.yaml")
                .unwrap()
                .resolve("t.yaml")
                .unwrap()
        };
        cfg("cpus: 1\nmemory: 256MiB\n")
            .check_host("t.yaml")
            .unwrap();
        let e = cfg("memory: 900TiB\n")
            .check_host("t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.yaml: memory: 900TiB is more than this host has ("),
            "{e}"
        );
        let e = cfg("cpus: 10000\n")
            .check_host("t.yaml")
            .unwrap_err()
            .to_string();
        let host = std::thread::available_parallelism().unwrap().get();
        assert!(
            e.contains(&format!("cpus: 10000 is more than this host has ({host})")),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let y = LimaYaml::parse("images: [{location: x}]\nmemory: lots\n", "t.yaml").unwrap();
        assert!(y
            .resolve("t.yaml")
            .unwrap_err()
            .to_string()
            .contains("memory"));
        let y = LimaYaml::parse("images: [{location: x}]\nvmType: vz\n", "t.yaml").unwrap();
        assert!(y
            .resolve("t.yaml")
            .unwrap_err()
            .to_string()
            .contains("vmType"));
        let y = LimaYaml::parse("cpus: 1\n", "t.yaml").unwrap();
        assert!(y
            .resolve("t.yaml")
            .unwrap_err()
            .to_string()
            .contains("images"));
        let y = LimaYaml::parse("images: [{location: x}]\ncpus: 0\n", "t.yaml").unwrap();
        assert!(y
            .resolve("t.yaml")
            .unwrap_err()
            .to_string()
            .contains("cpus"));
    }
}
