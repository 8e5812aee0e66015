//! `--all-services`: one forward per Service of the chosen namespaces, kubefwd's use case.
//!
//! Each Service becomes a `svc/NAME` forward with one port spec per service port: a free local
//! port (`:PORT`), or the service's own number with `--same-ports`. With `--etc-hosts`, each
//! Service gets its own loopback address (127.0.0.2, 127.0.0.3, ...) and its own port numbers,
//! so `db:5432` and `cache:5432` can both be forwarded and reached by name; Linux routes all of
//! 127.0.0.0/8 to the loopback interface, so these need no set-up.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Service};

use super::file::Entry;

/// What discovery found.
pub struct Discovered {
    /// One entry per forwardable Service.
    pub entries: Vec<Entry>,
    /// Host-file lines (address, names) when loopback addresses were assigned.
    pub hosts: Vec<(String, Vec<String>)>,
    /// Services or ports left out, and why (shown once at start).
    pub skipped: Vec<String>,
}

/// How discovery should assign local addresses and ports.
pub struct Placement {
    /// Use each service's port numbers locally.
    pub same_ports: bool,
    /// One loopback address per service (for host names).
    pub own_address: bool,
    /// `--address` values for everything (when `own_address` is off).
    pub address: Vec<String>,
}

/// The first per-service loopback address; 127.0.0.1 stays the user's own.
const FIRST_SERVICE_ADDRESS: u32 = u32::from_be_bytes([127, 0, 0, 2]);

/// Names of every namespace (`--all-namespaces`).
pub async fn all_namespaces(client: &kube::Client) -> Result<Vec<String>, String> {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| format!("error: cannot list namespaces: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// Lists the Services of `namespaces` and turns them into entries.
pub async fn discover(
    client: &kube::Client,
    namespaces: &[String],
    context: Option<&str>,
    placement: &Placement,
) -> Result<Discovered, String> {
    let mut services: Vec<(String, Service)> = Vec::new();
    for ns in namespaces {
        let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), ns);
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| format!("error: cannot list the services of namespace {ns}: {e}"))?;
        services.extend(list.items.into_iter().map(|s| (ns.clone(), s)));
    }
    Ok(plan(services, context, placement))
}

/// The pure half of [`discover`]: entries, host lines and skips for a list of services.
fn plan(
    mut services: Vec<(String, Service)>,
    context: Option<&str>,
    placement: &Placement,
) -> Discovered {
    services
        .sort_by(|(a_ns, a), (b_ns, b)| (a_ns, &a.metadata.name).cmp(&(b_ns, &b.metadata.name)));
    // A short name (`db`) only when one namespace has a service of that name.
    let mut name_count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, s) in &services {
        *name_count
            .entry(s.metadata.name.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let mut out = Discovered {
        entries: Vec::new(),
        hosts: Vec::new(),
        skipped: Vec::new(),
    };
    for (ns, svc) in services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            out.skipped.push(format!(
                "service {ns}/{name}: no selector, so no pods to forward to"
            ));
            continue;
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let suffix = match protocol {
                "TCP" => "",
                "UDP" => "/udp",
                _ => {
                    out.skipped.push(format!(
                        "service {ns}/{name} port {}: {protocol} is not forwarded (TCP and UDP are)",
                        p.port
                    ));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let local = if placement.same_ports || placement.own_address {
                port
            } else {
                0
            };
            ports.push(format!("{local}:{port}{suffix}"));
        }
        if ports.is_empty() {
            continue;
        }
        let address = if placement.own_address {
            let ip = Ipv4Addr::from(FIRST_SERVICE_ADDRESS + out.hosts.len() as u32);
            let mut names = Vec::new();
            if name_count.get(&name) == Some(&1) {
                names.push(name.clone());
            }
            names.push(format!("{name}.{ns}"));
            names.push(format!("{name}.{ns}.svc"));
            names.push(format!("{name}.{ns}.svc.cluster.local"));
            out.hosts.push((ip.to_string(), names));
            vec![ip.to_string()]
        } else {
            placement.address.clone()
        };
        out.entries.push(Entry {
            name: format!("{ns}/{name}"),
            context: context.map(str::to_string),
            namespace: Some(ns),
            target: format!("svc/{name}"),
            ports,
            address,
            reverse: Vec::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(name: &str, ports: &[(i32, &str)], selector: bool) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: selector.then(|| [("app".to_string(), name.to_string())].into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, proto)| ServicePort {
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn services_become_entries() {
        let services = vec![
            ("b".to_string(), svc("db", &[(5432, "TCP")], true)),
            ("a".to_string(), svc("db", &[(5432, "TCP")], true)),
            (
                "a".to_string(),
                svc("web", &[(80, "TCP"), (53, "UDP"), (9, "SCTP")], true),
            ),
            ("a".to_string(), svc("ext", &[(80, "TCP")], false)),
        ];
        let free = Placement {
            same_ports: false,
            own_address: false,
            address: vec![],
        };
        let d = plan(services.clone(), None, &free);
        let names: Vec<&str> = d.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a/db", "a/web", "b/db"]);
        assert_eq!(d.entries[1].ports, ["0:80", "0:53/udp"]);
        assert_eq!(d.entries[1].target, "svc/web");
        assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
        assert!(d.hosts.is_empty());

        let named = Placement {
            same_ports: false,
            own_address: true,
            address: vec![],
        };
        let d = plan(services, Some("ctx"), &named);
        assert_eq!(d.entries[0].address, ["127.0.0.2"]);
        assert_eq!(d.entries[0].ports, ["5432:5432"]);
        assert_eq!(d.entries[0].context.as_deref(), Some("ctx"));
        assert_eq!(
            d.hosts,
            vec![
                (
                    "127.0.0.2".to_string(),
                    vec![
                        "db.a".into(),
                        "db.a.svc".into(),
                        "db.a.svc.cluster.local".into()
                    ]
                ),
                (
                    "127.0.0.3".to_string(),
                    vec![
                        "web".into(),
                        "web.a".into(),
                        "web.a.svc".into(),
                        "web.a.svc.cluster.local".into()
                    ]
                ),
                (
                    "127.0.0.4".to_string(),
                    vec![
                        "db.b".into(),
                        "db.b.svc".into(),
                        "db.b.svc.cluster.local".into()
                    ]
                ),
            ]
        );
    }
}
