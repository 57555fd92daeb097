//! What becomes of a layer: reviewed and applied (all or chosen), kept for
//! later, or discarded. Shared by `limactl shell --sync` at its end and by
//! `limactl sync`.
use std::path::{Path, PathBuf};

use lima_fs_server::confine;

use tokio::io::{AsyncRead, AsyncWrite};

use super::apply::{self, Outcome};
use super::host::HostTree;
use super::layer::LayerClient;
use super::prompt::{self, Choice};
use super::review;
use super::snapshot::Snapshot;

/// What to do at the end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Review in the pager, then ask.
    Ask,
    /// Apply everything that does not conflict (`--yes`).
    All,
    /// Discard the layer (`--no`).
    Discard,
    /// Keep the layer and say how to finish it.
    Keep,
}

/// How a message to the person is meant (the caller prints it: `limactl`
/// through `cli::msg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// One layer, by the host folder it reviews.
pub struct Target<'a> {
    /// The instance's name, for the hints.
    pub instance: &'a str,
    pub dir: &'a Path,
    pub id: &'a str,
    /// The log of the file servers that read and write `dir`.
    pub log: &'a Path,
    /// `lima-fs-server` and its confinement
    /// ([`crate::shares::server_program`]).
    pub server: &'a (PathBuf, confine::Mode),
    /// Where messages go.
    pub say: &'a dyn Fn(Level, String),
}

impl Target<'_> {
    /// `dir` through a confined file server of our own.
    pub async fn tree(&self, writable: bool) -> Result<HostTree, String> {
        HostTree::open(&self.server.0, self.server.1, self.dir, writable, self.log).await
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn keep_hint(t: &Target<'_>, n: usize) {
    (t.say)(Level::Info, format!(
        "{n} change{} to {} kept in instance \"{}\": review them with `limactl sync diff {}`, then `limactl sync apply {}` or `limactl sync discard {}`",
        plural(n),
        t.dir.display(),
        t.instance,
        t.instance,
        t.instance,
        t.instance
    ));
}

/// Applies the chosen changes and reports; returns the outcome.
pub async fn apply_and_report<S: AsyncRead + AsyncWrite + Unpin>(
    t: &Target<'_>,
    snap: &Snapshot,
    chosen: &dyn Fn(usize) -> bool,
    layer: &mut LayerClient<S>,
) -> Result<Outcome, String> {
    let mut host = t.tree(true).await?;
    let out = apply::apply(snap, chosen, &mut host, layer)
        .await
        .map_err(|e| lima_proto::errors::error_chain(&e))?;
    (t.say)(
        Level::Info,
        format!(
            "applied {} change{} to {}",
            out.applied.len(),
            plural(out.applied.len()),
            t.dir.display()
        ),
    );
    for (line, why) in &out.conflicts {
        (t.say)(Level::Warn, format!("not applied: {line}: {why}"));
    }
    let left = snap.changes.len() - out.applied.len();
    if left > 0 {
        keep_hint(t, left);
    }
    Ok(out)
}

/// Ends a session's layer as `mode` says; returns the changes left in it.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    t: &Target<'_>,
    layer: &mut LayerClient<S>,
    mode: Mode,
) -> Result<usize, String> {
    let e = |e: super::layer::LayerError| lima_proto::errors::error_chain(&e);
    let snap = Snapshot::take(layer, t.id).await.map_err(e)?;
    let n = snap.changes.len();
    if n == 0 {
        (t.say)(Level::Info, format!("no changes to {}", t.dir.display()));
        let _ = layer.discard(t.id).await;
        return Ok(0);
    }
    let mode = match mode {
        Mode::Ask => {
            let mut host = t.tree(false).await?;
            let text = review::render(t.dir, &mut host, &snap).await;
            drop(host);
            prompt::page(&text);
            match prompt::choice(n) {
                Choice::All => Mode::All,
                Choice::Discard => Mode::Discard,
                Choice::Keep => Mode::Keep,
                Choice::Choose => {
                    let lines: Vec<String> = snap.changes.iter().map(|s| s.line()).collect();
                    let yes = prompt::each(&lines);
                    let out = apply_and_report(t, &snap, &|i| yes[i], layer).await?;
                    return Ok(n - out.applied.len());
                }
            }
        }
        m => m,
    };
    match mode {
        Mode::All => {
            let out = apply_and_report(t, &snap, &|_| true, layer).await?;
            Ok(n - out.applied.len())
        }
        Mode::Discard => {
            layer.discard(t.id).await.map_err(e)?;
            (t.say)(
                Level::Info,
                format!("discarded {n} change{} to {}", plural(n), t.dir.display()),
            );
            Ok(0)
        }
        _ => {
            keep_hint(t, n);
            Ok(n)
        }
    }
}
