//! How a set shows itself: a live table on a terminal, plain lines otherwise, JSON events with
//! `-o json`.
//!
//! The table is redrawn in place with plain ANSI sequences (cursor to the start of the previous
//! frame, clear below), about four times a second. Line wrap and the cursor are turned off while
//! it runs and restored when it ends ([`TableGuard`]), so a long row is cut at the terminal's
//! edge instead of breaking the in-place redraw.

use std::io::Write;

use serde::Serialize;

use super::state::{human_bytes, ForwardState, Phase};
use crate::output::Event;

/// Which of the three outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewMode {
    /// The live table (stdout is a terminal).
    Table,
    /// One line per event (stdout is a pipe or file).
    Plain,
    /// One JSON object per line (`-o json`), tagged with the forward's name.
    Json,
}

/// Lines written to stdout are flushed at once: scripts and tests wait for them on a pipe, and a
/// closed stdout is no reason to stop forwarding.
pub fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A set-level message (not from one forward) in the chosen mode.
pub fn notice(mode: ViewMode, json_event: &str, fields: serde_json::Value, text: &str) {
    match mode {
        ViewMode::Json => {
            let mut v = serde_json::json!({
                "time": jiff::Timestamp::now().to_string(),
                "event": json_event,
            });
            if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), fields) {
                obj.extend(extra);
            }
            stdout_line(&v.to_string());
        }
        ViewMode::Plain | ViewMode::Table => stdout_line(text),
    }
}

/// `-o json`: the engine's event, as `porthole port-forward -o json` prints it, plus `forward`.
pub fn json_line(name: &str, event: &Event) -> String {
    #[derive(Serialize)]
    struct Tagged<'a> {
        time: String,
        forward: &'a str,
        #[serde(flatten)]
        event: &'a Event,
    }
    serde_json::to_string(&Tagged {
        time: jiff::Timestamp::now().to_string(),
        forward: name,
        event,
    })
    .unwrap_or_else(|e| {
        serde_json::json!({"event": "error", "forward": name, "message": format!("cannot encode event: {e}"), "fatal": false}).to_string()
    })
}

/// The plain line for an event, if it is worth one (progress of open connections is not: the
/// table and `/status` show it).
pub fn plain_line(name: &str, event: &Event) -> Option<String> {
    let text = match event {
        Event::ConnectionProgress { .. } => return None,
        Event::Connected { pod, transport } => format!("connected to pod {pod} ({transport})"),
        Event::Listening {
            address,
            local_port,
            remote_port,
        } => format!(
            "forwarding {} -> {remote_port}",
            crate::listen::join_host_port(address, *local_port)
        ),
        Event::ConnectionOpened {
            id,
            local_port,
            remote_port,
            peer,
            pod,
        } => format!(
            "connection {id} from {peer} on port {local_port} to pod {pod} port {remote_port}"
        ),
        Event::ConnectionClosed {
            id,
            bytes_to_pod,
            bytes_from_pod,
            error,
            ..
        } => {
            with_error(
                format!(
                    "connection {id} closed: {bytes_to_pod} bytes to the pod, {bytes_from_pod} bytes from it"
                ),
                error,
            )
        }
        Event::UdpListening {
            address,
            local_port,
            remote_port,
        } => format!(
            "forwarding {} -> {remote_port}/udp",
            crate::listen::join_host_port(address, *local_port)
        ),
        Event::UdpFlowOpened {
            id,
            local_port,
            remote_port,
            peer,
            pod,
        } => format!(
            "udp flow {id} from {peer} on port {local_port} to pod {pod} port {remote_port}/udp"
        ),
        Event::UdpFlowClosed {
            id,
            datagrams_to_pod,
            datagrams_from_pod,
            dropped,
            error,
            ..
        } => {
            with_error(
                format!(
                    "udp flow {id} closed: {datagrams_to_pod} datagrams to the pod, {datagrams_from_pod} from it, {dropped} dropped"
                ),
                error,
            )
        }
        Event::ReverseListening {
            pod,
            pod_port,
            local,
        } => format!("reverse forwarding from pod {pod} port {pod_port} -> {local}"),
        Event::ReverseConnectionOpened {
            id,
            pod_port,
            local,
            pod,
        } => format!("reverse connection {id} from pod {pod} port {pod_port} to {local}"),
        Event::ReverseConnectionClosed {
            id,
            bytes_to_pod,
            bytes_from_pod,
            error,
            ..
        } => {
            with_error(
                format!(
                    "reverse connection {id} closed: {bytes_to_pod} bytes to the pod, {bytes_from_pod} bytes from it"
                ),
                error,
            )
        }
        Event::Reconnecting { pod, reason } => {
            format!("reconnecting: lost pod {pod}: {reason}")
        }
        Event::Reconnected { pod, transport } => {
            format!("ready: reconnected to pod {pod} ({transport})")
        }
        Event::Error { message, fatal } => {
            if *fatal {
                format!("failed: {message}")
            } else {
                message.clone()
            }
        }
    };
    Some(format!("[{name}] {text}"))
}

/// `text`, then ` (error: E)` when there was one.
fn with_error(mut text: String, error: &Option<String>) -> String {
    if let Some(e) = error {
        text.push_str(&format!(" (error: {e})"));
    }
    text
}

/// Restores the terminal when the table ends, however it ends.
pub struct TableGuard;

impl TableGuard {
    /// Turns off line wrap and the cursor.
    pub fn start() -> TableGuard {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?25l\x1b[?7l");
        let _ = out.flush();
        TableGuard
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?7h\x1b[?25h");
        let _ = out.flush();
    }
}

const MAX_ERROR_CHARS: usize = 70;

/// The terminal's height in lines, if stdout is a terminal that says.
pub fn terminal_lines() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_row > 0).then_some(usize::from(size.ws_row))
}

/// The header and rows of one frame, at most `max_lines` of them: a frame taller than the
/// terminal could not be redrawn in place, so the rows that do not fit are counted instead.
pub fn table_lines(
    states: &[ForwardState],
    header_extra: &str,
    max_lines: Option<usize>,
) -> Vec<String> {
    let count = |p: Phase| states.iter().filter(|s| s.state == p).count();
    let mut summary = format!(
        "porthole forward: {} forwards, {} ready",
        states.len(),
        count(Phase::Ready)
    );
    for p in [Phase::Connecting, Phase::Reconnecting, Phase::Failed] {
        let n = count(p);
        if n > 0 {
            summary.push_str(&format!(", {n} {}", p.as_str()));
        }
    }
    if !header_extra.is_empty() {
        summary.push_str(&format!(" · {header_extra}"));
    }
    summary.push_str(" · Ctrl-C stops");
    let mut rows: Vec<[String; 8]> = vec![[
        "NAME".into(),
        "STATE".into(),
        "POD".into(),
        "PORTS (LOCAL->POD)".into(),
        "CONNS OPEN/TOTAL".into(),
        "BYTES IN".into(),
        "BYTES OUT".into(),
        "LAST ERROR".into(),
    ]];
    for s in states {
        let mut error = s.last_error.clone().unwrap_or_default().replace('\n', " ");
        if error.chars().count() > MAX_ERROR_CHARS {
            error = error.chars().take(MAX_ERROR_CHARS - 1).collect::<String>() + "…";
        }
        rows.push([
            s.name.clone(),
            s.state.as_str().into(),
            s.pod.clone().unwrap_or_else(|| "-".into()),
            if s.ports.is_empty() {
                "-".into()
            } else {
                s.ports_text()
            },
            format!("{}/{}", s.connections_open, s.connections_total),
            human_bytes(s.bytes_from_pod),
            human_bytes(s.bytes_to_pod),
            if error.is_empty() { "-".into() } else { error },
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut lines = vec![summary];
    for r in rows {
        let mut line = String::new();
        for (i, (w, c)) in widths.iter().zip(&r).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = *w));
            }
        }
        lines.push(line.trim_end().to_string());
    }
    if let Some(max) = max_lines {
        // Header, column names and the "more" line stay.
        if lines.len() > max && max >= 3 {
            let hidden = lines.len() - (max - 1);
            lines.truncate(max - 1);
            lines.push(format!(
                "… {hidden} more forwards not shown (a taller terminal, --view plain or --status-addr shows them)"
            ));
        }
    }
    lines
}

/// Draws frames in place.
pub struct TableWriter {
    previous: Vec<String>,
}

impl TableWriter {
    /// Nothing drawn yet.
    pub fn new() -> TableWriter {
        TableWriter {
            previous: Vec::new(),
        }
    }

    /// Replaces the previous frame with `lines` (nothing is written when they are the same).
    pub fn draw(&mut self, lines: &[String]) {
        if self.previous == lines {
            return;
        }
        let mut frame = String::new();
        if !self.previous.is_empty() {
            // To the first column of the previous frame's first line.
            frame.push_str(&format!("\x1b[{}F", self.previous.len()));
        }
        for l in lines {
            frame.push_str(l);
            frame.push_str("\x1b[K\n");
        }
        frame.push_str("\x1b[J");
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
        self.previous = lines.to_vec();
    }
}

impl Default for TableWriter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_line_up() {
        let mut a = ForwardState::new("web".into(), None, None, "pod/web".into());
        a.apply(&Event::Connected {
            pod: "web".into(),
            transport: "spdy".into(),
        });
        a.apply(&Event::Listening {
            address: "127.0.0.1".into(),
            local_port: 8080,
            remote_port: 8000,
        });
        a.bytes_from_pod = 2048;
        let b = ForwardState::new("database".into(), None, None, "svc/db".into());
        let lines = table_lines(&[a.clone(), b], "status http://127.0.0.1:1/status", None);
        assert_eq!(
            lines[0],
            "porthole forward: 2 forwards, 1 ready, 1 connecting · status http://127.0.0.1:1/status · Ctrl-C stops"
        );
        assert!(
            lines[1].starts_with("NAME      STATE       POD  PORTS (LOCAL->POD)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("web       ready       web  127.0.0.1:8080->8000"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains("0/0               2.0KiB    0B         -"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("database  connecting  -    -"),
            "{}",
            lines[3]
        );
        let many: Vec<ForwardState> = (0..6).map(|_| a.clone()).collect();
        let lines = table_lines(&many, "", Some(5));
        assert_eq!(lines.len(), 5);
        assert!(
            lines[4].starts_with("… 4 more forwards not shown"),
            "{}",
            lines[4]
        );
    }

    #[test]
    fn plain_and_json_lines_name_the_forward() {
        let ev = Event::Reconnecting {
            pod: "web".into(),
            reason: "pod web was deleted".into(),
        };
        assert_eq!(
            plain_line("web", &ev).unwrap(),
            "[web] reconnecting: lost pod web: pod web was deleted"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line("web", &ev)).unwrap();
        assert_eq!(v["forward"], "web");
        assert_eq!(v["event"], "reconnecting");
        assert_eq!(v["reason"], "pod web was deleted");
    }
}
