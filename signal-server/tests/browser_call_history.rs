//! A browser reads its own call history (the server's call records, newest first) with
//! `history`; it sees only calls it was party to, and bad limits get a typed error.

mod common;
use common::*;
use trunkline_protocol::{ErrorCode, Outcome, ServerMsg};

#[tokio::test]
async fn browser_gets_its_call_records_newest_first_and_only_its_own() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"h1","to":"4040"}"#).await;
    alice.expect_error(ErrorCode::InvalidCall).await;
    assert_eq!(alice.expect_outcome("h1").await.0, Outcome::RejectedInvalid);
    alice.send(r#"{"type":"dial","call_id":"h2","to":"2002"}"#).await;
    assert!(matches!(bob.recv().await, ServerMsg::Incoming { .. }));
    bob.send(r#"{"type":"decline","call_id":"h2","reason":"declined"}"#).await;
    assert_eq!(alice.expect_outcome("h2").await.0, Outcome::Declined);
    assert_eq!(bob.expect_outcome("h2").await.0, Outcome::Declined);
    // Records are written in the background, in batches: ask every `POLL` until both
    // are there (bounded by `WAIT`).
    let deadline = tokio::time::Instant::now() + WAIT;
    let calls = loop {
        alice.send(r#"{"type":"history","limit":10}"#).await;
        match alice.recv().await {
            ServerMsg::History { calls } if calls.len() == 2 => break calls,
            ServerMsg::History { .. } => assert!(tokio::time::Instant::now() < deadline, "records never appeared"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(calls[0].call_id, "h2", "newest first");
    assert_eq!((calls[0].caller.as_str(), calls[0].callee.as_str(), calls[0].outcome), ("2001", "2002", Outcome::Declined));
    assert_eq!((calls[1].call_id.as_str(), calls[1].outcome), ("h1", Outcome::RejectedInvalid));
    // Bob sees only the call he was in.
    bob.send(r#"{"type":"history"}"#).await;
    match bob.recv().await {
        ServerMsg::History { calls } => assert_eq!(calls.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(), ["h2"]),
        other => panic!("{other:?}"),
    }
    alice.send(r#"{"type":"history","limit":0}"#).await;
    alice.expect_error(ErrorCode::InvalidField).await;
    // Switches have no history.
    let mut hq = srv.switch(HQ).await;
    hq.send(r#"{"type":"history"}"#).await;
    hq.expect_error(ErrorCode::Forbidden).await;
}
