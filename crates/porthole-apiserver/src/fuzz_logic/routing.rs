//! Fuzz target [`route`](super::route): a request line (method, path, query) through routing, verbs
//! and RBAC attributes.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use http::Method;

use crate::request::Route;
use crate::resources::RESOURCES;
use crate::select::{FieldSelector, LabelSelector};

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
];

/// Kubernetes' `path.IsValidPathSegmentName`: what a name or namespace in a request path
/// may be (names that break the store key `plural/namespace/name` are refused).
fn valid_path_segment(s: &str) -> bool {
    s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

/// A request line: first byte the method, the rest `path?query` (lossy UTF-8, as the `http`
/// crate hands over only valid URIs). A route that parses names a served resource with a
/// subresource it has, names and namespaces that are path segments Kubernetes accepts and at
/// most 253 bytes; the verb agrees with the method and the name; attributes copy the route;
/// every query parameter the handlers read (selectors, resourceVersion, timeoutSeconds,
/// watch, ports) parses or is refused without a panic. Non-resource paths reach discovery.
pub fn route(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes())
        .expect("a standard method");
    let line = String::from_utf8_lossy(rest);
    let (path, raw_query) = match line.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*line, None),
    };
    let query = crate::http_util::Query::parse(raw_query);
    for key in [
        "labelSelector",
        "fieldSelector",
        "watch",
        "resourceVersion",
        "ports",
    ] {
        assert_eq!(query.get(key), query.all(key).first().map(String::as_str));
    }
    let _ = crate::portforward::parse_ports(&query);
    let _ = crate::health::is_health_path(path);
    let r = match crate::request::route(path) {
        Ok(Route::Resource(r)) => r,
        Ok(Route::NonResource) => {
            let _ = crate::discovery::handle(path, "application/json");
            let _ = crate::discovery::handle(
                path,
                "application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io",
            );
            return;
        }
        Err(_) => return,
    };
    assert!(RESOURCES.iter().any(|i| std::ptr::eq(i, r.info)));
    for (what, s) in [("name", &r.name), ("namespace", &r.namespace)] {
        assert!(s.len() <= 253, "{what} of {} bytes routed", s.len());
        assert!(
            s.is_empty() || valid_path_segment(s),
            "{path:?} routed with {what} {s:?}, which Kubernetes refuses as a path segment"
        );
    }
    assert!(
        r.subresource.is_empty()
            || r.info
                .subresources
                .iter()
                .any(|(s, _, _)| *s == r.subresource)
    );
    assert!(r.subresource.is_empty() || !r.name.is_empty());
    assert!(r.rest.is_empty() || r.subresource == "proxy");
    if let Ok(verb) = crate::request::verb(&method, &r, &query) {
        use crate::request::Verb;
        let collection = r.name.is_empty();
        match method.as_str() {
            "GET" if r.subresource.is_empty() && collection => {
                assert!(matches!(verb, Verb::List | Verb::Watch))
            }
            "GET" => assert_eq!(verb, Verb::Get),
            "DELETE" if collection => assert_eq!(verb, Verb::DeleteCollection),
            "DELETE" => assert_eq!(verb, Verb::Delete),
            _ => {}
        }
        let attrs = crate::request::attributes(&verb, &r);
        let ra = attrs.resource.expect("resource attributes");
        assert_eq!(
            (
                ra.resource.as_str(),
                ra.name.as_str(),
                ra.namespace.as_str()
            ),
            (r.info.plural, r.name.as_str(), r.namespace.as_str())
        );
    } else {
        assert!(!matches!(
            method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
        ));
    }
    // What list and watch read (`handlers::Selection::from_query` and `handlers::read::watch`).
    let _ = LabelSelector::parse(query.get("labelSelector").unwrap_or(""));
    let _ = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), r.info.kind);
    let _ = query.get("resourceVersion").map(str::parse::<u64>);
    let _ = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
}
