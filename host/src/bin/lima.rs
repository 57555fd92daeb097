//! `lima CMD...`: runs CMD in the instance `$LIMA_INSTANCE` (default
//! `default`), like Lima's `lima` wrapper: `limactl shell INSTANCE CMD...`.
use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("Usage: lima [COMMAND...]\n\nRuns COMMAND (or a login shell) in the instance $LIMA_INSTANCE (default: `default`).\nSame as `limactl shell $LIMA_INSTANCE COMMAND...`. $LIMA_WORKDIR sets the working directory.");
        return;
    }
    let instance = std::env::var("LIMA_INSTANCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let limactl = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("limactl")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "limactl".into());
    let mut cmd = std::process::Command::new(&limactl);
    cmd.arg("shell");
    if let Ok(w) = std::env::var("LIMA_WORKDIR") {
        if !w.is_empty() {
            cmd.arg("--workdir").arg(w);
        }
    }
    cmd.arg(&instance).arg("--").args(args);
    let err = cmd.exec();
    eprintln!("lima: cannot run {}: {err}", limactl.display());
    std::process::exit(1);
}
