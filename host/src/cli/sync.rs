//! `limactl sync list|diff|apply|discard INSTANCE`: the changes that
//! `limactl shell --sync DIR` sessions left in an instance (kept for
//! later, or left by a session that was killed). Each synced folder has
//! one layer; `--dir DIR` picks one, else every layer of the instance is
//! meant.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use lima_proto::layer::LayerInfo;

use super::msg;
use crate::instance::Instance;
use crate::sync::{self, finish, layer::LayerClient, review, snapshot::Snapshot};
use crate::vsock::BoxStream;

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    #[command(subcommand)]
    cmd: SyncCmd,
}

#[derive(clap::Args, Debug)]
struct Which {
    /// Instance name
    instance: String,
    /// Only the layer of this synced folder (default: every layer)
    #[arg(long, value_name = "DIR")]
    dir: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum SyncCmd {
    /// List the folders with pending changes
    List(Which),
    /// Show the pending changes: the list, then a diff (no prompt)
    Diff(Which),
    /// Apply the pending changes (all, or those at or below each PATH)
    Apply {
        #[command(flatten)]
        which: Which,
        /// Host paths (absolute or from the current folder) to apply
        #[arg(value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Discard the pending changes
    Discard(Which),
}

pub fn run(home: &Path, a: SyncArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(home, a))
}

struct Open {
    inst: Instance,
    server: (PathBuf, lima_fs_server::confine::Mode),
    layer: LayerClient<BoxStream>,
    layers: Vec<LayerInfo>,
}

impl Open {
    /// Says so when the instance holds no layer (the command then does nothing).
    fn say_if_empty(&self) {
        if self.layers.is_empty() {
            msg::info(format!(
                "instance \"{}\" has no pending changes",
                self.inst.name
            ));
        }
    }
}

async fn open(home: &Path, w: &Which) -> anyhow::Result<Open> {
    let name = &w.instance;
    let inst = super::running::running(home, name)?;
    let transport = crate::lifecycle::transport(&inst)?;
    let mut layer = LayerClient::connect(transport.as_ref()).await?;
    let mut layers = layer.list().await?;
    if let Some(d) = &w.dir {
        let dir = sync::resolve_dir(d).map_err(anyhow::Error::msg)?;
        let id = sync::layer_id(&dir);
        layers.retain(|l| l.id == id);
        if layers.is_empty() {
            bail!(
                "instance \"{name}\" has no pending changes to {}",
                dir.display()
            );
        }
    }
    layers.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    // The transport's connection lives in the stream; the rest may go.
    drop(transport);
    let server = crate::shares::server_program().map_err(anyhow::Error::msg)?;
    Ok(Open {
        inst,
        server,
        layer,
        layers,
    })
}

/// The library's messages, as ours.
pub fn say(level: finish::Level, text: String) {
    match level {
        finish::Level::Info => msg::info(text),
        finish::Level::Warn => msg::warn(text),
    }
}

fn refuse_running(l: &LayerInfo, inst: &Instance) -> anyhow::Result<()> {
    if l.mounted {
        bail!(
            "the `limactl shell --sync {}` session in instance \"{}\" is still running; its changes can be applied or discarded once it ends",
            l.mount_point,
            inst.name
        );
    }
    Ok(())
}

/// The parts of `paths` within `dir`, as layer paths (empty: all of it).
fn prefixes(dir: &Path, paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .filter_map(|p| p.strip_prefix(dir).ok())
        .map(|rel| rel.as_os_str().as_bytes().to_vec())
        .collect()
}

async fn run_async(home: &Path, a: SyncArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        SyncCmd::List(w) => {
            let o = open(home, &w).await?;
            println!("DIRECTORY\tCHANGES\tLAYER\tSTATE");
            for l in &o.layers {
                let state = if l.mounted { "running" } else { "pending" };
                println!("{}\t{}\t{}\t{state}", l.mount_point, l.changes, l.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Diff(w) => {
            let mut o = open(home, &w).await?;
            o.say_if_empty();
            let mut out = String::new();
            for l in &o.layers {
                let dir = PathBuf::from(&l.mount_point);
                let snap = Snapshot::take(&mut o.layer, &l.id).await?;
                let log = o.inst.sync_apply_log(&l.id);
                let t = finish::Target {
                    instance: &o.inst.name,
                    dir: &dir,
                    id: &l.id,
                    log: &log,
                    server: &o.server,
                    say: &say,
                };
                let mut host = t.tree(false).await.map_err(anyhow::Error::msg)?;
                out.push_str(&review::render(&dir, &mut host, &snap).await);
            }
            use std::io::Write;
            let _ = std::io::stdout().write_all(out.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Apply { which, paths } => {
            let mut o = open(home, &which).await?;
            let cwd = std::env::current_dir().context("reading the current folder")?;
            let paths: Vec<PathBuf> = paths
                .iter()
                .map(|p| crate::mounts::clean(&cwd.join(crate::mounts::expand_tilde(p))))
                .collect();
            for p in &paths {
                if !o
                    .layers
                    .iter()
                    .any(|l| p.starts_with(Path::new(&l.mount_point)))
                {
                    bail!(
                        "{} is in no folder with pending changes (see `limactl sync list {}`)",
                        p.display(),
                        o.inst.name
                    );
                }
            }
            o.say_if_empty();
            let mut left = 0;
            for l in o.layers.clone() {
                let dir = PathBuf::from(&l.mount_point);
                let pre = prefixes(&dir, &paths);
                if !paths.is_empty() && pre.is_empty() {
                    continue;
                }
                refuse_running(&l, &o.inst)?;
                let snap = Snapshot::take(&mut o.layer, &l.id).await?;
                for p in &pre {
                    if !snap
                        .changes
                        .iter()
                        .any(|s| p.is_empty() || sync::paths::is_within(s.path(), p))
                    {
                        bail!(
                            "no pending change at or below {}",
                            dir.join(std::ffi::OsStr::from_bytes(p)).display()
                        );
                    }
                }
                let chosen = |i: usize| {
                    pre.is_empty()
                        || pre.iter().any(|p| {
                            p.is_empty() || sync::paths::is_within(snap.changes[i].path(), p)
                        })
                };
                let log = o.inst.sync_apply_log(&l.id);
                let t = finish::Target {
                    instance: &o.inst.name,
                    dir: &dir,
                    id: &l.id,
                    log: &log,
                    server: &o.server,
                    say: &say,
                };
                let out = finish::apply_and_report(&t, &snap, &chosen, &mut o.layer)
                    .await
                    .map_err(anyhow::Error::msg)?;
                left += out.conflicts.len();
            }
            if left > 0 {
                bail!(
                    "{left} change{} could not be applied",
                    if left == 1 { "" } else { "s" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Discard(w) => {
            let mut o = open(home, &w).await?;
            o.say_if_empty();
            for l in &o.layers {
                refuse_running(l, &o.inst)?;
                o.layer.discard(&l.id).await?;
                msg::info(format!(
                    "discarded {} change{} to {}",
                    l.changes,
                    if l.changes == 1 { "" } else { "s" },
                    l.mount_point
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_the_changes_below_them_in_their_folder() {
        let dir = Path::new("/p/proj");
        let paths = [
            PathBuf::from("/p/proj/src"),
            PathBuf::from("/p/other/x"),
            PathBuf::from("/p/proj"),
        ];
        assert_eq!(prefixes(dir, &paths), [b"src".to_vec(), Vec::new()]);
        assert!(prefixes(dir, &[PathBuf::from("/p/projx")]).is_empty());
    }
}
