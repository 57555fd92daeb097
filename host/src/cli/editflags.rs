//! Lima's edit flags (`--cpus`, `--set`, `--mount`, …), shared by `create`,
//! `start`, `edit` and `restart`. As in Lima, each flag becomes an
//! expression on `lima.yaml` (jq syntax, run by [`crate::yq`]); the caller
//! applies them and validates the result before writing anything.
//!
//! jaq does not grow missing parents the way jq does (`null | .a.b = 1` is
//! an error), so nested keys are written as `.a = ((.a // {}) | .b = V)`.
use std::net::IpAddr;

use anyhow::bail;

use super::msg;

/// Parses `true`/`false` the way Go's flag package takes a bool's value.
fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean (true or false)")),
    }
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct EditFlags {
    /// Number of CPUs
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Custom DNS servers (turns the host resolver off); comma-separated or repeated
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub dns: Vec<IpAddr>,
    /// Memory in GiB (e.g. 4, 1.5)
    #[arg(long, value_name = "GiB")]
    pub memory: Option<f32>,
    /// Folders to share, DIR[:w] (writable with `:w`); comma-separated or repeated; added to the template's mounts
    #[arg(long = "mount", value_name = "DIR[:w]", value_delimiter = ',')]
    pub mount: Vec<String>,
    /// Like --mount, but replaces the template's mounts
    #[arg(
        long = "mount-only",
        value_name = "DIR[:w]",
        value_delimiter = ',',
        conflicts_with = "mount"
    )]
    pub mount_only: Vec<String>,
    /// Share no folders at all
    #[arg(long = "mount-none", conflicts_with_all = ["mount", "mount_only"])]
    pub mount_none: bool,
    /// Mount type (9p, virtiofs, reverse-sshfs)
    #[arg(long = "mount-type", value_name = "TYPE")]
    pub mount_type: Option<String>,
    /// Make every mount writable
    #[arg(long = "mount-writable", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub mount_writable: Option<bool>,
    /// Pass inotify events of the host to the guest's mounts (experimental)
    #[arg(long = "mount-inotify", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub mount_inotify: Option<bool>,
    /// Additional networks: vzNAT or lima:NAME; comma-separated or repeated
    #[arg(long, value_name = "NET", value_delimiter = ',')]
    pub network: Vec<String>,
    /// Rosetta (vz instances on Apple silicon)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub rosetta: Option<bool>,
    /// Modify lima.yaml in place with an expression (jq syntax; repeatable)
    #[arg(long, value_name = "EXPR")]
    pub set: Vec<String>,
    /// Set a `param:` entry, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// Video output
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub video: Option<bool>,
    /// Machine architecture (x86_64, aarch64); new instances only
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// containerd mode (user, system, user+system, none); new instances only
    #[arg(long, value_name = "MODE")]
    pub containerd: Option<String>,
    /// Disk size in GiB; new instances only
    #[arg(long, value_name = "GiB")]
    pub disk: Option<f32>,
    /// Virtual machine type (qemu); new instances only
    #[arg(long = "vm-type", value_name = "TYPE")]
    pub vm_type: Option<String>,
    /// Plain mode: no mounts, port forwarding or containerd; new instances only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub plain: Option<bool>,
    /// Forward a port, HOST:GUEST[,static=true] (repeatable); new instances only
    #[arg(long = "port-forward", value_name = "HOST:GUEST[,static=true]")]
    pub port_forward: Vec<String>,
    /// SSH port on the host (0 for random; distro images); new instances only
    #[arg(long = "ssh-port", value_name = "PORT")]
    pub ssh_port: Option<u16>,
}

/// `value` as a jq literal (JSON is valid jq).
fn lit(value: &serde_json::Value) -> String {
    value.to_string()
}

fn key(k: &str) -> String {
    lit(&serde_json::Value::from(k))
}

/// `.a.b.c = V`, creating `a` and `b` when missing.
pub fn set_path(path: &[&str], value: &str) -> String {
    match path {
        [] => value.to_string(),
        [last] => format!(".[{}] = {value}", key(last)),
        [first, rest @ ..] => {
            let k = key(first);
            format!(".[{k}] = ((.[{k}] // {{}}) | {})", set_path(rest, value))
        }
    }
}

/// A Lima `param:` key: a letter, then letters, digits or `_`.
fn valid_param_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The mounts of `--mount`/`--mount-only` as lima.yaml entries; each folder
/// must exist (a missing one would fail every later start).
fn mounts_json(flag: &str, values: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut v = Vec::new();
    for s in values {
        let m = crate::mounts::from_flag(s);
        if let Err((_, why)) = crate::mounts::resolve(std::slice::from_ref(&m), None, true) {
            bail!("--{flag} `{s}`: {why}");
        }
        v.push(serde_json::json!({
            "location": m.location,
            "writable": m.writable.unwrap_or(false),
        }));
    }
    Ok(serde_json::Value::Array(v))
}

fn port_forward_json(s: &str) -> anyhow::Result<serde_json::Value> {
    let bad =
        |why: &str| anyhow::anyhow!("--port-forward `{s}`: {why} (use HOST:GUEST[,static=true])");
    let mut parts = s.split(',');
    let ports = parts.next().unwrap_or("");
    let (host, guest) = ports.split_once(':').ok_or_else(|| bad("no `:`"))?;
    let port = |p: &str| -> anyhow::Result<u16> {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(&format!("`{p}` is not a port (1-65535)")))
    };
    let mut entry = serde_json::json!({
        "guestPort": port(guest)?,
        "hostPort": port(host)?,
    });
    for opt in parts {
        match opt.split_once('=') {
            Some(("static", v)) => {
                let b = go_bool(v).map_err(|e| bad(&e))?;
                entry["static"] = b.into();
            }
            _ => return Err(bad(&format!("unknown option `{opt}`"))),
        }
    }
    Ok(entry)
}

impl EditFlags {
    /// Whether no edit flag was given.
    pub fn is_empty(&self) -> bool {
        let EditFlags {
            cpus,
            dns,
            memory,
            mount,
            mount_only,
            mount_none,
            mount_type,
            mount_writable,
            mount_inotify,
            network,
            rosetta,
            set,
            param,
            video,
            arch,
            containerd,
            disk,
            vm_type,
            plain,
            port_forward,
            ssh_port,
        } = self;
        cpus.is_none()
            && dns.is_empty()
            && memory.is_none()
            && mount.is_empty()
            && mount_only.is_empty()
            && !mount_none
            && mount_type.is_none()
            && mount_writable.is_none()
            && mount_inotify.is_none()
            && network.is_empty()
            && rosetta.is_none()
            && set.is_empty()
            && param.is_empty()
            && video.is_none()
            && arch.is_none()
            && containerd.is_none()
            && disk.is_none()
            && vm_type.is_none()
            && plain.is_none()
            && port_forward.is_empty()
            && ssh_port.is_none()
    }

    /// The expressions the flags stand for, in Lima's order. For an existing
    /// instance (`new_instance` false) the flags that only make sense at
    /// creation are skipped with Lima's warning.
    pub fn expressions(&self, new_instance: bool) -> anyhow::Result<Vec<String>> {
        let warn = |m: String| msg::warn(m);
        let mut out = Vec::new();
        if let Some(n) = self.cpus {
            out.push(format!(".cpus = {n}"));
        }
        if !self.dns.is_empty() {
            let ips: Vec<String> = self.dns.iter().map(|ip| key(&ip.to_string())).collect();
            warn(format!(
                "Disabling HostResolver, as custom DNS addresses ({}) are specified",
                self.dns
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            out.push(format!(
                ".dns = ((.dns // []) + [{}] | unique) | {}",
                ips.join(","),
                set_path(&["hostResolver", "enabled"], "false")
            ));
        }
        if let Some(m) = self.memory {
            out.push(format!(".memory = {}", key(&format!("{m}GiB"))));
        }
        if self.mount_none {
            out.push(".mounts = null".into());
        }
        if !self.mount_only.is_empty() {
            let only = mounts_json("mount-only", &self.mount_only)?;
            out.push(format!(".mounts = {}", lit(&only)));
        }
        if !self.mount.is_empty() {
            // Added in front (the flag wins over the template's own entry
            // for the same folder).
            let new = mounts_json("mount", &self.mount)?;
            let locs: Vec<serde_json::Value> = new
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| m["location"].clone())
                .collect();
            out.push(format!(
                ".mounts = ({} + [(.mounts // [])[] | select(.location as $l | any({}[]; . == $l) | not)])",
                lit(&new),
                lit(&serde_json::Value::Array(locs))
            ));
        }
        if let Some(t) = &self.mount_type {
            out.push(format!(".mountType = {}", key(t)));
        }
        if let Some(b) = self.mount_inotify {
            warn("`--mount-inotify` is experimental".into());
            out.push(format!(".mountInotify = {b}"));
        }
        if let Some(b) = self.mount_writable {
            out.push(format!(".mounts = [(.mounts // [])[] | .writable = {b}]"));
        }
        if !self.network.is_empty() {
            let mut nets = Vec::new();
            for n in &self.network {
                if n == "vzNAT" {
                    nets.push(r#"{"vzNAT": true}"#.to_string());
                } else if let Some(name) = n.strip_prefix("lima:") {
                    nets.push(format!(r#"{{"lima": {}}}"#, key(name)));
                } else {
                    bail!("error while processing flag \"network\": network name must be \"vzNAT\" or \"lima:*\", got \"{n}\"");
                }
            }
            out.push(format!(
                ".networks = ((.networks // []) + [{}] | unique_by(.lima))",
                nets.join(",")
            ));
        }
        if let Some(b) = self.rosetta {
            out.push(set_path(
                &["vmOpts", "vz", "rosetta", "enabled"],
                &b.to_string(),
            ));
            out.push(set_path(
                &["vmOpts", "vz", "rosetta", "binfmt"],
                &b.to_string(),
            ));
        }
        out.extend(self.set.iter().cloned());
        for p in &self.param {
            let Some((k, v)) = p.split_once('=') else {
                bail!("--param `{p}`: expected KEY=VALUE");
            };
            if !valid_param_key(k) {
                bail!("--param `{p}`: the key must start with a letter and hold only letters, digits and `_`");
            }
            out.push(set_path(&["param", k], &key(v)));
        }
        if let Some(b) = self.video {
            let d = if b { "default" } else { "none" };
            out.push(set_path(&["video", "display"], &key(d)));
        }

        // Flags that only make sense when creating.
        let mut new_only: Vec<(&str, String, String)> = Vec::new();
        if let Some(a) = &self.arch {
            new_only.push(("arch", a.clone(), format!(".arch = {}", key(a))));
        }
        if let Some(c) = &self.containerd {
            let (user, system) = match c.as_str() {
                "user" => (true, false),
                "system" => (false, true),
                "user+system" | "system+user" => (true, true),
                "none" => (false, false),
                _ => bail!(
                    "error while processing flag \"containerd\": expected one of [\"user\", \"system\", \"user+system\", \"none\"], got \"{c}\""
                ),
            };
            new_only.push((
                "containerd",
                c.clone(),
                format!(
                    "{} | {}",
                    set_path(&["containerd", "user"], &user.to_string()),
                    set_path(&["containerd", "system"], &system.to_string())
                ),
            ));
        }
        if let Some(d) = self.disk {
            new_only.push((
                "disk",
                d.to_string(),
                format!(".disk = {}", key(&format!("{d}GiB"))),
            ));
        }
        if let Some(t) = &self.vm_type {
            new_only.push(("vm-type", t.clone(), format!(".vmType = {}", key(t))));
        }
        if let Some(b) = self.plain {
            new_only.push(("plain", b.to_string(), format!(".plain = {b}")));
        }
        if !self.port_forward.is_empty() {
            let mut v = Vec::new();
            for p in &self.port_forward {
                v.push(port_forward_json(p)?);
            }
            new_only.push((
                "port-forward",
                self.port_forward.join(","),
                format!(
                    ".portForwards = ((.portForwards // []) + {})",
                    lit(&serde_json::Value::Array(v))
                ),
            ));
        }
        if let Some(p) = self.ssh_port {
            new_only.push((
                "ssh-port",
                p.to_string(),
                set_path(&["ssh", "localPort"], &p.to_string()),
            ));
        }
        for (flag, value, expr) in new_only {
            if new_instance {
                out.push(expr);
            } else {
                warn(format!(
                    "`--{flag}` is not applicable to an existing instance (Hint: create a new instance with `limactl create --{flag}={value} --name=NAME`)"
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: EditFlags,
    }

    fn apply(args: &[&str], new: bool, doc: serde_json::Value) -> serde_json::Value {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        let t = T::try_parse_from(argv).unwrap();
        let exprs = t.f.expressions(new).unwrap();
        let text = crate::yq::to_yaml(&doc).unwrap();
        let out = crate::yq::edit_yaml(&text, &exprs).unwrap();
        crate::yq::parse_yaml(&out).unwrap()
    }

    #[test]
    fn set_path_creates_missing_parents() {
        let e = set_path(&["a", "b", "c"], "1");
        let out = crate::yq::eval(&e, &json!({"x": 1})).unwrap();
        assert_eq!(out, vec![json!({"x": 1, "a": {"b": {"c": 1}}})]);
        let out = crate::yq::eval(&e, &json!({"a": {"k": 2}})).unwrap();
        assert_eq!(out, vec![json!({"a": {"k": 2, "b": {"c": 1}}})]);
    }

    #[test]
    fn scalar_flags_write_lima_keys() {
        let v = apply(
            &[
                "--cpus",
                "3",
                "--memory",
                "1.5",
                "--disk",
                "20",
                "--vm-type",
                "qemu",
                "--arch",
                "x86_64",
                "--plain",
                "--ssh-port",
                "60022",
            ],
            true,
            json!({"cpus": 1}),
        );
        assert_eq!(
            v,
            json!({"cpus": 3, "memory": "1.5GiB", "disk": "20GiB", "vmType": "qemu", "arch": "x86_64", "plain": true, "ssh": {"localPort": 60022}})
        );
    }

    #[test]
    fn new_only_flags_are_skipped_for_an_existing_instance() {
        let v = apply(
            &["--cpus", "2", "--disk", "20", "--vm-type", "vz"],
            false,
            json!({}),
        );
        assert_eq!(v, json!({"cpus": 2}));
    }

    #[test]
    fn param_and_set_apply_in_turn() {
        let v = apply(
            &[
                "--set",
                ".cpus = 4",
                "--param",
                "FOO=bar baz",
                "--set",
                ".cpus += 1",
            ],
            true,
            json!({"param": {"OLD": "x"}}),
        );
        assert_eq!(
            v,
            json!({"cpus": 5, "param": {"OLD": "x", "FOO": "bar baz"}})
        );
        let v = apply(&["--param", "A=1"], true, json!({}));
        assert_eq!(v, json!({"param": {"A": "1"}}));
    }

    #[test]
    fn a_bad_param_key_is_refused() {
        let t = T::try_parse_from(["t", "--param", "1x=2"]).unwrap();
        let err = t.f.expressions(true).unwrap_err().to_string();
        assert!(err.contains("--param `1x=2`"), "{err}");
        let t = T::try_parse_from(["t", "--param", "novalue"]).unwrap();
        assert!(t.f.expressions(true).is_err());
    }

    #[test]
    fn containerd_network_dns_rosetta_port_forward() {
        let v = apply(
            &[
                "--containerd",
                "user+system",
                "--network",
                "lima:shared,vzNAT",
                "--dns",
                "1.1.1.1",
                "--dns",
                "8.8.8.8",
                "--rosetta",
                "--port-forward",
                "8080:80,static=true",
            ],
            true,
            json!({"dns": ["8.8.8.8"]}),
        );
        assert_eq!(v["containerd"], json!({"user": true, "system": true}));
        let nets = v["networks"].as_array().unwrap();
        assert!(
            nets.contains(&json!({"vzNAT": true})) && nets.contains(&json!({"lima": "shared"}))
        );
        assert_eq!(nets.len(), 2);
        assert_eq!(v["dns"], json!(["1.1.1.1", "8.8.8.8"]));
        assert_eq!(v["hostResolver"], json!({"enabled": false}));
        assert_eq!(
            v["vmOpts"]["vz"]["rosetta"],
            json!({"enabled": true, "binfmt": true})
        );
        assert_eq!(
            v["portForwards"],
            json!([{"guestPort": 80, "hostPort": 8080, "static": true}])
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (args, want) in [
            (vec!["t", "--containerd", "both"], "containerd"),
            (vec!["t", "--network", "eth0"], "vzNAT"),
            (vec!["t", "--port-forward", "80"], "--port-forward `80`"),
            (vec!["t", "--port-forward", "x:80"], "`x` is not a port"),
        ] {
            let t = T::try_parse_from(args).unwrap();
            let err = t.f.expressions(true).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn mounts_add_replace_or_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let w = format!("{d}:w");
        let v = apply(
            &["--mount", &w],
            true,
            json!({"mounts": [{"location": "/tmp"}, {"location": d.clone()}]}),
        );
        assert_eq!(
            v["mounts"],
            json!([{"location": d.clone(), "writable": true}, {"location": "/tmp"}])
        );
        let v = apply(
            &["--mount-only", &d],
            true,
            json!({"mounts": [{"location": "/tmp"}]}),
        );
        assert_eq!(
            v["mounts"],
            json!([{"location": d.clone(), "writable": false}])
        );
        let v = apply(
            &["--mount-none"],
            true,
            json!({"mounts": [{"location": "/tmp"}]}),
        );
        assert_eq!(v["mounts"], json!(null));
        let v = apply(
            &["--mount-writable"],
            true,
            json!({"mounts": [{"location": "/tmp"}]}),
        );
        assert_eq!(v["mounts"], json!([{"location": "/tmp", "writable": true}]));
    }

    #[test]
    fn a_missing_mount_folder_is_refused() {
        let t = T::try_parse_from(["t", "--mount", "/no/such/dir"]).unwrap();
        let err = t.f.expressions(true).unwrap_err().to_string();
        assert!(err.contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn mount_flags_conflict_as_in_lima() {
        assert!(T::try_parse_from(["t", "--mount", "/a", "--mount-only", "/b"]).is_err());
        assert!(T::try_parse_from(["t", "--mount-none", "--mount", "/a"]).is_err());
    }

    #[test]
    fn is_empty_is_false_for_any_flag() {
        assert!(T::try_parse_from(["t"]).unwrap().f.is_empty());
        assert!(!T::try_parse_from(["t", "--disk", "3"])
            .unwrap()
            .f
            .is_empty());
        assert!(!T::try_parse_from(["t", "--mount", "/x"])
            .unwrap()
            .f
            .is_empty());
    }
}
