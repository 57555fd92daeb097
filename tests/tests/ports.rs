//! Issue "instant port forwarding": guest listeners appear on the host, by
//! rule, for TCP, UDP and Unix sockets, and disappear when they close.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use lima_tests::{sha256_hex, Lima};

const AGENT: &str = "lima-guest-agent";

/// Sends `data` to a TCP echo service and returns what came back.
fn echo_tcp(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = s.try_clone()?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    writer.join().expect("writer")?;
    Ok(back)
}

fn echo_works(port: u16) -> bool {
    matches!(echo_tcp(port, b"ping"), Ok(b) if b == b"ping")
}

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err()
}

fn forwards(lima: &Lima, name: &str) -> Vec<serde_json::Value> {
    lima.info(name)["forwards"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn ports_are_forwarded_by_rule() {
    let lima = Lima::new();
    let yaml = lima.template(
        "fwd.yaml",
        "portForwards:\n\
         - guestPortRange: [19100, 19110]\n  hostPortRange: [29100, 29110]\n\
         - guestPort: 18099\n  ignore: true\n\
         - guestSocket: /tmp/echo.sock\n  hostSocket: echo.sock\n",
    );
    lima.limactl(&["start", "--timeout", "5m", &yaml]).ok();
    let long = Duration::from_secs(60);
    let watcher = lima.info("fwd")["watcher"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        watcher.starts_with("ebpf"),
        "eBPF watcher not in use: {watcher}"
    );

    // 0.0.0.0, 127.0.0.1 and :: listeners reach host 127.0.0.1 on the same port.
    for (port, addr) in [
        (18081, "0.0.0.0:18081"),
        (18082, "127.0.0.1:18082"),
        (18083, "[::]:18083"),
    ] {
        let server = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", addr]);
        lima.wait_until(&format!("echo through host port {port}"), long, || {
            echo_works(port)
        });
        let listed = forwards(&lima, "fwd");
        assert!(
            listed
                .iter()
                .any(|f| f["host"] == format!("127.0.0.1:{port}") && f["status"] == "forwarding"),
            "{listed:?}"
        );
        // The guest sees it too: the agent's forwards file names the host side.
        let guest_view = lima
            .shell("fwd", &["cat", "/run/lima-guest-agent/forwards"])
            .ok()
            .stdout();
        assert!(
            guest_view.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 5 && f[0] == "tcp" && f[1] == addr && f[2] == format!("127.0.0.1:{port}")
            }),
            "guest forwards file: {guest_view}"
        );
        // The guest program exits: the host port closes.
        drop(server);
        lima.wait_until(&format!("host port {port} closed"), long, || refused(port));
    }

    // UDP echo.
    let udp_server = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "udp", "0.0.0.0:18084"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    lima.wait_until("UDP echo through host port 18084", long, || {
        let mut buf = [0u8; 64];
        sock.send_to(b"udp-ping", "127.0.0.1:18084").is_ok()
            && matches!(sock.recv_from(&mut buf), Ok((8, _)) if &buf[..8] == b"udp-ping")
    });
    drop(udp_server);

    // A range rule maps onto another host range.
    let ranged = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", "0.0.0.0:19105"]);
    lima.wait_until("guest 19105 on host 29105", long, || echo_works(29105));
    assert!(refused(19105), "host 19105 should not be forwarded");
    drop(ranged);

    // An ignore rule: 18099 stays closed while 18098 (opened after it) is forwarded.
    let _ignored = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", "127.0.0.1:18099"]);
    std::thread::sleep(Duration::from_millis(500));
    let _marker = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", "127.0.0.1:18098"]);
    lima.wait_until("marker 18098 forwarded", long, || echo_works(18098));
    assert!(refused(18099), "ignored port 18099 was forwarded");

    // A guest Unix socket through its host socket path.
    let _unix = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "unix", "/tmp/echo.sock"]);
    let host_sock = lima.instance_dir("fwd").join("sock/echo.sock");
    lima.wait_until("unix echo", long, || {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&host_sock) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut back = Vec::new();
        s.write_all(b"over unix").is_ok()
            && s.shutdown(std::net::Shutdown::Write).is_ok()
            && s.read_to_end(&mut back).is_ok()
            && back == b"over unix"
    });

    // 50 parallel connections, each moving 1 MiB intact both ways.
    let _bulk = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", "0.0.0.0:18086"]);
    lima.wait_until("bulk echo server", long, || echo_works(18086));
    let workers: Vec<_> = (0..50u32)
        .map(|i| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..(1u32 << 20))
                    .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
                    .collect();
                let back = echo_tcp(18086, &data).expect("bulk echo");
                assert_eq!(back.len(), data.len(), "connection {i} length");
                assert_eq!(
                    sha256_hex(&back),
                    sha256_hex(&data),
                    "connection {i} content"
                );
            })
        })
        .collect();
    for w in workers {
        w.join().expect("bulk worker");
    }

    // A host port already taken: a clear warning naming port and rule; the
    // instance keeps running.
    let _taken = TcpListener::bind("127.0.0.1:18085").unwrap();
    let _busy = lima.spawn_shell("fwd", &[AGENT, "tool", "echo", "tcp", "0.0.0.0:18085"]);
    lima.wait_until("port-in-use warning", long, || {
        forwards(&lima, "fwd").iter().any(|f| {
            f["guest"] == "0.0.0.0:18085/tcp"
                && f["status"]
                    .as_str()
                    .unwrap_or("")
                    .contains("127.0.0.1:18085/tcp is already in use")
                && f["rule"].as_str().unwrap_or("").contains("default rule")
        })
    });
    let events = std::fs::read_to_string(lima.instance_dir("fwd").join("ha.events.jsonl")).unwrap();
    assert!(events.contains("already in use"), "{events}");
    assert_eq!(lima.shell("fwd", &["true"]).code(), 0);
    assert_eq!(lima.info("fwd")["status"], "Running");

    // The agent dials nothing that does not listen, and no socket no rule names.
    let inst = lima_host::instance::Instance::open(lima.home.path(), "fwd").unwrap();
    let transport = lima_host::lifecycle::transport(&inst).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (req, needle) in [
        (
            lima_proto::ForwardRequest::Tcp {
                ip: "127.0.0.1".parse().unwrap(),
                port: 18097,
            },
            "nothing listens",
        ),
        (
            lima_proto::ForwardRequest::Udp {
                ip: "0.0.0.0".parse().unwrap(),
                port: 18097,
            },
            "nothing listens",
        ),
        (
            lima_proto::ForwardRequest::Unix {
                path: "/run/other.sock".into(),
            },
            "not named by a portForwards rule",
        ),
    ] {
        let reply = rt.block_on(async {
            let (mut s, _) =
                lima_host::client::connect(transport.as_ref(), lima_proto::Purpose::Forward)
                    .await
                    .unwrap();
            lima_proto::write_frame_async(&mut s, &req).await.unwrap();
            lima_proto::read_frame_async::<_, lima_proto::ForwardReply>(&mut s)
                .await
                .unwrap()
                .unwrap()
        });
        match reply {
            lima_proto::ForwardReply::Refused(why) => {
                assert!(why.contains(needle), "{req:?}: {why}")
            }
            other => panic!("{req:?} was not refused: {other:?}"),
        }
    }
}
