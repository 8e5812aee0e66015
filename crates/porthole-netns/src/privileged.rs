//! Privileged (root) namespaces: a thread unshares into a new network namespace and
//! bind-mounts it under the node's state dir, so it outlives the agent and can be found again
//! after a crash.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, SockFlag};

use crate::mounts::unmount_and_unlink;
use crate::pool::{make_sockets, SocketRequest, Spare};
use crate::{sys, Inner, Kind, NetNs, NetnsError};

impl NetNs {
    /// Creates a namespace bind-mounted at `path` ([`crate::Isolation::Privileged`]).
    pub(crate) fn create_mounted(path: &Path, name: &str) -> Result<NetNs, NetnsError> {
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
                NetnsError::NotPermitted {
                    hint: privilege_hint(),
                    source: e.into(),
                }
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
