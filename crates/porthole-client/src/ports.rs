//! Port specifications (`[LOCAL_PORT:]REMOTE_PORT`), parsed and resolved the way kubectl does
//! (PROTOCOL.md §7.3): the syntax is checked before any API call, names are resolved against the
//! chosen pod's containers or the Service's ports, and every error text is kubectl's.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The remote half of a port spec as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemotePort {
    /// A number (already checked to be 1..=65535).
    Number(u16),
    /// A port name: a container port name for pod-like targets, a service port name for
    /// Services.
    Name(String),
}

/// One `[LOCAL_PORT:]REMOTE_PORT` argument after syntax checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The argument as given, for messages.
    pub raw: String,
    /// The local port; `None` when the spec was a bare name, whose local port is the number the
    /// name resolves to (kubectl's rule); `Some(0)` asks the kernel for a free port.
    pub local: Option<u16>,
    /// The remote port or port name.
    pub remote: RemotePort,
    /// `/udp` was given: a UDP forward (porthole extension); `/tcp` or nothing is TCP.
    pub udp: bool,
}

/// A port spec resolved against a concrete target: what to listen on and which pod port to ask
/// for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedPort {
    /// Local port to bind (0 = any free port).
    pub local: u16,
    /// Port inside the pod.
    pub remote: u16,
}

/// Go's `strconv.Atoi` acceptance test: an optional sign followed by decimal digits. kubectl
/// uses it to decide whether a remote port is a number or a name.
fn looks_numeric(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Go's `strconv.ParseUint(s, 10, 16)` with its error text, so messages match kubectl's.
fn parse_u16_go(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseUint: parsing {s:?}: invalid syntax"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("strconv.ParseUint: parsing {s:?}: value out of range"))
}

impl PortSpec {
    /// Parses one port argument, returning kubectl's error text on bad syntax.
    pub fn parse(raw: &str) -> Result<PortSpec, String> {
        let (ports, udp) = split_protocol(raw)?;
        let mut spec = PortSpec::parse_ports(ports)?;
        spec.raw = raw.to_string();
        spec.udp = udp;
        Ok(spec)
    }

    /// The `[LOCAL:]REMOTE` part, kubectl's rules.
    fn parse_ports(raw: &str) -> Result<PortSpec, String> {
        let parts: Vec<&str> = raw.split(':').collect();
        let (local_str, remote_str, bare) = match parts.as_slice() {
            [one] => (*one, *one, true),
            // `:5000` means "any free local port", like `0:5000`.
            [local, remote] => (if local.is_empty() { "0" } else { *local }, *remote, false),
            _ => return Err(format!("invalid port format '{raw}'")),
        };
        if remote_str.is_empty() {
            return Err("remote port cannot be empty".to_string());
        }
        if looks_numeric(remote_str) {
            // kubectl's parsePorts order: the local port is checked first.
            let local = parse_u16_go(local_str)
                .map_err(|e| format!("error parsing local port '{local_str}': {e}"))?;
            let remote = parse_u16_go(remote_str)
                .map_err(|e| format!("error parsing remote port '{remote_str}': {e}"))?;
            if remote == 0 {
                return Err("remote port must be > 0".to_string());
            }
            return Ok(PortSpec {
                raw: raw.to_string(),
                local: Some(local),
                remote: RemotePort::Number(remote),
                udp: false,
            });
        }
        let remote = RemotePort::Name(remote_str.to_string());
        // A bare name takes its local port from what the name resolves to.
        let local = if bare {
            None
        } else {
            Some(
                parse_u16_go(local_str)
                    .map_err(|e| format!("error parsing local port '{local_str}': {e}"))?,
            )
        };
        Ok(PortSpec {
            raw: raw.to_string(),
            local,
            remote,
            udp: false,
        })
    }

    /// The remote text as typed (used in the UDP refusal, as kubectl does).
    fn remote_text(&self) -> String {
        match &self.remote {
            RemotePort::Number(n) => n.to_string(),
            RemotePort::Name(s) => s.clone(),
        }
    }

    /// Resolves against a pod target: names are container port names (PROTOCOL.md §7.3).
    pub fn resolve_for_pod(&self, pod: &Pod) -> Result<ResolvedPort, String> {
        let remote = match &self.remote {
            RemotePort::Number(n) => *n,
            RemotePort::Name(name) if self.udp => udp_container_port_by_name(pod, name)?,
            RemotePort::Name(name) => container_port_by_name(pod, name)?,
        };
        if !self.udp && udp_only_container_ports(pod).contains(&remote) {
            return Err(format!(
                "UDP protocol is not supported for {}",
                self.remote_text()
            ));
        }
        Ok(ResolvedPort {
            local: self.local.unwrap_or(remote),
            remote,
        })
    }

    /// Resolves against a Service and the pod chosen behind it: names are service port names,
    /// the service port then maps to its `targetPort` (PROTOCOL.md §7.3).
    pub fn resolve_for_service(&self, svc: &Service, pod: &Pod) -> Result<ResolvedPort, String> {
        let svc_port = match &self.remote {
            RemotePort::Number(n) => *n,
            RemotePort::Name(name) => service_port_by_name(svc, name)?,
        };
        if !self.udp && udp_only_service_ports(svc).contains(&svc_port) {
            return Err(format!(
                "UDP protocol is not supported for {}",
                self.remote_text()
            ));
        }
        let remote = target_port_for_service_port(svc, pod, svc_port)?;
        Ok(ResolvedPort {
            local: self.local.unwrap_or(svc_port),
            remote,
        })
    }
}

/// Splits a `/udp` or `/tcp` suffix (any case) off a port argument.
fn split_protocol(raw: &str) -> Result<(&str, bool), String> {
    let Some((ports, proto)) = raw.rsplit_once('/') else {
        return Ok((raw, false));
    };
    if proto.eq_ignore_ascii_case("udp") {
        Ok((ports, true))
    } else if proto.eq_ignore_ascii_case("tcp") {
        Ok((ports, false))
    } else {
        Err(format!(
            "invalid protocol '{proto}' in port '{raw}': use /tcp (the default) or /udp"
        ))
    }
}

/// A container port name for a `/udp` spec: the port of that name declared UDP, else any port
/// of that name (a name is unique per container, but two containers may reuse one).
fn udp_container_port_by_name(pod: &Pod, name: &str) -> Result<u16, String> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
    for c in containers {
        for p in c.ports.iter().flatten() {
            if p.name.as_deref() == Some(name) && is_proto(p.protocol.as_deref(), "UDP") {
                if let Ok(n) = u16::try_from(p.container_port) {
                    return Ok(n);
                }
            }
        }
    }
    container_port_by_name(pod, name)
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

/// kubectl `LookupContainerPortNumberByName`: containers first, then init containers.
pub fn container_port_by_name(pod: &Pod, name: &str) -> Result<u16, String> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten();
    for c in containers.chain(init) {
        for p in c.ports.iter().flatten() {
            if p.name.as_deref() == Some(name) {
                return u16::try_from(p.container_port).map_err(|_| {
                    format!(
                        "Pod '{}' declares port '{name}' as {}, which is not a valid TCP port",
                        name_of(pod),
                        p.container_port
                    )
                });
            }
        }
    }
    Err(format!(
        "Pod '{}' does not have a named port '{name}'",
        name_of(pod)
    ))
}

/// kubectl `LookupServicePortNumberByName`.
fn service_port_by_name(svc: &Service, name: &str) -> Result<u16, String> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten();
    for p in ports {
        if p.name.as_deref() == Some(name) {
            if let Ok(n) = u16::try_from(p.port) {
                return Ok(n);
            }
        }
    }
    let svc_name = svc.metadata.name.as_deref().unwrap_or("");
    Err(format!(
        "Service '{svc_name}' does not have a named port '{name}'"
    ))
}

/// kubectl `LookupContainerPortNumberByServicePort`: headless → the number itself; int
/// `targetPort` (0/absent → the service port); named `targetPort` → the pod's container port.
pub fn target_port_for_service_port(svc: &Service, pod: &Pod, port: u16) -> Result<u16, String> {
    let spec = svc.spec.as_ref();
    for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
        if p.port != i32::from(port) {
            continue;
        }
        if spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            return Ok(port);
        }
        return match &p.target_port {
            None | Some(IntOrString::Int(0)) => Ok(port),
            Some(IntOrString::Int(n)) => u16::try_from(*n)
                .map_err(|_| format!("Service port {port} has an invalid targetPort {n}")),
            Some(IntOrString::String(name)) => container_port_by_name(pod, name),
        };
    }
    let svc_name = svc.metadata.name.as_deref().unwrap_or("");
    Err(format!(
        "Service {svc_name} does not have a service port {port}"
    ))
}

/// A missing protocol is TCP (the API server's default); kubectl only refuses ports declared
/// UDP and never TCP.
fn is_proto(p: Option<&str>, want: &str) -> bool {
    p.unwrap_or("TCP") == want
}

fn udp_only_container_ports(pod: &Pod) -> Vec<u16> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
    for c in containers {
        for p in c.ports.iter().flatten() {
            let Ok(n) = u16::try_from(p.container_port) else {
                continue;
            };
            if is_proto(p.protocol.as_deref(), "UDP") {
                udp.push(n);
            } else if is_proto(p.protocol.as_deref(), "TCP") {
                tcp.push(n);
            }
        }
    }
    udp.retain(|n| !tcp.contains(n));
    udp
}

fn udp_only_service_ports(svc: &Service) -> Vec<u16> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for p in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let Ok(n) = u16::try_from(p.port) else {
            continue;
        };
        if is_proto(p.protocol.as_deref(), "UDP") {
            udp.push(n);
        } else if is_proto(p.protocol.as_deref(), "TCP") {
            tcp.push(n);
        }
    }
    udp.retain(|n| !tcp.contains(n));
    udp
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServicePort, ServiceSpec};

    fn spec(raw: &str) -> Result<PortSpec, String> {
        PortSpec::parse(raw)
    }

    #[test]
    fn accepts_every_kubectl_form() {
        let n = |l: Option<u16>, r: u16| (l, RemotePort::Number(r));
        let got = |s: &str| {
            let p = spec(s).unwrap();
            (p.local, p.remote)
        };
        assert_eq!(got("5000"), n(Some(5000), 5000));
        assert_eq!(got("6000:5000"), n(Some(6000), 5000));
        assert_eq!(got(":5000"), n(Some(0), 5000));
        assert_eq!(got("0:5000"), n(Some(0), 5000));
        assert_eq!(
            got("8443:https"),
            (Some(8443), RemotePort::Name("https".into()))
        );
        assert_eq!(got("https"), (None, RemotePort::Name("https".into())));
        assert_eq!(got(":https"), (Some(0), RemotePort::Name("https".into())));
        // Leading zeros are fine for Go's ParseUint.
        assert_eq!(got("0080"), n(Some(80), 80));
    }

    #[test]
    fn protocol_suffix() {
        let p = spec("5353:53/udp").unwrap();
        assert_eq!(
            (p.local, p.remote.clone(), p.udp),
            (Some(5353), RemotePort::Number(53), true)
        );
        assert_eq!(p.raw, "5353:53/udp");
        assert!(!spec("80/tcp").unwrap().udp);
        assert!(spec("dns/UDP").unwrap().udp);
        assert_eq!(
            spec("dns/udp").unwrap().remote,
            RemotePort::Name("dns".into())
        );
        assert_eq!(
            spec("53/sctp").unwrap_err(),
            "invalid protocol 'sctp' in port '53/sctp': use /tcp (the default) or /udp"
        );
        assert_eq!(spec("/udp").unwrap_err(), "remote port cannot be empty");
    }

    #[test]
    fn udp_names_prefer_the_udp_port() {
        let pod = Pod {
            metadata: Default::default(),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "dns".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("dns".into()),
                        container_port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(
            spec("dns/udp")
                .unwrap()
                .resolve_for_pod(&pod)
                .unwrap()
                .remote,
            53
        );
        // TCP keeps kubectl's refusal of a UDP-only port.
        assert_eq!(
            spec("dns").unwrap().resolve_for_pod(&pod).unwrap_err(),
            "UDP protocol is not supported for dns"
        );
    }

    #[test]
    fn rejects_with_kubectl_texts() {
        assert_eq!(spec("1:2:3").unwrap_err(), "invalid port format '1:2:3'");
        assert_eq!(spec("8080:").unwrap_err(), "remote port cannot be empty");
        assert_eq!(spec(":").unwrap_err(), "remote port cannot be empty");
        assert_eq!(spec("").unwrap_err(), "remote port cannot be empty");
        assert_eq!(spec("0").unwrap_err(), "remote port must be > 0");
        assert_eq!(spec("8080:0").unwrap_err(), "remote port must be > 0");
        assert_eq!(
            spec("70000").unwrap_err(),
            "error parsing local port '70000': strconv.ParseUint: parsing \"70000\": value out of range"
        );
        assert_eq!(
            spec("-1").unwrap_err(),
            "error parsing local port '-1': strconv.ParseUint: parsing \"-1\": invalid syntax"
        );
        assert_eq!(
            spec("80:70000").unwrap_err(),
            "error parsing remote port '70000': strconv.ParseUint: parsing \"70000\": value out of range"
        );
        assert_eq!(
            spec("80:-1").unwrap_err(),
            "error parsing remote port '-1': strconv.ParseUint: parsing \"-1\": invalid syntax"
        );
        assert_eq!(
            spec("abc:80").unwrap_err(),
            "error parsing local port 'abc': strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            spec("99999:80").unwrap_err(),
            "error parsing local port '99999': strconv.ParseUint: parsing \"99999\": value out of range"
        );
    }

    fn cport(name: &str, port: i32, proto: Option<&str>) -> ContainerPort {
        ContainerPort {
            name: Some(name.into()),
            container_port: port,
            protocol: proto.map(Into::into),
            ..Default::default()
        }
    }

    fn pod(ports: Vec<ContainerPort>, init: Vec<ContainerPort>) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-0".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ports: Some(ports),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    ports: Some(init),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn svc(ports: Vec<ServicePort>, headless: bool) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(ports),
                cluster_ip: headless.then(|| "None".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sport(name: &str, port: i32, target: Option<IntOrString>, proto: &str) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: target,
            protocol: Some(proto.into()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_named_ports() {
        let p = pod(
            vec![cport("http", 8080, None)],
            vec![cport("debug", 9000, Some("TCP"))],
        );
        let r = |s: &str| spec(s).unwrap().resolve_for_pod(&p);
        assert_eq!(
            r("http").unwrap(),
            ResolvedPort {
                local: 8080,
                remote: 8080
            }
        );
        assert_eq!(
            r("9090:http").unwrap(),
            ResolvedPort {
                local: 9090,
                remote: 8080
            }
        );
        assert_eq!(
            r(":debug").unwrap(),
            ResolvedPort {
                local: 0,
                remote: 9000
            }
        );
        assert_eq!(
            r("nope").unwrap_err(),
            "Pod 'web-0' does not have a named port 'nope'"
        );
        assert_eq!(
            r("81").unwrap(),
            ResolvedPort {
                local: 81,
                remote: 81
            }
        );
    }

    #[test]
    fn pod_udp_only_port_refused() {
        let p = pod(
            vec![
                cport("dns", 53, Some("UDP")),
                cport("both", 54, Some("UDP")),
                cport("both-tcp", 54, None),
            ],
            vec![],
        );
        let r = |s: &str| spec(s).unwrap().resolve_for_pod(&p);
        assert_eq!(r("53").unwrap_err(), "UDP protocol is not supported for 53");
        assert_eq!(
            r("dns").unwrap_err(),
            "UDP protocol is not supported for dns"
        );
        assert!(r("54").is_ok(), "a port declared TCP and UDP is allowed");
    }

    #[test]
    fn service_target_ports() {
        let p = pod(vec![cport("http", 8080, None)], vec![]);
        let s = svc(
            vec![
                sport("web", 80, Some(IntOrString::String("http".into())), "TCP"),
                sport("metrics", 9100, Some(IntOrString::Int(9101)), "TCP"),
                sport("plain", 7000, None, "TCP"),
                sport("zero", 7001, Some(IntOrString::Int(0)), "TCP"),
                sport("dns", 53, Some(IntOrString::Int(5353)), "UDP"),
                sport(
                    "bad",
                    81,
                    Some(IntOrString::String("missing".into())),
                    "TCP",
                ),
            ],
            false,
        );
        let r = |sp: &str| spec(sp).unwrap().resolve_for_service(&s, &p);
        assert_eq!(
            r("80").unwrap(),
            ResolvedPort {
                local: 80,
                remote: 8080
            }
        );
        assert_eq!(
            r("web").unwrap(),
            ResolvedPort {
                local: 80,
                remote: 8080
            }
        );
        assert_eq!(
            r("8888:web").unwrap(),
            ResolvedPort {
                local: 8888,
                remote: 8080
            }
        );
        assert_eq!(
            r("metrics").unwrap(),
            ResolvedPort {
                local: 9100,
                remote: 9101
            }
        );
        assert_eq!(
            r("7000").unwrap(),
            ResolvedPort {
                local: 7000,
                remote: 7000
            }
        );
        assert_eq!(
            r("7001").unwrap(),
            ResolvedPort {
                local: 7001,
                remote: 7001
            }
        );
        assert_eq!(r("53").unwrap_err(), "UDP protocol is not supported for 53");
        assert_eq!(
            r("dns").unwrap_err(),
            "UDP protocol is not supported for dns"
        );
        assert_eq!(
            r("81").unwrap_err(),
            "Pod 'web-0' does not have a named port 'missing'"
        );
        assert_eq!(
            r("82").unwrap_err(),
            "Service web does not have a service port 82"
        );
        assert_eq!(
            r("nope").unwrap_err(),
            "Service 'web' does not have a named port 'nope'"
        );
    }

    #[test]
    fn headless_service_uses_the_number() {
        let p = pod(vec![], vec![]);
        let s = svc(
            vec![sport(
                "web",
                80,
                Some(IntOrString::String("http".into())),
                "TCP",
            )],
            true,
        );
        let r = spec("80").unwrap().resolve_for_service(&s, &p).unwrap();
        assert_eq!(
            r,
            ResolvedPort {
                local: 80,
                remote: 80
            }
        );
    }
}
