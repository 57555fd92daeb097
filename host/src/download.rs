//! Disk images from the network, into a private cache keyed by URL.
//!
//! ```text
//! $XDG_CACHE_HOME/lima-rs/download/by-url-sha256/<sha256 of the URL>/
//!   data      the image, only ever put there by a rename once complete
//!   url       the URL, for people looking at the cache
//!   digest    the digest `data` was verified against ("sha512:…"), if any
//! ```
//!
//! A download goes to `data.tmp-PID` beside `data`, hashed as it arrives; it
//! becomes `data` only when it is whole (the server's length), matches the
//! digest `lima.yaml` gave, and looks like a disk image (qcow2, or raw with a
//! partition table). Any failure removes what it wrote, so an interrupted
//! or bad download leaves nothing half-made and the next start tries again.
//! The cache is 0700: images may hold what their builder put in them.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: the digest `{digest}` is not `sha256:HEX` or `sha512:HEX`")]
    BadDigest { url: String, digest: String },
    #[error("cannot download {url}: {why}")]
    Http { url: String, why: String },
    #[error("cannot download {url}: the connection ended after {got} of {want} bytes; start again to retry")]
    Truncated { url: String, got: u64, want: u64 },
    #[error("{url}: {algo} digest mismatch: lima.yaml says {want}, the download is {got}")]
    Mismatch {
        url: String,
        algo: &'static str,
        want: String,
        got: String,
    },
    #[error("{url} is not a disk image (neither qcow2 nor a raw disk with a partition table)")]
    NotADiskImage { url: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A digest from `lima.yaml` (`sha256:HEX`, `sha512:HEX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    algo: Algo,
    hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Sha256,
    Sha512,
}

impl Expected {
    pub fn parse(url: &str, text: &str) -> Result<Self, DownloadError> {
        let bad = || DownloadError::BadDigest {
            url: url.to_string(),
            digest: text.to_string(),
        };
        let (algo, hex) = text.split_once(':').ok_or_else(bad)?;
        let (algo, len) = match algo {
            "sha256" => (Algo::Sha256, 64),
            "sha512" => (Algo::Sha512, 128),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Expected {
            algo,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// The algorithm's name as digests write it (`sha256`, `sha512`).
    pub fn algo_name(&self) -> &'static str {
        self.name()
    }

    /// The expected digest in lower-case hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    fn name(&self) -> &'static str {
        match self.algo {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    fn text(&self) -> String {
        format!("{}:{}", self.name(), self.hex)
    }
}

/// Hashes with the algorithm a digest names.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(e: &Expected) -> Self {
        match e.algo {
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Our cache folder: `$XDG_CACHE_HOME/lima-rs`, or `~/.cache/lima-rs`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lima-rs");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
        .join(".cache/lima-rs")
}

/// Where `url` is cached under `cache`.
pub fn entry_dir(cache: &Path, url: &str) -> PathBuf {
    cache
        .join("download/by-url-sha256")
        .join(hex::encode(sha2::Sha256::digest(url.as_bytes())))
}

/// The folder every cached download is in.
pub fn downloads_dir(cache: &Path) -> PathBuf {
    cache.join("download")
}

/// Removes cached downloads, returning what went: with `keep` `None`, the
/// whole download folder; else every entry whose URL is not in `keep`, and
/// in the kept ones the partial downloads of processes that are gone.
/// Instances hard-link their base disks, so none of them loses its disk.
pub fn prune(cache: &Path, keep: Option<&[String]>) -> Result<Vec<PathBuf>, DownloadError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { what, path, source }
    };
    let root = downloads_dir(cache);
    let Some(keep) = keep else {
        if !root.exists() {
            return Ok(Vec::new());
        }
        std::fs::remove_dir_all(&root).map_err(io("remove", &root))?;
        return Ok(vec![root]);
    };
    let kept: std::collections::HashSet<PathBuf> =
        keep.iter().map(|url| entry_dir(cache, url)).collect();
    let by_url = root.join("by-url-sha256");
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&by_url) else {
        return Ok(removed);
    };
    for entry in entries {
        let dir = entry.map_err(io("read", &by_url))?.path();
        if !kept.contains(&dir) {
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
            removed.push(dir);
            continue;
        }
        for file in std::fs::read_dir(&dir).map_err(io("read", &dir))?.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("data.tmp-") else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                std::fs::remove_file(file.path()).map_err(io("remove", &file.path()))?;
                removed.push(file.path());
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether `head` (the file's first 1 KiB or more) starts a disk image.
fn looks_like_disk(head: &[u8]) -> bool {
    let qcow2 = head.starts_with(b"QFI\xfb");
    let mbr = head.len() >= 512 && head[510..512] == [0x55, 0xaa];
    let gpt = head.len() >= 520 && &head[512..520] == b"EFI PART";
    qcow2 || mbr || gpt
}

/// The cached image of `url`, downloaded first if it is not cached yet
/// (or was cached against another digest). `progress` draws a bar on
/// stderr.
pub fn fetch(
    cache: &Path,
    url: &str,
    digest: Option<&str>,
    progress: bool,
) -> Result<PathBuf, DownloadError> {
    let expected = digest.map(|d| Expected::parse(url, d)).transpose()?;
    let dir = entry_dir(cache, url);
    let data = dir.join("data");
    if data.exists() {
        let recorded = std::fs::read_to_string(dir.join("digest")).unwrap_or_default();
        match &expected {
            None => return Ok(data),
            Some(e) if recorded.trim() == e.text() => return Ok(data),
            // Verified against another digest (or none): check this one.
            Some(e) => {
                let got = hash_file(&data, e)?;
                if got == e.hex {
                    write(&dir.join("digest"), e.text().as_bytes())?;
                    return Ok(data);
                }
            }
        }
    }
    crate::privacy::create_private_dir(&dir).map_err(|source| DownloadError::Io {
        what: "create",
        path: dir.clone(),
        source,
    })?;
    let tmp = dir.join(format!("data.tmp-{}", std::process::id()));
    let result = download(url, &tmp, expected.as_ref(), progress).and_then(|()| {
        if let Some(e) = &expected {
            write(&dir.join("digest"), e.text().as_bytes())?;
        } else {
            let _ = std::fs::remove_file(dir.join("digest"));
        }
        write(&dir.join("url"), url.as_bytes())?;
        std::fs::rename(&tmp, &data).map_err(|source| DownloadError::Io {
            what: "rename into place",
            path: data.clone(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        if !data.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result.map(|()| data)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DownloadError> {
    std::fs::write(path, bytes).map_err(|source| DownloadError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

pub fn hash_file(path: &Path, e: &Expected) -> Result<String, DownloadError> {
    let io = |source| DownloadError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Hasher::new(e);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}

/// A GET of `url` with the project's HTTP agent; the error says why in
/// words for the user (an HTTP status, or the connection's failure).
pub fn get(url: &str) -> Result<ureq::http::Response<ureq::Body>, String> {
    crate::sys::http_agent()
        .get(url)
        .call()
        .map_err(|e| match e {
            ureq::Error::StatusCode(code) => format!(
                "the server answered HTTP {code}{}",
                if code == 404 { " (not found)" } else { "" }
            ),
            other => format!("{other}; check the URL and the network"),
        })
}

/// Streams `url` into `to`, hashing and checking as it goes.
fn download(
    url: &str,
    to: &Path,
    expected: Option<&Expected>,
    progress: bool,
) -> Result<(), DownloadError> {
    let http = |why: String| DownloadError::Http {
        url: url.to_string(),
        why,
    };
    let mut resp = get(url).map_err(http)?;
    let want: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bar = progress.then(|| {
        let bar = match want {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("downloading");
        bar
    });
    let io = |source| DownloadError::Io {
        what: "write",
        path: to.to_path_buf(),
        source,
    };
    let mut out = std::fs::File::create(to).map_err(io)?;
    let mut hasher = expected.map(Hasher::new);
    let mut head = Vec::with_capacity(1024);
    let mut got = 0u64;
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(match want {
                    Some(want) if got < want => DownloadError::Truncated {
                        url: url.to_string(),
                        got,
                        want,
                    },
                    _ => http(e.to_string()),
                })
            }
        };
        let chunk = &buf[..n];
        if head.len() < 1024 {
            head.extend_from_slice(&chunk[..chunk.len().min(1024 - head.len())]);
        }
        if let Some(h) = hasher.as_mut() {
            h.update(chunk);
        }
        out.write_all(chunk).map_err(io)?;
        got += n as u64;
        if let Some(b) = &bar {
            b.set_position(got);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(want) = want.filter(|w| got < *w) {
        return Err(DownloadError::Truncated {
            url: url.to_string(),
            got,
            want,
        });
    }
    out.sync_all().map_err(io)?;
    if let (Some(e), Some(h)) = (expected, hasher) {
        let hex = h.hex();
        if hex != e.hex {
            return Err(DownloadError::Mismatch {
                url: url.to_string(),
                algo: e.name(),
                want: e.hex.clone(),
                got: hex,
            });
        }
    }
    if !looks_like_disk(&head) {
        return Err(DownloadError::NotADiskImage {
            url: url.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// How the test server answers.
    #[derive(Clone, Copy)]
    enum Answer {
        Whole,
        NotFound,
        /// Declares the whole length, sends half, closes.
        Half,
    }

    /// Serves `body` at every path on 127.0.0.1; counts the requests.
    fn serve(body: Vec<u8>, answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let _ = match answer {
                    Answer::NotFound => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    ),
                    Answer::Whole | Answer::Half => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let n = match answer {
                            Answer::Half => body.len() / 2,
                            _ => body.len(),
                        };
                        conn.write_all(head.as_bytes())
                            .and_then(|_| conn.write_all(&body[..n]))
                    }
                };
            }
        });
        (format!("http://127.0.0.1:{port}/images/disk.qcow2"), hits)
    }

    fn qcow2_like(len: usize) -> Vec<u8> {
        let mut v = b"QFI\xfb".to_vec();
        v.extend((0..len).map(|i| (i * 7 % 251) as u8));
        v
    }

    fn sha512(data: &[u8]) -> String {
        format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
    }

    #[test]
    fn a_download_is_verified_cached_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let cache = tempfile::tempdir().unwrap();
        let body = qcow2_like(3 << 20);
        let (url, hits) = serve(body.clone(), Answer::Whole);
        let digest = sha512(&body);
        let got = fetch(cache.path(), &url, Some(&digest), false).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), body);
        assert_eq!(got, entry_dir(cache.path(), &url).join("data"));
        let mode = std::fs::metadata(got.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // The second start downloads nothing.
        fetch(cache.path(), &url, Some(&digest), false).unwrap();
        fetch(cache.path(), &url, None, false).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Nothing but the entry's three files.
        let mut names: Vec<_> = std::fs::read_dir(got.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["data", "digest", "url"]);
    }

    /// Each bad download fails with one line naming the URL, and leaves
    /// no entry behind.
    #[test]
    fn bad_downloads_leave_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let body = qcow2_like(1 << 20);
        let cases: [(Answer, Vec<u8>, String, &str); 4] = [
            (
                Answer::NotFound,
                body.clone(),
                sha512(&body),
                "HTTP 404 (not found)",
            ),
            (
                Answer::Half,
                body.clone(),
                sha512(&body),
                "the connection ended after",
            ),
            (
                Answer::Whole,
                body.clone(),
                sha512(b"other"),
                "sha512 digest mismatch",
            ),
            (
                Answer::Whole,
                vec![b'x'; 4096],
                sha512(&[b'x'; 4096]),
                "is not a disk image",
            ),
        ];
        for (answer, body, digest, needle) in cases {
            let (url, _) = serve(body, answer);
            let e = fetch(cache.path(), &url, Some(&digest), false).unwrap_err();
            let text = lima_proto::errors::error_chain(&e);
            assert!(
                text.contains(needle) && text.contains(&url),
                "{needle}: {text}"
            );
            assert!(!text.contains('\n'), "{text}");
            assert!(
                !entry_dir(cache.path(), &url).exists(),
                "{needle}: left behind"
            );
        }
        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x.qcow2");
        let e = fetch(cache.path(), &url, None, false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot download {url}: ")),
            "{e}"
        );
        assert!(!entry_dir(cache.path(), &url).exists());
        let e = Expected::parse("u", "md5:abc").unwrap_err();
        assert!(e.to_string().contains("sha256:HEX"), "{e}");
    }

    #[test]
    fn raw_disks_are_recognised_by_their_partition_table() {
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(looks_like_disk(&mbr));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert!(looks_like_disk(&gpt));
        assert!(!looks_like_disk(&[0u8; 1024]));
        assert!(!looks_like_disk(b"QF"));
    }

    #[test]
    fn prune_keeps_only_what_is_named() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path();
        for url in ["https://a/1.img", "https://b/2.img"] {
            let d = entry_dir(cache, url);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("data"), "x").unwrap();
            std::fs::write(d.join("data.tmp-999999999"), "partial").unwrap();
        }
        let removed = prune(cache, Some(&["https://a/1.img".to_string()])).unwrap();
        let a = entry_dir(cache, "https://a/1.img");
        let mut want = vec![
            entry_dir(cache, "https://b/2.img"),
            a.join("data.tmp-999999999"),
        ];
        want.sort();
        assert_eq!(removed, want);
        assert!(a.join("data").exists());
        assert_eq!(prune(cache, None).unwrap(), [downloads_dir(cache)]);
        assert!(!downloads_dir(cache).exists());
        assert!(prune(cache, None).unwrap().is_empty());
    }
}
