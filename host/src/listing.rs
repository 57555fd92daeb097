//! What `limactl list` shows of an instance: one [`InstanceInfo`] per
//! instance (its JSON form uses Lima's field names) and the table.
use serde::Serialize;

use crate::events::{self, Event};
use crate::instance::{self, Instance, Status};
use crate::units::human_size;

/// One row of `limactl list`, also its JSON form.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub name: String,
    pub status: Status,
    pub dir: String,
    pub vm_type: String,
    pub arch: String,
    pub cpus: u32,
    pub memory: u64,
    pub disk: u64,
    #[serde(rename = "hostAgentPID", skip_serializing_if = "Option::is_none")]
    pub host_agent_pid: Option<i32>,
    #[serde(rename = "driverPID", skip_serializing_if = "Option::is_none")]
    pub driver_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watcher: Option<String>,
    /// Forwarded guest ports (and ones that could not be forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwards: Option<Vec<crate::forwarder::ForwardInfo>>,
    /// Why the instance is Broken (as Lima's `errors`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The host port of the guest's sshd, while a distro instance runs
    /// (Lima's field names).
    #[serde(rename = "sshLocalPort", skip_serializing_if = "Option::is_none")]
    pub ssh_local_port: Option<u16>,
    #[serde(rename = "sshConfigFile", skip_serializing_if = "Option::is_none")]
    pub ssh_config_file: Option<String>,
}

/// The `Port` line of the instance's `ssh.config`.
pub(crate) fn ssh_port(inst: &Instance) -> Option<u16> {
    let text = std::fs::read_to_string(inst.path(instance::SSH_CONFIG)).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .and_then(|p| p.trim().parse().ok())
}

pub fn info(inst: &Instance) -> InstanceInfo {
    let status = inst.status();
    let cfg = inst.config().ok();
    let running = status == Status::Running;
    let mut accel = None;
    let mut kernel_release = None;
    let mut watcher = None;
    if running {
        for rec in events::read_all(&inst.path(instance::HA_EVENTS)) {
            match rec.event {
                Event::Booting { accel: a, .. } => accel = Some(a),
                Event::Running {
                    kernel_release: k,
                    watcher: w,
                    ..
                } => {
                    kernel_release = Some(k);
                    watcher = Some(w);
                }
                _ => {}
            }
        }
    }
    let mut forwards = None;
    if running {
        if let Some(p) = std::fs::read(inst.path(instance::PORTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::forwarder::PortsFile>(&b).ok())
        {
            if !p.watcher.is_empty() {
                watcher = Some(p.watcher);
            }
            forwards = Some(p.forwards);
        }
    }
    let ssh_local_port = if running { ssh_port(inst) } else { None };
    InstanceInfo {
        ssh_config_file: ssh_local_port
            .map(|_| inst.path(instance::SSH_CONFIG).display().to_string()),
        ssh_local_port,
        errors: if status == Status::Broken {
            inst.errors()
        } else {
            Vec::new()
        },
        forwards,
        name: inst.name.clone(),
        status,
        dir: inst.dir.display().to_string(),
        vm_type: cfg.as_ref().map(|c| c.vm_type.clone()).unwrap_or_default(),
        arch: cfg.as_ref().map(|c| c.arch.clone()).unwrap_or_default(),
        cpus: cfg.as_ref().map(|c| c.cpus).unwrap_or(0),
        memory: cfg.as_ref().map(|c| c.memory).unwrap_or(0),
        disk: cfg.as_ref().map(|c| c.disk).unwrap_or(0),
        host_agent_pid: if running {
            inst.read_pid(instance::HA_PID)
        } else {
            None
        },
        driver_pid: if running {
            inst.read_pid(instance::QEMU_PID)
        } else {
            None
        },
        accel,
        kernel_release,
        watcher,
    }
}

/// The table `limactl list` prints.
pub fn table(rows: &[InstanceInfo]) -> String {
    let mut lines = vec![["NAME", "STATUS", "ARCH", "CPUS", "MEMORY", "DISK", "DIR"]
        .map(String::from)
        .to_vec()];
    let home = std::env::var("HOME").unwrap_or_default();
    for r in rows {
        let dir = match r.dir.strip_prefix(&home) {
            Some(rest) if !home.is_empty() => format!("~{rest}"),
            _ => r.dir.clone(),
        };
        lines.push(vec![
            r.name.clone(),
            r.status.to_string(),
            r.arch.clone(),
            r.cpus.to_string(),
            human_size(r.memory),
            human_size(r.disk),
            dir,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("    ").trim_end());
        out.push('\n');
    }
    out
}
