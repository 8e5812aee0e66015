//! API errors and their one mapping to `metav1.Status` responses.
//!
//! Every failure a handler can produce is an [`ApiError`]; [`ApiError::into_response`] is the
//! only place that chooses HTTP status codes, `reason`s and message forms, which follow
//! Kubernetes' `k8s.io/apimachinery/pkg/api/errors` exactly so clients (kubectl's `NotFound`
//! checks, kube-rs' `ErrorResponse`) behave as against a real API server.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use serde_json::{json, Value};

use crate::http_util::{full, Body};
use crate::store::StoreError;

/// One cause inside a 422 Invalid Status (`details.causes[]`).
#[derive(Debug, Clone)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// Human text for this field.
    pub message: String,
    /// JSON path of the field, e.g. `metadata.name`.
    pub field: String,
}

/// The resource an error is about, for `details` and message forms.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// API group ("" for core).
    pub group: String,
    /// Plural resource name (`pods`); Kubernetes puts it in `details.kind`.
    pub resource: String,
    /// Object name, empty for collections.
    pub name: String,
}

impl Target {
    /// `pods "web"` or `pods.apps "web"`: Kubernetes' qualified resource form.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    // The message forms below are both the Status `message` clients show and the `Display`
    // that logs show, so an operator reading a log line learns which object it was about.

    /// `pods "web" not found`, or `pods not found` for a collection.
    fn not_found(&self) -> String {
        if self.name.is_empty() {
            format!("{} not found", self.qualified())
        } else {
            format!("{} \"{}\" not found", self.qualified(), self.name)
        }
    }

    /// `pods "web" already exists`.
    fn already_exists(&self) -> String {
        format!("{} \"{}\" already exists", self.qualified(), self.name)
    }

    /// Kubernetes' stale-`resourceVersion` text, which also says how to recover.
    fn conflict(&self) -> String {
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            self.qualified(),
            self.name
        )
    }
}

/// `Pod "web" is invalid: field: message`, the causes in brackets when there are several.
fn invalid_message(kind: &str, name: &str, causes: &[Cause]) -> String {
    let list: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let joined = if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    };
    format!("{kind} \"{name}\" is invalid: {joined}")
}

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 `pods "x" not found`.
    #[error("{}", .0.not_found())]
    NotFound(Target),
    /// 409 `pods "x" already exists`.
    #[error("{}", .0.already_exists())]
    AlreadyExists(Target),
    /// 409 Conflict on a stale resourceVersion.
    #[error("{}", .0.conflict())]
    Conflict(Target),
    /// 422 with field causes.
    #[error("{}", invalid_message(kind, name, causes))]
    Invalid {
        /// Kind (singular, e.g. `Pod`) used in the message.
        kind: String,
        /// The object name.
        name: String,
        /// Field errors.
        causes: Vec<Cause>,
    },
    /// 400 with a free message.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401.
    #[error("unauthorized")]
    Unauthorized,
    /// 403 with the full Kubernetes message already formed.
    #[error("forbidden: {message}")]
    Forbidden {
        /// Complete message (`pods "web" is forbidden: User ...`).
        message: String,
        /// Resource and name for details.
        target: Target,
    },
    /// 409 Conflict for a failed delete precondition (uid), message already formed.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 404 for paths that are not API routes.
    #[error("page not found")]
    NoRoute,
    /// 410 Gone on a watch too far back.
    #[error("gone: {0}")]
    Gone(String),
    /// 413 request entity too large.
    #[error("request too large")]
    TooLarge(String),
    /// 415 unsupported patch type or body type.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 406 for Accept types we cannot produce.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// 503 (node unreachable, store down) with the message shown to the user.
    #[error("service unavailable: {0}")]
    ServiceUnavailable(String),
    /// 500 with the message shown to the user.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Convert a storage error about `target`.
    pub fn from_store(e: StoreError, target: Target) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound(target),
            StoreError::AlreadyExists => ApiError::AlreadyExists(target),
            StoreError::Conflict => ApiError::Conflict(target),
            StoreError::Gone { requested, oldest } => {
                ApiError::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            e @ StoreError::Unavailable { .. } => ApiError::ServiceUnavailable(e.to_string()),
            e @ StoreError::Backend { .. } => ApiError::Internal(e.to_string()),
        }
    }

    /// The `metav1.Status` object and HTTP status for this error. This is the ONE function
    /// that decides codes, reasons and message forms.
    pub fn status(&self) -> (StatusCode, Value) {
        let details = |t: &Target| {
            let mut d = serde_json::Map::new();
            if !t.name.is_empty() {
                d.insert("name".into(), json!(t.name));
            }
            if !t.group.is_empty() {
                d.insert("group".into(), json!(t.group));
            }
            if !t.resource.is_empty() {
                d.insert("kind".into(), json!(t.resource));
            }
            Value::Object(d)
        };
        let (code, reason, message, details) = match self {
            ApiError::NotFound(t) => (
                StatusCode::NOT_FOUND,
                "NotFound",
                t.not_found(),
                Some(details(t)),
            ),
            ApiError::AlreadyExists(t) => (
                StatusCode::CONFLICT,
                "AlreadyExists",
                t.already_exists(),
                Some(details(t)),
            ),
            ApiError::Conflict(t) => (
                StatusCode::CONFLICT,
                "Conflict",
                t.conflict(),
                Some(details(t)),
            ),
            ApiError::Invalid { kind, name, causes } => {
                let message = invalid_message(kind, name, causes);
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    message,
                    Some(json!({"name": name, "kind": kind, "causes": causes})),
                )
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BadRequest", m.clone(), None),
            ApiError::PreconditionFailed(m) => (StatusCode::CONFLICT, "Conflict", m.clone(), None),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized".to_string(),
                None,
            ),
            ApiError::Forbidden { message, target } => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                message.clone(),
                Some(details(target)),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".to_string(),
                None,
            ),
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".to_string(),
                None,
            ),
            ApiError::Gone(m) => (StatusCode::GONE, "Expired", m.clone(), None),
            ApiError::TooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                m.clone(),
                None,
            ),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                m.clone(),
                None,
            ),
            ApiError::NotAcceptable(m) => {
                (StatusCode::NOT_ACCEPTABLE, "NotAcceptable", m.clone(), None)
            }
            ApiError::ServiceUnavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                m.clone(),
                None,
            ),
            ApiError::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                m.clone(),
                None,
            ),
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        });
        if let Some(d) = details {
            status["details"] = d;
        }
        (code, status)
    }

    /// The HTTP response carrying [`ApiError::status`].
    pub fn into_response(self) -> Response<Body> {
        let (code, status) = self.status();
        let body = serde_json::to_vec(&status).unwrap_or_default();
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = code;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_message_forms() {
        let t = |g: &str, r: &str, n: &str| Target {
            group: g.into(),
            resource: r.into(),
            name: n.into(),
        };
        let (code, s) = ApiError::NotFound(t("", "pods", "x")).status();
        assert_eq!(
            (code.as_u16(), s["message"].as_str()),
            (404, Some("pods \"x\" not found"))
        );
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["kind"], "pods");
        let (code, s) = ApiError::AlreadyExists(t("apps", "deployments", "d")).status();
        assert_eq!(
            (code.as_u16(), s["message"].as_str()),
            (409, Some("deployments.apps \"d\" already exists"))
        );
        let (code, s) = ApiError::Invalid {
            kind: "Pod".into(),
            name: "Bad".into(),
            causes: vec![Cause {
                reason: "FieldValueInvalid",
                message: "Invalid value: \"Bad\": nope".into(),
                field: "metadata.name".into(),
            }],
        }
        .status();
        assert_eq!(code.as_u16(), 422);
        assert_eq!(
            s["message"],
            "Pod \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": nope"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        let (code, s) = ApiError::Gone("too old resource version: 1 (5)".into()).status();
        assert_eq!(
            (code.as_u16(), s["reason"].as_str()),
            (410, Some("Expired"))
        );
        assert_eq!(
            ApiError::NotFound(t("", "pods", "web")).to_string(),
            "pods \"web\" not found",
            "logs name the object, as the Status message does"
        );
        let (code, s) = ApiError::Unauthorized.status();
        assert_eq!(
            (code.as_u16(), s["message"].as_str()),
            (401, Some("Unauthorized"))
        );
    }
}
