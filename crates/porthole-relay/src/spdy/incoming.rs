//! [`Incoming`], the streams the peer opens, and [`IncomingStream`], one of them until it is
//! accepted or rejected.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use porthole_proto::spdy::StreamId;

use super::stream::Stream;
use super::{now, Handle, Shared, StreamWakers};

/// Streams the peer opens. `next()` returns `None` once the connection has ended.
pub struct Incoming {
    handle: Arc<Handle>,
}

impl Incoming {
    pub(super) fn new(handle: Arc<Handle>) -> Incoming {
        Incoming { handle }
    }

    /// The connection's handle, for [`Incoming::connection`] (defined with `Connection`).
    pub(super) fn handle(&self) -> &Arc<Handle> {
        &self.handle
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next stream the peer opened (validate its headers, then accept or reject it).
    pub async fn next(&mut self) -> Option<IncomingStream> {
        let shared = self.handle.shared.clone();
        poll_fn(|cx| {
            let mut inner = shared.lock();
            if let Some((id, headers)) = inner.incoming.pop_front() {
                return Poll::Ready(Some(IncomingStream {
                    id,
                    headers,
                    shared: Some(shared.clone()),
                }));
            }
            if inner.session.is_closed() {
                return Poll::Ready(None);
            }
            inner.incoming_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut inner = self.handle.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.incoming_alive = false;
        let t = now();
        while let Some((id, _)) = inner.incoming.pop_front() {
            inner.session.reject(t, id);
        }
        inner.kick(tx_before);
    }
}

/// A stream the peer opened, not yet answered. Dropping it rejects it.
pub struct IncomingStream {
    id: StreamId,
    headers: Vec<(String, String)>,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl IncomingStream {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The SYN_STREAM headers (names lower case).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Sends SYN_REPLY (empty headers) and returns the stream.
    pub fn accept(mut self) -> Stream {
        let shared = self
            .shared
            .take()
            .expect("accept/reject consume the stream");
        {
            let mut inner = shared.lock();
            let tx_before = inner.session.pending_transmit();
            inner.session.accept(now(), self.id);
            inner.wakers.insert(self.id, StreamWakers::default());
            inner.kick(tx_before);
        }
        Stream::new(self.id, shared)
    }

    /// Sends RST_STREAM(CANCEL) (how Kubernetes rejects invalid streams).
    pub fn reject(mut self) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, self.id);
        }
    }
}

fn reject(shared: &Shared, id: StreamId) {
    let mut inner = shared.lock();
    let tx_before = inner.session.pending_transmit();
    inner.session.reject(now(), id);
    inner.kick(tx_before);
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, self.id);
        }
    }
}
