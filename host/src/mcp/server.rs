//! The MCP server: rmcp over stdio, one instance, each tool call checked
//! (instance running, absolute path, inside the mounts of a `--mount-only`
//! instance) and carried out in the guest as the instance's user.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lima_proto::files::{FilesReply, FilesRequest};
use lima_proto::ExecRequest;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};

use super::guest::{self, Files};
use super::limits::{self, Scope};
use crate::instance::Instance;

/// What a tool call failed with: one sentence for the client.
type ToolError = String;

pub struct Server {
    home: PathBuf,
    name: String,
    /// The longest a command may run.
    max_timeout: Duration,
    /// The host folder the server started in (the default of `path`).
    cwd: Option<PathBuf>,
    /// The open Files stream, if any.
    files: tokio::sync::Mutex<Option<Files>>,
    /// What the running host agent (by its pid) was started with: read
    /// again when the instance restarted.
    live: std::sync::Mutex<Option<(i32, Arc<Live>)>>,
}

/// What a call needs to know about the instance, read again at each call
/// (it may have been stopped, started or edited in between).
struct Live {
    transport: Box<dyn crate::vsock::Transport>,
    user: String,
    scope: Scope,
    mounts: Vec<crate::mounts::Mount>,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn new(home: &Path, name: &str, max_timeout: Duration) -> Server {
        Server {
            home: home.to_path_buf(),
            name: name.to_string(),
            max_timeout,
            cwd: std::env::current_dir().ok(),
            files: tokio::sync::Mutex::new(None),
            live: std::sync::Mutex::new(None),
        }
    }

    fn live(&self) -> Result<Arc<Live>, ToolError> {
        let name = &self.name;
        let inst = Instance::new(&self.home, name).map_err(|e| e.to_string())?;
        if !inst.exists() {
            return Err(format!("instance \"{name}\" does not exist (it was deleted); create it with `limactl create {name}`"));
        }
        let not_running =
            || format!("instance \"{name}\" is not running; start it with `limactl start {name}`");
        if !inst.host_agent_running() {
            return Err(not_running());
        }
        let pid = inst.read_pid(crate::instance::HA_PID).unwrap_or(0);
        let mut cached = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, live)) = cached.as_ref() {
            if *p == pid {
                return Ok(live.clone());
            }
        }
        let transport = crate::lifecycle::transport(&inst).map_err(|_| not_running())?;
        let cfg = inst
            .config()
            .map_err(|e| format!("cannot read the configuration of instance \"{name}\": {e}"))?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let live = Arc::new(Live {
            transport,
            user: cfg.user.name.clone(),
            scope: Scope::of(&cfg.mounts, home.as_deref()),
            mounts: cfg.mounts.clone(),
            env: cfg
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
        *cached = Some((pid, live.clone()));
        Ok(live)
    }

    /// One request on the Files stream; opens it first if needed, and once
    /// more when it broke (the instance restarted).
    async fn files(&self, live: &Live, req: FilesRequest) -> Result<FilesReply, ToolError> {
        let mut slot = self.files.lock().await;
        for attempt in 0..2 {
            if slot.is_none() {
                *slot = Some(Files::open(live.transport.as_ref(), &live.user).await?);
            }
            let files = slot.as_mut().expect("opened above");
            match files.call(&req).await {
                Ok(FilesReply::Error(e)) => return Err(e.message),
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    *slot = None;
                    if attempt == 1 {
                        return Err(format!("lost the connection to the guest agent: {e}"));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The folder a search starts in: `path`, else the server's folder if
    /// the instance mounts it.
    fn start_dir(&self, live: &Live, path: Option<&str>) -> Result<String, ToolError> {
        match path.filter(|p| !p.is_empty()) {
            Some(p) => live.scope.check(p),
            None => self
                .cwd
                .as_deref()
                .and_then(|c| crate::mounts::guest_path(&live.mounts, c))
                .ok_or_else(|| {
                    "`path` is missing and the folder `limactl mcp serve` runs in is not mounted in the instance; give an absolute `path`".to_string()
                })
                .and_then(|p| live.scope.check(&p)),
        }
    }

    async fn call(&self, tool: &str, args: &JsonObject) -> Result<Value, ToolError> {
        if !super::tools::all().iter().any(|t| t.name == tool) {
            return Err(format!("there is no tool `{tool}`"));
        }
        let live = self.live()?;
        match tool {
            "list_directory" => {
                let path = live.scope.check(str_arg(args, "path")?)?;
                match self.files(&live, FilesRequest::List { path }).await? {
                    FilesReply::Entries { entries, truncated } => {
                        let entries: Vec<Value> = entries
                            .into_iter()
                            .map(|e| {
                                json!({
                                    "name": e.name,
                                    "size": e.size,
                                    "mode": e.mode,
                                    "time": crate::logfmt::rfc3339(e.mtime, 0),
                                    "is_dir": e.is_dir,
                                })
                            })
                            .collect();
                        Ok(json!({"entries": entries, "truncated": truncated}))
                    }
                    other => unexpected(other),
                }
            }
            "read_file" => {
                let path = live.scope.check(str_arg(args, "path")?)?;
                let offset = uint_arg(args, "offset")?.unwrap_or(0);
                let limit = uint_arg(args, "limit")?;
                if limit == Some(0) {
                    return Err("`limit` must be at least 1".into());
                }
                match self
                    .files(
                        &live,
                        FilesRequest::Read {
                            path,
                            offset,
                            limit,
                        },
                    )
                    .await?
                {
                    FilesReply::Read(page) => {
                        let binary = std::str::from_utf8(&page.content).is_err();
                        let mut v = json!({
                            "content": String::from_utf8_lossy(&page.content),
                            "offset": page.offset,
                            "lines": page.lines,
                            "size": page.size,
                        });
                        if let Some(n) = page.next_offset {
                            v["next_offset"] = json!(n);
                        }
                        if page.line_cut {
                            v["line_cut"] = json!(true);
                        }
                        if binary {
                            v["not_utf8"] = json!(true);
                        }
                        Ok(v)
                    }
                    other => unexpected(other),
                }
            }
            "write_file" => {
                let path = live.scope.check(str_arg(args, "path")?)?;
                let content = str_arg(args, "content")?;
                if content.len() > lima_proto::files::MAX_WRITE_BYTES {
                    return Err(format!(
                        "the content is {} bytes, more than the {} bytes one write_file call may write",
                        content.len(),
                        lima_proto::files::MAX_WRITE_BYTES
                    ));
                }
                match self
                    .files(
                        &live,
                        FilesRequest::Write {
                            path,
                            data: content.as_bytes().to_vec(),
                        },
                    )
                    .await?
                {
                    FilesReply::Written { bytes, created } => {
                        Ok(json!({"bytes": bytes, "created": created}))
                    }
                    other => unexpected(other),
                }
            }
            "glob" => {
                let pattern = str_arg(args, "pattern")?.to_string();
                let dir = self.start_dir(&live, opt_str_arg(args, "path")?)?;
                match self
                    .files(&live, FilesRequest::Glob { dir, pattern })
                    .await?
                {
                    FilesReply::Paths { paths, truncated } => {
                        Ok(json!({"matches": paths, "truncated": truncated}))
                    }
                    other => unexpected(other),
                }
            }
            "search_file_content" => {
                let pattern = str_arg(args, "pattern")?.to_string();
                let dir = self.start_dir(&live, opt_str_arg(args, "path")?)?;
                let include = opt_str_arg(args, "include")?.map(str::to_string);
                match self
                    .files(
                        &live,
                        FilesRequest::Search {
                            dir,
                            pattern,
                            include,
                        },
                    )
                    .await?
                {
                    FilesReply::Matches { matches, truncated } => {
                        let mut out = String::new();
                        for m in &matches {
                            out.push_str(&format!("{}:{}:{}\n", m.path, m.line, m.text));
                        }
                        Ok(json!({"git_grep_output": out, "truncated": truncated}))
                    }
                    other => unexpected(other),
                }
            }
            "run_shell_command" => self.run_shell_command(&live, args).await,
            _ => unreachable!("checked above"),
        }
    }

    async fn run_shell_command(&self, live: &Live, args: &JsonObject) -> Result<Value, ToolError> {
        let command: Vec<String> = match args.get("command") {
            Some(Value::Array(words)) if !words.is_empty() => words
                .iter()
                .map(|w| {
                    w.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "`command` must be a list of strings".to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => {
                return Err("`command` is empty; give the program and its arguments".into())
            }
            Some(_) => {
                return Err("`command` must be a list of strings, e.g. [\"ls\", \"-l\"]".into())
            }
            None => return Err("`command` is missing".into()),
        };
        let directory = live.scope.check(str_arg(args, "directory")?)?;
        let timeout = match uint_arg(args, "timeout")? {
            Some(0) => return Err("`timeout` must be at least 1 second".into()),
            Some(s) => Duration::from_secs(s).min(self.max_timeout),
            None => self.max_timeout,
        };
        let req = ExecRequest {
            argv: command,
            env: live.env.clone(),
            cwd: Some(directory),
            cwd_fallback: false,
            user: Some(live.user.clone()),
            login: true,
            pty: None,
        };
        let run =
            guest::run_command(live.transport.as_ref(), &req, timeout, limits::OUTPUT_CAP).await?;
        let mut v = json!({
            "stdout": String::from_utf8_lossy(&run.stdout.data),
            "stderr": String::from_utf8_lossy(&run.stderr.data),
        });
        if let Some(code) = run.exit_code {
            v["exit_code"] = json!(code);
        }
        if run.timed_out {
            v["timed_out"] = json!(true);
            v["error"] = json!(format!(
                "the command ran longer than its time-out of {} s; it was killed with its process group",
                timeout.as_secs()
            ));
        } else if let Some(code) = run.exit_code.filter(|c| *c != 0) {
            v["error"] = json!(format!("exit status {code}"));
        }
        if run.stdout.truncated {
            v["stdout_truncated"] = json!(true);
        }
        if run.stderr.truncated {
            v["stderr_truncated"] = json!(true);
        }
        Ok(v)
    }
}

fn unexpected(reply: FilesReply) -> Result<Value, ToolError> {
    Err(format!("unexpected reply from the guest agent: {reply:?}"))
}

fn str_arg<'a>(args: &'a JsonObject, key: &str) -> Result<&'a str, ToolError> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Err(format!("`{key}` is missing")),
    }
}

fn opt_str_arg<'a>(args: &'a JsonObject, key: &str) -> Result<Option<&'a str>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn uint_arg(args: &JsonObject, key: &str) -> Result<Option<u64>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a whole number, 0 or more")),
    }
}

/// The server's name, title and instructions.
pub fn config() -> ServerConfig {
    let mut implementation = Implementation::new("lima", env!("CARGO_PKG_VERSION"));
    implementation.title = Some("lima-rs: run commands and edit files inside a Lima VM".into());
    ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        .with_server_info(implementation)
        .with_instructions(
            "These tools work inside a Linux virtual machine (a Lima instance), not on the host: \
             commands run there as the instance's user, and files are the VM's. Host folders the \
             instance mounts appear at the same paths. Use them to keep untrusted code off the host.",
        )
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        config()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(super::tools::all()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        super::tools::all().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match self.call(&request.name, &args).await {
            Ok(v) => CallToolResult::structured(v),
            Err(message) => {
                tracing::info!(tool = %request.name, "tool error: {message}");
                CallToolResult::error(vec![ContentBlock::text(message)])
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}
