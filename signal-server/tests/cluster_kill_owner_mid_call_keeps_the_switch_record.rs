//! `kill -9` of the owning replica mid-call (issue 11, test 4, with a scripted switch): a
//! connected switch-carried call is not ended by the cloud (the switch hears no outcome; its
//! media path does not go through the cloud), and when the switch reports the end its record
//! arrives complete, with the switch's duration. Also when the switch's own link was on the
//! dead replica: it reconnects through the balancer, lists the call, then reports its end.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use trunkline_protocol::{CallEvent, Outcome, ServerMsg};

async fn connect_f1(alice: &mut Peer, branch: &mut Peer, call: &str) {
    alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"3001"}}"#)).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    branch.accept_query(call).await;
    alice.wait_for("connect", PROMPT, |m| matches!(m, ServerMsg::Connect { .. }).then_some(())).await;
    branch.event(call, "key_accepted").await;
    branch.event(call, "connected").await;
    alice
        .wait_for("connected", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Connected, .. }).then_some(()))
        .await;
}

/// Wait until `node`'s lease has lapsed by the database's clock (the cluster now treats it as
/// dead), then one more sweep.
async fn wait_lease_lapsed(cl: &Cluster, node: &str) {
    let deadline = tokio::time::Instant::now() + LEASE_TTL + AFTER_LEASE;
    loop {
        let left = cl.lease_left_ms(node).await;
        if left.is_some_and(|l| l < -300.0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{node}'s lease still runs: {left:?} ms");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn f1_owner_killed_mid_call_the_switch_keeps_the_call_and_its_end_report_makes_the_record() {
    let Some(mut cl) = Cluster::start("f1_owner_killed_mid_call", Opts::default()).await else { return };
    let mut branch = cl.switch(2, BRANCH).await;
    let mut alice = cl.browser(0, ALICE).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    connect_f1(&mut alice, &mut branch, "m1").await;

    cl.wait_attempt_written("m1", true, PROMPT).await;
    let token = alice.session_token.clone().unwrap();
    cl.kill9(0);
    let mut alice = cl.resume_via_lb(ALICE.0, &token, Duration::from_secs(3)).await;
    wait_lease_lapsed(&cl, "r1").await;
    // The cloud lost the owner, not the call: the switch is told nothing.
    let told: Vec<_> = branch.sync().await.into_iter().filter(|m| matches!(m, ServerMsg::Outcome { .. })).collect();
    assert!(told.is_empty(), "the switch carrying a connected call got {told:?}");

    branch.ended("m1", "connected", Some(61_000)).await;
    let rec = cl.record("m1", PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.duration_ms), ("connected", Some(61_000)), "{rec:?}");
    assert_eq!(rec.switch_id.as_deref(), Some("branch"));
    for m in alice.sync().await {
        if let ServerMsg::Outcome { outcome, duration_ms, .. } = m {
            assert_eq!((outcome, duration_ms), (Outcome::Connected, Some(61_000)));
        }
    }
    drop((alice, branch));
    cl.finish(&["m1"], PROMPT).await;
}

#[tokio::test]
async fn f1_owner_and_switch_link_on_the_killed_replica_the_switch_reconnects_and_its_end_report_makes_the_record() {
    let Some(mut cl) = Cluster::start("f1_owner_and_switch_killed_mid_call", Opts::default()).await else { return };
    let mut branch = cl.switch(0, BRANCH).await;
    let mut alice = cl.browser(0, ALICE).await;
    connect_f1(&mut alice, &mut branch, "m2").await;

    cl.wait_attempt_written("m2", true, PROMPT).await;
    cl.kill9(0);
    branch.expect_closed(PROMPT).await;
    let mut branch = cl.switch_via_lb(BRANCH, Some(&["m2"]), Duration::from_secs(3)).await;
    wait_lease_lapsed(&cl, "r1").await;
    let told: Vec<_> = branch.sync().await.into_iter().filter(|m| matches!(m, ServerMsg::Outcome { .. })).collect();
    assert!(told.is_empty(), "the switch still carrying the call got {told:?}");
    branch.ended("m2", "connected", Some(61_000)).await;
    let rec = cl.record("m2", PROMPT).await;
    assert_eq!((rec.outcome.as_str(), rec.duration_ms), ("connected", Some(61_000)), "{rec:?}");
    drop((alice, branch));
    cl.finish(&["m2"], PROMPT).await;
}
