//! The direct-endpoint flows over the REAL signal server, with the test playing the gateway
//! (cloud link + direct endpoint + an ICE-lite WebRTC answerer, as the real gateway answers):
//!
//! - F1: browser → desk phone: A, C1, C11, C12, C13 (connect), C14 (present), C15 (offer/answer,
//!   progress, media both ways by frequency, DTMF to the gateway), hangup, outcome `connected`.
//! - F3: desk phone → switchless browser: B1/B2, B6, C3 (`incoming` via direct), the browser
//!   presents the key as the callee, media both ways, the gateway ends the call.
//! - The typed refusals of the direct endpoint (claim 10) and the outcome the caller then gets.

mod common;

use common::gateway::{DirectListener, FakeSwitch, KEY};
use common::{ALICE, Cloud, DESK, HQ, WAIT};
use trunkline_client::direct::{DirectClient, DirectError};
use trunkline_client::wav::{RATE, dominant_frequency};
use trunkline_client::webrtc::{AudioSource, PeerOptions, WebRtcPeer};
use trunkline_client::{CallUpdate, TlsOptions};
use trunkline_protocol::{
    CallEvent, ClientMsg, DirectClientMsg, DirectServerMsg, ErrorCode, IncomingVia, Outcome,
    QueryAnswer, Route, ServerMsg,
};

fn ice_lite() -> PeerOptions {
    PeerOptions {
        ice_lite: true,
        ..PeerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_browser_calls_a_desk_phone_through_the_gateway_direct_endpoint() {
    let cloud = Cloud::start().await;
    let direct = DirectListener::bind().await;
    let mut hq = FakeSwitch::connect(&cloud.ws_url, HQ, &direct.url).await;
    let alice = cloud.phone(ALICE).await;

    let call = alice.call(DESK.0, AudioSource::tone(1000.0)).await.unwrap();

    // C11 → C12: the gateway queues the call and issues a key.
    let call_id = match hq.recv().await {
        ServerMsg::CalleeQuery {
            call_id, from, to, ..
        } => {
            assert_eq!((from.as_str(), to.as_str()), (ALICE.0, DESK.0));
            call_id
        }
        other => panic!("expected callee_query, got {other:?}"),
    };
    assert_eq!(call_id, call.call_id());
    let answer = QueryAnswer::Accept {
        url: direct.url.clone(),
        key: KEY.into(),
        expires_in_ms: 30_000,
    };
    hq.send(ClientMsg::QueryAnswer {
        call_id: call_id.clone(),
        answer,
    })
    .await;

    // C13 → C14: the browser comes to the direct endpoint and presents the key.
    let mut conn = direct.accept().await;
    match conn.recv().await {
        DirectClientMsg::Present {
            v,
            call_id: c,
            key,
            caller,
        } => {
            assert_eq!(
                (v, c.as_str(), key.as_str(), caller.as_str()),
                (1, call_id.as_str(), KEY, ALICE.0)
            );
        }
        other => panic!("expected present, got {other:?}"),
    }
    conn.send(DirectServerMsg::Accepted {
        call_id: call_id.clone(),
    })
    .await;
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: CallEvent::KeyAccepted,
    })
    .await;

    // C15: offer → ICE-lite answer, ringing, connected.
    let offer = match conn.recv().await {
        DirectClientMsg::Offer { sdp } => sdp,
        other => panic!("expected offer, got {other:?}"),
    };
    assert!(
        offer.contains("a=rtpmap:0 PCMU/8000") && offer.contains("telephone-event/8000"),
        "{offer}"
    );
    assert!(
        offer.contains("typ host"),
        "candidates are in the offer: {offer}"
    );
    let gw = WebRtcPeer::bind(ice_lite()).await.unwrap();
    let (answer, gw_media) = gw.accept_offer(&offer, AudioSource::tone(440.0)).unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    conn.send(DirectServerMsg::Answer { sdp: answer }).await;
    conn.send(DirectServerMsg::Progress {
        event: CallEvent::Ringing,
    })
    .await;
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: CallEvent::Ringing,
    })
    .await;
    conn.send(DirectServerMsg::Progress {
        event: CallEvent::Connected,
    })
    .await;
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: CallEvent::Connected,
    })
    .await;

    call.wait_answered(WAIT).await.unwrap();
    let media = call.wait_media(WAIT).await.unwrap();
    gw_media.wait_packets(75, WAIT).await.unwrap();
    media.wait_packets(75, WAIT).await.unwrap();
    let at_gw = dominant_frequency(&gw_media.recording(), RATE);
    let at_browser = dominant_frequency(&media.recording(), RATE);
    assert!((at_gw - 1000.0).abs() <= 20.0, "gateway heard {at_gw} Hz");
    assert!(
        (at_browser - 440.0).abs() <= 20.0,
        "browser heard {at_browser} Hz"
    );

    media.send_dtmf('7').unwrap();
    assert_eq!(gw_media.wait_dtmf(1, WAIT).await.unwrap(), "7");

    // The browser hangs up on the direct connection; the gateway reports the end to the cloud.
    call.hangup();
    assert_eq!(conn.recv().await, DirectClientMsg::Hangup);
    conn.send(DirectServerMsg::Ended {
        outcome: Outcome::Connected,
    })
    .await;
    let ended = CallEvent::Ended {
        outcome: Outcome::Connected,
        duration_ms: Some(1800),
    };
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: ended,
    })
    .await;
    let (outcome, duration) = call.wait_outcome(WAIT).await.unwrap();
    assert_eq!(outcome, Outcome::Connected);
    assert!(duration.is_some());
    assert!(matches!(
        hq.recv().await,
        ServerMsg::Outcome {
            outcome: Outcome::Connected,
            ..
        }
    ));
    call.wait_finished(WAIT).await.unwrap();
    conn.expect_closed().await;
    gw_media.close().await;

    let mut lines = vec![];
    while let Ok(Some(u)) = tokio::time::timeout(WAIT, call.next_update()).await {
        lines.push(u);
    }
    let kinds: Vec<&str> = lines
        .iter()
        .filter_map(|u| match u {
            CallUpdate::Dialing { .. } => Some("dial"),
            CallUpdate::Connect { .. } => Some("C13"),
            CallUpdate::KeyAccepted => Some("C14"),
            CallUpdate::Answer => Some("answer"),
            CallUpdate::Outcome { .. } => Some("outcome"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["dial", "C13", "C14", "answer", "outcome"],
        "{lines:?}"
    );

    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_desk_phone_calls_a_browser_which_connects_to_the_callers_gateway() {
    let cloud = Cloud::start().await;
    let direct = DirectListener::bind().await;
    let mut hq = FakeSwitch::connect(&cloud.ws_url, HQ, &direct.url).await;
    let alice = cloud.phone(ALICE).await;

    // B1/B2 → B6: the callee is a switchless browser; C3: hq hands over its address + key.
    let call_id = "f3-call-1".to_string();
    hq.send(ClientMsg::RouteQuery {
        call_id: call_id.clone(),
        from: DESK.0.into(),
        to: ALICE.0.into(),
    })
    .await;
    match hq.recv().await {
        ServerMsg::Route {
            route: Route::Device { device_id },
            ..
        } => assert_eq!(device_id, ALICE.0),
        other => panic!("expected a device route, got {other:?}"),
    }
    hq.send(ClientMsg::DirectOffer {
        call_id: call_id.clone(),
        url: direct.url.clone(),
        key: KEY.into(),
        expires_in_ms: 30_000,
    })
    .await;

    let incoming = alice.next_incoming(WAIT).await.unwrap();
    assert_eq!(incoming.from, DESK.0);
    assert!(matches!(&incoming.via, IncomingVia::Direct { url, .. } if *url == direct.url));
    let call = incoming.answer(AudioSource::tone(1000.0));

    // The callee presents the key with its own number.
    let mut conn = direct.accept().await;
    match conn.recv().await {
        DirectClientMsg::Present {
            call_id: c,
            key,
            caller,
            ..
        } => {
            assert_eq!(
                (c.as_str(), key.as_str(), caller.as_str()),
                (call_id.as_str(), KEY, ALICE.0)
            );
        }
        other => panic!("expected present, got {other:?}"),
    }
    conn.send(DirectServerMsg::Accepted {
        call_id: call_id.clone(),
    })
    .await;
    let offer = match conn.recv().await {
        DirectClientMsg::Offer { sdp } => sdp,
        other => panic!("expected offer, got {other:?}"),
    };
    let (answer, gw_media) = WebRtcPeer::bind(ice_lite())
        .await
        .unwrap()
        .accept_offer(&offer, AudioSource::tone(440.0))
        .unwrap();
    conn.send(DirectServerMsg::Answer { sdp: answer }).await;
    conn.send(DirectServerMsg::Progress {
        event: CallEvent::Connected,
    })
    .await;

    let media = call.wait_media(WAIT).await.unwrap();
    gw_media.wait_packets(50, WAIT).await.unwrap();
    media.wait_packets(50, WAIT).await.unwrap();
    assert!((dominant_frequency(&gw_media.recording(), RATE) - 1000.0).abs() <= 20.0);
    assert!((dominant_frequency(&media.recording(), RATE) - 440.0).abs() <= 20.0);

    // The desk phone hangs up: the gateway ends the direct leg and reports to the cloud.
    conn.send(DirectServerMsg::Ended {
        outcome: Outcome::Connected,
    })
    .await;
    let ended = CallEvent::Ended {
        outcome: Outcome::Connected,
        duration_ms: Some(1200),
    };
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: ended,
    })
    .await;
    let (outcome, _) = call.wait_outcome(WAIT).await.unwrap();
    // The cloud saw no `connected` event (this gateway sent it only on the direct leg), so it
    // records the gateway's word for it.
    assert_eq!(outcome, Outcome::Connected);
    assert!(call.status().direct_outcome == Some(Outcome::Connected));
    call.wait_finished(WAIT).await.unwrap();
    gw_media.close().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_the_direct_endpoint_are_typed_and_the_call_still_gets_an_outcome() {
    let cloud = Cloud::start().await;
    let direct = DirectListener::bind().await;
    let mut hq = FakeSwitch::connect(&cloud.ws_url, HQ, &direct.url).await;
    let alice = cloud.phone(ALICE).await;

    // A refused key: the client reports bad_key and cancels, so the attempt ends now.
    let call = alice.call(DESK.0, AudioSource::Silence).await.unwrap();
    let ServerMsg::CalleeQuery { call_id, .. } = hq.recv().await else {
        panic!("callee_query")
    };
    let answer = QueryAnswer::Accept {
        url: direct.url.clone(),
        key: KEY.into(),
        expires_in_ms: 30_000,
    };
    hq.send(ClientMsg::QueryAnswer {
        call_id: call_id.clone(),
        answer,
    })
    .await;
    let mut conn = direct.accept().await;
    assert!(matches!(conn.recv().await, DirectClientMsg::Present { .. }));
    conn.refuse(ErrorCode::BadKey, "not this call's key").await;
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::Cancelled);
    assert_eq!(call.status().refused.map(|r| r.0), Some(ErrorCode::BadKey));
    assert!(matches!(
        hq.recv().await,
        ServerMsg::Outcome {
            outcome: Outcome::Cancelled,
            ..
        }
    ));

    // not_implemented after the key: the gateway reports the end itself (outcome `error`).
    let call = alice.call(DESK.0, AudioSource::Silence).await.unwrap();
    let ServerMsg::CalleeQuery { call_id, .. } = hq.recv().await else {
        panic!("callee_query")
    };
    let answer = QueryAnswer::Accept {
        url: direct.url.clone(),
        key: KEY.into(),
        expires_in_ms: 30_000,
    };
    hq.send(ClientMsg::QueryAnswer {
        call_id: call_id.clone(),
        answer,
    })
    .await;
    let mut conn = direct.accept().await;
    assert!(matches!(conn.recv().await, DirectClientMsg::Present { .. }));
    conn.send(DirectServerMsg::Accepted {
        call_id: call_id.clone(),
    })
    .await;
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: CallEvent::KeyAccepted,
    })
    .await;
    assert!(matches!(conn.recv().await, DirectClientMsg::Offer { .. }));
    conn.refuse(ErrorCode::NotImplemented, "no WebRTC leg in this version")
        .await;
    let ended = CallEvent::Ended {
        outcome: Outcome::Error,
        duration_ms: None,
    };
    hq.send(ClientMsg::CallEvent {
        call_id: call_id.clone(),
        event: ended,
    })
    .await;
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::Error);
    assert_eq!(
        call.status().refused.map(|r| r.0),
        Some(ErrorCode::NotImplemented)
    );

    cloud.stop().await;
}

#[tokio::test]
async fn direct_client_maps_every_key_refusal_to_a_typed_error() {
    let direct = DirectListener::bind().await;
    let cases = [
        (ErrorCode::BadKey, "bad_key"),
        (ErrorCode::KeyExpired, "key_expired"),
        (ErrorCode::KeyUsed, "key_used"),
        (ErrorCode::WrongCaller, "wrong_caller"),
        (ErrorCode::NotImplemented, "not_implemented"),
        (ErrorCode::UnsupportedVersion, "unsupported_version"),
    ];
    for (code, name) in cases {
        let url = direct.url.clone();
        let client = tokio::spawn(async move {
            DirectClient::present(&url, "c1", KEY, "2001", &TlsOptions::default(), WAIT).await
        });
        let mut conn = direct.accept().await;
        assert!(matches!(conn.recv().await, DirectClientMsg::Present { .. }));
        conn.refuse(code, "no").await;
        let err = client.await.unwrap().err().expect("refused");
        assert_eq!(err.code(), Some(code), "{err}");
        assert!(
            err.to_string().starts_with(name) || err.to_string().contains(name),
            "{err}"
        );
        let typed = match code {
            ErrorCode::BadKey => matches!(err, DirectError::BadKey(_)),
            ErrorCode::KeyExpired => matches!(err, DirectError::KeyExpired(_)),
            ErrorCode::KeyUsed => matches!(err, DirectError::KeyUsed(_)),
            ErrorCode::WrongCaller => matches!(err, DirectError::WrongCaller(_)),
            ErrorCode::NotImplemented => matches!(err, DirectError::NotImplemented(_)),
            _ => matches!(err, DirectError::Refused { .. }),
        };
        assert!(typed, "{err:?}");
    }

    // A gateway that closes without a word, and one that is not there.
    let url = direct.url.clone();
    let client = tokio::spawn(async move {
        DirectClient::present(&url, "c1", KEY, "2001", &TlsOptions::default(), WAIT).await
    });
    drop(direct.accept().await);
    assert!(matches!(client.await.unwrap(), Err(DirectError::Closed(_))));
    drop(direct);
    let gone = DirectClient::present(
        "ws://127.0.0.1:1/direct",
        "c1",
        KEY,
        "2001",
        &TlsOptions::default(),
        WAIT,
    )
    .await;
    assert!(
        matches!(gone, Err(DirectError::Connect(_))),
        "{:?}",
        gone.err()
    );
}
