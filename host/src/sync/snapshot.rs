//! A layer's changes as the person reviews them: the list, and a copy of
//! every new file's content (and symlink target) in a private staging
//! folder on the host. The review shows these bytes and the apply writes
//! these bytes, so the guest cannot swap a file between the two.
use std::path::PathBuf;

use lima_proto::layer::{Change, ChangeKind, NodeKind};
use tokio::io::{AsyncRead, AsyncWrite};

use super::layer::{LayerClient, LayerError};
use super::paths::{self, BadPath};

/// One change, checked and staged.
#[derive(Debug)]
pub struct Staged {
    pub change: Change,
    /// Why the change can never be applied (a path the guest should not
    /// have sent); it is listed, never applied, never dropped.
    pub refused: Option<BadPath>,
    /// The staged content of a new or changed file (or symlink target).
    pub content: Option<PathBuf>,
}

impl Staged {
    pub fn path(&self) -> &[u8] {
        &self.change.path.0
    }

    pub fn from(&self) -> Option<&[u8]> {
        match &self.change.kind {
            ChangeKind::Renamed { from, .. } => Some(&from.0),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<NodeKind> {
        self.change.now.as_ref().map(|n| n.kind)
    }

    /// The change's line in the list: `A  path`, `R  from -> to`.
    pub fn line(&self) -> String {
        let p = paths::show(self.path());
        let slash = if self.kind() == Some(NodeKind::Dir)
            || (self.kind().is_none() && self.change.base.map(|b| b.kind) == Some(NodeKind::Dir))
        {
            "/"
        } else {
            ""
        };
        match &self.change.kind {
            ChangeKind::Added => format!("A  {p}{slash}"),
            ChangeKind::Modified => format!("M  {p}{slash}"),
            ChangeKind::Deleted => format!("D  {p}{slash}"),
            ChangeKind::Renamed { from, modified } => format!(
                "R{} {} -> {p}{slash}",
                if *modified { "M" } else { " " },
                paths::show(&from.0)
            ),
        }
    }

    /// Whether its content travels (a new or rewritten file or symlink).
    fn needs_content(&self) -> bool {
        matches!(self.kind(), Some(NodeKind::File | NodeKind::Symlink))
            && match self.change.kind {
                ChangeKind::Added | ChangeKind::Modified => true,
                ChangeKind::Renamed { modified, .. } => modified,
                ChangeKind::Deleted => false,
            }
    }
}

pub struct Snapshot {
    pub id: String,
    pub changes: Vec<Staged>,
    _staging: tempfile::TempDir,
}

impl Snapshot {
    /// Reads layer `id`'s changes and stages their content.
    pub async fn take<S: AsyncRead + AsyncWrite + Unpin>(
        layer: &mut LayerClient<S>,
        id: &str,
    ) -> Result<Snapshot, LayerError> {
        let mut list = layer.changes(id).await?;
        list.sort_by(|a, b| a.path.cmp(&b.path));
        // tempfile makes it 0700: only we read the guest's content.
        let staging = tempfile::Builder::new()
            .prefix("lima-sync-")
            .tempdir()
            .map_err(LayerError::Staging)?;
        let mut changes = Vec::with_capacity(list.len());
        for (i, change) in list.into_iter().enumerate() {
            let refused = paths::components(&change.path.0)
                .err()
                .or_else(|| match &change.kind {
                    ChangeKind::Renamed { from, .. } => paths::components(&from.0).err(),
                    _ => None,
                })
                .or_else(|| {
                    (change.now.is_none() != matches!(change.kind, ChangeKind::Deleted)).then(
                        || BadPath {
                            shown: paths::show(&change.path.0),
                            why: "its state does not fit its kind of change",
                        },
                    )
                });
            let mut s = Staged {
                change,
                refused,
                content: None,
            };
            if s.refused.is_none() && s.needs_content() {
                let file = staging.path().join(i.to_string());
                let mut out = std::fs::File::create(&file).map_err(LayerError::Staging)?;
                let size = s.change.now.as_ref().map_or(0, |n| n.size);
                layer.read_to(id, s.path(), size, &mut out).await?;
                s.content = Some(file);
            }
            changes.push(s);
        }
        Ok(Snapshot {
            id: id.to_string(),
            changes,
            _staging: staging,
        })
    }

    pub fn staged_bytes(&self, s: &Staged) -> std::io::Result<Vec<u8>> {
        match &s.content {
            Some(p) => std::fs::read(p),
            None => Ok(Vec::new()),
        }
    }
}
