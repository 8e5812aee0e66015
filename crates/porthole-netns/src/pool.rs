//! The spare-socket pool: sockets are made inside the namespace by its thread (or the
//! rootless helper) in batches, because the trip there costs more than the socket; the spares
//! wait here for the next connections.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{AddressFamily, SockType};

use crate::{Inner, NetNs};

/// A request to the namespace thread: make `count` nonblocking TCP sockets of this family
/// (fewer if it fails part way; an error only if none could be made).
pub(crate) struct SocketRequest {
    pub(crate) family: AddressFamily,
    /// `Stream` (TCP) or `Datagram` (UDP).
    pub(crate) kind: SockType,
    pub(crate) count: usize,
    pub(crate) reply: tokio::sync::oneshot::Sender<io::Result<Vec<OwnedFd>>>,
}

/// Sockets made per trip to the namespace thread. The trip (two thread wake-ups and a
/// channel round) cost more than the socket itself; spare sockets wait in [`Inner::spare`]
/// for the next connections, so a busy pod pays one trip per this many connections.
pub(crate) const SOCKET_BATCH: usize = 8;

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
pub(crate) struct Spare {
    pub(crate) v4: Vec<OwnedFd>,
    pub(crate) v6: Vec<OwnedFd>,
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

impl NetNs {
    /// Creates an unconnected nonblocking TCP socket of `family` inside the namespace: a spare
    /// one if there is, else a batch from the namespace thread.
    pub(crate) async fn socket(&self, family: AddressFamily) -> io::Result<OwnedFd> {
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

    /// One trip to the namespace thread (or the rootless helper): `count` new nonblocking
    /// sockets of `family` and `kind`, made inside the namespace.
    pub(crate) async fn make_sockets(
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
}

/// Up to `count` sockets from `make`; the first error ends the batch, and is returned only if
/// no socket was made (EMFILE then reaches the dial that needed one).
pub(crate) fn make_sockets(
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
