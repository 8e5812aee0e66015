//! `porthole up`: a whole one-machine cluster in one process.
//!
//! Order of events (the ready line is the contract scripts and tests wait for):
//!
//! 0. check that pods can run the way `--pod-isolation` says (root, or user namespaces),
//!    before anything is created;
//! 1. take an exclusive `flock` on `DIR/up.lock` (a second `up` on the same dir is refused,
//!    naming the pid holding it), and remove a stale `DIR/kubeconfig`, whose presence means
//!    "this cluster is up";
//! 2. create the PKI under `DIR/pki` (first start) or reuse it, and the token file for the
//!    example user `developer`;
//! 3. bind the API server's `--listen` address and a node port on 127.0.0.1:0, and run
//!    [`porthole_apiserver::run`] and [`porthole_node::run`] as tasks of this process;
//! 4. as admin, wait until the API server answers and the node reports Ready;
//! 5. write `DIR/kubeconfig` (admin, the real bound address) and `DIR/developer.kubeconfig`;
//! 6. create the objects of every `-f` file;
//! 7. print `porthole up: cluster ready, kubeconfig at DIR/kubeconfig` and what to run next;
//! 8. on SIGINT/SIGTERM stop the node first (it stops every pod and removes their network
//!    namespaces while the API server can still record it), then the API server.
//!
//! State lives in `DIR` (the API server's store, node state, logs), so a restart on the same
//! dir brings back every object, and the node agent starts the pods again.

use std::fs;
use std::io::{Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use nix::fcntl::{Flock, FlockArg};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kubeconfig::{self, Credentials};
use crate::manifests::{self, Outcome};
use crate::pki::Pki;

/// Name of the example user whose bearer token `up` writes to `DIR/tokens.csv`.
pub const EXAMPLE_USER: &str = "developer";

/// `porthole up` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Create the objects in FILE once the cluster is ready (YAML, multi-document, or JSON).
    /// Repeatable; files are applied in order, Namespaces first.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Where the cluster keeps its state, PKI and kubeconfig. A restart on the same dir keeps
    /// every object; two `porthole up` on one dir are refused.
    #[arg(
        long,
        env = "PORTHOLE_DATA_DIR",
        default_value = ".porthole",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Address the API server listens on. Port 0 picks a free port; the kubeconfig has the
    /// real one.
    #[arg(
        long,
        env = "PORTHOLE_LISTEN",
        default_value = "127.0.0.1:6443",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Name of the node agent (`kubectl get nodes`). Keep it across restarts: pods are bound to
    /// a node by name.
    #[arg(
        long,
        env = "PORTHOLE_NODE_NAME",
        default_value = "porthole-node",
        value_name = "NAME"
    )]
    pub node_name: String,

    /// How long to wait for the API server to answer and the node to become Ready.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub ready_timeout: u64,

    /// Reach the embedded node agent over TCP and TLS, as the API server reaches a node agent
    /// in another process, instead of through in-memory pipes (for comparison and debugging;
    /// slower: one more encrypted hop on every byte).
    #[arg(long, env = "PORTHOLE_NODE_OVER_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub node_over_tls: bool,

    /// How pods get their network namespaces: `auto` (privileged as root, rootless
    /// otherwise), `privileged` (bind-mounted, needs root) or `rootless` (user namespaces
    /// owned by this user). Checked before anything is created.
    #[arg(
        long,
        env = "PORTHOLE_POD_ISOLATION",
        value_enum,
        default_value_t = porthole_node::PodIsolation::Auto,
        value_name = "MODE"
    )]
    pub pod_isolation: porthole_node::PodIsolation,
}

/// Runs the cluster until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<()> {
    validate_node_name(&args.node_name)?;
    // Before anything is created: a host where pods cannot run (no root, user namespaces
    // forbidden) fails here with the setting to change, and leaves no data dir behind. The
    // node agent checks again in its own state dir and says which way its pods run.
    let requested = args.pod_isolation;
    tokio::task::spawn_blocking(move || requested.resolve(&std::env::temp_dir()))
        .await
        .context("the pod isolation check panicked")??;
    fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data dir {}", args.data_dir.display()))?;
    let dir = fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolve the data dir {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&dir)?;

    let kubeconfig_path = dir.join("kubeconfig");
    match fs::remove_file(&kubeconfig_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("remove the stale {}", kubeconfig_path.display()))
        }
    }
    // Read the files before starting anything, so a typo fails fast.
    let objects = manifests::read_files(&args.files)?;

    let pki = Pki::ensure(&dir.join("pki"), &args.node_name)?;
    let token_file = dir.join("tokens.csv");
    let developer_token = ensure_token_file(&token_file)?;

    let api_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "bind the API server to {} (in use? try --listen 127.0.0.1:0)",
                args.listen
            )
        })?;
    let api_addr = api_listener
        .local_addr()
        .context("read the API server's bound address")?;
    let server = format!("https://{}", dialable(api_addr));
    let node_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("bind the node agent to 127.0.0.1:0")?;

    let mut api_cfg = apiserver_config(&dir, &pki, &token_file)?;
    let mut node_cfg = node_config(&dir, &pki, &args.node_name, &server)?;
    node_cfg.pod_isolation = args.pod_isolation;
    if !args.node_over_tls {
        // Both roles live in this process: the API server hands its node connections over in
        // memory. The node's TLS listener stays up (its address is in the Node object).
        let (connect, listener) = porthole_node::in_process_link();
        api_cfg.in_process_node = Some(porthole_apiserver::kubelet::InProcessNode {
            name: args.node_name.clone(),
            connect,
        });
        node_cfg.in_process = Some(listener);
    }

    let mut api = Role::spawn("API server", |token| {
        porthole_apiserver::run(api_cfg, api_listener, token)
    });
    let mut node = Role::spawn("node agent", |token| {
        porthole_node::run(node_cfg, node_listener, token)
    });

    let admin_kubeconfig = kubeconfig::render(
        &pki.ca.cert,
        &server,
        "admin",
        Credentials::ClientCert(&pki.admin),
    )?;
    let startup = async {
        let client = admin_client(&admin_kubeconfig).await?;
        let timeout = Duration::from_secs(args.ready_timeout);
        tokio::time::timeout(timeout, wait_ready(&client, &args.node_name))
            .await
            .with_context(|| {
                format!(
                    "the cluster was not ready within {}s (API server answering, node {} Ready); \
                     run with -v for details or raise --ready-timeout",
                    args.ready_timeout, args.node_name
                )
            })??;
        kubeconfig::write_atomic(&kubeconfig_path, &admin_kubeconfig)?;
        let developer = kubeconfig::render(
            &pki.ca.cert,
            &server,
            EXAMPLE_USER,
            Credentials::Token(&developer_token),
        )?;
        kubeconfig::write_atomic(&dir.join("developer.kubeconfig"), &developer)?;
        for object in &objects {
            let outcome = manifests::create(&client, object).await?;
            let verb = match outcome {
                Outcome::Created => "created",
                Outcome::Exists => "unchanged (already exists)",
            };
            println!("{} {verb}", object.display_name());
        }
        anyhow::Ok(())
    };

    // Startup races against the roles dying and against Ctrl-C.
    let started = tokio::select! {
        res = startup => res.map(|()| true),
        err = api.ended() => Err(err),
        err = node.ended() => Err(err),
        () = shutdown.cancelled() => Ok(false),
    };
    let result = match started {
        Ok(true) => {
            print_ready(&dir, &kubeconfig_path, &objects);
            tokio::select! {
                err = api.ended() => Err(err),
                err = node.ended() => Err(err),
                () = shutdown.cancelled() => Ok(()),
            }
        }
        Ok(false) => Ok(()),
        Err(err) => Err(err),
    };
    if result.is_err() {
        // The file means "this cluster is (or was) up"; scripts waiting for it must not go on.
        let _ = fs::remove_file(&kubeconfig_path);
    }
    // The node goes first: it stops every pod and removes their namespaces while the API server
    // is still there to receive their final status.
    tracing::info!("stopping the node agent (and its pods), then the API server");
    node.stop().await;
    api.stop().await;
    if result.is_ok() {
        println!("porthole up: stopped");
    }
    result
}

/// One role running as a task of this process.
struct Role {
    name: &'static str,
    shutdown: CancellationToken,
    /// `None` once the task has been awaited.
    task: Option<JoinHandle<Result<()>>>,
}

impl Role {
    fn spawn<F, Fut>(name: &'static str, run: F) -> Role
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = Some(tokio::spawn(run(shutdown.clone())));
        Role {
            name,
            shutdown,
            task,
        }
    }

    /// Resolves when the role ends by itself (which is always an error while the cluster should
    /// be up); pending forever once it has been awaited.
    async fn ended(&mut self) -> anyhow::Error {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let res = task.await;
        self.task = None;
        match flatten(res) {
            Ok(()) => anyhow::anyhow!("the {} stopped unexpectedly", self.name),
            Err(err) => err.context(format!("the {} failed", self.name)),
        }
    }

    /// Asks the role to stop and waits until it has.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            match flatten(task.await) {
                Ok(()) => tracing::debug!(role = self.name, "stopped"),
                Err(err) => tracing::error!(
                    role = self.name,
                    error = format!("{err:#}"),
                    "stopped with an error"
                ),
            }
        }
    }
}

fn flatten(res: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    res.context("task panicked")?
}

fn print_ready(dir: &Path, kubeconfig_path: &Path, objects: &[manifests::Manifest]) {
    let first_pod = objects.iter().find_map(|m| {
        let is_pod = m.object.get("kind").and_then(|k| k.as_str()) == Some("Pod");
        let name = m.object.pointer("/metadata/name")?.as_str()?;
        let port = m
            .object
            .pointer("/spec/containers/0/ports/0/containerPort")?
            .as_u64()?;
        let ns = m
            .object
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str());
        let http = m
            .object
            .pointer("/spec/containers/0/ports/0/name")
            .and_then(|n| n.as_str())
            == Some("http");
        is_pod.then(|| (name.to_string(), port, ns.map(str::to_string), http))
    });
    let kc = kubeconfig_path.display();
    let mut out = format!("porthole up: cluster ready, kubeconfig at {kc}\n\nNext:\n  export KUBECONFIG={kc}\n  kubectl get pods -A\n");
    match first_pod {
        Some((name, port, ns, http)) => {
            let ns = ns.map(|n| format!(" -n {n}")).unwrap_or_default();
            let then = if http {
                "curl localhost:8080"
            } else {
                "connect to localhost:8080"
            };
            out += &format!("  porthole port-forward{ns} {name} 8080:{port}    # then: {then}\n");
        }
        None => {
            out += "  kubectl create -f examples/web.yaml && porthole port-forward web 8080:8000\n"
        }
    }
    out += &format!(
        "The example user {EXAMPLE_USER} (see examples/rbac.yaml): KUBECONFIG={}\n\
         Press Ctrl-C to stop; the state stays in {} for the next start.",
        dir.join("developer.kubeconfig").display(),
        dir.display()
    );
    println!("{out}");
}

/// The API server's configuration for a cluster in `dir`.
fn apiserver_config(
    dir: &Path,
    pki: &Pki,
    token_file: &Path,
) -> Result<porthole_apiserver::Config> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: porthole_apiserver::Args,
    }
    // Through the API server's own flags, so its defaults apply. `--listen` is required by
    // the flags but unused: `up` passes the listener it bound.
    let argv: Vec<String> = vec![
        "apiserver".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--data-dir={}", dir.join("apiserver").display()),
        format!("--tls-cert-file={}", pki.apiserver.cert.display()),
        format!("--tls-private-key-file={}", pki.apiserver.key.display()),
        format!("--client-ca-file={}", pki.ca.cert.display()),
        format!("--token-auth-file={}", token_file.display()),
        format!(
            "--kubelet-client-certificate={}",
            pki.apiserver_kubelet_client.cert.display()
        ),
        format!(
            "--kubelet-client-key={}",
            pki.apiserver_kubelet_client.key.display()
        ),
        format!("--kubelet-certificate-authority={}", pki.ca.cert.display()),
        format!("--audit-log-path={}", dir.join("audit.log").display()),
        // Nodes may join this cluster with `porthole token create`'s command.
        format!("--cluster-signing-cert-file={}", pki.ca.cert.display()),
        format!("--cluster-signing-key-file={}", pki.ca.key.display()),
    ];
    let wrap = Wrap::try_parse_from(&argv).context("build the API server's arguments")?;
    porthole_apiserver::Config::from_args(&wrap.args).context("API server configuration")
}

/// The node agent's configuration for a cluster in `dir`, joining the API server at `server`.
fn node_config(
    dir: &Path,
    pki: &Pki,
    node_name: &str,
    server: &str,
) -> Result<porthole_node::Config> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: porthole_node::Args,
    }
    // Through the node's own flags, so its defaults (timeouts, allowed client names) apply.
    let argv: Vec<String> = vec![
        "node".into(),
        format!("--node-name={node_name}"),
        format!("--data-dir={}", dir.display()),
        format!("--state-dir={}", dir.join("node").display()),
        "--node-ip=127.0.0.1".into(),
        format!("--api-server={server}"),
        format!("--api-ca-file={}", pki.ca.cert.display()),
        format!("--client-cert-file={}", pki.node_client.cert.display()),
        format!("--client-key-file={}", pki.node_client.key.display()),
        format!("--tls-cert-file={}", pki.node_serving.cert.display()),
        format!("--tls-private-key-file={}", pki.node_serving.key.display()),
        format!("--client-ca-file={}", pki.ca.cert.display()),
        format!(
            "--apiserver-client-names={}",
            crate::pki::APISERVER_COMMON_NAME
        ),
    ];
    let wrap = Wrap::try_parse_from(&argv).context("build the node agent's arguments")?;
    porthole_node::Config::from_args(wrap.args).context("node agent configuration")
}

async fn admin_client(kubeconfig_yaml: &str) -> Result<Client> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml)
        .context("parse the admin kubeconfig")?;
    let config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .context("load the admin kubeconfig")?;
    Client::try_from(config).context("build the admin client")
}

/// Polls until the API server answers and node `name` has condition Ready=True. Polling (not a
/// watch) keeps this independent of how soon the server serves watches; 100 ms apart is cheap.
async fn wait_ready(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_problem = String::new();
    loop {
        let problem = match nodes.get_opt(name).await {
            Ok(Some(node)) if is_ready(&node) => return Ok(()),
            Ok(Some(_)) => format!("node {name} registered, not Ready yet"),
            Ok(None) => format!("node {name} not registered yet"),
            Err(err) => format!("API server not answering yet: {err}"),
        };
        if problem != last_problem {
            tracing::debug!("{problem}");
            last_problem = problem;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A node name ends up in a certificate SAN, a file name and a Kubernetes object name, so it
/// must be a DNS-1123 subdomain.
fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        bail!("--node-name {name:?} is not a valid node name: use lowercase letters, digits, '-' and '.'");
    }
    Ok(())
}

/// An address a client on this machine can connect to: a wildcard listen address becomes
/// loopback of the same family.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Takes `DIR/up.lock` for the life of the process and writes our pid into it. The lock (not
/// the file's existence) is what counts, so a crashed `up` never blocks the next one.
fn lock_data_dir(dir: &Path) -> Result<Flock<fs::File>> {
    let path = dir.join("up.lock");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() {
                "another process".to_string()
            } else {
                format!("pid {pid}")
            };
            bail!(
                "porthole up is already running on the data dir {} ({holder} holds {}); \
                 stop it with Ctrl-C or use another --data-dir",
                dir.display(),
                path.display()
            );
        }
        Err((_, errno)) => return Err(errno).with_context(|| format!("lock {}", path.display())),
    };
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .with_context(|| format!("truncate {}", path.display()))?;
    writeln!(lock, "{}", std::process::id())
        .with_context(|| format!("write our pid to {}", path.display()))?;
    Ok(lock)
}

/// Makes sure the static token file (Kubernetes' `token,user,uid[,"groups"]` CSV) has a line for
/// the example user, and returns that user's token. The token is random and kept across
/// restarts.
fn ensure_token_file(path: &Path) -> Result<String> {
    if let Ok(text) = fs::read_to_string(path) {
        for line in text.lines() {
            let mut fields = line.split(',');
            if let (Some(token), Some(user)) = (fields.next(), fields.next()) {
                if user.trim() == EXAMPLE_USER && !token.trim().is_empty() {
                    return Ok(token.trim().to_string());
                }
            }
        }
    }
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(file, "{token},{EXAMPLE_USER},{EXAMPLE_USER}-uid")
        .with_context(|| format!("write {}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(validate_node_name("porthole-node").is_ok());
        assert!(validate_node_name("a.b-c.d1").is_ok());
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_addresses_become_loopback() {
        assert_eq!(
            dialable("0.0.0.0:6443".parse().unwrap()).to_string(),
            "127.0.0.1:6443"
        );
        assert_eq!(dialable("[::]:1".parse().unwrap()).to_string(), "[::1]:1");
        assert_eq!(
            dialable("127.0.0.2:5".parse().unwrap()).to_string(),
            "127.0.0.2:5"
        );
    }

    #[test]
    fn second_lock_is_refused_with_the_pid() {
        let dir = std::env::temp_dir().join(format!("porthole-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let held = lock_data_dir(&dir).unwrap();
        let err = lock_data_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("already running on the data dir"), "{err}");
        drop(held);
        lock_data_dir(&dir).expect("free again once released");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("porthole-tokens-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.csv");
        let first = ensure_token_file(&path).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(ensure_token_file(&path).unwrap(), first);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
