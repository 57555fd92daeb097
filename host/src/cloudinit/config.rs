//! The three NoCloud documents as typed values: `meta-data`, `user-data`
//! (`#cloud-config`) and `network-config` (version 2). Serialised with
//! serde (as JSON, the part of YAML that every YAML reader reads alike), so
//! no value is pasted into text, and parsed back in tests to check what
//! cloud-init will read.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `meta-data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetaData {
    /// cloud-init runs its once-per-instance modules (users, SSH host keys)
    /// again whenever this changes.
    pub instance_id: String,
    pub local_hostname: String,
}

/// `user-data`, after its `#cloud-config` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudConfig {
    pub hostname: String,
    /// `/etc/hosts` names the hostname (sudo and others look it up).
    pub manage_etc_hosts: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub users: Vec<CloudUser>,
    /// For images whose cloud-init manages resolv.conf itself (Alpine and
    /// others); systemd-resolved and networkd take `network-config` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_resolv_conf: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<ResolvConf>,
    /// Run by cloud-init early on every boot, before users exist.
    pub bootcmd: Vec<String>,
    /// `caCerts:` of lima.yaml, for cloud-init's `ca_certs` module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<CaCertsConfig>,
}

/// cloud-init's `ca_certs`: PEM certificates added to the trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertsConfig {
    pub remove_defaults: bool,
    pub trusted: Vec<String>,
}

/// One entry of `users:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudUser {
    pub name: String,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    pub homedir: String,
    pub shell: String,
    /// A sudoers rule for the user.
    pub sudo: String,
    /// No password at all: keys only.
    pub lock_passwd: bool,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
}

/// `network-config`, version 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub version: u32,
    pub ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ethernet {
    #[serde(rename = "match")]
    pub match_: MatchMac,
    pub set_name: String,
    pub dhcp4: bool,
    pub nameservers: Nameservers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchMac {
    pub macaddress: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nameservers {
    pub addresses: Vec<String>,
}
