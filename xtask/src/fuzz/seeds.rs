//! Starting inputs for the fuzz targets, made from real messages each run,
//! so they follow the protocol as it is now (checked-in binary seeds would
//! go stale with every protocol change). They are written to
//! `target/fuzz/seeds/<target>/` and given to libFuzzer beside the corpus,
//! which it reads but never writes.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use lima_proto::ebpf::{
    tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND, KIND_LISTENED,
    KIND_RELEASE, KIND_TCP_STATE, SOCK_DGRAM, SOCK_STREAM,
};
use lima_proto::fs::*;
use lima_proto::*;
use serde::Serialize;

use super::Target;

/// The `frames` target's first input byte picks the message type by its
/// place in this list: the order of `TYPES` in
/// `fuzz/fuzz_targets/frames.rs` (a unit test below compares the two).
pub const FRAME_TYPES: [&str; 17] = [
    "HelloReply",
    "ControlReply",
    "ExecOutput",
    "GuestEvent",
    "ForwardReply",
    "Datagram",
    "ShareStatus",
    "FsToHost",
    "Hello",
    "ControlRequest",
    "ExecRequest",
    "ExecInput",
    "Subscribe",
    "HostEvent",
    "ForwardRequest",
    "ShareSetup",
    "FsToGuest",
];

/// Writes the seeds of `target` into `dir` (emptied first).
pub fn write(target: Target, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (i, seed) in seeds(target)?.iter().enumerate() {
        let path = dir.join(format!("seed-{i:03}"));
        std::fs::write(&path, seed).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn seeds(target: Target) -> Result<Vec<Vec<u8>>> {
    Ok(match target {
        Target::Share => share(),
        Target::Frames => frames(),
        Target::Relay => relay(),
        Target::PortEvent => port_events(),
        Target::LimaYaml => lima_yaml()?,
    })
}

/// Frames of `messages`, back to back.
fn stream<T: Serialize>(messages: &[T]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|m| encode_frame(m).expect("seed messages encode"))
        .collect()
}

/// A `frames` input: the selector of `type_name`, then the frames.
fn typed<T: Serialize>(type_name: &str, messages: &[T]) -> Vec<u8> {
    let selector = FRAME_TYPES
        .iter()
        .position(|t| *t == type_name)
        .expect("a type named in FRAME_TYPES");
    let mut input = vec![selector as u8];
    input.extend(stream(messages));
    input
}

fn requests(reqs: Vec<FsRequest>) -> Vec<FsToHost> {
    reqs.into_iter()
        .enumerate()
        .map(|(id, req)| FsToHost::Request { id: id as u64, req })
        .collect()
}

fn name(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Short, valid request sequences against the `share` target's layout
/// (see its docs): through the escape links, a file's life, directories,
/// locks.
fn share_sequences() -> Vec<Vec<FsToHost>> {
    use FsRequest::*;
    let lock = |typ| Lock {
        start: 0,
        end: u64::MAX,
        typ,
        pid: 0,
    };
    vec![
        requests(vec![
            Lookup {
                parent: 1,
                name: name("esc"),
            },
            Lookup {
                parent: 2,
                name: name("secret"),
            },
            Opendir { id: 2 },
            Create {
                parent: 2,
                name: name("x"),
                mode: 0o644,
                umask: 0,
                flags: 2,
            },
            Open { id: 2, flags: 2 },
            Link {
                id: 2,
                new_parent: 1,
                new_name: name("l"),
            },
            Lookup {
                parent: 1,
                name: name("abs"),
            },
            Lookup {
                parent: 1,
                name: name("etc"),
            },
            Readlink { id: 3 },
            Lookup {
                parent: 1,
                name: name(".."),
            },
            Lookup {
                parent: 1,
                name: name("esc/secret"),
            },
        ]),
        requests(vec![
            Create {
                parent: 1,
                name: name("n"),
                mode: 0o644,
                umask: 0o022,
                flags: 2,
            },
            Write {
                fh: 1,
                offset: 0,
                data: name("hello"),
            },
            Read {
                fh: 1,
                offset: 0,
                size: 100,
            },
            Setattr {
                id: 2,
                fh: Some(1),
                mode: Some(0o600),
                size: Some(2),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(Time { secs: 1, nanos: 2 })),
            },
            Flush { fh: 1 },
            Fsync {
                fh: 1,
                datasync: true,
            },
            Rename {
                parent: 1,
                name: name("n"),
                new_parent: 1,
                new_name: name("f"),
                flags: 0,
            },
            Link {
                id: 2,
                new_parent: 1,
                new_name: name("n2"),
            },
            Unlink {
                parent: 1,
                name: name("n2"),
            },
            Release { fh: 1 },
            Forget { id: 2, nlookup: 1 },
        ]),
        requests(vec![
            Mkdir {
                parent: 1,
                name: name("m"),
                mode: 0o755,
                umask: 0,
            },
            Symlink {
                parent: 2,
                name: name("s"),
                target: name("../../outside/secret"),
            },
            Lookup {
                parent: 1,
                name: name("d"),
            },
            Opendir { id: 1 },
            Readdir {
                fh: 1,
                offset: 0,
                plus: true,
            },
            Readdir {
                fh: 1,
                offset: 3,
                plus: false,
            },
            ReaddirAt {
                id: 1,
                offset: 0,
                plus: true,
            },
            Releasedir { fh: 1 },
            Rename {
                parent: 1,
                name: name("d"),
                new_parent: 2,
                new_name: name("d"),
                flags: 2,
            },
            Rmdir {
                parent: 1,
                name: name("m"),
            },
            Statfs,
            Getattr { id: 3 },
        ]),
        requests(vec![
            Lookup {
                parent: 1,
                name: name("f"),
            },
            Open { id: 2, flags: 2 },
            Open { id: 2, flags: 0 },
            Setlk {
                fh: 1,
                owner: 1,
                lock: lock(1),
                wait: false,
            },
            Getlk {
                fh: 2,
                owner: 2,
                lock: lock(0),
            },
            Setlk {
                fh: 2,
                owner: 2,
                lock: lock(0),
                wait: true,
            },
            Flock {
                fh: 1,
                owner: 1,
                op: 2,
            },
            Flock {
                fh: 2,
                owner: 2,
                op: 1,
            },
            ReadShm {
                fh: 1,
                offset: 0,
                size: 4096,
                at: 0,
            },
            WriteShm {
                fh: 1,
                offset: 0,
                len: 4096,
                at: 0,
            },
            Release { fh: 1 },
        ]),
    ]
}

fn share() -> Vec<Vec<u8>> {
    share_sequences().iter().map(|s| stream(s)).collect()
}

fn frames() -> Vec<Vec<u8>> {
    let info = AgentInfo {
        agent_version: "0.1.0".into(),
        kernel_release: "6.1.0-40-amd64".into(),
        pid1: true,
        watcher: "ebpf".into(),
    };
    let ip = |s: &str| s.parse::<IpAddr>().expect("a seed address");
    let port = |proto, addr: &str, port| GuestPort {
        proto,
        ip: ip(addr),
        port,
    };
    let t = Time {
        secs: 1_700_000_000,
        nanos: 5,
    };
    let attr = Attr {
        id: 5,
        size: 10,
        blocks: 1,
        atime: t,
        mtime: t,
        ctime: t,
        mode: 0o100644,
        nlink: 1,
        rdev: 0,
        blksize: 4096,
    };
    let entry = Entry {
        attr,
        generation: 0,
    };
    let reply = |id, reply| FsToGuest::Reply { id, reply };
    let mut seeds = vec![
        // guest → host
        typed(
            "HelloReply",
            &[
                HelloReply {
                    version: PROTOCOL_VERSION,
                    result: Ok(info.clone()),
                },
                HelloReply {
                    version: 1,
                    result: Err("too old".into()),
                },
            ],
        ),
        typed(
            "ControlReply",
            &[
                ControlReply::Pong,
                ControlReply::ShuttingDown,
                ControlReply::WatchMode("ebpf".into()),
                ControlReply::Mounted,
                ControlReply::Error("no such device".into()),
            ],
        ),
        typed(
            "ExecOutput",
            &[
                ExecOutput::Started { pid: 42 },
                ExecOutput::Stdout(b"Linux\n".to_vec()),
                ExecOutput::Stderr(b"warning\n".to_vec()),
                ExecOutput::Exit(ExitStatus::Code(7)),
            ],
        ),
        typed(
            "ExecOutput",
            &[
                ExecOutput::Failed("no such file".into()),
                ExecOutput::Exit(ExitStatus::Signal(9)),
            ],
        ),
        typed(
            "GuestEvent",
            &[
                GuestEvent::Watcher("ebpf".into()),
                GuestEvent::Ports {
                    full: true,
                    added: vec![
                        port(PortProto::Tcp, "0.0.0.0", 22),
                        port(PortProto::Udp, "::", 53),
                    ],
                    removed: vec![],
                },
                GuestEvent::Ports {
                    full: false,
                    added: vec![port(PortProto::Tcp, "127.0.0.1", 8080)],
                    removed: vec![port(PortProto::Udp, "::", 53)],
                },
            ],
        ),
        typed(
            "ForwardReply",
            &[
                ForwardReply::Ok,
                ForwardReply::Refused("nothing listens".into()),
            ],
        ),
        typed("Datagram", &[Datagram(vec![1, 2, 3]), Datagram(vec![])]),
        typed(
            "ShareStatus",
            &[
                ShareStatus::Ready,
                ShareStatus::ReadyOnPort,
                ShareStatus::Failed("busy".into()),
            ],
        ),
        // host → guest
        typed(
            "Hello",
            &[Hello::new(Purpose::Exec), Hello::new(Purpose::Share)],
        ),
        typed(
            "ControlRequest",
            &[
                ControlRequest::Ping,
                ControlRequest::SetWatchMode(WatchMode::LimaLike { interval_ms: 3000 }),
                ControlRequest::SetWatchMode(WatchMode::Poll { interval_ms: 100 }),
                ControlRequest::Mount {
                    fstype: "virtiofs".into(),
                    source: "fs0".into(),
                    target: "/mnt/host".into(),
                    options: String::new(),
                    read_only: true,
                },
                ControlRequest::Shutdown,
            ],
        ),
        typed(
            "ExecRequest",
            &[ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
                env: vec![("A".into(), "b=c".into())],
                cwd: Some("/tmp".into()),
                cwd_fallback: false,
                user: Some("lima".into()),
                login: true,
                pty: Some(WinSize { rows: 24, cols: 80 }),
            }],
        ),
        typed(
            "ExecInput",
            &[
                ExecInput::Stdin(vec![0, 1, 255]),
                ExecInput::Resize(WinSize { rows: 1, cols: 2 }),
                ExecInput::Signal(15),
                ExecInput::StdinEof,
            ],
        ),
        typed(
            "Subscribe",
            &[Subscribe {
                unix_sockets: vec!["/run/docker.sock".into()],
                reverse_sockets: vec!["/run/user/1000/agent.sock".into()],
                owner: (1000, 1000),
            }],
        ),
        typed(
            "HostEvent",
            &[HostEvent::ForwardReady {
                port: port(PortProto::Tcp, "::1", 22),
                host: "127.0.0.1:2222".into(),
            }],
        ),
        typed(
            "ForwardRequest",
            &[
                ForwardRequest::Tcp {
                    ip: ip("127.0.0.1"),
                    port: 80,
                },
                ForwardRequest::Udp {
                    ip: ip("::"),
                    port: 53,
                },
                ForwardRequest::Unix {
                    path: "/run/x.sock".into(),
                },
            ],
        ),
        typed(
            "ShareSetup",
            &[ShareSetup {
                tag: "home".into(),
                mount_point: "/home/user".into(),
                writable: true,
                uid: 1000,
                gid: 1000,
                shm: Some(ShmRegion {
                    offset: 0,
                    len: 32 << 20,
                }),
                port: Some("lima-fs-0".into()),
                layer: None,
            }],
        ),
        typed(
            "FsToGuest",
            &[
                reply(1, FsReply::Entry(entry.clone())),
                reply(2, FsReply::Attr(attr)),
                reply(3, FsReply::Link(name("../x"))),
                reply(4, FsReply::Opened { fh: 1 }),
                reply(
                    5,
                    FsReply::Created {
                        entry: entry.clone(),
                        fh: 7,
                        parent: Some(attr),
                    },
                ),
                reply(
                    6,
                    FsReply::Made {
                        entry: entry.clone(),
                        parent: None,
                    },
                ),
                reply(7, FsReply::Data(name("hello"))),
                reply(8, FsReply::Placed(4096)),
                reply(9, FsReply::Written(5)),
                reply(
                    10,
                    FsReply::Dir(vec![
                        DirEntry {
                            name: name("."),
                            next_offset: 1,
                            entry: None,
                            kind: 0o040000,
                        },
                        DirEntry {
                            name: name("f"),
                            next_offset: 2,
                            entry: Some(entry),
                            kind: 0o100000,
                        },
                    ]),
                ),
                reply(
                    11,
                    FsReply::Statfs(Statfs {
                        blocks: 100,
                        bfree: 50,
                        bavail: 40,
                        files: 10,
                        ffree: 5,
                        bsize: 4096,
                        namelen: 255,
                        frsize: 4096,
                    }),
                ),
                reply(
                    12,
                    FsReply::Lock(Lock {
                        start: 0,
                        end: 10,
                        typ: 1,
                        pid: 3,
                    }),
                ),
                reply(13, FsReply::Ok),
                reply(14, FsReply::Err(2)),
                FsToGuest::InvalidateNode { id: 5 },
                FsToGuest::InvalidateEntry {
                    parent: 1,
                    name: vec![0xff, b'x'],
                },
                FsToGuest::Overflow,
            ],
        ),
    ];
    seeds.extend(share_sequences().iter().map(|s| typed("FsToHost", s)));
    seeds
}

/// Chunks as a forwarded connection carries them: data, then the EOF chunk.
fn relay() -> Vec<Vec<u8>> {
    let chunk = |data: &[u8]| {
        let mut c = (data.len() as u32).to_le_bytes().to_vec();
        c.extend_from_slice(data);
        c
    };
    vec![
        [chunk(b"GET / HTTP/1.1\r\n\r\n"), chunk(b"")].concat(),
        [chunk(b"a"), chunk(&[0; 300]), chunk(b"b"), chunk(b"")].concat(),
        chunk(b"no EOF chunk"),
    ]
}

/// Records as the eBPF programs write them, each behind its length byte.
fn port_events() -> Vec<Vec<u8>> {
    let addr = |a: &[u8]| {
        let mut saddr = [0; 16];
        saddr[..a.len()].copy_from_slice(a);
        saddr
    };
    let listen = SockEvent {
        ktime_ns: 123_456_789,
        kind: KIND_TCP_STATE,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        oldstate: tcp_state::CLOSE,
        newstate: tcp_state::LISTEN,
        sport: 8080,
        saddr: addr(&[0, 0, 0, 0]),
        ..Default::default()
    };
    let closed = SockEvent {
        family: AF_INET6,
        oldstate: tcp_state::LISTEN,
        newstate: tcp_state::CLOSE,
        saddr: addr(&std::net::Ipv6Addr::LOCALHOST.octets()),
        ..listen
    };
    let bind = SockEvent {
        kind: KIND_BIND,
        family: AF_INET,
        protocol: IPPROTO_UDP,
        sock_type: SOCK_DGRAM,
        sport: 53,
        saddr: addr(&[127, 0, 0, 1]),
        ..Default::default()
    };
    let tcp_bind = SockEvent {
        protocol: IPPROTO_TCP,
        sock_type: SOCK_STREAM,
        ..bind
    };
    let release = SockEvent {
        kind: KIND_RELEASE,
        dport: 9,
        ..bind
    };
    let listened = SockEvent {
        kind: KIND_LISTENED,
        ..Default::default()
    };
    let record = |e: &SockEvent| {
        let bytes = e.to_bytes();
        let mut r = vec![bytes.len() as u8];
        r.extend_from_slice(&bytes);
        r
    };
    vec![
        [record(&listen), record(&listened), record(&closed)].concat(),
        [record(&bind), record(&release)].concat(),
        record(&tcp_bind),
    ]
}

/// Our templates, and files that use every field `resolve` reads.
fn lima_yaml() -> Result<Vec<Vec<u8>>> {
    let templates = crate::cmd::root().join("images/templates");
    let mut seeds = Vec::new();
    let entries = std::fs::read_dir(&templates)
        .with_context(|| format!("cannot list {}", templates.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            seeds.push(
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
    }
    seeds.extend(LIMA_YAML_SEEDS.iter().map(|s| s.as_bytes().to_vec()));
    Ok(seeds)
}

const LIMA_YAML_SEEDS: &[&str] = &[
    r#"vmType: qemu
arch: x86_64
images:
- location: "builtin:debian"
  arch: "x86_64"
  kernel:
    location: ""
    cmdline: "console=ttyS0 quiet"
- location: "https://example.org/aarch64.qcow2"
  arch: "aarch64"
  digest: "sha256:0000"
cpus: 4
memory: "1.5GiB"
disk: "20G"
mountType: vsockfs
mounts:
- location: "~"
- location: "/tmp/lima"
  mountPoint: "/mnt/tmp"
  writable: true
- location: "/srv"
  mountType: 9p
  9p:
    securityModel: mapped-xattr
    cache: mmap
- location: "/opt"
  mountType: virtiofs
portForwards:
- guestPort: 8080
  hostPort: 18080
- guestPortRange: [9000, 9010]
  hostPortRange: [19000, 19010]
  proto: udp
- guestIP: 0.0.0.0
  guestIPMustBeZero: true
  guestPort: 80
  hostIP: 0.0.0.0
- guestPort: 8099
  ignore: true
- guestSocket: "/run/docker.sock"
  hostSocket: "docker.sock"
env:
  FOO: bar
message: |
  Hello
"#,
    r#"images: [{location: "builtin:default"}]
memory: 128MiB
cpus: 1
ssh: {localPort: 60022}
provision:
- mode: system
  script: "true"
containerd: {system: false, user: false}
"#,
    "base: template://default\nmemory: 4GiB\n",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `FRAME_TYPES` names the types in the order the `frames` target
    /// lists them (its source is read as text: the fuzz crate builds only
    /// on nightly).
    #[test]
    fn frame_types_follow_the_frames_target() {
        let source =
            std::fs::read_to_string(crate::cmd::root().join("fuzz/fuzz_targets/frames.rs"))
                .unwrap();
        let listed: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("check::<")?.strip_suffix(">,"))
            .collect();
        assert_eq!(listed, FRAME_TYPES);
    }

    #[test]
    fn every_target_has_seeds() {
        for target in Target::ALL {
            let seeds = seeds(*target).unwrap();
            assert!(!seeds.is_empty(), "{target:?}");
            assert!(seeds.iter().all(|s| !s.is_empty()), "{target:?}");
        }
    }

    #[test]
    fn seeds_decode_as_their_targets_read_them() {
        for input in frames() {
            let selector = input[0] as usize;
            assert!(selector < FRAME_TYPES.len());
        }
        // The share target reads FsToHost frames until the input ends.
        for input in share() {
            let mut rest = &input[..];
            let mut n = 0;
            while let Some(_frame) = read_frame::<_, FsToHost>(&mut rest).unwrap() {
                n += 1;
            }
            assert!(n > 5);
        }
        for input in port_events() {
            assert_eq!(input[0] as usize, lima_proto::ebpf::SOCK_EVENT_SIZE);
            assert!(SockEvent::from_bytes(&input[1..]).is_some());
        }
    }
}
