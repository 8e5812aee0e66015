//! Non-resource endpoints: `/version`, legacy discovery (`/api`, `/api/v1`, `/apis`,
//! `/apis/{group}[/{version}]`) and the OpenAPI endpoints.
//!
//! `gitVersion` is `v1.34.0+porthole` on purpose: the Google Cloud SDK kubectl dispatcher
//! installed as `/usr/bin/kubectl` execs an older kubectl when the server's minor version is
//! 27..33 (see CLIENTS.md); with 1.34 the built-in kubectl 1.32 runs, which speaks the
//! WebSocket tunnel with SPDY fallback.

use http::StatusCode;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http_util::{json_response, Body};
use crate::resources::RESOURCES;

/// The version reported at `/version`.
pub const GIT_VERSION: &str = "v1.34.0+porthole";

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if r.plural == "pods" || r.plural == "deployments" || r.plural == "services" {
            entry["categories"] = json!(["all"]);
        }
        list.push(entry);
        for (sub, kind, verbs) in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, sub),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if *sub == "scale" {
                e["group"] = json!("autoscaling");
                e["version"] = json!("v1");
            }
            list.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

fn version_json() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "porthole",
        "gitTreeState": "clean",
        "buildDate": "2026-11-25T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of group-version documents.
fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=porthole-{}", GIT_VERSION.replace('+', "-"))}));
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document for one group-version: every resource's PATCH operation with
/// its `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter. That is
/// what kubectl's `QueryParamVerifierV3` looks for; finding it, kubectl leaves validation to
/// the server (`fieldValidation=Strict`) instead of downloading schemas.
fn openapi_v3_gv(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<_> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    for r in rs {
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(group, version),
                r.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(group, version), r.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        paths.insert(
            base,
            json!({
                "patch": {
                    "operationId": format!("patch{}", r.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}}
                }
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}

/// `/openapi/v2`: an empty Swagger 2.0 document. Clients that validate on the client side
/// with it (kubectl ≤ 1.24 on `create -f`) find no schema for the kind and skip validation,
/// which then happens on the server (`resources::normalize`). kubectl asks for the protobuf
/// form; an empty message is a valid, empty `openapi_v2.Document`.
fn openapi_v2(accept: &str) -> http::Response<Body> {
    if accept.contains("protobuf") {
        let mut r = http::Response::new(crate::http_util::full(bytes::Bytes::new()));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            // What kube-apiserver sends: Go cannot parse the `@` of the requested media type.
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {}, "definitions": {}}),
    )
}

/// Answer a non-resource path (GET only; the caller has authorized it). Health and
/// `/metrics` are answered by `health` and `metrics`.
pub fn handle(path: &str, accept: &str) -> Result<http::Response<Body>, ApiError> {
    let p = path.trim_end_matches('/');
    let resp = match p {
        "/openapi/v2" => openapi_v2(accept),
        "/version" => json_response(StatusCode::OK, &version_json()),
        "/api" => json_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        ),
        "/api/v1" => json_response(StatusCode::OK, &resource_list("", "v1")),
        "/openapi/v3" => json_response(StatusCode::OK, &openapi_v3_root()),
        "/openapi/v3/api/v1" => {
            json_response(StatusCode::OK, &openapi_v3_gv("", "v1").unwrap_or_default())
        }
        "/apis" => {
            let gs: Vec<Value> = groups()
                .into_iter()
                .map(|(g, v)| group_json(g, v))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            )
        }
        _ => {
            let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            match segs.as_slice() {
                ["apis", g] => match groups().into_iter().find(|(gg, _)| gg == g) {
                    Some((g, v)) => {
                        let mut j = group_json(g, v);
                        j["kind"] = json!("APIGroup");
                        j["apiVersion"] = json!("v1");
                        json_response(StatusCode::OK, &j)
                    }
                    None => return Err(ApiError::NoRoute),
                },
                ["openapi", "v3", "apis", g, v] => match openapi_v3_gv(g, v) {
                    Some(doc) => json_response(StatusCode::OK, &doc),
                    None => return Err(ApiError::NoRoute),
                },
                ["apis", g, v] if groups().contains(&(*g, *v)) => {
                    json_response(StatusCode::OK, &resource_list(g, v))
                }
                _ => return Err(ApiError::NoRoute),
            }
        }
    };
    Ok(resp)
}
