//! Deterministic tests of the steering engine's cluster mode: two or three engines (replicas
//! "r1", "r2", "r3") on one fake clock, joined by a fake bus that does what the cluster driver
//! does over NATS: `SendRemote` → `deliver` on the named replica; `Forward` → `handle_remote` on
//! the replica that owns the call (a refusal relayed to the sender's connection) or
//! `handle_unowned` on the forwarder when nobody owns it; presence: a sign-in (sign-out) on one
//! replica is `remote_online` (`remote_offline`) on the others, a dead replica is `node_down`.
//! Every scenario checks exactly one record per attempt across all replicas.

use std::collections::HashSet;

use super::*;
use trunkline_protocol::AccountKind;
use trunkline_protocol::ServerMsg as S;

const R1: usize = 0;
const R2: usize = 1;
const R3: usize = 2;

// Connection ids are unique across the cluster, so a test names a connection, not its replica.
const ALICE: ConnId = 1; // browser 2001, no switch
const BOB: ConnId = 2; // browser 2002, no switch
const ALICE2: ConnId = 11; // 2001 signed in again
const BOB2: ConnId = 12; // 2002 signed in again
const BOB3: ConnId = 13; // 2002 signed in a third time
const CAROL: ConnId = 3; // browser 2003, no switch
const HQ: ConnId = 10; // switch hq: desk phones 1001, 1002
const HQ2: ConnId = 30; // hq reconnected
const BRANCH: ConnId = 20; // switch branch: desk phone 3001
const HQ_URL: &str = "switch:hq";
const KEY: &str = "k3y-k3y-k3y-k3y-k3y-k3y-k3y";
const BASE_MS: UnixMs = 1_700_000_000_000;

fn account(number: &str, kind: AccountKind, switch: Option<&str>) -> Account {
    Account {
        number: number.into(),
        display_name: format!("User {number}"),
        kind,
        home_switch: switch.map(Into::into),
        ha1_md5: switch.map(|_| "md5".into()),
        ha1_sha256: switch.map(|_| "sha".into()),
    }
}

/// One replica: its engine and what its driver saw it output.
struct Replica {
    id: NodeId,
    e: Engine,
    /// False once killed: its outputs are lost and nothing reaches it.
    up: bool,
    /// Messages sent on this replica's connections, not yet consumed by the test.
    sent: Vec<(ConnId, S)>,
    closed: Vec<ConnId>,
    records: Vec<CallRecord>,
    attempts: Vec<AttemptRow>,
    released: Vec<AttemptRow>,
    wakeups: Vec<(CallId, String)>,
    /// Remote deliveries that found the party gone from this replica.
    undelivered: Vec<(Party, S)>,
}

struct Cluster {
    r: Vec<Replica>,
    t0: Instant,
    now: Instant,
    /// The replica each connection is on.
    at: HashMap<ConnId, usize>,
    /// Every outcome message any connection got: (conn, call id), never consumed.
    outcomes: Vec<(ConnId, CallId)>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let t0 = Instant::now();
        let r = (1..=n)
            .map(|i| {
                let mut k = 0u32;
                let mut e = Engine::new(
                    SteeringConfig::default(),
                    4,
                    (t0, BASE_MS),
                    Box::new(move || {
                        k += 1;
                        format!("r{i}-cloud-key-{k:016}")
                    }),
                );
                e.set_cluster(true);
                e.set_directory(vec![
                    account("2001", AccountKind::Browser, None),
                    account("2002", AccountKind::Browser, None),
                    account("2003", AccountKind::Browser, None),
                    account("1001", AccountKind::Deskphone, Some("hq")),
                    account("1002", AccountKind::Deskphone, Some("hq")),
                    account("3001", AccountKind::Deskphone, Some("branch")),
                ]);
                Replica {
                    id: format!("r{i}"),
                    e,
                    up: true,
                    sent: vec![],
                    closed: vec![],
                    records: vec![],
                    attempts: vec![],
                    released: vec![],
                    wakeups: vec![],
                    undelivered: vec![],
                }
            })
            .collect();
        Cluster { r, t0, now: t0, at: HashMap::new(), outcomes: vec![] }
    }

    fn set_wake_up(&mut self) {
        for r in &mut self.r {
            r.e.set_wake_up(true);
        }
    }

    fn node(&self, id: &str) -> usize {
        self.r.iter().position(|r| r.id == id).unwrap_or_else(|| panic!("no replica {id}"))
    }

    /// Tell every other live replica that `party` signed in on replica `on` (the presence bucket).
    fn announce_online(&mut self, on: usize, party: &Party, calls: Option<&[CallId]>) {
        let node = self.r[on].id.clone();
        for j in 0..self.r.len() {
            if j != on && self.r[j].up {
                self.r[j].e.remote_online(self.now, party, &node, calls);
            }
        }
    }

    fn announce_offline(&mut self, on: usize, party: &Party) {
        let node = self.r[on].id.clone();
        for j in 0..self.r.len() {
            if j != on && self.r[j].up {
                self.r[j].e.remote_offline(self.now, party, &node);
            }
        }
    }

    fn device_online(&mut self, on: usize, conn: ConnId, number: &str) {
        self.r[on].e.device_online(self.now, conn, number);
        self.at.insert(conn, on);
        self.announce_online(on, &Party::Device(number.into()), None);
        self.pump();
    }

    /// A switch signs in on `on`, saying which calls it carries (`switch_auth.calls`).
    fn switch_online(&mut self, on: usize, conn: ConnId, id: &str, calls: Option<&[&str]>) {
        let calls: Option<Vec<CallId>> = calls.map(|l| l.iter().map(|s| s.to_string()).collect());
        self.r[on].e.switch_online(self.now, conn, id, "trunkline", vec![]);
        self.r[on].e.reconcile(self.now, id, calls.as_deref());
        self.at.insert(conn, on);
        self.announce_online(on, &Party::Switch(id.into()), calls.as_deref());
        self.pump();
        self.r[on].sent.retain(|(c, m)| !(*c == conn && matches!(m, S::SwitchWelcome { .. })));
    }

    /// `conn`'s socket closed: its replica sees it go, and (if it was still the party's live
    /// connection) the presence entry is deleted.
    fn disconnect(&mut self, conn: ConnId) {
        let on = self.at[&conn];
        if let Some(p) = self.r[on].e.disconnected(self.now, conn) {
            self.announce_offline(on, &p);
        }
        self.pump();
    }

    /// `kill -9` replica `i`: its lease runs out and the others see `node_down`.
    fn kill(&mut self, i: usize) {
        self.r[i].up = false;
        while self.r[i].e.poll_output().is_some() {}
        let node = self.r[i].id.clone();
        for j in 0..self.r.len() {
            if self.r[j].up {
                self.r[j].e.node_down(self.now, &node);
            }
        }
        self.pump();
    }

    fn msg(&mut self, conn: ConnId, json: &str) {
        let m = ClientMsg::decode(json).unwrap_or_else(|e| panic!("test message {json} invalid: {e}"));
        let on = self.at[&conn];
        self.r[on].e.handle(self.now, conn, m);
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for r in self.r.iter_mut().filter(|r| r.up) {
            r.e.handle_timeout(self.now);
        }
        self.pump();
    }

    fn adopt(&mut self, on: usize, row: AttemptRow) {
        self.r[on].e.adopt(self.now, row);
        self.pump();
    }

    /// The bus: drain every live engine and route what it says until all are quiet.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.r.len() {
                if !self.r[i].up {
                    continue;
                }
                let mut outs = vec![];
                while let Some(o) = self.r[i].e.poll_output() {
                    outs.push(o);
                }
                any |= !outs.is_empty();
                for o in outs {
                    self.route(i, o);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn route(&mut self, i: usize, o: Output) {
        match o {
            Output::Send { conn, msg } => {
                if let S::Outcome { call_id, .. } = &msg {
                    self.outcomes.push((conn, call_id.clone()));
                }
                self.r[i].sent.push((conn, msg));
            }
            Output::SendRemote { node, to, msg } => {
                let j = self.node(&node);
                assert_ne!(i, j, "a replica does not send to itself over the bus: {to:?} {msg:?}");
                // A dead replica's subject has no subscriber: the message is lost.
                if self.r[j].up && !self.r[j].e.deliver(&to, msg.clone()) {
                    self.r[j].undelivered.push((to, msg));
                }
            }
            Output::Forward { conn, from, msg } => {
                let id = msg.call_id().expect("only call-scoped messages are forwarded").to_string();
                let owner = (0..self.r.len()).find(|&j| j != i && self.r[j].up && self.r[j].e.call_state(&id).is_some());
                match owner {
                    Some(j) => {
                        if let Err(e) = self.r[j].e.handle_remote(self.now, &from, msg) {
                            self.r[i].sent.push((conn, e.to_msg(Some(id))));
                        }
                    }
                    None => self.r[i].e.handle_unowned(self.now, conn, msg),
                }
            }
            Output::Attempt { row, .. } => self.r[i].attempts.push(row),
            Output::Released(row) => self.r[i].released.push(row),
            Output::Record(rec) => self.r[i].records.push(rec),
            Output::WakeUp { call_id, number, .. } => self.r[i].wakeups.push((call_id, number)),
            Output::Close { conn } => {
                // The driver closes the socket; its connection task then reports the end.
                self.r[i].closed.push(conn);
                if let Some(p) = self.r[i].e.disconnected(self.now, conn) {
                    self.announce_offline(i, &p);
                }
            }
            Output::Trace { .. } | Output::Ended { .. } => {}
        }
    }

    /// Messages sent to `conn` since the last call, consumed.
    fn to(&mut self, conn: ConnId) -> Vec<S> {
        let on = self.at[&conn];
        let mut got = vec![];
        self.r[on].sent.retain(|(c, m)| {
            if *c == conn {
                got.push(m.clone());
                false
            } else {
                true
            }
        });
        got
    }

    fn error_code(&mut self, conn: ConnId) -> ErrorCode {
        match self.to(conn).as_slice() {
            [S::Error { code, .. }] => *code,
            other => panic!("expected one error on {conn}, got {other:?}"),
        }
    }

    /// Every record of `call_id`, on any replica (dead ones too: a record out is written).
    fn records_of(&self, call_id: &str) -> Vec<(usize, CallRecord)> {
        let mut v = vec![];
        for (i, r) in self.r.iter().enumerate() {
            v.extend(r.records.iter().filter(|x| x.call_id == call_id).map(|x| (i, x.clone())));
        }
        v
    }

    /// The one record of `call_id` across the cluster, and the replica that wrote it.
    fn one_record(&self, call_id: &str) -> (usize, CallRecord) {
        let v = self.records_of(call_id);
        assert_eq!(v.len(), 1, "exactly one record of {call_id} across the replicas: {v:?}");
        v.into_iter().next().unwrap()
    }

    /// The last write-ahead row replica `i` put out for `call_id`.
    fn last_attempt(&self, i: usize, call_id: &str) -> AttemptRow {
        self.r[i].attempts.iter().rev().find(|a| a.call_id == call_id).cloned().expect("an attempt row")
    }

    /// After a scenario: every attempt any replica wrote ahead (or recorded) has exactly one
    /// record across the cluster, no live replica holds an attempt, no connection got two
    /// outcomes for one call.
    fn assert_all_done(&self) {
        let ids: HashSet<&str> = self
            .r
            .iter()
            .flat_map(|r| r.attempts.iter().map(|a| a.call_id.as_str()).chain(r.records.iter().map(|x| x.call_id.as_str())))
            .collect();
        for id in ids {
            self.one_record(id);
        }
        for r in self.r.iter().filter(|r| r.up) {
            assert_eq!(r.e.active_calls(), 0, "{} still holds an attempt", r.id);
            assert_eq!(r.e.poll_timeout(), None, "{} still has a timer", r.id);
        }
        let mut seen = HashSet::new();
        for o in &self.outcomes {
            assert!(seen.insert(o), "connection {} got two outcomes for call {}", o.0, o.1);
        }
    }
}

fn outcome_of(msgs: &[S]) -> Option<(Outcome, Option<u64>)> {
    msgs.iter().find_map(|m| match m {
        S::Outcome { outcome, duration_ms, .. } => Some((*outcome, *duration_ms)),
        _ => None,
    })
}

fn steps(r: &CallRecord) -> String {
    r.trace.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

fn dial_json(call: &str, to: &str) -> String {
    format!(r#"{{"type":"dial","call_id":"{call}","to":"{to}"}}"#)
}

fn route_query_json(call: &str, from: &str, to: &str) -> String {
    format!(r#"{{"type":"route_query","call_id":"{call}","from":"{from}","to":"{to}"}}"#)
}

fn accept_json(call: &str, url: &str) -> String {
    format!(
        r#"{{"type":"query_answer","call_id":"{call}","answer":{{"answer":"accept","url":"{url}","key":"{KEY}","expires_in_ms":30000}}}}"#
    )
}

fn event_json(call: &str, event: &str) -> String {
    format!(r#"{{"type":"call_event","call_id":"{call}","event":{{"event":"{event}"}}}}"#)
}

fn ended_json(call: &str, outcome: &str, duration_ms: u64) -> String {
    format!(
        r#"{{"type":"call_event","call_id":"{call}","event":{{"event":"ended","outcome":"{outcome}","duration_ms":{duration_ms}}}}}"#
    )
}

fn direct_offer_json(call: &str) -> String {
    format!(r#"{{"type":"direct_offer","call_id":"{call}","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#)
}

fn offer_json(call: &str) -> String {
    format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"offer","sdp":"v=0 offer"}}}}"#)
}

fn answer_json(call: &str) -> String {
    format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"answer","sdp":"v=0 answer"}}}}"#)
}

fn signal_json(call: &str, key: &str, sdp: &str) -> String {
    format!(r#"{{"type":"signal","call_id":"{call}","key":"{key}","payload":{{"kind":"offer","sdp":"{sdp}"}}}}"#)
}

fn report_json(call: &str, duration_ms: u64, started_ms: i64, ended_ms: i64) -> String {
    format!(
        r#"{{"type":"call_report","call_id":"{call}","outcome":"connected","duration_ms":{duration_ms},"from":"2001","to":"1001","started_ms":{started_ms},"ended_ms":{ended_ms}}}"#
    )
}

fn is_direct_signal(msgs: &[S], call: &str, kind: &str) -> bool {
    matches!(msgs, [S::DirectSignal { call_id, payload }] if call_id == call && matches!(
        (kind, payload),
        ("offer", SignalPayload::Offer { .. }) | ("answer", SignalPayload::Answer { .. })
    ))
}

fn offer(sdp: &str) -> SignalPayload {
    SignalPayload::Offer { sdp: sdp.into() }
}

/// Alice (2001) on r1 and Bob (2002) on r2.
fn alice_r1_bob_r2() -> Cluster {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R2, BOB, "2002");
    c
}

/// F4 `call` from Alice (on her replica) to Bob, ringing; returns the cloud key.
fn f4_ringing(c: &mut Cluster, caller: ConnId, callee: ConnId, call: &str) -> String {
    c.msg(caller, &dial_json(call, "2002"));
    let key = match c.to(callee).as_slice() {
        [S::Incoming { call_id, from, via: IncomingVia::Peer { key }, .. }] if call_id == call && from == "2001" => key.clone(),
        other => panic!("the callee should be rung: {other:?}"),
    };
    assert_eq!(
        c.to(caller),
        vec![
            S::Peer { call_id: call.into(), key: key.clone() },
            S::CallEvent { call_id: call.into(), event: CallEvent::Ringing }
        ]
    );
    key
}

/// F1 `call` from Alice on r1 to desk phone 1001 of hq on r2, answered (connected) at `c.now`.
fn f1_connected(c: &mut Cluster, call: &str) {
    c.msg(ALICE, &dial_json(call, "1001"));
    assert!(matches!(c.to(HQ).as_slice(), [S::CalleeQuery { .. }]));
    c.msg(HQ, &accept_json(call, HQ_URL));
    assert!(matches!(c.to(ALICE).as_slice(), [S::Connect { .. }]));
    c.msg(HQ, &event_json(call, "key_accepted"));
    c.msg(HQ, &event_json(call, "connected"));
    assert_eq!(c.to(ALICE), vec![S::CallEvent { call_id: call.into(), event: CallEvent::Connected }]);
    assert_eq!(c.r[R1].e.call_state(call), Some(CallState::Connected));
}

// ------------------------------------------------------------------ every flow across replicas

#[test]
fn f4_across_replicas_relays_both_ways_and_records_the_single_engine_trace() {
    let mut c = alice_r1_bob_r2();
    let key = f4_ringing(&mut c, ALICE, BOB, "f4");
    // The caller's replica owns the attempt; the callee's knows nothing of it.
    assert_eq!(c.r[R1].e.call_state("f4"), Some(CallState::Ringing));
    assert_eq!(c.r[R2].e.call_state("f4"), None);
    // A wrong key from the callee is refused by the owner, and the refusal reaches the callee.
    c.msg(BOB, &signal_json("f4", "wrong-wrong-wrong-wrong-wrong", "v=0 bob"));
    assert_eq!(c.error_code(BOB), ErrorCode::BadKey);
    assert!(c.to(ALICE).is_empty());
    // Relay both ways.
    c.msg(ALICE, &signal_json("f4", &key, "v=0 alice"));
    assert_eq!(c.to(BOB), vec![S::Signal { call_id: "f4".into(), payload: offer("v=0 alice") }]);
    c.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    assert_eq!(c.to(ALICE), vec![S::CallEvent { call_id: "f4".into(), event: CallEvent::Connected }]);
    c.msg(BOB, &signal_json("f4", &key, "v=0 bob"));
    assert_eq!(c.to(ALICE), vec![S::Signal { call_id: "f4".into(), payload: offer("v=0 bob") }]);
    c.advance(Duration::from_secs(7));
    c.msg(BOB, r#"{"type":"hangup","call_id":"f4"}"#);
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::Connected, Some(7_000))));
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Connected, Some(7_000))));
    let (at, r) = c.one_record("f4");
    assert_eq!(at, R1, "the owner writes the record");
    assert_eq!(steps(&r), "A,C1,B4,B6,F4,F4");
    assert_eq!((r.outcome, r.duration_ms, r.switch_id), (Outcome::Connected, Some(7_000), None));
    // Every change was written ahead by the owner only.
    assert!(c.r[R2].attempts.is_empty());
    // The row is opened before any party hears of the call, then follows each state.
    let rows = &c.r[R1].attempts;
    assert!(rows[0].trace.is_empty(), "opened at the start: {:?}", rows[0]);
    assert_eq!(rows[1..].iter().map(|a| a.state).collect::<Vec<_>>(), [CallState::Ringing, CallState::Connected]);
    assert_eq!(c.last_attempt(R1, "f4").connected_ms, Some(BASE_MS));
    c.assert_all_done();
}

#[test]
fn f1_across_replicas_forwards_the_switch_events_and_records_its_duration() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("f1", "1001"));
    assert_eq!(
        c.to(HQ),
        vec![S::CalleeQuery { call_id: "f1".into(), from: "2001".into(), from_name: "User 2001".into(), to: "1001".into() }]
    );
    assert_eq!(c.r[R1].e.call_state("f1"), Some(CallState::AwaitSwitchAnswer));
    c.msg(HQ, &accept_json("f1", HQ_URL));
    assert_eq!(
        c.to(ALICE),
        vec![S::Connect { call_id: "f1".into(), url: HQ_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }]
    );
    // C14 over WebRTC: the offer and answer cross the replicas.
    c.msg(ALICE, &offer_json("f1"));
    assert!(is_direct_signal(&c.to(HQ), "f1", "offer"));
    c.msg(HQ, &answer_json("f1"));
    assert!(is_direct_signal(&c.to(ALICE), "f1", "answer"));
    c.msg(HQ, &event_json("f1", "key_accepted"));
    c.msg(HQ, &event_json("f1", "ringing"));
    assert_eq!(c.to(ALICE), vec![S::CallEvent { call_id: "f1".into(), event: CallEvent::Ringing }]);
    c.advance(Duration::from_secs(3));
    c.msg(HQ, &event_json("f1", "connected"));
    assert_eq!(c.to(ALICE), vec![S::CallEvent { call_id: "f1".into(), event: CallEvent::Connected }]);
    c.advance(Duration::from_secs(10));
    // The switch measured 9.5 s of talk time: its figure wins over the cloud's message timing.
    c.msg(HQ, &ended_json("f1", "connected", 9_500));
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::Connected, Some(9_500))));
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::Connected, Some(9_500))));
    let (at, r) = c.one_record("f1");
    assert_eq!(at, R1);
    assert_eq!(steps(&r), "A,C1,B4,B5,C11,C12,C13,C14,C15");
    assert_eq!((r.outcome, r.duration_ms, r.switch_id.as_deref()), (Outcome::Connected, Some(9_500), Some("hq")));
    assert_eq!((r.started_ms, r.ended_ms), (BASE_MS, BASE_MS + 13_000));
    // A late report has no owner any more: its replica refuses it, nothing is recorded.
    c.msg(HQ, &ended_json("f1", "error", 0));
    assert_eq!(c.error_code(HQ), ErrorCode::UnknownCall);
    c.assert_all_done();
}

#[test]
fn f2_across_replicas_caller_switch_on_r1_callee_switch_on_r2_has_the_single_engine_trace() {
    let mut c = Cluster::new(2);
    c.switch_online(R1, BRANCH, "branch", None);
    c.switch_online(R2, HQ, "hq", None);
    c.msg(BRANCH, &route_query_json("f2", "3001", "1001"));
    assert_eq!(
        c.to(BRANCH),
        vec![S::Route { call_id: "f2".into(), route: Route::Switch { switch_id: "hq".into(), url: HQ_URL.into() } }]
    );
    assert!(matches!(c.to(HQ).as_slice(), [S::CalleeQuery { from, to, .. }] if from == "3001" && to == "1001"));
    c.msg(HQ, &accept_json("f2", HQ_URL));
    assert_eq!(
        c.to(BRANCH),
        vec![S::Connect { call_id: "f2".into(), url: HQ_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }]
    );
    c.msg(BRANCH, &offer_json("f2"));
    assert!(is_direct_signal(&c.to(HQ), "f2", "offer"));
    c.msg(HQ, &answer_json("f2"));
    assert!(is_direct_signal(&c.to(BRANCH), "f2", "answer"));
    c.msg(HQ, &event_json("f2", "key_accepted"));
    c.msg(HQ, &event_json("f2", "connected"));
    assert_eq!(c.to(BRANCH), vec![S::CallEvent { call_id: "f2".into(), event: CallEvent::Connected }]);
    // The caller's switch reports the end (its phone hung up) to the owner, its own replica.
    c.advance(Duration::from_secs(2));
    c.msg(BRANCH, r#"{"type":"call_event","call_id":"f2","event":{"event":"ended","outcome":"connected"}}"#);
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::Connected, Some(2_000))));
    let (at, r) = c.one_record("f2");
    assert_eq!(at, R1);
    assert_eq!(steps(&r), "A,B1,B2,B4,B5,C11,C12,C2,C14,C15");
    assert_eq!((r.outcome, r.duration_ms, r.switch_id.as_deref()), (Outcome::Connected, Some(2_000), Some("hq")));
    c.assert_all_done();
}

#[test]
fn f3_across_replicas_desk_phone_on_r2_calls_browser_on_r1_with_the_single_engine_trace() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(HQ, &route_query_json("f3", "1001", "2001"));
    assert_eq!(c.to(HQ), vec![S::Route { call_id: "f3".into(), route: Route::Device { device_id: "2001".into() } }]);
    assert_eq!(c.r[R2].e.call_state("f3"), Some(CallState::AwaitDirectOffer));
    c.msg(HQ, &direct_offer_json("f3"));
    assert_eq!(
        c.to(ALICE),
        vec![S::Incoming {
            call_id: "f3".into(),
            from: "1001".into(),
            from_name: "User 1001".into(),
            via: IncomingVia::Direct { url: HQ_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }
        }]
    );
    // The called browser connects to the caller's switch through the owner, r2.
    c.msg(ALICE, &offer_json("f3"));
    assert!(is_direct_signal(&c.to(HQ), "f3", "offer"));
    c.msg(HQ, &answer_json("f3"));
    assert!(is_direct_signal(&c.to(ALICE), "f3", "answer"));
    c.msg(HQ, &event_json("f3", "key_accepted"));
    c.msg(HQ, &event_json("f3", "connected"));
    c.msg(HQ, &ended_json("f3", "connected", 500));
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::Connected, Some(500))));
    let (at, r) = c.one_record("f3");
    assert_eq!(at, R2);
    assert_eq!(steps(&r), "A,B1,B2,B4,B6,C3,C14,C15");
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(500)));
    c.assert_all_done();
}

#[test]
fn push_across_replicas_callee_woken_signs_in_on_another_replica_and_is_rung_there() {
    let mut c = Cluster::new(2);
    c.set_wake_up();
    c.device_online(R1, ALICE, "2001");
    c.msg(ALICE, &dial_json("w", "2002"));
    assert_eq!(c.r[R1].wakeups, vec![("w".to_string(), "2002".to_string())]);
    assert!(c.to(ALICE).is_empty(), "the caller hears nothing until the callee is there");
    assert_eq!(c.r[R1].e.call_state("w"), Some(CallState::AwaitWake));
    c.advance(Duration::from_secs(8));
    c.device_online(R2, BOB, "2002");
    let key = match c.to(BOB).as_slice() {
        [S::Incoming { call_id, from, via: IncomingVia::Peer { key }, .. }] if call_id == "w" && from == "2001" => key.clone(),
        other => panic!("the woken callee is rung on its replica: {other:?}"),
    };
    assert_eq!(
        c.to(ALICE),
        vec![S::Peer { call_id: "w".into(), key: key.clone() }, S::CallEvent { call_id: "w".into(), event: CallEvent::Ringing }]
    );
    c.msg(BOB, &format!(r#"{{"type":"accept","call_id":"w","key":"{key}"}}"#));
    assert_eq!(c.to(ALICE), vec![S::CallEvent { call_id: "w".into(), event: CallEvent::Connected }]);
    c.advance(Duration::from_secs(3));
    c.msg(ALICE, r#"{"type":"hangup","call_id":"w"}"#);
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Connected, Some(3_000))));
    let (_, r) = c.one_record("w");
    assert_eq!(steps(&r), "A,C1,B4,B6,Push,F4,F4");
    c.assert_all_done();
}

#[test]
fn session_replaced_across_replicas_closes_the_old_connection_and_calls_reach_the_new_one() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R1, BOB, "2002");
    c.device_online(R2, BOB2, "2002");
    assert!(matches!(c.to(BOB).as_slice(), [S::Error { code: ErrorCode::SessionReplaced, .. }]));
    assert_eq!(c.r[R1].closed, vec![BOB]);
    assert!(c.to(BOB2).is_empty(), "the new connection is told nothing");
    // The old socket's close did not take Bob offline anywhere: he is rung on r2.
    f4_ringing(&mut c, ALICE, BOB2, "n");
    c.msg(ALICE, r#"{"type":"cancel","call_id":"n"}"#);
    assert_eq!(outcome_of(&c.to(BOB2)), Some((Outcome::Cancelled, None)));
    assert!(c.to(BOB).is_empty());
    c.assert_all_done();
}

// ------------------------------------------------------------------ replicas that die

#[test]
fn callee_replica_dies_while_ringing_is_callee_offline() {
    let mut c = alice_r1_bob_r2();
    f4_ringing(&mut c, ALICE, BOB, "f4");
    c.kill(R2);
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::CalleeOffline, None)));
    let (_, r) = c.one_record("f4");
    assert_eq!((r.outcome, steps(&r).as_str()), (Outcome::CalleeOffline, "A,C1,B4,B6,F4"));
    c.assert_all_done();
}

#[test]
fn callee_switch_replica_dies_during_c11_is_switch_unavailable() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("q", "1001"));
    assert!(matches!(c.to(HQ).as_slice(), [S::CalleeQuery { .. }]));
    c.kill(R2);
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::SwitchUnavailable, None)));
    let (_, r) = c.one_record("q");
    assert_eq!((r.outcome, steps(&r).as_str()), (Outcome::SwitchUnavailable, "A,C1,B4,B5,C11"));
    c.assert_all_done();
}

#[test]
fn switch_replica_dies_mid_call_the_switch_reconnects_elsewhere_and_its_end_report_is_recorded() {
    let mut c = Cluster::new(3);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    f1_connected(&mut c, "m");
    c.kill(R2);
    assert!(c.to(ALICE).is_empty(), "the media runs on: the caller is told nothing");
    assert_eq!(c.r[R1].e.call_state("m"), Some(CallState::Connected));
    c.advance(Duration::from_secs(1));
    c.switch_online(R3, HQ2, "hq", Some(&["m"]));
    // Long past the link grace: the listed call is still up.
    c.advance(SteeringConfig::default().switch_link_grace() * 2);
    assert_eq!(c.r[R1].e.call_state("m"), Some(CallState::Connected));
    c.msg(HQ2, &ended_json("m", "connected", 70_000));
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::Connected, Some(70_000))));
    assert_eq!(outcome_of(&c.to(HQ2)), Some((Outcome::Connected, Some(70_000))));
    let (at, r) = c.one_record("m");
    assert_eq!((at, r.duration_ms, steps(&r).as_str()), (R1, Some(70_000), "A,C1,B4,B5,C11,C12,C13,C14,C15"));
    c.assert_all_done();
}

#[test]
fn owner_dies_while_ringing_f4_the_adopter_ends_it_error_for_the_callee_with_one_record() {
    let mut c = alice_r1_bob_r2();
    f4_ringing(&mut c, ALICE, BOB, "f4");
    let row = c.last_attempt(R1, "f4");
    assert_eq!((row.state, row.callee_device.as_deref(), row.carrier.as_deref()), (CallState::Ringing, Some("2002"), None));
    c.kill(R1);
    assert!(c.to(BOB).is_empty(), "nothing until the attempt is adopted");
    c.adopt(R2, row);
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Error, None)));
    let (at, r) = c.one_record("f4");
    assert_eq!(at, R2);
    assert_eq!(
        (r.outcome, steps(&r).as_str(), r.caller.as_str(), r.callee.as_str()),
        (Outcome::Error, "A,C1,B4,B6,F4", "2001", "2002")
    );
    assert_eq!(r.started_ms, BASE_MS);
    // The caller, back on r2, is not told twice, and the attempt is gone.
    c.device_online(R2, ALICE2, "2001");
    assert!(c.to(ALICE2).is_empty());
    c.assert_all_done();
}

#[test]
fn adopting_the_row_of_an_attempt_that_already_ended_here_writes_no_second_record() {
    let mut c = alice_r1_bob_r2();
    f4_ringing(&mut c, ALICE, BOB, "f4");
    let row = c.last_attempt(R1, "f4");
    c.kill(R1);
    c.adopt(R2, row.clone());
    assert_eq!(c.one_record("f4").0, R2);
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Error, None)));
    // The same row again (a sweep that ran before the record's write deleted the row).
    c.adopt(R2, row);
    assert!(c.to(BOB).is_empty(), "no second outcome");
    c.assert_all_done();
}

#[test]
fn owner_dies_mid_call_f1_the_adopter_records_the_switch_end_with_its_duration_and_full_trace() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.advance(Duration::from_secs(1));
    f1_connected(&mut c, "m");
    let row = c.last_attempt(R1, "m");
    assert_eq!((row.state, row.connected_ms, row.carrier.as_deref()), (CallState::Connected, Some(BASE_MS + 1_000), Some("hq")));
    c.advance(Duration::from_secs(5));
    c.kill(R1);
    assert!(c.to(HQ).is_empty(), "the media runs on: the switch is told nothing");
    c.adopt(R2, row);
    assert!(c.to(HQ).is_empty());
    assert_eq!(c.r[R2].e.call_state("m"), Some(CallState::Connected));
    // The caller comes back on r2 (resume) while the call runs.
    c.device_online(R2, ALICE2, "2001");
    c.advance(Duration::from_secs(20));
    c.msg(HQ, &ended_json("m", "connected", 25_000));
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::Connected, Some(25_000))));
    assert_eq!(outcome_of(&c.to(ALICE2)), Some((Outcome::Connected, Some(25_000))));
    let (at, r) = c.one_record("m");
    assert_eq!(at, R2);
    assert_eq!(steps(&r), "A,C1,B4,B5,C11,C12,C13,C14,C15");
    assert_eq!((r.outcome, r.duration_ms, r.switch_id.as_deref()), (Outcome::Connected, Some(25_000), Some("hq")));
    assert_eq!((r.started_ms, r.ended_ms), (BASE_MS + 1_000, BASE_MS + 26_000));
    c.assert_all_done();
}

#[test]
fn owner_dies_mid_call_f1_progress_the_dead_owner_had_taken_is_done_again_at_the_adopter() {
    // The switch's `connected` reached r1, whose answer was lost when it was cut off: the
    // switch's replica asks the adopter again, which has the call connected already.
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    f1_connected(&mut c, "m");
    let row = c.last_attempt(R1, "m");
    c.kill(R1);
    c.adopt(R2, row);
    for ev in ["key_accepted", "connected"] {
        c.msg(HQ, &event_json("m", ev));
        assert!(c.to(HQ).is_empty(), "a repeated {ev} is already done");
    }
    c.msg(HQ, &ended_json("m", "connected", 4_000));
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::Connected, Some(4_000))));
    c.one_record("m");
    c.assert_all_done();
}

#[test]
fn owner_dies_mid_call_f1_the_adopter_takes_the_switch_call_report() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    f1_connected(&mut c, "m");
    let row = c.last_attempt(R1, "m");
    c.kill(R1);
    c.adopt(R2, row);
    c.advance(Duration::from_secs(30));
    c.msg(HQ, &report_json("m", 30_000, BASE_MS, BASE_MS + 30_000));
    assert!(c.to(HQ).iter().all(|m| !matches!(m, S::Error { .. })), "the report is taken");
    let (at, r) = c.one_record("m");
    assert_eq!(at, R2);
    assert_eq!(steps(&r), "A,C1,B4,B5,C11,C12,C13,C14,C15");
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(30_000)));
    // The switch sends it again (it re-sends what it queued): still one record.
    c.msg(HQ, &report_json("m", 30_000, BASE_MS, BASE_MS + 30_000));
    assert!(c.to(HQ).is_empty());
    c.one_record("m");
    c.assert_all_done();
}

#[test]
fn owner_dies_while_the_switch_rings_f1_the_adopter_relays_the_rest_to_the_returning_caller() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("k", "1001"));
    c.msg(HQ, &accept_json("k", HQ_URL));
    c.msg(HQ, &event_json("k", "key_accepted"));
    c.to(HQ);
    c.to(ALICE);
    let row = c.last_attempt(R1, "k");
    assert_eq!((row.state, row.carrier.as_deref()), (CallState::KeyAccepted, Some("hq")));
    c.kill(R1);
    c.adopt(R2, row);
    assert!(c.to(HQ).is_empty(), "a carrier call goes on: the switch is told nothing");
    assert_eq!(c.r[R2].e.call_state("k"), Some(CallState::KeyAccepted));
    c.device_online(R2, ALICE2, "2001");
    c.msg(HQ, &event_json("k", "ringing"));
    assert_eq!(c.to(ALICE2), vec![S::CallEvent { call_id: "k".into(), event: CallEvent::Ringing }]);
    c.msg(HQ, &event_json("k", "connected"));
    assert_eq!(c.to(ALICE2), vec![S::CallEvent { call_id: "k".into(), event: CallEvent::Connected }]);
    c.advance(Duration::from_secs(4));
    c.msg(HQ, &ended_json("k", "connected", 4_000));
    assert_eq!(outcome_of(&c.to(ALICE2)), Some((Outcome::Connected, Some(4_000))));
    let (at, r) = c.one_record("k");
    assert_eq!((at, steps(&r).as_str()), (R2, "A,C1,B4,B5,C11,C12,C13,C14,C15"));
    c.assert_all_done();
}

#[test]
fn owner_dies_while_the_switch_rings_and_the_switch_never_reports_the_adopted_attempt_times_out_once() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("k", "1001"));
    c.msg(HQ, &accept_json("k", HQ_URL));
    c.msg(HQ, &event_json("k", "key_accepted"));
    c.to(HQ);
    let row = c.last_attempt(R1, "k");
    assert_eq!(row.deadline_ms, BASE_MS + SteeringConfig::default().ring_timeout().as_millis() as i64);
    c.advance(Duration::from_secs(5));
    c.kill(R1);
    c.adopt(R2, row);
    // The adopter keeps the owner's deadline (wall clock), not a fresh one.
    assert_eq!(c.r[R2].e.poll_timeout(), Some(c.t0 + SteeringConfig::default().ring_timeout()));
    c.advance(SteeringConfig::default().ring_timeout() - Duration::from_secs(5));
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::NoAnswer, None)), "the switch drops its queue entry");
    let (at, r) = c.one_record("k");
    assert_eq!((at, r.outcome, steps(&r).as_str()), (R2, Outcome::NoAnswer, "A,C1,B4,B5,C11,C12,C13,C14"));
    c.assert_all_done();
}

#[test]
fn owner_dies_mid_call_f4_the_adopter_ends_it_connected_for_both_browsers() {
    let mut c = Cluster::new(3);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R2, BOB, "2002");
    let key = f4_ringing(&mut c, ALICE, BOB, "f4");
    c.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    c.to(ALICE);
    let row = c.last_attempt(R1, "f4");
    assert_eq!((row.state, row.connected_ms), (CallState::Connected, Some(BASE_MS)));
    c.advance(Duration::from_secs(9));
    c.kill(R1);
    assert!(c.to(BOB).is_empty(), "nothing until adoption");
    c.device_online(R3, ALICE2, "2001");
    c.advance(Duration::from_secs(1));
    c.adopt(R3, row);
    // The relay died with the owner: the call ends `connected`, talk time up to the adoption.
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Connected, Some(10_000))));
    assert_eq!(outcome_of(&c.to(ALICE2)), Some((Outcome::Connected, Some(10_000))));
    let (at, r) = c.one_record("f4");
    assert_eq!((at, r.outcome, r.duration_ms, steps(&r).as_str()), (R3, Outcome::Connected, Some(10_000), "A,C1,B4,B6,F4,F4"));
    c.assert_all_done();
}

#[test]
fn caller_signing_in_on_another_replica_mid_call_keeps_the_call_and_gets_its_events_there() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("mv", "1001"));
    c.to(HQ);
    c.msg(HQ, &accept_json("mv", HQ_URL));
    c.to(ALICE);
    // The load balancer sent Alice's new connection to r2 before r1 saw the old one drop.
    c.device_online(R2, ALICE2, "2001");
    assert!(matches!(c.to(ALICE).as_slice(), [S::Error { code: ErrorCode::SessionReplaced, .. }]));
    assert_eq!(c.r[R1].e.call_state("mv"), Some(CallState::AwaitDirectConnect), "the call goes on");
    // Her messages now reach the owner through r2, and its messages reach her there.
    c.msg(ALICE2, &offer_json("mv"));
    assert!(c.to(ALICE2).is_empty(), "no refusal");
    assert!(is_direct_signal(&c.to(HQ), "mv", "offer"));
    c.msg(HQ, &answer_json("mv"));
    assert!(is_direct_signal(&c.to(ALICE2), "mv", "answer"));
    c.msg(HQ, &event_json("mv", "key_accepted"));
    c.msg(HQ, &event_json("mv", "ringing"));
    assert_eq!(c.to(ALICE2), vec![S::CallEvent { call_id: "mv".into(), event: CallEvent::Ringing }]);
    c.msg(ALICE2, r#"{"type":"cancel","call_id":"mv"}"#);
    assert_eq!(outcome_of(&c.to(ALICE2)), Some((Outcome::Cancelled, None)));
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::Cancelled, None)));
    assert!(c.to(ALICE).is_empty());
    assert_eq!(c.one_record("mv").0, R1);
    c.assert_all_done();
}

#[test]
fn switchless_callee_leaving_its_replica_while_rung_by_c3_is_callee_offline() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(HQ, &route_query_json("f3", "1001", "2001"));
    c.msg(HQ, &direct_offer_json("f3"));
    assert!(matches!(c.to(ALICE).as_slice(), [S::Incoming { .. }]));
    c.to(HQ);
    c.disconnect(ALICE);
    assert_eq!(outcome_of(&c.to(HQ)), Some((Outcome::CalleeOffline, None)));
    let (at, r) = c.one_record("f3");
    assert_eq!((at, r.outcome, steps(&r).as_str()), (R2, Outcome::CalleeOffline, "A,B1,B2,B4,B6,C3"));
    c.assert_all_done();
}

// ------------------------------------------------------------------ shutdown, fencing, presence

#[test]
fn shutdown_in_cluster_mode_releases_connected_switch_calls_and_ends_ringing_ones_error() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R2, BOB, "2002");
    c.switch_online(R2, HQ, "hq", None);
    c.device_online(R2, CAROL, "2003");
    f1_connected(&mut c, "up");
    f4_ringing(&mut c, ALICE, BOB, "ring");
    c.msg(ALICE, &dial_json("talk", "2003"));
    let key = match c.to(CAROL).as_slice() {
        [S::Incoming { via: IncomingVia::Peer { key }, .. }] => key.clone(),
        other => panic!("{other:?}"),
    };
    c.msg(CAROL, &format!(r#"{{"type":"accept","call_id":"talk","key":"{key}"}}"#));
    c.to(ALICE);
    c.advance(Duration::from_secs(4));
    c.r[R1].e.shutdown(c.now);
    c.pump();
    // The ringing F4 ends `error` for both browsers; the connected F4 (its relay is this
    // replica) ends `connected` with its talk time.
    let to_alice = c.to(ALICE);
    assert_eq!(to_alice.len(), 2, "only the F4 calls' outcomes: {to_alice:?}");
    assert!(to_alice.contains(&S::Outcome { call_id: "ring".into(), outcome: Outcome::Error, duration_ms: None }));
    assert!(to_alice.contains(&S::Outcome { call_id: "talk".into(), outcome: Outcome::Connected, duration_ms: Some(4_000) }));
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Error, None)));
    assert_eq!(outcome_of(&c.to(CAROL)), Some((Outcome::Connected, Some(4_000))));
    assert_eq!(c.one_record("ring").1.outcome, Outcome::Error);
    assert_eq!(c.one_record("talk").1.duration_ms, Some(4_000));
    // The connected F1 is handed over: no record, no outcome to anyone.
    assert!(c.records_of("up").is_empty());
    assert!(c.to(HQ).is_empty());
    assert_eq!(c.r[R1].released.len(), 1);
    let row = c.r[R1].released[0].clone();
    assert_eq!((row.call_id.as_str(), row.state, row.connected_ms), ("up", CallState::Connected, Some(BASE_MS)));
    assert_eq!(c.r[R1].e.active_calls(), 0);
    assert_eq!(c.r[R1].e.poll_timeout(), None);
    // r1 goes; r2 adopts the released row, and the switch's end makes the one record.
    c.kill(R1);
    c.adopt(R2, row);
    c.advance(Duration::from_secs(6));
    c.msg(HQ, &ended_json("up", "connected", 10_000));
    let (at, r) = c.one_record("up");
    assert_eq!((at, r.outcome, r.duration_ms), (R2, Outcome::Connected, Some(10_000)));
    assert_eq!(steps(&r), "A,C1,B4,B5,C11,C12,C13,C14,C15");
    c.assert_all_done();
}

#[test]
fn fence_forgets_every_attempt_and_connection_without_a_word() {
    let mut c = alice_r1_bob_r2();
    c.switch_online(R1, BRANCH, "branch", None);
    f4_ringing(&mut c, ALICE, BOB, "f4");
    c.msg(ALICE, &dial_json("q", "3001"));
    assert_eq!(c.r[R1].e.active_calls(), 2);
    let row = c.last_attempt(R1, "f4");
    c.r[R1].sent.clear();
    c.r[R1].e.fence();
    assert!(c.r[R1].e.poll_output().is_none(), "no outputs");
    assert_eq!(c.r[R1].e.active_calls(), 0);
    assert_eq!((c.r[R1].e.call_state("f4"), c.r[R1].e.call_state("q")), (None, None));
    assert_eq!(c.r[R1].e.poll_timeout(), None, "no timers");
    assert!(!c.r[R1].e.is_switch_online("branch"));
    assert_eq!(c.r[R1].e.device_of(ALICE), None);
    // Time passes: nothing fires, nothing is recorded.
    c.advance(SteeringConfig::default().ring_timeout() * 2);
    assert!(c.r[R1].sent.is_empty() && c.r[R1].records.is_empty());
    // Another replica adopts what the fenced one wrote ahead: one record.
    c.r[R1].up = false;
    c.adopt(R2, row);
    assert_eq!(outcome_of(&c.to(BOB)), Some((Outcome::Error, None)));
    assert_eq!(c.one_record("f4").0, R2);
}

#[test]
fn stale_remote_offline_after_the_party_moved_to_r3_changes_nothing() {
    let mut c = Cluster::new(3);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R2, BOB, "2002");
    c.device_online(R3, BOB3, "2002");
    assert!(matches!(c.to(BOB).as_slice(), [S::Error { code: ErrorCode::SessionReplaced, .. }]));
    let key = f4_ringing(&mut c, ALICE, BOB3, "f4");
    // r2's presence delete for its old connection arrives late, on every replica.
    for i in [R1, R3] {
        let now = c.now;
        c.r[i].e.remote_offline(now, &Party::Device("2002".into()), "r2");
    }
    c.pump();
    assert!(c.to(ALICE).is_empty() && c.to(BOB3).is_empty(), "no outcome");
    assert_eq!(c.r[R1].e.call_state("f4"), Some(CallState::Ringing));
    c.msg(ALICE, &signal_json("f4", &key, "v=0 alice"));
    assert_eq!(c.to(BOB3), vec![S::Signal { call_id: "f4".into(), payload: offer("v=0 alice") }]);
    c.msg(BOB3, r#"{"type":"decline","call_id":"f4","reason":"declined"}"#);
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::Declined, None)));
    c.assert_all_done();
}

// ------------------------------------------------------------------ forwards nobody owns

#[test]
fn forward_for_an_unknown_call_with_no_owner_is_unknown_call_to_the_sender() {
    let mut c = alice_r1_bob_r2();
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, r#"{"type":"hangup","call_id":"nope"}"#);
    assert_eq!(c.error_code(ALICE), ErrorCode::UnknownCall);
    c.msg(HQ, &event_json("nope", "ringing"));
    assert_eq!(c.error_code(HQ), ErrorCode::UnknownCall);
    // A call owned elsewhere, by a stranger: the owner's refusal reaches the stranger.
    c.msg(ALICE, &dial_json("q", "1001"));
    c.to(HQ);
    c.msg(BOB, r#"{"type":"cancel","call_id":"q"}"#);
    assert_eq!(c.error_code(BOB), ErrorCode::NotYourCall);
    assert_eq!(c.r[R1].e.call_state("q"), Some(CallState::AwaitSwitchAnswer), "a refusal changes nothing");
    assert!(c.records_of("nope").is_empty());
}

#[test]
fn repeated_call_report_on_the_owner_replica_is_still_one_record() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R1, HQ, "hq", None);
    c.msg(ALICE, &dial_json("m", "1001"));
    c.msg(HQ, &accept_json("m", HQ_URL));
    c.msg(HQ, &event_json("m", "connected"));
    c.advance(Duration::from_secs(12));
    c.msg(HQ, &report_json("m", 12_000, BASE_MS, BASE_MS + 12_000));
    c.msg(HQ, &report_json("m", 12_000, BASE_MS, BASE_MS + 12_000));
    assert!(c.to(HQ).iter().all(|m| !matches!(m, S::Error { .. })), "the repeat is taken as done");
    assert_eq!(c.one_record("m").1.duration_ms, Some(12_000));
    c.assert_all_done();
}

#[test]
fn repeated_call_report_through_a_non_owner_replica_is_still_one_record() {
    let mut c = Cluster::new(2);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    f1_connected(&mut c, "m");
    c.advance(Duration::from_secs(12));
    // The switch's end report goes through its replica r2 to the owner r1 and ends the call...
    c.msg(HQ, &report_json("m", 12_000, BASE_MS, BASE_MS + 12_000));
    assert_eq!(c.one_record("m").0, R1);
    // ...and the switch re-sends it (it queued it while its link was down): r2 finds no owner
    // and handles it as for a call it never knew.
    c.msg(HQ, &report_json("m", 12_000, BASE_MS, BASE_MS + 12_000));
    c.one_record("m");
    c.assert_all_done();
}

#[test]
fn remote_refusals_and_new_calls_are_not_taken_from_other_replicas() {
    let mut c = alice_r1_bob_r2();
    // A new call always starts on the caller's replica, never through handle_remote.
    let dial = ClientMsg::decode(&dial_json("x", "2002")).unwrap();
    let e = c.r[R1].e.handle_remote(c.now, &Party::Device("2002".into()), dial).unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let hangup = ClientMsg::decode(r#"{"type":"hangup","call_id":"x"}"#).unwrap();
    let e = c.r[R1].e.handle_remote(c.now, &Party::Device("2002".into()), hangup).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownCall);
    c.pump();
    assert!(c.records_of("x").is_empty() && c.r[R1].e.active_calls() == 0);
    // Delivery to a party that is not on the replica any more is dropped, not misdirected.
    assert!(!c.r[R1].e.deliver(&Party::Device("2002".into()), S::Pong));
    c.pump();
    assert!(c.r[R1].sent.is_empty());
}

// ------------------------------------------------------------------ reconnects elsewhere before the lease runs out

/// The callee's replica dies and the browser is back on r3 before r2's lease expires: the
/// owner sees it move, not leave. As on one server (where the drop comes before the
/// reconnect), the ringing call sees the callee leave: its new session knows nothing of it.
#[test]
fn callee_back_on_another_replica_before_the_dead_ones_lease_expires_is_callee_offline() {
    let mut c = Cluster::new(3);
    c.device_online(R1, ALICE, "2001");
    c.device_online(R2, BOB, "2002");
    f4_ringing(&mut c, ALICE, BOB, "f4");
    // r2 dies silently (no node_down yet); Bob reconnects to r3 through the load balancer.
    c.r[R2].up = false;
    while c.r[R2].e.poll_output().is_some() {}
    c.device_online(R3, BOB + 100, "2002");
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::CalleeOffline, None)));
    let (_, r) = c.one_record("f4");
    assert_eq!((r.outcome, steps(&r).as_str()), (Outcome::CalleeOffline, "A,C1,B4,B6,F4"));
    c.assert_all_done();
}

/// The callee switch's replica dies during C11 and the gateway is back on r3 at once: the
/// query it may never have seen ends `switch_unavailable` now, not at the answer timeout.
#[test]
fn callee_switch_back_on_another_replica_during_c11_is_switch_unavailable() {
    let mut c = Cluster::new(3);
    c.device_online(R1, ALICE, "2001");
    c.switch_online(R2, HQ, "hq", None);
    c.msg(ALICE, &dial_json("q", "1001"));
    assert!(matches!(c.to(HQ).as_slice(), [S::CalleeQuery { .. }]));
    c.r[R2].up = false;
    while c.r[R2].e.poll_output().is_some() {}
    c.switch_online(R3, HQ + 100, "hq", Some(&[]));
    assert_eq!(outcome_of(&c.to(ALICE)), Some((Outcome::SwitchUnavailable, None)));
    let (_, r) = c.one_record("q");
    assert_eq!((r.outcome, steps(&r).as_str()), (Outcome::SwitchUnavailable, "A,C1,B4,B5,C11"));
    c.assert_all_done();
}
