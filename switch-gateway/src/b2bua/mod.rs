//! The gateway core: registrar, digest authentication, SIP transactions, B2BUA calls, the
//! waiting queue and the cloud exchange — one sans-IO state machine.
//!
//! Inputs carry `now`: parsed SIP messages with their source ([`Core::on_sip`]), cloud link
//! events ([`Core::on_cloud`], including the `direct_signal` of C14 over WebRTC), what arrives
//! on a WebRTC session's `trunkline-direct` DataChannel ([`Core::on_direct`]), what the callee
//! switch says to us as an F2 caller ([`Core::on_remote`]) and timers ([`Core::handle_timeout`]).
//! Outputs ([`Output`]) are datagrams/frames to send, cloud messages, DataChannel replies,
//! session and bridge commands and media relay commands. Media ports come from an injected
//! [`MediaPorts`] so the core can write SDP synchronously without owning sockets. It reads no
//! clock and draws no OS randomness ([`CoreInputs`]: wall time and an RNG seed from the driver),
//! and writes no file ([`Output::SavePhones`]); `tests/core_has_no_clock_or_io.rs` checks that.
//!
//! Patent steps on this side: F7 (local call), A/B1/B2 (a phone dials elsewhere → ask the
//! cloud), B3 → 404, B5/B6 → C2/C3, C11/C12 (callee query → waiting queue + key), C14 (the
//! WebRTC leg through the cloud, then the key on its DataChannel), C15 (the phone side attached
//! to that leg). No caller ever connects to a port of the gateway: the only transport to it is
//! the WebRTC connection whose offer/answer the cloud relayed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trunkline_protocol::{
    CallEvent, ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode, Outcome, PhoneEntry, QueryAnswer, Route,
    ServerMsg, SignalPayload,
};
use trunkline_sip::digest::{self, Algorithm, NonceCheck, NonceSource, NonceUses};
use trunkline_sip::{CSeq, Contact, Host, Message, Method, NameAddr, Request, Response, Scheme, Uri};

use crate::cloud_link::LinkEvent;
use crate::guard::{Admit, BlockEvent, Blocked, Guard, GuardConfig};
use crate::phones::{PhoneList, Phones};
use crate::queue::{Direction, KeyError, WaitingQueue};
use crate::registrar::{ContactUpdate, RegisterError, Registrar, Transport};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dialog;

/// RFC 3261 timer T1 (RTT estimate) and T2 (max retransmit interval).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Timers B/F/H/J: 64·T1.
const T64: Duration = Duration::from_secs(32);
/// How long a phone's call waits for the cloud's answer to B2 before giving up (503).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(8);
/// How old a nonce may be before we ask again with `stale=true`.
const NONCE_MAX_AGE: u64 = 300;
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE";

pub struct CoreConfig {
    pub switch_id: String,
    pub adv_ip: IpAddr,
    pub sip_port: u16,
    pub ring_timeout: Duration,
    pub key_ttl: Duration,
    pub min_expires: u32,
    pub max_expires: u32,
    /// Offered in challenges, in this order.
    pub digest_algorithms: Vec<Algorithm>,
    /// The echo-test number, answered by the gateway itself.
    pub echo_number: Option<String>,
    /// Limits on password guessing and scanning ([`crate::guard`]), and the cap on server
    /// transactions (`max_server_transactions`).
    pub guard: GuardConfig,
}

/// What a sans-IO core cannot get by itself: the driver reads the clocks and the OS's entropy
/// once and hands them over; tests pass fixed values, so every run is the same.
pub struct CoreInputs {
    /// An `Instant` and the Unix time (ms) at that instant: wall time is derived from the
    /// monotonic `now` of each input (digest nonce ages, end-of-call reports), as in the
    /// signal server's engine, so a stepped system clock cannot move it backwards mid-run.
    pub clock_base: (Instant, i64),
    /// Seeds the core's RNG (SIP tags, branches, Call-IDs, one-time keys). `StdRng` is a
    /// CSPRNG: seeded from the OS by the driver, keys stay unguessable.
    pub rng_seed: [u8; 32],
    /// The secret digest nonces are MACed with.
    pub nonce_secret: [u8; 32],
}

/// Accepted (nonce, nc) pairs remembered at most (only successful authentications add one).
const MAX_NONCE_USES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaLeg {
    /// Faces the caller (leg A).
    A,
    /// Faces the callee (leg B).
    B,
}

/// A relay's two local RTP addresses, allocated before the SDP that names them is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaPair {
    pub id: u64,
    pub a_local: SocketAddr,
    pub b_local: SocketAddr,
}

/// The echo-test endpoint set up for one call: where it receives, and the SDP answer to the
/// offer it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoSetup {
    pub id: u64,
    pub local: SocketAddr,
    pub answer: String,
}

/// Where relay ports come from (the driver binds sockets; tests hand out fake addresses).
pub trait MediaPorts: Send {
    fn allocate(&mut self) -> Option<MediaPair>;
    /// Start an echo endpoint for a peer that offered `offer`: it plays a short prompt tone,
    /// then sends back what it hears. Stopped with [`Output::MediaStop`].
    fn start_echo(&mut self, offer: &str) -> Option<EchoSetup>;
}

/// A WebRTC ⇄ RTP bridge's set-up (C15): `answer` is the WebRTC SDP this side sends (the F2
/// caller's offer; empty when a session's answer already went out), `phone_sdp` the SDP for the
/// desk phone side (an offer, or the answer to `phone_offer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSetup {
    pub id: u64,
    pub answer: String,
    pub phone_sdp: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("unusable offer: {0}")]
    BadOffer(String),
    #[error("no media ports left")]
    NoPorts,
}

impl BridgeError {
    fn code(&self) -> ErrorCode {
        match self {
            BridgeError::BadOffer(_) => ErrorCode::InvalidField,
            BridgeError::NoPorts => ErrorCode::Internal,
        }
    }
}

/// Builds the WebRTC legs of C14 over WebRTC and bridges them to desk phones (the driver runs
/// str0m + an RTP socket pair per call; tests fake it). A session's id is also its bridge's id
/// and the id its DataChannel is known by ([`Core::on_direct`], [`Output::Direct`]).
pub trait Bridges: Send {
    /// C14 over WebRTC, carrier side: a WebRTC leg (full ICE, DTLS, a DataChannel) answering
    /// `offer`, which came through the cloud before any key: returns the session's id and the
    /// answer. Nothing rings: the key is checked when the connecting party presents it on the
    /// DataChannel.
    fn open_session(&mut self, offer: &str) -> Result<(u64, String), BridgeError>;
    /// C15 for a session: add the desk-phone side to session `id`'s leg (an offer of the law
    /// the WebRTC side prefers, or the answer to `phone_offer`). `BridgeSetup::answer` is empty:
    /// the session's answer already went out.
    fn attach(&mut self, id: u64, phone_offer: Option<&str>) -> Result<BridgeSetup, BridgeError>;
    /// F2 caller side: a full-ICE leg offering audio and the `trunkline-direct` DataChannel to
    /// present the key on (the offer in `BridgeSetup::answer`), with the phone side answering
    /// `phone_offer`.
    fn offer_session(&mut self, phone_offer: &str) -> Result<BridgeSetup, BridgeError>;
    /// F2 caller side: apply the callee switch's answer to bridge `id`'s offer.
    fn remote_answer(&mut self, id: u64, answer: &str) -> Result<(), BridgeError>;
}

/// What the callee switch said on our session's DataChannel, or its answer through the cloud
/// (F2, caller side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteEvent {
    Accepted,
    Answer(String),
    Progress(CallEvent),
    Ended(Outcome),
    Refused {
        code: ErrorCode,
        message: String,
    },
    /// The connection closed (or could not be opened).
    Closed(String),
}

#[derive(Debug, PartialEq)]
pub enum Output {
    Sip {
        to: SocketAddr,
        transport: Transport,
        data: Vec<u8>,
    },
    Cloud(ClientMsg),
    /// Send `msg` on session `conn`'s DataChannel; with `close` (a refusal, or the call
    /// ended), stop its leg afterwards.
    Direct {
        conn: u64,
        msg: DirectServerMsg,
        close: bool,
    },
    MediaStart {
        id: u64,
        a_remote: Option<SocketAddr>,
        b_remote: Option<SocketAddr>,
    },
    MediaRemote {
        id: u64,
        leg: MediaLeg,
        addr: SocketAddr,
    },
    /// Stop (or, if never started, just free) relay `id`.
    MediaStop {
        id: u64,
    },
    /// Ignore everything from `ip` until `until` (drop it before parsing): a guard block.
    Block {
        ip: IpAddr,
        until: Instant,
    },
    /// Start bridge `id` (media flows once the phone's address is known).
    BridgeStart {
        id: u64,
        phone: Option<SocketAddr>,
    },
    /// The desk phone's RTP address for bridge `id` (from its SDP; the bridge latches).
    BridgeRemote {
        id: u64,
        phone: SocketAddr,
    },
    BridgeStop {
        id: u64,
    },
    /// F2 caller side: leave session `id` (send `hangup` on its DataChannel).
    SessionHangup {
        id: u64,
    },
    /// C14 over WebRTC: start session `id` (its leg already answered the connecting party's
    /// offer). What arrives on its DataChannel comes back with [`Core::on_direct`] under `id`;
    /// its local candidates are trickled to the cloud for `call_id`.
    /// `present` (F2 caller side): send it on the DataChannel when it opens, and report what
    /// comes back with [`Core::on_remote`]; such a session starts at its `BridgeStart`, once
    /// the callee switch's answer is applied.
    SessionStart {
        id: u64,
        call_id: String,
        present: Option<DirectClientMsg>,
    },
    /// A candidate the caller trickled for session `id`.
    SessionCandidate {
        id: u64,
        candidate: String,
    },
    /// The phone list changed: save it as the local copy (`phones.json`). The driver writes
    /// it off this task, in order; the core keeps working from memory.
    SavePhones(PhoneList),
}

// ---------------------------------------------------------------- transactions

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    /// ACK and CANCEL match the INVITE's transaction by branch; CANCEL has its own too.
    method: String,
}

struct ServerTx {
    invite: bool,
    to: SocketAddr,
    transport: Transport,
    last: Option<(Vec<u8>, u16)>,
    /// Non-2xx final to an INVITE over UDP: retransmitted (timer G) until the ACK.
    acked: bool,
    interval: Duration,
    generation: u64,
    /// The call this INVITE transaction belongs to.
    call: Option<u64>,
}

enum ClientOwner {
    Fork {
        call: u64,
        fork: usize,
    },
    /// BYE/CANCEL and the like: nobody waits for the answer.
    Fire,
}

struct ClientTx {
    invite: bool,
    data: Vec<u8>,
    to: SocketAddr,
    transport: Transport,
    interval: Duration,
    got_provisional: bool,
    got_final: bool,
    generation: u64,
    owner: ClientOwner,
    /// What an ACK for a non-2xx final needs (same branch, RFC 3261 §17.1.1.3).
    request: Option<Request>,
}

#[derive(Clone, Debug)]
enum Timer {
    ServerRetransmit(ServerKey),
    ServerExpire(ServerKey),
    ClientRetransmit(String),
    ClientTimeout(String),
    Call(u64, CallTimer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallTimer {
    Ring,
    Route,
    OkRetransmit,
}

// ---------------------------------------------------------------- calls

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    /// Waiting for the cloud's route (B2) or its connect/outcome.
    Routing,
    /// Forks sent to the callee's contacts.
    Ringing,
    /// Waiting for a direct caller (C3, or an inbound C12 entry).
    AwaitingDirect,
    /// 2xx sent to A; waiting for A's ACK.
    Answered,
    Connected,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForkState {
    Trying,
    Ringing,
    Answered,
    Failed(u16),
    Cancelled,
}

struct Fork {
    call_id: String,
    to_tag: Option<String>,
    branch: String,
    dest: SocketAddr,
    transport: Transport,
    request: Request,
    state: ForkState,
    /// The callee's Contact from its 2xx: the Request-URI of our BYE.
    remote_target: Option<Uri>,
    cseq: u32,
}

struct ALeg {
    src: SocketAddr,
    transport: Transport,
    invite: Request,
    tx: ServerKey,
    call_id: String,
    our_tag: String,
    /// The caller's Contact: the Request-URI of our BYE to it.
    remote_target: Uri,
    our_cseq: u32,
    /// Our 2xx, retransmitted until the ACK arrives.
    ok: Option<Vec<u8>>,
    ok_interval: Duration,
    ok_since: Option<Instant>,
    final_sent: bool,
}

/// Who called: a SIP phone (leg A is a SIP dialog) or a direct caller on a WebRTC session
/// (F1/F2 inbound, C14/C15).
// One per call, mostly `Sip`: boxing the A leg would add an allocation per call for nothing.
#[allow(clippy::large_enum_variant)]
enum CallerSide {
    Sip(ALeg),
    Direct(DirectSide),
}

struct DirectSide {
    conn: u64,
    bridge: u64,
    final_sent: bool,
}

impl CallerSide {
    fn final_sent(&self) -> bool {
        match self {
            CallerSide::Sip(a) => a.final_sent,
            CallerSide::Direct(d) => d.final_sent,
        }
    }
    fn sip(&self) -> Option<&ALeg> {
        match self {
            CallerSide::Sip(a) => Some(a),
            CallerSide::Direct(_) => None,
        }
    }
    fn sip_mut(&mut self) -> Option<&mut ALeg> {
        match self {
            CallerSide::Sip(a) => Some(a),
            CallerSide::Direct(_) => None,
        }
    }
}

/// A session whose key was accepted (C14), and the call it became.
struct DirectSession {
    call_id: String,
    /// The call it became (set as soon as the phone side is attached).
    call: Option<u64>,
}

struct Call {
    caller: String,
    callee: String,
    a: CallerSide,
    /// The SDP offered towards the callee phone(s) (leg A's offer, or the bridge's).
    offer_sdp: String,
    caller_name: Option<String>,
    /// C3: the switchless callee connected directly; its bridge is leg B.
    b_direct: Option<(u64, u64)>,
    /// F2 caller side: our bridge to the remote gateway (id), and the SDP answer for our phone.
    b_remote: Option<(u64, String)>,
    /// The echo endpoint answering this call, if it is to the echo-test number.
    echo: Option<u64>,
    forks: Vec<Fork>,
    winner: Option<usize>,
    media: Option<MediaPair>,
    state: CallState,
    /// The id the cloud knows this call by, for calls that went through it.
    cloud_id: Option<String>,
    ringing_sent: bool,
    generation: u64,
    connected_at: Option<Instant>,
    /// The SDP we last gave the caller (our 2xx, or a later answer to its mid-call offer).
    sdp_to_a: Option<String>,
    /// The SDP we last gave the callee after our INVITE's offer (a later answer to its
    /// mid-call offer); until then the winning fork's INVITE body.
    sdp_to_b: Option<String>,
    /// When the call began, Unix ms (for the end report: the record the cloud writes from it).
    started_ms: i64,
}

/// A connecting party's WebRTC leg that came through the cloud (C14 over WebRTC): waiting for
/// its key, or (once in `Core::direct`) carrying the call.
struct WebRtcSession {
    call_id: String,
}

pub struct Core {
    cfg: CoreConfig,
    bridges: Box<dyn Bridges>,
    /// Sessions whose key was accepted, by session id.
    direct: HashMap<u64, DirectSession>,
    /// Carrier side: session id → WebRTC session.
    sessions: HashMap<u64, WebRtcSession>,
    /// Cloud call id → its session (one per call).
    session_by_call: HashMap<String, u64>,
    /// F2 caller side over WebRTC: cloud call id → our bridge to the callee switch.
    remote_by_call: HashMap<String, u64>,
    phones: Phones,
    registrar: Registrar,
    queue: WaitingQueue,
    nonces: NonceSource,
    /// (nonce, nc) pairs already accepted: no replay.
    nonce_uses: NonceUses,
    guard: Guard,
    media: Box<dyn MediaPorts>,
    cloud_up: bool,
    server_txs: HashMap<ServerKey, ServerTx>,
    client_txs: HashMap<String, ClientTx>,
    calls: HashMap<u64, Call>,
    /// A-leg Call-ID → call.
    by_a: HashMap<String, u64>,
    /// B-leg (fork) Call-ID → (call, fork).
    by_b: HashMap<String, (u64, usize)>,
    /// Cloud call id → call (our outgoing B2 calls).
    by_cloud: HashMap<String, u64>,
    /// F2: our bridge to a remote gateway → call.
    by_remote: HashMap<u64, u64>,
    timers: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
    next_call: u64,
    out: VecDeque<Output>,
    /// Ties the monotonic clock to wall time (nonces, end reports): `(Instant, Unix ms)`.
    clock_base: (Instant, i64),
    /// Every random draw of the core (seeded by the driver).
    rng: StdRng,
}

impl Core {
    pub fn new(
        cfg: CoreConfig,
        phones: Phones,
        media: Box<dyn MediaPorts>,
        bridges: Box<dyn Bridges>,
        inputs: CoreInputs,
    ) -> Core {
        let CoreInputs { clock_base, rng_seed, nonce_secret } = inputs;
        let mut rng = StdRng::from_seed(rng_seed);
        // The queue's keys come from their own stream, forked from ours.
        let queue = WaitingQueue::with_rng(cfg.key_ttl, StdRng::from_rng(&mut rng));
        let registrar = Registrar::new(cfg.min_expires, cfg.max_expires);
        let guard = Guard::new(cfg.guard.clone());
        Core {
            cfg,
            bridges,
            direct: HashMap::new(),
            sessions: HashMap::new(),
            session_by_call: HashMap::new(),
            remote_by_call: HashMap::new(),
            phones,
            registrar,
            queue,
            nonces: NonceSource::new(nonce_secret),
            nonce_uses: NonceUses::new(MAX_NONCE_USES),
            guard,
            media,
            cloud_up: false,
            server_txs: HashMap::new(),
            client_txs: HashMap::new(),
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_b: HashMap::new(),
            by_cloud: HashMap::new(),
            by_remote: HashMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            next_call: 1,
            out: VecDeque::new(),
            clock_base,
            rng,
        }
    }

    /// Replace the waiting queue's key source (deterministic tests).
    pub fn set_queue(&mut self, q: WaitingQueue) {
        self.queue = q;
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.keys().next().map(|(t, _)| *t);
        match (t, self.queue.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn is_registered(&mut self, now: Instant, number: &str) -> bool {
        self.registrar.is_registered(now, number)
    }

    pub fn cloud_up(&self) -> bool {
        self.cloud_up
    }

    /// Server transactions kept now (a gauge: bounded under any flood).
    pub fn server_transactions(&self) -> usize {
        self.server_txs.len()
    }

    /// The gateway is stopping (SIGTERM): end every call now, as if its other side hung up.
    /// Answered calls get a BYE to their phones (`ended` on a direct connection), calls not yet
    /// answered a 503 to a calling phone (CANCEL to ringing ones, `ended` to a direct caller);
    /// the cloud gets each call's end, so every attempt it knows of gets its one record. Keys
    /// accepted on a session whose call never started are reported cancelled.
    pub fn shutdown(&mut self, now: Instant) {
        let mut ids: Vec<u64> = self.calls.iter().filter(|(_, c)| c.state != CallState::Done).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        tracing::info!(calls = ids.len(), "ending every call: the gateway is stopping");
        for id in ids {
            match self.calls.get(&id).map(|c| c.state) {
                Some(CallState::Answered | CallState::Connected) => self.hangup(now, id, true, true),
                Some(CallState::Done) | None => {}
                Some(_) => self.fail_call(now, id, 503, "Service Unavailable", Some("the gateway is shutting down")),
            }
        }
        let conns: Vec<u64> = self.direct.keys().copied().collect();
        for conn in conns {
            self.direct_gone(now, conn);
        }
    }

    // ============================================================ inputs

    pub fn on_sip(&mut self, now: Instant, src: SocketAddr, transport: Transport, msg: Message) {
        match msg {
            Message::Request(req) => self.on_request(now, src, transport, req),
            Message::Response(resp) => self.on_response(now, resp),
        }
    }

    pub fn on_cloud(&mut self, now: Instant, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => self.cloud_up = true,
            LinkEvent::Down => {
                self.cloud_up = false;
                // Calls still waiting for the cloud cannot get an answer now.
                let waiting: Vec<u64> =
                    self.calls.iter().filter(|(_, c)| c.state == CallState::Routing).map(|(id, _)| *id).collect();
                for id in waiting {
                    self.fail_call(now, id, 503, "Service Unavailable", Some("the cloud became unreachable"));
                }
            }
            LinkEvent::Msg(m) => self.on_cloud_msg(now, m),
        }
    }

    /// A message on the `trunkline-direct` DataChannel of session `conn` (C14: the key; then
    /// `hangup`). A refused key closes the leg and forgets it at once, so the connecting party
    /// may offer again (a new `direct_signal`) while the key lives.
    pub fn on_direct(&mut self, now: Instant, conn: u64, msg: DirectClientMsg) {
        match msg {
            DirectClientMsg::Present { .. } if self.direct.contains_key(&conn) => {
                self.refuse(conn, ErrorCode::AlreadyAuthenticated, "a key was already presented on this connection");
            }
            DirectClientMsg::Present { call_id, key, caller, .. } => {
                // A leg already forgotten (refused a moment ago, or gone): it is closing.
                let Some(session) = self.sessions.get(&conn) else { return };
                if session.call_id != call_id {
                    // The leg was set up for one call: another call's key cannot open it.
                    tracing::warn!(%call_id, "C14: key presented for another call than this connection's offer");
                    return self.refuse_session(conn, ErrorCode::BadKey, "this connection was set up for another call");
                }
                match self.queue.take(now, &call_id, &key, &caller) {
                    Err(e) => {
                        tracing::warn!(%call_id, %caller, error = %e, "C14: key refused");
                        self.refuse_session(conn, e.code(), key_error_text(e));
                    }
                    Ok(entry) => {
                        tracing::info!(%call_id, %caller, step = "C14", "key accepted");
                        self.out.push_back(Output::Direct {
                            conn,
                            msg: DirectServerMsg::Accepted { call_id: call_id.clone() },
                            close: false,
                        });
                        self.cloud(ClientMsg::CallEvent { call_id: call_id.clone(), event: CallEvent::KeyAccepted });
                        self.direct.insert(conn, DirectSession { call_id: call_id.clone(), call: None });
                        // C15: the phone side joins this same leg.
                        match entry.direction {
                            Direction::Inbound => self.direct_inbound(now, conn, call_id, entry),
                            Direction::Outbound => self.direct_outbound(now, conn, call_id),
                        }
                    }
                }
            }
            DirectClientMsg::Offer { .. } => {
                let msg = "the offer goes through the cloud (direct_signal), not on the DataChannel";
                if self.direct.contains_key(&conn) {
                    self.refuse(conn, ErrorCode::WrongState, msg);
                } else {
                    self.refuse_session(conn, ErrorCode::WrongState, msg);
                }
            }
            DirectClientMsg::Hangup => self.direct_gone(now, conn),
        }
    }

    /// Refuse on session `conn`'s DataChannel; its leg closes.
    fn refuse(&mut self, conn: u64, code: ErrorCode, message: &str) {
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Error { code, message: message.into() }, close: true });
    }

    /// Refuse on a session whose key was not accepted, and forget the session now (its leg
    /// closes; the call's key stays as the queue left it).
    fn refuse_session(&mut self, conn: u64, code: ErrorCode, message: &str) {
        self.refuse(conn, code, message);
        if let Some(s) = self.sessions.remove(&conn) {
            self.session_by_call.remove(&s.call_id);
            self.out.push_back(Output::BridgeStop { id: conn });
        }
    }

    /// Session `conn`'s leg is gone (closed, failed, never got its key), or its party hung up.
    pub fn on_direct_gone(&mut self, now: Instant, conn: u64) {
        self.direct_gone(now, conn);
    }

    fn direct_gone(&mut self, now: Instant, conn: u64) {
        if let Some(s) = self.sessions.remove(&conn) {
            self.session_by_call.remove(&s.call_id);
            if !self.direct.contains_key(&conn) {
                // The leg ended before a key was accepted: free it; the key stays queued
                // until it is used or expires (the connecting party may try again).
                self.out.push_back(Output::BridgeStop { id: conn });
            }
        }
        let Some(session) = self.direct.remove(&conn) else { return };
        let Some(id) = session.call else {
            // Key accepted but the call never started: the attempt ends here.
            self.cloud(ClientMsg::CallEvent {
                call_id: session.call_id,
                event: CallEvent::Ended { outcome: Outcome::Cancelled, duration_ms: None },
            });
            return;
        };
        let Some(call) = self.calls.get(&id) else { return };
        tracing::info!(call = id, "direct caller left");
        match (&call.a, call.state) {
            (CallerSide::Direct(_), CallState::Connected) => self.hangup(now, id, false, true),
            (CallerSide::Direct(_), _) => self.fail_call(now, id, 487, "Request Terminated", None),
            // C3: the browser callee left; the phone that called hangs up too.
            (CallerSide::Sip(_), CallState::Connected | CallState::Answered) => self.hangup(now, id, true, false),
            (CallerSide::Sip(_), _) => self.fail_call(now, id, 480, "Temporarily Unavailable", Some("the callee left")),
        }
    }

    /// F1/F2 callee side (C15): the key on session `conn` checked out; attach our phone to its
    /// leg and ring the phone.
    fn direct_inbound(&mut self, now: Instant, conn: u64, call_id: String, entry: crate::queue::Entry) {
        let setup = match self.bridges.attach(conn, None) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot attach the phone side");
                self.refuse(conn, e.code(), &e.to_string());
                self.cloud(ClientMsg::CallEvent {
                    call_id,
                    event: CallEvent::Ended { outcome: Outcome::Error, duration_ms: None },
                });
                self.direct.remove(&conn);
                return;
            }
        };
        self.out.push_back(Output::BridgeStart { id: setup.id, phone: None });
        let id = self.next_call;
        self.next_call += 1;
        let caller_name = Some(entry.presenter.to_string());
        self.calls.insert(
            id,
            Call {
                caller: entry.presenter.clone(),
                callee: entry.phone.clone(),
                a: CallerSide::Direct(DirectSide { conn, bridge: setup.id, final_sent: false }),
                offer_sdp: setup.phone_sdp,
                caller_name,
                b_direct: None,
                b_remote: None,
                echo: None,
                forks: vec![],
                winner: None,
                media: None,
                state: CallState::Routing,
                cloud_id: Some(call_id.clone()),
                ringing_sent: false,
                generation: 0,
                connected_at: None,
                sdp_to_a: None,
                sdp_to_b: None,
                started_ms: self.unix_ms(now),
            },
        );
        self.by_cloud.insert(call_id, id);
        if let Some(s) = self.direct.get_mut(&conn) {
            s.call = Some(id);
        }
        let phone = entry.phone.clone();
        self.ring_local(now, id, &phone);
    }

    /// C14 over WebRTC, carrier side: the connecting party's offer and candidates, relayed by
    /// the cloud. Only for a call waiting in our queue (a key was issued for it); one leg per
    /// call. The answer goes back the same way; the key comes later on the DataChannel.
    fn direct_signal(&mut self, now: Instant, call_id: String, payload: SignalPayload) {
        match payload {
            SignalPayload::Offer { sdp } => {
                if !self.queue.is_waiting(&call_id) {
                    tracing::warn!(%call_id, "C14: WebRTC offer for a call that is not waiting here; ignored");
                    return;
                }
                if self.session_by_call.contains_key(&call_id) {
                    tracing::warn!(%call_id, "C14: a second WebRTC offer for the same call; ignored");
                    return;
                }
                match self.bridges.open_session(&sdp) {
                    Ok((id, answer)) => {
                        tracing::info!(%call_id, session = id, "C14: WebRTC leg answered; waiting for the key on its DataChannel");
                        self.sessions.insert(id, WebRtcSession { call_id: call_id.clone() });
                        self.session_by_call.insert(call_id.clone(), id);
                        self.out.push_back(Output::SessionStart { id, call_id: call_id.clone(), present: None });
                        self.cloud(ClientMsg::DirectSignal { call_id, payload: SignalPayload::Answer { sdp: answer } });
                    }
                    Err(e) => {
                        tracing::warn!(%call_id, error = %e, "C14: WebRTC offer refused");
                        let outcome = if e == BridgeError::NoPorts { Outcome::SwitchUnavailable } else { Outcome::Error };
                        self.queue.cancel(now, &call_id);
                        self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Ended { outcome, duration_ms: None } });
                    }
                }
            }
            SignalPayload::Ice { candidate, .. } => {
                if let Some(&id) = self.session_by_call.get(&call_id) {
                    self.out.push_back(Output::SessionCandidate { id, candidate });
                } else if let Some(&bridge) = self.remote_by_call.get(&call_id) {
                    self.out.push_back(Output::SessionCandidate { id: bridge, candidate });
                }
            }
            // F2 caller side: the callee switch's answer to our offer.
            SignalPayload::Answer { sdp } => {
                if let Some(&bridge) = self.remote_by_call.get(&call_id) {
                    self.on_remote(now, bridge, RemoteEvent::Answer(sdp));
                }
            }
            SignalPayload::EndOfCandidates => {}
        }
    }

    /// C3 carrier side (C15): the switchless callee's key on session `conn` checked out; answer
    /// the waiting phone's INVITE through that leg.
    fn direct_outbound(&mut self, now: Instant, conn: u64, call_id: String) {
        let Some(id) = self.by_cloud.get(&call_id).copied() else {
            self.refuse(conn, ErrorCode::UnknownCall, "the calling phone gave up");
            self.direct.remove(&conn);
            return;
        };
        let phone_offer = self.calls.get(&id).map(|c| c.offer_sdp.clone()).unwrap_or_default();
        let setup = match self.bridges.attach(conn, Some(&phone_offer)) {
            Ok(s) => s,
            Err(e) => {
                self.refuse(conn, e.code(), &e.to_string());
                self.direct.remove(&conn);
                return self.fail_call(now, id, 488, "Not Acceptable Here", Some("the callee's media could not be bridged"));
            }
        };
        let phone_addr = trunkline_media::sdp::Sdp::parse(&phone_offer).ok().and_then(|s| s.audio_rtp_addr());
        self.out.push_back(Output::BridgeStart { id: setup.id, phone: phone_addr });
        if let Some(s) = self.direct.get_mut(&conn) {
            s.call = Some(id);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.b_direct = Some((conn, setup.id));
        }
        tracing::info!(call = id, %call_id, step = "C15", "switchless callee connected; answering the phone");
        self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Connected });
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Progress { event: CallEvent::Connected }, close: false });
        self.answer_a(now, id, setup.phone_sdp);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for e in self.queue.expire(now) {
            tracing::info!(call_id = %e.call_id, "waiting-queue entry expired");
            if e.direction == Direction::Outbound
                && let Some(id) = self.by_cloud.get(&e.call_id).copied()
            {
                self.fail_call(now, id, 480, "Temporarily Unavailable", Some("the callee did not connect in time"));
            }
        }
        while let Some((&(t, g), _)) = self.timers.iter().next() {
            if t > now {
                break;
            }
            let timer = self.timers.remove(&(t, g)).expect("just seen");
            self.fire(now, g, timer);
        }
    }

    // ============================================================ cloud

    fn cloud(&mut self, m: ClientMsg) {
        self.out.push_back(Output::Cloud(m));
    }

    fn on_cloud_msg(&mut self, now: Instant, m: ServerMsg) {
        match m {
            ServerMsg::SwitchWelcome { sip_realm, phones, .. } => self.set_phones(Some(&sip_realm), phones),
            ServerMsg::PhonesUpdate { phones } => self.set_phones(None, phones),
            ServerMsg::DirectSignal { call_id, payload } => self.direct_signal(now, call_id, payload),
            ServerMsg::CalleeQuery { call_id, from, to, .. } => self.callee_query(now, call_id, from, to),
            ServerMsg::Route { call_id, route } => self.route_answer(now, &call_id, route),
            ServerMsg::Connect { call_id, key, .. } => self.connect_remote(now, call_id, key),
            ServerMsg::CallEvent { call_id, event: CallEvent::Ringing } => {
                if let Some(id) = self.by_cloud.get(&call_id).copied() {
                    self.send_ringing(id);
                }
            }
            ServerMsg::Outcome { call_id, outcome, .. } => {
                if self.queue.cancel(now, &call_id).is_some() {
                    tracing::info!(%call_id, %outcome, "cloud ended a queued call");
                }
                if let Some(id) = self.by_cloud.get(&call_id).copied() {
                    let state = self.calls.get(&id).map(|c| c.state);
                    if matches!(state, Some(CallState::Routing | CallState::AwaitingDirect)) {
                        let (code, reason) = outcome.sip_status();
                        let code = if outcome == Outcome::Connected { 480 } else { code };
                        self.fail_call(now, id, code, reason, Some(outcome_text(outcome)));
                    } else if outcome == Outcome::MediaLost && matches!(state, Some(CallState::Answered | CallState::Connected)) {
                        // The cloud ended a call we bridge because its party reported the media
                        // path dead: that party is gone even if our leg never says so (str0m
                        // may not report a dead peer for a long time), so end our side as if it
                        // had hung up. Other outcomes for a live call (e.g. after a link blip,
                        // for a call our sign-in list did not carry) leave it to the parties.
                        let conn = self.calls.get(&id).and_then(|c| match &c.a {
                            CallerSide::Direct(d) => Some(d.conn),
                            CallerSide::Sip(_) => c.b_direct.map(|(conn, _)| conn),
                        });
                        if let Some(conn) = conn {
                            tracing::info!(%call_id, %outcome, "cloud ended a bridged call: hanging up our side");
                            self.direct_gone(now, conn);
                        }
                    }
                }
            }
            ServerMsg::Error { code, message, call_id } => {
                tracing::warn!(%code, %message, call_id = ?call_id, "cloud refused a message");
                if let Some(cid) = call_id
                    && let Some(id) = self.by_cloud.get(&cid).copied()
                    && self.calls.get(&id).is_some_and(|c| c.state == CallState::Routing)
                {
                    self.fail_call(now, id, 503, "Service Unavailable", Some(&message));
                }
            }
            _ => {}
        }
    }

    /// C2 (F2 caller side): the callee's switch (named in `connect`) + key. Connect to it
    /// directly over WebRTC: an offer (audio + DataChannel) from a new bridge whose phone side
    /// answers our phone goes through the cloud; the key follows on the DataChannel.
    fn connect_remote(&mut self, now: Instant, call_id: String, key: String) {
        let Some(id) = self.by_cloud.get(&call_id).copied() else { return };
        let Some(call) = self.calls.get(&id) else { return };
        if call.state != CallState::Routing || call.b_remote.is_some() {
            return;
        }
        let (caller, phone_offer) = (call.caller.clone(), call.offer_sdp.clone());
        // C14 over WebRTC: offer through the cloud, the key on the DataChannel.
        let setup = match self.bridges.offer_session(&phone_offer) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot set up the direct leg");
                let (code, reason) =
                    if e == BridgeError::NoPorts { (503, "Service Unavailable") } else { (488, "Not Acceptable Here") };
                return self.fail_call(now, id, code, reason, Some(&e.to_string()));
            }
        };
        tracing::info!(%call_id, step = "C2", "connecting directly to the callee's switch over WebRTC");
        if let Some(c) = self.calls.get_mut(&id) {
            c.b_remote = Some((setup.id, setup.phone_sdp));
        }
        self.by_remote.insert(setup.id, id);
        self.remote_by_call.insert(call_id.clone(), setup.id);
        let present = DirectClientMsg::Present { v: trunkline_protocol::PROTOCOL_VERSION, call_id: call_id.clone(), key, caller };
        self.out.push_back(Output::SessionStart { id: setup.id, call_id: call_id.clone(), present: Some(present) });
        self.cloud(ClientMsg::DirectSignal { call_id, payload: SignalPayload::Offer { sdp: setup.answer } });
    }

    /// F2 caller side: what the callee switch did with our call (its answer through the cloud,
    /// then what it says on the session's DataChannel, or the session's end).
    pub fn on_remote(&mut self, now: Instant, bridge: u64, ev: RemoteEvent) {
        let Some(id) = self.by_remote.get(&bridge).copied() else { return };
        let Some(call) = self.calls.get(&id) else { return };
        let answered = call.a.final_sent();
        let phone_sdp = call.b_remote.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        match ev {
            RemoteEvent::Accepted => {}
            RemoteEvent::Answer(sdp) => match self.bridges.remote_answer(bridge, &sdp) {
                Ok(()) => {
                    let phone = trunkline_media::sdp::Sdp::parse(&call.offer_sdp).ok().and_then(|s| s.audio_rtp_addr());
                    self.out.push_back(Output::BridgeStart { id: bridge, phone });
                }
                Err(e) => {
                    self.out.push_back(Output::SessionHangup { id: bridge });
                    self.fail_call(now, id, 488, "Not Acceptable Here", Some(&format!("the callee's site answered badly: {e}")));
                }
            },
            RemoteEvent::Progress(CallEvent::Ringing) => self.send_ringing(id),
            RemoteEvent::Progress(CallEvent::Connected) if !answered => {
                tracing::info!(call = id, step = "C15", "callee's site bridged the call");
                self.answer_a(now, id, phone_sdp);
            }
            RemoteEvent::Progress(_) => {}
            RemoteEvent::Ended(outcome) if answered => {
                let _ = outcome;
                self.hangup(now, id, true, false);
            }
            RemoteEvent::Ended(outcome) => {
                let (code, reason) = outcome.sip_status();
                self.fail_call(now, id, code, reason, Some(outcome_text(outcome)));
            }
            RemoteEvent::Refused { code, message } => {
                tracing::warn!(call = id, %code, %message, "callee's site refused the direct connection");
                if answered {
                    self.hangup(now, id, true, false);
                } else {
                    self.fail_call(now, id, 503, "Service Unavailable", Some(&message));
                }
            }
            RemoteEvent::Closed(why) => {
                if answered {
                    self.hangup(now, id, true, false);
                } else {
                    // The direct connection never came up: the cloud records why.
                    if let Some(call_id) = self.calls.get(&id).and_then(|c| c.cloud_id.clone()) {
                        let reason: String = why.chars().take(150).collect();
                        self.cloud(ClientMsg::ConnectFailed { call_id, reason });
                    }
                    self.fail_call(now, id, 503, "Service Unavailable", Some(&why));
                }
            }
        }
    }

    fn set_phones(&mut self, realm: Option<&str>, phones: Vec<PhoneEntry>) {
        for gone in self.phones.replace(realm, phones) {
            self.registrar.remove_aor(&gone);
        }
        self.out.push_back(Output::SavePhones(self.phones.snapshot()));
        tracing::info!(count = self.phones.len(), "phone list updated");
    }

    /// C11 → C12: can our phone `to` take a call from `from`?
    fn callee_query(&mut self, now: Instant, call_id: String, from: String, to: String) {
        let decline = |reason| QueryAnswer::Decline { reason };
        let answer = if self.is_echo(&to) {
            match self.queue.insert(now, &call_id, &from, &to, Direction::Inbound) {
                Some(key) => QueryAnswer::Accept {
                    url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                    key,
                    expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                },
                None => decline(DeclineReason::Busy),
            }
        } else if !self.phones.contains(&to) || !self.registrar.is_registered(now, &to) {
            decline(DeclineReason::NotRegistered)
        } else if self.is_busy(&to) {
            decline(DeclineReason::Busy)
        } else {
            match self.queue.insert(now, &call_id, &from, &to, Direction::Inbound) {
                Some(key) => QueryAnswer::Accept {
                    url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                    key,
                    expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                },
                None => decline(DeclineReason::Busy),
            }
        };
        tracing::info!(%call_id, %from, %to, step = "C12", answer = ?matches!(answer, QueryAnswer::Accept { .. }), "answering the cloud");
        self.cloud(ClientMsg::QueryAnswer { call_id, answer });
    }

    fn route_answer(&mut self, now: Instant, cloud_id: &str, route: Route) {
        let Some(id) = self.by_cloud.get(cloud_id).copied() else { return };
        if self.calls.get(&id).is_none_or(|c| c.state != CallState::Routing) {
            return;
        }
        match route {
            Route::Invalid { reason } => {
                tracing::info!(call_id = %cloud_id, step = "B3", %reason, "callee does not exist");
                self.fail_call(now, id, 404, "Not Found", Some(&reason));
            }
            Route::Local => {
                let callee = self.calls[&id].callee.clone();
                self.ring_local(now, id, &callee);
            }
            Route::Switch { switch_id, .. } => {
                tracing::info!(call_id = %cloud_id, step = "B5", %switch_id, "callee is on another switch; waiting for C2");
            }
            Route::Device { device_id } => {
                // B6 → C3: queue the call for the switchless callee and hand the cloud our key.
                let caller = self.calls[&id].caller.clone();
                match self.queue.insert(now, cloud_id, &device_id, &caller, Direction::Outbound) {
                    Some(key) => {
                        tracing::info!(call_id = %cloud_id, step = "B6", %device_id, "queued for a switchless callee");
                        self.cloud(ClientMsg::DirectOffer {
                            call_id: cloud_id.to_string(),
                            url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                            key,
                            expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                        });
                        if let Some(c) = self.calls.get_mut(&id) {
                            c.state = CallState::AwaitingDirect;
                        }
                        self.cancel_timer(id);
                        self.send_ringing(id);
                    }
                    None => self.fail_call(now, id, 500, "Server Internal Error", Some("duplicate call id")),
                }
            }
        }
    }

    // ============================================================ SIP requests

    fn on_request(&mut self, now: Instant, src: SocketAddr, transport: Transport, req: Request) {
        // A blocked source is ignored (the driver drops it before parsing; this is the backstop).
        if self.guard.is_blocked(now, src.ip()) {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
            return;
        }
        let Ok(via) = req.top_via() else { return };
        let sent_by = format!("{}:{}", host_str(&via.host), via.port.unwrap_or(5060));
        let branch = match via.branch() {
            Some(b) if via.is_rfc3261_branch() => b.to_string(),
            // RFC 2543 peers: identify the transaction by what they do send.
            _ => format!(
                "2543-{}-{}-{}",
                req.call_id().unwrap_or(""),
                req.cseq().map(|c| c.seq).unwrap_or(0),
                req.from().ok().and_then(|f| f.tag().map(str::to_string)).unwrap_or_default()
            ),
        };
        let method = match &req.method {
            Method::Ack => "INVITE".to_string(),
            m => m.as_str().to_string(),
        };
        let key = ServerKey { branch, sent_by, method };

        if req.method == Method::Ack {
            if let Some(tx) = self.server_txs.get_mut(&key) {
                // ACK for our non-2xx final: absorbed by the transaction.
                tx.acked = true;
                return;
            }
            self.on_ack_2xx(now, &req);
            return;
        }
        if let Some(tx) = self.server_txs.get(&key) {
            // A retransmission: repeat our last answer, if any.
            if let Some((data, _)) = &tx.last {
                self.out.push_back(Output::Sip { to: src, transport, data: data.clone() });
            }
            return;
        }

        // RFC 3261 §8.2: checks every UAS makes before looking at the method. These answers,
        // like every answer that needs no authentication and changes nothing (challenges, 403,
        // OPTIONS, 405, 481), are sent without a server transaction: a retransmission gets the
        // same answer again, and a flood of them costs no memory.
        if !matches!(req.uri.scheme, Scheme::Sip | Scheme::Sips) {
            return self.reply_unauthenticated(now, src, transport, &req, 416, "Unsupported URI Scheme", |_| {});
        }
        if let Ok(Some(0)) = req.max_forwards()
            && req.method != Method::Options
        {
            return self.reply_unauthenticated(now, src, transport, &req, 483, "Too Many Hops", |_| {});
        }
        if let Some(req_ext) = req.headers.get("Require")
            && req.method != Method::Cancel
        {
            let unsupported: Vec<&str> = req_ext.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
            if !unsupported.is_empty() {
                let list = unsupported.join(", ");
                return self.reply_unauthenticated(now, src, transport, &req, 420, "Bad Extension", |r| {
                    r.headers.push("Unsupported", list)
                });
            }
        }
        if !req.body.is_empty()
            && let Ok(Some(ct)) = req.content_type()
            && !ct.trim().to_ascii_lowercase().starts_with("application/sdp")
            && req.method == Method::Invite
        {
            return self.reply_unauthenticated(now, src, transport, &req, 415, "Unsupported Media Type", |r| {
                r.headers.push("Accept", "application/sdp")
            });
        }

        let in_dialog = req.to().ok().and_then(|t| t.tag().map(str::to_string)).is_some();
        match req.method {
            Method::Register => self.on_register(now, &key, src, transport, &req),
            Method::Invite if !in_dialog => self.on_invite(now, &key, src, transport, req),
            Method::Cancel => {
                let invite_key = ServerKey { method: "INVITE".into(), ..key.clone() };
                if self.server_txs.get(&invite_key).and_then(|t| t.call).is_none() {
                    return self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {});
                }
                if self.open_tx(now, &key, &req, src, transport) {
                    self.on_cancel(now, &key, &req);
                }
            }
            Method::Options if !in_dialog => self.reply_unauthenticated(now, src, transport, &req, 200, "OK", |r| {
                r.headers.push("Allow", ALLOW);
                r.headers.push("Accept", "application/sdp");
            }),
            _ if in_dialog => {
                let cid = req.call_id().unwrap_or("");
                if !self.by_a.contains_key(cid) && !self.by_b.contains_key(cid) {
                    return self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {});
                }
                if self.open_tx(now, &key, &req, src, transport) {
                    self.on_in_dialog(now, &key, src, transport, req);
                }
            }
            Method::Bye => self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {}),
            _ => self
                .reply_unauthenticated(now, src, transport, &req, 405, "Method Not Allowed", |r| r.headers.push("Allow", ALLOW)),
        }
    }

    /// Open server transaction `key` for a request we will act on. At the table's cap, the
    /// request gets a stateless 503 instead (and `false`).
    fn open_tx(&mut self, now: Instant, key: &ServerKey, req: &Request, src: SocketAddr, transport: Transport) -> bool {
        if self.server_txs.len() >= self.cfg.guard.max_server_transactions {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "transactions_full").increment(1);
            tracing::warn!(%src, limit = self.cfg.guard.max_server_transactions, "server transaction table full: 503");
            self.reply_stateless(src, transport, req, 503, "Service Unavailable", |r| r.headers.push("Retry-After", "5"));
            return false;
        }
        self.server_txs.insert(
            key.clone(),
            ServerTx {
                invite: req.method == Method::Invite,
                to: src,
                transport,
                last: None,
                acked: false,
                interval: T1,
                generation: 0,
                call: None,
            },
        );
        // Non-INVITE transactions are forgotten after timer J (they may stay answerless only
        // if we never answer, which every path avoids).
        if req.method != Method::Invite {
            let g = self.schedule(now + T64, Timer::ServerExpire(key.clone()));
            if let Some(tx) = self.server_txs.get_mut(key) {
                tx.generation = g;
            }
        }
        true
    }

    /// Answer without a server transaction.
    fn reply_stateless(
        &mut self,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        let mut r = Response::to_request(req, status, reason);
        if status > 100 && req.to().ok().and_then(|t| t.tag().map(str::to_string)).is_none() {
            r.set_to_tag(&new_tag(&mut self.rng));
        }
        r.headers.push("Server", "Trunkline");
        edit(&mut r);
        self.out.push_back(Output::Sip { to: src, transport, data: r.to_bytes() });
    }

    /// Answer a request that is not authenticated (statelessly), if the source's budget of
    /// such requests allows; else the source is blocked and gets nothing.
    #[allow(clippy::too_many_arguments)]
    fn reply_unauthenticated(
        &mut self,
        now: Instant,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        if self.admit_unauthenticated(now, src) {
            self.reply_stateless(src, transport, req, status, reason, edit);
        }
    }

    /// Spend one of `src`'s unauthenticated requests; false: drop the request (no answer).
    fn admit_unauthenticated(&mut self, now: Instant, src: SocketAddr) -> bool {
        match self.guard.on_unauthenticated(now, src.ip()) {
            Admit::Answer => true,
            Admit::Drop => {
                metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
                false
            }
            Admit::Block(ev) => {
                self.blocked(&ev);
                metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
                false
            }
        }
    }

    /// A block starts: logged and counted once; a source's block goes to the driver.
    fn blocked(&mut self, ev: &BlockEvent) {
        let secs = ev.duration.as_secs();
        match &ev.what {
            Blocked::Source(ip) => {
                tracing::warn!(src = %ip, reason = ev.reason, block_secs = secs, "SIP source blocked: ignoring it");
                metrics::counter!("trunkline_sip_blocked_sources_total", "reason" => ev.reason).increment(1);
                self.out.push_back(Output::Block { ip: *ip, until: ev.until });
            }
            Blocked::Account(number) => {
                tracing::warn!(%number, reason = ev.reason, block_secs = secs, "SIP number under attack: not checking its credentials from untrusted addresses");
                metrics::counter!("trunkline_sip_blocked_accounts_total").increment(1);
            }
        }
    }

    /// Send a response within server transaction `key`.
    fn reply(
        &mut self,
        now: Instant,
        key: &ServerKey,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        let mut r = Response::to_request(req, status, reason);
        if status > 100 && req.to().ok().and_then(|t| t.tag().map(str::to_string)).is_none() {
            r.set_to_tag(&new_tag(&mut self.rng));
        }
        r.headers.push("Server", "Trunkline");
        edit(&mut r);
        self.send_response(now, key, r);
    }

    fn send_response(&mut self, now: Instant, key: &ServerKey, r: Response) {
        let status = r.status;
        let data = r.to_bytes();
        let Some(tx) = self.server_txs.get_mut(key) else { return };
        self.out.push_back(Output::Sip { to: tx.to, transport: tx.transport, data: data.clone() });
        tx.last = Some((data, status));
        let (invite, transport) = (tx.invite, tx.transport);
        if invite && status >= 300 {
            // Non-2xx final: retransmit until ACK (UDP), forget after timer H.
            if transport == Transport::Udp {
                self.schedule(now + T1, Timer::ServerRetransmit(key.clone()));
            }
            self.schedule(now + T64, Timer::ServerExpire(key.clone()));
        } else if invite && (200..300).contains(&status) {
            // 2xx ends the INVITE server transaction; the call retransmits the 2xx itself.
            self.schedule(now + T64, Timer::ServerExpire(key.clone()));
        }
    }

    // ------------------------------------------------------------ REGISTER

    fn on_register(&mut self, now: Instant, key: &ServerKey, src: SocketAddr, transport: Transport, req: &Request) {
        let Ok(to) = req.to() else {
            return self.reply_unauthenticated(now, src, transport, req, 400, "Bad Request", |_| {});
        };
        let aor = to.uri.user.clone().unwrap_or_default();
        let user = match self.authenticate(now, src, transport, req, "REGISTER") {
            Some(u) => u,
            None => return,
        };
        if !self.open_tx(now, key, req, src, transport) {
            return;
        }
        if user != aor {
            tracing::warn!(%src, %user, %aor, "REGISTER for another number refused");
            return self.reply(now, key, req, 403, "Forbidden", |_| {});
        }
        let contacts = match req.contacts() {
            Ok(c) => c,
            Err(_) => return self.reply(now, key, req, 400, "Bad Contact", |_| {}),
        };
        let header_expires = req.expires().ok().flatten();
        let wildcard = contacts.iter().any(|c| matches!(c, Contact::Star));
        let updates: Vec<ContactUpdate> = contacts
            .iter()
            .filter_map(|c| c.name_addr())
            .map(|na| ContactUpdate {
                contact: format!("<{}>", na.uri),
                expires: na.expires().or(header_expires).unwrap_or(3600),
            })
            .collect();
        let (call_id, cseq) = (req.call_id().unwrap_or("").to_string(), req.cseq().map(|c| c.seq).unwrap_or(0));
        match self.registrar.register(now, &aor, &updates, wildcard, header_expires, src, transport, &call_id, cseq) {
            Ok(bindings) => {
                tracing::info!(number = %aor, %src, contacts = bindings.len(), "registered");
                self.reply(now, key, req, 200, "OK", |r| {
                    for b in &bindings {
                        let left = b.expires.saturating_duration_since(now).as_secs().max(1);
                        r.headers.push("Contact", format!("{};expires={left}", b.contact));
                    }
                });
            }
            Err(RegisterError::TooBrief(min)) => {
                self.reply(now, key, req, 423, "Interval Too Brief", |r| r.headers.push("Min-Expires", min.to_string()))
            }
            Err(e) => {
                let text = e.to_string();
                self.reply(now, key, req, 400, "Bad Request", |r| r.headers.push("Warning", warning(&text)))
            }
        }
    }

    /// Digest check (RFC 8760 SHA-256 or MD5). Returns the authenticated number, or answers
    /// the request without a transaction (401 challenge, or 403 — the same for an unknown number
    /// and a wrong password, after the same work, so numbers cannot be enumerated), or drops it
    /// (the source's budget ran out, or the number is under attack and this address is not one
    /// it authenticated from) and returns `None`.
    fn authenticate(
        &mut self,
        now: Instant,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        method: &str,
    ) -> Option<String> {
        let realm = self.phones.realm().to_string();
        let unix = self.unix_secs(now);
        let creds = req
            .headers
            .get_all("Authorization")
            .chain(req.headers.get_all("Proxy-Authorization"))
            .filter_map(|v| digest::parse_authorization(v).ok())
            .find(|c| c.realm == realm);
        let Some(creds) = creds else {
            self.challenge(now, src, transport, req, false);
            return None;
        };
        match self.nonces.check(&creds.nonce, unix, NONCE_MAX_AGE) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => {
                self.challenge(now, src, transport, req, true);
                return None;
            }
            NonceCheck::Invalid => {
                self.challenge(now, src, transport, req, false);
                return None;
            }
        }
        let number = creds.username.chars().take(64).collect::<String>();
        if !self.phones.is_loaded() {
            // A new gateway that has not heard from its cloud yet knows no phone: a refusal now
            // would be wrong (and count against the phone as a guess). 503 makes it retry.
            tracing::info!(%src, %number, "SIP authentication deferred: no phone list yet (cloud not reached)");
            self.reply_stateless(src, transport, req, 503, "Service Unavailable", |r| r.headers.push("Retry-After", "5"));
            return None;
        }
        if self.guard.account_locked(now, &creds.username, src.ip()) {
            // Not checked, not answered: guessing this number from here gets nothing. It still
            // costs the source from its unauthenticated budget.
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "account_locked").increment(1);
            tracing::debug!(%src, %number, "credentials for a number under attack from an untrusted address: dropped");
            self.admit_unauthenticated(now, src);
            return None;
        }
        if let Err(why) = self.nonce_uses.check(&creds.nonce, creds.nc.as_deref()) {
            // A captured Authorization replayed (or a nonce-count gone backwards): a fresh
            // challenge, as for a request without credentials.
            metrics::counter!("trunkline_sip_auth_failures_total", "kind" => "replayed_nonce").increment(1);
            tracing::warn!(%src, %number, kind = "replayed_nonce", reuse = ?why, "SIP authentication refused: nonce-count already used");
            self.challenge(now, src, transport, req, false);
            return None;
        }
        // An unknown number is checked against a decoy verifier: the same work, the same answer.
        let (ha1, known) = match self.phones.get(&creds.username) {
            Some(p) => {
                let ha1 = match creds.algorithm {
                    Algorithm::Sha256 => &p.ha1_sha256,
                    Algorithm::Md5 => &p.ha1_md5,
                };
                (ha1.clone(), !ha1.is_empty())
            }
            None => (String::new(), false),
        };
        let decoy = match creds.algorithm {
            Algorithm::Sha256 => DECOY_HA1_SHA256,
            Algorithm::Md5 => DECOY_HA1_MD5,
        };
        let ok = digest::verify(&creds, method, if known { &ha1 } else { decoy }) && known;
        if ok {
            let expires = unix + NONCE_MAX_AGE + 120;
            self.nonce_uses.record(&creds.nonce, creds.nc.as_deref(), unix, expires);
            self.guard.on_success(now, src.ip(), &creds.username);
            Some(creds.username.clone())
        } else {
            let kind = if known { "wrong_password" } else { "unknown_number" };
            metrics::counter!("trunkline_sip_auth_failures_total", "kind" => kind).increment(1);
            tracing::warn!(%src, %number, kind, method, "SIP authentication failed");
            for ev in self.guard.on_failure(now, src.ip(), &creds.username) {
                self.blocked(&ev);
            }
            self.reply_stateless(src, transport, req, 403, "Forbidden", |_| {});
            None
        }
    }

    /// A 401 with a fresh nonce, without a transaction (nonces are stateless); counted against
    /// the source's unauthenticated budget.
    fn challenge(&mut self, now: Instant, src: SocketAddr, transport: Transport, req: &Request, stale: bool) {
        if !self.admit_unauthenticated(now, src) {
            return;
        }
        let realm = self.phones.realm().to_string();
        let nonce = self.nonces.issue(self.unix_secs(now));
        let algs = self.cfg.digest_algorithms.clone();
        self.reply_stateless(src, transport, req, 401, "Unauthorized", |r| {
            // RFC 8760 §2.4: the preferred algorithm first.
            for a in algs {
                r.headers.push("WWW-Authenticate", digest::www_authenticate(&realm, &nonce, a, stale));
            }
        });
    }

    // ------------------------------------------------------------ INVITE (new call from a phone)

    fn on_invite(&mut self, now: Instant, key: &ServerKey, src: SocketAddr, transport: Transport, req: Request) {
        let caller = match self.authenticate(now, src, transport, &req, "INVITE") {
            Some(u) => u,
            None => return,
        };
        if !self.open_tx(now, key, &req, src, transport) {
            return;
        }
        let from_user = req.from().ok().and_then(|f| f.uri.user.clone());
        if from_user.as_deref() != Some(caller.as_str()) {
            return self.reply(now, key, &req, 403, "Forbidden", |r| {
                r.headers.push("Warning", warning("From does not match the authenticated number"))
            });
        }
        let Some(callee) = req.uri.user.clone().filter(|u| trunkline_protocol::check_number("to", u).is_ok()) else {
            return self.reply(now, key, &req, 404, "Not Found", |r| {
                r.headers.push("Warning", warning("no dialable number in the Request-URI"))
            });
        };
        let Ok(call_id) = req.call_id().map(str::to_string) else { return };
        if self.by_a.contains_key(&call_id) {
            return self.reply(now, key, &req, 482, "Loop Detected", |_| {});
        }
        if callee == caller {
            return self.reply(now, key, &req, 404, "Not Found", |r| {
                r.headers.push("Warning", warning("you cannot call your own number"))
            });
        }
        if req.body.is_empty() {
            return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| {
                r.headers.push("Warning", warning("an SDP offer is required"))
            });
        }
        let remote_target = req
            .contacts()
            .ok()
            .and_then(|c| c.into_iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())))
            .unwrap_or_else(|| req.from().map(|f| f.uri).unwrap_or_else(|_| req.uri.clone()));
        let id = self.next_call;
        self.next_call += 1;
        // 100 Trying at once so the phone stops retransmitting.
        self.reply(now, key, &req, 100, "Trying", |_| {});
        if let Some(tx) = self.server_txs.get_mut(key) {
            tx.call = Some(id);
        }
        let offer_sdp = String::from_utf8_lossy(&req.body).into_owned();
        let caller_name = req.from().ok().and_then(|f| f.display);
        self.calls.insert(
            id,
            Call {
                caller: caller.clone(),
                callee: callee.clone(),
                offer_sdp,
                caller_name,
                b_direct: None,
                b_remote: None,
                echo: None,
                a: CallerSide::Sip(ALeg {
                    src,
                    transport,
                    invite: req,
                    tx: key.clone(),
                    call_id: call_id.clone(),
                    our_tag: new_tag(&mut self.rng),
                    remote_target,
                    our_cseq: 1,
                    ok: None,
                    ok_interval: T1,
                    ok_since: None,
                    final_sent: false,
                }),
                forks: vec![],
                winner: None,
                media: None,
                state: CallState::Routing,
                cloud_id: None,
                ringing_sent: false,
                generation: 0,
                connected_at: None,
                sdp_to_a: None,
                sdp_to_b: None,
                started_ms: self.unix_ms(now),
            },
        );
        self.by_a.insert(call_id, id);

        if self.phones.contains(&callee) || self.is_echo(&callee) {
            tracing::info!(%caller, %callee, "F7: local call");
            self.ring_local(now, id, &callee);
        } else if !self.cloud_up {
            self.fail_call(
                now,
                id,
                503,
                "Service Unavailable",
                Some("the cloud is unreachable; only local numbers can be called"),
            );
        } else {
            // A: via this switch → B1/B2: ask the cloud.
            let cloud_id = format!("{}-{}", self.cfg.switch_id, new_tag(&mut self.rng));
            tracing::info!(call_id = %cloud_id, %caller, %callee, step = "B2", "asking the cloud to validate");
            self.by_cloud.insert(cloud_id.clone(), id);
            if let Some(c) = self.calls.get_mut(&id) {
                c.cloud_id = Some(cloud_id.clone());
            }
            self.cloud(ClientMsg::RouteQuery { call_id: cloud_id, from: caller, to: callee });
            self.set_call_timer(now, id, ROUTE_TIMEOUT, CallTimer::Route);
        }
    }

    /// F7 (and `route: local`): fork to every contact of `callee`.
    fn ring_local(&mut self, now: Instant, id: u64, callee: &str) {
        if self.is_echo(callee) {
            return self.answer_echo(now, id);
        }
        let bindings = self.registrar.lookup(now, callee);
        if bindings.is_empty() {
            return self.fail_call(now, id, 480, "Temporarily Unavailable", Some("the callee is not registered"));
        }
        if self.is_busy_except(callee, id) {
            return self.fail_call(now, id, 486, "Busy Here", None);
        }
        let direct_caller = matches!(self.calls.get(&id).map(|c| &c.a), Some(CallerSide::Direct(_)));
        let b_offer = if direct_caller {
            // The bridge is the media endpoint facing the phone: its SDP goes out as is.
            self.calls[&id].offer_sdp.clone()
        } else {
            let Some(pair) = self.media.allocate() else {
                return self.fail_call(now, id, 503, "Service Unavailable", Some("no media ports left"));
            };
            let offer = self.calls[&id].offer_sdp.clone();
            let a_remote = trunkline_media::sdp::Sdp::parse(&offer).ok().and_then(|s| s.audio_rtp_addr());
            let b_offer = match trunkline_media::sdp::rewrite(&offer, pair.b_local.ip(), pair.b_local.port(), None) {
                Ok(s) => s,
                Err(e) => {
                    self.out.push_back(Output::MediaStop { id: pair.id });
                    return self.fail_call(now, id, 488, "Not Acceptable Here", Some(&format!("unusable SDP offer: {e}")));
                }
            };
            self.calls.get_mut(&id).expect("live call").media = Some(pair);
            self.out.push_back(Output::MediaStart { id: pair.id, a_remote, b_remote: None });
            b_offer
        };
        let call = self.calls.get_mut(&id).expect("live call");
        call.state = CallState::Ringing;
        let caller = call.caller.clone();
        let caller_name = call.caller_name.clone();
        for (i, b) in bindings.iter().enumerate() {
            let Ok(target) = Uri::parse(b.contact.trim_start_matches('<').trim_end_matches('>')) else { continue };
            let fork_call_id = format!("{}@{}", new_tag(&mut self.rng), self.cfg.adv_ip);
            let from_tag = new_tag(&mut self.rng);
            let branch = new_branch(&mut self.rng);
            let mut r = Request::new(Method::Invite, target);
            r.headers.push("Via", self.via(b.transport, &branch));
            r.headers.push("Max-Forwards", "70");
            let mut from = NameAddr::new(Uri::sip(Some(&caller), host_of(self.cfg.adv_ip), None));
            from.display = caller_name.clone();
            from.set_tag(&from_tag);
            r.set_from(&from);
            r.set_to(&NameAddr::new(Uri::sip(Some(callee), host_of(self.cfg.adv_ip), None)));
            r.set_call_id(&fork_call_id);
            r.set_cseq(&CSeq::new(1, Method::Invite));
            r.headers.push("Contact", self.contact());
            r.headers.push("Allow", ALLOW);
            r.headers.push("User-Agent", "Trunkline");
            r.set_body("application/sdp", b_offer.clone().into_bytes());
            self.by_b.insert(fork_call_id.clone(), (id, i));
            let call = self.calls.get_mut(&id).expect("live call");
            call.forks.push(Fork {
                call_id: fork_call_id,

                to_tag: None,
                branch: branch.clone(),
                dest: b.source,
                transport: b.transport,
                request: r.clone(),
                state: ForkState::Trying,
                remote_target: None,
                cseq: 1,
            });
            self.send_client(now, branch, r, b.source, b.transport, ClientOwner::Fork { call: id, fork: i });
        }
        self.set_call_timer(now, id, self.cfg.ring_timeout, CallTimer::Ring);
    }

    fn is_echo(&self, number: &str) -> bool {
        self.cfg.echo_number.as_deref() == Some(number)
    }

    /// The echo-test number answers at once: a prompt tone, then the caller's own audio.
    fn answer_echo(&mut self, now: Instant, id: u64) {
        let offer = self.calls[&id].offer_sdp.clone();
        let Some(echo) = self.media.start_echo(&offer) else {
            return self.fail_call(now, id, 503, "Service Unavailable", Some("the echo test cannot start (no media ports)"));
        };
        tracing::info!(call = id, "answered by the echo test");
        let call = self.calls.get_mut(&id).expect("live call");
        call.echo = Some(echo.id);
        match &call.a {
            CallerSide::Direct(d) => {
                let bridge = d.bridge;
                self.out.push_back(Output::BridgeRemote { id: bridge, phone: echo.local });
                self.answer_a(now, id, String::new());
            }
            CallerSide::Sip(_) => self.answer_a(now, id, echo.answer),
        }
    }

    fn on_cancel(&mut self, now: Instant, key: &ServerKey, req: &Request) {
        let invite_key = ServerKey { method: "INVITE".into(), ..key.clone() };
        let call = self.server_txs.get(&invite_key).and_then(|t| t.call);
        let Some(id) = call else {
            return self.reply(now, key, req, 481, "Call/Transaction Does Not Exist", |_| {});
        };
        self.reply(now, key, req, 200, "OK", |_| {});
        let final_sent = self.calls.get(&id).is_none_or(|c| c.a.final_sent());
        if !final_sent {
            tracing::info!(call = id, "caller cancelled");
            if let Some(cid) = self.calls.get(&id).and_then(|c| c.cloud_id.clone()) {
                self.cloud(ClientMsg::Cancel { call_id: cid });
            }
            self.fail_call(now, id, 487, "Request Terminated", None);
        }
    }

    fn on_ack_2xx(&mut self, now: Instant, req: &Request) {
        let Some(id) = req.call_id().ok().and_then(|c| self.by_a.get(c)).copied() else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.state == CallState::Answered {
            call.state = CallState::Connected;
            if let Some(a) = call.a.sip_mut() {
                a.ok = None;
            }
            call.connected_at.get_or_insert(now);
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "call connected");
        }
    }

    /// Requests inside a dialog of a call, from either side.
    fn on_in_dialog(&mut self, now: Instant, key: &ServerKey, _src: SocketAddr, _transport: Transport, req: Request) {
        let cid = req.call_id().unwrap_or("").to_string();
        let (id, side) = if let Some(id) = self.by_a.get(&cid) {
            (*id, Side::A)
        } else if let Some((id, fi)) = self.by_b.get(&cid) {
            (*id, Side::B(*fi))
        } else {
            return self.reply(now, key, &req, 481, "Call/Transaction Does Not Exist", |_| {});
        };
        if let Side::B(fi) = side
            && !self.calls.get(&id).is_some_and(|c| c.fork_dialog_live(fi))
        {
            // A contact that lost the race (cancelled, failed, or answered after another and
            // hung up by us): its dialog is over and the call is not its to end. Its BYE may
            // cross ours; nothing else is for us.
            return match req.method {
                Method::Bye => self.reply(now, key, &req, 200, "OK", |_| {}),
                _ => self.reply(now, key, &req, 481, "Call/Transaction Does Not Exist", |_| {}),
            };
        }
        match req.method {
            Method::Bye => {
                self.reply(now, key, &req, 200, "OK", |_| {});
                let from_a = side == Side::A;
                tracing::info!(call = id, from_caller = from_a, "hang-up");
                self.hangup(now, id, !from_a, from_a);
            }
            Method::Invite | Method::Update => self.on_session_update(now, key, id, side, req),
            Method::Info | Method::Options => self.reply(now, key, &req, 200, "OK", |_| {}),
            // RFC 3261 §8.2.1: a method we do not implement (REFER, NOTIFY, …), even in a dialog.
            _ => self.reply(now, key, &req, 405, "Method Not Allowed", |r| r.headers.push("Allow", ALLOW)),
        }
    }

    /// A re-INVITE (RFC 3261 §14) or an UPDATE (RFC 3311) from one side of an established call:
    /// a hold, a codec change, a session refresh. Media goes through our relay or bridge, which
    /// does not change, so the answer is the SDP we last gave that side, re-versioned (RFC 3264
    /// §8), its codecs narrowed to the offer's and its direction mirroring the offer's; an offer
    /// we cannot answer gets 488 and leaves the session as it was. The other side is not told.
    fn on_session_update(&mut self, now: Instant, key: &ServerKey, id: u64, side: Side, req: Request) {
        let is_invite = req.method == Method::Invite;
        let Some(call) = self.calls.get_mut(&id) else { return };
        // Target refresh (RFC 3261 §12.2.2): a new Contact is where our next requests go.
        if let Some(target) = req.contacts().ok().and_then(|c| c.into_iter().find_map(|c| c.name_addr().map(|n| n.uri.clone()))) {
            match side {
                Side::A => {
                    if let Some(a) = call.a.sip_mut() {
                        a.remote_target = target;
                    }
                }
                Side::B(fi) => {
                    if let Some(f) = call.forks.get_mut(fi) {
                        f.remote_target = Some(target);
                    }
                }
            }
        }
        let answered = matches!(call.state, CallState::Answered | CallState::Connected);
        let offer = (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned());
        if !is_invite && offer.is_none() {
            // An UPDATE without an offer (a session-timer refresh) needs no SDP in its answer.
            return self.reply(now, key, &req, 200, "OK", |_| {});
        }
        if !answered {
            // Early dialog: the first offer/answer is not done yet (RFC 3311 §5.2 / RFC 3261
            // §14.2): refuse, and say when to try again.
            let after = self.rng.random_range(1..=10u32);
            return self.reply(now, key, &req, 500, "Server Internal Error", |r| {
                r.headers.push("Retry-After", after.to_string());
                r.headers.push("Warning", warning("the call is not answered yet"));
            });
        }
        let Some(last) = call.sdp_sent(side) else {
            return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| {
                r.headers.push("Warning", warning("no session to modify"))
            });
        };
        let answer = match &offer {
            // A re-INVITE without an offer: ours goes in the 2xx, the answer comes in the ACK.
            None => trunkline_media::sdp::bump_version(&last).map_err(|e| e.to_string()),
            Some(offer) => answer_reoffer(&last, offer),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                tracing::info!(call = id, method = req.method.as_str(), %why, "mid-call offer refused; the session stays as it was");
                return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| r.headers.push("Warning", warning(&why)));
            }
        };
        // A phone that moved its media (new address or port): the relay sends there now.
        let moved = offer.as_deref().and_then(|o| trunkline_media::sdp::Sdp::parse(o).ok()).and_then(|s| s.audio_rtp_addr());
        if let (Some(addr), Some(pair)) = (moved.filter(|a| !a.ip().is_unspecified() && a.port() != 0), call.media) {
            let leg = if side == Side::A { MediaLeg::A } else { MediaLeg::B };
            self.out.push_back(Output::MediaRemote { id: pair.id, leg, addr });
        }
        call.set_sdp_sent(side, answer.clone());
        tracing::info!(call = id, method = req.method.as_str(), "mid-call offer answered");
        let contact = self.contact_str();
        self.reply(now, key, &req, 200, "OK", |r| {
            r.headers.push("Contact", contact);
            r.headers.push("Allow", ALLOW);
            r.set_body("application/sdp", answer.into_bytes());
        });
    }

    // ============================================================ SIP responses (our forks)

    fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.top_via().ok().and_then(|v| v.branch().map(str::to_string)) else { return };
        // A CANCEL shares its INVITE's branch: tell them apart by the CSeq method.
        let branch = match resp.cseq() {
            Ok(c) if c.method == Method::Cancel => format!("{branch}-cancel"),
            _ => branch,
        };
        let Some(tx) = self.client_txs.get_mut(&branch) else { return };
        let status = resp.status;
        let mut first_final = false;
        if status < 200 {
            tx.got_provisional = true;
            if tx.invite {
                // Timer A stops on a provisional.
                tx.interval = Duration::MAX;
            }
        } else {
            first_final = !tx.got_final;
            tx.got_final = true;
            tx.interval = Duration::MAX;
            if tx.invite && status >= 300 {
                // ACK the non-2xx in the transaction (same branch), each time it comes.
                if let Some(req) = &tx.request {
                    let ack = ack_for(req, &resp, &branch);
                    let (to, transport) = (tx.to, tx.transport);
                    self.out.push_back(Output::Sip { to, transport, data: ack.to_bytes() });
                }
                if !first_final {
                    return;
                }
            }
            if !tx.invite && !first_final {
                return;
            }
        }
        let owner = match &tx.owner {
            ClientOwner::Fork { call, fork } => Some((*call, *fork)),
            ClientOwner::Fire => None,
        };
        if let Some((call, fork)) = owner {
            self.fork_response(now, call, fork, &branch, resp, first_final);
        }
    }

    fn fork_response(&mut self, now: Instant, id: u64, fi: usize, branch: &str, resp: Response, first_final: bool) {
        let status = resp.status;
        let Some(call) = self.calls.get_mut(&id) else {
            // The call is gone (RFC 3261 §13.2.2.4, §15): a late 2xx is ACKed each time it
            // comes, and hung up once.
            if (200..300).contains(&status) {
                self.ack_and_bye_orphan(now, branch, &resp, first_final);
            }
            return;
        };
        let Some(fork) = call.forks.get_mut(fi) else { return };
        if let Ok(to) = resp.to()
            && let Some(tag) = to.tag()
        {
            fork.to_tag.get_or_insert_with(|| tag.to_string());
        }
        match status {
            100 => {}
            101..=199 => {
                if fork.state == ForkState::Trying {
                    fork.state = ForkState::Ringing;
                }
                self.send_ringing(id);
            }
            200..=299 => {
                fork.remote_target =
                    resp.contacts().ok().and_then(|c| c.into_iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())));
                let already = call.winner.is_some() && call.winner != Some(fi);
                // Every 2xx gets an ACK (retransmissions included).
                let ack = self.ack_2xx(id, fi);
                if let Some(ack) = ack {
                    self.out.push_back(ack);
                }
                let call = self.calls.get_mut(&id).expect("checked");
                if already || call.state == CallState::Done || call.a.final_sent() && call.winner.is_none() {
                    // Lost the race (or the caller gave up): hang this one up.
                    if call.forks[fi].state != ForkState::Answered {
                        call.forks[fi].state = ForkState::Answered;
                        self.bye_fork(now, id, fi);
                    }
                    return;
                }
                if call.winner == Some(fi) {
                    return; // 2xx retransmission, ACKed above.
                }
                call.winner = Some(fi);
                call.forks[fi].state = ForkState::Answered;
                let answer = String::from_utf8_lossy(&resp.body).into_owned();
                let media = call.media;
                // CANCEL the other forks.
                let others: Vec<usize> = (0..call.forks.len())
                    .filter(|&j| j != fi && matches!(call.forks[j].state, ForkState::Trying | ForkState::Ringing))
                    .collect();
                for j in others {
                    self.cancel_fork(now, id, j);
                }
                let phone_addr = trunkline_media::sdp::Sdp::parse(&answer).ok().and_then(|s| s.audio_rtp_addr());
                if let Some(CallerSide::Direct(d)) = self.calls.get(&id).map(|c| &c.a) {
                    // C15: the phone answered; the bridge sends to it.
                    let bridge = d.bridge;
                    if let Some(addr) = phone_addr {
                        self.out.push_back(Output::BridgeRemote { id: bridge, phone: addr });
                    }
                    return self.answer_a(now, id, String::new());
                }
                let Some(pair) = media else { return };
                if let Some(addr) = phone_addr {
                    self.out.push_back(Output::MediaRemote { id: pair.id, leg: MediaLeg::B, addr });
                }
                let a_answer = match trunkline_media::sdp::rewrite(&answer, pair.a_local.ip(), pair.a_local.port(), None) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(call = id, error = %e, "callee's SDP answer unusable");
                        self.bye_fork(now, id, fi);
                        return self.fail_call(now, id, 488, "Not Acceptable Here", Some("the callee's SDP answer was unusable"));
                    }
                };
                self.answer_a(now, id, a_answer);
            }
            _ => {
                fork.state = ForkState::Failed(status);
                let all_done = call.forks.iter().all(|f| matches!(f.state, ForkState::Failed(_) | ForkState::Cancelled));
                if all_done && call.winner.is_none() && !call.a.final_sent() {
                    let codes: Vec<u16> = call
                        .forks
                        .iter()
                        .filter_map(|f| if let ForkState::Failed(c) = f.state { Some(c) } else { None })
                        .collect();
                    let (code, reason) = if codes.iter().any(|c| *c == 486 || *c == 600) {
                        (486, "Busy Here")
                    } else if codes.contains(&603) {
                        (603, "Decline")
                    } else {
                        (480, "Temporarily Unavailable")
                    };
                    self.fail_call(now, id, code, reason, None);
                }
            }
        }
    }

    /// The call is answered: tell the caller (200 OK with `sdp` to a SIP caller; `connected` to
    /// a direct caller, and C15 to the cloud).
    fn answer_a(&mut self, now: Instant, id: u64, sdp: String) {
        let contact = self.contact_str();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.connected_at = Some(now);
        let a = match &mut call.a {
            CallerSide::Direct(d) => {
                d.final_sent = true;
                call.state = CallState::Connected;
                let (conn, cloud_id) = (d.conn, call.cloud_id.clone());
                tracing::info!(call = id, caller = %call.caller, callee = %call.callee, step = "C15", "bridged");
                return self.direct_progress(conn, cloud_id, CallEvent::Connected);
            }
            CallerSide::Sip(a) => a,
        };
        let mut r = Response::to_request(&a.invite, 200, "OK");
        r.set_to_tag(&a.our_tag);
        r.headers.push("Contact", contact);
        r.headers.push("Allow", ALLOW);
        r.headers.push("Server", "Trunkline");
        r.set_body("application/sdp", sdp.clone().into_bytes());
        let data = r.to_bytes();
        call.sdp_to_a = Some(sdp);
        a.final_sent = true;
        a.ok = Some(data.clone());
        a.ok_since = Some(now);
        a.ok_interval = T1;
        call.state = CallState::Answered;
        let (src, tr, key) = (a.src, a.transport, a.tx.clone());
        self.out.push_back(Output::Sip { to: src, transport: tr, data: data.clone() });
        if let Some(tx) = self.server_txs.get_mut(&key) {
            tx.last = Some((data, 200));
        }
        self.schedule(now + T64, Timer::ServerExpire(key));
        self.set_call_timer(now, id, T1, CallTimer::OkRetransmit);
    }

    /// Progress of the phone, to a direct caller and (as the carrier) to the cloud.
    fn direct_progress(&mut self, conn: u64, cloud_id: Option<String>, event: CallEvent) {
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Progress { event: event.clone() }, close: false });
        if let Some(c) = cloud_id {
            self.cloud(ClientMsg::CallEvent { call_id: c, event });
        }
    }

    fn send_ringing(&mut self, id: u64) {
        let contact = format!("<sip:{}:{}>", ip_host(self.cfg.adv_ip), self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.ringing_sent || call.a.final_sent() {
            return;
        }
        call.ringing_sent = true;
        let a = match &call.a {
            CallerSide::Direct(d) => {
                let (conn, cloud_id) = (d.conn, call.cloud_id.clone());
                return self.direct_progress(conn, cloud_id, CallEvent::Ringing);
            }
            CallerSide::Sip(a) => a,
        };
        let mut r = Response::to_request(&a.invite, 180, "Ringing");
        r.set_to_tag(&a.our_tag);
        r.headers.push("Contact", contact);
        let data = r.to_bytes();
        let (src, tr, key) = (a.src, a.transport, a.tx.clone());
        self.out.push_back(Output::Sip { to: src, transport: tr, data: data.clone() });
        if let Some(tx) = self.server_txs.get_mut(&key) {
            tx.last = Some((data, 180));
        }
    }

    // ============================================================ ending calls

    /// End a call that was never answered: final `code` to the caller (with `why` as a Warning),
    /// CANCEL forks, free media.
    fn fail_call(&mut self, now: Instant, id: u64, code: u16, reason: &str, why: Option<&str>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.state == CallState::Done {
            return;
        }
        let was_final = call.a.final_sent();
        call.state = CallState::Done;
        let forks: Vec<usize> =
            (0..call.forks.len()).filter(|&j| matches!(call.forks[j].state, ForkState::Trying | ForkState::Ringing)).collect();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, code, reason = ?why, "call not connected");
        let outcome = outcome_for(code, why);
        let report = call.cloud_id.clone().filter(|_| matches!(call.a, CallerSide::Direct(_)) || call.b_direct.is_some());
        let b_direct = call.b_direct;
        let mut to_send = None;
        match &mut call.a {
            CallerSide::Sip(a) => {
                a.final_sent = true;
                if !was_final {
                    let mut r = Response::to_request(&a.invite, code, reason);
                    r.set_to_tag(&a.our_tag);
                    r.headers.push("Server", "Trunkline");
                    if let Some(w) = why {
                        r.headers.push("Warning", warning(w));
                        r.headers.push("Reason", format!("SIP;cause={code};text=\"{}\"", w.replace('"', "'")));
                    }
                    to_send = Some((a.tx.clone(), r));
                }
            }
            CallerSide::Direct(d) => {
                d.final_sent = true;
                self.out.push_back(Output::Direct { conn: d.conn, msg: DirectServerMsg::Ended { outcome }, close: true });
            }
        }
        if let Some((b_conn, _)) = b_direct {
            self.out.push_back(Output::Direct { conn: b_conn, msg: DirectServerMsg::Ended { outcome }, close: true });
        }
        if let Some((remote, _)) = self.calls.get(&id).and_then(|c| c.b_remote.clone()) {
            self.out.push_back(Output::SessionHangup { id: remote });
        }
        for j in forks {
            self.cancel_fork(now, id, j);
        }
        if let Some((key, r)) = to_send {
            self.send_response(now, &key, r);
        }
        if let Some(cid) = report {
            self.end_report(now, id, cid, outcome, None);
        }
        self.finish(id);
    }

    /// BYE: `bye_a` / `bye_b` say which sides we must still hang up.
    fn hangup(&mut self, now: Instant, id: u64, bye_a: bool, bye_b: bool) {
        let (adv_ip, port) = (self.cfg.adv_ip, self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.state = CallState::Done;
        let duration_ms = call.connected_at.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let report = call.cloud_id.clone().filter(|_| matches!(call.a, CallerSide::Direct(_)) || call.b_direct.is_some());
        let mut bye = None;
        if bye_a {
            match &mut call.a {
                CallerSide::Sip(a) => {
                    a.our_cseq += 1;
                    let mut r = Request::new(Method::Bye, a.remote_target.clone());
                    let branch = new_branch(&mut self.rng);
                    r.headers.push("Via", via_str(a.transport, adv_ip, port, &branch));
                    r.headers.push("Max-Forwards", "70");
                    // From/To swap: we are the callee of the A dialog.
                    let mut from = a.invite.to().unwrap_or_else(|_| NameAddr::new(a.invite.uri.clone()));
                    from.set_tag(&a.our_tag);
                    r.set_from(&from);
                    if let Ok(to) = a.invite.from() {
                        r.set_to(&to);
                    }
                    r.set_call_id(&a.call_id);
                    r.set_cseq(&CSeq::new(a.our_cseq, Method::Bye));
                    bye = Some((branch, r, a.src, a.transport));
                }
                CallerSide::Direct(d) => {
                    self.out.push_back(Output::Direct {
                        conn: d.conn,
                        msg: DirectServerMsg::Ended { outcome: Outcome::Connected },
                        close: true,
                    });
                }
            }
        }
        let b_direct = call.b_direct;
        let winner = call.winner;
        if let Some((branch, r, src, tr)) = bye {
            self.send_client(now, branch, r, src, tr, ClientOwner::Fire);
        }
        let b_remote = self.calls.get(&id).and_then(|c| c.b_remote.as_ref().map(|(r, _)| *r));
        if let Some(r) = b_remote {
            // The direct leg to the other site ends with the call, whoever hung up.
            self.out.push_back(Output::SessionHangup { id: r });
        }
        if bye_b {
            if let Some((conn, _)) = b_direct {
                self.out.push_back(Output::Direct {
                    conn,
                    msg: DirectServerMsg::Ended { outcome: Outcome::Connected },
                    close: true,
                });
            } else if let Some(w) = winner {
                self.bye_fork(now, id, w);
            }
        }
        if let Some(cid) = report {
            self.end_report(now, id, cid, Outcome::Connected, duration_ms);
        }
        self.finish(id);
    }

    /// The cloud's end-of-call report for call `id`: with what the record needs (caller,
    /// callee, times), so a cloud that restarted meanwhile still writes it. Numbers the
    /// protocol cannot carry fall back to a plain `ended` event.
    fn end_report(&mut self, now: Instant, id: u64, call_id: String, outcome: Outcome, duration_ms: Option<u64>) {
        let Some(call) = self.calls.get(&id) else { return };
        let ok = |n: &str| trunkline_protocol::check_number("n", n).is_ok();
        if !ok(&call.caller) || !ok(&call.callee) {
            self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Ended { outcome, duration_ms } });
            return;
        }
        let ended_ms = self.unix_ms(now).max(call.started_ms);
        let duration_ms = duration_ms.map(|d| d.min((ended_ms - call.started_ms) as u64));
        let m = ClientMsg::CallReport {
            call_id,
            outcome,
            duration_ms,
            from: call.caller.clone(),
            to: call.callee.clone(),
            started_ms: call.started_ms,
            ended_ms,
        };
        self.cloud(m);
    }

    /// Unix seconds at `now` (digest nonces).
    fn unix_secs(&self, now: Instant) -> u64 {
        u64::try_from(self.unix_ms(now) / 1000).unwrap_or(0)
    }

    /// Unix ms at `now`.
    fn unix_ms(&self, now: Instant) -> i64 {
        let (base_i, base_ms) = self.clock_base;
        match now.checked_duration_since(base_i) {
            Some(d) => base_ms + d.as_millis() as i64,
            None => base_ms - base_i.saturating_duration_since(now).as_millis() as i64,
        }
    }

    /// The cloud call ids of the calls this gateway carries now (reported at each sign-in, so
    /// the cloud can end the calls it still has open for us that are gone here).
    pub fn cloud_calls(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .calls
            .values()
            .filter(|c| c.state != CallState::Done)
            .filter_map(|c| c.cloud_id.clone())
            .chain(self.queue.waiting_ids().map(str::to_string))
            .chain(self.direct.values().map(|d| d.call_id.clone()))
            .chain(self.session_by_call.keys().cloned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn finish(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.generation = 0;
        if let Some(m) = call.media.take() {
            self.out.push_back(Output::MediaStop { id: m.id });
        }
        if let Some(e) = call.echo.take() {
            self.out.push_back(Output::MediaStop { id: e });
        }
        let bridges: Vec<u64> = match &call.a {
            CallerSide::Direct(d) => vec![d.bridge],
            CallerSide::Sip(_) => vec![],
        }
        .into_iter()
        .chain(call.b_direct.map(|(_, b)| b))
        .chain(call.b_remote.as_ref().map(|(b, _)| *b))
        .collect();
        for b in bridges {
            self.out.push_back(Output::BridgeStop { id: b });
        }
        // Keep the call (for late 2xx/ACK matching) only while its dialog can still see
        // traffic; it is removed when its last timers are gone (see `reap`).
        let call = self.calls.remove(&id).expect("live");
        if let Some(a) = call.a.sip() {
            self.by_a.remove(&a.call_id);
        }
        let conns: Vec<u64> = match &call.a {
            CallerSide::Direct(d) => vec![d.conn],
            CallerSide::Sip(_) => vec![],
        };
        for c in conns.into_iter().chain(call.b_direct.map(|(c, _)| c)) {
            self.direct.remove(&c);
        }
        for f in &call.forks {
            self.by_b.remove(&f.call_id);
        }
        if let Some(c) = &call.cloud_id {
            self.by_cloud.remove(c);
            self.remote_by_call.remove(c);
        }
        if let Some((b, _)) = &call.b_remote {
            self.by_remote.remove(b);
        }
    }

    fn cancel_fork(&mut self, now: Instant, id: u64, fi: usize) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fi];
        if !matches!(fork.state, ForkState::Trying | ForkState::Ringing) {
            return;
        }
        fork.state = ForkState::Cancelled;
        let mut c = Request::new(Method::Cancel, fork.request.uri.clone());
        for v in fork.request.headers.get_all("Via").take(1) {
            c.headers.push("Via", v);
        }
        c.headers.push("Max-Forwards", "70");
        for h in ["From", "To", "Call-ID"] {
            if let Some(v) = fork.request.headers.get(h) {
                c.headers.push(h, v);
            }
        }
        c.set_cseq(&CSeq::new(fork.cseq, Method::Cancel));
        let (dest, tr) = (fork.dest, fork.transport);
        // A CANCEL shares the INVITE's branch but is its own transaction.
        let key = format!("{}-cancel", fork.branch);
        self.send_client(now, key, c, dest, tr, ClientOwner::Fire);
    }

    fn bye_fork(&mut self, now: Instant, id: u64, fi: usize) {
        let (adv_ip, port) = (self.cfg.adv_ip, self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fi];
        fork.cseq += 1;
        let target = fork.remote_target.clone().unwrap_or_else(|| fork.request.uri.clone());
        let mut r = Request::new(Method::Bye, target);
        let branch = new_branch(&mut self.rng);
        r.headers.push("Via", via_str(fork.transport, adv_ip, port, &branch));
        r.headers.push("Max-Forwards", "70");
        if let Some(v) = fork.request.headers.get("From") {
            r.headers.push("From", v);
        }
        let mut to = fork.request.to().unwrap_or_else(|_| NameAddr::new(fork.request.uri.clone()));
        if let Some(t) = &fork.to_tag {
            to.set_tag(t);
        }
        r.set_to(&to);
        r.set_call_id(&fork.call_id);
        r.set_cseq(&CSeq::new(fork.cseq, Method::Bye));
        let (dest, tr) = (fork.dest, fork.transport);
        self.send_client(now, branch, r, dest, tr, ClientOwner::Fire);
    }

    fn ack_2xx(&mut self, id: u64, fi: usize) -> Option<Output> {
        let call = self.calls.get(&id)?;
        let fork = call.forks.get(fi)?;
        let target = fork.remote_target.clone().unwrap_or_else(|| fork.request.uri.clone());
        let mut r = Request::new(Method::Ack, target);
        r.headers.push("Via", via_str(fork.transport, self.cfg.adv_ip, self.cfg.sip_port, &new_branch(&mut self.rng)));
        r.headers.push("Max-Forwards", "70");
        if let Some(v) = fork.request.headers.get("From") {
            r.headers.push("From", v);
        }
        let mut to = fork.request.to().ok()?;
        if let Some(t) = &fork.to_tag {
            to.set_tag(t);
        }
        r.set_to(&to);
        r.set_call_id(&fork.call_id);
        r.set_cseq(&CSeq::new(1, Method::Ack));
        Some(Output::Sip { to: fork.dest, transport: fork.transport, data: r.to_bytes() })
    }

    /// A 2xx for a call we no longer have: ACK it and BYE it so the phone stops ringing.
    fn ack_and_bye_orphan(&mut self, now: Instant, branch: &str, resp: &Response, bye: bool) {
        let Some(tx) = self.client_txs.get(branch) else { return };
        let Some(req) = tx.request.clone() else { return };
        let (to_addr, tr) = (tx.to, tx.transport);
        let target = resp
            .contacts()
            .ok()
            .and_then(|c| c.into_iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())))
            .unwrap_or_else(|| req.uri.clone());
        let methods: &[(Method, u32)] = if bye { &[(Method::Ack, 1), (Method::Bye, 2)] } else { &[(Method::Ack, 1)] };
        for (method, seq) in methods.iter().cloned() {
            let mut r = Request::new(method.clone(), target.clone());
            let b = new_branch(&mut self.rng);
            r.headers.push("Via", via_str(tr, self.cfg.adv_ip, self.cfg.sip_port, &b));
            r.headers.push("Max-Forwards", "70");
            if let Some(v) = req.headers.get("From") {
                r.headers.push("From", v);
            }
            if let Some(v) = resp.headers.get("To") {
                r.headers.push("To", v);
            }
            if let Some(v) = req.headers.get("Call-ID") {
                r.headers.push("Call-ID", v);
            }
            r.set_cseq(&CSeq::new(seq, method.clone()));
            if method == Method::Ack {
                self.out.push_back(Output::Sip { to: to_addr, transport: tr, data: r.to_bytes() });
            } else {
                self.send_client(now, b, r, to_addr, tr, ClientOwner::Fire);
            }
        }
    }

    // ============================================================ client transactions + timers

    fn send_client(&mut self, now: Instant, key: String, req: Request, to: SocketAddr, transport: Transport, owner: ClientOwner) {
        let invite = req.method == Method::Invite;
        let data = req.to_bytes();
        self.out.push_back(Output::Sip { to, transport, data: data.clone() });
        let g = if transport == Transport::Udp { self.schedule(now + T1, Timer::ClientRetransmit(key.clone())) } else { 0 };
        self.schedule(now + T64, Timer::ClientTimeout(key.clone()));
        self.client_txs.insert(
            key,
            ClientTx {
                invite,
                data,
                to,
                transport,
                interval: T1,
                got_provisional: false,
                got_final: false,
                generation: g,
                owner,
                request: if invite { Some(req) } else { None },
            },
        );
    }

    fn schedule(&mut self, at: Instant, t: Timer) -> u64 {
        self.seq += 1;
        self.timers.insert((at, self.seq), t);
        self.seq
    }

    fn set_call_timer(&mut self, now: Instant, id: u64, after: Duration, which: CallTimer) {
        let g = self.schedule(now + after, Timer::Call(id, which));
        if let Some(c) = self.calls.get_mut(&id) {
            c.generation = g;
        }
    }

    fn cancel_timer(&mut self, id: u64) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.generation = 0;
        }
    }

    fn fire(&mut self, now: Instant, g: u64, t: Timer) {
        match t {
            Timer::ServerRetransmit(key) => {
                let Some(tx) = self.server_txs.get_mut(&key) else { return };
                if tx.acked {
                    return;
                }
                if let Some((data, _)) = &tx.last {
                    self.out.push_back(Output::Sip { to: tx.to, transport: tx.transport, data: data.clone() });
                }
                tx.interval = (tx.interval * 2).min(T2);
                let next = tx.interval;
                self.schedule(now + next, Timer::ServerRetransmit(key));
            }
            Timer::ServerExpire(key) => {
                // Only the latest expiry counts for non-INVITE transactions; INVITE ones go
                // when their (final) expiry fires.
                if let Some(tx) = self.server_txs.get(&key)
                    && (tx.invite || tx.generation == g || tx.generation == 0)
                {
                    if tx.invite && tx.last.as_ref().is_none_or(|(_, s)| *s < 200) {
                        return; // still proceeding: the call owns it
                    }
                    self.server_txs.remove(&key);
                }
            }
            Timer::ClientRetransmit(key) => {
                let Some(tx) = self.client_txs.get_mut(&key) else { return };
                if tx.got_final || tx.interval == Duration::MAX || (tx.invite && tx.got_provisional) {
                    return;
                }
                self.out.push_back(Output::Sip { to: tx.to, transport: tx.transport, data: tx.data.clone() });
                tx.interval = if tx.invite { tx.interval * 2 } else { (tx.interval * 2).min(T2) };
                let next = tx.interval;
                tx.generation = self.seq + 1;
                self.schedule(now + next, Timer::ClientRetransmit(key));
            }
            Timer::ClientTimeout(key) => {
                // A ringing INVITE (provisional seen) waits for its final as long as the call
                // does; timer B only ends INVITEs nobody answered at all.
                if let Some(tx) = self.client_txs.get(&key)
                    && tx.invite
                    && tx.got_provisional
                    && !tx.got_final
                {
                    self.schedule(now + T64, Timer::ClientTimeout(key));
                    return;
                }
                let Some(tx) = self.client_txs.remove(&key) else { return };
                if !tx.got_final
                    && let ClientOwner::Fork { call, fork } = tx.owner
                {
                    // Timer B: treat as 408 from that contact.
                    if let Some(c) = self.calls.get_mut(&call)
                        && let Some(f) = c.forks.get_mut(fork)
                        && matches!(f.state, ForkState::Trying | ForkState::Ringing)
                    {
                        f.state = ForkState::Failed(408);
                        let all_done = c.forks.iter().all(|f| matches!(f.state, ForkState::Failed(_) | ForkState::Cancelled));
                        if all_done && c.winner.is_none() {
                            self.fail_call(now, call, 480, "Temporarily Unavailable", Some("the callee's phone did not respond"));
                        }
                    }
                }
            }
            Timer::Call(id, which) => {
                let Some(call) = self.calls.get_mut(&id) else { return };
                if call.generation != g {
                    return;
                }
                match which {
                    CallTimer::Ring => {
                        if call.state == CallState::Ringing {
                            self.fail_call(now, id, 480, "Temporarily Unavailable", Some("no answer"));
                        }
                    }
                    CallTimer::Route => {
                        if call.state == CallState::Routing {
                            self.fail_call(now, id, 503, "Service Unavailable", Some("the cloud did not answer in time"));
                        }
                    }
                    CallTimer::OkRetransmit => {
                        if call.state != CallState::Answered {
                            return;
                        }
                        let Some(a) = call.a.sip_mut() else { return };
                        let give_up = a.ok_since.unwrap_or(now) + T64;
                        if now >= give_up {
                            // RFC 3261 §13.3.1.4: no ACK 64·T1 after our 2xx; the dialog is
                            // confirmed and at once ended (BYE), on both legs.
                            tracing::warn!(call = id, "no ACK for our 200 OK: hanging up");
                            return self.hangup(now, id, true, true);
                        }
                        if a.transport == Transport::Udp
                            && let Some(ok) = &a.ok
                        {
                            self.out.push_back(Output::Sip { to: a.src, transport: a.transport, data: ok.clone() });
                        }
                        a.ok_interval = (a.ok_interval * 2).min(T2);
                        // Timer G's next tick, but never past the give-up time.
                        let next = (now + a.ok_interval).min(give_up);
                        self.set_call_timer(now, id, next - now, CallTimer::OkRetransmit);
                    }
                }
            }
        }
    }

    // ============================================================ helpers

    fn is_busy(&self, number: &str) -> bool {
        self.queue.has_call_for(number)
            || self.calls.values().any(|c| c.state != CallState::Done && (c.caller == number || c.callee == number))
    }

    fn is_busy_except(&self, number: &str, id: u64) -> bool {
        self.calls.iter().any(|(cid, c)| *cid != id && c.state != CallState::Done && (c.caller == number || c.callee == number))
    }

    fn via(&self, transport: Transport, branch: &str) -> String {
        via_str(transport, self.cfg.adv_ip, self.cfg.sip_port, branch)
    }

    fn contact(&self) -> String {
        self.contact_str()
    }

    fn contact_str(&self) -> String {
        format!("<sip:{}@{}:{}>", self.cfg.switch_id, ip_host(self.cfg.adv_ip), self.cfg.sip_port)
    }
}

impl Call {
    /// Whether fork `fi`'s dialog belongs to the call: the winner's, or any still ringing.
    fn fork_dialog_live(&self, fi: usize) -> bool {
        match self.winner {
            Some(w) => w == fi,
            None => self.forks.get(fi).is_some_and(|f| matches!(f.state, ForkState::Trying | ForkState::Ringing)),
        }
    }

    /// The SDP we last gave `side` (our 2xx to the caller, our INVITE to the callee, or a later
    /// answer to a mid-call offer).
    fn sdp_sent(&self, side: Side) -> Option<String> {
        match side {
            Side::A => self.sdp_to_a.clone(),
            Side::B(fi) => self.sdp_to_b.clone().or_else(|| {
                let f = self.forks.get(fi)?;
                (!f.request.body.is_empty()).then(|| String::from_utf8_lossy(&f.request.body).into_owned())
            }),
        }
    }

    fn set_sdp_sent(&mut self, side: Side, sdp: String) {
        match side {
            Side::A => self.sdp_to_a = Some(sdp),
            Side::B(_) => self.sdp_to_b = Some(sdp),
        }
    }
}

/// Which side of a call a request came from: the caller's dialog, or fork `n`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B(usize),
}

/// Our answer to a mid-call `offer`, from `last`, the SDP we gave that side before: the same
/// session (same `o=` origin, version + 1, same address and port), only the payload types the
/// offer has too, and the direction the offer's asks for (RFC 3264 §6.1, §8).
fn answer_reoffer(last: &str, offer: &str) -> Result<String, String> {
    use trunkline_media::sdp::Sdp;
    let offered = Sdp::parse(offer).map_err(|e| format!("unusable SDP offer: {e}"))?;
    let offered = offered.audio.ok_or("the offer has no audio")?;
    let ours = Sdp::parse(last).map_err(|e| e.to_string())?;
    let our_addr = ours.audio_rtp_addr().ok_or("no audio address in our session")?;
    let kept = trunkline_media::sdp::rewrite(last, our_addr.ip(), our_addr.port(), Some(&offered.payload_types))
        .map_err(|_| "none of the offered codecs is the call's".to_string())?;
    let directed = with_direction(&kept, offered.direction.reversed().as_str());
    trunkline_media::sdp::bump_version(&directed).map_err(|e| e.to_string())
}

/// `sdp` with its audio section's direction attribute set to `dir` (any other direction
/// attribute, at session or audio level, removed).
fn with_direction(sdp: &str, dir: &str) -> String {
    const DIRECTIONS: [&str; 4] = ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"];
    let mut out = String::with_capacity(sdp.len() + 16);
    let (mut seen_media, mut in_audio, mut pending) = (false, false, false);
    for line in sdp.lines() {
        if line.starts_with("m=") {
            if pending {
                out.push_str(&format!("a={dir}\r\n"));
            }
            seen_media = true;
            in_audio = line.starts_with("m=audio ");
            pending = in_audio;
        }
        if DIRECTIONS.contains(&line.trim_end()) && (!seen_media || in_audio) {
            continue;
        }
        out.push_str(line.trim_end_matches('\r'));
        out.push_str("\r\n");
    }
    if pending {
        out.push_str(&format!("a={dir}\r\n"));
    }
    out
}

fn ack_for(invite: &Request, resp: &Response, branch: &str) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(v) = invite.headers.get("Via") {
        ack.headers.push("Via", v);
    } else {
        ack.headers.push("Via", format!("SIP/2.0/UDP 0.0.0.0;branch={branch}"));
    }
    ack.headers.push("Max-Forwards", "70");
    for h in ["From", "Call-ID"] {
        if let Some(v) = invite.headers.get(h) {
            ack.headers.push(h, v);
        }
    }
    if let Some(v) = resp.headers.get("To") {
        ack.headers.push("To", v);
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    ack.set_cseq(&CSeq::new(seq, Method::Ack));
    ack
}

fn via_str(transport: Transport, ip: IpAddr, port: u16, branch: &str) -> String {
    format!("SIP/2.0/{} {}:{};branch={};rport", transport.as_str(), ip_host(ip), port, branch)
}

fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

fn host_of(ip: IpAddr) -> Host {
    match ip {
        IpAddr::V4(v) => Host::V4(v),
        IpAddr::V6(v) => Host::V6(v),
    }
}

fn host_str(h: &Host) -> String {
    match h {
        Host::Domain(d) => d.to_ascii_lowercase(),
        Host::V4(v) => v.to_string(),
        Host::V6(v) => format!("[{v}]"),
    }
}

fn warning(text: &str) -> String {
    format!("399 trunkline \"{}\"", text.replace(['"', '\\', '\r', '\n'], "'"))
}

fn new_tag(rng: &mut StdRng) -> String {
    format!("{:016x}", rng.random::<u64>())
}

fn new_branch(rng: &mut StdRng) -> String {
    format!("z9hG4bK{:016x}", rng.random::<u64>())
}

/// Verifiers no password hashes to (not hex): checked for numbers nobody has.
const DECOY_HA1_MD5: &str = "decoy-decoy-decoy-decoy-decoy-de";
const DECOY_HA1_SHA256: &str = "decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-deco";

fn key_error_text(e: KeyError) -> &'static str {
    match e {
        KeyError::BadKey => "no call is waiting with that key",
        KeyError::Expired => "the key has expired",
        KeyError::Used => "the key was already used",
        KeyError::WrongCaller => "the key was issued to another caller",
    }
}

/// The outcome a SIP final status stands for (reported to the cloud for calls we carry).
fn outcome_for(code: u16, why: Option<&str>) -> Outcome {
    match code {
        486 | 600 => Outcome::Busy,
        603 => Outcome::Declined,
        487 => Outcome::Cancelled,
        404 => Outcome::RejectedInvalid,
        480 if why.is_some_and(|w| w.contains("not registered")) => Outcome::CalleeOffline,
        408 | 480 => Outcome::NoAnswer,
        _ => Outcome::Error,
    }
}

fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Connected => "connected",
        Outcome::RejectedInvalid => "number does not exist",
        Outcome::Declined => "declined",
        Outcome::Busy => "busy",
        Outcome::NoAnswer => "no answer",
        Outcome::CalleeOffline => "callee offline",
        Outcome::SwitchUnavailable => "the callee's site is unavailable",
        Outcome::KeyExpired => "the callee did not connect in time",
        Outcome::Cancelled => "cancelled",
        Outcome::Error => "error",
        Outcome::ConnectFailed => "the direct connection could not be made",
        Outcome::MediaLost => "the media path was lost",
    }
}
