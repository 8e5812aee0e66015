//! Rootless namespaces: a thread forks the helper (in `sys.rs`) that unshares a user and a
//! network namespace and hands out sockets made inside over SCM_RIGHTS; and the hints that
//! name the host setting when the kernel refuses the user namespace.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use nix::sys::socket::{AddressFamily, SockType};

use crate::pool::{make_sockets, SocketRequest, Spare};
use crate::{sys, Inner, Kind, NetNs, NetnsError};

impl NetNs {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
