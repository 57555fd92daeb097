//! The official MCP SDKs the MCP tests drive `limactl mcp serve` with
//! (tests/tests/mcp.rs, tests/mcp-clients/): Python `mcp` from PyPI in a
//! virtual environment and TypeScript `@modelcontextprotocol/sdk` from npm,
//! both under `target/mcp-clients/`. Idempotent: nothing is fetched when
//! both import already.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// The PyPI requirement and the npm package spec (major versions pinned,
/// so an incompatible SDK release cannot change what the tests mean).
const PY_REQUIREMENT: &str = "mcp>=1.20,<2";
const NPM_PACKAGE: &str = "@modelcontextprotocol/sdk@^1.20";

/// `target/mcp-clients`, made ready.
pub fn ensure() -> Result<PathBuf> {
    let dir = cmd::target_dir().join("mcp-clients");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let has_py = cmd::probe(Command::new(&python).args(["-c", "import mcp"])).is_some();
    if has_py {
        eprintln!("mcp-clients: ok       python mcp ({})", venv.display());
    } else {
        eprintln!("mcp-clients: install  python mcp → {}", venv.display());
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        cmd::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(PY_REQUIREMENT),
        )?;
    }
    let node = dir.join("node");
    let sdk = node.join("node_modules/@modelcontextprotocol/sdk/package.json");
    if sdk.is_file() {
        eprintln!(
            "mcp-clients: ok       @modelcontextprotocol/sdk ({})",
            node.display()
        );
    } else {
        eprintln!(
            "mcp-clients: install  @modelcontextprotocol/sdk → {}",
            node.display()
        );
        std::fs::create_dir_all(&node)?;
        if !node.join("package.json").is_file() {
            std::fs::write(
                node.join("package.json"),
                "{\"name\": \"lima-mcp-test-clients\", \"private\": true, \"type\": \"module\"}\n",
            )?;
        }
        cmd::run(Command::new("npm").current_dir(&node).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            NPM_PACKAGE,
        ]))?;
    }
    Ok(dir)
}
