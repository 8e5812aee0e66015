//! `certificates.k8s.io/v1` CertificateSigningRequests for joining nodes: what a bootstrap or
//! node identity may ask for, and the controller that approves and signs it
//! (kube-controller-manager's `csrapproving` and `csrsigning`, with the cluster CA given by
//! `--cluster-signing-cert-file` / `--cluster-signing-key-file`).
//!
//! Two signers are served, with Kubernetes' rules for each:
//! - `kubernetes.io/kube-apiserver-client-kubelet`: subject exactly `O=system:nodes,
//!   CN=system:node:<name>`, no subject alternative names, usages `client auth` (plus
//!   `digital signature`, `key encipherment`);
//! - `kubernetes.io/kubelet-serving`: the same subject, DNS names and IP addresses only (at
//!   least one), usages `server auth` (plus the same two).
//!
//! The request is network input: it is bounded ([`MAX_REQUEST_BYTES`]), must be exactly one
//! PEM `CERTIFICATE REQUEST` whose signature verifies with its own key, and may carry no
//! attribute but the extension request and no extension but SAN, key usage and extended key
//! usage (the issued certificate's extensions are ours, never copied from the request).
//!
//! On create ([`admit`]) the requester's identity is written into `spec.username/groups/uid`
//! as Kubernetes does; a bootstrap identity (`system:bootstrappers`) or a node renewing its own
//! certificate may create only such requests (anything else is 403). The controller pass
//! ([`approve_and_sign`]) approves those (condition `Approved`, reason `AutoApproved`) and signs
//! every approved request for the two signers: validity one year (or `expirationSeconds`,
//! at least 10 minutes), the PEM chain (certificate, then CA) in `status.certificate`.

pub(crate) mod request;
mod signer;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::HeaderMap;
use serde_json::{json, Value};

use crate::authn::UserInfo;
use crate::error::{ApiError, Target};
use crate::http_util::Query;
use crate::request::Verb;
use crate::resources;
use crate::store::{resource_version, Store};
use crate::State;

pub use porthole_bootstrap::{SIGNER_KUBELET_CLIENT, SIGNER_KUBELET_SERVING};
pub use request::{
    check_well_formed, validate_node_request, NodeRequest, MAX_REQUEST_BYTES, MAX_SANS,
};
pub use signer::{Signer, DEFAULT_VALIDITY, MIN_VALIDITY};

use request::{request_bytes, validate_stored};

/// Organization every node certificate must carry.
pub(crate) const NODES_GROUP: &str = "system:nodes";
/// Common name prefix of node certificates.
pub(crate) const NODE_CN_PREFIX: &str = "system:node:";

/// Who is asking, for the CSR rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester<'a> {
    /// A bootstrap token identity (`system:bootstrappers`).
    Bootstrap,
    /// A node identity renewing its own certificates.
    Node(&'a str),
    /// Anyone else (admins): RBAC alone decides.
    Other,
}

/// Classify `user`. `system:masters` is never restricted.
pub fn requester(user: &UserInfo) -> Requester<'_> {
    let in_group = |g: &str| user.groups.iter().any(|x| x == g);
    if in_group("system:masters") {
        return Requester::Other;
    }
    if in_group(porthole_bootstrap::token::GROUP)
        && user
            .name
            .starts_with(porthole_bootstrap::token::USER_PREFIX)
    {
        return Requester::Bootstrap;
    }
    match user.name.strip_prefix(NODE_CN_PREFIX) {
        Some(name) if in_group(NODES_GROUP) && !name.is_empty() => Requester::Node(name),
        _ => Requester::Other,
    }
}

fn csr_target(name: &str) -> Target {
    Target {
        group: "certificates.k8s.io".into(),
        resource: "certificatesigningrequests".into(),
        name: name.to_string(),
    }
}

fn forbidden(user: &UserInfo, why: &str) -> ApiError {
    ApiError::Forbidden {
        message: format!(
            "certificatesigningrequests.certificates.k8s.io is forbidden: User \"{}\" may only request node certificates: {why}",
            user.name
        ),
        target: csr_target(""),
    }
}

/// Create-time admission: writes the requester into `spec` and, for bootstrap and node
/// identities, checks the request against the node signers' rules. Returns the body to
/// create, as JSON.
pub fn admit(
    state: &State,
    user: &UserInfo,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let mut csr = crate::body::parse_body_as(headers, body, "CertificateSigningRequest")?;
    if !csr.is_object() {
        return Err(ApiError::BadRequest(
            "the body of the request must be a CertificateSigningRequest object".into(),
        ));
    }
    if !csr.get("spec").is_some_and(Value::is_object) {
        csr["spec"] = json!({});
    }
    // Kubernetes ignores what the client claims and records who really asked.
    csr["spec"]["username"] = json!(user.name);
    csr["spec"]["groups"] = json!(user.groups);
    csr["spec"]["uid"] = json!(user.uid);
    if let Some(spec) = csr.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("extra");
    }
    let who = requester(user);
    if who != Requester::Other {
        let checked = validate_stored(&csr).map_err(|why| forbidden(user, &why))?;
        if let Requester::Node(own) = who {
            if checked.node_name != own {
                return Err(forbidden(
                    user,
                    &format!(
                        "node \"{own}\" may only request certificates for itself, not for node \"{}\"",
                        checked.node_name
                    ),
                ));
            }
        }
        if state.signer.is_none() {
            return Err(ApiError::ServiceUnavailable(
                "this API server cannot sign node certificates: start it with --cluster-signing-cert-file and --cluster-signing-key-file (the cluster CA)".into(),
            ));
        }
    }
    serde_json::to_vec(&csr).map_err(|e| ApiError::Internal(format!("encode the CSR: {e}")))
}

/// Bootstrap and node identities may read only their own requests: `get` of one whose
/// `spec.username` is theirs, and `list`/`watch` only with `fieldSelector=metadata.name=<one of
/// theirs>` (how a joining node waits for its certificate).
pub fn read_restriction(
    store: &dyn Store,
    user: &UserInfo,
    verb: &Verb,
    req: &crate::request::ResourceRequest,
    query: &Query,
) -> Result<(), ApiError> {
    if req.info.plural != "certificatesigningrequests" || requester(user) == Requester::Other {
        return Ok(());
    }
    let name = match verb {
        Verb::Get => req.name.clone(),
        Verb::List | Verb::Watch => {
            let selector = query.get("fieldSelector").unwrap_or("");
            match selected_name(selector) {
                Some(n) => n,
                None => {
                    return Err(forbidden(
                        user,
                        "list and watch need fieldSelector=metadata.name=<your request's name>",
                    ))
                }
            }
        }
        _ => return Ok(()),
    };
    let key = req.info.key("", &name);
    let stored = store
        .get(&key)
        .map_err(|e| ApiError::Internal(format!("reading the CSR for authorization: {e}")))?;
    match stored {
        // A missing object answers 404 (get) or an empty list (watch) in the handler.
        None => Ok(()),
        Some(c) if c.pointer("/spec/username").and_then(Value::as_str) == Some(&user.name) => {
            Ok(())
        }
        Some(_) => Err(forbidden(
            user,
            &format!("certificate signing request \"{name}\" was not created by you"),
        )),
    }
}

/// The `X` of a field selector that contains `metadata.name=X` (or `==`).
fn selected_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|part| {
        let (field, value) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        (field.trim() == "metadata.name" && !value.trim().is_empty())
            .then(|| value.trim().to_string())
    })
}

fn has_condition(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(ty)
                    && c.get("status").and_then(Value::as_str).unwrap_or("True") == "True"
            })
        })
}

fn push_condition(csr: &mut Value, ty: &str, reason: &str, message: &str) {
    let now = crate::time::now_rfc3339();
    let cond = json!({"type": ty, "status": "True", "reason": reason, "message": message,
                      "lastUpdateTime": now, "lastTransitionTime": now});
    if !csr.get("status").is_some_and(Value::is_object) {
        csr["status"] = json!({});
    }
    match csr
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        Some(list) => list.push(cond),
        None => csr["status"]["conditions"] = json!([cond]),
    }
}

/// Whether the requester recorded at create time may have this request approved
/// automatically.
fn auto_approval_message(csr: &Value, checked: &NodeRequest) -> Option<&'static str> {
    let user = UserInfo {
        name: csr
            .pointer("/spec/username")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        uid: String::new(),
        groups: csr
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let client = checked.signer == SIGNER_KUBELET_CLIENT;
    match requester(&user) {
        Requester::Bootstrap if client => {
            Some("Auto approving kubelet client certificate after SubjectAccessReview.")
        }
        Requester::Bootstrap => {
            Some("Auto approving kubelet serving certificate requested with a bootstrap token.")
        }
        Requester::Node(own) if own == checked.node_name && client => {
            Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
        }
        Requester::Node(own) if own == checked.node_name => {
            Some("Auto approving self kubelet serving certificate.")
        }
        _ => None,
    }
}

fn validity_of(csr: &Value) -> Duration {
    csr.pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_VALIDITY)
        .clamp(MIN_VALIDITY, DEFAULT_VALIDITY)
}

/// One controller pass over every CSR: approve what the rules allow, sign what is approved
/// (when this server has the cluster signing key), mark invalid approved requests Failed.
pub fn approve_and_sign(store: &dyn Store, signer: Option<&Arc<Signer>>) {
    let info = resources::RESOURCES
        .iter()
        .find(|r| r.plural == "certificatesigningrequests")
        .expect("certificatesigningrequests is in RESOURCES");
    let Ok((items, _)) = store.list(&info.prefix("")) else {
        return;
    };
    for mut csr in items {
        let issued = csr
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty());
        if issued || has_condition(&csr, "Denied") || has_condition(&csr, "Failed") {
            continue;
        }
        let signer_name = csr
            .pointer("/spec/signerName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if signer_name != SIGNER_KUBELET_CLIENT && signer_name != SIGNER_KUBELET_SERVING {
            continue;
        }
        let name = csr
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let key = info.key("", &name);
        let checked = validate_stored(&csr);
        let mut changed = false;
        if !has_condition(&csr, "Approved") {
            let Some(message) = checked
                .as_ref()
                .ok()
                .and_then(|c| auto_approval_message(&csr, c))
            else {
                continue;
            };
            push_condition(&mut csr, "Approved", "AutoApproved", message);
            changed = true;
            tracing::info!(csr = %name, signer = %signer_name, "approved a node certificate request");
        }
        if let Some(signer) = signer {
            match checked {
                Ok(c) => {
                    let signed = request_bytes(&csr)
                        .map_err(anyhow::Error::msg)
                        .and_then(|pem| signer.sign(&pem, &c, validity_of(&csr)));
                    match signed {
                        Ok(chain) => {
                            csr["status"]["certificate"] = json!(B64.encode(chain));
                            changed = true;
                            tracing::info!(csr = %name, node = %c.node_name, signer = %signer_name, "signed a node certificate");
                        }
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), csr = %name, "signing a node certificate failed");
                            push_condition(&mut csr, "Failed", "SignerError", &format!("{e:#}"));
                            changed = true;
                        }
                    }
                }
                Err(why) => {
                    push_condition(&mut csr, "Failed", "SignerValidationFailure", &why);
                    changed = true;
                }
            }
        }
        if changed {
            let rv = resource_version(&csr);
            if let Some(m) = csr.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if let Err(e) = store.update(&key, csr, Some(rv)) {
                tracing::debug!(error = %e, csr = %name, "updating a CSR raced; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_names() {
        assert_eq!(
            selected_name("metadata.name=csr-abc"),
            Some("csr-abc".into())
        );
        assert_eq!(selected_name("a=b, metadata.name==x"), Some("x".into()));
        assert_eq!(selected_name("metadata.name!=x"), None);
        assert_eq!(selected_name("metadata.name="), None);
        assert_eq!(selected_name(""), None);
    }
}
