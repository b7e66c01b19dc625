//! The call state machine of the browser softphone — sans-IO, like the server's engine: it takes
//! inputs (what the user did, what the signal server / the gateway's direct endpoint / the
//! browser's WebRTC stack said) with `now` passed in, and returns the [`Action`]s the browser
//! driver (`phone.rs`) carries out. No web API is touched here, so it is unit-tested natively.
//!
//! Flows (patent CN110012057B step letters):
//! - outgoing `dial` (**A → C1**), then either `connect` (**C13**: open the gateway's direct
//!   endpoint, `present` the key (**C14**), offer WebRTC with every ICE candidate in the SDP;
//!   the gateway bridges (**C15**) — F1) or `peer` (**F4**: offer to the callee browser through
//!   the cloud's `signal` relay with the key, trickle ICE allowed);
//! - incoming `via: direct` (**C3**: connect to the caller's gateway as above, as the callee —
//!   F3) or `via: peer` (**F4**: `accept` with the key, answer through `signal`).
//! - every attempt ends with one outcome, shown in words ([`outcome_text`]).

use trunkline_protocol::{
    CallEvent, ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode,
    IncomingVia, Outcome, PROTOCOL_VERSION, ServerMsg, SignalPayload,
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
    /// A gateway's direct endpoint (C13 / C3), with the one-time key.
    Direct { url: String, key: String },
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
    /// Negotiating media (direct endpoint or F4 relay).
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
    input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-'))
        .take(32)
        .collect()
}

/// A locally gathered ICE candidate (F4 trickle).
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
    /// The direct endpoint's WebSocket opened.
    DirectOpened,
    Direct(DirectServerMsg),
    /// The direct endpoint's WebSocket closed (or failed to open).
    DirectClosed,
    /// The browser made our offer (with every candidate when `trickle` was false).
    LocalOffer(String),
    /// The browser made our answer (F4 callee).
    LocalAnswer(String),
    /// A local candidate (F4 trickle); `None` once gathering is complete.
    LocalIce(Option<LocalCandidate>),
    /// ICE/DTLS came up.
    MediaUp,
    /// Microphone, WebRTC or the answer failed on this side.
    MediaFailed(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send to the signal server.
    Cloud(ClientMsg),
    /// Open a WebSocket to a gateway's direct endpoint.
    OpenDirect { url: String },
    /// Send on the direct endpoint.
    Direct(DirectClientMsg),
    /// Close the direct endpoint's WebSocket.
    CloseDirect,
    /// Get the microphone, create the peer connection and make an offer. With `trickle` false,
    /// wait for ICE gathering to complete so every candidate is in the SDP (the gateway takes no
    /// trickle); with `trickle` true report candidates as they come ([`Input::LocalIce`]).
    MakeOffer { trickle: bool },
    /// F4 callee: get the microphone, apply the caller's offer and make the answer (trickle).
    MakeAnswer { offer: String },
    /// Apply the far end's answer.
    ApplyAnswer { sdp: String },
    /// Add a trickled remote candidate (F4).
    AddRemoteIce { candidate: String, sdp_mid: Option<String>, sdp_m_line_index: Option<u16> },
    /// Stop (true) or resume sending the microphone.
    SetMute(bool),
    /// Hold: stop sending and stop playing the far end (true), or resume.
    SetHold(bool),
    /// Send an RFC 4733 digit (RTCDTMFSender.insertDTMF).
    SendDtmf(char),
    StartRingtone,
    StopRingtone,
    /// Close the peer connection and release the microphone.
    CloseMedia,
    /// The call is over: record it in the history (the outcome may still be refined by the
    /// cloud's `outcome`).
    Finished,
}

/// One call (either direction) and everything the screen shows about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub call_id: String,
    pub direction: Direction,
    /// Our own number (the `caller` presented at a direct endpoint).
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
    /// When it was answered.
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
    /// Media (ICE + DTLS) is up.
    pub media_up: bool,
    direct_open: bool,
    direct_accepted: bool,
    /// F4 callee: the caller's offer, kept until the user answers.
    pending_offer: Option<String>,
    /// F4 callee: the user answered before the offer arrived.
    answer_when_offer: bool,
    /// F4: our offer / answer went out; candidates gathered before wait here.
    description_sent: bool,
    pending_ice: Vec<Option<LocalCandidate>>,
    media_started: bool,
    hung_up: bool,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    fn new(call_id: String, direction: Direction, me: String, remote: String, remote_name: String, via: Via, phase: Phase, now: f64) -> Call {
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
            direct_open: false,
            direct_accepted: false,
            pending_offer: None,
            answer_when_offer: false,
            description_sent: false,
            pending_ice: Vec::new(),
            media_started: false,
            hung_up: false,
        }
    }

    /// **A → C1**: place a call to `to`.
    pub fn dial(call_id: String, me: String, to: String, now: f64) -> (Call, Vec<Action>) {
        let call = Call::new(call_id.clone(), Direction::Outgoing, me, to.clone(), String::new(), Via::Pending, Phase::Calling, now);
        (call, vec![Action::Cloud(ClientMsg::Dial { call_id, to })])
    }

    /// An `incoming` call: ring.
    pub fn incoming(call_id: String, me: String, from: String, from_name: String, via: IncomingVia, now: f64) -> (Call, Vec<Action>) {
        let via = match via {
            IncomingVia::Direct { url, key, .. } => Via::Direct { url, key },
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
            (Outcome::Connected, Some(d)) => Some(format!("{text} · {}", format_duration(d))),
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

    fn connected(&mut self, now: f64) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Connected;
        if self.connected_at.is_none() {
            self.connected_at = Some(now);
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
        if self.direct_open {
            self.direct_open = false;
            actions.push(Action::CloseDirect);
        }
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

    /// Feed one input; returns what to do.
    pub fn on(&mut self, input: Input, now: f64) -> Vec<Action> {
        let mut a = Vec::new();
        match input {
            Input::Cloud(msg) => self.on_cloud(msg, now, &mut a),
            Input::CloudLost => {
                // A direct leg does not need the cloud; an F4 call (or one not set up yet) does.
                let direct_leg = matches!(self.via, Via::Direct { .. }) && self.direct_open;
                if !direct_leg {
                    self.fail("Connection to the server lost".into(), now, &mut a);
                }
            }
            Input::User(u) => self.on_user(u, now, &mut a),
            Input::DirectOpened => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.direct_open = true;
                if let Via::Direct { key, .. } = &self.via {
                    // C14, claim 10: present the one-time key; `caller` is who connects (the
                    // caller in F1, the switchless callee in C3).
                    a.push(Action::Direct(DirectClientMsg::Present {
                        v: PROTOCOL_VERSION,
                        call_id: self.call_id.clone(),
                        key: key.clone(),
                        caller: self.me.clone(),
                    }));
                }
            }
            Input::Direct(msg) => self.on_direct(msg, now, &mut a),
            Input::DirectClosed => {
                let was_open = self.direct_open;
                self.direct_open = false;
                if self.phase != Phase::Ended {
                    let why = if was_open { "Connection to the gateway lost" } else { "Could not reach the gateway" };
                    // End the attempt at the cloud now rather than at the key's expiry.
                    self.cloud_give_up(&mut a);
                    self.fail(why.into(), now, &mut a);
                }
            }
            Input::LocalOffer(sdp) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                match self.via.clone() {
                    Via::Direct { .. } => a.push(Action::Direct(DirectClientMsg::Offer { sdp })),
                    Via::Peer { key } => {
                        a.push(Action::Cloud(ClientMsg::Signal { call_id: self.call_id.clone(), key: key.clone(), payload: SignalPayload::Offer { sdp } }));
                        self.description_sent = true;
                        self.flush_ice(&key, &mut a);
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
                    a.push(Action::Cloud(ClientMsg::Signal { call_id: self.call_id.clone(), key: key.clone(), payload: SignalPayload::Answer { sdp } }));
                    self.description_sent = true;
                    self.flush_ice(&key, &mut a);
                    self.connected(now);
                }
            }
            Input::LocalIce(c) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                if let Via::Peer { key } = self.via.clone() {
                    self.pending_ice.push(c);
                    if self.description_sent {
                        self.flush_ice(&key, &mut a);
                    }
                }
            }
            Input::MediaUp => {
                self.media_up = true;
                // C3 callee: the gateway bridged once our leg is up.
                if self.direction == Direction::Incoming && matches!(self.via, Via::Direct { .. }) && self.direct_accepted {
                    self.connected(now);
                }
            }
            Input::MediaFailed(why) => {
                if self.phase == Phase::Ended {
                    return a;
                }
                self.hangup(now, &mut a);
                self.failure = Some(why);
            }
        }
        a
    }

    fn flush_ice(&mut self, key: &str, a: &mut Vec<Action>) {
        for c in self.pending_ice.drain(..) {
            let payload = match c {
                Some(c) => SignalPayload::Ice { candidate: c.candidate, sdp_mid: c.sdp_mid, sdp_m_line_index: c.sdp_m_line_index },
                None => SignalPayload::EndOfCandidates,
            };
            a.push(Action::Cloud(ClientMsg::Signal { call_id: self.call_id.clone(), key: key.to_string(), payload }));
        }
    }

    fn start_media(&mut self, a: &mut Vec<Action>, action: Action) {
        self.media_started = true;
        a.push(action);
    }

    fn on_cloud(&mut self, msg: ServerMsg, now: f64, a: &mut Vec<Action>) {
        match msg {
            // C13: connect directly to the callee's gateway with the key.
            ServerMsg::Connect { url, key, .. } => {
                if self.phase == Phase::Ended || self.direction != Direction::Outgoing || self.via != Via::Pending {
                    return;
                }
                self.via = Via::Direct { url: url.clone(), key };
                self.phase = Phase::Connecting;
                a.push(Action::OpenDirect { url });
            }
            // F4: the callee is a browser; offer through the cloud.
            ServerMsg::Peer { key, .. } => {
                if self.phase == Phase::Ended || self.direction != Direction::Outgoing || self.via != Via::Pending {
                    return;
                }
                self.via = Via::Peer { key };
                self.start_media(a, Action::MakeOffer { trickle: true });
            }
            ServerMsg::CallEvent { event, .. } => match event {
                CallEvent::Ringing => {
                    if matches!(self.phase, Phase::Calling | Phase::Connecting) && self.direction == Direction::Outgoing {
                        self.phase = Phase::Ringing;
                    }
                }
                CallEvent::Connected => {
                    if self.direction == Direction::Outgoing {
                        self.connected(now);
                    }
                }
                CallEvent::KeyAccepted | CallEvent::Ended { .. } => {}
            },
            ServerMsg::Signal { payload, .. } => match payload {
                SignalPayload::Offer { sdp } => {
                    if self.direction != Direction::Incoming || self.phase == Phase::Ended || self.media_started {
                        return;
                    }
                    if self.answer_when_offer {
                        self.start_media(a, Action::MakeAnswer { offer: sdp });
                    } else {
                        self.pending_offer = Some(sdp);
                    }
                }
                SignalPayload::Answer { sdp } => {
                    if self.direction == Direction::Outgoing && self.phase != Phase::Ended {
                        a.push(Action::ApplyAnswer { sdp });
                    }
                }
                SignalPayload::Ice { candidate, sdp_mid, sdp_m_line_index } => {
                    if self.phase != Phase::Ended {
                        a.push(Action::AddRemoteIce { candidate, sdp_mid, sdp_m_line_index });
                    }
                }
                SignalPayload::EndOfCandidates => {}
            },
            ServerMsg::Outcome { outcome, duration_ms, .. } => {
                self.cloud_final = true;
                // The cloud's outcome is final; a local failure text stays (it says more).
                self.outcome = Some(outcome);
                if duration_ms.is_some() {
                    self.duration_ms = duration_ms;
                }
                if outcome == Outcome::Connected && self.connected_at.is_none() {
                    // Answered elsewhere in the flow without us seeing `connected`.
                    self.connected_at = Some(now - duration_ms.unwrap_or(0) as f64);
                }
                if self.failure.is_some() && outcome != Outcome::Cancelled && outcome != Outcome::Error {
                    // The cloud knows better (e.g. the callee's switch was unavailable).
                    self.failure = None;
                }
                self.end(now, a);
            }
            ServerMsg::Error { code, message, .. } => {
                // B3: `invalid_call` is followed by the `rejected_invalid` outcome.
                if code == ErrorCode::InvalidCall {
                    return;
                }
                // A refused `dial` changes nothing at the server: no outcome follows.
                if self.phase == Phase::Calling && self.direction == Direction::Outgoing && self.via == Via::Pending {
                    let why = match code {
                        ErrorCode::TooManyRequests => "Too many calls at once".to_string(),
                        ErrorCode::InvalidField => "That is not a valid number".to_string(),
                        _ => format!("Call refused: {message}"),
                    };
                    self.cloud_final = true;
                    self.fail(why, now, a);
                }
            }
            _ => {}
        }
    }

    fn on_direct(&mut self, msg: DirectServerMsg, now: f64, a: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        match msg {
            // C14 done: the key is spent; offer WebRTC with every candidate in the SDP.
            DirectServerMsg::Accepted { .. } => {
                self.direct_accepted = true;
                if !self.media_started {
                    self.start_media(a, Action::MakeOffer { trickle: false });
                }
            }
            DirectServerMsg::Answer { sdp } => a.push(Action::ApplyAnswer { sdp }),
            // C15: the desk phone rings / answered and the gateway bridged.
            DirectServerMsg::Progress { event } => match event {
                CallEvent::Ringing => {
                    if matches!(self.phase, Phase::Calling | Phase::Connecting) && self.direction == Direction::Outgoing {
                        self.phase = Phase::Ringing;
                    }
                }
                CallEvent::Connected => self.connected(now),
                CallEvent::Ended { outcome, duration_ms } => {
                    self.outcome.get_or_insert(outcome);
                    if self.duration_ms.is_none() {
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
                let why = match code {
                    ErrorCode::KeyExpired => "The call could not be connected in time".to_string(),
                    ErrorCode::BadKey | ErrorCode::KeyUsed | ErrorCode::WrongCaller => format!("The gateway refused the call ({code})"),
                    _ => format!("The gateway refused the call: {message}"),
                };
                self.cloud_give_up(a);
                self.fail(why, now, a);
            }
        }
    }

    /// The direct leg could not be set up here: end the attempt at the cloud (it then has an
    /// outcome now rather than at the key's expiry).
    fn cloud_give_up(&mut self, a: &mut Vec<Action>) {
        if self.cloud_final || self.hung_up || self.phase == Phase::Connected {
            return;
        }
        self.hung_up = true;
        match self.direction {
            Direction::Outgoing => a.push(Action::Cloud(ClientMsg::Cancel { call_id: self.call_id.clone() })),
            Direction::Incoming => a.push(Action::Cloud(ClientMsg::Decline { call_id: self.call_id.clone(), reason: DeclineReason::Declined })),
        }
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
                    // C3: connect to the caller's gateway with the key.
                    Via::Direct { url, .. } => a.push(Action::OpenDirect { url }),
                    // F4: answer the caller's offer (now, or when it comes).
                    Via::Peer { .. } => match self.pending_offer.take() {
                        Some(offer) => self.start_media(a, Action::MakeAnswer { offer }),
                        None => self.answer_when_offer = true,
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
            if self.direct_open {
                // The gateway reports the end to the cloud; its outcome follows.
                a.push(Action::Direct(DirectClientMsg::Hangup));
            } else if !self.cloud_final {
                let msg = match (&self.via, self.direction) {
                    (Via::Peer { .. }, _) if answered || self.direction == Direction::Incoming => {
                        if answered {
                            ClientMsg::Hangup { call_id: self.call_id.clone() }
                        } else {
                            ClientMsg::Decline { call_id: self.call_id.clone(), reason: DeclineReason::Declined }
                        }
                    }
                    (_, Direction::Outgoing) => ClientMsg::Cancel { call_id: self.call_id.clone() },
                    (_, Direction::Incoming) => ClientMsg::Decline { call_id: self.call_id.clone(), reason: DeclineReason::Declined },
                };
                a.push(Action::Cloud(msg));
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
        let a = c.on(Input::Cloud(ServerMsg::error(ErrorCode::InvalidCall, "number 4040 does not exist", Some("c5".into()))), 10.0);
        assert!(a.is_empty(), "invalid_call waits for the outcome");
        assert_eq!(c.phase, Phase::Calling);
        let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c5".into(), outcome: Outcome::RejectedInvalid, duration_ms: None }), 20.0);
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
    }

    #[test]
    fn f1_connect_present_offer_answer_progress() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::Connect { call_id: "c1".into(), url: "ws://gw/direct".into(), key: "K".repeat(22), expires_in_ms: 30000 }), 1.0);
        assert_eq!(a, vec![Action::OpenDirect { url: "ws://gw/direct".into() }]);
        assert_eq!(c.phase, Phase::Connecting);
        let a = c.on(Input::DirectOpened, 2.0);
        assert_eq!(a, vec![Action::Direct(DirectClientMsg::Present { v: 1, call_id: "c1".into(), key: "K".repeat(22), caller: "2001".into() })]);
        let a = c.on(Input::Direct(DirectServerMsg::Accepted { call_id: "c1".into() }), 3.0);
        assert_eq!(a, vec![Action::MakeOffer { trickle: false }], "the gateway takes no trickle");
        let a = c.on(Input::LocalOffer("v=0 offer".into()), 4.0);
        assert_eq!(a, vec![Action::Direct(DirectClientMsg::Offer { sdp: "v=0 offer".into() })]);
        let a = c.on(Input::Direct(DirectServerMsg::Answer { sdp: "v=0 answer".into() }), 5.0);
        assert_eq!(a, vec![Action::ApplyAnswer { sdp: "v=0 answer".into() }]);
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
        // The cloud going away does not end a direct call.
        assert!(c.on(Input::CloudLost, 2500.0).is_empty());
        assert_eq!(c.phase, Phase::Connected);
        // Hang up on the direct endpoint; the gateway tells the cloud.
        let a = c.on(Input::User(UserAction::Hangup), 3000.0);
        assert_eq!(msgs(&a), vec!["direct:hangup", "CloseMedia", "CloseDirect", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Call ended · 00:02"));
        // The cloud's outcome refines the duration; nothing else happens.
        let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Connected, duration_ms: Some(2100) }), 3100.0);
        assert!(a.is_empty());
        assert_eq!(c.duration(), Some(2100));
    }

    #[test]
    fn f1_callee_busy_and_key_refusal() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Busy, duration_ms: None }), 1.0);
        assert_eq!(msgs(&a), vec!["Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Busy"));

        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Connect { call_id: "c1".into(), url: "ws://gw/direct".into(), key: "K".repeat(22), expires_in_ms: 30000 }), 1.0);
        c.on(Input::DirectOpened, 2.0);
        let a = c.on(Input::Direct(DirectServerMsg::Error { code: ErrorCode::KeyExpired, message: "too late".into() }), 3.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseDirect", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("The call could not be connected in time"));
        // The cloud's `cancelled` does not replace the better local text.
        c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c1".into(), outcome: Outcome::Cancelled, duration_ms: None }), 4.0);
        assert_eq!(c.outcome_line().as_deref(), Some("The call could not be connected in time"));
    }

    #[test]
    fn unreachable_gateway_cancels_at_the_cloud() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Connect { call_id: "c1".into(), url: "ws://gw/direct".into(), key: "K".repeat(22), expires_in_ms: 30000 }), 1.0);
        let a = c.on(Input::DirectClosed, 2.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Could not reach the gateway"));
    }

    #[test]
    fn f4_caller_offers_through_the_cloud_with_trickle() {
        let mut c = outgoing();
        let a = c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        assert_eq!(a, vec![Action::MakeOffer { trickle: true }]);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Ringing }), 2.0);
        assert_eq!(c.phase, Phase::Ringing);
        // A candidate before the offer went out waits for it.
        let cand = LocalCandidate { candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(), sdp_mid: Some("0".into()), sdp_m_line_index: Some(0) };
        assert!(c.on(Input::LocalIce(Some(cand.clone())), 2.5).is_empty());
        let a = c.on(Input::LocalOffer("offer".into()), 3.0);
        assert_eq!(msgs(&a), vec!["cloud:signal", "cloud:signal"]);
        assert!(matches!(&a[1], Action::Cloud(ClientMsg::Signal { payload: SignalPayload::Ice { .. }, .. })));
        let a = c.on(Input::LocalIce(None), 3.5);
        assert!(matches!(&a[..], [Action::Cloud(ClientMsg::Signal { payload: SignalPayload::EndOfCandidates, .. })]));
        let a = c.on(Input::Cloud(ServerMsg::Signal { call_id: "c1".into(), payload: SignalPayload::Answer { sdp: "answer".into() } }), 4.0);
        assert_eq!(a, vec![Action::ApplyAnswer { sdp: "answer".into() }]);
        let a = c.on(Input::Cloud(ServerMsg::Signal { call_id: "c1".into(), payload: SignalPayload::Ice { candidate: "candidate:2".into(), sdp_mid: Some("0".into()), sdp_m_line_index: None } }), 4.5);
        assert!(matches!(&a[..], [Action::AddRemoteIce { .. }]));
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "c1".into(), event: CallEvent::Connected }), 5.0);
        assert_eq!(c.phase, Phase::Connected);
        // F4 hang up goes through the cloud.
        let a = c.on(Input::User(UserAction::Hangup), 9.0);
        assert_eq!(msgs(&a), vec!["cloud:hangup", "CloseMedia", "Finished"]);
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
    fn f4_callee_answers_before_and_after_the_offer() {
        for offer_first in [true, false] {
            let (mut c, a) = Call::incoming("c4".into(), "2002".into(), "2001".into(), "Alice".into(), IncomingVia::Peer { key: "P".repeat(22) }, 0.0);
            assert_eq!(a, vec![Action::StartRingtone]);
            assert_eq!(c.phase, Phase::Incoming);
            let offer = Input::Cloud(ServerMsg::Signal { call_id: "c4".into(), payload: SignalPayload::Offer { sdp: "offer".into() } });
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
            let a = c.on(Input::LocalAnswer("answer".into()), 3.0);
            assert_eq!(msgs(&a), vec!["cloud:accept", "cloud:signal"], "accept with the key, then the answer");
            assert_eq!(c.phase, Phase::Connected);
            let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c4".into(), outcome: Outcome::Connected, duration_ms: Some(4000) }), 4000.0);
            assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
            assert_eq!(c.outcome_line().as_deref(), Some("Call ended · 00:04"));
        }
    }

    #[test]
    fn incoming_decline_and_missed() {
        let (mut c, _) = Call::incoming("c4".into(), "2002".into(), "2001".into(), "Alice".into(), IncomingVia::Peer { key: "P".repeat(22) }, 0.0);
        let a = c.on(Input::User(UserAction::Decline), 1.0);
        assert_eq!(msgs(&a), vec!["cloud:decline", "StopRingtone", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Declined"));

        let (mut c, _) = Call::incoming("c4".into(), "2002".into(), "2001".into(), "Alice".into(), IncomingVia::Peer { key: "P".repeat(22) }, 0.0);
        let a = c.on(Input::Cloud(ServerMsg::Outcome { call_id: "c4".into(), outcome: Outcome::Cancelled, duration_ms: None }), 1.0);
        assert_eq!(msgs(&a), vec!["StopRingtone", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Missed call"));
    }

    #[test]
    fn f3_incoming_via_direct_presents_as_callee() {
        let via = IncomingVia::Direct { url: "ws://hq/direct".into(), key: "D".repeat(22), expires_in_ms: 30000 };
        let (mut c, _) = Call::incoming("c3".into(), "2001".into(), "1001".into(), "Reception".into(), via, 0.0);
        let a = c.on(Input::User(UserAction::Answer), 1.0);
        assert_eq!(a, vec![Action::StopRingtone, Action::OpenDirect { url: "ws://hq/direct".into() }]);
        let a = c.on(Input::DirectOpened, 2.0);
        assert_eq!(a, vec![Action::Direct(DirectClientMsg::Present { v: 1, call_id: "c3".into(), key: "D".repeat(22), caller: "2001".into() })]);
        assert_eq!(c.on(Input::Direct(DirectServerMsg::Accepted { call_id: "c3".into() }), 3.0), vec![Action::MakeOffer { trickle: false }]);
        c.on(Input::LocalOffer("offer".into()), 4.0);
        c.on(Input::Direct(DirectServerMsg::Answer { sdp: "answer".into() }), 5.0);
        c.on(Input::MediaUp, 6.0);
        assert_eq!(c.phase, Phase::Connected);
        // The phone hangs up: the gateway says so.
        let a = c.on(Input::Direct(DirectServerMsg::Ended { outcome: Outcome::Connected }), 10.0);
        assert_eq!(msgs(&a), vec!["CloseMedia", "CloseDirect", "Finished"]);
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
    fn f4_call_ends_when_the_cloud_is_lost() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        let a = c.on(Input::CloudLost, 2.0);
        assert_eq!(msgs(&a), vec!["CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("Connection to the server lost"));
    }

    #[test]
    fn media_failure_hangs_up() {
        let mut c = outgoing();
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "c1".into(), key: "P".repeat(22) }), 1.0);
        let a = c.on(Input::MediaFailed("No microphone".into()), 2.0);
        assert_eq!(msgs(&a), vec!["cloud:cancel", "CloseMedia", "Finished"]);
        assert_eq!(c.outcome_line().as_deref(), Some("No microphone"));
    }
}
