//! Our stdin for a `--sync` session's command, which can be stopped.
//! `tokio::io::stdin` reads in a blocking thread that cannot be called
//! back: after the command ends it would still be waiting in `read(2)`
//! and swallow the first answer typed at the review's prompt. This reader
//! waits in `poll(2)` on stdin and a pipe; dropping [`Stop`] closes the
//! pipe and the thread ends without reading.
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

pub struct Stdin {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

/// Ends the reader thread when dropped.
pub struct Stop(#[allow(dead_code, reason = "held for its drop")] OwnedFd);

pub fn stdin() -> std::io::Result<(Stdin, Stop)> {
    let (stop_r, stop_w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("sync-stdin".into())
        .spawn(move || read_until_stopped(stop_r, tx))?;
    Ok((
        Stdin {
            rx,
            buf: Vec::new(),
            pos: 0,
        },
        Stop(stop_w),
    ))
}

fn read_until_stopped(stop: OwnedFd, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if fds[0].revents != 0 {
            return; // stopped: never read again
        }
        if fds[1].revents == 0 {
            continue;
        }
        // SAFETY: `buf` is writable for `buf.len()` bytes for the call.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        let msg = match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                Err(e)
            }
            n => Ok(buf[..n as usize].to_vec()),
        };
        let end = !matches!(&msg, Ok(d) if !d.is_empty());
        if tx.blocking_send(msg).is_err() || end {
            return;
        }
    }
}

impl AsyncRead for Stdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos == self.buf.len() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(d))) => {
                    self.buf = d;
                    self.pos = 0;
                }
            }
        }
        let n = out.remaining().min(self.buf.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.buf[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}
