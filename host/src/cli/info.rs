//! `limactl info [--yq EXPR]`: facts about this limactl and host as one
//! JSON object, with Lima's keys in Lima's order (`pkg/limainfo`).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use super::listfmt;
use crate::listing::{self, HostFields};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Apply an expression (jq syntax) to the output
    #[arg(long, default_value = ".", value_name = "EXPR")]
    pub yq: String,
}

pub fn run(home: &Path, a: InfoArgs) -> anyhow::Result<ExitCode> {
    let info = info(home)?;
    let vals = listfmt::apply(Some(&a.yq), vec![info])?;
    listfmt::emit(&listfmt::json_lines(&vals, 4))?;
    Ok(ExitCode::SUCCESS)
}

/// Lima's `LimaInfo` with our values.
pub fn info(home: &Path) -> anyhow::Result<Value> {
    let host = HostFields::new(home);
    let default = crate::template::locate("template:default")?;
    let (yaml, cfg) = crate::tmplvars::resolve_as(&default.text, &default.origin, home, "default")?;
    let templates: Vec<Value> = crate::template::names()
        .into_iter()
        .map(|name| {
            let location = template_file(&name)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("template:{name}"));
            json!({"name": name, "location": location})
        })
        .collect();
    let mut vm_types_ex = Map::new();
    vm_types_ex.insert("qemu".into(), json!({}));
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "templates": templates,
        "defaultTemplate": listing::config_json(&yaml, &cfg),
        "limaHome": host.lima_home,
        "vmTypes": ["qemu"],
        "vmTypesEx": vm_types_ex,
        // Our guest agent is part of our images, not a file per arch.
        "guestAgents": {},
        "shellEnvBlock": super::shell::DEFAULT_SHELLENV_BLOCK,
        "hostOS": host.host_os,
        "hostArch": host.host_arch,
        "identityFile": host.identity_file,
        "plugins": plugins(),
        "libexecPaths": [],
        "sharePaths": [],
    }))
}

/// A template's file in `$LIMA_TEMPLATES_PATH`, when it comes from one.
fn template_file(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("LIMA_TEMPLATES_PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(format!("{name}.yaml")))
        .find(|p| p.is_file())
}

/// `limactl-NAME` executables on PATH, first of each name, sorted by name.
fn plugins() -> Vec<Value> {
    let mut seen = std::collections::BTreeMap::new();
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_prefix("limactl-") else {
                continue;
            };
            let path = e.path();
            let executable = std::fs::metadata(&path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable && !name.is_empty() {
                seen.entry(name.to_string())
                    .or_insert_with(|| path.display().to_string());
            }
        }
    }
    seen.into_iter()
        .map(|(name, path)| json!({"name": name, "path": path}))
        .collect()
}
