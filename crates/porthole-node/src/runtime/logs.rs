//! Container logs: capture (pipes → CRI-format files) and serving (`/containerLogs`).
//!
//! Files use the CRI log format the kubelet reads, one line per record:
//! `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <message>`, where `P` marks a partial line
//! (the message continues in the next record) — so `timestamps=true` needs no extra storage.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest partial line kept in memory before it is written as a `P` record.
const MAX_PARTIAL: usize = 16 * 1024;

/// One run (one restart count) of one container's log.
#[derive(Clone)]
pub(crate) struct LogRun {
    pub(crate) path: PathBuf,
    /// Signalled after every append, so followers wake without polling.
    pub(crate) appended: Arc<Notify>,
    /// Cancelled when both pipes reached EOF: nothing more will be appended.
    pub(crate) finished: CancellationToken,
}

impl LogRun {
    pub(crate) fn new(path: PathBuf) -> Self {
        LogRun {
            path,
            appended: Arc::new(Notify::new()),
            finished: CancellationToken::new(),
        }
    }
}

/// Shared append-only writer for one run; both pipe readers write whole records through it.
pub(crate) struct LogWriter {
    file: Mutex<std::fs::File>,
    run: LogRun,
}

impl LogWriter {
    pub(crate) fn create(run: LogRun) -> io::Result<Arc<Self>> {
        if let Some(dir) = run.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&run.path)?;
        Ok(Arc::new(LogWriter {
            file: Mutex::new(file),
            run,
        }))
    }

    fn record(&self, stream: &str, partial: bool, msg: &[u8]) {
        let ts = k8s_openapi::jiff::Timestamp::now();
        let mut line = Vec::with_capacity(msg.len() + 48);
        let _ = write!(
            line,
            "{ts:.9} {stream} {} ",
            if partial { 'P' } else { 'F' }
        );
        line.extend_from_slice(msg);
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, path = %self.run.path.display(), "writing container log");
        }
        drop(file);
        self.run.appended.notify_waiters();
    }

    /// Copies one pipe into the log until EOF, splitting it into line records.
    pub(crate) async fn pump(self: Arc<Self>, mut pipe: impl AsyncRead + Unpin, stream: &str) {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                self.record(stream, false, &pending[start..start + pos]);
                start += pos + 1;
            }
            pending.drain(..start);
            if pending.len() > MAX_PARTIAL {
                self.record(stream, true, &pending);
                pending.clear();
            }
        }
        if !pending.is_empty() {
            // The process ended without a final newline: the record is partial, like CRI.
            self.record(stream, true, &pending);
        }
    }
}

/// What the client asked for (`/containerLogs` query).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep streaming until the container's run ends.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// The previous run's log instead of the current one.
    pub previous: bool,
}

/// Formats complete CRI records from `data` (which may end mid-record); returns the formatted
/// output and how many bytes of `data` were consumed.
fn format_records(data: &[u8], timestamps: bool, out: &mut Vec<Vec<u8>>) -> usize {
    let mut consumed = 0;
    while let Some(pos) = data[consumed..].iter().position(|&b| b == b'\n') {
        let line = &data[consumed..consumed + pos];
        consumed += pos + 1;
        let mut parts = line.splitn(4, |&b| b == b' ');
        let (Some(ts), Some(_stream), Some(tag), msg) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let msg = msg.unwrap_or_default();
        let mut rendered = Vec::with_capacity(msg.len() + 40);
        if timestamps {
            rendered.extend_from_slice(ts);
            rendered.push(b' ');
        }
        rendered.extend_from_slice(msg);
        if tag != b"P" {
            rendered.push(b'\n');
        }
        out.push(rendered);
    }
    consumed
}

/// Streams a log run to `tx` according to `opts`. Ends when the file is exhausted (or, with
/// `follow`, when the run has finished and is exhausted, or the receiver went away).
pub(crate) async fn stream_log(
    run: LogRun,
    opts: LogOptions,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
) {
    let mut file = match tokio::fs::File::open(&run.path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // First the existing content, honouring tailLines.
    let mut data = Vec::new();
    if let Err(e) = file.read_to_end(&mut data).await {
        let _ = tx.send(Err(e)).await;
        return;
    }
    let mut lines = Vec::new();
    let consumed = format_records(&data, opts.timestamps, &mut lines);
    let mut offset = consumed as u64;
    let skip = opts.tail_lines.map_or(0, |n| lines.len().saturating_sub(n));
    let initial: Vec<u8> = lines.into_iter().skip(skip).flatten().collect();
    if !initial.is_empty() && tx.send(Ok(Bytes::from(initial))).await.is_err() {
        return;
    }
    if !opts.follow {
        return;
    }
    loop {
        // Register interest before reading, so an append between the read and the wait is
        // not missed.
        let appended = run.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let finished = run.finished.is_cancelled();
        if let Err(e) = file.seek(io::SeekFrom::Start(offset)).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let mut data = Vec::new();
        if let Err(e) = file.read_to_end(&mut data).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let mut lines = Vec::new();
        offset += format_records(&data, opts.timestamps, &mut lines) as u64;
        let chunk: Vec<u8> = lines.into_iter().flatten().collect();
        if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
            return;
        }
        if finished {
            return;
        }
        tokio::select! {
            _ = appended => {}
            _ = run.finished.cancelled() => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_with_and_without_timestamps() {
        let data = b"2026-01-01T00:00:00.000000001Z stdout F hello\n\
                     2026-01-01T00:00:00.000000002Z stderr P par\n\
                     2026-01-01T00:00:00.000000003Z stderr F tial\n\
                     2026-01-01T00:00:00.0000";
        let mut out = Vec::new();
        let used = format_records(data, false, &mut out);
        assert_eq!(out.concat(), b"hello\npartial\n");
        assert_eq!(&data[used..], b"2026-01-01T00:00:00.0000");
        let mut out = Vec::new();
        format_records(data, true, &mut out);
        assert_eq!(out[0], b"2026-01-01T00:00:00.000000001Z hello\n");
    }
}
