//! The request model shared by routing, authorization and the handlers: which resource a
//! path names ([`route`]), the Kubernetes [`Verb`] of a method on it ([`verb`]) and the RBAC
//! attributes authorization decides on ([`attributes`]). Authorization depends on this module
//! only, never on the handlers.

use std::fmt;

use http::Method;

use crate::error::{ApiError, Target};
use crate::http_util::Query;
use crate::resources::{self, ResourceInfo};

/// Longest object name accepted anywhere in a path.
const MAX_NAME_BYTES: usize = 253;

/// A Kubernetes verb: what RBAC rules, audit records, metrics labels and error messages name.
/// An enum so that a misspelt verb does not compile; [`Verb::as_str`] gives Kubernetes'
/// spelling, which is what leaves the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `get`: read one object (also the verb of a streaming subresource's GET).
    Get,
    /// `list`: read a collection.
    List,
    /// `watch`: follow a collection.
    Watch,
    /// `create`: POST.
    Create,
    /// `update`: PUT.
    Update,
    /// `patch`: PATCH.
    Patch,
    /// `delete`: DELETE of one object.
    Delete,
    /// `deletecollection`: DELETE of a collection.
    DeleteCollection,
    /// A non-resource request (discovery, health, `/metrics`): Kubernetes authorizes the
    /// lowercase HTTP method, whatever it is, so the method's text is kept.
    NonResource(String),
}

impl Verb {
    /// The verb of a non-resource request: the lowercase HTTP method.
    pub fn non_resource(method: &Method) -> Self {
        Self::NonResource(method.as_str().to_lowercase())
    }

    /// Kubernetes' spelling, as RBAC rules and audit records carry it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
            Self::NonResource(method) => method,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource part of a request's attributes.
#[derive(Debug, Clone, Default)]
pub struct ResourceAttrs {
    /// API group ("" = core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource ("" = none).
    pub subresource: String,
    /// Namespace ("" = cluster scope or all namespaces).
    pub namespace: String,
    /// Object name ("" = collection).
    pub name: String,
}

/// What is being asked.
#[derive(Debug, Clone)]
pub struct Attributes {
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, ... or lowercase HTTP method for paths).
    pub verb: Verb,
    /// Set for resource requests.
    pub resource: Option<ResourceAttrs>,
    /// Request path, for non-resource requests.
    pub path: String,
}

/// A request for a resource (as opposed to discovery or health).
#[derive(Debug, Clone)]
pub struct ResourceRequest {
    /// The resource.
    pub info: &'static ResourceInfo,
    /// Namespace ("" for cluster-scoped resources and all-namespace lists).
    pub namespace: String,
    /// Object name ("" for collections).
    pub name: String,
    /// Subresource ("" for the main resource).
    pub subresource: String,
    /// Path after the subresource (`nodes/{n}/proxy/{rest}`).
    pub rest: String,
}

impl ResourceRequest {
    /// The target for error messages.
    pub fn target(&self) -> Target {
        Target {
            group: self.info.group.to_string(),
            resource: self.info.plural.to_string(),
            name: self.name.clone(),
        }
    }

    pub(crate) fn key(&self) -> String {
        self.info.key(&self.namespace, &self.name)
    }
}

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    /// Discovery, version, health, openapi.
    NonResource,
    /// A resource request (including the legacy `/proxy/nodes/...` path, mapped to nodes/proxy).
    Resource(ResourceRequest),
}

fn decode_segment(s: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest(format!("invalid path segment {s:?}: not UTF-8")))?
        .into_owned();
    if decoded.len() > MAX_NAME_BYTES {
        return Err(ApiError::BadRequest(format!(
            "path segment too long: {} bytes (limit {MAX_NAME_BYTES})",
            decoded.len()
        )));
    }
    Ok(decoded)
}

/// Kubernetes' `path.IsValidPathSegmentName` for the name and namespace of a request: the
/// store key is `plural/namespace/name`, so a decoded `/` (`%2F`) would let
/// (namespace `a`, name `b/c`) and (namespace `a/b`, name `c`) name one key. Refused with
/// Kubernetes' 400 (`Name parameter invalid: "a/b": may not contain '/'`).
fn check_segment(what: &str, s: &str) -> Result<(), ApiError> {
    let why = match s {
        "." | ".." => format!("may not be '{s}'"),
        _ if s.contains('/') => "may not contain '/'".to_string(),
        _ if s.contains('%') => "may not contain '%'".to_string(),
        _ => return Ok(()),
    };
    Err(ApiError::BadRequest(format!(
        "{what} parameter invalid: {s:?}: {why}"
    )))
}

/// Parse a request path.
pub fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() && !rest[0].is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() && !rest[0].is_empty() => (g, v, rest),
        ["proxy", "nodes", node, rest @ ..] if !node.is_empty() => {
            let name = decode_segment(node)?;
            check_segment("Name", &name)?;
            return Ok(Route::Resource(ResourceRequest {
                info: resources::core("nodes"),
                namespace: String::new(),
                name,
                subresource: "proxy".into(),
                rest: rest.join("/"),
            }));
        }
        _ => return Ok(Route::NonResource),
    };
    let rest: Vec<String> = rest
        .iter()
        .map(|s| decode_segment(s))
        .collect::<Result<_, _>>()?;
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, &rest[2]).is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_path {
        (rest[1].clone(), &rest[2..])
    } else {
        (String::new(), &rest[..])
    };
    let plural = rest.first().ok_or(ApiError::NoRoute)?;
    let info = resources::find(group, version, plural).ok_or(ApiError::NoRoute)?;
    let name = rest.get(1).cloned().unwrap_or_default();
    let subresource = rest.get(2).cloned().unwrap_or_default();
    if !subresource.is_empty() && !info.subresources.iter().any(|(s, _, _)| *s == subresource) {
        return Err(ApiError::NoRoute);
    }
    if rest.len() > 3 && subresource != "proxy" {
        return Err(ApiError::NoRoute);
    }
    if name.is_empty() && rest.len() > 1 {
        return Err(ApiError::NoRoute);
    }
    check_segment("Namespace", &namespace)?;
    check_segment("Name", &name)?;
    Ok(Route::Resource(ResourceRequest {
        info,
        namespace,
        name,
        subresource,
        rest: rest.get(3..).map(|r| r.join("/")).unwrap_or_default(),
    }))
}

/// The Kubernetes verb of a resource request.
pub fn verb(method: &Method, req: &ResourceRequest, query: &Query) -> Result<Verb, ApiError> {
    let connect = is_connect(&req.subresource);
    Ok(match *method {
        Method::GET if connect => Verb::Get,
        Method::GET if req.name.is_empty() && query.flag("watch") => Verb::Watch,
        Method::GET if req.name.is_empty() => Verb::List,
        Method::GET => Verb::Get,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE if req.name.is_empty() => Verb::DeleteCollection,
        Method::DELETE => Verb::Delete,
        _ => return Err(ApiError::MethodNotAllowed),
    })
}

/// Whether a subresource is a streaming upgrade (Kubernetes' `CONNECT` kind): its GET is
/// authorized as `get`, never `list`.
pub fn is_connect(subresource: &str) -> bool {
    matches!(subresource, "portforward" | "reverseforward" | "proxy")
}

/// RBAC attributes of a resource request.
pub fn attributes(verb: &Verb, req: &ResourceRequest) -> Attributes {
    Attributes {
        verb: verb.clone(),
        resource: Some(ResourceAttrs {
            group: req.info.group.to_string(),
            resource: req.info.plural.to_string(),
            subresource: req.subresource.clone(),
            namespace: req.namespace.clone(),
            name: req.name.clone(),
        }),
        path: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourceRequest {
        match route(path) {
            Ok(Route::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        let r = res("/api/v1/namespaces/default/pods/web/portforward");
        assert_eq!(
            (
                r.info.plural,
                r.namespace.as_str(),
                r.name.as_str(),
                r.subresource.as_str()
            ),
            ("pods", "default", "web", "portforward")
        );
        let r = res("/api/v1/namespaces/default/pods/web/reverseforward");
        assert_eq!(
            (r.info.plural, r.subresource.as_str()),
            ("pods", "reverseforward")
        );
        let q = Query::parse(Some("ports=9000"));
        assert_eq!(verb(&Method::GET, &r, &q).expect("verb").as_str(), "get");
        assert_eq!(
            verb(&Method::POST, &r, &q).expect("verb").as_str(),
            "create"
        );
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.info.plural, r.namespace.as_str(), r.name.as_str()),
            ("namespaces", "", "kube-system")
        );
        let r = res("/api/v1/namespaces/x/status");
        assert_eq!(
            (r.info.plural, r.name.as_str(), r.subresource.as_str()),
            ("namespaces", "x", "status")
        );
        let r = res("/api/v1/pods");
        assert_eq!((r.info.plural, r.namespace.as_str()), ("pods", ""));
        let r = res("/apis/apps/v1/namespaces/d/deployments/x/scale");
        assert_eq!((r.info.group, r.subresource.as_str()), ("apps", "scale"));
        let r = res("/api/v1/nodes/n1/proxy/portForward/default/web");
        assert_eq!(
            (r.name.as_str(), r.subresource.as_str(), r.rest.as_str()),
            ("n1", "proxy", "portForward/default/web")
        );
        let r = res("/proxy/nodes/n1/portForward/default/web");
        assert_eq!(
            (r.info.plural, r.rest.as_str()),
            ("nodes", "portForward/default/web")
        );
        assert!(matches!(route("/api/v1"), Ok(Route::NonResource)));
        assert!(matches!(route("/version"), Ok(Route::NonResource)));
        assert!(matches!(route("/api/v1/widgets"), Err(ApiError::NoRoute)));
        assert!(matches!(
            route("/api/v1/namespaces/d/pods/x/exec"),
            Err(ApiError::NoRoute)
        ));
        assert_eq!(res("/api/v1/namespaces/d/pods/a%2Eb").name, "a.b");
    }

    /// Regression (issue 18, fuzz target route): a percent-encoded `/` (or `%`, `.`, `..`) in
    /// a name or namespace is refused like Kubernetes does, instead of reaching the store key
    /// `plural/namespace/name`, where (`a`, `b/c`) and (`a/b`, `c`) would be the same key.
    #[test]
    fn names_that_are_not_path_segments_are_refused() {
        for p in [
            "/api/v1/namespaces/default/pods/a%2Fb",
            "/api/v1/namespaces/a%2Fb/pods/c",
            "/api/v1/namespaces/a%2Fb/pods",
            "/api/v1/namespaces/default/pods/%2E%2E",
            "/api/v1/namespaces/%2E/pods/x",
            "/api/v1/namespaces/default/pods/100%25",
            "/api/v1/nodes/n%2F1/proxy/x",
            "/proxy/nodes/n%2F1/x",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/a%2F..",
        ] {
            match route(p) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(m.contains("parameter invalid"), "{p}: {m}")
                }
                other => panic!("{p}: {other:?}"),
            }
        }
        // RBAC names with ':' and dotted names still route.
        assert_eq!(
            res("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node").name,
            "system:node"
        );
        assert_eq!(res("/api/v1/namespaces/d/pods/a.b.c").name, "a.b.c");
    }
}
