//! `lima-guest-agent tool ...`: small servers that ship in every image, so
//! tests and benchmarks need nothing else in the guest.
//!
//! ```text
//! tool echo tcp ADDR        echo every TCP connection back (half-close aware)
//! tool echo udp ADDR        echo every datagram to its sender
//! tool echo unix PATH       echo every Unix-socket connection back
//! tool sink tcp ADDR        read and discard; reply with the byte count at EOF
//! tool source tcp ADDR      read a line "N", send N MiB, close
//! tool mmap-cat FILE        write FILE's bytes to stdout, read through mmap(2)
//! tool listen-latency BASE N [GAP_MS]
//!                           for i in 0..N: bind 0.0.0.0:BASE+i, wait GAP_MS
//!                           (default 0), listen, wait for the first
//!                           connection, print one line
//!                           "i SENT READY ACCEPTED" (microseconds from the
//!                           listen() call to: the agent telling the host, the
//!                           host's "forward ready" reaching the agent, that
//!                           connection accepted), close, pause 50 ms
//! tool time CMD ARG...      run CMD (stdout to /dev/null, stderr kept) and
//!                           print its wall time in ns; exit with its code
//! tool stat-files LIST      lstat(2) every path in LIST (one per line); print
//!                           "FOUND MISSING NS"
//! tool watch-file FILE      for each stdin line "stat|read TEXT": print
//!                           "armed", then poll FILE every 1 ms until it holds
//!                           TEXT (stat: size is TEXT's length plus one and the
//!                           mtime moved; read: the bytes are TEXT and a
//!                           newline), print "seen"
//! tool service start docker-rootful | docker-rootless USER
//!                           ask the agent (PID 1) to start and supervise a
//!                           container engine; waits until it answers, or
//!                           fails with its last log lines (services.rs)
//! ```
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::time::Instant;

fn usage() -> i32 {
    eprintln!("usage: lima-guest-agent tool (echo tcp|udp|unix ADDR | sink tcp ADDR | source tcp ADDR | mmap-cat FILE | listen-latency BASE N [GAP_MS] | time CMD ARG... | stat-files LIST | watch-file FILE | service start docker-rootful|docker-rootless USER)");
    2
}

pub fn main(args: Vec<String>) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["echo", "tcp", addr] => echo_tcp(addr),
        ["echo", "udp", addr] => echo_udp(addr),
        ["echo", "unix", path] => echo_unix(path),
        ["sink", "tcp", addr] => sink_tcp(addr),
        ["source", "tcp", addr] => source_tcp(addr),
        ["mmap-cat", file] => mmap_cat(file),
        ["listen-latency", base, n] => listen_latency(base, n, None),
        ["listen-latency", base, n, gap] => listen_latency(base, n, Some(gap)),
        ["time", cmd, rest @ ..] => return time(cmd, rest),
        ["stat-files", list] => stat_files(list),
        ["watch-file", file] => watch_file(file),
        ["service", rest @ ..] => return service(rest),
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

fn source_tcp(addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    eprintln!("source tcp listening on {}", l.local_addr()?);
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(&conn);
            if std::io::BufRead::read_line(&mut reader, &mut line).is_err() {
                return;
            }
            let Ok(mib) = line.trim().parse::<usize>() else {
                return;
            };
            let chunk = vec![0xa5u8; 1 << 20];
            let mut conn = &conn;
            for _ in 0..mib {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
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

/// A TCP listener on 0.0.0.0:`port`, made like servers make theirs:
/// socket, SO_REUSEADDR, bind, then `gap_ms` of other work, then listen.
/// Returns it with the CLOCK_MONOTONIC time just before `listen()`.
fn bind_then_listen(port: u16, gap_ms: u64) -> std::io::Result<(TcpListener, u64)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: socket() takes no pointers; the fd is owned at once.
    let fd = unsafe {
        OwnedFd::from_raw_fd(check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?)
    };
    let fdn = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let one: libc::c_int = 1;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: each call reads a live value of the size passed, on our fd.
    unsafe {
        check(libc::setsockopt(
            fdn,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::bind(
            fdn,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
    }
    if gap_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(gap_ms));
    }
    let t0 = crate::forward::monotonic_ns();
    // SAFETY: listen() takes no pointers.
    check(unsafe { libc::listen(fdn, 128) })?;
    Ok((TcpListener::from(fd), t0))
}

fn listen_latency(base: &str, n: &str, gap: Option<&str>) -> std::io::Result<()> {
    let base: u16 = base
        .parse()
        .map_err(|_| std::io::Error::other("bad port"))?;
    let n: u16 = n.parse().map_err(|_| std::io::Error::other("bad count"))?;
    let gap_ms: u64 = gap
        .unwrap_or("0")
        .parse()
        .map_err(|_| std::io::Error::other("bad gap"))?;
    let mut out = std::io::stdout();
    for i in 0..n {
        let port = base + i;
        let (l, t0) = bind_then_listen(port, gap_ms)?;
        let (_conn, _) = l.accept()?;
        let accepted = crate::forward::monotonic_ns();
        let (sent, ready) = forward_times(port)?;
        let us = |t: u64| t.saturating_sub(t0) / 1000;
        writeln!(out, "{i} {} {} {}", us(sent), us(ready), us(accepted))?;
        out.flush()?;
        drop(l);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The agent's sent and ready times for TCP port `port` on 0.0.0.0, from its
/// forwards file; waits up to 10 s for the host's answer to arrive.
fn forward_times(port: u16) -> std::io::Result<(u64, u64)> {
    let prefix = format!("tcp 0.0.0.0:{port} ");
    let give_up = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(crate::forward::FORWARDS_FILE).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let mut f = rest.split_whitespace().skip(1);
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        });
        if let Some(times) = found {
            return Ok(times);
        }
        if Instant::now() > give_up {
            return Err(std::io::Error::other(format!(
                "port {port} has no \"forward ready\" in {} after 10 s",
                crate::forward::FORWARDS_FILE
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn time(cmd: &str, args: &[&str]) -> i32 {
    let t0 = Instant::now();
    let status = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    let ns = t0.elapsed().as_nanos();
    match status {
        Ok(st) => {
            println!("{ns}");
            st.code()
                .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0))
        }
        Err(e) => {
            eprintln!("tool: {cmd}: {e}");
            127
        }
    }
}

fn stat_files(list: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(list)?;
    let paths: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let (mut found, mut missing) = (0u64, 0u64);
    let t0 = Instant::now();
    for p in &paths {
        match std::fs::symlink_metadata(p) {
            Ok(_) => found += 1,
            Err(_) => missing += 1,
        }
    }
    println!("{found} {missing} {}", t0.elapsed().as_nanos());
    Ok(())
}

/// mtime in ns and size, or None while the file is missing.
fn stat_key(file: &str) -> Option<(i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(file).ok()?;
    Some((
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.size(),
    ))
}

fn watch_file(file: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout();
    for line in std::io::stdin().lines() {
        let line = line?;
        let (mode, text) = line
            .split_once(' ')
            .ok_or_else(|| std::io::Error::other("want `stat|read TEXT`"))?;
        let want = format!("{text}\n");
        // Arm: what the guest holds now (cached, since it was just read).
        let before = stat_key(file);
        let _ = std::fs::read(file);
        writeln!(out, "armed")?;
        out.flush()?;
        loop {
            let seen = match mode {
                "stat" => {
                    stat_key(file).is_some_and(|k| Some(k) != before && k.1 == want.len() as u64)
                }
                "read" => std::fs::read(file).is_ok_and(|b| b == want.as_bytes()),
                _ => return Err(std::io::Error::other("mode is stat or read")),
            };
            if seen {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        writeln!(out, "seen")?;
        out.flush()?;
    }
    Ok(())
}

/// `service start ...`: one request line to the agent, its one answer
/// (`ok ...` or `error ...`, perhaps several lines) printed back.
fn service(words: &[&str]) -> i32 {
    let line = words.join(" ");
    if let Err(e) = crate::services::Request::parse(&line) {
        eprintln!("tool service: {e}");
        return 2;
    }
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(crate::services::CONTROL_SOCKET)?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(a) if a.starts_with("ok") => {
            println!("{}", a.trim_end());
            0
        }
        Ok(a) if a.is_empty() => {
            eprintln!("tool service: the agent closed the connection without an answer");
            1
        }
        Ok(a) => {
            eprintln!("{}", a.strip_prefix("error ").unwrap_or(&a).trim_end());
            1
        }
        Err(e) => {
            eprintln!(
                "tool service: cannot ask the agent at {} (is it PID 1 in this image, and are you root?): {e}",
                crate::services::CONTROL_SOCKET
            );
            1
        }
    }
}
