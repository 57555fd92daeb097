//! `limactl mcp serve`: a Model Context Protocol server on stdio whose
//! tools (Lima's set: `list_directory`, `read_file`, `write_file`, `glob`,
//! `search_file_content`, `run_shell_command`) work inside one instance
//! through our guest agent, as the instance's user.
//!
//! - `tools`: the tool definitions (what `limactl mcp info` prints).
//! - `server`: the rmcp handler, each call checked and carried out.
//! - `guest`: the Files stream and the command runner.
//! - `limits`: time-out, output cap, which paths are reachable.
//!
//! Stdout carries only JSON-RPC; logs go to stderr.
pub mod guest;
pub mod limits;
pub mod server;
pub mod tools;

use std::path::Path;
use std::time::Duration;

use rmcp::ServiceExt;

/// Serves MCP on stdin/stdout until the client hangs up.
pub async fn serve(home: &Path, name: &str, max_timeout: Duration) -> anyhow::Result<()> {
    let server = server::Server::new(home, name, max_timeout);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("the MCP session could not start: {e}"))?;
    running.waiting().await?;
    Ok(())
}

/// `{"tools": [...]}`, as `limactl mcp info` prints it.
pub fn info() -> serde_json::Value {
    serde_json::json!({ "tools": tools::all() })
}
