//! What every connection to the node's endpoint shares: the settings and the response body
//! type. Its own module so the handlers of each path (port-forward and logs in `server`,
//! reverse forwarding in `reverse`) take it without importing each other.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{NodeMetrics, Registration};
use crate::runtime::Runtime;

/// Response body type of every handler.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// A whole response: `status`, `content_type` and `body` (plain texts and Status objects).
pub(crate) fn full_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Settings shared by every connection.
pub(crate) struct Endpoint {
    pub(crate) runtime: Runtime,
    pub(crate) allowed_names: HashSet<String>,
    pub(crate) idle_timeout: Duration,
    pub(crate) stream_creation_timeout: Duration,
    pub(crate) node_name: String,
    /// Cancelled at shutdown: ends upgraded sessions and open log streams.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection and session tasks, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<NodeMetrics>,
    /// What `/readyz` checks.
    pub(crate) registration: Arc<Registration>,
}
