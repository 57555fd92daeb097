//! Lifecycle events of an instance, one JSON object per line in
//! `ha.events.jsonl`: written by the host agent, followed by `limactl start`
//! and `limactl stop`, and readable by any tool (`tail -f`).
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The host agent started and is launching the VM.
    Booting {
        accel: String,
        transport: String,
    },
    /// The guest agent answered; the instance is usable.
    Running {
        kernel_release: String,
        watcher: String,
        boot_ms: u64,
    },
    /// Starting failed; the host agent exits after this.
    Failed {
        reason: String,
    },
    /// A provision step or probe (`provision.rs`) began.
    StepStarted {
        step: String,
    },
    /// A provision step finished, or a probe passed.
    StepDone {
        step: String,
        ms: u64,
    },
    /// Something the user should know; the instance keeps running.
    Warning {
        message: String,
    },
    /// A daemon the guest agent supervises (a container engine) changed
    /// state: `state` is the guest's line, e.g. `running (attempt 1)`.
    Service {
        name: String,
        state: String,
    },
    Stopping,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends one event.
pub fn emit(path: &Path, event: Event) {
    let rec = Record {
        time_ms: now_ms(),
        event,
    };
    let Ok(mut line) = serde_json::to_vec(&rec) else {
        return;
    };
    line.push(b'\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(&line);
    }
}

/// Reads every event recorded so far (unparsable lines are skipped).
pub fn read_all(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        emit(
            &p,
            Event::Booting {
                accel: "tcg".into(),
                transport: "hybrid".into(),
            },
        );
        emit(&p, Event::Failed { reason: "x".into() });
        let all = read_all(&p);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].event, Event::Failed { reason: "x".into() });
        let line = std::fs::read_to_string(&p).unwrap();
        assert!(line.starts_with("{\"time_ms\":"), "{line}");
        assert!(line.contains("\"event\":\"booting\""), "{line}");
    }
}
