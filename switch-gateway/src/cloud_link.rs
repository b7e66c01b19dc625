//! The gateway's one persistent, authenticated WebSocket to the signal server.
//!
//! Connects, signs in with `switch_auth`, forwards every server message to the gateway core,
//! and sends what the core queues. When the link drops it reconnects by itself with exponential
//! backoff and jitter; the core is told `Up`/`Down` so it can answer calls that need the cloud
//! at once (503) while local calls carry on. At shutdown it sends what is still queued and
//! closes the WebSocket properly.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};

/// What the link tells the core.
#[derive(Debug)]
pub enum LinkEvent {
    Up,
    Msg(ServerMsg),
    Down,
}

pub struct LinkConfig {
    pub url: String,
    pub switch_id: String,
    pub secret: String,
    /// TLS settings for `wss://` (the public roots plus `cloud_ca_file`); `None` for `ws://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The TLS client settings for a `wss://` cloud link: Mozilla's root store (public CAs) plus
/// the certificates in `ca_file`, so an operator (or a test) can run the signal server on its
/// own certificate authority. A file that is unreadable or holds no certificate is an error at
/// start, not a mystery at the first connect.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let what = |e: &dyn std::fmt::Display| format!("cloud_ca_file {}: {e}", path.display());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| what(&e))?
            .collect::<Result<_, _>>()
            .map_err(|e| what(&e))?;
        if certs.is_empty() {
            return Err(what(&"no PEM certificate in the file"));
        }
        for c in certs {
            roots.add(c).map_err(|e| what(&e))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive ping when nothing else was sent for this long (NAT bindings, dead peers).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Run the link until `shutdown` turns true. Outgoing messages are taken from `outgoing`; while
/// the link is down they are dropped (the core knows the link is down and does not rely on them).
/// At shutdown a link that is up first sends what is still queued (the ends of the calls the
/// core just closed), then closes the WebSocket properly.
pub async fn run(
    cfg: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    mut outgoing: mpsc::Receiver<ClientMsg>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let session = session(&cfg, &events, &mut outgoing, &mut shutdown).await;
        if *shutdown.borrow() {
            return;
        }
        let _ = events.send(LinkEvent::Down).await;
        let wait = match session {
            // Ran properly before dropping: come back quickly.
            Ok(()) => {
                backoff = BACKOFF_MIN;
                BACKOFF_MIN
            }
            Err(SessionError::Auth(msg)) => {
                tracing::error!(switch_id = %cfg.switch_id, "cloud refused this switch: {msg} (check id and secret_file)");
                backoff = BACKOFF_MAX;
                BACKOFF_MAX
            }
            Err(SessionError::Io(msg)) => {
                tracing::warn!(url = %cfg.url, "cloud link down: {msg}; retrying in ~{:?}", backoff);
                let w = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            }
        };
        // Jitter ±50% so a site's gateways do not reconnect in lockstep after a cloud restart.
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = wait.mul_f64(jitter);
        // Drain what the core sent meanwhile: it was told the link is down.
        while outgoing.try_recv().is_ok() {}
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

enum SessionError {
    Auth(String),
    Io(String),
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: sign in, then relay both ways until it drops or `shutdown` (then flush and
/// close; `Ok`).
async fn session(
    cfg: &LinkConfig,
    events: &mpsc::Sender<LinkEvent>,
    outgoing: &mut mpsc::Receiver<ClientMsg>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let io = |e: &dyn std::fmt::Display| SessionError::Io(e.to_string());
    let mut ws = tokio::select! {
        r = sign_in(cfg, events) => r?,
        _ = stopping(shutdown) => return Ok(()),
    };
    let mut idle = tokio::time::interval(KEEPALIVE);
    idle.reset();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                    Ok(ServerMsg::Error { code: ErrorCode::SessionReplaced, .. }) => {
                        return Err(SessionError::Io("another connection signed in as this switch".into()));
                    }
                    Ok(ServerMsg::Pong) => {}
                    Ok(m) => {
                        if events.send(LinkEvent::Msg(m)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable message from the cloud"),
                },
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io(&e)),
            },
            out = outgoing.recv() => match out {
                Some(m) => {
                    ws.send(Message::Text(m.encode().into())).await.map_err(|e| io(&e))?;
                    idle.reset();
                }
                // The core is gone (the gateway is stopping): everything it sent is out.
                None => {
                    close(ws, outgoing).await;
                    return Ok(());
                }
            },
            _ = idle.tick() => {
                ws.send(Message::Text(ClientMsg::Ping.encode().into())).await.map_err(|e| io(&e))?;
            }
            _ = stopping(shutdown) => {
                close(ws, outgoing).await;
                return Ok(());
            }
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Stopping: send what is queued, then the close handshake (the cloud has read everything
/// before it answers the close), within a few seconds.
async fn close(mut ws: Ws, outgoing: &mut mpsc::Receiver<ClientMsg>) {
    let flush = async {
        while let Ok(m) = outgoing.try_recv() {
            ws.send(Message::Text(m.encode().into())).await?;
        }
        ws.close(None).await?;
        while let Some(frame) = ws.next().await {
            if matches!(frame?, Message::Close(_)) {
                break;
            }
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(3), flush).await {
        Ok(Ok(())) => tracing::info!("cloud link closed"),
        Ok(Err(e)) => tracing::debug!(error = %e, "cloud link closing"),
        Err(_) => tracing::warn!("cloud link: no answer to the close within 3 s"),
    }
}

/// Connect and sign in with `switch_auth`: the link is up once the cloud's `switch_welcome` came.
async fn sign_in(cfg: &LinkConfig, events: &mpsc::Sender<LinkEvent>) -> Result<Ws, SessionError> {
    let io = |e: &dyn std::fmt::Display| SessionError::Io(e.to_string());
    let (mut ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        // Nagle off: signalling is small frames that must not wait for a delayed ACK.
        tokio_tungstenite::connect_async_tls_with_config(
            cfg.url.as_str(),
            None,
            true,
            cfg.tls.clone().map(tokio_tungstenite::Connector::Rustls),
        ),
    )
        .await
        .map_err(|_| SessionError::Io("connect timed out".into()))?
        .map_err(|e| io(&e))?;
    let auth = ClientMsg::SwitchAuth {
        v: PROTOCOL_VERSION,
        switch_id: cfg.switch_id.clone(),
        secret: cfg.secret.clone(),
        // Nothing to advertise: callers reach this gateway over WebRTC through the cloud.
        direct_urls: vec![],
    };
    ws.send(Message::Text(auth.encode().into())).await.map_err(|e| io(&e))?;
    // The first answer tells whether we are in.
    let first = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
        .await
        .map_err(|_| SessionError::Io("no answer to switch_auth".into()))?;
    match first {
        Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
            Ok(m @ ServerMsg::SwitchWelcome { .. }) => {
                tracing::info!(url = %cfg.url, switch_id = %cfg.switch_id, "cloud link up");
                let _ = events.send(LinkEvent::Up).await;
                let _ = events.send(LinkEvent::Msg(m)).await;
            }
            Ok(ServerMsg::Error { code: ErrorCode::AuthFailed | ErrorCode::RateLimited | ErrorCode::Forbidden, message, .. }) => {
                return Err(SessionError::Auth(message));
            }
            Ok(other) => return Err(SessionError::Io(format!("unexpected first message {other:?}"))),
            Err(e) => return Err(SessionError::Io(e.to_string())),
        },
        Some(Ok(other)) => return Err(SessionError::Io(format!("unexpected frame {other:?}"))),
        Some(Err(e)) => return Err(io(&e)),
        None => return Err(SessionError::Io("closed during sign-in".into())),
    }
    Ok(ws)
}
