//! `--tunnel`: the node dials out to the API servers and serves its endpoint over the tunnels
//! instead of waiting to be dialed (a node behind NAT or a firewall). Protocol:
//! `porthole_proto::tunnel`.
//!
//! The node keeps one tunnel to every API server alive. It dials the `--api-server` (or
//! `--join`) address, which may be a load balancer: each answer names the server that took it
//! and how many servers are alive, and the node dials again (through the balancer, landing on
//! another server) until it holds one tunnel per server. A duplicate is closed at once. Every
//! minute it dials once more to learn of servers added since. A tunnel that ends (server
//! restart, partition: PINGs go unanswered for 15 s) is redialed with back-off.
//!
//! Each stream an API server opens is one HTTP/1.1 connection to the endpoint, served exactly
//! like one that came in over TCP and TLS from an allowed API server certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use porthole_proto::tunnel::{self, Offer};
use porthole_relay::spdy::{Connection, Role};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::ApiConfig;
use crate::endpoint::Endpoint;

/// Connect + TLS + upgrade, each attempt.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause after a failed dial; doubles up to [`RETRY_MAX`], with jitter.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest pause between dials while a tunnel is missing.
const RETRY_MAX: Duration = Duration::from_secs(8);
/// How often a node that holds a tunnel to every server dials once more, to find new ones.
const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Largest error body read from a refusal (for the log line).
const MAX_REFUSAL_BODY: usize = 4096;

/// Where and how to dial.
pub(crate) struct Dialer {
    url: String,
    authority: String,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    path: String,
}

impl Dialer {
    /// From the node's API settings: mutual TLS with its client certificate, trusting the
    /// cluster CA.
    pub(crate) fn new(api: &ApiConfig, node_name: &str) -> anyhow::Result<Dialer> {
        let uri: http::Uri = api
            .url
            .parse()
            .with_context(|| format!("--api-server {:?} is not a URL", api.url))?;
        let host = uri
            .host()
            .with_context(|| format!("--api-server {:?} has no host", api.url))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .with_context(|| format!("--api-server host {host:?} is not a valid TLS name"))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in crate::tls::load_certs(&api.ca_file)? {
            roots
                .add(ca)
                .with_context(|| format!("use {} as the API server CA", api.ca_file.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                crate::tls::load_certs(&api.client_cert_file)?,
                crate::tls::load_key(&api.client_key_file)?,
            )
            .with_context(|| {
                format!(
                    "use {} / {} as the node's client certificate",
                    api.client_cert_file.display(),
                    api.client_key_file.display()
                )
            })?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Dialer {
            url: api.url.clone(),
            authority,
            server_name,
            tls: Arc::new(tls),
            path: tunnel::path(node_name),
        })
    }

    /// One tunnel: TCP, TLS, the upgrade; the server's offer and the upgraded connection.
    /// `direct`: dial that server's advertised address (its certificate must name it) instead
    /// of the address the node was given.
    async fn dial(
        &self,
        direct: Option<SocketAddr>,
    ) -> anyhow::Result<(Offer, SocketAddr, hyper::upgrade::Upgraded)> {
        let (authority, server_name) = match direct {
            Some(addr) => (
                addr.to_string(),
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            ),
            None => (self.authority.clone(), self.server_name.clone()),
        };
        let work = async {
            let tcp = TcpStream::connect(&authority)
                .await
                .with_context(|| format!("connect to {authority}"))?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().context("read the API server's address")?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(server_name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {authority}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "tunnel HTTP connection ended");
                }
            });
            let req = Request::builder()
                .method(Method::POST)
                .uri(&self.path)
                .header(header::HOST, &authority)
                .header(
                    tunnel::DIRECT_HEADER,
                    if direct.is_some() { "true" } else { "false" },
                )
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, tunnel::PROTOCOL)
                .header(header::USER_AGENT, "porthole-node")
                .body(Empty::<Bytes>::new())
                .context("build the tunnel request")?;
            let resp = sender
                .send_request(req)
                .await
                .context("send the tunnel request")?;
            let status = resp.status().as_u16();
            let offer = tunnel::parse_offer(
                status,
                resp.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            );
            match offer {
                Ok(offer) => {
                    let upgraded = hyper::upgrade::on(resp)
                        .await
                        .context("take over the upgraded connection")?;
                    Ok((offer, peer, upgraded))
                }
                Err(e) => {
                    let body = http_body_util::Limited::new(resp.into_body(), MAX_REFUSAL_BODY)
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                        .unwrap_or_default();
                    let message = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                        .unwrap_or(body);
                    Err(anyhow::anyhow!("{e}: {}", message.trim()))
                }
            }
        };
        tokio::time::timeout(DIAL_TIMEOUT, work)
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {}s", DIAL_TIMEOUT.as_secs()))?
    }
}

/// A tunnel this node holds.
struct Held {
    /// Dial order: of the tunnels to a server, the server routes through the newest direct
    /// one, else the newest (`porthole_apiserver::tunnel::Tunnels::get`).
    seq: u64,
    /// Dialed at the server's own address rather than through the balancer.
    direct: bool,
    /// Cancelled to retire the tunnel once no stream uses it.
    retire: CancellationToken,
}

/// Tunnels by server identity; more than one to a server while spares are held.
#[derive(Default)]
struct HeldSet {
    by_server: HashMap<String, Vec<Held>>,
    next_seq: u64,
}

impl HeldSet {
    fn servers(&self) -> usize {
        self.by_server.len()
    }

    fn spares(&self) -> usize {
        self.by_server.values().map(|v| v.len() - 1).sum()
    }

    fn add(&mut self, identity: &str, direct: bool) -> (u64, CancellationToken) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let retire = CancellationToken::new();
        self.by_server
            .entry(identity.to_string())
            .or_default()
            .push(Held {
                seq,
                direct,
                retire: retire.clone(),
            });
        (seq, retire)
    }

    fn has_direct(&self, identity: &str) -> bool {
        self.by_server
            .get(identity)
            .is_some_and(|l| l.iter().any(|h| h.direct))
    }

    fn remove(&mut self, identity: &str, seq: u64) {
        if let Some(list) = self.by_server.get_mut(identity) {
            list.retain(|h| h.seq != seq);
            if list.is_empty() {
                self.by_server.remove(identity);
            }
        }
    }

    /// Retires every tunnel to each server but the one it routes through (the newest direct
    /// one, else the newest); each closes when its streams end.
    fn retire_spares(&self) {
        for list in self.by_server.values() {
            if let Some(kept) = list.iter().max_by_key(|h| (h.direct, h.seq)).map(|h| h.seq) {
                for h in list.iter().filter(|h| h.seq != kept) {
                    h.retire.cancel();
                }
            }
        }
    }
}

/// Most extra tunnels to servers already held, kept open while looking for the missing ones.
/// A balancer that picks the server with the fewest connections (haproxy `leastconn`) keeps
/// sending a redial to the server the node already holds, unless the node holds that server's
/// count up: each spare does.
const MAX_SPARES: usize = 4;

/// Keeps a tunnel to every API server until `shutdown`, serving `ep` over each.
pub(crate) async fn run(dialer: Dialer, ep: Arc<Endpoint>, shutdown: CancellationToken) {
    let mut held = HeldSet::default();
    let mut tasks: JoinSet<(String, u64)> = JoinSet::new();
    let mut want = 1usize;
    let mut delay = RETRY_MIN;
    let mut failures = 0u32;
    let mut next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
    // The live servers' own addresses, from the last answer, and when a server that could not
    // be reached at its own address is tried there again.
    let mut peers: HashMap<String, SocketAddr> = HashMap::new();
    let mut direct_retry: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        while let Some(done) = tasks.try_join_next() {
            if let Ok((identity, seq)) = done {
                held.remove(&identity, seq);
            }
        }
        let now = tokio::time::Instant::now();
        // A server to dial at its own address: alive, not held that way yet, not failing.
        let direct = peers
            .iter()
            .filter(|(id, _)| !held.has_direct(id))
            .filter(|(id, _)| direct_retry.get(*id).is_none_or(|t| now >= *t))
            .map(|(id, addr)| (id.clone(), *addr))
            .next();
        let missing = held.servers() < want;
        if !missing && direct.is_none() {
            held.retire_spares();
            // Wait for a tunnel to end, the next probe, or the end.
            tokio::select! {
                Some(done) = tasks.join_next() => {
                    if let Ok((identity, seq)) = done {
                        held.remove(&identity, seq);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_probe) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
        let target = direct.as_ref().map(|(_, addr)| *addr);
        let attempt = tokio::select! {
            r = dialer.dial(target) => r,
            _ = shutdown.cancelled() => break,
        };
        let (offer, peer, io) = match (attempt, &direct) {
            (Ok(ok), _) => ok,
            (Err(e), Some((id, addr))) => {
                // Not reachable at its own address (no route, a firewall, a certificate
                // without that address): through the balancer it stays, and that is tried
                // again in a while.
                if direct_retry
                    .insert(id.clone(), now + PROBE_INTERVAL)
                    .is_none()
                {
                    tracing::info!(server = %id, %addr, error = %format!("{e:#}"), url = %dialer.url, "cannot reach this API server at its own address; reaching it through the given address instead");
                }
                continue;
            }
            (Err(e), None) => {
                failures += 1;
                // Loud on the first failure and then every 20th, so a long outage is visible
                // without one line per attempt.
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(url = %dialer.url, error = %format!("{e:#}"), attempts = failures, servers = held.servers(), "could not open a tunnel to an API server; retrying with back-off (check that this node reaches the API server address and that its certificate is valid)");
                }
                delay = (delay * 2).min(RETRY_MAX);
                if !pause(jitter(delay), &shutdown).await {
                    break;
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(url = %dialer.url, after_failures = failures, "reached an API server again");
        }
        failures = 0;
        peers = offer
            .peers
            .iter()
            .map(|p| (p.identity.clone(), p.address))
            .collect();
        direct_retry.retain(|id, _| peers.contains_key(id));
        // Dialed at a server's own address: direct, whichever server answered there (a
        // restarted one has a new identity at the old address).
        let is_direct = target.is_some();
        let known = held.by_server.contains_key(&offer.identity);
        // A server that just started may not have counted the others yet: never want fewer
        // than the distinct servers already seen answering.
        want = offer.servers.max(held.servers() + usize::from(!known));
        if known && !is_direct && (!missing || held.spares() >= MAX_SPARES) {
            // A probe that found nothing new, or too many spares: close it (GOAWAY, so the
            // server logs a clean end).
            close_unused(io);
            if missing {
                tracing::warn!(url = %dialer.url, servers = held.servers(), want, "the address keeps leading to API servers this node already holds; retrying later (a balancer that spreads connections, e.g. haproxy roundrobin or leastconn, lets a node reach every server)");
                held.retire_spares();
                delay = RETRY_MAX;
                if !pause(jitter(delay), &shutdown).await {
                    break;
                }
            }
            continue;
        }
        let (seq, retire) = held.add(&offer.identity, is_direct);
        if known && !is_direct {
            tracing::debug!(server = %offer.identity, spares = held.spares(), "holding a spare tunnel while looking for the other servers");
        } else {
            delay = RETRY_MIN;
            tracing::info!(server = %offer.identity, %peer, direct = is_direct, servers = held.servers(), want, "tunnel to an API server open");
        }
        let stop = shutdown.child_token();
        tasks.spawn(
            serve(io, offer.identity, seq, peer, ep.clone(), stop, retire)
                .instrument(tracing::info_span!("tunnel", %peer)),
        );
        if known && !is_direct && !pause(jitter(RETRY_MIN), &shutdown).await {
            break;
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Closes a tunnel this node will not use, cleanly.
fn close_unused(io: hyper::upgrade::Upgraded) {
    tokio::spawn(async move {
        let (conn, _) = Connection::new(
            TokioIo::new(io),
            Role::Server,
            porthole_relay::spdy::Config::tunnel(),
        );
        let _ = tokio::time::timeout(DIAL_TIMEOUT, conn.shutdown()).await;
    });
}

async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// 75–125 % of `d`, so nodes that lost the same server do not redial in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// Serves one tunnel until it ends or `stop`, or, once `retire` is cancelled, until no
/// stream uses it; returns the server identity and `seq`.
async fn serve(
    io: hyper::upgrade::Upgraded,
    identity: String,
    seq: u64,
    peer: SocketAddr,
    ep: Arc<Endpoint>,
    stop: CancellationToken,
    retire: CancellationToken,
) -> (String, u64) {
    let (conn, mut incoming) = Connection::new(
        TokioIo::new(io),
        Role::Server,
        porthole_relay::spdy::Config::tunnel(),
    );
    let mut retiring = false;
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some(stream) = next else { break };
                let kind = stream
                    .headers()
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(tunnel::STREAM_KIND_HEADER))
                    .map(|(_, v)| v.as_str());
                if kind != Some(tunnel::STREAM_KIND_HTTP) {
                    tracing::warn!(server = %identity, ?kind, "refused a tunnel stream of unknown kind");
                    stream.reject();
                    continue;
                }
                let io = stream.accept();
                let ep2 = ep.clone();
                ep.tasks.spawn(
                    crate::server::serve_tunneled(io, peer, ep2)
                        .instrument(tracing::debug_span!("conn", %peer, via = "tunnel")),
                );
            }
            _ = stop.cancelled() => {
                conn.shutdown().await;
                break;
            }
            _ = retire.cancelled(), if !retiring => retiring = true,
            _ = idle_check.tick(), if retiring => {
                if conn.stats().streams == 0 {
                    conn.shutdown().await;
                    break;
                }
            }
        }
    }
    let reason = conn.closed().await;
    if retiring {
        tracing::debug!(server = %identity, "spare tunnel retired");
    } else {
        tracing::info!(server = %identity, ?reason, "tunnel to an API server closed");
    }
    (identity, seq)
}
