//! Trunkline wire protocol (version [`PROTOCOL_VERSION`]).
//!
//! Every message between a browser softphone, a switch gateway and the signal server is one
//! JSON object in one WebSocket text frame, tagged by `"type"`. The first message on a
//! connection authenticates it (`login`, `resume` or `switch_auth`) and carries the protocol
//! version `v`; everything after is bound to that identity.
//!
//! This crate does no I/O, so the browser (wasm32), the gateway, the server and the headless
//! client all share one definition. [`ClientMsg::decode`] is the only way network text becomes
//! a message: it bounds the size, parses and validates every field, and returns a typed
//! [`ProtocolError`] whose [`ErrorCode`] is what goes back on the wire.
//!
//! Step letters (A, B1–B6, C1–C3, C11–C15) are those of patent CN110012057B; see [`Step`].

use serde::{Deserialize, Serialize};

pub mod source;
pub mod validate;
pub use source::address_key;
pub use validate::*;

/// The protocol version this crate speaks. A peer announcing another version gets
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest text frame accepted, in bytes. SDP offers from browsers are ~4–6 kB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Deepest nesting of JSON objects and arrays in a client message (the deepest real message
/// nests 4). Deeper text is refused with `bad_message` before it is parsed, so no nesting can
/// exhaust the decoder's stack (serde_json itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 32;

/// Does `text` nest objects/arrays deeper than `max`? A linear scan that skips strings; it does
/// not validate (the parser does).
pub fn json_deeper_than(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Call identifier, chosen by whoever starts the attempt (browser `dial` or gateway
/// `route_query`): 1–64 characters of `[A-Za-z0-9._-]`; a UUID is a good choice.
pub type CallId = String;

/// The steps of patent CN110012057B. They name trace events, call-record traces and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Was the call request sent via a caller-side switch (→ B) or via the cloud (→ C1)?
    A,
    /// Caller's switch receives a desk phone's call request.
    B1,
    /// Caller's switch asks the cloud to validate the callee.
    B2,
    /// Cloud validates the callee; invalid → "invalid call" rejection.
    B3,
    /// Callee is valid: cloud decides how it is reached.
    B4,
    /// Callee has a home switch: answer with that switch's address.
    B5,
    /// Callee has no switch: answer with its device id.
    B6,
    /// Call request from a device via the cloud.
    C1,
    /// Caller's switch is given the callee switch's address + key and connects directly.
    C2,
    /// A switchless callee is told the caller switch's address + key and connects directly.
    C3,
    /// Cloud asks the callee's switch whether the callee accepts.
    C11,
    /// Callee's switch queues the call and answers with its address + one-time key (or declines).
    C12,
    /// Cloud relays the switch's address + key (or its decline) to the caller.
    C13,
    /// Caller connects directly to the switch and presents the key.
    C14,
    /// Switch verifies the key and bridges the call to the desk phone.
    C15,
    /// Browser-to-browser relay of offer/answer/ICE (flow F4; not a patent step).
    F4,
    /// Web Push wake-up of a switchless callee that has no live WebSocket (part of F4, and of
    /// C3's "the callee is told, over its WebSocket or by Web Push"; not a patent step of its own).
    Push,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::A => "A",
            Step::B1 => "B1",
            Step::B2 => "B2",
            Step::B3 => "B3",
            Step::B4 => "B4",
            Step::B5 => "B5",
            Step::B6 => "B6",
            Step::C1 => "C1",
            Step::C2 => "C2",
            Step::C3 => "C3",
            Step::C11 => "C11",
            Step::C12 => "C12",
            Step::C13 => "C13",
            Step::C14 => "C14",
            Step::C15 => "C15",
            Step::F4 => "F4",
            Step::Push => "Push",
        }
    }

    /// Every step, in the order above (e.g. to parse stored traces back).
    pub const ALL: [Step; 17] = [
        Step::A,
        Step::B1,
        Step::B2,
        Step::B3,
        Step::B4,
        Step::B5,
        Step::B6,
        Step::C1,
        Step::C2,
        Step::C3,
        Step::C11,
        Step::C12,
        Step::C13,
        Step::C14,
        Step::C15,
        Step::F4,
        Step::Push,
    ];

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of device an account is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Browser,
    Deskphone,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Browser => "browser",
            AccountKind::Deskphone => "deskphone",
        }
    }
}

impl std::str::FromStr for AccountKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "browser" => Ok(AccountKind::Browser),
            "deskphone" => Ok(AccountKind::Deskphone),
            other => Err(format!("unknown account kind {other:?} (expected browser or deskphone)")),
        }
    }
}

/// Why a callee (or its switch) did not take a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    /// Callee is on another call (SIP 486).
    Busy,
    /// Callee's device is not registered / not online (SIP 480).
    NotRegistered,
    /// Callee (or its user) refused the call (SIP 603).
    Declined,
}

impl DeclineReason {
    pub fn outcome(self) -> Outcome {
        match self {
            DeclineReason::Busy => Outcome::Busy,
            DeclineReason::NotRegistered => Outcome::CalleeOffline,
            DeclineReason::Declined => Outcome::Declined,
        }
    }
}

/// The one final outcome every call attempt ends with (flows F5/F6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call was answered; `duration_ms` says for how long it lasted.
    Connected,
    /// B3: the callee does not exist (SIP 404).
    RejectedInvalid,
    Declined,
    Busy,
    NoAnswer,
    CalleeOffline,
    /// The switch that should carry the call is offline or did not answer in time.
    SwitchUnavailable,
    /// The one-time key was not presented in time.
    KeyExpired,
    Cancelled,
    Error,
    /// The direct connection (ICE + DTLS to the switch, or between two browsers) could not be
    /// made: the networks in between let no path through (reported with `connect_failed`).
    ConnectFailed,
    /// The call was connected, then its media path died (ICE/DTLS to the switch or the other
    /// browser lost and not back within the grace, e.g. the gateway crashed): a party said so
    /// with `connect_failed` after the call connected. Carries `duration_ms`.
    MediaLost,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Connected,
        Outcome::RejectedInvalid,
        Outcome::Declined,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::CalleeOffline,
        Outcome::SwitchUnavailable,
        Outcome::KeyExpired,
        Outcome::Cancelled,
        Outcome::Error,
        Outcome::ConnectFailed,
        Outcome::MediaLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::RejectedInvalid => "rejected_invalid",
            Outcome::Declined => "declined",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::CalleeOffline => "callee_offline",
            Outcome::SwitchUnavailable => "switch_unavailable",
            Outcome::KeyExpired => "key_expired",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::MediaLost => "media_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The SIP final response a desk phone caller gets for this outcome.
    pub fn sip_status(self) -> (u16, &'static str) {
        match self {
            Outcome::Connected => (200, "OK"),
            Outcome::RejectedInvalid => (404, "Not Found"),
            Outcome::Declined => (603, "Decline"),
            Outcome::Busy => (486, "Busy Here"),
            Outcome::NoAnswer => (480, "Temporarily Unavailable"),
            Outcome::CalleeOffline => (480, "Temporarily Unavailable"),
            Outcome::SwitchUnavailable => (503, "Service Unavailable"),
            Outcome::KeyExpired => (408, "Request Timeout"),
            Outcome::Cancelled => (487, "Request Terminated"),
            Outcome::Error => (500, "Server Internal Error"),
            Outcome::ConnectFailed => (503, "Service Unavailable"),
            // Only after the answer: a desk phone gets BYE, not a final response; for completeness.
            Outcome::MediaLost => (503, "Service Unavailable"),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebRTC negotiation relayed by the cloud between two switchless browsers (F4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalPayload {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Ice {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_m_line_index: Option<u16>,
    },
    EndOfCandidates,
}

/// Progress of a call reported by the party that carries it (a switch, or the callee browser
/// in F4) and forwarded to the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CallEvent {
    /// C14 done: the connecting party presented a valid key on the switch's DataChannel.
    KeyAccepted,
    /// The callee's device is ringing.
    Ringing,
    /// The callee answered (C15 bridged).
    Connected,
    /// The call is over.
    Ended {
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
}

/// A switch's answer to the cloud's C11 question "does the callee accept?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum QueryAnswer {
    /// C12, claim 9: the call is in the switch's waiting queue; connect to this switch with
    /// this key. `url` names the answering switch, `switch:<its switch_id>` (see
    /// [`switch_address`]): the connection itself is C14 over WebRTC through the cloud.
    Accept { url: String, key: String, expires_in_ms: u64 },
    /// C12: the callee cannot take the call.
    Decline { reason: DeclineReason },
}

/// The cloud's answer to a switch's B2 validation request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "route", rename_all = "snake_case")]
pub enum Route {
    /// B3: there is no such callee. The desk phone gets SIP 404 with `reason`.
    Invalid { reason: String },
    /// The callee's home switch is the asking switch itself: connect locally (F7).
    Local,
    /// B5: the callee's home switch. The cloud is fetching a key from it (C11–C12); a
    /// `connect` (C2) or an `outcome` follows. `url` is `switch:<switch_id>`.
    Switch { switch_id: String, url: String },
    /// B6: the callee is a switchless device. The asking switch must queue the call and send
    /// `direct_offer` (its own address + key) for the cloud to pass on (C3).
    Device { device_id: String },
}

/// How an incoming call reaches a switchless browser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum IncomingVia {
    /// C3: connect directly to the caller's switch `url` (`switch:<switch_id>`) over WebRTC
    /// (`direct_signal`) and present `key` on the DataChannel.
    Direct { url: String, key: String, expires_in_ms: u64 },
    /// F4: answer with `accept` and relay WebRTC through the cloud, presenting `key`.
    Peer { key: String },
}

/// One STUN or TURN server, shaped like WebRTC's `RTCIceServer` so a browser passes it on
/// unchanged: `urls` such as `stun:turn.example.com:3478`,
/// `turn:turn.example.com:443?transport=tcp` or `turns:…`; TURN entries carry a TURN REST
/// credential (`username` = `<unix expiry>:<number or switch id>`, `credential` =
/// base64(HMAC-SHA1(secret, username)), as coturn's `use-auth-secret` checks).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A desk phone served by a switch, with its SIP digest verifiers (never the password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneEntry {
    pub number: String,
    pub display_name: String,
    /// hex MD5(number:realm:password), RFC 2617 HA1.
    pub ha1_md5: String,
    /// hex SHA-256(number:realm:password), RFC 8760 HA1.
    pub ha1_sha256: String,
}

/// Messages a browser or a switch gateway sends to the signal server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Browser sign-in with number + password.
    Login { v: u16, number: String, password: String },
    /// Browser sign-in with a session token from an earlier `welcome` (e.g. after a reconnect).
    Resume { v: u16, token: String },
    /// Switch gateway sign-in with its provisioned secret. `direct_urls` (optional, 0–8
    /// `ws://`/`wss://` addresses) is what an older gateway advertised for its retired
    /// WebSocket direct endpoint: kept in the directory for the admin views, never handed to a
    /// caller. Gateways of this version send none (they listen for no caller).
    SwitchAuth {
        v: u16,
        switch_id: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        direct_urls: Vec<String>,
        /// The cloud call ids of the calls this switch carries right now (at most
        /// [`MAX_CARRIED_CALLS`]), so the cloud can reconcile after the link was lost: calls of
        /// this switch it still has open and that are not listed ended while the link was down
        /// (or the gateway restarted). Absent (an older gateway): nothing is reconciled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calls: Option<Vec<CallId>>,
    },
    /// A: a browser asks the cloud to place a call (→ C1).
    Dial { call_id: CallId, to: String },
    /// The caller gives up before the call is connected.
    Cancel { call_id: CallId },
    /// F4: the switchless callee takes the call, presenting the key from `incoming`.
    Accept { call_id: CallId, key: String },
    /// The callee (browser, or the switch for its phone) refuses the call.
    Decline { call_id: CallId, reason: DeclineReason },
    /// F4: WebRTC negotiation for the peer, with the call's key.
    Signal { call_id: CallId, key: String, payload: SignalPayload },
    /// C14 over WebRTC: negotiation between the party that connects to a switch (F1: the
    /// calling browser; F2: the calling switch; F3: the called browser) and the switch that
    /// carries the call, relayed by the cloud over the links both already hold. Allowed once
    /// the address and key were handed out (`connect` / `incoming` via `direct`) until the
    /// call ends. The key itself is never in it: it is presented on the DataChannel, inside
    /// DTLS, once the direct connection is up.
    DirectSignal { call_id: CallId, payload: SignalPayload },
    /// Either party of an F4 call hangs up.
    Hangup { call_id: CallId },
    /// The direct connection of this call (C14 over WebRTC to the switch, or F4 between the
    /// browsers) could not be made — ICE failed or never completed; `reason` says what was
    /// seen (≤ 200 characters, for the record and logs). The attempt ends `connect_failed`.
    /// Any party of a call that is not connected yet may send it.
    ConnectFailed { call_id: CallId, reason: String },
    /// Progress reported by the party that carries the call.
    CallEvent { call_id: CallId, event: CallEvent },
    /// A switch's end-of-call report: the end of a call it carried (as `call_event` /
    /// `ended`), with what the call record needs, so that a cloud that no longer knows the
    /// call (it restarted while the call was up, or the report was queued while the link was
    /// down) still writes a complete record. Idempotent: a report for a call already recorded
    /// changes nothing. Times are Unix ms on the switch's clock; `duration_ms` is the talk time
    /// of a connected call.
    CallReport {
        call_id: CallId,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        from: String,
        to: String,
        started_ms: i64,
        ended_ms: i64,
    },
    /// B1/B2: a switch asks the cloud to validate the callee of its desk phone's call.
    RouteQuery { call_id: CallId, from: String, to: String },
    /// C12: a switch answers the cloud's `callee_query`.
    QueryAnswer { call_id: CallId, answer: QueryAnswer },
    /// C3: after a B6 route, the caller's switch hands the cloud its address (`switch:<its
    /// switch_id>`) + key for the callee.
    DirectOffer { call_id: CallId, url: String, key: String, expires_in_ms: u64 },
    /// Browser: keep this Web Push subscription for my account, so the server can wake me when
    /// a call comes while I have no live connection. The fields are those of the browser's
    /// `PushSubscription` (made with `welcome.vapid_public_key` as `applicationServerKey`):
    /// `endpoint`, and `keys.p256dh` / `keys.auth` (unpadded base64url). No reply on success;
    /// an `error` otherwise (a `ping` right after tells when it is stored).
    PushSubscribe { endpoint: String, p256dh: String, auth: String },
    /// Browser: forget this subscription of my account (unknown endpoints are ignored).
    PushUnsubscribe { endpoint: String },
    /// A browser asks for its call history (newest first, from the server's call records);
    /// answered with `history`.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Browser: sign out. The server revokes this connection's session token (the one from
    /// its `welcome`; it can no longer `resume`) and closes the connection. No reply.
    Logout,
    /// Keep-alive; answered with `pong`.
    Ping,
}

impl ClientMsg {
    /// The `type` tag, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Login { .. } => "login",
            ClientMsg::Resume { .. } => "resume",
            ClientMsg::SwitchAuth { .. } => "switch_auth",
            ClientMsg::Dial { .. } => "dial",
            ClientMsg::Cancel { .. } => "cancel",
            ClientMsg::Accept { .. } => "accept",
            ClientMsg::Decline { .. } => "decline",
            ClientMsg::Signal { .. } => "signal",
            ClientMsg::DirectSignal { .. } => "direct_signal",
            ClientMsg::Hangup { .. } => "hangup",
            ClientMsg::ConnectFailed { .. } => "connect_failed",
            ClientMsg::CallEvent { .. } => "call_event",
            ClientMsg::CallReport { .. } => "call_report",
            ClientMsg::RouteQuery { .. } => "route_query",
            ClientMsg::QueryAnswer { .. } => "query_answer",
            ClientMsg::DirectOffer { .. } => "direct_offer",
            ClientMsg::PushSubscribe { .. } => "push_subscribe",
            ClientMsg::PushUnsubscribe { .. } => "push_unsubscribe",
            ClientMsg::History { .. } => "history",
            ClientMsg::Logout => "logout",
            ClientMsg::Ping => "ping",
        }
    }

    /// The call this message is about, if any.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            ClientMsg::Dial { call_id, .. }
            | ClientMsg::Cancel { call_id }
            | ClientMsg::Accept { call_id, .. }
            | ClientMsg::Decline { call_id, .. }
            | ClientMsg::Signal { call_id, .. }
            | ClientMsg::DirectSignal { call_id, .. }
            | ClientMsg::Hangup { call_id }
            | ClientMsg::ConnectFailed { call_id, .. }
            | ClientMsg::CallEvent { call_id, .. }
            | ClientMsg::CallReport { call_id, .. }
            | ClientMsg::RouteQuery { call_id, .. }
            | ClientMsg::QueryAnswer { call_id, .. }
            | ClientMsg::DirectOffer { call_id, .. } => Some(call_id),
            _ => None,
        }
    }

    /// Parse one text frame from the network: size bound, JSON, then field validation.
    pub fn decode(text: &str) -> Result<ClientMsg, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::MessageTooLarge,
                format!("message is {} bytes; the limit is {MAX_MESSAGE_BYTES}", text.len()),
            ));
        }
        if json_deeper_than(text, MAX_JSON_DEPTH) {
            return Err(ProtocolError::new(ErrorCode::BadMessage, format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")));
        }
        let msg: ClientMsg = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, format!("not a valid message: {e}")))?;
        msg.validate()?;
        Ok(msg)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("protocol messages always serialize")
    }
}

/// Messages the signal server sends to a browser or a switch gateway.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Browser signed in. Keep `session_token` to `resume` after a reconnect.
    Welcome {
        v: u16,
        number: String,
        display_name: String,
        kind: AccountKind,
        session_token: String,
        session_expires_in_s: u64,
        /// The server's VAPID public key (RFC 8292): an uncompressed P-256 point, unpadded
        /// base64url (87 characters). Pass it (decoded) as `applicationServerKey` to
        /// `pushManager.subscribe`, then send `push_subscribe`. Absent when the server has Web
        /// Push turned off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vapid_public_key: Option<String>,
        /// STUN/TURN servers for this browser's WebRTC connections (the `iceServers` of an
        /// `RTCConfiguration`), TURN ones with short-lived credentials. Renewed by an
        /// `ice_servers` message before they expire. Empty when the server has none configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// Switch signed in; `phones` are the desk phones whose home switch it is; `ice_servers`
    /// are the STUN/TURN servers it gathers its own candidates with (renewed like a browser's).
    SwitchWelcome {
        v: u16,
        switch_id: String,
        sip_realm: String,
        phones: Vec<PhoneEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// Fresh STUN/TURN credentials, sent before the ones from `welcome` (or the last
    /// `ice_servers`) expire. Replace the old list; calls in progress may keep their allocation.
    IceServers {
        ice_servers: Vec<IceServer>,
        expires_in_s: u64,
    },
    /// The directory changed: the full current list of this switch's phones.
    PhonesUpdate {
        phones: Vec<PhoneEntry>,
    },
    /// Something the peer sent was refused; nothing changed.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
    },
    /// Answer to a switch's `route_query` (B3 / B5 / B6, or local).
    Route {
        call_id: CallId,
        route: Route,
    },
    /// C11: does `to` (a phone of yours) accept a call from `from`?
    CalleeQuery {
        call_id: CallId,
        from: String,
        from_name: String,
        to: String,
    },
    /// C13 (to a browser) / C2 (to a switch): connect directly to switch `url`
    /// (`switch:<switch_id>`, a name, not a transport address) and present `key`: offer WebRTC
    /// with a `trunkline-direct` DataChannel through `direct_signal`, then send the key on it.
    Connect {
        call_id: CallId,
        url: String,
        key: String,
        expires_in_ms: u64,
    },
    /// F4, to the caller: the callee is a switchless browser that is being rung; negotiate
    /// WebRTC with `signal` messages carrying this key (the callee got the same key).
    Peer {
        call_id: CallId,
        key: String,
    },
    /// An incoming call for a switchless browser (C3 or F4).
    Incoming {
        call_id: CallId,
        from: String,
        from_name: String,
        via: IncomingVia,
    },
    /// F4: WebRTC negotiation from the peer.
    Signal {
        call_id: CallId,
        payload: SignalPayload,
    },
    /// C14 over WebRTC: negotiation from the other end of the direct connection (the switch,
    /// or the party connecting to it); see `ClientMsg::DirectSignal`.
    DirectSignal {
        call_id: CallId,
        payload: SignalPayload,
    },
    /// Progress of your call.
    CallEvent {
        call_id: CallId,
        event: CallEvent,
    },
    /// Final: the call attempt is over with this outcome. Sent exactly once per party.
    Outcome {
        call_id: CallId,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    Pong,
    /// Answer to `history`: the browser's call records, newest first.
    History {
        calls: Vec<CallSummary>,
    },
}

/// One call record, as a browser sees its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSummary {
    pub call_id: CallId,
    pub caller: String,
    pub callee: String,
    /// Unix ms.
    pub started_ms: i64,
    pub ended_ms: i64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Most history entries one `history` request returns.
pub const MAX_HISTORY: u32 = 200;

impl ServerMsg {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("protocol messages always serialize")
    }

    pub fn decode(text: &str) -> Result<ServerMsg, ProtocolError> {
        serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, format!("not a valid server message: {e}")))
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, call_id: Option<CallId>) -> ServerMsg {
        ServerMsg::Error { code, message: message.into(), call_id }
    }
}

/// Wire error codes. Each is documented in docs/protocol.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown `type`, or a field of the wrong type.
    BadMessage,
    /// A field is present but its value is not allowed (length, characters, range).
    InvalidField,
    /// Frame larger than [`MAX_MESSAGE_BYTES`] (or a binary frame).
    MessageTooLarge,
    /// `v` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The first message must be `login`, `resume` or `switch_auth`.
    NotAuthenticated,
    /// A second sign-in on an authenticated connection.
    AlreadyAuthenticated,
    /// Wrong number/password, token or switch secret. The connection is closed.
    AuthFailed,
    /// Too many failed sign-ins for this account or address; try later.
    RateLimited,
    /// The same session signed in on another connection; this one is closed.
    SessionReplaced,
    /// This kind of peer may not send this message (e.g. a browser sending `route_query`).
    Forbidden,
    /// A `call_id` already in use.
    DuplicateCall,
    /// No such call (or it is over).
    UnknownCall,
    /// The call exists but this peer is not a party of it.
    NotYourCall,
    /// The message does not fit the call's current state (out of order).
    WrongState,
    /// The key presented is not the call's key (forged, or for another call).
    BadKey,
    /// The key was valid but its time is up.
    KeyExpired,
    /// The key was already used once (keys are single-use).
    KeyUsed,
    /// The key belongs to this call but was issued for another caller.
    WrongCaller,
    /// The feature is not available in this version.
    NotImplemented,
    /// B3: the callee does not exist.
    InvalidCall,
    /// Too many messages; slow down.
    TooManyRequests,
    /// Something broke on the server; the message had no effect.
    Internal,
    /// The server cannot store anything right now (its disk is full, or its storage fails):
    /// the message had no effect (nothing half-written); try again later. Reads still work.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SessionReplaced => "session_replaced",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::DuplicateCall => "duplicate_call",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::NotYourCall => "not_your_call",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::KeyUsed => "key_used",
            ErrorCode::WrongCaller => "wrong_caller",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::InvalidCall => "invalid_call",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the code for the wire and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError { code, message: message.into() }
    }

    pub fn to_msg(&self, call_id: Option<CallId>) -> ServerMsg {
        ServerMsg::error(self.code, self.message.clone(), call_id)
    }
}

/// Messages the party connecting to a switch (browser or another gateway) sends on the
/// `trunkline-direct` DataChannel of its WebRTC connection to that switch, steps C14–C15.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DirectClientMsg {
    /// C14, claim 10: present the one-time key for `call_id`. `caller` is who connects: the
    /// caller's number (F1/F2) or the callee device's number (C3).
    Present { v: u16, call_id: CallId, key: String, caller: String },
    /// Not used on the DataChannel (the offer went through the cloud as `direct_signal`): a
    /// gateway answers it with `wrong_state`. Left from the retired WebSocket direct endpoint.
    Offer { sdp: String },
    /// Leave the call.
    Hangup,
}

/// Messages a gateway sends back on the `trunkline-direct` DataChannel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DirectServerMsg {
    /// The key checked out: it is now spent, and the call proceeds on this connection (C15).
    Accepted { call_id: CallId },
    /// Not sent on the DataChannel (the answer goes through the cloud as `direct_signal`).
    /// Left from the retired WebSocket direct endpoint.
    Answer { sdp: String },
    /// Progress of the desk phone: `ringing`, `connected`.
    Progress { event: CallEvent },
    /// Refused; for a key refusal the gateway closes the WebRTC leg after this. Nothing rang.
    Error { code: ErrorCode, message: String },
    /// The call ended.
    Ended { outcome: Outcome },
}

impl DirectClientMsg {
    pub fn decode(text: &str) -> Result<DirectClientMsg, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::new(ErrorCode::MessageTooLarge, "message too large"));
        }
        let m: DirectClientMsg = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, format!("not a valid message: {e}")))?;
        if let DirectClientMsg::Offer { sdp } = &m
            && (sdp.is_empty() || sdp.len() > validate::MAX_SDP_LEN)
        {
            return Err(ProtocolError::new(ErrorCode::InvalidField, "sdp: must be 1–12 KiB"));
        }
        if let DirectClientMsg::Present { v, call_id, key, caller } = &m {
            if *v != PROTOCOL_VERSION {
                return Err(ProtocolError::new(ErrorCode::UnsupportedVersion, format!("protocol version {v} is not supported")));
            }
            check_call_id(call_id)?;
            check_key(key)?;
            check_number("caller", caller)?;
        }
        Ok(m)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("protocol messages always serialize")
    }
}

impl DirectServerMsg {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("protocol messages always serialize")
    }

    pub fn decode(text: &str) -> Result<DirectServerMsg, ProtocolError> {
        serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, format!("not a valid direct message: {e}")))
    }
}

/// Fields that carry a secret or something as good as one (passwords, switch secrets, session
/// tokens, TURN credentials, SIP digest verifiers). `Debug` of a message shows `"<redacted>"`
/// in their place, so a `{:?}` in a log line or a panic can never print one.
pub const SECRET_FIELDS: [&str; 7] = ["password", "secret", "token", "session_token", "credential", "ha1_md5", "ha1_sha256"];

fn redacted_json<T: Serialize>(value: &T) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if SECRET_FIELDS.contains(&k.as_str()) && !v.is_null() {
                        *v = serde_json::Value::String("<redacted>".into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    walk(&mut v);
    v
}

// Hand-written Debug (the wire JSON with secrets redacted): these types carry passwords,
// secrets, tokens, TURN credentials or HA1 verifiers.
impl std::fmt::Debug for ClientMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientMsg{}", redacted_json(self))
    }
}

impl std::fmt::Debug for ServerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerMsg{}", redacted_json(self))
    }
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IceServer{}", redacted_json(self))
    }
}

impl std::fmt::Debug for PhoneEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PhoneEntry{}", redacted_json(self))
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn debug_of_messages_never_shows_secrets() {
        let msgs: Vec<String> = vec![
            format!("{:?}", ClientMsg::Login { v: 1, number: "2001".into(), password: "PW-hunter2".into() }),
            format!("{:?}", ClientMsg::Resume { v: 1, token: "TOKEN-abc".into() }),
            format!(
                "{:?}",
                ClientMsg::SwitchAuth {
                    v: 1,
                    switch_id: "hq".into(),
                    secret: "SECRET-xyz".into(),
                    direct_urls: vec![],
                    calls: None
                }
            ),
            format!(
                "{:?}",
                ServerMsg::Welcome {
                    v: 1,
                    number: "2001".into(),
                    display_name: "A".into(),
                    kind: AccountKind::Browser,
                    session_token: "TOKEN-def".into(),
                    session_expires_in_s: 5,
                    vapid_public_key: None,
                    ice_servers: vec![IceServer {
                        urls: vec!["turn:x".into()],
                        username: Some("1:2001".into()),
                        credential: Some("CRED-ghi".into()),
                    }],
                }
            ),
            format!(
                "{:?}",
                ServerMsg::PhonesUpdate {
                    phones: vec![PhoneEntry {
                        number: "1001".into(),
                        display_name: "D".into(),
                        ha1_md5: "HA1-md5".into(),
                        ha1_sha256: "HA1-sha".into(),
                    }]
                }
            ),
        ];
        for m in &msgs {
            for secret in ["PW-", "TOKEN-", "SECRET-", "CRED-", "HA1-"] {
                assert!(!m.contains(secret), "{secret} in {m}");
            }
            assert!(m.contains("<redacted>"), "{m}");
        }
        assert!(msgs[0].contains("2001") && msgs[0].contains("login"), "the rest stays readable: {}", msgs[0]);
        assert_eq!(format!("{:?}", ClientMsg::Logout), r#"ClientMsg{"type":"logout"}"#);
    }

    #[test]
    fn logout_round_trips() {
        let m = ClientMsg::decode(r#"{"type":"logout"}"#).unwrap();
        assert_eq!(m, ClientMsg::Logout);
        assert_eq!(m.kind(), "logout");
        assert_eq!(m.encode(), r#"{"type":"logout"}"#);
    }

    #[test]
    fn deep_nesting_is_a_typed_refusal() {
        // Inside a string, brackets do not count (escaped quotes included).
        let s = format!(r#"{{"type":"dial","call_id":"c","to":"1001","x":"\"{}"}}"#, "[".repeat(1000));
        assert!(!json_deeper_than(&s, MAX_JSON_DEPTH));
        for depth in [MAX_JSON_DEPTH, 129, 5000] {
            let text = format!(r#"{{"type":"ping","x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let e = ClientMsg::decode(&text).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadMessage, "depth {depth}");
            if depth >= MAX_JSON_DEPTH {
                assert!(e.message.contains("nested deeper"), "{}", e.message);
            }
        }
        // Real messages stay well inside the limit.
        assert!(ClientMsg::decode(r#"{"type":"ping","x":[[[1]]]}"#).is_ok());
    }
}
