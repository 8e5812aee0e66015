//! Test support for porthole: the process harness of the end-to-end tests, and the servers,
//! peers and certificates the other tests share.
//!
//! Tests run the real `porthole` binary (`env!("CARGO_BIN_EXE_porthole")`) and real clients
//! (kubectl builds, the Python client) as child processes. Synchronisation is by what the
//! processes print, never by sleeping: [`Child::wait_for_line`] reads stdout until a line
//! matches (bounded by a timeout that only turns a hang into a failure).
//!
//! - [`TempDir`]: a unique directory under the system temp dir, removed on drop. Its path is
//!   the marker used to look for leftovers (processes, mounts) after a cluster stops.
//! - [`Child`]: a process whose stdout is read line by line on a thread and whose stderr goes to
//!   a log file; killed on drop so a failing test leaves nothing running.
//! - [`Cluster`]: `porthole up -f FILES --data-dir DIR --listen 127.0.0.1:0`, started and
//!   stopped (SIGINT, like Ctrl-C) with a check that nothing is left behind.
//! - [`Forward`]: a port-forward client (kubectl, porthole) and the local port it printed.
//! - [`Clients`]: where the test clients are (set by `scripts/install-test-deps.sh`).
//! - [`echo`]: echo servers (tokio TCP and UDP, std threads) and the client's round trip.
//! - [`spdy`]: a scripted SPDY peer and frame builders, for tests of one end of a session.
//! - [`pki`]: a throw-away CA and leaf certificates as PEM files, and loading them for rustls.
//! - [`testbed`]: simulated hosts (network namespaces on a switch of their own), with faults.
//! - [`etcd`], [`haproxy`]: the real store and load balancer, locally or on testbed hosts.
//! - [`ha::HaCluster`]: etcd, two API servers behind haproxy and joining nodes on a testbed.
//!
//! Files, one idea each, re-exported here so tests name everything from the crate root:
//! `child.rs` (processes and ready lines), `cluster.rs` (`porthole up`, separate roles,
//! port-forward clients), `env.rs` (root or rootless, the binary under test), `files.rs` (temp
//! dirs and files, repository paths), `leftovers.rs` (process and mount snapshots, leak checks),
//! `traffic.rs` (HTTP GET, payload patterns).

pub mod delay;
pub mod echo;
pub mod etcd;
pub mod ha;
pub mod haproxy;
pub mod pki;
pub mod spdy;
pub mod testbed;

mod child;
mod cluster;
mod env;
mod files;
mod leftovers;
mod traffic;

pub use child::{expect_success, Child, READY_TIMEOUT, STOP_TIMEOUT};
pub use cluster::{apiserver_pki_args, finish, Clients, Cluster, Forward, Roles};
pub use echo::echo_roundtrip;
pub use env::{
    expected_isolation_line, is_root, log_filter_keeping_isolation_line, porthole_bin,
    require_pods, require_root, rootless_run, ROOTLESS_RUN_VAR,
};
pub use files::{example, repo_root, write_file, TempDir};
pub use leftovers::{
    alive, check_no_leftovers, descendants, files_owned_by_others, mounts_mentioning, netns_files,
    processes_mentioning, ProcId,
};
pub use traffic::{http_get, pattern, RefusedPort, PYTHON_PORTFORWARD_GET};
