//! A minimal byte relay with optional TLS on either side: the "same chain with no protocol"
//! reference (issue 7, path 2). Three of them model porthole's hops:
//!
//! ```text
//! client → relay (plain in, TLS out) → relay "apiserver" (TLS in, TLS out)
//!        → relay "node" (TLS in, plain out, dials inside the pod netns) → pod
//! ```
//!
//! Each accepted connection gets one outgoing connection; bytes are copied with
//! `copy_bidirectional` (half-close preserved). TLS is rustls with its ring provider and its
//! default suites, as porthole uses. `--netns FILE` enters the pod's network namespace after the
//! listener is bound in the host namespace, before the runtime's threads exist, so every
//! outgoing connect happens inside the pod namespace while the listener stays outside.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Arguments of `relay`.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0: the kernel picks; a `listening on` line tells). Repeat it
    /// with `--connect` for more routes in one process: the Nth listener relays to the Nth target.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Target of the connections accepted by the listener of the same position.
    #[arg(long, required = true)]
    connect: Vec<SocketAddr>,
    /// Terminate TLS on accepted connections with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Speak TLS to the target, verifying it against this CA (PEM), server name `localhost`.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Network namespace file (e.g. /proc/PID/ns/net) to make outgoing connections in.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Copy buffer per direction, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    buf: usize,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

type Io = Box<dyn AsyncIo>;
trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}

struct Hop {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    connector: Option<tokio_rustls::TlsConnector>,
    buf: usize,
}

/// `relay`: bind, optionally enter the netns, then relay until killed.
pub fn run(a: RelayArgs) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let acceptor = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("read {}", key.display()))?;
            let cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
        }
        _ => None,
    };
    let connector = match &a.tls_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("read {}", ca.display()))?
            {
                roots.add(c?)?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        }
        None => None,
    };

    if a.listen.len() != a.connect.len() {
        anyhow::bail!("give as many --connect as --listen");
    }
    let mut listeners = Vec::new();
    for (listen, target) in a.listen.iter().zip(&a.connect) {
        let l = std::net::TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
        l.set_nonblocking(true)?;
        listeners.push((l, *target));
    }
    if let Some(ns) = &a.netns {
        // Threads inherit the namespace of the thread that creates them: enter it here, before
        // the runtime starts its workers. The listener was bound in the host namespace above.
        let f = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", ns.display()))?;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build()?;
    let hop = Arc::new(Hop {
        acceptor,
        connector,
        buf: a.buf,
    });
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (listener, target) in listeners {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            println!("listening on {} -> {target}", listener.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(listener, target, hop.clone())));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, target: SocketAddr, hop: Arc<Hop>) {
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("relay: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let hop = hop.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_conn(conn, target, &hop).await {
                eprintln!("relay: {e:#}");
            }
        });
    }
}

/// The negotiated suite is logged once, for the report.
static SUITE_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn relay_conn(conn: TcpStream, target: SocketAddr, hop: &Hop) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let mut inbound: Io = match &hop.acceptor {
        Some(acc) => {
            let tls = acc.accept(conn).await.context("TLS accept")?;
            if !SUITE_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let (_, session) = tls.get_ref();
                eprintln!(
                    "relay: first TLS connection: {:?} {:?}",
                    session.protocol_version(),
                    session.negotiated_cipher_suite().map(|s| s.suite())
                );
            }
            Box::new(tls)
        }
        None => Box::new(conn),
    };
    let out = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    out.set_nodelay(true)?;
    let mut outbound: Io = match &hop.connector {
        Some(c) => Box::new(
            c.connect(ServerName::try_from("localhost")?, out)
                .await
                .context("TLS connect")?,
        ),
        None => Box::new(out),
    };
    tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, hop.buf, hop.buf)
        .await
        .context("copy")?;
    Ok(())
}

/// `gencerts`: a throwaway CA and a leaf for localhost / 127.0.0.1 / ::1, ECDSA P-256.
pub fn gencerts(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "porthole-bench-ca");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("leaf.pem"), leaf.pem())?;
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem())?;
    Ok(())
}
