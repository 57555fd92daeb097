//! What a layer knows beyond its upper folder, and the append-only journal
//! that keeps it: first-seen states of lower paths, whiteouts, opaque
//! directories and rename origins. One JSON line per event; replay applies
//! them in order, a torn last line (a crash mid-write) is skipped. Loading
//! rewrites the journal compacted, so it stays as long as the state.
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lima_proto::layer::BaseStat;
use serde::{Deserialize, Serialize};

/// A lower path as first seen: what the host checks, plus its permission
/// bits (to tell a copy-up that nothing changed from a real change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    pub base: BaseStat,
    pub mode: u32,
}

/// One event of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Record {
    /// Where the view is mounted (the host's `DIR`).
    Mount(String),
    Seen(#[serde(with = "serde_bytes")] Vec<u8>, Seen),
    /// The path's first-seen state is forgotten (applied and dropped).
    Forget(#[serde(with = "serde_bytes")] Vec<u8>),
    Whiteout(#[serde(with = "serde_bytes")] Vec<u8>),
    Unwhiteout(#[serde(with = "serde_bytes")] Vec<u8>),
    Opaque(#[serde(with = "serde_bytes")] Vec<u8>),
    Unopaque(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The upper file at the first path is the lower file at the second.
    Origin(
        #[serde(with = "serde_bytes")] Vec<u8>,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
    Unorigin(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The layer's records, as replayed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub mount_point: Option<String>,
    pub seen: BTreeMap<Vec<u8>, Seen>,
    /// Lower paths hidden from the view.
    pub whiteouts: BTreeSet<Vec<u8>>,
    /// Upper directories that hide the lower directory's entries.
    pub opaque: BTreeSet<Vec<u8>>,
    /// Upper path → the lower path it was renamed from.
    pub origins: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl State {
    pub(crate) fn apply(&mut self, r: Record) {
        match r {
            Record::Mount(p) => self.mount_point = Some(p),
            Record::Seen(p, s) => {
                self.seen.insert(p, s);
            }
            Record::Forget(p) => {
                self.seen.remove(&p);
            }
            Record::Whiteout(p) => {
                self.whiteouts.insert(p);
            }
            Record::Unwhiteout(p) => {
                self.whiteouts.remove(&p);
            }
            Record::Opaque(p) => {
                self.opaque.insert(p);
            }
            Record::Unopaque(p) => {
                self.opaque.remove(&p);
            }
            Record::Origin(p, from) => {
                self.origins.insert(p, from);
            }
            Record::Unorigin(p) => {
                self.origins.remove(&p);
            }
        }
    }

    /// The records that rebuild this state.
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some(m) = &self.mount_point {
            out.push(Record::Mount(m.clone()));
        }
        out.extend(self.seen.iter().map(|(p, s)| Record::Seen(p.clone(), *s)));
        out.extend(self.whiteouts.iter().cloned().map(Record::Whiteout));
        out.extend(self.opaque.iter().cloned().map(Record::Opaque));
        out.extend(
            self.origins
                .iter()
                .map(|(p, f)| Record::Origin(p.clone(), f.clone())),
        );
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error("cannot read the layer journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the layer journal {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The journal file, open for appending.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Written since the last fsync.
    dirty: bool,
}

impl Journal {
    /// Replays `path` (missing: an empty state) and rewrites it compacted.
    pub(crate) fn load(path: &Path) -> Result<(Journal, State), JournalError> {
        let state = replay(path)?;
        let werr = |source| JournalError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("new");
        {
            let mut f = create(&tmp).map_err(werr)?;
            let mut buf = Vec::new();
            for r in state.records() {
                line(&mut buf, &r);
            }
            f.write_all(&buf).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        std::fs::rename(&tmp, path).map_err(werr)?;
        let file = OpenOptions::new().append(true).open(path).map_err(werr)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                dirty: false,
            },
            state,
        ))
    }

    /// Appends records (one write; the page cache keeps them if the agent
    /// dies, [`Journal::sync`] if the VM does).
    pub(crate) fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            line(&mut buf, r);
        }
        self.dirty = true;
        self.file
            .write_all(&buf)
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })
    }

    pub(crate) fn sync(&mut self) -> Result<(), JournalError> {
        if !self.dirty {
            return Ok(());
        }
        self.file.sync_all().map_err(|source| JournalError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.dirty = false;
        Ok(())
    }
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn line(buf: &mut Vec<u8>, r: &Record) {
    // Serializing our own enum to a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, r).is_ok() {
        buf.push(b'\n');
    }
}

/// The state `path` records; a missing journal is an empty state.
pub(crate) fn replay(path: &Path) -> Result<State, JournalError> {
    let mut state = State::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(source) => {
            return Err(JournalError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    for (n, l) in BufReader::new(file).split(b'\n').enumerate() {
        let l = l.map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if l.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&l) {
            Ok(r) => state.apply(r),
            Err(e) => tracing::warn!(
                "layer journal {}: line {} skipped ({e})",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lima_proto::fs::Time;
    use lima_proto::layer::NodeKind;

    #[test]
    fn replays_compacts_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let seen = Seen {
            base: BaseStat {
                kind: NodeKind::File,
                size: 3,
                mtime: Time { secs: 1, nanos: 2 },
                ctime: Time { secs: 3, nanos: 4 },
            },
            mode: 0o644,
        };
        {
            let (mut j, s) = Journal::load(&path).unwrap();
            assert_eq!(s, State::default());
            j.append(&[
                Record::Mount("/home/me/p".into()),
                Record::Seen(b"a\xff".to_vec(), seen),
                Record::Whiteout(b"a\xff".to_vec()),
                Record::Origin(b"b".to_vec(), b"a\xff".to_vec()),
                Record::Whiteout(b"c".to_vec()),
                Record::Unwhiteout(b"c".to_vec()),
                Record::Opaque(b"d".to_vec()),
            ])
            .unwrap();
            j.sync().unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"Whiteout\":[1,2").unwrap();
        drop(f);
        let (_, s) = Journal::load(&path).unwrap();
        assert_eq!(s.mount_point.as_deref(), Some("/home/me/p"));
        assert_eq!(s.seen.get(&b"a\xff"[..]), Some(&seen));
        assert_eq!(s.whiteouts.iter().collect::<Vec<_>>(), [&b"a\xff".to_vec()]);
        assert!(s.opaque.contains(&b"d"[..]));
        assert_eq!(s.origins.get(&b"b"[..]), Some(&b"a\xff".to_vec()));
        // Compacted: one line per fact, the torn line gone.
        let text = std::fs::read(&path).unwrap();
        assert_eq!(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            5
        );
        assert_eq!(replay(&path).unwrap(), s);
    }
}
