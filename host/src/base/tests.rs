use std::collections::HashMap;

use super::*;
use crate::template::Relative;

/// Templates by origin, loaded by `embed_with` as `locate` would.
struct Store(HashMap<String, String>);

impl Store {
    fn new(files: &[(&str, &str)]) -> Store {
        Store(
            files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        )
    }
    fn template(&self, name: &str) -> Template {
        Template {
            origin: name.to_string(),
            text: self.0[name].clone(),
            suggested_name: name.to_string(),
            relative_to: Relative::Dir("/t".into()),
        }
    }
    fn embed(&self, name: &str) -> Result<Value, BaseError> {
        let t = self.template(name);
        let text = embed_with(&t, &mut |loc: &str| {
            let key = loc.strip_prefix("/t/").unwrap_or(loc);
            match self.0.get(key) {
                Some(_) => Ok(self.template(key)),
                None => Err(TemplateError::NotFound {
                    name: loc.to_string(),
                    known: String::new(),
                }),
            }
        })?;
        Ok(serde_yaml_ng::from_str(&text).unwrap())
    }
}

fn y(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn child_scalars_win_and_base_fills_the_rest() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: base.yaml\ncpus: 4\nuser: null\nssh: {localPort: 2222}\n",
        ),
        (
            "base.yaml",
            "cpus: 1\nmemory: 1GiB\nuser: {name: ada}\nssh: {localPort: 1, forwardAgent: true}\n",
        ),
    ]);
    let got = s.embed("child.yaml").unwrap();
    assert_eq!(
        got,
        y("cpus: 4\nuser: null\nssh: {localPort: 2222, forwardAgent: true}\nmemory: 1GiB\n")
    );
    assert!(got.get("base").is_none());
}

#[test]
fn lists_append_except_provision_and_probes_which_the_base_leads() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: [a.yaml, b.yaml]\nimages: [{location: c}]\nprovision: [{script: c}]\nprobes: [{script: c}]\nportForwards: [{guestPort: 1}]\n",
        ),
        (
            "a.yaml",
            "images: [{location: a}]\nprovision: [{script: a}]\nprobes: [{script: a}]\nportForwards: [{guestPort: 2}]\n",
        ),
        (
            "b.yaml",
            "images: [{location: b}]\nprovision: [{script: b}]\nprobes: [{script: b}]\n",
        ),
    ]);
    let got = s.embed("child.yaml").unwrap();
    let field = |f: &str, k: &str| -> Vec<String> {
        got[f]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| match &e[k] {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
            })
            .collect()
    };
    assert_eq!(field("images", "location"), ["c", "a", "b"]);
    // Lima merges a, then b, each time putting the base's scripts first.
    assert_eq!(field("provision", "script"), ["b", "a", "c"]);
    assert_eq!(field("probes", "script"), ["b", "a", "c"]);
    assert_eq!(field("portForwards", "guestPort"), ["1", "2"]);
}

#[test]
fn dns_versions_and_mount_types_follow_limas_special_cases() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: base.yaml\ndns: [1.1.1.1]\nminimumLimaVersion: 1.0.0\nmountTypesUnsupported: [9p]\nvmOpts: {qemu: {minimumVersion: 9.0.0}}\n",
        ),
        (
            "base.yaml",
            "dns: [8.8.8.8]\nminimumLimaVersion: 1.10.0\nmountTypesUnsupported: [9p, virtiofs]\nvmOpts: {qemu: {minimumVersion: 8.2.1}}\n",
        ),
        ("nodns.yaml", "base: base.yaml\n"),
    ]);
    let got = s.embed("child.yaml").unwrap();
    assert_eq!(got["dns"], y("[1.1.1.1]"));
    assert_eq!(got["minimumLimaVersion"], y("1.10.0"));
    assert_eq!(got["vmOpts"]["qemu"]["minimumVersion"], y("9.0.0"));
    assert_eq!(got["mountTypesUnsupported"], y("[9p, virtiofs]"));
    assert_eq!(s.embed("nodns.yaml").unwrap()["dns"], y("[8.8.8.8]"));
}

#[test]
fn nested_bases_are_merged_depth_first() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: {url: mid.yaml}\ncpus: 3\nprovision: [{script: child}]\n",
        ),
        (
            "mid.yaml",
            "base: [root.yaml]\nmemory: 3GiB\nprovision: [{script: mid}]\n",
        ),
        (
            "root.yaml",
            "cpus: 1\nmemory: 1GiB\ndisk: 9GiB\nprovision: [{script: root}]\n",
        ),
    ]);
    let got = s.embed("child.yaml").unwrap();
    assert_eq!(got["cpus"], y("3"));
    assert_eq!(got["memory"], y("3GiB"));
    assert_eq!(got["disk"], y("9GiB"));
    assert_eq!(
        got["provision"],
        y("[{script: root}, {script: mid}, {script: child}]")
    );
}

#[test]
fn a_loop_is_one_error_naming_the_chain() {
    let s = Store::new(&[
        ("a.yaml", "base: b.yaml\n"),
        ("b.yaml", "base: [c.yaml]\n"),
        ("c.yaml", "base: a.yaml\n"),
    ]);
    let err = s.embed("a.yaml").unwrap_err().to_string();
    assert!(err.contains("loop"), "{err}");
    assert!(err.contains("a.yaml → b.yaml → c.yaml → a.yaml"), "{err}");
    let s = Store::new(&[("self.yaml", "base: self.yaml\n")]);
    let err = s.embed("self.yaml").unwrap_err().to_string();
    assert!(err.contains("self.yaml → self.yaml"), "{err}");
}

#[test]
fn a_base_twice_and_bad_shapes_are_errors() {
    let s = Store::new(&[
        ("twice.yaml", "base: [b.yaml, b.yaml]\n"),
        ("b.yaml", "cpus: 1\n"),
        (
            "digest.yaml",
            "base: [{url: b.yaml, digest: 'sha256:00'}]\n",
        ),
        ("number.yaml", "base: [7]\n"),
        ("field.yaml", "base: [{uri: b.yaml}]\n"),
    ]);
    for (name, needle) in [
        ("twice.yaml", "included twice"),
        ("digest.yaml", "digest"),
        ("number.yaml", "base[0]"),
        ("field.yaml", "`uri`"),
    ] {
        let err = s.embed(name).unwrap_err().to_string();
        assert!(err.starts_with(name) && err.contains(needle), "{err}");
    }
}

#[test]
fn a_missing_base_names_it_and_the_template() {
    let s = Store::new(&[("child.yaml", "base: [nosuch.yaml]\ncpus: 1\n")]);
    let err = s.embed("child.yaml").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("child.yaml") && msg.contains("nosuch.yaml"),
        "{msg}"
    );
    assert!(matches!(err, BaseError::Load { .. }));
}

#[test]
fn an_unknown_field_in_a_base_names_the_base() {
    let s = Store::new(&[
        ("child.yaml", "base: bad.yaml\n"),
        ("bad.yaml", "cpus: 1\nmemroy: 2GiB\n"),
    ]);
    let err = s.embed("child.yaml").unwrap_err().to_string();
    assert!(err.contains("bad.yaml") && err.contains("memroy"), "{err}");
}

#[test]
fn mounts_disks_and_networks_combine_by_key() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: base.yaml\nmounts: [{location: /a}, {location: /b, mountPoint: /mnt/b}, {location: '*', writable: true}]\nadditionalDisks: [data]\nnetworks: [{interface: lima0, socket: /s}]\n",
        ),
        (
            "base.yaml",
            "mounts: [{location: /x, mountPoint: /mnt/b, writable: false, 9p: {cache: mmap}}, {location: /a, mountPoint: /a, sshfs: {cache: true}}]\nadditionalDisks: [{name: data, format: true, fsType: ext4}]\nnetworks: [{interface: lima0, lima: shared, metric: 100}]\n",
        ),
    ]);
    let got = s.embed("child.yaml").unwrap();
    // Entries combine in list order: the child's `*` makes both its mounts
    // writable before the base's /mnt/b entry (writable: false) is reached,
    // which then only adds its 9p settings; the base's /a adds the rest.
    assert_eq!(
        got["mounts"],
        y("[{location: /a, writable: true, mountPoint: /a, sshfs: {cache: true}}, {location: /b, mountPoint: /mnt/b, writable: true, 9p: {cache: mmap}}]")
    );
    assert_eq!(
        got["additionalDisks"],
        y("[{name: data, format: true, fsType: ext4}]")
    );
    // `socket` excludes the base's `lima`.
    assert_eq!(
        got["networks"],
        y("[{interface: lima0, socket: /s, metric: 100}]")
    );
}

#[test]
fn no_base_keeps_the_text_with_its_comments() {
    let t = Template {
        origin: "t.yaml".into(),
        text: "# hello\ncpus: 1\n".into(),
        suggested_name: "t".into(),
        relative_to: Relative::Dir("/".into()),
    };
    assert_eq!(embed(&t).unwrap(), "# hello\ncpus: 1\n");
}

#[test]
fn a_shipped_template_as_base_from_a_file_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("mine.yaml"),
        "base: [template:debian-12, extra.yaml]\ncpus: 1\nmemory: 1GiB\n",
    )
    .unwrap();
    // Relative to mine.yaml's folder, not the current one.
    std::fs::write(sub.join("extra.yaml"), "disk: 20GiB\ncpus: 2\n").unwrap();
    let t = template::locate(sub.join("mine.yaml").to_str().unwrap()).unwrap();
    let text = embed(&t).unwrap();
    let yaml = crate::config::LimaYaml::parse(&text, &t.origin).unwrap();
    let mut yaml64 = yaml.clone();
    yaml64.arch = Some("x86_64".into());
    let c = yaml64.resolve(&t.origin).unwrap();
    assert_eq!(c.cpus, 1);
    assert_eq!(c.memory, 1 << 30);
    assert_eq!(c.disk, 20 << 30);
    assert!(
        c.image.location.contains("debian-12-genericcloud-amd64"),
        "{}",
        c.image.location
    );
    assert!(yaml.base.is_none());
}

#[test]
fn relative_script_files_follow_the_template_that_names_them() {
    let s = Store::new(&[
        (
            "child.yaml",
            "base: sub/base.yaml\nprovision: [{mode: system, file: mine.sh}, {file: /abs.sh}]\n",
        ),
        (
            "sub/base.yaml",
            "provision: [{file: {url: setup.sh}}]\nprobes: [{file: https://h/p.sh}]\n",
        ),
    ]);
    let mut t = s.template("sub/base.yaml");
    t.relative_to = Relative::Dir("/t/sub".into());
    let mut doc = parse(&t.text, &t.origin).unwrap();
    assert!(absolute_files(&mut doc, &t));
    assert_eq!(doc["provision"], y("[{file: {url: /t/sub/setup.sh}}]"));
    assert_eq!(doc["probes"], y("[{file: 'https://h/p.sh'}]"));
    let got = s.embed("child.yaml").unwrap();
    // The Store loads every template relative to /t, so the base's own
    // file lands there; the child's is relative to its folder.
    assert_eq!(
        got["provision"],
        y("[{file: {url: /t/setup.sh}}, {mode: system, file: /t/mine.sh}, {file: /abs.sh}]")
    );
}

#[test]
fn a_template_without_base_but_with_a_relative_script_is_rewritten() {
    let t = Template {
        origin: "t.yaml".into(),
        text: "# note\nprovision: [{file: a.sh}]\n".into(),
        suggested_name: "t".into(),
        relative_to: Relative::Dir("/src".into()),
    };
    let out: Value = serde_yaml_ng::from_str(&embed(&t).unwrap()).unwrap();
    assert_eq!(out, y("provision: [{file: /src/a.sh}]"));
}
