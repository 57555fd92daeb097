//! `mcp`: round trips of `limactl mcp serve`'s `read_file` and
//! `run_shell_command` (JSON-RPC over its stdio, as an agent makes them)
//! beside the same operations over SSH to the same guest, the way Lima's
//! MCP server reaches it: one ControlMaster connection kept open, then one
//! SFTP session kept open (as Lima's server keeps one), `sftp -b` per call
//! and `ssh cat` for reads, `ssh` for commands. The guest is the local Debian cloud image (sshd and
//! sftp-server), with a host folder mounted writable at the same path;
//! the files read live there, so both sides read the same share.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{bin_dir, ms, DeleteOnDrop, Stats};

pub struct Opts {
    pub runs: usize,
}

/// A JSON-RPC client of `limactl mcp serve` over its stdio.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Mcp {
    fn start(limactl: &Path, home: &Path, name: &str) -> anyhow::Result<Mcp> {
        let mut child = Command::new(limactl)
            .env("LIMA_HOME", home)
            .args(["mcp", "serve", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut m = Mcp {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        m.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "lima-bench", "version": "1"}}),
        )?;
        writeln!(
            m.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )?;
        Ok(m)
    }

    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        writeln!(
            self.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )?;
        self.stdin.flush()?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("limactl mcp serve closed its output");
            }
            let v: Value = serde_json::from_str(&line).context("a JSON-RPC line")?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    fn tool(&mut self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        let r = self.request("tools/call", json!({"name": name, "arguments": arguments}))?;
        if r["isError"] == json!(true) {
            bail!("{name}: {}", r["content"]);
        }
        Ok(r["structuredContent"].clone())
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of `runs` timings of `f` after two untimed warm-ups.
fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    for _ in 0..2 {
        f()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(Stats::new(samples).median())
}

fn ok(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let image = crate::cloud_image("mcp")?;
    let limactl = bin_dir().join("limactl");
    let home = tempfile::Builder::new()
        .prefix("lima-b")
        .tempdir_in("/tmp")?;
    let cache = tempfile::Builder::new()
        .prefix("lima-bc")
        .tempdir_in("/tmp")?;
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    let scratch = tempfile::Builder::new()
        .prefix("lima-bm")
        .tempdir_in("/tmp")?;
    // The guest user (not root) reads it through the share: open it up as
    // a project folder is.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let dir = scratch.path().display().to_string();
    let work = tempfile::tempdir()?;
    let yaml = work.path().join("mcp.yaml");
    std::fs::write(
        &yaml,
        crate::cloud_yaml(
            &image,
            &format!("[{{location: \"{dir}\", writable: true}}]"),
        ),
    )?;
    let _cleanup = DeleteOnDrop {
        limactl: &limactl,
        home: home.path(),
        name: "mcpb",
    };
    eprintln!("mcp: starting {}", image.display());
    crate::run(
        Command::new(&limactl)
            .env("LIMA_HOME", home.path())
            .args(["start", "--name", "mcpb", "--timeout", "15m"])
            .arg(&yaml),
    )?;
    let small = format!("{dir}/small.txt");
    let large = format!("{dir}/large.txt");
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
    std::fs::write(&small, line.repeat(64))?; // 4 KiB
    std::fs::write(&large, line.repeat(16 * 1024))?; // 1 MiB
    for f in [&small, &large] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
    }
    let runs = opts.runs;

    let mut mcp = Mcp::start(&limactl, home.path(), "mcpb")?;
    let mut read = |path: &str, size: usize| -> anyhow::Result<()> {
        let got = mcp.tool("read_file", json!({"path": path, "limit": 100000}))?;
        if got["content"].as_str().map(str::len) != Some(size) {
            bail!("read_file {path}: wrong size");
        }
        Ok(())
    };
    eprintln!("mcp: read_file x{runs}");
    let mcp_small = median(runs, || read(&small, 4096))?;
    let mcp_large = median(runs, || read(&large, 1 << 20))?;
    eprintln!("mcp: run_shell_command x{runs}");
    let mcp_cmd = median(runs, || {
        let r = mcp.tool(
            "run_shell_command",
            json!({"command": ["true"], "directory": dir}),
        )?;
        if r["exit_code"] != json!(0) {
            bail!("run_shell_command: {r}");
        }
        Ok(())
    })?;
    drop(mcp);

    // SSH: one master connection, every call through it.
    let cfg = home.path().join("mcpb/ssh.config");
    let ctl = work.path().join("ctl");
    let ssh = |args: &[&str]| {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&cfg).arg("-S").arg(&ctl).args(args);
        c
    };
    // sshd may still be restarting under cloud-init: try for two minutes.
    let t = Instant::now();
    while let Err(e) = ok(&mut ssh(&[
        "-M",
        "-f",
        "-N",
        "-o",
        "ControlPersist=yes",
        "lima-mcpb",
    ])) {
        if t.elapsed() > Duration::from_secs(120) {
            return Err(e);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let batch = work.path().join("batch");
    let fetched = work.path().join("fetched");
    let sftp_get = |path: &str, size: u64| -> anyhow::Result<()> {
        std::fs::write(&batch, format!("get {path} {}\n", fetched.display()))?;
        ok(Command::new("sftp")
            .arg("-F")
            .arg(&cfg)
            .arg("-o")
            .arg(format!("ControlPath={}", ctl.display()))
            .arg("-q")
            .arg("-b")
            .arg(&batch)
            .arg("lima-mcpb"))?;
        if std::fs::metadata(&fetched)?.len() != size {
            bail!("sftp get {path}: wrong size");
        }
        Ok(())
    };
    eprintln!("mcp: ssh/sftp x{runs}");
    let sftp_small = median(runs, || sftp_get(&small, 4096))?;
    let sftp_large = median(runs, || sftp_get(&large, 1 << 20))?;
    let mut session = Sftp::start(ssh(&["-s", "lima-mcpb", "sftp"]))?;
    let mut session_read = |path: &str, size: usize| -> anyhow::Result<()> {
        if session.read_file(path)? != size {
            bail!("sftp session read {path}: wrong size");
        }
        Ok(())
    };
    let session_small = median(runs, || session_read(&small, 4096))?;
    let session_large = median(runs, || session_read(&large, 1 << 20))?;
    drop(session);
    let cat = |path: &str, size: usize| -> anyhow::Result<()> {
        if ok(&mut ssh(&["lima-mcpb", "cat", path]))?.len() != size {
            bail!("ssh cat {path}: wrong size");
        }
        Ok(())
    };
    let cat_small = median(runs, || cat(&small, 4096))?;
    let cat_large = median(runs, || cat(&large, 1 << 20))?;
    let ssh_cmd = median(runs, || {
        ok(&mut ssh(&["lima-mcpb", &format!("cd {dir} && true")])).map(drop)
    })?;
    // As `limactl shell --workdir` (what Lima's MCP server runs) and our
    // exec run it: through the user's login shell.
    let ssh_login = median(runs, || {
        ok(&mut ssh(&[
            "lima-mcpb",
            &format!("cd {dir} && exec \"$SHELL\" --login -c true"),
        ]))
        .map(drop)
    })?;
    let _ = ssh(&["-O", "exit", "lima-mcpb"])
        .stderr(Stdio::null())
        .status();

    println!("\n## mcp: round trips to a Debian 12 cloud guest, median of {runs} (TCG)\n");
    println!("| operation | `limactl mcp serve` | one SFTP session (as Lima) | `sftp -b` per call | ssh per call |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| read a 4 KiB file | {} | {} | {} | {} (`cat`) |",
        ms(mcp_small),
        ms(session_small),
        ms(sftp_small),
        ms(cat_small)
    );
    println!(
        "| read a 1 MiB file | {} | {} | {} | {} (`cat`) |",
        ms(mcp_large),
        ms(session_large),
        ms(sftp_large),
        ms(cat_large)
    );
    println!(
        "| run `true` in the mounted folder, login shell | {} | | | {} |",
        ms(mcp_cmd),
        ms(ssh_login)
    );
    println!(
        "| run `true` in the mounted folder, no login shell | | | | {} |",
        ms(ssh_cmd)
    );
    Ok(())
}

/// A minimal SFTP (version 3) client on one `ssh -s sftp` session kept
/// open, as Lima's MCP server keeps one: open, pipelined reads, close.
struct Sftp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    id: u32,
}

const FXP_INIT: u8 = 1;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
/// Bytes per READ request and requests in flight (as pkg/sftp pipelines).
const SFTP_CHUNK: u32 = 32 << 10;
const SFTP_WINDOW: u64 = 64;

impl Sftp {
    fn start(mut ssh: Command) -> anyhow::Result<Sftp> {
        let mut child = ssh
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut s = Sftp {
            child,
            stdin,
            stdout,
            id: 0,
        };
        s.send(FXP_INIT, &3u32.to_be_bytes())?;
        s.stdin.flush()?;
        let (t, _) = s.recv()?;
        if t != 2 {
            bail!("sftp: no VERSION reply (type {t})");
        }
        Ok(s)
    }

    fn send(&mut self, t: u8, body: &[u8]) -> anyhow::Result<()> {
        self.stdin
            .write_all(&(body.len() as u32 + 1).to_be_bytes())?;
        self.stdin.write_all(&[t])?;
        self.stdin.write_all(body)?;
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stdout.read_exact(&mut body)?;
        let t = body.remove(0);
        Ok((t, body))
    }

    fn next_id(&mut self) -> [u8; 4] {
        self.id += 1;
        self.id.to_be_bytes()
    }

    /// Reads the whole file; returns its length.
    fn read_file(&mut self, path: &str) -> anyhow::Result<usize> {
        let string = |b: &[u8]| [&(b.len() as u32).to_be_bytes()[..], b].concat();
        let id = self.next_id();
        let open = [
            &id[..],
            &string(path.as_bytes()),
            &1u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ]
        .concat();
        self.send(FXP_OPEN, &open)?;
        self.stdin.flush()?;
        let (t, body) = self.recv()?;
        if t != FXP_HANDLE {
            bail!("sftp open {path}: reply type {t}");
        }
        let handle = body[8..].to_vec();
        let mut total = 0usize;
        let mut offset = 0u64;
        let mut eof = false;
        // One request first (a small file takes one), then twice as many
        // each time up to the window.
        let mut window = 1u64;
        while !eof {
            for i in 0..window {
                let id = self.next_id();
                let at = offset + i * u64::from(SFTP_CHUNK);
                let req = [
                    &id[..],
                    &string(&handle),
                    &at.to_be_bytes(),
                    &SFTP_CHUNK.to_be_bytes(),
                ]
                .concat();
                self.send(FXP_READ, &req)?;
            }
            self.stdin.flush()?;
            for _ in 0..window {
                match self.recv()? {
                    (FXP_DATA, body) => {
                        let n = body.len() - 8;
                        total += n;
                        if n < SFTP_CHUNK as usize {
                            eof = true;
                        }
                    }
                    (FXP_STATUS, _) => eof = true,
                    (t, _) => bail!("sftp read {path}: reply type {t}"),
                }
            }
            offset += window * u64::from(SFTP_CHUNK);
            window = (window * 2).min(SFTP_WINDOW);
        }
        let id = self.next_id();
        self.send(FXP_CLOSE, &[&id[..], &string(&handle)].concat())?;
        self.stdin.flush()?;
        self.recv()?;
        Ok(total)
    }
}

impl Drop for Sftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
