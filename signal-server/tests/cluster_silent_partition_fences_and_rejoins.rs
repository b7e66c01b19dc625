//! A replica cut from NATS without its sockets closing (issue 11, test 5): its chaos proxy
//! black-holes every byte. The replica fences itself before its lease expires (readyz 503,
//! every WebSocket closed with 1012), its clients move through the balancer, the ringing
//! attempt it owned ends `error` for the callee, its connected switch-carried call is recorded
//! from the switch's report; healed, it rejoins and serves new calls.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use trunkline_protocol::{CallEvent, IncomingVia, Outcome, Route, ServerMsg};

#[tokio::test]
async fn replica_cut_from_nats_fences_before_its_lease_expires_its_clients_move_and_after_healing_it_rejoins_and_serves() {
    let opts = Opts { ring_timeout_ms: 15_000, ..Opts::default() };
    let Some(cl) = Cluster::start("replica_cut_from_nats", opts).await else { return };
    let mut alice = cl.browser(0, ALICE).await;
    let mut bob = cl.browser(1, BOB).await;
    let mut branch = cl.switch(2, BRANCH).await;
    cl.wait_remote_presence(0, 2, PROMPT).await;

    // r1 owns a connected F1 call (carried by branch on r3) and a ringing F4 attempt.
    alice.send(r#"{"type":"dial","call_id":"p1","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query("p1").await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event("p1", "key_accepted").await;
    branch.event("p1", "connected").await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    alice.send(r#"{"type":"dial","call_id":"p2","to":"2002"}"#).await;
    bob.wait_for("incoming", PROMPT, |m| matches!(m, ServerMsg::Incoming { via: IncomingVia::Peer { .. }, .. }).then_some(()))
        .await;

    cl.wait_attempt_written("p1", true, PROMPT).await;
    cl.wait_attempt_written("p2", false, PROMPT).await;
    let token = alice.session_token.clone().unwrap();
    cl.proxy(0).set(Chaos::Blackhole);
    // Fenced (readyz 503) before its lease, by the database's clock, runs out: the lease is read
    // first, then readyz, so a lapsed lease with readyz still 200 is a fence that came late.
    let deadline = tokio::time::Instant::now() + LEASE_TTL + AFTER_LEASE;
    loop {
        let left = cl.lease_left_ms("r1").await.expect("r1 has a lease row");
        let ready = cl.readyz(0).await;
        if ready == Some(503) {
            break;
        }
        assert!(left > 0.0 || ready != Some(200), "r1 still ready {} ms after its lease expired", -left);
        assert!(tokio::time::Instant::now() < deadline, "r1 still ready ({ready:?}) while cut from NATS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(alice.expect_closed(PROMPT).await, Some(1012), "sockets closed with 1012 (service restart)");
    assert_eq!(cl.replica(0).healthz().await, Some(200), "the process lives on");

    // Its clients move: the balancer skips r1 (not ready).
    let mut alice = cl.resume_via_lb(ALICE.0, &token, Duration::from_secs(3)).await;
    assert_eq!(bob.expect_outcome("p2", LEASE_TTL + AFTER_LEASE).await.0, Outcome::Error);
    let told: Vec<_> = branch.sync().await.into_iter().filter(|m| matches!(m, ServerMsg::Outcome { .. })).collect();
    assert!(told.is_empty(), "the switch carrying the connected call got {told:?}");
    branch.ended("p1", "connected", Some(7_000)).await;
    let rec = cl.record("p1", PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.duration_ms), ("connected", Some(7_000)));

    // Healed: r1 rejoins and serves a new call (hq on r1 calls alice, wherever she is now).
    cl.proxy(0).set(Chaos::Pass);
    cl.wait_ready(0, Duration::from_secs(10)).await;
    let mut hq = cl.switch(0, HQ).await;
    cl.wait_remote_presence(0, 3, PROMPT).await;
    hq.send(r#"{"type":"route_query","call_id":"p3","from":"1001","to":"2001"}"#).await;
    hq.wait_for("route", PROMPT, |m| matches!(m, ServerMsg::Route { route: Route::Device { .. }, .. }).then_some(())).await;
    hq.send(&format!(r#"{{"type":"direct_offer","call_id":"p3","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#)).await;
    alice
        .wait_for("incoming from r1", PROMPT, |m| {
            matches!(m, ServerMsg::Incoming { call_id, via: IncomingVia::Direct { .. }, .. } if call_id == "p3").then_some(())
        })
        .await;
    alice.send(r#"{"type":"decline","call_id":"p3","reason":"busy"}"#).await;
    assert_eq!(hq.expect_outcome("p3", PROMPT).await.0, Outcome::Busy);

    let status = cl.cli(1, &["cluster", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && ["r1", "r2", "r3"].iter().all(|n| text.contains(n)), "{status:?}");
    drop((alice, bob, branch, hq));
    cl.finish(&["p1", "p2", "p3"], PROMPT).await;
}

#[tokio::test]
async fn a_switch_end_report_sent_just_after_its_owner_was_cut_off_reaches_the_adopter() {
    // The owner's subscription to the call stays on the NATS server after the cut (the server
    // has not noticed yet), so the forwarded report goes there and gets no answer, rather than
    // "no responders". It must be asked again until the adopter answers, not dropped.
    let Some(cl) = Cluster::start("end_report_while_owner_cut_off", Opts::default()).await else { return };
    let mut alice = cl.browser(0, ALICE).await;
    let mut branch = cl.switch(2, BRANCH).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    alice.send(r#"{"type":"dial","call_id":"q1","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query("q1").await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event("q1", "key_accepted").await;
    branch.event("q1", "connected").await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
    cl.wait_attempt_written("q1", true, PROMPT).await;

    cl.proxy(0).set(Chaos::Blackhole);
    branch.ended("q1", "connected", Some(9_000)).await;
    let rec = cl.record("q1", LEASE_TTL + AFTER_LEASE + PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.duration_ms), ("connected", Some(9_000)), "the switch's report made the record");
    let errors: Vec<_> = branch.sync().await.into_iter().filter(|m| matches!(m, ServerMsg::Error { .. })).collect();
    assert!(errors.is_empty(), "the switch was told {errors:?}");

    cl.proxy(0).set(Chaos::Pass);
    cl.wait_ready(0, Duration::from_secs(10)).await;
    drop((alice, branch));
    cl.finish(&["q1"], PROMPT).await;
}
