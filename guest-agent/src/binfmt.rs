//! Foreign architectures: QEMU user-mode emulators registered with the
//! kernel's `binfmt_misc`, so an arm64 program (or a `docker run --platform
//! linux/arm64` container) runs on an x86_64 guest.
//!
//! The handlers are not ours to invent: Debian's `qemu-user-static` ships
//! one file per emulator in `/usr/lib/binfmt.d` (systemd's format, the
//! register line itself) and `/usr/share/binfmts` (`update-binfmts`' format,
//! `key value` lines). At boot, with our agent as init, neither systemd nor
//! `update-binfmts` runs, so the agent reads those files from the root
//! filesystem and writes each handler to `/proc/sys/fs/binfmt_misc/register`
//! itself:
//!
//! ```text
//! lima.binfmt=… (kernel command line) ─ Wanted
//! /usr/lib/binfmt.d/qemu-*.conf ─┐
//! /usr/share/binfmts/qemu-*      ┴─ handlers ─ select (skip this machine's
//!                                   own arch, emulators that are missing)
//!                                   └─ register with `F` ─ Report (log line)
//! ```
//!
//! Every handler gets the `F` (fix binary) flag: the kernel opens the
//! emulator when the handler is registered, in the agent's root, so a
//! container whose root has no `/usr/bin/qemu-*` still runs foreign
//! binaries. Only `qemu-*` handlers are considered; others in the same
//! folders (Python's, Java's) are left to their packages.
//!
//! Reading and registering go through [`Registry`], so the selection is
//! unit-tested without root or a kernel.
use std::path::{Path, PathBuf};

/// The kernel module (`CONFIG_BINFMT_MISC=m` in Debian's kernel).
pub const MODULE: &str = "binfmt_misc";
/// Where the `binfmt_misc` filesystem lives.
pub const MOUNT_POINT: &str = "/proc/sys/fs/binfmt_misc";
/// systemd's `binfmt.d` folder, in the root filesystem.
const CONF_DIR: &str = "usr/lib/binfmt.d";
/// `update-binfmts`' folder, in the root filesystem.
const BINFMTS_DIR: &str = "usr/share/binfmts";
/// Only QEMU's handlers are ours to register.
const PREFIX: &str = "qemu-";

/// Which emulators to register: `lima.binfmt=` on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Wanted {
    /// No parameter: every emulator the image has, but the machine's own.
    #[default]
    All,
    /// `lima.binfmt=none`.
    Off,
    /// `lima.binfmt=aarch64,arm`: QEMU's names for the architectures.
    Only(Vec<String>),
}

impl Wanted {
    /// The value of `lima.binfmt=`.
    pub fn parse(value: &str) -> Self {
        match value {
            "none" | "off" => Wanted::Off,
            "all" | "" => Wanted::All,
            list => Wanted::Only(
                list.split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        }
    }
}

/// One `binfmt_misc` handler, with its fields as the kernel reads them
/// (magic and mask keep their `\xHH` escapes: the kernel decodes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// `qemu-aarch64`: the entry's name under [`MOUNT_POINT`].
    pub name: String,
    /// `M` (magic bytes) or `E` (file name extension).
    pub kind: char,
    pub offset: String,
    pub magic: String,
    pub mask: String,
    /// The emulator, absolute.
    pub interpreter: String,
    pub flags: String,
}

impl Handler {
    /// The emulated architecture in QEMU's words (`aarch64`, `arm`).
    pub fn arch(&self) -> &str {
        self.name.strip_prefix(PREFIX).unwrap_or(&self.name)
    }

    /// A register line, systemd's `binfmt.d` format:
    /// `:name:type:offset:magic:mask:interpreter:flags`, the first character
    /// being the separator. Comments (`#`, `;`) and blank lines are not
    /// lines for this.
    pub fn parse_register_line(line: &str) -> Result<Self, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        let mut chars = line.chars();
        let sep = chars
            .next()
            .ok_or_else(|| "an empty register line".to_string())?;
        let fields: Vec<&str> = chars.as_str().split(sep).collect();
        if !(6..=7).contains(&fields.len()) {
            return Err(format!(
                "`{line}` has {} fields; a register line has 7 \
                 (:name:type:offset:magic:mask:interpreter:flags)",
                fields.len()
            ));
        }
        let kind = match fields[1] {
            "M" => 'M',
            "E" => 'E',
            other => return Err(format!("type `{other}` is neither M nor E in `{line}`")),
        };
        Self::checked(Handler {
            name: fields[0].to_string(),
            kind,
            offset: fields[2].to_string(),
            magic: fields[3].to_string(),
            mask: fields[4].to_string(),
            interpreter: fields[5].to_string(),
            flags: fields.get(6).copied().unwrap_or_default().to_string(),
        })
    }

    /// An `update-binfmts` file (`/usr/share/binfmts/NAME`): `key value`
    /// lines (`interpreter`, `magic`, `offset`, `mask`, `extension`,
    /// `credentials`, `fix_binary`, `preserve`); `name` is the file's name.
    pub fn parse_binfmts(name: &str, text: &str) -> Result<Self, String> {
        let mut h = Handler {
            name: name.to_string(),
            kind: 'M',
            offset: String::new(),
            magic: String::new(),
            mask: String::new(),
            interpreter: String::new(),
            flags: String::new(),
        };
        let mut extension = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            let yes = value == "yes";
            match key {
                "interpreter" => h.interpreter = value.to_string(),
                "magic" => h.magic = value.to_string(),
                "offset" => h.offset = value.to_string(),
                "mask" => h.mask = value.to_string(),
                "extension" => extension = Some(value.to_string()),
                // C implies O for the kernel.
                "credentials" if yes => h.flags.push('C'),
                "preserve" if yes => h.flags.push('P'),
                "fix_binary" if yes => h.flags.push('F'),
                _ => {}
            }
        }
        if h.magic.is_empty() {
            match extension {
                Some(ext) => {
                    h.kind = 'E';
                    h.magic = ext;
                }
                None => return Err(format!("{name}: neither `magic` nor `extension`")),
            }
        }
        Self::checked(h).map_err(|e| format!("{name}: {e}"))
    }

    fn checked(h: Handler) -> Result<Self, String> {
        if h.name.is_empty() || h.name.contains('/') || h.name == "register" || h.name == "status" {
            return Err(format!("`{}` cannot name a handler", h.name));
        }
        if h.magic.is_empty() {
            return Err(format!("{}: no magic", h.name));
        }
        if !h.interpreter.starts_with('/') {
            return Err(format!(
                "{}: interpreter `{}` is not an absolute path",
                h.name, h.interpreter
            ));
        }
        Ok(h)
    }

    /// The line for `/proc/sys/fs/binfmt_misc/register`, with the `F` flag
    /// added: the kernel opens the emulator now, so it works in containers.
    pub fn register_line(&self) -> String {
        let mut flags = self.flags.clone();
        if !flags.contains('F') {
            flags.push('F');
        }
        format!(
            ":{}:{}:{}:{}:{}:{}:{}",
            self.name, self.kind, self.offset, self.magic, self.mask, self.interpreter, flags
        )
    }
}

/// The handlers of QEMU emulators that a root filesystem describes: its
/// `binfmt.d` files first, then `update-binfmts` files for names those did
/// not have. Files that do not parse are returned as warnings.
pub fn handlers_in(root: &Path) -> (Vec<Handler>, Vec<String>) {
    let mut found: Vec<Handler> = Vec::new();
    let mut warnings = Vec::new();
    for (path, _) in qemu_files(&root.join(CONF_DIR), ".conf") {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
        for line in lines {
            match Handler::parse_register_line(line) {
                Ok(h) => found.push(h),
                Err(e) => warnings.push(format!("{}: {e}", path.display())),
            }
        }
    }
    for (path, name) in qemu_files(&root.join(BINFMTS_DIR), "") {
        if found.iter().any(|h| h.name == name) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match Handler::parse_binfmts(&name, &text) {
            Ok(h) => found.push(h),
            Err(e) => warnings.push(format!("{}: {e}", path.display())),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.dedup_by(|a, b| a.name == b.name);
    (found, warnings)
}

/// `qemu-*` files in `dir` whose name ends with `suffix`, with the name
/// less the suffix, sorted.
fn qemu_files(dir: &Path, suffix: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(suffix)?;
            (name.starts_with(PREFIX) && !name.starts_with('.'))
                .then(|| (e.path(), name.to_string()))
        })
        .collect();
    files.sort();
    files
}

/// The architectures this machine runs itself (QEMU's names), from
/// `uname -m`: their emulators are never registered.
pub fn native_arches(machine: &str) -> Vec<&'static str> {
    match machine {
        "x86_64" => vec!["x86_64", "i386"],
        "aarch64" => vec!["aarch64"],
        "riscv64" => vec!["riscv64"],
        "ppc64le" => vec!["ppc64le"],
        "s390x" => vec!["s390x"],
        _ => Vec::new(),
    }
}

/// What the kernel's `binfmt_misc` offers; the real one is [`Kernel`].
pub trait Registry {
    /// Whether a handler of this name is registered already.
    fn registered(&self, name: &str) -> bool;
    /// Writes a register line.
    fn register(&self, line: &str) -> std::io::Result<()>;
    /// Whether the emulator exists (following links) in the agent's root.
    fn interpreter_exists(&self, path: &str) -> bool;
}

/// What [`register`] did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Names registered now.
    pub registered: Vec<String>,
    /// Registered before we looked (by an earlier agent, or the distro).
    pub already: Vec<String>,
    /// Asked for (`lima.binfmt=`) but the image has no emulator for them.
    pub missing: Vec<String>,
    /// `name: why`.
    pub failed: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| v.join(", ");
        if self.registered.is_empty() && self.already.is_empty() {
            write!(f, "no emulators registered")?;
        } else if self.registered.is_empty() {
            write!(f, "emulators registered already: {}", list(&self.already))?;
        } else {
            write!(f, "registered {} (flag F)", list(&self.registered))?;
            if !self.already.is_empty() {
                write!(f, "; already there: {}", list(&self.already))?;
            }
        }
        if !self.missing.is_empty() {
            write!(f, "; no emulator in this image for {}", list(&self.missing))?;
        }
        if !self.failed.is_empty() {
            write!(f, "; failed: {}", self.failed.join("; "))?;
        }
        Ok(())
    }
}

/// Registers the `wanted` handlers among `handlers`, skipping `native`
/// architectures and handlers whose emulator the image lacks.
pub fn register(
    handlers: &[Handler],
    wanted: &Wanted,
    native: &[&str],
    registry: &dyn Registry,
) -> Report {
    let mut report = Report::default();
    let usable =
        |h: &&Handler| !native.contains(&h.arch()) && registry.interpreter_exists(&h.interpreter);
    let chosen: Vec<&Handler> = match wanted {
        Wanted::Off => return report,
        Wanted::All => handlers.iter().filter(usable).collect(),
        Wanted::Only(arches) => {
            let mut chosen = Vec::new();
            for arch in arches {
                match handlers.iter().filter(usable).find(|h| h.arch() == arch) {
                    Some(h) => chosen.push(h),
                    None => report.missing.push(arch.clone()),
                }
            }
            chosen
        }
    };
    for h in chosen {
        if registry.registered(&h.name) {
            report.already.push(h.name.clone());
            continue;
        }
        match registry.register(&h.register_line()) {
            Ok(()) => report.registered.push(h.name.clone()),
            Err(e) => report.failed.push(format!("{}: {e}", h.name)),
        }
    }
    report
}

/// The running kernel's `binfmt_misc`, mounted at [`MOUNT_POINT`].
pub struct Kernel;

impl Registry for Kernel {
    fn registered(&self, name: &str) -> bool {
        Path::new(MOUNT_POINT).join(name).exists()
    }

    fn register(&self, line: &str) -> std::io::Result<()> {
        // One write per handler: the kernel takes the whole line or nothing.
        std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new(MOUNT_POINT).join("register"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
    }

    fn interpreter_exists(&self, path: &str) -> bool {
        Path::new(path).exists()
    }
}

/// At boot (as init, after the switch into the image's root): mount
/// `binfmt_misc` if needed and register the wanted emulators, then log
/// what happened. The module is loaded with the others ([`MODULE`]).
pub fn setup(wanted: &Wanted) {
    if *wanted == Wanted::Off {
        tracing::info!("binfmt: off (lima.binfmt=none)");
        return;
    }
    let (handlers, warnings) = handlers_in(Path::new("/"));
    for w in &warnings {
        tracing::warn!("binfmt: {w}");
    }
    if handlers.is_empty() && *wanted == Wanted::All {
        tracing::info!("binfmt: no QEMU emulators in this image");
        return;
    }
    let register_file = Path::new(MOUNT_POINT).join("register");
    if !register_file.exists() {
        if let Err(e) = crate::sys::mount("binfmt_misc", MOUNT_POINT, "binfmt_misc", "") {
            tracing::warn!("binfmt: cannot mount binfmt_misc on {MOUNT_POINT}: {e}");
            return;
        }
    }
    let machine = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = register(&handlers, wanted, &native_arches(&machine), &Kernel);
    if report.failed.is_empty() && report.missing.is_empty() {
        tracing::info!("binfmt: {report}");
    } else {
        tracing::warn!("binfmt: {report}");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;

    /// Debian bookworm's `qemu-user-static` 7.2, as installed.
    const AARCH64_CONF: &str = r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";
    const AARCH64_BINFMTS: &str = r"package qemu-user-static
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
magic \x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00
offset 0
mask \xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff
credentials no
fix_binary yes
preserve yes
";
    const ARM_CONF: &str = r":qemu-arm:M::\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/arm-binfmt-P:OPF";

    #[test]
    fn reads_debians_binfmt_d_line() {
        let h = Handler::parse_register_line(AARCH64_CONF).unwrap();
        assert_eq!(h.name, "qemu-aarch64");
        assert_eq!(h.arch(), "aarch64");
        assert_eq!(h.kind, 'M');
        assert_eq!(h.offset, "");
        assert!(h.magic.starts_with(r"\x7f\x45\x4c\x46\x02"));
        assert!(h.magic.ends_with(r"\xb7\x00"));
        assert!(h.mask.ends_with(r"\xfe\xff\xff\xff"));
        assert_eq!(h.interpreter, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P");
        assert_eq!(h.flags, "OPF");
        // Already fixed: the line goes back to the kernel as it came.
        assert_eq!(h.register_line(), AARCH64_CONF);
    }

    #[test]
    fn reads_debians_update_binfmts_file_to_the_same_handler() {
        let h = Handler::parse_binfmts("qemu-aarch64", AARCH64_BINFMTS).unwrap();
        let conf = Handler::parse_register_line(AARCH64_CONF).unwrap();
        assert_eq!(h.name, conf.name);
        assert_eq!(h.magic, conf.magic);
        assert_eq!(h.mask, conf.mask);
        assert_eq!(h.interpreter, conf.interpreter);
        assert_eq!(h.offset, "0");
        assert_eq!(h.flags, "FP");
    }

    #[test]
    fn f_is_added_to_a_handler_without_it() {
        let h =
            Handler::parse_register_line(":qemu-x:M::\\x7fELF::/usr/bin/qemu-x-static:").unwrap();
        assert_eq!(
            h.register_line(),
            ":qemu-x:M::\\x7fELF::/usr/bin/qemu-x-static:F"
        );
        let h =
            Handler::parse_register_line(":qemu-x:M::\\x7fELF::/usr/bin/qemu-x-static").unwrap();
        assert_eq!(h.flags, "");
        assert!(h.register_line().ends_with(":F"));
    }

    #[test]
    fn other_separators_and_extension_handlers() {
        let h = Handler::parse_register_line("|qemu-x|E||exe||/usr/bin/x|P").unwrap();
        assert_eq!(
            (h.kind, h.magic.as_str(), h.flags.as_str()),
            ('E', "exe", "P")
        );
        let h = Handler::parse_binfmts("qemu-y", "interpreter /usr/bin/y\nextension yy\n").unwrap();
        assert_eq!((h.kind, h.magic.as_str()), ('E', "yy"));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, needle) in [
            ("", "empty"),
            (":qemu-x:M:", "fields"),
            (":qemu-x:Z::\\x7f::/usr/bin/x:F", "neither M nor E"),
            (":qemu-x:M::\\x7f::usr/bin/x:F", "absolute"),
            (":../x:M::\\x7f::/usr/bin/x:F", "cannot name"),
            (":register:M::\\x7f::/usr/bin/x:F", "cannot name"),
            (":qemu-x:M::::/usr/bin/x:F", "no magic"),
        ] {
            let e = Handler::parse_register_line(line).unwrap_err();
            assert!(e.contains(needle), "{line:?}: {e}");
        }
        let e = Handler::parse_binfmts("qemu-z", "interpreter /usr/bin/z\n").unwrap_err();
        assert!(e.contains("qemu-z") && e.contains("magic"), "{e}");
    }

    #[test]
    fn wanted_from_the_kernel_parameter() {
        assert_eq!(Wanted::parse("none"), Wanted::Off);
        assert_eq!(Wanted::parse("all"), Wanted::All);
        assert_eq!(
            Wanted::parse("aarch64,,arm"),
            Wanted::Only(vec!["aarch64".into(), "arm".into()])
        );
    }

    #[test]
    fn finds_qemu_handlers_in_a_root_and_prefers_binfmt_d() {
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join(CONF_DIR);
        let binfmts = root.path().join(BINFMTS_DIR);
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&binfmts).unwrap();
        let w = |p: PathBuf, t: &str| std::fs::write(p, t).unwrap();
        w(
            conf.join("qemu-aarch64.conf"),
            &format!("# comment\n\n{AARCH64_CONF}\n"),
        );
        w(
            conf.join("python3.11.conf"),
            ":python3.11:M::\\x6f\\x0d::/usr/bin/python3.11:",
        );
        w(conf.join("qemu-broken.conf"), ":qemu-broken:M:\n");
        w(
            binfmts.join("qemu-aarch64"),
            "interpreter /elsewhere\nmagic \\x7f\n",
        );
        w(
            binfmts.join("qemu-arm"),
            &AARCH64_BINFMTS.replace("aarch64", "arm"),
        );
        w(
            binfmts.join("jar"),
            "interpreter /usr/bin/jexec\nmagic PK\\x03\\x04\n",
        );
        let (handlers, warnings) = handlers_in(root.path());
        let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["qemu-aarch64", "qemu-arm"]);
        assert_eq!(
            handlers[0],
            Handler::parse_register_line(AARCH64_CONF).unwrap()
        );
        assert_eq!(
            handlers[1].interpreter,
            "/usr/libexec/qemu-binfmt/arm-binfmt-P"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("qemu-broken.conf"), "{warnings:?}");
        // No folders at all: nothing, quietly.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(handlers_in(empty.path()), (Vec::new(), Vec::new()));
    }

    /// A kernel that records register lines.
    #[derive(Default)]
    struct FakeKernel {
        present: BTreeSet<String>,
        interpreters: BTreeSet<String>,
        lines: RefCell<Vec<String>>,
        refuse: bool,
    }

    impl Registry for FakeKernel {
        fn registered(&self, name: &str) -> bool {
            self.present.contains(name)
        }
        fn register(&self, line: &str) -> std::io::Result<()> {
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.lines.borrow_mut().push(line.to_string());
            Ok(())
        }
        fn interpreter_exists(&self, path: &str) -> bool {
            self.interpreters.contains(path)
        }
    }

    fn debian_handlers() -> Vec<Handler> {
        let x86 = AARCH64_CONF
            .replace("aarch64", "x86_64")
            .replace(r"\xb7\x00", r"\x3e\x00");
        [AARCH64_CONF, ARM_CONF, x86.as_str()]
            .iter()
            .map(|l| Handler::parse_register_line(l).unwrap())
            .collect()
    }

    fn kernel_with_all_emulators() -> FakeKernel {
        FakeKernel {
            interpreters: debian_handlers()
                .into_iter()
                .map(|h| h.interpreter)
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn registers_every_foreign_emulator_with_f_but_not_the_machines_own() {
        let k = kernel_with_all_emulators();
        let r = register(
            &debian_handlers(),
            &Wanted::All,
            &native_arches("x86_64"),
            &k,
        );
        assert_eq!(r.registered, ["qemu-aarch64", "qemu-arm"]);
        let lines = k.lines.borrow();
        assert_eq!(lines[0], AARCH64_CONF);
        assert!(lines.iter().all(|l| l.ends_with('F')), "{lines:?}");
        assert_eq!(r.to_string(), "registered qemu-aarch64, qemu-arm (flag F)");
        // On an arm64 machine, x86_64 is the foreign one.
        let k = kernel_with_all_emulators();
        let r = register(
            &debian_handlers(),
            &Wanted::All,
            &native_arches("aarch64"),
            &k,
        );
        assert_eq!(r.registered, ["qemu-arm", "qemu-x86_64"]);
    }

    #[test]
    fn only_the_named_architectures_and_missing_ones_reported() {
        let k = kernel_with_all_emulators();
        let wanted = Wanted::Only(vec!["aarch64".into(), "riscv64".into(), "x86_64".into()]);
        let r = register(&debian_handlers(), &wanted, &native_arches("x86_64"), &k);
        assert_eq!(r.registered, ["qemu-aarch64"]);
        assert_eq!(r.missing, ["riscv64", "x86_64"]);
        assert!(r
            .to_string()
            .contains("no emulator in this image for riscv64, x86_64"));
    }

    #[test]
    fn trimmed_emulators_are_skipped_and_registered_ones_kept() {
        let mut k = FakeKernel::default();
        k.interpreters
            .insert("/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into());
        k.present.insert("qemu-aarch64".into());
        let r = register(
            &debian_handlers(),
            &Wanted::All,
            &native_arches("x86_64"),
            &k,
        );
        assert!(r.registered.is_empty());
        assert_eq!(r.already, ["qemu-aarch64"]);
        assert!(k.lines.borrow().is_empty());
        assert_eq!(r.to_string(), "emulators registered already: qemu-aarch64");
    }

    #[test]
    fn off_registers_nothing_and_refusals_are_reported() {
        let k = kernel_with_all_emulators();
        let r = register(&debian_handlers(), &Wanted::Off, &[], &k);
        assert_eq!(r, Report::default());
        assert!(k.lines.borrow().is_empty());
        let k = FakeKernel {
            refuse: true,
            ..kernel_with_all_emulators()
        };
        let r = register(
            &debian_handlers(),
            &Wanted::All,
            &native_arches("x86_64"),
            &k,
        );
        assert_eq!(r.failed.len(), 2);
        assert!(r.failed[0].starts_with("qemu-aarch64: "), "{:?}", r.failed);
        assert!(r
            .to_string()
            .starts_with("no emulators registered; failed: "));
    }
}
