//! The steering engine: the cloud server's half of patent CN110012057B, as a sans-IO core.
//!
//! Inputs are method calls with `now` passed in ([`Engine::handle`], [`Engine::device_online`],
//! [`Engine::switch_online`], [`Engine::disconnected`], [`Engine::handle_timeout`],
//! [`Engine::set_directory`]); outputs are [`Output`] commands drained with
//! [`Engine::poll_output`]; the next deadline is [`Engine::poll_timeout`]. No sockets, no clock,
//! no tasks: the tokio driver in `server.rs` owns those, and the tests in `tests.rs` drive every
//! branch deterministically.
//!
//! Parties are named by identity (a device number or a switch id), not by connection, so a
//! switch or browser that reconnects mid-call still reaches (and is reached by) its calls.
//!
//! Steps, as they appear in traces and call records:
//! - `A`: a `dial` from a browser came via the cloud (→ `C1`); a `route_query` came via a
//!   caller-side switch (→ `B1`, `B2`).
//! - `B3`: callee unknown → `rejected_invalid`. `B4`: callee valid.
//! - `B5`: callee has a home switch → `C11` ask it, `C12` its answer, `C13` (to a browser) or
//!   `C2` (to the caller's switch) hand over address + key.
//! - `B6`: callee is switchless → from a browser: F4 relay with a cloud-issued key; from a
//!   switch: the switch sends `direct_offer` and `C3` tells the callee over its WebSocket.
//! - `C14`/`C15`: reported by the switch that carries the call (key accepted, bridged).
//! - `Push` (not a patent step): a switchless callee with no live connection is woken by Web
//!   Push ([`Output::WakeUp`], when [`Engine::set_wake_up`] is on). The attempt waits
//!   ([`CallState::AwaitWake`]) until the callee signs in ([`Engine::device_online`]: then F4
//!   rings it, or C3 hands it the caller switch's offer), the driver reports that nobody could be
//!   woken ([`Engine::wake_failed`]), or the ring timeout passes — both `callee_offline`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trunkline_protocol::{
    CallEvent, CallId, ClientMsg, DeclineReason, ErrorCode, IncomingVia, Outcome, PhoneEntry, ProtocolError, QueryAnswer, Route,
    ServerMsg, SignalPayload, Step,
};

use crate::config::SteeringConfig;
use crate::directory::{Account, CallRecord, UnixMs};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cluster;

/// A connection, as numbered by the driver.
pub type ConnId = u64;

/// A replica of the signal server in cluster mode (its configured `node_id`).
pub type NodeId = String;

/// Where a party's live connection is: on this replica, or on another one (cluster mode: the
/// driver learns it from the presence bucket and delivers [`Output::SendRemote`] over the bus).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Loc {
    Local(ConnId),
    Remote(NodeId),
}

/// Who is at the other end of a connection (or a call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    Device(String),
    Switch(String),
}

impl Party {
    /// The device number or switch id.
    pub fn name(&self) -> &str {
        match self {
            Party::Device(n) | Party::Switch(n) => n,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `msg` on connection `conn`.
    Send { conn: ConnId, msg: ServerMsg },
    /// Cluster mode: `to` is connected to replica `node`; deliver `msg` to it there
    /// ([`Engine::deliver`] on that replica).
    SendRemote { node: NodeId, to: Party, msg: ServerMsg },
    /// Cluster mode: `msg` from `from` (on local `conn`) names a call this replica does not own.
    /// The driver hands it to the call's owner ([`Engine::handle_remote`] there) and relays a
    /// refusal to `conn`; if no replica owns the call, it calls [`Engine::handle_unowned`].
    Forward { conn: ConnId, from: Party, msg: ClientMsg },
    /// Cluster mode: the attempt's state after a change, for the write-ahead attempt row that
    /// lets another replica finish the attempt if this one dies. The `Record` that ends the
    /// attempt replaces the row. `new`: the attempt's first row (written ahead, before any
    /// party on another replica hears of it); later ones are state changes.
    Attempt { row: AttemptRow, new: bool },
    /// Cluster mode, at shutdown: a connected call carried by a switch is handed over, not
    /// ended: the media runs on, and the switch's end report (to any replica) makes its record.
    Released(AttemptRow),
    /// Close connection `conn` (after sending what was queued for it).
    Close { conn: ConnId },
    /// Persist a finished call attempt.
    Record(CallRecord),
    /// A patent step happened for `call_id` (for logs/metrics; the steps also go in the record).
    /// `call_id` and `detail` are empty when the driver turned details off
    /// ([`Engine::set_trace_details`]): it then only counts the step.
    Trace { call_id: CallId, step: Step, detail: String },
    /// The attempt ended (for logs; the `Record` that follows carries the details). `call_id`
    /// and `why` are empty when details are off, as for `Trace`.
    Ended { call_id: CallId, outcome: Outcome, why: String },
    /// The switchless callee `number` has no live connection: wake it by Web Push with an
    /// incoming-call message (F4, or C3 after B6). If it has no subscription, or no push is
    /// accepted, the driver calls [`Engine::wake_failed`]; otherwise the attempt waits for the
    /// callee to sign in.
    WakeUp { call_id: CallId, number: String, from: String, from_name: String },
}

/// Where a call is between its start and its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// C11 sent; waiting for the callee's switch to answer (C12).
    AwaitSwitchAnswer,
    /// B6 route sent to the caller's switch; waiting for its `direct_offer` (C3).
    AwaitDirectOffer,
    /// Address + key handed out (C13/C2/C3); waiting for the switch to see the key (C14).
    AwaitDirectConnect,
    /// C14 done: the switch accepted the key and is ringing its phone.
    KeyAccepted,
    /// The callee is ringing.
    Ringing,
    Connected,
    /// The switchless callee had no live connection and is being woken by Web Push: waiting for
    /// it to sign in (F4: then it is rung; B6: the caller switch's `direct_offer` is kept and
    /// handed over then, C3). Times out `callee_offline` at the ring timeout (for B6 also when
    /// the switch's key expires first).
    AwaitWake,
}

/// An open attempt as the cluster's attempt table keeps it (cluster mode only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    pub call_id: CallId,
    pub state: CallState,
    pub caller: Party,
    pub caller_number: String,
    pub callee_number: String,
    pub carrier: Option<String>,
    pub callee_device: Option<String>,
    pub started_ms: UnixMs,
    pub connected_ms: Option<UnixMs>,
    /// When the current state times out (wall clock, via the engine's clock base).
    pub deadline_ms: UnixMs,
    pub trace: Vec<Step>,
}

impl CallState {
    /// The name in attempt rows.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::AwaitSwitchAnswer => "await_switch_answer",
            CallState::AwaitDirectOffer => "await_direct_offer",
            CallState::AwaitDirectConnect => "await_direct_connect",
            CallState::KeyAccepted => "key_accepted",
            CallState::Ringing => "ringing",
            CallState::Connected => "connected",
            CallState::AwaitWake => "await_wake",
        }
    }

    pub fn parse(s: &str) -> Option<CallState> {
        [
            CallState::AwaitSwitchAnswer,
            CallState::AwaitDirectOffer,
            CallState::AwaitDirectConnect,
            CallState::KeyAccepted,
            CallState::Ringing,
            CallState::Connected,
            CallState::AwaitWake,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// A caller switch's C3 offer, kept while its switchless callee is being woken.
#[derive(Clone, Debug)]
struct PendingOffer {
    url: String,
    key: String,
    expires_in_ms: u64,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Call {
    caller: Party,
    caller_number: String,
    callee_number: String,
    /// The switch that carries the call (bridges media), once known.
    carrier: Option<String>,
    /// The switchless callee device (F4 and C3), if any.
    callee_device: Option<String>,
    /// Cloud-issued key for F4 relays.
    peer_key: Option<String>,
    state: CallState,
    started: Instant,
    connected_at: Option<Instant>,
    deadline: (Instant, u64),
    trace: Vec<Step>,
    /// A Web Push wake-up is out and the callee has not signed in since (listed in `wakes`).
    waking: bool,
    /// B6 while waking: the caller switch's offer, for when the callee signs in.
    offer: Option<Box<PendingOffer>>,
    /// The cloud link of a switch of this call dropped at this instant and has not come back
    /// (or came back and has not yet listed it): see [`Engine::reconcile`].
    link_lost: Option<Instant>,
    /// The switch came back without listing this call (it waits [`RECONCILE_WAIT`] for its
    /// end report).
    unlisted: bool,
    /// Cluster mode: taken over from a dead owner's row, which may lag the call by the last
    /// few milliseconds (a switch's progress and end reports are then taken in any state).
    adopted: bool,
}

#[derive(Clone, Debug)]
struct DirEntry {
    display_name: String,
    home_switch: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
}

/// The steering engine.
pub struct Engine {
    cfg: SteeringConfig,
    max_calls_per_device: usize,
    clock_base: (Instant, UnixMs),
    accounts: HashMap<String, DirEntry>,
    /// Parties signed in on this replica, by connection.
    /// Shared, so handling a message takes the sender's identity without copying its name.
    conns: HashMap<ConnId, Arc<Party>>,
    /// Online devices by number: where their live connection is.
    devices: HashMap<String, Loc>,
    /// Online switches by id: where their live connection is.
    switches: HashMap<String, Loc>,
    /// Cluster mode: parties may be on other replicas; unknown calls are forwarded.
    cluster: bool,
    calls: HashMap<CallId, Call>,
    timers: BTreeMap<(Instant, u64), CallId>,
    timer_seq: u64,
    outputs: std::collections::VecDeque<Output>,
    new_key: Box<dyn FnMut() -> String + Send>,
    /// Wake offline switchless callees by Web Push (else they end `callee_offline` at once).
    wake_up: bool,
    /// Format each trace's detail (on by default; a driver that does not log them turns it off).
    trace_details: bool,
    /// Callee number → the attempts waiting for it to sign in.
    wakes: HashMap<String, Vec<CallId>>,
    /// The last [`RECENT_ENDS`] attempts that ended, so a repeated end report (a switch
    /// re-sending what it queued while its link was down) is recognised as done.
    /// One shared copy of each id in both (an end costs one allocation here, not two).
    recent: std::collections::VecDeque<Arc<str>>,
    recent_set: std::collections::HashSet<Arc<str>>,
}

/// Extra time past a key's TTL before the cloud gives up waiting for C14 (clock skew, RTT).
const KEY_GRACE: Duration = Duration::from_secs(2);
/// A woken callee rings for what is left of the ring timeout, but at least this long.
pub const WAKE_MIN_RING: Duration = Duration::from_secs(10);
/// A switch that came back and did not list one of its calls gets this long to send that
/// call's end report (it sends what it queued right after signing in) before the call is
/// ended at the link loss.
pub const RECONCILE_WAIT: Duration = Duration::from_secs(2);
/// Ended attempts remembered to recognise repeated end reports.
pub const RECENT_ENDS: usize = 4096;

impl Engine {
    /// `clock_base` ties the monotonic clock to wall time for call records:
    /// `(Instant::now(), unix_ms_now)`. `new_key` returns a fresh ≥128-bit unpadded base64url key.
    pub fn new(
        cfg: SteeringConfig,
        max_calls_per_device: usize,
        clock_base: (Instant, UnixMs),
        new_key: Box<dyn FnMut() -> String + Send>,
    ) -> Engine {
        Engine {
            cfg,
            max_calls_per_device,
            clock_base,
            accounts: HashMap::new(),
            conns: HashMap::new(),
            devices: HashMap::new(),
            switches: HashMap::new(),
            cluster: false,
            calls: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            outputs: Default::default(),
            new_key,
            wake_up: false,
            trace_details: true,
            wakes: HashMap::new(),
            recent: Default::default(),
            recent_set: Default::default(),
        }
    }

    /// Turn Web Push wake-ups on (the driver has a push sender) or off (the default: an offline
    /// switchless callee ends `callee_offline` at once).
    pub fn set_wake_up(&mut self, on: bool) {
        self.wake_up = on;
    }

    /// Whether [`Output::Trace`] carries its detail text: formatting it costs more than the
    /// rest of the step, so a driver whose trace log is off turns it off.
    pub fn set_trace_details(&mut self, on: bool) {
        self.trace_details = on;
    }

    /// Cluster mode: parties may sit on other replicas ([`Engine::remote_online`]), messages
    /// about calls owned elsewhere are forwarded ([`Output::Forward`]), attempts are written
    /// ahead ([`Output::Attempt`]) and shutdown hands connected switch calls over.
    pub fn set_cluster(&mut self, on: bool) {
        self.cluster = on;
    }

    /// The driver could not wake the callee of `call_id`: it has no push subscription, or no
    /// push service accepted the message. If the callee has not signed in meanwhile, the
    /// attempt ends `callee_offline` now. Otherwise (or for an attempt that is over) nothing
    /// happens.
    pub fn wake_failed(&mut self, now: Instant, call_id: &str, why: &str) {
        if self.calls.get(call_id).is_some_and(|c| c.waking) {
            self.finish(now, call_id, Outcome::CalleeOffline, why);
        }
    }

    // ---------------------------------------------------------------- driver interface

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest instant at which [`Engine::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Calls in progress (for metrics and tests).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Attempts in progress that have not connected (a draining replica waits for them).
    pub fn calls_not_connected(&self) -> usize {
        self.calls.values().filter(|c| c.state != CallState::Connected).count()
    }

    pub fn call_state(&self, call_id: &str) -> Option<CallState> {
        self.calls.get(call_id).map(|c| c.state)
    }

    /// The device number signed in on `conn`, if `conn` is a browser's live connection.
    pub fn device_of(&self, conn: ConnId) -> Option<&str> {
        match &**self.conns.get(&conn)? {
            Party::Device(n) => Some(n),
            Party::Switch(_) => None,
        }
    }

    pub fn is_switch_online(&self, id: &str) -> bool {
        self.switches.contains_key(id)
    }

    /// Replace the directory snapshot. Online switches whose phone list changed get
    /// `phones_update`.
    pub fn set_directory(&mut self, accounts: Vec<Account>) {
        let before: HashMap<String, Vec<PhoneEntry>> = self.switches.keys().map(|id| (id.clone(), self.phones_of(id))).collect();
        self.accounts = accounts
            .into_iter()
            .map(|a| {
                (
                    a.number,
                    DirEntry {
                        display_name: a.display_name,
                        home_switch: a.home_switch,
                        ha1_md5: a.ha1_md5,
                        ha1_sha256: a.ha1_sha256,
                    },
                )
            })
            .collect();
        // Each replica updates the switches connected to it.
        let ids: Vec<(String, ConnId)> = self
            .switches
            .iter()
            .filter_map(|(id, l)| match l {
                Loc::Local(c) => Some((id.clone(), *c)),
                Loc::Remote(_) => None,
            })
            .collect();
        for (id, conn) in ids {
            let now = self.phones_of(&id);
            if before.get(&id) != Some(&now) {
                self.send(conn, ServerMsg::PhonesUpdate { phones: now });
            }
        }
    }

    /// The desk phones whose home switch is `switch_id`, sorted by number.
    pub fn phones_of(&self, switch_id: &str) -> Vec<PhoneEntry> {
        let mut v: Vec<PhoneEntry> = self
            .accounts
            .iter()
            .filter(|(_, a)| a.home_switch.as_deref() == Some(switch_id))
            .map(|(n, a)| PhoneEntry {
                number: n.clone(),
                display_name: a.display_name.clone(),
                ha1_md5: a.ha1_md5.clone().unwrap_or_default(),
                ha1_sha256: a.ha1_sha256.clone().unwrap_or_default(),
            })
            .collect();
        v.sort_by(|a, b| a.number.cmp(&b.number));
        v
    }

    /// A browser signed in on `conn`. A previous connection of the same device is replaced:
    /// it gets `session_replaced` and is closed.
    pub fn device_online(&mut self, now: Instant, conn: ConnId, number: &str) {
        if let Some(Loc::Local(old)) = self.devices.insert(number.to_string(), Loc::Local(conn))
            && old != conn
        {
            self.replace_conn(old, "signed in on another connection");
        }
        self.conns.insert(conn, Arc::new(Party::Device(number.to_string())));
        self.wake_calls_of(now, number);
    }

    /// Attempts waiting for `number` to sign in (Web Push) go on now.
    fn wake_calls_of(&mut self, now: Instant, number: &str) {
        if !self.wakes.is_empty()
            && let Some(ids) = self.wakes.remove(number)
        {
            for id in ids {
                self.woken(now, &id);
            }
        }
    }

    /// A newer connection of the same party replaced `old`: tell it and close it.
    fn replace_conn(&mut self, old: ConnId, why: &str) {
        self.conns.remove(&old);
        self.send(old, ServerMsg::error(ErrorCode::SessionReplaced, why, None));
        self.outputs.push_back(Output::Close { conn: old });
    }

    /// The callee of `call_id`, woken by Web Push, has signed in: ring it (F4) or hand it the
    /// caller switch's offer (C3). It rings for the rest of the ring timeout, at least
    /// [`WAKE_MIN_RING`]. Before the switch's offer has come (B6), the offer finds it online.
    fn woken(&mut self, now: Instant, call_id: &str) {
        let Some(c) = self.calls.get_mut(call_id) else { return };
        if !c.waking {
            return;
        }
        c.waking = false;
        let until = (c.started + self.cfg.ring_timeout()).max(now + WAKE_MIN_RING);
        if c.state != CallState::AwaitWake {
            return;
        }
        match c.offer.take() {
            None => self.deliver_peer(call_id, until),
            Some(offer) => {
                let left = Duration::from_millis(offer.expires_in_ms).saturating_sub(now.saturating_duration_since(offer.at));
                if left.is_zero() {
                    self.finish(now, call_id, Outcome::CalleeOffline, "the callee signed in after the switch's key expired");
                    return;
                }
                let PendingOffer { url, key, .. } = *offer;
                self.deliver_direct(call_id, url, key, left.as_millis() as u64, until);
            }
        }
    }

    /// A switch signed in on `conn`. It is sent `switch_welcome` with its phones. A previous
    /// connection of the same switch is replaced. (What it may have advertised in
    /// `direct_urls` only goes to the directory: callers are handed its name, `switch:<id>`.)
    pub fn switch_online(
        &mut self,
        _now: Instant,
        conn: ConnId,
        switch_id: &str,
        realm: &str,
        ice_servers: Vec<trunkline_protocol::IceServer>,
    ) {
        if let Some(Loc::Local(old)) = self.switches.insert(switch_id.to_string(), Loc::Local(conn))
            && old != conn
        {
            self.replace_conn(old, "switch signed in on another connection");
        }
        self.conns.insert(conn, Arc::new(Party::Switch(switch_id.to_string())));
        let phones = self.phones_of(switch_id);
        self.send(
            conn,
            ServerMsg::SwitchWelcome {
                v: trunkline_protocol::PROTOCOL_VERSION,
                switch_id: switch_id.to_string(),
                sip_realm: realm.to_string(),
                phones,
                ice_servers,
            },
        );
    }

    /// A connection closed. Returns the party it was (if it had signed in and was not replaced).
    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Option<Party> {
        let party = Arc::unwrap_or_clone(self.conns.remove(&conn)?);
        let map = match &party {
            Party::Device(_) => &mut self.devices,
            Party::Switch(_) => &mut self.switches,
        };
        if map.get(party.name()) == Some(&Loc::Local(conn)) {
            map.remove(party.name());
        }
        self.party_gone(now, &party);
        Some(party)
    }

    /// `party` has no live connection any more (here or, in cluster mode, on its replica).
    fn party_gone(&mut self, now: Instant, party: &Party) {
        let party = party.clone();
        // Calls that depended on this live connection end now; calls whose media runs
        // directly between the other parties and a switch carry on without the cloud.
        let affected: Vec<CallId> =
            self.calls.iter().filter(|(_, c)| Self::involves(c, &party)).map(|(id, _)| id.clone()).collect();
        for id in affected {
            let Some(call) = self.calls.get(&id) else { continue };
            let outcome = match (&party, call.state) {
                // Waiting on this switch's answer or offer: it is gone.
                (Party::Switch(s), CallState::AwaitSwitchAnswer) if call.carrier.as_deref() == Some(s) => {
                    Some(Outcome::SwitchUnavailable)
                }
                (Party::Switch(s), CallState::AwaitDirectOffer) if call.caller == Party::Switch(s.clone()) => {
                    Some(Outcome::SwitchUnavailable)
                }
                // F4 (no switch): the cloud relay is the call's only signalling path.
                (Party::Device(_), state) if call.carrier.is_none() => Some(match state {
                    CallState::Connected => Outcome::Connected,
                    _ if call.caller == party => Outcome::Cancelled,
                    _ => Outcome::CalleeOffline,
                }),
                // A browser caller that leaves before it got the switch's key gives up.
                (Party::Device(_), CallState::AwaitSwitchAnswer) if call.caller == party => Some(Outcome::Cancelled),
                // A switchless C3 callee that leaves while being rung: it cannot connect.
                (Party::Device(d), CallState::Ringing) if call.callee_device.as_deref() == Some(d) => {
                    Some(Outcome::CalleeOffline)
                }
                // Otherwise the direct leg carries on; the switch reports the end.
                _ => None,
            };
            if let Some(o) = outcome {
                self.finish(now, &id, o, &format!("{party:?} disconnected"));
            } else if matches!(party, Party::Switch(_)) {
                // The switch may still carry the call (a blip), or may have crashed: keep the
                // call for the grace period and let the switch say which on its return.
                self.link_lost(now, &id);
            }
        }
    }

    // ---------------------------------------------------------------- cluster inputs

    /// Cluster mode: `party` signed in on replica `node` (the presence table says so). If it
    /// was connected here, that connection is replaced (`session_replaced`, closed); if it was
    /// on another replica, its calls see it leave first, as for a reconnect. A device's
    /// calls waiting for it to sign in (Web Push) go on; a switch's calls are reconciled with
    /// the list it gave at sign-in (`calls`, see [`Engine::reconcile`]).
    pub fn remote_online(&mut self, now: Instant, party: &Party, node: &str, calls: Option<&[CallId]>) {
        let map = match party {
            Party::Device(_) => &mut self.devices,
            Party::Switch(_) => &mut self.switches,
        };
        let why = match party {
            Party::Device(_) => "signed in on another connection",
            Party::Switch(_) => "switch signed in on another connection",
        };
        match map.insert(party.name().to_string(), Loc::Remote(node.to_string())) {
            // Still connected here: the newer connection elsewhere replaces it (as on one
            // server, its calls carry on).
            Some(Loc::Local(old)) => self.replace_conn(old, why),
            // It left another replica and came back on this one: as on one server, where a
            // reconnect follows the old connection's drop, its calls see it leave first (a
            // ringing browser's new session knows nothing of the call; a switch's connected
            // calls wait for its call list, below).
            Some(Loc::Remote(old)) if old != node => self.party_gone(now, party),
            _ => {}
        }
        match party {
            Party::Device(n) => self.wake_calls_of(now, n),
            Party::Switch(id) => self.reconcile(now, id, calls),
        }
    }

    /// Cluster mode: `party`'s connection on replica `node` closed. Ignored if the party has
    /// moved since (it is online elsewhere); otherwise its calls here see it leave, as with
    /// [`Engine::disconnected`].
    pub fn remote_offline(&mut self, now: Instant, party: &Party, node: &str) {
        let map = match party {
            Party::Device(_) => &mut self.devices,
            Party::Switch(_) => &mut self.switches,
        };
        match map.get(party.name()) {
            Some(Loc::Remote(n)) if n == node => {
                map.remove(party.name());
            }
            _ => return,
        }
        self.party_gone(now, party);
    }

    /// Cluster mode: replica `node` is gone (its lease expired): every party that was on it is
    /// offline.
    pub fn node_down(&mut self, now: Instant, node: &str) {
        let on = |m: &HashMap<String, Loc>| -> Vec<String> {
            m.iter().filter(|(_, l)| matches!(l, Loc::Remote(n) if n == node)).map(|(k, _)| k.clone()).collect()
        };
        let parties: Vec<Party> =
            on(&self.devices).into_iter().map(Party::Device).chain(on(&self.switches).into_iter().map(Party::Switch)).collect();
        for p in parties {
            self.remote_offline(now, &p, node);
        }
    }

    /// Cluster mode: deliver a message another replica sent to `to`, if `to` is connected here.
    /// Returns whether it was (the party may have left or moved meanwhile: then it is dropped).
    pub fn deliver(&mut self, to: &Party, msg: ServerMsg) -> bool {
        let map = match to {
            Party::Device(_) => &self.devices,
            Party::Switch(_) => &self.switches,
        };
        let conn = match map.get(to.name()) {
            Some(Loc::Local(conn)) => *conn,
            _ => return false,
        };
        if let ServerMsg::Outcome { call_id, .. } = &msg {
            // The attempt ended on its owner: a repeated end report that reaches this replica
            // later (no owner any more) is then recognised as done here too.
            self.remember(call_id);
        }
        self.send(conn, msg);
        true
    }

    /// Cluster mode: a message from `from`, a party connected to another replica, about a call
    /// this replica owns (forwarded by that replica). A refusal is returned for the forwarding
    /// replica to relay; nothing changes then.
    pub fn handle_remote(&mut self, now: Instant, from: &Party, msg: ClientMsg) -> Result<(), ProtocolError> {
        match &msg {
            ClientMsg::Dial { .. } | ClientMsg::RouteQuery { .. } => {
                return Err(ProtocolError::new(ErrorCode::Forbidden, "a new call starts on the caller's replica"));
            }
            _ if msg.call_id().is_none_or(|id| !self.calls.contains_key(id)) => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownCall,
                    format!("no call {} in progress", msg.call_id().unwrap_or("")),
                ));
            }
            _ => {}
        }
        self.dispatch(now, None, from, msg)
    }

    /// Cluster mode: no replica owns the call a forwarded message names (it ended, or its owner
    /// died). Handled here as a single server would: an end report is recorded as reported,
    /// anything else is refused with `unknown_call`.
    pub fn handle_unowned(&mut self, now: Instant, conn: ConnId, msg: ClientMsg) {
        self.handle_here(now, conn, msg);
    }

    /// Cluster mode: tell `to` (here or on another replica) `msg`.
    pub fn send_to(&mut self, to: &Party, msg: ServerMsg) {
        self.send_party(to, msg);
    }

    /// Cluster mode: take over an attempt whose owner replica died (or drained), from its
    /// write-ahead row. What can go on without the dead owner goes on here:
    /// - a call carried by a switch keeps its state and deadlines (the switch and the caller
    ///   may still complete it: their messages now reach this replica);
    /// - a browser-to-browser (F4) attempt cannot: its relay died with the owner. Connected, it
    ///   ends `connected` (talk time to now); otherwise `error`, and every party still online
    ///   is told.
    ///
    /// Ignored if the call is already known here, or already ended here.
    pub fn adopt(&mut self, now: Instant, row: AttemptRow) {
        if self.calls.contains_key(&row.call_id) || self.recent_set.contains(row.call_id.as_str()) {
            return;
        }
        let call_id = row.call_id.clone();
        let seq = self.next_seq();
        let connected_at = row.connected_ms.map(|ms| self.instant_of(ms).min(now));
        let deadline = self.instant_of(row.deadline_ms).max(now);
        let started = self.instant_of(row.started_ms).min(now);
        self.calls.insert(
            call_id.clone(),
            Call {
                caller: row.caller,
                caller_number: row.caller_number,
                callee_number: row.callee_number,
                carrier: row.carrier,
                callee_device: row.callee_device,
                peer_key: None,
                state: row.state,
                started,
                connected_at,
                deadline: (deadline, seq),
                trace: row.trace,
                waking: false,
                offer: None,
                link_lost: None,
                unlisted: false,
                adopted: true,
            },
        );
        self.timers.insert((deadline, seq), call_id.clone());
        let c = &self.calls[&call_id];
        if c.carrier.is_none() {
            let (o, why) = if c.state == CallState::Connected {
                (Outcome::Connected, "the replica that relayed this call was lost")
            } else {
                (Outcome::Error, "the replica that owned this call was lost")
            };
            self.finish(now, &call_id, o, why);
            return;
        }
        if c.state == CallState::Connected {
            let until = c.connected_at.unwrap_or(now) + self.cfg.max_call_duration();
            self.set_state_deadline(&call_id, CallState::Connected, until.max(now));
        } else if let Some(row) = self.attempt_row(&call_id) {
            self.outputs.push_back(Output::Attempt { row, new: false });
        }
    }

    /// Cluster mode: this replica lost its membership (it could not renew its lease): it
    /// forgets every attempt and connection without a word (another replica adopts the
    /// attempts from their rows; the driver closes the sockets).
    pub fn fence(&mut self) {
        self.calls.clear();
        self.timers.clear();
        self.conns.clear();
        self.devices.clear();
        self.switches.clear();
        self.wakes.clear();
        self.outputs.clear();
    }

    /// The link of a switch of `call_id` dropped at `now`. A connected call waits at most
    /// `switch_link_grace` for it (its other deadlines stay: they are shorter).
    fn link_lost(&mut self, now: Instant, call_id: &str) {
        let grace = self.cfg.switch_link_grace();
        let Some(c) = self.calls.get_mut(call_id) else { return };
        c.link_lost.get_or_insert(now);
        if c.state == CallState::Connected {
            let until = (now + grace).min(c.deadline.0);
            self.set_state_deadline(call_id, CallState::Connected, until);
        }
    }

    /// Switch `switch_id` is back (just after [`Engine::switch_online`]) and carries `calls`
    /// (`None`: an older gateway that does not say). Its calls waiting since a link loss are
    /// kept if listed (or if it does not say); the others get [`RECONCILE_WAIT`] for their end
    /// report, then end at the link loss: connected ones with the talk time up to it, others
    /// `switch_unavailable`. With a list, this holds for every call of the switch: a gateway
    /// that restarted before its old connection was seen to drop (it replaced it) no longer
    /// carries them either; they end at this sign-in.
    pub fn reconcile(&mut self, now: Instant, switch_id: &str, calls: Option<&[CallId]>) {
        let me = Party::Switch(switch_id.to_string());
        let waiting: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| (c.link_lost.is_some() || calls.is_some()) && Self::involves(c, &me))
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            let kept = calls.is_none_or(|l| l.iter().any(|c| c == &id));
            let Some(c) = self.calls.get_mut(&id) else { continue };
            if kept {
                c.link_lost = None;
                if c.state == CallState::Connected {
                    let until = c.connected_at.unwrap_or(now) + self.cfg.max_call_duration();
                    self.set_state_deadline(&id, CallState::Connected, until.max(now));
                }
            } else {
                c.link_lost.get_or_insert(now);
                c.unlisted = true;
                let state = c.state;
                let until = (now + RECONCILE_WAIT).min(c.deadline.0.max(now));
                self.set_state_deadline(&id, state, until);
            }
        }
    }

    /// The server is stopping: every open attempt ends now (outcome `error`, or `connected`
    /// with its duration so far), so no attempt is left without a record.
    ///
    /// In cluster mode a connected call carried by a switch is handed over instead
    /// ([`Output::Released`]): its media carries on, and the switch's end report makes its
    /// record on whichever replica the switch reaches.
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            let connected = self.calls[&id].state == CallState::Connected;
            if self.cluster && connected && self.calls[&id].carrier.is_some() {
                let row = self.attempt_row(&id).expect("listed");
                let c = self.calls.remove(&id).expect("listed");
                self.timers.remove(&c.deadline);
                self.outputs.push_back(Output::Released(row));
                continue;
            }
            let o = if connected { Outcome::Connected } else { Outcome::Error };
            self.finish(now, &id, o, "signal server stopped");
        }
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&(t, seq), _)) = self.timers.iter().next() {
            if t > now {
                break;
            }
            let id = self.timers.remove(&(t, seq)).expect("key just seen");
            let Some(call) = self.calls.get(&id) else { continue };
            if let Some(lost) = call.link_lost {
                // The switch did not come back in time, or came back without this call.
                let (o, end) = match call.state {
                    CallState::Connected => (Outcome::Connected, lost.max(call.connected_at.unwrap_or(lost))),
                    _ => (Outcome::SwitchUnavailable, now),
                };
                let why = if call.unlisted {
                    "the switch came back after its cloud link was lost and no longer carries the call"
                } else {
                    "the switch's cloud link was lost and the switch did not come back within the grace"
                };
                self.finish_at(now, end, &id, o, why);
                continue;
            }
            let (outcome, why) = match call.state {
                CallState::AwaitSwitchAnswer => (Outcome::SwitchUnavailable, "C11: callee's switch did not answer in time"),
                CallState::AwaitDirectOffer => (Outcome::SwitchUnavailable, "C3: caller's switch sent no direct_offer in time"),
                CallState::AwaitDirectConnect => (Outcome::KeyExpired, "C14: the key was not presented in time"),
                CallState::KeyAccepted | CallState::Ringing => (Outcome::NoAnswer, "callee did not answer in time"),
                CallState::Connected => (Outcome::Connected, "no end reported within max_call_duration"),
                CallState::AwaitWake => (Outcome::CalleeOffline, "the callee did not sign in after the Web Push wake-up"),
            };
            self.finish(now, &id, outcome, why);
        }
    }

    /// A message from an authenticated connection. Refusals go back as typed errors and
    /// change nothing.
    pub fn handle(&mut self, now: Instant, conn: ConnId, msg: ClientMsg) {
        if self.cluster
            && !matches!(msg, ClientMsg::Dial { .. } | ClientMsg::RouteQuery { .. })
            && let Some(id) = msg.call_id()
            && !self.calls.contains_key(id)
            && let Some(party) = self.conns.get(&conn)
        {
            // Owned by another replica, or by none (the driver then calls handle_unowned).
            let from = Party::clone(party);
            self.outputs.push_back(Output::Forward { conn, from, msg });
            return;
        }
        self.handle_here(now, conn, msg);
    }

    fn handle_here(&mut self, now: Instant, conn: ConnId, msg: ClientMsg) {
        let Some(party) = self.conns.get(&conn).cloned() else {
            self.send(conn, ServerMsg::error(ErrorCode::NotAuthenticated, "sign in first", None));
            return;
        };
        let call_id = msg.call_id().map(str::to_string);
        if let Err(e) = self.dispatch(now, Some(conn), &party, msg) {
            self.send(conn, e.to_msg(call_id));
        }
    }

    // ---------------------------------------------------------------- dispatch

    /// `conn` is the party's local connection, `None` for a message forwarded by another
    /// replica (cluster mode).
    fn dispatch(&mut self, now: Instant, conn: Option<ConnId>, party: &Party, msg: ClientMsg) -> Result<(), ProtocolError> {
        use ClientMsg as M;
        match (party, msg) {
            (_, M::Ping) => {
                if let Some(conn) = conn {
                    self.send(conn, ServerMsg::Pong);
                }
                Ok(())
            }
            (_, M::Login { .. } | M::Resume { .. } | M::SwitchAuth { .. }) => {
                Err(ProtocolError::new(ErrorCode::AlreadyAuthenticated, "this connection is already signed in"))
            }
            (Party::Device(me), M::Dial { call_id, to }) => self.dial(now, me, call_id, to),
            (Party::Switch(me), M::RouteQuery { call_id, from, to }) => self.route_query(now, me, call_id, from, to),
            (Party::Switch(me), M::QueryAnswer { call_id, answer }) => self.query_answer(now, me, &call_id, answer),
            (Party::Switch(me), M::DirectOffer { call_id, url, key, expires_in_ms }) => {
                self.direct_offer(now, me, &call_id, url, key, expires_in_ms)
            }
            (Party::Switch(me), M::CallEvent { call_id, event }) => self.call_event(now, me, &call_id, event),
            (Party::Switch(me), M::CallReport { call_id, outcome, duration_ms, from, to, started_ms, ended_ms }) => {
                let report = EndReport { outcome, duration_ms, from, to, started_ms, ended_ms };
                self.call_report(now, me, &call_id, report)
            }
            (_, M::Cancel { call_id }) => self.cancel(now, party, &call_id),
            (Party::Device(me), M::Accept { call_id, key }) => self.accept(now, me, &call_id, &key),
            (_, M::Decline { call_id, reason }) => self.decline(now, party, &call_id, reason),
            (Party::Device(me), M::Signal { call_id, key, payload }) => self.signal(me, &call_id, &key, payload),
            (_, M::DirectSignal { call_id, payload }) => self.direct_signal(party, &call_id, payload),
            (_, M::ConnectFailed { call_id, reason }) => self.connect_failed(now, party, &call_id, &reason),
            (Party::Device(me), M::Hangup { call_id }) => self.hangup(now, me, &call_id),
            (_, m) => Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("a {} may not send {}", if matches!(party, Party::Device(_)) { "browser" } else { "switch" }, m.kind()),
            )),
        }
    }

    /// A: a browser's call request arrives via the cloud → C1.
    fn dial(&mut self, now: Instant, me: &str, call_id: CallId, to: String) -> Result<(), ProtocolError> {
        self.check_new_call(&call_id)?;
        let mine = self.calls.values().filter(|c| c.caller == Party::Device(me.to_string())).count();
        if mine >= self.max_calls_per_device {
            return Err(ProtocolError::new(
                ErrorCode::TooManyRequests,
                format!("at most {} calls in progress per device", self.max_calls_per_device),
            ));
        }
        let caller = Party::Device(me.to_string());
        self.start_call(now, &call_id, caller, me, &to);
        self.trace(&call_id, Step::A, format_args!("request via the cloud"));
        self.trace(&call_id, Step::C1, format_args!("browser dials"));
        let Some(home_switch) = self.validate_callee(now, &call_id, me, &to) else { return Ok(()) };
        match home_switch {
            Some(sw) => {
                self.trace(&call_id, Step::B5, format_args!("callee {to} is on switch {sw}"));
                self.ask_switch(now, &call_id, &sw);
            }
            None => {
                self.trace(&call_id, Step::B6, format_args!("callee {to} is a switchless device"));
                self.ring_peer(now, &call_id);
            }
        }
        Ok(())
    }

    /// A: a switch's request (B1) asks the cloud to validate (B2).
    fn route_query(&mut self, now: Instant, me: &str, call_id: CallId, from: String, to: String) -> Result<(), ProtocolError> {
        match self.accounts.get(&from) {
            Some(a) if a.home_switch.as_deref() == Some(me) => {}
            _ => {
                return Err(ProtocolError::new(ErrorCode::Forbidden, format!("{from} is not a phone of switch {me}")));
            }
        }
        self.check_new_call(&call_id)?;
        self.start_call(now, &call_id, Party::Switch(me.to_string()), &from, &to);
        self.trace(&call_id, Step::A, format_args!("request via a caller-side switch"));
        self.trace(&call_id, Step::B1, format_args!("switch {me} got a call from {from}"));
        self.trace(&call_id, Step::B2, format_args!("switch asks the cloud to validate"));
        let Some(home_switch) = self.validate_callee(now, &call_id, &from, &to) else { return Ok(()) };
        match home_switch {
            Some(sw) if sw == me => {
                // The switch's phone list was stale: it can connect the call itself (F7).
                self.send_switch(me, ServerMsg::Route { call_id: call_id.clone(), route: Route::Local });
                let c = self.calls.get_mut(&call_id).expect("just started");
                c.carrier = Some(me.to_string());
                self.set_state(now, &call_id, CallState::Ringing);
            }
            Some(sw) => {
                self.trace(&call_id, Step::B5, format_args!("callee {to} is on switch {sw}"));
                if !self.switches.contains_key(&sw) {
                    self.finish(now, &call_id, Outcome::SwitchUnavailable, &format!("switch {sw} is offline"));
                    return Ok(());
                }
                let url = trunkline_protocol::switch_address(&sw);
                self.send_switch(
                    me,
                    ServerMsg::Route { call_id: call_id.clone(), route: Route::Switch { switch_id: sw.clone(), url } },
                );
                self.ask_switch(now, &call_id, &sw);
            }
            None => {
                self.trace(&call_id, Step::B6, format_args!("callee {to} is a switchless device"));
                let online = self.devices.contains_key(&to);
                if !online && !self.wake_up {
                    self.finish(now, &call_id, Outcome::CalleeOffline, &format!("{to} has no live connection"));
                    return Ok(());
                }
                let c = self.calls.get_mut(&call_id).expect("just started");
                c.carrier = Some(me.to_string());
                c.callee_device = Some(to.clone());
                if !online {
                    // Wake it while the switch queues the call and makes its offer.
                    self.start_wake(&call_id, &to);
                }
                self.send_switch(me, ServerMsg::Route { call_id: call_id.clone(), route: Route::Device { device_id: to } });
                self.set_state(now, &call_id, CallState::AwaitDirectOffer);
            }
        }
        Ok(())
    }

    /// C12: the callee's switch answers C11.
    fn query_answer(&mut self, now: Instant, me: &str, call_id: &str, answer: QueryAnswer) -> Result<(), ProtocolError> {
        let call = self.switch_call(call_id, me)?;
        if call.state != CallState::AwaitSwitchAnswer || call.carrier.as_deref() != Some(me) {
            return Err(wrong_state(call_id, call.state, "query_answer"));
        }
        match answer {
            QueryAnswer::Accept { url, key, expires_in_ms } => {
                let caller = call.caller.clone();
                check_own_address(me, &url)?;
                self.trace(call_id, Step::C12, format_args!("switch {me} queued the call and issued a key"));
                let step = if matches!(caller, Party::Switch(_)) { Step::C2 } else { Step::C13 };
                self.trace(call_id, step, format_args!("address + key relayed to the caller"));
                self.send_party(&caller, ServerMsg::Connect { call_id: call_id.to_string(), url, key, expires_in_ms });
                let ttl = Duration::from_millis(expires_in_ms).min(self.cfg.key_ttl()) + KEY_GRACE;
                self.set_state_deadline(call_id, CallState::AwaitDirectConnect, now + ttl);
            }
            QueryAnswer::Decline { reason } => {
                self.trace(call_id, Step::C12, format_args!("switch {me} declined: {reason:?}"));
                self.trace(call_id, Step::C13, format_args!("decline relayed to the caller"));
                self.finish(now, call_id, reason.outcome(), "callee's switch declined");
            }
        }
        Ok(())
    }

    /// C3: after a B6 route, the caller's switch gives its address + key for the callee.
    fn direct_offer(
        &mut self,
        now: Instant,
        me: &str,
        call_id: &str,
        url: String,
        key: String,
        expires_in_ms: u64,
    ) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, &Party::Switch(me.to_string()))?;
        if call.state != CallState::AwaitDirectOffer || call.caller != Party::Switch(me.to_string()) {
            return Err(wrong_state(call_id, call.state, "direct_offer"));
        }
        check_own_address(me, &url)?;
        let callee = call.callee_device.as_deref().expect("B6 calls have a callee device");
        if !self.devices.contains_key(callee) {
            if call.waking {
                // Keep the offer until the callee signs in, but not past the key's life.
                let until = (call.started + self.cfg.ring_timeout()).min(now + Duration::from_millis(expires_in_ms));
                let c = self.calls.get_mut(call_id).expect("checked");
                c.offer = Some(Box::new(PendingOffer { url, key, expires_in_ms, at: now }));
                self.set_state_deadline(call_id, CallState::AwaitWake, until);
            } else {
                self.finish(now, call_id, Outcome::CalleeOffline, "callee went offline");
            }
            return Ok(());
        }
        let until = now + self.cfg.ring_timeout();
        self.deliver_direct(call_id, url, key, expires_in_ms, until);
        Ok(())
    }

    /// C3: tell the switchless callee (online) to connect to the caller's switch with its key.
    fn deliver_direct(&mut self, call_id: &str, url: String, key: String, expires_in_ms: u64, until: Instant) {
        let Some(c) = self.calls.get(call_id) else { return };
        let callee = c.callee_device.clone().expect("B6 calls have a callee device");
        let detail = format!("callee {callee} told to connect to switch {}", c.carrier.as_deref().unwrap_or("?"));
        let from = c.caller_number.clone();
        let from_name = self.display_name(&from);
        self.trace(call_id, Step::C3, format_args!("{detail}"));
        self.send_party(
            &Party::Device(callee),
            ServerMsg::Incoming {
                call_id: call_id.to_string(),
                from,
                from_name,
                via: IncomingVia::Direct { url, key, expires_in_ms },
            },
        );
        self.set_state_deadline(call_id, CallState::Ringing, until);
    }

    /// Progress from a switch that is a party of the call (C14 / C15 / the end).
    fn call_event(&mut self, now: Instant, me: &str, call_id: &str, event: CallEvent) -> Result<(), ProtocolError> {
        let me_p = Party::Switch(me.to_string());
        let call = self.party_call(call_id, &me_p)?;
        let state = call.state;
        let is_carrier = call.carrier.as_deref() == Some(me);
        let caller = call.caller.clone();
        // An adopted call's row may predate the switch's last steps: its word is taken.
        let adopted = call.adopted && state != CallState::Connected;
        let pre_connect = adopted || matches!(state, CallState::AwaitDirectConnect | CallState::KeyAccepted | CallState::Ringing);
        match event {
            CallEvent::KeyAccepted
                if is_carrier && (adopted || matches!(state, CallState::AwaitDirectConnect | CallState::Ringing)) =>
            {
                self.trace(call_id, Step::C14, format_args!("switch {me} accepted the key"));
                self.set_state(now, call_id, CallState::KeyAccepted);
                Ok(())
            }
            CallEvent::Ringing if is_carrier && pre_connect => {
                self.notify_caller(&caller, me, call_id, CallEvent::Ringing);
                if state != CallState::Ringing {
                    self.set_state(now, call_id, CallState::Ringing);
                }
                Ok(())
            }
            CallEvent::Connected if is_carrier && pre_connect => {
                self.trace(call_id, Step::C15, format_args!("switch {me} bridged the call"));
                self.notify_caller(&caller, me, call_id, CallEvent::Connected);
                let c = self.calls.get_mut(call_id).expect("checked");
                c.connected_at = Some(now);
                let until = now + self.cfg.max_call_duration();
                self.set_state_deadline(call_id, CallState::Connected, until);
                Ok(())
            }
            CallEvent::Ended { outcome, duration_ms } if adopted || state != CallState::AwaitSwitchAnswer || !is_carrier => {
                let outcome = if state == CallState::Connected { Outcome::Connected } else { outcome };
                if let Some(c) = self.calls.get_mut(call_id) {
                    // A switch saw the end: a link loss (this one's or another's) does not bound it.
                    c.link_lost = None;
                }
                if let Some(d) = duration_ms
                    && let Some(c) = self.calls.get_mut(call_id)
                    && outcome == Outcome::Connected
                {
                    // The carrier measured talk time; trust it over our message timing.
                    c.connected_at = Some(now.checked_sub(Duration::from_millis(d)).unwrap_or(now));
                }
                self.finish(now, call_id, outcome, &format!("switch {me} reported the end"));
                Ok(())
            }
            // An adopted call's messages may come again: a forward whose answer was lost with
            // the dead owner is asked again of the adopter. Progress it already has is done.
            CallEvent::KeyAccepted | CallEvent::Ringing | CallEvent::Connected
                if call.adopted && is_carrier && state == CallState::Connected =>
            {
                Ok(())
            }
            ev => Err(ProtocolError::new(
                ErrorCode::WrongState,
                format!("call {call_id} is {state:?}; a {} event from this switch does not fit", event_name(&ev)),
            )),
        }
    }

    fn cancel(&mut self, now: Instant, party: &Party, call_id: &str) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, party)?;
        if &call.caller != party {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, "only the caller can cancel; use decline"));
        }
        if call.state == CallState::Connected {
            return Err(wrong_state(call_id, call.state, "cancel (the call is connected: hang up)"));
        }
        self.finish(now, call_id, Outcome::Cancelled, "caller cancelled");
        Ok(())
    }

    fn decline(&mut self, now: Instant, party: &Party, call_id: &str, reason: DeclineReason) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, party)?;
        if &call.caller == party {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, "the caller cannot decline; use cancel"));
        }
        if call.state == CallState::Connected {
            return Err(wrong_state(call_id, call.state, "decline (the call is connected: hang up)"));
        }
        if let Party::Switch(s) = party
            && call.state == CallState::AwaitSwitchAnswer
        {
            // Same as a C12 decline.
            return self.query_answer(now, s, call_id, QueryAnswer::Decline { reason });
        }
        self.finish(now, call_id, reason.outcome(), "callee declined");
        Ok(())
    }

    /// F4: the switchless callee takes the call.
    fn accept(&mut self, now: Instant, me: &str, call_id: &str, key: &str) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, &Party::Device(me.to_string()))?;
        if call.callee_device.as_deref() != Some(me) || call.carrier.is_some() {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, "accept is for the callee of a browser-to-browser call"));
        }
        check_peer_key(call, key)?;
        if call.state != CallState::Ringing {
            return Err(wrong_state(call_id, call.state, "accept"));
        }
        let caller = call.caller.clone();
        self.trace(call_id, Step::F4, format_args!("{me} accepted"));
        self.send_party(&caller, ServerMsg::CallEvent { call_id: call_id.to_string(), event: CallEvent::Connected });
        let c = self.calls.get_mut(call_id).expect("checked");
        c.connected_at = Some(now);
        let until = now + self.cfg.max_call_duration();
        self.set_state_deadline(call_id, CallState::Connected, until);
        Ok(())
    }

    /// F4: relay WebRTC negotiation to the other browser.
    fn signal(&mut self, me: &str, call_id: &str, key: &str, payload: SignalPayload) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, &Party::Device(me.to_string()))?;
        if call.state == CallState::AwaitWake {
            return Err(wrong_state(call_id, call.state, "signal (the callee is not there yet: wait for `peer`)"));
        }
        if call.carrier.is_some() || call.peer_key.is_none() {
            return Err(ProtocolError::new(ErrorCode::WrongState, "signal is only for browser-to-browser calls"));
        }
        check_peer_key(call, key)?;
        if !matches!(call.state, CallState::Ringing | CallState::Connected) {
            return Err(wrong_state(call_id, call.state, "signal"));
        }
        let other = if call.caller == Party::Device(me.to_string()) {
            Party::Device(call.callee_device.clone().expect("F4 calls have a callee device"))
        } else {
            call.caller.clone()
        };
        if !call.trace.contains(&Step::F4) {
            self.trace(call_id, Step::F4, format_args!("relaying WebRTC negotiation"));
        }
        self.send_party(&other, ServerMsg::Signal { call_id: call_id.to_string(), payload });
        Ok(())
    }

    /// C14 over WebRTC: relay the direct connection's offer/answer/candidates between the party
    /// that connects (F1: the calling browser; F2: the calling switch; F3: the called browser)
    /// and the switch that carries the call. Only once the address and key were handed out
    /// (C13/C2/C3), so a stranger cannot make a switch allocate anything; never the key.
    fn direct_signal(&mut self, party: &Party, call_id: &str, payload: SignalPayload) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, party)?;
        let Some(carrier) = call.carrier.clone() else {
            return Err(ProtocolError::new(
                ErrorCode::WrongState,
                "direct_signal is for calls through a switch (browser-to-browser calls use signal)",
            ));
        };
        let carrier_p = Party::Switch(carrier.clone());
        // The caller's switch carries the call in F3 (its callee browser connects to it); for
        // F7 (a local call) nobody connects.
        let connecting =
            if call.caller == carrier_p { call.callee_device.clone().map(Party::Device) } else { Some(call.caller.clone()) };
        let Some(connecting) = connecting else {
            return Err(ProtocolError::new(
                ErrorCode::WrongState,
                "this call is local to its switch: there is no direct connection",
            ));
        };
        if !matches!(
            call.state,
            CallState::AwaitDirectConnect | CallState::KeyAccepted | CallState::Ringing | CallState::Connected
        ) {
            return Err(wrong_state(call_id, call.state, "direct_signal (wait for the address and key)"));
        }
        let to = if *party == carrier_p {
            connecting
        } else if *party == connecting {
            carrier_p
        } else {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, "you do not connect to this call's switch"));
        };
        self.send_party(&to, ServerMsg::DirectSignal { call_id: call_id.to_string(), payload });
        Ok(())
    }

    /// A party could not make the call's direct connection (ICE failed): the attempt ends
    /// `connect_failed`, so the record says why rather than a later key expiry or no answer.
    fn connect_failed(&mut self, now: Instant, party: &Party, call_id: &str, reason: &str) -> Result<(), ProtocolError> {
        let call = self.party_call(call_id, party)?;
        // Through a switch, `connected` means the key came over the working connection: a
        // `connect_failed` now says the media path died (e.g. the gateway crashed), so the
        // record says `media_lost` with the duration. F4 is `connected` at `accept`, before
        // ICE even starts, so there it may still fail.
        if call.state == CallState::Connected && call.carrier.is_some() {
            let who = match party {
                Party::Device(n) => n.clone(),
                Party::Switch(s) => format!("switch {s}"),
            };
            self.finish(now, call_id, Outcome::MediaLost, &format!("{who} lost the media path: {reason}"));
            return Ok(());
        }
        let who = match party {
            Party::Device(n) => n.clone(),
            Party::Switch(s) => format!("switch {s}"),
        };
        // F4 is `connected` at `accept`; a connection that worked for longer than a set-up can
        // take did connect: its loss is `media_lost`, and the record keeps its duration.
        if call.state == CallState::Connected && call.connected_at.is_some_and(|t| now > t + self.cfg.key_ttl()) {
            self.finish(now, call_id, Outcome::MediaLost, &format!("{who} lost the media path: {reason}"));
            return Ok(());
        }
        self.finish(now, call_id, Outcome::ConnectFailed, &format!("{who} could not connect: {reason}"));
        Ok(())
    }

    /// F4: either browser hangs up (before connect: the caller cancels, the callee declines).
    fn hangup(&mut self, now: Instant, me: &str, call_id: &str) -> Result<(), ProtocolError> {
        let party = Party::Device(me.to_string());
        let call = self.party_call(call_id, &party)?;
        if call.carrier.is_some() && call.state == CallState::Connected {
            return Err(ProtocolError::new(
                ErrorCode::WrongState,
                "this call runs through a switch: hang up on the direct connection",
            ));
        }
        let outcome = match call.state {
            CallState::Connected => Outcome::Connected,
            _ if call.caller == party => Outcome::Cancelled,
            _ => Outcome::Declined,
        };
        self.finish(now, call_id, outcome, &format!("{me} hung up"));
        Ok(())
    }

    // ---------------------------------------------------------------- steps

    fn check_new_call(&self, call_id: &str) -> Result<(), ProtocolError> {
        if self.calls.contains_key(call_id) {
            return Err(ProtocolError::new(ErrorCode::DuplicateCall, format!("call {call_id} already exists")));
        }
        Ok(())
    }

    fn start_call(&mut self, now: Instant, call_id: &str, caller: Party, from: &str, to: &str) {
        let seq = self.next_seq();
        self.calls.insert(
            call_id.to_string(),
            Call {
                caller,
                caller_number: from.to_string(),
                callee_number: to.to_string(),
                carrier: None,
                callee_device: None,
                peer_key: None,
                state: CallState::AwaitSwitchAnswer,
                started: now,
                connected_at: None,
                // Placeholder; every path sets a real deadline or finishes immediately.
                deadline: (now, seq),
                trace: Vec::with_capacity(8),
                waking: false,
                offer: None,
                link_lost: None,
                unlisted: false,
                adopted: false,
            },
        );
        // The owner's subscription for the call must exist before any party hears of it.
        if self.cluster
            && let Some(row) = self.attempt_row(call_id)
        {
            self.outputs.push_back(Output::Attempt { row, new: true });
        }
    }

    /// B3/B4: is the callee a valid account? Invalid → the attempt ends `rejected_invalid`.
    /// The callee's home switch (`None` inside: a switchless device), or `None` if invalid.
    fn validate_callee(&mut self, now: Instant, call_id: &str, from: &str, to: &str) -> Option<Option<String>> {
        match self.accounts.get(to) {
            Some(a) if to != from => {
                let home_switch = a.home_switch.clone();
                self.trace(call_id, Step::B4, format_args!("callee {to} is valid"));
                Some(home_switch)
            }
            Some(_) => {
                self.trace(call_id, Step::B3, format_args!("a device cannot call itself"));
                self.reject_invalid(now, call_id, "you cannot call your own number");
                None
            }
            None => {
                self.trace(call_id, Step::B3, format_args!("callee {to} does not exist"));
                self.reject_invalid(now, call_id, &format!("number {to} does not exist"));
                None
            }
        }
    }

    fn reject_invalid(&mut self, now: Instant, call_id: &str, reason: &str) {
        let caller = self.calls[call_id].caller.clone();
        match &caller {
            Party::Switch(_) => self.send_party(
                &caller,
                ServerMsg::Route { call_id: call_id.to_string(), route: Route::Invalid { reason: reason.to_string() } },
            ),
            Party::Device(_) => {
                self.send_party(&caller, ServerMsg::error(ErrorCode::InvalidCall, reason, Some(call_id.to_string())))
            }
        }
        self.finish(now, call_id, Outcome::RejectedInvalid, reason);
    }

    /// C11: ask the callee's switch whether the callee accepts.
    fn ask_switch(&mut self, now: Instant, call_id: &str, switch_id: &str) {
        self.calls.get_mut(call_id).expect("live call").carrier = Some(switch_id.to_string());
        if !self.switches.contains_key(switch_id) {
            self.finish(now, call_id, Outcome::SwitchUnavailable, &format!("switch {switch_id} is offline"));
            return;
        }
        let c = &self.calls[call_id];
        let msg = ServerMsg::CalleeQuery {
            call_id: call_id.to_string(),
            from: c.caller_number.clone(),
            from_name: self.display_name(&c.caller_number),
            to: c.callee_number.clone(),
        };
        self.trace(call_id, Step::C11, format_args!("asking switch {switch_id}"));
        self.send_switch(switch_id, msg);
        let until = now + self.cfg.switch_answer_timeout();
        self.set_state_deadline(call_id, CallState::AwaitSwitchAnswer, until);
    }

    /// F4: ring a switchless browser from a browser, with a cloud-issued key for both.
    fn ring_peer(&mut self, now: Instant, call_id: &str) {
        let callee = self.calls[call_id].callee_number.as_str();
        let online = self.devices.contains_key(callee);
        if !online && !self.wake_up {
            let why = format!("{callee} has no live connection");
            self.finish(now, call_id, Outcome::CalleeOffline, &why);
            return;
        }
        let busy = self.calls.iter().any(|(id, c)| {
            id != call_id
                && c.state == CallState::Connected
                && (c.callee_device.as_deref() == Some(callee) || matches!(&c.caller, Party::Device(d) if d == callee))
        });
        if busy {
            let why = format!("{callee} is on another call");
            self.finish(now, call_id, Outcome::Busy, &why);
            return;
        }
        if !online {
            // The caller hears nothing more until the callee signs in and is rung (`peer`).
            let callee = callee.to_string();
            self.start_wake(call_id, &callee);
            let until = self.calls[call_id].started + self.cfg.ring_timeout();
            self.set_state_deadline(call_id, CallState::AwaitWake, until);
            return;
        }
        self.deliver_peer(call_id, now + self.cfg.ring_timeout());
    }

    /// F4: ring the (online) switchless callee with a cloud-issued key for both browsers.
    fn deliver_peer(&mut self, call_id: &str, until: Instant) {
        let key = (self.new_key)();
        let Some(c) = self.calls.get_mut(call_id) else { return };
        let callee = c.callee_number.clone();
        let (from, caller) = (c.caller_number.clone(), c.caller.clone());
        c.callee_device = Some(callee.clone());
        c.peer_key = Some(key.clone());
        let from_name = self.display_name(&from);
        self.trace(call_id, Step::F4, format_args!("ringing {callee} with a cloud-issued key"));
        self.send_party(
            &Party::Device(callee),
            ServerMsg::Incoming { call_id: call_id.to_string(), from, from_name, via: IncomingVia::Peer { key: key.clone() } },
        );
        self.send_party(&caller, ServerMsg::Peer { call_id: call_id.to_string(), key });
        self.send_party(&caller, ServerMsg::CallEvent { call_id: call_id.to_string(), event: CallEvent::Ringing });
        self.set_state_deadline(call_id, CallState::Ringing, until);
    }

    /// `Push`: the switchless callee has no live connection; ask the driver to wake it.
    fn start_wake(&mut self, call_id: &str, callee: &str) {
        let Some(c) = self.calls.get_mut(call_id) else { return };
        c.callee_device = Some(callee.to_string());
        c.waking = true;
        let from = c.caller_number.clone();
        let from_name = self.display_name(&from);
        self.trace(call_id, Step::Push, format_args!("{callee} has no live connection: waking it by Web Push"));
        self.wakes.entry(callee.to_string()).or_default().push(call_id.to_string());
        self.outputs.push_back(Output::WakeUp { call_id: call_id.to_string(), number: callee.to_string(), from, from_name });
    }

    /// The one end of every attempt: outcome to every party still online, a record, no timer.
    fn finish(&mut self, now: Instant, call_id: &str, outcome: Outcome, why: &str) {
        self.finish_at(now, now, call_id, outcome, why);
    }

    /// [`Engine::finish`] for an attempt that really ended at `end` (≤ `now`): the link to its
    /// switch was lost then. A call whose switch's link is lost ended at the latest then.
    fn finish_at(&mut self, now: Instant, end: Instant, call_id: &str, outcome: Outcome, why: &str) {
        let Some((id, mut call)) = self.calls.remove_entry(call_id) else { return };
        let end = match call.link_lost {
            Some(lost) if matches!(outcome, Outcome::Connected | Outcome::MediaLost) => end.min(now).min(lost),
            _ => end.min(now),
        };
        self.remember(call_id);
        self.timers.remove(&call.deadline);
        if call.waking
            && let Some(d) = &call.callee_device
            && let Some(ids) = self.wakes.get_mut(d)
        {
            ids.retain(|id| id != call_id);
            if ids.is_empty() {
                self.wakes.remove(d);
            }
        }
        let duration_ms = match (outcome, call.connected_at) {
            (Outcome::Connected | Outcome::MediaLost, Some(t)) => Some(end.saturating_duration_since(t).as_millis() as u64),
            (Outcome::Connected, None) => Some(0),
            _ => None,
        };
        let (ended_id, why) = if self.trace_details { (id.clone(), why.to_string()) } else { (String::new(), String::new()) };
        self.outputs.push_back(Output::Ended { call_id: ended_id, outcome, why });
        // Every party once: the caller, then the carrier and the callee device unless one of
        // them is the caller (F7: the caller's own switch carries the call).
        let msg = ServerMsg::Outcome { call_id: id.clone(), outcome, duration_ms };
        let carrier = call.carrier.as_deref().filter(|s| !matches!(&call.caller, Party::Switch(c) if c == s));
        let device = call.callee_device.as_deref().filter(|d| !matches!(&call.caller, Party::Device(c) if c == d));
        if carrier.is_none() && device.is_none() {
            self.send_party(&call.caller, msg);
        } else {
            self.send_party(&call.caller, msg.clone());
            if let Some(s) = carrier {
                self.send_switch(s, msg.clone());
            }
            if let Some(d) = device {
                self.send_device(d, msg);
            }
        }
        let to_ms = |t: Instant| self.unix_ms_of(t);
        let record = CallRecord {
            call_id: id,
            caller: std::mem::take(&mut call.caller_number),
            callee: std::mem::take(&mut call.callee_number),
            switch_id: call.carrier.take(),
            started_ms: to_ms(call.started),
            ended_ms: to_ms(end),
            outcome,
            duration_ms,
            trace: std::mem::take(&mut call.trace),
        };
        self.outputs.push_back(Output::Record(record));
    }

    /// Remember an ended attempt (bounded), to recognise a repeated end report.
    fn remember(&mut self, call_id: &str) {
        if !self.recent_set.contains(call_id) {
            let id: Arc<str> = Arc::from(call_id);
            self.recent_set.insert(id.clone());
            self.recent.push_back(id);
            if self.recent.len() > RECENT_ENDS
                && let Some(old) = self.recent.pop_front()
            {
                self.recent_set.remove(&old);
            }
        }
    }

    /// A switch's end-of-call report. For a call in progress it is the switch's `ended` event
    /// (its talk time wins). For a call the cloud does not know (it restarted meanwhile) it is
    /// written as reported, once: a call that already ended here is done (and the store keeps
    /// only the first record of a call id).
    fn call_report(&mut self, now: Instant, me: &str, call_id: &str, r: EndReport) -> Result<(), ProtocolError> {
        if let Some(call) = self.calls.get(call_id) {
            if !Self::involves(call, &Party::Switch(me.to_string())) {
                return Err(ProtocolError::new(ErrorCode::NotYourCall, format!("you are not a party of call {call_id}")));
            }
            let lost = call.link_lost;
            let connected = call.state == CallState::Connected;
            let outcome = if connected { Outcome::Connected } else { r.outcome };
            // Queued while the link was down: the call ended before now, at the reported time
            // (on the switch's clock), but not before the link loss nor after now.
            let end = match lost {
                Some(t) => self.instant_of(r.ended_ms).clamp(t, now),
                None => now,
            };
            if let Some(c) = self.calls.get_mut(call_id) {
                // The switch saw the end: the link loss no longer bounds it.
                c.link_lost = None;
                if outcome == Outcome::Connected {
                    let d = Duration::from_millis(r.duration_ms.unwrap_or(0));
                    c.connected_at = Some(end.checked_sub(d).unwrap_or(end));
                }
            }
            self.finish_at(now, end, call_id, outcome, &format!("switch {me} reported the end"));
            return Ok(());
        }
        if self.recent_set.contains(call_id) {
            // Already ended and recorded here: a repeated report changes nothing.
            return Ok(());
        }
        let mine = |n: &str| self.accounts.get(n).is_some_and(|a| a.home_switch.as_deref() == Some(me));
        if !mine(&r.from) && !mine(&r.to) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("call {call_id}: neither {} nor {} is a phone of switch {me}", r.from, r.to),
            ));
        }
        self.remember(call_id);
        let duration_ms = matches!(r.outcome, Outcome::Connected | Outcome::MediaLost).then(|| r.duration_ms.unwrap_or(0));
        self.outputs.push_back(Output::Ended {
            call_id: call_id.to_string(),
            outcome: r.outcome,
            why: format!("switch {me} reported the end of a call this server did not know (it restarted meanwhile)"),
        });
        self.outputs.push_back(Output::Record(CallRecord {
            call_id: call_id.to_string(),
            caller: r.from,
            callee: r.to,
            switch_id: Some(me.to_string()),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            outcome: r.outcome,
            duration_ms,
            trace: vec![],
        }));
        Ok(())
    }

    /// The monotonic instant of a Unix time in ms (via `clock_base`).
    fn instant_of(&self, ms: UnixMs) -> Instant {
        let (base_i, base_ms) = self.clock_base;
        let d = Duration::from_millis(ms.abs_diff(base_ms));
        if ms >= base_ms { base_i + d } else { base_i.checked_sub(d).unwrap_or(base_i) }
    }

    // ---------------------------------------------------------------- helpers

    fn involves(c: &Call, p: &Party) -> bool {
        if &c.caller == p {
            return true;
        }
        match p {
            Party::Switch(s) => c.carrier.as_deref() == Some(s),
            Party::Device(d) => c.callee_device.as_deref() == Some(d),
        }
    }

    /// The call, if `party` takes part in it.
    fn party_call(&self, call_id: &str, party: &Party) -> Result<&Call, ProtocolError> {
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| ProtocolError::new(ErrorCode::UnknownCall, format!("no call {call_id} in progress")))?;
        if !Self::involves(call, party) {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, format!("you are not a party of call {call_id}")));
        }
        Ok(call)
    }

    /// [`Engine::party_call`] for switch `me` (no `Party` to build on the hot path).
    fn switch_call(&self, call_id: &str, me: &str) -> Result<&Call, ProtocolError> {
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| ProtocolError::new(ErrorCode::UnknownCall, format!("no call {call_id} in progress")))?;
        let caller = matches!(&call.caller, Party::Switch(s) if s == me);
        if !caller && call.carrier.as_deref() != Some(me) {
            return Err(ProtocolError::new(ErrorCode::NotYourCall, format!("you are not a party of call {call_id}")));
        }
        Ok(call)
    }

    fn notify_caller(&mut self, caller: &Party, reporter: &str, call_id: &str, event: CallEvent) {
        if caller != &Party::Switch(reporter.to_string()) {
            self.send_party(caller, ServerMsg::CallEvent { call_id: call_id.to_string(), event });
        }
    }

    fn display_name(&self, number: &str) -> String {
        self.accounts.get(number).map(|a| a.display_name.clone()).unwrap_or_else(|| number.to_string())
    }

    fn trace(&mut self, call_id: &str, step: Step, detail: std::fmt::Arguments<'_>) {
        if let Some(c) = self.calls.get_mut(call_id) {
            c.trace.push(step);
        }
        // Formatted (and the id copied) only for a driver that logs them: several per decision.
        let (call_id, detail) =
            if self.trace_details { (call_id.to_string(), detail.to_string()) } else { (String::new(), String::new()) };
        self.outputs.push_back(Output::Trace { call_id, step, detail });
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.outputs.push_back(Output::Send { conn, msg });
    }

    fn send_party(&mut self, p: &Party, msg: ServerMsg) {
        match p {
            Party::Device(n) => self.send_device(n, msg),
            Party::Switch(s) => self.send_switch(s, msg),
        }
    }

    /// [`Engine::send_party`] to a switch by id (no `Party` to build for a local one).
    fn send_switch(&mut self, id: &str, msg: ServerMsg) {
        self.send_named(true, id, msg);
    }

    /// [`Engine::send_party`] to a device by number.
    fn send_device(&mut self, number: &str, msg: ServerMsg) {
        self.send_named(false, number, msg);
    }

    fn send_named(&mut self, switch: bool, name: &str, msg: ServerMsg) {
        let at = if switch { &self.switches } else { &self.devices };
        match at.get(name) {
            Some(Loc::Local(conn)) => {
                let conn = *conn;
                self.send(conn, msg);
            }
            Some(Loc::Remote(node)) => {
                let node = node.clone();
                let to = if switch { Party::Switch(name.to_string()) } else { Party::Device(name.to_string()) };
                self.outputs.push_back(Output::SendRemote { node, to, msg });
            }
            None => {}
        }
    }

    /// Wall-clock milliseconds of a monotonic instant (via `clock_base`).
    fn unix_ms_of(&self, t: Instant) -> UnixMs {
        let (base_i, base_ms) = self.clock_base;
        if t >= base_i {
            base_ms + t.duration_since(base_i).as_millis() as i64
        } else {
            base_ms - base_i.duration_since(t).as_millis() as i64
        }
    }

    /// The attempt as the cluster's attempt table keeps it.
    fn attempt_row(&self, call_id: &str) -> Option<AttemptRow> {
        let c = self.calls.get(call_id)?;
        Some(AttemptRow {
            call_id: call_id.to_string(),
            state: c.state,
            caller: c.caller.clone(),
            caller_number: c.caller_number.clone(),
            callee_number: c.callee_number.clone(),
            carrier: c.carrier.clone(),
            callee_device: c.callee_device.clone(),
            started_ms: self.unix_ms_of(c.started),
            connected_ms: c.connected_at.map(|t| self.unix_ms_of(t)),
            deadline_ms: self.unix_ms_of(c.deadline.0),
            trace: c.trace.clone(),
        })
    }

    fn next_seq(&mut self) -> u64 {
        self.timer_seq += 1;
        self.timer_seq
    }

    /// Enter `state` with the deadline that state implies.
    fn set_state(&mut self, now: Instant, call_id: &str, state: CallState) {
        let d = match state {
            CallState::AwaitSwitchAnswer => self.cfg.switch_answer_timeout(),
            CallState::AwaitDirectOffer => self.cfg.direct_offer_timeout(),
            CallState::AwaitDirectConnect => self.cfg.key_ttl() + KEY_GRACE,
            CallState::KeyAccepted | CallState::Ringing | CallState::AwaitWake => self.cfg.ring_timeout(),
            CallState::Connected => self.cfg.max_call_duration(),
        };
        self.set_state_deadline(call_id, state, now + d);
    }

    fn set_state_deadline(&mut self, call_id: &str, state: CallState, deadline: Instant) {
        let seq = self.next_seq();
        let Some(c) = self.calls.get_mut(call_id) else { return };
        self.timers.remove(&c.deadline);
        c.state = state;
        c.deadline = (deadline, seq);
        self.timers.insert((deadline, seq), call_id.to_string());
        if self.cluster
            && let Some(row) = self.attempt_row(call_id)
        {
            self.outputs.push_back(Output::Attempt { row, new: false });
        }
    }
}

/// What a switch's `call_report` says.
struct EndReport {
    outcome: Outcome,
    duration_ms: Option<u64>,
    from: String,
    to: String,
    started_ms: UnixMs,
    ended_ms: UnixMs,
}

fn check_peer_key(call: &Call, key: &str) -> Result<(), ProtocolError> {
    match &call.peer_key {
        Some(k) if crate::credentials::ct_eq(k, key) => Ok(()),
        _ => Err(ProtocolError::new(ErrorCode::BadKey, "the key does not match this call")),
    }
}

/// The address a switch gives in `query_answer` / `direct_offer` must name itself
/// (`switch:<its id>`): it is relayed to the caller as the carrying switch's name.
fn check_own_address(me: &str, url: &str) -> Result<(), ProtocolError> {
    if url == trunkline_protocol::switch_address(me) {
        return Ok(());
    }
    Err(ProtocolError::new(
        ErrorCode::InvalidField,
        format!("url: must name this switch, {}", trunkline_protocol::switch_address(me)),
    ))
}

fn wrong_state(call_id: &str, state: CallState, what: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::WrongState, format!("call {call_id} is {state:?}: {what} does not fit now"))
}

fn event_name(e: &CallEvent) -> &'static str {
    match e {
        CallEvent::KeyAccepted => "key_accepted",
        CallEvent::Ringing => "ringing",
        CallEvent::Connected => "connected",
        CallEvent::Ended { .. } => "ended",
    }
}
