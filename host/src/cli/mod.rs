//! `limactl`'s command line: the global flags and the command table here,
//! one file per command beside it. Each command's file holds its flags
//! (`clap::Args`) and its `run`; messages go through `msg`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::instance;

mod create;
mod delete;
mod each;
mod edit;
mod editflags;
pub mod global;
mod list;
pub mod msg;
mod plugin;
mod restart;
mod shell;
mod show_ssh;
mod start;
mod stop;
mod validate;
mod yq;

#[derive(Parser)]
#[command(
    name = "limactl",
    version,
    about = "Manage Linux virtual machines (lima-rs)"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    /// Delete instances
    #[command(visible_aliases = ["remove", "rm"])]
    Delete(delete::DeleteArgs),
    /// Show the ssh command line of a running distro instance (deprecated in
    /// Lima: prefer `ssh -F ~/.lima/NAME/ssh.config lima-NAME`)
    #[command(name = "show-ssh")]
    ShowSsh(show_ssh::ShowSshArgs),
    /// Check lima.yaml files without creating anything
    Validate(validate::ValidateArgs),
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
    crate::init_logging(match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    });
}

/// `limactl`'s `main`.
pub fn main() -> ExitCode {
    // Everything we (and QEMU and the helpers we start) create is private.
    crate::privacy::restrict_umask();
    let cli = Cli::parse();
    global::set(global::Global {
        tty: cli.tty,
        yes: cli.yes,
    });
    if let Cmd::Hostagent { .. } = cli.cmd {
        // The host agent logs to ha.stderr.log; one step more verbose.
        init_logging(cli.verbose.max(1));
    } else {
        init_logging(cli.verbose);
    }
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
        Cmd::Delete(a) => delete::run(&home, a),
        Cmd::ShowSsh(a) => show_ssh::run(&home, a),
        Cmd::Validate(a) => validate::run(a),
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
