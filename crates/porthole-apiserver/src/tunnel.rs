//! Node tunnels, the API server's side (`porthole_proto::tunnel` has the protocol): nodes that
//! cannot be dialed (`porthole node --tunnel`, behind NAT) open `POST
//! /api/v1/nodes/NAME/tunnel` and keep it; [`Tunnels`] holds the live ones by node, and
//! [`crate::kubelet::dial`] opens a stream on one instead of dialing TCP and TLS.
//!
//! Only the node itself may open its tunnel: the caller must be `system:node:NAME` in
//! `system:nodes` (a client certificate from the cluster CA, or a token with that identity),
//! for the NAME in the path; anyone else gets 403, whatever RBAC grants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use porthole_proto::tunnel;
use porthole_relay::spdy::{Connection, Role};
use tracing::Instrument as _;

use crate::authn::UserInfo;
use crate::error::ApiError;
use crate::http_util::Body;
use crate::State;

pub use porthole_proto::tunnel::NODE_ANNOTATION;

/// The live tunnels of this server, by node name.
#[derive(Default)]
pub struct Tunnels {
    by_node: Mutex<HashMap<String, Vec<Entry>>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    conn: Connection,
    /// The node dialed this server directly (not through a balancer): preferred.
    direct: bool,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels").finish_non_exhaustive()
    }
}

impl Tunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        self.by_node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tunnel of `node` to use: a direct one before one through a balancer, then the
    /// newest (a node that redialed after a partition may briefly hold an old one that is
    /// still dying). The node retires its other tunnels to this server by the same rule.
    pub fn get(&self, node: &str) -> Option<Connection> {
        let map = self.lock();
        map.get(node)?
            .iter()
            .filter(|e| !e.conn.is_closed())
            .max_by_key(|e| (e.direct, e.id))
            .map(|e| e.conn.clone())
    }

    /// How many tunnels are connected now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether none is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, node: &str, conn: Connection, direct: bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(node.to_string())
            .or_default()
            .push(Entry { id, conn, direct });
        id
    }

    fn remove(&self, node: &str, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(node) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                map.remove(node);
            }
        }
    }
}

/// Opens a stream to `node`'s endpoint on its tunnel: `Ok(None)` when it has no tunnel here.
pub async fn open(
    state: &State,
    node: &str,
) -> Result<Option<porthole_relay::spdy::Stream>, ApiError> {
    let Some(conn) = state.tunnels.get(node) else {
        return Ok(None);
    };
    let headers = vec![(
        tunnel::STREAM_KIND_HEADER.to_string(),
        tunnel::STREAM_KIND_HTTP.to_string(),
    )];
    let stream = conn.open_stream(headers).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "error dialing backend: opening a stream on the tunnel of node {node:?}: {e}; the node redials its tunnel by itself, retry in a few seconds"
        ))
    })?;
    Ok(Some(stream))
}

fn forbidden(node: &str, message: String) -> ApiError {
    ApiError::Forbidden {
        message,
        target: crate::error::Target {
            group: String::new(),
            resource: "nodes".into(),
            name: node.to_string(),
        },
    }
}

/// `POST /api/v1/nodes/NAME/tunnel` (already authenticated; RBAC let `create nodes/tunnel`
/// through): checks the caller is node NAME and asked for the tunnel protocol, answers 101,
/// and serves the tunnel in a task until it ends or the server stops.
pub fn serve(
    state: &Arc<State>,
    user: &UserInfo,
    remote: SocketAddr,
    node: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if crate::authz::node_of(user) != Some(node) {
        return Err(forbidden(
            node,
            format!(
            "user {:?} cannot open the tunnel of node {node:?}: only the node itself can (user system:node:{node} in group system:nodes, e.g. the client certificate `porthole node --join` obtained)",
            user.name
        ),
        ));
    }
    let wants_tunnel = crate::http_util::is_upgrade(req.headers())
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case(tunnel::PROTOCOL))
            });
    if !wants_tunnel {
        return Err(ApiError::BadRequest(format!(
            "a node tunnel is an upgrade: send Connection: Upgrade and Upgrade: {}",
            tunnel::PROTOCOL
        )));
    }
    let direct = req
        .headers()
        .get(tunnel::DIRECT_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = Response::new(crate::http_util::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(tunnel::PROTOCOL));
    let identity = HeaderValue::from_str(&state.identity.holder)
        .map_err(|e| ApiError::Internal(format!("server identity is not a header value: {e}")))?;
    h.insert(tunnel::IDENTITY_HEADER, identity);
    // Counted now rather than at the last renewal: servers that started together have not
    // seen each other's leases at their first round.
    let live = crate::registry::run_blocking(|| {
        crate::identity::live(state.store.as_ref(), jiff::Timestamp::now())
    })
    .unwrap_or_else(|_| crate::identity::LiveServers {
        count: state.live_servers.load(Ordering::Relaxed),
        peers: Vec::new(),
    });
    h.insert(tunnel::SERVERS_HEADER, HeaderValue::from(live.count.max(1)));
    if let Ok(peers) = HeaderValue::from_str(&tunnel::format_peers(&live.peers)) {
        if !peers.is_empty() {
            h.insert(tunnel::PEERS_HEADER, peers);
        }
    }
    let state2 = state.clone();
    let node = node.to_string();
    state.tasks.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "node tunnel upgrade failed");
                    return;
                }
            };
            let (conn, incoming) = Connection::new(
                TokioIo::new(upgraded),
                Role::Client,
                porthole_relay::spdy::Config::tunnel(),
            );
            // The node never opens streams towards us: dropping `incoming` refuses them.
            drop(incoming);
            let id = state2.tunnels.insert(&node, conn.clone(), direct);
            state2.metrics.tunnels_active.inc();
            tracing::info!(%node, %remote, direct, "node tunnel connected");
            let reason = tokio::select! {
                r = conn.closed() => format!("{r:?}"),
                _ = state2.shutdown.cancelled() => {
                    // GOAWAY: the node redials (through the balancer, to another server).
                    conn.shutdown().await;
                    "this server is stopping".to_string()
                }
            };
            state2.tunnels.remove(&node, id);
            state2.metrics.tunnels_active.dec();
            tracing::info!(%node, %remote, %reason, "node tunnel ended");
        }
        .instrument(tracing::info_span!("tunnel", %remote)),
    );
    Ok(resp)
}
