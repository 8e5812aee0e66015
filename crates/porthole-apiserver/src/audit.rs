//! The audit log: one JSON object per line in `--audit-log-path`.
//!
//! Every port-forward session writes exactly one record when it ends (or is refused); other
//! requests write one record each. Tokens never appear: records carry the user name only.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One port-forward session.
#[derive(Debug, Serialize, Default, Clone)]
pub struct PortForwardRecord {
    /// RFC 3339 time the session started.
    pub start: String,
    /// `portforward`, or `reverseforward` for `pods/{pod}/reverseforward`.
    pub kind: &'static str,
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Kubernetes verb authorized (`create` or `get`).
    pub verb: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node name ("" when not reached).
    pub node: String,
    /// `spdy`, `websocket-tunnel`, `websocket-channels` or `unknown`.
    pub protocol: String,
    /// Ports when known (WebSocket channels carry them in the query).
    pub ports: Vec<u16>,
    /// Client address.
    pub source: String,
    /// Bytes copied client → node.
    pub bytes_client_to_node: u64,
    /// Bytes copied node → client.
    pub bytes_node_to_client: u64,
    /// Session length in milliseconds.
    pub duration_ms: u64,
    /// `ok`, `rejected: ...`, `node refused: STATUS`, `error: ...`.
    pub outcome: String,
}

/// One ordinary API request.
#[derive(Debug, Serialize)]
pub struct RequestRecord<'a> {
    /// RFC 3339 time.
    pub time: String,
    /// Always `request`.
    pub kind: &'static str,
    /// User name ("" when unauthenticated).
    pub user: &'a str,
    /// Verb or lowercase method.
    pub verb: &'a str,
    /// Request path (no query: queries can carry selectors, never secrets, but keep it short).
    pub path: &'a str,
    /// HTTP status answered.
    pub code: u16,
    /// Client address.
    pub source: String,
}

/// Appends records to the audit file.
pub struct AuditLog {
    file: Option<Mutex<std::fs::File>>,
}

impl AuditLog {
    /// Open (append) the log; `None` disables auditing.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("create audit log dir {}: {e}", dir.display())
                    })?;
                }
                Some(Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| anyhow::anyhow!("open audit log {}: {e}", p.display()))?,
                ))
            }
            None => None,
        };
        Ok(Self { file })
    }

    /// Write one record as a JSON line.
    pub fn write<T: Serialize>(&self, record: &T) {
        let Some(file) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "cannot write the audit log; check the disk and --audit-log-path");
        }
    }
}
