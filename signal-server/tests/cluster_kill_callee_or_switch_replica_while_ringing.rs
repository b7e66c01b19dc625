//! `kill -9` of the replica holding the callee's connection (not the owner) while ringing
//! (issue 11, test 3): an F4 caller gets `callee_offline`; a browser whose callee switch's
//! replica dies during C11 gets `switch_unavailable`, and the switch is back through the
//! balancer. Timeouts are long, so only the replica's death can give these outcomes.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use trunkline_protocol::{CallEvent, Outcome, ServerMsg};

fn opts() -> Opts {
    Opts { ring_timeout_ms: 15_000, switch_answer_timeout_ms: 15_000, ..Opts::default() }
}

#[tokio::test]
async fn f4_callee_replica_killed_while_ringing_the_caller_gets_callee_offline() {
    let Some(mut cl) = Cluster::start("f4_callee_replica_killed", opts()).await else { return };
    let mut alice = cl.browser(0, ALICE).await;
    let mut bob = cl.browser(1, BOB).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    alice.send(r#"{"type":"dial","call_id":"c1","to":"2002"}"#).await;
    bob.wait_for("incoming", PROMPT, |m| matches!(m, ServerMsg::Incoming { .. }).then_some(())).await;
    alice
        .wait_for("ringing", PROMPT, |m| matches!(m, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }).then_some(()))
        .await;
    cl.kill9(1);
    assert_eq!(alice.expect_outcome("c1", LEASE_TTL + AFTER_LEASE).await.0, Outcome::CalleeOffline);
    assert_eq!(cl.record("c1", PROMPT).await.outcome, "callee_offline");
    drop((alice, bob));
    cl.finish(&["c1"], PROMPT).await;
}

#[tokio::test]
async fn f1_switch_replica_killed_during_c11_the_caller_gets_switch_unavailable_and_the_switch_comes_back() {
    let Some(mut cl) = Cluster::start("f1_switch_replica_killed", opts()).await else { return };
    let mut branch = cl.switch(2, BRANCH).await;
    let mut alice = cl.browser(0, ALICE).await;
    cl.wait_remote_presence(0, 1, PROMPT).await;
    alice.send(r#"{"type":"dial","call_id":"c2","to":"3001"}"#).await;
    branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { .. }).then_some(())).await;
    cl.kill9(2);
    branch.expect_closed(PROMPT).await;
    assert_eq!(alice.expect_outcome("c2", LEASE_TTL + AFTER_LEASE).await.0, Outcome::SwitchUnavailable);
    // The gateway's cloud link reconnects through the balancer (carrying nothing).
    let mut branch = cl.switch_via_lb(BRANCH, Some(&[]), Duration::from_secs(3)).await;
    assert_eq!(cl.record("c2", PROMPT).await.outcome, "switch_unavailable");
    // And it serves again: a new call reaches it. Right after the switch's sign-in on another
    // replica, r1 may not know yet (switch_unavailable at once): dial again until it rings.
    let mut calls = vec!["c2".to_string()];
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let call = format!("c3-{}", calls.len());
        calls.push(call.clone());
        alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"3001"}}"#)).await;
        let asked = tokio::select! {
            (o, _) = alice.expect_outcome(&call, PROMPT) => { assert_eq!(o, Outcome::SwitchUnavailable); false }
            _ = branch.wait_for("callee_query", PROMPT, |m| matches!(m, ServerMsg::CalleeQuery { call_id, .. } if *call_id == call).then_some(())) => true,
        };
        if asked {
            branch
                .send(&format!(r#"{{"type":"query_answer","call_id":"{call}","answer":{{"answer":"decline","reason":"busy"}}}}"#))
                .await;
            assert_eq!(alice.expect_outcome(&call, PROMPT).await.0, Outcome::Busy);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the switch back on another replica is not reached: {calls:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((alice, branch));
    cl.finish(&calls.iter().map(String::as_str).collect::<Vec<_>>(), PROMPT).await;
}
