//! What a forward of a set is doing, folded from the engine's [`Event`]s: the row of the live
//! view and the object of `GET /status`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::output::Event;

/// The state column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Resolving the target and dialing the first session (also after a restart).
    Connecting,
    /// Listening, with a session to a pod.
    Ready,
    /// The session was lost; the listeners stay open while a new one is dialed.
    Reconnecting,
    /// The forward stopped on an error (bad target, pod gone for good); it is restarted after
    /// a back-off.
    Failed,
}

impl Phase {
    /// The word shown in the view.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Ready => "ready",
            Phase::Reconnecting => "reconnecting",
            Phase::Failed => "failed",
        }
    }
}

/// One bound local address of a forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMap {
    /// The local address (`127.0.0.1`, `::1`).
    pub address: String,
    /// The bound local port.
    pub local_port: u16,
    /// The pod port.
    pub remote_port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
}

/// One forward's state (a row of the view, an element of `GET /status`).
#[derive(Debug, Clone, Serialize)]
pub struct ForwardState {
    /// The entry's name.
    pub name: String,
    /// kubeconfig context, if the entry named one.
    pub context: Option<String>,
    /// The namespace, if known.
    pub namespace: Option<String>,
    /// `TYPE/NAME`.
    pub target: String,
    /// See [`Phase`].
    pub state: Phase,
    /// The pod currently served.
    pub pod: Option<String>,
    /// Bound local addresses.
    pub ports: Vec<PortMap>,
    /// Reverse forwards listening in the pod: `9000->localhost:5432`.
    pub reverse: Vec<String>,
    /// Forwarded connections still open.
    pub connections_open: u64,
    /// Forwarded connections since the start.
    pub connections_total: u64,
    /// Bytes from local clients to the pod: closed connections plus what open ones reported
    /// (once a second while they move).
    pub bytes_to_pod: u64,
    /// Bytes from the pod to local clients, counted the same way.
    pub bytes_from_pod: u64,
    /// Lost sessions so far.
    pub reconnects: u64,
    /// The last error or reason for a lost session.
    pub last_error: Option<String>,
    /// Bytes of closed connections: `(to_pod, from_pod)`.
    #[serde(skip)]
    closed_bytes: (u64, u64),
    /// Last reported bytes of open connections, by connection id.
    #[serde(skip)]
    open_bytes: BTreeMap<u64, (u64, u64)>,
}

impl ForwardState {
    /// A forward that has not connected yet.
    pub fn new(
        name: String,
        context: Option<String>,
        namespace: Option<String>,
        target: String,
    ) -> Self {
        ForwardState {
            name,
            context,
            namespace,
            target,
            state: Phase::Connecting,
            pod: None,
            ports: Vec::new(),
            reverse: Vec::new(),
            connections_open: 0,
            connections_total: 0,
            bytes_to_pod: 0,
            bytes_from_pod: 0,
            reconnects: 0,
            last_error: None,
            closed_bytes: (0, 0),
            open_bytes: BTreeMap::new(),
        }
    }

    /// Totals: closed connections plus what open ones reported so far.
    fn sum_bytes(&mut self) {
        let (mut to_pod, mut from_pod) = self.closed_bytes;
        for (t, f) in self.open_bytes.values() {
            to_pod += t;
            from_pod += f;
        }
        self.bytes_to_pod = to_pod;
        self.bytes_from_pod = from_pod;
    }

    /// The forward is started (again, after a failure): its listeners are gone.
    pub fn restarting(&mut self) {
        self.state = Phase::Connecting;
        self.ports.clear();
        self.reverse.clear();
        self.connections_open = 0;
        // Connection ids start again in the new run; what the old one moved is kept.
        let open = std::mem::take(&mut self.open_bytes);
        for (t, f) in open.values() {
            self.closed_bytes.0 += t;
            self.closed_bytes.1 += f;
        }
        self.sum_bytes();
    }

    /// Folds one engine event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Connected { pod, .. } => self.pod = Some(pod.clone()),
            Event::Listening {
                address,
                local_port,
                remote_port,
            } => self.listening(address, *local_port, *remote_port, "tcp"),
            Event::UdpListening {
                address,
                local_port,
                remote_port,
            } => self.listening(address, *local_port, *remote_port, "udp"),
            Event::ReverseListening {
                pod,
                pod_port,
                local,
            } => {
                let text = format!("{pod_port}->{local}");
                if !self.reverse.contains(&text) {
                    self.reverse.push(text);
                }
                self.pod = Some(pod.clone());
                self.state = Phase::Ready;
            }
            // A UDP flow and a connection made inside the pod count as connections too.
            Event::ConnectionOpened { pod, .. }
            | Event::UdpFlowOpened { pod, .. }
            | Event::ReverseConnectionOpened { pod, .. } => {
                self.connections_open += 1;
                self.connections_total += 1;
                self.pod = Some(pod.clone());
            }
            Event::UdpFlowClosed { error, .. } => {
                self.connections_open = self.connections_open.saturating_sub(1);
                if let Some(e) = error {
                    self.last_error = Some(e.clone());
                }
            }
            Event::ReverseConnectionClosed {
                bytes_to_pod,
                bytes_from_pod,
                error,
                ..
            } => {
                self.connections_open = self.connections_open.saturating_sub(1);
                self.closed_bytes.0 += bytes_to_pod;
                self.closed_bytes.1 += bytes_from_pod;
                self.sum_bytes();
                if let Some(e) = error {
                    self.last_error = Some(e.clone());
                }
            }
            Event::ConnectionProgress {
                id,
                bytes_to_pod,
                bytes_from_pod,
                ..
            } => {
                self.open_bytes
                    .insert(*id, (*bytes_to_pod, *bytes_from_pod));
                self.sum_bytes();
            }
            Event::ConnectionClosed {
                id,
                bytes_to_pod,
                bytes_from_pod,
                error,
                ..
            } => {
                self.connections_open = self.connections_open.saturating_sub(1);
                // A failed connection reports 0 bytes at close; what it moved before counts.
                let (t, f) = self.open_bytes.remove(id).unwrap_or_default();
                self.closed_bytes.0 += t.max(*bytes_to_pod);
                self.closed_bytes.1 += f.max(*bytes_from_pod);
                self.sum_bytes();
                if let Some(e) = error {
                    self.last_error = Some(e.clone());
                }
            }
            Event::Reconnecting { reason, .. } => {
                self.state = Phase::Reconnecting;
                self.reconnects += 1;
                self.last_error = Some(reason.clone());
            }
            Event::Reconnected { pod, .. } => {
                self.state = Phase::Ready;
                self.pod = Some(pod.clone());
            }
            Event::Error { message, fatal } => {
                if *fatal {
                    self.state = Phase::Failed;
                }
                self.last_error = Some(message.clone());
            }
        }
    }

    fn listening(
        &mut self,
        address: &str,
        local_port: u16,
        remote_port: u16,
        protocol: &'static str,
    ) {
        let map = PortMap {
            address: address.to_string(),
            local_port,
            remote_port,
            protocol,
        };
        if !self.ports.contains(&map) {
            self.ports.push(map);
        }
        self.state = Phase::Ready;
    }

    /// `127.0.0.1:8080->80, ...`: one item per local port (IPv4 shown when both are bound),
    /// `/udp` after UDP ports, then the reverse forwards (`rev 9000->localhost:5432`).
    pub fn ports_text(&self) -> String {
        let mut items: Vec<String> = Vec::new();
        for p in &self.ports {
            let text = format!(
                "{}->{}{}",
                crate::listen::join_host_port(&p.address, p.local_port),
                p.remote_port,
                if p.protocol == "udp" { "/udp" } else { "" }
            );
            let same_port_shown = self.ports.iter().take_while(|q| *q != p).any(|q| {
                q.local_port == p.local_port
                    && q.remote_port == p.remote_port
                    && q.protocol == p.protocol
            });
            if !same_port_shown {
                items.push(text);
            }
        }
        items.extend(self.reverse.iter().map(|r| format!("rev {r}")));
        items.join(", ")
    }
}

/// `1.5KiB`-style byte counts for the view.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fold_into_a_row() {
        let mut s = ForwardState::new("web".into(), None, Some("a".into()), "pod/web".into());
        s.apply(&Event::Connected {
            pod: "web".into(),
            transport: "websocket".into(),
        });
        assert_eq!(s.state, Phase::Connecting);
        for address in ["127.0.0.1", "::1"] {
            s.apply(&Event::Listening {
                address: address.into(),
                local_port: 8080,
                remote_port: 80,
            });
        }
        assert_eq!(s.state, Phase::Ready);
        assert_eq!(s.ports_text(), "127.0.0.1:8080->80");
        s.apply(&Event::ConnectionOpened {
            id: 0,
            local_port: 8080,
            remote_port: 80,
            peer: "127.0.0.1:1".into(),
            pod: "web".into(),
        });
        assert_eq!((s.connections_open, s.connections_total), (1, 1));
        s.apply(&Event::ConnectionProgress {
            id: 0,
            local_port: 8080,
            remote_port: 80,
            pod: "web".into(),
            bytes_to_pod: 10,
            bytes_from_pod: 1000,
        });
        assert_eq!((s.bytes_to_pod, s.bytes_from_pod), (10, 1000));
        s.apply(&Event::ConnectionClosed {
            id: 0,
            local_port: 8080,
            remote_port: 80,
            pod: "web".into(),
            bytes_to_pod: 10,
            bytes_from_pod: 2000,
            error: None,
        });
        assert_eq!(
            (s.connections_open, s.bytes_to_pod, s.bytes_from_pod),
            (0, 10, 2000)
        );
        s.apply(&Event::Reconnecting {
            pod: "web".into(),
            reason: "pod web was deleted".into(),
        });
        assert_eq!(s.state, Phase::Reconnecting);
        assert_eq!(s.last_error.as_deref(), Some("pod web was deleted"));
        s.apply(&Event::Reconnected {
            pod: "web".into(),
            transport: "spdy".into(),
        });
        assert_eq!(s.state, Phase::Ready);
        s.apply(&Event::Error {
            message: "error: gone".into(),
            fatal: true,
        });
        assert_eq!(s.state, Phase::Failed);
        s.restarting();
        assert_eq!(s.state, Phase::Connecting);
        assert!(s.ports.is_empty());
        assert_eq!(s.connections_total, 1);
    }

    #[test]
    fn byte_counts() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0MiB");
    }
}
