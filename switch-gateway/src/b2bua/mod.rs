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
//!
//! One file per layer, each an `impl Core` block: `transaction.rs` (the RFC 3261 state machines
//! and their timer tables), `sip.rs` (requests in, responses out, transactions kept and their
//! timers fired), `dialog.rs` (requests inside dialogs; the one builder of BYE, ACK and
//! CANCEL), `auth.rs` (REGISTER and digest), `calls.rs` (B2BUA calls, forks, typed
//! `Failure`s), `cloud.rs` (the cloud exchange, F2 caller side), `direct.rs` (C14 over
//! WebRTC, carrier side). This file keeps the types, the state and the public entry points.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trunkline_protocol::{
    CallEvent, ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode, Outcome, PhoneEntry, QueryAnswer, Route,
    ServerMsg, SignalPayload, Step,
};
use trunkline_sip::digest::{self, Algorithm, NonceCheck, NonceSource, NonceUses};
use trunkline_sip::{CSeq, Contact, Host, Message, Method, NameAddr, Request, Response, Scheme, Uri};

use crate::cloud_link::LinkEvent;
use crate::guard::{Admit, BlockEvent, Blocked, Guard, GuardConfig};
use crate::phones::{PhoneList, Phones};
use crate::queue::{Direction, KeyError, WaitingQueue};
use crate::registrar::{Change, ContactUpdate, RegisterError, Registrar, SavedRegistrations, Transport};

mod auth;
mod calls;
mod cloud;
mod dialog;
mod direct;
mod sip;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cloud;
#[cfg(test)]
mod tests_dialog;
#[cfg(test)]
mod tests_tx;
mod timers;
mod transaction;

use calls::Failure;
use transaction::{ClientTx, ServerTx};
#[cfg(test)]
use transaction::{T1, T2, T64};

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

/// How long changed registrations wait before they go to disk: a burst of REGISTERs is one save.
/// A crash loses at most this much; a SIGTERM saves at once.
pub const SAVE_REGISTRATIONS_EVERY: Duration = Duration::from_secs(1);

/// The same when phones only refreshed (each save copies every binding: 10,000 phones
/// refreshing every half hour would otherwise mean a copy every second). A crash then loses
/// refreshes of the last minute: those bindings come back with their previous expiry, which a
/// phone refreshing well before it expires has not reached.
pub const SAVE_REFRESHES_EVERY: Duration = Duration::from_secs(60);

/// Saves are at least this much per binding of the last save apart (10,000 phones: 10 s), so
/// saving costs about the same CPU a second however large the site; a crash during a storm of
/// new registrations then loses up to that much of it (those phones come back at their next
/// REGISTER).
pub const SAVE_PER_BINDING: Duration = Duration::from_millis(1);

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

/// Where relay ports come from (the driver hands out sockets it bound beforehand; tests hand
/// out fake addresses). Called in the core's stack: no IO, no clock, no OS randomness.
pub trait MediaPorts: Send {
    fn allocate(&mut self) -> Option<MediaPair>;
    /// Set up an echo endpoint for a peer that offered `offer`; it runs from
    /// [`Output::EchoStart`]: a short prompt tone, then it sends back what it hears. Stopped
    /// (or, if never started, freed) with [`Output::MediaStop`].
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
/// and the id its DataChannel is known by ([`Core::on_direct`], [`Output::Direct`]). Called in
/// the core's stack: the driver's sockets are bound beforehand, its tasks start from outputs,
/// and time is the core's `now`.
pub trait Bridges: Send {
    /// C14 over WebRTC, carrier side: a WebRTC leg (full ICE, DTLS, a DataChannel) answering
    /// `offer`, which came through the cloud before any key: returns the session's id and the
    /// answer. Nothing rings: the key is checked when the connecting party presents it on the
    /// DataChannel.
    fn open_session(&mut self, now: Instant, offer: &str) -> Result<(u64, String), BridgeError>;
    /// C15 for a session: add the desk-phone side to session `id`'s leg (an offer of the law
    /// the WebRTC side prefers, or the answer to `phone_offer`). `BridgeSetup::answer` is empty:
    /// the session's answer already went out.
    fn attach(&mut self, id: u64, phone_offer: Option<&str>) -> Result<BridgeSetup, BridgeError>;
    /// F2 caller side: a full-ICE leg offering audio and the `trunkline-direct` DataChannel to
    /// present the key on (the offer in `BridgeSetup::answer`), with the phone side answering
    /// `phone_offer`.
    fn offer_session(&mut self, now: Instant, phone_offer: &str) -> Result<BridgeSetup, BridgeError>;
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
    /// Start echo endpoint `id` ([`MediaPorts::start_echo`]).
    EchoStart {
        id: u64,
    },
    /// Stop (or, if never started, just free) relay or echo endpoint `id`.
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
    /// The registrar's bindings changed (at most once per [`SAVE_REGISTRATIONS_EVERY`], and at
    /// shutdown): save them as `registrations.json`, so a restarted gateway reaches its phones
    /// before they register again.
    SaveRegistrations(SavedRegistrations),
    /// A patent step this switch took for cloud call `call_id` (B1, B2, C2, C12, C14, C15),
    /// for the trace: the driver logs it (target `trunkline::trace`) and keeps it per call.
    Step {
        call_id: String,
        step: Step,
        detail: String,
    },
}

// ---------------------------------------------------------------- transactions

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    /// ACK and CANCEL match the INVITE's transaction by branch; CANCEL has its own too.
    method: String,
}

/// Who waits for a client transaction's answer.
enum ClientOwner {
    Fork {
        call: u64,
        fork: usize,
    },
    /// BYE/CANCEL and the like: nobody waits for the answer.
    Fire,
}

/// A call's own timer (transactions keep theirs in their tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallTimer {
    /// Nobody answered within `ring_timeout`.
    Ring,
    /// The cloud did not answer B2 within `ROUTE_TIMEOUT`.
    Route,
}

/// When a call's timer fires; `order` breaks ties with transactions due at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CallDeadline {
    at: Instant,
    which: CallTimer,
    order: u64,
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
    /// The call's own timer, if one runs.
    deadline: Option<CallDeadline>,
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
    /// When the registrar's changed bindings go to the driver to save; `None`: nothing to save.
    save_registrations_at: Option<Instant>,
    /// The last save: when, and how many bindings it copied (which paces the next one).
    registrations_saved: Option<(Instant, usize)>,
    queue: WaitingQueue,
    nonces: NonceSource,
    /// (nonce, nc) pairs already accepted: no replay.
    nonce_uses: NonceUses,
    /// The answers to recent REGISTERs, which keep no transaction (see `sip::Answered`).
    answered: sip::Answered,
    guard: Guard,
    media: Box<dyn MediaPorts>,
    cloud_up: bool,
    server_txs: timers::TxTable<ServerKey, ServerTx>,
    client_txs: timers::TxTable<String, ClientTx>,
    /// Calls' ring/route deadlines, indexed (entries checked against `Call::deadline`).
    call_deadlines: timers::Deadlines<u64>,
    calls: HashMap<u64, Call>,
    /// A-leg Call-ID → call.
    by_a: HashMap<String, u64>,
    /// B-leg (fork) Call-ID → (call, fork).
    by_b: HashMap<String, (u64, usize)>,
    /// Cloud call id → call (our outgoing B2 calls).
    by_cloud: HashMap<String, u64>,
    /// F2: our bridge to a remote gateway → call.
    by_remote: HashMap<u64, u64>,
    /// Orders transactions and call timers due at the same instant (deterministic firing).
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
            save_registrations_at: None,
            registrations_saved: None,
            queue,
            nonces: NonceSource::new(nonce_secret),
            nonce_uses: NonceUses::new(MAX_NONCE_USES),
            answered: sip::Answered::default(),
            guard,
            media,
            cloud_up: false,
            server_txs: Default::default(),
            client_txs: Default::default(),
            call_deadlines: Default::default(),
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_b: HashMap::new(),
            by_cloud: HashMap::new(),
            by_remote: HashMap::new(),
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

    /// Trace a patent step of cloud call `call_id`.
    fn step(&mut self, call_id: &str, step: Step, detail: impl Into<String>) {
        self.out.push_back(Output::Step { call_id: call_id.to_string(), step, detail: detail.into() });
    }

    /// The earliest deadline of any transaction, call or queued key.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Indexed deadlines may be stale (moved or gone): then the driver wakes early and
        // `handle_timeout` finds nothing due. Never late.
        let servers = self.server_txs.next_timeout().map(|(at, _)| at);
        let clients = self.client_txs.next_timeout().map(|(at, _)| at);
        let calls = self.call_deadlines.peek().map(|(at, _)| at);
        servers.into_iter().chain(clients).chain(calls).chain(self.queue.poll_timeout()).chain(self.save_registrations_at).min()
    }

    /// Take the bindings a previous process saved (`registrations.json`, read by the driver)
    /// before any input: those of numbers still in the phone list that have not expired.
    pub fn restore_registrations(&mut self, now: Instant, saved: SavedRegistrations) -> usize {
        let unix_ms = self.unix_ms(now);
        let phones = &self.phones;
        self.registrar.restore(now, unix_ms, saved, |number| phones.contains(number))
    }

    /// After the registrar changed: its bindings are saved within [`SAVE_REGISTRATIONS_EVERY`]
    /// if a phone is now elsewhere (a REGISTER storm is one file write a second, not one per
    /// REGISTER), within [`SAVE_REFRESHES_EVERY`] if phones only refreshed.
    fn registrations_changed(&mut self, now: Instant) {
        let within = match self.registrar.take_changed() {
            Change::None => return,
            Change::Refreshed => SAVE_REFRESHES_EVERY,
            Change::Moved => SAVE_REGISTRATIONS_EVERY,
        };
        // Each save copies and writes every binding: a large site saves less often (one
        // binding a millisecond, at most), so a storm costs what a small site's does.
        let paced = self.registrations_saved.map(|(at, n)| at + SAVE_PER_BINDING * u32::try_from(n).unwrap_or(u32::MAX));
        let at = (now + within).max(paced.unwrap_or(now));
        self.save_registrations_at = Some(self.save_registrations_at.map_or(at, |t| t.min(at)));
    }

    fn save_registrations(&mut self, now: Instant) {
        self.save_registrations_at = None;
        let unix_ms = self.unix_ms(now);
        let saved = self.registrar.snapshot(now, unix_ms);
        self.registrations_saved = Some((now, saved.bindings.len()));
        self.out.push_back(Output::SaveRegistrations(saved));
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
                Some(_) => self.fail_call(now, id, Failure::Unavailable("the gateway is shutting down".into())),
            }
        }
        let conns: Vec<u64> = self.direct.keys().copied().collect();
        for conn in conns {
            self.direct_gone(now, conn);
        }
        // Bindings not saved yet go now: the next process starts from them.
        if self.save_registrations_at.is_some() {
            self.save_registrations(now);
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
                    self.fail_call(now, id, Failure::Unavailable("the cloud became unreachable".into()));
                }
            }
            LinkEvent::Msg(m) => self.on_cloud_msg(now, m),
        }
    }

    /// A message on the `trunkline-direct` DataChannel of session `conn` (C14: the key; then
    /// `hangup`). A refused key closes the leg and forgets it at once, so the connecting party
    /// may offer again (a new `direct_signal`) while the key lives.
    pub fn on_direct(&mut self, now: Instant, conn: u64, msg: DirectClientMsg) {
        self.direct_msg(now, conn, msg);
    }

    /// Session `conn`'s leg is gone (closed, failed, never got its key), or its party hung up.
    pub fn on_direct_gone(&mut self, now: Instant, conn: u64) {
        self.direct_gone(now, conn);
    }

    /// F2 caller side: what the callee switch did with our call (its answer through the cloud,
    /// then what it says on the session's DataChannel, or the session's end).
    pub fn on_remote(&mut self, now: Instant, bridge: u64, ev: RemoteEvent) {
        self.remote_event(now, bridge, ev);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for e in self.queue.expire(now) {
            tracing::info!(call_id = %e.call_id, "waiting-queue entry expired");
            if e.direction == Direction::Outbound
                && let Some(id) = self.by_cloud.get(&e.call_id).copied()
            {
                self.fail_call(now, id, Failure::NoAnswer(Some("the callee did not connect in time")));
            }
        }
        self.fire_timers(now);
        if self.save_registrations_at.is_some_and(|t| t <= now) {
            self.save_registrations(now);
        }
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

fn key_error_text(e: KeyError) -> &'static str {
    match e {
        KeyError::BadKey => "no call is waiting with that key",
        KeyError::Expired => "the key has expired",
        KeyError::Used => "the key was already used",
        KeyError::WrongCaller => "the key was issued to another caller",
    }
}
