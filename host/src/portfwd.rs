//! `portForwards` rules from `lima.yaml`, with Lima's defaults and matching:
//! rules are tried in order, the first that matches decides (forward or
//! `ignore`), and a fallback rule forwards guest 127.0.0.1 (and wildcard)
//! listeners on every port to the same port on host 127.0.0.1.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use lima_proto::{GuestPort, PortProto};
use serde::{Deserialize, Serialize};

/// One rule as written in `lima.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortForwardYaml {
    #[serde(rename = "guestIP")]
    pub guest_ip: Option<IpAddr>,
    #[serde(rename = "guestIPMustBeZero")]
    pub guest_ip_must_be_zero: Option<bool>,
    pub guest_port: Option<u32>,
    pub guest_port_range: Option<[u32; 2]>,
    pub guest_socket: Option<String>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u32>,
    pub host_port_range: Option<[u32; 2]>,
    pub host_socket: Option<String>,
    pub proto: Option<String>,
    pub reverse: Option<bool>,
    pub ignore: Option<bool>,
    #[serde(rename = "static")]
    pub static_: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoMatch {
    Tcp,
    Udp,
    Any,
}

/// A checked rule with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Index in `portForwards`, or `None` for the built-in fallback rule.
    pub index: Option<usize>,
    pub guest_ip: IpAddr,
    pub guest_ip_must_be_zero: bool,
    pub guest_ports: (u16, u16),
    pub host_ip: IpAddr,
    pub host_ports: (u16, u16),
    pub proto: ProtoMatch,
    pub ignore: bool,
    pub sockets: Option<(String, PathBuf)>,
    /// `reverse: true`: the host socket is reached from the guest socket.
    pub reverse: bool,
}

impl Rule {
    /// "portForwards[2]" or "the default rule", for messages.
    pub fn name(&self) -> String {
        match self.index {
            Some(i) => format!("portForwards[{i}]"),
            None => "the default rule (guest 127.0.0.1 → host 127.0.0.1, same port)".into(),
        }
    }
}

/// What to do with a guest listener.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Forward {
        host: SocketAddr,
        rule: Rule,
    },
    Ignore {
        rule: Rule,
    },
    /// No rule matched (e.g. a listener on a specific non-loopback address).
    None,
}

fn port(v: u32, field: &str) -> Result<u16, String> {
    if (1..=65535).contains(&v) {
        Ok(v as u16)
    } else {
        Err(format!("{field}: {v} is not a port (1-65535)"))
    }
}

fn range(
    single: Option<u32>,
    pair: Option<[u32; 2]>,
    field: &str,
) -> Result<Option<(u16, u16)>, String> {
    match (single, pair) {
        (Some(_), Some(_)) => Err(format!(
            "give either {field}Port or {field}PortRange, not both"
        )),
        (Some(p), None) => {
            let p = port(p, &format!("{field}Port"))?;
            Ok(Some((p, p)))
        }
        (None, Some([a, b])) => {
            let (a, b) = (
                port(a, &format!("{field}PortRange"))?,
                port(b, &format!("{field}PortRange"))?,
            );
            if a > b {
                return Err(format!("{field}PortRange: {a} is above {b}"));
            }
            Ok(Some((a, b)))
        }
        (None, None) => Ok(None),
    }
}

/// Checks rules, puts Lima's rule for the guest's sshd first (port 22 is
/// reached through `ssh.localPort`, never forwarded as itself) and one for
/// the DHCP client (UDP 68), and appends
/// the fallback. `dir` is the instance directory (relative `hostSocket`
/// paths live in `dir/sock/`).
pub fn resolve(rules: &[PortForwardYaml], dir: &Path) -> Result<Vec<Rule>, (usize, String)> {
    let mut out = vec![Rule {
        index: None,
        guest_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        guest_ip_must_be_zero: false,
        guest_ports: (22, 22),
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host_ports: (22, 22),
        proto: ProtoMatch::Tcp,
        ignore: true,
        sockets: None,
        reverse: false,
    }];
    // A distro guest's DHCP client listens on UDP 68 on every address; it
    // is not a service, and forwarding it would take the host's own port.
    out.push(Rule {
        guest_ports: (68, 68),
        host_ports: (68, 68),
        proto: ProtoMatch::Udp,
        ..out[0].clone()
    });
    for (i, r) in rules.iter().enumerate() {
        let e = |m: String| (i, m);
        let must_zero = r.guest_ip_must_be_zero.unwrap_or(false);
        let guest_ip = r.guest_ip.unwrap_or(if must_zero {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
        if must_zero && !guest_ip.is_unspecified() {
            return Err(e("guestIPMustBeZero needs guestIP 0.0.0.0".into()));
        }
        let proto = match r.proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("any") => ProtoMatch::Any,
            Some("tcp") => ProtoMatch::Tcp,
            Some("udp") => ProtoMatch::Udp,
            Some(other) => return Err(e(format!("proto: `{other}` is not tcp, udp or any"))),
        };
        let reverse = r.reverse.unwrap_or(false);
        if reverse && (r.guest_socket.is_none() || r.host_socket.is_none()) {
            return Err(e(
                "reverse: true needs guestSocket and hostSocket (only Unix sockets are reversed, as in Lima)"
                    .into(),
            ));
        }
        let sockets = match (&r.guest_socket, &r.host_socket) {
            (Some(g), Some(h)) => {
                if !g.starts_with('/') {
                    return Err(e(format!("guestSocket `{g}` must be an absolute path")));
                }
                let h = PathBuf::from(h);
                let h = if h.is_absolute() {
                    h
                } else {
                    dir.join("sock").join(h)
                };
                Some((g.clone(), h))
            }
            (Some(_), None) => return Err(e("guestSocket needs hostSocket".into())),
            (None, Some(_)) => {
                return Err(e("hostSocket needs guestSocket (or give hostPort)".into()))
            }
            (None, None) => None,
        };
        let guest_ports = range(r.guest_port, r.guest_port_range, "guest")
            .map_err(e)?
            .unwrap_or((1, 65535));
        let host_ports = range(r.host_port, r.host_port_range, "host")
            .map_err(e)?
            .unwrap_or(guest_ports);
        if host_ports.1 - host_ports.0 != guest_ports.1 - guest_ports.0 {
            return Err(e(
                "hostPortRange must have as many ports as guestPortRange".into()
            ));
        }
        out.push(Rule {
            index: Some(i),
            guest_ip,
            guest_ip_must_be_zero: must_zero,
            guest_ports,
            host_ip: r.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_ports,
            proto,
            ignore: r.ignore.unwrap_or(false),
            sockets,
            reverse,
        });
    }
    out.push(Rule {
        index: None,
        guest_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        guest_ip_must_be_zero: false,
        guest_ports: (1, 65535),
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host_ports: (1, 65535),
        proto: ProtoMatch::Any,
        ignore: false,
        sockets: None,
        reverse: false,
    });
    Ok(out)
}

/// Lima's matching (`pkg/portfwd`): first rule whose protocol, port range and
/// address accept the listener decides.
pub fn decide(rules: &[Rule], guest: &GuestPort) -> Decision {
    let ip = guest.ip;
    for rule in rules {
        if rule.sockets.is_some() {
            continue;
        }
        let proto_ok = match rule.proto {
            ProtoMatch::Any => true,
            ProtoMatch::Tcp => guest.proto == PortProto::Tcp,
            ProtoMatch::Udp => guest.proto == PortProto::Udp,
        };
        if !proto_ok || guest.port < rule.guest_ports.0 || guest.port > rule.guest_ports.1 {
            continue;
        }
        let ip_ok = ip.is_unspecified()
            || ip == rule.guest_ip
            || (ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                && rule.guest_ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
            || (rule.guest_ip.is_unspecified() && !rule.guest_ip_must_be_zero);
        if !ip_ok {
            continue;
        }
        if rule.ignore {
            // A wildcard listener is not silenced by a rule for one address.
            if ip.is_unspecified() && !rule.guest_ip.is_unspecified() {
                continue;
            }
            return Decision::Ignore { rule: rule.clone() };
        }
        let host_port = guest.port - rule.guest_ports.0 + rule.host_ports.0;
        return Decision::Forward {
            host: SocketAddr::new(rule.host_ip, host_port),
            rule: rule.clone(),
        };
    }
    Decision::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<Rule> {
        let parsed: Vec<PortForwardYaml> = serde_yaml_ng::from_str(yaml).unwrap();
        resolve(&parsed, Path::new("/inst")).unwrap()
    }

    fn gp(proto: PortProto, ip: &str, port: u16) -> GuestPort {
        GuestPort {
            proto,
            ip: ip.parse().unwrap(),
            port,
        }
    }

    fn host_of(d: Decision) -> Option<String> {
        match d {
            Decision::Forward { host, .. } => Some(host.to_string()),
            _ => None,
        }
    }

    #[test]
    fn default_rule_forwards_loopback_and_wildcard_to_same_port() {
        let r = rules("[]");
        for ip in ["127.0.0.1", "0.0.0.0", "::", "::1"] {
            assert_eq!(
                host_of(decide(&r, &gp(PortProto::Tcp, ip, 8080))).as_deref(),
                Some("127.0.0.1:8080"),
                "{ip}"
            );
        }
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Udp, "0.0.0.0", 53))).as_deref(),
            Some("127.0.0.1:53")
        );
        // A listener on one specific external address is not forwarded by default.
        assert_eq!(
            decide(&r, &gp(PortProto::Tcp, "10.0.2.15", 80)),
            Decision::None
        );
    }

    #[test]
    fn ranges_map_onto_host_ranges() {
        let r = rules("- guestPortRange: [9000, 9010]\n  hostPortRange: [19000, 19010]\n");
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 9005))).as_deref(),
            Some("127.0.0.1:19005")
        );
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 9011))).as_deref(),
            Some("127.0.0.1:9011")
        );
    }

    #[test]
    fn ignore_and_proto_and_first_match_wins() {
        let r = rules(
            "- guestPort: 8099\n  ignore: true\n- guestPort: 8098\n  proto: udp\n  hostPort: 18098\n- guestPort: 8098\n  hostPort: 28098\n",
        );
        assert!(matches!(
            decide(&r, &gp(PortProto::Tcp, "127.0.0.1", 8099)),
            Decision::Ignore { .. }
        ));
        // A wildcard listener is not ignored by a rule for 127.0.0.1 (Lima's rule).
        assert!(matches!(
            decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 8099)),
            Decision::Forward { .. }
        ));
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Udp, "0.0.0.0", 8098))).as_deref(),
            Some("127.0.0.1:18098")
        );
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 8098))).as_deref(),
            Some("127.0.0.1:28098")
        );
    }

    #[test]
    fn guest_ip_must_be_zero() {
        let r = rules(
            "- guestIP: 0.0.0.0\n  guestIPMustBeZero: true\n  guestPort: 80\n  hostIP: 0.0.0.0\n",
        );
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 80))).as_deref(),
            Some("0.0.0.0:80")
        );
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "127.0.0.1", 80))).as_deref(),
            Some("127.0.0.1:80")
        );
    }

    #[test]
    fn the_guests_sshd_is_never_forwarded_as_itself() {
        let r = rules("[]");
        assert!(matches!(
            decide(&r, &gp(PortProto::Tcp, "0.0.0.0", 22)),
            Decision::Ignore { .. }
        ));
        assert!(matches!(
            decide(&r, &gp(PortProto::Udp, "0.0.0.0", 68)),
            Decision::Ignore { .. }
        ));
        assert_eq!(
            host_of(decide(&r, &gp(PortProto::Tcp, "127.0.0.1", 2222))).as_deref(),
            Some("127.0.0.1:2222")
        );
    }

    #[test]
    fn sockets_and_validation() {
        let r = rules("- guestSocket: /run/docker.sock\n  hostSocket: docker.sock\n");
        assert_eq!(
            r[2].sockets,
            Some((
                "/run/docker.sock".into(),
                PathBuf::from("/inst/sock/docker.sock")
            ))
        );
        for (bad, needle) in [
            ("- guestPort: 0\n", "not a port"),
            ("- guestPort: 70000\n", "not a port"),
            (
                "- guestPortRange: [10, 20]\n  hostPortRange: [10, 30]\n",
                "as many ports",
            ),
            ("- proto: sctp\n", "sctp"),
            (
                "- guestIP: 127.0.0.1\n  guestIPMustBeZero: true\n",
                "0.0.0.0",
            ),
            ("- guestSocket: rel.sock\n  hostSocket: x\n", "absolute"),
            (
                "- guestPort: 80\n  reverse: true\n",
                "needs guestSocket and hostSocket",
            ),
        ] {
            let parsed: Vec<PortForwardYaml> = serde_yaml_ng::from_str(bad).unwrap();
            let err = resolve(&parsed, Path::new("/i")).unwrap_err();
            assert_eq!(err.0, 0);
            assert!(err.1.contains(needle), "{bad}: {}", err.1);
        }
    }
}
