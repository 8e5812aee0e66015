//! The raw system calls that have no safe wrapper in `nix`: the interface-flags ioctl that
//! brings `lo` up, and the `setns` that runs between `fork` and `exec` of a container process.
//! Everything `unsafe` in porthole lives in this module.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets `IFF_UP` on the loopback interface of the calling thread's network namespace.
///
/// A fresh namespace has `lo` down, so nothing could listen on or connect to 127.0.0.1/::1.
/// The classic `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctl pair on any datagram socket is enough for
/// this one flag, so no netlink code (or `ip` binary) is needed.
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: `ifreq` is a plain C struct/union of integers and byte arrays, for which the
    // all-zero bit pattern is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket owned by this function and `req` is a valid, writable
    // `ifreq` that outlives the call; SIOCGIFFLAGS only writes `ifr_flags` inside it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just initialised the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd` join the network namespace open at `ns_fd` in the child, after `fork` and
/// before `exec`, so the agent's own threads never change namespace.
///
/// `ns_fd` must stay open until `cmd` has been spawned; [`crate::NetNs`] guarantees that by
/// keeping the namespace file open for its whole life and moving a clone of itself into the
/// hook.
pub(crate) fn setns_before_exec(
    cmd: &mut std::process::Command,
    ns_fd: RawFd,
    keep_alive: impl Send + Sync + 'static,
) {
    let hook = move || {
        // Referencing `keep_alive` moves it into the closure, so the namespace file (and with
        // it `ns_fd`) stays open for as long as the command can still be spawned.
        let _ = &keep_alive;
        // SAFETY: `setns` is async-signal-safe, which is all that is allowed between `fork` and
        // `exec`; `ns_fd` is open (see above) and refers to a network namespace file.
        if unsafe { libc::setns(ns_fd, libc::CLONE_NEWNET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook performs a single async-signal-safe system call and does not allocate,
    // lock or touch state shared with other threads of the parent.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A helper process holding a user + network namespace for an unprivileged agent.
pub(crate) struct Helper {
    pub(crate) pid: nix::unistd::Pid,
    /// SOCK_SEQPACKET to the helper: one byte (address family) in, one socket fd back.
    pub(crate) sock: std::os::fd::OwnedFd,
}

/// A step of the rootless helper's setup, as it reports it (the byte value is the wire code
/// between helper and agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperStep {
    /// `unshare(CLONE_NEWUSER|CLONE_NEWNET)`.
    Unshare = 1,
    /// Writing `/proc/self/uid_map`.
    UidMap = 2,
    /// Writing `/proc/self/gid_map`.
    GidMap = 3,
    /// Bringing `lo` up in the new network namespace.
    Loopback = 4,
}

impl HelperStep {
    fn from_code(code: u8) -> Option<HelperStep> {
        [
            HelperStep::Unshare,
            HelperStep::UidMap,
            HelperStep::GidMap,
            HelperStep::Loopback,
        ]
        .into_iter()
        .find(|s| *s as u8 == code)
    }

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            HelperStep::Unshare => "unshare(CLONE_NEWUSER|CLONE_NEWNET)",
            HelperStep::UidMap => "write /proc/self/uid_map",
            HelperStep::GidMap => "write /proc/self/gid_map",
            HelperStep::Loopback => "bring up loopback",
        }
    }
}

/// Why the rootless helper could not be set up: the step that failed (`None`: before or
/// outside the steps, e.g. `fork`) and the error.
#[derive(Debug)]
pub(crate) struct HelperError {
    pub(crate) step: Option<HelperStep>,
    pub(crate) error: io::Error,
}

impl From<io::Error> for HelperError {
    fn from(error: io::Error) -> Self {
        HelperError { step: None, error }
    }
}

/// Starts the rootless helper: a forked child that unshares a user namespace (mapping the
/// agent's uid/gid to 0) and a network namespace, brings `lo` up, then creates sockets on
/// request and passes them back with SCM_RIGHTS. It dies with the thread that forked it
/// (PR_SET_PDEATHSIG) or when the socket closes, so it can never outlive its owner.
///
/// A user namespace cannot be entered by a multi-threaded process, which is why this is a
/// process and not a thread.
pub(crate) fn spawn_rootless_helper() -> Result<Helper, HelperError> {
    use nix::sys::socket::socketpair;
    // Prepared before fork: the child must not allocate.
    let uid_map = format!("0 {} 1", nix::unistd::getuid());
    let gid_map = format!("0 {} 1", nix::unistd::getgid());
    let (parent, child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // SAFETY: after `fork` in a multi-threaded process the child may only make
    // async-signal-safe calls; `helper_main` makes nothing but raw system calls on memory
    // prepared before the fork, and never returns (it `_exit`s).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if pid == 0 {
        drop(parent);
        // SAFETY: see above; we are the single-threaded child.
        unsafe { helper_main(child.as_raw_fd(), uid_map.as_bytes(), gid_map.as_bytes()) }
    }
    drop(child);
    let pid = nix::unistd::Pid::from_raw(pid);
    let mut status = [0u8; 2];
    let n = nix::unistd::read(&parent, &mut status).map_err(io::Error::from)?;
    if n == 2 && status[0] == 0 {
        return Ok(Helper { pid, sock: parent });
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    if n < 2 {
        return Err(io::Error::other("the namespace helper exited during setup").into());
    }
    Err(HelperError {
        step: HelperStep::from_code(status[0]),
        error: io::Error::from_raw_os_error(i32::from(status[1])),
    })
}

/// Writes `data` to the file at `path` with raw system calls.
///
/// # Safety
/// Only async-signal-safe calls; `path` must be NUL-terminated.
unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: `path` is a valid C string; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `data` is valid for `data.len()` bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    // SAFETY: `fd` was opened above.
    unsafe { libc::close(fd) };
    n == data.len() as isize
}

/// Closes every descriptor above stderr except `keep`: `close_range(2)` where the kernel has
/// it (5.9+), else one `close` per possible descriptor up to the limit.
///
/// # Safety
/// Only async-signal-safe calls (a forked child of a multi-threaded process).
unsafe fn close_inherited(keep: RawFd) {
    let close_range = |first: RawFd, last: RawFd| -> bool {
        if first > last {
            return true;
        }
        // SAFETY: close_range only closes descriptors of this process; no memory is touched.
        unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) == 0 }
    };
    if close_range(3, keep - 1) && close_range(keep + 1, RawFd::MAX) {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the stack value above.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as RawFd
    } else {
        1 << 16
    };
    for fd in 3..max {
        if fd != keep {
            // SAFETY: closing a descriptor number that may or may not be open.
            unsafe { libc::close(fd) };
        }
    }
}

/// The helper process body. Never returns.
///
/// # Safety
/// Must only run in the child right after `fork`.
unsafe fn helper_main(sock: RawFd, uid_map: &[u8], gid_map: &[u8]) -> ! {
    let report = |step: u8| {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let msg = [step, errno.clamp(0, 255) as u8];
        // SAFETY: writing two bytes from a stack buffer, then leaving the process.
        unsafe {
            libc::write(sock, msg.as_ptr().cast(), 2);
            libc::_exit(1)
        }
    };
    // The fork copied every descriptor the agent had open at that moment: its listeners, its
    // API connections, and connections to other pods (a readiness probe in flight). Kept here
    // they would outlive the agent's own close, so a pod's server never saw EOF: dnsmasq,
    // which serves TCP inline, hung on a probe connection that this helper held open.
    // SAFETY: only raw system calls; see `close_inherited`.
    unsafe { close_inherited(sock) };
    // SAFETY: plain system calls on valid arguments; see each comment in the caller.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
            report(HelperStep::Unshare as u8);
        }
        // Required before an unprivileged gid_map write; harmless if it fails.
        write_file(c"/proc/self/setgroups", b"deny");
        if !write_file(c"/proc/self/uid_map", uid_map) {
            report(HelperStep::UidMap as u8);
        }
        if !write_file(c"/proc/self/gid_map", gid_map) {
            report(HelperStep::GidMap as u8);
        }
    }
    if loopback_up().is_err() {
        report(HelperStep::Loopback as u8);
    }
    let ok = [0u8, 0];
    // SAFETY: two bytes from a stack buffer.
    unsafe { libc::write(sock, ok.as_ptr().cast(), 2) };
    loop {
        let mut family = 0u8;
        // SAFETY: one byte into a stack variable.
        let n = unsafe { libc::read(sock, (&mut family as *mut u8).cast(), 1) };
        if n <= 0 {
            // SAFETY: leaving the process.
            unsafe { libc::_exit(0) };
        }
        let kind = if family & HELPER_DATAGRAM != 0 {
            libc::SOCK_DGRAM
        } else {
            libc::SOCK_STREAM
        };
        let domain = if family & !HELPER_DATAGRAM == 6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        // SAFETY: plain system call.
        let fd =
            unsafe { libc::socket(domain, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        let mut payload = [0u8, 0];
        if fd < 0 {
            payload = [
                1,
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(0)
                    .clamp(0, 255) as u8,
            ];
        }
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: 2,
        };
        // Room for one fd, 8-aligned as cmsghdr requires.
        let mut cmsg_buf = [0u64; 4];
        // SAFETY: `msghdr` is plain data; zero is a valid initial value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if fd >= 0 {
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            msg.msg_controllen =
                unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
            // SAFETY: msg_control points at a buffer of at least CMSG_SPACE(sizeof(int)) bytes,
            // so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            }
        }
        // SAFETY: `msg` and everything it points to live on this stack frame.
        let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if fd >= 0 {
            // SAFETY: our copy of the fd; the receiver has its own now.
            unsafe { libc::close(fd) };
        }
        if sent < 0 {
            // SAFETY: leaving the process.
            unsafe { libc::_exit(0) };
        }
    }
}

/// Bit of the helper's request byte asking for a datagram (UDP) socket instead of TCP.
pub(crate) const HELPER_DATAGRAM: u8 = 0x10;

/// Asks the helper for one socket of `family` (4 or 6, plus [`HELPER_DATAGRAM`] for UDP) and
/// receives it.
pub(crate) fn helper_socket(
    sock: &std::os::fd::OwnedFd,
    family: u8,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    nix::unistd::write(sock, &[family]).map_err(io::Error::from)?;
    let mut payload = [0u8; 2];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fd = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS just installed `raw` in our fd table; we own it now.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the namespace helper exited",
        ));
    }
    match fd {
        Some(fd) => Ok(fd),
        None => Err(io::Error::from_raw_os_error(i32::from(payload[1]).max(1))),
    }
}

/// Makes `cmd` join the helper's user namespace, then its network namespace, before `exec`.
pub(crate) fn setns_user_then_net_before_exec(
    cmd: &mut std::process::Command,
    user_fd: RawFd,
    net_fd: RawFd,
    keep_alive: impl Send + Sync + 'static,
) {
    let hook = move || {
        let _ = &keep_alive;
        // SAFETY: async-signal-safe system calls on fds kept open by `keep_alive`; the child is
        // single-threaded, as joining a user namespace requires.
        unsafe {
            if libc::setns(user_fd, libc::CLONE_NEWUSER) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(net_fd, libc::CLONE_NEWNET) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only performs async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// The helper keeps none of the descriptors the agent had open when it forked (a listener
    /// here; in the agent, probe and API connections): only stdio and its own socket.
    #[test]
    fn helper_holds_nothing_it_inherited() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd_link = |pid: String, fd: &str| std::fs::read_link(format!("/proc/{pid}/fd/{fd}"));
        let inherited = fd_link("self".into(), &listener.as_raw_fd().to_string()).expect("link");
        let helper = match spawn_rootless_helper() {
            Ok(h) => h,
            // A host without unprivileged user namespaces; the isolation probe's tests cover it.
            Err(e) if !nix::unistd::geteuid().is_root() => {
                eprintln!("SKIPPED helper_holds_nothing_it_inherited: {e:?}");
                return;
            }
            Err(e) => panic!("start the rootless helper: {e:?}"),
        };
        let dir = format!("/proc/{}/fd", helper.pid);
        let held: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&dir)
            .expect("list the helper's descriptors")
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let link = fd_link(helper.pid.to_string(), &name).ok()?;
                Some((name, link))
            })
            .collect();
        assert!(
            held.iter().all(|(_, link)| *link != inherited),
            "the helper still holds the agent's listener: {held:?}"
        );
        let beyond_stdio: Vec<_> = held
            .iter()
            .filter(|(n, _)| n.parse::<i32>().is_ok_and(|n| n > 2))
            .collect();
        assert_eq!(beyond_stdio.len(), 1, "only its own socket: {held:?}");
        let pid = helper.pid;
        drop(helper);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}
