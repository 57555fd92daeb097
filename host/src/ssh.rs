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

/// What `limactl show-ssh --format` prints (Lima's four forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowFormat {
    /// `ssh -o K=V ... lima-NAME`
    Cmd,
    /// `-o K=V ...`, without `ssh` and the host
    Args,
    /// `K=V`, one a line
    Options,
    /// a `Host` block for `~/.ssh/config`
    Config,
}

impl std::str::FromStr for ShowFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cmd" => Ok(Self::Cmd),
            "args" => Ok(Self::Args),
            "options" => Ok(Self::Options),
            "config" => Ok(Self::Config),
            _ => Err(format!(
                "unknown format `{s}`; use cmd, args, options or config"
            )),
        }
    }
}

/// The host alias and its options, in file order, from a client config as
/// [`client_config`] writes it (values keep their ssh_config quoting).
pub fn parse_client_config(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut host = None;
    let mut opts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace)?;
        let value = value.trim().to_string();
        if key.eq_ignore_ascii_case("Host") {
            if host.is_some() {
                break;
            }
            host = Some(value);
        } else if host.is_some() {
            opts.push((key.to_string(), value));
        }
    }
    Some((host?, opts))
}

/// One `K=V` word for a POSIX shell: as it is when it holds nothing the
/// shell would change, else in single quotes.
fn shell_word(w: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=/.,:@%\"".contains(c);
    // A double-quoted value without `$`, backquote or backslash means the
    // same to the shell and to ssh (Lima prints `IdentityFile="..."`).
    if w.chars().all(plain) {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// `limactl show-ssh` output for the client config `text`.
pub fn show(text: &str, format: ShowFormat) -> Option<String> {
    let (host, opts) = parse_client_config(text)?;
    let kv: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let args = || {
        kv.iter()
            .map(|o| format!("-o {}", shell_word(o)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(match format {
        ShowFormat::Cmd => format!("ssh {} {}\n", args(), shell_word(&host)),
        ShowFormat::Args => format!("{}\n", args()),
        ShowFormat::Options => kv.iter().map(|o| format!("{o}\n")).collect(),
        ShowFormat::Config => {
            let mut out = format!("Host {host}\n");
            for (k, v) in &opts {
                out.push_str(&format!("  {k} {v}\n"));
            }
            out
        }
    })
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

    fn sample() -> String {
        client_config(&ClientConfig {
            instance: "debian",
            user: "alice",
            identity: Path::new("/home/alice/.lima/_config/user"),
            port: 60022,
            forward_agent: false,
        })
    }

    #[test]
    fn show_ssh_cmd_and_args() {
        let cmd = show(&sample(), ShowFormat::Cmd).unwrap();
        assert!(cmd.starts_with("ssh -o Hostname=127.0.0.1 -o Port=60022 -o User=alice -o IdentityFile=\"/home/alice/.lima/_config/user\" "), "{cmd}");
        assert!(cmd.ends_with(" -o BatchMode=yes lima-debian\n"), "{cmd}");
        let args = show(&sample(), ShowFormat::Args).unwrap();
        assert_eq!(format!("ssh {} lima-debian\n", args.trim_end()), cmd);
        // The words survive a real shell as ssh options.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {}", args.trim_end()))
            .output()
            .unwrap();
        let words = String::from_utf8(out.stdout).unwrap();
        assert!(
            words.contains("\nIdentityFile=/home/alice/.lima/_config/user\n"),
            "{words}"
        );
    }

    #[test]
    fn show_ssh_quotes_a_path_with_spaces_for_the_shell() {
        let text = client_config(&ClientConfig {
            instance: "d",
            user: "bob",
            identity: Path::new("/home/b o/key"),
            port: 2222,
            forward_agent: false,
        });
        let args = show(&text, ShowFormat::Args).unwrap();
        assert!(
            args.contains("-o 'IdentityFile=\"/home/b o/key\"'"),
            "{args}"
        );
    }

    #[test]
    fn show_ssh_options_and_config() {
        let opts = show(&sample(), ShowFormat::Options).unwrap();
        let lines: Vec<&str> = opts.lines().collect();
        assert_eq!(
            &lines[..4],
            [
                "Hostname=127.0.0.1",
                "Port=60022",
                "User=alice",
                "IdentityFile=\"/home/alice/.lima/_config/user\""
            ]
        );
        let config = show(&sample(), ShowFormat::Config).unwrap();
        assert!(
            config.starts_with("Host lima-debian\n  Hostname 127.0.0.1\n  Port 60022\n"),
            "{config}"
        );
        // The same options as the instance's own file.
        assert_eq!(parse_client_config(&config), parse_client_config(&sample()));
        assert_eq!("config".parse(), Ok(ShowFormat::Config));
        assert!("json"
            .parse::<ShowFormat>()
            .unwrap_err()
            .contains("cmd, args, options or config"));
        assert_eq!(show("# nothing\n", ShowFormat::Cmd), None);
    }
}
