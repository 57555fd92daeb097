//! The NETLINK_NETFILTER sockets: one subscribed to nf_tables change
//! notifications (read by the watcher when the kernel has something), and
//! one per rule dump.
//!
//! ```text
//!  agent                                        kernel (agent's network namespace)
//!  socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)
//!  setsockopt(NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
//!  ◀── NEWRULE/DELRULE/DELCHAIN/..., NEWGEN ───────  each committed transaction
//!  dump socket:
//!  ── NFT_MSG_GETRULE, NLM_F_DUMP, nfgenmsg{UNSPEC} ─▶
//!  ◀── NEWRULE, NEWRULE, ... (several reads), NLMSG_DONE
//! ```
//!
//! Both need CAP_NET_ADMIN (nfnetlink checks it for every message and
//! group); the agent is root. Only the syscalls are unsafe, in [`NfSocket`].
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::rules::{NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLMSG_HDRLEN: usize = 16;
/// Room for one read: the kernel fills at most 32 KiB per dump skb, and
/// a notification skb holds one message.
pub const RECV_BUF: usize = 64 * 1024;
const RECV_TIMEOUT_SECS: u16 = 5;
/// A dump the kernel marks as interrupted is repeated this many times at most.
const MAX_ATTEMPTS: usize = 3;

/// One netlink message: its type and payload (after `nlmsghdr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// Splits one datagram into messages; stops at a malformed one.
pub fn messages(mut buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            payload: buf[NLMSG_HDRLEN..len].to_vec(),
        });
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The nf_tables message type inside an nfnetlink type, if it is one.
pub fn nft_type(kind: u16) -> Option<u16> {
    (kind >> 8 == NFNL_SUBSYS_NFTABLES).then_some(kind & 0xff)
}

/// A NETLINK_NETFILTER socket; closed on drop.
pub struct NfSocket(OwnedFd);

impl AsRawFd for NfSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NfSocket {
    fn open(flags: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket() takes no pointers; we check its result.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket we just opened and own; nothing else holds it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A non-blocking socket that receives every committed nf_tables
    /// change of this network namespace.
    pub fn subscribe() -> io::Result<Self> {
        let socket = Self::open(libc::SOCK_NONBLOCK)?;
        // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bind reads size_of::<sockaddr_nl>() bytes from a live
        // sockaddr_nl; the fd is open.
        let r = unsafe {
            libc::bind(
                socket.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let group = NFNLGRP_NFTABLES;
        // SAFETY: setsockopt reads 4 bytes from a live u32; the fd is open.
        let r = unsafe {
            libc::setsockopt(
                socket.0.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // A burst of rules (a container with many ports) must not overflow
        // the queue; an overflow is noticed (ENOBUFS) and costs a dump.
        let size: libc::c_int = 1 << 20;
        // SAFETY: as above, with a live c_int. Failure only keeps the default.
        unsafe {
            libc::setsockopt(
                socket.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(socket)
    }

    /// One datagram into `buf`; `WouldBlock` when nothing is queued,
    /// `ENOBUFS` when notifications were dropped.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf, which is
            // live and exclusively ours; the fd is open.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Every nf_tables rule of every family and table: the payloads of
    /// the NEWRULE messages of one consistent dump.
    pub fn dump_rules() -> io::Result<Vec<Vec<u8>>> {
        let socket = Self::open(0)?;
        crate::ports::sockdiag::set_recv_timeout(socket.0.as_fd(), RECV_TIMEOUT_SECS.into())?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (rules, interrupted) = socket.dump_once(attempt as u32, &mut buf)?;
            if !interrupted || attempt >= MAX_ATTEMPTS {
                return Ok(rules);
            }
        }
    }

    fn dump_once(&self, seq: u32, buf: &mut [u8]) -> io::Result<(Vec<Vec<u8>>, bool)> {
        let mut req = [0u8; NLMSG_HDRLEN + 4];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
        req[4..6].copy_from_slice(&kind.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nfgenmsg: NFPROTO_UNSPEC (every family), NFNETLINK_V0, res_id 0.
        // SAFETY: send reads req.len() bytes from a live array; the fd is open.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rules = Vec::new();
        let mut interrupted = false;
        loop {
            let got = self.recv(buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no nf_tables reply within {RECV_TIMEOUT_SECS} s"),
                ),
                _ => e,
            })?;
            if got == 0 {
                return Err(io::Error::other("the kernel ended the rule dump early"));
            }
            for m in messages(&buf[..got]) {
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => return Ok((rules, interrupted)),
                    NLMSG_ERROR => {
                        let code = m
                            .payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        if code == 0 {
                            return Ok((rules, interrupted));
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => rules.push(m.payload),
                }
            }
        }
    }
}
