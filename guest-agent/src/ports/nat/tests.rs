//! The NAT watcher against the real kernel, in a network namespace of
//! the test's own (`unshare(CLONE_NEWNET)` on the test thread, so the
//! machine's own rules are neither seen nor touched). Ignored by default:
//! they need root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for
//! nf_tables) and the `iptables` and `nftables` packages (`cargo xtask
//! setup` installs both). Run them with
//! `cargo test -p lima-guest-agent nat -- --ignored`.
use std::process::Command;
use std::time::Duration;

use super::*;

/// Runs a command in the test's namespace (children inherit the thread's).
fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask setup`)", argv[0]));
    assert!(
        out.status.success(),
        "{argv:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread into a new, empty network namespace and runs `body`
/// on a single-threaded runtime there.
fn in_netns<F: std::future::Future<Output = ()>>(body: impl FnOnce() -> F) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) needs root");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body());
}

/// Waits for the state to satisfy `ok`; a guard against a hang, not a
/// measurement.
async fn until(
    rx: &mut watch::Receiver<NatSnapshot>,
    what: &str,
    ok: impl Fn(&NatState) -> bool,
) -> NatSnapshot {
    let wait = async {
        loop {
            let now = rx.borrow_and_update().clone();
            if ok(&now) {
                return now;
            }
            rx.changed().await.expect("the NAT watcher stopped");
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(s) => s,
        Err(_) => panic!("{what}: not seen; state {:?}", rx.borrow()),
    }
}

fn port(text: &str) -> impl Fn(&NatState) -> bool + '_ {
    move |s| s.publications.keys().any(|p| p.to_string() == text)
}

#[test]
#[ignore = "needs root, iptables and nftables: nf_tables in a network namespace (containers issue 22)"]
fn dockers_rules_are_seen_when_they_change_and_only_then() {
    in_netns(|| async {
        let mut rx = start();
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.status, "nftables notifications");
        assert_eq!(first.dumps, 1, "one dump at start");
        assert!(first.publications.is_empty());

        // What dockerd does for `docker run -p 8080:80` (iptables-nft).
        run(&["iptables", "-t", "nat", "-N", "DOCKER"]);
        run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ]);
        run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "!",
            "-i",
            "docker0",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DNAT",
            "--to-destination",
            "172.17.0.2:80",
        ]);
        let s = until(&mut rx, "the DNAT rule", port("0.0.0.0:8080/tcp")).await;
        let p = s.publications.values().next().unwrap();
        assert_eq!(p.destination, "172.17.0.2:80".parse().unwrap());
        assert_eq!(p.rule, "ip nat DOCKER");
        // The table, the chain and the jump made no dump: only the DNAT did.
        assert_eq!(s.dumps, 2, "{s:?}");

        // Rules that publish nothing (the hairpin MASQUERADE, a filter
        // rule), then one more publication: exactly one more dump.
        run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "172.17.0.2/32",
            "-d",
            "172.17.0.2/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "MASQUERADE",
        ]);
        run(&[
            "iptables",
            "-A",
            "FORWARD",
            "-d",
            "172.17.0.2/32",
            "!",
            "-i",
            "docker0",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "ACCEPT",
        ]);
        run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "-d",
            "127.0.0.1/32",
            "!",
            "-i",
            "docker0",
            "-p",
            "udp",
            "--dport",
            "5353",
            "-j",
            "DNAT",
            "--to-destination",
            "172.17.0.3:53",
        ]);
        let s = until(&mut rx, "the second rule", port("127.0.0.1:5353/udp")).await;
        assert_eq!(s.dumps, 3, "{s:?}");
        assert_eq!(s.publications.len(), 2);

        // Idle: an hour of (paused, auto-advanced) time makes no dump; a
        // periodic rescan would have made hundreds.
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        tokio::time::resume();
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().dumps, 3);

        // The container stops: its rule goes, and so does the publication.
        run(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "DOCKER",
            "!",
            "-i",
            "docker0",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DNAT",
            "--to-destination",
            "172.17.0.2:80",
        ]);
        let s = until(&mut rx, "the rule's removal", |s| {
            !port("0.0.0.0:8080/tcp")(s)
        })
        .await;
        assert_eq!(s.publications.len(), 1, "{s:?}");
        run(&["iptables", "-t", "nat", "-F", "DOCKER"]);
        until(&mut rx, "the flush", |s| s.publications.is_empty()).await;

        // IPv6 through ip6tables.
        run(&[
            "ip6tables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "8443",
            "-j",
            "DNAT",
            "--to-destination",
            "[fd00::2]:443",
        ]);
        let s = until(&mut rx, "the IPv6 rule", port("[::]:8443/tcp")).await;
        let p = &s.publications.values().next().unwrap();
        assert_eq!(p.destination, "[fd00::2]:443".parse().unwrap());
    });
}

#[test]
#[ignore = "needs root, iptables and nftables: nf_tables in a network namespace (containers issue 22)"]
fn native_nftables_dnat_and_a_deleted_table() {
    in_netns(|| async {
        let mut rx = start();
        run(&["nft", "add", "table", "ip", "engine"]);
        run(&[
            "nft",
            "add chain ip engine pre { type nat hook prerouting priority -100; }",
        ]);
        // One argument: nft joins its words with spaces.
        let out = Command::new("nft")
            .args([
                "add",
                "rule",
                "ip",
                "engine",
                "pre",
                "tcp",
                "dport",
                "9090",
                "dnat",
                "to",
                "172.17.0.5:90",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = until(&mut rx, "nft's dnat", port("0.0.0.0:9090/tcp")).await;
        assert_eq!(
            s.publications.values().next().unwrap().destination,
            "172.17.0.5:90".parse().unwrap()
        );
        let dumps = s.dumps;
        run(&["nft", "delete", "table", "ip", "engine"]);
        let s = until(&mut rx, "the table's deletion", |s| {
            s.publications.is_empty()
        })
        .await;
        assert_eq!(s.dumps, dumps + 1, "one transaction, one dump");
    });
}

#[test]
fn which_notifications_cost_a_dump() {
    use rules::tests::{docker_rule, rule};
    use rules::NFPROTO_IPV4;
    let dnat = docker_rule(None, 6, 8080, [172, 17, 0, 2], 80);
    let masquerade = rule(NFPROTO_IPV4, "nat", "POSTROUTING", &[]);
    assert!(relevant(NFT_MSG_NEWRULE, &dnat, false));
    assert!(relevant(NFT_MSG_DELRULE, &dnat, true));
    assert!(!relevant(NFT_MSG_NEWRULE, &masquerade, true));
    assert!(!relevant(NFT_MSG_DELRULE, &masquerade, true));
    assert!(relevant(NFT_MSG_DELTABLE, &masquerade, true));
    assert!(!relevant(NFT_MSG_DELCHAIN, &masquerade, false));
    // A deletion we cannot read counts only while something is published.
    assert!(relevant(NFT_MSG_DELRULE, &[2], true));
    assert!(!relevant(NFT_MSG_DELRULE, &[2], false));
    assert!(!relevant(NFT_MSG_NEWGEN, &dnat, true));
}

#[test]
fn the_first_rule_for_a_port_wins() {
    use rules::tests::docker_rule;
    let first = docker_rule(None, 6, 8080, [172, 17, 0, 2], 80);
    let second = docker_rule(None, 6, 8080, [172, 17, 0, 9], 80);
    let other = docker_rule(None, 17, 8080, [172, 17, 0, 9], 80);
    let found = publications(&[first, second, other]);
    assert_eq!(found.len(), 2);
    let tcp = found
        .values()
        .find(|p| p.port.proto == lima_proto::PortProto::Tcp)
        .unwrap();
    assert_eq!(tcp.destination, "172.17.0.2:80".parse().unwrap());
}
