//! `limactl copy` as a library: files and folders between the host and
//! running guests, named the way `scp` names them, carried as a tar stream
//! through the guest agent (no SSH, so it works on images without sshd).
//!
//! ```text
//! sender                      host thread                 receiver
//! host: tar builder      ─▶  rename the top entry   ─▶  host: tar unpack
//! guest: `tar -c` (exec)      (and check every path)     guest: `tar -x` (exec)
//! ```
//!
//! Each stage runs on a thread of its own (a guest stage with its own
//! runtime) joined by pipes, so a slow end only slows the copy. Guest
//! commands run as the instance's guest user, in its home, so a relative
//! guest path is relative to the home, as with scp.
//!
//! Naming ([`plan`]): a target that is an existing folder receives each
//! source under the source's own name; otherwise the one source becomes
//! the target path itself. A folder needs `-r`. Symbolic links inside a
//! copied folder stay links; a source that is itself a link is followed.
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lima_proto::{ExecRequest, ExitStatus};

use crate::exec::{self, ExecError, Io};
use crate::vsock::Transport;

/// One operand: a path on the host, or `INSTANCE:PATH` in a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Host(String),
    Guest { instance: String, path: String },
}

impl Place {
    /// Lima's rule: no colon is a host path, one colon splits the instance
    /// name from its path (empty: the guest user's home), more is an error.
    pub fn parse(arg: &str) -> Result<Place> {
        let parts: Vec<&str> = arg.split(':').collect();
        match parts[..] {
            [path] => {
                ensure!(
                    !path.is_empty(),
                    "an empty path was given; name a file or folder"
                );
                Ok(Place::Host(path.to_string()))
            }
            [instance, path] => Ok(Place::Guest {
                instance: instance.to_string(),
                path: if path.is_empty() {
                    ".".into()
                } else {
                    path.into()
                },
            }),
            _ => bail!("path {arg:?} contains multiple colons"),
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Place::Host(p) => p,
            Place::Guest { path, .. } => path,
        }
    }

    pub fn instance(&self) -> Option<&str> {
        match self {
            Place::Host(_) => None,
            Place::Guest { instance, .. } => Some(instance),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Host(p) => f.write_str(p),
            Place::Guest { instance, path } => write!(f, "{instance}:{path}"),
        }
    }
}

/// A running guest to copy from or to.
pub struct Guest {
    pub instance: String,
    pub transport: Box<dyn Transport>,
    /// The guest user the copy acts as.
    pub user: String,
}

/// Where one end of a copy is.
#[derive(Clone, Copy)]
pub enum Side<'a> {
    Host,
    Guest(&'a Guest),
}

/// What a target path is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Folder,
    /// A file, or anything else that is not a folder.
    Other,
}

/// One source's destination: the folder that receives it, and the name it
/// gets there (`None`: the name the sender gives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub dir: String,
    pub name: Option<String>,
}

/// Where each source goes, given the target path and what it is now.
pub fn plan(sources: &[Place], target: &str, kind: Kind) -> Result<Vec<Dest>> {
    if kind == Kind::Folder {
        return Ok(sources
            .iter()
            .map(|s| Dest {
                dir: target.to_string(),
                name: last_name(s.path()),
            })
            .collect());
    }
    ensure!(
        sources.len() == 1,
        "the target {target:?} is not an existing folder; copying several sources needs one"
    );
    let trimmed = target.trim_end_matches('/');
    ensure!(
        kind == Kind::Other || trimmed.len() == target.len(),
        "the target folder {target:?} does not exist; create it first"
    );
    let name = last_name(trimmed)
        .ok_or_else(|| anyhow!("the target {target:?} does not name a file or folder to create"))?;
    let dir = match trimmed.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => trimmed[..i].to_string(),
        None => ".".to_string(),
    };
    Ok(vec![Dest {
        dir,
        name: Some(name),
    }])
}

/// The last component of a path, unless it is empty, `.` or `..` (then the
/// sender's own name for what the path resolves to is used).
fn last_name(path: &str) -> Option<String> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    (!matches!(last, "" | "." | "..")).then(|| last.to_string())
}

/// What `path` is on `side`.
pub fn kind(side: Side<'_>, path: &str) -> Result<Kind> {
    match side {
        Side::Host => match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Kind::Folder),
            Ok(_) => Ok(Kind::Other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kind::Missing),
            Err(e) => Err(e).with_context(|| format!("cannot look at {path}")),
        },
        Side::Guest(g) => {
            let out = guest_capture(g, KIND_SCRIPT, &[path])?;
            match out.trim() {
                "folder" => Ok(Kind::Folder),
                "other" => Ok(Kind::Other),
                "missing" => Ok(Kind::Missing),
                other => bail!("{}: unexpected answer {other:?}", g.instance),
            }
        }
    }
}

/// Copies `src` on one side into `dest` on the other (or the same) side.
pub fn copy(from: Side<'_>, src: &str, to: Side<'_>, dest: &Dest, recursive: bool) -> Result<()> {
    let (r1, w1) = std::io::pipe().context("cannot make a pipe")?;
    let (r2, w2) = std::io::pipe().context("cannot make a pipe")?;
    let (sent, renamed, received) = std::thread::scope(|s| {
        let sender = s.spawn(move || match from {
            Side::Host => host_send(src, recursive, w1),
            Side::Guest(g) => guest_run(g, SEND_SCRIPT, &[src, flag(recursive)], None, Some(w1)),
        });
        let renamer = s.spawn(move || rename_top(r1, w2, dest.name.as_deref()));
        let receiver = s.spawn(move || match to {
            Side::Host => host_receive(&dest.dir, r2),
            Side::Guest(g) => guest_run(g, RECEIVE_SCRIPT, &[&dest.dir], Some(r2), None),
        });
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow!("a copy thread panicked")))
        };
        (join(sender), join(renamer), join(receiver))
    });
    // When one stage fails the others see a closed pipe or a cut stream:
    // report the one that failed first, which is the one that did not fail
    // for that reason.
    let errors: Vec<anyhow::Error> = [sent, received, renamed]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match errors.iter().position(|e| !is_closed_pipe(e)) {
        Some(i) => Err(errors.into_iter().nth(i).expect("found above")),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<ExecError>(), Some(ExecError::StdoutClosed))
    }) || e.to_string().contains(CUT_SHORT)
}

const CUT_SHORT: &str = "the copy was cut short";

/// Prints what `$1` is: `folder`, `other` or `missing`.
const KIND_SCRIPT: &str =
    r#"if [ -d "$1" ]; then echo folder; elif [ -e "$1" ]; then echo other; else echo missing; fi"#;

/// Writes `$1` (a folder only if `$2` is 1) as a tar stream on stdout,
/// following `$1` itself when it is a link.
const SEND_SCRIPT: &str = r#"s=$1
if [ ! -e "$s" ]; then echo "$s: no such file or folder" >&2; exit 1; fi
if [ -d "$s" ] && [ "$2" != 1 ]; then echo "$s: is a folder (copy folders with -r)" >&2; exit 1; fi
s=$(readlink -f -- "$s") || exit 1
if [ "$s" = / ]; then echo "refusing to copy the whole root folder" >&2; exit 1; fi
cd -- "$(dirname -- "$s")" || exit 1
exec tar -c -f - -- "$(basename -- "$s")""#;

/// Unpacks the tar stream on stdin into the folder `$1`, which must exist;
/// modification times are today's, as with scp without -p.
const RECEIVE_SCRIPT: &str = r#"if [ ! -d "$1" ]; then echo "$1: no such folder" >&2; exit 1; fi
cd -- "$1" || exit 1
exec tar -x -m -f -"#;

fn request(g: &Guest, script: &str, args: &[&str]) -> ExecRequest {
    let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    ExecRequest {
        argv,
        env: Vec::new(),
        // The guest user's home.
        cwd: None,
        cwd_fallback: false,
        user: Some(g.user.clone()),
        login: false,
        pty: None,
    }
}

/// Runs a script in the guest with a runtime of this thread's own; `stdin`
/// and `stdout` are the copy's pipes. A failure is the script's stderr.
fn guest_run(
    g: &Guest,
    script: &str,
    args: &[&str],
    stdin: Option<std::io::PipeReader>,
    stdout: Option<std::io::PipeWriter>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let req = request(g, script, args);
    let mut stderr = Vec::new();
    let status = rt.block_on(async {
        let session = exec::start(g.transport.as_ref(), &req).await?;
        let stdin: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match stdin {
            Some(r) => Box::new(tokio::fs::File::from_std(std::fs::File::from(
                std::os::fd::OwnedFd::from(r),
            ))),
            None => Box::new(tokio::io::empty()),
        };
        let mut sink = std::io::sink();
        let mut pipe;
        let stdout: &mut (dyn Write + Send) = match stdout {
            Some(w) => {
                pipe = w;
                &mut pipe
            }
            None => &mut sink,
        };
        session
            .finish(Io {
                stdin,
                stdout,
                stderr: &mut stderr,
                events: None,
            })
            .await
    });
    let status = status.with_context(|| format!("{}: the copy failed", g.instance))?;
    guest_result(g, status, &stderr)
}

/// A script's exit: fine, or an error carrying what it printed.
fn guest_result(g: &Guest, status: ExitStatus, stderr: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    match status {
        ExitStatus::Code(0) => {
            for line in text.lines() {
                tracing::warn!("{}: {line}", g.instance);
            }
            Ok(())
        }
        // 141 or SIGPIPE: its reader went away first.
        ExitStatus::Signal(13) | ExitStatus::Code(141) => {
            Err(anyhow!("{}: {CUT_SHORT}", g.instance))
        }
        _ if text.is_empty() => bail!("{}: the copy failed ({status:?})", g.instance),
        _ => bail!("{}: {}", g.instance, text.replace('\n', "; ")),
    }
}

/// Runs a script that reads nothing and prints a short answer.
fn guest_capture(g: &Guest, script: &str, args: &[&str]) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt
        .block_on(exec::capture(
            g.transport.as_ref(),
            &request(g, script, args),
            Vec::new(),
        ))
        .with_context(|| format!("{}: cannot reach the guest agent", g.instance))?;
    guest_result(g, out.status, &out.stderr)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes the host path `src` as a tar stream whose top entry is its name.
fn host_send(src: &str, recursive: bool, out: impl Write) -> Result<()> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {src}"))?;
    ensure!(
        recursive || !meta.is_dir(),
        "{src}: is a folder (copy folders with -r)"
    );
    // The source itself is followed when it is a link; its name is the
    // receiver's business (see `rename_top`).
    let real = std::fs::canonicalize(src).with_context(|| format!("cannot read {src}"))?;
    let name = real
        .file_name()
        .ok_or_else(|| anyhow!("refusing to copy the whole root folder"))?
        .to_os_string();
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(&name, &real)
    } else {
        b.append_path_with_name(&real, &name)
    }
    .with_context(|| format!("cannot read {src}"))?;
    b.into_inner()?.flush()?;
    Ok(())
}

/// Unpacks a tar stream into the host folder `dir`, which must exist.
/// The tar crate keeps every entry inside `dir`, links included.
fn host_receive(dir: &str, input: impl Read) -> Result<()> {
    ensure!(Path::new(dir).is_dir(), "{dir}: no such folder");
    let mut a = tar::Archive::new(input);
    a.set_preserve_mtime(false);
    a.set_overwrite(true);
    // The guest's modes pass through the user's umask, as with scp: a
    // guest cannot make the host's files group- or world-writable.
    a.set_mask(crate::privacy::user_umask());
    a.unpack(dir)
        .with_context(|| format!("cannot write into {dir}"))
}

/// Copies a tar stream whose entries all sit under one top entry, giving
/// that entry the name `to` (if given). Any other shape, or a path that
/// climbs out (`..`, absolute), is refused: the receiver only ever gets
/// what the copy names.
pub fn rename_top(input: impl Read, output: impl Write, to: Option<&str>) -> Result<()> {
    let mut a = tar::Archive::new(input);
    let mut b = tar::Builder::new(output);
    let mut top: Option<OsString> = None;
    for entry in a.entries().context("cannot read the copy's stream")? {
        let mut entry = entry.context("cannot read the copy's stream")?;
        let ty = entry.header().entry_type();
        if matches!(ty, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let path = entry.path()?.into_owned();
        let (first, rest) = split_top(&path)?;
        match &top {
            None => top = Some(first.clone()),
            Some(t) => ensure!(
                *t == first,
                "the copy's stream has more than one top entry ({} and {})",
                Path::new(t).display(),
                Path::new(&first).display()
            ),
        }
        let new_top = to.map(OsString::from).unwrap_or(first);
        let new_path = under(&new_top, &rest);
        let mut header = entry.header().clone();
        // The size may have come from a PAX record the raw header lacks.
        header.set_size(entry.size());
        match ty {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("a link without a target: {}", path.display()))?
                    .into_owned();
                b.append_link(&mut header, &new_path, target)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("a link without a target: {}", path.display()))?
                    .into_owned();
                let (t_first, t_rest) = split_top(&target)?;
                ensure!(
                    Some(&t_first) == top.as_ref(),
                    "a hard link outside the copy: {}",
                    target.display()
                );
                b.append_link(&mut header, &new_path, under(&new_top, &t_rest))?;
            }
            _ => b.append_data(&mut header, &new_path, &mut entry)?,
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// `top/rest`, or `top` when `rest` is empty (`join` would add a slash).
fn under(top: &OsString, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        PathBuf::from(top)
    } else {
        Path::new(top).join(rest)
    }
}

/// `a/b/c` → (`a`, `b/c`), ignoring `./`; refuses `..` and absolute paths.
fn split_top(path: &Path) -> Result<(OsString, PathBuf)> {
    let mut parts = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(s) => Ok(s.to_os_string()),
            _ => Err(anyhow!(
                "refusing an entry that leaves the copy: {}",
                path.display()
            )),
        });
    let first = parts
        .next()
        .ok_or_else(|| anyhow!("an entry without a name in the copy's stream"))??;
    let rest = parts.collect::<Result<PathBuf>>()?;
    Ok((first, rest))
}

#[cfg(test)]
mod tests;
