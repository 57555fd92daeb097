//! `limactl`: manage lima-rs instances (Lima-compatible command line).
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lima_host::{hostagent, instance, lifecycle, shell, template};

#[derive(Parser)]
#[command(
    name = "limactl",
    version,
    about = "Manage Linux virtual machines (lima-rs)"
)]
struct Cli {
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (if needed) and start an instance
    Start {
        /// Instance name (default: the template's name, or `default`)
        #[arg(long)]
        name: Option<String>,
        /// Share a host folder (DIR[:w] for writable); adds to the template's mounts
        #[arg(long = "mount", value_name = "DIR[:w]")]
        mounts: Vec<String>,
        /// Like --mount, but replaces the template's mounts
        #[arg(long = "mount-only", value_name = "DIR[:w]")]
        mount_only: Vec<String>,
        /// How long to wait for the guest agent (e.g. 10m, 90s)
        #[arg(long, default_value = "10m", value_parser = lima_host::units::parse_duration)]
        timeout: Duration,
        /// An existing instance, or a template: `template:NAME` (debian-12, fedora, ...), NAME, a .yaml path, or an http(s) URL
        target: Option<String>,
    },
    /// Stop instances
    Stop {
        /// Kill instead of shutting the guest down
        #[arg(short, long)]
        force: bool,
        instances: Vec<String>,
    },
    /// List instances
    #[command(visible_alias = "ls")]
    List {
        /// table or json (one JSON object per line)
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Same as --format json
        #[arg(long)]
        json: bool,
        /// Only names
        #[arg(short, long)]
        quiet: bool,
        instances: Vec<String>,
    },
    /// Run a command (or a login shell) in an instance
    Shell {
        /// Working directory in the guest
        #[arg(long)]
        workdir: Option<String>,
        /// Force (or with =false, forbid) a pseudo-terminal
        #[arg(long)]
        tty: Option<bool>,
        /// Instance name (also accepted as the first argument)
        #[arg(long, hide = true)]
        instance: Option<String>,
        /// INSTANCE [--] COMMAND...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Delete instances
    #[command(visible_aliases = ["remove", "rm"])]
    Delete {
        /// Stop a running instance first
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Show the ssh command line of a running distro instance (deprecated in
    /// Lima: prefer `ssh -F ~/.lima/NAME/ssh.config lima-NAME`)
    #[command(name = "show-ssh")]
    ShowSsh {
        /// cmd, args, options or config
        #[arg(short, long, default_value = "cmd")]
        format: lima_host::ssh::ShowFormat,
        instance: String,
    },
    /// Check lima.yaml files without creating anything
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion { shell: clap_complete::Shell },
    /// Run the host agent of an instance (started by `limactl start`)
    #[command(hide = true)]
    Hostagent { instance: String },
    /// `limactl FOO ARGS` runs `limactl-FOO ARGS` from PATH (a plugin)
    #[command(external_subcommand)]
    Plugin(Vec<String>),
}

fn init_logging(verbose: u8) {
    lima_host::init_logging(match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    });
}

fn main() -> ExitCode {
    // Everything we (and QEMU and the helpers we start) create is private.
    lima_host::privacy::restrict_umask();
    let cli = Cli::parse();
    if let Cmd::Hostagent { .. } = cli.cmd {
        // The host agent logs to ha.stderr.log; one step more verbose.
        init_logging(cli.verbose.max(1));
    } else {
        init_logging(cli.verbose);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "limactl: error: {}",
                lima_proto::errors::error_chain(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

/// Runs `act` on each named instance, reporting each outcome; one failure
/// does not stop the others, and makes the exit code 1.
fn each_instance(
    home: &std::path::Path,
    names: Vec<String>,
    done: &str,
    act: impl Fn(&instance::Instance) -> Result<(), lifecycle::LifecycleError>,
) -> ExitCode {
    let mut failed = false;
    for n in names {
        let r = instance::Instance::open(home, &n)
            .map_err(anyhow::Error::from)
            .and_then(|inst| Ok(act(&inst)?));
        match r {
            Ok(()) => eprintln!("{done} `{n}`"),
            Err(e) => {
                eprintln!(
                    "limactl: error: {}",
                    lima_proto::errors::error_chain(e.as_ref())
                );
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = instance::lima_home();
    match cli.cmd {
        Cmd::Start {
            name,
            mounts,
            mount_only,
            timeout,
            target,
        } => {
            lima_host::privacy::create_private_dir(&home)
                .with_context(|| format!("cannot create LIMA_HOME {}", home.display()))?;
            if let Some(w) = lima_host::privacy::home_warning(&home) {
                eprintln!("limactl: warning: {w}");
            }
            let (inst, created) = match (&name, &target) {
                (None, Some(t)) if instance::Instance::open(&home, t).is_ok() => {
                    (instance::Instance::open(&home, t)?, false)
                }
                _ => {
                    let locator = target.clone().unwrap_or_else(|| "template:default".into());
                    match &name {
                        Some(n) => lifecycle::create(&home, n, &locator)?,
                        None if target.is_none() => lifecycle::create(&home, "default", &locator)?,
                        None => {
                            // Located once: a remote template is fetched once.
                            let t = template::locate(&locator)?;
                            lifecycle::create_from_template(&home, &t.suggested_name.clone(), &t)?
                        }
                    }
                }
            };
            if !created && inst.host_agent_running() {
                return Err(instance::InstanceError::AlreadyRunning {
                    name: inst.name.clone(),
                }
                .into());
            }
            if let Err(e) = lifecycle::apply_mount_flags(&inst, &mounts, &mount_only) {
                if created {
                    let _ = std::fs::remove_dir_all(&inst.dir);
                }
                return Err(e.into());
            }
            if created {
                eprintln!("Created instance `{}` in {}", inst.name, inst.dir.display());
            }
            eprintln!(
                "Starting `{}` (waiting up to {:?} for the guest agent)...",
                inst.name, timeout
            );
            let ev = match lifecycle::start(&inst, timeout) {
                Ok(ev) => ev,
                Err(e) => {
                    // A new instance whose VM never ran is not kept; one
                    // that failed later stays, listed as Broken with why.
                    let launched = matches!(
                        e,
                        lifecycle::LifecycleError::StartFailed { .. }
                            | lifecycle::LifecycleError::Timeout { .. }
                    ) && inst.vm_was_launched();
                    if created && !launched {
                        let _ = std::fs::remove_dir_all(&inst.dir);
                    }
                    return Err(e.into());
                }
            };
            if let lima_host::events::Event::Running {
                kernel_release,
                boot_ms,
                ..
            } = ev
            {
                eprintln!("READY in {:.1}s (kernel {kernel_release}). Run `limactl shell {}` or `lima` to use it.", boot_ms as f64 / 1000.0, inst.name);
            }
            // `message:` (its variables filled), after READY as in Lima.
            if let Some(m) = inst
                .config()
                .ok()
                .map(|c| c.message)
                .filter(|m| !m.trim().is_empty())
            {
                println!(
                    "Message from the instance `{}`:\n{}",
                    inst.name,
                    m.trim_end()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { force, instances } => {
            let names = if instances.is_empty() {
                vec!["default".to_string()]
            } else {
                instances
            };
            Ok(each_instance(&home, names, "Stopped", |inst| {
                lifecycle::stop(inst, force)
            }))
        }
        Cmd::List {
            format,
            json,
            quiet,
            instances,
        } => {
            let mut all = instance::Instance::list(&home);
            let mut missing = false;
            if !instances.is_empty() {
                for n in &instances {
                    if !all.iter().any(|i| &i.name == n) {
                        eprintln!("limactl: error: instance `{n}` does not exist");
                        missing = true;
                    }
                }
                all.retain(|i| instances.contains(&i.name));
            }
            let rows: Vec<_> = all.iter().map(lifecycle::info).collect();
            let format = if json { "json".to_string() } else { format };
            if quiet {
                for r in &rows {
                    println!("{}", r.name);
                }
            } else if format == "json" {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if format == "table" {
                if rows.is_empty() && instances.is_empty() {
                    eprintln!("No instances found. Run `limactl start` to create one.");
                } else {
                    print!("{}", lifecycle::table(&rows));
                }
                for r in rows.iter().filter(|r| !r.errors.is_empty()) {
                    eprintln!(
                        "limactl: warning: instance `{}` is broken: {}",
                        r.name,
                        r.errors.join("; ")
                    );
                }
            } else {
                anyhow::bail!("unknown --format `{format}`; use table or json");
            }
            Ok(if missing {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Shell {
            workdir,
            tty,
            instance: flag_instance,
            args,
        } => {
            let mut args = args.into_iter();
            let name = match flag_instance {
                Some(n) => n,
                None => args.next().context("missing instance name")?,
            };
            let mut argv: Vec<String> = args.collect();
            if argv.first().map(String::as_str) == Some("--") {
                argv.remove(0);
            }
            // Leading NAME=VALUE words are environment, as in Lima.
            let mut env = Vec::new();
            let mut words = Vec::new();
            while let Some((k, v)) = argv
                .first()
                .and_then(|a| a.split_once('='))
                .filter(|(k, _)| is_env_name(k))
            {
                words.push((k.to_string(), v.to_string()));
                argv.remove(0);
            }
            let inst = instance::Instance::open(&home, &name)?;
            let transport = lifecycle::transport(&inst)?;
            let cfg = inst.config()?;
            // `env:` of lima.yaml, then the words (which win).
            env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.extend(words);
            // As Lima: `--workdir` (which must exist), else the host's
            // current folder when a mount holds it (the home if the guest
            // lacks it), else the home.
            let (cwd, cwd_fallback) = match workdir {
                Some(w) => (Some(w), false),
                None => (
                    std::env::current_dir()
                        .ok()
                        .and_then(|d| lima_host::mounts::guest_path(&cfg.mounts, &d)),
                    true,
                ),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = match rt.block_on(shell::exec(
                transport.as_ref(),
                shell::ExecOptions {
                    argv,
                    env,
                    cwd,
                    cwd_fallback,
                    user: Some(cfg.user.name.clone()),
                    login: true,
                    tty,
                    on_started: None,
                },
            )) {
                Ok(code) => code,
                // Like a shell: 127 when the command cannot be started.
                Err(lima_host::exec::ExecError::Failed(reason)) => {
                    eprintln!("limactl: error: {reason}");
                    127
                }
                Err(e) => return Err(e.into()),
            };
            // Do not wait for the stdin reader thread.
            std::process::exit(code);
        }
        Cmd::Delete { force, instances } => {
            Ok(each_instance(&home, instances, "Deleted", |inst| {
                lifecycle::delete(inst, force)
            }))
        }
        Cmd::ShowSsh { format, instance } => {
            let inst = instance::Instance::open(&home, &instance)?;
            let text = lifecycle::show_ssh(&inst, format)?;
            eprintln!(
                "limactl: warning: `show-ssh` is deprecated; use `ssh -F {} lima-{}`",
                inst.path(instance::SSH_CONFIG).display(),
                inst.name
            );
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate { files } => {
            let mut failed = false;
            for f in &files {
                // As `limactl start` would take it: bases merged, then checked.
                let checked = (|| -> anyhow::Result<()> {
                    let t = template::locate(f)?;
                    let text = lima_host::base::embed(&t)?;
                    lima_host::config::LimaYaml::parse(&text, &t.origin)?.resolve(&t.origin)?;
                    Ok(())
                })();
                match checked {
                    Ok(()) => eprintln!("\"{f}\": OK"),
                    Err(e) => {
                        eprintln!(
                            "limactl: error: {}",
                            lima_proto::errors::error_chain(e.as_ref())
                        );
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "limactl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plugin(args) => run_plugin(&args),
        Cmd::Hostagent { instance: name } => {
            let inst = instance::Instance::open(&home, &name)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(hostagent::run(inst))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `limactl-NAME` from PATH with the rest of the arguments, as
/// Lima's plugins work; its exit code is ours.
fn run_plugin(args: &[String]) -> anyhow::Result<ExitCode> {
    let Some((name, rest)) = args.split_first() else {
        anyhow::bail!("no command given; see `limactl --help`");
    };
    let program = format!("limactl-{name}");
    let Some(path) = lima_host::programs::find_program(&program) else {
        anyhow::bail!(
            "unknown command \"{name}\" for \"limactl\" (no plugin `{program}` on PATH); see `limactl --help`"
        );
    };
    let status = std::process::Command::new(&path)
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {}", path.display()))?;
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lima_host::units::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn env_words() {
        assert!(is_env_name("FOO_1"));
        assert!(!is_env_name("1FOO"));
        assert!(!is_env_name("a-b"));
    }
}
