//! Traffic through a forwarded port: an HTTP GET, the Python client's GET, and payloads whose
//! corruption would show. (The echo round trip is in [`crate::echo`].)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// A plain HTTP/1.0 GET to 127.0.0.1:`port` (the python http.server closes after each answer).
/// Returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n"
    )
    .context("send the request")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("read the response")?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no HTTP header end in {} bytes: {:?}",
                response.len(),
                String::from_utf8_lossy(&response)
            )
        })?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head}"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// The Python client (`kubernetes.stream.portforward`, WebSocket channels): GET / from port
/// 8000 of pod `argv[2]` with kubeconfig `argv[1]`; prints the body.
pub const PYTHON_PORTFORWARD_GET: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(config_file=sys.argv[1])
pf = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward, sys.argv[2], "default", ports="8000")
sock = pf.socket(8000)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode().split("\r\n\r\n", 1)[1])
"#;

/// Deterministic pseudo-random bytes (xorshift), for payloads whose corruption would show.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A port on 127.0.0.1 that refuses connections while this value lives. A socket is bound to
/// it and never listens, so no other test's listener can take the port meanwhile: a port
/// found by binding and closing a listener can be handed out again at once, and a test that
/// expects a refusal would then wait on someone else's server.
pub struct RefusedPort {
    port: u16,
    _reserved: tokio::net::TcpSocket,
}

impl RefusedPort {
    /// Reserves a port (any free one).
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a TCP socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .expect("a bound socket's address")
            .port();
        RefusedPort {
            port,
            _reserved: socket,
        }
    }

    /// The port; connecting to it is refused.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}
