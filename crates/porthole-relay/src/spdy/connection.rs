//! [`Connection`], the cloneable handle of one SPDY connection (open streams, close, stats),
//! and its [`Config`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porthole_proto::spdy::session as proto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::driver::Driver;
use super::incoming::Incoming;
use super::stream::{Stream, StreamOpenError};
use super::{now, CloseReason, Handle, Inner, Role, SessionConfig, Shared, StreamWakers};

/// Connection settings: the protocol session's own ([`SessionConfig`]) and what only the
/// driver needs. `Default` suits a server talking to kubectl; clients set
/// `session.ping_interval` (5 s raw, 10 s inside the WebSocket tunnel).
#[derive(Debug, Clone)]
pub struct Config {
    /// The session's settings (keepalive, idle timeout, buffers, windows, flow control).
    /// `session.role` is ignored: [`Connection::new`] takes the role.
    pub session: SessionConfig,
    /// How long [`Connection::open_stream`] waits for SYN_REPLY (client-go: 30 s).
    pub open_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session: SessionConfig::default(),
            open_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// client-go's settings for a raw SPDY connection: PING every 5 s.
    pub fn client() -> Self {
        let mut cfg = Config::default();
        cfg.session.ping_interval = Some(Duration::from_secs(5));
        cfg
    }

    /// client-go's settings inside the WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`):
    /// PING every 10 s.
    pub fn client_ws_tunnel() -> Self {
        let mut cfg = Config::default();
        cfg.session.ping_interval = Some(Duration::from_secs(10));
        cfg
    }

    /// Both ends of a node tunnel (`porthole_proto::tunnel`): real flow control, so one
    /// stream that is not read never stalls another; PINGs every 5 s from each side, so a
    /// silent partition ends the tunnel within 5 + 10 s (the node then redials, the API
    /// server stops routing through it). Windows as for port-forward sessions between
    /// porthole peers.
    pub fn tunnel() -> Self {
        Config {
            session: SessionConfig {
                ping_interval: Some(Duration::from_secs(5)),
                ping_timeout: Duration::from_secs(10),
                flow_control: true,
                // Every forwarded connection of the node shares the tunnel's session window: a
                // larger one than a single port-forward session's keeps a bulk stream from
                // running dry on each round trip (per-stream windows still bound each stream).
                session_window: 4 << 20,
                // A forwarded connection's own frames (32 KiB of data and an 8-byte head)
                // cross the tunnel as data: with 32 KiB tunnel frames each became a full frame
                // and an 8-byte one, twice the per-frame work.
                max_data_frame: 64 * 1024,
                ..SessionConfig::default()
            },
            open_timeout: Duration::from_secs(10),
        }
    }
}

/// A snapshot from [`Connection::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Streams the session still tracks (finished streams are forgotten once released).
    pub streams: usize,
    /// Received bytes waiting for stream readers.
    pub buffered: usize,
}

/// A SPDY connection; cheap to clone. Dropping every clone (and the [`Incoming`]) closes it.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts a session over `io` (already upgraded) and spawns its driver task.
    pub fn new<T>(io: T, role: Role, cfg: Config) -> (Connection, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let session = proto::Session::new(
            SessionConfig {
                role,
                ..cfg.session
            },
            now(),
        );
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                session,
                wakers: HashMap::new(),
                driver: None,
                incoming: VecDeque::new(),
                incoming_waker: None,
                incoming_alive: true,
                reason: None,
            }),
            closed: CancellationToken::new(),
            open_timeout: cfg.open_timeout,
        });
        let driver = Driver::new(io, shared.clone());
        tokio::spawn(driver.instrument(tracing::debug_span!("spdy", ?role)));
        let handle = Arc::new(Handle { shared });
        (
            Connection {
                handle: handle.clone(),
            },
            Incoming::new(handle),
        )
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Opens a stream (SYN_STREAM with `headers`) and waits for its SYN_REPLY, at most
    /// `open_timeout` (client-go's 30 s, `Timeout occurred`).
    pub async fn open_stream(
        &self,
        headers: Vec<(String, String)>,
    ) -> Result<Stream, StreamOpenError> {
        let stream = self.start_stream(headers)?;
        stream.opened().await?;
        Ok(stream)
    }

    /// Sends SYN_STREAM with `headers` and returns the stream at once; [`Stream::opened`]
    /// waits for the SYN_REPLY. Starting several streams before waiting costs one round trip
    /// for all of them instead of one each. Dropping the stream before the reply resets it.
    pub fn start_stream(&self, headers: Vec<(String, String)>) -> Result<Stream, StreamOpenError> {
        let shared = self.shared().clone();
        let mut inner = shared.lock();
        let tx_before = inner.session.pending_transmit();
        let id = match inner.session.open_stream(now(), &headers) {
            Ok(id) => id,
            Err(proto::OpenError::IdsExhausted) => return Err(StreamOpenError::IdsExhausted),
            Err(proto::OpenError::Closed) => {
                let reason = inner
                    .session
                    .close_reason()
                    .map_or("closing".to_string(), |r| r.to_string());
                return Err(StreamOpenError::Closed(reason));
            }
        };
        inner.wakers.insert(id, StreamWakers::default());
        inner.kick(tx_before);
        drop(inner);
        Ok(Stream::new(id, shared))
    }

    /// Opens several streams in one go: each SYN_STREAM, its first data and its FIN are queued
    /// under one lock, so they leave in one socket write (SPDY lets the opener send before the
    /// reply). Returns each stream with how many bytes of its data were taken (all unless the
    /// send buffer or a window is full; FIN is sent only if all were). On error the streams
    /// already opened are reset.
    pub fn start_streams(
        &self,
        starts: Vec<StreamStart<'_>>,
    ) -> Result<Vec<(Stream, usize)>, StreamOpenError> {
        let shared = self.shared().clone();
        let mut inner = shared.lock();
        let tx_before = inner.session.pending_transmit();
        let mut opened = Vec::with_capacity(starts.len());
        let mut failure = None;
        for start in starts {
            let id = match inner.session.open_stream(now(), &start.headers) {
                Ok(id) => id,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            inner.wakers.insert(id, StreamWakers::default());
            let taken = if start.data.is_empty() {
                0
            } else {
                inner.session.write(now(), id, start.data).unwrap_or(0)
            };
            if start.fin && taken == start.data.len() {
                inner.session.finish(now(), id);
            }
            opened.push((id, taken));
        }
        let reason = || {
            inner
                .session
                .close_reason()
                .map_or("closing".to_string(), |r| r.to_string())
        };
        let error = match failure {
            None => None,
            Some(proto::OpenError::IdsExhausted) => Some(StreamOpenError::IdsExhausted),
            Some(proto::OpenError::Closed) => Some(StreamOpenError::Closed(reason())),
        };
        inner.kick(tx_before);
        drop(inner);
        let streams = opened
            .into_iter()
            .map(|(id, taken)| (Stream::new(id, shared.clone()), taken))
            .collect::<Vec<_>>();
        match error {
            None => Ok(streams),
            Some(e) => {
                for (mut s, _) in streams {
                    s.reset();
                }
                Err(e)
            }
        }
    }

    /// Resets every open stream, sends GOAWAY, flushes and closes the socket; returns once the
    /// connection has ended.
    pub async fn shutdown(&self) {
        {
            let mut inner = self.shared().lock();
            let tx_before = inner.session.pending_transmit();
            inner.session.close(now());
            inner.kick(tx_before);
        }
        self.closed().await;
    }

    /// Resolves once the connection has ended, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.shared().closed.cancelled().await;
        self.shared()
            .lock()
            .reason
            .clone()
            .unwrap_or(CloseReason::Local)
    }

    /// Current bookkeeping, for tests and metrics: open streams and buffered receive bytes.
    pub fn stats(&self) -> Stats {
        let inner = self.shared().lock();
        Stats {
            streams: inner.session.stream_count(),
            buffered: inner.session.buffered(),
        }
    }

    /// Whether the connection has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.shared().lock().session.is_closed()
    }
}

/// One stream for [`Connection::start_streams`].
#[derive(Debug)]
pub struct StreamStart<'a> {
    /// SYN_STREAM headers.
    pub headers: Vec<(String, String)>,
    /// Data sent right behind the SYN_STREAM.
    pub data: &'a [u8],
    /// Half-close (FIN) after `data`.
    pub fin: bool,
}

// Here rather than in incoming.rs, so that the streams the peer opens need not know the
// connection handle: only this file builds a `Connection`.
impl Incoming {
    /// A handle to the connection this belongs to.
    pub fn connection(&self) -> Connection {
        Connection {
            handle: self.handle().clone(),
        }
    }
}
