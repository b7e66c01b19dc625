//! Malformed, oversized, binary, out-of-order and foreign messages over real WebSockets: each
//! gets a typed error, changes nothing, and the server keeps serving everyone else.

mod common;
use common::*;
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{ErrorCode, MAX_MESSAGE_BYTES, Outcome, ServerMsg};

#[tokio::test]
async fn malformed_messages_get_typed_errors_and_the_connection_stays_usable() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    let cases: &[(&str, ErrorCode)] = &[
        ("not json at all", ErrorCode::BadMessage),
        ("", ErrorCode::BadMessage),
        ("{}", ErrorCode::BadMessage),
        ("[1,2,3]", ErrorCode::BadMessage),
        (r#"{"type":"self_destruct"}"#, ErrorCode::BadMessage),
        (r#"{"type":"dial","call_id":7,"to":"3001"}"#, ErrorCode::BadMessage),
        (r#"{"type":"dial","to":"3001"}"#, ErrorCode::BadMessage),
        (r#"{"type":"dial","call_id":"a\u0000b","to":"3001"}"#, ErrorCode::InvalidField),
        (r#"{"type":"dial","call_id":"ok","to":"3001; drop table accounts"}"#, ErrorCode::InvalidField),
        (r#"{"type":"dial","call_id":"ok","to":"\u202e1001"}"#, ErrorCode::InvalidField),
        (r#"{"type":"signal","call_id":"x","key":"short","payload":{"kind":"offer","sdp":"v=0"}}"#, ErrorCode::InvalidField),
        (r#"{"type":"hangup","call_id":"nope"}"#, ErrorCode::UnknownCall),
        (r#"{"type":"cancel","call_id":"nope"}"#, ErrorCode::UnknownCall),
        (r#"{"type":"route_query","call_id":"x","from":"2001","to":"1001"}"#, ErrorCode::Forbidden),
        (r#"{"type":"query_answer","call_id":"x","answer":{"answer":"decline","reason":"busy"}}"#, ErrorCode::Forbidden),
    ];
    for (text, code) in cases {
        alice.send(text).await;
        match alice.recv().await {
            ServerMsg::Error { code: c, .. } => assert_eq!(c, *code, "for {text:?}"),
            other => panic!("for {text:?}: {other:?}"),
        }
    }
    // Binary frames are not part of the protocol.
    alice.send_raw(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into())).await.unwrap();
    alice.expect_error(ErrorCode::BadMessage).await;
    // Oversized but under the hard frame cap: typed error, connection kept.
    let big = format!(r#"{{"type":"dial","call_id":"big","to":"3001","pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
    alice.send(&big).await;
    alice.expect_error(ErrorCode::MessageTooLarge).await;
    // After all that, the same connection still places a call normally.
    let mut branch = srv.switch(BRANCH).await;
    alice.send(r#"{"type":"dial","call_id":"fine","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { call_id, .. } if call_id == "fine"));
}

#[tokio::test]
async fn huge_frames_close_only_that_connection() {
    let (srv, _tmp) = TestServer::start().await;
    let mut bob = srv.browser(BOB).await;
    let mut alice = srv.browser(ALICE).await;
    let huge = "y".repeat(1024 * 1024);
    let _ = alice.send_raw(Message::Text(huge.into())).await;
    alice.expect_closed().await;
    assert!(srv.is_running());
    assert!(bob.sync().await.is_empty(), "other connections are unaffected");
}

#[tokio::test]
async fn out_of_order_and_foreign_call_messages_change_nothing() {
    let (srv, _tmp) = TestServer::start().await;
    let mut hq = srv.switch(HQ).await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"c","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { .. }));
    // Bob meddles, hq answers for branch, branch jumps ahead.
    bob.send(r#"{"type":"cancel","call_id":"c"}"#).await;
    bob.expect_error(ErrorCode::NotYourCall).await;
    bob.send(r#"{"type":"dial","call_id":"c","to":"3001"}"#).await;
    bob.expect_error(ErrorCode::DuplicateCall).await;
    hq.send(&format!(r#"{{"type":"query_answer","call_id":"c","answer":{{"answer":"accept","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}}}"#)).await;
    hq.expect_error(ErrorCode::NotYourCall).await;
    branch.send(r#"{"type":"call_event","call_id":"c","event":{"event":"connected"}}"#).await;
    branch.expect_error(ErrorCode::WrongState).await;
    hq.send(r#"{"type":"route_query","call_id":"spoof","from":"3001","to":"2001"}"#).await;
    hq.expect_error(ErrorCode::Forbidden).await;
    assert!(alice.sync().await.is_empty(), "alice saw none of it");
    // The call carries on as if nothing happened.
    branch.send(r#"{"type":"query_answer","call_id":"c","answer":{"answer":"decline","reason":"busy"}}"#).await;
    assert_eq!(alice.expect_outcome("c").await.0, Outcome::Busy);
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_auth_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.limits.auth_timeout_secs = 1;
    provision(&cfg.database_url).await;
    let srv = TestServer::start_with(cfg).await;
    let mut idle = srv.client().await;
    idle.expect_error(ErrorCode::NotAuthenticated).await;
    idle.expect_closed().await;
}

#[tokio::test]
async fn message_floods_from_a_browser_are_throttled() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    for _ in 0..300 {
        alice.send(r#"{"type":"ping"}"#).await;
    }
    let (mut pongs, mut throttled) = (0, 0);
    for _ in 0..300 {
        match alice.recv().await {
            ServerMsg::Pong => pongs += 1,
            ServerMsg::Error { code: ErrorCode::TooManyRequests, .. } => throttled += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(throttled > 0 && pongs >= 100, "pongs {pongs}, throttled {throttled}");
}

#[tokio::test]
async fn plain_http_and_tcp_garbage_do_not_hurt_the_server() {
    let (srv, _tmp) = TestServer::start().await;
    let r = http_get(srv.addr, "/ws").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 4"), "{r}");
    let _ = http_request(srv.addr, "\x16\x03\x01\x02\x00garbage-that-is-not-http\r\n\r\n").await;
    let _ = http_request(
        srv.addr,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(http_get(srv.addr, "/healthz").await.unwrap().contains("ok"));
    srv.browser(ALICE).await;
    let m = http_get(srv.addr, "/metrics").await.unwrap();
    assert!(m.contains("200 OK"), "{m}");
}
