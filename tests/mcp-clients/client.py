"""Drives `limactl mcp serve` with the official Python MCP SDK.

Usage: client.py LIMACTL INSTANCE SCRATCH MODE

SCRATCH is a host folder the instance mounts writable at the same path
(and the only one it mounts); MODE is `full` (every tool, good and bad
input) or `stopped` (the instance is stopped: calls fail saying so).
Prints `ok: ...` per check; exits 1 on the first failed one.
"""
import asyncio
import hashlib
import os
import random
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = ["list_directory", "read_file", "write_file", "glob", "search_file_content", "run_shell_command"]


def check(cond, what, detail=""):
    if not cond:
        print(f"FAILED: {what}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def text(res):
    return "".join(getattr(c, "text", "") for c in res.content)


async def call(s, name, args):
    return await s.call_tool(name, args)


async def fails_with(s, name, args, needle, what):
    res = await call(s, name, args)
    check(res.isError and needle in text(res), what, f"isError={res.isError} {text(res)!r}")


async def succeeds(s, name, args, what):
    res = await call(s, name, args)
    check(not res.isError and res.structuredContent is not None, what, text(res))
    return res.structuredContent


def big_file(path, size):
    """A text file of `size` bytes or a little more, in lines of varying length."""
    rng = random.Random(23)
    with open(path, "w") as f:
        written = 0
        n = 0
        while written < size:
            line = f"{n:08d} " + "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(0, 200))) + "\n"
            f.write(line)
            written += len(line)
            n += 1


async def full(s, scratch):
    init_tools = (await s.list_tools()).tools
    check([t.name for t in init_tools] == TOOLS, "tools/list gives Lima's six tools", [t.name for t in init_tools])

    # write_file: creates parents; the file appears on the host.
    hello = f"{scratch}/py/sub/hello.txt"
    out = await succeeds(s, "write_file", {"path": hello, "content": "hello\nworld\n"}, "write_file creates a file")
    check(out.get("created") is True, "write_file reports a new file", out)
    with open(hello) as f:
        check(f.read() == "hello\nworld\n", "the written file is on the host")
    await fails_with(s, "write_file", {"path": "py/rel.txt", "content": "x"}, "not an absolute path", "write_file refuses a relative path")
    await fails_with(s, "write_file", {"path": hello}, "`content` is missing", "write_file needs content")
    await fails_with(s, "write_file", {"path": f"{scratch}/py/huge.txt", "content": "x" * (9 << 20)}, "more than", "write_file refuses more than its cap")
    check(not os.path.exists(f"{scratch}/py/huge.txt"), "nothing is written past the cap")

    # read_file
    out = await succeeds(s, "read_file", {"path": hello}, "read_file reads a file")
    check(out["content"] == "hello\nworld\n" and "next_offset" not in out, "read_file gives the whole small file", out)
    out = await succeeds(s, "read_file", {"path": hello, "offset": 1, "limit": 1}, "read_file with offset/limit")
    check(out["content"] == "world\n", "read_file pages by lines", out)
    await fails_with(s, "read_file", {"path": f"{scratch}/py/nope.txt"}, "does not exist", "read_file of a missing file")
    await fails_with(s, "read_file", {"path": f"{scratch}/py"}, "is a folder", "read_file of a folder")
    await fails_with(s, "read_file", {"path": "hello.txt"}, "not an absolute path", "read_file refuses a relative path")

    # A 20 MiB file, read by pages, compared by digest.
    big = f"{scratch}/py/big.txt"
    big_file(big, 20 << 20)
    with open(big, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    got = hashlib.sha256()
    offset, pages = 0, 0
    while True:
        out = await succeeds(s, "read_file", {"path": big, "offset": offset, "limit": 1000000}, f"read_file page {pages}")
        got.update(out["content"].encode())
        pages += 1
        if "next_offset" not in out:
            break
        check(out["next_offset"] == offset + out["lines"], "next_offset follows the page", out.get("next_offset"))
        offset = out["next_offset"]
    check(pages >= 5, "a 20 MiB file comes in several pages", pages)
    check(got.hexdigest() == want, "the pages put together are the file (sha256)", got.hexdigest())

    # list_directory
    out = await succeeds(s, "list_directory", {"path": f"{scratch}/py"}, "list_directory lists a folder")
    names = {e["name"]: e for e in out["entries"]}
    check(names.get("sub", {}).get("is_dir") is True and names.get("big.txt", {}).get("size") == os.path.getsize(big),
          "list_directory gives names, sizes and folders", out)
    await fails_with(s, "list_directory", {"path": f"{scratch}/py/none"}, "does not exist", "list_directory of a missing folder")

    # glob
    out = await succeeds(s, "glob", {"pattern": "**/*.txt", "path": f"{scratch}/py"}, "glob finds files")
    check(sorted(out["matches"]) == sorted([big, hello]), "glob gives absolute paths", out)
    await fails_with(s, "glob", {"pattern": "a[", "path": f"{scratch}/py"}, "not a glob pattern", "glob refuses a bad pattern")

    # search_file_content
    out = await succeeds(s, "search_file_content", {"pattern": "wor+ld", "path": f"{scratch}/py", "include": "**/*.txt"}, "search_file_content finds lines")
    check(out["git_grep_output"] == f"{hello}:2:world\n", "search_file_content reads like git grep -n", out)
    await fails_with(s, "search_file_content", {"pattern": "(", "path": scratch}, "not a regular expression", "search_file_content refuses a bad regex")

    # run_shell_command
    out = await succeeds(s, "run_shell_command", {"command": ["sh", "-c", "pwd; id -u; echo err >&2; exit 3"], "directory": f"{scratch}/py"}, "run_shell_command runs")
    lines = out["stdout"].splitlines()
    check(lines[0] == f"{scratch}/py" and lines[1] != "0", "the command runs in the directory, not as root", out)
    check(out["stderr"] == "err\n" and out["exit_code"] == 3, "stderr and the exit code come back", out)
    out = await succeeds(s, "run_shell_command", {"command": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a"], "directory": scratch}, "a command with a lot of output")
    check(out.get("stdout_truncated") is True and len(out["stdout"]) == 1 << 20, "output is capped and marked truncated", len(out["stdout"]))
    pidfile = f"{scratch}/py/sleeper.pid"
    out = await succeeds(s, "run_shell_command", {"command": ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], "directory": scratch, "timeout": 3}, "a command past its time-out")
    check(out.get("timed_out") is True and "time-out" in out.get("error", ""), "the time-out is reported", out)
    out = await succeeds(s, "run_shell_command", {"command": ["sh", "-c", f"kill -0 $(cat {pidfile})"], "directory": scratch}, "checking the background child")
    check(out.get("exit_code") != 0, "the timed-out command's process group was killed", out)
    await fails_with(s, "run_shell_command", {"command": [], "directory": scratch}, "empty", "run_shell_command refuses an empty command")
    await fails_with(s, "run_shell_command", {"command": ["true"], "directory": "tmp"}, "not an absolute path", "run_shell_command refuses a relative directory")
    await fails_with(s, "run_shell_command", {"command": ["true"], "directory": f"{scratch}/py/none"}, "none", "run_shell_command in a missing directory")

    # Outside the only mount.
    await fails_with(s, "read_file", {"path": "/etc/passwd"}, "outside every folder this instance mounts", "a path outside the mounts is refused")
    await fails_with(s, "read_file", {"path": f"{scratch}/../etc/passwd"}, "outside every folder this instance mounts", "`..` cannot leave the mounts")
    await fails_with(s, "run_shell_command", {"command": ["true"], "directory": "/"}, "outside every folder this instance mounts", "a command directory outside the mounts is refused")
    await fails_with(s, "no_such_tool", {}, "no_such_tool", "an unknown tool is an error")


async def stopped(s, scratch):
    tools = (await s.list_tools()).tools
    check([t.name for t in tools] == TOOLS, "a stopped instance still lists the tools", [t.name for t in tools])
    await fails_with(s, "read_file", {"path": f"{scratch}/x"}, "is not running", "a call on a stopped instance says so")
    await fails_with(s, "run_shell_command", {"command": ["true"], "directory": scratch}, "is not running", "a command on a stopped instance says so")


async def main():
    limactl, instance, scratch, mode = sys.argv[1:5]
    params = StdioServerParameters(command=limactl, args=["mcp", "serve", instance], env=dict(os.environ))
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            check(init.serverInfo.name == "lima", "initialize names the server lima", init.serverInfo)
            check(init.capabilities.tools is not None, "the server offers tools")
            await (full if mode == "full" else stopped)(s, scratch)
    print("python client: all checks passed", flush=True)


asyncio.run(main())
