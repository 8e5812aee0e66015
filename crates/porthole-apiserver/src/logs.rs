//! `pods/log`: proxied to the node's `/containerLogs/{ns}/{pod}/{container}` and streamed.

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::error::ApiError;
use crate::http_util::{Body, Query};
use crate::request::ResourceRequest;
use crate::{kubelet, State};

/// Serve `GET .../pods/{name}/log`.
pub async fn serve(
    state: &State,
    req: &ResourceRequest,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let main = ResourceRequest {
        subresource: String::new(),
        ..req.clone()
    };
    let pod = crate::registry::get(state.store.as_ref(), &main)?;
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {}",
                req.name
            )))
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                req.name,
                names.join(" ")
            )))
        }
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{}\" is waiting to start: ContainerCreating",
            req.name
        )));
    }
    let ep = kubelet::endpoint(state.store.as_ref(), node)?;
    let q = {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for key in [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ] {
            if let Some(v) = query.get(key) {
                q.append_pair(key, v);
            }
        }
        q.finish()
    };
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        enc(&req.namespace),
        enc(&req.name),
        enc(&container),
        q
    );
    let stream = kubelet::dial(state, &ep).await?;
    let mut sender = kubelet::http1_client(stream).await?;
    let node_req = Request::get(path)
        .header(header::HOST, format!("{}:{}", ep.host, ep.port))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("build log request: {e}")))?;
    let resp = sender.send_request(node_req).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!("error dialing backend: node {node:?}: {e}"))
    })?;
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = resp.into_body().map_err(std::io::Error::other).boxed();
    let mut out = Response::new(body);
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        ct.unwrap_or_else(|| http::HeaderValue::from_static("text/plain")),
    );
    Ok(out)
}
