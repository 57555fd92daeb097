//! What a distro-image instance gets at every start, before its VM runs:
//! the guest user (`guest_user.rs`), the `LIMA_HOME` key pair
//! (`ssh_identity.rs`), a host port for its sshd, the cloud-init seed
//! (`cloudinit/`) and `ssh.config` (`ssh.rs`).
//!
//! The seed's instance-id is a hash of what the seed asks cloud-init to do
//! (user-data, network-config): cloud-init does its once-per-instance work
//! (the user, host keys) on the first boot and again only when that
//! changes, so a second start does not pay for it.
use std::path::PathBuf;

use sha2::Digest as _;

use crate::cloudinit::{self, SeedInputs};
use crate::config::InstanceConfig;
use crate::guest_user::GuestUser;
use crate::instance::{self, Instance};

/// What the start made, for the device plan.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub ssh_port: u16,
    pub user: GuestUser,
}

/// The MAC address of the instance's network card: fixed per instance
/// directory (Lima's `52:55:55` prefix), so the guest's network
/// configuration, which matches on it, holds across starts.
pub fn mac_address(inst: &Instance) -> String {
    let h = sha2::Sha256::digest(inst.dir.as_os_str().as_encoded_bytes());
    format!("52:55:55:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// Makes the seed and `ssh.config` for this start.
pub fn prepare(inst: &Instance, cfg: &InstanceConfig) -> Result<Prepared, String> {
    let user = cfg.user.clone();
    let home = inst
        .dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(instance::lima_home);
    let key = crate::ssh_identity::ensure(&home).map_err(|e| e.to_string())?;
    let host_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let keys =
        crate::ssh_identity::authorized_keys(&key, cfg.ssh.load_dot_ssh_pub_keys, &host_home);
    let agent = crate::programs::guest_agent(&cfg.arch).map_err(|e| e.to_string())?;
    let mut inputs = SeedInputs {
        instance_name: inst.name.clone(),
        instance_id: String::new(),
        user: user.clone(),
        ssh_public_keys: keys,
        timezone: cfg.timezone.clone().or_else(cloudinit::host_timezone),
        dns: cfg.dns.clone(),
        mac_address: Some(mac_address(inst)),
        agent_binary: agent,
        ca_certs: cfg.ca_certs.clone(),
    };
    inputs.instance_id = instance_id(&inputs)?;
    let seed = inst.path(instance::CIDATA);
    cloudinit::write_seed(&inputs, &seed).map_err(|e| lima_proto::errors::error_chain(&e))?;
    let ssh_port = crate::ssh::host_port(cfg.ssh.local_port)
        .map_err(|e| format!("cannot find a free port for ssh: {e}"))?;
    crate::ssh::write_client_config(
        &inst.path(instance::SSH_CONFIG),
        &crate::ssh::ClientConfig {
            instance: &inst.name,
            user: &user.name,
            identity: &key.private_path,
            port: ssh_port,
            forward_agent: cfg.ssh.forward_agent,
        },
    )
    .map_err(|e| {
        format!(
            "cannot write {}: {e}",
            inst.path(instance::SSH_CONFIG).display()
        )
    })?;
    Ok(Prepared { ssh_port, user })
}

/// `iid-` and 16 hex digits of the hash of every seed file but meta-data
/// (which holds the id itself).
fn instance_id(inputs: &SeedInputs) -> Result<String, String> {
    let files = cloudinit::render(inputs).map_err(|e| lima_proto::errors::error_chain(&e))?;
    let mut h = sha2::Sha256::new();
    for (name, data) in files.iter().filter(|(n, _)| *n != "meta-data") {
        h.update(name.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    Ok(format!("iid-{}", &hex::encode(h.finalize())[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> SeedInputs {
        SeedInputs {
            instance_name: "d".into(),
            instance_id: String::new(),
            user: GuestUser {
                name: "ada".into(),
                uid: 1000,
                comment: None,
                home: "/home/ada.guest".into(),
                shell: "/bin/bash".into(),
            },
            ssh_public_keys: vec!["ssh-ed25519 AAAA x".into()],
            timezone: None,
            dns: vec![],
            mac_address: Some("52:55:55:00:00:01".into()),
            agent_binary: "/nonexistent".into(),
            ca_certs: Default::default(),
        }
    }

    #[test]
    fn the_instance_id_follows_what_the_seed_asks_for() {
        let a = instance_id(&inputs()).unwrap();
        assert!(a.starts_with("iid-") && a.len() == 20, "{a}");
        assert_eq!(instance_id(&inputs()).unwrap(), a, "stable");
        let mut other = inputs();
        other.user.uid = 1001;
        assert_ne!(instance_id(&other).unwrap(), a);
        let mut other = inputs();
        other.instance_id = "iid-anything".into();
        assert_eq!(
            instance_id(&other).unwrap(),
            a,
            "the id is not its own input"
        );
    }

    #[test]
    fn the_mac_is_fixed_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let a = Instance::new(dir.path(), "a").unwrap();
        let b = Instance::new(dir.path(), "b").unwrap();
        assert_eq!(mac_address(&a), mac_address(&a));
        assert_ne!(mac_address(&a), mac_address(&b));
        assert!(mac_address(&a).starts_with("52:55:55:"));
    }
}
