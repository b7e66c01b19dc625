//! `kill -9` of the replica that owns a ringing attempt (issue 11, test 2). The owner is the
//! replica where the attempt started: the caller's for a browser `dial`, the caller switch's
//! for a `route_query`. Another replica adopts the attempt: the other party gets a typed
//! outcome within `lease_ttl_ms` + 2 s, the caller is back (`resume` through the balancer)
//! within 3 s, and a switch-carried call goes on and is recorded from the switch's end report.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use trunkline_protocol::{CallEvent, IncomingVia, Outcome, ServerMsg};

const BACK: Duration = Duration::from_secs(3);

fn opts() -> Opts {
    // A long ring timeout, so only the owner's death can end the ringing.
    Opts { ring_timeout_ms: 15_000, switch_answer_timeout_ms: 15_000, ..Opts::default() }
}

#[tokio::test]
async fn f4_owner_killed_while_ringing_the_callee_gets_error_and_the_caller_resumes_elsewhere() {
    let Some(mut cl) = Cluster::start("f4_owner_killed_while_ringing", opts()).await else { return };
    let mut alice = cl.browser(0, ALICE).await;
    let mut bob = cl.browser(1, BOB).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    alice.send(r#"{"type":"dial","call_id":"k1","to":"2002"}"#).await;
    bob.wait_for("incoming", PROMPT, |m| matches!(m, ServerMsg::Incoming { via: IncomingVia::Peer { .. }, .. }).then_some(()))
        .await;
    alice
        .wait_for("ringing", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }).then_some(()))
        .await;

    cl.wait_attempt_written("k1", false, PROMPT).await;
    let token = alice.session_token.clone().unwrap();
    cl.kill9(0);
    assert_eq!(bob.expect_outcome("k1", LEASE_TTL + AFTER_LEASE).await.0, Outcome::Error, "typed outcome for the callee");
    alice.expect_closed(PROMPT).await;
    let mut alice = cl.resume_via_lb(ALICE.0, &token, BACK).await;
    // If the adopting replica tells the caller too, it says `error`, once (journal invariant).
    for m in alice.sync().await {
        if let ServerMsg::Outcome { call_id, outcome, .. } = m {
            assert_eq!((call_id.as_str(), outcome), ("k1", Outcome::Error));
        }
    }
    let rec = cl.record("k1", PROMPT).await;
    assert_eq!(rec.outcome, "error");
    drop((alice, bob));
    cl.finish(&["k1"], PROMPT).await;
}

#[tokio::test]
async fn f1_owner_killed_while_the_desk_phone_rings_the_switch_end_report_makes_the_record() {
    let Some(mut cl) = Cluster::start("f1_owner_killed_while_ringing", opts()).await else { return };
    let mut branch = cl.switch(2, BRANCH).await;
    let mut alice = cl.browser(0, ALICE).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    alice.send(r#"{"type":"dial","call_id":"k2","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query("k2").await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event("k2", "key_accepted").await;
    branch.event("k2", "ringing").await;
    alice
        .wait_for("ringing", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }).then_some(()))
        .await;

    // The steps asserted below must be stored before the kill (later states are written behind).
    cl.wait_attempt_trace("k2", "C13", PROMPT).await;
    let token = alice.session_token.clone().unwrap();
    cl.kill9(0);
    let mut alice = cl.resume_via_lb(ALICE.0, &token, BACK).await;
    // The switch rang its phone on; nobody answered. Its report goes to r3, the owner is gone.
    branch.ended("k2", "no_answer", None).await;
    let rec = cl.record("k2", LEASE_TTL + AFTER_LEASE + PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.switch_id.as_deref()), ("no_answer", Some("branch")));
    assert!(rec.trace.starts_with("A,C1,B4,B5,C11,C12,C13"), "{}", rec.trace);
    for m in branch.sync().await.into_iter().chain(alice.sync().await) {
        if let ServerMsg::Outcome { outcome, .. } = m {
            assert_eq!(outcome, Outcome::NoAnswer, "any outcome told is the switch's");
        }
    }
    drop((alice, branch));
    cl.finish(&["k2"], PROMPT).await;
}

#[tokio::test]
async fn f2_owner_is_the_caller_switch_replica_killed_while_ringing_the_callee_switch_report_makes_the_record() {
    let Some(mut cl) = Cluster::start("f2_owner_killed_while_ringing", opts()).await else { return };
    let mut hq = cl.switch(0, HQ).await;
    let mut branch = cl.switch(1, BRANCH).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    hq.send(r#"{"type":"route_query","call_id":"k3","from":"1001","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query("k3").await;
    hq.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event("k3", "key_accepted").await;
    branch.event("k3", "ringing").await;
    hq.wait_for("ringing", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }).then_some(())).await;

    cl.wait_attempt_written("k3", false, PROMPT).await;
    cl.kill9(0);
    hq.expect_closed(PROMPT).await;
    // The caller's gateway reconnects through the balancer, still carrying the call.
    let mut hq = cl.switch_via_lb(HQ, Some(&["k3"]), BACK).await;
    branch.ended("k3", "no_answer", None).await;
    let rec = cl.record("k3", LEASE_TTL + AFTER_LEASE + PROMPT).await;
    assert_eq!(rec.outcome, "no_answer");
    for m in branch.sync().await.into_iter().chain(hq.sync().await) {
        if let ServerMsg::Outcome { outcome, .. } = m {
            assert_eq!(outcome, Outcome::NoAnswer);
        }
    }
    drop((hq, branch));
    cl.finish(&["k3"], PROMPT).await;
}
