//! The phases `limactl start` reports while an instance comes up.
//!
//! On stderr ([`Progress::stderr`]) each is a log line in Lima's form
//! (`crate::logfmt`), `level=info` (a host agent's warning event
//! `level=warning`), the message `PHASE: detail`:
//!
//! ```text
//! time="2026-12-06T07:10:00Z" level=info msg="disk: from https://.../debian-12.qcow2"
//! time="2026-12-06T07:10:14Z" level=info msg="disk: ready (20 GiB overlay)"
//! time="2026-12-06T07:10:14Z" level=info msg="booting: accelerator tcg, vsock transport hybrid"
//! time="2026-12-06T07:11:01Z" level=info msg="running: guest agent ready, kernel 6.1.0-28-amd64, port watcher ebpf"
//! ```
//!
//! (on a terminal `INFO[0014] disk: ready (20 GiB overlay)`, the seconds
//! since `limactl` began). Into any other writer ([`Progress::new`]) each
//! is a plain timed line, `[  14.2s] disk: ready (20 GiB overlay)`, the
//! seconds since the `Progress` began. The word before the colon is the
//! phase (for host agent events, their `event` name in
//! `ha.events.jsonl`). An event kind this file does not know is still
//! reported, its fields as `key=value`, so a new kind shows up without a
//! change here.
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::{Event, Record};

pub struct Progress<W: Write> {
    began_ms: u64,
    out: W,
    /// Report through the log (`tracing`) instead of writing to `out`.
    log: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Progress<std::io::Stderr> {
    /// Phases as log lines on stderr.
    pub fn stderr() -> Self {
        Self {
            log: true,
            ..Self::new(std::io::stderr())
        }
    }
}

impl<W: Write> Progress<W> {
    pub fn new(out: W) -> Self {
        Self {
            began_ms: now_ms(),
            out,
            log: false,
        }
    }

    fn line(&mut self, at_ms: u64, phase: &str, detail: &str) {
        if self.log {
            if phase == "warning" {
                tracing::warn!("{detail}");
            } else {
                tracing::info!("{phase}: {detail}");
            }
            return;
        }
        let secs = at_ms.saturating_sub(self.began_ms) as f64 / 1000.0;
        let _ = writeln!(self.out, "[{secs:>7.1}s] {phase}: {detail}");
    }

    /// A phase `limactl` itself goes through (`disk`, ...).
    pub fn phase(&mut self, phase: &str, detail: &str) {
        self.line(now_ms(), phase, detail);
    }

    /// A host agent event, at the time it was recorded. `failed` is left
    /// to the error `limactl start` ends with; `stopping`/`stopped` too.
    pub fn event(&mut self, rec: &Record) {
        if let Some((phase, detail)) = describe(&rec.event) {
            self.line(rec.time_ms, &phase, &detail);
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The phase word and the words after it, for an event worth a line.
pub fn describe(event: &Event) -> Option<(String, String)> {
    let detail = match event {
        Event::Failed { .. } | Event::Stopping | Event::Stopped => return None,
        Event::Booting { accel, transport } => {
            format!("accelerator {accel}, vsock transport {transport}")
        }
        Event::Running {
            kernel_release,
            watcher,
            ..
        } => format!("guest agent ready, kernel {kernel_release}, port watcher {watcher}"),
        Event::Warning { message } => message.clone(),
        // Provision steps and probes, as they happen.
        Event::StepStarted { step } => format!("{step} ..."),
        Event::StepDone { step, ms } => format!("{step} done in {:.1}s", *ms as f64 / 1000.0),
        Event::Service { name, state } => format!("{name} {state}"),
        // Any other kind: its fields, as recorded.
        #[allow(unreachable_patterns, reason = "new event kinds print through here")]
        other => return Some(generic(other)),
    };
    Some((name(event), detail))
}

/// The event's `event` name in `ha.events.jsonl`.
fn name(event: &Event) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| "event".into())
}

fn generic(event: &Event) -> (String, String) {
    let fields = match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(k, _)| k != "event")
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    (name(event), fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(events: &[Event]) -> String {
        let mut p = Progress::new(Vec::new());
        p.began_ms = 1_000;
        for (i, e) in events.iter().enumerate() {
            p.event(&Record {
                time_ms: 1_000 + 1_500 * i as u64,
                event: e.clone(),
            });
        }
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn a_service_event_names_the_daemon_and_its_state() {
        let e = Event::Service {
            name: "dockerd".into(),
            state: "running (attempt 2)".into(),
        };
        assert_eq!(
            describe(&e),
            Some(("service".into(), "dockerd running (attempt 2)".into()))
        );
    }

    #[test]
    fn each_event_is_a_phase_line_with_its_time() {
        let out = printed(&[
            Event::Booting {
                accel: "tcg".into(),
                transport: "hybrid".into(),
            },
            Event::Warning {
                message: "port 80 not forwarded".into(),
            },
            Event::Running {
                kernel_release: "6.1.0".into(),
                watcher: "ebpf".into(),
                boot_ms: 3000,
            },
            Event::Failed { reason: "x".into() },
        ]);
        assert_eq!(
            out,
            "[    0.0s] booting: accelerator tcg, vsock transport hybrid\n\
             [    1.5s] warning: port 80 not forwarded\n\
             [    3.0s] running: guest agent ready, kernel 6.1.0, port watcher ebpf\n"
        );
    }

    #[test]
    fn an_unknown_kind_prints_its_fields() {
        // What a kind without its own arm prints: the JSON name and fields.
        let (phase, detail) = generic(&Event::Booting {
            accel: "kvm".into(),
            transport: "vsock".into(),
        });
        assert_eq!(phase, "booting");
        assert_eq!(detail, "accel=kvm transport=vsock");
    }
}
