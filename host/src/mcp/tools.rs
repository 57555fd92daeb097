//! The tools `limactl mcp serve` offers: Lima's names, arguments and result
//! fields (its "MCP Sandbox Interface"), plus paging for `read_file` and a
//! per-call time-out for `run_shell_command`.
use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(o) => Arc::new(o),
        _ => unreachable!("schemas are objects"),
    }
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

/// Every tool, in Lima's order.
pub fn all() -> Vec<Tool> {
    let read_only = |t: Tool| t.with_annotations(ToolAnnotations::new().read_only(true));
    vec![
        read_only(Tool::new(
            "list_directory",
            "Lists the files and folders directly inside a folder of the instance, with their size, mode, modification time and whether each is a folder.",
            schema(json!({
                "type": "object",
                "properties": {"path": string("The absolute path of the folder to list.")},
                "required": ["path"],
            })),
        )),
        read_only(Tool::new(
            "read_file",
            "Reads a file of the instance by lines. Long files come in pages: when the result has `next_offset`, call again with that `offset` to read on.",
            schema(json!({
                "type": "object",
                "properties": {
                    "path": string("The absolute path of the file to read."),
                    "offset": {"type": "integer", "minimum": 0, "description": "The 0-based line to start at (default 0)."},
                    "limit": {"type": "integer", "minimum": 1, "description": "The most lines to return (default 2000); a page also ends at 4 MiB."},
                },
                "required": ["path"],
            })),
        )),
        Tool::new(
            "write_file",
            "Writes a file of the instance: an existing file is replaced, a missing one is created together with its missing parent folders.",
            schema(json!({
                "type": "object",
                "properties": {
                    "path": string("The absolute path of the file to write."),
                    "content": string("The whole new content of the file."),
                },
                "required": ["path", "content"],
            })),
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
        read_only(Tool::new(
            "glob",
            "Finds files whose path below a folder matches a glob pattern (`*`, `?`, `[...]`, `{a,b}`, and `**` across folders, e.g. `src/**/*.rs`). Returns absolute paths.",
            schema(json!({
                "type": "object",
                "properties": {
                    "pattern": string("The glob pattern, relative to `path` (e.g. '*.py', 'src/**/*.js')."),
                    "path": string("The absolute path of the folder to search in; default: the folder `limactl mcp serve` was started in, when the instance mounts it."),
                },
                "required": ["pattern"],
            })),
        )),
        read_only(Tool::new(
            "search_file_content",
            "Searches text files below a folder for lines matching a regular expression; the result reads like `git grep -n` output (path:line:text).",
            schema(json!({
                "type": "object",
                "properties": {
                    "pattern": string("The regular expression to search for (e.g. 'fn\\s+main')."),
                    "path": string("The absolute path of the folder (or file) to search; default: the folder `limactl mcp serve` was started in, when the instance mounts it."),
                    "include": string("A glob pattern the searched files' paths (relative to `path`) must match (e.g. '*.js', 'src/**/*.{ts,tsx}')."),
                },
                "required": ["pattern"],
            })),
        )),
        Tool::new(
            "run_shell_command",
            "Runs a command in the instance as its user, through the user's login shell, and returns its stdout, stderr and exit code. The command is an argument list; it gets no input, and is killed with its process group when it runs past its time-out.",
            schema(json!({
                "type": "object",
                "properties": {
                    "command": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "The program and its arguments, e.g. [\"ls\", \"-l\"]."},
                    "description": string("A short note on what the command is for (shown to the user, not run)."),
                    "directory": string("The absolute path of the folder to run the command in."),
                    "timeout": {"type": "integer", "minimum": 1, "description": "Seconds the command may run (default and maximum: the server's time-out, 300 unless set)."},
                },
                "required": ["command", "directory"],
            })),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limas_tool_names_and_required_arguments() {
        let tools = all();
        let got: Vec<(&str, Vec<&str>)> = tools
            .iter()
            .map(|t| {
                let req = t.input_schema["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                (t.name.as_ref(), req)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("list_directory", vec!["path"]),
                ("read_file", vec!["path"]),
                ("write_file", vec!["path", "content"]),
                ("glob", vec!["pattern"]),
                ("search_file_content", vec!["pattern"]),
                ("run_shell_command", vec!["command", "directory"]),
            ]
        );
    }
}
