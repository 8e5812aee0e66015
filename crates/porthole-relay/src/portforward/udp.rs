//! UDP forwarding over port-forward stream pairs (a porthole extension; framing in
//! `porthole_proto::portforward::datagram`, negotiation with `X-Porthole-Extensions: udp`).
//!
//! - Server (node side): [`forward_pair`] relays one `protocol: udp` pair to a UDP socket in
//!   the pod connected to `127.0.0.1:PORT`. When the first datagrams are refused (ICMP port
//!   unreachable → `ECONNREFUSED`) before any reply came, it moves to `[::1]:PORT` and resends
//!   them, so an app listening only on IPv6 works as with TCP. A refusal is written on the
//!   error stream like a failed TCP dial: it ends this flow, never the session.
//! - Client: [`PortForwarder::open_udp`] opens a pair and gives a [`UdpFlow`] to send and
//!   receive whole datagrams on.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use porthole_proto::portforward::datagram;
use porthole_proto::portforward::{self as pf, Pair, StreamType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pair::finish_pair;
use super::spdy_client::{read_error_text, ForwardError, PortForwarder};
use crate::dial::{ForwardReport, PodDialer};
use crate::spdy::Stream;

/// Datagrams kept for a resend on `[::1]` while no reply has shown that `127.0.0.1` is right.
const MAX_UNCONFIRMED: usize = 64;

/// Relays one UDP pair until the client ends the data stream, the pod refuses, or the pod is
/// deleted; then finishes the streams as the TCP forward does.
pub(crate) async fn forward_pair(
    pair: Pair<Stream>,
    dialer: Arc<dyn PodDialer>,
    pod_gone: CancellationToken,
) {
    let Pair {
        port,
        error,
        mut data,
        ..
    } = pair;
    let pod_id = dialer.pod_id();
    let gone = || format!("pod {pod_id} was deleted");
    let outcome = if pod_gone.is_cancelled() {
        Err(gone())
    } else {
        tokio::select! {
            biased;
            _ = pod_gone.cancelled() => Err(gone()),
            r = relay(&mut data, &dialer, port) => r,
        }
    };
    finish_pair(data, error, outcome, port, &pod_id).await;
}

/// What woke the relay loop.
enum Wake {
    FromClient(io::Result<usize>),
    FromPod(io::Result<usize>),
}

/// The datagram loop. `Ok` when the client ended the flow; `Err(cause)` for the error stream.
async fn relay(data: &mut Stream, dialer: &Arc<dyn PodDialer>, port: u16) -> Result<(), String> {
    let mut sock = dialer
        .dial_udp(port, false)
        .await
        .map_err(|e| e.to_string())?;
    // Reports the flow to the dialer (metrics) when it ends, however it ends.
    let mut report = ForwardReport::new(dialer.clone(), port);
    let moved = &mut report.moved;
    let mut on_v6 = false;
    let mut v4_refusal: Option<String> = None;
    // A reply proves the address; until then the datagrams sent are kept for a resend on ::1.
    let mut confirmed = false;
    let mut unconfirmed: VecDeque<Bytes> = VecDeque::new();
    let mut from_client = BytesMut::with_capacity(8 * 1024);
    let mut from_pod = vec![0u8; datagram::MAX_DATAGRAM];
    let mut to_client = BytesMut::new();
    loop {
        let wake = tokio::select! {
            r = data.read_buf(&mut from_client) => Wake::FromClient(r),
            r = sock.recv(&mut from_pod) => Wake::FromPod(r),
        };
        let refused = match wake {
            Wake::FromClient(Ok(0)) => {
                tracing::debug!(
                    to_pod = moved.a_to_b,
                    from_pod = moved.b_to_a,
                    "udp flow finished"
                );
                return Ok(());
            }
            Wake::FromClient(Err(e)) => {
                // Reset by the client (its idle timeout) or the connection went away.
                tracing::debug!(error = %e, "udp flow: data stream ended");
                return Ok(());
            }
            Wake::FromClient(Ok(_)) => {
                let mut refused = None;
                while let Some(d) = datagram::decode(&mut from_client) {
                    match sock.send(&d).await {
                        Ok(n) => moved.a_to_b += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            refused = Some(e);
                        }
                        // ENOBUFS and friends: dropped, as the network would.
                        Err(e) => tracing::debug!(error = %e, "udp send to the pod failed"),
                    }
                    if !confirmed && unconfirmed.len() < MAX_UNCONFIRMED {
                        unconfirmed.push_back(d);
                    }
                }
                refused
            }
            Wake::FromPod(Ok(n)) => {
                confirmed = true;
                unconfirmed.clear();
                to_client.clear();
                datagram::encode(&from_pod[..n], &mut to_client)
                    .expect("a UDP socket never returns more than 65535 bytes");
                if let Err(e) = data.write_all(&to_client).await {
                    tracing::debug!(error = %e, "udp flow: data stream ended");
                    return Ok(());
                }
                moved.b_to_a += n as u64;
                None
            }
            Wake::FromPod(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Some(e),
            Wake::FromPod(Err(e)) => {
                tracing::debug!(error = %e, "udp receive from the pod failed");
                None
            }
        };
        let Some(e) = refused else { continue };
        let here = if on_v6 { "[::1]" } else { "127.0.0.1" };
        let text = format!("udp {here}:{port}: {}", io_text(&e));
        if confirmed || on_v6 {
            return Err(match v4_refusal {
                Some(v4) => format!(
                    "failed to send to localhost:{port} inside the pod: IPv4: {v4}; IPv6: {text}"
                ),
                None => format!("failed to send to {here}:{port} inside the pod: {text}"),
            });
        }
        // Nothing answered on 127.0.0.1 yet: the app may listen on ::1 only.
        v4_refusal = Some(text);
        sock = match dialer.dial_udp(port, true).await {
            Ok(s) => s,
            Err(e) => {
                return Err(format!(
                    "failed to send to localhost:{port} inside the pod: IPv4: {}; IPv6: {}",
                    v4_refusal.unwrap_or_default(),
                    e
                ))
            }
        };
        on_v6 = true;
        for d in &unconfirmed {
            let _ = sock.send(d).await;
        }
    }
}

/// An I/O error as Go prints it: `connection refused`, without Rust's `(os error N)`.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error ").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One UDP flow on the client side: an open `protocol: udp` pair.
#[derive(Debug)]
pub struct UdpFlow {
    data: Stream,
    error: JoinHandle<io::Result<String>>,
    from_pod: BytesMut,
    to_pod: BytesMut,
}

impl PortForwarder {
    /// Opens a UDP pair to `remote_port` (only on a connection that negotiated the `udp`
    /// extension: a kubelet would take the pair for TCP). Both SYN_STREAMs go out back to
    /// back and their replies are awaited together.
    pub async fn open_udp(&self, remote_port: u16) -> Result<UdpFlow, ForwardError> {
        let request_id = self.next_request_id();
        let headers = |t| {
            let mut h: Vec<(String, String)> = pf::stream_headers(t, remote_port, request_id)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            h.push((
                datagram::HEADER_PROTOCOL.to_string(),
                datagram::PROTOCOL_UDP.to_string(),
            ));
            h
        };
        let conn = self.connection();
        let mut error = conn
            .start_stream(headers(StreamType::Error))
            .map_err(ForwardError::CreateErrorStream)?;
        let data = conn
            .start_stream(headers(StreamType::Data))
            .map_err(ForwardError::CreateDataStream)?;
        error
            .opened()
            .await
            .map_err(ForwardError::CreateErrorStream)?;
        let _ = error.shutdown().await;
        let error = tokio::spawn(read_error_text(error));
        if let Err(e) = data.opened().await {
            error.abort();
            return Err(ForwardError::CreateDataStream(e));
        }
        Ok(UdpFlow {
            data,
            error,
            from_pod: BytesMut::with_capacity(4 * 1024),
            to_pod: BytesMut::new(),
        })
    }
}

impl UdpFlow {
    /// Sends one datagram to the pod.
    pub async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.to_pod.clear();
        datagram::encode(payload, &mut self.to_pod)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.data.write_all(&self.to_pod).await
    }

    /// The next datagram from the pod; `None` when the pod side ended the flow. Cancel-safe:
    /// partial frames stay buffered.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(d) = datagram::decode(&mut self.from_pod) {
                return Ok(Some(d));
            }
            if self.data.read_buf(&mut self.from_pod).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Ends the flow (RST of the data stream) and returns the pod's error text, if it sent one.
    pub async fn finish(mut self) -> Result<(), ForwardError> {
        self.data.reset();
        drop(self.data);
        let text = match self.error.await {
            Ok(r) => r.map_err(ForwardError::ReadErrorStream)?,
            Err(e) => return Err(ForwardError::ReadErrorStream(io::Error::other(e))),
        };
        if text.is_empty() {
            Ok(())
        } else {
            Err(ForwardError::Remote(text))
        }
    }
}
