//! A restart of the signal server on the same database keeps accounts, switches and call
//! records; attempts open at shutdown are ended and recorded, not lost.

mod common;
use common::*;
use signal_server::directory::Directory;
use signal_server::directory::sqlite::SqliteDirectory;
use trunkline_protocol::{Outcome, ServerMsg, Step};

#[tokio::test]
async fn restart_keeps_accounts_and_call_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = test_config(tmp.path());
    provision(&cfg.database_url).await;

    let srv = TestServer::start_with(cfg.clone()).await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"gone","to":"4040"}"#).await;
    alice.expect_error(trunkline_protocol::ErrorCode::InvalidCall).await;
    assert_eq!(alice.expect_outcome("gone").await.0, Outcome::RejectedInvalid);
    // One attempt still ringing when the server stops.
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"open","to":"2002"}"#).await;
    assert!(matches!(bob.recv().await, ServerMsg::Incoming { .. }));
    srv.stop().await.expect("clean stop");

    let srv = TestServer::start_with(cfg.clone()).await;
    srv.browser(ALICE).await;
    srv.switch(HQ).await;
    let dir = SqliteDirectory::open(&cfg.database_url).await.unwrap();
    let records = dir.call_records(None, 10).await.unwrap();
    let find = |id: &str| records.iter().find(|r| r.call_id == id).unwrap_or_else(|| panic!("record {id} kept"));
    let gone = find("gone");
    assert_eq!((gone.outcome, gone.caller.as_str(), gone.callee.as_str()), (Outcome::RejectedInvalid, "2001", "4040"));
    assert_eq!(gone.trace, vec![Step::A, Step::C1, Step::B3]);
    assert_eq!(find("open").outcome, Outcome::Error);
    assert_eq!(records.len(), 2);
    srv.stop().await.unwrap();
}
