//! The steering engine's patent branches end to end: the real server on port 0, real
//! WebSockets, browsers logged in with passwords and scripted switches signed in with secrets.

mod common;
use common::*;
use trunkline_protocol::{CallEvent, ErrorCode, IncomingVia, Outcome, Route, ServerMsg};

fn accept(call: &str, url: &str) -> String {
    format!(
        r#"{{"type":"query_answer","call_id":"{call}","answer":{{"answer":"accept","url":"{url}","key":"{KEY}","expires_in_ms":30000}}}}"#
    )
}

#[tokio::test]
async fn f5_b3_browser_dials_a_number_that_does_not_exist() {
    let (srv, _tmp) = TestServer::start().await;
    let mut hq = srv.switch(HQ).await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"f5","to":"4040"}"#).await;
    let msg = alice.expect_error(ErrorCode::InvalidCall).await;
    assert!(msg.contains("4040"), "{msg}");
    assert_eq!(alice.expect_outcome("f5").await, (Outcome::RejectedInvalid, None));
    assert!(hq.sync().await.is_empty(), "nothing rings anywhere");
}

#[tokio::test]
async fn b3_switch_query_for_unknown_number_is_invalid_route() {
    let (srv, _tmp) = TestServer::start().await;
    let mut hq = srv.switch(HQ).await;
    let mut branch = srv.switch(BRANCH).await;
    hq.send(r#"{"type":"route_query","call_id":"b3","from":"1001","to":"4040"}"#).await;
    match hq.recv().await {
        ServerMsg::Route { call_id, route: Route::Invalid { reason } } => {
            assert_eq!(call_id, "b3");
            assert!(reason.contains("4040"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(hq.expect_outcome("b3").await.0, Outcome::RejectedInvalid);
    assert!(branch.sync().await.is_empty());
}

#[tokio::test]
async fn b5_switch_query_answered_with_callee_switch_address_then_c11_c12_c2() {
    let (srv, _tmp) = TestServer::start().await;
    let mut hq = srv.switch(HQ).await;
    let mut branch = srv.switch(BRANCH).await;
    hq.send(r#"{"type":"route_query","call_id":"b5","from":"1001","to":"3001"}"#).await;
    assert_eq!(
        hq.recv().await,
        ServerMsg::Route { call_id: "b5".into(), route: Route::Switch { switch_id: "branch".into(), url: BRANCH_URL.into() } }
    );
    match branch.recv().await {
        ServerMsg::CalleeQuery { call_id, from, to, .. } => {
            assert_eq!((call_id.as_str(), from.as_str(), to.as_str()), ("b5", "1001", "3001"))
        }
        other => panic!("{other:?}"),
    }
    branch.send(&accept("b5", BRANCH_URL)).await;
    assert_eq!(
        hq.recv().await,
        ServerMsg::Connect { call_id: "b5".into(), url: BRANCH_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }
    );
    branch.send(r#"{"type":"call_event","call_id":"b5","event":{"event":"key_accepted"}}"#).await;
    branch.send(r#"{"type":"call_event","call_id":"b5","event":{"event":"connected"}}"#).await;
    assert_eq!(hq.recv().await, ServerMsg::CallEvent { call_id: "b5".into(), event: CallEvent::Connected });
    branch
        .send(r#"{"type":"call_event","call_id":"b5","event":{"event":"ended","outcome":"connected","duration_ms":1234}}"#)
        .await;
    assert_eq!(hq.expect_outcome("b5").await, (Outcome::Connected, Some(1234)));
}

#[tokio::test]
async fn b6_switch_query_for_switchless_browser_then_c3_tells_it_over_its_websocket() {
    let (srv, _tmp) = TestServer::start().await;
    let mut hq = srv.switch(HQ).await;
    let mut alice = srv.browser(ALICE).await;
    hq.send(r#"{"type":"route_query","call_id":"b6","from":"1001","to":"2001"}"#).await;
    assert_eq!(hq.recv().await, ServerMsg::Route { call_id: "b6".into(), route: Route::Device { device_id: "2001".into() } });
    hq.send(&format!(r#"{{"type":"direct_offer","call_id":"b6","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#)).await;
    match alice.recv().await {
        ServerMsg::Incoming { call_id, from, via: IncomingVia::Direct { url, key, .. }, .. } => {
            assert_eq!((call_id.as_str(), from.as_str(), url.as_str(), key.as_str()), ("b6", "1001", HQ_URL, KEY));
        }
        other => panic!("{other:?}"),
    }
    alice.send(r#"{"type":"decline","call_id":"b6","reason":"busy"}"#).await;
    assert_eq!(hq.expect_outcome("b6").await.0, Outcome::Busy);
}

#[tokio::test]
async fn f1_c11_c12_c13_scripted_switch_accepts_and_browser_gets_address_and_key() {
    let (srv, _tmp) = TestServer::start().await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"f1","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { call_id, .. } if call_id == "f1"));
    branch.send(&accept("f1", BRANCH_URL)).await;
    assert_eq!(
        alice.recv().await,
        ServerMsg::Connect { call_id: "f1".into(), url: BRANCH_URL.into(), key: KEY.into(), expires_in_ms: 30_000 }
    );
    branch.send(r#"{"type":"call_event","call_id":"f1","event":{"event":"key_accepted"}}"#).await;
    branch.send(r#"{"type":"call_event","call_id":"f1","event":{"event":"ringing"}}"#).await;
    assert_eq!(alice.recv().await, ServerMsg::CallEvent { call_id: "f1".into(), event: CallEvent::Ringing });
    branch.send(r#"{"type":"call_event","call_id":"f1","event":{"event":"ended","outcome":"no_answer"}}"#).await;
    assert_eq!(alice.expect_outcome("f1").await.0, Outcome::NoAnswer);
}

#[tokio::test]
async fn f6_c12_scripted_switch_declines() {
    let (srv, _tmp) = TestServer::start().await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    for (i, (reason, outcome)) in
        [("busy", Outcome::Busy), ("not_registered", Outcome::CalleeOffline), ("declined", Outcome::Declined)]
            .into_iter()
            .enumerate()
    {
        let call = format!("d{i}");
        alice.send(&format!(r#"{{"type":"dial","call_id":"{call}","to":"3001"}}"#)).await;
        assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { .. }));
        branch
            .send(&format!(r#"{{"type":"query_answer","call_id":"{call}","answer":{{"answer":"decline","reason":"{reason}"}}}}"#))
            .await;
        assert_eq!(alice.expect_outcome(&call).await.0, outcome);
        assert_eq!(branch.expect_outcome(&call).await.0, outcome, "the switch hears the outcome too");
    }
}

#[tokio::test]
async fn c11_scripted_switch_never_answers_ends_switch_unavailable() {
    let (srv, _tmp) = TestServer::start().await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"mute","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { .. }));
    // The switch stays silent; the server's C11 timeout (400 ms in tests) ends the attempt.
    assert_eq!(alice.expect_outcome("mute").await.0, Outcome::SwitchUnavailable);
    assert_eq!(branch.expect_outcome("mute").await.0, Outcome::SwitchUnavailable);
    // A late answer is refused and changes nothing.
    branch.send(&accept("mute", BRANCH_URL)).await;
    branch.expect_error(ErrorCode::UnknownCall).await;
    assert!(alice.sync().await.is_empty());
}

#[tokio::test]
async fn c14_key_never_presented_ends_key_expired() {
    let (srv, _tmp) = TestServer::start().await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"late","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { .. }));
    branch.send(&accept("late", BRANCH_URL)).await;
    assert!(matches!(alice.recv().await, ServerMsg::Connect { .. }));
    assert_eq!(alice.expect_outcome("late").await.0, Outcome::KeyExpired);
}

#[tokio::test]
async fn b5_callee_switch_offline_is_switch_unavailable() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"off","to":"3001"}"#).await;
    assert_eq!(alice.expect_outcome("off").await.0, Outcome::SwitchUnavailable);
}

#[tokio::test]
async fn f4_relay_between_two_browsers_with_cloud_issued_key() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"f4","to":"2002"}"#).await;
    let key = match bob.recv().await {
        ServerMsg::Incoming { call_id, from, via: IncomingVia::Peer { key }, .. } => {
            assert_eq!((call_id.as_str(), from.as_str()), ("f4", "2001"));
            key
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(alice.recv().await, ServerMsg::Peer { call_id: "f4".into(), key: key.clone() });
    assert_eq!(alice.recv().await, ServerMsg::CallEvent { call_id: "f4".into(), event: CallEvent::Ringing });
    alice
        .send(&format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}}}}"#))
        .await;
    assert!(matches!(bob.recv().await, ServerMsg::Signal { payload: trunkline_protocol::SignalPayload::Offer { .. }, .. }));
    // Without the key nothing is relayed.
    bob.send(&format!(r#"{{"type":"signal","call_id":"f4","key":"{KEY}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    bob.expect_error(ErrorCode::BadKey).await;
    bob.send(&format!(r#"{{"type":"accept","call_id":"f4","key":"{key}"}}"#)).await;
    bob.send(&format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"answer","sdp":"v=0"}}}}"#)).await;
    bob.send(&format!(r#"{{"type":"signal","call_id":"f4","key":"{key}","payload":{{"kind":"ice","candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdp_mid":"0","sdp_m_line_index":0}}}}"#)).await;
    assert_eq!(alice.recv().await, ServerMsg::CallEvent { call_id: "f4".into(), event: CallEvent::Connected });
    assert!(matches!(alice.recv().await, ServerMsg::Signal { payload: trunkline_protocol::SignalPayload::Answer { .. }, .. }));
    assert!(matches!(alice.recv().await, ServerMsg::Signal { payload: trunkline_protocol::SignalPayload::Ice { .. }, .. }));
    alice.send(r#"{"type":"hangup","call_id":"f4"}"#).await;
    assert_eq!(alice.expect_outcome("f4").await.0, Outcome::Connected);
    assert_eq!(bob.expect_outcome("f4").await.0, Outcome::Connected);
}

#[tokio::test]
async fn f4_client_disconnecting_mid_call_ends_it_for_the_other_with_duration() {
    let (srv, _tmp) = TestServer::start().await;
    let alice = srv.browser(ALICE).await;
    let mut bob = srv.browser(BOB).await;
    let mut alice = alice;
    alice.send(r#"{"type":"dial","call_id":"dc","to":"2002"}"#).await;
    let key = match bob.recv().await {
        ServerMsg::Incoming { via: IncomingVia::Peer { key }, .. } => key,
        other => panic!("{other:?}"),
    };
    bob.send(&format!(r#"{{"type":"accept","call_id":"dc","key":"{key}"}}"#)).await;
    loop {
        if let ServerMsg::CallEvent { event: CallEvent::Connected, .. } = alice.recv().await {
            break;
        }
    }
    drop(alice); // TCP gone without a close handshake
    let (outcome, duration) = bob.expect_outcome("dc").await;
    assert_eq!(outcome, Outcome::Connected);
    assert!(duration.is_some());
    // The server is fine and alice can come back.
    let mut alice = srv.browser(ALICE).await;
    assert!(alice.sync().await.is_empty());
}

#[tokio::test]
async fn f4_callee_offline_and_no_answer() {
    let (srv, _tmp) = TestServer::start().await;
    let mut alice = srv.browser(ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"o","to":"2002"}"#).await;
    assert_eq!(alice.expect_outcome("o").await.0, Outcome::CalleeOffline);
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"na","to":"2002"}"#).await;
    assert!(matches!(bob.recv().await, ServerMsg::Incoming { .. }));
    assert_eq!(alice.expect_outcome("na").await.0, Outcome::NoAnswer);
    assert_eq!(bob.expect_outcome("na").await.0, Outcome::NoAnswer);
}

#[tokio::test]
async fn f1_c14_offer_answer_and_candidates_travel_between_browser_and_switch_through_the_cloud() {
    use trunkline_protocol::SignalPayload;
    let (srv, _tmp) = TestServer::start().await;
    let mut branch = srv.switch(BRANCH).await;
    let mut alice = srv.browser(ALICE).await;
    let mut bob = srv.browser(BOB).await;
    alice.send(r#"{"type":"dial","call_id":"c14","to":"3001"}"#).await;
    assert!(matches!(branch.recv().await, ServerMsg::CalleeQuery { .. }));
    branch.send(&accept("c14", BRANCH_URL)).await;
    assert!(matches!(alice.recv().await, ServerMsg::Connect { .. }));
    alice.send(r#"{"type":"direct_signal","call_id":"c14","payload":{"kind":"offer","sdp":"v=0\r\nalice offer\r\n"}}"#).await;
    assert_eq!(
        branch.recv().await,
        ServerMsg::DirectSignal { call_id: "c14".into(), payload: SignalPayload::Offer { sdp: "v=0\r\nalice offer\r\n".into() } }
    );
    branch
        .send(r#"{"type":"direct_signal","call_id":"c14","payload":{"kind":"ice","candidate":"candidate:1 1 udp 99 203.0.113.101 40000 typ srflx raddr 0.0.0.0 rport 0","sdp_mid":"0"}}"#)
        .await;
    match alice.recv().await {
        ServerMsg::DirectSignal { call_id, payload: SignalPayload::Ice { candidate, sdp_mid, .. } } => {
            assert_eq!(call_id, "c14");
            assert!(candidate.contains("typ srflx"));
            assert_eq!(sdp_mid.as_deref(), Some("0"));
        }
        other => panic!("{other:?}"),
    }
    // A bystander gets a typed refusal and the parties see nothing of it.
    bob.send(r#"{"type":"direct_signal","call_id":"c14","payload":{"kind":"end_of_candidates"}}"#).await;
    assert!(!bob.expect_error(ErrorCode::NotYourCall).await.is_empty());
    assert!(alice.sync().await.is_empty());
    assert!(branch.sync().await.is_empty());
}
