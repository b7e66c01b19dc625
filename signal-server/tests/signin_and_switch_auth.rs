//! Sign-in over real WebSockets: browsers (password, session resume), switches (secret),
//! wrong credentials, rate limits, and what an unauthenticated connection may do.

mod common;
use common::*;
use std::time::Duration;

use trunkline_protocol::{ErrorCode, ServerMsg};

#[tokio::test]
async fn browser_login_ok_gets_welcome_with_session_token_and_resume_works_after_reconnect() {
    let (srv, _tmp) = TestServer::start().await;
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    let token = match c.recv().await {
        ServerMsg::Welcome { number, display_name, kind, session_token, .. } => {
            assert_eq!((number.as_str(), display_name.as_str()), ("2001", "User 2001"));
            assert_eq!(kind, trunkline_protocol::AccountKind::Browser);
            assert_eq!(session_token.len(), 43);
            session_token
        }
        other => panic!("{other:?}"),
    };
    drop(c);
    let mut again = srv.client().await;
    again.send(&format!(r#"{{"type":"resume","v":1,"token":"{token}"}}"#)).await;
    let rotated = match again.recv().await {
        ServerMsg::Welcome { number, session_token, .. } => {
            assert_eq!(number, "2001");
            session_token
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(rotated, token, "each resume hands out a fresh token");
    assert!(again.sync().await.is_empty());
    drop(again);
    let mut third = srv.client().await;
    third.send(&format!(r#"{{"type":"resume","v":1,"token":"{rotated}"}}"#)).await;
    assert!(matches!(third.recv().await, ServerMsg::Welcome { .. }));
    // A made-up token is refused and the connection closed.
    let mut bad = srv.client().await;
    bad.send(r#"{"type":"resume","v":1,"token":"made-up-token"}"#).await;
    bad.expect_error(ErrorCode::AuthFailed).await;
    bad.expect_closed().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_number_get_the_same_error_and_are_closed() {
    let (srv, _tmp) = TestServer::start().await;
    let mut msgs = vec![];
    for (number, pw) in [("2001", "wrong"), ("9999", "whatever")] {
        let mut c = srv.client().await;
        c.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"{pw}"}}"#)).await;
        msgs.push(c.expect_error(ErrorCode::AuthFailed).await);
        c.expect_closed().await;
    }
    assert_eq!(msgs[0], msgs[1], "no way to tell a wrong password from an unknown number");
    // The real password still works.
    srv.browser(ALICE).await;
}

/// A server whose backoff is long enough that no test step can outlast it.
async fn server_with_slow_backoff(per_address: Option<u32>) -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.auth.backoff_base_secs = 600;
    cfg.auth.backoff_max_secs = 600;
    if let Some(n) = per_address {
        cfg.auth.max_failures_per_address = n;
    }
    provision(&cfg.database_url).await;
    (TestServer::start_with(cfg).await, tmp)
}

#[tokio::test]
async fn repeated_failures_back_off_that_account_from_that_address_even_with_the_right_password() {
    let (srv, _tmp) = server_with_slow_backoff(None).await;
    for _ in 0..5 {
        let mut c = srv.client().await;
        c.send(r#"{"type":"login","v":1,"number":"2001","password":"guess"}"#).await;
        c.expect_error(ErrorCode::AuthFailed).await;
    }
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    let msg = c.expect_error(ErrorCode::RateLimited).await;
    assert!(msg.contains("retry in 600 s"), "{msg}");
    c.expect_closed().await;
    // Another account from the same address is not held back (5 < 20 per address)…
    srv.browser(BOB).await;
    // …nor the same account from another address.
    let mut real = Client::connect_from(&srv.ws_url, "127.0.0.2".parse().unwrap()).await;
    real.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    assert!(matches!(real.recv().await, ServerMsg::Welcome { .. }));
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_address() {
    let (srv, _tmp) = server_with_slow_backoff(Some(3)).await;
    for number in ["7001", "7002", "7003"] {
        let mut c = srv.client().await;
        c.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"x"}}"#)).await;
        c.expect_error(ErrorCode::AuthFailed).await;
    }
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, BOB.0, BOB.1)).await;
    c.expect_error(ErrorCode::RateLimited).await;
}

#[tokio::test]
async fn switch_auth_ok_lists_its_phones_and_wrong_secret_is_refused() {
    let (srv, _tmp) = TestServer::start().await;
    let mut c = srv.client().await;
    // As a gateway of this version signs in: no direct_urls (it listens for no caller).
    c.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"hq","secret":"{}"}}"#, HQ.1)).await;
    match c.recv().await {
        ServerMsg::SwitchWelcome { switch_id, sip_realm, phones, .. } => {
            assert_eq!((switch_id.as_str(), sip_realm.as_str()), ("hq", "trunkline"));
            let numbers: Vec<_> = phones.iter().map(|p| p.number.as_str()).collect();
            assert_eq!(numbers, ["1001", "1002"]);
            // Digest verifiers, never passwords.
            assert_eq!(phones[0].ha1_md5, signal_server::credentials::ha1_md5("1001", "trunkline", "phone-1001"));
            assert_eq!(phones[0].ha1_sha256.len(), 64);
        }
        other => panic!("{other:?}"),
    }
    for (id, secret) in [("hq", "wrong-secret-0123456789"), ("nosuch", "wrong-secret-0123456789")] {
        let mut bad = srv.client().await;
        bad.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"{id}","secret":"{secret}"}}"#)).await;
        bad.expect_error(ErrorCode::AuthFailed).await;
        bad.expect_closed().await;
    }
    // The rightful switch connection was not disturbed.
    assert!(c.sync().await.is_empty());
    // Online, and advertising nothing: the directory (admin views) lists no direct_urls.
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(&srv.db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = signal_server::directory::Directory::list_switches(&dir).await.unwrap();
        let hq = list.iter().find(|s| s.id == "hq").unwrap();
        if hq.online {
            assert!(hq.direct_urls.is_empty(), "{hq:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hq never shown online: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_older_gateway_s_direct_urls_are_checked_and_kept_for_the_admin_views_only() {
    let (srv, _tmp) = TestServer::start().await;
    // Not a ws:// / wss:// address: refused like any malformed field.
    let mut bad = srv.client().await;
    bad.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"hq","secret":"{}","direct_urls":["http://gw"]}}"#, HQ.1))
        .await;
    bad.expect_error(ErrorCode::InvalidField).await;
    // A wss:// one signs in, and the directory shows what it advertised …
    let old = "wss://gw.example:7443/direct";
    let mut hq = srv.client().await;
    hq.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"hq","secret":"{}","direct_urls":["{old}"]}}"#, HQ.1)).await;
    assert!(matches!(hq.recv().await, ServerMsg::SwitchWelcome { .. }));
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(&srv.db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = signal_server::directory::Directory::list_switches(&dir).await.unwrap();
        if list.iter().any(|s| s.id == "hq" && s.online && s.direct_urls == [old]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hq's advertised urls not listed: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // … but a caller is handed the switch's name, never that address.
    let mut hq_phone_caller = srv.browser(ALICE).await;
    hq_phone_caller.send(r#"{"type":"dial","call_id":"old-gw","to":"1001"}"#).await;
    match hq.recv().await {
        ServerMsg::CalleeQuery { call_id, .. } => assert_eq!(call_id, "old-gw"),
        other => panic!("{other:?}"),
    }
    hq.send(&format!(
        r#"{{"type":"query_answer","call_id":"old-gw","answer":{{"answer":"accept","url":"{old}","key":"{KEY}","expires_in_ms":30000}}}}"#
    ))
    .await;
    hq.expect_error(ErrorCode::InvalidField).await;
    hq.send(&format!(
        r#"{{"type":"query_answer","call_id":"old-gw","answer":{{"answer":"accept","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}}}"#
    ))
    .await;
    match hq_phone_caller.recv().await {
        ServerMsg::Connect { url, .. } => assert_eq!(url, "switch:hq"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn desk_phone_accounts_cannot_sign_in_as_browsers() {
    let (srv, _tmp) = TestServer::start().await;
    let mut c = srv.client().await;
    c.send(r#"{"type":"login","v":1,"number":"1001","password":"phone-1001"}"#).await;
    let msg = c.expect_error(ErrorCode::Forbidden).await;
    assert!(msg.contains("SIP"), "{msg}");
}

#[tokio::test]
async fn first_message_must_sign_in_and_version_must_match() {
    let (srv, _tmp) = TestServer::start().await;
    let mut c = srv.client().await;
    c.send(r#"{"type":"dial","call_id":"x","to":"1001"}"#).await;
    c.expect_error(ErrorCode::NotAuthenticated).await;
    c.expect_closed().await;
    let mut c = srv.client().await;
    c.send(r#"{"type":"login","v":2,"number":"2001","password":"x"}"#).await;
    c.expect_error(ErrorCode::UnsupportedVersion).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_browser_replaces_the_first() {
    let (srv, _tmp) = TestServer::start().await;
    let mut first = srv.browser(ALICE).await;
    let mut second = srv.browser(ALICE).await;
    first.expect_error(ErrorCode::SessionReplaced).await;
    first.expect_closed().await;
    // Calls now reach the second connection.
    let mut bob = srv.browser(BOB).await;
    bob.send(r#"{"type":"dial","call_id":"r1","to":"2001"}"#).await;
    assert!(matches!(second.recv().await, ServerMsg::Incoming { call_id, .. } if call_id == "r1"));
}
