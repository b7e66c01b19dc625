//! Deterministic tests of the steering engine: every patent branch and every timeout, driven
//! with a fake clock (plain `Instant` arithmetic) and no sockets.

use super::*;
use trunkline_protocol::AccountKind;
use trunkline_protocol::ServerMsg as S;

const ALICE: ConnId = 1; // browser 2001, no switch
const BOB: ConnId = 2; // browser 2002, no switch
const HQ: ConnId = 10; // switch hq: desk phones 1001, 1002
const BRANCH: ConnId = 20; // switch branch: desk phone 3001
/// What a switch's address is now: its name (callers reach it over WebRTC through the cloud).
const HQ_URL: &str = "switch:hq";
const BRANCH_URL: &str = "switch:branch";
const KEY: &str = "k3y-k3y-k3y-k3y-k3y-k3y-k3y";

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

struct H {
    e: Engine,
    t0: Instant,
    now: Instant,
    out: Vec<Output>,
}

impl H {
    /// Everyone online.
    fn new() -> H {
        let mut h = H::offline();
        h.e.device_online(h.now, ALICE, "2001");
        h.e.device_online(h.now, BOB, "2002");
        h.e.switch_online(h.now, HQ, "hq", "trunkline", vec![]);
        h.e.switch_online(h.now, BRANCH, "branch", "trunkline", vec![]);
        h.drain();
        h.out.clear();
        h
    }

    fn offline() -> H {
        let t0 = Instant::now();
        let mut n = 0u32;
        let mut e = Engine::new(
            SteeringConfig::default(),
            4,
            (t0, 1_700_000_000_000),
            Box::new(move || {
                n += 1;
                format!("cloud-key-{n:016}")
            }),
        );
        e.set_directory(vec![
            account("2001", AccountKind::Browser, None),
            account("2002", AccountKind::Browser, None),
            account("1001", AccountKind::Deskphone, Some("hq")),
            account("1002", AccountKind::Deskphone, Some("hq")),
            account("3001", AccountKind::Deskphone, Some("branch")),
        ]);
        H { e, t0, now: t0, out: vec![] }
    }

    fn drain(&mut self) {
        while let Some(o) = self.e.poll_output() {
            self.out.push(o);
        }
    }

    fn msg(&mut self, conn: ConnId, json: &str) {
        let m = ClientMsg::decode(json).unwrap_or_else(|e| panic!("test message {json} invalid: {e}"));
        self.e.handle(self.now, conn, m);
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.e.handle_timeout(self.now);
        self.drain();
    }

    /// Messages sent to `conn` since the last call, consumed.
    fn to(&mut self, conn: ConnId) -> Vec<S> {
        let mut got = vec![];
        self.out.retain(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => {
                got.push(msg.clone());
                false
            }
            _ => true,
        });
        got
    }

    fn records(&mut self) -> Vec<CallRecord> {
        let mut got = vec![];
        self.out.retain(|o| match o {
            Output::Record(r) => {
                got.push(r.clone());
                false
            }
            _ => true,
        });
        got
    }

    fn one_record(&mut self) -> CallRecord {
        let r = self.records();
        assert_eq!(r.len(), 1, "exactly one record expected: {r:?}");
        r.into_iter().next().unwrap()
    }

    fn error_code(&mut self, conn: ConnId) -> ErrorCode {
        let msgs = self.to(conn);
        match msgs.as_slice() {
            [S::Error { code, .. }] => *code,
            other => panic!("expected one error, got {other:?}"),
        }
    }

    fn nothing_sent(&self) -> bool {
        !self.out.iter().any(|o| matches!(o, Output::Send { .. } | Output::Record(_)))
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

fn accept_json(call: &str) -> String {
    format!(
        r#"{{"type":"query_answer","call_id":"{call}","answer":{{"answer":"accept","url":"{BRANCH_URL}","key":"{KEY}","expires_in_ms":30000}}}}"#
    )
}

// ------------------------------------------------------------------ A → C1, B3

#[test]
fn c1_b3_browser_dials_unknown_number_gets_invalid_call_and_nothing_rings() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"c1","to":"9999"}"#);
    let to_alice = h.to(ALICE);
    assert!(matches!(&to_alice[0], S::Error { code: ErrorCode::InvalidCall, call_id: Some(c), .. } if c == "c1"));
    assert_eq!(outcome_of(&to_alice), Some((Outcome::RejectedInvalid, None)));
    assert!(h.to(HQ).is_empty() && h.to(BRANCH).is_empty() && h.to(BOB).is_empty(), "nothing rings");
    let r = h.one_record();
    assert_eq!(r.outcome, Outcome::RejectedInvalid);
    assert_eq!(steps(&r), "A,C1,B3");
    assert_eq!(h.e.active_calls(), 0);
}

#[test]
fn c1_b3_calling_yourself_is_invalid() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"c1","to":"2001"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::RejectedInvalid, None)));
    assert_eq!(h.one_record().outcome, Outcome::RejectedInvalid);
}

// ------------------------------------------------------------------ F1: C1, B5, C11–C15

#[test]
fn f1_c11_c12_c13_accept_relays_address_and_key_then_c14_c15_connect() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"f1","to":"3001"}"#);
    let q = h.to(BRANCH);
    assert_eq!(
        q,
        vec![S::CalleeQuery { call_id: "f1".into(), from: "2001".into(), from_name: "User 2001".into(), to: "3001".into() }]
    );
    assert_eq!(h.e.call_state("f1"), Some(CallState::AwaitSwitchAnswer));
    h.msg(BRANCH, &accept_json("f1"));
    assert_eq!(
        h.to(ALICE),
        vec![S::Connect { call_id: "f1".into(), url: BRANCH_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }]
    );
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"key_accepted"}}"#);
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"ringing"}}"#);
    assert_eq!(h.to(ALICE), vec![S::CallEvent { call_id: "f1".into(), event: CallEvent::Ringing }]);
    h.advance(Duration::from_secs(3));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"connected"}}"#);
    assert_eq!(h.to(ALICE), vec![S::CallEvent { call_id: "f1".into(), event: CallEvent::Connected }]);
    h.advance(Duration::from_secs(10));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"ended","outcome":"connected","duration_ms":10000}}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(10_000))));
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::Connected, Some(10_000))));
    let r = h.one_record();
    assert_eq!(steps(&r), "A,C1,B4,B5,C11,C12,C13,C14,C15");
    assert_eq!((r.outcome, r.duration_ms, r.switch_id.as_deref()), (Outcome::Connected, Some(10_000), Some("branch")));
    assert_eq!(r.started_ms, 1_700_000_000_000);
    assert_eq!(r.ended_ms - r.started_ms, 13_000);
    // Exactly one outcome: the call is gone, later reports are refused and record nothing.
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"ended","outcome":"error"}}"#);
    assert_eq!(h.error_code(BRANCH), ErrorCode::UnknownCall);
    assert!(h.records().is_empty());
}

#[test]
fn f6_c12_declines_map_to_busy_offline_declined() {
    for (reason, outcome) in
        [("busy", Outcome::Busy), ("not_registered", Outcome::CalleeOffline), ("declined", Outcome::Declined)]
    {
        let mut h = H::new();
        h.msg(ALICE, r#"{"type":"dial","call_id":"d","to":"3001"}"#);
        h.to(BRANCH);
        h.msg(BRANCH, &format!(r#"{{"type":"query_answer","call_id":"d","answer":{{"answer":"decline","reason":"{reason}"}}}}"#));
        assert_eq!(outcome_of(&h.to(ALICE)), Some((outcome, None)), "{reason}");
        let r = h.one_record();
        assert_eq!((r.outcome, steps(&r).as_str()), (outcome, "A,C1,B4,B5,C11,C12,C13"));
    }
}

#[test]
fn c11_timeout_switch_never_answers_is_switch_unavailable() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"t","to":"3001"}"#);
    h.out.clear();
    let timeout = SteeringConfig::default().switch_answer_timeout();
    assert_eq!(h.e.poll_timeout(), Some(h.t0 + timeout));
    h.advance(timeout - Duration::from_millis(1));
    assert!(h.nothing_sent(), "not yet");
    h.advance(Duration::from_millis(1));
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::SwitchUnavailable, None)));
    // The switch hears it too, so a late queue entry is dropped.
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::SwitchUnavailable, None)));
    assert_eq!(h.one_record().outcome, Outcome::SwitchUnavailable);
    assert_eq!(h.e.poll_timeout(), None);
    // A late answer changes nothing.
    h.msg(BRANCH, &accept_json("t"));
    assert_eq!(h.error_code(BRANCH), ErrorCode::UnknownCall);
    assert!(h.to(ALICE).is_empty());
}

#[test]
fn b5_callee_switch_offline_is_switch_unavailable_at_once() {
    let mut h = H::new();
    h.e.disconnected(h.now, BRANCH);
    h.msg(ALICE, r#"{"type":"dial","call_id":"o","to":"3001"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::SwitchUnavailable, None)));
    assert_eq!(steps(&h.one_record()), "A,C1,B4,B5");
}

#[test]
fn c14_timeout_key_never_presented_is_key_expired() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"k","to":"3001"}"#);
    h.msg(BRANCH, &accept_json("k"));
    h.out.clear();
    h.advance(Duration::from_secs(30));
    assert!(h.nothing_sent(), "grace period past the TTL");
    h.advance(KEY_GRACE);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::KeyExpired, None)));
    assert_eq!(h.one_record().outcome, Outcome::KeyExpired);
}

#[test]
fn ring_timeout_after_c14_is_no_answer() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"r","to":"3001"}"#);
    h.msg(BRANCH, &accept_json("r"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"r","event":{"event":"key_accepted"}}"#);
    h.out.clear();
    h.advance(SteeringConfig::default().ring_timeout());
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::NoAnswer, None)));
}

#[test]
fn switch_reported_no_answer_is_relayed() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"r","to":"3001"}"#);
    h.msg(BRANCH, &accept_json("r"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"r","event":{"event":"ringing"}}"#);
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"r","event":{"event":"ended","outcome":"no_answer"}}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::NoAnswer, None)));
}

#[test]
fn caller_cancel_before_answer_tells_the_switch() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"x","to":"3001"}"#);
    h.to(BRANCH);
    h.msg(ALICE, r#"{"type":"cancel","call_id":"x"}"#);
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::Cancelled, None)));
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Cancelled, None)));
    assert_eq!(h.one_record().outcome, Outcome::Cancelled);
}

// ------------------------------------------------------------------ B: via a switch

#[test]
fn b2_b3_switch_asks_for_unknown_number_gets_invalid_route() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"b3","from":"1001","to":"555"}"#);
    let to_hq = h.to(HQ);
    assert!(matches!(&to_hq[0], S::Route { route: Route::Invalid { reason }, .. } if reason.contains("555")));
    assert_eq!(outcome_of(&to_hq), Some((Outcome::RejectedInvalid, None)));
    assert_eq!(steps(&h.one_record()), "A,B1,B2,B3");
    assert!(h.to(BRANCH).is_empty());
}

#[test]
fn f2_b5_answer_then_c11_c12_and_c2_hands_the_caller_switch_address_and_key() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"f2","from":"1001","to":"3001"}"#);
    assert_eq!(
        h.to(HQ),
        vec![S::Route { call_id: "f2".into(), route: Route::Switch { switch_id: "branch".into(), url: BRANCH_URL.into() } }]
    );
    assert!(matches!(h.to(BRANCH).as_slice(), [S::CalleeQuery { from, .. }] if from == "1001"));
    h.msg(BRANCH, &accept_json("f2"));
    assert_eq!(
        h.to(HQ),
        vec![S::Connect { call_id: "f2".into(), url: BRANCH_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }]
    );
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f2","event":{"event":"key_accepted"}}"#);
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f2","event":{"event":"connected"}}"#);
    assert!(matches!(h.to(HQ).as_slice(), [S::CallEvent { event: CallEvent::Connected, .. }]));
    // The caller's switch may report the end (its phone hung up).
    h.advance(Duration::from_secs(2));
    h.msg(HQ, r#"{"type":"call_event","call_id":"f2","event":{"event":"ended","outcome":"connected"}}"#);
    let r = h.one_record();
    assert_eq!(steps(&r), "A,B1,B2,B4,B5,C11,C12,C2,C14,C15");
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(2_000)));
}

#[test]
fn f3_b6_device_answer_then_c3_tells_the_online_browser() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"f3","from":"1001","to":"2001"}"#);
    assert_eq!(h.to(HQ), vec![S::Route { call_id: "f3".into(), route: Route::Device { device_id: "2001".into() } }]);
    assert_eq!(h.e.call_state("f3"), Some(CallState::AwaitDirectOffer));
    h.msg(HQ, &format!(r#"{{"type":"direct_offer","call_id":"f3","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#));
    assert_eq!(
        h.to(ALICE),
        vec![S::Incoming {
            call_id: "f3".into(),
            from: "1001".into(),
            from_name: "User 1001".into(),
            via: IncomingVia::Direct { url: HQ_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }
        }]
    );
    h.msg(HQ, r#"{"type":"call_event","call_id":"f3","event":{"event":"key_accepted"}}"#);
    h.msg(HQ, r#"{"type":"call_event","call_id":"f3","event":{"event":"connected"}}"#);
    h.msg(HQ, r#"{"type":"call_event","call_id":"f3","event":{"event":"ended","outcome":"connected","duration_ms":500}}"#);
    let r = h.one_record();
    assert_eq!(steps(&r), "A,B1,B2,B4,B6,C3,C14,C15");
    assert_eq!(r.duration_ms, Some(500));
}

#[test]
fn a_switch_names_itself_in_its_address_never_another_switch() {
    let mut h = H::new();
    // C12 from branch naming hq: refused, nothing relayed, the call still waits for a real answer.
    h.msg(ALICE, r#"{"type":"dial","call_id":"f1","to":"3001"}"#);
    h.out.clear();
    h.msg(
        BRANCH,
        &format!(r#"{{"type":"query_answer","call_id":"f1","answer":{{"answer":"accept","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}}}"#),
    );
    assert_eq!(h.error_code(BRANCH), ErrorCode::InvalidField);
    assert!(h.to(ALICE).is_empty(), "no connect with another switch's name");
    assert_eq!(h.e.call_state("f1"), Some(CallState::AwaitSwitchAnswer));
    h.msg(BRANCH, &accept_json("f1"));
    assert!(matches!(h.to(ALICE).as_slice(), [S::Connect { url, .. }] if url == "switch:branch"));
    // C3 from hq naming branch: refused the same way.
    h.msg(HQ, r#"{"type":"route_query","call_id":"f3","from":"1001","to":"2002"}"#);
    h.out.clear();
    h.msg(HQ, &format!(r#"{{"type":"direct_offer","call_id":"f3","url":"{BRANCH_URL}","key":"{KEY}","expires_in_ms":30000}}"#));
    assert_eq!(h.error_code(HQ), ErrorCode::InvalidField);
    assert!(h.to(BOB).is_empty());
    assert_eq!(h.e.call_state("f3"), Some(CallState::AwaitDirectOffer));
}

#[test]
fn f3_callee_declines_the_direct_call() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"f3","from":"1001","to":"2001"}"#);
    h.msg(HQ, &format!(r#"{{"type":"direct_offer","call_id":"f3","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#));
    h.out.clear();
    h.msg(ALICE, r#"{"type":"decline","call_id":"f3","reason":"declined"}"#);
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::Declined, None)));
}

#[test]
fn b6_offline_callee_is_callee_offline() {
    let mut h = H::new();
    h.e.disconnected(h.now, ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"off","from":"1001","to":"2001"}"#);
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::CalleeOffline, None)));
    assert_eq!(steps(&h.one_record()), "A,B1,B2,B4,B6");
}

#[test]
fn c3_timeout_switch_never_sends_direct_offer() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"c3","from":"1001","to":"2001"}"#);
    h.out.clear();
    h.advance(SteeringConfig::default().direct_offer_timeout());
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::SwitchUnavailable, None)));
}

#[test]
fn c3_callee_never_connects_is_no_answer() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"c3","from":"1001","to":"2001"}"#);
    h.msg(HQ, &format!(r#"{{"type":"direct_offer","call_id":"c3","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#));
    h.out.clear();
    h.advance(SteeringConfig::default().ring_timeout());
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::NoAnswer, None)));
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::NoAnswer, None)));
}

#[test]
fn route_query_for_own_phone_is_local() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"l","from":"1001","to":"1002"}"#);
    assert_eq!(h.to(HQ), vec![S::Route { call_id: "l".into(), route: Route::Local }]);
    h.msg(HQ, r#"{"type":"call_event","call_id":"l","event":{"event":"ended","outcome":"busy"}}"#);
    assert_eq!(h.one_record().outcome, Outcome::Busy);
}

#[test]
fn switch_cannot_place_calls_for_phones_that_are_not_its_own() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"spoof","from":"3001","to":"1001"}"#);
    assert_eq!(h.error_code(HQ), ErrorCode::Forbidden);
    assert_eq!(h.e.active_calls(), 0);
    h.msg(HQ, r#"{"type":"route_query","call_id":"spoof","from":"2001","to":"1001"}"#);
    assert_eq!(h.error_code(HQ), ErrorCode::Forbidden);
}

// ------------------------------------------------------------------ F4: browser ⇄ browser

fn f4_ringing(h: &mut H) -> String {
    h.msg(ALICE, r#"{"type":"dial","call_id":"f4","to":"2002"}"#);
    let to_bob = h.to(BOB);
    let key = match to_bob.as_slice() {
        [S::Incoming { via: IncomingVia::Peer { key }, from, .. }] if from == "2001" => key.clone(),
        other => panic!("bob should be rung: {other:?}"),
    };
    let to_alice = h.to(ALICE);
    assert_eq!(
        to_alice,
        vec![
            S::Peer { call_id: "f4".into(), key: key.clone() },
            S::CallEvent { call_id: "f4".into(), event: CallEvent::Ringing }
        ]
    );
    key
}

#[test]
fn f4_relay_between_two_browsers_with_cloud_key() {
    let mut h = H::new();
    let key = f4_ringing(&mut h);
    // Offer from the caller reaches the callee; a wrong key is refused and relays nothing.
    h.msg(
        ALICE,
        r#"{"type":"signal","call_id":"f4","key":"wrong-wrong-wrong-wrong-wrong","payload":{"kind":"offer","sdp":"v=0"}}"#,
    );
    assert_eq!(h.error_code(ALICE), ErrorCode::BadKey);
    assert!(h.to(BOB).is_empty());
    h.msg(ALICE, &format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"offer","sdp":"v=0"}}}}"#));
    assert_eq!(h.to(BOB), vec![S::Signal { call_id: "f4".into(), payload: SignalPayload::Offer { sdp: "v=0".into() } }]);
    h.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    assert_eq!(h.to(ALICE), vec![S::CallEvent { call_id: "f4".into(), event: CallEvent::Connected }]);
    h.msg(BOB, &format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"answer","sdp":"v=0 a"}}}}"#));
    h.msg(BOB, &format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"ice","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdp_mid":"0"}}}}"#));
    assert_eq!(h.to(ALICE).len(), 2);
    h.advance(Duration::from_secs(7));
    h.msg(BOB, r#"{"type":"hangup","call_id":"f4"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(7_000))));
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::Connected, Some(7_000))));
    let r = h.one_record();
    assert_eq!(steps(&r), "A,C1,B4,B6,F4,F4");
    assert_eq!(r.switch_id, None);
}

#[test]
fn f4_accept_with_wrong_key_or_by_caller_is_refused() {
    let mut h = H::new();
    let key = f4_ringing(&mut h);
    h.msg(BOB, r#"{"type":"accept","call_id":"f4","key":"wrong-wrong-wrong-wrong-wrong"}"#);
    assert_eq!(h.error_code(BOB), ErrorCode::BadKey);
    h.msg(ALICE, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    assert_eq!(h.error_code(ALICE), ErrorCode::NotYourCall);
    assert_eq!(h.e.call_state("f4"), Some(CallState::Ringing));
}

#[test]
fn f4_ring_timeout_decline_cancel_offline_busy() {
    let mut h = H::new();
    f4_ringing(&mut h);
    h.advance(SteeringConfig::default().ring_timeout());
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::NoAnswer, None)));
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::NoAnswer, None)));

    let mut h = H::new();
    f4_ringing(&mut h);
    h.msg(BOB, r#"{"type":"decline","call_id":"f4","reason":"declined"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Declined, None)));

    let mut h = H::new();
    f4_ringing(&mut h);
    h.msg(ALICE, r#"{"type":"cancel","call_id":"f4"}"#);
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::Cancelled, None)));

    let mut h = H::new();
    h.e.disconnected(h.now, BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"f4","to":"2002"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::CalleeOffline, None)));

    // Busy: bob is connected to someone else.
    let mut h = H::new();
    let key = f4_ringing(&mut h);
    h.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    h.e.set_directory(vec![
        account("2001", AccountKind::Browser, None),
        account("2002", AccountKind::Browser, None),
        account("2003", AccountKind::Browser, None),
    ]);
    h.e.device_online(h.now, 3, "2003");
    h.out.clear();
    h.msg(3, r#"{"type":"dial","call_id":"busy","to":"2002"}"#);
    assert_eq!(outcome_of(&h.to(3)), Some((Outcome::Busy, None)));
}

#[test]
fn f4_disconnect_mid_call_ends_it_for_the_other_side() {
    let mut h = H::new();
    let key = f4_ringing(&mut h);
    h.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    h.advance(Duration::from_secs(4));
    h.out.clear();
    assert_eq!(h.e.disconnected(h.now, ALICE), Some(Party::Device("2001".into())));
    h.drain();
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::Connected, Some(4_000))));
    assert_eq!(h.one_record().duration_ms, Some(4_000));
}

// ------------------------------------------------------------------ disconnects

#[test]
fn caller_disconnect_while_waiting_for_switch_cancels_and_tells_switch() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"dc","to":"3001"}"#);
    h.out.clear();
    h.e.disconnected(h.now, ALICE);
    h.drain();
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::Cancelled, None)));
}

#[test]
fn caller_disconnect_after_key_does_not_drop_the_direct_call() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"dc","to":"3001"}"#);
    h.msg(BRANCH, &accept_json("dc"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"dc","event":{"event":"connected"}}"#);
    h.e.disconnected(h.now, ALICE);
    h.drain();
    assert!(h.records().is_empty());
    assert_eq!(h.e.call_state("dc"), Some(CallState::Connected));
}

#[test]
fn switch_disconnect_while_asked_is_switch_unavailable() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"sd","to":"3001"}"#);
    h.out.clear();
    h.e.disconnected(h.now, BRANCH);
    h.drain();
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::SwitchUnavailable, None)));
}

#[test]
fn switch_that_reconnects_mid_call_can_still_report_the_end() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"rc","to":"3001"}"#);
    h.msg(BRANCH, &accept_json("rc"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"rc","event":{"event":"connected"}}"#);
    h.e.disconnected(h.now, BRANCH);
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.drain();
    h.msg(21, r#"{"type":"call_event","call_id":"rc","event":{"event":"ended","outcome":"connected"}}"#);
    assert_eq!(h.one_record().outcome, Outcome::Connected);
}

#[test]
fn second_sign_in_replaces_the_first_connection() {
    let mut h = H::new();
    h.e.device_online(h.now, 99, "2001");
    h.drain();
    assert!(matches!(h.to(ALICE).as_slice(), [S::Error { code: ErrorCode::SessionReplaced, .. }]));
    assert!(h.out.contains(&Output::Close { conn: ALICE }));
    // The old connection going away does not take the new one offline.
    assert_eq!(h.e.disconnected(h.now, ALICE), None);
    h.out.clear();
    h.msg(BOB, r#"{"type":"dial","call_id":"n","to":"2001"}"#);
    assert!(matches!(h.to(99).as_slice(), [S::Incoming { .. }]));
}

// ------------------------------------------------------------------ refusals change nothing

#[test]
fn out_of_order_and_foreign_messages_get_typed_errors_and_change_nothing() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"o","to":"3001"}"#);
    h.out.clear();
    // Duplicate call id.
    h.msg(BOB, r#"{"type":"dial","call_id":"o","to":"3001"}"#);
    assert_eq!(h.error_code(BOB), ErrorCode::DuplicateCall);
    // Events before the switch answered C11.
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"o","event":{"event":"connected"}}"#);
    assert_eq!(h.error_code(BRANCH), ErrorCode::WrongState);
    // Another switch answering.
    h.msg(HQ, &accept_json("o"));
    assert_eq!(h.error_code(HQ), ErrorCode::NotYourCall);
    // A stranger cancelling.
    h.msg(BOB, r#"{"type":"cancel","call_id":"o"}"#);
    assert_eq!(h.error_code(BOB), ErrorCode::NotYourCall);
    // Unknown call.
    h.msg(BRANCH, &accept_json("nope"));
    assert_eq!(h.error_code(BRANCH), ErrorCode::UnknownCall);
    // Wrong kind of peer.
    h.msg(ALICE, r#"{"type":"route_query","call_id":"z","from":"2001","to":"1001"}"#);
    assert_eq!(h.error_code(ALICE), ErrorCode::Forbidden);
    h.msg(HQ, r#"{"type":"dial","call_id":"z","to":"1001"}"#);
    assert_eq!(h.error_code(HQ), ErrorCode::Forbidden);
    // A second sign-in on the same connection.
    h.msg(ALICE, r#"{"type":"login","v":1,"number":"2001","password":"x"}"#);
    assert_eq!(h.error_code(ALICE), ErrorCode::AlreadyAuthenticated);
    // Unauthenticated connection.
    h.msg(77, r#"{"type":"ping"}"#);
    assert_eq!(h.error_code(77), ErrorCode::NotAuthenticated);
    assert!(h.nothing_sent());
    assert_eq!(h.e.call_state("o"), Some(CallState::AwaitSwitchAnswer));
    // The call still completes normally.
    h.msg(BRANCH, &accept_json("o"));
    assert!(matches!(h.to(ALICE).as_slice(), [S::Connect { .. }]));
    // A second answer is out of order.
    h.msg(BRANCH, &accept_json("o"));
    assert_eq!(h.error_code(BRANCH), ErrorCode::WrongState);
}

#[test]
fn too_many_calls_per_device_is_refused() {
    let mut h = H::new();
    for i in 0..4 {
        h.msg(ALICE, &format!(r#"{{"type":"dial","call_id":"m{i}","to":"3001"}}"#));
    }
    h.out.clear();
    h.msg(ALICE, r#"{"type":"dial","call_id":"m5","to":"3001"}"#);
    assert_eq!(h.error_code(ALICE), ErrorCode::TooManyRequests);
    assert_eq!(h.e.active_calls(), 4);
}

#[test]
fn ping_is_answered() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"ping"}"#);
    assert_eq!(h.to(HQ), vec![S::Pong]);
}

#[test]
fn shutdown_ends_every_attempt_with_one_record() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"s1","to":"3001"}"#);
    f4_ringing(&mut h);
    h.out.clear();
    h.e.shutdown(h.now);
    h.drain();
    let r = h.records();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r.outcome == Outcome::Error));
    assert_eq!(h.e.active_calls(), 0);
    assert_eq!(h.e.poll_timeout(), None);
}

#[test]
fn switch_welcome_lists_its_phones_and_directory_changes_push_updates() {
    let mut h = H::offline();
    h.e.switch_online(h.now, HQ, "hq", "trunkline", vec![]);
    h.drain();
    match h.to(HQ).as_slice() {
        [S::SwitchWelcome { phones, sip_realm, .. }] => {
            assert_eq!(sip_realm, "trunkline");
            assert_eq!(phones.iter().map(|p| p.number.as_str()).collect::<Vec<_>>(), ["1001", "1002"]);
        }
        other => panic!("{other:?}"),
    }
    h.e.set_directory(vec![account("1001", AccountKind::Deskphone, Some("hq"))]);
    h.drain();
    match h.to(HQ).as_slice() {
        [S::PhonesUpdate { phones }] => assert_eq!(phones.len(), 1),
        other => panic!("{other:?}"),
    }
    // Same directory again: nothing to tell.
    h.e.set_directory(vec![account("1001", AccountKind::Deskphone, Some("hq"))]);
    h.drain();
    assert!(h.to(HQ).is_empty());
}

// ------------------------------------------------------------------ Push: waking offline callees

impl H {
    /// Everyone online, Web Push wake-ups on.
    fn waking() -> H {
        let mut h = H::new();
        h.e.set_wake_up(true);
        h
    }

    /// `WakeUp` outputs since the last call, consumed: (call, number, from, from_name).
    fn wakeups(&mut self) -> Vec<(String, String, String, String)> {
        let mut got = vec![];
        self.out.retain(|o| match o {
            Output::WakeUp { call_id, number, from, from_name } => {
                got.push((call_id.clone(), number.clone(), from.clone(), from_name.clone()));
                false
            }
            _ => true,
        });
        got
    }

    fn online(&mut self, conn: ConnId, number: &str) {
        self.e.device_online(self.now, conn, number);
        self.drain();
    }

    fn offline_now(&mut self, conn: ConnId) {
        self.e.disconnected(self.now, conn);
        self.drain();
        self.out.clear();
    }
}

const BOB2: ConnId = 12; // browser 2002 after it signs in again
const ALICE2: ConnId = 11; // browser 2001 after it signs in again

fn direct_offer_json(call: &str, ttl_ms: u64) -> String {
    format!(r#"{{"type":"direct_offer","call_id":"{call}","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":{ttl_ms}}}"#)
}

#[test]
fn push_f4_offline_callee_is_woken_then_rung_when_it_signs_in() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    assert_eq!(h.wakeups(), vec![("w".into(), "2002".into(), "2001".into(), "User 2001".into())]);
    // The caller hears nothing yet: no outcome, no key (it would offer at once).
    assert!(h.to(ALICE).is_empty());
    assert_eq!(h.e.call_state("w"), Some(CallState::AwaitWake));
    assert_eq!(h.e.poll_timeout(), Some(h.t0 + SteeringConfig::default().ring_timeout()));
    // Signals before the callee is there are out of order.
    h.msg(
        ALICE,
        r#"{"type":"signal","call_id":"w","key":"wrong-wrong-wrong-wrong-wrong","payload":{"kind":"offer","sdp":"v=0"}}"#,
    );
    assert_eq!(h.error_code(ALICE), ErrorCode::WrongState);

    h.advance(Duration::from_secs(8));
    assert!(h.nothing_sent());
    h.online(BOB2, "2002");
    let key = match h.to(BOB2).as_slice() {
        [S::Incoming { call_id, from, from_name, via: IncomingVia::Peer { key } }] => {
            assert_eq!((call_id.as_str(), from.as_str(), from_name.as_str()), ("w", "2001", "User 2001"));
            key.clone()
        }
        other => panic!("the woken callee is rung: {other:?}"),
    };
    assert_eq!(
        h.to(ALICE),
        vec![S::Peer { call_id: "w".into(), key: key.clone() }, S::CallEvent { call_id: "w".into(), event: CallEvent::Ringing }]
    );
    assert_eq!(h.e.call_state("w"), Some(CallState::Ringing));
    // It rings for the rest of the ring timeout.
    assert_eq!(h.e.poll_timeout(), Some(h.t0 + SteeringConfig::default().ring_timeout()));
    // A late "could not wake" changes nothing now.
    h.e.wake_failed(h.now, "w", "no subscription");
    h.drain();
    assert!(h.nothing_sent());

    h.msg(BOB2, &format!(r#"{{"type":"accept","call_id":"w","key":"{key}"}}"#));
    assert_eq!(h.to(ALICE), vec![S::CallEvent { call_id: "w".into(), event: CallEvent::Connected }]);
    h.advance(Duration::from_secs(3));
    h.msg(ALICE, r#"{"type":"hangup","call_id":"w"}"#);
    assert_eq!(outcome_of(&h.to(BOB2)), Some((Outcome::Connected, Some(3_000))));
    let r = h.one_record();
    assert_eq!(steps(&r), "A,C1,B4,B6,Push,F4,F4");
    assert_eq!(r.outcome, Outcome::Connected);
}

#[test]
fn push_f4_nobody_to_wake_ends_callee_offline_at_once() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    assert_eq!(h.wakeups().len(), 1);
    h.e.wake_failed(h.now, "w", "callee offline and has no Web Push subscription");
    h.drain();
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::CalleeOffline, None)));
    let r = h.one_record();
    assert_eq!((r.outcome, steps(&r).as_str()), (Outcome::CalleeOffline, "A,C1,B4,B6,Push"));
    assert_eq!(h.e.poll_timeout(), None);
    // Nothing is left waiting for 2002: signing in later rings nothing, and a repeated
    // failure report is ignored.
    h.online(BOB2, "2002");
    assert!(h.to(BOB2).is_empty());
    h.e.wake_failed(h.now, "w", "again");
    h.drain();
    assert!(h.records().is_empty());
}

#[test]
fn push_f4_callee_that_never_signs_in_is_callee_offline_at_the_ring_timeout() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    h.out.clear();
    let ring = SteeringConfig::default().ring_timeout();
    h.advance(ring - Duration::from_millis(1));
    assert!(h.nothing_sent());
    h.advance(Duration::from_millis(1));
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::CalleeOffline, None)));
    assert_eq!(steps(&h.one_record()), "A,C1,B4,B6,Push");
    h.online(BOB2, "2002");
    assert!(h.to(BOB2).is_empty(), "the attempt is over");
}

#[test]
fn push_f4_callee_woken_late_still_rings_for_the_minimum() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    h.out.clear();
    h.advance(Duration::from_secs(40));
    h.online(BOB2, "2002");
    assert!(matches!(h.to(BOB2).as_slice(), [S::Incoming { .. }]));
    assert_eq!(h.e.poll_timeout(), Some(h.now + WAKE_MIN_RING));
    h.out.clear();
    h.advance(WAKE_MIN_RING);
    // Rung and not answered: no_answer, as for any ringing callee.
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::NoAnswer, None)));
    assert_eq!(outcome_of(&h.to(BOB2)), Some((Outcome::NoAnswer, None)));
}

#[test]
fn push_f4_caller_gives_up_while_the_callee_is_woken() {
    // Cancel.
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    h.out.clear();
    h.msg(ALICE, r#"{"type":"cancel","call_id":"w"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Cancelled, None)));
    assert_eq!(h.one_record().outcome, Outcome::Cancelled);
    h.online(BOB2, "2002");
    assert!(h.to(BOB2).is_empty());

    // Hang up (F4's way to give up) and disconnect.
    for how in ["hangup", "disconnect"] {
        let mut h = H::waking();
        h.offline_now(BOB);
        h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
        h.out.clear();
        if how == "hangup" {
            h.msg(ALICE, r#"{"type":"hangup","call_id":"w"}"#);
        } else {
            h.e.disconnected(h.now, ALICE);
            h.drain();
        }
        assert_eq!(h.one_record().outcome, Outcome::Cancelled, "{how}");
        assert_eq!(h.e.active_calls(), 0);
    }
}

#[test]
fn push_f4_two_calls_waiting_for_one_callee_both_ring() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w1","to":"2002"}"#);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w2","to":"2002"}"#);
    assert_eq!(h.wakeups().len(), 2);
    h.online(BOB2, "2002");
    let rung: Vec<String> = h
        .to(BOB2)
        .into_iter()
        .map(|m| match m {
            S::Incoming { call_id, .. } => call_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(rung, ["w1", "w2"]);
    assert_eq!(h.e.call_state("w1"), Some(CallState::Ringing));
    assert_eq!(h.e.call_state("w2"), Some(CallState::Ringing));
}

#[test]
fn push_offline_callee_still_in_a_direct_call_is_busy_not_woken() {
    let mut h = H::waking();
    // 2001 takes a C3 call from hq and connects; then its WebSocket drops (the direct leg and
    // the call go on without the cloud).
    h.msg(HQ, r#"{"type":"route_query","call_id":"c3","from":"1001","to":"2001"}"#);
    h.msg(HQ, &direct_offer_json("c3", 30_000));
    h.msg(HQ, r#"{"type":"call_event","call_id":"c3","event":{"event":"connected"}}"#);
    h.offline_now(ALICE);
    assert_eq!(h.e.call_state("c3"), Some(CallState::Connected));
    h.msg(BOB, r#"{"type":"dial","call_id":"w","to":"2001"}"#);
    assert!(h.wakeups().is_empty());
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::Busy, None)));
}

#[test]
fn push_off_means_callee_offline_at_once_and_no_wake_up() {
    let mut h = H::new();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    assert!(h.wakeups().is_empty());
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::CalleeOffline, None)));
    assert_eq!(steps(&h.one_record()), "A,C1,B4,B6");
}

#[test]
fn push_b6_offer_is_kept_until_the_woken_callee_signs_in_then_c3() {
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    // The switch is routed to the device at once, so it queues the call and makes its offer
    // while the push goes out.
    assert_eq!(h.to(HQ), vec![S::Route { call_id: "b6".into(), route: Route::Device { device_id: "2001".into() } }]);
    assert_eq!(h.wakeups(), vec![("b6".into(), "2001".into(), "1001".into(), "User 1001".into())]);
    assert_eq!(h.e.call_state("b6"), Some(CallState::AwaitDirectOffer));
    h.advance(Duration::from_secs(1));
    h.msg(HQ, &direct_offer_json("b6", 30_000));
    assert!(h.nothing_sent());
    assert_eq!(h.e.call_state("b6"), Some(CallState::AwaitWake));
    // Waits until the switch's key would expire (before the ring timeout here).
    assert_eq!(h.e.poll_timeout(), Some(h.now + Duration::from_secs(30)));

    h.advance(Duration::from_secs(4));
    h.online(ALICE2, "2001");
    assert_eq!(
        h.to(ALICE2),
        vec![S::Incoming {
            call_id: "b6".into(),
            from: "1001".into(),
            from_name: "User 1001".into(),
            // What is left of the key's life.
            via: IncomingVia::Direct { url: HQ_URL.into(), key: KEY.into(), expires_in_ms: 26_000 }
        }]
    );
    assert_eq!(h.e.call_state("b6"), Some(CallState::Ringing));
    h.msg(HQ, r#"{"type":"call_event","call_id":"b6","event":{"event":"key_accepted"}}"#);
    h.msg(HQ, r#"{"type":"call_event","call_id":"b6","event":{"event":"connected"}}"#);
    h.msg(HQ, r#"{"type":"call_event","call_id":"b6","event":{"event":"ended","outcome":"connected","duration_ms":900}}"#);
    let r = h.one_record();
    assert_eq!(steps(&r), "A,B1,B2,B4,B6,Push,C3,C14,C15");
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(900)));
}

#[test]
fn push_b6_callee_signs_in_before_the_offer_comes() {
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    h.online(ALICE2, "2001");
    h.out.clear();
    assert_eq!(h.e.call_state("b6"), Some(CallState::AwaitDirectOffer));
    h.msg(HQ, &direct_offer_json("b6", 30_000));
    assert!(matches!(h.to(ALICE2).as_slice(), [S::Incoming { via: IncomingVia::Direct { expires_in_ms: 30_000, .. }, .. }]));
    // Signed in: a late "could not wake" is ignored.
    h.e.wake_failed(h.now, "b6", "no subscription");
    h.drain();
    assert!(h.records().is_empty());
    assert_eq!(h.e.call_state("b6"), Some(CallState::Ringing));
}

#[test]
fn push_b6_nobody_to_wake_tells_the_switch_callee_offline() {
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    h.to(HQ);
    h.e.wake_failed(h.now, "b6", "no subscription");
    h.drain();
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::CalleeOffline, None)));
    assert_eq!(steps(&h.one_record()), "A,B1,B2,B4,B6,Push");
    // The switch's offer after that is for a call that is over.
    h.msg(HQ, &direct_offer_json("b6", 30_000));
    assert_eq!(h.error_code(HQ), ErrorCode::UnknownCall);
}

#[test]
fn push_b6_timeouts_key_expiry_and_missing_offer() {
    // The switch's key runs out before the callee signs in: callee_offline.
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    h.msg(HQ, &direct_offer_json("b6", 10_000));
    h.out.clear();
    h.advance(Duration::from_millis(9_999));
    assert!(h.nothing_sent());
    h.advance(Duration::from_millis(1));
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::CalleeOffline, None)));
    h.online(ALICE2, "2001");
    assert!(h.to(ALICE2).is_empty());

    // The ring timeout comes first.
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    h.msg(HQ, &direct_offer_json("b6", 300_000));
    h.out.clear();
    assert_eq!(h.e.poll_timeout(), Some(h.t0 + SteeringConfig::default().ring_timeout()));
    h.advance(SteeringConfig::default().ring_timeout());
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::CalleeOffline, None)));

    // The switch never makes its offer: as without a wake-up, switch_unavailable.
    let mut h = H::waking();
    h.offline_now(ALICE);
    h.msg(HQ, r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#);
    h.out.clear();
    h.advance(SteeringConfig::default().direct_offer_timeout());
    assert_eq!(outcome_of(&h.to(HQ)), Some((Outcome::SwitchUnavailable, None)));
}

#[test]
fn push_shutdown_while_waking_records_the_attempt_and_forgets_it() {
    let mut h = H::waking();
    h.offline_now(BOB);
    h.msg(ALICE, r#"{"type":"dial","call_id":"w","to":"2002"}"#);
    h.out.clear();
    h.e.shutdown(h.now);
    h.drain();
    assert_eq!(h.one_record().outcome, Outcome::Error);
    h.online(BOB2, "2002");
    assert!(h.to(BOB2).is_empty());
}

// ---------------------------------------------------------------- C14 over WebRTC (direct_signal)

fn offer_json(call: &str) -> String {
    format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"offer","sdp":"v=0 offer"}}}}"#)
}
fn answer_json(call: &str) -> String {
    format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"answer","sdp":"v=0 answer"}}}}"#)
}
fn ice_json(call: &str) -> String {
    format!(
        r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"ice","candidate":"candidate:1 1 udp 1 203.0.113.101 40000 typ srflx raddr 198.51.100.2 rport 40000"}}}}"#
    )
}
fn is_direct_signal(msgs: &[S], call: &str, kind: &str) -> bool {
    matches!(msgs, [S::DirectSignal { call_id, payload }] if call_id == call && matches!(
        (kind, payload),
        ("offer", SignalPayload::Offer { .. }) | ("answer", SignalPayload::Answer { .. }) | ("ice", SignalPayload::Ice { .. })
    ))
}

#[test]
fn f1_c14_direct_signal_relays_between_the_calling_browser_and_the_callee_switch() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"f1","to":"3001"}"#);
    h.to(BRANCH);
    // Before the switch handed out its address and key, nothing is relayed: a stranger cannot
    // make a switch set up a WebRTC leg.
    h.msg(ALICE, &offer_json("f1"));
    assert_eq!(h.error_code(ALICE), ErrorCode::WrongState);
    assert!(h.to(BRANCH).is_empty());
    h.msg(BRANCH, &accept_json("f1"));
    h.to(ALICE);
    h.msg(ALICE, &offer_json("f1"));
    assert!(is_direct_signal(&h.to(BRANCH), "f1", "offer"));
    h.msg(BRANCH, &answer_json("f1"));
    assert!(is_direct_signal(&h.to(ALICE), "f1", "answer"));
    h.msg(BRANCH, &ice_json("f1"));
    assert!(is_direct_signal(&h.to(ALICE), "f1", "ice"));
    h.msg(ALICE, &ice_json("f1"));
    assert!(is_direct_signal(&h.to(BRANCH), "f1", "ice"));
    // Others may not take part: another browser, another switch.
    h.msg(BOB, &ice_json("f1"));
    assert_eq!(h.error_code(BOB), ErrorCode::NotYourCall);
    h.msg(HQ, &ice_json("f1"));
    assert_eq!(h.error_code(HQ), ErrorCode::NotYourCall);
    // Trickle goes on after the key was accepted (late candidates, ICE restarts).
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"key_accepted"}}"#);
    h.msg(ALICE, &ice_json("f1"));
    assert!(is_direct_signal(&h.to(BRANCH), "f1", "ice"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"f1","event":{"event":"ended","outcome":"no_answer"}}"#);
    h.records();
    h.to(ALICE);
    h.msg(ALICE, &ice_json("f1"));
    assert_eq!(h.error_code(ALICE), ErrorCode::UnknownCall, "nothing is relayed after the call");
}

#[test]
fn f2_c2_direct_signal_relays_between_the_two_switches() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"f2","from":"1001","to":"3001"}"#);
    h.to(HQ);
    h.to(BRANCH);
    h.msg(BRANCH, &accept_json("f2"));
    h.to(HQ);
    h.msg(HQ, &offer_json("f2"));
    assert!(is_direct_signal(&h.to(BRANCH), "f2", "offer"));
    h.msg(BRANCH, &answer_json("f2"));
    assert!(is_direct_signal(&h.to(HQ), "f2", "answer"));
}

#[test]
fn f3_c3_direct_signal_relays_between_the_called_browser_and_the_caller_switch() {
    let mut h = H::new();
    h.msg(HQ, r#"{"type":"route_query","call_id":"f3","from":"1001","to":"2001"}"#);
    h.to(HQ);
    // The callee browser has no address and key yet.
    h.msg(ALICE, &offer_json("f3"));
    assert_eq!(h.error_code(ALICE), ErrorCode::WrongState);
    h.msg(HQ, &direct_offer_json("f3", 30_000));
    h.to(ALICE);
    h.msg(ALICE, &offer_json("f3"));
    assert!(is_direct_signal(&h.to(HQ), "f3", "offer"));
    h.msg(HQ, &answer_json("f3"));
    assert!(is_direct_signal(&h.to(ALICE), "f3", "answer"));
    h.msg(BOB, &offer_json("f3"));
    assert_eq!(h.error_code(BOB), ErrorCode::NotYourCall);
}

#[test]
fn direct_signal_is_refused_for_browser_to_browser_and_local_calls() {
    let mut h = H::new();
    f4_ringing(&mut h);
    h.msg(ALICE, &offer_json("f4"));
    assert_eq!(h.error_code(ALICE), ErrorCode::WrongState, "F4 uses signal with the cloud key");
    h.msg(HQ, r#"{"type":"route_query","call_id":"f7","from":"1001","to":"1002"}"#);
    h.to(HQ);
    h.msg(HQ, &offer_json("f7"));
    assert_eq!(h.error_code(HQ), ErrorCode::WrongState);
    // Malformed payloads never reach the engine: the protocol refuses them.
    let e = ClientMsg::decode(r#"{"type":"direct_signal","call_id":"f1","payload":{"kind":"offer","sdp":""}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidField);
}

#[test]
fn connect_failed_ends_the_attempt_with_its_own_outcome_for_every_party() {
    let mut h = H::new();
    h.msg(ALICE, r#"{"type":"dial","call_id":"nf","to":"3001"}"#);
    h.to(BRANCH);
    h.msg(BRANCH, &accept_json("nf"));
    h.to(ALICE);
    // A bystander cannot end someone else's call.
    h.msg(BOB, r#"{"type":"connect_failed","call_id":"nf","reason":"ICE failed"}"#);
    assert_eq!(h.error_code(BOB), ErrorCode::NotYourCall);
    h.msg(ALICE, r#"{"type":"connect_failed","call_id":"nf","reason":"ICE failed after 15 s"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::ConnectFailed, None)));
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::ConnectFailed, None)), "the switch frees its queue entry");
    let r = h.one_record();
    assert_eq!(r.outcome, Outcome::ConnectFailed);
    // F4 is `connected` at accept, before ICE: a failure after that still ends connect_failed.
    let key = f4_ringing(&mut h);
    h.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#));
    h.to(ALICE);
    h.advance(Duration::from_secs(15));
    h.msg(ALICE, r#"{"type":"connect_failed","call_id":"f4","reason":"ICE failed"}"#);
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::ConnectFailed, None)));
    assert_eq!(h.one_record().outcome, Outcome::ConnectFailed);
    // A call that has been up for longer than a set-up can take cannot be rewritten as failed.
    h.msg(ALICE, r#"{"type":"dial","call_id":"f4b","to":"2002"}"#);
    let key = match h.to(BOB).as_slice() {
        [S::Incoming { via: IncomingVia::Peer { key }, .. }] => key.clone(),
        other => panic!("{other:?}"),
    };
    h.msg(BOB, &format!(r#"{{"type":"accept","call_id":"f4b","key":"{key}"}}"#));
    h.advance(Duration::from_secs(120));
    h.to(ALICE);
    h.msg(ALICE, r#"{"type":"connect_failed","call_id":"f4b","reason":"late"}"#);
    assert_eq!(outcome_of(&h.to(BOB)), Some((Outcome::MediaLost, Some(120_000))), "its loss is media_lost, with the duration");
    assert_eq!(h.one_record().outcome, Outcome::MediaLost);
    // Through a switch, after C15: the browser lost the media path (e.g. the gateway died).
    h.msg(ALICE, r#"{"type":"dial","call_id":"ml","to":"3001"}"#);
    h.to(BRANCH);
    h.msg(BRANCH, &accept_json("ml"));
    h.msg(BRANCH, r#"{"type":"call_event","call_id":"ml","event":{"event":"connected"}}"#);
    h.to(ALICE);
    h.advance(Duration::from_secs(8));
    h.msg(ALICE, r#"{"type":"connect_failed","call_id":"ml","reason":"media path lost"}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::MediaLost, Some(8_000))));
    assert_eq!(outcome_of(&h.to(BRANCH)), Some((Outcome::MediaLost, Some(8_000))));
    let r = h.one_record();
    assert_eq!((r.outcome, r.duration_ms), (Outcome::MediaLost, Some(8_000)));
}

// ---------------------------------------------------------------- faults: the link to a switch

/// F1 from 2001 to 3001 through `branch`, connected at `h.now`.
fn f1_connected(h: &mut H, id: &str) {
    h.msg(ALICE, &format!(r#"{{"type":"dial","call_id":"{id}","to":"3001"}}"#));
    h.msg(BRANCH, &accept_json(id));
    h.msg(BRANCH, &format!(r#"{{"type":"call_event","call_id":"{id}","event":{{"event":"connected"}}}}"#));
    assert_eq!(h.e.call_state(id), Some(CallState::Connected));
    h.out.clear();
}

fn report_json(id: &str, duration_ms: u64, started_ms: i64, ended_ms: i64) -> String {
    format!(
        r#"{{"type":"call_report","call_id":"{id}","outcome":"connected","duration_ms":{duration_ms},"from":"2001","to":"3001","started_ms":{started_ms},"ended_ms":{ended_ms}}}"#
    )
}

#[test]
fn link_blip_keeps_a_listed_call_and_it_is_recorded_once_at_its_real_end() {
    let mut h = H::new();
    f1_connected(&mut h, "blip");
    h.advance(Duration::from_secs(5));
    h.e.disconnected(h.now, BRANCH);
    h.drain();
    assert!(h.to(ALICE).is_empty(), "a blip tells the caller nothing");
    assert_eq!(h.e.call_state("blip"), Some(CallState::Connected));
    h.advance(Duration::from_secs(3));
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.e.reconcile(h.now, "branch", Some(&["blip".to_string()]));
    h.drain();
    // Long past the grace: still up, nothing recorded.
    h.advance(SteeringConfig::default().switch_link_grace() * 3);
    assert_eq!(h.e.call_state("blip"), Some(CallState::Connected));
    assert!(h.records().is_empty());
    h.msg(21, r#"{"type":"call_event","call_id":"blip","event":{"event":"ended","outcome":"connected","duration_ms":98000}}"#);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(98_000))));
    let r = h.one_record();
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(98_000)));
}

#[test]
fn switch_that_never_returns_ends_its_calls_at_the_link_loss_after_the_grace() {
    let mut h = H::new();
    f1_connected(&mut h, "gone");
    h.advance(Duration::from_secs(7));
    h.e.disconnected(h.now, BRANCH);
    h.drain();
    let grace = SteeringConfig::default().switch_link_grace();
    h.advance(grace - Duration::from_millis(1));
    assert_eq!(h.e.call_state("gone"), Some(CallState::Connected), "kept during the grace");
    assert!(h.records().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.e.call_state("gone"), None);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(7_000))), "the caller gets a typed outcome");
    let r = h.one_record();
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(7_000)), "talk time up to the link loss, not the grace");
    assert_eq!(r.ended_ms - r.started_ms, 7_000);
    assert_eq!(h.e.active_calls(), 0, "no phantom call");
}

#[test]
fn restarted_switch_that_no_longer_carries_a_call_ends_it_at_the_link_loss() {
    let mut h = H::new();
    f1_connected(&mut h, "crash");
    h.advance(Duration::from_secs(4));
    h.e.disconnected(h.now, BRANCH);
    h.advance(Duration::from_secs(6));
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.e.reconcile(h.now, "branch", Some(&[]));
    h.drain();
    assert_eq!(h.e.call_state("crash"), Some(CallState::Connected), "it may still send the call's end report");
    h.advance(RECONCILE_WAIT);
    assert_eq!(h.e.call_state("crash"), None);
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(4_000))));
    let r = h.one_record();
    assert_eq!((r.outcome, r.duration_ms), (Outcome::Connected, Some(4_000)));
}

#[test]
fn returning_switch_end_report_queued_while_down_gives_the_real_duration() {
    let mut h = H::new();
    f1_connected(&mut h, "q");
    h.advance(Duration::from_secs(4));
    h.e.disconnected(h.now, BRANCH);
    // The phone hung up 2 s after the link loss; the switch queued the report.
    h.advance(Duration::from_secs(6));
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.e.reconcile(h.now, "branch", Some(&[]));
    h.drain();
    let t0 = 1_700_000_000_000;
    h.msg(21, &report_json("q", 6_000, t0, t0 + 6_000));
    assert_eq!(outcome_of(&h.to(ALICE)), Some((Outcome::Connected, Some(6_000))));
    let r = h.one_record();
    assert_eq!((r.outcome, r.duration_ms, r.ended_ms), (Outcome::Connected, Some(6_000), t0 + 6_000));
    // Sent again (the switch cannot know the first one arrived): already done.
    h.out.clear();
    h.msg(21, &report_json("q", 6_000, t0, t0 + 6_000));
    assert!(h.nothing_sent() && h.records().is_empty(), "{:?}", h.out);
    h.advance(RECONCILE_WAIT * 2);
    assert!(h.records().is_empty());
}

#[test]
fn older_switch_that_lists_nothing_keeps_its_calls() {
    let mut h = H::new();
    f1_connected(&mut h, "old");
    h.e.disconnected(h.now, BRANCH);
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.e.reconcile(h.now, "branch", None);
    h.drain();
    h.advance(SteeringConfig::default().switch_link_grace() * 2);
    assert_eq!(h.e.call_state("old"), Some(CallState::Connected));
}

#[test]
fn end_report_for_a_call_the_restarted_server_does_not_know_writes_one_complete_record() {
    let mut h = H::new();
    let (t0, t1) = (1_700_000_100_000, 1_700_000_160_000);
    h.msg(BRANCH, &report_json("lost", 55_000, t0, t1));
    assert!(h.to(BRANCH).is_empty(), "no error: the report is taken");
    let r = h.one_record();
    assert_eq!(
        (r.call_id.as_str(), r.caller.as_str(), r.callee.as_str(), r.switch_id.as_deref()),
        ("lost", "2001", "3001", Some("branch"))
    );
    assert_eq!((r.outcome, r.duration_ms, r.started_ms, r.ended_ms), (Outcome::Connected, Some(55_000), t0, t1));
    // Duplicates are done; another switch cannot report calls of phones that are not its own.
    h.msg(BRANCH, &report_json("lost", 55_000, t0, t1));
    assert!(h.records().is_empty() && h.to(BRANCH).is_empty());
    h.msg(HQ, &report_json("other", 1_000, t0, t1));
    assert_eq!(h.error_code(HQ), ErrorCode::Forbidden);
    assert!(h.records().is_empty());
}

#[test]
fn calls_of_a_lost_switch_release_the_callers_call_count() {
    let mut h = H::new();
    for round in 0..6 {
        let id = format!("r{round}");
        f1_connected(&mut h, &id);
        h.e.disconnected(h.now, BRANCH);
        h.advance(Duration::from_secs(1));
        h.e.switch_online(h.now, BRANCH, "branch", "trunkline", vec![]);
        h.e.reconcile(h.now, "branch", Some(&[]));
        h.drain();
        h.advance(RECONCILE_WAIT);
        assert_eq!(h.e.call_state(&id), None);
        assert_eq!(h.one_record().duration_ms, Some(0));
        h.out.clear();
    }
    assert_eq!(h.e.active_calls(), 0);
    h.msg(ALICE, r#"{"type":"dial","call_id":"after","to":"3001"}"#);
    assert_eq!(h.e.call_state("after"), Some(CallState::AwaitSwitchAnswer), "still allowed to dial");
}

#[test]
fn restarted_switch_that_replaced_its_old_connection_ends_the_calls_it_no_longer_lists() {
    // The gateway crashed without the server noticing (no RST: power cut), restarted and
    // signed in again on a new connection, replacing the old one.
    let mut h = H::new();
    f1_connected(&mut h, "kept");
    f1_connected(&mut h, "gone");
    h.advance(Duration::from_secs(9));
    h.e.switch_online(h.now, 21, "branch", "trunkline", vec![]);
    h.e.reconcile(h.now, "branch", Some(&["kept".to_string()]));
    h.drain();
    h.advance(RECONCILE_WAIT);
    assert_eq!(h.e.call_state("kept"), Some(CallState::Connected));
    assert_eq!(h.e.call_state("gone"), None);
    let r = h.one_record();
    assert_eq!((r.call_id.as_str(), r.outcome, r.duration_ms), ("gone", Outcome::Connected, Some(9_000)));
}

#[test]
fn trace_details_off_keeps_every_step_and_only_drops_the_text() {
    let mut h = H::new();
    h.e.set_trace_details(false);
    h.msg(HQ, r#"{"type":"route_query","call_id":"quiet","from":"1001","to":"3001"}"#);
    h.msg(BRANCH, r#"{"type":"query_answer","call_id":"quiet","answer":{"answer":"decline","reason":"busy"}}"#);
    let traces: Vec<(Step, String)> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Trace { step, detail, .. } => Some((*step, detail.clone())),
            _ => None,
        })
        .collect();
    assert!(!traces.is_empty() && traces.iter().all(|(_, d)| d.is_empty()), "{traces:?}");
    let r = h.one_record();
    assert_eq!(steps(&r), traces.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(","));
    assert_eq!(r.outcome, Outcome::Busy);
}
