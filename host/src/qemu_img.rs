//! `qemu-img` for the commands that read or change disk images by hand
//! (`limactl disk`, `limactl snapshot`): one way to run it and read its
//! JSON, with one error for "not installed" and one for "it said no".
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("qemu-img not found on PATH; install QEMU (Debian: qemu-utils)")]
    NotFound,
    #[error("qemu-img {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
}

/// Runs `qemu-img ARGS`; stdout, or the error with its stderr. `what`
/// names the operation in the error.
pub fn run(args: &[&str], what: &str) -> Result<String, QemuImgError> {
    let bin = crate::programs::find_program("qemu-img").ok_or(QemuImgError::NotFound)?;
    let failed = |stderr: String| QemuImgError::Failed {
        what: what.to_string(),
        stderr,
    };
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `qemu-img info --output=json` says of an image.
#[derive(Debug, Deserialize)]
pub struct Info {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// Another image this one reads through (a qcow2 overlay's base).
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    pub format_specific: Option<serde_json::Value>,
}

impl Info {
    /// Files besides this one that QEMU would open with it: a backing
    /// file, or a qcow2's external data file.
    pub fn other_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.backing_filename.iter().cloned().collect();
        if let Some(d) = self
            .format_specific
            .as_ref()
            .and_then(|f| f.pointer("/data/data-file"))
            .and_then(|d| d.as_str())
        {
            v.push(d.to_string());
        }
        v
    }
}

#[derive(Debug, Deserialize)]
pub struct Snapshot {
    pub name: String,
}

/// `qemu-img info` of `path`, also while a VM has it open (`-U`).
pub fn info(path: &Path) -> Result<Info, QemuImgError> {
    let p = path.to_string_lossy();
    let what = format!("info on {p}");
    let json = run(&["info", "-U", "--output=json", &p], &what)?;
    serde_json::from_str(&json).map_err(|e| QemuImgError::Failed {
        what,
        stderr: format!("unexpected output: {e}"),
    })
}
