//! The `porthole` binary: parses arguments, installs tracing, calls the role's `run()`.
//!
//! One executable plays every role (docs/ARCHITECTURE.md, "Contract 2"):
//!
//! | subcommand | what runs |
//! |---|---|
//! | `porthole port-forward` | [`porthole_client::run`], a drop-in for `kubectl port-forward` |
//! | `porthole forward` | [`porthole_client::set::run`], many forwards at once with a live view |
//! | `porthole apiserver` | [`porthole_apiserver::run`] on the `--listen` socket |
//! | `porthole node` | [`porthole_node::run`] on the `--listen` socket |
//! | `porthole up` | both of the above in this process, plus PKI and kubeconfig ([`up`]) |
//! | `porthole certs create` | the control-plane PKI and admin kubeconfig in a directory ([`certs`]) |
//! | `porthole token create\|list\|delete` | bootstrap tokens and the node join command ([`token`]) |
//! | `porthole version` | prints the version |
//!
//! Installed (or symlinked) as `kubectl-porthole`, kubectl runs it as a plugin:
//! `kubectl porthole port-forward web 8080:8000`. Nothing here depends on `argv[0]`, so the
//! plugin name behaves exactly like `porthole`.
//!
//! Exit codes: 0 on success and on Ctrl-C/SIGTERM, 64 on bad usage (sysexits' EX_USAGE),
//! 1 on any other error, and what `port-forward` returns for it (kubectl's codes).

mod certs;
mod kubeconfig;
mod manifests;
mod pki;
mod token;
mod up;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// sysexits.h EX_USAGE: the command was used incorrectly.
const EXIT_USAGE: u8 = 64;

/// porthole: Kubernetes pod port-forwarding, client, API server and node agent in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "porthole",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward one or more local ports to a pod, like `kubectl port-forward`.
    PortForward(porthole_client::Args),
    /// Run many forwards at once (a file, or every Service) with a live view.
    Forward(porthole_client::set::ForwardArgs),
    /// Run the Kubernetes-compatible API server.
    Apiserver(porthole_apiserver::Args),
    /// Run the node agent (pods, logs, the kubelet port-forward endpoint).
    Node(porthole_node::Args),
    /// Start a one-machine cluster (API server + node agent) and create objects from files.
    Up(up::Args),
    /// Create the control-plane PKI for API servers run as separate processes.
    Certs(certs::Args),
    /// Manage bootstrap tokens with which nodes join the cluster.
    Token(token::Args),
    /// Print the version.
    Version,
}

/// Worker threads where tokio's one-per-core default is wrong (TOKIO_WORKER_THREADS overrides).
/// Measured on 2 cores (BENCHMARKS.md, bench/README.md): threads that only hand work to each
/// other cost wake-ups, which were a fifth of `porthole up`'s CPU per new connection.
fn default_worker_threads(command: &Command) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match command {
        // Every forwarded connection goes through one session, whose framing and encryption
        // are serial anyway: one worker gave less CPU per connection and a loaded 64-byte
        // round trip of ~0.13 ms instead of 4-7 ms, at the same throughput.
        Command::PortForward(_) => Some(1),
        // A one-machine cluster shares the machine with its pods and their clients: leave them
        // half the cores (on 2 cores: 8% more connections/s, 24% less CPU per connection).
        Command::Up(_) => Some((cores / 2).max(1)),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not usage errors.
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    install_tracing(&cli);

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Store calls and file I/O run on the blocking pool. With tokio's default 10 s keep-alive,
    // the periodic calls of an idle server (lease renewals every 2 s, heartbeats, health
    // checks) wake its idle threads in turn and keep a handful alive forever; after 1 s they
    // go, and a new one costs tens of microseconds when the next call comes.
    builder.thread_keep_alive(std::time::Duration::from_secs(1));
    if let Some(n) = default_worker_threads(&cli.command) {
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            builder.worker_threads(n);
        }
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        if let Err(err) = spawn_signal_handler(shutdown.clone()) {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
        match run(cli.command, shutdown).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    match command {
        Command::PortForward(args) => porthole_client::run(args, shutdown).await,
        Command::Forward(args) => Ok(porthole_client::set::run(args, shutdown).await),
        Command::Apiserver(args) => {
            // The API server's flags include --listen; the binary binds it so that run() gets
            // a listener, as Contract 2 has it.
            let cfg = match porthole_apiserver::Config::from_args(&args) {
                Ok(cfg) => cfg,
                Err(err) => return Ok(usage_error("invalid API server configuration", err)),
            };
            let listener = bind(args.listen).await?;
            porthole_apiserver::run(cfg, listener, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(args) => {
            // The node's flags include --listen; the binary binds it so that run() gets a
            // listener, as Contract 2 has it.
            let listen = args.listen;
            let cfg = match porthole_node::Config::from_args(args) {
                Ok(cfg) => cfg,
                Err(err) => return Ok(usage_error("invalid node configuration", err)),
            };
            let listener = bind(listen).await?;
            porthole_node::run(cfg, listener, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => {
            up::run(args, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(args) => {
            certs::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(args) => {
            token::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("porthole {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Flags that parse but do not make a valid configuration (a missing certificate file, a bad
/// node name) are bad input too: EX_USAGE, like a parse error.
fn usage_error(what: &str, err: anyhow::Error) -> ExitCode {
    eprintln!("error: {what}: {err:#}");
    ExitCode::from(EXIT_USAGE)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr} (is another process listening there? use --listen 127.0.0.1:0 for a free port)"))
}

/// The subscriber is installed once, here; libraries only emit. Logs go to stderr so stdout
/// stays for the ready lines and kubectl-compatible output that scripts parse.
fn install_tracing(cli: &Cli) {
    let default = match (&cli.command, cli.verbose) {
        // `port-forward` prints what kubectl prints and nothing more unless asked: its own
        // kubectl-style `-v=N` maps to a filter.
        (Command::PortForward(args), 0) => args.log_filter(),
        (Command::Forward(args), 0) => args.log_filter(),
        // A joining node reads cluster-info without verifying the server on purpose (the CA
        // is then checked against --ca-cert-hash); kube warns about that on every join.
        (Command::Node(_), 0) => "info,kube_client::client::tls=error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// SIGINT and SIGTERM cancel `shutdown`, which every role treats as "stop cleanly". A second
/// signal exits at once for someone whose clean stop is stuck.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal = name,
            "stopping (send the signal again to exit at once)"
        );
        shutdown.cancel();
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        eprintln!("porthole: second signal, exiting without waiting for a clean stop");
        std::process::exit(130);
    });
    Ok(())
}
