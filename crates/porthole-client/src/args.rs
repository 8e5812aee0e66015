//! The command line of `porthole port-forward`: [`Args`] (kubectl's flags plus ours), the
//! Go-style value parsers kubectl's flags use, and the checks made before talking to the
//! cluster, with kubectl's usage texts. Kept apart from `lib.rs`, which runs the forward,
//! because these must match kubectl flag for flag and are tested on their own.

use std::time::Duration;

use crate::output::{self, OutputFormat};
use crate::ports::PortSpec;
use crate::target::TargetRef;
use crate::transport::TransportMode;
use crate::{kubeconfig, listen, reverse};

/// Parses a Go duration (`1m0s`, `30s`, `1h30m`, `500ms`, `0`), as kubectl's duration flags do.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    // Go's strconv.ParseBool, which kubectl's boolean flags use.
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// `porthole port-forward TYPE/NAME [LOCAL_PORT:]REMOTE_PORT [...]` — kubectl's flags plus ours.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Forward one or more local ports to a pod",
    long_about = "Forward one or more local ports to a pod. Works like `kubectl port-forward` \
                  (same arguments, output and exit codes) but keeps the local ports open and \
                  reconnects when the session to the pod is lost. Use --reconnect=false for \
                  kubectl's exact behaviour.",
    after_help = "Examples:\n  \
                  porthole port-forward pod/web 8080:8000\n  \
                  porthole port-forward pod/web --reverse 9000:localhost:5432\n  \
                  porthole port-forward deploy/api 8080:http --reverse 6379:127.0.0.1:6379"
)]
pub struct Args {
    /// TYPE/NAME (pod, deployment/deploy, service/svc, statefulset/sts, replicaset/rs, ...)
    /// followed by [LOCAL_PORT:]REMOTE_PORT[/PROTOCOL] specs (5000, 6000:5000, :5000, 0:5000,
    /// 8443:https, 5353:53/udp). /udp forwards UDP datagrams (a porthole extension that needs
    /// porthole nodes); /tcp is the default.
    #[arg(value_name = "TYPE/NAME [LOCAL_PORT:]REMOTE_PORT", num_args = 0.., allow_hyphen_values = false)]
    pub args: Vec<String>,

    /// If present, the namespace scope for this CLI request.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Addresses to listen on (comma separated or repeated). Only accepts IP addresses or
    /// localhost as a value.
    #[arg(long, default_value = "localhost", action = clap::ArgAction::Append, env = "PORTHOLE_ADDRESS")]
    pub address: Vec<String>,

    /// The length of time (like 5s, 2m, or 3h, higher than zero) to wait until at least one pod
    /// is running; also how long a new local connection waits during a reconnect, and how long
    /// a deleted target may stay unresolvable before giving up.
    #[arg(long, default_value = "1m0s", value_parser = parse_go_duration, env = "PORTHOLE_POD_RUNNING_TIMEOUT")]
    pub pod_running_timeout: Duration,

    /// Reconnect when the session is lost and keep other connections alive when one fails.
    /// --reconnect=false behaves exactly like kubectl (exit 1 on the first error).
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_bool, env = "PORTHOLE_RECONNECT")]
    pub reconnect: bool,

    /// Reverse forward POD_PORT:LOCAL_HOST:LOCAL_PORT (ssh -R): connections made inside the
    /// pod to its 127.0.0.1:POD_PORT (and [::1]:POD_PORT) reach LOCAL_HOST:LOCAL_PORT from
    /// here. Repeatable; may be used without forward ports. Needs RBAC `create` (and `get`
    /// for the WebSocket transport) on `pods/reverseforward`.
    #[arg(long = "reverse", value_name = "POD_PORT:LOCAL_HOST:LOCAL_PORT",
          action = clap::ArgAction::Append, value_delimiter = ',', env = "PORTHOLE_REVERSE")]
    pub reverse: Vec<String>,

    /// Spread new connections across every Ready pod behind a deployment/service (one session
    /// per pod) instead of using one pod.
    #[arg(long, env = "PORTHOLE_BALANCE")]
    pub balance: bool,

    /// Transport: auto (WebSocket tunnel, then SPDY, like kubectl), websocket or spdy.
    /// In auto mode KUBECTL_PORT_FORWARD_WEBSOCKETS=false selects SPDY, as for kubectl.
    #[arg(long, value_enum, default_value_t = TransportMode::Auto, env = "PORTHOLE_TRANSPORT")]
    pub transport: TransportMode,

    /// SPDY PING period (default 5s on SPDY, 10s in the WebSocket tunnel, like kubectl);
    /// 0 disables keepalive.
    #[arg(long, value_parser = parse_go_duration, env = "PORTHOLE_KEEPALIVE")]
    pub keepalive: Option<Duration>,

    /// A session whose peer answers nothing for this long is declared dead (and reconnected).
    #[arg(long, default_value = "15s", value_parser = parse_go_duration, env = "PORTHOLE_KEEPALIVE_TIMEOUT")]
    pub keepalive_timeout: Duration,

    /// Output format: text (kubectl's lines) or json (one event per line).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, env = "PORTHOLE_OUTPUT")]
    pub output: OutputFormat,

    /// Log verbosity (kubectl's -v; 0 = errors only, 4 = debug, 6+ = trace). Read by the binary
    /// when it installs logging.
    #[arg(
        short = 'v',
        long = "v",
        value_name = "LEVEL",
        env = "PORTHOLE_VERBOSITY"
    )]
    pub verbosity: Option<u8>,

    /// A UDP flow (one local source address:port of a `/udp` forward) ends after this long
    /// without a datagram either way; the next datagram starts a new one.
    #[arg(long, default_value = "1m0s", value_parser = parse_go_duration, env = "PORTHOLE_UDP_IDLE_TIMEOUT")]
    pub udp_idle_timeout: Duration,

    /// Kubeconfig and API server overrides.
    #[command(flatten)]
    pub kube: kubeconfig::KubeconfigArgs,
}

impl Args {
    /// A `tracing` filter directive for `-v` (the binary installs the subscriber): 0–1 warn,
    /// 2–3 info, 4–5 debug, 6+ trace. At the default level kube's own request-failure logs are
    /// off: every failure they report is already printed here, in kubectl's words.
    pub fn log_filter(&self) -> &'static str {
        log_filter(self.verbosity)
    }
}

/// Everything checked before talking to the cluster.
pub(crate) struct Validated {
    pub(crate) target: TargetRef,
    pub(crate) specs: Vec<PortSpec>,
    pub(crate) addresses: Vec<listen::ListenAddress>,
    pub(crate) reverse: Vec<reverse::ReverseSpec>,
}

pub(crate) fn validate(args: &Args) -> Result<Validated, String> {
    // kubectl's usage errors carry a pointer to the help.
    let usage =
        |msg: &str| format!("error: {msg}\nSee 'porthole port-forward -h' for help and examples");
    let reverse = args
        .reverse
        .iter()
        .map(|s| reverse::ReverseSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(&e))?;
    if args.args.is_empty() || (args.args.len() < 2 && reverse.is_empty()) {
        return Err(usage(
            "TYPE/NAME and list of ports are required for port-forward",
        ));
    }
    if args.pod_running_timeout.is_zero() {
        return Err(usage("--pod-running-timeout must be higher than zero"));
    }
    if args.udp_idle_timeout.is_zero() {
        return Err(usage("--udp-idle-timeout must be higher than zero"));
    }
    let target = TargetRef::parse(&args.args[0]).map_err(output::error_line)?;
    let specs = args.args[1..]
        .iter()
        .map(|s| PortSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(output::error_line)?;
    let addresses = listen::parse_addresses(&args.address).map_err(output::error_line)?;
    Ok(Validated {
        target,
        specs,
        addresses,
        reverse,
    })
}

/// The `tracing` filter for `-v N` (shared by `port-forward` and `forward`).
pub(crate) fn log_filter(verbosity: Option<u8>) -> &'static str {
    match verbosity.unwrap_or(0) {
        0..=1 => "warn,kube_client=off",
        2..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("port-forward").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m0s").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration("60").unwrap_err(),
            "time: missing unit in duration \"60\""
        );
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("1x").is_err());
    }

    #[test]
    fn flags_like_kubectl() {
        let a = parse(&[
            "deploy/web",
            "8080:80",
            "-n",
            "team",
            "--address",
            "0.0.0.0,::",
            "--address=127.0.0.1",
            "--pod-running-timeout=5s",
            "--reconnect=false",
            "-v=4",
            "--insecure-skip-tls-verify",
        ]);
        assert_eq!(a.args, vec!["deploy/web", "8080:80"]);
        assert_eq!(a.namespace.as_deref(), Some("team"));
        assert_eq!(a.address, vec!["0.0.0.0,::", "127.0.0.1"]);
        assert_eq!(a.pod_running_timeout, Duration::from_secs(5));
        assert!(!a.reconnect);
        assert_eq!(a.verbosity, Some(4));
        assert_eq!(a.kube.insecure_skip_tls_verify, Some(true));
        let a = parse(&["web", "80"]);
        assert!(a.reconnect);
        assert_eq!(a.address, vec!["localhost"]);
        assert_eq!(a.pod_running_timeout, Duration::from_secs(60));
        assert_eq!(a.transport, TransportMode::Auto);
    }

    #[test]
    fn validation_texts() {
        let err = |argv: &[&str]| validate(&parse(argv)).err().unwrap();
        assert_eq!(
            err(&["web"]),
            "error: TYPE/NAME and list of ports are required for port-forward\n\
             See 'porthole port-forward -h' for help and examples"
        );
        assert_eq!(
            err(&["web", "80", "--pod-running-timeout=0"]),
            "error: --pod-running-timeout must be higher than zero\n\
             See 'porthole port-forward -h' for help and examples"
        );
        assert_eq!(err(&["web", "1:2:3"]), "error: invalid port format '1:2:3'");
        assert_eq!(
            err(&["web", "80", "--address", "nope"]),
            "error: nope is not a valid IP"
        );
    }
}
