//! `limactl`'s command line: the global flags and the command table here,
//! one file per command beside it. Each command's file holds its flags
//! (`clap::Args`) and its `run`; messages go through `msg`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{instance, logfmt};

mod clone;
mod copy;
mod create;
mod delete;
mod disk;
mod each;
mod edit;
mod editflags;
mod factory_reset;
pub mod global;
mod info;
mod list;
mod listfmt;
mod mcp;
pub mod msg;
mod plugin;
mod protect;
mod prune;
mod restart;
mod running;
mod shell;
mod show_ssh;
mod snapshot;
mod start;
mod stop;
mod sync;
mod template;
mod usage;
mod validate;
mod watch;
mod yq;

#[derive(Parser)]
#[command(
    name = "limactl",
    // `limactl version X`, as cobra prints Lima's.
    version = concat!("version ", env!("CARGO_PKG_VERSION")),
    disable_version_flag = true,
    // A flag given twice: the last wins, as pflag's do (`-y -y`, `--cpus 1 --cpus 2`).
    args_override_self = true,
    about = "Manage Linux virtual machines (lima-rs)"
)]
pub struct Cli {
    /// Print the version (`limactl version X`)
    #[arg(short = 'v', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// Debug mode (log level debug)
    #[arg(long, global = true)]
    debug: bool,
    /// Set the logging level [trace, debug, info, warn, error] (default info)
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Set the logging format [text, json]
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: String,
    /// Allow (or with =false, forbid) a terminal: prompts, editors, a guest pseudo-terminal
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    tty: Option<bool>,
    /// Never ask; same as --tty=false
    #[arg(short = 'y', long, global = true)]
    yes: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an instance (without starting it)
    Create(create::CreateArgs),
    /// Create (if needed) and start an instance
    Start(start::StartArgs),
    /// Edit a stopped instance's lima.yaml (edit flags, or an editor)
    Edit(edit::EditArgs),
    /// Stop and start an instance again (edit flags apply in between)
    Restart(restart::RestartArgs),
    /// Run an expression (jq syntax) on a YAML document
    Yq(yq::YqArgs),
    /// Stop instances
    Stop(stop::StopArgs),
    /// List instances
    #[command(visible_alias = "ls")]
    List(list::ListArgs),
    /// Run a command (or a login shell) in an instance
    Shell(shell::ShellArgs),
    /// Copy files between the host and guests
    #[command(visible_alias = "cp")]
    Copy(copy::CopyArgs),
    /// Review, apply or discard what `limactl shell --sync` sessions left
    Sync(sync::SyncArgs),
    /// Delete instances
    #[command(visible_aliases = ["remove", "rm"])]
    Delete(delete::DeleteArgs),
    /// Copy a stopped instance under a new name
    Clone(clone::CloneArgs),
    /// Rename a stopped instance
    Rename(clone::CloneArgs),
    /// Stop an instance and remove all but its configuration (its disks start over)
    #[command(name = "factory-reset")]
    FactoryReset(factory_reset::FactoryResetArgs),
    /// Protect instances from `limactl delete` and `factory-reset`
    Protect(protect::ProtectArgs),
    /// Remove the protection of instances
    Unprotect(protect::ProtectArgs),
    /// Remove downloaded images from the cache (all, or those nothing refers to)
    Prune(prune::PruneArgs),
    /// Snapshots of a stopped instance's disks (create, apply, delete, list)
    Snapshot(snapshot::SnapshotArgs),
    /// Named disks that instances attach with `additionalDisks:`
    Disk(disk::DiskArgs),
    /// Follow instances' events as they happen (all instances by default)
    Watch(watch::WatchArgs),
    /// Show the ssh command line of a running distro instance (deprecated in
    /// Lima: prefer `ssh -F ~/.lima/NAME/ssh.config lima-NAME`)
    #[command(name = "show-ssh")]
    ShowSsh(show_ssh::ShowSshArgs),
    /// Check lima.yaml files without creating anything
    Validate(validate::ValidateArgs),
    /// Copy, check or query templates (experimental in Lima)
    #[command(visible_alias = "tmpl")]
    Template(template::TemplateArgs),
    /// Show diagnostic information (JSON)
    Info(info::InfoArgs),
    /// Model Context Protocol: serve an instance's tools to AI agents
    Mcp(mcp::McpArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion { shell: clap_complete::Shell },
    /// Run the host agent of an instance (started by `limactl start`)
    #[command(hide = true)]
    Hostagent { instance: String },
    /// `limactl FOO ARGS` runs `limactl-FOO ARGS` from PATH (a plugin)
    #[command(external_subcommand)]
    Plugin(Vec<String>),
}

/// The log level and format the global flags ask for, as Lima reads
/// them: `--debug`, then `--log-level` over it; default info (debug for
/// the host agent, whose log is `ha.stderr.log`).
fn log_config(cli: &Cli) -> Result<logfmt::Config, String> {
    let mut level = if cli.debug || matches!(cli.cmd, Cmd::Hostagent { .. }) {
        logfmt::Level::Debug
    } else {
        logfmt::Level::Info
    };
    if let Some(l) = &cli.log_level {
        level = logfmt::Level::parse(l)?;
    }
    Ok(logfmt::Config {
        level,
        format: logfmt::Format::parse(&cli.log_format)?,
        ..logfmt::Config::default()
    })
}

/// `limactl`'s `main`.
pub fn main() -> ExitCode {
    // Everything we (and QEMU and the helpers we start) create is private.
    crate::privacy::restrict_umask();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage::exit(e),
    };
    match log_config(&cli) {
        Ok(c) => logfmt::init(c),
        Err(e) => {
            // Lima reports a bad level or format in its default form.
            logfmt::init(logfmt::Config::default());
            msg::fatal(e);
            return ExitCode::from(1);
        }
    }
    if cli.tty.is_some() && cli.yes {
        msg::fatal("cannot use both --tty and --yes flags at the same time");
        return ExitCode::from(1);
    }
    global::set(global::Global {
        tty: cli.tty,
        yes: cli.yes,
    });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            msg::fatal(msg::chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = instance::lima_home();
    match cli.cmd {
        Cmd::Create(a) => create::run(&home, a),
        Cmd::Start(a) => start::run(&home, a),
        Cmd::Edit(a) => edit::run(&home, a),
        Cmd::Restart(a) => restart::run(&home, a),
        Cmd::Yq(a) => yq::run(a),
        Cmd::Stop(a) => stop::run(&home, a),
        Cmd::List(a) => list::run(&home, a),
        Cmd::Shell(a) => shell::run(&home, a),
        Cmd::Copy(a) => copy::run(&home, a),
        Cmd::Sync(a) => sync::run(&home, a),
        Cmd::Delete(a) => delete::run(&home, a),
        Cmd::Clone(a) => clone::run(&home, a, false),
        Cmd::Rename(a) => clone::run(&home, a, true),
        Cmd::FactoryReset(a) => factory_reset::run(&home, a),
        Cmd::Protect(a) => protect::run(&home, a, true),
        Cmd::Unprotect(a) => protect::run(&home, a, false),
        Cmd::Prune(a) => prune::run(&home, a),
        Cmd::Snapshot(a) => snapshot::run(&home, a),
        Cmd::Disk(a) => disk::run(&home, a),
        Cmd::Watch(a) => watch::run(&home, a),
        Cmd::ShowSsh(a) => show_ssh::run(&home, a),
        Cmd::Validate(a) => validate::run(&home, a),
        Cmd::Template(a) => template::run(&home, a),
        Cmd::Info(a) => info::run(&home, a),
        Cmd::Mcp(a) => mcp::run(&home, a),
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
        Cmd::Plugin(args) => plugin::run(&args),
        Cmd::Hostagent { instance: name } => {
            let inst = instance::Instance::open(&home, &name)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::hostagent::run(inst))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
