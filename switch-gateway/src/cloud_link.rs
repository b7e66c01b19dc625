//! The gateway's one persistent, authenticated WebSocket to the signal server.
//!
//! Connects, signs in with `switch_auth`, forwards every server message to the gateway core,
//! and sends what the core queues. When the link drops it reconnects by itself with exponential
//! backoff and jitter; the core is told `Up`/`Down` so it can answer calls that need the cloud
//! at once (503) while local calls carry on. At shutdown it sends what is still queued and
//! closes the WebSocket properly.
//!
//! End-of-call reports are not lost with the link: while it is down they are kept (at most
//! [`MAX_QUEUED_REPORTS`], the oldest dropped with a warning and a counter) and sent right
//! after the next sign-in, as are those sent in the last [`RESEND_WINDOW`] before a drop (they
//! may not have been read; the cloud takes a repeated report as done). Each sign-in lists the
//! calls the gateway still carries (`switch_auth.calls`), so the cloud can end the others.
//!
//! A report the cloud answers with `internal` or `unavailable` for its call (a cluster replica
//! that owned the call did not answer in time; storage that cannot take writes) is sent again
//! after [`REFUSED_RETRY_MIN`], doubling up to [`REFUSED_RETRY_MAX`], [`MAX_REFUSALS`] times.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
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
    /// Asks the core which calls it carries (for `switch_auth.calls`); `None`: list nothing.
    pub carried: Option<CarriedCalls>,
}

/// Asks the gateway core for the cloud call ids it carries now.
pub type CarriedCalls = Arc<dyn Fn() -> oneshot::Receiver<Vec<String>> + Send + Sync>;

/// End-of-call reports kept while the link is down; past this the oldest are dropped.
pub const MAX_QUEUED_REPORTS: usize = 10_000;
/// Reports sent this long before the link dropped are sent again after the next sign-in: the
/// cloud may not have read them (a killed server's socket buffer).
pub const RESEND_WINDOW: Duration = Duration::from_secs(30);

/// A report refused with `internal` or `unavailable` goes again after this, doubling with
/// each refusal …
pub const REFUSED_RETRY_MIN: Duration = Duration::from_secs(1);
/// … up to this …
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);
/// … and is dropped (with a warning and `trunkline_gateway_end_reports_dropped_total`) after
/// this many refusals in a row: about 7 minutes of trying.
pub const MAX_REFUSALS: u32 = 12;

/// Is `m` an end-of-call report (kept while the link is down)?
fn is_end_report(m: &ClientMsg) -> bool {
    report_call_id(m).is_some()
}

/// The call an end-of-call report is about; `None` for any other message.
fn report_call_id(m: &ClientMsg) -> Option<&str> {
    match m {
        ClientMsg::CallReport { call_id, .. } => Some(call_id),
        ClientMsg::CallEvent { call_id, event: trunkline_protocol::CallEvent::Ended { .. } } => Some(call_id),
        _ => None,
    }
}

/// End reports waiting for the link, those recently sent on it, and those the cloud refused
/// for now. Sans-IO: `now` comes in, the session loop does the sending.
#[derive(Default)]
struct Reports {
    queued: VecDeque<ClientMsg>,
    /// When each was sent, and how many times the cloud had refused it before.
    sent: VecDeque<(Instant, u32, ClientMsg)>,
    /// Refused reports by when they go again (and a sequence number, for equal times).
    retry: BTreeMap<(Instant, u64), (u32, ClientMsg)>,
    retry_seq: u64,
}

impl Reports {
    fn keep(&mut self, m: ClientMsg) {
        if self.queued.len() + self.retry.len() >= MAX_QUEUED_REPORTS {
            self.queued.pop_front();
            metrics::counter!("trunkline_gateway_end_reports_dropped_total").increment(1);
            tracing::warn!(max = MAX_QUEUED_REPORTS, "cloud link down too long: dropped the oldest queued end-of-call report");
        }
        self.queued.push_back(m);
    }

    /// `m` went out; `refusals`: how many times the cloud refused it before.
    fn sent(&mut self, now: Instant, m: &ClientMsg, refusals: u32) {
        if is_end_report(m) {
            self.sent.push_back((now, refusals, m.clone()));
        }
        while self.sent.front().is_some_and(|(t, _, _)| now.duration_since(*t) > RESEND_WINDOW) {
            self.sent.pop_front();
        }
    }

    /// The cloud answered `internal` or `unavailable` for `call_id`: if that was the answer to
    /// an end report we sent, it goes again later. Returns when (`None`: not a report of ours,
    /// or refused too often and dropped).
    fn refused(&mut self, now: Instant, call_id: &str) -> Option<Instant> {
        let i = self.sent.iter().rposition(|(_, _, m)| report_call_id(m) == Some(call_id))?;
        let (_, refusals, m) = self.sent.remove(i)?;
        let refusals = refusals + 1;
        if refusals > MAX_REFUSALS {
            metrics::counter!("trunkline_gateway_end_reports_dropped_total").increment(1);
            tracing::warn!(%call_id, refusals, "the cloud kept refusing this end-of-call report: dropped");
            return None;
        }
        let wait = REFUSED_RETRY_MIN.saturating_mul(1 << (refusals - 1).min(16)).min(REFUSED_RETRY_MAX);
        let due = now + wait;
        self.retry_seq += 1;
        self.retry.insert((due, self.retry_seq), (refusals, m));
        Some(due)
    }

    /// When the next refused report is due.
    fn next_retry(&self) -> Option<Instant> {
        self.retry.keys().next().map(|(t, _)| *t)
    }

    /// The refused reports due at `now`, with their refusal counts, oldest first.
    fn take_due(&mut self, now: Instant) -> Vec<(u32, ClientMsg)> {
        let later = self.retry.split_off(&(now, u64::MAX));
        std::mem::replace(&mut self.retry, later).into_values().collect()
    }

    /// Every refused report still waiting, oldest first (the gateway is stopping: one last try).
    fn take_all(&mut self) -> Vec<ClientMsg> {
        std::mem::take(&mut self.retry).into_values().map(|(_, m)| m).collect()
    }

    /// The link dropped: the recent ones go out again, before those queued since.
    fn link_dropped(&mut self, now: Instant) {
        let recent: Vec<ClientMsg> =
            self.sent.drain(..).filter(|(t, _, _)| now.duration_since(*t) <= RESEND_WINDOW).map(|(_, _, m)| m).collect();
        for m in recent.into_iter().rev() {
            self.queued.push_front(m);
        }
        // Refused ones are older still: they go first after the next sign-in.
        for m in self.take_all().into_iter().rev() {
            self.queued.push_front(m);
        }
        while self.queued.len() > MAX_QUEUED_REPORTS {
            self.queued.pop_front();
            metrics::counter!("trunkline_gateway_end_reports_dropped_total").increment(1);
        }
    }

    /// A message from the core while the link is down: end reports are kept, the rest dropped
    /// (the core knows the link is down and does not rely on them).
    fn while_down(&mut self, m: ClientMsg) {
        if is_end_report(&m) {
            self.keep(m);
        }
    }
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
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path).map_err(|e| what(&e))?.collect::<Result<_, _>>().map_err(|e| what(&e))?;
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
/// After a refused sign-in (wrong secret: retrying fast helps nobody).
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// After a network error: a restarted cloud sees its gateways back within a few seconds
/// (≤ 2 s × 1.5 jitter); one connection attempt per gateway every ~2 s costs the cloud little.
const BACKOFF_MAX_IO: Duration = Duration::from_secs(2);
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
    let mut reports = Reports::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let session = session(&cfg, &events, &mut outgoing, &mut shutdown, &mut reports).await;
        if *shutdown.borrow() {
            return;
        }
        reports.link_dropped(Instant::now());
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
                backoff = (backoff * 2).min(BACKOFF_MAX_IO);
                w
            }
        };
        // Jitter ±50% so a site's gateways do not reconnect in lockstep after a cloud restart.
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = wait.mul_f64(jitter);
        // What the core sends meanwhile (it was told the link is down): end reports are kept.
        while let Ok(m) = outgoing.try_recv() {
            reports.while_down(m);
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                m = outgoing.recv() => match m {
                    Some(m) => reports.while_down(m),
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
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
    reports: &mut Reports,
) -> Result<(), SessionError> {
    let io = |e: &dyn std::fmt::Display| SessionError::Io(e.to_string());
    let mut ws = tokio::select! {
        r = sign_in(cfg, events) => r?,
        _ = stopping(shutdown) => return Ok(()),
    };
    // The end reports kept while the link was down, oldest first; one that cannot be sent
    // stays for the next connection.
    let mut resent = 0usize;
    while let Some(m) = reports.queued.front() {
        ws.send(Message::Text(m.encode().into())).await.map_err(|e| io(&e))?;
        let m = reports.queued.pop_front().expect("just seen");
        reports.sent(Instant::now(), &m, 0);
        resent += 1;
    }
    if resent > 0 {
        tracing::info!(reports = resent, "sent the end-of-call reports kept while the cloud link was down");
    }
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
                        if let ServerMsg::Error { code: ErrorCode::Internal | ErrorCode::Unavailable, call_id: Some(cid), message } = &m
                            && let Some(due) = reports.refused(Instant::now(), cid)
                        {
                            tracing::warn!(call_id = %cid, %message, retry_in = ?due.saturating_duration_since(Instant::now()), "the cloud refused an end-of-call report for now: sending it again later");
                        }
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
                    if let Err(e) = ws.send(Message::Text(m.encode().into())).await {
                        reports.while_down(m);
                        return Err(io(&e));
                    }
                    reports.sent(Instant::now(), &m, 0);
                    idle.reset();
                }
                // The core is gone (the gateway is stopping): everything it sent is out.
                None => {
                    close(ws, reports.take_all(), outgoing).await;
                    return Ok(());
                }
            },
            _ = until(reports.next_retry()) => {
                let mut due = reports.take_due(Instant::now()).into_iter();
                while let Some((refusals, m)) = due.next() {
                    if let Err(e) = ws.send(Message::Text(m.encode().into())).await {
                        // This one and the rest go after the next sign-in.
                        for (_, m) in std::iter::once((refusals, m)).chain(due) {
                            reports.while_down(m);
                        }
                        return Err(io(&e));
                    }
                    reports.sent(Instant::now(), &m, refusals);
                }
                idle.reset();
            }
            _ = idle.tick() => {
                ws.send(Message::Text(ClientMsg::Ping.encode().into())).await.map_err(|e| io(&e))?;
            }
            _ = stopping(shutdown) => {
                close(ws, reports.take_all(), outgoing).await;
                return Ok(());
            }
        }
    }
}

/// Resolves at `t`; never for `None`.
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Stopping: send the refused reports still waiting (`refused`, one last try) and what is
/// queued, then the close handshake (the cloud has read everything before it answers the
/// close), within a few seconds.
async fn close(mut ws: Ws, refused: Vec<ClientMsg>, outgoing: &mut mpsc::Receiver<ClientMsg>) {
    let flush = async {
        for m in refused {
            ws.send(Message::Text(m.encode().into())).await?;
        }
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
    // The calls we carry now, so the cloud can end those it still has open for us that are
    // gone (we restarted). Too many for one message, or no answer: no list (the cloud keeps
    // its calls as they are).
    let calls = match &cfg.carried {
        Some(ask) => match tokio::time::timeout(Duration::from_secs(2), ask()).await {
            Ok(Ok(ids)) if ids.len() <= trunkline_protocol::MAX_CARRIED_CALLS => Some(ids),
            _ => None,
        },
        None => None,
    };
    let auth = ClientMsg::SwitchAuth {
        v: PROTOCOL_VERSION,
        switch_id: cfg.switch_id.clone(),
        secret: cfg.secret.clone(),
        // Nothing to advertise: callers reach this gateway over WebRTC through the cloud.
        direct_urls: vec![],
        calls,
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
            Ok(ServerMsg::Error {
                code: ErrorCode::AuthFailed | ErrorCode::RateLimited | ErrorCode::Forbidden, message, ..
            }) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_protocol::{CallEvent, Outcome};

    fn ended(call_id: &str) -> ClientMsg {
        ClientMsg::CallEvent {
            call_id: call_id.into(),
            event: CallEvent::Ended { outcome: Outcome::Connected, duration_ms: Some(1000) },
        }
    }

    #[test]
    fn a_refused_end_report_goes_again_later_doubling_until_it_is_dropped() {
        let t0 = Instant::now();
        let mut r = Reports::default();
        r.sent(t0, &ended("c1"), 0);
        r.sent(t0, &ClientMsg::Ping, 0);
        // An error about another call, or a message that was no report: nothing to retry.
        assert_eq!(r.refused(t0, "c2"), None);
        assert_eq!(r.next_retry(), None);

        let mut now = t0;
        let mut refusals = 0;
        let mut waits = vec![];
        while let Some(due) = r.refused(now, "c1") {
            waits.push(due - now);
            assert_eq!(r.next_retry(), Some(due));
            assert!(r.take_due(due - Duration::from_millis(1)).is_empty(), "not before it is due");
            let again = r.take_due(due);
            assert_eq!(again.len(), 1);
            let (n, m) = again.into_iter().next().unwrap();
            refusals += 1;
            assert_eq!((n, report_call_id(&m)), (refusals, Some("c1")));
            now = due;
            r.sent(now, &m, n);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]);
        assert_eq!(refusals, MAX_REFUSALS);
        assert_eq!(r.next_retry(), None, "dropped after {MAX_REFUSALS} refusals");
    }

    #[test]
    fn refused_reports_waiting_when_the_link_drops_go_first_after_the_next_sign_in() {
        let t0 = Instant::now();
        let mut r = Reports::default();
        r.sent(t0, &ended("old"), 0);
        r.sent(t0, &ended("recent"), 0);
        assert!(r.refused(t0, "old").is_some());
        r.while_down(ended("later"));
        r.link_dropped(t0 + Duration::from_millis(10));
        let order: Vec<&str> = r.queued.iter().filter_map(report_call_id).collect();
        assert_eq!(order, ["old", "recent", "later"]);
        assert_eq!(r.next_retry(), None);
    }
}
