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
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
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
    // Only a lone -h/-v is the wrapper's own, as in Lima's script.
    match args.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") if args.len() == 1 => {
            let me = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "lima".into());
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
