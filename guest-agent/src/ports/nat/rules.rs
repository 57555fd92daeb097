//! nf_tables rule messages → port publications: which host port a DNAT
//! rule sends where. Pure byte parsing, so every case is unit-tested without
//! root; `socket.rs` fetches the bytes.
//!
//! A rule is a list of expressions working on registers (`nft --debug=netlink
//! list ruleset` shows them). Docker's `-p 8080:80`, written by iptables-nft
//! 1.8.9 (Debian 12), reads:
//!
//! ```text
//!  [ meta load iifname => reg 1 ]                  ! -i docker0   (ignored)
//!  [ cmp neq reg 1 0x6b636f64 0x00307265 ]
//!  [ meta load l4proto => reg 1 ]                  -p tcp          → protocol
//!  [ cmp eq reg 1 0x00000006 ]
//!  [ payload load 4b @ network header + 16 => reg 1 ]   -d 127.0.0.1/32 → host address
//!  [ cmp eq reg 1 0x0100007f ]                          (only with an address)
//!  [ payload load 2b @ transport header + 2 => reg 1 ]  --dport 8080 → host port
//!  [ cmp eq reg 1 0x0000901f ]
//!  [ counter ... ]
//!  [ target name DNAT rev 2 ]                      xtables target: struct nf_nat_range2
//! ```
//!
//! We follow what each register holds, take the protocol, destination port
//! and (exact) destination address from `cmp eq`, and read the DNAT target
//! from either form: iptables' xtables `target DNAT` (revisions 0, 1, 2) or
//! nftables' own `nat` expression with `immediate` registers (`nft add rule
//! ... dnat to 172.17.0.2:80`, the form native nftables backends write).
//! Interface matches, counters, address types and anything we do not know
//! are ignored; a rule whose port or protocol cannot be told is not a
//! publication.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lima_proto::{GuestPort, PortProto};

// nfnetlink and nf_tables constants (linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h, linux/netfilter.h).
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
/// `struct nfgenmsg`: family, version, resource id.
pub const NFGENMSG_LEN: usize = 4;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

/// The table and family a table-, chain- or rule-level message names, and
/// the publication a rule message holds (if it is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMsg {
    pub family: u8,
    pub table: String,
    pub publication: Option<Publication>,
}

/// A host port a DNAT rule sends to a container (or any address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Publication {
    /// What the rule matches: protocol, destination address (unspecified
    /// when the rule names none) and destination port.
    pub port: GuestPort,
    /// Where the rule sends it.
    pub destination: SocketAddr,
    /// `family table chain`, for logs (`ip nat DOCKER`).
    pub rule: String,
    /// The container at `destination`, once the engine said (`engine.rs`).
    pub container: Option<String>,
}

/// Netlink attributes: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn text(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Parses the payload (after `nlmsghdr`) of a table, chain or rule
/// message: `nfgenmsg`, then attributes whose type 1 is the table name in
/// all three.
pub fn parse(msg_type: u16, payload: &[u8]) -> Option<RuleMsg> {
    let family = *payload.first()?;
    let body = payload.get(NFGENMSG_LEN..)?;
    let table = text(attr(body, NFTA_RULE_TABLE)?);
    let publication = if msg_type == NFT_MSG_NEWRULE || msg_type == NFT_MSG_DELRULE {
        let chain = attr(body, NFTA_RULE_CHAIN).map(text).unwrap_or_default();
        attr(body, NFTA_RULE_EXPRESSIONS).and_then(|exprs| {
            let rule = format!("{} {table} {chain}", family_name(family));
            publication(family, exprs, rule)
        })
    } else {
        None
    };
    Some(RuleMsg {
        family,
        table,
        publication,
    })
}

fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        _ => "?",
    }
}

/// What a register holds at some point of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reg {
    Meta(u32),
    Payload { base: u32, offset: u32, len: u32 },
    Value(Vec<u8>),
}

/// 16-byte registers 1-4 overlap the 4-byte ones 8-23: one name for both.
fn reg_index(v: &[u8]) -> Option<u32> {
    let r = be32(v)?;
    Some(match r {
        1..=4 => 8 + (r - 1) * 4,
        r => r,
    })
}

/// What the matches seen so far say.
#[derive(Debug, Default)]
struct Matched {
    proto: Option<PortProto>,
    port: Option<u16>,
    ip: Option<IpAddr>,
}

fn proto_of(v: &[u8]) -> Option<PortProto> {
    match v.first()? {
        6 => Some(PortProto::Tcp),
        17 => Some(PortProto::Udp),
        _ => None,
    }
}

fn ip_from(family: u8, v: &[u8]) -> Option<IpAddr> {
    match family {
        NFPROTO_IPV6 => {
            let o: [u8; 16] = v.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => {
            let o: [u8; 4] = v.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
    }
}

/// The publication in one rule's `NFTA_RULE_EXPRESSIONS`, if it is a DNAT
/// rule for one TCP or UDP port.
fn publication(family: u8, exprs: &[u8], rule: String) -> Option<Publication> {
    let mut regs: HashMap<u32, Reg> = HashMap::new();
    let mut m = Matched::default();
    // The address family the matches are read in (an inet rule's
    // `nfproto` meta match is not followed: its nat expression says).
    let net_family = family;
    for (kind, elem) in attrs(exprs) {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let name = text(attr(elem, NFTA_EXPR_NAME)?);
        let data = attr(elem, NFTA_EXPR_DATA).unwrap_or(&[]);
        match name.as_str() {
            "meta" => {
                // NFTA_META_DREG 1, NFTA_META_KEY 2 (no DREG: a meta set).
                if let (Some(d), Some(k)) = (attr(data, 1), attr(data, 2).and_then(be32)) {
                    regs.insert(reg_index(d)?, Reg::Meta(k));
                }
            }
            "payload" => {
                // DREG 1, BASE 2, OFFSET 3, LEN 4.
                let get = |t| attr(data, t).and_then(be32);
                if let (Some(d), Some(base), Some(offset), Some(len)) =
                    (attr(data, 1), get(2), get(3), get(4))
                {
                    regs.insert(reg_index(d)?, Reg::Payload { base, offset, len });
                }
            }
            "immediate" => {
                // DREG 1, DATA 2 { VALUE 1 | VERDICT 2 }.
                if let (Some(d), Some(v)) = (
                    attr(data, 1),
                    attr(data, 2).and_then(|v| attr(v, NFTA_DATA_VALUE)),
                ) {
                    regs.insert(reg_index(d)?, Reg::Value(v.to_vec()));
                }
            }
            "bitwise" | "byteorder" => {
                // SREG 1, DREG 2: the result is not what was loaded.
                if let Some(d) = attr(data, 2).and_then(reg_index) {
                    regs.remove(&d);
                }
            }
            "cmp" => {
                // SREG 1, OP 2, DATA 3 { VALUE 1 }.
                let sreg = attr(data, 1).and_then(reg_index)?;
                let op = attr(data, 2).and_then(be32)?;
                let value = attr(data, 3).and_then(|v| attr(v, NFTA_DATA_VALUE))?;
                let eq = op == NFT_CMP_EQ;
                match regs.get(&sreg) {
                    Some(Reg::Meta(NFT_META_L4PROTO)) => {
                        if !eq {
                            return None;
                        }
                        m.proto = Some(proto_of(value)?);
                    }
                    // Interfaces (`! -i docker0`) and other meta keys.
                    Some(Reg::Meta(_)) => {}
                    Some(Reg::Payload { base, offset, len }) => {
                        match (*base, *offset, *len, net_family) {
                            // IPv4 protocol / IPv6 next header.
                            (NFT_PAYLOAD_NETWORK_HEADER, 9, 1, NFPROTO_IPV4)
                            | (NFT_PAYLOAD_NETWORK_HEADER, 6, 1, NFPROTO_IPV6) => {
                                if !eq {
                                    return None;
                                }
                                m.proto = Some(proto_of(value)?);
                            }
                            // Destination address, whole (a shorter load is
                            // a prefix match: any address of it will do).
                            (NFT_PAYLOAD_NETWORK_HEADER, 16, 4, NFPROTO_IPV4)
                            | (NFT_PAYLOAD_NETWORK_HEADER, 24, 16, NFPROTO_IPV6)
                                if eq =>
                            {
                                m.ip = ip_from(net_family, value);
                            }
                            // Destination port.
                            (NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, _) => {
                                if !eq {
                                    return None;
                                }
                                m.port = Some(u16::from_be_bytes(value.get(..2)?.try_into().ok()?));
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            "match" => {
                // An xtables match iptables did not translate: NAME 1,
                // REV 2, INFO 3. `tcp`/`udp` hold struct xt_tcp / xt_udp:
                // spts[2], dpts[2] (host order), ...; invflags at 11 / 5.
                let mname = attr(data, 1).map(text).unwrap_or_default();
                let info = attr(data, 3).unwrap_or(&[]);
                let proto = match mname.as_str() {
                    "tcp" => PortProto::Tcp,
                    "udp" => PortProto::Udp,
                    _ => continue,
                };
                let dpts = |i: usize| -> Option<u16> {
                    Some(u16::from_ne_bytes(info.get(i..i + 2)?.try_into().ok()?))
                };
                let (lo, hi) = (dpts(4)?, dpts(6)?);
                let inv = info.get(if proto == PortProto::Tcp { 11 } else { 5 })?;
                // XT_TCP_INV_DSTPT / XT_UDP_INV_DSTPT = 0x02.
                if inv & 0x02 != 0 || lo != hi {
                    return None;
                }
                m.proto = m.proto.or(Some(proto));
                m.port = Some(lo);
            }
            "target" => {
                // NAME 1, REV 2, INFO 3.
                if attr(data, 1).map(text).as_deref() != Some("DNAT") {
                    continue;
                }
                let rev = attr(data, 2).and_then(be32)?;
                let info = attr(data, 3)?;
                let (ip, port) = xt_dnat(rev, family, info)?;
                return finish(m, ip, port, rule);
            }
            "nat" => {
                // TYPE 1, FAMILY 2, REG_ADDR_MIN 3, REG_ADDR_MAX 4,
                // REG_PROTO_MIN 5, REG_PROTO_MAX 6, FLAGS 7.
                if attr(data, 1).and_then(be32) != Some(NFT_NAT_DNAT) {
                    continue;
                }
                let nat_family = attr(data, 2)
                    .and_then(be32)
                    .and_then(|f| u8::try_from(f).ok())
                    .unwrap_or(family);
                let value = |t| match attr(data, t).and_then(reg_index).map(|r| regs.get(&r)) {
                    Some(Some(Reg::Value(v))) => Some(v.clone()),
                    _ => None,
                };
                let ip = ip_from(nat_family, &value(3)?)?;
                let port =
                    value(5).and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)));
                return finish(m, ip, port, rule);
            }
            _ => {}
        }
    }
    None
}

/// The publication, once the DNAT target is read; `port` `None`: the
/// destination port is the matched one.
fn finish(m: Matched, ip: IpAddr, port: Option<u16>, rule: String) -> Option<Publication> {
    let proto = m.proto?;
    let host_port = m.port.filter(|p| *p != 0)?;
    let host_ip = m.ip.unwrap_or(match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    Some(Publication {
        port: GuestPort {
            proto,
            ip: host_ip,
            port: host_port,
        },
        destination: SocketAddr::new(ip, port.unwrap_or(host_port)),
        rule,
        container: None,
    })
}

/// The destination of an xtables DNAT target: revision 0 holds
/// `struct nf_nat_ipv4_multi_range_compat` (rangesize, then flags, min_ip,
/// max_ip, min port, max port), revisions 1 and 2 `struct nf_nat_range`
/// and `nf_nat_range2` (flags, min_addr[16], max_addr[16], min port,
/// max port, ...). Ports are big-endian, flags host order.
fn xt_dnat(rev: u32, family: u8, info: &[u8]) -> Option<(IpAddr, Option<u16>)> {
    let flags_at = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(info.get(i..i + 4)?.try_into().ok()?))
    };
    let (flags, addr, port_at) = match rev {
        0 => (flags_at(4)?, info.get(8..12)?, 16),
        1 | 2 => (flags_at(0)?, info.get(4..20)?, 36),
        _ => return None,
    };
    if flags & NF_NAT_RANGE_MAP_IPS == 0 {
        return None;
    }
    let ip = ip_from(if rev == 0 { NFPROTO_IPV4 } else { family }, addr)?;
    let port = if flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
        Some(u16::from_be_bytes(
            info.get(port_at..port_at + 2)?.try_into().ok()?,
        ))
    } else {
        None
    };
    Some((ip, port))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// One netlink attribute.
    pub fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(kind | 0x8000, &parts.concat())
    }

    fn u32be(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        nested(
            NFTA_LIST_ELEM,
            &[nla(NFTA_EXPR_NAME, &n), nested(NFTA_EXPR_DATA, data)],
        )
    }

    fn meta(reg: u32, key: u32) -> Vec<u8> {
        expr("meta", &[nla(1, &u32be(reg)), nla(2, &u32be(key))])
    }

    fn payload(reg: u32, base: u32, offset: u32, len: u32) -> Vec<u8> {
        expr(
            "payload",
            &[
                nla(1, &u32be(reg)),
                nla(2, &u32be(base)),
                nla(3, &u32be(offset)),
                nla(4, &u32be(len)),
            ],
        )
    }

    fn cmp(reg: u32, op: u32, value: &[u8]) -> Vec<u8> {
        expr(
            "cmp",
            &[
                nla(1, &u32be(reg)),
                nla(2, &u32be(op)),
                nested(3, &[nla(NFTA_DATA_VALUE, value)]),
            ],
        )
    }

    fn target(rev: u32, info: &[u8]) -> Vec<u8> {
        expr(
            "target",
            &[nla(1, b"DNAT\0"), nla(2, &u32be(rev)), nla(3, info)],
        )
    }

    /// struct nf_nat_range2 for `--to-destination ip[:port]`.
    fn range2(ip: &[u8], port: Option<u16>) -> Vec<u8> {
        let mut info = vec![0u8; 44];
        let flags = NF_NAT_RANGE_MAP_IPS | port.map_or(0, |_| NF_NAT_RANGE_PROTO_SPECIFIED);
        info[0..4].copy_from_slice(&flags.to_ne_bytes());
        info[4..4 + ip.len()].copy_from_slice(ip);
        info[20..20 + ip.len()].copy_from_slice(ip);
        if let Some(p) = port {
            info[36..38].copy_from_slice(&p.to_be_bytes());
            info[38..40].copy_from_slice(&p.to_be_bytes());
        }
        info
    }

    /// A NEWRULE payload: nfgenmsg, table, chain, expressions.
    pub fn rule(family: u8, table: &str, chain: &str, exprs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![family, 0, 0, 0];
        v.extend(nla(NFTA_RULE_TABLE, format!("{table}\0").as_bytes()));
        v.extend(nla(NFTA_RULE_CHAIN, format!("{chain}\0").as_bytes()));
        v.extend(nla(3, &7u64.to_be_bytes()));
        v.extend(nested(NFTA_RULE_EXPRESSIONS, exprs));
        v
    }

    /// Docker's rule as iptables-nft 1.8.9 writes it (see the module docs).
    pub fn docker_rule(
        addr: Option<[u8; 4]>,
        proto: u8,
        port: u16,
        to: [u8; 4],
        to_port: u16,
    ) -> Vec<u8> {
        let mut exprs = vec![
            meta(1, 6), // iifname
            cmp(1, 1, b"docker0\0\0\0\0\0\0\0\0\0"),
            meta(1, NFT_META_L4PROTO),
            cmp(1, NFT_CMP_EQ, &[proto]),
        ];
        if let Some(a) = addr {
            exprs.push(payload(1, NFT_PAYLOAD_NETWORK_HEADER, 16, 4));
            exprs.push(cmp(1, NFT_CMP_EQ, &a));
        }
        exprs.push(payload(1, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
        exprs.push(cmp(1, NFT_CMP_EQ, &port.to_be_bytes()));
        exprs.push(expr("counter", &[]));
        exprs.push(target(2, &range2(&to, Some(to_port))));
        rule(NFPROTO_IPV4, "nat", "DOCKER", &exprs)
    }

    fn published(msg: &[u8]) -> Option<Publication> {
        parse(NFT_MSG_NEWRULE, msg).unwrap().publication
    }

    #[test]
    fn dockers_rule_is_a_publication() {
        let p = published(&docker_rule(None, 6, 8080, [172, 17, 0, 2], 80)).unwrap();
        assert_eq!(p.port.to_string(), "0.0.0.0:8080/tcp");
        assert_eq!(p.destination, "172.17.0.2:80".parse().unwrap());
        assert_eq!(p.rule, "ip nat DOCKER");
        let p = published(&docker_rule(
            Some([127, 0, 0, 1]),
            17,
            5353,
            [172, 17, 0, 3],
            53,
        ))
        .unwrap();
        assert_eq!(p.port.to_string(), "127.0.0.1:5353/udp");
        assert_eq!(p.destination, "172.17.0.3:53".parse().unwrap());
    }

    #[test]
    fn a_prefix_match_means_any_address_and_no_port_means_the_same_port() {
        let exprs = [
            meta(8, NFT_META_L4PROTO),
            cmp(8, NFT_CMP_EQ, &[6]),
            // `-d 10.0.0.0/8`: iptables loads one byte.
            payload(8, NFT_PAYLOAD_NETWORK_HEADER, 16, 1),
            cmp(8, NFT_CMP_EQ, &[10]),
            payload(8, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(8, NFT_CMP_EQ, &99u16.to_be_bytes()),
            target(2, &range2(&[172, 17, 0, 3], None)),
        ];
        let p = published(&rule(NFPROTO_IPV4, "nat", "DOCKER", &exprs)).unwrap();
        assert_eq!(p.port.to_string(), "0.0.0.0:99/tcp");
        assert_eq!(p.destination, "172.17.0.3:99".parse().unwrap());
    }

    #[test]
    fn nftables_own_dnat_and_ipv6() {
        // nft add rule ip6 t c tcp dport 8443 dnat to [fd00::2]:443
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        let exprs = [
            meta(1, NFT_META_L4PROTO),
            cmp(1, NFT_CMP_EQ, &[6]),
            payload(1, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(1, NFT_CMP_EQ, &8443u16.to_be_bytes()),
            expr(
                "immediate",
                &[nla(1, &u32be(1)), nested(2, &[nla(1, &v6.octets())])],
            ),
            expr(
                "immediate",
                &[
                    nla(1, &u32be(2)),
                    nested(2, &[nla(1, &443u16.to_be_bytes())]),
                ],
            ),
            expr(
                "nat",
                &[
                    nla(1, &u32be(NFT_NAT_DNAT)),
                    nla(2, &u32be(NFPROTO_IPV6.into())),
                    nla(3, &u32be(1)),
                    nla(5, &u32be(2)),
                ],
            ),
        ];
        let p = published(&rule(NFPROTO_IPV6, "mine", "pre", &exprs)).unwrap();
        assert_eq!(p.port.to_string(), "[::]:8443/tcp");
        assert_eq!(p.destination, "[fd00::2]:443".parse().unwrap());
        assert_eq!(p.rule, "ip6 mine pre");
    }

    #[test]
    fn old_iptables_forms() {
        // Revision 0 (nf_nat_ipv4_multi_range_compat) and an untranslated
        // `-m tcp --dport 8080` (struct xt_tcp).
        let mut compat = vec![0u8; 20];
        compat[0..4].copy_from_slice(&1u32.to_ne_bytes());
        compat[4..8]
            .copy_from_slice(&(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED).to_ne_bytes());
        compat[8..12].copy_from_slice(&[172, 17, 0, 2]);
        compat[12..16].copy_from_slice(&[172, 17, 0, 2]);
        compat[16..18].copy_from_slice(&80u16.to_be_bytes());
        let mut xt_tcp = vec![0u8; 12];
        xt_tcp[2..4].copy_from_slice(&u16::MAX.to_ne_bytes());
        xt_tcp[4..6].copy_from_slice(&8080u16.to_ne_bytes());
        xt_tcp[6..8].copy_from_slice(&8080u16.to_ne_bytes());
        let m = expr(
            "match",
            &[nla(1, b"tcp\0"), nla(2, &u32be(0)), nla(3, &xt_tcp)],
        );
        let exprs = [m.clone(), target(0, &compat)];
        let p = published(&rule(NFPROTO_IPV4, "nat", "DOCKER", &exprs)).unwrap();
        assert_eq!(p.port.to_string(), "0.0.0.0:8080/tcp");
        assert_eq!(p.destination, "172.17.0.2:80".parse().unwrap());
        // `! --dport 8080`: not a publication.
        xt_tcp[11] = 0x02;
        let m = expr(
            "match",
            &[nla(1, b"tcp\0"), nla(2, &u32be(0)), nla(3, &xt_tcp)],
        );
        assert!(published(&rule(
            NFPROTO_IPV4,
            "nat",
            "DOCKER",
            &[m, target(0, &compat)]
        ))
        .is_none());
    }

    #[test]
    fn what_is_not_a_publication() {
        // MASQUERADE, a DNAT without a port match, a negated port, garbage.
        let masq = rule(
            NFPROTO_IPV4,
            "nat",
            "POSTROUTING",
            &[expr(
                "target",
                &[nla(1, b"MASQUERADE\0"), nla(2, &u32be(0)), nla(3, &[0; 20])],
            )],
        );
        assert_eq!(
            parse(NFT_MSG_NEWRULE, &masq),
            Some(RuleMsg {
                family: NFPROTO_IPV4,
                table: "nat".into(),
                publication: None
            })
        );
        let no_port = [
            meta(1, NFT_META_L4PROTO),
            cmp(1, NFT_CMP_EQ, &[6]),
            target(2, &range2(&[172, 17, 0, 2], Some(80))),
        ];
        assert!(published(&rule(NFPROTO_IPV4, "nat", "DOCKER", &no_port)).is_none());
        let negated = [
            meta(1, NFT_META_L4PROTO),
            cmp(1, NFT_CMP_EQ, &[6]),
            payload(1, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(1, 1, &8080u16.to_be_bytes()),
            target(2, &range2(&[172, 17, 0, 2], Some(80))),
        ];
        assert!(published(&rule(NFPROTO_IPV4, "nat", "DOCKER", &negated)).is_none());
        let good = docker_rule(None, 6, 8080, [172, 17, 0, 2], 80);
        for cut in 0..good.len() {
            // Never panics on a truncated message.
            let _ = parse(NFT_MSG_NEWRULE, &good[..cut]);
        }
        assert!(parse(NFT_MSG_NEWRULE, &[2]).is_none());
    }
}
