//! `--status-addr`: the set's state as JSON over HTTP.
//!
//! - `GET /status`: a JSON array, one [`ForwardState`] per forward (the live view's rows);
//! - `GET /healthz`: `ok`.
//!
//! Plain HTTP/1.1 without authentication: it reveals pod names and counters, so it binds where
//! the user says (127.0.0.1 in the examples).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::ForwardState;

/// The state every view reads.
pub type SharedStates = Arc<Mutex<Vec<ForwardState>>>;

fn respond(states: &SharedStates, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /status and GET /healthz\n",
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/status" => {
            let body = {
                let states = states.lock().expect("state lock: no panics while held");
                serde_json::to_vec_pretty(&*states)
            };
            match body {
                Ok(mut body) => {
                    body.push(b'\n');
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the status: {e}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try GET /status or GET /healthz\n",
        ),
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, states: SharedStates, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "status server: accept failed");
                    continue;
                }
            },
        };
        let states = states.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&states, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "status connection ended");
                    },
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(tracing::debug_span!("status", %peer)),
        );
    }
}
