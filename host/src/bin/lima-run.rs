//! `lima-run [OPTIONS] -- COMMAND...`: boot a fresh VM, run COMMAND in the
//! current folder (shared at the same path), exit with its code, leave
//! nothing behind.
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lima_host::oneshot::{self, RunError, RunOptions};

#[derive(Parser)]
#[command(
    name = "lima-run",
    version,
    about = "Run one command in a throw-away Linux VM, with the current folder shared",
    after_help = "Exit status: the command's own; 128+N when a signal N ended it; 125 when lima-run itself failed; 127 when the command could not be started."
)]
struct Cli {
    /// Virtual CPUs
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest memory, e.g. 1GiB (default 2GiB)
    #[arg(long)]
    memory: Option<String>,
    /// Publish a guest port: [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    ports: Vec<String>,
    /// Set an environment variable for the command (NAME=VALUE, or NAME to pass ours)
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Image: `default` (busybox, fastest), `debian` (a Debian userland), or an image directory
    #[arg(long, default_value = "default")]
    image: String,
    /// Share the current folder read-only
    #[arg(long)]
    read_only: bool,
    /// Give up if the guest has not answered after this long (e.g. 90s, 5m)
    #[arg(long, default_value = "5m", value_parser = lima_host::units::parse_duration)]
    boot_timeout: Duration,
    /// Print how long each phase took, on stderr
    #[arg(long)]
    timings: bool,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

fn env_pairs(flags: &[String]) -> Result<Vec<(String, String)>, String> {
    flags
        .iter()
        .map(|f| match f.split_once('=') {
            Some(("", _)) => Err(format!("-e {f}: empty variable name")),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => std::env::var(f)
                .map(|v| (f.clone(), v))
                .map_err(|_| format!("-e {f}: not set here; give a value with -e {f}=VALUE")),
        })
        .collect()
}

fn main() -> ExitCode {
    // Everything we (and QEMU and the helpers we start) create is private.
    lima_host::privacy::restrict_umask();
    let cli = Cli::parse();
    lima_host::init_logging(match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    });
    let fail = |msg: String| {
        eprintln!("lima-run: error: {msg}");
        ExitCode::from(125)
    };
    let env = match env_pairs(&cli.env) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let workdir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot read the current folder: {e}")),
    };
    let mut argv = cli.command;
    if argv.first().map(String::as_str) == Some("--") {
        argv.remove(0);
    }
    let opts = RunOptions {
        argv,
        cpus: cli.cpus,
        memory: cli.memory,
        image: cli.image,
        ports: cli.ports,
        env,
        read_only: cli.read_only,
        boot_timeout: cli.boot_timeout,
        timings: cli.timings,
        workdir,
    };
    // One thread: children get PR_SET_PDEATHSIG, which follows the thread
    // that spawned them, so that thread must live as long as we do.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(oneshot::run(opts)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(RunError::Interrupted) => {
            eprintln!("lima-run: interrupted; the VM was stopped");
            ExitCode::from(130)
        }
        Err(e) => fail(e.to_string()),
    }
}
