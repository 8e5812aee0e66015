//! porthole-netns: network namespaces for pods, created and used natively (no `ip`, `nsenter`
//! or `socat` on the host).
//!
//! - [`NetNs::create`] starts one long-lived OS thread per namespace. The thread
//!   `unshare(CLONE_NEWNET)`s itself into a fresh namespace, brings `lo` up and bind-mounts
//!   `/proc/thread-self/ns/net` onto a file under the node's state dir, so the namespace
//!   outlives any process in it and can be found again after an agent crash.
//! - [`NetNs::dial`] connects to `127.0.0.1:P`, then `[::1]:P`, inside the namespace
//!   (PROTOCOL.md §8.5) without moving any tokio thread: the namespace thread only calls
//!   `socket()`, because a socket belongs to the namespace it was *created* in and keeps it for
//!   life. The connect itself (with its timeout) then runs on tokio from any thread.
//! - [`NetNs::listen`] / [`NetNs::listen_loopback`] listen inside the namespace the same way
//!   (reverse forwarding: the socket is made on the namespace thread, bound and listened on
//!   tokio).
//! - [`NetNs::udp_connect`] does the same for a UDP socket (UDP forwarding): made by the
//!   namespace thread (or the rootless helper), connected to the pod's loopback on tokio.
//! - [`NetNs::enter_on_spawn`] makes a `Command` join the namespace between `fork` and `exec`.
//! - [`NetNs::remove`] unmounts and unlinks the file; [`cleanup_dir`] does the same for files
//!   left behind by a previous run.
//!
//! - Two ways to make a namespace, the agent's [`Isolation`], chosen once at its start (no
//!   fallback per pod, so an error of the chosen way is the one reported):
//!   [`Isolation::Privileged`] (root) bind-mounts it as above; [`Isolation::Rootless`]
//!   ([`NetNs::create_rootless`]) has a forked helper process unshare a user namespace (the
//!   agent's uid/gid mapped to 0) and a network namespace and hand out sockets over
//!   SCM_RIGHTS; children join both namespaces. Nothing is mounted and the helper dies with
//!   the agent. [`Isolation::probe`] checks at start that the chosen way works; when the host
//!   forbids unprivileged user namespaces its error names the setting to change
//!   ([`NetnsError::UserNamespace`]).
//!
//! Layout: this file holds the public face ([`NetNs`], [`Isolation`], the errors) and what
//! both ways share; `privileged` makes bind-mounted namespaces, `rootless` has the forked
//! helper in `sys.rs` make them, `pool` hands out the sockets made inside (with spares), and
//! `mounts` unmounts namespace files and reads `/proc/self/mountinfo` (cleanup of leftovers).
//!
//! Linux only. This is the only crate in porthole allowed `unsafe`, confined to `sys.rs`.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockType};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod mounts;
mod pool;
mod privileged;
mod rootless;
mod sys;

pub use mounts::{cleanup_dir, is_mounted};
/// The one dial error of porthole: a namespace's [`NetNs::dial`] fails with the same type a
/// [`porthole_relay::dial::PodDialer`] returns, so the node hands it on as it is.
pub use porthole_relay::dial::DialError;
pub use sys::HelperStep;

use mounts::unmount_and_unlink;
use pool::{SocketRequest, Spare};

/// Default per-address connect timeout for [`NetNs::dial`] (containerd uses 5 s, §8.2).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong creating or removing a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process may not create network namespaces.
    #[error("{hint}")]
    NotPermitted {
        /// Why, and what the operator can change (run as root, or run pods rootless).
        hint: String,
        /// The kernel's refusal (`EPERM`).
        #[source]
        source: io::Error,
    },
    /// The kernel refused the user namespace a rootless namespace needs; `hint` names the
    /// host setting responsible and how to change it.
    #[error("{hint} ({}: {})", step.map_or("start the namespace helper", sys::HelperStep::describe), describe_io_error(cause))]
    UserNamespace {
        /// The helper's step that failed (`None`: starting the helper).
        step: Option<sys::HelperStep>,
        /// The error of that step.
        cause: io::Error,
        /// What to change, for the operator.
        hint: String,
    },
    /// `unshare(CLONE_NEWNET)` failed for another reason.
    #[error("create network namespace: unshare(CLONE_NEWNET)")]
    Unshare(#[source] io::Error),
    /// Bringing the loopback interface up failed.
    #[error("bring up loopback in the new network namespace")]
    LoopbackUp(#[source] io::Error),
    /// Creating the mount-point file failed.
    #[error("create namespace file {path}")]
    CreateFile {
        /// The file that could not be created.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bind mount that keeps the namespace alive failed.
    #[error("bind-mount /proc/thread-self/ns/net onto {path}")]
    Mount {
        /// The mount target.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Unmounting a namespace file failed.
    #[error("unmount namespace file {path}")]
    Unmount {
        /// The mount target.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Removing a namespace file failed.
    #[error("remove namespace file {path}")]
    RemoveFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading a state directory failed.
    #[error("read directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The namespace thread could not be started or died.
    #[error("namespace thread for {name:?}: {reason}")]
    Thread {
        /// Namespace name.
        name: String,
        /// What happened.
        reason: String,
    },
}

/// Backlog of the listeners [`NetNs::listen_loopback`] makes.
const LISTEN_BACKLOG: u32 = 1024;

/// Why [`NetNs::listen_loopback`] could not listen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// Something inside the namespace already holds `127.0.0.1:port` (or a wildcard address
    /// on that port).
    #[error("port {port} is already in use")]
    InUse {
        /// The port asked for.
        port: u16,
    },
    /// Any other failure (the namespace is closed, out of descriptors, ...).
    #[error("{cause}")]
    Other {
        /// The full cause text.
        cause: String,
    },
}

struct Inner {
    name: String,
    path: PathBuf,
    /// The namespace file, open for the life of the handle: child processes `setns` to it.
    file: File,
    /// Channel to the namespace thread; `None` once removed (the thread then exits).
    requests: Mutex<Option<mpsc::Sender<SocketRequest>>>,
    spare: Mutex<Spare>,
    /// A batch request is on its way to the namespace thread.
    refilling: AtomicBool,
    removed: Mutex<bool>,
    kind: Kind,
}

/// How the namespace is held.
enum Kind {
    /// Bind-mounted at `path` (root): survives the agent, cleaned up by [`cleanup_dir`].
    Mounted,
    /// Held by a helper process in its own user namespace (rootless): dies with the agent.
    Rootless {
        /// `/proc/<helper>/ns/user`, joined before the network namespace by child processes.
        user_file: File,
    },
}

/// How pod network namespaces are made; an agent uses one for all its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Bind-mounted network namespaces under the node's state dir: needs root
    /// (CAP_SYS_ADMIN); they survive an agent crash and are cleaned up at the next start.
    Privileged,
    /// Each pod in a user namespace owned by the agent's user, around its network namespace:
    /// needs no privilege, only unprivileged user namespaces (on by default in most kernels).
    Rootless,
}

impl Isolation {
    /// What an agent uses unless told otherwise: [`Isolation::Privileged`] as root,
    /// [`Isolation::Rootless`] otherwise.
    pub fn for_this_process() -> Isolation {
        if nix::unistd::geteuid().is_root() {
            Isolation::Privileged
        } else {
            Isolation::Rootless
        }
    }

    /// The name used in flags and logs.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Privileged => "privileged",
            Isolation::Rootless => "rootless",
        }
    }

    /// Makes one namespace this way and removes it again, so that a host where it cannot
    /// work is found at start, with the reason, rather than at the first pod. `dir` (which must
    /// exist) holds the short-lived bind mount of [`Isolation::Privileged`].
    ///
    /// Blocks for the few system calls it takes.
    pub fn probe(self, dir: &Path) -> Result<(), NetnsError> {
        // Unique per call: probes may run at once (threads of one test binary).
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let name = format!("probe-{}-{n}", std::process::id());
        let ns = NetNs::create(&dir.join(format!(".{name}")), &name, self)?;
        ns.remove()
    }
}

/// A network namespace owned by this process, persisted as a bind mount at [`NetNs::path`].
///
/// Cheap to clone. The namespace is removed (unmounted, file unlinked) by [`NetNs::remove`],
/// or when the last clone is dropped.
#[derive(Clone)]
pub struct NetNs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs")
            .field("name", &self.inner.name)
            .field("path", &self.inner.path)
            .finish()
    }
}

impl NetNs {
    /// Creates a namespace with only `lo` (up) the way `isolation` says. `name` (the pod UID)
    /// appears in thread names and dial errors.
    ///
    /// [`Isolation::Privileged`] bind-mounts it at `path` (the parent directory must exist);
    /// [`Isolation::Rootless`] ignores `path` ([`NetNs::create_rootless`]). There is no
    /// fallback from one to the other: the error is the chosen way's.
    ///
    /// Blocks for the few system calls it takes; call it from `spawn_blocking` in async code.
    pub fn create(path: &Path, name: &str, isolation: Isolation) -> Result<NetNs, NetnsError> {
        match isolation {
            Isolation::Privileged => NetNs::create_mounted(path, name),
            Isolation::Rootless => NetNs::create_rootless(name),
        }
    }

    /// Whether this namespace is held by a rootless helper rather than a bind mount.
    pub fn is_rootless(&self) -> bool {
        matches!(self.inner.kind, Kind::Rootless { .. })
    }

    /// The name given at creation (the pod UID).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the namespace is mounted.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether [`NetNs::remove`] has run.
    pub fn is_removed(&self) -> bool {
        *self.inner.removed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error of a request to a namespace that is gone (removed, or its thread ended).
    fn closed(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "network namespace for sandbox {:?} is closed",
                self.inner.name
            ),
        )
    }

    /// Connects to `addr` from inside the namespace, giving up after `timeout`.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let fd = self.socket(family_of(addr)).await?;
        // The socket was created nonblocking (SOCK_NONBLOCK), as tokio requires.
        let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        match tokio::time::timeout(timeout, sock.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {}s", timeout.as_secs_f64()),
            )),
        }
    }

    /// A UDP socket inside the namespace, connected to `addr` (UDP forwarding). Connecting
    /// only fixes the peer: whether anything listens shows on the first send or receive
    /// (`ECONNREFUSED` after the ICMP port unreachable).
    pub async fn udp_connect(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        // One socket per flow, no spares: flows are long-lived, unlike TCP connections.
        let fd = self
            .make_sockets(family_of(addr), SockType::Datagram, 1)
            .await?
            .pop()
            .ok_or_else(|| self.closed())?;
        // Created nonblocking (SOCK_NONBLOCK), as tokio requires.
        let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
        sock.connect(addr).await?;
        Ok(sock)
    }

    /// Connects to `port` on the namespace's loopback: `127.0.0.1` first, then `[::1]` only if
    /// that failed (serially, like containerd; §8.5). Each attempt is bounded by `timeout`.
    pub async fn dial(&self, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v4_err = match self.connect(v4, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        if self.is_removed() {
            return Err(DialError::io(
                format!(
                    "network namespace for sandbox {:?} is closed",
                    self.inner.name
                ),
                v4_err,
            ));
        }
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let v6_err = match self.connect(v6, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        // The IPv4 error is the one kept as the source: 127.0.0.1 is what was asked for, and
        // ::1 is only a fallback whose failure usually just says the app is IPv4-only.
        Err(DialError::io(
            format!(
                "failed to connect to localhost:{port} inside namespace {:?}: IPv4: connect {v4}: {}; IPv6: connect {v6}: {}",
                self.inner.name,
                describe_io_error(&v4_err),
                describe_io_error(&v6_err),
            ),
            v4_err,
        ))
    }

    /// Listens on `addr` inside the namespace. As for [`NetNs::connect`], only the socket is
    /// made on the namespace thread (a socket keeps the namespace it was created in); the
    /// bind and listen run here. `SO_REUSEADDR` lets a new session take a port back while the
    /// previous session's connections sit in TIME_WAIT; an active listener still refuses it.
    pub async fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let fd = self.socket(family_of(addr)).await?;
        let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        sock.listen(backlog)
    }

    /// Listens on `port` on the namespace's loopback: `127.0.0.1:port`, and `[::1]:port`
    /// too when the namespace has IPv6 loopback. The IPv4 listener is required; a failure on
    /// `::1` alone only leaves that family out (IPv6 disabled, or an app holding `[::1]:port`).
    pub async fn listen_loopback(&self, port: u16) -> Result<Vec<TcpListener>, ListenError> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let first = self.listen(v4, LISTEN_BACKLOG).await.map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                ListenError::InUse { port }
            } else {
                ListenError::Other {
                    cause: format!(
                        "listen on {v4} inside namespace {:?}: {}",
                        self.inner.name,
                        describe_io_error(&e)
                    ),
                }
            }
        })?;
        let mut listeners = vec![first];
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        match self.listen(v6, LISTEN_BACKLOG).await {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::debug!(
                netns = %self.inner.name,
                error = %describe_io_error(&e),
                "no IPv6 loopback listener; serving {v4} only"
            ),
        }
        Ok(listeners)
    }

    /// Makes `cmd` run inside this namespace: the child calls `setns` after `fork`, before
    /// `exec`. The parent's threads are untouched.
    pub fn enter_on_spawn(&self, cmd: &mut std::process::Command) {
        match &self.inner.kind {
            Kind::Mounted => {
                sys::setns_before_exec(cmd, self.inner.file.as_raw_fd(), self.inner.clone())
            }
            Kind::Rootless { user_file } => sys::setns_user_then_net_before_exec(
                cmd,
                user_file.as_raw_fd(),
                self.inner.file.as_raw_fd(),
                self.inner.clone(),
            ),
        }
    }

    /// Removes the namespace: stops its thread, unmounts and unlinks the file. Sockets and
    /// processes still inside keep the namespace alive in the kernel until they close, but it
    /// can no longer be entered. Idempotent.
    pub fn remove(&self) -> Result<(), NetnsError> {
        self.inner.remove()
    }
}

impl Inner {
    fn remove(&self) -> Result<(), NetnsError> {
        let mut removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        if *removed {
            return Ok(());
        }
        // Dropping the sender ends the thread's receive loop.
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Spare sockets would keep the namespace alive in the kernel.
        *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Spare::default();
        if matches!(self.kind, Kind::Mounted) {
            unmount_and_unlink(&self.path)?;
        }
        *removed = true;
        tracing::debug!(netns = %self.name, path = %self.path.display(), "network namespace removed");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never leak a mount, even when the owner forgot (or panicked before) `remove`.
        if let Err(e) = self.remove() {
            tracing::error!(error = %porthole_relay::error::chain(&e), "removing network namespace on drop");
        }
    }
}

/// The address family of `addr`.
fn family_of(addr: SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `connection refused` rather than `Connection refused (os error 111)`: the Go-like lower-case
/// form users know from kubectl's error texts.
pub fn describe_io_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
