//! `limactl watch [INSTANCE…] [--json] [--history]`: follow instances'
//! events (`ha.events.jsonl`) as they happen, every instance (new ones
//! included) when none is named. Runs until interrupted.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use crate::events::{self, Event, Record};
use crate::instance::{self, Instance};

#[derive(clap::Args)]
pub struct WatchArgs {
    /// One JSON object per event: the instance's name, then the event as recorded
    #[arg(long)]
    json: bool,
    /// Print the events already recorded first
    #[arg(long)]
    history: bool,
    /// The instances to watch (default: all, and any made later)
    #[arg(value_name = "INSTANCE")]
    instances: Vec<String>,
}

/// One event as a line for people.
fn human(name: &str, rec: &Record) -> String {
    let secs = (rec.time_ms / 1000) as i64;
    let when = crate::logfmt::rfc3339(secs, crate::sys::utc_offset_secs(secs));
    let what = match &rec.event {
        Event::Failed { reason } => format!("failed: {reason}"),
        Event::Stopping => "stopping".into(),
        Event::Stopped => "stopped".into(),
        Event::Running { boot_ms, .. } => {
            let (_, detail) = crate::progress::describe(&rec.event).unwrap_or_default();
            format!("running ({detail}, {:.1}s)", *boot_ms as f64 / 1000.0)
        }
        other => match crate::progress::describe(other) {
            Some((phase, detail)) => format!("{phase}: {detail}"),
            None => "event".into(),
        },
    };
    format!("{when} {name}: {what}")
}

pub fn run(home: &Path, a: WatchArgs) -> anyhow::Result<ExitCode> {
    for name in &a.instances {
        if !Instance::new(home, name)?.exists() {
            bail!("instance \"{name}\" does not exist");
        }
    }
    // Events seen per instance, and the first one's time: a start begins
    // its file anew, which a new first event shows even when the new file
    // is already as long as the old one.
    let mut seen: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut first = true;
    let mut out = std::io::stdout();
    loop {
        let watched: Vec<Instance> = if a.instances.is_empty() {
            Instance::list(home)
        } else {
            a.instances
                .iter()
                .filter_map(|n| Instance::new(home, n).ok())
                .collect()
        };
        for inst in watched {
            let all = events::read_all(&inst.path(instance::HA_EVENTS));
            let first_ms = all.first().map_or(0, |r| r.time_ms);
            let known = seen.get(&inst.name).copied();
            let from = match known {
                // Seen before: only what is new (all of it after a restart).
                Some((n, first)) if n <= all.len() && first == first_ms => n,
                Some(_) => 0,
                // Present when we began: history only if asked.
                None if first && !a.history => all.len(),
                None => 0,
            };
            for rec in &all[from..] {
                let line;
                if a.json {
                    let mut v = serde_json::to_value(rec)?;
                    if let serde_json::Value::Object(m) = &mut v {
                        let mut out = serde_json::Map::new();
                        out.insert("instance".into(), inst.name.clone().into());
                        out.extend(std::mem::take(m));
                        v = serde_json::Value::Object(out);
                    }
                    line = v.to_string();
                } else {
                    line = human(&inst.name, rec);
                }
                // The reader went away (`| head`): done.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            seen.insert(inst.name.clone(), (all.len(), first_ms));
        }
        first = false;
        std::thread::sleep(Duration::from_millis(200));
    }
}
