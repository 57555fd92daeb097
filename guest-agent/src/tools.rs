//! `lima-guest-agent tool ...`: small servers that ship in every image, so
//! tests and benchmarks need nothing else in the guest.
//!
//! ```text
//! tool echo tcp ADDR        echo every TCP connection back (half-close aware)
//! tool echo udp ADDR        echo every datagram to its sender
//! tool echo unix PATH       echo every Unix-socket connection back
//! tool sink tcp ADDR        read and discard; reply with the byte count at EOF
//! tool mmap-cat FILE        write FILE's bytes to stdout, read through mmap(2)
//! tool listen-latency BASE N  for i in 0..N: listen on 0.0.0.0:BASE+i, print
//!                           one line "i micros" (from listen() to the first
//!                           accepted connection), close, pause 50 ms
//! ```
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::time::Instant;

fn usage() -> i32 {
    eprintln!("usage: lima-guest-agent tool (echo tcp|udp|unix ADDR | sink tcp ADDR | mmap-cat FILE | listen-latency BASE N)");
    2
}

pub fn main(args: Vec<String>) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["echo", "tcp", addr] => echo_tcp(addr),
        ["echo", "udp", addr] => echo_udp(addr),
        ["echo", "unix", path] => echo_unix(path),
        ["sink", "tcp", addr] => sink_tcp(addr),
        ["mmap-cat", file] => mmap_cat(file),
        ["listen-latency", base, n] => listen_latency(base, n),
        _ => return usage(),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tool: {e}");
            1
        }
    }
}

fn echo_stream<S: Read + Write>(mut s: S, shutdown: impl FnOnce(&S)) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    shutdown(&s);
}

fn echo_tcp(addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    eprintln!("echo tcp listening on {}", l.local_addr()?);
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            echo_stream(conn, |c| {
                let _ = c.shutdown(std::net::Shutdown::Write);
            })
        });
    }
    Ok(())
}

fn echo_unix(path: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    eprintln!("echo unix listening on {path}");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            echo_stream(conn, |c| {
                let _ = c.shutdown(std::net::Shutdown::Write);
            })
        });
    }
    Ok(())
}

fn echo_udp(addr: &str) -> std::io::Result<()> {
    let s = UdpSocket::bind(addr)?;
    eprintln!("echo udp listening on {}", s.local_addr()?);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = s.recv_from(&mut buf)?;
        s.send_to(&buf[..n], peer)?;
    }
}

fn sink_tcp(addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    eprintln!("sink tcp listening on {}", l.local_addr()?);
    for mut conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total: u64 = 0;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = conn.write_all(format!("{total}\n").as_bytes());
        });
    }
    Ok(())
}

fn mmap_cat(file: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh read-only shared mapping of an open file; the pointer is
    // checked, only read within `len`, and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let bytes = std::slice::from_raw_parts(p as *const u8, len);
        let r = std::io::stdout().write_all(bytes);
        libc::munmap(p, len);
        r
    }
}

fn listen_latency(base: &str, n: &str) -> std::io::Result<()> {
    let base: u16 = base
        .parse()
        .map_err(|_| std::io::Error::other("bad port"))?;
    let n: u16 = n.parse().map_err(|_| std::io::Error::other("bad count"))?;
    let mut out = std::io::stdout();
    for i in 0..n {
        let t0 = Instant::now();
        // std's bind() on a TcpListener does bind + listen back to back.
        let l = TcpListener::bind(("0.0.0.0", base + i))?;
        let (_conn, _) = l.accept()?;
        writeln!(out, "{i} {}", t0.elapsed().as_micros())?;
        out.flush()?;
        drop(l);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
