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
    /// A message that names the file and field itself.
    #[error("{0}")]
    Named(String),
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
    pub ssh: Option<SshYaml>,
    pub ca_certs: Option<CaCertsYaml>,
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
    pub firmware: Option<FirmwareYaml>,
    pub audio: Option<Value>,
    pub video: Option<Value>,
    pub cpu_type: Option<Value>,
    pub rosetta: Option<Value>,
    /// Ours, not Lima's: QEMU emulators for foreign architectures
    /// (`binfmt.rs`).
    pub binfmt: Option<crate::binfmt::BinfmtYaml>,
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

/// `ssh:` (Lima's fields; `overVsock` and X11 are accepted, not used).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshYaml {
    /// Host port for the guest's sshd; 0 or unset picks a free one.
    pub local_port: Option<u16>,
    #[serde(rename = "loadDotSSHPubKeys")]
    pub load_dot_ssh_pub_keys: Option<bool>,
    pub forward_agent: Option<bool>,
    #[serde(rename = "forwardX11")]
    pub forward_x11: Option<bool>,
    #[serde(rename = "forwardX11Trusted")]
    pub forward_x11_trusted: Option<bool>,
    pub over_vsock: Option<bool>,
}

/// `firmware:` (`images` is accepted, not used).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FirmwareYaml {
    #[serde(rename = "legacyBIOS")]
    pub legacy_bios: Option<bool>,
    pub images: Option<Value>,
}

/// The checked `ssh:` settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SshConfig {
    /// 0: a free port at each start.
    pub local_port: u16,
    pub load_dot_ssh_pub_keys: bool,
    pub forward_agent: bool,
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
        let checks: [(&'static str, bool); 6] = [
            ("base", self.base.is_some()),
            ("containerd", self.containerd.is_some()),
            ("networks", self.networks.is_some()),
            ("hostResolver", self.host_resolver.is_some()),
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

    /// `user:` as written (`null` is none).
    pub fn user_yaml(
        &self,
        origin: &str,
    ) -> Result<Option<crate::guest_user::UserYaml>, ConfigError> {
        self.user
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| crate::guest_user::UserYaml::from_value(v, origin))
            .transpose()
            .map_err(|e| ConfigError::Named(e.to_string()))
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
        let ssh = self.ssh.clone().unwrap_or_default();
        let ssh = SshConfig {
            local_port: ssh.local_port.unwrap_or(0),
            load_dot_ssh_pub_keys: ssh.load_dot_ssh_pub_keys.unwrap_or(false),
            forward_agent: ssh.forward_agent.unwrap_or(false),
        };
        let legacy_bios = self
            .firmware
            .as_ref()
            .and_then(|f| f.legacy_bios)
            .unwrap_or(false);
        if legacy_bios && arch != "x86_64" {
            return Err(invalid(
                "firmware.legacyBIOS",
                format!("BIOS exists only on x86_64, not {arch}; remove it"),
            ));
        }
        let user_yaml = self.user_yaml(origin)?;
        let dns = match &self.dns {
            Some(v) => dns_from_value(v, origin).map_err(ConfigError::Named)?,
            None => Vec::new(),
        };
        let ca_certs = match &self.ca_certs {
            Some(c) => c.resolve().map_err(|m| invalid("caCerts", m))?,
            None => CaCerts::default(),
        };
        // The instance name only matters to `{{.Name}}` in `user.home`;
        // `Instance::config` resolves again with it.
        let user = resolve_user(user_yaml.as_ref(), "")?;
        let binfmt =
            crate::binfmt::resolve(self.binfmt.as_ref(), &arch).map_err(|(f, m)| invalid(&f, m))?;
        let additional_disks = crate::additional_disks::resolve(self.additional_disks.as_ref())
            .map_err(|(f, m)| invalid(&f, m))?;
        let copy_to_host =
            copy_to_host(self.copy_to_host.as_ref()).map_err(|(f, m)| invalid(&f, m))?;
        Ok(InstanceConfig {
            copy_to_host,
            additional_disks,
            binfmt,
            ca_certs,
            user,
            user_yaml,
            dns,
            legacy_bios,
            ssh,
            timezone: self.timezone.clone().filter(|t| !t.is_empty()),
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

/// `caCerts:` as written: certificates the guest should trust, as PEM
/// files on the host or inline PEM text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaCertsYaml {
    pub remove_defaults: Option<bool>,
    pub files: Option<Vec<String>>,
    pub certs: Option<Vec<String>>,
}

/// `caCerts:` resolved: every certificate's PEM text, files read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaCerts {
    /// Drop the image's own trust anchors first.
    pub remove_defaults: bool,
    pub certs: Vec<String>,
}

impl CaCertsYaml {
    /// Reads the files (`~` is the host home) and checks that each entry
    /// holds a PEM certificate; the message names the one that does not.
    fn resolve(&self) -> Result<CaCerts, String> {
        let mut certs = Vec::new();
        for f in self.files.iter().flatten() {
            let path = crate::mounts::expand_tilde(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read certificate file {f}: {e}"))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "{f} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                ));
            }
            certs.push(text.trim().to_string());
        }
        for (i, c) in self.certs.iter().flatten().enumerate() {
            if !c.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "certs[{i}] is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
                ));
            }
            certs.push(c.trim().to_string());
        }
        // Lima appends unique entries only.
        let mut seen = std::collections::HashSet::new();
        certs.retain(|c| seen.insert(c.clone()));
        Ok(CaCerts {
            remove_defaults: self.remove_defaults.unwrap_or(false),
            certs,
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
        // More virtual CPUs than the host has is allowed, as QEMU and Lima
        // allow it (they take turns on the real ones); only past what a
        // q35 machine can hold is it refused.
        if self.cpus > MAX_CPUS {
            return Err(invalid(
                "cpus",
                format!(
                    "{} is more than a VM can have; give at most {MAX_CPUS}",
                    self.cpus
                ),
            ));
        }
        let cpus = host_cpus();
        if self.cpus > cpus {
            tracing::warn!(
                "{origin}: cpus: {} is more than this host has ({cpus}); the guest's CPUs will take turns on them",
                self.cpus
            );
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
    /// `firmware.legacyBIOS`: BIOS instead of UEFI for disk images.
    pub legacy_bios: bool,
    pub ssh: SshConfig,
    /// `timezone:`, when set.
    pub timezone: Option<String>,
    /// Who commands run as in the guest, and whom cloud-init (distro
    /// images) or our agent (our images) makes there.
    pub user: crate::guest_user::GuestUser,
    /// `user:` overrides as written (`guest_user.rs` has the rules).
    pub user_yaml: Option<crate::guest_user::UserYaml>,
    /// `dns:` servers for the guest (empty: the VM network's own).
    pub dns: Vec<std::net::IpAddr>,
    /// `caCerts:` for the guest's trust store (cloud images, through
    /// cloud-init's `ca_certs`).
    pub ca_certs: CaCerts,
    /// `binfmt:`: which QEMU emulators our agent registers.
    pub binfmt: crate::binfmt::Binfmt,
    /// `additionalDisks:`: disks of `limactl disk` attached and mounted at
    /// `/mnt/lima-NAME`.
    pub additional_disks: Vec<crate::additional_disks::AdditionalDisk>,
    /// `copyToHost:`: guest files the host agent copies out once the
    /// instance is up.
    pub copy_to_host: Vec<CopyToHost>,
}

/// One `copyToHost:` entry, its templates filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyToHost {
    pub guest: String,
    pub host: std::path::PathBuf,
    /// A guest file that is not there is no error.
    pub skip_if_missing: bool,
    /// Removed from the host when the instance stops.
    pub delete_on_stop: bool,
}

/// `copyToHost:` as Lima reads it: `{guest, host, skipIfMissing,
/// deleteOnStop}`, `guest` absolute, `host` absolute (after its templates).
fn copy_to_host(value: Option<&Value>) -> Result<Vec<CopyToHost>, (String, String)> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(s)) => s,
        Some(_) => {
            return Err((
                "copyToHost".into(),
                "must be a list of {guest, host, skipIfMissing, deleteOnStop}".into(),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("copyToHost[{i}]");
        let bad = |m: String| (field.clone(), m);
        let Value::Mapping(m) = item else {
            return Err(bad(
                "must be a map {guest, host, skipIfMissing, deleteOnStop}".into(),
            ));
        };
        let (mut guest, mut host) = (None, None);
        let (mut skip, mut delete) = (false, false);
        for (k, v) in m {
            match (k.as_str(), v) {
                (Some("guest"), Value::String(s)) => guest = Some(s.clone()),
                (Some("host"), Value::String(s)) => host = Some(s.clone()),
                (Some("skipIfMissing"), Value::Bool(b)) => skip = *b,
                (Some("deleteOnStop"), Value::Bool(b)) => delete = *b,
                (Some(k @ ("guest" | "host" | "skipIfMissing" | "deleteOnStop")), _) => {
                    return Err(bad(format!("`{k}` has the wrong type")))
                }
                (k, _) => {
                    return Err(bad(format!(
                        "unknown field `{}` (known: guest, host, skipIfMissing, deleteOnStop)",
                        k.unwrap_or("?")
                    )))
                }
            }
        }
        let guest = guest.ok_or_else(|| bad("`guest` is missing".into()))?;
        let host = host.ok_or_else(|| bad("`host` is missing".into()))?;
        if !guest.starts_with('/') {
            return Err(bad(format!("guest path `{guest}` must be absolute")));
        }
        let host = crate::mounts::expand_tilde(&host);
        if !host.is_absolute() {
            return Err(bad(format!(
                "host path `{}` must be absolute (e.g. {{{{.Dir}}}}/copied-from-guest/FILE)",
                host.display()
            )));
        }
        out.push(CopyToHost {
            guest,
            host,
            skip_if_missing: skip,
            delete_on_stop: delete,
        });
    }
    Ok(out)
}

/// Reads `dns:` of `lima.yaml` (a list of IP addresses; `null` is none);
/// `origin` names the file in errors.
pub fn dns_from_value(
    value: &serde_yaml_ng::Value,
    origin: &str,
) -> Result<Vec<std::net::IpAddr>, String> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let Some(items) = value.as_sequence() else {
        return Err(format!(
            "{origin}: field `dns`: must be a list of IP addresses, such as [1.1.1.1]"
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    format!("{origin}: field `dns[{i}]`: {item:?} is not an IP address, such as 1.1.1.1 or 2606:4700::1111")
                })
        })
        .collect()
}

/// The guest user for this host user and `user:`.
pub fn resolve_user(
    yaml: Option<&crate::guest_user::UserYaml>,
    instance: &str,
) -> Result<crate::guest_user::GuestUser, ConfigError> {
    let host =
        crate::guest_user::HostUser::current().map_err(|e| ConfigError::Named(e.to_string()))?;
    crate::guest_user::GuestUser::resolve(&host, yaml, instance)
        .map_err(|e| ConfigError::Named(e.to_string()))
}

pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// The most virtual CPUs a q35 machine takes without an IOMMU.
pub const MAX_CPUS: u32 = 255;

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
        let mut y = LimaYaml::parse(
            include_str!("../../images/templates/default.yaml"),
            "default.yaml",
        )
        .unwrap();
        crate::tmplvars::expand_for(&mut y, "default", Path::new("/x/default"), "default.yaml")
            .unwrap();
        let c = y.resolve("default.yaml").unwrap();
        // Lima's default mounts: the home read-only, /tmp/lima writable.
        let mounts: Vec<(String, bool)> = c
            .mounts
            .iter()
            .map(|m| (m.mount_point.clone(), m.writable))
            .collect();
        assert_eq!(
            mounts,
            [
                (
                    crate::mounts::expand_tilde("~").display().to_string(),
                    false
                ),
                ("/tmp/lima".to_string(), true)
            ]
        );
        assert_eq!(c.mounts[1].location, std::env::temp_dir().join("lima"));
        assert_eq!(c.vm_type, "qemu");
        assert_eq!(c.image.location, "builtin:default");
        assert_eq!(c.memory, 2 << 30);
        assert_eq!(c.disk, 100 << 30);
        assert!(y.unused_fields().is_empty());
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
    fn ssh_firmware_user_and_dns_are_read_with_limas_names() {
        let c = LimaYaml::parse(
            "images: [{location: x}]\nssh: {localPort: 60022, loadDotSSHPubKeys: true, forwardAgent: true}\nfirmware: {legacyBIOS: true}\nuser: {name: ada}\ndns: [1.1.1.1]\n",
            "t.yaml",
        )
        .unwrap()
        .resolve("t.yaml")
        .unwrap();
        assert_eq!(
            c.ssh,
            SshConfig {
                local_port: 60022,
                load_dot_ssh_pub_keys: true,
                forward_agent: true
            }
        );
        assert!(c.legacy_bios);
        assert_eq!(c.user_yaml.unwrap().name.as_deref(), Some("ada"));
        assert_eq!(c.user.name, "ada");
        assert_eq!(c.dns, vec!["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]);
        for (text, needle) in [
            ("ssh: {loadDotSshPubKeys: true}\n", "loadDotSshPubKeys"),
            ("ssh: {localPort: 70000}\n", "ssh.localPort"),
            ("dns: [one]\n", "dns[0]"),
        ] {
            let e = LimaYaml::parse(&format!("images: [{{location: x}}]\n{text}"), "t.yaml")
                .and_then(|y| y.resolve("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.yaml: ") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn ca_certs_read_files_and_inline_pem_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let f = dir.path().join("a.crt");
        std::fs::write(&f, format!("{pem}\n")).unwrap();
        std::fs::write(dir.path().join("bad.crt"), "not a certificate\n").unwrap();
        let yaml = format!(
            "images: [{{location: x}}]\ncaCerts:\n  removeDefaults: true\n  files: [{}]\n  certs:\n  - |\n    {}\n",
            f.display(),
            pem.replace('\n', "\n    ")
        );
        let c = LimaYaml::parse(&yaml, "t.yaml")
            .unwrap()
            .resolve("t.yaml")
            .unwrap();
        assert!(c.ca_certs.remove_defaults);
        assert_eq!(c.ca_certs.certs, vec![pem.to_string()]);
        for (text, needle) in [
            (
                format!("caCerts: {{files: [{}/none.crt]}}\n", dir.path().display()),
                "none.crt",
            ),
            (
                format!("caCerts: {{files: [{}/bad.crt]}}\n", dir.path().display()),
                "bad.crt holds no PEM certificate",
            ),
            ("caCerts: {certs: [hello]}\n".to_string(), "certs[0]"),
            ("caCerts: {file: []}\n".to_string(), "file"),
        ] {
            let e = LimaYaml::parse(&format!("images: [{{location: x}}]\n{text}"), "t.yaml")
                .and_then(|y| y.resolve("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.yaml: ") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn binfmt_is_read_and_checked_by_field() {
        let c = LimaYaml::parse(
            "images: [{location: x}]\nbinfmt: {enabled: false}\n",
            "t.yaml",
        )
        .unwrap()
        .resolve("t.yaml")
        .unwrap();
        assert_eq!(c.binfmt, crate::binfmt::Binfmt::Off);
        for (text, needle) in [
            ("binfmt: {enable: false}\n", "enable"),
            (
                "binfmt: {architectures: [arm64]}\n",
                "binfmt.architectures[0]",
            ),
            ("binfmt: true\n", "binfmt"),
        ] {
            let e = LimaYaml::parse(&format!("images: [{{location: x}}]\n{text}"), "t.yaml")
                .and_then(|y| y.resolve("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.yaml: ") && e.contains(needle), "{e}");
        }
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
        assert_eq!(y.unused_fields(), vec!["containerd"]);
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
        assert!(
            e.contains("cpus: 10000 is more than a VM can have; give at most 255"),
            "{e}"
        );
        // More than the host has is only a warning.
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        cfg(&format!("cpus: {}\n", (host + 1).min(MAX_CPUS)))
            .check_host("t.yaml")
            .unwrap();
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
