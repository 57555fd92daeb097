// Drives `limactl mcp serve` with the official TypeScript MCP SDK.
//
// Usage: node client.mjs LIMACTL INSTANCE SCRATCH MODE
// (run from a folder whose node_modules holds @modelcontextprotocol/sdk;
// the test copies it into target/mcp-clients/node). SCRATCH is the one
// host folder the instance mounts, writable, at the same path; MODE is
// `full` or `stopped`. Prints `ok: ...` per check; exits 1 on a failure.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, statSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const TOOLS = ["list_directory", "read_file", "write_file", "glob", "search_file_content", "run_shell_command"];
const [limactl, instance, scratch, mode] = process.argv.slice(2);

function check(cond, what, detail = "") {
  if (!cond) {
    console.log(`FAILED: ${what}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const text = (res) => (res.content ?? []).map((c) => c.text ?? "").join("");
const call = (client, name, args) => client.callTool({ name, arguments: args }, undefined, { timeout: 300000 });

async function failsWith(client, name, args, needle, what) {
  const res = await call(client, name, args);
  check(res.isError === true && text(res).includes(needle), what, `isError=${res.isError} ${text(res)}`);
}

async function succeeds(client, name, args, what) {
  const res = await call(client, name, args);
  check(!res.isError && res.structuredContent, what, text(res));
  return res.structuredContent;
}

// A text file of about `size` bytes in lines of varying length.
function bigFile(path, size) {
  let seed = 19;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const parts = [];
  let written = 0;
  for (let n = 0; written < size; n++) {
    const len = Math.floor(rnd() * 200);
    let line = String(n).padStart(8, "0") + " ";
    for (let i = 0; i < len; i++) line += "abcdefghij "[Math.floor(rnd() * 11)];
    line += "\n";
    parts.push(line);
    written += line.length;
  }
  writeFileSync(path, parts.join(""));
}

async function full(client) {
  const { tools } = await client.listTools();
  check(JSON.stringify(tools.map((t) => t.name)) === JSON.stringify(TOOLS), "tools/list gives Lima's six tools", tools.map((t) => t.name));

  const hello = `${scratch}/js/sub/hello.txt`;
  let out = await succeeds(client, "write_file", { path: hello, content: "hello\nworld\n" }, "write_file creates a file");
  check(out.created === true, "write_file reports a new file", out);
  check(readFileSync(hello, "utf8") === "hello\nworld\n", "the written file is on the host");
  await failsWith(client, "write_file", { path: "js/rel.txt", content: "x" }, "not an absolute path", "write_file refuses a relative path");

  out = await succeeds(client, "read_file", { path: hello }, "read_file reads a file");
  check(out.content === "hello\nworld\n", "read_file gives the whole small file", out);
  out = await succeeds(client, "read_file", { path: hello, offset: 1, limit: 1 }, "read_file with offset/limit");
  check(out.content === "world\n", "read_file pages by lines", out);
  await failsWith(client, "read_file", { path: `${scratch}/js/nope.txt` }, "does not exist", "read_file of a missing file");
  await failsWith(client, "read_file", { path: "hello.txt" }, "not an absolute path", "read_file refuses a relative path");

  const big = `${scratch}/js/big.txt`;
  bigFile(big, 20 << 20);
  const want = createHash("sha256").update(readFileSync(big)).digest("hex");
  const got = createHash("sha256");
  let offset = 0;
  let pages = 0;
  for (;;) {
    out = await succeeds(client, "read_file", { path: big, offset, limit: 1000000 }, `read_file page ${pages}`);
    got.update(out.content);
    pages++;
    if (out.next_offset === undefined) break;
    offset = out.next_offset;
  }
  check(pages >= 5, "a 20 MiB file comes in several pages", String(pages));
  check(got.digest("hex") === want, "the pages put together are the file (sha256)");

  out = await succeeds(client, "list_directory", { path: `${scratch}/js` }, "list_directory lists a folder");
  const byName = Object.fromEntries(out.entries.map((e) => [e.name, e]));
  check(byName.sub?.is_dir === true && byName["big.txt"]?.size === statSync(big).size, "list_directory gives names, sizes and folders", out);
  await failsWith(client, "list_directory", { path: `${scratch}/js/none` }, "does not exist", "list_directory of a missing folder");

  out = await succeeds(client, "glob", { pattern: "**/*.txt", path: `${scratch}/js` }, "glob finds files");
  check(JSON.stringify([...out.matches].sort()) === JSON.stringify([big, hello].sort()), "glob gives absolute paths", out);
  await failsWith(client, "glob", { pattern: "a[", path: `${scratch}/js` }, "not a glob pattern", "glob refuses a bad pattern");

  out = await succeeds(client, "search_file_content", { pattern: "wor+ld", path: `${scratch}/js` }, "search_file_content finds lines");
  check(out.git_grep_output === `${hello}:2:world\n`, "search_file_content reads like git grep -n", out);
  await failsWith(client, "search_file_content", { pattern: "(", path: scratch }, "not a regular expression", "search_file_content refuses a bad regex");

  out = await succeeds(client, "run_shell_command", { command: ["sh", "-c", "pwd; echo err >&2; exit 3"], directory: `${scratch}/js` }, "run_shell_command runs");
  check(out.stdout === `${scratch}/js\n` && out.stderr === "err\n" && out.exit_code === 3, "stdout, stderr and the exit code come back", out);
  out = await succeeds(client, "run_shell_command", { command: ["sleep", "300"], directory: scratch, timeout: 2 }, "a command past its time-out");
  check(out.timed_out === true && out.error.includes("time-out"), "the time-out is reported", out);
  await failsWith(client, "run_shell_command", { command: ["true"], directory: "tmp" }, "not an absolute path", "run_shell_command refuses a relative directory");

  await failsWith(client, "read_file", { path: "/etc/passwd" }, "outside every folder this instance mounts", "a path outside the mounts is refused");
  await failsWith(client, "list_directory", { path: "/" }, "outside every folder this instance mounts", "the guest's root is outside the mounts");
}

async function stopped(client) {
  const { tools } = await client.listTools();
  check(tools.length === TOOLS.length, "a stopped instance still lists the tools");
  await failsWith(client, "list_directory", { path: scratch }, "is not running", "a call on a stopped instance says so");
}

const transport = new StdioClientTransport({ command: limactl, args: ["mcp", "serve", instance], env: process.env, stderr: "inherit" });
const client = new Client({ name: "lima-rs-test", version: "1.0.0" });
await client.connect(transport);
const info = client.getServerVersion();
check(info?.name === "lima", "initialize names the server lima", info);
await (mode === "full" ? full(client) : stopped(client));
await client.close();
console.log("typescript client: all checks passed");
