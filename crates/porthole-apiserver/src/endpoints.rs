//! The endpoints controller (kube-controller-manager's): for every Service with a selector,
//! an `Endpoints` object of the same name listing its pods, Ready ones under `addresses` and
//! the others under `notReadyAddresses`, with the Service's ports resolved against each pod
//! (a named `targetPort` may resolve differently per pod: each distinct resolution is a subset
//! of its own). A pod on a node that stopped heartbeating turns not Ready (the node lifecycle
//! controller), so it moves out of `addresses` here. Endpoints of Services that are gone are
//! deleted; Services without a selector keep endpoints that someone else manages.
//!
//! Pods run in network namespaces of their own without an address outside them, so an
//! address is the pod's `podIP` when it has one, else its node's InternalIP (where
//! port-forward reaches it).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::resources;
use crate::select::LabelSelector;
use crate::store::Store;

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// A Service port resolved against one pod: `(name, port, protocol)`.
type Port = (String, i64, String);

/// The Service's ports as this pod serves them; `None` when a named target port is not one of
/// the pod's container ports (Kubernetes leaves such a pod out).
fn resolve_ports(service: &Value, pod: &Value) -> Option<Vec<Port>> {
    let ports = service.pointer("/spec/ports").and_then(Value::as_array)?;
    let mut out = Vec::new();
    for p in ports {
        let name = s(p, "/name").to_string();
        let protocol = match s(p, "/protocol") {
            "" => "TCP".to_string(),
            other => other.to_string(),
        };
        let target = p.get("targetPort").or_else(|| p.get("port"))?;
        let number = match target {
            Value::Number(n) => n.as_i64()?,
            Value::String(named) => named.parse::<i64>().ok().or_else(|| {
                pod.pointer("/spec/containers")
                    .and_then(Value::as_array)?
                    .iter()
                    .flat_map(|c| {
                        c.get("ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                    })
                    .find(|cp| s(cp, "/name") == named)
                    .and_then(|cp| cp.get("containerPort")?.as_i64())
            })?,
            _ => return None,
        };
        out.push((name, number, protocol));
    }
    Some(out)
}

fn address(pod: &Value, node_ips: &BTreeMap<&str, &str>) -> Value {
    let node = s(pod, "/spec/nodeName");
    let ip = [s(pod, "/status/podIP"), s(pod, "/status/hostIP")]
        .into_iter()
        .find(|ip| !ip.is_empty())
        .or_else(|| node_ips.get(node).copied())
        .unwrap_or("");
    json!({
        "ip": ip,
        "nodeName": node,
        "targetRef": {
            "kind": "Pod",
            "namespace": s(pod, "/metadata/namespace"),
            "name": s(pod, "/metadata/name"),
            "uid": s(pod, "/metadata/uid"),
        },
    })
}

/// The `subsets` of a Service's Endpoints.
fn subsets(service: &Value, pods: &[Value], node_ips: &BTreeMap<&str, &str>) -> Option<Value> {
    let selector = service.pointer("/spec/selector")?.as_object()?;
    if selector.is_empty() {
        return None;
    }
    let selector = LabelSelector::from_object(Some(&json!({ "matchLabels": selector })))?;
    let namespace = s(service, "/metadata/namespace");
    let mut groups: BTreeMap<Vec<Port>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut members: Vec<&Value> = pods
        .iter()
        .filter(|p| s(p, "/metadata/namespace") == namespace)
        .filter(|p| !s(p, "/spec/nodeName").is_empty())
        .filter(|p| {
            p.pointer("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null)
        })
        .filter(|p| selector.matches(p.pointer("/metadata/labels").unwrap_or(&Value::Null)))
        .collect();
    members.sort_by_key(|p| s(p, "/metadata/name").to_string());
    for pod in members {
        let Some(ports) = resolve_ports(service, pod) else {
            continue;
        };
        let group = groups.entry(ports).or_default();
        if pod_ready(pod) {
            group.0.push(address(pod, node_ips));
        } else {
            group.1.push(address(pod, node_ips));
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({ "port": port, "protocol": protocol });
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut subset = json!({ "ports": ports });
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    Some(json!(subsets))
}

/// One pass: brings every selector Service's Endpoints up to date (writing only what changed)
/// and deletes the Endpoints of Services that are gone.
pub(crate) fn reconcile(store: &dyn Store, services: &[Value], pods: &[Value], nodes: &[Value]) {
    let info = resources::core("endpoints");
    let existing = store
        .list(&info.prefix(""))
        .map(|(v, _)| v)
        .unwrap_or_default();
    let node_ips: BTreeMap<&str, &str> = nodes
        .iter()
        .filter_map(|n| {
            let ip = n
                .pointer("/status/addresses")
                .and_then(Value::as_array)?
                .iter()
                .find(|a| s(a, "/type") == "InternalIP")?;
            Some((s(n, "/metadata/name"), s(ip, "/address")))
        })
        .collect();
    for service in services {
        let Some(want) = subsets(service, pods, &node_ips) else {
            continue;
        };
        let (namespace, name) = (
            s(service, "/metadata/namespace"),
            s(service, "/metadata/name"),
        );
        let key = info.key(namespace, name);
        let current = existing
            .iter()
            .find(|e| s(e, "/metadata/namespace") == namespace && s(e, "/metadata/name") == name);
        let result = match current {
            Some(e) if e.get("subsets").unwrap_or(&json!([])) == &want => continue,
            Some(e) => {
                let mut updated = e.clone();
                updated["subsets"] = want;
                let rv = s(e, "/metadata/resourceVersion").parse().ok();
                store.update(&key, updated, rv).map(|_| ())
            }
            None => {
                let mut labels = service
                    .pointer("/metadata/labels")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                if !labels.is_object() {
                    labels = json!({});
                }
                let object = json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": { "name": name, "labels": labels },
                    "subsets": want,
                });
                match crate::registry::prepare_new(info, namespace, object) {
                    Ok(object) => store.create(&key, object).map(|_| ()),
                    Err(e) => {
                        tracing::warn!(error = ?e, "endpoints object rejected");
                        continue;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(service = %format!("{namespace}/{name}"), error = %e, "endpoints not written; next pass retries");
        }
    }
    for e in &existing {
        let (namespace, name) = (s(e, "/metadata/namespace"), s(e, "/metadata/name"));
        let has_service = services.iter().any(|svc| {
            s(svc, "/metadata/namespace") == namespace && s(svc, "/metadata/name") == name
        });
        if !has_service {
            let rv = s(e, "/metadata/resourceVersion").parse().ok();
            let _ = store.delete(&info.key(namespace, name), rv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports_resolved() {
        let svc = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        });
        let mut other = pod("other", "n1", true);
        other["metadata"]["labels"] = json!({"app": "db"});
        let pods = vec![pod("b", "n2", false), pod("a", "n1", true), other];
        let ips = BTreeMap::from([("n1", "198.18.0.14"), ("n2", "198.18.0.15")]);
        let got = subsets(&svc, &pods, &ips).expect("a selector service");
        assert_eq!(
            got,
            json!([{
                "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                "addresses": [{"ip": "198.18.0.14", "nodeName": "n1", "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}}],
                "notReadyAddresses": [{"ip": "198.18.0.15", "nodeName": "n2", "targetRef": {"kind": "Pod", "namespace": "default", "name": "b", "uid": "uid-b"}}],
            }])
        );
    }

    #[test]
    fn services_without_a_selector_are_left_alone() {
        let svc = json!({"metadata": {"name": "x", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
        assert!(subsets(&svc, &[], &BTreeMap::new()).is_none());
    }
}
