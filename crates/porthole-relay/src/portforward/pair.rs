//! Ending a forwarded pair, shared by the TCP pairs of `spdy_server` and the UDP pairs of
//! `udp`, so both end their streams the way the Kubernetes library does.

use porthole_proto::portforward as pf;
use tokio::io::AsyncWriteExt;

use crate::spdy::Stream;

/// Ends a forwarded pair (TCP or UDP) the way the Kubernetes library does: both streams
/// finished on success; on failure the error text on the error stream, then both reset.
pub(super) async fn finish_pair(
    mut data: Stream,
    mut error: Stream,
    outcome: Result<(), String>,
    port: u16,
    pod_id: &str,
) {
    match outcome {
        Ok(()) => {
            let _ = data.shutdown().await;
            let _ = error.shutdown().await;
        }
        Err(cause) => {
            let text = pf::forward_error_text(port, pod_id, &cause);
            tracing::debug!(%text, "forward failed");
            let _ = error.write_all(text.as_bytes()).await;
            // Since the 1.32 library: reset both streams after the text (the RST follows the
            // text on the wire, so the client still reads it).
            data.reset();
            error.reset();
        }
    }
}
