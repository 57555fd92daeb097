//! The cloud-init NoCloud seed of a distro instance: a small FAT volume
//! labelled `CIDATA`, written in-process (`volume.rs`), that cloud-init in
//! the guest finds by its label.
//!
//! ```text
//! CIDATA (vfat, read-only to the guest)
//! ├── meta-data                  instance-id, local-hostname lima-NAME
//! ├── user-data                  #cloud-config: the user (name, UID, home, shell,
//! │                              passwordless sudo, SSH keys), hostname, timezone,
//! │                              /etc/hosts, and one bootcmd
//! ├── network-config             only with `dns:`: DHCP plus those servers
//! ├── boot.sh, boot.env          run by the bootcmd; the values it needs
//! ├── lima-guest-agent           our static agent
//! └── lima-guest-agent.service   its systemd unit
//! ```
//!
//! Boot, every time: cloud-init's bootcmd (early in its init stage, before
//! users are made) finds the volume by label, mounts it read-only on a
//! private folder under /run and runs `boot.sh`, which installs the agent
//! to `/usr/local/bin` (by rename), installs and enables the unit, starts it
//! without waiting, and links Lima 1's `/home/NAME.linux` to the home.
//! Users and SSH keys are cloud-init's per-instance work: they are applied
//! when the instance-id changes (see [`new_instance_id`]).
//!
//! The documents are YAML written as JSON (see `yaml`), so that no value
//! changes type on its way into cloud-init.
//!
//! Without `dns:` there is no `network-config`, and cloud-init's fallback
//! (DHCP on the first NIC) applies.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::guest_user::{guest_hostname, GuestUser};

pub mod config;
mod volume;

use config::{
    CaCertsConfig, CloudConfig, CloudUser, Ethernet, MatchMac, MetaData, Nameservers,
    NetworkConfig, ResolvConf,
};

/// The volume label cloud-init's NoCloud looks for (it accepts either case;
/// FAT labels are upper case).
pub const LABEL: &str = "CIDATA";
/// The agent's file name in the seed.
pub const AGENT_FILE: &str = "lima-guest-agent";
/// The unit's file name, in the seed and in /etc/systemd/system.
pub const UNIT_FILE: &str = "lima-guest-agent.service";
/// The sudoers rule of the guest user.
pub const SUDO_RULE: &str = "ALL=(ALL) NOPASSWD:ALL";
/// The NIC name `network-config` gives the NIC it configures (Lima's).
pub const NIC_NAME: &str = "eth0";

const BOOT_SCRIPT: &str = include_str!("boot.sh");
const UNIT: &str = include_str!("lima-guest-agent.service");

/// The whole bootcmd: find the seed, mount it, run boot.sh. In a subshell,
/// so that its `exit` ends only itself if more bootcmds are ever added.
const BOOTCMD: &str = r#"(
set -eu
dev=$(blkid -L CIDATA 2>/dev/null || blkid -L cidata 2>/dev/null || true)
for d in /dev/disk/by-label/CIDATA /dev/disk/by-label/cidata; do
  if [ -z "$dev" ] && [ -e "$d" ]; then dev=$d; fi
done
if [ -z "$dev" ]; then echo "lima: no volume labelled CIDATA" >&2; exit 1; fi
mnt=$(mktemp -d /run/lima-seed.XXXXXX)
mount -o ro "$dev" "$mnt"
rc=0
sh "$mnt/boot.sh" "$mnt" || rc=$?
umount "$mnt"
rmdir "$mnt"
exit "$rc"
)
"#;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the guest agent {path} cannot be read (`cargo xtask build` makes it)")]
    Agent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no SSH public key to authorise in the guest")]
    NoKeys,
    #[error("SSH public key {0:?} spans more than one line")]
    KeyLines(String),
    #[error(
        "timezone `{0}` is not a zone name like Europe/Berlin or UTC; fix `timezone:` in lima.yaml"
    )]
    Timezone(String),
    #[error("`dns:` needs the MAC address of the instance's NIC to match it in network-config")]
    DnsWithoutMac,
    #[error("`{0}` is not a MAC address like 52:55:55:12:34:56")]
    Mac(String),
    #[error("cannot write the cloud-init seed {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the cloud-init {file}")]
    Render {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Everything a seed says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedInputs {
    pub instance_name: String,
    /// cloud-init's instance-id; [`new_instance_id`] gives one per start,
    /// as Lima does.
    pub instance_id: String,
    pub user: GuestUser,
    /// `authorized_keys` lines: `ssh_identity::authorized_keys`.
    pub ssh_public_keys: Vec<String>,
    /// A zone name such as Europe/Berlin (`timezone:` in lima.yaml, else
    /// [`host_timezone`]); `None` leaves the image's.
    pub timezone: Option<String>,
    /// `dns:` in lima.yaml; empty leaves DNS to DHCP.
    pub dns: Vec<IpAddr>,
    /// The NIC's MAC address, needed (only) with `dns`.
    pub mac_address: Option<String>,
    /// The static guest agent (`programs::guest_agent`).
    pub agent_binary: PathBuf,
    /// `caCerts:` (PEM texts) for the guest's trust store.
    pub ca_certs: crate::config::CaCerts,
}

/// A fresh instance-id, different at each start (Lima: `iid-<unix time>`),
/// so that cloud-init applies the user, keys, hostname and network config
/// of the current `lima.yaml` at every boot. The price is cloud-init's
/// per-instance work (new SSH host keys among it) at every boot.
pub fn new_instance_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("iid-{}", now.as_secs())
}

/// The host's time zone, as Lima gives the guest by default: `$TZ` when it
/// names a zone the host knows, else the zone `/etc/localtime` links to,
/// else `/etc/timezone`; `None` when none of them says.
pub fn host_timezone() -> Option<String> {
    let tz = std::env::var("TZ").ok();
    // `TZ` may also be a POSIX rule (`CET-1CEST,M3.5.0`): only a name with
    // a zoneinfo file counts.
    let tz = tz
        .as_deref()
        .map(|t| t.trim_start_matches(':'))
        .filter(|t| is_zone_name(t) && Path::new("/usr/share/zoneinfo").join(t).is_file());
    pick_zone(
        tz,
        std::fs::read_link("/etc/localtime").ok().as_deref(),
        std::fs::read_to_string("/etc/timezone").ok().as_deref(),
    )
}

/// [`host_timezone`]'s choice among `$TZ` (a checked zone name), the
/// `/etc/localtime` link and `/etc/timezone`.
fn pick_zone(tz: Option<&str>, localtime: Option<&Path>, timezone: Option<&str>) -> Option<String> {
    let from_link = localtime.and_then(|t| {
        let t = t.to_string_lossy();
        let (_, zone) = t.rsplit_once("zoneinfo/")?;
        // posix/ and right/ hold the same zones under other leap rules.
        let zone = zone
            .strip_prefix("posix/")
            .or_else(|| zone.strip_prefix("right/"))
            .unwrap_or(zone);
        Some(zone.to_string())
    });
    [
        tz.map(str::to_string),
        from_link,
        timezone.map(|t| t.trim().to_string()),
    ]
    .into_iter()
    .flatten()
    .find(|z| is_zone_name(z))
}

/// A zone name (`UTC`, `Europe/Berlin`, `America/Argentina/Salta`,
/// `Etc/GMT+5`), not a path or a POSIX TZ rule.
fn is_zone_name(z: &str) -> bool {
    !z.is_empty()
        && z.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

/// Writes the seed volume for `inputs` to `out` (mode 0600), by rename, so
/// `out` is always either the old seed or the whole new one.
pub fn write_seed(inputs: &SeedInputs, out: &Path) -> Result<(), SeedError> {
    let files = render(inputs)?;
    let agent = std::fs::read(&inputs.agent_binary).map_err(|source| SeedError::Agent {
        path: inputs.agent_binary.clone(),
        source,
    })?;
    let mut all: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    all.push((AGENT_FILE, &agent));
    volume::write(out, LABEL, &all).map_err(|source| SeedError::Write {
        path: out.to_path_buf(),
        source,
    })
}

/// The seed's files other than the agent binary, in the order written.
pub fn render(inputs: &SeedInputs) -> Result<Vec<(&'static str, Vec<u8>)>, SeedError> {
    if inputs.ssh_public_keys.is_empty() {
        return Err(SeedError::NoKeys);
    }
    if let Some(k) = inputs
        .ssh_public_keys
        .iter()
        .find(|k| k.contains(['\n', '\r']))
    {
        return Err(SeedError::KeyLines(k.clone()));
    }
    if let Some(tz) = &inputs.timezone {
        if !is_zone_name(tz) {
            return Err(SeedError::Timezone(tz.clone()));
        }
    }
    let hostname = guest_hostname(&inputs.instance_name);
    let meta = MetaData {
        instance_id: inputs.instance_id.clone(),
        local_hostname: hostname.clone(),
    };
    let nameservers: Vec<String> = inputs.dns.iter().map(IpAddr::to_string).collect();
    let user = &inputs.user;
    let cloud = CloudConfig {
        hostname,
        manage_etc_hosts: true,
        timezone: inputs.timezone.clone(),
        users: vec![CloudUser {
            name: user.name.clone(),
            uid: user.uid,
            gecos: user.comment.clone(),
            homedir: user.home.clone(),
            shell: user.shell.clone(),
            sudo: SUDO_RULE.to_string(),
            lock_passwd: true,
            ssh_authorized_keys: inputs.ssh_public_keys.clone(),
        }],
        manage_resolv_conf: (!nameservers.is_empty()).then_some(true),
        resolv_conf: (!nameservers.is_empty()).then(|| ResolvConf {
            nameservers: nameservers.clone(),
        }),
        bootcmd: vec![BOOTCMD.to_string()],
        ca_certs: (inputs.ca_certs.remove_defaults || !inputs.ca_certs.certs.is_empty()).then(
            || CaCertsConfig {
                remove_defaults: inputs.ca_certs.remove_defaults,
                trusted: inputs.ca_certs.certs.clone(),
            },
        ),
    };
    let mut user_data = b"#cloud-config\n".to_vec();
    user_data.extend(yaml("user-data", &cloud)?);
    let mut files = vec![
        ("meta-data", yaml("meta-data", &meta)?),
        ("user-data", user_data),
    ];
    if !nameservers.is_empty() {
        let mac = inputs
            .mac_address
            .as_deref()
            .ok_or(SeedError::DnsWithoutMac)?;
        if !is_mac(mac) {
            return Err(SeedError::Mac(mac.to_string()));
        }
        let nic = Ethernet {
            match_: MatchMac {
                macaddress: mac.to_ascii_lowercase(),
            },
            set_name: NIC_NAME.to_string(),
            dhcp4: true,
            nameservers: Nameservers {
                addresses: nameservers,
            },
        };
        let net = NetworkConfig {
            version: 2,
            ethernets: [(NIC_NAME.to_string(), nic)].into(),
        };
        files.push(("network-config", yaml("network-config", &net)?));
    }
    let env = format!(
        "LIMA_GUEST_HOME={}\nLIMA_GUEST_LEGACY_HOME={}\n",
        sh_quote(&user.home),
        sh_quote(user.legacy_home_link().as_deref().unwrap_or("")),
    );
    files.push(("boot.env", env.into_bytes()));
    files.push(("boot.sh", BOOT_SCRIPT.as_bytes().to_vec()));
    files.push((UNIT_FILE, UNIT.as_bytes().to_vec()));
    Ok(files)
}

/// A document as JSON, which is YAML too, but YAML that a YAML 1.1 reader
/// (cloud-init's PyYAML) and a YAML 1.2 one read alike: every string is
/// quoted. serde_yaml_ng writes YAML 1.2, where `52:55:55:12:34:56` and
/// `no` may stay bare, and PyYAML reads those as a base-60 number and
/// `false`.
fn yaml<T: serde::Serialize>(file: &'static str, value: &T) -> Result<Vec<u8>, SeedError> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|source| SeedError::Render { file, source })?;
    text.push(b'\n');
    Ok(text)
}

/// `s` as one single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests;
