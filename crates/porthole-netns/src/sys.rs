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
