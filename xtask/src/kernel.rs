//! `cargo xtask kernel`: our own guest kernel, built from Debian's kernel
//! source with only what our guests use, everything built in.
//!
//! Debian's generic kernel spends most of a TCG boot initialising drivers
//! and subsystems no guest of ours has, and needs a module loading step at
//! every boot. This one starts from `make allnoconfig` and adds the options
//! of the fragments in `kernel/` (one file per capability: base, files,
//! ports, containers, binfmt_misc). After the configuration is resolved,
//! every option a fragment names is checked: one the source does not know,
//! or one whose dependencies left it with another value, fails the build
//! with a message naming the fragment, the option and its dependencies.
//!
//! The source is Debian's `linux-source-6.1` package (the same series and
//! patches as the kernel of Debian's images), downloaded with `apt-get
//! download`, so no root is needed. The result is cached by the package's
//! checksum, the fragments and [`RECIPE_VERSION`] in
//! `target/images/cache/kernel-<hash>/` (`vmlinux`, `config`,
//! `kernel.json`): a machine builds it once. `vmlinux` is the uncompressed
//! ELF QEMU starts at its PVH entry point.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::apt::{self, IndexedDeb};
use crate::cache::{images_dir, inputs_hash, scratch_dir};
use crate::cmd;
use crate::fsutil::{copy, file_name, remove_dir_if_present, write};

/// Bump whenever the recipe changes what it builds.
const RECIPE_VERSION: &str = "1";

/// Debian's kernel source package.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The fragments, in the order they are applied (`kernel/<name>.config`).
pub const FRAGMENTS: &[&str] = &["base", "files", "ports", "containers", "binfmt_misc"];

/// The kernel release carries this suffix (`CONFIG_LOCALVERSION`).
pub const RELEASE_SUFFIX: &str = "-lima";

/// A built kernel in the cache.
pub struct Built {
    /// `target/images/cache/kernel-<hash>`.
    pub dir: PathBuf,
    /// `<dir>/vmlinux`.
    pub vmlinux: PathBuf,
    /// `uname -r` in the guest, e.g. `6.1.192-lima`.
    pub release: String,
    /// The cache key (part of the images' keys).
    pub hash: String,
}

/// `kernel.json` in the cache entry.
#[derive(serde::Serialize, serde::Deserialize)]
struct KernelJson {
    release: String,
    source: String,
    fragments: Vec<String>,
    build_seconds: f64,
}

/// `cargo xtask kernel`: builds the kernel or finds it in the cache, and
/// returns the path of its `vmlinux`.
pub fn run() -> Result<PathBuf> {
    crate::setup::run()?;
    Ok(ensure()?.vmlinux)
}

/// The kernel, from the cache or built now.
pub fn ensure() -> Result<Built> {
    let started = Instant::now();
    let images = images_dir();
    let downloads = images.join("download");
    fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let source = apt::download(&resolve_source(&downloads)?, &downloads)?;
    let fragments = Fragment::read_all(&cmd::root().join("kernel"))?;
    let mut inputs: Vec<(String, Vec<u8>)> = vec![
        ("recipe".into(), RECIPE_VERSION.into()),
        ("source".into(), source.sha256.clone().into_bytes()),
    ];
    for f in &fragments {
        inputs.push((format!("fragment {}", f.name), f.text.clone().into_bytes()));
    }
    let labelled: Vec<(&str, &[u8])> = inputs
        .iter()
        .map(|(l, b)| (l.as_str(), b.as_slice()))
        .collect();
    let hash = inputs_hash(&labelled);
    let dir = images.join("cache").join(format!("kernel-{hash}"));
    if let Some(built) = cached(&dir, &hash)? {
        eprintln!(
            "kernel: cached {} ({})",
            built.release,
            built.vmlinux.display()
        );
        return Ok(built);
    }

    let scratch = scratch_dir(Some("kernel"))?;
    remove_dir_if_present(&scratch)?;
    let partial = scratch.join("out");
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let built = (|| -> Result<String> {
        let tree = extract(&source.path, &scratch)?;
        configure(&tree, &fragments, &scratch.join("fragments.config"))?;
        let release = build(&tree)?;
        ensure!(
            release.ends_with(RELEASE_SUFFIX),
            "the built kernel's release is {release}, without the {RELEASE_SUFFIX} suffix \
             (kernel/base.config sets CONFIG_LOCALVERSION)"
        );
        let elf = fs::read(tree.join("vmlinux"))
            .with_context(|| format!("the build made no {}", tree.join("vmlinux").display()))?;
        ensure!(
            crate::pvh::has_pvh_entry(&elf)?,
            "the built vmlinux has no PVH entry point (kernel/base.config sets CONFIG_PVH)"
        );
        copy(&tree.join("vmlinux"), &partial.join("vmlinux"), 0o644)?;
        copy(&tree.join(".config"), &partial.join("config"), 0o644)?;
        copy(
            &tree.join("modules.builtin"),
            &partial.join("modules.builtin"),
            0o644,
        )?;
        let json = KernelJson {
            release: release.clone(),
            source: file_name(&source.path),
            fragments: fragments.iter().map(|f| f.name.clone()).collect(),
            build_seconds: started.elapsed().as_secs_f64(),
        };
        write(
            &partial.join("kernel.json"),
            (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
            0o644,
        )?;
        // On a fresh clone the kernel is the first thing cached.
        let cache = dir.parent().expect("the cache entry has a parent");
        fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
        // A concurrent build that got there first is as good as ours.
        if let Err(e) = fs::rename(&partial, &dir) {
            if !dir.join("kernel.json").is_file() {
                return Err(e).with_context(|| {
                    format!("cannot move {} to {}", partial.display(), dir.display())
                });
            }
        }
        Ok(release)
    })();
    // The source tree is 1.5 GB; never leave it behind.
    remove_dir_if_present(&scratch)?;
    let release = built?;
    eprintln!(
        "kernel: built {release} from {} in {:.0} s -> {}",
        file_name(&source.path),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    cached(&dir, &hash)?.with_context(|| format!("{} is incomplete", dir.display()))
}

/// The cache entry at `dir`, if it is complete.
fn cached(dir: &Path, hash: &str) -> Result<Option<Built>> {
    let json = dir.join("kernel.json");
    let Ok(text) = fs::read_to_string(&json) else {
        return Ok(None);
    };
    let parsed: KernelJson =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", json.display()))?;
    let vmlinux = dir.join("vmlinux");
    if !vmlinux.is_file() {
        return Ok(None);
    }
    Ok(Some(Built {
        dir: dir.to_path_buf(),
        vmlinux,
        release: parsed.release,
        hash: hash.to_string(),
    }))
}

/// The source package as the index names it, remembered until the package
/// lists change ([`apt::remembered`]).
fn resolve_source(downloads: &Path) -> Result<IndexedDeb> {
    apt::remembered(&downloads.join("kernel-source.json"), || {
        let mut debs = apt::print_uris(&[SOURCE_PACKAGE])
            .with_context(|| format!("apt knows no {SOURCE_PACKAGE}; run `apt-get update`"))?;
        Ok(debs.remove(0))
    })
}

/// Unpacks the package and the source tarball it carries into `scratch`;
/// returns the source tree.
fn extract(deb: &Path, scratch: &Path) -> Result<PathBuf> {
    let unpacked = scratch.join("deb");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
    let usr_src = unpacked.join("usr/src");
    let tarball = fs::read_dir(&usr_src)
        .with_context(|| format!("{} has no usr/src", deb.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .with_context(|| format!("{} has no usr/src/*.tar.xz", deb.display()))?;
    cmd::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(scratch),
    )?;
    remove_dir_if_present(&unpacked)?;
    let stem = file_name(&tarball);
    let tree = scratch.join(stem.trim_end_matches(".tar.xz"));
    ensure!(
        tree.join("Makefile").is_file(),
        "{} did not unpack into {}",
        tarball.display(),
        tree.display()
    );
    Ok(tree)
}

/// A `make` in the source tree for x86-64, quiet, named build user and host
/// (the kernel prints them at boot).
fn make(tree: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(tree)
        .arg("-s")
        .arg("ARCH=x86_64")
        .env("KBUILD_BUILD_USER", "lima")
        .env("KBUILD_BUILD_HOST", "lima-rs");
    c
}

/// `make allnoconfig` with the fragments applied, then the check that the
/// resolved configuration holds every option as the fragments set it.
fn configure(tree: &Path, fragments: &[Fragment], merged: &Path) -> Result<()> {
    let wanted = merge(fragments)?;
    let mut text = String::new();
    for (name, (value, _)) in &wanted {
        text += &value.line(name);
        text.push('\n');
    }
    write(merged, text.as_bytes(), 0o644)?;
    cmd::run(
        make(tree)
            .arg(format!("KCONFIG_ALLCONFIG={}", merged.display()))
            .arg("allnoconfig"),
    )?;
    let resolved = parse_config(
        &fs::read_to_string(tree.join(".config")).context("make allnoconfig wrote no .config")?,
    );
    let known = kconfig_symbols(tree)?;
    check(&wanted, &resolved, &known)
}

/// Builds `vmlinux`; returns the kernel release.
fn build(tree: &Path) -> Result<String> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!("kernel: building vmlinux with {jobs} jobs (about 10 minutes on 2 cores)");
    // stdout to our stderr: the last line of our stdout is the result.
    cmd::run(
        make(tree)
            .arg(format!("-j{jobs}"))
            .arg("vmlinux")
            .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?)),
    )?;
    let release = cmd::query_text(make(tree).arg("kernelrelease"))?;
    Ok(release.trim().to_string())
}

/// A value a fragment gives an option.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    /// `CONFIG_X=y`
    Yes,
    /// `# CONFIG_X is not set`
    No,
    /// `CONFIG_X=<number or "string">`, kept as written.
    Other(String),
}

impl Value {
    fn line(&self, name: &str) -> String {
        match self {
            Value::Yes => format!("CONFIG_{name}=y"),
            Value::No => format!("# CONFIG_{name} is not set"),
            Value::Other(v) => format!("CONFIG_{name}={v}"),
        }
    }
}

/// One `kernel/<name>.config` file.
struct Fragment {
    name: String,
    path: PathBuf,
    text: String,
    /// Option name (without `CONFIG_`) and value, in file order.
    options: Vec<(String, Value)>,
}

impl Fragment {
    fn read_all(dir: &Path) -> Result<Vec<Fragment>> {
        FRAGMENTS
            .iter()
            .map(|name| {
                let path = dir.join(format!("{name}.config"));
                let text = fs::read_to_string(&path).with_context(|| {
                    format!("cannot read the kernel fragment {}", path.display())
                })?;
                let options = parse_fragment(&text)
                    .with_context(|| format!("kernel fragment {}", path.display()))?;
                Ok(Fragment {
                    name: name.to_string(),
                    path,
                    text,
                    options,
                })
            })
            .collect()
    }
}

/// The options of a fragment: `CONFIG_X=VALUE` and `# CONFIG_X is not set`
/// lines; other `#` lines are comments.
fn parse_fragment(text: &str) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                out.push((checked_name(name, i)?, Value::No));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line
            .strip_prefix("CONFIG_")
            .and_then(|rest| rest.split_once('='))
        else {
            bail!(
                "line {}: `{line}` is neither CONFIG_NAME=VALUE, `# CONFIG_NAME is not set` \
                 nor a comment",
                i + 1
            );
        };
        let value = match value {
            "y" => Value::Yes,
            "n" => Value::No,
            "m" => bail!(
                "line {}: CONFIG_{name}=m asks for a module; this kernel has no module \
                 support, use =y",
                i + 1
            ),
            v => Value::Other(v.to_string()),
        };
        out.push((checked_name(name, i)?, value));
    }
    Ok(out)
}

fn checked_name(name: &str, line: usize) -> Result<String> {
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "line {}: `{name}` is not an option name (A-Z, 0-9, _)",
        line + 1
    );
    Ok(name.to_string())
}

/// Every option of every fragment, once; two fragments giving one option
/// different values is an error.
fn merge(fragments: &[Fragment]) -> Result<BTreeMap<String, (Value, String)>> {
    let mut merged: BTreeMap<String, (Value, String)> = BTreeMap::new();
    for f in fragments {
        for (name, value) in &f.options {
            match merged.get(name) {
                Some((v, by)) if v != value => bail!(
                    "kernel fragments disagree: {} has {}, {} has {}; make them agree",
                    by,
                    v.line(name),
                    f.path.display(),
                    value.line(name)
                ),
                Some(_) => {}
                None => {
                    merged.insert(name.clone(), (value.clone(), f.path.display().to_string()));
                }
            }
        }
    }
    Ok(merged)
}

/// A resolved `.config`: option name (without `CONFIG_`) → value.
fn parse_config(text: &str) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            out.insert(name.to_string(), Value::No);
        } else if let Some((name, value)) =
            line.strip_prefix("CONFIG_").and_then(|r| r.split_once('='))
        {
            let value = match value {
                "y" => Value::Yes,
                v => Value::Other(v.to_string()),
            };
            out.insert(name.to_string(), value);
        }
    }
    out
}

/// A symbol the Kconfig files define, with its `depends on` lines.
type Symbols = HashMap<String, Vec<String>>;

/// Every `config`/`menuconfig` symbol of the source tree's Kconfig files.
fn kconfig_symbols(tree: &Path) -> Result<Symbols> {
    let mut symbols = Symbols::new();
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ty = entry.file_type()?;
            if ty.is_dir() && !name.starts_with('.') {
                dirs.push(entry.path());
            } else if ty.is_file() && name.starts_with("Kconfig") {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                read_kconfig(&text, &mut symbols);
            }
        }
    }
    ensure!(
        !symbols.is_empty(),
        "found no Kconfig symbols under {}",
        tree.display()
    );
    Ok(symbols)
}

fn read_kconfig(text: &str, symbols: &mut Symbols) {
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match (words.next(), words.next()) {
            (Some("config" | "menuconfig"), Some(sym)) => {
                symbols.entry(sym.to_string()).or_default();
                current = Some(sym.to_string());
            }
            (Some("depends"), Some("on")) => {
                if let Some(sym) = &current {
                    let deps = symbols.entry(sym.clone()).or_default();
                    let dep = t
                        .trim_start_matches("depends")
                        .trim_start()
                        .trim_start_matches("on");
                    deps.push(dep.trim().to_string());
                }
            }
            (
                Some(
                    "choice" | "endchoice" | "menu" | "endmenu" | "if" | "endif" | "comment"
                    | "source",
                ),
                _,
            ) => {
                current = None;
            }
            _ => {}
        }
    }
}

/// Compares what the fragments asked for with what Kconfig resolved, and
/// lists every difference in one error.
fn check(
    wanted: &BTreeMap<String, (Value, String)>,
    resolved: &HashMap<String, Value>,
    known: &Symbols,
) -> Result<()> {
    let mut problems = Vec::new();
    for (name, (value, fragment)) in wanted {
        let Some(deps) = known.get(name) else {
            problems.push(format!(
                "{fragment} names CONFIG_{name}, which {SOURCE_PACKAGE} does not have: \
                 remove it or correct its name"
            ));
            continue;
        };
        let got = resolved.get(name).cloned().unwrap_or(Value::No);
        if &got == value {
            continue;
        }
        let why = if deps.is_empty() {
            String::new()
        } else {
            format!(" (it depends on {})", deps.join("; "))
        };
        problems.push(format!(
            "{fragment} sets {}, but the resolved configuration has {}{why}: add what it \
             depends on, or drop it",
            value.line(name),
            got.line(name)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "the kernel configuration does not hold what its fragments ask for:\n  {}",
        problems.join("\n  ")
    )
}

/// The lines of the build's `modules.builtin` (`kernel/fs/fuse/fuse.ko`):
/// the modules a modular kernel would have, built into this one.
pub fn builtin_modules(built: &Built) -> Result<Vec<String>> {
    let path = built.dir.join("modules.builtin");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_parse_options_and_comments() {
        let text = "# a comment\nCONFIG_A=y\n# CONFIG_B is not set\n\nCONFIG_C=\"-lima\"\n";
        assert_eq!(
            parse_fragment(text).unwrap(),
            [
                ("A".to_string(), Value::Yes),
                ("B".to_string(), Value::No),
                ("C".to_string(), Value::Other("\"-lima\"".into())),
            ]
        );
        let err = parse_fragment("CONFIG_A=m\n").unwrap_err().to_string();
        assert!(err.contains("no module support"), "{err}");
        let err = parse_fragment("A=y\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_repository_fragments_parse_and_agree() {
        let fragments = Fragment::read_all(&cmd::root().join("kernel")).unwrap();
        let merged = merge(&fragments).unwrap();
        assert_eq!(merged["MODULES"].0, Value::No);
        assert_eq!(merged["PVH"].0, Value::Yes);
        assert_eq!(
            merged["LOCALVERSION"].0,
            Value::Other(format!("\"{RELEASE_SUFFIX}\""))
        );
    }

    #[test]
    fn disagreeing_fragments_are_refused() {
        let f = |name: &str, text: &str| Fragment {
            name: name.into(),
            path: PathBuf::from(format!("kernel/{name}.config")),
            text: text.into(),
            options: parse_fragment(text).unwrap(),
        };
        let err = merge(&[f("a", "CONFIG_X=y\n"), f("b", "# CONFIG_X is not set\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kernel/a.config") && err.contains("kernel/b.config"),
            "{err}"
        );
        merge(&[f("a", "CONFIG_X=y\n"), f("b", "CONFIG_X=y\n")]).unwrap();
    }

    #[test]
    fn check_names_unknown_and_unmet_options() {
        let mut known = Symbols::new();
        read_kconfig(
            "config KPROBES\n\tbool \"Kprobes\"\n\tdepends on MODULES\n\tdepends on HAVE_KPROBES\n\
             menuconfig NET\n\tbool \"Networking\"\n",
            &mut known,
        );
        let wanted: BTreeMap<_, _> = [
            ("KPROBES", Value::Yes),
            ("NET", Value::Yes),
            ("NOPE", Value::Yes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), (v, "kernel/ports.config".to_string())))
        .collect();
        let resolved = parse_config("# CONFIG_KPROBES is not set\nCONFIG_NET=y\n");
        let err = check(&wanted, &resolved, &known).unwrap_err().to_string();
        assert!(
            err.contains("CONFIG_NOPE, which linux-source-6.1 does not have"),
            "{err}"
        );
        assert!(err.contains("depends on MODULES; HAVE_KPROBES"), "{err}");
        assert!(!err.contains("CONFIG_NET"), "{err}");
        let resolved = parse_config("CONFIG_KPROBES=y\nCONFIG_NET=y\n");
        let wanted: BTreeMap<_, _> = wanted.into_iter().filter(|(k, _)| k != "NOPE").collect();
        check(&wanted, &resolved, &known).unwrap();
    }
}

/// Against the real source: `cargo xtask kernel` (or `image`) downloads it
/// first, which `cargo xtask test` does before the tests run.
#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn a_fragment_naming_an_unknown_or_unmet_option_fails_the_configuration() {
        let downloads = images_dir().join("download");
        let deb = resolve_source(&downloads)
            .ok()
            .map(|d| downloads.join(d.file))
            .filter(|p| p.is_file())
            .expect("the kernel source package is not downloaded: run `cargo xtask kernel`");
        let scratch = tempfile::tempdir_in(images_dir()).unwrap();
        let tree = extract(&deb, scratch.path()).unwrap();
        let fragments_dir = scratch.path().join("fragments");
        fs::create_dir_all(&fragments_dir).unwrap();
        for name in FRAGMENTS {
            let mut text =
                fs::read_to_string(cmd::root().join(format!("kernel/{name}.config"))).unwrap();
            if *name == "ports" {
                text += "CONFIG_NO_SUCH_OPTION=y\nCONFIG_KPROBES=y\n";
            }
            fs::write(fragments_dir.join(format!("{name}.config")), text).unwrap();
        }
        let fragments = Fragment::read_all(&fragments_dir).unwrap();
        let err = configure(&tree, &fragments, &scratch.path().join("merged.config"))
            .unwrap_err()
            .to_string();
        let ports = fragments_dir.join("ports.config").display().to_string();
        assert!(
            err.contains(&format!(
                "{ports} names CONFIG_NO_SUCH_OPTION, which linux-source-6.1 does not have"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "{ports} sets CONFIG_KPROBES=y, but the resolved configuration has \
                 # CONFIG_KPROBES is not set (it depends on MODULES"
            )),
            "{err}"
        );
        // Nothing else is reported: the repository's own fragments hold.
        assert_eq!(err.matches(&ports).count(), 2, "{err}");
    }
}
