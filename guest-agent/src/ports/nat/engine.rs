//! Which container publishes a port: asked of the container engine, so a
//! host port that is taken can be reported with the container's name.
//!
//! Docker's API over its Unix socket: `GET /containers/json` lists the
//! running containers with their addresses on each network; a publication's
//! destination address names its container. One HTTP/1.0 request (the
//! engine closes the connection after the answer, so no chunking), asked
//! only after a dump found a publication without a name, and again a few
//! times at growing intervals while the engine has not listed it yet: the
//! rule is made while the engine is still starting the container, before
//! its API shows the address.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where rootful engines listen (Docker; Podman's compatible API too).
pub const SOCKETS: [&str; 2] = ["/run/docker.sock", "/run/podman/podman.sock"];

/// When to ask again while a publication has no name (then give up).
pub const RETRIES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Largest answer read (a few hundred containers).
const MAX_ANSWER: u64 = 8 << 20;

/// Container names by address, from the first engine socket that answers;
/// `None` when none does.
pub async fn names() -> Option<HashMap<IpAddr, String>> {
    for socket in SOCKETS {
        if !Path::new(socket).exists() {
            continue;
        }
        match ask(socket).await {
            Ok(body) => return Some(parse(&body)),
            Err(e) => tracing::debug!("asking {socket} for containers: {e}"),
        }
    }
    None
}

async fn ask(socket: &str) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(b"GET /containers/json HTTP/1.0\r\nHost: engine\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    body(&answer).map(<[u8]>::to_vec).ok_or_else(|| {
        let status = answer.split(|b| *b == b'\r').next().unwrap_or_default();
        std::io::Error::other(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(status)
        ))
    })
}

/// The body of a `200` answer.
fn body(answer: &[u8]) -> Option<&[u8]> {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = answer.split(|b| *b == b'\r').next()?;
    let ok = String::from_utf8_lossy(status)
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    ok.then(|| &answer[head_end + 4..])
}

/// Names (without Docker's leading `/`) by every address the containers
/// have.
fn parse(body: &[u8]) -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    let Ok(serde_json::Value::Array(containers)) = serde_json::from_slice(body) else {
        return out;
    };
    for c in &containers {
        let Some(name) = c["Names"][0].as_str() else {
            continue;
        };
        let name = name.trim_start_matches('/');
        let Some(networks) = c["NetworkSettings"]["Networks"].as_object() else {
            continue;
        };
        for net in networks.values() {
            for key in ["IPAddress", "GlobalIPv6Address"] {
                if let Some(ip) = net[key].as_str().and_then(|s| s.parse().ok()) {
                    out.insert(ip, name.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_address_from_the_engines_answer() {
        let answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[\
            {\"Names\":[\"/web\"],\"NetworkSettings\":{\"Networks\":{\"bridge\":\
              {\"IPAddress\":\"172.17.0.2\",\"GlobalIPv6Address\":\"\"}}}},\
            {\"Names\":[\"/db\"],\"NetworkSettings\":{\"Networks\":{\"mine\":\
              {\"IPAddress\":\"172.18.0.5\",\"GlobalIPv6Address\":\"fd00::5\"}}}},\
            {\"Names\":[\"/host-net\"],\"NetworkSettings\":{\"Networks\":{\"host\":\
              {\"IPAddress\":\"\"}}}}]";
        let names = parse(body(answer).unwrap());
        assert_eq!(names.len(), 3);
        assert_eq!(names[&"172.17.0.2".parse::<IpAddr>().unwrap()], "web");
        assert_eq!(names[&"172.18.0.5".parse::<IpAddr>().unwrap()], "db");
        assert_eq!(names[&"fd00::5".parse::<IpAddr>().unwrap()], "db");
        assert!(body(b"HTTP/1.1 500 Internal Server Error\r\n\r\n{}").is_none());
        assert!(parse(b"not json").is_empty());
    }

    #[tokio::test]
    async fn one_http_exchange_over_the_engines_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let engine = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 1024];
            let n = conn.read(&mut request).await.unwrap();
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n[]").await.unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        let body = ask(path.to_str().unwrap()).await.unwrap();
        assert_eq!(body, b"[]");
        let request = engine.await.unwrap();
        assert!(
            request.starts_with("GET /containers/json HTTP/1.0\r\n"),
            "{request}"
        );
    }
}
