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
//! Linux only. This is the only crate in porthole allowed `unsafe`, confined to `sys.rs`.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod sys;

pub use sys::HelperStep;

/// Default per-address connect timeout for [`NetNs::dial`] (containerd uses 5 s, §8.2).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong creating or removing a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process may not create network namespaces.
    #[error("{0}")]
    NotPermitted(String),
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

/// A connection attempt inside a namespace failed; `Display` is the cause text used on the
/// port-forward error stream (PROTOCOL.md §4.5), naming the port and both address families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    /// The full cause text.
    pub cause: String,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for DialError {}

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

/// A request to the namespace thread: make `count` nonblocking TCP sockets of this family
/// (fewer if it fails part way; an error only if none could be made).
struct SocketRequest {
    family: AddressFamily,
    /// `Stream` (TCP) or `Datagram` (UDP).
    kind: SockType,
    count: usize,
    reply: tokio::sync::oneshot::Sender<io::Result<Vec<OwnedFd>>>,
}

/// Sockets made per trip to the namespace thread. The trip (two thread wake-ups and a
/// channel round) cost more than the socket itself; spare sockets wait in [`Inner::spare`]
/// for the next connections, so a busy pod pays one trip per this many connections.
const SOCKET_BATCH: usize = 8;

/// Clears [`Inner::refilling`] when the batch request ends, however it ends (even if the
/// dialing future is dropped mid-way).
struct RefillDone<'a>(&'a AtomicBool);

impl Drop for RefillDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Unconnected sockets made in the namespace ahead of need, per address family. Filled only
/// by a dial that needed a trip, so idle namespaces hold none; emptied on removal.
#[derive(Default)]
struct Spare {
    v4: Vec<OwnedFd>,
    v6: Vec<OwnedFd>,
}

impl Spare {
    fn of(&mut self, family: AddressFamily) -> &mut Vec<OwnedFd> {
        if family == AddressFamily::Inet6 {
            &mut self.v6
        } else {
            &mut self.v4
        }
    }
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

    /// Creates a namespace held by a helper process inside a new user namespace (the
    /// agent's uid and gid mapped to 0), for agents without CAP_SYS_ADMIN. Nothing is mounted;
    /// the helper dies with the agent, so a crash leaves nothing behind. [`NetNs::path`] is the
    /// helper's `/proc/PID/ns/net`.
    pub fn create_rootless(name: &str) -> Result<NetNs, NetnsError> {
        let (ready_tx, ready_rx) =
            mpsc::sync_channel::<Result<nix::unistd::Pid, sys::HelperError>>(1);
        let (req_tx, req_rx) = mpsc::channel::<SocketRequest>();
        let thread_name: String = format!("netns-{name}").chars().take(15).collect();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || rootless_thread(ready_tx, req_rx))
            .map_err(|e| NetnsError::Thread {
                name: name.to_owned(),
                reason: format!("spawn: {e}"),
            })?;
        let pid = match ready_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => return Err(user_namespace_error(e)),
            Err(_) => {
                return Err(NetnsError::Thread {
                    name: name.to_owned(),
                    reason: "exited before reporting".into(),
                })
            }
        };
        let open = |ns: &str| {
            let p = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
            File::open(&p).map_err(|source| NetnsError::CreateFile { path: p, source })
        };
        let file = open("net")?;
        let user_file = open("user")?;
        tracing::debug!(netns = name, helper = %pid, "rootless network namespace created");
        Ok(NetNs {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                path: PathBuf::from(format!("/proc/{pid}/ns/net")),
                file,
                requests: Mutex::new(Some(req_tx)),
                spare: Mutex::new(Spare::default()),
                refilling: AtomicBool::new(false),
                removed: Mutex::new(false),
                kind: Kind::Rootless { user_file },
            }),
        })
    }

    fn create_mounted(path: &Path, name: &str) -> Result<NetNs, NetnsError> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), NetnsError>>(1);
        let (req_tx, req_rx) = mpsc::channel::<SocketRequest>();
        let thread_path = path.to_path_buf();
        // Linux limits thread names to 15 bytes; the prefix plus the start of the UID is
        // enough to spot them in `top -H`.
        let thread_name: String = format!("netns-{name}").chars().take(15).collect();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || namespace_thread(&thread_path, ready_tx, req_rx))
            .map_err(|e| NetnsError::Thread {
                name: name.to_owned(),
                reason: format!("spawn: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(NetnsError::Thread {
                    name: name.to_owned(),
                    reason: "exited before reporting".into(),
                })
            }
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(source) => {
                drop(req_tx);
                let _ = unmount_and_unlink(path);
                return Err(NetnsError::CreateFile {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        tracing::debug!(netns = name, path = %path.display(), "network namespace created");
        Ok(NetNs {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                path: path.to_path_buf(),
                file,
                requests: Mutex::new(Some(req_tx)),
                spare: Mutex::new(Spare::default()),
                refilling: AtomicBool::new(false),
                removed: Mutex::new(false),
                kind: Kind::Mounted,
            }),
        })
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

    /// Creates an unconnected nonblocking TCP socket of `family` inside the namespace: a spare
    /// one if there is, else a batch from the namespace thread.
    async fn socket(&self, family: AddressFamily) -> io::Result<OwnedFd> {
        let closed = || self.closed();
        let spare = |inner: &Inner| {
            inner
                .spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .of(family)
                .pop()
        };
        if let Some(fd) = spare(&self.inner) {
            return Ok(fd);
        }
        // One batch in flight at a time: a burst of dials finding no spare would otherwise
        // each make a batch, and leave thousands of spare descriptors behind.
        let batch = !self.inner.refilling.swap(true, Ordering::AcqRel);
        let count = if batch { SOCKET_BATCH } else { 1 };
        let _refill_done = batch.then(|| RefillDone(&self.inner.refilling));
        let mut fds = self.make_sockets(family, SockType::Stream, count).await?;
        let fd = fds.pop().ok_or_else(closed)?;
        // Removed meanwhile: drop the rest rather than keep the namespace alive with them
        // (checked under the lock `remove` holds while it empties the spares).
        let removed = self.inner.removed.lock().unwrap_or_else(|p| p.into_inner());
        if !*removed {
            let mut spare = self.inner.spare.lock().unwrap_or_else(|p| p.into_inner());
            let pool = spare.of(family);
            let room = SOCKET_BATCH.saturating_sub(pool.len());
            pool.extend(fds.into_iter().take(room));
        }
        drop(removed);
        Ok(fd)
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

    /// One trip to the namespace thread (or the rootless helper): `count` new nonblocking
    /// sockets of `family` and `kind`, made inside the namespace.
    async fn make_sockets(
        &self,
        family: AddressFamily,
        kind: SockType,
        count: usize,
    ) -> io::Result<Vec<OwnedFd>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        {
            let guard = self
                .inner
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or_else(|| self.closed())?;
            tx.send(SocketRequest {
                family,
                kind,
                count,
                reply,
            })
            .map_err(|_| self.closed())?;
        }
        rx.await.map_err(|_| self.closed())?
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
            return Err(DialError {
                cause: format!(
                    "network namespace for sandbox {:?} is closed",
                    self.inner.name
                ),
            });
        }
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let v6_err = match self.connect(v6, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        Err(DialError {
            cause: format!(
                "failed to connect to localhost:{port} inside namespace {:?}: IPv4: connect {v4}: {}; IPv6: connect {v6}: {}",
                self.inner.name,
                describe_io_error(&v4_err),
                describe_io_error(&v6_err),
            ),
        })
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
            tracing::error!(error = %error_chain(&e), "removing network namespace on drop");
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

/// Body of the per-namespace thread: enter a new namespace, persist it, report, then serve
/// socket requests until every sender is gone.
fn namespace_thread(
    path: &Path,
    ready: mpsc::SyncSender<Result<(), NetnsError>>,
    requests: mpsc::Receiver<SocketRequest>,
) {
    let setup = || -> Result<(), NetnsError> {
        // CLONE_NEWNET (unlike CLONE_NEWUSER) may be unshared by one thread of a multi-threaded
        // process; only this thread moves.
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
            if e == nix::errno::Errno::EPERM {
                NetnsError::NotPermitted(privilege_hint())
            } else {
                NetnsError::Unshare(e.into())
            }
        })?;
        sys::loopback_up().map_err(NetnsError::LoopbackUp)?;
        File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| NetnsError::CreateFile {
                path: path.to_path_buf(),
                source,
            })?;
        if let Err(e) = mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(path);
            return Err(NetnsError::Mount {
                path: path.to_path_buf(),
                source: e.into(),
            });
        }
        Ok(())
    };
    let ok = setup();
    let failed = ok.is_err();
    let _ = ready.send(ok);
    if failed {
        return;
    }
    while let Ok(req) = requests.recv() {
        let fds = make_sockets(req.count, || {
            socket(
                req.family,
                req.kind,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(io::Error::from)
        });
        let _ = req.reply.send(fds);
    }
}

/// Up to `count` sockets from `make`; the first error ends the batch, and is returned only if
/// no socket was made (EMFILE then reaches the dial that needed one).
fn make_sockets(
    count: usize,
    mut make: impl FnMut() -> io::Result<OwnedFd>,
) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        match make() {
            Ok(fd) => fds.push(fd),
            Err(e) if fds.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(fds)
}

/// Body of the rootless namespace thread: fork the helper (so its parent-death signal is tied
/// to this thread's life), then relay socket requests to it until every sender is gone; then
/// close the helper's socket and reap it.
fn rootless_thread(
    ready: mpsc::SyncSender<Result<nix::unistd::Pid, sys::HelperError>>,
    requests: mpsc::Receiver<SocketRequest>,
) {
    let helper = match sys::spawn_rootless_helper() {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(helper.pid));
    while let Ok(req) = requests.recv() {
        let family = if req.family == AddressFamily::Inet6 {
            6
        } else {
            4
        };
        // The helper reads bit 4 as "datagram socket".
        let family = if req.kind == SockType::Datagram {
            family | sys::HELPER_DATAGRAM
        } else {
            family
        };
        let fds = make_sockets(req.count, || sys::helper_socket(&helper.sock, family));
        let _ = req.reply.send(fds);
    }
    drop(helper.sock);
    // The helper exits on EOF; reap it so no zombie stays behind.
    let _ = nix::sys::wait::waitpid(helper.pid, None);
}

/// Explains what is missing when bind-mounted namespaces cannot be created, for the operator.
fn privilege_hint() -> String {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return "creating a network namespace was refused (EPERM) although running as root: \
                the process lacks CAP_SYS_ADMIN (a restricted container or seccomp profile?); \
                give porthole CAP_SYS_ADMIN, or run its pods rootless (user namespaces)"
            .into();
    }
    format!(
        "porthole runs as uid {euid} without CAP_SYS_ADMIN, so it cannot create \
         bind-mounted network namespaces: run it as root, or run its pods rootless \
         (user namespaces)"
    )
}

/// Reads a sysctl under /proc/sys (`None` if the kernel has no such setting).
fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The host settings that allow or forbid unprivileged user namespaces, as read from
/// /proc/sys (`None`: the kernel has no such setting).
#[derive(Debug, Default)]
struct UserNsSettings {
    /// `user.max_user_namespaces`.
    max_user_namespaces: Option<String>,
    /// `kernel.unprivileged_userns_clone` (Debian and older Ubuntu kernels).
    unprivileged_userns_clone: Option<String>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    apparmor_restrict: Option<String>,
}

impl UserNsSettings {
    fn read() -> UserNsSettings {
        UserNsSettings {
            max_user_namespaces: sysctl("user/max_user_namespaces"),
            unprivileged_userns_clone: sysctl("kernel/unprivileged_userns_clone"),
            apparmor_restrict: sysctl("kernel/apparmor_restrict_unprivileged_userns"),
        }
    }
}

/// Names the host setting that refused the rootless helper's user namespace, and the fix.
fn user_namespace_error(e: sys::HelperError) -> NetnsError {
    let errno = e.error.raw_os_error().map(nix::errno::Errno::from_raw);
    NetnsError::UserNamespace {
        step: e.step,
        hint: user_namespace_hint(e.step, errno, &UserNsSettings::read()),
        cause: e.error,
    }
}

/// Which setting to change, from the failed step, its errno and the host's settings:
/// `max_user_namespaces` reached gives ENOSPC at unshare; `unprivileged_userns_clone=0` gives
/// EPERM at unshare; AppArmor's restriction lets unshare succeed without capabilities in the
/// new namespace, so the uid_map write (or unshare itself, by policy) gets EPERM.
fn user_namespace_hint(
    step: Option<sys::HelperStep>,
    errno: Option<nix::errno::Errno>,
    host: &UserNsSettings,
) -> String {
    use nix::errno::Errno;
    use sys::HelperStep;
    let or_root = "to run pods rootless (or run porthole as root)";
    let denied = matches!(errno, Some(Errno::EPERM | Errno::EACCES));
    match (step, errno) {
        (None, _) => "could not start the rootless namespace helper".to_owned(),
        (Some(HelperStep::Unshare), Some(Errno::ENOSPC)) => format!(
            "the kernel allows no more user namespaces: user.max_user_namespaces is {} here \
             (0 forbids them); raise it, e.g. `sudo sysctl -w user.max_user_namespaces=15000`, \
             {or_root}",
            host.max_user_namespaces.as_deref().unwrap_or("unknown")
        ),
        (Some(HelperStep::Unshare), Some(Errno::EUSERS)) => {
            "user namespaces are nested 32 deep already, the kernel's limit: run porthole \
             from an outer namespace (or as root)"
                .to_owned()
        }
        (Some(HelperStep::Unshare), _)
            if denied && host.unprivileged_userns_clone.as_deref() == Some("0") =>
        {
            format!(
                "unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone is \
                 0; enable them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` \
                 {or_root}"
            )
        }
        (Some(_), _) if denied && host.apparmor_restrict.as_deref() == Some("1") => format!(
            "AppArmor restricts unprivileged user namespaces: \
             kernel.apparmor_restrict_unprivileged_userns is 1; set it to 0 with `sudo sysctl \
             -w kernel.apparmor_restrict_unprivileged_userns=0`, or give porthole an AppArmor \
             profile allowing `userns`, {or_root}"
        ),
        (Some(_), _) => format!(
            "unprivileged user namespaces are refused on this host; check \
             kernel.unprivileged_userns_clone (1 where it exists), user.max_user_namespaces \
             (above 0) and kernel.apparmor_restrict_unprivileged_userns (0, or an AppArmor \
             profile for porthole allowing `userns`), or a seccomp profile or container that \
             forbids unshare(CLONE_NEWUSER), {or_root}"
        ),
    }
}

/// Unmounts `path` if it is a mount point and unlinks it. Missing files are fine.
fn unmount_and_unlink(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (e.g. the mount never happened); ENOENT: already gone.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Unmount {
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::RemoveFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Unmounts and removes every file in `dir` (namespaces left behind by a previous run of the
/// agent). Returns the paths removed. A missing directory is empty.
pub fn cleanup_dir(dir: &Path) -> Result<Vec<PathBuf>, NetnsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetnsError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        unmount_and_unlink(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether `path` is currently a mount point of this process's mount namespace (checked in
/// `/proc/self/mountinfo`), for cleanup checks.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.to_string_lossy();
    Ok(info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// Formats an error with its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "porthole-netns-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn user_namespace_hints_name_the_setting() {
        use nix::errno::Errno;
        use sys::HelperStep;
        let set = |max: &str, clone: Option<&str>, apparmor: Option<&str>| UserNsSettings {
            max_user_namespaces: Some(max.to_owned()),
            unprivileged_userns_clone: clone.map(str::to_owned),
            apparmor_restrict: apparmor.map(str::to_owned),
        };
        let hint =
            |step, errno, host: &UserNsSettings| user_namespace_hint(Some(step), Some(errno), host);
        let h = hint(HelperStep::Unshare, Errno::ENOSPC, &set("0", None, None));
        assert!(h.contains("user.max_user_namespaces is 0 here"), "{h}");
        assert!(
            h.contains("sudo sysctl -w user.max_user_namespaces=15000"),
            "{h}"
        );
        let h = hint(
            HelperStep::Unshare,
            Errno::EPERM,
            &set("1000", Some("0"), None),
        );
        assert!(
            h.contains("sudo sysctl -w kernel.unprivileged_userns_clone=1"),
            "{h}"
        );
        // AppArmor: unshare succeeds, the new namespace has no capabilities.
        let h = hint(
            HelperStep::UidMap,
            Errno::EPERM,
            &set("1000", None, Some("1")),
        );
        assert!(
            h.contains("sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
            "{h}"
        );
        let h = hint(
            HelperStep::Unshare,
            Errno::EACCES,
            &set("1000", Some("1"), Some("1")),
        );
        assert!(h.contains("AppArmor restricts"), "{h}");
        // Nothing in the settings explains it: all three are named.
        let h = hint(
            HelperStep::Unshare,
            Errno::EPERM,
            &set("1000", None, Some("0")),
        );
        for name in [
            "kernel.unprivileged_userns_clone",
            "user.max_user_namespaces",
            "kernel.apparmor_restrict_unprivileged_userns",
        ] {
            assert!(h.contains(name), "{name} in {h}");
        }
        let h = hint(HelperStep::Unshare, Errno::EUSERS, &set("1000", None, None));
        assert!(h.contains("nested 32 deep"), "{h}");
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    /// The bind-mounted namespaces need root (CI runs as root): these tests are ignored with
    /// that reason otherwise, and fail here if run so; `rootless_namespace_works_and_leaves_nothing`
    /// covers the unprivileged case.
    fn require_root(test: &str) {
        assert!(
            nix::unistd::geteuid().is_root(),
            "{test} needs root (bind-mounted namespaces): run it as root, e.g. sudo cargo test -- --ignored {test}"
        );
    }

    /// Starts python3 inside `ns` with a socket `s` listening on 127.0.0.1:0, then runs
    /// `serve`; returns the child and the port it listens on.
    fn python_server_in(ns: &NetNs, serve: &str) -> (std::process::Child, u16) {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            &format!(
                "import socket\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(64)\n\
                 print(s.getsockname()[1],flush=True)\n{serve}"
            ),
        ])
        .stdout(std::process::Stdio::piped());
        ns.enter_on_spawn(&mut cmd);
        let mut child = cmd.spawn().expect("spawn python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read port");
        (child, line.trim().parse().expect("port"))
    }

    #[tokio::test]
    #[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
    async fn listener_in_namespace_is_reachable_only_through_dial() {
        require_root("listener_in_namespace_is_reachable_only_through_dial");
        let dir = tempdir("dial");
        let path = dir.join("ns1");
        let ns = NetNs::create(&path, "pod-uid-1", Isolation::Privileged)
            .expect("create namespace (needs root)");
        assert!(is_mounted(&path).expect("mountinfo"));

        // A server inside the namespace that upper-cases one message.
        let (mut child, port) = python_server_in(
            &ns,
            "c,_=s.accept();c.sendall(c.recv(100).upper());c.close()",
        );

        // Not reachable from the host namespace: the port is free there.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());

        let mut s = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
        s.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"HELLO");
        child.wait().expect("wait python");

        // Nothing listens any more: both families are named in the error.
        let err = ns
            .dial(port, DEFAULT_CONNECT_TIMEOUT)
            .await
            .expect_err("refused");
        assert_eq!(
            err.cause,
            format!(
                "failed to connect to localhost:{port} inside namespace \"pod-uid-1\": IPv4: connect 127.0.0.1:{port}: connection refused; IPv6: connect [::1]:{port}: connection refused"
            )
        );

        ns.remove().expect("remove");
        assert!(!is_mounted(&path).expect("mountinfo"));
        assert!(!path.exists());
        let err = ns
            .dial(port, DEFAULT_CONNECT_TIMEOUT)
            .await
            .expect_err("closed");
        assert!(err.cause.contains("is closed"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A loopback listener made for reverse forwarding lives inside the namespace only, a
    /// second one on the same port is refused as in use, and dropping it frees the port.
    #[tokio::test]
    #[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
    async fn loopback_listener_lives_in_the_namespace_until_dropped() {
        require_root("loopback_listener_lives_in_the_namespace_until_dropped");
        let dir = tempdir("listen");
        let ns = NetNs::create(&dir.join("ns1"), "pod-uid-listen", Isolation::Privileged)
            .expect("create namespace");
        // A free port inside the namespace: bind 0, read it, let it go.
        let port = ns
            .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 1)
            .await
            .expect("listen on port 0")
            .local_addr()
            .expect("local addr")
            .port();
        let listeners = ns.listen_loopback(port).await.expect("listen");
        assert_eq!(listeners.len(), 2, "127.0.0.1 and ::1");
        // Not on the host: the port is free there.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
        let mut conn = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
        let (mut accepted, _) = listeners[0].accept().await.expect("accept");
        conn.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        assert_eq!(
            ns.listen_loopback(port).await.expect_err("in use"),
            ListenError::InUse { port }
        );
        drop(listeners);
        let err = ns
            .dial(port, DEFAULT_CONNECT_TIMEOUT)
            .await
            .expect_err("refused after drop");
        assert!(err.cause.contains("connection refused"), "{err}");
        // With a connection of the old listener still open, the port can be taken again.
        let again = ns.listen_loopback(port).await.expect("listen again");
        drop((again, conn, accepted));
        ns.remove().expect("remove");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// More dials than one batch of sockets: every one (spare or fresh) reaches a listener
    /// that exists only inside the namespace, and removal drops the spares.
    #[tokio::test]
    #[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
    async fn spare_sockets_are_made_inside_the_namespace() {
        require_root("spare_sockets_are_made_inside_the_namespace");
        let dir = tempdir("spare");
        let ns = NetNs::create(&dir.join("ns1"), "pod-uid-2", Isolation::Privileged)
            .expect("create namespace");
        const N: usize = SOCKET_BATCH * 2 + 3;
        const BURST: usize = 40;
        let (mut child, port) = python_server_in(
            &ns,
            &format!("for _ in range({N}+{BURST}):\n c,_=s.accept();c.sendall(b'k');c.close()"),
        );
        for i in 0..N {
            let mut s = ns
                .dial(port, DEFAULT_CONNECT_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("dial {i}: {e}"));
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
        }
        let spare = |ns: &NetNs| ns.inner.spare.lock().unwrap().v4.len();
        assert_eq!(spare(&ns), SOCKET_BATCH * 3 - N);
        // A burst of concurrent dials: one batch in flight at a time, the pool stays bounded.
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            let ns = ns.clone();
            burst.spawn(async move {
                let mut s = ns
                    .dial(port, DEFAULT_CONNECT_TIMEOUT)
                    .await
                    .expect("burst dial");
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.expect("read");
            });
        }
        while let Some(r) = burst.join_next().await {
            r.expect("burst task");
        }
        assert!(spare(&ns) <= SOCKET_BATCH, "{} spare sockets", spare(&ns));
        child.wait().expect("wait python");
        ns.remove().expect("remove");
        assert_eq!(spare(&ns), 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    #[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
    fn cleanup_dir_removes_leftover_mounts() {
        require_root("cleanup_dir_removes_leftover_mounts");
        let dir = tempdir("cleanup");
        let path = dir.join("leftover");
        let ns = NetNs::create(&path, "leftover", Isolation::Privileged)
            .expect("create namespace (needs root)");
        // Simulate a crash: the handle is forgotten, the mount stays.
        std::mem::forget(ns);
        assert!(is_mounted(&path).expect("mountinfo"));
        let removed = cleanup_dir(&dir).expect("cleanup");
        assert_eq!(removed, vec![path.clone()]);
        assert!(!is_mounted(&path).expect("mountinfo"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    #[tokio::test]
    async fn rootless_namespace_works_and_leaves_nothing() {
        let ns = NetNs::create_rootless("rootless-test").expect("rootless namespace");
        assert!(ns.is_rootless());
        let helper_ns = ns.path().to_path_buf();
        assert!(helper_ns.exists());
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import os,socket\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n\
             print(s.getsockname()[1],os.getuid(),flush=True)\nc,_=s.accept();c.sendall(b'ok');c.close()",
        ])
        .stdout(std::process::Stdio::piped());
        ns.enter_on_spawn(&mut cmd);
        let mut child = cmd
            .spawn()
            .expect("spawn python3 in the rootless namespace");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read port");
        let mut parts = line.split_whitespace();
        let port: u16 = parts.next().and_then(|p| p.parse().ok()).expect("port");
        assert_eq!(parts.next(), Some("0"), "uid inside the user namespace");
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
        let mut s = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        assert_eq!(buf, b"ok");
        child.wait().expect("wait python");
        ns.remove().expect("remove");
        drop(ns);
        // The helper is gone (and reaped) once removed; its /proc entry disappears.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while helper_ns.exists() && tokio::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!helper_ns.exists(), "helper process still alive");
    }

    /// A UDP socket made by the namespace's thread (or the rootless helper) reaches a UDP
    /// echo that exists only inside the namespace, and a port with no listener refuses.
    async fn udp_echo_through(ns: &NetNs) {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1',0))\nprint(s.getsockname()[1],flush=True)\n\
             d,a=s.recvfrom(100)\ns.sendto(d.upper(),a)",
        ])
        .stdout(std::process::Stdio::piped());
        ns.enter_on_spawn(&mut cmd);
        let mut child = cmd.spawn().expect("spawn python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read port");
        let port: u16 = line.trim().parse().expect("port");
        let sock = ns
            .udp_connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .expect("udp socket in the namespace");
        sock.send(b"datagram").await.expect("send");
        let mut buf = [0u8; 100];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("an answer")
            .expect("recv");
        assert_eq!(&buf[..n], b"DATAGRAM");
        child.wait().expect("wait python");
        // Nothing listens now: the ICMP port unreachable shows as ECONNREFUSED.
        sock.send(b"again").await.expect("send");
        let err = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("the refusal")
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    #[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
    async fn udp_sockets_are_made_inside_the_namespace() {
        require_root("udp_sockets_are_made_inside_the_namespace");
        let dir = tempdir("udp");
        let ns = NetNs::create(&dir.join("ns1"), "pod-uid-udp", Isolation::Privileged)
            .expect("create namespace");
        udp_echo_through(&ns).await;
        ns.remove().expect("remove");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn rootless_udp_sockets_come_from_the_helper() {
        let ns = NetNs::create_rootless("rootless-udp").expect("rootless namespace");
        udp_echo_through(&ns).await;
        ns.remove().expect("remove");
    }
}
