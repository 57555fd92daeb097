//! The processes the QEMU driver starts: children that die with us, have no
//! terminal, and log to a file.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::driver::DriverError;

/// Spawns a child that dies with the host agent and has no terminal.
pub fn spawn(
    mut cmd: std::process::Command,
    program: &str,
    log: &Path,
) -> Result<Child, DriverError> {
    let spawn_err = |source| DriverError::Spawn {
        program: program.to_string(),
        source,
    };
    let log = std::fs::File::create(log).map_err(spawn_err)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(spawn_err)?)
        .stderr(log);
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(crate::sys::die_with_parent);
    }
    Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)
}

/// Waits up to 5 s for a helper to create its socket.
pub async fn wait_for_socket(
    path: &Path,
    helper: &mut Child,
    what: &str,
) -> Result<(), DriverError> {
    for _ in 0..500 {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(st)) = helper.try_wait() {
            return Err(DriverError::Failed(format!(
                "{what} exited ({st}) before creating {}",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(DriverError::Failed(format!(
        "{what} did not create {} within 5s",
        path.display()
    )))
}

/// The last `n` lines of a log, joined with " / ".
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}
