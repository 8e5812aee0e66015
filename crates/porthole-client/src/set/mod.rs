//! `porthole forward`: many forwards at once, from a file (`-f forwards.yaml`) or from every
//! Service of some namespaces (`--all-services`), with one view of how they are doing.
//!
//! Each forward is an ordinary `porthole port-forward` run: its entry becomes an [`Args`] and
//! goes to [`crate::run_with_output`], the same engine, so it reconnects on its own and fails on
//! its own. A run that ends on an error (a target that does not exist yet, a pod gone for good)
//! is started again after a back-off; the others are not touched.
//!
//! ```text
//!  entry ─▶ Args ─▶ run_with_output ─▶ Output::tap_only ─▶ ┐
//!  entry ─▶ Args ─▶ run_with_output ─▶ Output::tap_only ─▶ ├─ (index, Event) ─▶ states ─▶ view
//!  ...                                                     ┘                      └─▶ GET /status
//! ```
//!
//! Layout: [`file`] (the forwards file), [`services`] (`--all-services`), [`state`] (events
//! folded into rows), [`view`] (table, plain lines, JSON), [`status`] (`--status-addr`),
//! [`hosts`] (`--etc-hosts`).

pub mod file;
pub mod hosts;
pub mod services;
pub mod state;
pub mod status;
pub mod view;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::file::Entry;
use self::state::{ForwardState, Phase};
use self::status::SharedStates;
use self::view::ViewMode;
use crate::output::{Event, Output, OutputFormat};
use crate::transport::TransportMode;
use crate::{kubeconfig, Args};

const EXAMPLES: &str = "\
Examples:
  # Every forward of a file (see README, \"Many forwards at once\")
  porthole forward -f forwards.yaml

  # forwards.yaml:
  forwards:
    - name: web
      target: pod/web
      ports: [\"8080:8000\"]
    - name: api
      namespace: shop
      target: deploy/api
      ports: [\":8000\"]
      address: 127.0.0.1

  # Every port of every Service of two namespaces, on free local ports, with the map printed
  porthole forward --all-services -n shop -n billing

  # ... on the services' own ports, each service on its own 127.0.0.x and named in /etc/hosts
  sudo porthole forward --all-services -n shop --etc-hosts

  # Plain lines, JSON events, and the state over HTTP
  porthole forward -f forwards.yaml --view plain
  porthole forward -f forwards.yaml -o json
  porthole forward -f forwards.yaml --status-addr 127.0.0.1:9900   # curl 127.0.0.1:9900/status

  # As a kubectl plugin (porthole installed as kubectl-porthole)
  kubectl porthole forward -f forwards.yaml";

/// How the set is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ViewChoice {
    /// The live table when stdout is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// The live table.
    Table,
    /// One line per event.
    Plain,
}

/// `porthole forward`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run many forwards at once, from a file or for every Service, with a live view",
    long_about = "Run many forwards at once: the entries of a forwards file (-f), or every port \
                  of every Service of some namespaces (--all-services). Each forward works like \
                  `porthole port-forward` and reconnects on its own; one failing does not stop \
                  the others. On a terminal a live table shows each forward's state, pod, ports, \
                  connections and bytes (IN: from the pod, OUT: to the pod); otherwise one line \
                  per event, or JSON events with -o json.",
    after_help = EXAMPLES
)]
pub struct ForwardArgs {
    /// A forwards file (YAML, `forwards:` list; repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Forward every port of every Service of the namespaces (-n, repeatable, or -A).
    #[arg(long)]
    pub all_services: bool,

    /// Namespace: for --all-services, which ones (repeatable); for -f, the namespace of entries
    /// that name none.
    #[arg(short = 'n', long, action = clap::ArgAction::Append)]
    pub namespace: Vec<String>,

    /// With --all-services: every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// With --all-services: listen on each service's own port numbers instead of free ports.
    #[arg(long)]
    pub same_ports: bool,

    /// With --all-services: give each service its own loopback address (127.0.0.2, ...) and
    /// port numbers, and add `svc`, `svc.ns`, `svc.ns.svc.cluster.local` to the hosts file in a
    /// marked block that is removed on exit (or by the next run, after a crash).
    #[arg(long)]
    pub etc_hosts: bool,

    /// The hosts file --etc-hosts edits.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/hosts",
        env = "PORTHOLE_HOSTS_FILE"
    )]
    pub hosts_file: PathBuf,

    /// With --all-services: addresses to listen on (like port-forward's --address; default
    /// localhost). Ignored with --etc-hosts.
    #[arg(long, action = clap::ArgAction::Append)]
    pub address: Vec<String>,

    /// Serve the state as JSON over HTTP here (GET /status, GET /healthz); port 0 picks a free
    /// port, printed at start.
    #[arg(long, value_name = "ADDR", env = "PORTHOLE_STATUS_ADDR")]
    pub status_addr: Option<SocketAddr>,

    /// Output format: text (the live view or plain lines) or json (one event per line, each
    /// with the forward's name in `forward`).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Text output: auto (the table on a terminal, plain lines otherwise), table or plain.
    #[arg(long, value_enum, default_value_t = ViewChoice::Auto)]
    pub view: ViewChoice,

    /// Passed to every forward (see `porthole port-forward -h`).
    #[arg(long, default_value = "1m0s", value_parser = crate::parse_go_duration)]
    pub pod_running_timeout: Duration,

    /// Passed to every forward: auto, websocket or spdy.
    #[arg(long, value_enum, default_value_t = TransportMode::Auto)]
    pub transport: TransportMode,

    /// Log verbosity on stderr, as for port-forward.
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// Kubeconfig and API server overrides (an entry's `context` replaces --context).
    #[command(flatten)]
    pub kube: kubeconfig::KubeconfigArgs,
}

impl ForwardArgs {
    /// The `tracing` filter for `-v` (as [`Args::log_filter`]).
    pub fn log_filter(&self) -> &'static str {
        crate::args::log_filter(self.verbosity)
    }
}

#[derive(clap::Parser)]
struct PortForwardCli {
    #[command(flatten)]
    args: Args,
}

/// The port-forward arguments of one entry.
fn entry_args(entry: &Entry, set: &ForwardArgs) -> Result<Args, String> {
    let mut argv: Vec<String> = vec!["port-forward".into(), "--".into(), entry.target.clone()];
    argv.extend(entry.ports.iter().cloned());
    let mut args = PortForwardCli::try_parse_from(&argv)
        .map_err(|e| format!("error: forward {}: {e}", entry.name))?
        .args;
    args.namespace = entry
        .namespace
        .clone()
        .or_else(|| set.namespace.first().cloned());
    if !entry.address.is_empty() {
        args.address = entry.address.clone();
    }
    args.pod_running_timeout = set.pod_running_timeout;
    args.transport = set.transport;
    args.kube = set.kube.clone();
    if entry.context.is_some() {
        args.kube.context = entry.context.clone();
    }
    args.reverse = entry.reverse.clone();
    Ok(args)
}

/// One message to the state keeper.
enum Msg {
    /// An engine event of forward `index`.
    Event(usize, Event),
    /// Forward `index` is being started again after it failed.
    Restarting(usize, Duration),
}

/// Back-off between runs of a forward that keeps failing.
const RESTART_INITIAL: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// How often the live table is redrawn.
const TABLE_REFRESH: Duration = Duration::from_millis(250);

/// Runs one entry until shutdown, again after each failure.
async fn run_entry(
    index: usize,
    args: Args,
    tx: mpsc::UnboundedSender<Msg>,
    shutdown: CancellationToken,
) {
    let mut delay = RESTART_INITIAL;
    loop {
        let (tap, mut events) = mpsc::unbounded_channel();
        let relay = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    let _ = tx.send(Msg::Event(index, e));
                }
            })
        };
        let started = tokio::time::Instant::now();
        crate::run_with_output(args.clone(), Output::tap_only(tap), shutdown.clone()).await;
        // Every event of this run is delivered before the restart notice (the engine's tasks
        // drop their printers as they end; a straggler is not worth waiting long for).
        let _ = tokio::time::timeout(Duration::from_secs(2), relay).await;
        if shutdown.is_cancelled() {
            return;
        }
        if started.elapsed() > RESTART_MAX {
            delay = RESTART_INITIAL;
        }
        let _ = tx.send(Msg::Restarting(index, delay));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESTART_MAX);
    }
}

/// Runs `porthole forward` until Ctrl-C/SIGTERM (`shutdown`). Errors before the forwards start
/// (a bad file, no cluster for --all-services) are printed (`error: ...`) and exit 1.
pub async fn run(args: ForwardArgs, shutdown: CancellationToken) -> ExitCode {
    match run_inner(args, shutdown).await {
        Ok(code) => code,
        Err(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> String {
    format!("error: {msg}\nSee 'porthole forward -h' for help and examples")
}

async fn run_inner(args: ForwardArgs, shutdown: CancellationToken) -> Result<ExitCode, String> {
    if args.files.is_empty() && !args.all_services {
        return Err(usage(
            "give a forwards file (-f FILE) or --all-services (with -n NAMESPACE or -A)",
        ));
    }
    if !args.all_services && (args.etc_hosts || args.same_ports || args.all_namespaces) {
        return Err(usage(
            "--etc-hosts, --same-ports and --all-namespaces go with --all-services",
        ));
    }
    if args.all_namespaces && !args.namespace.is_empty() {
        return Err(usage(
            "give either -n NAMESPACE or --all-namespaces, not both",
        ));
    }
    if args.pod_running_timeout.is_zero() {
        return Err(usage("--pod-running-timeout must be higher than zero"));
    }
    if !args.address.is_empty() {
        crate::listen::parse_addresses(&args.address).map_err(crate::output::error_line)?;
    }
    let mode = match (args.output, args.view) {
        (OutputFormat::Json, _) => ViewMode::Json,
        (_, ViewChoice::Table) => ViewMode::Table,
        (_, ViewChoice::Plain) => ViewMode::Plain,
        (_, ViewChoice::Auto) if std::io::stdout().is_terminal() => ViewMode::Table,
        (_, ViewChoice::Auto) => ViewMode::Plain,
    };

    let mut entries = file::load_all(&args.files)
        .map_err(|e| crate::output::error_line(porthole_relay::error::chain(&e)))?;
    let mut hosts_lines = Vec::new();
    if args.all_services {
        let config = kubeconfig::load(&args.kube)
            .await
            .map_err(crate::output::error_line)?;
        let default_ns = config.default_namespace.clone();
        let client = crate::transport::api_client(config).map_err(|e| {
            format!(
                "error: cannot create the API client: {}",
                porthole_relay::error::chain(&e)
            )
        })?;
        let namespaces = if args.all_namespaces {
            services::all_namespaces(&client).await?
        } else if args.namespace.is_empty() {
            vec![default_ns]
        } else {
            args.namespace.clone()
        };
        let placement = services::Placement {
            same_ports: args.same_ports,
            own_address: args.etc_hosts,
            address: args.address.clone(),
        };
        let found = services::discover(
            &client,
            &namespaces,
            args.kube.context.as_deref(),
            &placement,
        )
        .await?;
        for why in &found.skipped {
            view::notice(
                mode,
                "skipped",
                serde_json::json!({ "message": why }),
                &format!("porthole forward: skipped {why}"),
            );
        }
        if found.entries.is_empty() {
            return Err(format!(
                "error: no service with a selector and a TCP port in namespace(s) {}; nothing to forward",
                namespaces.join(", ")
            ));
        }
        for e in found.entries {
            if entries.iter().any(|o| o.name == e.name) {
                return Err(format!(
                    "error: service forward {:?} has the name of an entry of the forwards file; rename the entry",
                    e.name
                ));
            }
            entries.push(e);
        }
        hosts_lines = found.hosts;
    }
    let mut runs = Vec::new();
    for e in &entries {
        runs.push(entry_args(e, &args)?);
    }
    // Entries without a namespace get their context's default now, so the view and /status
    // name it (a kubeconfig that cannot be read is reported by that forward's own run).
    let mut default_namespaces: Vec<(Option<String>, Option<String>)> = Vec::new();
    for run in runs.iter_mut().filter(|r| r.namespace.is_none()) {
        let known = default_namespaces
            .iter()
            .find(|(ctx, _)| *ctx == run.kube.context)
            .map(|(_, ns)| ns.clone());
        let ns = match known {
            Some(ns) => ns,
            None => {
                let ns = kubeconfig::load(&run.kube)
                    .await
                    .ok()
                    .map(|c| c.default_namespace);
                default_namespaces.push((run.kube.context.clone(), ns.clone()));
                ns
            }
        };
        run.namespace = ns;
    }

    // The hosts file: a killed run's block goes first, then ours.
    let hosts_block = if args.etc_hosts {
        let removed = hosts::clean_stale(&args.hosts_file).map_err(crate::output::error_line)?;
        if removed > 0 {
            view::notice(
                mode,
                "hosts_cleaned",
                serde_json::json!({ "path": args.hosts_file.display().to_string(), "blocks": removed }),
                &format!(
                    "porthole forward: removed {removed} block(s) left in {} by a run that no longer exists",
                    args.hosts_file.display()
                ),
            );
        }
        let block =
            hosts::add(&args.hosts_file, &hosts_lines).map_err(crate::output::error_line)?;
        for (address, names) in &hosts_lines {
            view::notice(
                mode,
                "hosts_added",
                serde_json::json!({ "path": args.hosts_file.display().to_string(), "address": address, "names": names }),
                &format!(
                    "porthole forward: {} {address} {}",
                    args.hosts_file.display(),
                    names.join(" ")
                ),
            );
        }
        Some(block)
    } else {
        None
    };

    let states: SharedStates = Arc::new(Mutex::new(
        entries
            .iter()
            .zip(&runs)
            .map(|(e, a)| {
                ForwardState::new(
                    e.name.clone(),
                    e.context.clone(),
                    a.namespace.clone(),
                    e.target.clone(),
                )
            })
            .collect(),
    ));

    let tracker = TaskTracker::new();
    let mut header_extra = String::new();
    if let Some(addr) = args.status_addr {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                if let Some(b) = hosts_block {
                    let _ = b.remove();
                }
                return Err(format!(
                    "error: cannot listen on --status-addr {addr}: {e} (use 127.0.0.1:0 for a free port)"
                ));
            }
        };
        let bound = listener
            .local_addr()
            .map_err(|e| format!("error: status listener address: {e}"))?;
        let url = format!("http://{bound}/status");
        view::notice(
            mode,
            "status_listening",
            serde_json::json!({ "address": bound.to_string(), "url": url }),
            &format!("porthole forward: status at {url}"),
        );
        header_extra = format!("status {url}");
        tracker.spawn(status::serve(listener, states.clone(), shutdown.clone()));
    }

    let (tx, rx) = mpsc::unbounded_channel();
    for (i, a) in runs.into_iter().enumerate() {
        tracker.spawn(run_entry(i, a, tx.clone(), shutdown.clone()));
    }
    drop(tx);
    tracker.close();

    // The port each spec asked for (the service port for --all-services), for the map.
    let map = args.all_services.then(|| {
        entries
            .iter()
            .map(|e| {
                e.ports
                    .iter()
                    .map(|p| p.rsplit(':').next().unwrap_or(p).to_string())
                    .collect()
            })
            .collect()
    });
    keep_states(rx, &states, mode, &header_extra, map, &shutdown).await;

    // Shut down: the forwards close their listeners and sessions.
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some forwards did not stop within 10s");
    }
    if let Some(b) = hosts_block {
        if let Err(e) = b.remove() {
            eprintln!("error: {e}; remove the porthole block by hand");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Folds events into `states` and shows them, until shutdown.
async fn keep_states(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    states: &SharedStates,
    mode: ViewMode,
    header_extra: &str,
    map: Option<Vec<Vec<String>>>,
    shutdown: &CancellationToken,
) {
    let _guard = (mode == ViewMode::Table).then(view::TableGuard::start);
    let mut table = view::TableWriter::new();
    let mut tick = tokio::time::interval(TABLE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut map_shown = map.is_none();
    let draw = |table: &mut view::TableWriter| {
        let lines = {
            let s = states.lock().expect("state lock: no panics while held");
            // One line spare: the cursor rests below the frame.
            let max = view::terminal_lines().map(|n| n.saturating_sub(1));
            view::table_lines(&s, header_extra, max)
        };
        table.draw(&lines);
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick(), if mode == ViewMode::Table => draw(&mut table),
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let mut s = states.lock().expect("state lock: no panics while held");
                match msg {
                    Msg::Event(i, ev) => {
                        let Some(st) = s.get_mut(i) else { continue };
                        st.apply(&ev);
                        match mode {
                            ViewMode::Json => view::stdout_line(&view::json_line(&st.name, &ev)),
                            ViewMode::Plain => {
                                if let Some(line) = view::plain_line(&st.name, &ev) {
                                    view::stdout_line(&line);
                                }
                            }
                            ViewMode::Table => {}
                        }
                    }
                    Msg::Restarting(i, delay) => {
                        let Some(st) = s.get_mut(i) else { continue };
                        st.restarting();
                        let text = format!("restarting after {}s", delay.as_secs());
                        match mode {
                            ViewMode::Json => view::stdout_line(&serde_json::json!({
                                "time": jiff::Timestamp::now().to_string(),
                                "forward": st.name, "event": "restarting",
                                "delay_seconds": delay.as_secs(),
                            }).to_string()),
                            ViewMode::Plain => view::stdout_line(&format!("[{}] {text}", st.name)),
                            ViewMode::Table => {}
                        }
                    }
                }
                if !map_shown && s.iter().all(|f| f.state != Phase::Connecting) {
                    map_shown = true;
                    if mode != ViewMode::Table {
                        print_map(&s, map.as_deref().unwrap_or_default(), mode);
                    }
                }
            }
        }
    }
    if mode == ViewMode::Table {
        draw(&mut table);
    }
}

/// `--all-services`: the service port → local address map, once every forward has started.
/// `asked[i]` holds the remote port of each spec of forward `i`: listeners open in spec order,
/// so the n-th distinct local port belongs to the n-th spec (the pod port in the events is the
/// service's target port, not the port users know the service by).
fn print_map(states: &[ForwardState], asked: &[Vec<String>], mode: ViewMode) {
    for (i, s) in states.iter().enumerate() {
        let mut local_ports: Vec<u16> = Vec::new();
        for p in &s.ports {
            if !local_ports.contains(&p.local_port) {
                local_ports.push(p.local_port);
            }
        }
        let specs = asked.get(i).filter(|a| a.len() == local_ports.len());
        for p in &s.ports {
            let spec_port = specs
                .and_then(|a| {
                    let n = local_ports.iter().position(|l| *l == p.local_port)?;
                    a.get(n).cloned()
                })
                .unwrap_or_else(|| p.remote_port.to_string());
            let local = crate::listen::join_host_port(&p.address, p.local_port);
            view::notice(
                mode,
                "map",
                serde_json::json!({ "forward": s.name, "target": s.target, "port": spec_port,
                    "pod_port": p.remote_port, "address": p.address, "local_port": p.local_port }),
                &format!("map: {} port {spec_port} -> {local}", s.name),
            );
        }
        if s.ports.is_empty() {
            view::notice(
                mode,
                "map",
                serde_json::json!({ "forward": s.name, "target": s.target, "state": s.state }),
                &format!("map: {} {}", s.name, s.state.as_str()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ForwardArgs,
    }

    #[test]
    fn entries_become_port_forward_args() {
        let set = Cli::try_parse_from([
            "forward",
            "-f",
            "x.yaml",
            "-n",
            "dflt",
            "--context",
            "c0",
            "--pod-running-timeout=5s",
        ])
        .unwrap()
        .args;
        let entry = Entry {
            name: "db".into(),
            context: Some("c1".into()),
            namespace: None,
            target: "svc/db".into(),
            ports: vec![":5432".into(), "6000:http".into()],
            address: vec!["127.0.0.1".into()],
            reverse: vec![],
        };
        let a = entry_args(&entry, &set).unwrap();
        assert_eq!(a.args, vec!["svc/db", ":5432", "6000:http"]);
        assert_eq!(a.namespace.as_deref(), Some("dflt"));
        assert_eq!(a.address, vec!["127.0.0.1"]);
        assert_eq!(a.kube.context.as_deref(), Some("c1"));
        assert_eq!(a.pod_running_timeout, Duration::from_secs(5));
        assert!(a.reconnect);
        let entry = Entry {
            context: None,
            namespace: Some("own".into()),
            address: vec![],
            ..entry
        };
        let a = entry_args(&entry, &set).unwrap();
        assert_eq!(a.namespace.as_deref(), Some("own"));
        assert_eq!(a.kube.context.as_deref(), Some("c0"));
        assert_eq!(a.address, vec!["localhost"]);
    }
}
