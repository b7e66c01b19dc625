//! The high-level softphone: sign in, place and answer calls the way the browser does.
//!
//! - Outgoing: `dial` (**A → C1**); then either `connect` (**C13**: open the gateway's direct
//!   endpoint, present the key (**C14**), offer WebRTC, the gateway bridges (**C15**)) or `peer`
//!   (**F4**: offer WebRTC to the callee browser through the cloud with `signal` + the key).
//! - Incoming: `incoming` via `direct` (**C3**: connect to the caller's gateway with the key, as
//!   above) or via `peer` (**F4**: wait for the caller's offer, `accept`, answer with `signal`).
//! - Every attempt ends with the cloud's `outcome`, reported as [`CallUpdate::Outcome`] and by
//!   [`CallHandle::wait_outcome`].
//!
//! One dispatcher task reads the cloud connection and routes each message by `call_id` to its
//! call's task; each call task owns its direct-endpoint connection and media session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use trunkline_protocol::{
    CallEvent, CallId, ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode, IncomingVia, Outcome, ServerMsg,
    SignalPayload,
};

use crate::direct::{DirectClient, DirectError, DirectEvent};
use crate::g711::Law;
use crate::signal::{self, Session, SignalClient, SignalError, SignalInbox, SignalSender};
use crate::webrtc::{AudioSource, MediaEvent, MediaSession, PeerOptions, WebRtcError, WebRtcPeer};
use crate::ws::TlsOptions;

#[derive(Debug, thiserror::Error)]
pub enum SoftphoneError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("direct endpoint: {0}")]
    Direct(#[from] DirectError),
    #[error(transparent)]
    WebRtc(#[from] WebRtcError),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("the call ended before {what}: {status}")]
    CallEnded { what: String, status: String },
    #[error("the signal connection is closed")]
    SignalClosed,
}

/// Time limits of the call flows.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// For each reply of a gateway's direct endpoint (`accepted`, `answer`).
    pub direct: Duration,
    /// F4 callee: for the caller's offer after answering.
    pub offer: Duration,
    /// After a local hangup, or after the media leg ended: for the cloud's `outcome`.
    pub outcome_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            direct: Duration::from_secs(10),
            offer: Duration::from_secs(10),
            outcome_grace: Duration::from_secs(5),
        }
    }
}

/// How to sign in and where media goes.
#[derive(Clone, Debug)]
pub struct SoftphoneConfig {
    /// `ws(s)://HOST/ws` of the signal server.
    pub server: String,
    pub number: String,
    pub password: String,
    /// Local address and options of each call's WebRTC socket.
    pub media: PeerOptions,
    pub tls: TlsOptions,
    pub timeouts: Timeouts,
    /// C14 over WebRTC: reach a switch with ICE + DTLS, the offer/answer and candidates going
    /// through the cloud (`direct_signal`) and the key presented on a DataChannel, instead of
    /// opening its `ws://` direct endpoint. The server's `stun:` servers (from `welcome`) give
    /// a server-reflexive candidate unless `media.stun` names some.
    pub direct_over_webrtc: bool,
}

/// The DataChannel a caller presents its key on (C14 over WebRTC).
pub const DIRECT_CHANNEL: &str = "trunkline-direct";

impl SoftphoneConfig {
    pub fn new(
        server: impl Into<String>,
        number: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        SoftphoneConfig {
            server: server.into(),
            number: number.into(),
            password: password.into(),
            media: PeerOptions::default(),
            tls: TlsOptions::default(),
            timeouts: Timeouts::default(),
            direct_over_webrtc: false,
        }
    }
}

struct Inner {
    session: Session,
    signal: SignalSender,
    media: PeerOptions,
    tls: TlsOptions,
    timeouts: Timeouts,
    direct_over_webrtc: bool,
    routes: Mutex<HashMap<CallId, mpsc::UnboundedSender<ServerMsg>>>,
    closed: watch::Sender<Option<String>>,
}

impl Inner {
    fn route(&self, call_id: &str) -> mpsc::UnboundedReceiver<ServerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call_id.to_string(), tx);
        rx
    }

    fn unroute(&self, call_id: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call_id);
    }
}

/// A signed-in softphone.
pub struct Softphone {
    inner: Arc<Inner>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<IncomingCall>>,
}

impl Softphone {
    /// Connect to the signal server and `login`.
    pub async fn login(cfg: SoftphoneConfig) -> Result<Softphone, SoftphoneError> {
        let client = SignalClient::login(&cfg.server, &cfg.number, &cfg.password, &cfg.tls).await?;
        Ok(Self::start(client, cfg))
    }

    /// Connect and `resume` with a session token (the password in `cfg` is not used).
    pub async fn resume(cfg: SoftphoneConfig, token: &str) -> Result<Softphone, SoftphoneError> {
        let client = SignalClient::resume(&cfg.server, token, &cfg.tls).await?;
        Ok(Self::start(client, cfg))
    }

    fn start(client: SignalClient, cfg: SoftphoneConfig) -> Softphone {
        let (session, signal, inbox) = client.into_parts();
        let (closed, _) = watch::channel(None);
        let mut media = cfg.media;
        if cfg.direct_over_webrtc && media.stun.is_empty() {
            media.stun = stun_addrs(&session.ice_servers);
        }
        let inner = Arc::new(Inner {
            session,
            signal,
            media,
            tls: cfg.tls,
            timeouts: cfg.timeouts,
            direct_over_webrtc: cfg.direct_over_webrtc,
            routes: Mutex::new(HashMap::new()),
            closed,
        });
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(inner.clone(), inbox, incoming_tx));
        Softphone {
            inner,
            incoming: tokio::sync::Mutex::new(incoming_rx),
        }
    }

    /// What `welcome` said (number, display name, session token for `resume`).
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    pub fn number(&self) -> &str {
        &self.inner.session.number
    }

    /// The raw cloud sender, for messages this API does not wrap.
    pub fn signal(&self) -> &SignalSender {
        &self.inner.signal
    }

    /// Why the signal connection closed, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Place a call to `to`, sending `source` once media flows.
    pub async fn call(&self, to: &str, source: AudioSource) -> Result<CallHandle, SoftphoneError> {
        let call_id = signal::new_call_id();
        let rx = self.inner.route(&call_id);
        let (handle, task) = CallTask::new(
            self.inner.clone(),
            call_id.clone(),
            true,
            to.into(),
            source,
            rx,
        );
        task.update(CallUpdate::Dialing { to: to.into() });
        if let Err(e) = self.inner.signal.dial_with_id(&call_id, to) {
            self.inner.unroute(&call_id);
            return Err(e.into());
        }
        tokio::spawn(task.run(Start::Dialed));
        Ok(handle)
    }

    /// The next incoming call, waiting up to `within`.
    pub async fn next_incoming(&self, within: Duration) -> Result<IncomingCall, SoftphoneError> {
        let mut rx = self.incoming.lock().await;
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(call)) => Ok(call),
            Ok(None) => Err(SoftphoneError::SignalClosed),
            Err(_) => Err(SoftphoneError::Timeout {
                what: "an incoming call".into(),
                after: within,
            }),
        }
    }

    /// Auto-answer: wait up to `within` for the next incoming call and answer it with `source`.
    pub async fn answer_incoming(
        &self,
        source: AudioSource,
        within: Duration,
    ) -> Result<CallHandle, SoftphoneError> {
        let call = self.next_incoming(within).await?;
        Ok(call.answer(source))
    }

    /// Close the signal connection.
    pub fn close(&self) {
        self.inner.signal.close();
    }
}

impl Drop for Softphone {
    /// Closes the signal connection; the dispatcher then ends by itself and every call still
    /// running sees its cloud channel end.
    fn drop(&mut self) {
        self.inner.signal.close();
    }
}

async fn dispatch(
    inner: Arc<Inner>,
    mut inbox: SignalInbox,
    incoming: mpsc::UnboundedSender<IncomingCall>,
) {
    while let Some(msg) = inbox.recv().await {
        if let ServerMsg::Incoming {
            call_id,
            from,
            from_name,
            via,
        } = msg
        {
            let rx = inner.route(&call_id);
            let call = IncomingCall {
                call_id,
                from,
                from_name,
                via,
                rx: Some(rx),
                inner: inner.clone(),
            };
            // Nobody listening (the Softphone is gone): dropping the call stops its routing.
            let _ = incoming.send(call);
            continue;
        }
        match signal::server_msg_call_id(&msg) {
            Some(id) => {
                let tx = inner
                    .routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned();
                match tx {
                    Some(tx) => {
                        let _ = tx.send(msg);
                    }
                    None => tracing::debug!("no call {id} here for {}", msg.encode()),
                }
            }
            None => match msg {
                ServerMsg::Error { code, message, .. } => {
                    tracing::warn!("signal server: {code}: {message}")
                }
                other => tracing::debug!("ignoring {}", other.encode()),
            },
        }
    }
    let reason = inbox.close_reason().unwrap_or_else(|| "closed".into());
    tracing::debug!("signal connection ended: {reason}");
    inner.closed.send_replace(Some(reason));
    // Every call task sees its cloud channel end.
    inner
        .routes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

/// A call that is ringing here.
pub struct IncomingCall {
    pub call_id: CallId,
    pub from: String,
    pub from_name: String,
    /// `direct` (C3: connect to the caller's gateway) or `peer` (F4: browser to browser).
    pub via: IncomingVia,
    rx: Option<mpsc::UnboundedReceiver<ServerMsg>>,
    inner: Arc<Inner>,
}

impl IncomingCall {
    /// Answer, sending `source` once media flows.
    pub fn answer(mut self, source: AudioSource) -> CallHandle {
        let rx = self.rx.take().expect("an incoming call is answered once");
        let (handle, task) = CallTask::new(
            self.inner.clone(),
            self.call_id.clone(),
            false,
            self.from.clone(),
            source,
            rx,
        );
        task.update(CallUpdate::Incoming {
            from: self.from.clone(),
            from_name: self.from_name.clone(),
            via: self.via.clone(),
        });
        let start = match &self.via {
            IncomingVia::Direct {
                url,
                key,
                expires_in_ms,
            } => Start::Direct {
                url: url.clone(),
                key: key.clone(),
                expires_in_ms: *expires_in_ms,
            },
            IncomingVia::Peer { key } => Start::AwaitOffer { key: key.clone() },
        };
        tokio::spawn(task.run(start));
        handle
    }

    /// Refuse the call.
    pub fn decline(mut self, reason: DeclineReason) -> Result<(), SoftphoneError> {
        self.rx.take();
        self.inner.unroute(&self.call_id);
        Ok(self.inner.signal.decline(&self.call_id, reason)?)
    }
}

impl Drop for IncomingCall {
    fn drop(&mut self) {
        // Neither answered nor declined: stop routing (the call rings out at the server).
        if self.rx.is_some() {
            self.inner.unroute(&self.call_id);
        }
    }
}

/// A progress line of a call (its `Display` names the patent step where there is one).
#[derive(Clone, Debug, PartialEq)]
pub enum CallUpdate {
    /// A → C1: `dial` sent.
    Dialing { to: String },
    /// An incoming call is being answered.
    Incoming {
        from: String,
        from_name: String,
        via: IncomingVia,
    },
    /// C13 (caller) / C3 (callee): go to the gateway's direct endpoint with the key.
    Connect { url: String, expires_in_ms: u64 },
    /// C14: the gateway accepted the key.
    KeyAccepted,
    /// F4: the callee is a browser; negotiation goes through the cloud with this key.
    Peer,
    /// The WebRTC offer went out (to the gateway or, F4, through the cloud).
    OfferSent,
    /// The WebRTC answer arrived / was sent.
    Answer,
    /// F4 callee: `accept` sent.
    Accepted,
    /// Progress from the cloud (`call_event`).
    Event(CallEvent),
    /// Progress from the gateway's direct endpoint (`progress`, C15).
    GatewayProgress(CallEvent),
    /// ICE + DTLS are up.
    MediaConnected {
        codec: Option<Law>,
        after: Option<Duration>,
    },
    /// The first audio packet arrived.
    FirstAudio { after: Option<Duration> },
    /// A DTMF digit arrived.
    Dtmf(char),
    /// The media session ended.
    MediaClosed(String),
    /// The cloud or the gateway refused something for this call.
    Refused { code: ErrorCode, message: String },
    /// The direct endpoint ended the call.
    DirectEnded(Outcome),
    /// A local hangup was sent.
    HungUp,
    /// Something failed on this side.
    Failed(String),
    /// Final: the cloud's outcome.
    Outcome {
        outcome: Outcome,
        duration_ms: Option<u64>,
    },
}

impl std::fmt::Display for CallUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallUpdate::Dialing { to } => write!(f, "A/C1 dialing {to}"),
            CallUpdate::Incoming {
                from,
                from_name,
                via,
            } => match via {
                IncomingVia::Direct { url, .. } => write!(
                    f,
                    "C3 incoming call from {from} ({from_name}) via gateway {url}"
                ),
                IncomingVia::Peer { .. } => write!(
                    f,
                    "F4 incoming call from {from} ({from_name}), browser to browser"
                ),
            },
            CallUpdate::Connect { url, expires_in_ms } => {
                write!(
                    f,
                    "C13 connect to {url} with the one-time key (expires in {expires_in_ms} ms)"
                )
            }
            CallUpdate::KeyAccepted => write!(f, "C14 key accepted by the gateway"),
            CallUpdate::Peer => write!(f, "F4 callee is a browser: negotiating through the cloud"),
            CallUpdate::OfferSent => write!(f, "WebRTC offer sent"),
            CallUpdate::Answer => write!(f, "WebRTC answer exchanged"),
            CallUpdate::Accepted => write!(f, "F4 accepted"),
            CallUpdate::Event(e) => write!(f, "{}", event_text(e)),
            CallUpdate::GatewayProgress(e) => write!(f, "C15 gateway: {}", event_text(e)),
            CallUpdate::MediaConnected { codec, after } => {
                write!(f, "media connected (ICE + DTLS-SRTP)")?;
                if let Some(c) = codec {
                    write!(f, ", sending {c}")?;
                }
                if let Some(a) = after {
                    write!(f, " after {} ms", a.as_millis())?;
                }
                Ok(())
            }
            CallUpdate::FirstAudio { after } => match after {
                Some(a) => write!(f, "first audio after {} ms", a.as_millis()),
                None => write!(f, "first audio"),
            },
            CallUpdate::Dtmf(d) => write!(f, "DTMF received: {d}"),
            CallUpdate::MediaClosed(why) => write!(f, "media ended: {why}"),
            CallUpdate::Refused { code, message } => write!(f, "refused: {code}: {message}"),
            CallUpdate::DirectEnded(o) => write!(f, "gateway ended the call: {o}"),
            CallUpdate::HungUp => write!(f, "hung up"),
            CallUpdate::Failed(why) => write!(f, "failed: {why}"),
            CallUpdate::Outcome {
                outcome,
                duration_ms,
            } => {
                write!(f, "outcome: {outcome}")?;
                if let Some(d) = duration_ms {
                    write!(f, " ({d} ms)")?;
                }
                Ok(())
            }
        }
    }
}

fn event_text(e: &CallEvent) -> String {
    match e {
        CallEvent::KeyAccepted => "C14 key accepted".into(),
        CallEvent::Ringing => "ringing".into(),
        CallEvent::Connected => "connected (answered)".into(),
        CallEvent::Ended {
            outcome,
            duration_ms,
        } => match duration_ms {
            Some(d) => format!("ended: {outcome} after {d} ms"),
            None => format!("ended: {outcome}"),
        },
    }
}

/// A snapshot of a call's state.
#[derive(Clone, Default)]
pub struct CallStatus {
    pub ringing: bool,
    /// The callee answered (`connected` from the cloud or the gateway, or F4 `accept`).
    pub answered: bool,
    pub media: Option<Arc<MediaSession>>,
    /// The last refusal for this call (cloud `error` or direct-endpoint error).
    pub refused: Option<(ErrorCode, String)>,
    pub direct_error: Option<String>,
    pub direct_outcome: Option<Outcome>,
    /// The cloud's final outcome.
    pub outcome: Option<(Outcome, Option<u64>)>,
    /// A local failure that ended the call without the cloud's outcome.
    pub failure: Option<String>,
    /// The call task has finished: nothing more will change.
    pub finished: bool,
}

impl std::fmt::Debug for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStatus")
            .field("ringing", &self.ringing)
            .field("answered", &self.answered)
            .field("media", &self.media.as_ref().map(|m| m.stats()))
            .field("refused", &self.refused)
            .field("direct_error", &self.direct_error)
            .field("direct_outcome", &self.direct_outcome)
            .field("outcome", &self.outcome)
            .field("failure", &self.failure)
            .field("finished", &self.finished)
            .finish()
    }
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.outcome, &self.failure) {
            (Some((o, _)), _) => write!(f, "outcome {o}"),
            (None, Some(why)) => write!(f, "{why}"),
            (None, None) => write!(f, "{self:?}"),
        }
    }
}

enum CallCmd {
    Hangup,
}

/// A call in progress (either direction). Dropping the handle hangs the call up.
pub struct CallHandle {
    call_id: CallId,
    outgoing: bool,
    remote: String,
    status: watch::Receiver<CallStatus>,
    updates: tokio::sync::Mutex<mpsc::UnboundedReceiver<CallUpdate>>,
    cmd: mpsc::UnboundedSender<CallCmd>,
}

impl CallHandle {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// The callee (outgoing) or the caller (incoming).
    pub fn remote(&self) -> &str {
        &self.remote
    }

    pub fn status(&self) -> CallStatus {
        self.status.borrow().clone()
    }

    /// The next progress line, in order from the start of the call; `None` after the last.
    pub async fn next_update(&self) -> Option<CallUpdate> {
        self.updates.lock().await.recv().await
    }

    /// The media session, once negotiated.
    pub fn media(&self) -> Option<Arc<MediaSession>> {
        self.status.borrow().media.clone()
    }

    /// Wait until `cond` holds, up to `within`. Fails early if the call finishes first.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&CallStatus) -> bool,
    ) -> Result<CallStatus, SoftphoneError> {
        let mut rx = self.status.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let s = rx.borrow_and_update();
                if cond(&s) {
                    return Ok(s.clone());
                }
                if s.finished {
                    return Err(SoftphoneError::CallEnded {
                        what: what.into(),
                        status: s.to_string(),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let s = rx.borrow().clone();
                    return Err(SoftphoneError::CallEnded {
                        what: what.into(),
                        status: s.to_string(),
                    });
                }
                Err(_) => {
                    return Err(SoftphoneError::Timeout {
                        what: what.into(),
                        after: within,
                    });
                }
            }
        }
    }

    /// Wait until the callee answered.
    pub async fn wait_answered(&self, within: Duration) -> Result<(), SoftphoneError> {
        self.wait_for("the answer", within, |s| s.answered)
            .await
            .map(|_| ())
    }

    /// Wait until the media session is negotiated and connected (ICE + DTLS).
    pub async fn wait_media(&self, within: Duration) -> Result<Arc<MediaSession>, SoftphoneError> {
        let start = tokio::time::Instant::now();
        let s = self
            .wait_for("media", within, |s| s.media.is_some())
            .await?;
        let media = s.media.expect("checked");
        let left = within.saturating_sub(start.elapsed());
        media.wait_connected(left).await?;
        Ok(media)
    }

    /// Hang up (or cancel / decline if not answered yet). The outcome follows.
    pub fn hangup(&self) {
        let _ = self.cmd.send(CallCmd::Hangup);
    }

    /// Wait for the cloud's final outcome.
    pub async fn wait_outcome(
        &self,
        within: Duration,
    ) -> Result<(Outcome, Option<u64>), SoftphoneError> {
        let s = self
            .wait_for("the outcome", within, |s| s.outcome.is_some())
            .await?;
        Ok(s.outcome.expect("checked"))
    }

    /// Wait until the call task has finished (outcome received or the call failed).
    pub async fn wait_finished(&self, within: Duration) -> Result<CallStatus, SoftphoneError> {
        let mut rx = self.status.clone();
        let r = tokio::time::timeout(within, rx.wait_for(|s| s.finished)).await;
        match r {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Ok(self.status()),
            Err(_) => Err(SoftphoneError::Timeout {
                what: "the end of the call".into(),
                after: within,
            }),
        }
    }

    /// What arrived so far (empty before media).
    pub fn recording(&self) -> Vec<i16> {
        self.media().map(|m| m.recording()).unwrap_or_default()
    }
}

/// Where to go for a direct connection (from `connect` or `incoming` via `direct`).
#[derive(Clone, Copy, Debug)]
pub struct DirectTarget<'a> {
    pub url: &'a str,
    pub call_id: &'a str,
    pub key: &'a str,
    /// The connecting party's number: the caller (C13), or the switchless callee (C3).
    pub caller: &'a str,
}

/// **C13 / C3 → C14 → C15**: open the gateway's direct endpoint, present the one-time key,
/// offer WebRTC (all host candidates in the SDP) and apply the gateway's answer. Returns the
/// direct connection (for `progress` / `ended` / `hangup`) and the running media session.
/// `progress` gets [`CallUpdate::KeyAccepted`], [`CallUpdate::OfferSent`] and
/// [`CallUpdate::Answer`] as they happen. After the key was accepted, a local failure hangs
/// up on the direct connection before returning.
pub async fn connect_direct(
    target: DirectTarget<'_>,
    media: &PeerOptions,
    source: AudioSource,
    tls: &TlsOptions,
    within: Duration,
    progress: &mut (dyn FnMut(CallUpdate) + Send),
) -> Result<(DirectClient, MediaSession), SoftphoneError> {
    let mut direct = DirectClient::present(
        target.url,
        target.call_id,
        target.key,
        target.caller,
        tls,
        within,
    )
    .await?;
    progress(CallUpdate::KeyAccepted);
    let r = async {
        let mut peer = WebRtcPeer::bind(media.clone()).await?;
        let offer = peer.create_offer()?;
        progress(CallUpdate::OfferSent);
        let answer = direct.offer(&offer, within).await?;
        let session = peer.accept_answer(&answer, source)?;
        progress(CallUpdate::Answer);
        Ok::<_, SoftphoneError>(session)
    }
    .await;
    match r {
        Ok(session) => Ok((direct, session)),
        Err(e) => {
            if !matches!(e, SoftphoneError::Direct(_)) {
                let _ = direct.hangup().await;
            }
            direct.close().await;
            Err(e)
        }
    }
}

/// **F4 caller**: make the offer and send it through the cloud with the call's key (then
/// `end_of_candidates`: every candidate is in the SDP). Apply the answer that comes back as
/// `signal` with [`WebRtcPeer::accept_answer`].
pub async fn offer_to_peer(
    signal: &SignalSender,
    call_id: &str,
    key: &str,
    media: &PeerOptions,
) -> Result<WebRtcPeer, SoftphoneError> {
    let mut peer = WebRtcPeer::bind(media.clone()).await?;
    let offer = peer.create_offer()?;
    signal.signal(call_id, key, SignalPayload::Offer { sdp: offer })?;
    signal.signal(call_id, key, SignalPayload::EndOfCandidates)?;
    Ok(peer)
}

/// **F4 callee**: answer the caller's offer, `accept` the call with the key, and send the
/// answer (then `end_of_candidates`) through the cloud. Media starts at once.
pub async fn answer_peer(
    signal: &SignalSender,
    call_id: &str,
    key: &str,
    offer_sdp: &str,
    media: &PeerOptions,
    source: AudioSource,
) -> Result<MediaSession, SoftphoneError> {
    let peer = WebRtcPeer::bind(media.clone()).await?;
    let (answer, session) = peer.accept_offer(offer_sdp, source)?;
    signal.accept(call_id, key)?;
    signal.signal(call_id, key, SignalPayload::Answer { sdp: answer })?;
    signal.signal(call_id, key, SignalPayload::EndOfCandidates)?;
    Ok(session)
}

/// How a call task starts.
enum Start {
    /// Outgoing: `dial` is sent; wait for `connect` / `peer` / `outcome`.
    Dialed,
    /// C3: connect to the caller's gateway.
    Direct {
        url: String,
        key: String,
        expires_in_ms: u64,
    },
    /// F4 callee: wait for the offer, then `accept` and answer.
    AwaitOffer { key: String },
}

struct CallTask {
    inner: Arc<Inner>,
    call_id: CallId,
    outgoing: bool,
    source: AudioSource,
    rx: mpsc::UnboundedReceiver<ServerMsg>,
    cloud_open: bool,
    cmds: mpsc::UnboundedReceiver<CallCmd>,
    cmds_open: bool,
    status: watch::Sender<CallStatus>,
    updates: mpsc::UnboundedSender<CallUpdate>,
    /// F4: the cloud-issued key.
    peer_key: Option<String>,
    /// F4 callee: still waiting for the offer (until the deadline).
    awaiting_offer: Option<tokio::time::Instant>,
    /// F4 caller: the offer is out, waiting for the answer.
    pending_peer: Option<WebRtcPeer>,
    /// Trickled candidates that came before the media session.
    pending_candidates: Vec<String>,
    direct: Option<DirectClient>,
    /// C14 over WebRTC: the key to present on the DataChannel, and whether it was accepted.
    webrtc_key: Option<String>,
    webrtc_accepted: bool,
    /// DataChannel text not handled yet.
    dc_inbox: Vec<String>,
    /// C14 over WebRTC: the DataChannel must open by then, or the connection failed.
    connect_deadline: Option<tokio::time::Instant>,
    media: Option<Arc<MediaSession>>,
    media_events: Option<tokio::sync::broadcast::Receiver<MediaEvent>>,
    /// Anything but an error was received for this call.
    progressed: bool,
    hung_up: bool,
    /// Give up waiting for the cloud's outcome at this time.
    grace: Option<tokio::time::Instant>,
    done: bool,
}

impl CallTask {
    fn new(
        inner: Arc<Inner>,
        call_id: CallId,
        outgoing: bool,
        remote: String,
        source: AudioSource,
        rx: mpsc::UnboundedReceiver<ServerMsg>,
    ) -> (CallHandle, CallTask) {
        let (status_tx, status_rx) = watch::channel(CallStatus::default());
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let handle = CallHandle {
            call_id: call_id.clone(),
            outgoing,
            remote,
            status: status_rx,
            updates: tokio::sync::Mutex::new(updates_rx),
            cmd: cmd_tx,
        };
        let task = CallTask {
            inner,
            call_id,
            outgoing,
            source,
            rx,
            cloud_open: true,
            cmds: cmd_rx,
            cmds_open: true,
            status: status_tx,
            updates: updates_tx,
            peer_key: None,
            awaiting_offer: None,
            pending_peer: None,
            pending_candidates: vec![],
            direct: None,
            webrtc_key: None,
            webrtc_accepted: false,
            dc_inbox: vec![],
            connect_deadline: None,
            media: None,
            media_events: None,
            progressed: false,
            hung_up: false,
            grace: None,
            done: false,
        };
        (handle, task)
    }

    fn update(&self, u: CallUpdate) {
        tracing::debug!(call_id = %self.call_id, "{u}");
        let _ = self.updates.send(u);
    }

    fn set_status(&self, f: impl FnOnce(&mut CallStatus)) {
        self.status.send_modify(f);
    }

    fn fail(&mut self, why: String) {
        self.update(CallUpdate::Failed(why.clone()));
        self.set_status(|s| s.failure = Some(why));
        self.done = true;
    }

    /// Wait for the cloud's outcome a little longer, then give up.
    fn start_grace(&mut self) {
        if self.grace.is_none() {
            self.grace = Some(tokio::time::Instant::now() + self.inner.timeouts.outcome_grace);
        }
    }

    async fn run(mut self, start: Start) {
        match start {
            Start::Dialed => {}
            Start::Direct {
                url,
                key,
                expires_in_ms,
            } => {
                self.update(CallUpdate::Connect {
                    url: url.clone(),
                    expires_in_ms,
                });
                self.start_direct(&url, &key).await;
            }
            Start::AwaitOffer { key } => {
                self.peer_key = Some(key);
                self.awaiting_offer = Some(tokio::time::Instant::now() + self.inner.timeouts.offer);
            }
        }
        while !self.done {
            let deadline = [self.grace, self.awaiting_offer, self.connect_deadline].into_iter().flatten().min();
            tokio::select! {
                m = self.rx.recv(), if self.cloud_open => match m {
                    Some(m) => self.on_cloud(m).await,
                    None => self.on_cloud_lost(),
                },
                e = next_direct(&mut self.direct) => self.on_direct(e).await,
                e = next_media(&mut self.media_events) => {
                    self.on_media(e);
                    self.drain_dc().await;
                }
                c = self.cmds.recv(), if self.cmds_open => match c {
                    Some(CallCmd::Hangup) => self.hangup().await,
                    None => {
                        // The handle was dropped: hang up and finish quietly.
                        self.cmds_open = false;
                        self.hangup().await;
                    }
                },
                _ = sleep_until(deadline) => self.on_deadline().await,
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        if let Some(mut d) = self.direct.take() {
            if !d.is_closed() && !self.hung_up {
                let _ = d.hangup().await;
            }
            d.close().await;
        }
        if let Some(m) = self.media.take() {
            m.close().await;
        }
        self.inner.unroute(&self.call_id);
        self.set_status(|s| s.finished = true);
    }

    async fn on_cloud(&mut self, m: ServerMsg) {
        if !matches!(m, ServerMsg::Error { .. }) {
            self.progressed = true;
        }
        match m {
            ServerMsg::Connect {
                url,
                key,
                expires_in_ms,
                ..
            } => {
                self.update(CallUpdate::Connect {
                    url: url.clone(),
                    expires_in_ms,
                });
                if self.direct.is_none() && self.media.is_none() && self.webrtc_key.is_none() && !self.hung_up {
                    self.start_direct(&url, &key).await;
                }
            }
            ServerMsg::Peer { key, .. } => {
                self.update(CallUpdate::Peer);
                self.peer_key = Some(key);
                if self.outgoing
                    && self.pending_peer.is_none()
                    && self.media.is_none()
                    && !self.hung_up
                {
                    self.send_peer_offer().await;
                }
            }
            ServerMsg::Signal { payload, .. } => self.on_signal(payload).await,
            ServerMsg::DirectSignal { payload, .. } if self.webrtc_key.is_some() => self.on_signal(payload).await,
            ServerMsg::CallEvent { event, .. } => {
                match &event {
                    CallEvent::Ringing => self.set_status(|s| s.ringing = true),
                    CallEvent::Connected => self.set_status(|s| s.answered = true),
                    _ => {}
                }
                self.update(CallUpdate::Event(event));
            }
            ServerMsg::Outcome {
                outcome,
                duration_ms,
                ..
            } => {
                self.update(CallUpdate::Outcome {
                    outcome,
                    duration_ms,
                });
                self.set_status(|s| s.outcome = Some((outcome, duration_ms)));
                // Over WebRTC the switch carries the call and ends it on the DataChannel: a
                // cloud that closes its books (e.g. while shutting down) does not cut the media.
                let carried = self.webrtc_accepted
                    && self.status.borrow().direct_outcome.is_none()
                    && self.media.as_ref().is_some_and(|m| !m.is_closed());
                if carried && !self.hung_up {
                    tracing::info!("call {}: the cloud closed the call ({outcome}); media goes on until the switch ends it", self.call_id);
                } else {
                    self.done = true;
                }
            }
            ServerMsg::Error { code, message, .. } => {
                self.update(CallUpdate::Refused {
                    code,
                    message: message.clone(),
                });
                self.set_status(|s| s.refused = Some((code, message.clone())));
                // A refused `dial` changes nothing at the server: no outcome will follow (except
                // for invalid_call, B3, which is followed by `rejected_invalid`).
                if self.outgoing && !self.progressed && code != ErrorCode::InvalidCall {
                    self.fail(format!("dial refused: {code}: {message}"));
                }
            }
            other => tracing::debug!("call {}: ignoring {}", self.call_id, other.encode()),
        }
    }

    fn on_cloud_lost(&mut self) {
        self.cloud_open = false;
        let why = self
            .inner
            .closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "closed".into());
        if self.direct.is_some() || self.webrtc_accepted {
            // The call goes on over the direct connection; its `ended` finishes it.
            self.update(CallUpdate::Failed(format!(
                "signal connection lost ({why}); the call continues on the direct endpoint"
            )));
        } else {
            self.fail(format!("signal connection lost: {why}"));
        }
    }

    async fn on_signal(&mut self, payload: SignalPayload) {
        match payload {
            SignalPayload::Offer { sdp } => {
                if self.outgoing || self.media.is_some() {
                    tracing::debug!(
                        "call {}: ignoring an offer (renegotiation is not supported)",
                        self.call_id
                    );
                    return;
                }
                self.awaiting_offer = None;
                self.answer_peer_offer(&sdp).await;
            }
            SignalPayload::Answer { sdp } => {
                let Some(peer) = self.pending_peer.take() else {
                    tracing::debug!("call {}: an answer without an offer", self.call_id);
                    return;
                };
                match peer.accept_answer(&sdp, self.source.clone()) {
                    Ok(media) => {
                        self.update(CallUpdate::Answer);
                        if self.webrtc_key.is_some() {
                            self.connect_deadline = Some(tokio::time::Instant::now() + self.inner.timeouts.direct);
                        }
                        self.set_media(media);
                    }
                    Err(e) => {
                        self.update(CallUpdate::Failed(format!("the peer's answer: {e}")));
                        self.hangup().await;
                    }
                }
            }
            SignalPayload::Ice { candidate, .. } => match &self.media {
                Some(m) => {
                    if let Err(e) = m.add_remote_candidate(&candidate) {
                        tracing::debug!("call {}: {e}", self.call_id);
                    }
                }
                None => self.pending_candidates.push(candidate),
            },
            SignalPayload::EndOfCandidates => {}
        }
    }

    fn set_media(&mut self, media: MediaSession) {
        let media = Arc::new(media);
        for c in self.pending_candidates.drain(..) {
            if let Err(e) = media.add_remote_candidate(&c) {
                tracing::debug!("call {}: {e}", self.call_id);
            }
        }
        let (history, rx) = media.subscribe_with_history();
        self.media_events = Some(rx);
        let m = media.clone();
        self.set_status(|s| s.media = Some(m));
        self.media = Some(media);
        for e in history {
            self.on_media(Some(e));
        }
    }

    /// C14 over WebRTC: offer (audio + DataChannel) through the cloud; the answer and the
    /// switch's candidates come back as `direct_signal`; the key goes on the DataChannel once
    /// it opens ([`MediaEvent::ChannelOpen`]).
    async fn start_direct_webrtc(&mut self, key: &str) {
        let r = async {
            let mut peer = WebRtcPeer::bind(self.inner.media.clone()).await?;
            let offer = peer.create_offer_with_channel(DIRECT_CHANNEL)?;
            Ok::<_, SoftphoneError>((peer, offer))
        }
        .await;
        match r {
            Ok((peer, offer)) => {
                self.webrtc_key = Some(key.to_string());
                self.pending_peer = Some(peer);
                let msg = ClientMsg::DirectSignal { call_id: self.call_id.clone(), payload: SignalPayload::Offer { sdp: offer } };
                if let Err(e) = self.inner.signal.send(&msg) {
                    return self.direct_failed_local(format!("cannot send the offer: {e}")).await;
                }
                self.update(CallUpdate::OfferSent);
            }
            Err(e) => self.direct_failed_local(e.to_string()).await,
        }
    }

    /// The direct connection could not be made: tell the cloud (the attempt ends
    /// `connect_failed`) and wait for its outcome.
    async fn connect_failed(&mut self, why: String) {
        self.update(CallUpdate::Failed(format!("could not connect — network: {why}")));
        self.set_status(|s| s.direct_error = Some(format!("connect_failed: {why}")));
        // ≤ 200 bytes (the protocol's limit), cut at a character boundary.
        let mut reason = why.clone();
        while reason.len() > 200 {
            reason.pop();
        }
        let msg = ClientMsg::ConnectFailed { call_id: self.call_id.clone(), reason };
        if let Err(e) = self.inner.signal.send(&msg) {
            tracing::debug!("call {}: {e}", self.call_id);
        }
        if let Some(m) = &self.media {
            m.close().await;
        }
        self.hung_up = true;
        self.start_grace();
    }

    /// DataChannel messages from the switch (the direct endpoint's messages, over WebRTC).
    async fn drain_dc(&mut self) {
        for text in std::mem::take(&mut self.dc_inbox) {
            let msg = match DirectServerMsg::decode(&text) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("call {}: bad DataChannel message: {e}", self.call_id);
                    continue;
                }
            };
            match msg {
                DirectServerMsg::Accepted { .. } => {
                    self.webrtc_accepted = true;
                    self.update(CallUpdate::KeyAccepted);
                }
                DirectServerMsg::Error { code, message } if !self.webrtc_accepted => {
                    self.direct_failed(DirectError::from_code(code, message)).await;
                    if let Some(m) = &self.media {
                        m.close().await;
                    }
                }
                DirectServerMsg::Error { code, message } => {
                    self.on_direct(Ok(Some(DirectEvent::Error { code, message }))).await
                }
                DirectServerMsg::Progress { event } => self.on_direct(Ok(Some(DirectEvent::Progress(event)))).await,
                DirectServerMsg::Ended { outcome } => self.on_direct(Ok(Some(DirectEvent::Ended(outcome)))).await,
                DirectServerMsg::Answer { .. } => {}
            }
        }
    }

    /// C13 / C3: present the key at the gateway, offer, apply its answer.
    async fn start_direct(&mut self, url: &str, key: &str) {
        if self.inner.direct_over_webrtc {
            return self.start_direct_webrtc(key).await;
        }
        let number = self.inner.session.number.clone();
        let updates = self.updates.clone();
        let call_id = self.call_id.clone();
        let r = connect_direct(
            DirectTarget {
                url,
                call_id: &call_id,
                key,
                caller: &number,
            },
            &self.inner.media,
            self.source.clone(),
            &self.inner.tls,
            self.inner.timeouts.direct,
            &mut |u| {
                let _ = updates.send(u);
            },
        )
        .await;
        match r {
            Ok((direct, media)) => {
                self.set_media(media);
                self.direct = Some(direct);
            }
            Err(SoftphoneError::Direct(e)) => self.direct_failed(e).await,
            Err(e) => self.direct_failed_local(e.to_string()).await,
        }
    }

    async fn direct_failed(&mut self, e: DirectError) {
        if let Some(code) = e.code() {
            self.update(CallUpdate::Refused {
                code,
                message: e.to_string(),
            });
            let msg = e.to_string();
            self.set_status(|s| s.refused = Some((code, msg)));
        }
        let reports_itself = matches!(e, DirectError::NotImplemented(_) | DirectError::Ended(_));
        self.set_status(|s| s.direct_error = Some(e.to_string()));
        if reports_itself {
            // The gateway tells the cloud the call ended; its outcome follows.
            self.update(CallUpdate::Failed(format!("direct endpoint: {e}")));
            self.start_grace();
        } else {
            self.direct_failed_local(format!("direct endpoint: {e}"))
                .await;
        }
    }

    /// The direct leg could not be set up on this side: end the attempt at the cloud so it has
    /// an outcome now rather than at the key's expiry.
    async fn direct_failed_local(&mut self, why: String) {
        self.update(CallUpdate::Failed(why.clone()));
        self.set_status(|s| {
            s.direct_error.get_or_insert(why);
        });
        let r = if self.outgoing {
            self.inner.signal.cancel(&self.call_id)
        } else {
            self.inner
                .signal
                .decline(&self.call_id, DeclineReason::Declined)
        };
        if let Err(e) = r {
            tracing::debug!("call {}: {e}", self.call_id);
        }
        self.hung_up = true;
        self.start_grace();
    }

    /// F4 caller: offer through the cloud.
    async fn send_peer_offer(&mut self) {
        let Some(key) = self.peer_key.clone() else {
            return;
        };
        match offer_to_peer(&self.inner.signal, &self.call_id, &key, &self.inner.media).await {
            Ok(peer) => {
                self.update(CallUpdate::OfferSent);
                self.pending_peer = Some(peer);
            }
            Err(SoftphoneError::Signal(e)) => self.fail(format!("sending the offer: {e}")),
            Err(e) => self.peer_failed(e.to_string()).await,
        }
    }

    /// F4 callee: `accept`, then answer through the cloud.
    async fn answer_peer_offer(&mut self, offer: &str) {
        let Some(key) = self.peer_key.clone() else {
            return;
        };
        let r = answer_peer(
            &self.inner.signal,
            &self.call_id,
            &key,
            offer,
            &self.inner.media,
            self.source.clone(),
        )
        .await;
        match r {
            Ok(media) => {
                self.update(CallUpdate::Accepted);
                self.update(CallUpdate::Answer);
                self.set_status(|s| s.answered = true);
                self.set_media(media);
            }
            Err(SoftphoneError::Signal(e)) => self.fail(format!("answering: {e}")),
            Err(e) => self.peer_failed(format!("the caller's offer: {e}")).await,
        }
    }

    async fn peer_failed(&mut self, why: String) {
        self.update(CallUpdate::Failed(why));
        self.hangup().await;
    }

    async fn on_direct(&mut self, e: Result<Option<DirectEvent>, DirectError>) {
        match e {
            Ok(Some(DirectEvent::Progress(event))) => {
                match &event {
                    CallEvent::Ringing => self.set_status(|s| s.ringing = true),
                    CallEvent::Connected => self.set_status(|s| s.answered = true),
                    _ => {}
                }
                self.update(CallUpdate::GatewayProgress(event));
            }
            Ok(Some(DirectEvent::Ended(outcome))) => {
                self.update(CallUpdate::DirectEnded(outcome));
                self.set_status(|s| s.direct_outcome = Some(outcome));
                if let Some(m) = &self.media {
                    m.close().await;
                }
                if self.status.borrow().outcome.is_some() {
                    self.done = true;
                } else {
                    self.start_grace();
                }
            }
            Ok(Some(DirectEvent::Error { code, message })) => {
                self.update(CallUpdate::Refused {
                    code,
                    message: message.clone(),
                });
                self.set_status(|s| s.refused = Some((code, message)));
            }
            Ok(None) => {
                self.direct = None;
                self.start_grace();
                if !self.cloud_open {
                    let o = self.status.borrow().direct_outcome;
                    match o {
                        Some(_) => self.done = true,
                        None => self.fail(
                            "the direct connection closed and the signal connection is gone".into(),
                        ),
                    }
                }
            }
            Err(e) => {
                self.update(CallUpdate::Failed(format!("direct endpoint: {e}")));
                self.direct = None;
                self.start_grace();
            }
        }
    }

    fn on_media(&mut self, e: Option<MediaEvent>) {
        let Some(e) = e else {
            self.media_events = None;
            return;
        };
        match e {
            MediaEvent::Connected => {
                let s = self.media.as_ref().map(|m| m.stats()).unwrap_or_default();
                self.update(CallUpdate::MediaConnected {
                    codec: s.send_codec,
                    after: s.connected_after,
                });
            }
            MediaEvent::FirstAudio => {
                let s = self.media.as_ref().map(|m| m.stats()).unwrap_or_default();
                self.update(CallUpdate::FirstAudio {
                    after: s.first_audio_after,
                });
            }
            MediaEvent::Dtmf(d) => self.update(CallUpdate::Dtmf(d)),
            MediaEvent::ChannelOpen => {
                self.connect_deadline = None;
                // C14: present the key inside DTLS.
                if let (Some(key), Some(m)) = (&self.webrtc_key, &self.media) {
                    let present = DirectClientMsg::Present {
                        v: trunkline_protocol::PROTOCOL_VERSION,
                        call_id: self.call_id.clone(),
                        key: key.clone(),
                        caller: self.inner.session.number.clone(),
                    };
                    if let Err(e) = m.channel_send(&present.encode()) {
                        tracing::debug!("call {}: {e}", self.call_id);
                    }
                }
            }
            MediaEvent::ChannelText(t) => self.dc_inbox.push(t),
            MediaEvent::LocalCandidate(candidate) => {
                if self.webrtc_key.is_some() {
                    let payload = SignalPayload::Ice { candidate, sdp_mid: None, sdp_m_line_index: Some(0) };
                    let msg = ClientMsg::DirectSignal { call_id: self.call_id.clone(), payload };
                    if let Err(e) = self.inner.signal.send(&msg) {
                        tracing::debug!("call {}: {e}", self.call_id);
                    }
                }
            }
            MediaEvent::Closed(why) => {
                self.update(CallUpdate::MediaClosed(why));
                self.media_events = None;
                if self.webrtc_accepted && self.status.borrow().outcome.is_some() {
                    // The cloud had closed the call already; now the media is over too.
                    self.done = true;
                }
            }
            MediaEvent::IceState(_) => {}
        }
    }

    async fn on_deadline(&mut self) {
        let now = tokio::time::Instant::now();
        if self.connect_deadline.is_some_and(|t| t <= now) {
            self.connect_deadline = None;
            let why = format!("no ICE + DTLS connection to the switch within {:?}", self.inner.timeouts.direct);
            self.connect_failed(why).await;
        }
        if self.awaiting_offer.is_some_and(|t| t <= now) {
            self.awaiting_offer = None;
            self.update(CallUpdate::Failed(
                "no offer from the caller in time".into(),
            ));
            self.hangup().await;
        }
        if self.grace.is_some_and(|t| t <= now) {
            self.grace = None;
            if self.status.borrow().outcome.is_none() {
                let direct = self.status.borrow().direct_outcome;
                let why = match direct {
                    Some(o) => format!("no outcome from the signal server (the gateway said {o})"),
                    None => "no outcome from the signal server".into(),
                };
                self.fail(why);
            }
        }
    }

    /// Hang up / cancel / decline, whichever fits the call's state.
    async fn hangup(&mut self) {
        if self.hung_up || self.done {
            return;
        }
        self.hung_up = true;
        self.update(CallUpdate::HungUp);
        let answered = self.status.borrow().answered;
        let r = if let Some(d) = &mut self.direct {
            if let Err(e) = d.hangup().await {
                tracing::debug!("call {}: {e}", self.call_id);
            }
            Ok(())
        } else if self.webrtc_accepted
            && let Some(m) = &self.media
        {
            // Over WebRTC the switch hears it on the DataChannel (it reports the end).
            let _ = m.channel_send(&DirectClientMsg::Hangup.encode());
            Ok(())
        } else if self.peer_key.is_some() && (answered || !self.outgoing) {
            // F4: hang up (or, as the callee before answering, decline) through the cloud.
            self.inner.signal.hangup(&self.call_id)
        } else if self.outgoing {
            self.inner.signal.cancel(&self.call_id)
        } else {
            self.inner
                .signal
                .decline(&self.call_id, DeclineReason::Declined)
        };
        if let Err(e) = r {
            tracing::debug!("call {}: {e}", self.call_id);
        }
        if let Some(m) = &self.media {
            m.close().await;
        }
        self.pending_peer = None;
        if !self.cloud_open {
            self.fail("hung up without a signal connection".into());
            return;
        }
        self.start_grace();
    }
}

/// The addresses of the `stun:` URLs among `ice_servers` (IPv4; names resolved once here).
fn stun_addrs(ice_servers: &[trunkline_protocol::IceServer]) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut out = vec![];
    for url in ice_servers.iter().flat_map(|s| s.urls.iter()) {
        if let Some((host, port)) = trunkline_media::srflx::parse_stun_url(url)
            && let Ok(mut addrs) = (host.as_str(), port).to_socket_addrs()
            && let Some(a) = addrs.find(|a| a.is_ipv4())
        {
            out.push(a);
        }
    }
    out.dedup();
    out
}

async fn next_direct(d: &mut Option<DirectClient>) -> Result<Option<DirectEvent>, DirectError> {
    match d {
        Some(d) => d.next_event().await,
        None => std::future::pending().await,
    }
}

async fn next_media(
    rx: &mut Option<tokio::sync::broadcast::Receiver<MediaEvent>>,
) -> Option<MediaEvent> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    loop {
        match r.recv().await {
            Ok(e) => return Some(e),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
