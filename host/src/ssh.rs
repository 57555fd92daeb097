//! Reaching a distro guest's sshd from the host: a port on 127.0.0.1 that
//! the VM forwards to the guest's port 22, and `ssh.config` in the instance
//! directory, so `ssh -F ~/.lima/NAME/ssh.config lima-NAME` (and VS Code's
//! Remote-SSH, given that file) logs in as the guest user with the key made
//! for this `LIMA_HOME`. `limactl shell` does not use it: it goes over vsock.
use std::path::Path;

/// The host port for the guest's sshd: `ssh.localPort`, or a free one when
/// that is 0.
pub fn host_port(configured: u16) -> std::io::Result<u16> {
    if configured != 0 {
        return Ok(configured);
    }
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// What goes into `ssh.config`.
pub struct ClientConfig<'a> {
    /// The instance's name; the host alias is `lima-NAME`.
    pub instance: &'a str,
    pub user: &'a str,
    pub identity: &'a Path,
    pub port: u16,
    pub forward_agent: bool,
}

/// Quotes a value for ssh_config (double quotes; a path may hold spaces).
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The text of `ssh.config`.
pub fn client_config(c: &ClientConfig) -> String {
    let mut lines = vec![
        format!(
            "# Made by limactl for instance `{}`; made anew at each start.",
            c.instance
        ),
        format!("Host lima-{}", c.instance),
        "  Hostname 127.0.0.1".to_string(),
        format!("  Port {}", c.port),
        format!("  User {}", c.user),
        format!(
            "  IdentityFile {}",
            quote(&c.identity.display().to_string())
        ),
        "  IdentitiesOnly yes".to_string(),
        "  PreferredAuthentications publickey".to_string(),
        // The guest's host keys are made by cloud-init on its first boot and
        // the port changes between starts; the key pair and the loopback
        // address are what identify the guest.
        "  StrictHostKeyChecking no".to_string(),
        "  UserKnownHostsFile /dev/null".to_string(),
        "  NoHostAuthenticationForLocalhost yes".to_string(),
        "  LogLevel ERROR".to_string(),
        "  BatchMode yes".to_string(),
    ];
    if c.forward_agent {
        lines.push("  ForwardAgent yes".to_string());
    }
    lines.join("\n") + "\n"
}

/// Writes `ssh.config` (0600, replaced atomically).
pub fn write_client_config(path: &Path, c: &ClientConfig) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(client_config(c).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_alias_port_user_and_key() {
        let c = ClientConfig {
            instance: "debian",
            user: "alice",
            identity: Path::new("/home/alice/.lima/_config/user"),
            port: 60022,
            forward_agent: true,
        };
        let text = client_config(&c);
        for want in [
            "Host lima-debian\n",
            "  Hostname 127.0.0.1\n",
            "  Port 60022\n",
            "  User alice\n",
            "  IdentityFile \"/home/alice/.lima/_config/user\"\n",
            "  ForwardAgent yes\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ssh.config");
        write_client_config(
            &p,
            &ClientConfig {
                forward_agent: false,
                ..c
            },
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!std::fs::read_to_string(&p)
            .unwrap()
            .contains("ForwardAgent"));
        // ssh itself accepts it.
        if let Some(ssh) = crate::programs::find_program("ssh") {
            let out = std::process::Command::new(ssh)
                .arg("-G")
                .arg("-F")
                .arg(&p)
                .arg("lima-debian")
                .output()
                .unwrap();
            let g = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(g.contains("port 60022") && g.contains("user alice"), "{g}");
        }
    }

    #[test]
    fn a_configured_port_is_kept_and_zero_picks_a_free_one() {
        assert_eq!(host_port(2222).unwrap(), 2222);
        let p = host_port(0).unwrap();
        assert!(p > 0);
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
