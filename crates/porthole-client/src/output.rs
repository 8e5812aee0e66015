//! What the user sees. Text mode prints kubectl's stdout lines byte for byte (PROTOCOL.md §7.4)
//! and our own resilience messages on stderr; `--output json` prints one [`Event`] per line on
//! stdout instead, for scripts.

use std::io::Write;

use serde::Serialize;

use crate::target::ResolveError;

/// kubectl's `error: ` prefix, added here, where a failure becomes a printed line, so library
/// error types carry only what went wrong and a caller that wraps them does not print the
/// prefix in the middle of its own message.
pub fn error_line(e: impl std::fmt::Display) -> String {
    format!("error: {e}")
}

/// The line kubectl prints when it cannot resolve the target: the API server's
/// `Error from server ...` lines as they are, its own failures behind `error: `.
pub fn resolve_error_line(e: &ResolveError) -> String {
    match e {
        ResolveError::NotFound(_) | ResolveError::Api(_) => e.to_string(),
        ResolveError::Transport(_) | ResolveError::NotReady(_) | ResolveError::Invalid(_) => {
            error_line(e)
        }
    }
}

/// Output format (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// kubectl's lines.
    #[default]
    Text,
    /// One JSON object per line on stdout.
    Json,
}

/// One machine-readable event (`--output json`). Serialized with an `event` tag, snake_case
/// names and a `time` field added by [`Output::event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A local listener is open (kubectl's `Forwarding from` line).
    Listening {
        /// Address as given (`127.0.0.1`, `::1`, ...).
        address: String,
        /// Bound local port.
        local_port: u16,
        /// Remote (pod) port.
        remote_port: u16,
    },
    /// A local connection was accepted and is being forwarded.
    ConnectionOpened {
        /// Per-run connection number, starting at 0.
        id: u64,
        /// Local port it arrived on.
        local_port: u16,
        /// Pod port it goes to.
        remote_port: u16,
        /// The local peer (`127.0.0.1:54321`).
        peer: String,
        /// The pod serving it.
        pod: String,
    },
    /// A forwarded connection ended.
    ConnectionClosed {
        /// Matches [`Event::ConnectionOpened::id`].
        id: u64,
        /// Local port.
        local_port: u16,
        /// Pod port.
        remote_port: u16,
        /// The pod that served it.
        pod: String,
        /// Bytes copied from the local socket to the pod.
        bytes_to_pod: u64,
        /// Bytes copied from the pod to the local socket.
        bytes_from_pod: u64,
        /// Why it failed, if it did (the pod's error text, or a local error).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An open connection's byte counts so far, at most once a second while they move; only
    /// for `porthole forward` (see [`Output::wants_progress`]).
    ConnectionProgress {
        /// Matches [`Event::ConnectionOpened::id`].
        id: u64,
        /// Local port.
        local_port: u16,
        /// Pod port.
        remote_port: u16,
        /// The pod serving it.
        pod: String,
        /// Bytes from the local socket so far.
        bytes_to_pod: u64,
        /// Bytes to the local socket so far.
        bytes_from_pod: u64,
    },
    /// The session to a pod was lost; a new one is being established.
    Reconnecting {
        /// The pod whose session ended.
        pod: String,
        /// Why it ended.
        reason: String,
    },
    /// The first session of a run is up (before its listeners open); later sessions are
    /// [`Event::Reconnected`].
    Connected {
        /// The pod served.
        pod: String,
        /// `websocket` or `spdy`.
        transport: String,
    },
    /// A session (re)connected.
    Reconnected {
        /// The pod now served.
        pod: String,
        /// `websocket` or `spdy`.
        transport: String,
    },
    /// A local UDP socket is bound (`Forwarding from 127.0.0.1:5353 -> 53/udp`).
    UdpListening {
        /// Address as given.
        address: String,
        /// Bound local port.
        local_port: u16,
        /// Remote (pod) UDP port.
        remote_port: u16,
    },
    /// A UDP flow (one local source address and port) got its stream pair to the pod.
    UdpFlowOpened {
        /// Per-run flow number, starting at 0.
        id: u64,
        /// Local port the datagrams arrive on.
        local_port: u16,
        /// Pod UDP port.
        remote_port: u16,
        /// The local source (`127.0.0.1:54321`).
        peer: String,
        /// The pod serving it.
        pod: String,
    },
    /// A UDP flow ended (idle timeout, session lost, the pod refused, or shutdown).
    UdpFlowClosed {
        /// Matches [`Event::UdpFlowOpened::id`].
        id: u64,
        /// Local port.
        local_port: u16,
        /// Pod UDP port.
        remote_port: u16,
        /// Datagrams sent to the pod.
        datagrams_to_pod: u64,
        /// Datagrams sent back to the local source.
        datagrams_from_pod: u64,
        /// Datagrams dropped because the flow's queue was full (as a full socket would).
        dropped: u64,
        /// Why it failed, if it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A reverse forward is listening inside the pod (`Reverse forwarding from pod ...`).
    ReverseListening {
        /// The pod listening.
        pod: String,
        /// The port inside the pod (127.0.0.1, and ::1 where the pod has it).
        pod_port: u16,
        /// The local target (`localhost:5432`).
        local: String,
    },
    /// A connection made inside the pod arrived (`Handling reverse connection for`).
    ReverseConnectionOpened {
        /// Per-spec connection number, starting at 0.
        id: u64,
        /// The pod port it was made to.
        pod_port: u16,
        /// The local target it goes to.
        local: String,
        /// The pod it came from.
        pod: String,
    },
    /// A reverse connection ended.
    ReverseConnectionClosed {
        /// Matches [`Event::ReverseConnectionOpened::id`].
        id: u64,
        /// The pod port.
        pod_port: u16,
        /// The pod.
        pod: String,
        /// Bytes from the local target to the pod.
        bytes_to_pod: u64,
        /// Bytes from the pod to the local target.
        bytes_from_pod: u64,
        /// Why it failed, if it did (e.g. the local target refused).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An error (per connection or fatal).
    Error {
        /// The message, as it would be printed in text mode.
        message: String,
        /// Whether the command is about to exit because of it.
        fatal: bool,
    },
}

/// Serializes [`Event`]s with a timestamp.
#[derive(Serialize)]
struct Stamped<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// The printer shared by every task.
#[derive(Debug, Clone)]
pub struct Output {
    format: OutputFormat,
    /// Every event is also sent here (tests and embedders observe the run without parsing
    /// stdout).
    tap: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
    /// Print nothing; the tap is the only output (a forward set renders its own view).
    silent: bool,
}

impl Output {
    /// A printer for `format`.
    pub fn new(format: OutputFormat) -> Output {
        Output {
            format,
            tap: None,
            silent: false,
        }
    }

    /// A printer that prints nothing and sends every [`Event`] to `tap` (`porthole forward`
    /// runs many forwards and shows their events in one view of its own).
    pub fn tap_only(tap: tokio::sync::mpsc::UnboundedSender<Event>) -> Output {
        Output {
            format: OutputFormat::Text,
            tap: Some(tap),
            silent: true,
        }
    }

    /// Also sends every [`Event`] to `tap`, in either format.
    pub fn with_tap(mut self, tap: tokio::sync::mpsc::UnboundedSender<Event>) -> Output {
        self.tap = Some(tap);
        self
    }

    /// Whether open connections should report [`Event::ConnectionProgress`] (a forward set's
    /// live view does; `port-forward`'s output stays as it was).
    pub fn wants_progress(&self) -> bool {
        self.silent && self.tap.is_some()
    }

    /// Whether JSON events are printed instead of kubectl's lines.
    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    pub(crate) fn stdout_line(&self, line: &str) {
        if self.silent {
            return;
        }
        let mut out = std::io::stdout().lock();
        // Flushed per line: scripts (and tests) wait for these lines through a pipe. A closed
        // stdout is not a reason to stop forwarding.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Prints a line on stderr (human messages in either format).
    pub fn stderr_line(&self, line: &str) {
        if self.silent {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    /// Records one event: a JSON line in JSON mode, and the tap in either mode.
    pub fn event(&self, event: Event) {
        if self.is_json() {
            let stamped = Stamped {
                time: jiff::Timestamp::now().to_string(),
                event: &event,
            };
            match serde_json::to_string(&stamped) {
                Ok(line) => self.stdout_line(&line),
                Err(e) => self.stderr_line(&format!("error: cannot encode output event: {e}")),
            }
        }
        if let Some(tap) = &self.tap {
            let _ = tap.send(event);
        }
    }

    /// `Forwarding from 127.0.0.1:8080 -> 80` (or the `listening` event).
    pub fn listening(&self, address: &str, local_port: u16, remote_port: u16) {
        if !self.is_json() {
            let hp = crate::listen::join_host_port(address, local_port);
            self.stdout_line(&format!("Forwarding from {hp} -> {remote_port}"));
        }
        self.event(Event::Listening {
            address: address.to_string(),
            local_port,
            remote_port,
        });
    }

    /// `Forwarding from 127.0.0.1:5353 -> 53/udp` (or the `udp_listening` event).
    pub fn listening_udp(&self, address: &str, local_port: u16, remote_port: u16) {
        if !self.is_json() {
            let hp = crate::listen::join_host_port(address, local_port);
            self.stdout_line(&format!("Forwarding from {hp} -> {remote_port}/udp"));
        }
        self.event(Event::UdpListening {
            address: address.to_string(),
            local_port,
            remote_port,
        });
    }

    /// A local connection was accepted: kubectl's `Handling connection for 8080` (text mode).
    pub fn accepted(&self, local_port: u16) {
        if !self.is_json() {
            self.stdout_line(&format!("Handling connection for {local_port}"));
        }
    }

    /// The accepted connection is being forwarded to `pod` (the `connection_opened` event).
    pub fn opened(&self, id: u64, local_port: u16, remote_port: u16, peer: String, pod: &str) {
        self.event(Event::ConnectionOpened {
            id,
            local_port,
            remote_port,
            peer,
            pod: pod.to_string(),
        });
    }

    /// A non-fatal error: stderr in text mode, an `error` event in JSON mode.
    pub fn warn(&self, message: &str) {
        if !self.is_json() {
            self.stderr_line(message);
        }
        self.event(Event::Error {
            message: message.to_string(),
            fatal: false,
        });
    }

    /// The fatal error the command exits with: always on stderr (`error: ...` as kubectl), and
    /// also as an event.
    pub fn fatal(&self, line: &str) {
        self.event(Event::Error {
            message: line.to_string(),
            fatal: true,
        });
        self.stderr_line(line);
    }

    /// A resilience notice (`Lost connection to pod ...; reconnecting`): stderr in text mode,
    /// plus the given event.
    pub fn notice(&self, line: &str, event: Event) {
        if !self.is_json() {
            self.stderr_line(line);
        }
        self.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &Event) -> serde_json::Value {
        serde_json::to_value(Stamped {
            time: "T".into(),
            event: e,
        })
        .unwrap()
    }

    #[test]
    fn kubectl_prefix_only_on_our_own_failures() {
        assert_eq!(
            resolve_error_line(&ResolveError::NotFound("pods \"web\" not found".into())),
            "Error from server (NotFound): pods \"web\" not found"
        );
        assert_eq!(
            resolve_error_line(&ResolveError::NotReady("pod web is not running".into())),
            "error: pod web is not running"
        );
    }

    #[test]
    fn event_shapes() {
        assert_eq!(
            json(&Event::Listening {
                address: "::1".into(),
                local_port: 8080,
                remote_port: 80
            }),
            serde_json::json!({"time": "T", "event": "listening", "address": "::1", "local_port": 8080, "remote_port": 80})
        );
        assert_eq!(
            json(&Event::ConnectionOpened {
                id: 3,
                local_port: 8080,
                remote_port: 80,
                peer: "127.0.0.1:5000".into(),
                pod: "web-0".into()
            }),
            serde_json::json!({"time": "T", "event": "connection_opened", "id": 3, "local_port": 8080,
                               "remote_port": 80, "peer": "127.0.0.1:5000", "pod": "web-0"})
        );
        assert_eq!(
            json(&Event::ConnectionClosed {
                id: 3,
                local_port: 8080,
                remote_port: 80,
                pod: "web-0".into(),
                bytes_to_pod: 5,
                bytes_from_pod: 7,
                error: None
            }),
            serde_json::json!({"time": "T", "event": "connection_closed", "id": 3, "local_port": 8080,
                               "remote_port": 80, "pod": "web-0", "bytes_to_pod": 5, "bytes_from_pod": 7})
        );
        assert_eq!(
            json(&Event::ConnectionClosed {
                id: 4,
                local_port: 1,
                remote_port: 2,
                pod: "p".into(),
                bytes_to_pod: 0,
                bytes_from_pod: 0,
                error: Some("refused".into())
            })["error"],
            "refused"
        );
        assert_eq!(
            json(&Event::Reconnecting {
                pod: "web-0".into(),
                reason: "EOF".into()
            }),
            serde_json::json!({"time": "T", "event": "reconnecting", "pod": "web-0", "reason": "EOF"})
        );
        assert_eq!(
            json(&Event::Connected {
                pod: "web-0".into(),
                transport: "websocket".into()
            }),
            serde_json::json!({"time": "T", "event": "connected", "pod": "web-0", "transport": "websocket"})
        );
        assert_eq!(
            json(&Event::ConnectionProgress {
                id: 3,
                local_port: 8080,
                remote_port: 80,
                pod: "web-0".into(),
                bytes_to_pod: 5,
                bytes_from_pod: 7,
            }),
            serde_json::json!({"time": "T", "event": "connection_progress", "id": 3, "local_port": 8080,
                               "remote_port": 80, "pod": "web-0", "bytes_to_pod": 5, "bytes_from_pod": 7})
        );
        assert_eq!(
            json(&Event::Reconnected {
                pod: "web-1".into(),
                transport: "spdy".into()
            }),
            serde_json::json!({"time": "T", "event": "reconnected", "pod": "web-1", "transport": "spdy"})
        );
        assert_eq!(
            json(&Event::ReverseListening {
                pod: "web".into(),
                pod_port: 9000,
                local: "localhost:5432".into()
            }),
            serde_json::json!({"time": "T", "event": "reverse_listening", "pod": "web",
                               "pod_port": 9000, "local": "localhost:5432"})
        );
        assert_eq!(
            json(&Event::ReverseConnectionOpened {
                id: 0,
                pod_port: 9000,
                local: "localhost:5432".into(),
                pod: "web".into()
            }),
            serde_json::json!({"time": "T", "event": "reverse_connection_opened", "id": 0,
                               "pod_port": 9000, "local": "localhost:5432", "pod": "web"})
        );
        assert_eq!(
            json(&Event::ReverseConnectionClosed {
                id: 0,
                pod_port: 9000,
                pod: "web".into(),
                bytes_to_pod: 3,
                bytes_from_pod: 4,
                error: Some("dial tcp 127.0.0.1:5432: connect: connection refused".into())
            }),
            serde_json::json!({"time": "T", "event": "reverse_connection_closed", "id": 0,
                               "pod_port": 9000, "pod": "web", "bytes_to_pod": 3, "bytes_from_pod": 4,
                               "error": "dial tcp 127.0.0.1:5432: connect: connection refused"})
        );
        assert_eq!(
            json(&Event::Error {
                message: "boom".into(),
                fatal: true
            }),
            serde_json::json!({"time": "T", "event": "error", "message": "boom", "fatal": true})
        );
    }
}
