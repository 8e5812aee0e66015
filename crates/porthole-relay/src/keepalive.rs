//! TCP keepalive on the connections a server accepts.
//!
//! A partition that outlives a peer leaves the server's end of a connection open and silent
//! (the peer's FIN or RST was lost, or a balancer between them gave up on it): an idle
//! keep-alive HTTP connection, or a watch nobody writes to, would hold its descriptor and task
//! forever. Kernel keepalive probes find such half-open connections and end them, as Go's
//! listeners (kube-apiserver's, the kubelet's) do by default every 15 s.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Idle time before the first probe (Go's default for accepted connections).
pub const IDLE: Duration = Duration::from_secs(15);
/// Between probes.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes that end the connection: a dead peer is found within 30 s of silence.
pub const RETRIES: u32 = 3;

/// Turns keepalive probes on for an accepted connection ([`IDLE`], [`INTERVAL`],
/// [`RETRIES`]). A failure is returned for the caller to log: the connection works without.
pub fn enable(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = TcpKeepalive::new()
        .with_time(IDLE)
        .with_interval(INTERVAL)
        .with_retries(RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_probe_a_silent_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        enable(&accepted).unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), RETRIES);
    }
}
