//! Reaching a node agent: find its address in the Node object, dial TCP with a timeout, TLS
//! with our kubelet-client certificate, and open an HTTP/1.1 client connection on it.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ApiError;
use crate::store::Store;

/// How long dialing a node (TCP + TLS) may take before the client gets an error.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node agent listens.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// Node name.
    pub node: String,
    /// Host (first InternalIP, else Hostname address).
    pub host: String,
    /// `status.daemonEndpoints.kubeletEndpoint.Port` (10250 when unset).
    pub port: u16,
    /// The node runs with `--tunnel` (annotation [`crate::tunnel::NODE_ANNOTATION`]): it can
    /// only be reached through a tunnel it dialed, never at its address.
    pub tunnel_only: bool,
}

/// Look up node `name` and compute its endpoint.
pub fn endpoint(store: &dyn Store, name: &str) -> Result<NodeEndpoint, ApiError> {
    let node = store
        .get(&crate::resources::core("nodes").key("", name))
        .map_err(|e| {
            ApiError::Internal(format!("error dialing backend: reading node {name:?}: {e}"))
        })?
        .ok_or_else(|| {
            ApiError::ServiceUnavailable(format!(
                "error dialing backend: node \"{name}\" not found"
            ))
        })?;
    endpoint_of(&node, name)
}

fn endpoint_of(node: &Value, name: &str) -> Result<NodeEndpoint, ApiError> {
    let addrs = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pick = |t: &str| {
        addrs
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .map(str::to_string)
    };
    let host = pick("InternalIP")
        .or_else(|| pick("Hostname"))
        .ok_or_else(|| {
            ApiError::ServiceUnavailable(format!(
                "error dialing backend: node \"{name}\" has no InternalIP or Hostname address"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0 && *p <= 65535)
        .unwrap_or(10250) as u16;
    let tunnel_only = node
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(crate::tunnel::NODE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true");
    Ok(NodeEndpoint {
        node: name.to_string(),
        host,
        port,
        tunnel_only,
    })
}

/// A node agent running in the API server's own process (`porthole up`).
#[derive(Debug, Clone)]
pub struct InProcessNode {
    /// Its node name.
    pub name: String,
    /// Takes one end of each new connection (the node serves the other).
    pub connect: tokio::sync::mpsc::Sender<tokio::io::DuplexStream>,
}

/// Bytes buffered per direction of an in-process connection: enough for a burst of full
/// SPDY frames, so neither side waits on the other at every frame.
const IN_PROCESS_BUFFER: usize = 256 * 1024;

/// A connection to a node agent.
pub trait NodeIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> NodeIo for T {}

/// The stream to a node agent: TLS over TCP, or an in-memory pipe to the node agent in this
/// process.
pub type NodeStream = Box<dyn NodeIo>;

/// Dial the node: the in-process node through a pipe; a node with a tunnel to this server
/// through a stream on it; any other over TCP then TLS, both within [`DIAL_TIMEOUT`].
/// Failures are 503 `error dialing backend: ...` so clients get an answer, never a hang.
pub async fn dial(state: &crate::State, ep: &NodeEndpoint) -> Result<NodeStream, ApiError> {
    if let Some(local) = state.in_process_node.as_ref().filter(|n| n.name == ep.node) {
        let (ours, theirs) = tokio::io::duplex(IN_PROCESS_BUFFER);
        if local.connect.send(theirs).await.is_ok() {
            return Ok(Box::new(ours));
        }
        // The embedded node agent has stopped: fall through to its TLS address, which fails
        // with the usual dial error.
    }
    let through_tunnel = tokio::time::timeout(DIAL_TIMEOUT, crate::tunnel::open(state, &ep.node))
        .await
        .map_err(|_| {
            ApiError::ServiceUnavailable(format!(
                "error dialing backend: opening a stream on the tunnel of node {:?} timed out after {}s",
                ep.node,
                DIAL_TIMEOUT.as_secs()
            ))
        })??;
    if let Some(stream) = through_tunnel {
        return Ok(Box::new(stream));
    }
    if ep.tunnel_only {
        return Err(ApiError::ServiceUnavailable(format!(
            "error dialing backend: node {:?} is reached through the tunnel it dials (porthole node --tunnel), and it has no tunnel to this API server ({}) right now; it redials by itself within seconds: retry, and if this persists check the node's log and that it can reach every API server",
            ep.node, state.identity.holder
        )));
    }
    Ok(Box::new(dial_tls(&state.kubelet_tls, ep).await?))
}

/// Dial the node over TCP then TLS.
async fn dial_tls(
    tls: &Arc<rustls::ClientConfig>,
    ep: &NodeEndpoint,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ApiError> {
    let fail =
        |what: String| ApiError::ServiceUnavailable(format!("error dialing backend: {what}"));
    let host_for_dial = if ep.host.contains(':') && !ep.host.starts_with('[') {
        format!("[{}]:{}", ep.host, ep.port)
    } else {
        format!("{}:{}", ep.host, ep.port)
    };
    let server_name = rustls::pki_types::ServerName::try_from(
        ep.host.trim_matches(|c| c == '[' || c == ']').to_string(),
    )
    .map_err(|e| {
        fail(format!(
            "node {:?} address {:?} is not a valid TLS name: {e}",
            ep.node, ep.host
        ))
    })?;
    let work = async {
        let tcp = TcpStream::connect(&host_for_dial)
            .await
            .map_err(|e| fail(format!("dial tcp {host_for_dial}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                fail(format!(
                    "tls handshake with node {:?} at {host_for_dial}: {e}",
                    ep.node
                ))
            })
    };
    tokio::time::timeout(DIAL_TIMEOUT, work)
        .await
        .map_err(|_| {
            fail(format!(
                "dial node {:?} at {host_for_dial}: timed out after {}s",
                ep.node,
                DIAL_TIMEOUT.as_secs()
            ))
        })?
}

/// Open an HTTP/1.1 client connection (with upgrades) on a dialed node stream. The connection
/// driver runs in its own task until the request and any upgrade are done.
pub async fn http1_client(
    stream: NodeStream,
) -> Result<http1::SendRequest<http_body_util::Empty<bytes::Bytes>>, ApiError> {
    let (sender, conn) = http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            ApiError::ServiceUnavailable(format!("error dialing backend: HTTP handshake: {e}"))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoint_prefers_internal_ip() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 4321}}}});
        let ep = endpoint_of(&n, "n1").expect("endpoint");
        assert_eq!((ep.host.as_str(), ep.port), ("127.0.0.1", 4321));
        assert!(endpoint_of(&json!({}), "n1").is_err());
    }
}
