//! Every flow across three replicas gives what one server gives (issue 11, test 1).
//!
//! Each flow is scripted once over "places" (which server each party signs in to) and run
//! twice: on one in-process server (SQLite) with every party on it, then on the cluster with
//! the parties spread over r1–r3. The call records' outcome and patent trace, and the messages
//! each party received for the call (by kind), must be equal.
//! Also Web Push wake-up and `session_replaced` across replicas.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::cluster::*;
use common::*;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use signal_server::directory::{Directory, PushSubscription};
use trunkline_protocol::{CallEvent, ErrorCode, IncomingVia, Outcome, Route, ServerMsg, SignalPayload};

/// Where parties sign in: three WebSocket URLs (all the same for the single server).
struct Places<'a> {
    urls: [String; 3],
    journal: Journal,
    cluster: Option<&'a Cluster>,
}

impl Places<'_> {
    /// On the cluster: wait until replica `i` sees `n` parties elsewhere (see
    /// [`Cluster::wait_remote_presence`]); one server sees its parties at once.
    async fn seen(&self, i: usize, n: usize) {
        if let Some(cl) = self.cluster {
            cl.wait_remote_presence(i, n, PROMPT).await;
        }
    }

    async fn browser(&self, i: usize, who: (&str, &str)) -> Peer {
        let mut p = Peer::try_connect(who.0, &self.urls[i], &self.journal).await.expect("connect");
        p.login(who).await.unwrap_or_else(|e| panic!("login {}: {e:?}", who.0));
        p
    }
    async fn switch(&self, i: usize, who: (&str, &str)) -> Peer {
        let mut p = Peer::try_connect(who.0, &self.urls[i], &self.journal).await.expect("connect");
        p.switch_auth(who).await.unwrap_or_else(|e| panic!("switch_auth {}: {e:?}", who.0));
        p
    }
}

fn call_of(m: &ServerMsg) -> Option<&str> {
    match m {
        ServerMsg::Error { call_id, .. } => call_id.as_deref(),
        ServerMsg::Route { call_id, .. }
        | ServerMsg::CalleeQuery { call_id, .. }
        | ServerMsg::Connect { call_id, .. }
        | ServerMsg::Peer { call_id, .. }
        | ServerMsg::Incoming { call_id, .. }
        | ServerMsg::Signal { call_id, .. }
        | ServerMsg::DirectSignal { call_id, .. }
        | ServerMsg::CallEvent { call_id, .. }
        | ServerMsg::Outcome { call_id, .. } => Some(call_id),
        _ => None,
    }
}

/// A message's kind, without keys or ids: `outcome:connected:true` (with a duration), `call_event:"ringing"`, …
fn kind(m: &ServerMsg) -> String {
    let v = serde_json::to_value(m).unwrap();
    let t = v["type"].as_str().unwrap_or("?").to_string();
    match m {
        // Durations the server measures differ run to run; the flows check the switches' values.
        ServerMsg::Outcome { outcome, duration_ms, .. } => format!("{t}:{outcome}:{}", duration_ms.is_some()),
        ServerMsg::CallEvent { event, .. } => format!("{t}:{}", serde_json::to_string(event).unwrap()),
        ServerMsg::Error { code, .. } => format!("{t}:{code}"),
        ServerMsg::Signal { payload, .. } | ServerMsg::DirectSignal { payload, .. } => {
            format!("{t}:{}", serde_json::to_value(payload).unwrap()["kind"])
        }
        ServerMsg::Route { route, .. } => format!("{t}:{}", serde_json::to_value(route).unwrap()["route"]),
        ServerMsg::Incoming { via, .. } => format!("{t}:{}", serde_json::to_value(via).unwrap()["via"]),
        _ => t,
    }
}

/// What each party received for `call`, sorted by kind (delivery order between replicas is
/// not the test's business; what arrives is).
fn received(journal: &Journal, call: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (party, m) in journal.lock().unwrap().iter() {
        if call_of(m) == Some(call) {
            out.entry(party.clone()).or_default().push(kind(m));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Let every peer take in what is still on its way for `call` (as many messages as the single
/// server sent it, within a deadline), then round-trip a ping.
async fn settle(peers: &mut [&mut Peer], journal: &Journal, call: &str, want: &BTreeMap<String, Vec<String>>) {
    for p in peers.iter_mut() {
        let n = want.get(&p.name).map_or(0, Vec::len);
        let deadline = tokio::time::Instant::now() + PROMPT;
        while received(journal, call).get(&p.name).map_or(0, Vec::len) < n && tokio::time::Instant::now() < deadline {
            if let Next::Closed(_) = p.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                break;
            }
        }
        p.sync().await;
    }
}

const SDP: &str = r#"{"kind":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}"#;

/// F4: browser alice (place 0) calls browser bob (place 1): incoming, peer, ringing, signal
/// relay both ways, accept, hangup.
async fn f4(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut alice = at.browser(0, ALICE).await;
    let mut bob = at.browser(1, BOB).await;
    at.seen(0, 1).await;
    alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"2002"}}"#)).await;
    let key = bob
        .wait_for("incoming", PROMPT, |m| match m {
            ServerMsg::Incoming { call_id, from, via: IncomingVia::Peer { key }, .. } if call_id == call && from == "2001" => {
                Some(key.clone())
            }
            _ => None,
        })
        .await;
    alice.wait_for("peer", PROMPT, |m| matches!(m, ServerMsg::Peer { key: k, .. } if *k == key).then_some(())).await;
    alice
        .wait_for("ringing", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }).then_some(()))
        .await;
    alice.send(&format!(r#"{{"type":"signal","call_id":"{call}","key":"{key}","payload":{SDP}}}"#)).await;
    bob.wait_for("offer", PROMPT, |m| matches!(m, ServerMsg::Signal { payload: SignalPayload::Offer { .. }, .. }).then_some(()))
        .await;
    bob.send(&format!(r#"{{"type":"accept","call_id":"{call}","key":"{key}"}}"#)).await;
    bob.send(&format!(r#"{{"type":"signal","call_id":"{call}","key":"{key}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    alice
        .wait_for("answer", PROMPT, |m| {
            matches!(m, ServerMsg::Signal { payload: SignalPayload::Answer { .. }, .. }).then_some(())
        })
        .await;
    alice.send(&format!(r#"{{"type":"hangup","call_id":"{call}"}}"#)).await;
    assert_eq!(alice.expect_outcome(call, PROMPT).await.0, Outcome::Connected);
    assert_eq!(bob.expect_outcome(call, PROMPT).await.0, Outcome::Connected);
    vec![alice, bob]
}

/// F1: browser alice (place 0) calls desk phone 3001 behind switch branch (place 2): C11,
/// C12, C13, C14 offer/answer through the cloud, the switch's events, its end report.
async fn f1(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut branch = at.switch(2, BRANCH).await;
    let mut alice = at.browser(0, ALICE).await;
    at.seen(0, 1).await;
    alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"3001"}}"#)).await;
    branch
        .wait_for("callee_query", PROMPT, |m| {
            matches!(m, ServerMsg::CalleeQuery { call_id, .. } if call_id == call).then_some(())
        })
        .await;
    branch.accept_query(call).await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { url, .. } if url == BRANCH_URL).then_some(())).await;
    alice.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{SDP}}}"#)).await;
    branch
        .wait_for("offer", PROMPT, |m| {
            matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Offer { .. }, .. }).then_some(())
        })
        .await;
    branch.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    alice
        .wait_for("answer", PROMPT, |m| {
            matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Answer { .. }, .. }).then_some(())
        })
        .await;
    branch.event(call, "key_accepted").await;
    branch.event(call, "ringing").await;
    branch.event(call, "connected").await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    branch.ended(call, "connected", Some(1_234)).await;
    assert_eq!(alice.expect_outcome(call, PROMPT).await, (Outcome::Connected, Some(1_234)));
    vec![alice, branch]
}

/// F3: desk phone 1001 behind hq (place 2) calls switchless browser alice (place 1): B6
/// route, C3 direct_offer to the browser, C14 offer from the browser to the switch.
async fn f3(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut hq = at.switch(2, HQ).await;
    let mut alice = at.browser(1, ALICE).await;
    at.seen(2, 1).await;
    hq.send(&format!(r#"{{"type":"route_query","call_id":"{call}","from":"1001","to":"2001"}}"#)).await;
    hq.wait_for("route", PROMPT, |m| matches!(m, ServerMsg::Route { route: Route::Device { .. }, .. }).then_some(())).await;
    hq.send(&format!(r#"{{"type":"direct_offer","call_id":"{call}","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#))
        .await;
    alice
        .wait_for("incoming", PROMPT, |m| {
            matches!(m, ServerMsg::Incoming { call_id, via: IncomingVia::Direct { .. }, .. } if call_id == call).then_some(())
        })
        .await;
    alice.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{SDP}}}"#)).await;
    hq.wait_for("offer", PROMPT, |m| {
        matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Offer { .. }, .. }).then_some(())
    })
    .await;
    hq.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    alice
        .wait_for("answer", PROMPT, |m| {
            matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Answer { .. }, .. }).then_some(())
        })
        .await;
    hq.event(call, "key_accepted").await;
    hq.event(call, "connected").await;
    hq.ended(call, "connected", Some(1_200)).await;
    assert_eq!(hq.expect_outcome(call, PROMPT).await, (Outcome::Connected, Some(1_200)));
    vec![alice, hq]
}

/// F2: desk phone 1001 behind hq (place 0) calls desk phone 3001 behind branch (place 2):
/// B5 route, C11/C12 at branch, C2 connect to hq, C14 between the two switches.
async fn f2(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut hq = at.switch(0, HQ).await;
    let mut branch = at.switch(2, BRANCH).await;
    at.seen(0, 1).await;
    hq.send(&format!(r#"{{"type":"route_query","call_id":"{call}","from":"1001","to":"3001"}}"#)).await;
    hq.wait_for("route", PROMPT, |m| matches!(m, ServerMsg::Route { route: Route::Switch { .. }, .. }).then_some(())).await;
    branch
        .wait_for("callee_query", PROMPT, |m| {
            matches!(m, ServerMsg::CalleeQuery { call_id, .. } if call_id == call).then_some(())
        })
        .await;
    branch.accept_query(call).await;
    hq.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { url, .. } if url == BRANCH_URL).then_some(())).await;
    hq.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{SDP}}}"#)).await;
    branch
        .wait_for("offer", PROMPT, |m| {
            matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Offer { .. }, .. }).then_some(())
        })
        .await;
    branch.send(&format!(r#"{{"type":"direct_signal","call_id":"{call}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    hq.wait_for("answer", PROMPT, |m| {
        matches!(m, ServerMsg::DirectSignal { payload: SignalPayload::Answer { .. }, .. }).then_some(())
    })
    .await;
    branch.event(call, "key_accepted").await;
    branch.event(call, "connected").await;
    hq.wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    branch.ended(call, "connected", Some(2_000)).await;
    assert_eq!(hq.expect_outcome(call, PROMPT).await, (Outcome::Connected, Some(2_000)));
    vec![hq, branch]
}

/// F5 (B3): a browser and a switch ask for a number that does not exist.
async fn f5(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut alice = at.browser(1, ALICE).await;
    alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"4040"}}"#)).await;
    alice.expect_error(ErrorCode::InvalidCall, PROMPT).await;
    assert_eq!(alice.expect_outcome(call, PROMPT).await.0, Outcome::RejectedInvalid);
    vec![alice]
}

async fn f5_switch(at: &Places<'_>, call: &str) -> Vec<Peer> {
    let mut hq = at.switch(2, HQ).await;
    hq.send(&format!(r#"{{"type":"route_query","call_id":"{call}","from":"1001","to":"4040"}}"#)).await;
    hq.wait_for("route invalid", PROMPT, |m| matches!(m, ServerMsg::Route { route: Route::Invalid { .. }, .. }).then_some(()))
        .await;
    assert_eq!(hq.expect_outcome(call, PROMPT).await.0, Outcome::RejectedInvalid);
    vec![hq]
}

const FLOWS: [&str; 6] = ["f4", "f1", "f3", "f2", "f5", "f5s"];

async fn run_flow(at: &Places<'_>, call: &str) -> Vec<Peer> {
    match call {
        "f4" => f4(at, call).await,
        "f1" => f1(at, call).await,
        "f3" => f3(at, call).await,
        "f2" => f2(at, call).await,
        "f5" => f5(at, call).await,
        _ => f5_switch(at, call).await,
    }
}

/// Per flow: the record's (outcome, trace) and the messages each party received.
type Seen = Vec<((String, String), BTreeMap<String, Vec<String>>)>;

#[tokio::test]
async fn every_flow_across_replicas_has_the_single_server_records_and_messages() {
    if !services_available("every_flow_across_replicas").await {
        return;
    }
    // The single server, with the cluster's steering timeouts.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    let o = Opts::default();
    cfg.steering.ring_timeout_ms = o.ring_timeout_ms;
    cfg.steering.key_ttl_ms = o.key_ttl_ms;
    cfg.steering.switch_answer_timeout_ms = o.switch_answer_timeout_ms;
    cfg.steering.direct_offer_timeout_ms = o.direct_offer_timeout_ms;
    provision(&cfg.database_url).await;
    let one = TestServer::start_with(cfg).await;
    let single =
        Places { urls: [one.ws_url.clone(), one.ws_url.clone(), one.ws_url.clone()], journal: Journal::default(), cluster: None };
    let sqlite = signal_server::directory::sqlite::SqliteDirectory::open(&one.db_url).await.unwrap();
    let mut want: Seen = vec![];
    for call in FLOWS {
        let mut peers = run_flow(&single, call).await;
        for p in &mut peers {
            p.sync().await;
        }
        let deadline = tokio::time::Instant::now() + PROMPT;
        let rec = loop {
            let recs = sqlite.call_records(None, 50).await.unwrap();
            if let Some(r) = recs.iter().find(|r| r.call_id == call) {
                break (r.outcome.as_str().to_string(), r.trace.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
            }
            assert!(tokio::time::Instant::now() < deadline, "single server: no record of {call}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        want.push((rec, received(&single.journal, call)));
    }
    one.stop().await.unwrap();

    let Some(cl) = Cluster::start("every_flow_across_replicas", Opts::default()).await else { return };
    let spread = Places { urls: [cl.ws(0), cl.ws(1), cl.ws(2)], journal: cl.journal.clone(), cluster: Some(&cl) };
    for (call, (want_rec, want_msgs)) in FLOWS.into_iter().zip(&want) {
        let mut peers = run_flow(&spread, call).await;
        let r = cl.record(call, PROMPT).await;
        // Late messages (from another replica) are taken in before comparing.
        settle(&mut peers.iter_mut().collect::<Vec<_>>(), &cl.journal, call, want_msgs).await;
        assert_eq!(&(r.outcome, r.trace), want_rec, "{call}: record (outcome, trace) on the cluster vs one server");
        assert_eq!(&received(&cl.journal, call), want_msgs, "{call}: messages per party on the cluster vs one server");
        // Every flow starts with nobody signed in: then "r1 sees one party elsewhere" means
        // this flow's party, not the last flow's on its way out.
        drop(peers);
        for i in 0..3 {
            cl.wait_remote_presence(i, 0, PROMPT).await;
        }
    }
    cl.finish(&FLOWS, PROMPT).await;
}

#[tokio::test]
async fn session_replaced_across_replicas_closes_the_old_socket_and_calls_reach_the_new_one() {
    let Some(cl) = Cluster::start("session_replaced_across_replicas", Opts::default()).await else { return };
    let mut old = cl.browser(0, BOB).await;
    let token = old.session_token.clone().unwrap();
    // The same session resumed on r3.
    let mut new = cl.connect(BOB.0, &cl.ws(2)).await;
    new.resume(&token).await.expect("resume on r3");
    old.expect_error(ErrorCode::SessionReplaced, PROMPT).await;
    old.expect_closed(PROMPT).await;
    let mut alice = cl.browser(1, ALICE).await;
    // r2 learns that bob moved from r3's presence broadcast, which r1's close of the old socket
    // does not wait for. A dial r2 takes in the moment before is lost: either bob is still on
    // r1 for r2 (the call is lost with the old connection and ends `callee_offline` once the
    // move arrives), or r1's close has arrived and r3's news has not (bob has no live
    // connection for r2: `callee_offline` at once, to alice only). As on one server, a callee
    // that reconnects while a call is being set up misses it. Dial again then; within the
    // prompt a call must reach bob on r3.
    let mut ids: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPT;
    let id = loop {
        let id = format!("sr{}", ids.len() + 1);
        ids.push(id.clone());
        alice.send(&format!(r#"{{"type":"dial","call_id":"{id}","to":"2002"}}"#)).await;
        let reached = tokio::select! {
            () = new.wait_for("incoming on r3", PROMPT, |m| match m {
                ServerMsg::Incoming { call_id, .. } if *call_id == id => Some(()),
                _ => None,
            }) => true,
            (outcome, _) = alice.expect_outcome(&id, PROMPT) => {
                assert_eq!(outcome, Outcome::CalleeOffline, "{id}: the only way a dial to bob may end before ringing him");
                false
            }
        };
        if reached {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no call reached bob on r3 within {PROMPT:?}: {ids:?}");
    };
    alice.send(&format!(r#"{{"type":"cancel","call_id":"{id}"}}"#)).await;
    assert_eq!(alice.expect_outcome(&id, PROMPT).await.0, Outcome::Cancelled);
    assert_eq!(new.expect_outcome(&id, PROMPT).await.0, Outcome::Cancelled);
    // A second password sign-in of the same number on r2 replaces r3's connection too.
    let mut third = cl.browser(1, BOB).await;
    new.expect_error(ErrorCode::SessionReplaced, PROMPT).await;
    new.expect_closed(PROMPT).await;
    assert!(third.sync().await.is_empty());
    drop((old, alice, third));
    cl.finish(&ids.iter().map(String::as_str).collect::<Vec<_>>(), PROMPT).await;
}

#[tokio::test]
async fn a_browser_moving_to_a_replica_that_just_joined_is_reachable_from_the_others_at_once() {
    // r3 restarts with a new incarnation, just after r2's periodic read of the live leases.
    // When bob's session moves to r3, r2 must not take him for offline (nor keep him on r1)
    // until its next lease tick: it reads the live set as soon as a row names a replica it
    // does not know. Reads 5 s apart make the periodic read easy to tell apart.
    let opts = Opts { lease_ttl_ms: 15_000, lease_renew_ms: 5_000, ..Opts::default() };
    let Some(mut cl) = Cluster::start("moving_to_a_replica_that_just_joined", opts).await else { return };
    nodes_live_seen_by(&cl, 1, 3).await;
    cl.replica(2).sigterm();
    let status = cl.replica_mut(2).wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "r3 stops cleanly on SIGTERM: {status:?}");
    nodes_live_seen_by(&cl, 1, 2).await;
    let renewals = lease_renewals(&cl, 1).await;
    cl.restart(2).await;
    let mut old = cl.browser(0, BOB).await;
    let token = old.session_token.clone().unwrap();
    let mut alice = cl.browser(1, ALICE).await;
    cl.wait_remote_presence(1, 1, PROMPT).await;
    let mut new = cl.connect(BOB.0, &cl.ws(2)).await;
    new.resume(&token).await.expect("resume on the restarted r3");
    old.expect_error(ErrorCode::SessionReplaced, PROMPT).await;
    nodes_live_seen_by(&cl, 1, 3).await;
    assert_eq!(
        lease_renewals(&cl, 1).await,
        renewals,
        "r2 learnt of the restarted r3 from bob's presence row, not from its next lease tick"
    );
    alice.send(r#"{"type":"dial","call_id":"mj1","to":"2002"}"#).await;
    new.wait_for("incoming on the restarted r3", PROMPT, |m| {
        matches!(m, ServerMsg::Incoming { call_id, .. } if call_id == "mj1").then_some(())
    })
    .await;
    alice.send(r#"{"type":"cancel","call_id":"mj1"}"#).await;
    assert_eq!(alice.expect_outcome("mj1", PROMPT).await.0, Outcome::Cancelled);
    assert_eq!(new.expect_outcome("mj1", PROMPT).await.0, Outcome::Cancelled);
    drop((old, alice, new));
    cl.finish(&["mj1"], PROMPT).await;
}

/// Wait until replica `i`'s last read of the leases found `n` live replicas.
async fn nodes_live_seen_by(cl: &Cluster, i: usize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while cl.metric(i, "trunkline_cluster_nodes_live").await != Some(n as f64) {
        assert!(std::time::Instant::now() < deadline, "{} never counted {n} live replicas", Cluster::node(i));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Replica `i`'s lease renewals that worked so far (each is followed by a live-set read).
async fn lease_renewals(cl: &Cluster, i: usize) -> f64 {
    cl.metric(i, r#"trunkline_cluster_lease_renew_total{result="ok"}"#).await.unwrap_or(0.0)
}

/// A local push service: every POST to `/push/{id}` is answered 201 and reported.
async fn push_service() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use axum::extract::{Path, State};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new()
        .route(
            "/push/{id}",
            axum::routing::post(
                |State(tx): State<tokio::sync::mpsc::UnboundedSender<String>>, Path(id): Path<String>| async move {
                    let _ = tx.send(id);
                    axum::http::StatusCode::CREATED
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/push"), rx)
}

/// A browser's push subscription keys (a P-256 point and a 16-byte secret).
fn subscription(number: &str, endpoint: &str) -> PushSubscription {
    use rand::RngCore;
    let secret = loop {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        if let Ok(k) = p256::SecretKey::from_slice(&b) {
            break k;
        }
    };
    let mut auth = [0u8; 16];
    rand::rng().fill_bytes(&mut auth);
    PushSubscription {
        number: number.into(),
        endpoint: endpoint.into(),
        p256dh: B64.encode(secret.public_key().to_encoded_point(false).as_bytes()),
        auth: B64.encode(auth),
    }
}

#[tokio::test]
async fn web_push_wakes_an_offline_browser_that_then_signs_in_on_another_replica_and_connects() {
    let opts = Opts { ring_timeout_ms: 10_000, ..Opts::default() };
    let Some(cl) = Cluster::start("web_push_across_replicas", opts).await else { return };
    let (base, mut pushes) = push_service().await;
    let dir = signal_server::directory::open(&cl.db.url, &Default::default()).await.unwrap();
    dir.add_push_subscription(subscription(BOB.0, &format!("{base}/bob"))).await.unwrap();

    let mut alice = cl.browser(0, ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"wake","to":"2002"}"#).await;
    let pushed = tokio::time::timeout(PROMPT, pushes.recv()).await.expect("a push").unwrap();
    assert_eq!(pushed, "bob");
    assert!(alice.sync().await.is_empty(), "the caller waits for the woken callee");

    // The woken app signs in on r2 and is rung at once.
    let mut bob = cl.browser(1, BOB).await;
    let key = bob
        .wait_for("incoming after the wake-up", PROMPT, |m| match m {
            ServerMsg::Incoming { call_id, via: IncomingVia::Peer { key }, .. } if call_id == "wake" => Some(key.clone()),
            _ => None,
        })
        .await;
    alice.wait_for("peer", PROMPT, |m| matches!(m, ServerMsg::Peer { key: k, .. } if *k == key).then_some(())).await;
    bob.send(&format!(r#"{{"type":"accept","call_id":"wake","key":"{key}"}}"#)).await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    alice.send(r#"{"type":"hangup","call_id":"wake"}"#).await;
    assert_eq!(alice.expect_outcome("wake", PROMPT).await.0, Outcome::Connected);
    assert_eq!(bob.expect_outcome("wake", PROMPT).await.0, Outcome::Connected);
    let rec = cl.record("wake", PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.trace.as_str()), ("connected", "A,C1,B4,B6,Push,F4,F4"));
    assert!(pushes.try_recv().is_err(), "one push, by one replica");
    drop((alice, bob));
    cl.finish(&["wake"], PROMPT).await;
}
