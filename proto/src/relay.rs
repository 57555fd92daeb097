//! Byte relaying for Forward streams with half-close that survives every
//! vsock transport.
//!
//! Hybrid vsock backends (vhost-device-vsock) turn an EOF on their Unix
//! socket into a full vsock shutdown, so `shutdown(SHUT_WR)` cannot carry a
//! TCP half-close. Instead the vsock side carries chunks: a little-endian
//! `u32` length and that many bytes; length 0 means "no more data this way".
//! Both ends of a forwarded connection run [`relay`] with their local socket.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Largest chunk either side sends; a longer one ends the relay with an error.
pub const CHUNK: usize = 64 << 10;

/// Read buffer on the framed side: a length prefix and the start of its
/// chunk usually come in one read instead of two, which matters when every
/// syscall crosses an emulated CPU.
const FRAMED_READ_BUF: usize = 256 << 10;

/// Copies `local` → chunks on `framed` and chunks on `framed` → `local`
/// until both directions have ended; returns the bytes moved each way
/// (local→framed, framed→local).
pub async fn relay<L, F>(local: L, framed: F) -> std::io::Result<(u64, u64)>
where
    L: AsyncRead + AsyncWrite + Unpin,
    F: AsyncRead + AsyncWrite + Unpin,
{
    let (mut lr, mut lw) = tokio::io::split(local);
    let (fr, mut fw) = tokio::io::split(framed);
    let mut fr = BufReader::with_capacity(FRAMED_READ_BUF, fr);
    let out = async {
        let mut buf = vec![0u8; CHUNK + 4];
        let mut total = 0u64;
        loop {
            let n = lr.read(&mut buf[4..]).await?;
            buf[..4].copy_from_slice(&(n as u32).to_le_bytes());
            fw.write_all(&buf[..4 + n]).await?;
            if n == 0 {
                fw.flush().await?;
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    };
    let back = async {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let mut len = [0u8; 4];
            if fr.read_exact(&mut len).await.is_err() {
                // The peer vanished without an EOF chunk: end this direction.
                let _ = lw.shutdown().await;
                return Ok::<u64, std::io::Error>(total);
            }
            let n = u32::from_le_bytes(len) as usize;
            if n == 0 {
                let _ = lw.shutdown().await;
                return Ok(total);
            }
            if n > CHUNK {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "relay chunk too large",
                ));
            }
            fr.read_exact(&mut buf[..n]).await?;
            lw.write_all(&buf[..n]).await?;
            total += n as u64;
        }
    };
    let (a, b) = tokio::join!(out, back);
    // A local reset ends our sending side early; still report what moved.
    Ok((a.unwrap_or(0), b?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn half_close_travels_as_an_eof_chunk() {
        // client <-> [relay A] <-> framed pipe <-> [relay B] <-> echo server
        let (client, a_local) = tokio::io::duplex(1 << 16);
        let (a_framed, b_framed) = tokio::io::duplex(1 << 16);
        let (b_local, mut server) = tokio::io::duplex(1 << 16);
        let ra = tokio::spawn(relay(a_local, a_framed));
        let rb = tokio::spawn(relay(b_local, b_framed));
        // An echo server that answers only after seeing EOF.
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (mut cr, mut cw) = tokio::io::split(client);
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&d2).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        echo.await.unwrap();
        assert_eq!(back, data);
        assert_eq!(ra.await.unwrap().unwrap(), (300_000, 300_000));
        assert_eq!(rb.await.unwrap().unwrap(), (300_000, 300_000));
    }
}
