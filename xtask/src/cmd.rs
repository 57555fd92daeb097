//! Running external commands, and the few paths every task needs.
//!
//! Every command a task runs for its effect goes through [`run`] (or
//! [`status`]/[`stdout`]), which echoes it first, like `make` does, so the log
//! shows exactly what to re-run by hand, and names the command in the error
//! when it fails. Two quiet variants exist for questions, which would
//! otherwise drown the log (the image recipe asks `modinfo` dozens of
//! times): [`query`] fails like [`run`] does, [`probe`] treats failure as
//! the answer ("is this installed?").

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// A `cargo` command: the cargo that started us (so `+toolchain` and
/// `CARGO_HOME` carry over), run from the workspace root.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

/// `program`, prefixed with `sudo` unless we already are root.
pub fn privileged(program: &str) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// The command as a shell would spell it, with the environment it sets.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    // `cargo()` runs the cargo that started us by its full path; `cargo`
    // reads better and runs the same one through rustup.
    let program = cmd.get_program();
    if std::env::var_os("CARGO").is_some_and(|c| c == program) {
        words.push("cargo".to_string());
    } else {
        words.push(program.to_string_lossy().into_owned());
    }
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn echo(cmd: &Command) {
    match cmd.get_current_dir() {
        Some(dir) if dir != root() => eprintln!("$ (cd {}) {}", dir.display(), display(cmd)),
        _ => eprintln!("$ {}", display(cmd)),
    }
}

/// Runs `cmd` with inherited stdio; fails naming the command unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status, whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    echo(cmd);
    cmd.status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Runs `cmd` (echoed) and returns its stdout; stderr passes through.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    echo(cmd);
    capture(cmd)
}

/// Runs `cmd` quietly and returns its stdout if it exits 0, `None` otherwise
/// (including when the program does not exist).
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` without echoing it and returns its stdout; fails naming the
/// command unless it exits 0. For questions, not for work.
pub fn query(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", display(cmd), out.status);
    }
    Ok(out.stdout)
}

/// [`query`], for commands that print text.
pub fn query_text(cmd: &mut Command) -> Result<String> {
    String::from_utf8(query(cmd)?).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", display(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Finds `name` on `PATH`, then in the extra directories (for tools that live
/// in `sbin` or `~/.cargo/bin`, which an ordinary user's `PATH` may lack).
pub fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A system tool that may live in `/sbin` (e.g. `depmod`, `modinfo`).
pub fn system_tool(name: &str) -> Result<PathBuf> {
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    find_program(name, &sbin).with_context(|| {
        format!("`{name}` not found on PATH or in /sbin (run `cargo xtask setup`)")
    })
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where `cargo install` puts tools.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(home.join("bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker", "it's here", ""])
            .env("LLVM_PREFIX", "/x");
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/x cargo install bpf-linker 'it'\''s here' ''"
        );
    }
}
