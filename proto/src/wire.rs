//! The host ⇄ guest-agent protocol.
//!
//! Every purpose gets its own vsock stream (vsock streams are cheap, so there is
//! no multiplexer). Each stream carries frames: a little-endian `u32` length,
//! then a bincode-2 (serde, standard config) body. The first frame each way is
//! the hello, so a version mismatch is caught before anything else is decoded.
//!
//! ```text
//!  host                                   guest agent (vsock port 1024, CID 2 only)
//!   | -- Hello{magic, version, purpose} -->  |
//!   | <-- HelloReply{version, Ok(info)} ---  |   (or Err(reason), then close)
//!
//!  purpose = Control:
//!   | -- ControlRequest ------------------>  |   Ping | Shutdown
//!   | <-- ControlReply -------------------   |   Pong | ShuttingDown
//!
//!  purpose = Exec:
//!   | -- ExecRequest{argv, env, cwd, user, ->  |
//!   |      login, pty}                        |
//!   | <-- ExecOutput::Started{pid} --------   |   (or Failed(reason), then close)
//!   | -- ExecInput::{Stdin, StdinEof,      ->  |
//!   |      Signal, Resize}*                   |
//!   | <-- ExecOutput::{Stdout, Stderr}* ---   |
//!   | <-- ExecOutput::Exit(status) --------   |   last frame; both sides close
//!
//!  purpose = Events (one per host agent, for port forwarding):
//!   | -- Subscribe{unix_sockets} ---------->  |   guest sockets the host may forward
//!   | <-- GuestEvent::Ports{full: true} ----  |   everything listening now
//!   | <-- GuestEvent::Ports{added, removed}*  |   as listeners come and go
//!   | <-- GuestEvent::Published(NatReport)*   |   NAT-only ports (before their Ports)
//!   | -- HostEvent::ForwardReady{..}* ----->  |   host port bound (latency benchmark)
//!
//!  purpose = Forward (one per forwarded connection or UDP peer):
//!   | -- ForwardRequest::{Tcp,Udp,Unix} --->  |   checked against what listens now
//!   | <-- ForwardReply::{Ok, Refused} -----   |
//!   | <== relay chunks both ways (TCP, Unix; see `relay`: len 0 = EOF) => |
//!   | <== Datagram frames both ways (UDP) ==============================> |
//! ```
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped on any incompatible change to the types below or to the share
/// protocol's (`fs`); 2: entry-making replies carry the parent's attributes;
/// 3: `ExecRequest` names the user, the login shell and the cwd fallback;
/// 4: `Files` and `Layer` streams, `ShareSetup::layer`.
pub const PROTOCOL_VERSION: u32 = 5;
/// First bytes of every hello, so a stray peer is told apart from an old one.
pub const MAGIC: [u8; 4] = *b"LRS\0";
/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The well-known CID of the host; the agent accepts no other peer.
pub const HOST_CID: u32 = 2;
/// Upper bound of one frame body; larger frames are a protocol error.
pub const MAX_FRAME: usize = 16 << 20;
/// Size of the stdout/stderr/stdin chunks both sides send.
pub const IO_CHUNK: usize = 128 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    pub purpose: Purpose,
}

impl Hello {
    pub fn new(purpose: Purpose) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            purpose,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    Control,
    Exec,
    Events,
    Forward,
    /// A shared folder: `fs::ShareSetup`, then the `fs` protocol.
    Share,
    /// File operations on the guest's own tree for `limactl mcp`
    /// (`files::FilesRequest` / `files::FilesReply`, one stream per client).
    Files,
    /// Copy-on-write review layers of `limactl shell --sync`
    /// (`layer::LayerRequest` / `layer::LayerReply`).
    Layer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    /// `Err` carries why the agent refuses this connection.
    pub result: Result<AgentInfo, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_version: String,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    /// Whether the agent runs as the guest's init.
    pub pid1: bool,
    /// How the socket watcher runs (e.g. "ebpf" or why it could not load).
    pub watcher: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    Ping,
    /// Stop all guest processes and power the VM off.
    Shutdown,
    /// Change how the port watcher detects listeners (benchmarks compare them).
    SetWatchMode(WatchMode),
    /// Mount a filesystem the VM provides (9p, virtiofs): loads the modules
    /// for `fstype`, creates `target`, mounts.
    Mount {
        fstype: String,
        source: String,
        target: String,
        options: String,
        read_only: bool,
    },
    /// Make ready one of `limactl disk`'s disks, found by its virtio
    /// `serial`: a file system of `fs_type` (label `lima-NAME`, extra
    /// `fs_args`) when it is blank and `format` is set, then mounted on
    /// `/mnt/lima-NAME` (swap: enabled instead). A file system made now
    /// has its root owned by `owner` (uid, gid): the guest user's.
    Disk {
        serial: String,
        name: String,
        format: bool,
        fs_type: String,
        fs_args: Vec<String>,
        owner: (u32, u32),
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    Pong,
    ShuttingDown,
    /// The watch mode now in use, in words (e.g. "ebpf").
    WatchMode(String),
    Mounted,
    Error(String),
}

/// How the guest finds listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchMode {
    /// eBPF events, each checked against a sock_diag dump (the default).
    Ebpf,
    /// A sock_diag dump every `interval_ms` (the fallback without eBPF).
    Poll { interval_ms: u32 },
    /// Lima's method, for comparison: a rescan every `interval_ms` plus one
    /// when `bind()` returns.
    LimaLike { interval_ms: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortProto {
    Tcp,
    Udp,
}

impl std::fmt::Display for PortProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        })
    }
}

/// A listening socket in the guest: a TCP socket in LISTEN, or a bound,
/// unconnected UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuestPort {
    pub proto: PortProto,
    pub ip: std::net::IpAddr,
    pub port: u16,
}

impl std::fmt::Display for GuestPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.ip, self.port),
            self.proto
        )
    }
}

/// First host → guest frame on an Events stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Guest Unix socket paths named by `portForwards` rules; the agent
    /// forwards to these and to no other Unix socket.
    pub unix_sockets: Vec<String>,
    /// `reverse: true` rules: the agent listens on each of these guest
    /// paths (a socket of mode 0600 owned by `owner`) for as long as this
    /// stream lasts, and reports each connection as
    /// [`GuestEvent::ReverseConnection`] (its index here) for the host to
    /// claim with [`ForwardRequest::Reverse`].
    pub reverse_sockets: Vec<String>,
    /// The guest user (uid, gid) the reverse sockets belong to.
    pub owner: (u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestEvent {
    /// `full`: `added` is the complete set (start, or after lost events).
    Ports {
        full: bool,
        added: Vec<GuestPort>,
        removed: Vec<GuestPort>,
    },
    /// The watcher's mode changed (or was reported at subscription).
    Watcher(String),
    /// Ports published by NAT rules alone (a container engine without a
    /// userland proxy): sent at subscription and whenever the NAT watcher
    /// dumped the rules, before the `Ports` event that adds or removes
    /// them. Those ports are in `Ports` too, as listeners.
    Published(NatReport),
    /// A daemon the agent supervises (a container engine) changed state,
    /// or was reported at subscription: `state` is one line such as
    /// `running (attempt 1)` or `exited (attempt 2): exited with code 1`.
    Service { name: String, state: String },
    /// A program connected to reverse socket `socket` (an index into
    /// `Subscribe::reverse_sockets`); `conn` names the waiting connection.
    ReverseConnection { socket: u32, conn: u64 },
}

/// What the guest's NAT watcher knows (`GuestEvent::Published`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// "nftables notifications", or why it is off.
    pub watcher: String,
    /// Rule dumps made since the agent started (none while nothing
    /// changes: tests check it).
    pub dumps: u64,
    pub publications: Vec<NatPublication>,
}

/// One port a DNAT rule publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatPublication {
    /// The port as the rule matches it (the address is unspecified when
    /// the rule names none), as listed in `GuestEvent::Ports`.
    pub port: GuestPort,
    /// Where the rule sends it (a container's address and port); the agent
    /// dials this for a forwarded connection.
    pub destination: std::net::SocketAddr,
    /// `family table chain` of the rule (`ip nat DOCKER`).
    pub rule: String,
    /// The container publishing it, when the engine said.
    pub container: Option<String>,
}

/// Host → guest on the Events stream, after `Subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostEvent {
    /// The host listens for this guest port now.
    ForwardReady { port: GuestPort, host: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Connect to this listening TCP socket (its address as reported).
    Tcp { ip: std::net::IpAddr, port: u16 },
    /// Relay datagrams to this bound UDP socket for one host peer.
    Udp { ip: std::net::IpAddr, port: u16 },
    /// Connect to this Unix socket (must be one named in `Subscribe`).
    Unix { path: String },
    /// Take over the waiting reverse connection `conn`: this stream relays
    /// it to the host's socket.
    Reverse { conn: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardReply {
    Ok,
    Refused(String),
}

/// One UDP datagram on a Forward stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram(#[serde(with = "serde_bytes")] pub Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// A command to run. The argv reaches the program exactly as given, also
/// through a login shell (`$SHELL -l -c LINE`, each word quoted by
/// [`crate::shellquote`], so shell builtins run as Lima's do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Empty: the user's shell itself (a login shell when `login`).
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's base environment.
    pub env: Vec<(String, String)>,
    /// The working directory; `None` is the user's home.
    pub cwd: Option<String>,
    /// What a `cwd` missing in the guest means: start in the user's home
    /// and say so on stderr (`true`: the host's current folder, which the
    /// guest may not have), or fail (`false`: an explicit `--workdir`).
    pub cwd_fallback: bool,
    /// Run as this user of the guest's `/etc/passwd` (its groups, home
    /// and shell); `None` runs as root.
    pub user: Option<String>,
    /// Through the user's shell as a login shell, so its profile is read.
    pub login: bool,
    /// Run on a new pseudo-terminal of this size; stdout carries its output and
    /// stderr stays empty.
    pub pty: Option<WinSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecInput {
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    StdinEof,
    /// Deliver this signal number to the command's process group.
    Signal(i32),
    Resize(WinSize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecOutput {
    Started {
        pid: u32,
    },
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    Exit(ExitStatus),
    /// The command could not be started (missing program, bad cwd, ...).
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the code itself, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
    #[error("could not encode a frame")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("could not decode a frame (peer speaks another protocol version?)")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` as one frame: length prefix and body.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut buf, config()).map_err(FrameError::Encode)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// What decoding one frame may claim, per byte of its body. bincode counts
/// ("claims") the in-memory size of every value before decoding it, and
/// allocates a byte or text string of the claimed length before reading it.
/// Without a limit a 27-byte frame claiming an exabyte-long byte string
/// made the decoder allocate first and abort the process (found by
/// the file server's fuzz target); with one fixed limit of 1 GiB, a frame
/// of a few bytes still made it allocate up to 1 GiB before failing (the
/// `frames` fuzz target, which caps single allocations at 256 MB, found a
/// 29-byte `HelloReply` claiming 785 MB within seconds;
/// `a_tiny_frame_cannot_claim_a_large_allocation`).
///
/// A frame that decodes claims at most 8 bytes per body byte: the
/// densest encodings are varints of 1 byte claiming a `u64`'s 8, and no
/// message holds a `u128`. Twice that leaves room.
const CLAIM_PER_BYTE: usize = 16;

/// Decodes one frame body (without the length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    // bincode takes its limit as a const generic: pick the smallest of a
    // few body size classes (16 times apart), so what a frame may claim is
    // 16 times its class: at most 16 KiB, or 256 times the body.
    const K: usize = 1 << 10;
    match body.len() {
        n if n <= K => decode_limited::<T, { CLAIM_PER_BYTE * K }>(body),
        n if n <= 16 * K => decode_limited::<T, { CLAIM_PER_BYTE * 16 * K }>(body),
        n if n <= 256 * K => decode_limited::<T, { CLAIM_PER_BYTE * 256 * K }>(body),
        n if n <= 4096 * K => decode_limited::<T, { CLAIM_PER_BYTE * 4096 * K }>(body),
        _ => decode_limited::<T, { CLAIM_PER_BYTE * MAX_FRAME }>(body),
    }
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())
        .map_err(FrameError::Decode)?;
    if used != body.len() {
        return Err(FrameError::Decode(
            bincode::error::DecodeError::OtherString(format!(
                "{} trailing bytes after the message",
                body.len() - used
            )),
        ));
    }
    Ok(value)
}

fn check_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: std::io::Write, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode_frame(value)?)?;
    Ok(())
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream.
pub fn read_frame<R: std::io::Read, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let mut body = vec![0u8; check_len(prefix)?];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_body(&body).map(Some)
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one frame to an async writer.
    pub async fn write_frame_async<W: AsyncWrite + Unpin, T: Serialize>(
        w: &mut W,
        value: &T,
    ) -> Result<(), FrameError> {
        w.write_all(&encode_frame(value)?).await?;
        Ok(())
    }

    /// Reads one frame from an async reader; `Ok(None)` on a clean end of stream.
    pub async fn read_frame_async<R: AsyncRead + Unpin, T: DeserializeOwned>(
        r: &mut R,
    ) -> Result<Option<T>, FrameError> {
        let mut prefix = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match r.read(&mut prefix[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(FrameError::Truncated),
                n => got += n,
            }
        }
        let mut body = vec![0u8; check_len(prefix)?];
        r.read_exact(&mut body).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
        decode_body(&body).map(Some)
    }
}
#[cfg(feature = "tokio")]
pub use asynchronous::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let frame = encode_frame(&v).unwrap();
        let back: T = read_frame(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(v, back);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Hello::new(Purpose::Exec));
        round_trip(HelloReply {
            version: PROTOCOL_VERSION,
            result: Ok(AgentInfo {
                agent_version: "0.1.0".into(),
                kernel_release: "6.1.0-40-amd64".into(),
                pid1: true,
                watcher: "ebpf".into(),
            }),
        });
        round_trip(HelloReply {
            version: 9,
            result: Err("too old".into()),
        });
        round_trip(ControlRequest::Shutdown);
        round_trip(ControlReply::Pong);
        round_trip(ControlRequest::SetWatchMode(WatchMode::LimaLike {
            interval_ms: 3000,
        }));
        let port = GuestPort {
            proto: PortProto::Udp,
            ip: "::".parse().unwrap(),
            port: 53,
        };
        round_trip(Subscribe {
            unix_sockets: vec!["/run/docker.sock".into()],
            reverse_sockets: vec!["/run/user/1000/agent.sock".into()],
            owner: (1000, 1000),
        });
        round_trip(GuestEvent::ReverseConnection { socket: 0, conn: 7 });
        round_trip(ForwardRequest::Reverse { conn: 7 });
        round_trip(GuestEvent::Ports {
            full: true,
            added: vec![port],
            removed: vec![],
        });
        round_trip(GuestEvent::Published(NatReport {
            watcher: "nftables notifications".into(),
            dumps: 3,
            publications: vec![NatPublication {
                port,
                destination: "172.17.0.2:53".parse().unwrap(),
                rule: "ip nat DOCKER".into(),
                container: Some("web".into()),
            }],
        }));
        round_trip(HostEvent::ForwardReady {
            port,
            host: "127.0.0.1:53".into(),
        });
        round_trip(ForwardRequest::Tcp {
            ip: "127.0.0.1".parse().unwrap(),
            port: 80,
        });
        round_trip(ForwardRequest::Unix {
            path: "/run/x.sock".into(),
        });
        round_trip(ForwardReply::Refused("nothing listens".into()));
        round_trip(Datagram(vec![1, 2, 3]));
        assert_eq!(port.to_string(), "[::]:53/udp");
        round_trip(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env: vec![("A".into(), "b=c".into())],
            cwd: Some("/tmp".into()),
            cwd_fallback: true,
            user: Some("lima".into()),
            login: true,
            pty: Some(WinSize { rows: 24, cols: 80 }),
        });
        for input in [
            ExecInput::Stdin(vec![0, 1, 255]),
            ExecInput::StdinEof,
            ExecInput::Signal(15),
            ExecInput::Resize(WinSize { rows: 1, cols: 2 }),
        ] {
            round_trip(input);
        }
        for out in [
            ExecOutput::Started { pid: 42 },
            ExecOutput::Stdout(vec![7; 100_000]),
            ExecOutput::Stderr(vec![]),
            ExecOutput::Exit(ExitStatus::Signal(9)),
            ExecOutput::Failed("no such file".into()),
        ] {
            round_trip(out);
        }
    }

    #[test]
    fn bytes_are_encoded_compactly() {
        let frame = encode_frame(&ExecOutput::Stdout(vec![0xff; 1000])).unwrap();
        assert!(frame.len() < 1010, "frame is {} bytes", frame.len());
    }

    #[test]
    fn clean_eof_is_none_and_partial_frame_is_an_error() {
        assert!(read_frame::<_, ControlRequest>(&mut &[][..])
            .unwrap()
            .is_none());
        let frame = encode_frame(&ControlRequest::Ping).unwrap();
        let cut = &frame[..frame.len() - 1];
        assert!(matches!(
            read_frame::<_, ControlRequest>(&mut &cut[..]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame::<_, ControlRequest>(&mut &frame[..2]),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn oversized_and_garbage_frames_are_rejected() {
        let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        assert!(matches!(
            read_frame::<_, ControlRequest>(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame::<_, ControlRequest>(&mut &garbage[..]),
            Err(FrameError::Decode(_))
        ));
    }

    /// The largest single allocation made on the calling thread, for tests
    /// that bound what decoding allocates.
    mod alloc_probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Probe;

        thread_local! {
            // `const` and `Cell<usize>`: no destructor and no allocation, so
            // the allocator itself may touch it.
            static LARGEST: Cell<usize> = const { Cell::new(0) };
        }

        fn note(size: usize) {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }

        /// The largest allocation since the last call, then starts over.
        pub fn take() -> usize {
            LARGEST.with(|l| l.replace(0))
        }

        // SAFETY: every method forwards to `System` with the caller's
        // arguments unchanged; noting the size touches no allocation.
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: as for `alloc`.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System` through this allocator.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }
    }

    #[global_allocator]
    static PROBE: alloc_probe::Probe = alloc_probe::Probe;

    /// A frame of `body`.
    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn a_tiny_frame_cannot_claim_a_large_allocation() {
        // bincode varints: 252 announces a little-endian u32.
        let claim_512_mib = [252, 0, 0, 0, 0x20];
        // ExecOutput::Stdout (variant 1) with a 512 MiB byte string, and
        // HelloReply { version: 2, result: Ok (0) } whose agent_version claims
        // 512 MiB of text: 6 and 7 bytes. Bincode allocates a string before
        // reading it, and a fixed 1 GiB limit let both through.
        let stdout = frame_of(&[[1].as_slice(), &claim_512_mib].concat());
        let hello = frame_of(&[[2, 0].as_slice(), &claim_512_mib].concat());
        alloc_probe::take();
        let r = read_frame::<_, ExecOutput>(&mut &stdout[..]);
        let largest = alloc_probe::take();
        assert!(matches!(r, Err(FrameError::Decode(_))), "{r:?}");
        assert!(
            largest < 1 << 20,
            "a 6-byte body made the decoder allocate {largest} bytes"
        );
        let r = read_frame::<_, HelloReply>(&mut &hello[..]);
        let largest = alloc_probe::take();
        assert!(matches!(r, Err(FrameError::Decode(_))), "{r:?}");
        assert!(
            largest < 1 << 20,
            "a 7-byte body made the decoder allocate {largest} bytes"
        );
    }

    #[test]
    fn the_densest_frames_still_decode() {
        // A zero u64 is one byte that claims 8, the most any value claims
        // per byte; lengths land on both sides of each size class.
        for n in [
            0,
            1,
            1021,
            1022,
            (16 << 10) - 3,
            (16 << 10) - 2,
            (256 << 10) - 5,
            (256 << 10) - 4,
            (4 << 20) - 5,
            (4 << 20) - 4,
        ] {
            let frame = encode_frame(&vec![0u64; n]).unwrap();
            let back: Vec<u64> = read_frame(&mut &frame[..]).unwrap().unwrap();
            assert_eq!(back.len(), n);
        }
    }

    #[test]
    fn exit_status_follows_the_shell_convention() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
