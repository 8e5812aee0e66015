//! The node tunnel, a porthole extension (docs/TUNNEL.md): a node that no API server can dial
//! (behind NAT, a firewall, another network) dials out instead and keeps the connection open;
//! the API server sends the connections it would have dialed to that node down the tunnel.
//!
//! The bytes, in order:
//! 1. The node connects to an API server with mutual TLS (its `system:node:NAME` client
//!    certificate) and sends `POST /api/v1/nodes/NAME/tunnel` with `Connection: Upgrade` and
//!    `Upgrade: porthole-tunnel/1`. Only the node NAME itself may open it.
//! 2. The API server answers `101 Switching Protocols` with `Upgrade: porthole-tunnel/1`, its
//!    identity ([`IDENTITY_HEADER`]: the holder identity of its `apiserver-*` Lease in
//!    `kube-system`) and how many API servers are alive ([`SERVERS_HEADER`]), so that a node
//!    behind a load balancer keeps dialing until it holds one tunnel to each.
//! 3. The connection becomes a SPDY/3.1 session with real flow control on both sides (no
//!    stream can stall another: each has its own window, and the session window is credited
//!    as frames are read off the socket). Roles are reversed: the API server is the SPDY
//!    client and opens the streams; the node accepts them. Both send PINGs.
//! 4. Each stream carries one connection to the node's HTTPS endpoint, minus the TLS (the
//!    tunnel is already mutually authenticated): the API server writes the HTTP/1.1 request it
//!    would have sent over TCP, the node serves it, upgrades included. A stream's SYN_STREAM
//!    carries [`STREAM_KIND_HEADER`]` = `[`STREAM_KIND_HTTP`]; the node refuses any other kind.
//!
//! This module holds what both ends must agree on, and the parse of the API server's answer.

/// The `Upgrade` token of the tunnel.
pub const PROTOCOL: &str = "porthole-tunnel/1";
/// 101 response header: the answering API server's identity.
pub const IDENTITY_HEADER: &str = "x-porthole-apiserver-identity";
/// 101 response header: the number of API servers alive (identity leases not expired).
pub const SERVERS_HEADER: &str = "x-porthole-apiserver-count";
/// 101 response header: every live API server's identity and the address it advertises,
/// `identity=ip:port` separated by commas, so a node can dial each server directly instead of
/// through the balancer when it can reach them.
pub const PEERS_HEADER: &str = "x-porthole-apiserver-peers";
/// Request header a node sends (`true`) when it dialed the server directly, at an address from
/// [`PEERS_HEADER`], rather than through the address it was given: both ends then prefer that
/// tunnel to the node's others to the same server.
pub const DIRECT_HEADER: &str = "x-porthole-tunnel-direct";
/// SYN_STREAM header naming what a tunnel stream carries.
pub const STREAM_KIND_HEADER: &str = "porthole-tunnel-stream";
/// The one stream kind: an HTTP/1.1 connection to the node's endpoint.
pub const STREAM_KIND_HTTP: &str = "http1";
/// The annotation a node running with `--tunnel` puts on its Node (`"true"`): it is reached
/// only through its tunnels, so a server without one answers at once instead of dialing.
pub const NODE_ANNOTATION: &str = "porthole.io/tunnel";
/// Largest identity accepted from a server (Kubernetes object names are ≤ 253 bytes; the
/// identity is `hostname_uuid`).
pub const MAX_IDENTITY_LEN: usize = 512;
/// Largest server count believed: a node dials at most this many tunnels.
pub const MAX_SERVERS: usize = 64;

/// The request path a node `node` opens its tunnel on.
pub fn path(node: &str) -> String {
    format!("/api/v1/nodes/{node}/tunnel")
}

/// What an API server said when it accepted a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Its identity: two tunnels with the same identity reach the same server.
    pub identity: String,
    /// How many API servers are alive (at least 1).
    pub servers: usize,
    /// Live servers that advertise an address (at most [`MAX_SERVERS`]).
    pub peers: Vec<Peer>,
}

/// An API server and the address it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its identity.
    pub identity: String,
    /// Where it listens.
    pub address: std::net::SocketAddr,
}

fn valid_identity(i: &str) -> bool {
    !i.is_empty()
        && i.len() <= MAX_IDENTITY_LEN
        && i.bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=')
}

/// Formats peers for [`PEERS_HEADER`] (entries with an identity that cannot be carried are
/// left out).
pub fn format_peers(peers: &[Peer]) -> String {
    peers
        .iter()
        .filter(|p| valid_identity(&p.identity))
        .take(MAX_SERVERS)
        .map(|p| format!("{}={}", p.identity, p.address))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`PEERS_HEADER`]; malformed entries are skipped, at most [`MAX_SERVERS`] kept.
pub fn parse_peers(value: &str) -> Vec<Peer> {
    value
        .split(',')
        .filter_map(|entry| {
            let (identity, address) = entry.trim().split_once('=')?;
            if !valid_identity(identity) {
                return None;
            }
            Some(Peer {
                identity: identity.to_string(),
                address: address.trim().parse().ok()?,
            })
        })
        .take(MAX_SERVERS)
        .collect()
}

/// Why an answer to a tunnel request is not a usable tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferError {
    /// Not a 101: the server refused (the status and body say why), or is not porthole.
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// A 101 that upgraded to something else.
    WrongProtocol(String),
    /// A 101 without a usable identity header.
    NoIdentity,
}

impl std::fmt::Display for OfferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfferError::Refused { status } => write!(
                f,
                "the API server answered {status} instead of 101 Switching Protocols"
            ),
            OfferError::WrongProtocol(p) => write!(
                f,
                "the API server upgraded to {p:?}, not {PROTOCOL:?}: it is not a porthole API server with tunnels"
            ),
            OfferError::NoIdentity => write!(
                f,
                "the API server's 101 has no valid {IDENTITY_HEADER} header"
            ),
        }
    }
}

impl std::error::Error for OfferError {}

/// Reads the API server's answer to a tunnel request: `status` and its headers as
/// (lower-case name, raw value) pairs. A missing or unreadable server count reads as 1.
pub fn parse_offer<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Offer, OfferError> {
    if status != 101 {
        return Err(OfferError::Refused { status });
    }
    let mut upgrade = None;
    let mut identity = None;
    let mut servers = 1;
    let mut peers = Vec::new();
    for (name, value) in headers {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(value.to_string());
        } else if name.eq_ignore_ascii_case(IDENTITY_HEADER) {
            identity = Some(value.to_string());
        } else if name.eq_ignore_ascii_case(SERVERS_HEADER) {
            servers = value.parse::<usize>().unwrap_or(1).clamp(1, MAX_SERVERS);
        } else if name.eq_ignore_ascii_case(PEERS_HEADER) {
            peers = parse_peers(value);
        }
    }
    match upgrade {
        Some(p) if p.eq_ignore_ascii_case(PROTOCOL) => {}
        other => return Err(OfferError::WrongProtocol(other.unwrap_or_default())),
    }
    let identity = identity
        .filter(|i| valid_identity(i))
        .ok_or(OfferError::NoIdentity)?;
    Ok(Offer {
        identity,
        servers,
        peers,
    })
}

/// Fuzz entry points (also used by the tests): must never panic on any input.
pub mod fuzz_logic {
    /// What a node reads from an API server, the tunnel's whole input: the first byte splits
    /// `data` into the 101's headers (for [`offer`]) and the bytes that follow, which go to a
    /// SPDY session set up as the node's side of a tunnel (server role, flow control on).
    pub fn node_side(data: &[u8]) {
        let Some((&split, rest)) = data.split_first() else {
            return;
        };
        let (head, session) = rest.split_at((split as usize).min(rest.len()));
        offer(head);
        // server_session reads flow control from the first byte's low bit: force it on, as
        // both ends of a tunnel run with it.
        let mut bytes = session.to_vec();
        if let Some(first) = bytes.first_mut() {
            *first |= 1;
        }
        crate::spdy::fuzz_logic::server_session(&bytes);
    }

    /// `data` as header lines (`name: value`, split on `\n`), the first byte choosing the
    /// status; a parsed offer must satisfy the documented bounds.
    pub fn offer(data: &[u8]) {
        let Some((&first, rest)) = data.split_first() else {
            return;
        };
        let status = if first & 1 == 0 {
            101
        } else {
            u16::from(first)
        };
        let headers: Vec<(&str, &[u8])> = rest
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let name = std::str::from_utf8(&line[..colon]).ok()?;
                Some((name, &line[colon + 1..]))
            })
            .collect();
        if let Ok(o) = super::parse_offer(status, headers) {
            assert!(o.servers >= 1 && o.servers <= super::MAX_SERVERS);
            assert!(!o.identity.is_empty() && o.identity.len() <= super::MAX_IDENTITY_LEN);
            assert!(o.peers.len() <= super::MAX_SERVERS);
            // What we parse, we print back the same way.
            assert_eq!(super::parse_peers(&super::format_peers(&o.peers)), o.peers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn an_offer_names_the_server_and_how_many_there_are() {
        let o = parse_offer(
            101,
            h(&[
                ("upgrade", "porthole-tunnel/1"),
                (IDENTITY_HEADER, "api1_0f"),
                (SERVERS_HEADER, "3"),
            ]),
        )
        .unwrap();
        assert_eq!(o.identity, "api1_0f");
        assert_eq!(o.servers, 3);
        // A count that is missing, zero or absurd is clamped, never trusted blindly.
        let o = parse_offer(
            101,
            h(&[("Upgrade", "porthole-tunnel/1"), (IDENTITY_HEADER, "a")]),
        )
        .unwrap();
        assert_eq!(o.servers, 1);
        let o = parse_offer(
            101,
            h(&[
                ("upgrade", "porthole-tunnel/1"),
                (IDENTITY_HEADER, "a"),
                (SERVERS_HEADER, "100000"),
            ]),
        )
        .unwrap();
        assert_eq!(o.servers, MAX_SERVERS);
    }

    #[test]
    fn peers_round_trip_and_bad_entries_are_skipped() {
        let peers = parse_peers("a_1=198.18.0.11:6443, b_2=[::1]:7000,bad,=1.2.3.4:5,c=notanaddr");
        assert_eq!(
            peers,
            vec![
                Peer {
                    identity: "a_1".into(),
                    address: "198.18.0.11:6443".parse().unwrap()
                },
                Peer {
                    identity: "b_2".into(),
                    address: "[::1]:7000".parse().unwrap()
                },
            ]
        );
        assert_eq!(parse_peers(&format_peers(&peers)), peers);
        let o = parse_offer(
            101,
            h(&[
                ("upgrade", PROTOCOL),
                (IDENTITY_HEADER, "a_1"),
                (PEERS_HEADER, "a_1=198.18.0.11:6443"),
            ]),
        )
        .unwrap();
        assert_eq!(o.peers.len(), 1);
    }

    #[test]
    fn refusals_and_impostors_are_errors() {
        assert_eq!(
            parse_offer(403, h(&[])),
            Err(OfferError::Refused { status: 403 })
        );
        assert_eq!(
            parse_offer(101, h(&[("upgrade", "SPDY/3.1"), (IDENTITY_HEADER, "a")])),
            Err(OfferError::WrongProtocol("SPDY/3.1".into()))
        );
        assert_eq!(
            parse_offer(
                101,
                h(&[("upgrade", PROTOCOL), (IDENTITY_HEADER, "has space")])
            ),
            Err(OfferError::NoIdentity)
        );
        assert!(OfferError::NoIdentity.to_string().contains(IDENTITY_HEADER));
    }

    #[test]
    fn fuzz_logic_survives_odd_input() {
        for data in [
            &b""[..],
            b"\x00upgrade: porthole-tunnel/1\nx-porthole-apiserver-identity: x\nx-porthole-apiserver-count: -1",
            b"\x01\xff\xfe:\n:\n",
        ] {
            fuzz_logic::offer(data);
            fuzz_logic::node_side(data);
        }
    }
}
