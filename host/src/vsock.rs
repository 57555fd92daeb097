//! Host-side vsock transports behind one trait: the VM driver picks one, the
//! rest of the host (exec client, readiness probe, later forwarding and
//! shares) only ever calls [`Transport::connect`].
//!
//! * [`Hybrid`]: a Unix socket served by the vsock device backend
//!   (`vhost-device-vsock`, Firecracker, and later the Virtualization.framework
//!   bridge). A connection sends `CONNECT <port>\n` and gets `OK <hostport>\n`.
//! * [`Kernel`]: the host kernel's `AF_VSOCK` with `/dev/vhost-vsock`.
use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A connected byte stream to a guest port. Always a socket of ours, so it
/// can be handed to another process (a share's file server) by its fd.
pub trait Stream: AsyncRead + AsyncWrite + AsFd + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + AsFd + Send + Unpin> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + 'a>>;

/// Opens streams to ports of the guest.
pub trait Transport: Send + Sync {
    fn connect(&self, port: u32) -> ConnectFuture<'_>;
}

/// How to reach an instance's guest; saved as `transport.json` by the host
/// agent so that every `limactl` process can connect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TransportSpec {
    Hybrid { path: PathBuf },
    Kernel { cid: u32 },
}

impl TransportSpec {
    pub fn open(&self) -> Box<dyn Transport> {
        match self {
            TransportSpec::Hybrid { path } => Box::new(Hybrid { path: path.clone() }),
            TransportSpec::Kernel { cid } => Box::new(Kernel { cid: *cid }),
        }
    }
}

pub struct Hybrid {
    pub path: PathBuf,
}

impl Transport for Hybrid {
    fn connect(&self, port: u32) -> ConnectFuture<'_> {
        Box::pin(async move {
            let mut s = tokio::net::UnixStream::connect(&self.path).await?;
            s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
            // Read the reply byte by byte: whatever follows the newline is
            // already the guest's data.
            let mut line = Vec::with_capacity(16);
            loop {
                let b = s.read_u8().await.map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("nothing listens on guest vsock port {port} (yet)"),
                    )
                })?;
                if b == b'\n' {
                    break;
                }
                line.push(b);
                if line.len() > 64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bad vsock handshake reply",
                    ));
                }
            }
            if !line.starts_with(b"OK ") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!(
                        "vsock backend refused port {port}: {}",
                        String::from_utf8_lossy(&line)
                    ),
                ));
            }
            Ok(Box::new(s) as BoxStream)
        })
    }
}

pub struct Kernel {
    pub cid: u32,
}

impl Transport for Kernel {
    fn connect(&self, port: u32) -> ConnectFuture<'_> {
        Box::pin(async move { crate::sys::vsock_connect(self.cid, port).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hybrid_handshake_then_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // one refused, one accepted
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"OK 5000\nhello").await.unwrap();
        });
        let t = TransportSpec::Hybrid { path: path.clone() }.open();
        let err = t.connect(1024).await.err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let mut s = t.connect(1024).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        server.await.unwrap();
    }

    #[test]
    fn spec_round_trips_as_json() {
        let s = TransportSpec::Kernel { cid: 7 };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"kind":"kernel","cid":7}"#);
        assert_eq!(serde_json::from_str::<TransportSpec>(&j).unwrap(), s);
    }
}
