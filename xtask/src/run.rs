//! `cargo xtask run`: the quickest way to see the whole stack work — build,
//! make the image, start instance `default` if it is not running, and run
//! `uname -a` in it through `limactl shell`.
//!
//! The instance is left running (starting one costs seconds under TCG), and
//! the exit code is the shell's, so this doubles as a smoke test in scripts.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::build::{self, Profile};
use crate::{cmd, image};

const INSTANCE: &str = "default";

pub fn run() -> Result<ExitCode> {
    build::run(Profile::Debug)?;
    image::assemble(&build::agent_path())?;
    let limactl = build::host_bin_dir(Profile::Debug).join("limactl");

    let list = cmd::stdout(Command::new(&limactl).args(["list", "--format", "json"]))?;
    if is_running(&list, INSTANCE) {
        eprintln!("run: instance {INSTANCE} is running");
    } else {
        cmd::run(Command::new(&limactl).args(["start", "--name", INSTANCE]))?;
    }
    let status =
        cmd::status(Command::new(&limactl).args(["shell", INSTANCE, "--", "uname", "-a"]))?;
    eprintln!(
        "run: instance {INSTANCE} keeps running; stop it with `{} stop {INSTANCE}`",
        relative_to_root(&limactl)
    );
    let code = status
        .code()
        .context("`limactl shell` was killed by a signal")?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Whether `limactl list --format json` output shows `name` as Running.
/// Lima prints one JSON object per line; an array is accepted too.
fn is_running(list: &str, name: &str) -> bool {
    let instances: Vec<serde_json::Value> = match serde_json::from_str(list) {
        Ok(serde_json::Value::Array(all)) => all,
        _ => list
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    };
    instances
        .iter()
        .any(|i| i["name"] == name && i["status"] == "Running")
}

fn relative_to_root(path: &std::path::Path) -> String {
    path.strip_prefix(cmd::root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::is_running;

    #[test]
    fn running_instance_in_lines_or_array() {
        let lines = "{\"name\":\"other\",\"status\":\"Running\"}\n{\"name\":\"default\",\"status\":\"Running\"}\n";
        assert!(is_running(lines, "default"));
        assert!(is_running(
            r#"[{"name":"default","status":"Running"}]"#,
            "default"
        ));
        assert!(!is_running(
            r#"{"name":"default","status":"Stopped"}"#,
            "default"
        ));
        assert!(!is_running("", "default"));
    }
}
