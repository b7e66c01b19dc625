//! The high-level softphone: sign in, place and answer calls the way the browser does — with
//! the browser's own call core ([`trunkline_call::Call`], sans-IO), driven here on str0m.
//!
//! - Outgoing: `dial` (**A → C1**); then either `connect` (**C13**: "C14 over WebRTC": offer
//!   audio + the `trunkline-direct` DataChannel to the switch through the cloud (`direct_signal`),
//!   ICE + DTLS straight to the switch, present the key on the DataChannel (**C14**), the switch
//!   bridges (**C15**)) or `peer` (**F4**: offer WebRTC to the callee browser through the cloud
//!   with `signal` + the key).
//! - Incoming: `incoming` via `direct` (**C3**: the same as the caller above, towards the
//!   caller's switch) or via `peer` (**F4**: wait for the caller's offer, `accept`, answer).
//! - Every attempt ends with the cloud's `outcome`, reported as [`CallUpdate::Outcome`] and by
//!   [`CallHandle::wait_outcome`].
//!
//! One dispatcher task reads the cloud connection and routes each message by `call_id` to its
//! call's task; each call task feeds the call core and carries out its actions on its media
//! session. The decisions (what to send, when a call is connected, how it ends and in which
//! words) are the core's, the same as in the browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use trunkline_call::{Action, Call, Input, LocalCandidate, UserAction, Via};
use trunkline_media::g711::Law;
use trunkline_protocol::{
    CallEvent, CallId, ClientMsg, DeclineReason, DirectServerMsg, ErrorCode, IncomingVia, Outcome, ServerMsg, SignalPayload,
};

use crate::signal::{self, Session, SignalClient, SignalError, SignalInbox, SignalSender};
use crate::webrtc::{AudioSource, MediaEvent, MediaSession, PeerOptions, ReadyRtcs, WebRtcError, WebRtcPeer, ready_rtcs};
use crate::ws::TlsOptions;
use str0m::IceConnectionState;

#[derive(Debug, thiserror::Error)]
pub enum SoftphoneError {
    #[error(transparent)]
    Signal(#[from] SignalError),
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
    /// After the far end's answer (SDP): for the WebRTC connection (ICE + DTLS) to come up;
    /// else the call ends "Could not connect — network" (`connect_failed`).
    pub direct: Duration,
    /// F4 callee: for the caller's offer after answering.
    pub offer: Duration,
    /// After a local hangup, or after the media leg ended: for the cloud's `outcome`.
    pub outcome_grace: Duration,
    /// A connected call that received audio and then none for this long counts its media path
    /// as down (like ICE `disconnected`; back when packets come again): str0m reports
    /// `disconnected` only once its consent checks time out. `None`: ICE alone decides.
    pub media_silence: Option<Duration>,
    /// How long a media path that was up may stay down before the call ends `media_lost`
    /// (the call core's [`trunkline_call::MEDIA_LOSS_GRACE_MS`] by default).
    pub media_loss_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            direct: Duration::from_secs(10),
            offer: Duration::from_secs(10),
            outcome_grace: Duration::from_secs(5),
            media_silence: Some(Duration::from_secs(4)),
            media_loss_grace: Duration::from_millis(trunkline_call::MEDIA_LOSS_GRACE_MS as u64),
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
}

/// The DataChannel a caller presents its key on (C14 over WebRTC).
pub use trunkline_call::DIRECT_CHANNEL;

impl SoftphoneConfig {
    pub fn new(server: impl Into<String>, number: impl Into<String>, password: impl Into<String>) -> Self {
        SoftphoneConfig {
            server: server.into(),
            number: number.into(),
            password: password.into(),
            media: PeerOptions::default(),
            tls: TlsOptions::default(),
            timeouts: Timeouts::default(),
        }
    }
}

struct Inner {
    session: Session,
    signal: SignalSender,
    media: PeerOptions,
    /// Calls' `Rtc`s built ahead of them (see [`ReadyRtcs`]).
    rtcs: ReadyRtcs,
    timeouts: Timeouts,
    routes: Mutex<HashMap<CallId, mpsc::UnboundedSender<ServerMsg>>>,
    closed: watch::Sender<Option<String>>,
}

impl Inner {
    fn route(&self, call_id: &str) -> mpsc::UnboundedReceiver<ServerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(call_id.to_string(), tx);
        rx
    }

    fn unroute(&self, call_id: &str) {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(call_id);
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
        // The first calls' `Rtc`s are built while signing in, not when the first call is placed.
        let rtcs = ready_rtcs(&cfg.media);
        let (client, ()) =
            tokio::join!(SignalClient::login(&cfg.server, &cfg.number, &cfg.password, &cfg.tls), rtcs.fill_in_background());
        Ok(Self::start(client?, cfg, rtcs))
    }

    /// Connect and `resume` with a session token (the password in `cfg` is not used).
    pub async fn resume(cfg: SoftphoneConfig, token: &str) -> Result<Softphone, SoftphoneError> {
        let rtcs = ready_rtcs(&cfg.media);
        let (client, ()) = tokio::join!(SignalClient::resume(&cfg.server, token, &cfg.tls), rtcs.fill_in_background());
        Ok(Self::start(client?, cfg, rtcs))
    }

    fn start(client: SignalClient, cfg: SoftphoneConfig, rtcs: ReadyRtcs) -> Softphone {
        let (session, signal, inbox) = client.into_parts();
        let (closed, _) = watch::channel(None);
        let mut media = cfg.media;
        // The server's `stun:` servers (from `welcome`) give a server-reflexive candidate,
        // trickled, unless the options name their own.
        if media.stun.is_empty() {
            media.stun = stun_addrs(&session.ice_servers);
        }
        let inner =
            Arc::new(Inner { session, signal, media, rtcs, timeouts: cfg.timeouts, routes: Mutex::new(HashMap::new()), closed });
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(inner.clone(), inbox, incoming_tx));
        Softphone { inner, incoming: tokio::sync::Mutex::new(incoming_rx) }
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
        // **A → C1**: the core's first action is the `dial`, sent here so a closed connection
        // is an error of this call.
        let (call, _dial) = Call::dial(call_id.clone(), self.inner.session.number.clone(), to.into(), 0.0);
        let (handle, task) = CallTask::new(self.inner.clone(), call, true, to.into(), source, rx);
        task.update(CallUpdate::Dialing { to: to.into() });
        if let Err(e) = self.inner.signal.dial_with_id(&call_id, to) {
            self.inner.unroute(&call_id);
            return Err(e.into());
        }
        tokio::spawn(task.run(None));
        Ok(handle)
    }

    /// The next incoming call, waiting up to `within`.
    pub async fn next_incoming(&self, within: Duration) -> Result<IncomingCall, SoftphoneError> {
        let mut rx = self.incoming.lock().await;
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(call)) => Ok(call),
            Ok(None) => Err(SoftphoneError::SignalClosed),
            Err(_) => Err(SoftphoneError::Timeout { what: "an incoming call".into(), after: within }),
        }
    }

    /// Auto-answer: wait up to `within` for the next incoming call and answer it with `source`.
    pub async fn answer_incoming(&self, source: AudioSource, within: Duration) -> Result<CallHandle, SoftphoneError> {
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

async fn dispatch(inner: Arc<Inner>, mut inbox: SignalInbox, incoming: mpsc::UnboundedSender<IncomingCall>) {
    while let Some(msg) = inbox.recv().await {
        if let ServerMsg::Incoming { call_id, from, from_name, via } = msg {
            let rx = inner.route(&call_id);
            let call = IncomingCall { call_id, from, from_name, via, rx: Some(rx), inner: inner.clone() };
            // Nobody listening (the Softphone is gone): dropping the call stops its routing.
            let _ = incoming.send(call);
            continue;
        }
        match signal::server_msg_call_id(&msg) {
            Some(id) => {
                let tx = inner.routes.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
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
    inner.routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
        let me = self.inner.session.number.clone();
        let (call, _ring) =
            Call::incoming(self.call_id.clone(), me, self.from.clone(), self.from_name.clone(), self.via.clone(), 0.0);
        let (handle, task) = CallTask::new(self.inner.clone(), call, false, self.from.clone(), source, rx);
        task.update(CallUpdate::Incoming { from: self.from.clone(), from_name: self.from_name.clone(), via: self.via.clone() });
        if let IncomingVia::Direct { url, expires_in_ms, .. } = &self.via {
            // C3: the same way to the caller's switch as a C13 caller's.
            task.update(CallUpdate::Connect { url: url.clone(), expires_in_ms: *expires_in_ms });
        }
        tokio::spawn(task.run(Some(Input::User(UserAction::Answer))));
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
    Incoming { from: String, from_name: String, via: IncomingVia },
    /// C13 (caller) / C3 (callee): reach this switch over WebRTC with the one-time key.
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
    /// Progress from the switch on the DataChannel (`progress`, C15).
    GatewayProgress(CallEvent),
    /// ICE + DTLS are up.
    MediaConnected { codec: Option<Law>, after: Option<Duration> },
    /// The first audio packet arrived.
    FirstAudio { after: Option<Duration> },
    /// A DTMF digit arrived.
    Dtmf(char),
    /// The media session ended.
    MediaClosed(String),
    /// The cloud or the gateway refused something for this call.
    Refused { code: ErrorCode, message: String },
    /// The switch ended the call (on the DataChannel).
    DirectEnded(Outcome),
    /// A local hangup was sent.
    HungUp,
    /// Something failed on this side.
    Failed(String),
    /// Final: the cloud's outcome.
    Outcome { outcome: Outcome, duration_ms: Option<u64> },
}

impl std::fmt::Display for CallUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallUpdate::Dialing { to } => write!(f, "A/C1 dialing {to}"),
            CallUpdate::Incoming { from, from_name, via } => match via {
                IncomingVia::Direct { url, .. } => write!(f, "C3 incoming call from {from} ({from_name}) via gateway {url}"),
                IncomingVia::Peer { .. } => write!(f, "F4 incoming call from {from} ({from_name}), browser to browser"),
            },
            CallUpdate::Connect { url, expires_in_ms } => {
                write!(f, "C13 connect to {url} with the one-time key (expires in {expires_in_ms} ms)")
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
            CallUpdate::Outcome { outcome, duration_ms } => {
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
        CallEvent::Ended { outcome, duration_ms } => match duration_ms {
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
    /// The last refusal for this call (cloud `error` or the switch's, on the DataChannel).
    pub refused: Option<(ErrorCode, String)>,
    /// Why the connection to the switch (or the F4 peer) failed: `connect_failed: …` when it
    /// never came up, or the switch's refusal of the key.
    pub direct_error: Option<String>,
    pub direct_outcome: Option<Outcome>,
    /// The cloud's final outcome.
    pub outcome: Option<(Outcome, Option<u64>)>,
    /// A local failure that ended the call without the cloud's outcome.
    pub failure: Option<String>,
    /// The outcome concluded here when the call ended (e.g. `media_lost`), before the cloud's.
    pub local_outcome: Option<Outcome>,
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
            .field("local_outcome", &self.local_outcome)
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
                    return Err(SoftphoneError::CallEnded { what: what.into(), status: s.to_string() });
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let s = rx.borrow().clone();
                    return Err(SoftphoneError::CallEnded { what: what.into(), status: s.to_string() });
                }
                Err(_) => {
                    return Err(SoftphoneError::Timeout { what: what.into(), after: within });
                }
            }
        }
    }

    /// Wait until the callee answered.
    pub async fn wait_answered(&self, within: Duration) -> Result<(), SoftphoneError> {
        self.wait_for("the answer", within, |s| s.answered).await.map(|_| ())
    }

    /// Wait until the media session is negotiated and connected (ICE + DTLS).
    pub async fn wait_media(&self, within: Duration) -> Result<Arc<MediaSession>, SoftphoneError> {
        let start = tokio::time::Instant::now();
        let s = self.wait_for("media", within, |s| s.media.is_some()).await?;
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
    pub async fn wait_outcome(&self, within: Duration) -> Result<(Outcome, Option<u64>), SoftphoneError> {
        let s = self.wait_for("the outcome", within, |s| s.outcome.is_some()).await?;
        Ok(s.outcome.expect("checked"))
    }

    /// Wait until the call task has finished (outcome received or the call failed).
    pub async fn wait_finished(&self, within: Duration) -> Result<CallStatus, SoftphoneError> {
        let mut rx = self.status.clone();
        let r = tokio::time::timeout(within, rx.wait_for(|s| s.finished)).await;
        match r {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Ok(self.status()),
            Err(_) => Err(SoftphoneError::Timeout { what: "the end of the call".into(), after: within }),
        }
    }

    /// What arrived so far (empty before media).
    pub fn recording(&self) -> Vec<i16> {
        self.media().map(|m| m.recording()).unwrap_or_default()
    }
}

/// One call's task: it feeds the call core ([`trunkline_call::Call`]) with what the cloud, the
/// media session (and its DataChannel), the user (the handle) and the clock say, and carries out
/// the core's actions on str0m. Progress lines and the status are derived from both.
struct CallTask {
    inner: Arc<Inner>,
    call: Call,
    /// The core's clock: `now` is milliseconds since this instant.
    epoch: tokio::time::Instant,
    source: AudioSource,
    rx: mpsc::UnboundedReceiver<ServerMsg>,
    cloud_open: bool,
    cmds: mpsc::UnboundedReceiver<CallCmd>,
    cmds_open: bool,
    status: watch::Sender<CallStatus>,
    updates: mpsc::UnboundedSender<CallUpdate>,
    /// Our offer is out; the peer waits for the far end's answer.
    pending_peer: Option<WebRtcPeer>,
    media: Option<Arc<MediaSession>>,
    media_events: Option<tokio::sync::broadcast::Receiver<MediaEvent>>,
    /// Events the session sent before we subscribed (its task may run at once on another
    /// worker), handled first.
    early_events: std::collections::VecDeque<MediaEvent>,
    /// The core's failure text already reported as [`CallUpdate::Failed`].
    failure_reported: bool,
    /// Over locally: wait for the cloud's outcome until then.
    grace: Option<tokio::time::Instant>,
    done: bool,
    /// The media path as seen here: ICE `disconnected`, or no audio for `media_silence`.
    path: PathWatch,
}

/// Whether the media path of a call is down, from str0m's ICE state and the audio received.
#[derive(Default)]
struct PathWatch {
    ice_down: bool,
    /// Audio packets received at the last check, and since when that count has not changed.
    rx: Option<(u64, tokio::time::Instant)>,
    silent: bool,
    /// [`Input::MediaDown`] was fed (and no [`Input::MediaUp`] since).
    reported_down: bool,
    next_check: Option<tokio::time::Instant>,
}

/// How often the audio counter is looked at while a call is connected.
const PATH_CHECK: Duration = Duration::from_millis(500);

impl CallTask {
    fn new(
        inner: Arc<Inner>,
        mut call: Call,
        outgoing: bool,
        remote: String,
        source: AudioSource,
        rx: mpsc::UnboundedReceiver<ServerMsg>,
    ) -> (CallHandle, CallTask) {
        let (status_tx, status_rx) = watch::channel(CallStatus::default());
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        call.connect_timeout_ms = inner.timeouts.direct.as_secs_f64() * 1000.0;
        call.offer_timeout_ms = inner.timeouts.offer.as_secs_f64() * 1000.0;
        call.media_loss_grace_ms = inner.timeouts.media_loss_grace.as_secs_f64() * 1000.0;
        let handle = CallHandle {
            call_id: call.call_id.clone(),
            outgoing,
            remote,
            status: status_rx,
            updates: tokio::sync::Mutex::new(updates_rx),
            cmd: cmd_tx,
        };
        let task = CallTask {
            inner,
            call,
            epoch: tokio::time::Instant::now(),
            source,
            rx,
            cloud_open: true,
            cmds: cmd_rx,
            cmds_open: true,
            status: status_tx,
            updates: updates_tx,
            pending_peer: None,
            media: None,
            media_events: None,
            early_events: Default::default(),
            failure_reported: false,
            grace: None,
            done: false,
            path: PathWatch::default(),
        };
        (handle, task)
    }

    fn update(&self, u: CallUpdate) {
        tracing::debug!(call_id = %self.call.call_id, "{u}");
        let _ = self.updates.send(u);
    }

    fn set_status(&self, f: impl FnOnce(&mut CallStatus)) {
        self.status.send_modify(f);
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    async fn run(mut self, first: Option<Input>) {
        if let Some(input) = first {
            self.step(input).await;
        }
        while !self.done {
            if let Some(e) = self.early_events.pop_front() {
                self.on_media(Some(e)).await;
                continue;
            }
            let core_deadline = self.call.next_deadline().map(|ms| self.epoch + Duration::from_secs_f64(ms.max(0.0) / 1000.0));
            if self.path.next_check.is_none() && self.call.media_up && !self.call.is_over() {
                self.path.next_check = Some(tokio::time::Instant::now() + PATH_CHECK);
            }
            let deadline = [self.grace, core_deadline, self.path.next_check].into_iter().flatten().min();
            tokio::select! {
                m = self.rx.recv(), if self.cloud_open => match m {
                    Some(m) => self.on_cloud(m).await,
                    None => {
                        self.cloud_open = false;
                        let why = self.inner.closed.borrow().clone().unwrap_or_else(|| "closed".into());
                        tracing::debug!("call {}: signal connection lost: {why}", self.call.call_id);
                        self.step(Input::CloudLost).await;
                    }
                },
                e = next_media(&mut self.media_events) => self.on_media(e).await,
                c = self.cmds.recv(), if self.cmds_open => {
                    if c.is_none() {
                        // The handle was dropped: hang up and finish quietly.
                        self.cmds_open = false;
                    }
                    if !self.call.is_over() {
                        self.update(CallUpdate::HungUp);
                    }
                    self.step(Input::User(UserAction::Hangup)).await;
                }
                _ = sleep_until(deadline) => self.on_deadline().await,
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        if let Some(m) = self.media.take() {
            m.close().await;
        }
        self.inner.unroute(&self.call.call_id);
        self.set_status(|s| s.finished = true);
    }

    /// Feed one input, carry out the actions (which may feed more), then publish the status.
    async fn step(&mut self, first: Input) {
        let mut inputs = std::collections::VecDeque::from([first]);
        while let Some(input) = inputs.pop_front() {
            let now = self.now();
            for action in self.call.on(input, now) {
                self.act(action, &mut inputs).await;
            }
        }
        self.publish();
    }

    async fn act(&mut self, action: Action, inputs: &mut std::collections::VecDeque<Input>) {
        match action {
            Action::Cloud(msg) => {
                match &msg {
                    ClientMsg::DirectSignal { payload: SignalPayload::Offer { .. }, .. }
                    | ClientMsg::Signal { payload: SignalPayload::Offer { .. }, .. } => self.update(CallUpdate::OfferSent),
                    ClientMsg::Accept { .. } => self.update(CallUpdate::Accepted),
                    ClientMsg::Signal { payload: SignalPayload::Answer { .. }, .. } => self.update(CallUpdate::Answer),
                    ClientMsg::ConnectFailed { reason, .. } => {
                        let e = format!("connect_failed: {reason}");
                        self.set_status(|s| s.direct_error = Some(e));
                    }
                    _ => {}
                }
                if let Err(e) = self.inner.signal.send(&msg) {
                    tracing::debug!("call {}: cannot send {}: {e}", self.call.call_id, msg.kind());
                }
            }
            Action::Direct(msg) => match &self.media {
                Some(m) => {
                    if let Err(e) = m.channel_send(&msg.encode()) {
                        tracing::debug!("call {}: DataChannel: {e}", self.call.call_id);
                    }
                }
                None => tracing::debug!("call {}: no DataChannel for {}", self.call.call_id, msg.encode()),
            },
            Action::MakeOffer { channel } => {
                let r = async {
                    let mut peer = WebRtcPeer::bind_ready(self.inner.media.clone(), &self.inner.rtcs).await?;
                    let offer = if channel { peer.create_offer_with_channel(DIRECT_CHANNEL)? } else { peer.create_offer()? };
                    Ok::<_, WebRtcError>((peer, offer))
                }
                .await;
                match r {
                    Ok((peer, offer)) => {
                        self.pending_peer = Some(peer);
                        inputs.push_back(Input::LocalOffer(offer));
                    }
                    Err(e) => inputs.push_back(Input::MediaFailed(format!("Call failed — WebRTC: {e}"))),
                }
            }
            Action::MakeAnswer { offer } => {
                let r = async {
                    let peer = WebRtcPeer::bind_ready(self.inner.media.clone(), &self.inner.rtcs).await?;
                    peer.accept_offer(&offer, self.source.clone())
                }
                .await;
                match r {
                    Ok((answer, media)) => {
                        self.set_media(media);
                        inputs.push_back(Input::RemoteSet);
                        inputs.push_back(Input::LocalAnswer(answer));
                    }
                    Err(e) => inputs.push_back(Input::MediaFailed(format!("Call failed — the caller's offer: {e}"))),
                }
            }
            Action::ApplyAnswer { sdp } => {
                let Some(peer) = self.pending_peer.take() else {
                    tracing::debug!("call {}: an answer without an offer", self.call.call_id);
                    return;
                };
                match peer.accept_answer(&sdp, self.source.clone()) {
                    Ok(media) => {
                        // F4: our `Answer` update is sent with the answer; here it arrived.
                        self.update(CallUpdate::Answer);
                        self.set_media(media);
                        inputs.push_back(Input::RemoteSet);
                    }
                    Err(e) => inputs.push_back(Input::MediaFailed(format!("Call failed — the far end's answer: {e}"))),
                }
            }
            Action::AddRemoteIce { candidate, .. } => {
                if let Some(m) = &self.media
                    && let Err(e) = m.add_remote_candidate(&candidate)
                {
                    tracing::debug!("call {}: remote candidate: {e}", self.call.call_id);
                }
            }
            Action::SendDtmf(d) => {
                if let Some(m) = &self.media
                    && let Err(e) = m.send_dtmf(d)
                {
                    tracing::debug!("call {}: DTMF: {e}", self.call.call_id);
                }
            }
            // No loudspeaker or microphone switch here: the source is the test's.
            Action::SetMute(_) | Action::SetHold(_) | Action::StartRingtone | Action::StopRingtone => {}
            Action::CloseMedia => {
                self.pending_peer = None;
                if let Some(m) = &self.media {
                    m.close().await;
                }
            }
            Action::Finished => {}
        }
    }

    /// The status and the failure line from the core's state; whether the task is done.
    fn publish(&mut self) {
        let c = &self.call;
        let answered = c.far_connected;
        let refused = c.refusal.clone();
        let failure = c.failure.clone();
        if let Some(f) = &failure
            && !self.failure_reported
        {
            self.failure_reported = true;
            self.update(CallUpdate::Failed(f.clone()));
        }
        let local_outcome = if c.is_over() { c.outcome } else { None };
        if local_outcome == Some(Outcome::MediaLost) && !self.failure_reported {
            self.failure_reported = true;
            self.update(CallUpdate::Failed(c.outcome_line().unwrap_or_default()));
        }
        self.status.send_if_modified(|s| {
            let changed = local_outcome.is_some() && s.local_outcome.is_none();
            if changed {
                s.local_outcome = local_outcome;
            }
            let before = (s.answered, s.refused.clone(), s.failure.clone());
            s.answered |= answered;
            if refused.is_some() {
                s.refused = refused;
            }
            if failure.is_some() {
                s.failure = failure;
            }
            changed || before != (s.answered, s.refused.clone(), s.failure.clone())
        });
        if self.call.is_over() {
            if self.call.cloud_final || !self.cloud_open {
                self.done = true;
            } else if self.grace.is_none() {
                // Over here; the cloud's outcome (final, with the duration) is on its way.
                self.grace = Some(tokio::time::Instant::now() + self.inner.timeouts.outcome_grace);
            }
        }
    }

    async fn on_cloud(&mut self, m: ServerMsg) {
        match &m {
            ServerMsg::Connect { url, expires_in_ms, .. } => {
                self.update(CallUpdate::Connect { url: url.clone(), expires_in_ms: *expires_in_ms })
            }
            ServerMsg::Peer { .. } => self.update(CallUpdate::Peer),
            ServerMsg::CallEvent { event, .. } => {
                if *event == CallEvent::Ringing {
                    self.set_status(|s| s.ringing = true);
                }
                self.update(CallUpdate::Event(event.clone()));
            }
            ServerMsg::Outcome { outcome, duration_ms, .. } => {
                let (outcome, duration_ms) = (*outcome, *duration_ms);
                self.update(CallUpdate::Outcome { outcome, duration_ms });
                self.set_status(|s| s.outcome = Some((outcome, duration_ms)));
                if !self.call.is_over() && matches!(self.call.via, Via::Direct { .. }) {
                    tracing::info!(
                        "call {}: the cloud closed the call ({outcome}); media goes on until the switch ends it",
                        self.call.call_id
                    );
                }
            }
            ServerMsg::Error { code, message, .. } => {
                self.update(CallUpdate::Refused { code: *code, message: message.clone() });
            }
            _ => {}
        }
        self.step(Input::Cloud(m)).await;
    }

    fn set_media(&mut self, media: MediaSession) {
        let media = Arc::new(media);
        let (history, rx) = media.subscribe_with_history();
        self.media_events = Some(rx);
        let m = media.clone();
        self.set_status(|s| s.media = Some(m));
        self.media = Some(media);
        self.early_events.extend(history);
    }

    async fn on_media(&mut self, e: Option<MediaEvent>) {
        let Some(e) = e else {
            self.media_events = None;
            return;
        };
        let input = match e {
            MediaEvent::Connected => {
                let s = self.media.as_ref().map(|m| m.stats()).unwrap_or_default();
                self.update(CallUpdate::MediaConnected { codec: s.send_codec, after: s.connected_after });
                Input::MediaUp
            }
            MediaEvent::FirstAudio => {
                let s = self.media.as_ref().map(|m| m.stats()).unwrap_or_default();
                self.update(CallUpdate::FirstAudio { after: s.first_audio_after });
                return;
            }
            MediaEvent::Dtmf(d) => {
                self.update(CallUpdate::Dtmf(d));
                return;
            }
            MediaEvent::ChannelOpen => Input::ChannelOpen,
            MediaEvent::ChannelText(text) => match DirectServerMsg::decode(&text) {
                Ok(msg) => {
                    self.on_switch(&msg);
                    Input::Direct(msg)
                }
                Err(e) => {
                    tracing::debug!("call {}: bad DataChannel message: {e}", self.call.call_id);
                    return;
                }
            },
            MediaEvent::LocalCandidate(candidate) => {
                Input::LocalIce(Some(LocalCandidate { candidate, sdp_mid: None, sdp_m_line_index: Some(0) }))
            }
            MediaEvent::Closed(why) => {
                let why_peer_closed = why == crate::webrtc::CLOSED_BY_PEER;
                self.update(CallUpdate::MediaClosed(why));
                self.media_events = None;
                // To a switch the DataChannel goes with the connection. To a browser (F4): a
                // deliberate close by the far end is its hang-up, whose `hangup` is on its way
                // to the cloud (which then sends the outcome): only the media is down, with the
                // usual grace, not a failure to report (that raced the hang-up and recorded
                // `connect_failed`). Anything else: the connection failed (or we closed it: the
                // core then ignores it).
                if matches!(self.call.via, Via::Direct { .. }) {
                    Input::ChannelClosed
                } else if why_peer_closed {
                    Input::MediaDown
                } else {
                    Input::ConnectionFailed
                }
            }
            MediaEvent::IceState(state) => {
                // str0m has no `failed`: `disconnected` may come back (consent checks answered).
                self.path.ice_down = state == IceConnectionState::Disconnected;
                self.update_path().await;
                return;
            }
        };
        self.step(input).await;
    }

    /// Audio received lately? A connected call whose audio stopped for `media_silence` counts
    /// its path as down, as does ICE `disconnected`.
    async fn check_path(&mut self) {
        let now = tokio::time::Instant::now();
        self.path.next_check = None;
        if self.call.is_over() || !self.call.media_up {
            return;
        }
        let Some(m) = &self.media else { return };
        let got = m.stats().packets_received;
        // Silence counts only once audio has flowed (a phone that never sends is not a loss).
        if got > 0 {
            match self.path.rx {
                Some((n, _)) if n == got => {}
                _ => self.path.rx = Some((got, now)),
            }
        }
        self.path.silent = match (self.inner.timeouts.media_silence, self.path.rx) {
            (Some(limit), Some((_, since))) => now.duration_since(since) >= limit,
            _ => false,
        };
        self.update_path().await;
    }

    /// Tell the call core when the path goes down or comes back.
    async fn update_path(&mut self) {
        let down = self.path.ice_down || self.path.silent;
        // Only a path that was up (str0m's `Connected`: ICE + DTLS) can go down or come back;
        // before that the connect deadline rules (and `MediaUp` would claim DTLS too early).
        if down == self.path.reported_down || self.call.is_over() || !self.call.media_up {
            return;
        }
        self.path.reported_down = down;
        let (ice, silent) = (self.path.ice_down, self.path.silent);
        let what = if down { "down" } else { "back" };
        tracing::info!(call_id = %self.call.call_id, ice_disconnected = ice, no_audio = silent, "media path {what}");
        self.step(if down { Input::MediaDown } else { Input::MediaUp }).await;
    }

    /// Progress lines and status of the switch's messages on the DataChannel.
    fn on_switch(&self, msg: &DirectServerMsg) {
        match msg {
            DirectServerMsg::Accepted { .. } => self.update(CallUpdate::KeyAccepted),
            DirectServerMsg::Progress { event } => {
                if *event == CallEvent::Ringing {
                    self.set_status(|s| s.ringing = true);
                }
                if let CallEvent::Ended { outcome, .. } = event {
                    let o = *outcome;
                    self.set_status(|s| s.direct_outcome = Some(o));
                }
                self.update(CallUpdate::GatewayProgress(event.clone()));
            }
            DirectServerMsg::Ended { outcome } => {
                let o = *outcome;
                self.set_status(|s| s.direct_outcome = Some(o));
                self.update(CallUpdate::DirectEnded(o));
            }
            DirectServerMsg::Error { code, message } => {
                self.update(CallUpdate::Refused { code: *code, message: message.clone() });
                let (code, message) = (*code, message.clone());
                self.set_status(|s| {
                    s.refused = Some((code, message.clone()));
                    s.direct_error.get_or_insert(format!("{code}: {message}"));
                });
            }
            DirectServerMsg::Answer { .. } => {}
        }
    }

    async fn on_deadline(&mut self) {
        let now = tokio::time::Instant::now();
        if self.path.next_check.is_some_and(|t| t <= now) {
            self.check_path().await;
        }
        if self.call.next_deadline().is_some_and(|ms| self.epoch + Duration::from_secs_f64(ms.max(0.0) / 1000.0) <= now) {
            self.step(Input::Tick).await;
        }
        if self.grace.is_some_and(|t| t <= now) {
            self.grace = None;
            if self.status.borrow().outcome.is_none() {
                let why = match self.status.borrow().direct_outcome {
                    Some(o) => format!("no outcome from the signal server (the switch said {o})"),
                    None => "no outcome from the signal server".into(),
                };
                self.update(CallUpdate::Failed(why.clone()));
                self.set_status(|s| {
                    s.failure.get_or_insert(why);
                });
            }
            self.done = true;
        }
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

async fn next_media(rx: &mut Option<tokio::sync::broadcast::Receiver<MediaEvent>>) -> Option<MediaEvent> {
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
