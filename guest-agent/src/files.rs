//! `Purpose::Files`: file operations for `limactl mcp serve`, carried out
//! as the guest user the stream names, never as root.
//!
//! Each stream gets a thread of its own that drops root before it touches
//! a file: raw `setgroups`/`setresgid`/`setresuid` system calls change the
//! credentials of the calling thread only (the libc wrappers would change
//! every thread of the agent). The thread ends with the stream, so nothing
//! needs to switch back; with all its user ids non-zero the kernel has
//! cleared its capabilities, so the usual permission checks apply to it.
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lima_proto::files::{
    Entry, ErrorKind, FilesError, FilesReply, FilesRequest, Match, ReadPage, DEFAULT_READ_LINES,
    MAX_ENTRIES, MAX_MATCHES, MAX_READ_BYTES, MAX_SEARCH_FILE, MAX_WALK, MAX_WRITE_BYTES,
};
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::users;

type Job = (FilesRequest, oneshot::Sender<FilesReply>);

/// Serves one Files stream until the host hangs up.
pub async fn serve<S>(mut stream: S) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = match read_frame_async::<_, FilesRequest>(&mut stream).await? {
        None => return Ok(()),
        Some(FilesRequest::Open { user }) => user,
        Some(_) => {
            let reply = error(
                ErrorKind::Closed,
                "the stream must start with Open{user}".into(),
            );
            write_frame_async(&mut stream, &reply).await?;
            return Ok(());
        }
    };
    let (jobs, worker) = match start_worker(&user) {
        Ok(x) => x,
        Err(message) => {
            write_frame_async(&mut stream, &error(ErrorKind::Closed, message)).await?;
            return Ok(());
        }
    };
    write_frame_async(&mut stream, &FilesReply::Opened).await?;
    while let Some(req) = read_frame_async::<_, FilesRequest>(&mut stream).await? {
        let (tx, rx) = oneshot::channel();
        if jobs.send((req, tx)).is_err() {
            break;
        }
        let reply = rx.await.unwrap_or_else(|_| {
            error(
                ErrorKind::Other,
                "the guest agent's file worker stopped".into(),
            )
        });
        write_frame_async(&mut stream, &reply).await?;
    }
    drop(jobs);
    let _ = worker.join();
    Ok(())
}

/// Starts the thread that works as `user`; fails when the user is unknown
/// or its credentials cannot be taken.
fn start_worker(
    user: &str,
) -> Result<(std::sync::mpsc::Sender<Job>, std::thread::JoinHandle<()>), String> {
    let account = users::lookup(Some(user))?;
    let groups = users::groups_of(&account);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let name = account.name.clone();
    let handle = std::thread::Builder::new()
        .name(format!("files-{name}"))
        .spawn(move || {
            if let Err(e) = become_user(account.uid, account.gid, &groups) {
                let _ = ready_tx.send(Err(format!("cannot act as guest user `{name}`: {e}")));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            while let Ok((req, reply)) = jobs_rx.recv() {
                let _ = reply.send(handle(req));
            }
        })
        .map_err(|e| format!("cannot start a file worker: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((jobs_tx, handle)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the file worker stopped before it started".into()),
    }
}

/// Makes the calling thread (only) the user: its groups, then its group,
/// then its user id, all three ids of each.
fn become_user(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let (uid, gid) = (uid as libc::c_long, gid as libc::c_long);
    // SAFETY: setgroups reads `groups.len()` gids from the live vector;
    // setresgid/setresuid take plain integers. Raw syscalls act on this
    // thread alone.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            groups.as_ptr(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

fn error(kind: ErrorKind, message: String) -> FilesReply {
    FilesReply::Error(FilesError { kind, message })
}

/// One sentence for an I/O error on `path`.
fn io_error(path: &str, e: &std::io::Error) -> FilesReply {
    let (kind, what) = match e.raw_os_error() {
        Some(libc::ENOENT) => (ErrorKind::NotFound, "does not exist".to_string()),
        Some(libc::EACCES) | Some(libc::EPERM) => (
            ErrorKind::PermissionDenied,
            "cannot be accessed: permission denied for the guest user".to_string(),
        ),
        Some(libc::ENOTDIR) => (
            ErrorKind::NotADirectory,
            "is not a folder (or a part of it is not)".to_string(),
        ),
        Some(libc::EISDIR) => (ErrorKind::IsADirectory, "is a folder".to_string()),
        _ => (ErrorKind::Other, format!("failed: {e}")),
    };
    error(kind, format!("{path} {what}"))
}

/// `path` if it is absolute, else the error to reply.
fn absolute(path: &str) -> Result<&Path, FilesReply> {
    if path.starts_with('/') {
        Ok(Path::new(path))
    } else {
        Err(error(
            ErrorKind::Invalid,
            format!("`{path}` is not an absolute path; give the full guest path (starting with /)"),
        ))
    }
}

fn handle(req: FilesRequest) -> FilesReply {
    let result = match req {
        FilesRequest::Open { .. } => Err(error(
            ErrorKind::Invalid,
            "the stream is already open".into(),
        )),
        FilesRequest::Read {
            path,
            offset,
            limit,
        } => read(&path, offset, limit.unwrap_or(DEFAULT_READ_LINES)),
        FilesRequest::Write { path, data } => write(&path, &data),
        FilesRequest::List { path } => list(&path),
        FilesRequest::Glob { dir, pattern } => glob(&dir, &pattern),
        FilesRequest::Search {
            dir,
            pattern,
            include,
        } => search(&dir, &pattern, include.as_deref()),
        FilesRequest::Stat { path } => absolute(&path).and_then(|p| {
            fs::metadata(p)
                .map(|m| FilesReply::Stat(entry(name_of(p), &m)))
                .map_err(|e| io_error(&path, &e))
        }),
    };
    result.unwrap_or_else(|e| e)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

fn entry(name: String, m: &fs::Metadata) -> Entry {
    Entry {
        name,
        size: m.len(),
        mode: m.permissions().mode(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
        is_dir: m.is_dir(),
    }
}

fn read(path: &str, offset: u64, limit: u64) -> Result<FilesReply, FilesReply> {
    let p = absolute(path)?;
    let file = File::open(p).map_err(|e| io_error(path, &e))?;
    let meta = file.metadata().map_err(|e| io_error(path, &e))?;
    if meta.is_dir() {
        return Err(error(
            ErrorKind::IsADirectory,
            format!("{path} is a folder; use list_directory"),
        ));
    }
    read_page(
        BufReader::with_capacity(256 << 10, file),
        offset,
        limit,
        MAX_READ_BYTES,
    )
    .map(|mut page| {
        page.size = meta.len();
        FilesReply::Read(page)
    })
    .map_err(|e| io_error(path, &e))
}

/// Lines `offset..offset+limit` of `r`, at most `cap` bytes of them.
fn read_page(mut r: impl BufRead, offset: u64, limit: u64, cap: u64) -> std::io::Result<ReadPage> {
    // Skip `offset` lines.
    let mut skipped = 0;
    while skipped < offset {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                skipped += 1;
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    let mut page = ReadPage {
        content: Vec::new(),
        offset,
        lines: 0,
        next_offset: None,
        line_cut: false,
        size: 0,
    };
    let mut line = Vec::new();
    while page.lines < limit.max(1) {
        line.clear();
        // Read one line, but never hold more than the cap of it.
        let mut ended = false;
        loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let (take, nl) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = (cap as usize + 1).saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            r.consume(take);
            if nl {
                ended = true;
                break;
            }
        }
        if line.is_empty() {
            // End of file.
            return Ok(page);
        }
        if (page.content.len() + line.len()) as u64 > cap {
            if page.lines > 0 {
                // This line starts the next page.
                page.next_offset = Some(offset + page.lines);
                return Ok(page);
            }
            // One line alone is over the cap: give its start, skip the rest.
            line.truncate(cap as usize);
            page.line_cut = true;
            if !ended {
                loop {
                    let buf = r.fill_buf()?;
                    if buf.is_empty() {
                        break;
                    }
                    match buf.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            r.consume(i + 1);
                            break;
                        }
                        None => {
                            let n = buf.len();
                            r.consume(n);
                        }
                    }
                }
            }
            page.content.extend_from_slice(&line);
            page.lines += 1;
            break;
        }
        page.content.extend_from_slice(&line);
        page.lines += 1;
    }
    if !r.fill_buf()?.is_empty() {
        page.next_offset = Some(offset + page.lines);
    }
    Ok(page)
}

fn write(path: &str, data: &[u8]) -> Result<FilesReply, FilesReply> {
    let p = absolute(path)?;
    if data.len() > MAX_WRITE_BYTES {
        return Err(error(
            ErrorKind::Invalid,
            format!(
                "the content is {} bytes, more than the {} bytes one write_file call may write",
                data.len(),
                MAX_WRITE_BYTES
            ),
        ));
    }
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(|e| io_error(&parent.display().to_string(), &e))?;
    }
    let created = fs::symlink_metadata(p).is_err();
    let mut f = File::create(p).map_err(|e| io_error(path, &e))?;
    f.write_all(data)
        .and_then(|_| f.sync_data())
        .map_err(|e| io_error(path, &e))?;
    Ok(FilesReply::Written {
        bytes: data.len() as u64,
        created,
    })
}

fn list(path: &str) -> Result<FilesReply, FilesReply> {
    let p = absolute(path)?;
    let rd = fs::read_dir(p).map_err(|e| io_error(path, &e))?;
    let mut entries = Vec::new();
    let mut truncated = false;
    for e in rd {
        let e = e.map_err(|e| io_error(path, &e))?;
        if entries.len() >= MAX_ENTRIES {
            truncated = true;
            break;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(m) = e.metadata() {
            entries.push(entry(name, &m));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FilesReply::Entries { entries, truncated })
}

/// A folder to walk: absolute `dir` must be one.
fn walk_root(dir: &str) -> Result<&Path, FilesReply> {
    let p = absolute(dir)?;
    let m = fs::metadata(p).map_err(|e| io_error(dir, &e))?;
    if !m.is_dir() {
        return Err(error(
            ErrorKind::NotADirectory,
            format!("{dir} is not a folder"),
        ));
    }
    Ok(p)
}

/// Files (not folders) below `root` with their paths relative to it,
/// depth-first in name order, without following symlinked folders;
/// `max_depth` components at most. Calls `each` until it returns false.
/// Returns true when it stopped at [`MAX_WALK`].
fn walk(
    root: &Path,
    max_depth: usize,
    skip_git: bool,
    mut each: impl FnMut(&Path, &str, &fs::FileType) -> bool,
) -> bool {
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    let mut seen = 0usize;
    while let Some((dir, rel, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        let mut items: Vec<_> = rd.flatten().collect();
        items.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in items {
            seen += 1;
            if seen > MAX_WALK {
                return true;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = e.file_type() else { continue };
            if !each(&e.path(), &child_rel, &ft) {
                return false;
            }
            if ft.is_dir() && depth + 1 < max_depth && !(skip_git && name == ".git") {
                subdirs.push((e.path(), child_rel, depth + 1));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    false
}

fn glob(dir: &str, pattern: &str) -> Result<FilesReply, FilesReply> {
    let root = walk_root(dir)?;
    let pattern = pattern.trim_start_matches('/');
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| {
            error(
                ErrorKind::Invalid,
                format!("`{pattern}` is not a glob pattern: {e}"),
            )
        })?
        .compile_matcher();
    let depth = if pattern.contains("**") {
        usize::MAX
    } else {
        pattern.split('/').count()
    };
    let mut paths = Vec::new();
    let mut full = false;
    let stopped = walk(root, depth, false, |abs, rel, _| {
        if matcher.is_match(rel) {
            if paths.len() >= MAX_ENTRIES {
                full = true;
                return false;
            }
            paths.push(abs.display().to_string());
        }
        true
    });
    Ok(FilesReply::Paths {
        paths,
        truncated: full || stopped,
    })
}

fn search(dir: &str, pattern: &str, include: Option<&str>) -> Result<FilesReply, FilesReply> {
    let p = absolute(dir)?;
    let re = regex::bytes::Regex::new(pattern).map_err(|e| {
        error(
            ErrorKind::Invalid,
            format!(
                "`{pattern}` is not a regular expression: {}",
                one_line(&e.to_string())
            ),
        )
    })?;
    let include = match include.filter(|s| !s.is_empty()) {
        None => None,
        Some(g) => Some(
            globset::Glob::new(g.trim_start_matches('/'))
                .map_err(|e| {
                    error(
                        ErrorKind::Invalid,
                        format!("`{g}` is not a glob pattern: {e}"),
                    )
                })?
                .compile_matcher(),
        ),
    };
    let meta = fs::metadata(p).map_err(|e| io_error(dir, &e))?;
    let mut matches = Vec::new();
    let mut full = false;
    let mut scan = |abs: &Path| -> bool {
        let Ok(f) = File::open(abs) else { return true };
        let Ok(m) = f.metadata() else { return true };
        if !m.is_file() || m.len() > MAX_SEARCH_FILE {
            return true;
        }
        let mut data = Vec::with_capacity(m.len() as usize);
        if f.take(MAX_SEARCH_FILE).read_to_end(&mut data).is_err() {
            return true;
        }
        if data[..data.len().min(8000)].contains(&0) {
            return true; // binary
        }
        for (i, line) in data.split(|&b| b == b'\n').enumerate() {
            if re.is_match(line) {
                if matches.len() >= MAX_MATCHES {
                    full = true;
                    return false;
                }
                let mut text = String::from_utf8_lossy(line).into_owned();
                if text.len() > 2000 {
                    let mut cut = 2000;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                matches.push(Match {
                    path: abs.display().to_string(),
                    line: i as u64 + 1,
                    text,
                });
            }
        }
        true
    };
    let stopped = if meta.is_dir() {
        walk(p, usize::MAX, true, |abs, rel, ft| {
            if ft.is_file() && include.as_ref().is_none_or(|g| g.is_match(rel)) {
                scan(abs)
            } else {
                true
            }
        })
    } else {
        scan(p);
        false
    };
    Ok(FilesReply::Matches {
        matches,
        truncated: full || stopped,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str, offset: u64, limit: u64, cap: u64) -> ReadPage {
        read_page(std::io::Cursor::new(text.as_bytes()), offset, limit, cap).unwrap()
    }

    #[test]
    fn pages_by_lines_within_the_byte_cap() {
        let p = page("a\nb\nc\n", 0, 2, 100);
        assert_eq!(
            (p.content.as_slice(), p.next_offset),
            (&b"a\nb\n"[..], Some(2))
        );
        let p = page("a\nb\nc\n", 2, 2, 100);
        assert_eq!((p.content.as_slice(), p.next_offset), (&b"c\n"[..], None));
        // The cap ends a page at the last whole line.
        let p = page("aaaa\nbbbb\ncccc\n", 0, 100, 10);
        assert_eq!(
            (p.content.as_slice(), p.next_offset),
            (&b"aaaa\nbbbb\n"[..], Some(2))
        );
        // A line alone over the cap is cut and skipped.
        let p = page("0123456789abc\nz", 0, 100, 4);
        assert_eq!(p.content, b"0123");
        assert!(p.line_cut);
        assert_eq!(p.next_offset, Some(1));
        let p = page("0123456789abc\nz", 1, 100, 4);
        assert_eq!((p.content.as_slice(), p.next_offset), (&b"z"[..], None));
        // Past the end: nothing.
        let p = page("a\n", 5, 1, 4);
        assert_eq!((p.lines, p.next_offset), (0, None));
    }

    #[test]
    fn relative_paths_are_refused() {
        match handle(FilesRequest::Stat {
            path: "etc/passwd".into(),
        }) {
            FilesReply::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Invalid);
                assert!(e.message.contains("not an absolute path"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn glob_search_write_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let w = |rel: &str, text: &str| {
            handle(FilesRequest::Write {
                path: format!("{d}/{rel}"),
                data: text.as_bytes().to_vec(),
            })
        };
        assert!(matches!(
            w("src/a.rs", "fn main() {}\n"),
            FilesReply::Written { created: true, .. }
        ));
        assert!(matches!(
            w("src/deep/b.rs", "x\nfn b() {}\n"),
            FilesReply::Written { .. }
        ));
        assert!(matches!(
            w("README.md", "fn not code\n"),
            FilesReply::Written { .. }
        ));
        match glob(&d, "src/**/*.rs").unwrap() {
            FilesReply::Paths { paths, truncated } => {
                assert!(!truncated);
                assert_eq!(
                    paths,
                    [format!("{d}/src/a.rs"), format!("{d}/src/deep/b.rs")]
                );
            }
            other => panic!("{other:?}"),
        }
        match glob(&d, "*.md").unwrap() {
            FilesReply::Paths { paths, .. } => assert_eq!(paths, [format!("{d}/README.md")]),
            other => panic!("{other:?}"),
        }
        match search(&d, r"fn\s+\w+\(", Some("*.rs")).unwrap() {
            FilesReply::Matches { matches, .. } => {
                let got: Vec<_> = matches.iter().map(|m| (m.path.clone(), m.line)).collect();
                assert_eq!(
                    got,
                    [
                        (format!("{d}/src/a.rs"), 1),
                        (format!("{d}/src/deep/b.rs"), 2)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            search(&d, "(", None),
            Err(FilesReply::Error(FilesError {
                kind: ErrorKind::Invalid,
                ..
            }))
        ));
        match list(&d).unwrap() {
            FilesReply::Entries { entries, .. } => {
                let names: Vec<_> = entries
                    .iter()
                    .map(|e| (e.name.as_str(), e.is_dir))
                    .collect();
                assert_eq!(names, [("README.md", false), ("src", true)]);
            }
            other => panic!("{other:?}"),
        }
        match handle(FilesRequest::Read {
            path: format!("{d}/nope"),
            offset: 0,
            limit: None,
        }) {
            FilesReply::Error(e) => assert_eq!(
                (e.kind, e.message),
                (ErrorKind::NotFound, format!("{d}/nope does not exist"))
            ),
            other => panic!("{other:?}"),
        }
    }
}
