//! `limactl prune [--keep-referred]`: empty the download cache, or keep
//! only the images that instances and templates name.
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use serde_yaml_ng::Value;

use super::msg;
use crate::{download, instance, template};

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Keep the downloads that some instance or template refers to
    #[arg(long)]
    keep_referred: bool,
}

pub fn run(home: &Path, a: PruneArgs) -> anyhow::Result<ExitCode> {
    let cache = download::cache_dir();
    let keep = if a.keep_referred {
        Some(referred(home)?)
    } else {
        None
    };
    msg::info(format!(
        "Pruning \"{}\"",
        download::downloads_dir(&cache).display()
    ));
    for path in download::prune(&cache, keep.as_deref())? {
        msg::debug(format!("Removed \"{}\"", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every http(s) URL in an instance's `lima.yaml` or a built-in template:
/// images, kernels, initrds, whichever key holds them.
fn referred(home: &Path) -> anyhow::Result<Vec<String>> {
    let mut texts: Vec<String> = template::builtin()
        .map(|(_, text)| text.to_string())
        .collect();
    let dirs = std::fs::read_dir(home).into_iter().flatten().flatten();
    for dir in dirs.filter(|d| d.path().is_dir()) {
        let name = dir.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let yaml = dir.path().join(instance::LIMA_YAML);
        match std::fs::read_to_string(&yaml) {
            Ok(text) => texts.push(text),
            // An instance being created has no lima.yaml yet: what it will
            // download is not known, so nothing can be pruned safely.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("cannot safely prune while instance \"{name}\" is being created (it has no lima.yaml yet)")
            }
            Err(e) => bail!("cannot read {}: {e}", yaml.display()),
        }
    }
    let mut urls = Vec::new();
    for text in &texts {
        match serde_yaml_ng::from_str::<Value>(text) {
            Ok(v) => collect_urls(&v, &mut urls),
            Err(e) => msg::warn(format!("skipping a lima.yaml that does not parse: {e}")),
        }
    }
    Ok(urls)
}

fn collect_urls(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("https://") || s.starts_with("http://") => {
            out.push(s.clone())
        }
        Value::Sequence(items) => items.iter().for_each(|i| collect_urls(i, out)),
        Value::Mapping(m) => m.values().for_each(|i| collect_urls(i, out)),
        Value::Tagged(t) => collect_urls(&t.value, out),
        _ => {}
    }
}
