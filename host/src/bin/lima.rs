//! `lima [FLAGS] [COMMAND...]`: Lima's wrapper, `limactl shell
//! $LIMA_INSTANCE "$@"`. Everything after the wrapper's name goes to
//! `limactl shell` untouched, after the instance name, so `limactl shell`'s
//! flags (`lima --tty=false CMD`, `lima --workdir /tmp`) work as in Lima;
//! the command starts in the current folder when a mount holds it.
//!
//! Environment, as Lima's script reads it: `LIMA_INSTANCE` (default
//! `default`), `LIMA_SHELL` (`--shell`), `LIMA_WORKDIR` (`--workdir`) and
//! `LIMACTL` (the `limactl` to run; ours defaults to the one beside this
//! binary, then `limactl` on PATH).
//!
//! Run as `docker.lima` or `nerdctl.lima` (links `cargo xtask build`
//! makes beside it), it is Lima's wrapper of that name:
//!
//! - `docker.lima ARGS`: the instance `$LIMA_INSTANCE` (default `docker`)
//!   must exist and run; then the host's `$DOCKER` (default `docker`) runs
//!   with `DOCKER_HOST` at the instance's forwarded socket, or, without a
//!   docker CLI on the host, `docker ARGS` runs in the guest;
//! - `nerdctl.lima ARGS`: `limactl shell --preserve-env default nerdctl ARGS`.
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The name this binary was run as.
fn own_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "lima".into())
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1);
}

/// `docker.lima`: the host's docker CLI against the instance's forwarded
/// socket, or docker in the guest when the host has none.
fn docker(args: Vec<OsString>, limactl: &std::path::Path) -> ! {
    let name = env("LIMA_INSTANCE").unwrap_or_else(|| "docker".into());
    let name = name.to_string_lossy().into_owned();
    let inst = match lima_host::instance::Instance::new(&lima_host::instance::lima_home(), &name) {
        Ok(i) if i.exists() => i,
        _ => fail(&format!(
            "instance \"{name}\" does not exist, run `limactl create --name={name} template:docker` to create a new instance"
        )),
    };
    if !inst.host_agent_running() {
        fail(&format!(
            "instance \"{name}\" is not running, run `limactl start {name}` to start the existing instance"
        ));
    }
    let program = env("DOCKER").unwrap_or_else(|| "docker".into());
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let host_cli = lima_host::programs::find_program(&program.to_string_lossy())
        .filter(|p| std::fs::canonicalize(p).ok() != me);
    let err = match host_cli {
        Some(cli) => {
            let sock = inst.dir.join("sock/docker.sock");
            let err = std::process::Command::new(&cli)
                .env("DOCKER_HOST", format!("unix://{}", sock.display()))
                .args(&args)
                .exec();
            format!("cannot run {}: {err}", cli.display())
        }
        None => {
            let err = std::process::Command::new(limactl)
                .env("LIMA_INSTANCE", &name)
                .args(["shell", &name, "docker"])
                .args(&args)
                .exec();
            format!("cannot run {}: {err}", limactl.display())
        }
    };
    fail(&format!("docker.lima: {err}"))
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let instance = env("LIMA_INSTANCE").unwrap_or_else(|| "default".into());
    let limactl: PathBuf = env("LIMACTL").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("limactl")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| "limactl".into())
    });
    let mut cmd = std::process::Command::new(&limactl);
    match own_name().as_str() {
        "docker.lima" => docker(args, &limactl),
        "nerdctl.lima" => {
            let err = cmd
                .args(["shell", "--preserve-env", "default", "nerdctl"])
                .args(&args)
                .exec();
            fail(&format!(
                "nerdctl.lima: cannot run {}: {err}",
                limactl.display()
            ))
        }
        _ => {}
    }
    // Only a lone -h/-v is the wrapper's own, as in Lima's script.
    match args.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") if args.len() == 1 => {
            let me = own_name();
            let inst = instance.to_string_lossy();
            let ctl = limactl.display();
            println!("Usage: {me} [COMMAND...]\n");
            println!("{me} runs COMMAND (or a login shell) through \"{ctl} shell {inst}\".");
            println!("Set $LIMA_INSTANCE to use another instance than \"{inst}\".\n");
            println!("$LIMA_SHELL names the shell in the instance and $LIMA_WORKDIR the");
            println!("folder to start in (default: the current folder, where it is shared).\n");
            println!("Flags of `{ctl} shell` may come first: {me} --workdir /tmp ls");
            println!("See `{ctl} shell --help` for them.");
            return;
        }
        Some("-v" | "--version") if args.len() == 1 => {
            cmd.arg("--version");
        }
        _ => {
            cmd.arg("shell");
            if let Some(w) = env("LIMA_WORKDIR") {
                cmd.arg("--workdir").arg(w);
            }
            if let Some(s) = env("LIMA_SHELL") {
                cmd.arg("--shell").arg(s);
            }
            cmd.arg(&instance).args(&args);
        }
    }
    let err = cmd.exec();
    eprintln!("lima: cannot run {}: {err}", limactl.display());
    std::process::exit(1);
}
