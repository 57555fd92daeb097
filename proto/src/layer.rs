//! Copy-on-write review layers (`limactl shell --sync DIR`).
//!
//! The host serves `DIR` read-only as a vsockfs share whose
//! [`crate::fs::ShareSetup::layer`] names a layer. The guest agent mounts
//! that share out of sight (the lower layer) and, at the share's mount
//! point, its own FUSE view that writes into the layer's upper folder on
//! the guest's disk. The host never sees a write until the person applies.
//!
//! ```text
//!  host (limactl)                            guest agent
//!   | -- Hello{purpose: Layer} ------------> |
//!   | <-- HelloReply ------------------------ |
//!   | -- LayerRequest ----------------------> |   one at a time
//!   | <-- LayerReply ------------------------ |
//! ```
//!
//! A layer lives in the guest until it is discarded or every change in it
//! has been applied and dropped; it survives the host's `limactl` and the
//! lower share going away (the view is unmounted then, the layer kept), so
//! a killed session loses nothing. Paths are relative to the layer's root
//! (`DIR`), `/`-separated raw bytes, never absolute and never with `..`.
use serde::{Deserialize, Serialize};

use crate::fs::Time;

/// The largest `Read` the agent answers in one reply.
pub const MAX_READ: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerRequest {
    /// Every layer the guest holds.
    List,
    /// What the layer changed, against the lower layer as first seen.
    Changes { id: String },
    /// Part of a file (or a symlink's target) in the layer's upper folder.
    Read {
        id: String,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        offset: u64,
        len: u32,
    },
    /// Forget these changes (the host applied them): their upper files,
    /// whiteouts and recorded first-seen states go. A layer left with no
    /// change is removed.
    Drop { id: String, paths: Vec<LayerPath> },
    /// Remove the layer: unmount its view if mounted, delete its upper
    /// folder and records.
    Discard { id: String },
}

/// A raw relative path (serde_bytes wrapper, so lists of paths stay compact).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerPath(#[serde(with = "serde_bytes")] pub Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerReply {
    Layers(Vec<LayerInfo>),
    Changes(Vec<Change>),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Done,
    /// No such layer, a path outside it, an I/O error: in words.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub id: String,
    /// Where the view is (was) mounted in the guest: the host's `DIR`.
    pub mount_point: String,
    /// Whether the view is mounted right now (a session is on).
    pub mounted: bool,
    /// Number of changes in it.
    pub changes: u64,
}

/// One path the layer changed. Directories appear only when they were
/// added or deleted (or their mode changed), not for a change inside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: LayerPath,
    pub kind: ChangeKind,
    /// The path's state in the layer now; `None` for `Deleted`.
    pub now: Option<NodeInfo>,
    /// The lower file at this path (for `Renamed`: at `from`) when the
    /// guest first read it or copied it up; `None` when the lower layer
    /// had nothing there (`Added`). The host refuses to apply a change
    /// whose host file no longer matches this.
    pub base: Option<BaseStat>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Nothing was at `path` in the lower layer.
    Added,
    /// `path` existed below and its content, mode or target changed.
    Modified,
    /// `path` existed below and is gone.
    Deleted,
    /// A lower file moved from `from` to `path` (`from` is not listed as
    /// deleted; `modified` says whether its content changed too).
    Renamed { from: LayerPath, modified: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub kind: NodeKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    pub mtime: Time,
}

/// What the host checks before it writes: the lower file as the guest saw
/// it (the host's own `stat` of it, passed through the share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseStat {
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
}
