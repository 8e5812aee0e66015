//! Server-side printing: `meta.k8s.io/v1` Table answers for `kubectl get`, with the columns
//! Kubernetes' own printers use (pods, services, deployments, nodes, namespaces, leases) and a
//! generic NAME/AGE table for the rest.

use serde_json::{json, Value};

use crate::resources::ResourceInfo;

/// Kubernetes' `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    format!("{}y{}d", days / 365, days % 365)
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn none_if_empty(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_string()
    }
}

fn col(name: &str, ty: &str, priority: u32, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(m) = sel.and_then(Value::as_object) else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    parts.sort();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    for c in &statuses {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            if !r.is_empty() {
                reason = r.to_string();
            }
        }
    }
    if p.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = "Terminating".into();
    }
    vec![
        json!(s(p, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(p)),
        json!(none_if_empty(s(p, "/status/podIP"))),
        json!(none_if_empty(s(p, "/spec/nodeName"))),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn service_row(v: &Value) -> Vec<Value> {
    let ports: Vec<String> = v
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{port}:{np}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(s(v, "/metadata/name")),
        json!(s(v, "/spec/type")),
        json!(none_if_empty(s(v, "/spec/clusterIP"))),
        json!("<none>"),
        json!(if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(",")
        }),
        json!(age(v)),
        json!(selector_string(v.pointer("/spec/selector"))),
    ]
}

fn deployment_row(v: &Value) -> Vec<Value> {
    let n = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let containers = v
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.get("image").and_then(Value::as_str))
        .collect();
    vec![
        json!(s(v, "/metadata/name")),
        json!(format!(
            "{}/{}",
            n("/status/readyReplicas"),
            n("/spec/replicas")
        )),
        json!(n("/status/updatedReplicas")),
        json!(n("/status/availableReplicas")),
        json!(age(v)),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector_string(v.pointer("/spec/selector/matchLabels"))),
    ]
}

fn node_row(v: &Value) -> Vec<Value> {
    let ready = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .map(|st| match st {
            "True" => "Ready",
            "False" => "NotReady",
            _ => "NotReady",
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let addr = |t: &str| {
        v.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type").and_then(Value::as_str) == Some(t))
            })
            .and_then(|x| x.get("address").and_then(Value::as_str))
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(s(v, "/metadata/name")),
        json!(status),
        json!("<none>"),
        json!(age(v)),
        json!(s(v, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(none_if_empty(s(v, "/status/nodeInfo/osImage"))),
        json!(none_if_empty(s(v, "/status/nodeInfo/kernelVersion"))),
        json!(none_if_empty(s(
            v,
            "/status/nodeInfo/containerRuntimeVersion"
        ))),
    ]
}

fn data_count(v: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| v.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

/// kubectl's CSR columns: the signer, who asked, and Approved/Denied/Failed plus Issued.
fn csr_row(v: &Value) -> Vec<Value> {
    let mut condition: Vec<String> = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| c.get("status").and_then(Value::as_str).unwrap_or("True") == "True")
                .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if condition.is_empty() {
        condition.push("Pending".into());
    }
    if !s(v, "/status/certificate").is_empty() {
        condition.push("Issued".into());
    }
    let duration = v
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(human_duration)
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(s(v, "/metadata/name")),
        json!(age(v)),
        json!(s(v, "/spec/signerName")),
        json!(s(v, "/spec/username")),
        json!(duration),
        json!(condition.join(",")),
    ]
}

/// Columns and a row printer for a resource.
/// Prints one object's cells.
type RowFn = fn(&Value) -> Vec<Value>;

fn printer(info: &ResourceInfo) -> (Vec<Value>, RowFn) {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match info.kind {
        "Pod" => (
            vec![
                name,
                col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
                col("Status", "string", 0, "The aggregate status of the containers in this pod."),
                col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
                age_col,
                col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
                col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
                col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
                col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
            ],
            pod_row,
        ),
        "Service" => (
            vec![
                name,
                col("Type", "string", 0, "type determines how the Service is exposed."),
                col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
                col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
                col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
                age_col,
                col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
            ],
            service_row,
        ),
        "Deployment" => (
            vec![
                name,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                age_col,
                col("Containers", "string", 1, "Names of each container in the template."),
                col("Images", "string", 1, "Images referenced by each container in the template."),
                col("Selector", "string", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
            ],
            deployment_row,
        ),
        "Node" => (
            vec![
                name,
                col("Status", "string", 0, "The status of the node"),
                col("Roles", "string", 0, "The roles of the node"),
                age_col,
                col("Version", "string", 0, "Kubelet Version reported by the node."),
                col("Internal-IP", "string", 1, "List of internal IPs."),
                col("External-IP", "string", 1, "List of external IPs."),
                col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
                col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
                col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
            ],
            node_row,
        ),
        "Lease" => (
            vec![
                name,
                col("Holder", "string", 0, "The holder of the lease"),
                age_col,
            ],
            |v| {
                vec![
                    json!(s(v, "/metadata/name")),
                    json!(s(v, "/spec/holderIdentity")),
                    json!(age(v)),
                ]
            },
        ),
        "Namespace" => (
            vec![
                name,
                col("Status", "string", 0, "The status of the namespace"),
                age_col,
            ],
            |v| vec![json!(s(v, "/metadata/name")), json!(s(v, "/status/phase")), json!(age(v))],
        ),
        "Secret" => (
            vec![
                name,
                col("Type", "string", 0, "The type of the secret"),
                col("Data", "integer", 0, "The number of entries in the data"),
                age_col,
            ],
            |v| {
                vec![
                    json!(s(v, "/metadata/name")),
                    json!(s(v, "/type")),
                    json!(data_count(v, &["data"])),
                    json!(age(v)),
                ]
            },
        ),
        "ConfigMap" => (
            vec![
                name,
                col("Data", "integer", 0, "The number of entries in the data"),
                age_col,
            ],
            |v| {
                vec![
                    json!(s(v, "/metadata/name")),
                    json!(data_count(v, &["data", "binaryData"])),
                    json!(age(v)),
                ]
            },
        ),
        "CertificateSigningRequest" => (
            vec![
                name,
                age_col,
                col("SignerName", "string", 0, "The name of the signer"),
                col("Requestor", "string", 0, "The user that requested the certificate"),
                col("RequestedDuration", "string", 0, "The requested duration of the certificate"),
                col("Condition", "string", 0, "The condition of the request"),
            ],
            csr_row,
        ),
        _ => (vec![name, age_col], |v| {
            vec![json!(s(v, "/metadata/name")), json!(age(v))]
        }),
    }
}

/// Does the Accept header ask for a Table?
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p = part.replace(' ', "");
        p.contains("as=Table") && p.contains("g=meta.k8s.io")
    })
}

/// The Table for `objects`; `include_object` is the `includeObject` query (`None`, `Object`,
/// default `Metadata`).
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    resource_version: &str,
    include_object: Option<&str>,
    with_columns: bool,
) -> Value {
    let (columns, row) = printer(info);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include_object {
                Some("None") => Value::Null,
                Some("Object") => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            json!({"cells": row(o), "object": object})
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "rows": rows,
    });
    if with_columns {
        t["columnDefinitions"] = Value::Array(columns);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubernetes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
