//! F4 browser → switchless browser over the REAL signal server (in-process): two softphones sign
//! in, A dials B, B auto-answers; offer/answer go through the cloud's `signal` relay with the
//! cloud-issued key; media flows directly between the two (127.0.0.1) and is checked by
//! frequency both ways; DTMF crosses; the hangup ends the call with outcome `connected` for both.
//! Plus the outcomes a browser caller sees when the call does not connect (B3, declined, offline).

mod common;

use common::{ALICE, BOB, CAROL, Cloud, WAIT};
use trunkline_client::wav::{RATE, dominant_frequency};
use trunkline_client::{AudioSource, CallUpdate};
use trunkline_protocol::{CallEvent, DeclineReason, ErrorCode, IncomingVia, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_call_between_two_browsers_carries_tones_both_ways() {
    let cloud = Cloud::start().await;
    let alice = cloud.phone(ALICE).await;
    let bob = cloud.phone(BOB).await;
    assert_eq!(alice.number(), "2001");
    assert_eq!(alice.session().display_name, "User 2001");

    // A → C1: dial; the callee is switchless (B6) so the cloud rings B with a key (F4).
    let call = alice.call(BOB.0, AudioSource::tone(1000.0)).await.unwrap();
    let incoming = bob.next_incoming(WAIT).await.unwrap();
    assert_eq!(incoming.call_id, call.call_id());
    assert_eq!(incoming.from, ALICE.0);
    assert!(matches!(incoming.via, IncomingVia::Peer { .. }), "{:?}", incoming.via);
    let answered = incoming.answer(AudioSource::tone(440.0));

    call.wait_answered(WAIT).await.unwrap();
    let a_media = call.wait_media(WAIT).await.unwrap();
    let b_media = answered.wait_media(WAIT).await.unwrap();

    // 1.5 s of audio each way, then the frequencies.
    b_media.wait_packets(75, WAIT).await.unwrap();
    a_media.wait_packets(75, WAIT).await.unwrap();
    let at_b = dominant_frequency(&b_media.recording(), RATE);
    let at_a = dominant_frequency(&a_media.recording(), RATE);
    assert!((at_b - 1000.0).abs() <= 20.0, "B heard {at_b} Hz");
    assert!((at_a - 440.0).abs() <= 20.0, "A heard {at_a} Hz");

    // DTMF from the caller.
    a_media.send_dtmf_digits("42").unwrap();
    assert_eq!(b_media.wait_dtmf(2, WAIT).await.unwrap(), "42");

    // A hangs up through the cloud: both get `connected` with a duration.
    call.hangup();
    let (outcome, duration) = call.wait_outcome(WAIT).await.unwrap();
    assert_eq!(outcome, Outcome::Connected);
    assert!(duration.is_some_and(|d| d > 1000), "{duration:?}");
    let (outcome, _) = answered.wait_outcome(WAIT).await.unwrap();
    assert_eq!(outcome, Outcome::Connected);
    call.wait_finished(WAIT).await.unwrap();
    answered.wait_finished(WAIT).await.unwrap();
    assert!(a_media.is_closed() && b_media.is_closed());

    // The caller's progress lines, in order.
    let mut updates = vec![];
    while let Ok(Some(u)) = tokio::time::timeout(WAIT, call.next_update()).await {
        updates.push(u);
    }
    let pos = |f: &dyn Fn(&CallUpdate) -> bool| updates.iter().position(f);
    let dialing = pos(&|u| matches!(u, CallUpdate::Dialing { .. })).expect("dialing");
    let peer = pos(&|u| matches!(u, CallUpdate::Peer)).expect("peer");
    let ringing = pos(&|u| matches!(u, CallUpdate::Event(CallEvent::Ringing))).expect("ringing");
    let connected = pos(&|u| matches!(u, CallUpdate::Event(CallEvent::Connected))).expect("connected");
    let media = pos(&|u| matches!(u, CallUpdate::MediaConnected { .. })).expect("media");
    let outcome = pos(&|u| matches!(u, CallUpdate::Outcome { outcome: Outcome::Connected, .. })).expect("outcome");
    assert!(dialing < peer && peer < ringing && ringing < connected && connected < outcome, "{updates:?}");
    assert!(media < outcome, "{updates:?}");
    let lines: Vec<String> = updates.iter().map(|u| u.to_string()).collect();
    assert!(lines.iter().any(|l| l.starts_with("F4 ")), "{lines:?}");

    drop(alice);
    drop(bob);
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_when_the_call_does_not_connect() {
    let cloud = Cloud::start().await;
    let alice = cloud.phone(ALICE).await;
    let bob = cloud.phone(BOB).await;

    // F5 / B3: no such number → invalid_call, then rejected_invalid.
    let call = alice.call("4040", AudioSource::Silence).await.unwrap();
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::RejectedInvalid);
    let status = call.status();
    assert_eq!(status.refused.as_ref().map(|r| r.0), Some(ErrorCode::InvalidCall));

    // F6: the callee declines.
    let call = alice.call(BOB.0, AudioSource::Silence).await.unwrap();
    let incoming = bob.next_incoming(WAIT).await.unwrap();
    incoming.decline(DeclineReason::Declined).unwrap();
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::Declined);

    // F6: the callee has no live connection.
    let call = alice.call(CAROL.0, AudioSource::Silence).await.unwrap();
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::CalleeOffline);

    // The caller gives up while it rings.
    let call = alice.call(BOB.0, AudioSource::Silence).await.unwrap();
    let _ringing = bob.next_incoming(WAIT).await.unwrap();
    call.wait_for("ringing", WAIT, |s| s.ringing).await.unwrap();
    call.hangup();
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::Cancelled);

    // A refused dial (calling yourself is B3 too).
    let call = alice.call(ALICE.0, AudioSource::Silence).await.unwrap();
    assert_eq!(call.wait_outcome(WAIT).await.unwrap().0, Outcome::RejectedInvalid);

    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_signal_connection_ends_the_f4_call_for_both() {
    let cloud = Cloud::start().await;
    let alice = cloud.phone(ALICE).await;
    let bob = cloud.phone(BOB).await;
    let call = alice.call(BOB.0, AudioSource::tone(1000.0)).await.unwrap();
    let incoming = bob.next_incoming(WAIT).await;
    let answered = match incoming {
        Ok(i) => i.answer(AudioSource::tone(440.0)),
        Err(e) => panic!("{e}: caller's status {:?}, bob closed: {:?}", call.status(), bob.closed_reason()),
    };
    call.wait_media(WAIT).await.unwrap().wait_packets(10, WAIT).await.unwrap();

    // Bob's browser goes away: the cloud relay was the call's only signalling path.
    drop(bob);
    let (outcome, _) = call.wait_outcome(WAIT).await.unwrap();
    assert_eq!(outcome, Outcome::Connected);
    let status = answered.wait_finished(WAIT).await.unwrap();
    assert!(status.outcome.is_none());
    assert!(status.failure.as_deref().is_some_and(|f| f == "Connection to the server lost"), "{status:?}");
    call.wait_finished(WAIT).await.unwrap();
    assert!(call.media().unwrap().is_closed() && answered.media().unwrap().is_closed());
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_the_session_token_and_typed_sign_in_refusals() {
    use trunkline_client::signal::{SignalClient, SignalError};
    use trunkline_client::{Softphone, SoftphoneConfig, SoftphoneError, TlsOptions};

    let cloud = Cloud::start().await;
    let alice = cloud.phone(ALICE).await;
    let token = alice.session().session_token.clone();
    drop(alice);
    let cfg = SoftphoneConfig::new(&cloud.ws_url, ALICE.0, "unused");
    let again = tokio::time::timeout(WAIT, Softphone::resume(cfg, &token)).await.unwrap().unwrap();
    assert_eq!(again.number(), ALICE.0);
    assert_ne!(again.session().session_token, token, "the token is rotated on resume");

    let bad = SignalClient::login(&cloud.ws_url, ALICE.0, "wrong", &TlsOptions::default()).await;
    assert!(matches!(bad, Err(SignalError::Refused { code: ErrorCode::AuthFailed, .. })), "{:?}", bad.err());
    let cfg = SoftphoneConfig::new(&cloud.ws_url, BOB.0, "wrong");
    let bad = Softphone::login(cfg).await;
    assert!(matches!(bad, Err(SoftphoneError::Signal(SignalError::Refused { .. }))));
    let nowhere = SignalClient::login("ws://127.0.0.1:1/ws", ALICE.0, ALICE.1, &TlsOptions::default()).await;
    assert!(matches!(nowhere, Err(SignalError::Connect(_))));
    let not_ws = SignalClient::login("http://127.0.0.1:1/ws", ALICE.0, ALICE.1, &TlsOptions::default()).await;
    assert!(matches!(not_ws, Err(SignalError::Connect(_))));
    cloud.stop().await;
}
