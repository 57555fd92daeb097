//! File operations on the guest's own tree, for `limactl mcp serve`.
//!
//! One stream per MCP server. The first request names the guest user the
//! agent acts as for the whole stream; the agent never touches a file as
//! root on this stream.
//!
//! ```text
//!  host (limactl mcp serve)                  guest agent
//!   | -- Hello{purpose: Files} ------------> |
//!   | <-- HelloReply ------------------------ |
//!   | -- FilesRequest::Open{user} ----------> |
//!   | <-- FilesReply::Opened | Error -------- |
//!   | -- FilesRequest ----------------------> |   one at a time
//!   | <-- FilesReply ------------------------ |
//! ```
//!
//! Paths are absolute guest paths (UTF-8, as MCP carries JSON strings).
//! Every reply is bounded: reads are paged, listings and searches stop at
//! a cap and say so.
use serde::{Deserialize, Serialize};

/// The most bytes of file content one `Read` reply carries.
pub const MAX_READ_BYTES: u64 = 4 << 20;
/// Lines a `Read` returns when the request gives no limit.
pub const DEFAULT_READ_LINES: u64 = 2000;
/// The largest content a `Write` accepts (a frame holds at most 16 MiB).
pub const MAX_WRITE_BYTES: usize = 8 << 20;
/// The most entries a `List` or paths a `Glob` returns.
pub const MAX_ENTRIES: usize = 10_000;
/// The most matching lines a `Search` returns.
pub const MAX_MATCHES: usize = 2_000;
/// The most files a `Glob` or `Search` looks at before it stops.
pub const MAX_WALK: usize = 100_000;
/// Files larger than this are skipped by `Search`.
pub const MAX_SEARCH_FILE: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesRequest {
    /// First request: act as this user of the guest's `/etc/passwd`.
    Open { user: String },
    /// Lines `offset..offset+limit` (0-based) of a file, at most
    /// [`MAX_READ_BYTES`] of them.
    Read {
        path: String,
        offset: u64,
        limit: Option<u64>,
    },
    /// Creates or replaces a file (and its missing parent folders).
    Write {
        path: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The entries of a folder, sorted by name.
    List { path: String },
    /// Paths below `dir` matching `pattern` (`*`, `?`, `[..]`, `{a,b}`,
    /// `**` across folders), relative to `dir`.
    Glob { dir: String, pattern: String },
    /// Lines matching the regular expression in files below `dir` (or the
    /// one file `dir` names), optionally only files matching the glob
    /// `include` (relative to `dir`).
    Search {
        dir: String,
        pattern: String,
        include: Option<String>,
    },
    /// What a path is.
    Stat { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesReply {
    Opened,
    Read(ReadPage),
    Written {
        bytes: u64,
        created: bool,
    },
    Entries {
        entries: Vec<Entry>,
        truncated: bool,
    },
    Paths {
        paths: Vec<String>,
        truncated: bool,
    },
    Matches {
        matches: Vec<Match>,
        truncated: bool,
    },
    Stat(Entry),
    Error(FilesError),
}

/// A page of a file read by lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPage {
    /// The lines, each with its newline (the last line of the file may
    /// have none).
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// The first line given (0-based).
    pub offset: u64,
    /// How many lines `content` holds.
    pub lines: u64,
    /// Where the next page starts; `None` at the end of the file.
    pub next_offset: Option<u64>,
    /// A line longer than [`MAX_READ_BYTES`] was cut: the page ends with
    /// its first bytes and the next page starts at the following line.
    pub line_cut: bool,
    /// The file's size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub is_dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Absolute guest path.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    NotADirectory,
    IsADirectory,
    /// A bad argument (relative path, bad pattern, too large).
    Invalid,
    /// The stream was not opened, or the user is unknown.
    Closed,
    Other,
}

/// One sentence saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for FilesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilesError {}
