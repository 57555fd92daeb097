//! `lima.yaml` as `limactl` reads a user's file: `LimaYaml::parse`, then
//! `resolve`, then what is made of the result before a VM exists (the
//! `portForwards` rules for an instance directory, the exposure warnings,
//! and the forwarding decision for guest listeners, which a guest picks).
//!
//! Input: the file's text (inputs that are not UTF-8 are skipped, as
//! `LimaYaml::load` refuses them). Checks: nothing panics, every error
//! prints, and a resolved config holds what `resolve` promises (at least
//! one CPU, at least 128 MiB, a forwarded port inside its rule's host range).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lima_host::config::LimaYaml;
use lima_host::{mounts, portfwd};
use lima_proto::{GuestPort, PortProto};

const ORIGIN: &str = "fuzz/lima.yaml";

/// Listeners a guest could report: each protocol on the wildcard, loopback
/// and another address, at both ends of the port range and in between.
fn guest_ports() -> impl Iterator<Item = GuestPort> {
    let ips = [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let ports = [0, 1, 22, 80, 8080, 65534, 65535];
    [PortProto::Tcp, PortProto::Udp]
        .into_iter()
        .flat_map(move |proto| {
            ips.into_iter().flat_map(move |ip| {
                ports
                    .into_iter()
                    .map(move |port| GuestPort { proto, ip, port })
            })
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let yaml = match LimaYaml::parse(text, ORIGIN) {
        Ok(yaml) => yaml,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = yaml.unused_fields();
    let config = match yaml.resolve(ORIGIN) {
        Ok(config) => config,
        Err(e) => {
            assert!(e.to_string().starts_with(ORIGIN), "{e}");
            return;
        }
    };
    assert!(config.cpus >= 1);
    assert!(config.memory >= 128 << 20);
    for mount in &config.mounts {
        let _ = mounts::exposure_warning(mount);
    }
    let rules = portfwd::resolve(&config.port_forwards, Path::new("/lima/instance"))
        .expect("rules that resolve checked resolve again");
    for guest in guest_ports() {
        if let portfwd::Decision::Forward { host, rule } = portfwd::decide(&rules, &guest) {
            let (low, high) = rule.host_ports;
            assert!(
                (low..=high).contains(&host.port()),
                "{guest} → {host} by {rule:?}"
            );
        }
    }
});
