//! What `limactl list` shows of an instance: one [`InstanceInfo`] per
//! instance. Its JSON form is Lima's (`limatype.Instance` with the host
//! fields of `store.FormatData` after it, same names, same order), then our
//! own extensions; [`go_fields`] gives the same data under the Go field
//! names that `--format '{{…}}'` templates use; [`table`] is Lima's table.
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{InstanceConfig, LimaYaml};
use crate::events::{self, Event};
use crate::instance::{self, Instance, Status};
use crate::units::human_size;

/// The host facts Lima adds to every listed instance (deprecated there in
/// favour of `limactl info`, still printed).
#[derive(Debug, Clone, Serialize)]
pub struct HostFields {
    #[serde(rename = "HostOS")]
    pub host_os: String,
    #[serde(rename = "HostArch")]
    pub host_arch: String,
    #[serde(rename = "LimaHome")]
    pub lima_home: String,
    #[serde(rename = "IdentityFile")]
    pub identity_file: String,
}

impl HostFields {
    pub fn new(home: &std::path::Path) -> Self {
        HostFields {
            host_os: host_os().to_string(),
            host_arch: crate::config::host_arch().to_string(),
            lima_home: home.display().to_string(),
            identity_file: home
                .join(crate::ssh_identity::CONFIG_DIR)
                .join("user")
                .display()
                .to_string(),
        }
    }
}

/// The OS as Go names it (`runtime.GOOS`), as Lima prints it.
pub fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One instance as `limactl list` shows it. The fields up to `param` are
/// Lima's, in Lima's order, empty ones left out as Lima leaves them out;
/// then the host fields; then ours (`accel` …) for our own tools.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub name: String,
    pub hostname: String,
    pub status: Status,
    pub dir: String,
    pub vm_type: String,
    pub arch: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub cpus: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub memory: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub disk: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_disks: Vec<Value>,
    #[serde(rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Value>,
    /// The host port of the guest's sshd while a distro instance runs (0:
    /// none, as for our own images, which have no sshd).
    #[serde(skip_serializing_if = "is_zero")]
    pub ssh_local_port: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ssh_config_file: String,
    #[serde(rename = "hostAgentPID", skip_serializing_if = "Option::is_none")]
    pub host_agent_pid: Option<i32>,
    #[serde(rename = "driverPID", skip_serializing_if = "Option::is_none")]
    pub driver_pid: Option<i32>,
    /// Why the instance is Broken.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The resolved `lima.yaml` ([`config_json`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ssh_address: String,
    pub protected: bool,
    pub lima_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<Value>,
    #[serde(flatten)]
    pub host: HostFields,
    // Ours, after Lima's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watcher: Option<String>,
    /// Forwarded guest ports (and ones that could not be forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwards: Option<Vec<crate::forwarder::ForwardInfo>>,
    /// Daemons the guest agent supervises (container engines) → state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<std::collections::BTreeMap<String, String>>,
}

/// The `Port` line of the instance's `ssh.config`.
pub(crate) fn ssh_port(inst: &Instance) -> Option<u16> {
    let text = std::fs::read_to_string(inst.path(instance::SSH_CONFIG)).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .and_then(|p| p.trim().parse().ok())
}

pub fn info(inst: &Instance, host: &HostFields) -> InstanceInfo {
    let status = inst.status();
    let yaml = inst.yaml().ok();
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
    let mut services = None;
    if running {
        if let Some(p) = std::fs::read(inst.path(instance::PORTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::forwarder::PortsFile>(&b).ok())
        {
            if !p.watcher.is_empty() {
                watcher = Some(p.watcher);
            }
            forwards = Some(p.forwards);
            services = Some(p.services).filter(|s| !s.is_empty());
        }
    }
    let loaded = cfg.is_some();
    let ssh_local_port = if running { ssh_port(inst) } else { None }
        .or_else(|| cfg.as_ref().map(|c| c.ssh.local_port))
        .unwrap_or(0);
    let pid = |file| if running { inst.read_pid(file) } else { None };
    let lima_version = std::fs::read_to_string(inst.path(instance::LIMA_VERSION))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    InstanceInfo {
        name: inst.name.clone(),
        hostname: crate::guest_user::guest_hostname(&inst.name),
        status,
        dir: inst.dir.display().to_string(),
        vm_type: cfg.as_ref().map(|c| c.vm_type.clone()).unwrap_or_default(),
        arch: cfg.as_ref().map(|c| c.arch.clone()).unwrap_or_default(),
        cpus: cfg.as_ref().map(|c| c.cpus).unwrap_or(0),
        memory: cfg.as_ref().map(|c| c.memory).unwrap_or(0),
        disk: cfg.as_ref().map(|c| c.disk).unwrap_or(0),
        message: cfg.as_ref().map(|c| c.message.clone()).unwrap_or_default(),
        additional_disks: list_of(yaml.as_ref().and_then(|y| y.additional_disks.as_ref())),
        networks: list_of(yaml.as_ref().and_then(|y| y.networks.as_ref())),
        ssh_local_port,
        ssh_config_file: if loaded {
            inst.path(instance::SSH_CONFIG).display().to_string()
        } else {
            String::new()
        },
        host_agent_pid: pid(instance::HA_PID),
        driver_pid: pid(instance::QEMU_PID),
        errors: if status == Status::Broken {
            inst.errors()
        } else {
            Vec::new()
        },
        config: match (&yaml, &cfg) {
            (Some(y), Some(c)) => Some(config_json(y, c)),
            _ => None,
        },
        ssh_address: if loaded {
            "127.0.0.1".into()
        } else {
            String::new()
        },
        protected: inst.path(instance::PROTECTED).symlink_metadata().is_ok(),
        lima_version,
        param: yaml
            .as_ref()
            .and_then(|y| y.param.as_ref())
            .filter(|p| !p.is_null())
            .and_then(|p| serde_json::to_value(p).ok()),
        host: host.clone(),
        accel,
        kernel_release,
        watcher,
        forwards,
        services,
    }
}

fn list_of(v: Option<&serde_yaml_ng::Value>) -> Vec<Value> {
    match v.and_then(|v| serde_json::to_value(v).ok()) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// `lima.yaml` as written, with the defaults we resolved filled in (Lima's
/// `config`, which holds the whole filled-in file): the keys in the file's
/// field order, unset ones left out.
pub fn config_json(yaml: &LimaYaml, cfg: &InstanceConfig) -> Value {
    let Ok(Value::Object(mut m)) = serde_json::to_value(yaml) else {
        return Value::Null;
    };
    m.insert("vmType".into(), cfg.vm_type.clone().into());
    if yaml.os.is_none() {
        m.insert("os".into(), "Linux".into());
    }
    m.insert("arch".into(), cfg.arch.clone().into());
    m.insert("cpus".into(), cfg.cpus.into());
    if yaml.memory.is_none() {
        m.insert("memory".into(), human_size(cfg.memory).into());
    }
    if yaml.disk.is_none() {
        m.insert("disk".into(), human_size(cfg.disk).into());
    }
    // Every key is there already (unset ones as null), so these keep
    // their places.
    let mut ssh = match m.get("ssh") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    ssh.insert("localPort".into(), cfg.ssh.local_port.into());
    ssh.insert(
        "loadDotSSHPubKeys".into(),
        cfg.ssh.load_dot_ssh_pub_keys.into(),
    );
    ssh.insert("forwardAgent".into(), cfg.ssh.forward_agent.into());
    m.insert("ssh".into(), Value::Object(ssh));
    let u = &cfg.user;
    let mut user = Map::new();
    user.insert("name".into(), u.name.clone().into());
    if let Some(c) = &u.comment {
        user.insert("comment".into(), c.clone().into());
    }
    user.insert("home".into(), u.home.clone().into());
    user.insert("shell".into(), u.shell.clone().into());
    user.insert("uid".into(), u.uid.into());
    m.insert("user".into(), Value::Object(user));
    let mut v = Value::Object(m);
    drop_nulls(&mut v);
    v
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The data of one instance as Go templates see it (Lima's `FormatData`):
/// `(field, value, deprecated)`, every field present even when empty, as
/// Go's zero values are.
pub fn go_fields(i: &InstanceInfo) -> Vec<(&'static str, Value, bool)> {
    let s = |v: &str| Value::String(v.to_string());
    vec![
        ("Name", s(&i.name), false),
        ("Hostname", s(&i.hostname), false),
        ("Status", s(&i.status.to_string()), false),
        ("Dir", s(&i.dir), false),
        ("VMType", s(&i.vm_type), false),
        ("Arch", s(&i.arch), false),
        ("CPUs", i.cpus.into(), false),
        ("Memory", i.memory.into(), false),
        ("Disk", i.disk.into(), false),
        // Lima trims the message's last newline for templates.
        (
            "Message",
            s(i.message.strip_suffix('\n').unwrap_or(&i.message)),
            false,
        ),
        (
            "AdditionalDisks",
            Value::Array(i.additional_disks.clone()),
            false,
        ),
        ("Networks", Value::Array(i.networks.clone()), false),
        ("SSHLocalPort", i.ssh_local_port.into(), false),
        ("SSHConfigFile", s(&i.ssh_config_file), false),
        ("HostAgentPID", i.host_agent_pid.unwrap_or(0).into(), false),
        ("DriverPID", i.driver_pid.unwrap_or(0).into(), false),
        (
            "Errors",
            Value::Array(i.errors.iter().map(|e| s(e)).collect()),
            false,
        ),
        ("Config", i.config.clone().unwrap_or(Value::Null), false),
        ("SSHAddress", s(&i.ssh_address), false),
        ("Protected", i.protected.into(), false),
        ("LimaVersion", s(&i.lima_version), false),
        (
            "Param",
            i.param.clone().unwrap_or(Value::Object(Map::new())),
            false,
        ),
        ("AutoStartedIdentifier", s(""), false),
        ("GuestIP", Value::Null, false),
        ("HostOS", s(&i.host.host_os), true),
        ("HostArch", s(&i.host.host_arch), true),
        ("LimaHome", s(&i.host.lima_home), true),
        ("IdentityFile", s(&i.host.identity_file), true),
    ]
}

/// `limactl list --list-fields`: the template fields, deprecated ones left
/// out, sorted.
pub fn field_names() -> Vec<&'static str> {
    let dummy = blank(String::new());
    let mut v: Vec<_> = go_fields(&dummy)
        .into_iter()
        .filter(|(_, _, deprecated)| !deprecated)
        .map(|(n, _, _)| n)
        .collect();
    v.sort_unstable();
    v
}

/// An instance with nothing known but its name.
fn blank(name: String) -> InstanceInfo {
    InstanceInfo {
        name,
        hostname: String::new(),
        status: Status::Stopped,
        dir: String::new(),
        vm_type: String::new(),
        arch: String::new(),
        cpus: 0,
        memory: 0,
        disk: 0,
        message: String::new(),
        additional_disks: Vec::new(),
        networks: Vec::new(),
        ssh_local_port: 0,
        ssh_config_file: String::new(),
        host_agent_pid: None,
        driver_pid: None,
        errors: Vec::new(),
        config: None,
        ssh_address: String::new(),
        protected: false,
        lima_version: String::new(),
        param: None,
        host: HostFields {
            host_os: String::new(),
            host_arch: String::new(),
            lima_home: String::new(),
            identity_file: String::new(),
        },
        accel: None,
        kernel_release: None,
        watcher: None,
        forwards: None,
        services: None,
    }
}

/// A size as Lima's table prints it (go-units `BytesSize`: binary units,
/// four significant digits, no trailing zeros).
pub fn bytes_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        v.log10().floor() as i32 + 1
    };
    let decimals = (4 - int_digits).max(0) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[i])
}

/// Go's `text/tabwriter` as Lima sets it up (minimum width 4, padding 4,
/// spaces): every cell but a line's last is padded to its column's widest
/// cell plus 4.
pub fn tabwriter(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| {
            let w = rows
                .iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0);
            (w + 4).max(4)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c + 1 < r.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// The table `limactl list` prints, with Lima's rules for leaving columns
/// out: VMTYPE when every instance has the same one, ARCH when every
/// instance has the host's, unless the terminal (`width`, 0 when not a
/// terminal) is wide enough or `all` asks for every column; DIR only when
/// a terminal is too narrow. `home` is shown as `~` in DIR.
pub fn table(rows: &[InstanceInfo], width: usize, all: bool, home: &str) -> String {
    use std::collections::BTreeSet;
    let types: BTreeSet<&str> = rows.iter().map(|r| r.vm_type.as_str()).collect();
    let archs: BTreeSet<&str> = rows.iter().map(|r| r.arch.as_str()).collect();
    const COL: usize = 8;
    let mut columns = 5; // NAME, STATUS (2), SSH (2)
    let narrow = |remaining: usize, columns: usize| (columns + remaining) * COL > width && !all;
    let hide_type = (width == 0 || narrow(7, columns)) && types.len() == 1;
    if !hide_type {
        columns += 1;
    }
    let host_arch = crate::config::host_arch();
    let hide_arch = (width == 0 || narrow(6, columns))
        && archs.len() == 1
        && rows.first().is_some_and(|r| r.arch == host_arch);
    if !hide_arch {
        columns += 1;
    }
    columns += 3; // CPUS, MEMORY, DISK
    let hide_dir = width != 0 && narrow(2, columns);

    let mut head = vec!["NAME", "STATUS", "SSH"];
    if !hide_type {
        head.push("VMTYPE");
    }
    if !hide_arch {
        head.push("ARCH");
    }
    head.extend(["CPUS", "MEMORY", "DISK"]);
    if !hide_dir {
        head.push("DIR");
    }
    let mut lines = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for r in rows {
        let mut l = vec![
            r.name.clone(),
            r.status.to_string(),
            format!("{}:{}", r.ssh_address, r.ssh_local_port),
        ];
        if !hide_type {
            l.push(r.vm_type.clone());
        }
        if !hide_arch {
            l.push(r.arch.clone());
        }
        l.extend([r.cpus.to_string(), bytes_size(r.memory), bytes_size(r.disk)]);
        if !hide_dir {
            l.push(match r.dir.strip_prefix(home) {
                Some(rest) if !home.is_empty() => format!("~{rest}"),
                _ => r.dir.clone(),
            });
        }
        lines.push(l);
    }
    tabwriter(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_go_units_prints_them() {
        for (b, s) in [
            (0, "0B"),
            (512 << 20, "512MiB"),
            (1 << 30, "1GiB"),
            (1536 << 20, "1.5GiB"),
            (1280 << 20, "1.25GiB"),
            (100 << 30, "100GiB"),
            (1000, "1000B"),
            (1023 << 20, "1023MiB"),
        ] {
            assert_eq!(bytes_size(b), s, "{b}");
        }
    }

    #[test]
    fn tabwriter_pads_all_but_the_last_cell() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "x".into()],
            vec!["long".to_string(), "".into(), "yyy".into()],
        ];
        assert_eq!(tabwriter(&rows), "A       BB    x\nlong          yyy\n");
    }

    #[test]
    fn columns_hide_by_limas_rules() {
        let row = |name: &str, arch: &str| InstanceInfo {
            vm_type: "qemu".into(),
            arch: arch.into(),
            dir: format!("/home/u/.lima/{name}"),
            ..blank(name.into())
        };
        let host = crate::config::host_arch();
        let same = [row("a", host), row("b", host)];
        let head = |t: String| {
            t.lines()
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Off a terminal: alike columns go, even with --all-fields.
        for all in [false, true] {
            assert_eq!(
                head(table(&same, 0, all, "")),
                "NAME STATUS SSH CPUS MEMORY DISK DIR"
            );
        }
        // A wide terminal shows everything; a narrow one drops more.
        assert_eq!(
            head(table(&same, 200, false, "")),
            "NAME STATUS SSH VMTYPE ARCH CPUS MEMORY DISK DIR"
        );
        assert_eq!(
            head(table(&same, 95, false, "")),
            "NAME STATUS SSH ARCH CPUS MEMORY DISK DIR"
        );
        assert_eq!(
            head(table(&same, 60, false, "")),
            "NAME STATUS SSH CPUS MEMORY DISK"
        );
        assert_eq!(
            head(table(&same, 60, true, "")),
            "NAME STATUS SSH VMTYPE ARCH CPUS MEMORY DISK DIR"
        );
        // Another arch shows ARCH; DIR under HOME starts with `~`.
        let other = if host == "x86_64" {
            "aarch64"
        } else {
            "x86_64"
        };
        let t = table(&[row("a", other)], 0, false, "/home/u");
        assert_eq!(head(t.clone()), "NAME STATUS SSH ARCH CPUS MEMORY DISK DIR");
        assert!(t.lines().nth(1).unwrap().ends_with("    ~/.lima/a"), "{t}");
    }

    #[test]
    fn fields_are_limas() {
        let f = field_names();
        assert!(f.contains(&"SSHLocalPort") && f.contains(&"CPUs"));
        assert!(!f.contains(&"HostOS"), "deprecated fields are left out");
        assert!(f.windows(2).all(|w| w[0] < w[1]));
    }
}
