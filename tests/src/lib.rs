//! The one VM test fixture: a private `LIMA_HOME`, the real `limactl` and
//! `lima` binaries, helpers to run them, and a teardown that always runs
//! (force-deletes every instance) and prints the VM logs when a test failed.
//!
//! Binaries come from `$LIMA_BIN_DIR` (set by `cargo xtask test`), else from
//! the `target/<profile>` directory these tests were built into. They find
//! the guest image next to themselves (`target/images`), built by
//! `cargo xtask image`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod busybox;
pub mod golden;
pub mod http;

pub struct Lima {
    /// Commands run as this ordinary user (`Lima::as_ordinary_user`), not
    /// as the test's own.
    pub user: Option<TestUser>,
    pub home: tempfile::TempDir,
    /// `XDG_CACHE_HOME` of every command: downloads land here, not in the
    /// user's cache.
    pub cache: tempfile::TempDir,
    pub bin_dir: PathBuf,
}

pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIMA_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/debug/deps/<test-binary> → target/debug
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Output of a finished command, with helpers for assertions.
pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code(),
            0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    /// stderr with each of limactl's log lines (Lima's text form,
    /// `time=… level=… msg="…"`) replaced by its message, unquoted (a
    /// message of several lines gives several lines); other lines as
    /// they are.
    pub fn messages(&self) -> String {
        let mut out = String::new();
        for line in self.stderr().lines() {
            out.push_str(&lima_host::logfmt::message_of(line).unwrap_or_else(|| line.to_string()));
            out.push('\n');
        }
        out
    }

    /// Fails unless the command failed with `needle` in its stderr (or in
    /// a log line's message) and printed exactly one error: one
    /// `level=error` or `level=fatal` log line, or one other line with
    /// "error" in it.
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Self {
        assert_ne!(
            self.code(),
            0,
            "command unexpectedly succeeded\nstdout: {}",
            self.stdout()
        );
        assert!(
            self.stderr().contains(needle) || self.messages().contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr()
        );
        assert_eq!(
            self.stderr()
                .trim()
                .lines()
                .filter(|l| match log_level(l) {
                    Some(level) => level == "error" || level == "fatal",
                    // Quoted log lines (a failed start's log tail) do not count.
                    None => l.contains("error") && !l.trim_start().starts_with("| "),
                })
                .count(),
            1,
            "want one error line:\n{}",
            self.stderr()
        );
        self
    }
}

/// The level of one of limactl's log lines in Lima's text form.
pub fn log_level(line: &str) -> Option<&str> {
    if !line.starts_with("time=") {
        return None;
    }
    let rest = &line[line.find(" level=")? + " level=".len()..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

impl Lima {
    pub fn new() -> Self {
        let bin_dir = bin_dir();
        let limactl = bin_dir.join("limactl");
        assert!(
            limactl.exists(),
            "{} missing: build with `cargo xtask build` (or run `cargo xtask test`)",
            limactl.display()
        );
        // Short path: socket paths must fit in sockaddr_un.
        let home = tempfile::Builder::new()
            .prefix("lima-t")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let cache = tempfile::Builder::new()
            .prefix("lima-c")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Lima {
            user: None,
            home,
            cache,
            bin_dir,
        }
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = self.command(&self.bin_dir.join(program));
        c.env("LIMA_HOME", self.home.path());
        c.env("XDG_CACHE_HOME", self.cache.path());
        c.env_remove("LIMA_INSTANCE");
        c
    }

    /// Runs `limactl ARGS` with stdin from /dev/null.
    pub fn limactl(&self, args: &[&str]) -> Run {
        self.run(self.cmd("limactl").args(args), None)
    }

    /// Runs a command, feeding `stdin` if given.
    pub fn run(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> Run {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().expect("stdin");
            let data = data.to_vec();
            std::thread::spawn(move || std::io::Write::write_all(&mut w, &data));
        }
        Run {
            out: child.wait_with_output().expect("wait"),
        }
    }

    /// `limactl shell NAME -- ARGS`
    pub fn shell(&self, name: &str, args: &[&str]) -> Run {
        let mut a = vec!["shell", name, "--"];
        a.extend_from_slice(args);
        self.limactl(&a)
    }

    /// Starts (creating from `template` if given) and asserts it is ready.
    pub fn start(&self, name: &str, extra: &[&str]) -> Run {
        let mut a = vec!["start", "--name", name, "--timeout", "5m"];
        a.extend_from_slice(extra);
        self.limactl(&a).ok()
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// `limactl list --format json` for one instance.
    pub fn info(&self, name: &str) -> serde_json::Value {
        let r = self.limactl(&["list", "--format", "json", name]).ok();
        serde_json::from_str(r.stdout().trim()).expect("json")
    }

    /// Processes whose command line or environment mentions our LIMA_HOME.
    pub fn our_processes(&self) -> Vec<String> {
        let needle = self.home.path().to_string_lossy().into_owned();
        let me = std::process::id().to_string();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(&needle)
                || String::from_utf8_lossy(&environ).contains(&format!("LIMA_HOME={needle}"))
            {
                found.push(format!("{pid}: {text}"));
            }
        }
        found
    }

    /// Waits until `cond` holds, failing with `what` after `timeout`.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Debian cloud image `cargo xtask image debian-cloud` built
    /// (`$LIMA_TEST_CLOUD_IMAGE` names another), for the slow tier.
    pub fn debian_cloud_image(&self) -> PathBuf {
        let p = std::env::var_os("LIMA_TEST_CLOUD_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.bin_dir.join("../images/debian-cloud/disk.qcow2"));
        assert!(
            p.exists(),
            "{} missing: run `cargo xtask image debian-cloud`",
            p.display()
        );
        p
    }

    /// The built default image's directory (`target/images/default`).
    pub fn image_dir(&self) -> PathBuf {
        self.bin_dir.join("../images/default")
    }

    /// The built image's manifest (`target/images/default/image.json`).
    pub fn image_manifest(&self) -> serde_json::Value {
        let p = self.bin_dir.join("../images/default/image.json");
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask image`", p.display()));
        serde_json::from_str(&text).expect("image.json")
    }

    fn dump_logs(&self) {
        for e in std::fs::read_dir(self.home.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in [
                "ha.stderr.log",
                "serial.log",
                "qemu.stderr.log",
                "ha.events.jsonl",
            ] {
                let p = e.path().join(f);
                if let Ok(text) = std::fs::read_to_string(&p) {
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("----- {} (last {} lines) -----", p.display(), tail.len());
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

/// An ordinary (non-root) host user that tests run `limactl` as.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The user the fixture creates (once per machine) for
/// [`Lima::as_ordinary_user`].
pub const TEST_USER: &str = "lima-e2e";

impl TestUser {
    /// [`TEST_USER`], made with `useradd` if it does not exist. Needs root.
    pub fn ensure() -> TestUser {
        let lookup = || nix::unistd::User::from_name(TEST_USER).ok().flatten();
        if lookup().is_none() {
            let out = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/bash", TEST_USER])
                .output()
                .expect("useradd");
            // Another test may have made it meanwhile.
            assert!(
                out.status.success() || lookup().is_some(),
                "useradd {TEST_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let u = lookup().expect("the test user exists");
        TestUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }
}

impl Lima {
    /// A fixture whose commands run as an ordinary user, as our users run
    /// `limactl`. When the tests themselves run as an ordinary user, that
    /// is them; as root, it is [`TEST_USER`], made on first use.
    pub fn as_ordinary_user() -> Self {
        let mut lima = Lima::new();
        if !nix::unistd::geteuid().is_root() {
            return lima;
        }
        let user = TestUser::ensure();
        for d in [lima.home.path(), lima.cache.path()] {
            std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).expect("chown");
        }
        lima.user = Some(user);
        lima
    }

    /// A folder the fixture's user owns (a share's host side).
    pub fn user_dir(&self, name: &str) -> PathBuf {
        let d = self.home.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(u) = &self.user {
            std::os::unix::fs::chown(&d, Some(u.uid), Some(u.gid)).unwrap();
        }
        d
    }

    /// `program` run as the fixture's user (with that user's `HOME`).
    pub fn command(&self, program: &Path) -> Command {
        match &self.user {
            None => Command::new(program),
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                c.env("HOME", &u.home)
                    .env("USER", &u.name)
                    .env("LOGNAME", &u.name)
                    .env(
                        "PATH",
                        "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
                    )
                    .env_remove("CARGO_HOME")
                    .env_remove("RUSTUP_HOME")
                    .env_remove("XDG_RUNTIME_DIR");
                c
            }
        }
    }
}

impl Default for Lima {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lima {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for e in std::fs::read_dir(self.home.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let _ = self
                .cmd("limactl")
                .args(["delete", "--force", &name])
                .stdin(Stdio::null())
                .output();
        }
        // Whatever is left (a lima-run a failed test did not stop) goes
        // too: its children die with it.
        for p in self.our_processes() {
            if let Some(pid) = p.split(':').next().and_then(|n| n.parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
}

/// A guest command running in the background through `limactl shell`;
/// killed (which ends the guest command too) when dropped.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lima {
    /// Starts `limactl shell NAME -- ARGS` in the background.
    pub fn spawn_shell(&self, name: &str, args: &[&str]) -> Background {
        let child = self
            .cmd("limactl")
            .args(["shell", name, "--"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn limactl shell");
        Background(child)
    }

    /// `lima-run ARGS` started in `cwd`, with its scratch directories under
    /// our temporary home (so leftovers are easy to spot).
    pub fn lima_run(&self, cwd: &std::path::Path, args: &[&str]) -> Command {
        let mut c = self.cmd("lima-run");
        c.env("XDG_RUNTIME_DIR", self.home.path())
            .current_dir(cwd)
            .args(args);
        c
    }

    /// What `lima-run` left in our home: must be nothing after it exits.
    pub fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.home.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("lima-run-"))
            .collect();
        v.extend(self.our_processes());
        v
    }

    /// Writes a lima.yaml for the default image plus `extra` YAML and
    /// returns its path (for `limactl start PATH`).
    pub fn template(&self, file: &str, extra: &str) -> String {
        let p = self.home.path().join(file);
        std::fs::write(
            &p,
            format!("images:\n- location: builtin:default\ncpus: 2\nmemory: 1GiB\n{extra}"),
        )
        .unwrap();
        p.to_string_lossy().into_owned()
    }
}

/// sha256 of bytes, hex.
/// A folder under the fixture user's home, removed at the end.
pub struct HomeFolder(pub PathBuf);

impl Drop for HomeFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lima {
    /// `~/PREFIX-PID` of the fixture's user, with a `sub` folder, owned by
    /// that user: a project folder as a user would have it.
    pub fn home_folder(&self, prefix: &str) -> HomeFolder {
        let home = match &self.user {
            Some(u) => u.home.clone(),
            None => PathBuf::from(std::env::var_os("HOME").expect("HOME")),
        };
        let dir = home.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        if let Some(u) = &self.user {
            for d in [dir.as_path(), &dir.join("sub")] {
                std::os::unix::fs::chown(d, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        HomeFolder(dir)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
