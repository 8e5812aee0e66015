//! Local listeners, exactly as client-go's port forwarder opens them (PROTOCOL.md §7.4):
//! `localhost` is 127.0.0.1 and ::1 of which one must bind, explicit addresses must all bind,
//! addresses are deduplicated and bound in string order, and a kernel-chosen port (local port
//! 0) is reused for the port's later addresses.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;

/// Whether one address failing to bind fails the whole port (client-go's failure modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Part of `localhost`: the port is usable if at least one `All` address binds.
    All,
    /// An explicit address: if it fails, the port fails.
    Any,
}

/// One address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// The address as the user wrote it (printed in `Forwarding from` lines, as kubectl does).
    pub text: String,
    /// The parsed address.
    pub ip: IpAddr,
    /// See [`FailureMode`].
    pub mode: FailureMode,
}

/// Expands `--address` values (each may be a comma list) into listen addresses; error text as
/// kubectl: `<addr> is not a valid IP`.
pub fn parse_addresses<S: AsRef<str>>(values: &[S]) -> Result<Vec<ListenAddress>, String> {
    // Keyed by text so duplicates merge and the result is sorted as strings, like client-go.
    let mut parsed: BTreeMap<String, ListenAddress> = BTreeMap::new();
    for value in values {
        for addr in value.as_ref().split(',').map(str::trim) {
            if addr == "localhost" {
                // client-go only adds these if not already present: an explicit 127.0.0.1
                // given earlier keeps its stricter mode.
                for (text, ip) in [
                    ("127.0.0.1", IpAddr::from([127, 0, 0, 1])),
                    ("::1", IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
                ] {
                    parsed.entry(text.to_string()).or_insert(ListenAddress {
                        text: text.to_string(),
                        ip,
                        mode: FailureMode::All,
                    });
                }
                continue;
            }
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr} is not a valid IP"))?;
            // An explicit address always overrides (client-go assigns unconditionally).
            parsed.insert(
                addr.to_string(),
                ListenAddress {
                    text: addr.to_string(),
                    ip,
                    mode: FailureMode::Any,
                },
            );
        }
    }
    Ok(parsed.into_values().collect())
}

/// `host:port` as Go's `net.JoinHostPort` writes it (brackets around IPv6).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's rendering of a socket error (`bind: address already in use`): the OS text without
/// Rust's ` (os error N)` suffix and with a lower-case first letter.
pub fn go_errno_text(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn bind(ip: IpAddr, port: u16) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if ip.is_ipv6() {
        // Go listens on "tcp6" with IPV6_V6ONLY, so `--address 0.0.0.0,::` binds both.
        socket.set_only_v6(true)?;
    }
    // Go sets SO_REUSEADDR on listeners, so a port in TIME_WAIT from an earlier run can be
    // reused at once; do the same.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind: {}", go_errno_text(&e))))?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The listeners of one forwarded port.
#[derive(Debug)]
pub struct PortListeners {
    /// The local port actually bound (the kernel's choice when 0 was asked for).
    pub local_port: u16,
    /// Bound listeners with the address text they were opened for.
    pub listeners: Vec<(String, TcpListener)>,
}

/// Opens one port on every address. `on_bound(address_text, local_port)` is called after each
/// successful bind (the caller prints `Forwarding from`, at the moment kubectl would). On
/// failure returns kubectl's `Listeners failed to create with the following errors: [...]`.
pub fn listen_port(
    addresses: &[ListenAddress],
    requested: u16,
    on_bound: impl FnMut(&str, u16),
) -> Result<PortListeners, String> {
    let (local_port, listeners) = bind_each(addresses, requested, "tcp", bind, on_bound)?;
    Ok(PortListeners {
        local_port,
        listeners,
    })
}

/// Binds one port on every address with kubectl's rules, whatever the socket (`proto` is
/// `tcp` or `udp`, for messages): `localhost` needs one of its two addresses, explicit
/// addresses all; port 0 is chosen by the kernel on the first address and reused for the
/// rest. `on_bound(address_text, local_port)` runs after each bind.
pub(crate) fn bind_each<S: SocketLocalAddr>(
    addresses: &[ListenAddress],
    requested: u16,
    proto: &str,
    mut bind: impl FnMut(IpAddr, u16) -> io::Result<S>,
    mut on_bound: impl FnMut(&str, u16),
) -> Result<(u16, Vec<(String, S)>), String> {
    let mut port = requested;
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    let (mut all_ok, mut all_failed, mut any_failed) = (0, 0, 0);
    for addr in addresses {
        let family = if addr.ip.is_ipv4() { "4" } else { "6" };
        match bind(addr.ip, port) {
            Ok(sock) => {
                // local port 0: the first address's kernel choice is reused for the rest.
                if let Ok(bound) = sock.local_addr() {
                    port = bound.port();
                }
                on_bound(&addr.text, port);
                sockets.push((addr.text.clone(), sock));
                if addr.mode == FailureMode::All {
                    all_ok += 1;
                }
            }
            Err(e) => {
                errors.push(format!(
                    "unable to create listener: Error listen {proto}{family} {}: {e}",
                    join_host_port(&addr.text, port)
                ));
                match addr.mode {
                    FailureMode::All => all_failed += 1,
                    FailureMode::Any => any_failed += 1,
                }
            }
        }
    }
    if (all_ok == 0 && all_failed > 0) || any_failed > 0 {
        return Err(format!(
            "Listeners failed to create with the following errors: [{}]",
            errors.join(" ")
        ));
    }
    Ok((port, sockets))
}

/// A bound socket's own address (tokio's TCP listener and UDP socket alike).
pub(crate) trait SocketLocalAddr {
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<std::net::SocketAddr>;
}

impl SocketLocalAddr for TcpListener {
    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        TcpListener::local_addr(self)
    }
}

impl SocketLocalAddr for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[ListenAddress]) -> Vec<(&str, FailureMode)> {
        v.iter().map(|a| (a.text.as_str(), a.mode)).collect()
    }

    #[test]
    fn localhost_expands_to_both_families() {
        let a = parse_addresses(&["localhost"]).unwrap();
        assert_eq!(
            texts(&a),
            vec![("127.0.0.1", FailureMode::All), ("::1", FailureMode::All)]
        );
    }

    #[test]
    fn explicit_addresses_are_strict_merged_and_sorted() {
        let a = parse_addresses(&["::1,0.0.0.0", "127.0.0.1", "0.0.0.0"]).unwrap();
        assert_eq!(
            texts(&a),
            vec![
                ("0.0.0.0", FailureMode::Any),
                ("127.0.0.1", FailureMode::Any),
                ("::1", FailureMode::Any)
            ]
        );
        // localhost after an explicit address does not weaken it; before, it is overridden.
        let a = parse_addresses(&["127.0.0.1", "localhost"]).unwrap();
        assert_eq!(
            texts(&a),
            vec![("127.0.0.1", FailureMode::Any), ("::1", FailureMode::All)]
        );
        let a = parse_addresses(&["localhost", "::1"]).unwrap();
        assert_eq!(
            texts(&a),
            vec![("127.0.0.1", FailureMode::All), ("::1", FailureMode::Any)]
        );
    }

    #[test]
    fn invalid_address_text() {
        assert_eq!(
            parse_addresses(&["foo"]).unwrap_err(),
            "foo is not a valid IP"
        );
        assert_eq!(
            parse_addresses(&["127.0.0.1,1.2.3"]).unwrap_err(),
            "1.2.3 is not a valid IP"
        );
    }

    #[test]
    fn join_host_port_brackets_v6() {
        assert_eq!(join_host_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
    }

    #[tokio::test]
    async fn port_zero_is_shared_across_addresses() {
        let addrs = parse_addresses(&["localhost"]).unwrap();
        let mut seen = Vec::new();
        let got = listen_port(&addrs, 0, |a, p| seen.push((a.to_string(), p))).unwrap();
        assert_ne!(got.local_port, 0);
        // ::1 may be unavailable in some sandboxes; localhost needs only one.
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|(_, p)| *p == got.local_port));
        assert_eq!(seen[0].0, "127.0.0.1");
    }

    #[tokio::test]
    async fn wildcards_of_both_families_bind_together() {
        let addrs = parse_addresses(&["0.0.0.0,::"]).unwrap();
        let got = listen_port(&addrs, 0, |_, _| {});
        // Without IPv6 in the sandbox `::` cannot bind at all; otherwise both must.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            assert_eq!(got.unwrap().listeners.len(), 2);
        }
    }

    #[tokio::test]
    async fn busy_explicit_address_fails_with_go_text() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addrs = parse_addresses(&["127.0.0.1"]).unwrap();
        let err = listen_port(&addrs, port, |_, _| {}).unwrap_err();
        assert_eq!(
            err,
            format!(
                "Listeners failed to create with the following errors: [unable to create listener: \
                 Error listen tcp4 127.0.0.1:{port}: bind: address already in use]"
            )
        );
    }
}
