//! `limactl shell [FLAGS] INSTANCE [FLAGS] [--] [COMMAND…]`: a command, or
//! an interactive login shell, in an instance as the guest user, through
//! that user's login shell as Lima runs it.
//!
//! Flags are read before the instance name (by clap, so an unknown one is
//! a usage error) and again right after it, up to the first word that is
//! not one of ours or up to `--` (so the `lima` wrapper's
//! `limactl shell INSTANCE "$@"` passes `lima --tty=false CMD` through);
//! everything from there on is the command, its own flags included.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::msg;
use crate::{instance, lifecycle, shell};

#[derive(clap::Args, Debug, Default)]
#[command(
    override_usage = "limactl shell [FLAGS] INSTANCE [FLAGS] [--] [COMMAND...]",
    after_help = "`lima COMMAND...` is `limactl shell $LIMA_INSTANCE COMMAND...` ($LIMA_INSTANCE: `default`).\n\n\
--preserve-env passes the host's variables except those in $LIMA_SHELLENV_BLOCK\n\
(comma-separated, `*` at the end matches any suffix; a leading `+` adds to the\n\
default list instead of replacing it). $LIMA_SHELLENV_ALLOW, when set, passes only\n\
the variables it names."
)]
pub struct ShellArgs {
    /// Shell interpreter in the guest, e.g. /bin/bash (default: the user's login shell)
    #[arg(long, value_name = "PATH")]
    pub shell: Option<String>,
    /// Working directory in the guest (must exist)
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Pass the host's environment, minus LIMA_SHELLENV_BLOCK (or only LIMA_SHELLENV_ALLOW)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub preserve_env: Option<bool>,
    /// Start the instance first if it is stopped
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub start: Option<bool>,
    /// Reconnect the SSH session (accepted; lima-rs keeps no SSH session)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub reconnect: Option<bool>,
    /// Work on a private copy-on-write view of DIR; on exit review the changes, then apply, keep or discard them
    #[arg(long, value_name = "DIR")]
    pub sync: Option<String>,
    /// With --sync: discard the changes without asking (-y/--yes applies them)
    #[arg(long)]
    pub no: bool,
    /// Instance name; every argument is then the command (used by wrappers)
    #[arg(long, hide = true)]
    pub instance: Option<String>,
    /// INSTANCE [FLAGS] [--] [COMMAND...]
    #[arg(trailing_var_arg = true, value_name = "INSTANCE [COMMAND]")]
    pub args: Vec<String>,
}

/// What the flags, both sides of the instance name, ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    pub name: String,
    pub shell: Option<String>,
    pub workdir: Option<String>,
    pub preserve_env: bool,
    pub start: bool,
    pub reconnect: bool,
    /// `--tty`/`--yes` given after the instance name.
    pub tty: Option<bool>,
    /// `--yes` given after the instance name.
    pub yes: bool,
    pub sync: Option<String>,
    pub no: bool,
    pub command: Vec<String>,
}

/// Splits the arguments: the instance name, the flags right after it
/// (until the first word that is not ours, or `--`, which is dropped) and
/// the command.
pub fn split(a: ShellArgs) -> anyhow::Result<Request> {
    let mut r = Request {
        shell: a.shell,
        workdir: a.workdir,
        preserve_env: a.preserve_env.unwrap_or(false),
        start: a.start.unwrap_or(false),
        reconnect: a.reconnect.unwrap_or(false),
        sync: a.sync,
        no: a.no,
        ..Default::default()
    };
    let mut words = a.args.into_iter().peekable();
    r.name = match a.instance {
        Some(n) => n,
        None => match words.next() {
            Some(n) if n != "--" => n,
            _ => bail!("requires instance name as first argument"),
        },
    };
    fn bool_value(flag: &str, v: Option<&str>) -> anyhow::Result<bool> {
        // Go's strconv.ParseBool, which Lima's flags use.
        match v {
            None => Ok(true),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => {
                bail!("invalid argument \"{other}\" for \"--{flag}\" flag: use true or false")
            }
        }
    }
    while let Some(word) = words.peek().cloned() {
        if word == "--" {
            words.next();
            break;
        }
        let (flag, value) = match word.strip_prefix("--") {
            Some(f) => match f.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (f.to_string(), None),
            },
            None if word == "-y" => ("yes".to_string(), None),
            None => break,
        };
        match flag.as_str() {
            "shell" | "workdir" => {
                words.next();
                let v = match value {
                    Some(v) => v,
                    None => match words.next() {
                        Some(v) => v,
                        None => bail!("flag needs an argument: --{flag}"),
                    },
                };
                if flag == "shell" {
                    r.shell = Some(v);
                } else {
                    r.workdir = Some(v);
                }
            }
            "preserve-env" | "start" | "reconnect" | "tty" | "yes" => {
                words.next();
                let b = bool_value(&flag, value.as_deref())?;
                match flag.as_str() {
                    "preserve-env" => r.preserve_env = b,
                    "start" => r.start = b,
                    "reconnect" => r.reconnect = b,
                    "tty" => r.tty = Some(b),
                    // --yes means --tty=false.
                    _ => {
                        r.yes = b;
                        if b {
                            r.tty = Some(false)
                        }
                    }
                }
            }
            // Not ours: the command starts here.
            _ => break,
        }
    }
    r.command = words.collect();
    Ok(r)
}

/// Lima's default `LIMA_SHELLENV_BLOCK`: what `--preserve-env` never
/// passes unless `LIMA_SHELLENV_BLOCK` (without a leading `+`) replaces it
/// or `LIMA_SHELLENV_ALLOW` names it. A trailing `*` matches any suffix.
pub const DEFAULT_SHELLENV_BLOCK: &[&str] = &[
    "BASH*",
    "DISPLAY",
    "DYLD_*",
    "EUID",
    "FPATH",
    "GID",
    "GROUP",
    "HOME",
    "HOSTNAME",
    "LD_*",
    "LOGNAME",
    "OLDPWD",
    "PATH",
    "PWD",
    "SHELL",
    "SHLVL",
    "SSH_*",
    "TERM",
    "TERMINFO",
    "TMPDIR",
    "UID",
    "USER",
    "XAUTHORITY",
    "XDG_*",
    "ZDOTDIR",
    "ZSH*",
    "_*",
];

fn pattern_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn matches(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// The variables of `env` that `--preserve-env` passes, given the values of
/// `LIMA_SHELLENV_BLOCK` and `LIMA_SHELLENV_ALLOW`: with an allow list only
/// the variables it names; else all but the block list's (`+LIST` adds to
/// the default list, `LIST` replaces it).
pub fn preserved_env(
    env: impl IntoIterator<Item = (String, String)>,
    block: Option<&str>,
    allow: Option<&str>,
) -> Vec<(String, String)> {
    let allow = allow.map(pattern_list).unwrap_or_default();
    let default_block = || DEFAULT_SHELLENV_BLOCK.iter().map(|s| s.to_string());
    let block: Vec<String> = match block.filter(|b| !b.is_empty()) {
        None => default_block().collect(),
        Some(b) => match b.strip_prefix('+') {
            Some(more) => default_block().chain(pattern_list(more)).collect(),
            None => pattern_list(b),
        },
    };
    env.into_iter()
        .filter(|(k, _)| {
            if allow.is_empty() {
                !matches(k, &block)
            } else {
                matches(k, &allow)
            }
        })
        .collect()
}

/// Where the command starts: `--workdir` (which must exist), else the
/// host's current folder where a mount holds it, else the host's home
/// where a mount holds it (both falling back to the guest home), else the
/// guest home. Returns the folder and whether a missing one may fall back.
fn working_dir(
    workdir: Option<String>,
    mounts: &[crate::mounts::Mount],
    cwd: Option<&Path>,
    home: Option<&Path>,
) -> (Option<String>, bool) {
    if let Some(w) = workdir {
        return (Some(w), false);
    }
    let in_mounts = |p: Option<&Path>| p.and_then(|p| crate::mounts::guest_path(mounts, p));
    (in_mounts(cwd).or_else(|| in_mounts(home)), true)
}

pub fn run(home: &Path, a: ShellArgs) -> anyhow::Result<ExitCode> {
    let req = split(a)?;
    if let Some(first) = req.command.first() {
        if matches!(first.as_str(), "create" | "start" | "delete" | "shell") {
            // `lima start` runs `start` in the guest; probably a typo.
            msg::warn(format!(
                "Perhaps you meant `limactl {}`?",
                req.command.join(" ")
            ));
        }
    }
    let name = &req.name;
    let inst = super::running::existing(home, name)?;
    if !inst.host_agent_running() {
        if !req.start {
            // Lima's message for a stopped instance.
            super::running::running(home, name)?;
        }
        // As `limactl start NAME`, without its READY line and `message:`
        // (stdout is the command's).
        lifecycle::start(&inst, Duration::from_secs(600))?;
    }
    // `--reconnect` restarts Lima's SSH master; exec here opens a fresh
    // vsock stream every time, so there is nothing to reconnect.
    let _ = req.reconnect;
    let transport = lifecycle::transport(&inst)?;
    let cfg = inst.config()?;
    // `env:` of lima.yaml, then the host's (`--preserve-env`), then the
    // leading NAME=VALUE words: later ones win.
    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if req.preserve_env {
        env.extend(preserved_env(
            std::env::vars(),
            std::env::var("LIMA_SHELLENV_BLOCK").ok().as_deref(),
            std::env::var("LIMA_SHELLENV_ALLOW").ok().as_deref(),
        ));
    }
    let mut command = req.command;
    let words = command
        .iter()
        .take_while(|w| w.split_once('=').is_some_and(|(k, _)| is_env_name(k)))
        .count();
    env.extend(command.drain(..words).map(|w| {
        let (k, v) = w.split_once('=').expect("checked above");
        (k.to_string(), v.to_string())
    }));
    let host_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let (cwd, cwd_fallback) = working_dir(
        req.workdir,
        &cfg.mounts,
        std::env::current_dir().ok().as_deref(),
        host_home.as_deref(),
    );
    // `--shell`: that program as a login shell, given the command as one
    // line as Lima does; else the agent uses the user's own login shell.
    let (argv, login) = match req.shell {
        Some(sh) => (shell_argv(&sh, &command), false),
        None => (command, true),
    };
    let tty = req.tty.or_else(super::global::tty_flag);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cwd, cwd_fallback, synced) = match &req.sync {
        None => (cwd, cwd_fallback, None),
        Some(dir) => {
            let yes = req.yes || super::global::yes();
            let s = rt.block_on(sync_start(
                &inst,
                transport.as_ref(),
                &cfg,
                dir,
                yes,
                req.no,
            ))?;
            (Some(s.dir.display().to_string()), false, Some(s))
        }
    };
    let (stdin, stop_stdin) = match &synced {
        Some(_) => {
            let (r, stop) = crate::sync::stdin::stdin()?;
            (
                Some(Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                Some(stop),
            )
        }
        None => (None, None),
    };
    let code = match rt.block_on(shell::exec(
        transport.as_ref(),
        shell::ExecOptions {
            argv,
            env,
            cwd,
            cwd_fallback,
            user: Some(cfg.user.name.clone()),
            login,
            tty,
            on_started: None,
            stdin,
        },
    )) {
        Ok(code) => code,
        // Like a shell: 127 when the command cannot be started.
        Err(crate::exec::ExecError::Failed(reason)) => {
            msg::fatal(reason);
            127
        }
        Err(e) if synced.is_some() => {
            // The layer is kept: the session can still be finished.
            msg::error(msg::chain(&e.into()));
            1
        }
        Err(e) => return Err(e.into()),
    };
    drop(stop_stdin);
    if let Some(s) = synced {
        if let Err(e) = rt.block_on(sync_end(&inst, transport.as_ref(), s)) {
            msg::error(e);
        }
    }
    // Do not wait for the stdin reader thread.
    std::process::exit(code);
}

/// A `--sync` session under way.
struct Synced {
    dir: std::path::PathBuf,
    id: String,
    share: crate::sync::session::Share,
    mode: crate::sync::finish::Mode,
}

/// `--sync DIR`: checks DIR against the instance's mounts, says whether a
/// pending layer is taken up, and opens the layer's lower share.
async fn sync_start(
    inst: &instance::Instance,
    transport: &dyn crate::vsock::Transport,
    cfg: &crate::config::InstanceConfig,
    dir: &str,
    yes: bool,
    no: bool,
) -> anyhow::Result<Synced> {
    use crate::sync::{self, finish::Mode};
    if yes && no {
        bail!("--yes and --no cannot be used together");
    }
    let dir = sync::resolve_dir(dir).map_err(anyhow::Error::msg)?;
    if let Some(m) = sync::writable_overlap(&cfg.mounts, &dir) {
        bail!(
            "--sync {}: instance \"{}\" mounts {} writable (mounts[{}]), so the guest could write there around the review; make that mount read-only (`limactl edit {} --mount-writable=false` or its `writable:` in lima.yaml) or sync another folder",
            dir.display(),
            inst.name,
            m.location.display(),
            m.index,
            inst.name
        );
    }
    let id = sync::layer_id(&dir);
    let mut layer = sync::layer::LayerClient::connect(transport).await?;
    if let Some(l) = layer.list().await?.into_iter().find(|l| l.id == id) {
        if l.mounted {
            bail!(
                "a `--sync {}` session is already running in instance \"{}\"; finish it first",
                dir.display(),
                inst.name
            );
        }
        msg::info(format!(
            "taking up the pending changes to {} ({} change{}) kept from an earlier session",
            dir.display(),
            l.changes,
            if l.changes == 1 { "" } else { "s" }
        ));
    }
    let log = inst.sync_share_log(&id);
    let share = sync::session::open(transport, &dir, &id, (cfg.user.uid, cfg.user.gid()), &log)
        .await
        .map_err(anyhow::Error::msg)?;
    // The command runs only in the view, never in a bare folder.
    sync::session::wait_mounted(&mut layer, &id, Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    drop(layer);
    let mode = if yes {
        Mode::All
    } else if no {
        Mode::Discard
    } else if super::global::interactive() {
        Mode::Ask
    } else {
        Mode::Keep
    };
    Ok(Synced {
        dir,
        id,
        share,
        mode,
    })
}

/// The end of a `--sync` session: the share goes (the guest's view with
/// it), then the review and what the person chose.
async fn sync_end(
    inst: &instance::Instance,
    transport: &dyn crate::vsock::Transport,
    s: Synced,
) -> Result<(), String> {
    use crate::sync::{finish, layer::LayerClient};
    s.share.stop().await;
    let mut layer = LayerClient::connect(transport)
        .await
        .map_err(|e| lima_proto::errors::error_chain(&e))?;
    crate::sync::session::wait_unmounted(&mut layer, &s.id, Duration::from_secs(120)).await?;
    let log = inst.sync_apply_log(&s.id);
    let server = crate::shares::server_program()?;
    let t = finish::Target {
        instance: &inst.name,
        dir: &s.dir,
        id: &s.id,
        log: &log,
        server: &server,
        say: &super::sync::say,
    };
    finish::finish(&t, &mut layer, s.mode).await.map(|_| ())
}

/// `SHELL -l`, plus `-c LINE` for a command.
fn shell_argv(shell: &str, command: &[String]) -> Vec<String> {
    let mut argv = vec![shell.to_string(), "-l".to_string()];
    if !command.is_empty() {
        argv.push("-c".into());
        argv.push(lima_proto::shellquote::join(command));
    }
    argv
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> ShellArgs {
        ShellArgs {
            args: v.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn cmd(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Through clap, as `limactl shell ARGS` parses them.
    fn parse(v: &[&str]) -> Result<Request, String> {
        #[derive(clap::Parser)]
        struct Shell {
            #[command(flatten)]
            a: ShellArgs,
        }
        use clap::Parser;
        let a = Shell::try_parse_from(std::iter::once("shell").chain(v.iter().copied()))
            .map_err(|e| e.to_string())?
            .a;
        split(a).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_takes_flags_before_the_name_and_leaves_the_rest_to_split() {
        let r = parse(&["--workdir", "/a", "vm", "--start", "--", "ls", "-l"]).unwrap();
        assert_eq!(
            (r.name.as_str(), r.workdir.as_deref(), r.start),
            ("vm", Some("/a"), true)
        );
        assert_eq!(r.command, cmd(&["ls", "-l"]));
        let r = parse(&["vm", "ls", "--workdir", "/x", "--", "y"]).unwrap();
        assert_eq!(r.workdir, None);
        assert_eq!(r.command, cmd(&["ls", "--workdir", "/x", "--", "y"]));
        let r = parse(&["--", "vm", "--", "--help"]).unwrap();
        assert_eq!((r.name.as_str(), r.command), ("vm", cmd(&["--help"])));
        // An unknown flag before the name is a usage error, not a name.
        let e = parse(&["--foo", "vm"]).unwrap_err();
        assert!(e.contains("--foo"), "{e}");
        let e = parse(&["--start=maybe", "vm"]).unwrap_err();
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn sync_and_no_are_flags_before_the_name_and_yes_is_kept() {
        let r = parse(&["--sync", "./p", "--no", "vm", "--", "claude"]).unwrap();
        assert_eq!(
            (r.sync.as_deref(), r.no, r.yes, r.command),
            (Some("./p"), true, false, cmd(&["claude"]))
        );
        // After the name `--sync` is the command's, as any unknown flag.
        let r = parse(&["vm", "--sync", "."]).unwrap();
        assert_eq!((r.sync, r.command), (None, cmd(&["--sync", "."])));
        let r = parse(&["--sync=.", "vm", "--yes", "true"]).unwrap();
        assert_eq!((r.yes, r.tty), (true, Some(false)));
    }

    #[test]
    fn env_words() {
        assert!(is_env_name("FOO_1"));
        assert!(!is_env_name("1FOO"));
        assert!(!is_env_name("a-b"));
    }

    #[test]
    fn flags_right_after_the_name_are_ours_until_the_first_other_word() {
        let r = split(args(&["default", "--workdir", "/tmp", "ls", "-l"])).unwrap();
        assert_eq!(r.name, "default");
        assert_eq!(r.workdir.as_deref(), Some("/tmp"));
        assert_eq!(r.command, cmd(&["ls", "-l"]));

        let r = split(args(&[
            "vm",
            "--shell=/bin/sh",
            "--preserve-env",
            "--start",
            "--reconnect",
            "--tty=false",
            "env",
            "--workdir",
            "x",
        ]))
        .unwrap();
        assert_eq!(
            r,
            Request {
                name: "vm".into(),
                shell: Some("/bin/sh".into()),
                preserve_env: true,
                start: true,
                reconnect: true,
                tty: Some(false),
                command: cmd(&["env", "--workdir", "x"]),
                ..Default::default()
            }
        );
        // `-y`/`--yes` are --tty=false; `--start=false` turns it off again.
        let r = split(args(&["vm", "-y", "--start", "--start=false", "true"])).unwrap();
        assert_eq!((r.tty, r.start), (Some(false), false));
        let r = split(args(&["vm", "--tty", "true"])).unwrap();
        assert_eq!(r.tty, Some(true));
    }

    #[test]
    fn a_double_dash_ends_our_flags_and_is_dropped() {
        let r = split(args(&["vm", "--", "--workdir", "/x"])).unwrap();
        assert_eq!(r.workdir, None);
        assert_eq!(r.command, cmd(&["--workdir", "/x"]));
        let r = split(args(&["vm", "--workdir=/w", "--", "--", "a"])).unwrap();
        assert_eq!(r.workdir.as_deref(), Some("/w"));
        assert_eq!(r.command, cmd(&["--", "a"]));
        // An unknown flag after the name starts the command (Lima runs it).
        let r = split(args(&["vm", "--foo", "--workdir", "/x"])).unwrap();
        assert_eq!(r.command, cmd(&["--foo", "--workdir", "/x"]));
        let r = split(args(&["vm"])).unwrap();
        assert!(r.command.is_empty());
    }

    #[test]
    fn flags_before_the_name_and_the_instance_flag() {
        let a = ShellArgs {
            workdir: Some("/a".into()),
            start: Some(true),
            ..args(&["vm", "--workdir", "/b", "pwd"])
        };
        let r = split(a).unwrap();
        assert_eq!((r.workdir.as_deref(), r.start), (Some("/b"), true));
        let a = ShellArgs {
            instance: Some("vm".into()),
            ..args(&["uname", "-a"])
        };
        let r = split(a).unwrap();
        assert_eq!((r.name.as_str(), r.command), ("vm", cmd(&["uname", "-a"])));
    }

    #[test]
    fn bad_flag_values_and_a_missing_name_are_errors() {
        let e = split(args(&[])).unwrap_err().to_string();
        assert_eq!(e, "requires instance name as first argument");
        let e = split(args(&["--"])).unwrap_err().to_string();
        assert_eq!(e, "requires instance name as first argument");
        let e = split(args(&["vm", "--workdir"])).unwrap_err().to_string();
        assert!(e.contains("--workdir"), "{e}");
        let e = split(args(&["vm", "--start=maybe"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"maybe\"") && e.contains("--start"), "{e}");
    }

    #[test]
    fn the_block_list_is_limas_and_can_be_extended_replaced_or_bypassed() {
        let env = || {
            [
                ("PATH", "/bin"),
                ("HOME", "/h"),
                ("SSH_AUTH_SOCK", "/s"),
                ("XDG_RUNTIME_DIR", "/r"),
                ("_", "/usr/bin/env"),
                ("BASH_ENV", "x"),
                ("EDITOR", "vi"),
                ("MY_TOKEN", "t"),
                ("LANG", "C.UTF-8"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        };
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            names(preserved_env(env(), None, None)),
            ["EDITOR", "MY_TOKEN", "LANG"]
        );
        assert_eq!(
            names(preserved_env(env(), Some("+MY_*, LANG"), None)),
            ["EDITOR"]
        );
        assert_eq!(
            names(preserved_env(env(), Some("MY_TOKEN"), None)),
            [
                "PATH",
                "HOME",
                "SSH_AUTH_SOCK",
                "XDG_RUNTIME_DIR",
                "_",
                "BASH_ENV",
                "EDITOR",
                "LANG"
            ]
        );
        // The allow list alone decides, block list or not.
        assert_eq!(
            names(preserved_env(env(), Some("+EDITOR"), Some("EDITOR,PATH"))),
            ["PATH", "EDITOR"]
        );
    }

    #[test]
    fn the_working_directory_follows_limas_order() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let project = home.join("src/p");
        std::fs::create_dir_all(&project).unwrap();
        let mounts = crate::mounts::resolve(
            &[crate::mounts::MountYaml {
                location: home.display().to_string(),
                ..Default::default()
            }],
            None,
            true,
        )
        .unwrap();
        // --workdir wins and may not fall back.
        assert_eq!(
            working_dir(Some("/w".into()), &mounts, Some(&project), Some(&home)),
            (Some("/w".into()), false)
        );
        // The current folder where a mount holds it.
        assert_eq!(
            working_dir(None, &mounts, Some(&project), Some(&home)),
            (Some(project.display().to_string()), true)
        );
        // Else the home, where mounted.
        assert_eq!(
            working_dir(None, &mounts, Some(Path::new("/elsewhere")), Some(&home)),
            (Some(home.display().to_string()), true)
        );
        // Else the guest user's home.
        assert_eq!(
            working_dir(None, &[], Some(&project), Some(&home)),
            (None, true)
        );
    }

    #[test]
    fn a_chosen_shell_gets_the_command_as_one_line() {
        assert_eq!(shell_argv("/bin/sh", &[]), cmd(&["/bin/sh", "-l"]));
        assert_eq!(
            shell_argv("/bin/zsh", &cmd(&["echo", "a b"])),
            cmd(&["/bin/zsh", "-l", "-c", "echo 'a b'"])
        );
    }
}
