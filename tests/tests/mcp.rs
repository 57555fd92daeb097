//! Issue 23: `limactl mcp serve` driven by the official MCP SDKs (Python
//! `mcp`, TypeScript `@modelcontextprotocol/sdk`, installed under
//! `target/mcp-clients` by `cargo xtask setup` / `cargo xtask test`), and
//! `limactl mcp info`. One VM: the default template with only a scratch
//! folder mounted (`--mount-only DIR:w`), as an AI-agent sandbox is made.
//! The client scripts (tests/mcp-clients/) print `ok: ...` per check.
use std::path::{Path, PathBuf};
use std::process::Command;

use lima_tests::Lima;

/// `target/mcp-clients`, which must hold both SDKs: a missing client is a
/// failure saying how to install it, never a skipped test.
fn clients_dir(lima: &Lima) -> PathBuf {
    let dir = std::env::var_os("LIMA_MCP_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| lima.bin_dir.join("../mcp-clients"));
    let python = dir.join("venv/bin/python");
    let sdk = dir.join("node/node_modules/@modelcontextprotocol/sdk/package.json");
    assert!(
        python.exists() && sdk.exists(),
        "the MCP test clients are missing under {} (need {} and {}): run `cargo xtask setup` (or `cargo xtask test`) to install them",
        dir.display(),
        python.display(),
        sdk.display()
    );
    dir
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp-clients")
}

/// A `limactl` the clients can start: the real one, as the fixture's user.
fn limactl_wrapper(lima: &Lima) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let limactl = lima.bin_dir.join("limactl");
    let line = match &lima.user {
        None => format!("exec {} \"$@\"\n", limactl.display()),
        Some(u) => format!(
            "HOME={} USER={} LOGNAME={} exec setpriv --reuid={} --regid={} --init-groups -- {} \"$@\"\n",
            u.home.display(),
            u.name,
            u.name,
            u.uid,
            u.gid,
            limactl.display()
        ),
    };
    let path = lima.home.path().join("limactl-as-user");
    std::fs::write(&path, format!("#!/bin/sh\n{line}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs one client script; asserts it passed and returns its output.
fn client(lima: &Lima, mut cmd: Command, wrapper: &Path, scratch: &Path, mode: &str) -> String {
    cmd.arg(wrapper)
        .arg("mcp23")
        .arg(scratch)
        .arg(mode)
        .env("LIMA_HOME", lima.home.path())
        .env("XDG_CACHE_HOME", lima.cache.path())
        .env_remove("LIMA_INSTANCE");
    let out = cmd.output().expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "MCP client ({mode}) failed:\n{stdout}\n--- stderr ---\n{stderr}"
    );
    stdout
}

#[test]
fn mcp_info_prints_limas_tools_and_serve_needs_an_instance() {
    let lima = Lima::new();
    let r = lima.limactl(&["mcp", "info"]).ok();
    let info: serde_json::Value = serde_json::from_str(&r.stdout()).expect("JSON");
    let tools = info["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "list_directory",
            "read_file",
            "write_file",
            "glob",
            "search_file_content",
            "run_shell_command"
        ]
    );
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(!t["description"].as_str().unwrap().is_empty(), "{t}");
    }
    let run = &tools[5]["inputSchema"];
    assert_eq!(run["properties"]["command"]["type"], "array");
    assert_eq!(run["required"], serde_json::json!(["command", "directory"]));
    // Lima's four-space indentation.
    assert!(
        r.stdout().starts_with("{\n    \"tools\": [\n        {\n"),
        "{}",
        r.stdout()
    );

    lima.limactl(&["mcp", "serve", "nosuch"]).fails_with(
        "instance \"nosuch\" does not exist, run `limactl create nosuch` to create a new instance",
    );
    // Lima's default instance name.
    lima.limactl(&["mcp", "serve"])
        .fails_with("instance \"default\" does not exist");
}

/// One VM, both SDKs: every tool with good and bad input, a 20 MiB file by
/// pages, a time-out, the mount rule, then the stopped instance.
#[test]
fn official_sdks_drive_mcp_serve_in_a_mount_only_instance() {
    let lima = Lima::as_ordinary_user();
    let clients = clients_dir(&lima);
    let scratch = lima.user_dir("scratch");
    let wrapper = limactl_wrapper(&lima);
    lima.start(
        "mcp23",
        &["--mount-only", &format!("{}:w", scratch.display())],
    );

    let python = || {
        let mut c = Command::new(clients.join("venv/bin/python"));
        c.arg(scripts().join("client.py"));
        c
    };
    // ES modules resolve packages next to the script: run a copy placed
    // beside the SDK's node_modules.
    let mjs = clients.join(format!("node/client-{}.mjs", std::process::id()));
    std::fs::copy(scripts().join("client.mjs"), &mjs).unwrap();
    let node = || {
        let mut c = Command::new("node");
        c.arg(&mjs);
        c
    };

    let out = client(&lima, python(), &wrapper, &scratch, "full");
    assert!(out.contains("ok: the pages put together are the file (sha256)"));
    assert!(out.contains("ok: the timed-out command's process group was killed"));
    assert!(out.contains("ok: a path outside the mounts is refused"));
    let out = client(&lima, node(), &wrapper, &scratch, "full");
    assert!(out.contains("ok: the written file is on the host"));
    // What write_file wrote is the host's, owned by the host user.
    let hello = scratch.join("js/sub/hello.txt");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hello\nworld\n");
    if let Some(u) = &lima.user {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&hello).unwrap().uid(), u.uid);
    }

    lima.limactl(&["stop", "mcp23"]).ok();
    client(&lima, python(), &wrapper, &scratch, "stopped");
    client(&lima, node(), &wrapper, &scratch, "stopped");
    let _ = std::fs::remove_file(&mjs);
}
