//! TEMPORARY dev stand-in until porthole-relay's servers land.
use std::sync::Arc;
use std::time::Duration;
use porthole_proto::handshake::Upgrade;
use porthole_relay::dial::PodDialer;
use tokio_util::sync::CancellationToken;
pub(crate) struct SessionParams { pub(crate) stream_creation_timeout: Duration, pub(crate) idle_timeout: Duration, pub(crate) pod_gone: CancellationToken }
pub(crate) async fn run<T>(_u: Upgrade, _io: T, _d: Arc<dyn PodDialer>, _p: SessionParams) -> anyhow::Result<()> { anyhow::bail!("not yet") }
