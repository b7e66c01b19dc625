//! The gateway's tokio plumbing outside the core's own loop (`run` and `core_loop` in the crate
//! root): SIP sockets, the metrics endpoint, the glue between sessions and the cloud, and the
//! media ports the core calls (`media.rs`: no IO in its call stack).

pub(crate) mod media;
pub(crate) mod metrics_http;
pub(crate) mod sessions;
pub(crate) mod sip_net;

/// Resolves once the gateway is told to stop.
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
