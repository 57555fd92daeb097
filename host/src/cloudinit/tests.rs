use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0fVzG0n7l8yGQ9mF7b5o1yX5P8wq0m8wN3n8s6mXH lima";

fn user() -> GuestUser {
    GuestUser {
        name: "ada".into(),
        uid: 1234,
        comment: Some("Ada \"Countess\" Lovelace".into()),
        home: "/home/ada.guest".into(),
        shell: "/bin/bash".into(),
    }
}

fn inputs(agent: &Path) -> SeedInputs {
    SeedInputs {
        instance_name: "my_vm".into(),
        instance_id: "iid-42".into(),
        user: user(),
        ssh_public_keys: vec![KEY.into(), "ssh-ed25519 AAAAother second".into()],
        timezone: Some("Europe/Berlin".into()),
        dns: vec![],
        mac_address: None,
        agent_binary: agent.to_path_buf(),
        ca_certs: Default::default(),
    }
}

fn file<'a>(files: &'a [(&'static str, Vec<u8>)], name: &str) -> &'a [u8] {
    &files
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

fn names(files: &[(&'static str, Vec<u8>)]) -> Vec<&'static str> {
    files.iter().map(|(n, _)| *n).collect()
}

#[test]
fn user_data_is_cloud_config_with_the_user_and_the_boot_command() {
    let files = render(&inputs(Path::new("/agent"))).unwrap();
    assert_eq!(
        names(&files),
        ["meta-data", "user-data", "boot.env", "boot.sh", UNIT_FILE]
    );
    let text = std::str::from_utf8(file(&files, "user-data")).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{text}");

    // What cloud-init reads, as plain YAML.
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let u = &v["users"][0];
    assert_eq!(u["name"].as_str(), Some("ada"));
    assert_eq!(u["uid"].as_u64(), Some(1234));
    assert_eq!(u["gecos"].as_str(), Some("Ada \"Countess\" Lovelace"));
    assert_eq!(u["homedir"].as_str(), Some("/home/ada.guest"));
    assert_eq!(u["shell"].as_str(), Some("/bin/bash"));
    assert_eq!(u["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
    assert_eq!(u["lock_passwd"].as_bool(), Some(true));
    assert_eq!(u["ssh_authorized_keys"][0].as_str(), Some(KEY));
    assert_eq!(
        u["ssh_authorized_keys"][1].as_str(),
        Some("ssh-ed25519 AAAAother second")
    );
    assert_eq!(v["hostname"].as_str(), Some("lima-my-vm"));
    assert_eq!(v["manage_etc_hosts"].as_bool(), Some(true));
    assert_eq!(v["timezone"].as_str(), Some("Europe/Berlin"));
    assert!(v.get("resolv_conf").is_none() && v.get("manage_resolv_conf").is_none());
    assert_eq!(v["bootcmd"].as_sequence().unwrap().len(), 1);
    assert_eq!(v["bootcmd"][0].as_str(), Some(BOOTCMD));

    // And back into our own type, whole.
    let parsed: CloudConfig = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(parsed.users.len(), 1);
    assert_eq!(parsed.users[0].ssh_authorized_keys.len(), 2);

    let meta: MetaData = serde_yaml_ng::from_slice(file(&files, "meta-data")).unwrap();
    assert_eq!(
        meta,
        MetaData {
            instance_id: "iid-42".into(),
            local_hostname: "lima-my-vm".into()
        }
    );
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_slice(file(&files, "meta-data")).unwrap();
    assert_eq!(meta["instance-id"].as_str(), Some("iid-42"));
    assert_eq!(meta["local-hostname"].as_str(), Some("lima-my-vm"));
}

/// Reads `text` as cloud-init does (PyYAML's safe_load) and prints it back
/// as JSON; `None` without python3 and PyYAML.
fn pyyaml_to_json(text: &[u8]) -> Option<serde_json::Value> {
    let script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin.read()), sys.stdout)";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        return None;
    }
    assert!(out.status.success(), "{stderr}");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn values_that_yaml_1_1_would_retype_reach_cloud_init_as_strings() {
    let mut i = inputs(Path::new("/agent"));
    // PyYAML reads a bare `no` as false, `1_000` as 1000, digits with
    // colons as a base-60 number.
    i.user.name = "no".into();
    i.user.comment = Some("12:30".into());
    i.instance_name = "on".into();
    i.ssh_public_keys = vec!["yes".into()];
    i.dns = vec!["10.0.2.3".parse().unwrap()];
    i.mac_address = Some("52:55:55:12:34:56".into());
    let files = render(&i).unwrap();
    let mut checked = 0;
    for name in ["meta-data", "user-data", "network-config"] {
        let text = file(&files, name);
        let ours: serde_json::Value = serde_yaml_ng::from_slice(text).unwrap();
        if let Some(theirs) = pyyaml_to_json(text) {
            assert_eq!(theirs, ours, "{name}");
            checked += 1;
        }
    }
    if checked == 0 {
        eprintln!("PyYAML check skipped: no python3 with yaml");
    }
    let net: NetworkConfig = serde_yaml_ng::from_slice(file(&files, "network-config")).unwrap();
    assert_eq!(net.ethernets["eth0"].match_.macaddress, "52:55:55:12:34:56");
    let cfg: CloudConfig = serde_yaml_ng::from_slice(file(&files, "user-data")).unwrap();
    assert_eq!(cfg.users[0].name, "no");
    assert_eq!(cfg.users[0].gecos.as_deref(), Some("12:30"));
}

#[test]
fn no_timezone_leaves_the_key_out() {
    let mut i = inputs(Path::new("/agent"));
    i.timezone = None;
    let files = render(&i).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(file(&files, "user-data")).unwrap();
    assert!(v.get("timezone").is_none());
    // No comment, no gecos.
    i.user.comment = None;
    let files = render(&i).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(file(&files, "user-data")).unwrap();
    assert!(v["users"][0].get("gecos").is_none());
}

#[test]
fn dns_servers_bring_a_network_config_for_the_nic() {
    let mut i = inputs(Path::new("/agent"));
    i.dns = vec![
        "1.1.1.1".parse().unwrap(),
        "2606:4700::1111".parse().unwrap(),
    ];
    i.mac_address = Some("52:55:55:AB:cd:01".into());
    let files = render(&i).unwrap();
    let text = std::str::from_utf8(file(&files, "network-config")).unwrap();
    let net: NetworkConfig = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(net.version, 2);
    let eth = &net.ethernets["eth0"];
    assert_eq!(eth.match_.macaddress, "52:55:55:ab:cd:01");
    assert_eq!(eth.set_name, "eth0");
    assert!(eth.dhcp4);
    assert_eq!(eth.nameservers.addresses, ["1.1.1.1", "2606:4700::1111"]);
    // The keys cloud-init expects, spelled its way.
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(v["version"].as_u64(), Some(2));
    assert!(v["ethernets"]["eth0"]["match"]["macaddress"].is_string());
    assert!(v["ethernets"]["eth0"]["set-name"].is_string());
    // And resolv.conf for images whose cloud-init writes it.
    let cfg: CloudConfig = serde_yaml_ng::from_slice(file(&files, "user-data")).unwrap();
    assert_eq!(cfg.manage_resolv_conf, Some(true));
    assert_eq!(
        cfg.resolv_conf.unwrap().nameservers,
        ["1.1.1.1", "2606:4700::1111"]
    );

    i.mac_address = None;
    assert!(render(&i).unwrap_err().to_string().contains("MAC address"));
    i.mac_address = Some("52:55:55:ab:cd".into());
    assert!(render(&i)
        .unwrap_err()
        .to_string()
        .contains("`52:55:55:ab:cd` is not a MAC"));
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let mut i = inputs(Path::new("/agent"));
    i.ssh_public_keys.clear();
    assert!(render(&i)
        .unwrap_err()
        .to_string()
        .contains("no SSH public key"));
    i.ssh_public_keys = vec![format!("{KEY}\nssh-rsa AAAA injected")];
    assert!(render(&i)
        .unwrap_err()
        .to_string()
        .contains("more than one line"));
    i.ssh_public_keys = vec![KEY.into()];
    for tz in [
        "",
        "../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "EST5EDT,M3.2.0,M11.1.0",
        "Europe//Berlin",
    ] {
        i.timezone = Some(tz.into());
        let e = render(&i).unwrap_err().to_string();
        assert!(
            e.contains("not a zone name") && e.contains("timezone:"),
            "{tz}: {e}"
        );
    }
}

#[test]
fn zone_names_come_from_tz_then_the_localtime_link_then_etc_timezone() {
    let link = Path::new("/usr/share/zoneinfo/Europe/Berlin");
    assert_eq!(
        pick_zone(Some("Asia/Tokyo"), Some(link), None).as_deref(),
        Some("Asia/Tokyo")
    );
    // A TZ that is a rule, not a name, is passed over.
    assert_eq!(
        pick_zone(Some("CET-1CEST,M3.5.0"), Some(link), None).as_deref(),
        Some("Europe/Berlin")
    );
    assert_eq!(
        pick_zone(
            None,
            Some(Path::new(
                "../usr/share/zoneinfo/posix/America/Argentina/Salta"
            )),
            None
        )
        .as_deref(),
        Some("America/Argentina/Salta")
    );
    assert_eq!(
        pick_zone(None, Some(Path::new("/etc/weird")), Some("Etc/GMT+5\n")).as_deref(),
        Some("Etc/GMT+5")
    );
    assert_eq!(pick_zone(None, None, Some("UTC\n")).as_deref(), Some("UTC"));
    assert_eq!(pick_zone(None, None, None), None);
    assert_eq!(pick_zone(Some(""), None, Some("")), None);
}

#[test]
fn boot_env_is_quoted_for_sh() {
    let mut i = inputs(Path::new("/agent"));
    i.user.home = "/home/o'brien$HOME`x`".into();
    for (home, legacy) in [
        ("/home/ada.guest", "/home/ada.linux"),
        ("/home/o'brien$HOME`x`", ""),
    ] {
        i.user.home = home.into();
        let files = render(&i).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("boot.env");
        std::fs::write(&env, file(&files, "boot.env")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#". "$1"; printf '%s\n%s\n' "$LIMA_GUEST_HOME" "$LIMA_GUEST_LEGACY_HOME""#)
            .arg("sh")
            .arg(&env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{home}\n{legacy}\n")
        );
    }
}

#[test]
fn the_scripts_are_valid_sh() {
    for (name, script) in [("boot.sh", BOOT_SCRIPT), ("bootcmd", BOOTCMD)] {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Guard the syntax check itself.
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", "if then"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_unit_runs_the_installed_agent_without_waiting_for_the_network() {
    for line in [
        "DefaultDependencies=no",
        "After=local-fs.target systemd-udev-trigger.service systemd-journald.socket",
        "Before=shutdown.target",
        "KillMode=process",
        "StandardError=journal+console",
        "Type=simple",
        "ExecStart=/usr/local/bin/lima-guest-agent",
        "Restart=always",
        "Environment=LIMA_AGENT_LOG=info",
        "WantedBy=multi-user.target",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "{line}");
    }
    // Ordered after nothing network-related, and wanting nothing.
    for l in UNIT.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("network") && !l.starts_with("Wants="), "{l}");
    }
    // boot.sh installs the unit under the name it enables.
    assert!(BOOT_SCRIPT.contains(&format!("/etc/systemd/system/{UNIT_FILE}")));
    assert!(BOOT_SCRIPT.contains(&format!("$seed/{AGENT_FILE}")));
    assert!(BOOT_SCRIPT.contains(&format!("$seed/{UNIT_FILE}")));
}

fn fake_agent(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("lima-guest-agent");
    // Not all zeros, so a misplaced cluster shows.
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&path, data).unwrap();
    path
}

struct Volume {
    /// From the boot sector.
    label: String,
    /// From the root folder's label entry (what blkid prefers).
    root_label: Option<String>,
    /// (name, content), sorted.
    files: Vec<(String, Vec<u8>)>,
}

fn read_volume(path: &Path) -> Volume {
    let f = std::fs::File::open(path).unwrap();
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
    let mut files = Vec::new();
    for e in fs.root_dir().iter() {
        let e = e.unwrap();
        assert!(e.is_file(), "{}", e.file_name());
        let mut data = Vec::new();
        e.to_file().read_to_end(&mut data).unwrap();
        files.push((e.file_name(), data));
    }
    files.sort();
    Volume {
        label: fs.volume_label(),
        root_label: fs.read_volume_label_from_root_dir().unwrap(),
        files,
    }
}

#[test]
fn the_seed_volume_holds_the_files_under_the_cidata_label() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fake_agent(dir.path(), 3_000_001);
    let mut i = inputs(&agent);
    i.dns = vec!["9.9.9.9".parse().unwrap()];
    i.mac_address = Some("52:55:55:12:34:56".into());
    let out = dir.path().join("cidata.img");
    write_seed(&i, &out).unwrap();

    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len() % volume::SECTOR, 0);

    let Volume {
        label,
        root_label,
        files,
    } = read_volume(&out);
    assert_eq!(label, "CIDATA");
    assert_eq!(root_label.as_deref(), Some("CIDATA"));
    let mut expected: Vec<(String, Vec<u8>)> = render(&i)
        .unwrap()
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    expected.push((AGENT_FILE.into(), std::fs::read(&agent).unwrap()));
    expected.sort();
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "boot.env",
            "boot.sh",
            "lima-guest-agent",
            "lima-guest-agent.service",
            "meta-data",
            "network-config",
            "user-data"
        ]
    );
    assert!(files == expected, "a file's content differs");

    // Sized to fit: not much more than what it holds.
    let content: u64 = expected.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(
        meta.len() < content + content / 4 + (1 << 20),
        "{} for {content}",
        meta.len()
    );

    // blkid, as cloud-init's ds-identify and our boot command use it.
    if let Ok(out) = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&out)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == "LABEL=CIDATA"), "{text}");
        assert!(text.lines().any(|l| l == "TYPE=vfat"), "{text}");
    } else {
        eprintln!("blkid check skipped: no blkid");
    }
    // dosfstools' checker, read-only, where installed.
    match std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&out)
        .output()
    {
        Ok(check) => assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ),
        Err(_) => eprintln!("fsck.fat check skipped: no dosfstools"),
    }
}

#[test]
fn large_and_tiny_seeds_fit_and_the_same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 1, 4096, 40 << 20] {
        let agent = fake_agent(dir.path(), len);
        let i = inputs(&agent);
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        write_seed(&i, &a).unwrap();
        write_seed(&i, &b).unwrap();
        let files = read_volume(&a).files;
        let got = &files.iter().find(|(n, _)| n == AGENT_FILE).unwrap().1;
        assert_eq!(got.len(), len);
        assert!(*got == std::fs::read(&agent).unwrap());
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{len}"
        );
    }
}

#[test]
fn a_seed_is_replaced_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fake_agent(dir.path(), 1000);
    let out = dir.path().join("cidata.img");
    let mut i = inputs(&agent);
    write_seed(&i, &out).unwrap();
    let before = std::fs::read(&out).unwrap();

    // A new seed replaces it.
    i.instance_id = "iid-43".into();
    write_seed(&i, &out).unwrap();
    let files = read_volume(&out).files;
    let meta = &files.iter().find(|(n, _)| n == "meta-data").unwrap().1;
    assert!(String::from_utf8_lossy(meta).contains("iid-43"));
    let after = std::fs::read(&out).unwrap();

    // A failed write leaves the last seed and nothing else.
    i.agent_binary = dir.path().join("missing-agent");
    let e = write_seed(&i, &out).unwrap_err().to_string();
    assert!(
        e.contains("missing-agent") && e.contains("cargo xtask build"),
        "{e}"
    );
    i.agent_binary = agent.clone();
    i.ssh_public_keys.clear();
    assert!(write_seed(&i, &out).is_err());
    assert!(std::fs::read(&out).unwrap() == after);
    assert!(after != before);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["cidata.img", "lima-guest-agent"]);
}

#[test]
fn instance_ids_are_lima_style() {
    let id = new_instance_id();
    let secs = id.strip_prefix("iid-").unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_700_000_000, "{id}");
}

#[test]
fn dns_in_lima_yaml_is_a_list_of_addresses() {
    let v = |t: &str| -> serde_yaml_ng::Value { serde_yaml_ng::from_str(t).unwrap() };
    assert_eq!(
        crate::config::dns_from_value(&v("[1.1.1.1, '2606:4700::1111']"), "f").unwrap(),
        [
            "1.1.1.1".parse::<IpAddr>().unwrap(),
            "2606:4700::1111".parse().unwrap()
        ]
    );
    assert!(crate::config::dns_from_value(&v("null"), "f")
        .unwrap()
        .is_empty());
    assert!(crate::config::dns_from_value(&v("[]"), "f")
        .unwrap()
        .is_empty());
    let e = crate::config::dns_from_value(&v("1.1.1.1"), "/x/lima.yaml").unwrap_err();
    assert!(
        e.starts_with("/x/lima.yaml: field `dns`: must be a list"),
        "{e}"
    );
    let e = crate::config::dns_from_value(&v("[1.1.1.1, dns.google]"), "/x/lima.yaml").unwrap_err();
    assert!(
        e.contains("field `dns[1]`") && e.contains("dns.google"),
        "{e}"
    );
}

#[test]
fn ca_certs_reach_cloud_inits_ca_certs_module() {
    let plain = render(&inputs(Path::new("/agent"))).unwrap();
    let text = std::str::from_utf8(file(&plain, "user-data")).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    assert!(v.get("ca_certs").is_none(), "{text}");

    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    let mut i = inputs(Path::new("/agent"));
    i.ca_certs = crate::config::CaCerts {
        remove_defaults: true,
        certs: vec![pem.to_string()],
    };
    let files = render(&i).unwrap();
    let text = std::str::from_utf8(file(&files, "user-data")).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(v["ca_certs"]["remove_defaults"].as_bool(), Some(true));
    assert_eq!(v["ca_certs"]["trusted"][0].as_str(), Some(pem));
}
