//! Ports published by NAT rules alone: a container engine without a
//! userland proxy (`dockerd --userland-proxy=false`) makes no listener for
//! `-p 8080:80`, only a DNAT rule, so eBPF sees nothing. We learn of those
//! rules from the kernel's nf_tables change notifications and read them
//! back from the kernel, with no rescan while nothing changes.
//!
//! ```text
//!  kernel nf_tables ─ NFNLGRP_NFTABLES multicast ─▶ notification socket (AsyncFd)
//!     NEWRULE/DELRULE/DELTABLE/DELCHAIN ...           │ a DNAT rule, or a deletion while
//!     NEWGEN (end of a transaction)                   │ publications exist: dirty
//!                                                     ▼ at NEWGEN, if dirty (or on overflow)
//!  kernel ◀── NFT_MSG_GETRULE dump (socket.rs) ── dump ─▶ rules.rs: DNAT → Publication
//!                                                     ▼
//!                               watch: NatState { status, dumps, publications }
//! ```
//!
//! - **Why notifications, and why our own dump.** `docs/decisions.md`
//!   ("Containers (issue 22)"): iptables-nft (Debian's default `iptables`)
//!   writes through nf_tables, whose every committed change is multicast;
//!   the rules are read from the kernel over the same netlink family
//!   instead of running `iptables-save` (which creates the `nat` table
//!   when listing it, and would have to be in the image).
//! - **Not covered:** iptables-legacy (its setsockopt interface notifies
//!   nobody). Debian 12's `iptables` is iptables-nft unless an admin
//!   switches the alternative.
//! - **Counted.** Every dump adds one to [`NatState::dumps`], which the host
//!   sees, so tests can check that an idle guest makes none.
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use lima_proto::errors::error_chain;
use lima_proto::GuestPort;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

mod engine;
pub mod rules;
mod socket;

pub use rules::Publication;
use rules::{NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELTABLE, NFT_MSG_NEWGEN, NFT_MSG_NEWRULE};
use socket::{messages, nft_type, NfSocket, RECV_BUF};

/// What the NAT watcher knows now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// "nftables notifications", or why the watcher is off.
    pub status: String,
    /// How many rule dumps were made since the agent started.
    pub dumps: u64,
    /// Published ports (host side, as the rule matches) and their rule.
    pub publications: BTreeMap<GuestPort, Publication>,
}

pub type NatSnapshot = Arc<NatState>;

impl NatState {
    /// What the host is told (`GuestEvent::Published`).
    pub fn report(&self) -> lima_proto::NatReport {
        lima_proto::NatReport {
            watcher: self.status.clone(),
            dumps: self.dumps,
            publications: self
                .publications
                .values()
                .map(|p| lima_proto::NatPublication {
                    port: p.port,
                    destination: p.destination,
                    rule: p.rule.clone(),
                    container: p.container.clone(),
                })
                .collect(),
        }
    }
}

/// Starts watching; never fails: without nf_tables the state says why and
/// stays as it is (no task runs).
pub fn start() -> watch::Receiver<NatSnapshot> {
    let (tx, rx) = watch::channel(Arc::new(NatState::default()));
    let registered = NfSocket::subscribe().and_then(|s| {
        // SAFETY: the NfSocket owns its fd and moves into the AsyncFd, so
        // the fd stays open exactly as long as it is registered.
        unsafe { AsyncFd::register(s) }.map_err(io::Error::from)
    });
    match registered {
        Ok(socket) => {
            let mut state = NatState {
                status: "nftables notifications".into(),
                ..Default::default()
            };
            // Rules made before the agent started (an agent restarted as a
            // service, a guest that ran iptables at boot).
            state.dumps = 1;
            // nfnetlink without nf_tables (loaded later, by the first
            // iptables or nft) fails this dump; its notifications still come.
            state.publications = match NfSocket::dump_rules() {
                Ok(rules) => publications(&rules),
                Err(e) => {
                    tracing::debug!("no nf_tables rules at start: {e}");
                    BTreeMap::new()
                }
            };
            tracing::info!(
                "NAT watcher: nftables notifications ({} ports published now)",
                state.publications.len()
            );
            tx.send_replace(Arc::new(state));
            let tx = Arc::new(tx);
            name_containers(&tx);
            tokio::spawn(run(socket, tx));
        }
        Err(e) => {
            let status = format!(
                "unavailable: cannot subscribe to nf_tables changes ({}; is the nf_tables \
                 module loaded?)",
                error_chain(&e)
            );
            tracing::info!("NAT watcher {status}");
            tx.send_replace(Arc::new(NatState {
                status,
                ..Default::default()
            }));
            // Keep the sender alive, so receivers simply see no change.
            tokio::spawn(async move { tx.closed().await });
        }
    }
    rx
}

/// The publications in a fresh rule dump; `None` (said in the log) when
/// the dump failed.
fn dump() -> Option<BTreeMap<GuestPort, Publication>> {
    match NfSocket::dump_rules() {
        Ok(rules) => Some(publications(&rules)),
        Err(e) => {
            tracing::warn!("nf_tables rule dump failed: {e}; keeping the last publications");
            None
        }
    }
}

/// Asks the engine, in the background, for the containers of the
/// publications that have no name yet (a few tries, only after a change).
fn name_containers(tx: &Arc<watch::Sender<NatSnapshot>>) {
    let unnamed = |s: &NatState| s.publications.values().any(|p| p.container.is_none());
    if !unnamed(&tx.borrow()) {
        return;
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        for delay in engine::RETRIES {
            tokio::time::sleep(delay).await;
            let Some(names) = engine::names().await else {
                // No engine socket (or it does not answer): nothing to ask.
                return;
            };
            tx.send_if_modified(|state| {
                let mut next = state.as_ref().clone();
                for p in next.publications.values_mut() {
                    if p.container.is_none() {
                        p.container = names.get(&p.destination.ip()).cloned();
                    }
                }
                let changed = next != **state;
                if changed {
                    *state = Arc::new(next);
                }
                changed
            });
            if !unnamed(&tx.borrow()) {
                return;
            }
        }
    });
}

/// Publications in dumped NEWRULE payloads; the first rule for a port wins
/// (as in the kernel, where the first matching rule decides).
pub fn publications(rules: &[Vec<u8>]) -> BTreeMap<GuestPort, Publication> {
    let mut out = BTreeMap::new();
    for payload in rules {
        if let Some(p) = rules::parse(NFT_MSG_NEWRULE, payload).and_then(|m| m.publication) {
            out.entry(p.port).or_insert(p);
        }
    }
    out
}

/// Whether a notification can change the publications: a rule that
/// publishes a port comes or goes (a deleted rule's notification carries
/// its expressions too), or, while there are publications (`published`),
/// a chain or table goes (taking its rules along) or a rule we cannot read.
pub fn relevant(kind: u16, payload: &[u8], published: bool) -> bool {
    match kind {
        NFT_MSG_NEWRULE | NFT_MSG_DELRULE => match rules::parse(kind, payload) {
            Some(m) => m.publication.is_some(),
            None => published,
        },
        NFT_MSG_DELCHAIN | NFT_MSG_DELTABLE => published,
        _ => false,
    }
}

async fn run(socket: AsyncFd<NfSocket>, tx: Arc<watch::Sender<NatSnapshot>>) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut dirty = false;
    loop {
        let mut guard = match socket.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("NAT watcher stopped: {e}");
                return;
            }
        };
        let mut dump_now = false;
        loop {
            match socket.get_ref().recv(&mut buf) {
                Ok(n) => {
                    let published = !tx.borrow().publications.is_empty();
                    for m in messages(&buf[..n]) {
                        let Some(kind) = nft_type(m.kind) else {
                            continue;
                        };
                        if kind == NFT_MSG_NEWGEN {
                            dump_now |= std::mem::take(&mut dirty);
                        } else if relevant(kind, &m.payload, published) {
                            dirty = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::debug!("nf_tables notifications overflowed; dumping the rules");
                    dump_now = true;
                }
                Err(e) => {
                    tracing::error!("NAT watcher stopped: reading nf_tables notifications: {e}");
                    return;
                }
            }
        }
        if dump_now {
            let fresh = dump();
            tx.send_modify(|state| {
                let mut next = state.as_ref().clone();
                next.dumps += 1;
                if let Some(mut fresh) = fresh {
                    for p in fresh.values_mut() {
                        // Names already learned stay with their container.
                        p.container = next
                            .publications
                            .values()
                            .find(|old| old.destination == p.destination)
                            .and_then(|old| old.container.clone());
                        if !next.publications.contains_key(&p.port) {
                            tracing::info!(
                                "NAT rule ({}) publishes {} → {}",
                                p.rule,
                                p.port,
                                p.destination
                            );
                        }
                    }
                    next.publications = fresh;
                }
                *state = Arc::new(next);
            });
            name_containers(&tx);
        }
    }
}

#[cfg(test)]
mod tests;
