//! Reads: get of one object (also its `status` and `approval` views), list and watch of a
//! collection, each answered as JSON or, when the client asks, as a Table.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Selection;
use crate::body::{object_response, with_kind};
use crate::error::ApiError;
use crate::http_util::{json_response, Body, Query};
use crate::registry;
use crate::request::ResourceRequest;
use crate::store::{EventKind, Store};
use crate::table;
use crate::State;

/// One object, or 404.
pub(super) fn get(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let obj = registry::get(store, req)?;
    Ok(object_response(
        StatusCode::OK,
        req.info,
        &obj,
        headers,
        query,
    ))
}

pub(super) fn list(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let sel = Selection::from_query(info, query)?;
    let (items, rev) = store
        .list(&info.prefix(&req.namespace))
        .map_err(|e| ApiError::from_store(e, req.target()))?;
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| sel.matches(o))
        .map(|o| with_kind(info, o))
        .collect();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if table::wants_table(accept) {
        let t = table::table(
            info,
            &items,
            &rev.to_string(),
            query.get("includeObject"),
            true,
        );
        return Ok(json_response(StatusCode::OK, &t));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": items,
        }),
    ))
}

pub(super) fn watch(
    state: &Arc<State>,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let sel = Selection::from_query(info, query)?;
    let store = state.store.clone();
    let rv_param = query.get("resourceVersion").unwrap_or("");
    let from: u64 = match rv_param {
        "" | "0" => 0,
        s => s
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {s:?}")))?,
    };
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table = table::wants_table(accept);
    let include_object = query.get("includeObject").map(str::to_string);
    let prefix = info.prefix(&req.namespace);

    // Start the store watch first so nothing between the list and the watch is missed.
    let (initial, start_rev, mut w) = if from == 0 || send_initial {
        let w = store
            .watch(0)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        let (items, rev) = store
            .list(&prefix)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        (Some(items), rev, w)
    } else {
        let w = store
            .watch(from)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        (None, from, w)
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        let mut first_table = true;
        let mut encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if as_table && kind != "BOOKMARK" && kind != "ERROR" {
                let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
                let t = table::table(info, std::slice::from_ref(obj), rv, include_object.as_deref(), first_table);
                first_table = false;
                t
            } else {
                obj.clone()
            };
            // Written by hand to keep Kubernetes' field order (`type` first).
            let mut line = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
            line.extend(serde_json::to_vec(&object).unwrap_or_default());
            line.extend_from_slice(b"}\n");
            Bytes::from(line)
        };
        let mut last_rev = start_rev;
        if let Some(items) = initial {
            for o in items.into_iter().filter(|o| sel.matches(o)) {
                if tx.send(encode("ADDED", &with_kind(info, o))).await.is_err() {
                    return;
                }
            }
            if send_initial {
                let bm = json!({"kind": info.kind, "apiVersion": info.api_version(),
                    "metadata": {"resourceVersion": start_rev.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(encode("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
            }
        }
        let backlog = std::mem::take(&mut w.backlog);
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(Duration::from_secs(30));
        bookmark_tick.tick().await;
        let mut pending = backlog.into_iter();
        loop {
            let ev = if let Some(ev) = pending.next() {
                ev
            } else {
                tokio::select! {
                    r = w.live.recv() => match r {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let (_, st) = ApiError::Gone(format!("too old resource version: {last_rev}")).status();
                            let _ = tx.send(encode("ERROR", &st)).await;
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = &mut deadline => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = bookmark_tick.tick(), if bookmarks => {
                        let bm = json!({"kind": info.kind, "apiVersion": info.api_version(),
                            "metadata": {"resourceVersion": last_rev.to_string()}});
                        if tx.send(encode("BOOKMARK", &bm)).await.is_err() { return; }
                        continue;
                    }
                }
            };
            if ev.revision <= start_rev || !ev.key.starts_with(&prefix) {
                continue;
            }
            last_rev = ev.revision;
            let now = sel.matches(&ev.object);
            let before = ev.prev.as_ref().is_some_and(|p| sel.matches(p));
            let kind = match ev.kind {
                EventKind::Added if now => "ADDED",
                EventKind::Modified if now && before => "MODIFIED",
                EventKind::Modified if now => "ADDED",
                EventKind::Modified if before => "DELETED",
                EventKind::Deleted if before || now => "DELETED",
                _ => continue,
            };
            if tx.send(encode(kind, &with_kind(info, ev.object.clone()))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
    });
    let mut resp = Response::new(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    ));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}
