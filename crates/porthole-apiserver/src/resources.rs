//! The resources served: registry (names, kinds, scope, verbs), schema normalisation through
//! `k8s-openapi` types, defaulting and validation like Kubernetes.

use serde_json::{json, Map, Value};

use crate::error::{ApiError, Cause};
use crate::names::{is_label, is_subdomain};

/// One served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group ("" = core).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Plural (`pods`), also the store key prefix.
    pub plural: &'static str,
    /// Singular (`pod`).
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `log`, ...), with their kinds.
    pub subresources: &'static [(&'static str, &'static str, &'static [&'static str])],
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceInfo {
    /// `apiVersion` of the kind (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Verbs on the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        ALL_VERBS
    }

    /// Store key for an object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}/{}/{}", self.plural, namespace, name)
    }

    /// Store prefix for a list (all namespaces when `namespace` is empty).
    pub fn prefix(&self, namespace: &str) -> String {
        if namespace.is_empty() || !self.namespaced {
            format!("{}/", self.plural)
        } else {
            format!("{}/{}/", self.plural, namespace)
        }
    }
}

const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// Every served resource.
pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &[("status", "Namespace", STATUS_VERBS)],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &[
            ("status", "Pod", STATUS_VERBS),
            ("log", "Pod", &["get"]),
            ("portforward", "PodPortForwardOptions", &["create", "get"]),
            // porthole's reverse forwarding: its own subresource, so RBAC can allow
            // port-forward without it.
            (
                "reverseforward",
                "PodPortForwardOptions",
                &["create", "get"],
            ),
            ("binding", "Binding", &["create"]),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        subresources: &[("status", "Service", STATUS_VERBS)],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        subresources: &[
            ("status", "Node", STATUS_VERBS),
            (
                "proxy",
                "NodeProxyOptions",
                &["create", "delete", "get", "patch", "update"],
            ),
            // porthole's node tunnel (`porthole_proto::tunnel`): only nodes open it.
            ("tunnel", "Node", &["create"]),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        subresources: &[],
    },
    ResourceInfo {
        group: "certificates.k8s.io",
        version: "v1",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short_names: &["csr"],
        subresources: &[
            ("status", "CertificateSigningRequest", STATUS_VERBS),
            ("approval", "CertificateSigningRequest", STATUS_VERBS),
        ],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &[
            ("status", "Deployment", STATUS_VERBS),
            ("scale", "Scale", STATUS_VERBS),
        ],
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        subresources: &[],
    },
];

/// Look up a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource with this plural in the core group (used by controllers).
pub fn core(plural: &str) -> &'static ResourceInfo {
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .expect("controllers only ask for resources listed in RESOURCES")
}

/// Parse into the `k8s-openapi` type of the kind and back, which rejects wrongly typed fields
/// and drops unknown ones, so stored objects always have the real Kubernetes shape.
pub fn normalize(info: &ResourceInfo, mut obj: Value) -> Result<Value, ApiError> {
    use k8s_openapi::api::{
        apps::v1 as apps, certificates::v1 as certificates, coordination::v1 as coordination,
        core::v1 as core, rbac::v1 as rbac,
    };
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, String> {
        let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
        serde_json::to_value(t).map_err(|e| e.to_string())
    }
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "the body of the request was in an unknown format: expected a {} object",
            info.kind
        )));
    };
    map.insert("apiVersion".into(), json!(info.api_version()));
    map.insert("kind".into(), json!(info.kind));
    let result = match info.kind {
        "Namespace" => rt::<core::Namespace>(obj),
        "Pod" => rt::<core::Pod>(obj),
        "Service" => rt::<core::Service>(obj),
        "Node" => rt::<core::Node>(obj),
        "Event" => rt::<core::Event>(obj),
        "Secret" => rt::<core::Secret>(obj),
        "ConfigMap" => rt::<core::ConfigMap>(obj),
        "CertificateSigningRequest" => rt::<certificates::CertificateSigningRequest>(obj),
        "Deployment" => rt::<apps::Deployment>(obj),
        "Lease" => rt::<coordination::Lease>(obj),
        "Role" => rt::<rbac::Role>(obj),
        "ClusterRole" => rt::<rbac::ClusterRole>(obj),
        "RoleBinding" => rt::<rbac::RoleBinding>(obj),
        "ClusterRoleBinding" => rt::<rbac::ClusterRoleBinding>(obj),
        _ => Ok(obj),
    };
    result.map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })
}

/// The object under `key`, created (or replaced, when it is not an object) if needed.
/// `None` only when `v` itself is not an object.
fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let root = v.as_object_mut()?;
    if !root.get(key).is_some_and(Value::is_object) {
        root.insert(key.to_string(), Value::Object(Map::new()));
    }
    root.get_mut(key).and_then(Value::as_object_mut)
}

fn default_field(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Kubernetes' defaults for a pod spec (also used for Deployment templates).
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    default_field(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else {
            continue;
        };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
            default_field(c, "terminationMessagePolicy", json!("File"));
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let last = image.rsplit('/').next().unwrap_or("");
            let pull = if !last.contains(':') || last.ends_with(":latest") {
                "Always"
            } else {
                "IfNotPresent"
            };
            default_field(c, "imagePullPolicy", json!(pull));
            default_field(c, "resources", json!({}));
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default_field(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Apply create-time defaults for the kind.
pub fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    match info.kind {
        "Pod" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_pod_spec(spec);
            }
            if let Some(status) = obj_mut(obj, "status") {
                default_field(status, "phase", json!("Pending"));
                default_field(status, "qosClass", json!("BestEffort"));
            }
        }
        "Namespace" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_field(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = obj_mut(obj, "status") {
                default_field(status, "phase", json!("Active"));
            }
        }
        "Service" => {
            let Some(spec) = obj_mut(obj, "spec") else {
                return;
            };
            default_field(spec, "type", json!("ClusterIP"));
            default_field(spec, "sessionAffinity", json!("None"));
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default_field(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default_field(p, "targetPort", port);
                    }
                }
            }
            if spec.get("clusterIP").is_none_or(Value::is_null) {
                // Not a real allocator: a random address in the conventional service range,
                // shown by `kubectl get svc`; nothing routes to it.
                let n = rand::random::<u16>();
                let ip = format!("10.96.{}.{}", n >> 8, (n & 0xff).max(1));
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
        }
        "Secret" => fold_string_data(obj),
        "Deployment" => {
            let Some(spec) = obj_mut(obj, "spec") else {
                return;
            };
            default_field(spec, "replicas", json!(1));
            default_field(spec, "revisionHistoryLimit", json!(10));
            default_field(spec, "progressDeadlineSeconds", json!(600));
            default_field(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            if let Some(Value::Object(t)) = spec.get_mut("template") {
                if let Some(Value::Object(ps)) = t.get_mut("spec") {
                    default_pod_spec(ps);
                }
            }
        }
        _ => {}
    }
}

/// Kubernetes' Secret write path: `stringData` is a write-only convenience whose entries
/// replace the same keys of `data` (base64-encoded); the stored object has `data` only. The
/// `type` defaults to `Opaque`.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let string_data = root.remove("stringData");
    // Kubernetes' SetDefaults_Secret: an empty type (protobuf clients always send one) too.
    if root
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        root.insert("type".into(), json!("Opaque"));
    }
    let Some(Value::Object(entries)) = string_data else {
        return;
    };
    let Some(data) = obj_mut(obj, "data") else {
        return;
    };
    for (k, v) in entries {
        if let Value::String(text) = v {
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// Largest Secret or ConfigMap payload (Kubernetes' `MaxSecretSize`, 1 MiB).
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Keys of Secret/ConfigMap `data`: `[-._a-zA-Z0-9]+`, at most 253 bytes, not `.` or `..`.
fn data_key_errors(obj: &Value, fields: &[&str], causes: &mut Vec<Cause>) {
    let mut total = 0usize;
    for field in fields {
        let Some(map) = obj.get(*field).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in map {
            total += k.len() + v.as_str().map_or(0, str::len);
            let ok = !k.is_empty()
                && k.len() <= 253
                && k != "."
                && k != ".."
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !ok {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
                    field: format!("{field}[{k}]"),
                });
            }
        }
    }
    if total > MAX_DATA_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {MAX_DATA_BYTES} bytes"),
            field: fields.first().copied().unwrap_or("data").to_string(),
        });
    }
}

/// A CertificateSigningRequest needs a signer, usages and a well-formed, self-signed request
/// (who may ask for what is `csr::admit`'s business).
fn csr_errors(obj: &Value, causes: &mut Vec<Cause>) {
    let required = |causes: &mut Vec<Cause>, field: &str| {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        })
    };
    if obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        required(causes, "spec.signerName");
    }
    if obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        required(causes, "spec.usages");
    }
    match obj.pointer("/spec/request").and_then(Value::as_str) {
        None | Some("") => required(causes, "spec.request"),
        Some(_) => {
            if let Err(why) = crate::csr::request::check_well_formed(obj) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: []byte{{...}}: {why}"),
                    field: "spec.request".into(),
                });
            }
        }
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Name rule errors for `name` under the kind's rule.
pub fn name_errors(info: &ResourceInfo, name: &str, field: &str) -> Vec<Cause> {
    let invalid = |msg: &str| Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{name}\": {msg}"),
        field: field.to_string(),
    };
    let mut out = Vec::new();
    match info.kind {
        "Namespace" => {
            if name.len() > 63 {
                out.push(invalid("must be no more than 63 characters"));
            }
            if !is_label(name) {
                out.push(invalid(LABEL_MSG));
            }
        }
        "Service" => {
            if name.len() > 63 {
                out.push(invalid("must be no more than 63 characters"));
            }
            let starts_alpha = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
            if !is_label(name) || !starts_alpha {
                out.push(invalid(DNS1035_MSG));
            }
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            if name == "." || name == ".." {
                out.push(invalid(&format!("may not be '{name}'")));
            } else if name.contains('/') || name.contains('%') {
                out.push(invalid("may not contain '/'"));
            }
        }
        _ => {
            if name.len() > 253 {
                out.push(invalid("must be no more than 253 characters"));
            }
            if !is_subdomain(name) {
                out.push(invalid(SUBDOMAIN_MSG));
            }
        }
    }
    out
}

/// Validate an object to be stored; 422 Invalid with causes when it is not acceptable.
pub fn validate(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        });
    } else {
        causes.extend(name_errors(info, name, "metadata.name"));
    }
    let check_containers = |causes: &mut Vec<Cause>, spec: Option<&Value>, base: &str| {
        let containers = spec
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_array);
        match containers {
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{base}.containers"),
            }),
            Some(cs) if cs.is_empty() => causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{base}.containers"),
            }),
            Some(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
                    if cname.is_empty() {
                        causes.push(Cause {
                            reason: "FieldValueRequired",
                            message: "Required value".into(),
                            field: format!("{base}.containers[{i}].name"),
                        });
                    } else if !is_label(cname) || cname.len() > 63 {
                        causes.push(Cause {
                            reason: "FieldValueInvalid",
                            message: format!("Invalid value: \"{cname}\": {LABEL_MSG}"),
                            field: format!("{base}.containers[{i}].name"),
                        });
                    }
                    if c.get("image")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        causes.push(Cause {
                            reason: "FieldValueRequired",
                            message: "Required value".into(),
                            field: format!("{base}.containers[{i}].image"),
                        });
                    }
                }
            }
        }
    };
    match info.kind {
        "Pod" => check_containers(&mut causes, obj.get("spec"), "spec"),
        "Secret" => data_key_errors(obj, &["data"], &mut causes),
        "ConfigMap" => data_key_errors(obj, &["data", "binaryData"], &mut causes),
        "CertificateSigningRequest" => csr_errors(obj, &mut causes),
        "Deployment" => {
            check_containers(
                &mut causes,
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
            );
            let selector = obj.pointer("/spec/selector");
            if selector.is_none_or(Value::is_null) {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec.selector".into(),
                });
            } else {
                let labels = obj
                    .pointer("/spec/template/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                let matches = crate::select::LabelSelector::from_object(selector)
                    .map(|s| s.matches(&labels))
                    .unwrap_or(false);
                if !matches {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        message: format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            serde_json::to_string(&labels).unwrap_or_default()
                        ),
                        field: "spec.template.metadata.labels".into(),
                    });
                }
            }
        }
        "Lease" => lease_spec_errors(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            kind: info.kind.to_string(),
            name: name.to_string(),
            causes,
        })
    }
}

/// Kubernetes' `ValidateLeaseSpec`: a duration, when given, is positive, and the transition
/// count is never negative.
fn lease_spec_errors(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let int = |field: &str| spec.and_then(|s| s.get(field)).and_then(Value::as_i64);
    if let Some(d) = int("leaseDurationSeconds").filter(|d| *d <= 0) {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {d}: must be greater than 0"),
            field: "spec.leaseDurationSeconds".into(),
        });
    }
    if let Some(t) = int("leaseTransitions").filter(|t| *t < 0) {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {t}: must be greater than or equal to 0"),
            field: "spec.leaseTransitions".into(),
        });
    }
}
