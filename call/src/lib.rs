//! The softphone's call state machine — one, sans-IO, like the server's steering engine. It takes
//! inputs (what the user did, what the signal server / the gateway (on the DataChannel) / the
//! WebRTC stack said) with `now` (ms, the driver's clock) passed in, and returns the [`Action`]s
//! the driver carries out. Two drivers use it: the browser softphone (`web/src/phone.rs`, on the
//! browser's `RTCPeerConnection`) and the headless client (`client/src/softphone.rs`, on str0m).
//! No I/O and no clock here: every branch is tested below without sockets or sleeps.
//!
//! Flows (patent CN110012057B step letters):
//! - outgoing `dial` (**A → C1**), then either `connect` (**C13**, F1) or `peer` (**F4**: offer to
//!   the callee browser through the cloud's `signal` relay with the key, trickle ICE);
//! - F1 is "C14 over WebRTC": offer audio + a DataChannel labelled [`DIRECT_CHANNEL`] to the
//!   gateway through the cloud (`direct_signal` offer, trickled `ice`, `end_of_candidates`; the
//!   gateway's `answer` and `ice` come back the same way); ICE + DTLS go straight to the gateway;
//!   once the channel opens, `present` the key on it (**C14**), and the gateway answers there with
//!   `accepted` (or a typed `error`: nothing rang), `progress` and `ended` (**C15**). The `url`
//!   of `connect` (`switch:<id>`, the carrying switch's name) is not needed here;
//! - incoming `via: direct` (**C3**, F3): when the user answers, the same as the F1 caller, as
//!   the callee; `via: peer` (**F4**: `accept` with the key, answer through `signal`).
//! - "Connected" is shown only when the far end answered AND the peer connection is connected;
//!   a connection that fails (or is not up [`CONNECT_TIMEOUT_MS`] after the answer) ends the call
//!   with [`NETWORK_FAILURE`].
//! - a connected call whose media path dies (ICE `disconnected`, or no media packets, reported
//!   as [`Input::MediaDown`]) gets [`MEDIA_LOSS_GRACE_MS`] to come back ([`Input::MediaUp`]);
//!   still down then (or `failed` at once) it ends `media_lost` ("Call dropped — network lost"),
//!   told to the cloud with `connect_failed` so the record says so (e.g. the gateway crashed);
//! - every attempt ends with one outcome, shown in words ([`outcome_text`]).

use trunkline_protocol::{
    CallEvent, ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode, IncomingVia, Outcome, PROTOCOL_VERSION,
    ServerMsg, SignalPayload,
};

/// Who started the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// How the media leg is negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Not known yet (outgoing, before `connect` / `peer`).
    Pending,
    /// A gateway, C14 over WebRTC (C13 / C3), with the one-time key for its DataChannel.
    Direct { key: String },
    /// Another browser through the cloud relay (F4), with the call's key.
    Peer { key: String },
}

/// What the call screen shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Outgoing: `dial` sent, waiting for the cloud.
    Calling,
    /// Incoming: ringing here, waiting for the user.
    Incoming,
    /// Negotiating media (with a gateway or through the F4 relay), or answered and waiting for media.
    Connecting,
    /// The far end is ringing.
    Ringing,
    /// Answered; the timer runs from [`Call::connected_at`].
    Connected,
    /// Over; [`Call::outcome`] / [`Call::failure`] say how.
    Ended,
}

impl Phase {
    /// The stable word in `data-state` of `call-state` (tests match on it).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Calling => "calling",
            Phase::Incoming => "incoming",
            Phase::Connecting => "connecting",
            Phase::Ringing => "ringing",
            Phase::Connected => "connected",
            Phase::Ended => "ended",
        }
    }

    /// What the user reads.
    pub fn label(self, direction: Direction) -> &'static str {
        match (self, direction) {
            (Phase::Calling, _) => "Calling…",
            (Phase::Incoming, _) => "Incoming call",
            (Phase::Connecting, _) => "Connecting…",
            (Phase::Ringing, _) => "Ringing…",
            (Phase::Connected, _) => "Connected",
            (Phase::Ended, _) => "Call ended",
        }
    }
}

/// The label of the DataChannel the key is presented on (C14 over WebRTC).
pub const DIRECT_CHANNEL: &str = "trunkline-direct";

/// The peer connection could not be made (`failed`, or not up in time after the answer).
pub const NETWORK_FAILURE: &str = "Could not connect — network";

/// The peer connection was up and then failed.
pub const NETWORK_LOST: &str = "Call dropped — network lost";

/// How long a media path that was up may stay down ([`Input::MediaDown`]) before the call ends
/// `media_lost` (default of [`Call::media_loss_grace_ms`]). Browsers report ICE `disconnected`
/// after ~5 s of unanswered consent checks and `failed` only after ~30 s (RFC 7675); a gateway
/// that crashed answers nothing, so the outcome shows about 10 s after the crash, while a Wi-Fi
/// hand-over or a short blip that recovers within 5 s keeps the call.
pub const MEDIA_LOSS_GRACE_MS: f64 = 5_000.0;

/// The `reason` of the `connect_failed` that tells the cloud the media path of a connected call
/// was lost (the record's outcome is then `media_lost`).
pub const MEDIA_LOST_REASON: &str = "the media path was lost (no ICE/DTLS connectivity and no media past the grace)";

/// How long after the answer the peer connection may take to come up (default of
/// [`Call::connect_timeout_ms`]).
pub const CONNECT_TIMEOUT_MS: f64 = 15_000.0;

/// F4 callee: how long after the user answered the caller's offer may take to arrive (default of
/// [`Call::offer_timeout_ms`]).
pub const OFFER_TIMEOUT_MS: f64 = 10_000.0;

/// The caller's offer never came (F4 callee).
pub const NO_OFFER: &str = "Could not connect — no offer from the caller";

/// What the user reads when a gateway refuses the key presented on the DataChannel.
pub fn key_refusal_text(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::BadKey => "Call failed — the key was refused".into(),
        ErrorCode::KeyExpired => "Call failed — the key expired".into(),
        ErrorCode::KeyUsed => "Call failed — the key was already used".into(),
        ErrorCode::WrongCaller => "Call failed — the key is for another caller".into(),
        ErrorCode::UnknownCall => "Call failed — the call is over at the gateway".into(),
        _ if message.is_empty() => format!("Call failed — the gateway refused the call ({code})"),
        _ => format!("Call failed — the gateway refused the call: {message}"),
    }
}

/// The outcome of a call attempt in words.
pub fn outcome_text(outcome: Outcome, direction: Direction) -> &'static str {
    match (outcome, direction) {
        (Outcome::Connected, _) => "Call ended",
        (Outcome::RejectedInvalid, _) => "Number does not exist",
        (Outcome::Declined, _) => "Declined",
        (Outcome::Busy, _) => "Busy",
        (Outcome::NoAnswer, Direction::Outgoing) => "No answer",
        (Outcome::NoAnswer, Direction::Incoming) => "Missed call",
        (Outcome::CalleeOffline, _) | (Outcome::SwitchUnavailable, _) => "Unavailable",
        (Outcome::KeyExpired, _) => "Could not connect in time",
        (Outcome::Cancelled, Direction::Outgoing) => "Cancelled",
        (Outcome::Cancelled, Direction::Incoming) => "Missed call",
        (Outcome::Error, _) => "Call failed",
        (Outcome::ConnectFailed, _) => "Could not connect — network",
        (Outcome::MediaLost, _) => NETWORK_LOST,
    }
}

/// `mm:ss` (or `h:mm:ss`) for a call timer or a duration.
pub fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m:02}:{s:02}") }
}

/// The DTMF keys in keypad order: (digit, label of `data-testid` suffix, letters).
pub const DTMF_KEYS: [(char, &str, &str); 12] = [
    ('1', "1", ""),
    ('2', "2", "ABC"),
    ('3', "3", "DEF"),
    ('4', "4", "GHI"),
    ('5', "5", "JKL"),
    ('6', "6", "MNO"),
    ('7', "7", "PQRS"),
    ('8', "8", "TUV"),
    ('9', "9", "WXYZ"),
    ('*', "star", ""),
    ('0', "0", "+"),
    ('#', "hash", ""),
];

/// The `data-testid` of a keypad key.
pub fn dtmf_testid(digit: char) -> Option<String> {
    DTMF_KEYS.iter().find(|k| k.0 == digit).map(|k| format!("dtmf-{}", k.1))
}

/// A key the DTMF keypad accepts from the keyboard.
pub fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || c == '*' || c == '#'
}

/// Cleans what the user typed into the number field: keeps what a number may contain
/// (`A–Z a–z 0–9 + . _ -`), drops spaces, brackets and everything else; at most 32 characters.
pub fn clean_number(input: &str) -> String {
    input.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-')).take(32).collect()
}

/// A locally gathered ICE candidate (trickled: F1/F3 through `direct_signal`, F4 through `signal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCandidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_m_line_index: Option<u16>,
}

/// What the user does on the call screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    Answer,
    Decline,
    Hangup,
    ToggleMute,
    ToggleHold,
    Dtmf(char),
}

/// Everything that can happen to a call.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A message from the signal server about this call.
    Cloud(ServerMsg),
    /// The signal connection dropped.
    CloudLost,
    User(UserAction),
    /// The [`DIRECT_CHANNEL`] DataChannel to the gateway opened (ICE + DTLS + SCTP are up).
    ChannelOpen,
    /// A message from the gateway on the DataChannel (the direct endpoint's messages).
    Direct(DirectServerMsg),
    /// The DataChannel closed.
    ChannelClosed,
    /// The browser made our offer (candidates follow as [`Input::LocalIce`]).
    LocalOffer(String),
    /// The browser made our answer (F4 callee).
    LocalAnswer(String),
    /// A local candidate; `None` once gathering is complete.
    LocalIce(Option<LocalCandidate>),
    /// The far end's description is applied: remote candidates may go in.
    RemoteSet,
    /// The peer connection is connected (ICE + DTLS): media can flow.
    MediaUp,
    /// The peer connection's state became `failed`.
    ConnectionFailed,
    /// The media path stopped working but may come back: ICE `disconnected` (consent checks
    /// unanswered), or no media packets for a while. [`Input::MediaUp`] means it recovered;
    /// before the path was ever up this changes nothing (the connect deadline rules).
    MediaDown,
    /// Microphone, WebRTC or the answer failed on this side.
    MediaFailed(String),
    /// The clock (about once a second while a call is shown): connect deadline, media loss.
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send to the signal server.
    Cloud(ClientMsg),
    /// Send on the gateway's DataChannel.
    Direct(DirectClientMsg),
    /// Get the microphone, create the peer connection (with the server's iceServers), add the
    /// track and — with `channel` — the [`DIRECT_CHANNEL`] DataChannel, then make the offer.
    /// Local candidates are reported as they come ([`Input::LocalIce`]).
    MakeOffer {
        channel: bool,
    },
    /// F4 callee: get the microphone, apply the caller's offer and make the answer (trickle).
    MakeAnswer {
        offer: String,
    },
    /// Apply the far end's answer ([`Input::RemoteSet`] once done).
    ApplyAnswer {
        sdp: String,
    },
    /// Add a remote candidate (only after [`Input::RemoteSet`]).
    AddRemoteIce {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    },
    /// Stop (true) or resume sending the microphone.
    SetMute(bool),
    /// Hold: stop sending and stop playing the far end (true), or resume.
    SetHold(bool),
    /// Send an RFC 4733 digit (RTCDTMFSender.insertDTMF).
    SendDtmf(char),
    StartRingtone,
    StopRingtone,
    /// Close the peer connection (and its DataChannel, after what was sent on it went out)
    /// and release the microphone.
    CloseMedia,
    /// The call is over: record it in the history (the outcome may still be refined by the
    /// cloud's `outcome`).
    Finished,
}

/// A remote candidate waiting for the remote description.
#[derive(Clone, Debug, PartialEq)]
struct RemoteCandidate {
    candidate: String,
    sdp_mid: Option<String>,
    sdp_m_line_index: Option<u16>,
}

/// One call (either direction) and everything the screen shows about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub call_id: String,
    pub direction: Direction,
    /// Our own number (the `caller` presented at a gateway).
    pub me: String,
    /// The other party's number and name.
    pub remote: String,
    pub remote_name: String,
    pub via: Via,
    pub phase: Phase,
    pub muted: bool,
    pub held: bool,
    /// When the call was set up (ms, the driver's clock).
    pub started_at: f64,
    /// When it was connected (answered and media up).
    pub connected_at: Option<f64>,
    /// When it ended.
    pub ended_at: Option<f64>,
    /// The final outcome (the cloud's, else the gateway's, else what we concluded locally).
    pub outcome: Option<Outcome>,
    /// The cloud's duration (ms) of a connected call.
    pub duration_ms: Option<u64>,
    /// Why it failed on this side, when no outcome explains it.
    pub failure: Option<String>,
    /// The cloud sent its final `outcome` (nothing more will come for this call).
    pub cloud_final: bool,
    /// The peer connection is connected (ICE + DTLS).
    pub media_up: bool,
    /// The far end answered (the cloud's or the gateway's `connected`; C3: the key accepted;
    /// F4 callee: our answer sent). "Connected" needs this and [`Call::media_up`].
    pub far_connected: bool,
    /// When the far end's answer (SDP) arrived: the peer connection must be up
    /// [`CONNECT_TIMEOUT_MS`] later.
    pub answered_sdp_at: Option<f64>,
    channel_open: bool,
    direct_accepted: bool,
    /// F4 callee: the caller's offer, kept until the user answers.
    pending_offer: Option<String>,
    /// F4 callee: the user answered before the offer arrived.
    answer_when_offer: bool,
    /// Our offer / answer went out; candidates gathered before wait here.
    description_sent: bool,
    pending_ice: Vec<Option<LocalCandidate>>,
    /// The far end's description is applied; its candidates before that wait here.
    remote_set: bool,
    remote_ice: Vec<RemoteCandidate>,
    media_started: bool,
    hung_up: bool,
    /// The failure text stays whatever outcome the cloud reports later.
    failure_final: bool,
    /// The last refusal for this call: the cloud's `error`, or the gateway's on the DataChannel.
    pub refusal: Option<(ErrorCode, String)>,
    /// How long after the far end's answer (SDP) the connection may take ([`CONNECT_TIMEOUT_MS`]).
    pub connect_timeout_ms: f64,
    /// F4 callee: how long after answering the caller's offer may take ([`OFFER_TIMEOUT_MS`]).
    pub offer_timeout_ms: f64,
    /// F4 callee: when the user answered while the offer had not come yet.
    answered_at: Option<f64>,
    /// How long a media path that was up may stay down ([`MEDIA_LOSS_GRACE_MS`]).
    pub media_loss_grace_ms: f64,
    /// Since when the media path (up before) is down ([`Input::MediaDown`]).
    pub media_down_at: Option<f64>,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    fn new(
        call_id: String,
        direction: Direction,
        me: String,
        remote: String,
        remote_name: String,
        via: Via,
        phase: Phase,
        now: f64,
    ) -> Call {
        Call {
            call_id,
            direction,
            me,
            remote,
            remote_name,
            via,
            phase,
            muted: false,
            held: false,
            started_at: now,
            connected_at: None,
            ended_at: None,
            outcome: None,
            duration_ms: None,
            failure: None,
            cloud_final: false,
            media_up: false,
            far_connected: false,
            answered_sdp_at: None,
            channel_open: false,
            direct_accepted: false,
            pending_offer: None,
            answer_when_offer: false,
            description_sent: false,
            pending_ice: Vec::new(),
            remote_set: false,
            remote_ice: Vec::new(),
            media_started: false,
            hung_up: false,
            failure_final: false,
            refusal: None,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            offer_timeout_ms: OFFER_TIMEOUT_MS,
            answered_at: None,
            media_loss_grace_ms: MEDIA_LOSS_GRACE_MS,
            media_down_at: None,
        }
    }

    /// When the next [`Input::Tick`] can change something (a deadline), if any: a driver with
    /// timers sleeps until then; the browser simply ticks about once a second.
    pub fn next_deadline(&self) -> Option<f64> {
        if self.phase == Phase::Ended {
            return None;
        }
        let connect = self.answered_sdp_at.filter(|_| !self.media_up).map(|t| t + self.connect_timeout_ms);
        let offer = self.answered_at.filter(|_| self.answer_when_offer).map(|t| t + self.offer_timeout_ms);
        let lost = self.media_down_at.map(|t| t + self.media_loss_grace_ms);
        [connect, offer, lost].into_iter().flatten().reduce(f64::min)
    }

    /// **A → C1**: place a call to `to`.
    pub fn dial(call_id: String, me: String, to: String, now: f64) -> (Call, Vec<Action>) {
        let call =
            Call::new(call_id.clone(), Direction::Outgoing, me, to.clone(), String::new(), Via::Pending, Phase::Calling, now);
        (call, vec![Action::Cloud(ClientMsg::Dial { call_id, to })])
    }

    /// An `incoming` call: ring.
    pub fn incoming(
        call_id: String,
        me: String,
        from: String,
        from_name: String,
        via: IncomingVia,
        now: f64,
    ) -> (Call, Vec<Action>) {
        let via = match via {
            // The `url` names the caller's switch; C14 goes over WebRTC through the cloud.
            IncomingVia::Direct { key, .. } => Via::Direct { key },
            IncomingVia::Peer { key } => Via::Peer { key },
        };
        let call = Call::new(call_id, Direction::Incoming, me, from, from_name, via, Phase::Incoming, now);
        (call, vec![Action::StartRingtone])
    }

    pub fn is_over(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The text of the `call-outcome` line once the call is over.
    pub fn outcome_line(&self) -> Option<String> {
        if self.phase != Phase::Ended {
            return None;
        }
        if let Some(f) = &self.failure {
            return Some(f.clone());
        }
        let o = self.outcome.unwrap_or(Outcome::Error);
        let text = outcome_text(o, self.direction);
        match (o, self.duration()) {
            (Outcome::Connected | Outcome::MediaLost, Some(d)) => Some(format!("{text} · {}", format_duration(d))),
            _ => Some(text.to_string()),
        }
    }

    /// How long the call was connected (the cloud's figure when there is one).
    pub fn duration(&self) -> Option<u64> {
        if let Some(d) = self.duration_ms {
            return Some(d);
        }
        match (self.connected_at, self.ended_at) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as u64),
            _ => None,
        }
    }

    /// The call timer at `now`.
    pub fn elapsed(&self, now: f64) -> Option<u64> {
        let start = self.connected_at?;
        let end = self.ended_at.unwrap_or(now);
        Some((end - start).max(0.0) as u64)
    }

    /// The far end answered; "Connected" once media is up too.
    fn far_answered(&mut self, now: f64) {
        if self.phase == Phase::Ended {
            return;
        }
        self.far_connected = true;
        self.update_connected(now);
    }

    /// Show "Connected" (and start the timer) only when the far end answered and the peer
    /// connection is up; until then an answered call says "Connecting…".
    fn update_connected(&mut self, now: f64) {
        if self.phase == Phase::Ended || !self.far_connected {
            return;
        }
        if self.media_up {
            self.phase = Phase::Connected;
            if self.connected_at.is_none() {
                self.connected_at = Some(now);
            }
        } else if self.phase != Phase::Connected {
            self.phase = Phase::Connecting;
        }
    }

    /// End the call locally: stop everything that runs and record it.
    fn end(&mut self, now: f64, actions: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        let was_ringing_here = self.phase == Phase::Incoming;
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
        if was_ringing_here {
            actions.push(Action::StopRingtone);
        }
        if self.media_started {
            actions.push(Action::CloseMedia);
        }
        self.channel_open = false;
        actions.push(Action::Finished);
    }

    fn fail(&mut self, why: String, now: f64, actions: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.end(now, actions);
    }

    /// The peer connection failed or did not come up in time: end the call with its own text,
    /// and end it towards the gateway (on the channel, if the key was accepted) and the cloud.
    /// A connected call's loss is the typed outcome `media_lost`, which the cloud records.
    fn network_failed(&mut self, now: f64, a: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        let lost = self.connected_at.is_some();
        if lost {
            self.outcome = Some(Outcome::MediaLost);
            self.failure = None;
        } else {
            self.failure = Some(NETWORK_FAILURE.into());
        }
        self.failure_final = true;
        if !self.hung_up {
            self.hung_up = true;
            if self.channel_open && self.direct_accepted {
                // Best effort: the channel may be as dead as the rest of the connection.
                a.push(Action::Direct(DirectClientMsg::Hangup));
            }
            if !self.cloud_final && lost {
                // The cloud has the call as connected: `connect_failed` now means "media lost"
                // (a `hangup` through a switch is refused: the gateway may be gone).
                a.push(Action::Cloud(ClientMsg::ConnectFailed {
                    call_id: self.call_id.clone(),
                    reason: MEDIA_LOST_REASON.into(),
                }));
            } else if !self.cloud_final {
                let to_cloud = match self.cloud_end_msg() {
                    // A call through a switch that the cloud has as connected ends at the gateway.
                    Some(ClientMsg::Hangup { .. }) if matches!(self.via, Via::Direct { .. }) => None,
                    // Never connected: the cloud records why (`connect_failed`), not a cancel.
                    Some(_) if self.connected_at.is_none() => Some(ClientMsg::ConnectFailed {
                        call_id: self.call_id.clone(),
                        reason: "the WebRTC connection to the far end failed or did not come up in time".into(),
                    }),
                    m => m,
                };
                a.extend(to_cloud.map(Action::Cloud));
            }
        }
        self.end(now, a);
    }

    /// How to end this call at the cloud: cancel (caller, before the answer), decline (callee,
    /// before the answer), or hang up (F4, answered).
    fn cloud_end_msg(&self) -> Option<ClientMsg> {
        let call_id = self.call_id.clone();
        Some(match (&self.via, self.direction) {
            (Via::Peer { .. }, _) if self.far_connected => ClientMsg::Hangup { call_id },
            (Via::Direct { .. }, _) if self.far_connected => ClientMsg::Hangup { call_id },
            (_, Direction::Outgoing) => ClientMsg::Cancel { call_id },
            (_, Direction::Incoming) => ClientMsg::Decline { call_id, reason: DeclineReason::Declined },
        })
    }

    /// Feed one input; returns what to do.
    pub fn on(&mut self, input: Input, now: f64) -> Vec<Action> {
        let mut a = Vec::new();
        match input {
            Input::Cloud(msg) => self.on_cloud(msg, now, &mut a),
            Input::CloudLost => {
                // Once the key is accepted on the DataChannel the call no longer needs the cloud;
                // before that (the answer and candidates come through it), and for F4, it does.
                let direct_leg = matches!(self.via, Via::Direct { .. }) && self.channel_open && self.direct_accepted;
                if !direct_leg {
                    self.fail("Connection to the server lost".into(), now, &mut a);
                }
            }
            Input::User(u) => self.on_user(u, now, &mut a),
            Input::ChannelOpen => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.channel_open = true;
                if let Via::Direct { key } = &self.via {
                    // C14, claim 10, inside DTLS: present the one-time key; `caller` is who
                    // connects (the caller in F1, the switchless callee in C3).
                    a.push(Action::Direct(DirectClientMsg::Present {
                        v: PROTOCOL_VERSION,
                        call_id: self.call_id.clone(),
                        key: key.clone(),
                        caller: self.me.clone(),
                    }));
                }
            }
            Input::Direct(msg) => self.on_direct(msg, now, &mut a),
            Input::ChannelClosed => {
                let was_open = self.channel_open;
                self.channel_open = false;
                if self.phase != Phase::Ended {
                    if !was_open {
                        self.network_failed(now, &mut a);
                    } else {
                        // The gateway went away without `ended`.
                        self.cloud_give_up(&mut a);
                        self.fail("Connection to the gateway lost".into(), now, &mut a);
                    }
                }
            }
            Input::LocalOffer(sdp) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                match self.via.clone() {
                    Via::Direct { .. } => {
                        a.push(Action::Cloud(ClientMsg::DirectSignal {
                            call_id: self.call_id.clone(),
                            payload: SignalPayload::Offer { sdp },
                        }));
                        self.description_sent = true;
                        self.flush_ice(&mut a);
                    }
                    Via::Peer { key } => {
                        a.push(Action::Cloud(ClientMsg::Signal {
                            call_id: self.call_id.clone(),
                            key,
                            payload: SignalPayload::Offer { sdp },
                        }));
                        self.description_sent = true;
                        self.flush_ice(&mut a);
                    }
                    Via::Pending => {}
                }
            }
            Input::LocalAnswer(sdp) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                if let Via::Peer { key } = self.via.clone() {
                    // F4 callee: take the call with the key, then answer.
                    a.push(Action::Cloud(ClientMsg::Accept { call_id: self.call_id.clone(), key: key.clone() }));
                    a.push(Action::Cloud(ClientMsg::Signal {
                        call_id: self.call_id.clone(),
                        key,
                        payload: SignalPayload::Answer { sdp },
                    }));
                    self.description_sent = true;
                    self.flush_ice(&mut a);
                    self.answered_sdp_at.get_or_insert(now);
                    self.far_answered(now);
                }
            }
            Input::LocalIce(c) => {
                if self.phase == Phase::Ended || self.via == Via::Pending {
                    return a;
                }
                self.pending_ice.push(c);
                if self.description_sent {
                    self.flush_ice(&mut a);
                }
            }
            Input::RemoteSet => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.remote_set = true;
                for c in self.remote_ice.drain(..) {
                    a.push(Action::AddRemoteIce {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_m_line_index: c.sdp_m_line_index,
                    });
                }
            }
            Input::MediaUp => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.media_up = true;
                // The path came back within the grace: the call goes on.
                self.media_down_at = None;
                self.update_connected(now);
            }
            Input::ConnectionFailed => self.network_failed(now, &mut a),
            Input::MediaDown => {
                // Only a path that was up can be lost; before that the connect deadline rules.
                if self.phase != Phase::Ended && self.media_up {
                    self.media_down_at.get_or_insert(now);
                }
            }
            Input::MediaFailed(why) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.hangup(now, &mut a);
                self.failure = Some(why);
            }
            Input::Tick => {
                if self.phase != Phase::Ended && self.media_down_at.is_some_and(|t| now - t >= self.media_loss_grace_ms) {
                    self.network_failed(now, &mut a);
                }
                if self.phase != Phase::Ended
                    && !self.media_up
                    && self.answered_sdp_at.is_some_and(|t| now - t >= self.connect_timeout_ms)
                {
                    self.network_failed(now, &mut a);
                }
                if self.phase != Phase::Ended
                    && self.answer_when_offer
                    && self.answered_at.is_some_and(|t| now - t >= self.offer_timeout_ms)
                {
                    // F4: the caller's browser never offered; end it at the cloud (a hang-up of
                    // a call it has as answered, else a decline).
                    self.answer_when_offer = false;
                    self.failure = Some(NO_OFFER.into());
                    self.failure_final = true;
                    if !self.hung_up && !self.cloud_final {
                        self.hung_up = true;
                        a.extend(self.cloud_end_msg().map(Action::Cloud));
                    }
                    self.end(now, &mut a);
                }
            }
        }
        a
    }

    /// Local candidates (and the end of gathering) go out once our description has: through
    /// `direct_signal` to a gateway, through `signal` with the key to a browser (F4).
    fn flush_ice(&mut self, a: &mut Vec<Action>) {
        for c in self.pending_ice.drain(..) {
            let payload = match c {
                Some(c) => {
                    SignalPayload::Ice { candidate: c.candidate, sdp_mid: c.sdp_mid, sdp_m_line_index: c.sdp_m_line_index }
                }
                None => SignalPayload::EndOfCandidates,
            };
            let call_id = self.call_id.clone();
            match &self.via {
                Via::Direct { .. } => a.push(Action::Cloud(ClientMsg::DirectSignal { call_id, payload })),
                Via::Peer { key } => a.push(Action::Cloud(ClientMsg::Signal { call_id, key: key.clone(), payload })),
                Via::Pending => {}
            }
        }
    }

    /// A candidate from the far end: in now if its description is applied, else later.
    fn remote_candidate(
        &mut self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
        a: &mut Vec<Action>,
    ) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.remote_set {
            a.push(Action::AddRemoteIce { candidate, sdp_mid, sdp_m_line_index });
        } else {
            self.remote_ice.push(RemoteCandidate { candidate, sdp_mid, sdp_m_line_index });
        }
    }

    /// The far end's answer (SDP): apply it; the connect deadline starts.
    fn remote_answer(&mut self, sdp: String, now: f64, a: &mut Vec<Action>) {
        if self.direction != Direction::Outgoing && !matches!(self.via, Via::Direct { .. }) {
            return;
        }
        if self.phase == Phase::Ended || !self.media_started || self.answered_sdp_at.is_some() {
            return;
        }
        self.answered_sdp_at = Some(now);
        a.push(Action::ApplyAnswer { sdp });
    }

    fn start_media(&mut self, a: &mut Vec<Action>, action: Action) {
        self.media_started = true;
        a.push(action);
    }

    fn on_cloud(&mut self, msg: ServerMsg, now: f64, a: &mut Vec<Action>) {
        match msg {
            // C13: the callee's gateway and its key; C14 goes over WebRTC (the `url` is not used).
            ServerMsg::Connect { key, .. } => {
                if self.phase == Phase::Ended || self.direction != Direction::Outgoing || self.via != Via::Pending {
                    return;
                }
                self.via = Via::Direct { key };
                self.phase = Phase::Connecting;
                self.start_media(a, Action::MakeOffer { channel: true });
            }
            // F4: the callee is a browser; offer through the cloud.
            ServerMsg::Peer { key, .. } => {
                if self.phase == Phase::Ended || self.direction != Direction::Outgoing || self.via != Via::Pending {
                    return;
                }
                self.via = Via::Peer { key };
                self.start_media(a, Action::MakeOffer { channel: false });
            }
            ServerMsg::CallEvent { event, .. } => match event {
                CallEvent::Ringing => {
                    if matches!(self.phase, Phase::Calling | Phase::Connecting)
                        && self.direction == Direction::Outgoing
                        && !self.far_connected
                    {
                        self.phase = Phase::Ringing;
                    }
                }
                CallEvent::Connected => {
                    if self.direction == Direction::Outgoing {
                        self.far_answered(now);
                    }
                }
                CallEvent::KeyAccepted | CallEvent::Ended { .. } => {}
            },
            // C14 over WebRTC: the gateway's answer and candidates.
            ServerMsg::DirectSignal { payload, .. } => {
                if !matches!(self.via, Via::Direct { .. }) {
                    return;
                }
                match payload {
                    SignalPayload::Answer { sdp } => self.remote_answer(sdp, now, a),
                    SignalPayload::Ice { candidate, sdp_mid, sdp_m_line_index } => {
                        self.remote_candidate(candidate, sdp_mid, sdp_m_line_index, a)
                    }
                    // We offer; a gateway never does.
                    SignalPayload::Offer { .. } | SignalPayload::EndOfCandidates => {}
                }
            }
            ServerMsg::Signal { payload, .. } => {
                if !matches!(self.via, Via::Peer { .. }) {
                    return;
                }
                match payload {
                    SignalPayload::Offer { sdp } => {
                        if self.direction != Direction::Incoming || self.phase == Phase::Ended || self.media_started {
                            return;
                        }
                        if self.answer_when_offer {
                            self.answer_when_offer = false;
                            self.start_media(a, Action::MakeAnswer { offer: sdp });
                        } else {
                            self.pending_offer = Some(sdp);
                        }
                    }
                    SignalPayload::Answer { sdp } => self.remote_answer(sdp, now, a),
                    SignalPayload::Ice { candidate, sdp_mid, sdp_m_line_index } => {
                        self.remote_candidate(candidate, sdp_mid, sdp_m_line_index, a)
                    }
                    SignalPayload::EndOfCandidates => {}
                }
            }
            ServerMsg::Outcome { outcome, duration_ms, .. }
                if matches!(self.via, Via::Direct { .. })
                    && self.direct_accepted
                    && self.channel_open
                    && self.connected_at.is_some()
                    && self.phase != Phase::Ended =>
            {
                // The switch carries this call and ends it on the DataChannel: a cloud that
                // closes its books (e.g. while it shuts down) does not cut the media.
                self.cloud_final = true;
                self.outcome = Some(outcome);
                if duration_ms.is_some() {
                    self.duration_ms = duration_ms;
                }
            }
            ServerMsg::Outcome { outcome, duration_ms, .. } => {
                self.cloud_final = true;
                // The cloud's outcome is final; a local failure text stays (it says more), and so
                // does a media loss seen here when the cloud heard a plain end first.
                if !(self.outcome == Some(Outcome::MediaLost) && outcome == Outcome::Connected) {
                    self.outcome = Some(outcome);
                }
                if duration_ms.is_some() && (self.connected_at.is_some() || self.failure.is_none()) {
                    self.duration_ms = duration_ms;
                }
                if outcome == Outcome::Connected && self.connected_at.is_none() && !self.failure_final {
                    // Answered elsewhere in the flow without us seeing `connected`.
                    self.connected_at = Some(now - duration_ms.unwrap_or(0) as f64);
                }
                if self.failure.is_some() && !self.failure_final && outcome != Outcome::Cancelled && outcome != Outcome::Error {
                    // The cloud knows better (e.g. the callee's switch was unavailable).
                    self.failure = None;
                }
                self.end(now, a);
            }
            ServerMsg::Error { code, message, .. } => {
                self.refusal = Some((code, message.clone()));
                // B3: `invalid_call` is followed by the `rejected_invalid` outcome.
                if code == ErrorCode::InvalidCall {
                    return;
                }
                // A refused `dial` changes nothing at the server: no outcome follows.
                if self.phase == Phase::Calling && self.direction == Direction::Outgoing && self.via == Via::Pending {
                    let why = match code {
                        ErrorCode::TooManyRequests => "Too many calls at once".to_string(),
                        ErrorCode::InvalidField => "That is not a valid number".to_string(),
                        ErrorCode::Unavailable => "The server cannot take calls right now — try again later".to_string(),
                        _ => format!("Call refused: {message}"),
                    };
                    self.cloud_final = true;
                    self.fail(why, now, a);
                }
            }
            _ => {}
        }
    }

    /// The gateway's messages on the DataChannel.
    fn on_direct(&mut self, msg: DirectServerMsg, now: f64, a: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        match msg {
            // C14 done: the key is spent; the gateway rings the phone (F1) or answers the
            // waiting phone (C3: the call is answered once media is up).
            DirectServerMsg::Accepted { .. } => {
                self.direct_accepted = true;
                if self.direction == Direction::Incoming {
                    self.far_answered(now);
                }
            }
            // Over WebRTC the answer comes through the cloud (`direct_signal`).
            DirectServerMsg::Answer { .. } => {}
            // C15: the desk phone rings / answered and the gateway bridged.
            DirectServerMsg::Progress { event } => match event {
                CallEvent::Ringing => {
                    if matches!(self.phase, Phase::Calling | Phase::Connecting)
                        && self.direction == Direction::Outgoing
                        && !self.far_connected
                    {
                        self.phase = Phase::Ringing;
                    }
                }
                CallEvent::Connected => self.far_answered(now),
                CallEvent::Ended { outcome, duration_ms } => {
                    self.outcome.get_or_insert(outcome);
                    if self.duration_ms.is_none() && self.connected_at.is_some() {
                        self.duration_ms = duration_ms;
                    }
                    self.end(now, a);
                }
                CallEvent::KeyAccepted => {}
            },
            DirectServerMsg::Ended { outcome } => {
                self.outcome.get_or_insert(outcome);
                self.end(now, a);
            }
            DirectServerMsg::Error { code, message } => {
                if self.direct_accepted {
                    // After C14 an error is about something else; the call goes on.
                    return;
                }
                // The key was refused: nothing rang. End the attempt at the cloud now.
                self.failure = Some(key_refusal_text(code, &message));
                self.refusal = Some((code, message));
                self.failure_final = true;
                self.cloud_give_up(a);
                self.end(now, a);
            }
        }
    }

    /// The direct leg could not be set up here: end the attempt at the cloud (it then has an
    /// outcome now rather than at the key's expiry).
    fn cloud_give_up(&mut self, a: &mut Vec<Action>) {
        if self.cloud_final || self.hung_up || self.far_connected {
            return;
        }
        self.hung_up = true;
        a.extend(self.cloud_end_msg().map(Action::Cloud));
    }

    fn on_user(&mut self, u: UserAction, now: f64, a: &mut Vec<Action>) {
        match u {
            UserAction::Answer => {
                if self.phase != Phase::Incoming {
                    return;
                }
                a.push(Action::StopRingtone);
                self.phase = Phase::Connecting;
                match self.via.clone() {
                    // C3: offer WebRTC (+ the DataChannel for the key) to the caller's gateway.
                    Via::Direct { .. } => self.start_media(a, Action::MakeOffer { channel: true }),
                    // F4: answer the caller's offer (now, or when it comes).
                    Via::Peer { .. } => match self.pending_offer.take() {
                        Some(offer) => self.start_media(a, Action::MakeAnswer { offer }),
                        None => {
                            self.answer_when_offer = true;
                            self.answered_at = Some(now);
                        }
                    },
                    Via::Pending => {}
                }
            }
            UserAction::Decline => {
                if self.phase != Phase::Incoming {
                    return;
                }
                self.hung_up = true;
                a.push(Action::Cloud(ClientMsg::Decline { call_id: self.call_id.clone(), reason: DeclineReason::Declined }));
                self.outcome = Some(Outcome::Declined);
                self.end(now, a);
            }
            UserAction::Hangup => self.hangup(now, a),
            UserAction::ToggleMute => {
                if self.phase == Phase::Ended {
                    return;
                }
                self.muted = !self.muted;
                a.push(Action::SetMute(self.muted));
            }
            UserAction::ToggleHold => {
                if self.phase != Phase::Connected {
                    return;
                }
                self.held = !self.held;
                a.push(Action::SetHold(self.held));
            }
            UserAction::Dtmf(d) => {
                if self.phase == Phase::Connected && is_dtmf(d) && !self.held {
                    a.push(Action::SendDtmf(d));
                }
            }
        }
    }

    /// Hang up, cancel or decline — whichever fits the call's state.
    fn hangup(&mut self, now: f64, a: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.phase == Phase::Incoming {
            self.on_user(UserAction::Decline, now, a);
            return;
        }
        let answered = self.connected_at.is_some();
        if !self.hung_up {
            self.hung_up = true;
            if self.channel_open && self.direct_accepted {
                // After C14 the gateway hears it on the DataChannel and reports the end to the
                // cloud; its outcome follows.
                a.push(Action::Direct(DirectClientMsg::Hangup));
            } else if !self.cloud_final {
                // Before C14: cancel (or decline) through the cloud.
                a.extend(self.cloud_end_msg().map(Action::Cloud));
            }
        }
        if self.outcome.is_none() {
            self.outcome = Some(if answered { Outcome::Connected } else { Outcome::Cancelled });
        }
        self.end(now, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(a: &[Action]) -> Vec<String> {
        a.iter()
            .map(|x| match x {
                Action::Cloud(m) => format!("cloud:{}", m.kind()),
                Action::Direct(m) => format!("direct:{}", serde_json::to_value(m).unwrap()["type"].as_str().unwrap()),
                other => format!("{other:?}").split([' ', '(', '{']).next().unwrap().to_string(),
            })
            .collect()
    }

    fn outgoing() -> Call {
        Call::dial("c1".into(), "2001".into(), "1001".into(), 0.0).0
    }

    #[test]
    fn outcome_texts_in_words() {
        use Direction::*;
        assert_eq!(outcome_text(Outcome::RejectedInvalid, Outgoing), "Number does not exist");
        assert_eq!(outcome_text(Outcome::Busy, Outgoing), "Busy");
        assert_eq!(outcome_text(Outcome::Declined, Outgoing), "Declined");
        assert_eq!(outcome_text(Outcome::NoAnswer, Outgoing), "No answer");
        assert_eq!(outcome_text(Outcome::CalleeOffline, Outgoing), "Unavailable");
        assert_eq!(outcome_text(Outcome::SwitchUnavailable, Outgoing), "Unavailable");
        assert_eq!(outcome_text(Outcome::Cancelled, Incoming), "Missed call");
        for o in Outcome::ALL {
            assert!(!outcome_text(o, Outgoing).is_empty());
            assert!(!outcome_text(o, Incoming).contains('_'), "{o} has a text for people");
        }
    }

    #[test]
    fn durations_and_keys() {
        assert_eq!(format_duration(0), "00:00");
        assert_eq!(format_duration(61_500), "01:01");
        assert_eq!(format_duration(3_723_000), "1:02:03");
        assert_eq!(dtmf_testid('*').as_deref(), Some("dtmf-star"));
        assert_eq!(dtmf_testid('#').as_deref(), Some("dtmf-hash"));
        assert_eq!(dtmf_testid('7').as_deref(), Some("dtmf-7"));
        assert_eq!(dtmf_testid('x'), None);
        assert_eq!(clean_number(" (030) 1001-2 "), "0301001-2");
        assert_eq!(clean_number(&"9".repeat(40)).len(), 32);
    }

    #[test]
    fn f5_invalid_number_ends_with_number_does_not_exist() {
        let (mut c, a) = Call::dial("c5".into(), "2001".into(), "4040".into(), 0.0);
        assert_eq!(a, vec![Action::Cloud(ClientMsg::Dial { call_id: "c5".into(), to: "4040".into() })]);
        assert_eq!(c.phase, Phase::Calling);
        let a =
            c.on(Input::Cloud(ServerMsg::error(ErrorCode::InvalidCall, "number 4040 does not exist", Some("c5".into()))), 10.0);
        assert!(a.is_empty(), "invalid_call waits for the outcome");
        assert_eq!(c.phase, Phase::Calling);
        let a = c.on(
            Input::Cloud(ServerMsg::Outcome { call_id: "c5".into(), outcome: Outcome::RejectedInvalid, duration_ms: None }),
            20.0,
        );
        assert_eq!(msgs(&a), vec!["Finished"]);
        assert_eq!(c.phase, Phase::Ended);
        assert_eq!(c.outcome_line().as_deref(), Some("Number does not exist"));
    }

    #[test]
    fn refused_dial_ends_at_once() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::error(ErrorCode::TooManyRequests, "slow down", Some("c1".into()))), 1.0);
        assert_eq!(msgs(&a), vec!["Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Too many calls at once"));
        // The server's disk is full: said in words, nothing more follows.
        let mut c = outgoing();
        let e = ServerMsg::error(ErrorCode::Unavailable, "the server's disk is full; try again later", Some("c1".into()));
        assert_eq!(msgs(&c.on(Input::Cloud(e), 1.0)), vec!["Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("The server cannot take calls right now — try again later"));
    }

    #[test]
    fn f4_caller_cancels_before_the_answer() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        let a = c.on(Input::User(UserAction::Hangup), 2.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Cancelled"));
    }

    #[test]
    fn incoming_decline_and_missed() {
        let (mut c, _) = Call::incoming(
            "c4".into(),
            "2002".into(),
            "2001".into(),
            "Alice".into(),
            IncomingVia::Peer { key: "P".repeat(22) },
            0.0,
        );
        let a = c.on(Input::User(UserAction::Decline), 1.0);
        assert_eq!(msgs(&a), vec!["cloud:decline", "StopRingtone", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Declined"));

        let (mut c, _) = Call::incoming(
            "c4".into(),
            "2002".into(),
            "2001".into(),
            "Alice".into(),
            IncomingVia::Peer { key: "P".repeat(22) },
            0.0,
        );
        let a =
            c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c4".into(), outcome: Outcome::Cancelled, duration_ms: None }), 1.0);
        assert_eq!(msgs(&a), vec!["StopRingtone", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Missed call"));
    }

    #[test]
    fn f4_call_ends_when_the_cloud_is_lost() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        let a = c.on(Input::CloudLost, 2.0);
        assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Connection to the server lost"));
    }

    fn connect_msg(key: &str) -> Input {
        Input::Cloud(ServerMsg::Connect { call_id: "c1".into(), url: "switch:hq".into(), key: key.into(), expires_in_ms: 30000 })
    }

    fn direct_signal(call_id: &str, payload: SignalPayload) -> Input {
        Input::Cloud(ServerMsg::DirectSignal { call_id: call_id.into(), payload })
    }

    fn cand(n: u32) -> LocalCandidate {
        LocalCandidate {
            candidate: format!("candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host", 50000 + n),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        }
    }

    fn gw_ice(n: u32) -> SignalPayload {
        SignalPayload::Ice {
            candidate: format!("candidate:gw{n} 1 udp 2130706431 127.0.0.1 {} typ host", 30000 + n),
            sdp_mid: None,
            sdp_m_line_index: Some(0),
        }
    }

    /// F1 caller up to an open DataChannel with the key accepted and media up.
    fn f1_accepted() -> Call {
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 3.0);
        c.on(Input::RemoteSet, 3.5);
        c.on(Input::MediaUp, 4.0);
        c.on(Input::ChannelOpen, 4.0);
        c.on(Input::Direct(DirectServerMsg::Accepted { call_id: "c1".into() }), 5.0);
        c
    }

    #[test]
    fn a_cloud_outcome_does_not_cut_a_call_the_switch_still_carries() {
        let mut c = f1_accepted();
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Connected }), 6.0);
        assert_eq!(c.phase, Phase::Connected);
        // The signal server shuts down and closes its books: the media goes on.
        let a = c.on(
            Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Connected, duration_ms: Some(1000) }),
            7.0,
        );
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(c.phase, Phase::Connected);
        // The gateway ends it on the DataChannel later.
        let a = c.on(Input::Direct(DirectServerMsg::Ended { outcome: Outcome::Connected }), 20.0);
        assert!(msgs(&a).contains(&"Finished".to_string()), "{a:?}");
        assert_eq!(c.phase, Phase::Ended);
    }

    #[test]
    fn f1_offer_and_candidates_through_the_cloud_key_on_the_datachannel() {
        let mut c = outgoing();
        let key = "K".repeat(22);
        // C13: the offer (audio + the DataChannel) is made at once, to go through the cloud.
        let a = c.on(connect_msg(&key), 1.0);
        assert_eq!(a, vec![Action::MakeOffer { channel: true }]);
        assert_eq!(c.phase, Phase::Connecting);
        assert_eq!(c.via, Via::Direct { key: key.clone() });
        // A candidate gathered before the offer went out waits for it.
        assert!(c.on(Input::LocalIce(Some(cand(1))), 1.5).is_empty());
        let a = c.on(Input::LocalOffer("v=0 offer".into()), 2.0);
        assert_eq!(
            a,
            vec![
                Action::Cloud(ClientMsg::DirectSignal {
                    call_id: "c1".into(),
                    payload: SignalPayload::Offer { sdp: "v=0 offer".into() }
                }),
                Action::Cloud(ClientMsg::DirectSignal {
                    call_id: "c1".into(),
                    payload: SignalPayload::Ice {
                        candidate: cand(1).candidate,
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0)
                    }
                }),
            ]
        );
        // Later candidates go out one by one; then the end of gathering.
        let a = c.on(Input::LocalIce(Some(cand(2))), 2.2);
        assert!(matches!(&a[..], [Action::Cloud(ClientMsg::DirectSignal { payload: SignalPayload::Ice { .. }, .. })]));
        let a = c.on(Input::LocalIce(None), 2.4);
        assert_eq!(
            a,
            vec![Action::Cloud(ClientMsg::DirectSignal { call_id: "c1".into(), payload: SignalPayload::EndOfCandidates })]
        );
        // The JSON on the wire.
        let Action::Cloud(m) = &a[0] else { unreachable!() };
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            serde_json::json!({"type": "direct_signal", "call_id": "c1", "payload": {"kind": "end_of_candidates"}})
        );

        // The gateway's candidate before its answer waits for the remote description.
        assert!(c.on(direct_signal("c1", gw_ice(1)), 2.5).is_empty());
        let a = c.on(direct_signal("c1", SignalPayload::Answer { sdp: "v=0 answer".into() }), 3.0);
        assert_eq!(a, vec![Action::ApplyAnswer { sdp: "v=0 answer".into() }]);
        assert!(c.on(direct_signal("c1", gw_ice(2)), 3.1).is_empty(), "still waiting for the remote description");
        let a = c.on(Input::RemoteSet, 3.2);
        assert_eq!(msgs(&a), vec!["AddRemoteIce", "AddRemoteIce"]);
        assert_eq!(
            a[0],
            Action::AddRemoteIce {
                candidate: "candidate:gw1 1 udp 2130706431 127.0.0.1 30001 typ host".into(),
                sdp_mid: None,
                sdp_m_line_index: Some(0)
            }
        );
        // After it, candidates go in at once.
        let a = c.on(direct_signal("c1", gw_ice(3)), 3.3);
        assert_eq!(msgs(&a), vec!["AddRemoteIce"]);
        // A second answer (or an offer) changes nothing.
        assert!(c.on(direct_signal("c1", SignalPayload::Answer { sdp: "again".into() }), 3.4).is_empty());
        assert!(c.on(direct_signal("c1", SignalPayload::Offer { sdp: "offer?".into() }), 3.4).is_empty());

        // The DataChannel opens: present the key on it (C14), `caller` = our own number.
        c.on(Input::MediaUp, 3.9);
        let a = c.on(Input::ChannelOpen, 4.0);
        assert_eq!(
            a,
            vec![Action::Direct(DirectClientMsg::Present {
                v: 1,
                call_id: "c1".into(),
                key: key.clone(),
                caller: "2001".into()
            })]
        );
        let Action::Direct(m) = &a[0] else { unreachable!() };
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            serde_json::json!({"type": "present", "v": 1, "call_id": "c1", "key": key, "caller": "2001"})
        );
        assert!(c.on(Input::Direct(DirectServerMsg::Accepted { call_id: "c1".into() }), 5.0).is_empty());
        assert_eq!(c.phase, Phase::Connecting);
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Ringing }), 6.0);
        assert_eq!(c.phase, Phase::Ringing);
        // The cloud's copy of the same events changes nothing more.
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Ringing }), 6.5);
        assert_eq!(c.phase, Phase::Ringing);
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Connected }), 1000.0);
        assert_eq!(c.phase, Phase::Connected);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 1500.0);
        assert_eq!(c.connected_at, Some(1000.0), "the timer starts once");
        assert_eq!(c.elapsed(62_000.0), Some(61_000));
        // DTMF goes out only while connected.
        assert_eq!(c.on(Input::User(UserAction::Dtmf('5')), 2000.0), vec![Action::SendDtmf('5')]);
        // The connect deadline does not apply any more.
        assert!(c.on(Input::Tick, 60_000.0).is_empty());
        // After C14 the cloud going away does not end the call.
        assert!(c.on(Input::CloudLost, 2500.0).is_empty());
        assert_eq!(c.phase, Phase::Connected);
    }

    #[test]
    fn f1_hangup_after_accepted_goes_on_the_datachannel() {
        let mut c = f1_accepted();
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Connected }), 1000.0);
        assert_eq!(c.phase, Phase::Connected);
        let a = c.on(Input::User(UserAction::Hangup), 3000.0);
        assert_eq!(msgs(&a), vec!["direct:hangup", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Call ended · 00:02"));
        // The cloud's outcome refines the duration; nothing else happens.
        let a = c.on(
            Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Connected, duration_ms: Some(2100) }),
            3100.0,
        );
        assert!(a.is_empty());
        assert_eq!(c.duration(), Some(2100));
        // The channel closing afterwards changes nothing.
        assert!(c.on(Input::ChannelClosed, 3200.0).is_empty());

        // Accepted and ringing, not answered: still the channel (the gateway cancels the phone).
        let mut c = f1_accepted();
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Ringing }), 6.0);
        let a = c.on(Input::User(UserAction::Hangup), 7.0);
        assert_eq!(msgs(&a), vec!["direct:hangup", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Cancelled"));
    }

    #[test]
    fn f1_cancel_before_accepted_goes_through_the_cloud() {
        // Before the answer.
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        let a = c.on(Input::User(UserAction::Hangup), 2.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Cancelled"));
        // Channel open, key presented, no `accepted` yet: still the cloud.
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 3.0);
        c.on(Input::ChannelOpen, 4.0);
        let a = c.on(Input::User(UserAction::Hangup), 5.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"]);
        // Before C14 the call needs the cloud.
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::ChannelOpen, 4.0);
        let a = c.on(Input::CloudLost, 5.0);
        assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Connection to the server lost"));
    }

    #[test]
    fn f1_refused_keys_say_why_and_cancel_at_the_cloud() {
        let cases = [
            (ErrorCode::BadKey, "Call failed — the key was refused"),
            (ErrorCode::KeyExpired, "Call failed — the key expired"),
            (ErrorCode::KeyUsed, "Call failed — the key was already used"),
            (ErrorCode::WrongCaller, "Call failed — the key is for another caller"),
        ];
        for (code, text) in cases {
            let mut c = outgoing();
            c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
            c.on(Input::LocalOffer("offer".into()), 2.0);
            c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 3.0);
            c.on(Input::MediaUp, 3.5);
            c.on(Input::ChannelOpen, 4.0);
            let a = c.on(Input::Direct(DirectServerMsg::Error { code, message: "no".into() }), 5.0);
            assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"], "{code}");
            assert_eq!(c.phase, Phase::Ended);
            assert_eq!(c.outcome_line().as_deref(), Some(text));
            // The cloud's `cancelled` (or any outcome) does not replace it; the channel closing neither.
            assert!(c.on(Input::ChannelClosed, 5.5).is_empty());
            c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Cancelled, duration_ms: None }), 6.0);
            assert_eq!(c.outcome_line().as_deref(), Some(text));
        }
        assert_eq!(key_refusal_text(ErrorCode::Internal, "boom"), "Call failed — the gateway refused the call: boom");
        // The callee (C3) declines instead.
        let via = IncomingVia::Direct { url: "switch:hq".into(), key: "D".repeat(22), expires_in_ms: 30000 };
        let (mut c, _) = Call::incoming("c3".into(), "2001".into(), "1001".into(), "Reception".into(), via, 0.0);
        c.on(Input::User(UserAction::Answer), 1.0);
        c.on(Input::ChannelOpen, 2.0);
        let a = c.on(Input::Direct(DirectServerMsg::Error { code: ErrorCode::KeyExpired, message: String::new() }), 3.0);
        assert_eq!(msgs(&a), vec!["cloud:decline", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Call failed — the key expired"));
    }

    #[test]
    fn f1_busy_before_the_gateway() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Busy, duration_ms: None }), 1.0);
        assert_eq!(msgs(&a), vec!["Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Busy"));
    }

    #[test]
    fn ice_failure_ends_with_could_not_connect_network() {
        // `failed` before the channel opened: cancel at the cloud.
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 3.0);
        let a = c.on(Input::ConnectionFailed, 4.0);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
        assert_ne!(c.outcome_line().as_deref(), Some("Declined"));
        c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Cancelled, duration_ms: None }), 5.0);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE), "the cloud's outcome does not replace it");

        // The DataChannel closing without ever opening is the same failure.
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        let a = c.on(Input::ChannelClosed, 2.0);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));

        // After `accepted` (ringing): hang up on the channel too, and cancel at the cloud.
        let mut c = f1_accepted();
        let a = c.on(Input::ConnectionFailed, 10.0);
        assert_eq!(msgs(&a), vec!["direct:hangup", "cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));

        // Connected, then the connection fails: dropped.
        let mut c = f1_accepted();
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Connected }), 20.0);
        c.on(Input::MediaUp, 21.0);
        let a = c.on(Input::ConnectionFailed, 30.0);
        assert_eq!(msgs(&a), vec!["direct:hangup", "cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome, Some(Outcome::MediaLost));
        assert!(c.outcome_line().unwrap().starts_with(NETWORK_LOST));
        // F3 callee: decline at the cloud.
        let via = IncomingVia::Direct { url: "switch:hq".into(), key: "D".repeat(22), expires_in_ms: 30000 };
        let (mut c, _) = Call::incoming("c3".into(), "2001".into(), "1001".into(), "Reception".into(), via, 0.0);
        c.on(Input::User(UserAction::Answer), 1.0);
        let a = c.on(Input::ConnectionFailed, 2.0);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
    }

    #[test]
    fn f4_callee_whose_caller_never_offers_declines_after_the_offer_timeout() {
        let (mut c, _) = Call::incoming(
            "c4".into(),
            "2002".into(),
            "2001".into(),
            "Alice".into(),
            IncomingVia::Peer { key: "P".repeat(22) },
            0.0,
        );
        c.offer_timeout_ms = 5_000.0;
        assert_eq!(c.next_deadline(), None, "ringing here has no deadline of ours");
        c.on(Input::User(UserAction::Answer), 1_000.0);
        assert_eq!(c.next_deadline(), Some(6_000.0));
        assert!(c.on(Input::Tick, 5_999.0).is_empty());
        let a = c.on(Input::Tick, 6_000.0);
        assert_eq!(msgs(&a), vec!["cloud:decline", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NO_OFFER));
        assert_eq!(c.next_deadline(), None);
        // The offer in time: no deadline left once it is answered.
        let (mut c, _) = Call::incoming(
            "c4".into(),
            "2002".into(),
            "2001".into(),
            "Alice".into(),
            IncomingVia::Peer { key: "P".repeat(22) },
            0.0,
        );
        c.on(Input::User(UserAction::Answer), 1_000.0);
        c.on(
            Input::Cloud(ServerMsg::Signal { call_id: "c4".into(), payload: SignalPayload::Offer { sdp: "o".into() } }),
            2_000.0,
        );
        assert_eq!(c.next_deadline(), None);
        assert!(c.on(Input::Tick, 60_000.0).is_empty());
    }

    #[test]
    fn the_connect_deadline_follows_the_answer_and_a_set_timeout() {
        let mut c = outgoing();
        c.connect_timeout_ms = 3_000.0;
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        assert_eq!(c.next_deadline(), None);
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 10.0);
        assert_eq!(c.next_deadline(), Some(3_010.0));
        c.on(Input::MediaUp, 20.0);
        assert_eq!(c.next_deadline(), None, "media is up: nothing to wait for");
    }

    #[test]
    fn a_refused_key_is_kept_with_its_code() {
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(Input::ChannelOpen, 3.0);
        c.on(Input::Direct(DirectServerMsg::Error { code: ErrorCode::KeyUsed, message: "used".into() }), 4.0);
        assert_eq!(c.refusal, Some((ErrorCode::KeyUsed, "used".into())));
        assert_eq!(c.outcome_line().as_deref(), Some("Call failed — the key was already used"));
    }

    #[test]
    fn not_connected_in_time_after_the_answer_ends_with_could_not_connect_network() {
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        // No deadline before the answer.
        assert!(c.on(Input::Tick, 50_000.0).is_empty());
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 100_000.0);
        assert!(c.on(Input::Tick, 100_000.0 + CONNECT_TIMEOUT_MS - 1.0).is_empty());
        let a = c.on(Input::Tick, 100_000.0 + CONNECT_TIMEOUT_MS);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
        // Up in time: no failure.
        let mut c = f1_accepted();
        assert!(c.on(Input::Tick, 100_000.0).is_empty());
        assert_ne!(c.phase, Phase::Ended);
    }

    #[test]
    fn f4_caller_is_connected_only_when_media_is_up() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        assert_eq!(a, vec![Action::MakeOffer { channel: false }]);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Ringing }), 2.0);
        assert_eq!(c.phase, Phase::Ringing);
        // A candidate before the offer went out waits for it.
        assert!(c.on(Input::LocalIce(Some(cand(1))), 2.5).is_empty());
        let a = c.on(Input::LocalOffer("offer".into()), 3.0);
        assert_eq!(msgs(&a), vec!["cloud:signal", "cloud:signal"]);
        assert!(matches!(&a[1], Action::Cloud(ClientMsg::Signal { payload: SignalPayload::Ice { .. }, .. })));
        let a = c.on(Input::LocalIce(None), 3.5);
        assert!(matches!(&a[..], [Action::Cloud(ClientMsg::Signal { payload: SignalPayload::EndOfCandidates, .. })]));
        // The callee's candidate before its answer waits; `direct_signal` is not for F4.
        let ice = SignalPayload::Ice { candidate: "candidate:2".into(), sdp_mid: Some("0".into()), sdp_m_line_index: None };
        assert!(c.on(Input::Cloud(ServerMsg::Signal { call_id: "c1".into(), payload: ice.clone() }), 3.8).is_empty());
        assert!(c.on(direct_signal("c1", SignalPayload::Answer { sdp: "x".into() }), 3.9).is_empty());
        // The cloud says connected before the answer's media is up: "Connecting…", not "Connected".
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 3.95);
        assert_eq!(c.phase, Phase::Connecting);
        let a = c.on(
            Input::Cloud(ServerMsg::Signal { call_id: "c1".into(), payload: SignalPayload::Answer { sdp: "answer".into() } }),
            4.0,
        );
        assert_eq!(a, vec![Action::ApplyAnswer { sdp: "answer".into() }]);
        let a = c.on(Input::RemoteSet, 4.2);
        assert!(matches!(&a[..], [Action::AddRemoteIce { .. }]));
        assert_eq!(c.phase, Phase::Connecting);
        assert_eq!(c.connected_at, None);
        c.on(Input::MediaUp, 5.0);
        assert_eq!(c.phase, Phase::Connected);
        assert_eq!(c.connected_at, Some(5.0));
        // F4 hang up goes through the cloud.
        let a = c.on(Input::User(UserAction::Hangup), 9.0);
        assert_eq!(msgs(&a), vec!["cloud:hangup", "CloseMedia", "Finished"]);
    }

    #[test]
    fn f4_caller_whose_ice_never_completes_ends_with_could_not_connect_network() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 3.0);
        c.on(
            Input::Cloud(ServerMsg::Signal { call_id: "c1".into(), payload: SignalPayload::Answer { sdp: "answer".into() } }),
            3.0,
        );
        assert_eq!(c.phase, Phase::Connecting);
        let a = c.on(Input::Tick, 3.0 + CONNECT_TIMEOUT_MS);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"], "media never flowed: connect_failed");
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
        // The cloud reports the call as connected; the text stays.
        c.on(
            Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Connected, duration_ms: Some(15_000) }),
            15_100.0,
        );
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
        assert_eq!(c.connected_at, None);
    }

    #[test]
    fn f4_callee_answers_before_and_after_the_offer() {
        for offer_first in [true, false] {
            let (mut c, a) = Call::incoming(
                "c4".into(),
                "2002".into(),
                "2001".into(),
                "Alice".into(),
                IncomingVia::Peer { key: "P".repeat(22) },
                0.0,
            );
            assert_eq!(a, vec![Action::StartRingtone]);
            assert_eq!(c.phase, Phase::Incoming);
            let offer =
                Input::Cloud(ServerMsg::Signal { call_id: "c4".into(), payload: SignalPayload::Offer { sdp: "offer".into() } });
            // The caller's candidate may come before anything: it waits for the remote description.
            let ice = Input::Cloud(ServerMsg::Signal {
                call_id: "c4".into(),
                payload: SignalPayload::Ice {
                    candidate: "candidate:9".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            });
            assert!(c.on(ice, 0.5).is_empty());
            let a = if offer_first {
                assert!(c.on(offer, 1.0).is_empty(), "the offer waits for the user");
                c.on(Input::User(UserAction::Answer), 2.0)
            } else {
                let a = c.on(Input::User(UserAction::Answer), 1.0);
                assert_eq!(a, vec![Action::StopRingtone]);
                let mut b = c.on(offer, 2.0);
                b.insert(0, Action::StopRingtone);
                b
            };
            assert_eq!(a, vec![Action::StopRingtone, Action::MakeAnswer { offer: "offer".into() }]);
            assert_eq!(c.phase, Phase::Connecting);
            assert_eq!(msgs(&c.on(Input::RemoteSet, 2.5)), vec!["AddRemoteIce"]);
            let a = c.on(Input::LocalAnswer("answer".into()), 3.0);
            assert_eq!(msgs(&a), vec!["cloud:accept", "cloud:signal"], "accept with the key, then the answer");
            assert_eq!(c.phase, Phase::Connecting, "answered, media not up yet");
            c.on(Input::MediaUp, 10.0);
            assert_eq!(c.phase, Phase::Connected);
            let a = c.on(
                Input::Cloud(ServerMsg::Outcome { call_id: "c4".into(), outcome: Outcome::Connected, duration_ms: Some(4000) }),
                4000.0,
            );
            assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
            assert_eq!(c.outcome_line().as_deref(), Some("Call ended · 00:04"));
        }
    }

    #[test]
    fn f3_incoming_via_direct_offers_and_presents_as_callee() {
        let via = IncomingVia::Direct { url: "switch:hq".into(), key: "D".repeat(22), expires_in_ms: 30000 };
        let (mut c, _) = Call::incoming("c3".into(), "2001".into(), "1001".into(), "Reception".into(), via, 0.0);
        assert_eq!(c.via, Via::Direct { key: "D".repeat(22) }, "only the key is kept");
        let a = c.on(Input::User(UserAction::Answer), 1.0);
        assert_eq!(a, vec![Action::StopRingtone, Action::MakeOffer { channel: true }]);
        let a = c.on(Input::LocalOffer("offer".into()), 2.0);
        assert_eq!(
            a,
            vec![Action::Cloud(ClientMsg::DirectSignal {
                call_id: "c3".into(),
                payload: SignalPayload::Offer { sdp: "offer".into() }
            })]
        );
        let a = c.on(Input::LocalIce(Some(cand(1))), 2.1);
        assert!(matches!(&a[..], [Action::Cloud(ClientMsg::DirectSignal { payload: SignalPayload::Ice { .. }, .. })]));
        assert_eq!(
            c.on(direct_signal("c3", SignalPayload::Answer { sdp: "answer".into() }), 3.0),
            vec![Action::ApplyAnswer { sdp: "answer".into() }]
        );
        let a = c.on(Input::ChannelOpen, 4.0);
        assert_eq!(
            a,
            vec![Action::Direct(DirectClientMsg::Present {
                v: 1,
                call_id: "c3".into(),
                key: "D".repeat(22),
                caller: "2001".into()
            })]
        );
        // Accepted: the gateway answers the waiting phone; connected once media is up.
        assert!(c.on(Input::Direct(DirectServerMsg::Accepted { call_id: "c3".into() }), 5.0).is_empty());
        assert_eq!(c.phase, Phase::Connecting);
        c.on(Input::MediaUp, 6.0);
        assert_eq!(c.phase, Phase::Connected);
        // The phone hangs up: the gateway says so.
        let a = c.on(Input::Direct(DirectServerMsg::Ended { outcome: Outcome::Connected }), 10.0);
        assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Call ended · 00:00"));
    }

    #[test]
    fn mute_and_hold_transitions() {
        let mut c = outgoing();
        // Mute works before the answer (it applies when media starts); hold only when connected.
        assert_eq!(c.on(Input::User(UserAction::ToggleMute), 1.0), vec![Action::SetMute(true)]);
        assert!(c.muted);
        assert!(c.on(Input::User(UserAction::ToggleHold), 1.0).is_empty());
        assert!(!c.held);
        assert!(c.on(Input::User(UserAction::Dtmf('1')), 1.0).is_empty(), "no DTMF before the answer");
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 2.0);
        assert!(c.on(Input::User(UserAction::Dtmf('1')), 2.0).is_empty(), "no DTMF before media is up");
        c.on(Input::MediaUp, 2.5);
        assert_eq!(c.on(Input::User(UserAction::ToggleHold), 3.0), vec![Action::SetHold(true)]);
        assert!(c.held);
        assert!(c.on(Input::User(UserAction::Dtmf('1')), 3.5).is_empty(), "no DTMF on hold");
        assert_eq!(c.on(Input::User(UserAction::ToggleHold), 4.0), vec![Action::SetHold(false)]);
        assert_eq!(c.on(Input::User(UserAction::ToggleMute), 5.0), vec![Action::SetMute(false)]);
        assert!(!c.muted && !c.held);
        assert!(c.on(Input::User(UserAction::Dtmf('x')), 5.5).is_empty(), "not a DTMF key");
        c.on(Input::User(UserAction::Hangup), 6.0);
        assert!(c.on(Input::User(UserAction::ToggleMute), 7.0).is_empty(), "nothing after the end");
        assert!(c.on(Input::User(UserAction::Hangup), 7.0).is_empty(), "hang up once");
    }

    #[test]
    fn media_failure_hangs_up() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        let a = c.on(Input::MediaFailed("No microphone".into()), 2.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("No microphone"));
    }

    /// F1 connected: the key accepted, the desk phone answered, the peer connection up at 20 s.
    fn f1_connected() -> Call {
        let mut c = f1_accepted();
        c.on(Input::MediaUp, 15.0);
        c.on(Input::Direct(DirectServerMsg::Progress { event: CallEvent::Connected }), 20.0);
        assert_eq!(c.phase, Phase::Connected);
        c
    }

    #[test]
    fn media_path_lost_then_back_within_the_grace_keeps_the_call() {
        let mut c = f1_connected();
        assert!(c.on(Input::MediaDown, 30_000.0).is_empty());
        assert_eq!(c.next_deadline(), Some(30_000.0 + MEDIA_LOSS_GRACE_MS));
        assert!(c.on(Input::Tick, 34_000.0).is_empty(), "still within the grace");
        assert!(c.on(Input::MediaUp, 34_500.0).is_empty());
        assert_eq!(c.next_deadline(), None);
        // A second blip gets a fresh grace, counted from its own start.
        c.on(Input::MediaDown, 60_000.0);
        c.on(Input::MediaDown, 63_000.0);
        assert!(c.on(Input::Tick, 64_000.0).is_empty());
        c.on(Input::MediaUp, 64_500.0);
        assert!(c.on(Input::Tick, 100_000.0).is_empty());
        assert_eq!(c.phase, Phase::Connected);
        assert_eq!(c.outcome, None);
    }

    #[test]
    fn media_path_lost_past_the_grace_ends_media_lost_once_and_tells_the_cloud() {
        let mut c = f1_connected();
        c.on(Input::MediaDown, 30_000.0);
        assert!(c.on(Input::Tick, 34_999.0).is_empty());
        let a = c.on(Input::Tick, 35_000.0);
        // Best effort on the (probably dead) channel, and the cloud hears it as `connect_failed`.
        assert_eq!(msgs(&a), vec!["direct:hangup", "cloud:connect_failed", "CloseMedia", "Finished"]);
        assert!(a.contains(&Action::Cloud(ClientMsg::ConnectFailed { call_id: "c1".into(), reason: MEDIA_LOST_REASON.into() })));
        assert_eq!((c.phase, c.outcome), (Phase::Ended, Some(Outcome::MediaLost)));
        // Connected at 0.02 s, the loss concluded at 35 s.
        assert_eq!(c.outcome_line().as_deref(), Some("Call dropped — network lost · 00:34"));
        // One outcome only: later inputs end nothing twice and send nothing more.
        for input in [Input::Tick, Input::ConnectionFailed, Input::ChannelClosed, Input::MediaDown, Input::CloudLost] {
            assert!(c.on(input, 40_000.0).is_empty());
        }
        assert!(c.on(Input::User(UserAction::Hangup), 40_000.0).is_empty());
        // The cloud's record says the same, with its duration.
        let out = ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::MediaLost, duration_ms: Some(15_100) };
        assert!(c.on(Input::Cloud(out), 41_000.0).is_empty());
        assert_eq!(c.outcome_line().as_deref(), Some("Call dropped — network lost · 00:15"));
        // A cloud that heard a plain end first does not hide what happened here.
        let mut c = f1_connected();
        c.on(Input::ConnectionFailed, 25_000.0);
        let out = ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Connected, duration_ms: Some(5_000) };
        c.on(Input::Cloud(out), 26_000.0);
        assert_eq!(c.outcome, Some(Outcome::MediaLost));

        // F4 connected: the same, through `connect_failed` to the cloud (no channel).
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "K".repeat(22) }), 1.0);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 2.0);
        c.on(Input::MediaUp, 3.0);
        assert_eq!(c.phase, Phase::Connected);
        c.on(Input::MediaDown, 10.0);
        let a = c.on(Input::Tick, 10.0 + MEDIA_LOSS_GRACE_MS);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome, Some(Outcome::MediaLost));
    }

    #[test]
    fn media_down_before_the_path_was_up_leaves_the_connect_deadline_in_charge() {
        let mut c = outgoing();
        c.on(connect_msg("KKKKKKKKKKKKKKKKKKKKKK"), 1.0);
        c.on(Input::LocalOffer("offer".into()), 2.0);
        c.on(direct_signal("c1", SignalPayload::Answer { sdp: "answer".into() }), 3.0);
        // ICE says `disconnected` while checking: not a loss, the connect deadline still rules.
        assert!(c.on(Input::MediaDown, 4.0).is_empty());
        assert_eq!(c.media_down_at, None);
        assert_eq!(c.next_deadline(), Some(3.0 + CONNECT_TIMEOUT_MS));
        assert!(c.on(Input::Tick, 3.0 + MEDIA_LOSS_GRACE_MS + 1.0).is_empty());
        let a = c.on(Input::Tick, 3.0 + CONNECT_TIMEOUT_MS);
        assert_eq!(msgs(&a), vec!["cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
        assert_eq!(c.outcome, None, "never connected: not media_lost");

        // Up while ringing, then lost past the grace: the attempt could not connect.
        let mut c = f1_accepted();
        c.on(Input::MediaUp, 5.0);
        c.on(Input::MediaDown, 6.0);
        let a = c.on(Input::Tick, 6.0 + MEDIA_LOSS_GRACE_MS);
        assert_eq!(msgs(&a), vec!["direct:hangup", "cloud:connect_failed", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some(NETWORK_FAILURE));
    }
}
