//! A small HTTP/1.1 file server on 127.0.0.1 for tests that download
//! images: no test reaches the internet. Paths map to files or to canned
//! failures; every request is counted, so a test can show that a second
//! start downloaded nothing.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a path serves.
#[derive(Clone)]
pub enum Reply {
    /// The file, whole.
    File(PathBuf),
    /// The file's length in the header, then only its first half, then the
    /// connection closes.
    Truncated(PathBuf),
    /// Bytes, as they are.
    Bytes(Vec<u8>),
}

pub struct Server {
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
}

impl Server {
    pub fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (r, h, t) = (routes.clone(), hits.clone(), total.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (r, h, t) = (r.clone(), h.clone(), t.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &r, &h, &t);
                });
            }
        });
        Server {
            port,
            routes,
            hits,
            total,
        }
    }

    /// Serves `reply` at `path` (starting with `/`); returns its URL.
    pub fn route(&self, path: &str, reply: Reply) -> String {
        self.routes.lock().unwrap().insert(path.to_string(), reply);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests for any path so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<HashMap<String, Reply>>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
) -> std::io::Result<()> {
    let mut rd = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let head_only = line.starts_with("HEAD ");
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    total.fetch_add(1, Ordering::SeqCst);
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let reply = routes.lock().unwrap().get(&path).cloned();
    let mut w = conn;
    let header = |len: u64| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    };
    match reply {
        None => {
            let body = b"not found\n";
            write!(
                w,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            w.write_all(body)?;
        }
        Some(Reply::Bytes(b)) => {
            w.write_all(header(b.len() as u64).as_bytes())?;
            if !head_only {
                w.write_all(&b)?;
            }
        }
        Some(Reply::File(p)) => {
            let mut f = std::fs::File::open(&p)?;
            let len = f.metadata()?.len();
            w.write_all(header(len).as_bytes())?;
            if !head_only {
                std::io::copy(&mut f, &mut w)?;
            }
        }
        Some(Reply::Truncated(p)) => {
            let f = std::fs::File::open(&p)?;
            let len = f.metadata()?.len();
            w.write_all(header(len).as_bytes())?;
            if !head_only {
                std::io::copy(&mut std::io::Read::take(f, len / 2), &mut w)?;
            }
        }
    }
    w.flush()?;
    let _ = w.shutdown(std::net::Shutdown::Both);
    Ok(())
}
