//! `limactl mcp serve [INSTANCE]` and `limactl mcp info`: the Model
//! Context Protocol server (see `crate::mcp`).
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct McpArgs {
    #[command(subcommand)]
    cmd: McpCmd,
}

#[derive(clap::Subcommand)]
enum McpCmd {
    /// Serve MCP over stdio (run by an AI agent, not by a person)
    Serve {
        /// The instance the tools work in
        #[arg(default_value = "default")]
        instance: String,
        /// The longest a command may run, in seconds (a call may ask for less)
        #[arg(long, value_name = "SECONDS", default_value_t = crate::mcp::limits::DEFAULT_COMMAND_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Print the tools as JSON
    Info,
}

pub fn run(home: &Path, a: McpArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        McpCmd::Info => {
            // Lima indents with four spaces.
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&crate::mcp::info(), &mut ser)?;
            out.push(b'\n');
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
            Ok(ExitCode::SUCCESS)
        }
        McpCmd::Serve {
            instance: name,
            timeout,
        } => {
            let inst = super::running::existing(home, &name)?;
            if !inst.host_agent_running() {
                // Served anyway: each call says the instance is not running.
                super::msg::warn(format!(
                    "instance \"{name}\" is not running; tools will fail until `limactl start {name}`"
                ));
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(crate::mcp::serve(home, &name, Duration::from_secs(timeout)))?;
            // Do not wait for the stdin reader.
            rt.shutdown_timeout(Duration::from_millis(100));
            Ok(ExitCode::SUCCESS)
        }
    }
}
