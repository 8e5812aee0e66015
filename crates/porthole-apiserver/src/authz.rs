//! RBAC authorization, evaluated on every request.
//!
//! Bindings and roles come from the store (`rbac.authorization.k8s.io/v1` objects) and are
//! combined with built-in rules that match Kubernetes' bootstrap policy in spirit:
//! `system:masters` may do anything, `system:nodes` gets exactly what the node agent needs,
//! `system:bootstrappers` (bootstrap tokens) may only ask for node certificates,
//! `system:authenticated` may read discovery, version and health, and anyone may read
//! `kube-public/cluster-info`.
//!
//! Node identities are further scoped by [`node_restriction`] (Kubernetes' Node authorizer
//! and NodeRestriction admission): only their own Node and Lease, only pods bound to them. Matching follows
//! `k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac`: verbs, apiGroups, resources
//! (`res`, `res/sub`, `*`, `res/*`, `*/sub`), resourceNames and nonResourceURLs (`*` suffix).

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::error::{ApiError, Target};
use crate::request::{attributes, Attributes, ResourceRequest, Verb};
use crate::store::Store;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn path_rule(verbs: &[&str], paths: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        non_resource_urls: Some(paths.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// Built-in cluster-wide rules granted to a group.
fn builtin_rules(group: &str) -> Vec<PolicyRule> {
    match group {
        "system:masters" => vec![rule(&["*"], &["*"], &["*"]), path_rule(&["*"], &["*"])],
        "system:nodes" => vec![
            rule(
                &["get", "list", "watch", "create", "update", "patch"],
                &[""],
                &["nodes", "nodes/status"],
            ),
            // Its own tunnel only (checked again by `tunnel::serve`).
            rule(&["create"], &[""], &["nodes/tunnel"]),
            rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
            rule(&["get", "update", "patch"], &[""], &["pods/status"]),
            rule(
                &["create", "update", "patch"],
                &["", "events.k8s.io"],
                &["events"],
            ),
            rule(
                &["get", "create", "update", "patch", "delete"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            // Renewing its own certificates (checked by `csr::admit` and `read_restriction`).
            rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            ),
        ],
        // Kubernetes' system:node-bootstrapper, scoped further by `csr::admit` and
        // `csr::read_restriction` to the requester's own node certificate requests.
        "system:bootstrappers" => vec![rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        )],
        "system:authenticated" => vec![path_rule(
            &["get"],
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/version",
                "/version/",
                "/healthz",
                "/healthz/*",
                "/livez",
                "/livez/*",
                "/readyz",
                "/readyz/*",
                "/openapi",
                "/openapi/*",
            ],
        )],
        "system:unauthenticated" => vec![path_rule(
            &["get"],
            &["/version", "/version/", "/healthz", "/livez", "/readyz"],
        )],
        _ => Vec::new(),
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, a.verb.as_str()) {
        return false;
    }
    match &a.resource {
        Some(r) => {
            let groups = rule.api_groups.as_deref().unwrap_or(&[]);
            if !has(groups, &r.group) {
                return false;
            }
            let resources = rule.resources.as_deref().unwrap_or(&[]);
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let res_ok = resources.iter().any(|x| {
                x == "*"
                    || *x == combined
                    || (!r.subresource.is_empty()
                        && (*x == format!("{}/*", r.resource)
                            || *x == format!("*/{}", r.subresource)))
            });
            if !res_ok {
                return false;
            }
            match rule.resource_names.as_deref() {
                None | Some([]) => true,
                Some(names) => !r.name.is_empty() && names.contains(&r.name),
            }
        }
        None => rule
            .non_resource_urls
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| a.path.starts_with(prefix))
            }),
    }
}

fn subject_matches(s: &Subject, user: &UserInfo) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
    serde_json::from_value(v).ok()
}

/// Built-in rules that hold in one namespace only: kubeadm's
/// `kubeadm:bootstrap-signer-clusterinfo` Role, which lets anyone (the joining node has no
/// credentials yet) read `kube-public/cluster-info`.
fn builtin_namespaced_rules(group: &str, namespace: &str) -> Vec<PolicyRule> {
    match (group, namespace) {
        ("system:unauthenticated" | "system:authenticated", "kube-public") => {
            let mut r = rule(&["get"], &[""], &["configmaps"]);
            r.resource_names = Some(vec![porthole_bootstrap::token::CLUSTER_INFO_NAME.into()]);
            vec![r]
        }
        _ => Vec::new(),
    }
}

/// Decide; `Ok(())` when allowed.
pub fn authorize(store: &dyn Store, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
    if user
        .groups
        .iter()
        .any(|g| builtin_rules(g).iter().any(|r| rule_allows(r, a)))
    {
        return Ok(());
    }
    let namespace = a
        .resource
        .as_ref()
        .map(|r| r.namespace.as_str())
        .unwrap_or("");
    if user.groups.iter().any(|g| {
        builtin_namespaced_rules(g, namespace)
            .iter()
            .any(|r| rule_allows(r, a))
    }) {
        return Ok(());
    }
    if allowed_by_store(store, user, a)? {
        return Ok(());
    }
    Err(forbidden(user, a))
}

fn allowed_by_store(store: &dyn Store, user: &UserInfo, a: &Attributes) -> Result<bool, ApiError> {
    let internal = |e| ApiError::Internal(format!("authorizer could not read RBAC objects: {e}"));
    let cluster_role_rules = |name: &str| -> Result<Vec<PolicyRule>, ApiError> {
        Ok(store
            .get(&format!("clusterroles//{name}"))
            .map_err(internal)?
            .and_then(typed::<ClusterRole>)
            .and_then(|r| r.rules)
            .unwrap_or_default())
    };
    let (crbs, _) = store.list("clusterrolebindings/").map_err(internal)?;
    for b in crbs.into_iter().filter_map(typed::<ClusterRoleBinding>) {
        let subjects = b.subjects.unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user)) || b.role_ref.kind != "ClusterRole" {
            continue;
        }
        if cluster_role_rules(&b.role_ref.name)?
            .iter()
            .any(|r| rule_allows(r, a))
        {
            return Ok(true);
        }
    }
    let ns = a
        .resource
        .as_ref()
        .map(|r| r.namespace.as_str())
        .unwrap_or("");
    if ns.is_empty() {
        return Ok(false);
    }
    let (rbs, _) = store
        .list(&format!("rolebindings/{ns}/"))
        .map_err(internal)?;
    for b in rbs.into_iter().filter_map(typed::<RoleBinding>) {
        let subjects = b.subjects.unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user)) {
            continue;
        }
        let rules = match b.role_ref.kind.as_str() {
            "ClusterRole" => cluster_role_rules(&b.role_ref.name)?,
            "Role" => store
                .get(&format!("roles/{ns}/{}", b.role_ref.name))
                .map_err(internal)?
                .and_then(typed::<Role>)
                .and_then(|r| r.rules)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if rules.iter().any(|r| rule_allows(r, a)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The node a node identity (`system:node:NAME` in `system:nodes`, and not also
/// `system:masters`) belongs to.
pub(crate) fn node_of(user: &UserInfo) -> Option<&str> {
    let is_node = user.groups.iter().any(|g| g == "system:nodes")
        && !user.groups.iter().any(|g| g == "system:masters");
    user.name
        .strip_prefix("system:node:")
        .filter(|n| is_node && !n.is_empty())
}

/// The `X` of a field selector requiring `spec.nodeName=X` (or `==`); `None` when the
/// selector does not pin the node.
fn selected_node(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|part| {
        let (field, value) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        (field.trim() == "spec.nodeName").then(|| value.trim())
    })
}

/// Kubernetes' Node authorizer and NodeRestriction for a node identity: it may write only its
/// own Node object and its own Lease (`kube-node-lease/NAME`), read and write only pods bound
/// to it (a pod list or watch must select `spec.nodeName=NAME`), and nothing beyond its
/// built-in rules (no pod creation, port-forward or proxy: RBAC already refuses those).
pub fn node_restriction(
    store: &dyn Store,
    user: &UserInfo,
    verb: &Verb,
    req: &ResourceRequest,
    query: &crate::http_util::Query,
) -> Result<(), ApiError> {
    let Some(node_name) = node_of(user) else {
        return Ok(());
    };
    let attrs = attributes(verb, req);
    let deny = |why: &str| {
        let ApiError::Forbidden { message, target } = forbidden(user, &attrs) else {
            return ApiError::Internal("forbidden() returned another error".into());
        };
        ApiError::Forbidden {
            message: format!("{message}: {why}"),
            target,
        }
    };
    let reading = matches!(verb, Verb::Get | Verb::List | Verb::Watch);
    match req.info.plural {
        "nodes" if reading => Ok(()),
        "nodes" => {
            if req.name.is_empty() && *verb == Verb::Create {
                // The name is in the body: checked by `node_create_restriction`.
                return Ok(());
            }
            if req.name != node_name {
                return Err(deny(&format!(
                    "node \"{node_name}\" is not allowed to modify node \"{}\"",
                    req.name
                )));
            }
            Ok(())
        }
        "leases" => {
            let own = req.namespace == "kube-node-lease"
                && (req.name == node_name || (req.name.is_empty() && *verb == Verb::Create));
            if own {
                Ok(())
            } else {
                Err(deny(&format!(
                    "node \"{node_name}\" may only use its own lease kube-node-lease/{node_name}"
                )))
            }
        }
        "pods" if req.name.is_empty() && matches!(verb, Verb::List | Verb::Watch) => {
            match selected_node(query.get("fieldSelector").unwrap_or("")) {
                Some(n) if n == node_name => Ok(()),
                _ => Err(deny(&format!(
                    "node \"{node_name}\" can only {verb} pods with fieldSelector spec.nodeName={node_name}"
                ))),
            }
        }
        "pods" => {
            let key = req.info.key(&req.namespace, &req.name);
            let pod = store.get(&key).map_err(|e| {
                ApiError::Internal(format!("node restriction could not read the pod: {e}"))
            })?;
            match pod {
                // A missing pod answers 404 in the handler (the agent relies on that to stop
                // writing the status of a pod that is gone).
                None if !req.name.is_empty() => Ok(()),
                Some(p)
                    if p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node_name) =>
                {
                    Ok(())
                }
                _ if reading => Err(deny(&format!(
                    "node \"{node_name}\" can only read pods bound to it"
                ))),
                _ => Err(deny(&format!(
                    "node \"{node_name}\" can only modify pods bound to it"
                ))),
            }
        }
        _ => Ok(()),
    }
}

/// The body half of NodeRestriction: a node identity may create only the Node object named
/// after itself.
pub fn node_create_restriction(
    user: &UserInfo,
    verb: &Verb,
    req: &ResourceRequest,
    body_name: Option<&str>,
) -> Result<(), ApiError> {
    let Some(node_name) = node_of(user) else {
        return Ok(());
    };
    if *verb != Verb::Create
        || !matches!(req.info.plural, "nodes" | "leases")
        || body_name == Some(node_name)
    {
        return Ok(());
    }
    let target = body_name.unwrap_or("");
    let ApiError::Forbidden { message, target: t } = forbidden(user, &attributes(verb, req)) else {
        return Err(ApiError::Internal(
            "forbidden() returned another error".into(),
        ));
    };
    Err(ApiError::Forbidden {
        message: format!(
            "{message}: node \"{node_name}\" is not allowed to create {} \"{target}\"",
            req.info.singular
        ),
        target: t,
    })
}

/// Kubernetes' exact denial message and Status details.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let Some(r) = &a.resource else {
        return ApiError::Forbidden {
            message: format!(
                "forbidden: User \"{}\" cannot {} path \"{}\"",
                user.name, a.verb, a.path
            ),
            target: Target::default(),
        };
    };
    let qualified = if r.group.is_empty() {
        r.resource.clone()
    } else {
        format!("{}.{}", r.resource, r.group)
    };
    let subject = if r.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{}\" is forbidden", r.name)
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", r.namespace)
    };
    ApiError::Forbidden {
        message: format!(
            "{subject}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, a.verb, r.group
        ),
        target: Target {
            group: r.group.clone(),
            resource: r.resource.clone(),
            name: r.name.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ResourceAttrs;

    fn bob() -> UserInfo {
        UserInfo {
            name: "bob".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
        }
    }

    #[test]
    fn denial_message_forms() {
        let a = Attributes {
            verb: Verb::Create,
            resource: Some(ResourceAttrs {
                group: String::new(),
                resource: "pods".into(),
                subresource: "portforward".into(),
                namespace: "default".into(),
                name: "web".into(),
            }),
            path: String::new(),
        };
        let ApiError::Forbidden { message, .. } = forbidden(&bob(), &a) else {
            panic!("not forbidden")
        };
        assert_eq!(
            message,
            "pods \"web\" is forbidden: User \"bob\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"default\""
        );
        let a = Attributes {
            verb: Verb::List,
            resource: Some(ResourceAttrs {
                resource: "nodes".into(),
                ..Default::default()
            }),
            path: String::new(),
        };
        let ApiError::Forbidden { message, .. } = forbidden(&bob(), &a) else {
            panic!("not forbidden")
        };
        assert_eq!(
            message,
            "nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn rule_matching() {
        let a = |verb: Verb, sub: &str, name: &str| Attributes {
            verb,
            resource: Some(ResourceAttrs {
                resource: "pods".into(),
                subresource: sub.into(),
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            }),
            path: String::new(),
        };
        let mut r = rule(&["create"], &[""], &["pods/portforward"]);
        assert!(rule_allows(&r, &a(Verb::Create, "portforward", "web")));
        assert!(!rule_allows(&r, &a(Verb::Get, "portforward", "web")));
        assert!(!rule_allows(&r, &a(Verb::Create, "", "web")));
        r.resource_names = Some(vec!["db".into()]);
        assert!(!rule_allows(&r, &a(Verb::Create, "portforward", "web")));
        assert!(rule_allows(&r, &a(Verb::Create, "portforward", "db")));
        let nodes = builtin_rules("system:nodes");
        assert!(nodes
            .iter()
            .any(|r| rule_allows(r, &a(Verb::Patch, "status", "x"))));
        assert!(!nodes
            .iter()
            .any(|r| rule_allows(r, &a(Verb::Create, "portforward", "x"))));
        assert!(!nodes
            .iter()
            .any(|r| rule_allows(r, &a(Verb::Create, "", "x"))));
    }

    /// Reverse forwarding is its own subresource: a role that grants port-forward (even
    /// `pods/*` verbs on `portforward` only) does not grant it; admins and `pods/*` do; nodes
    /// never.
    #[test]
    fn reverseforward_needs_its_own_rule() {
        let a = |verb: Verb, sub: &str| Attributes {
            verb,
            resource: Some(ResourceAttrs {
                resource: "pods".into(),
                subresource: sub.into(),
                namespace: "dev".into(),
                name: "web".into(),
                ..Default::default()
            }),
            path: String::new(),
        };
        let forward_only = rule(&["get", "create"], &[""], &["pods", "pods/portforward"]);
        assert!(rule_allows(&forward_only, &a(Verb::Create, "portforward")));
        assert!(!rule_allows(
            &forward_only,
            &a(Verb::Create, "reverseforward")
        ));
        assert!(!rule_allows(&forward_only, &a(Verb::Get, "reverseforward")));
        let reverse = rule(&["create"], &[""], &["pods/reverseforward"]);
        assert!(rule_allows(&reverse, &a(Verb::Create, "reverseforward")));
        assert!(!rule_allows(&reverse, &a(Verb::Create, "portforward")));
        assert!(rule_allows(
            &rule(&["create"], &[""], &["pods/*"]),
            &a(Verb::Create, "reverseforward")
        ));
        assert!(builtin_rules("system:masters")
            .iter()
            .any(|r| rule_allows(r, &a(Verb::Create, "reverseforward"))));
        assert!(!builtin_rules("system:nodes")
            .iter()
            .any(|r| rule_allows(r, &a(Verb::Create, "reverseforward"))));
    }
}
