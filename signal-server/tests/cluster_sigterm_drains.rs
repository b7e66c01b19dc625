//! SIGTERM drain with calls in every state (issue 11, test 6): readyz 503 at once, `/ws`
//! upgrades refused with 503, a `dial` on an existing connection refused `unavailable`, an
//! attempt waiting for a switch's answer gets it, the ringing attempt runs out (`no_answer`), the connected switch-carried call is handed over
//! (recorded later from the switch's report, through another replica), and the process exits
//! by itself within `drain_timeout_secs`.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use trunkline_protocol::{CallEvent, ErrorCode, IncomingVia, Outcome, ServerMsg};

#[tokio::test]
async fn sigterm_drains_a_replica_with_calls_connected_ringing_and_awaiting_a_switch_then_exits() {
    let opts = Opts::default();
    let drain = Duration::from_secs(opts.drain_timeout_secs);
    let ring = Duration::from_millis(opts.ring_timeout_ms);
    let Some(mut cl) = Cluster::start("sigterm_drains", opts).await else { return };
    let mut alice = cl.browser(0, ALICE).await;
    let mut bob = cl.browser(1, BOB).await;
    let mut branch = cl.switch(2, BRANCH).await;
    let mut hq = cl.switch(1, HQ).await;
    cl.wait_remote_presence(0, 3, PROMPT).await;

    // Connected (F1, carried by branch), ringing (F4) and waiting for a switch's answer (C11 at
    // hq), all owned by r1.
    alice.send(r#"{"type":"dial","call_id":"d1","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query("d1").await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event("d1", "key_accepted").await;
    branch.event("d1", "connected").await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    alice.send(r#"{"type":"dial","call_id":"d2","to":"2002"}"#).await;
    bob.wait_for("incoming", PROMPT, |m| matches!(m, ServerMsg::Incoming { via: IncomingVia::Peer { .. }, .. }).then_some(()))
        .await;

    alice.send(r#"{"type":"dial","call_id":"d4","to":"1001"}"#).await;
    hq.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;

    cl.replica(0).sigterm();
    cl.replica(0).wait_status("/readyz", 503, Duration::from_secs(1)).await;
    match tokio_tungstenite::connect_async(cl.ws(0)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a WebSocket upgrade on a draining replica: {:?}", other.map(|(_, r)| r.status())),
    }
    alice.send(r#"{"type":"dial","call_id":"d3","to":"2002"}"#).await;
    alice.expect_error(ErrorCode::Unavailable, PROMPT).await;

    // Attempts under way run their course: the switch's late answer still counts, the ringing
    // runs out.
    hq.send(r#"{"type":"query_answer","call_id":"d4","answer":{"answer":"decline","reason":"busy"}}"#).await;
    assert_eq!(alice.expect_outcome("d4", PROMPT).await.0, Outcome::Busy);
    assert_eq!(bob.expect_outcome("d2", ring + PROMPT).await.0, Outcome::NoAnswer);
    let status = cl.replica_mut(0).wait_exit(drain + Duration::from_secs(2)).await;
    assert!(status.success(), "drained exit: {status:?}");

    // The connected call was handed over: the switch was told nothing and reports its end.
    let told: Vec<_> = branch.sync().await.into_iter().filter(|m| matches!(m, ServerMsg::Outcome { .. })).collect();
    assert!(told.is_empty(), "the switch carrying the connected call got {told:?}");
    branch.ended("d1", "connected", Some(9_000)).await;
    let rec = cl.record("d1", PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.duration_ms), ("connected", Some(9_000)));
    assert_eq!(cl.record("d2", PROMPT).await.outcome, "no_answer");
    assert!(cl.records().await.iter().all(|r| r.call_id != "d3"), "a refused dial leaves no record");
    drop((alice, bob, branch, hq));
    cl.finish(&["d1", "d2", "d4"], PROMPT).await;
}
