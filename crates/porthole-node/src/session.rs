//! Runs one upgraded port-forward connection with porthole-relay's protocol servers: SPDY
//! directly, the WebSocket tunnel as SPDY over a `WsStream`, or the WebSocket channel protocol.

use std::sync::Arc;
use std::time::Duration;

use porthole_proto::handshake::Upgrade;
use porthole_relay::dial::PodDialer;
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_relay::portforward::ws_server;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The porthole extensions this node grants (`X-Porthole-Extensions`).
pub(crate) const EXTENSIONS: &[&str] = &[porthole_proto::handshake::EXTENSION_UDP];

/// Per-session settings from the node's configuration and the pod.
pub(crate) struct SessionParams {
    pub(crate) stream_creation_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// The pod's `pod_gone` token: its streams end with an error text when it is cancelled.
    pub(crate) pod_gone: CancellationToken,
    /// The `udp` extension was granted: `protocol: udp` pairs are UDP flows.
    pub(crate) udp: bool,
}

/// Serves the upgraded connection `io` with the protocol `upgrade` selected, until it ends.
pub(crate) async fn run<T>(
    upgrade: Upgrade,
    io: T,
    dialer: Arc<dyn PodDialer>,
    params: SessionParams,
) -> anyhow::Result<()>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let flow_control = matches!(
        upgrade,
        Upgrade::Spdy { flow_control: true } | Upgrade::WsTunnel { flow_control: true }
    );
    let cfg = ServerConfig {
        stream_creation_timeout: params.stream_creation_timeout,
        idle_timeout: params.idle_timeout,
        flow_control,
        pod_gone: params.pod_gone,
        udp: params.udp,
        ..ServerConfig::default()
    };
    match upgrade {
        Upgrade::Spdy { .. } => spdy_server::serve(io, dialer, cfg).await?,
        Upgrade::WsTunnel { .. } => {
            let ws = porthole_relay::ws::WsStream::new(io, porthole_relay::ws::Role::Server);
            spdy_server::serve(ws, dialer, cfg).await?
        }
        Upgrade::WsChannels { proto, ports } => {
            ws_server::serve(io, proto, ports, dialer, cfg).await?
        }
    }
    Ok(())
}
