//! F3 with a real desk phone: baresip 1001 on gateway hq calls 2001, a browser with no switch
//! (the headless client, logged in at the signal server over its WebSocket). The cloud answers
//! hq's B2 with the device id (B6); hq queues the call and hands the cloud its name + key; the
//! browser gets `incoming` with `via: direct` (C3), offers WebRTC with a 1 kHz tone and the
//! `trunkline-direct` DataChannel to hq through the cloud, connects straight to hq and presents
//! the key on the DataChannel as `caller` 2001 (C14); hq answers baresip's INVITE and bridges
//! (C15). Checked: baresip heard ≈1 kHz, the browser heard baresip's 440 Hz, and when baresip
//! hangs up the browser is told on the DataChannel.

#[path = "common/baresip.rs"]
mod baresip;
mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::time::Duration;

use baresip::Phone;
use common::direct::Browser;
use common::*;
use sipcheck::wait_phone_list;
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_protocol::{CallEvent, DirectServerMsg, IncomingVia, Outcome, ServerMsg};

/// Long enough for the whole test: baresip hangs up when its WAV file ends.
const WAV_SECS: u32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_baresip_calls_a_switchless_browser_that_connects_to_the_callers_gateway() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let hq = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
    wait_phone_list(&hq.config.state_dir, &["1001"]).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, WAV_SECS);
    let mut phone = Phone::start(dir.path(), "1001", hq.sip, &tone440, false).await;
    phone.registered().await;

    // Browser 2001 is online at the cloud.
    let mut browser = Browser::login(&cloud.ws_url, "2001").await;

    // 1001 dials 2001; the browser is told to connect to hq (C3).
    phone.dial(&format!("sip:2001@{}", hq.sip)).await;
    let (call_id, url, key) = browser
        .wait_for("incoming", |m| match m {
            ServerMsg::Incoming { call_id, from, via: IncomingVia::Direct { url, key, .. }, .. } => {
                assert_eq!(from, "1001");
                Some((call_id.clone(), url.clone(), key.clone()))
            }
            ServerMsg::Incoming { via, .. } => panic!("expected via direct, got {via:?}"),
            _ => None,
        })
        .await;
    assert_eq!(url, hq.address(), "C3 names the caller's switch");

    // C14: the callee's WebRTC leg (1 kHz tone) to hq through the cloud; the key on its
    // DataChannel as 2001. Before that, baresip's call is not answered.
    let mut leg = browser.connect(&call_id, PeerOptions::bind("127.0.0.1".parse().unwrap()), AudioSource::tone(1000.0)).await;
    leg.wait_open(WAIT).await.expect("the leg to hq is up");
    phone.sync_events().await;
    assert!(!phone.saw_event("CALL_ESTABLISHED"), "baresip's call was answered before the key\n{}", phone.dump());
    assert_eq!(leg.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: call_id.clone() });
    assert_eq!(leg.recv().await, Some(DirectServerMsg::Progress { event: CallEvent::Connected }));
    let media = leg.media.clone();

    // C15: hq answers baresip's INVITE; media flows both ways.
    phone.expect_event("CALL_ESTABLISHED", Duration::from_secs(20)).await;
    // hq's own patent steps (its core's trace): the phone's request went to the cloud (B1, B2),
    // the switchless callee presented hq's key (C14) and hq bridged it to the phone (C15).
    use trunkline_protocol::Step;
    assert_eq!(hq.steps_of_the_call(), [Step::B1, Step::B2, Step::C14, Step::C15]);
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with hq");
    media.wait_packets(150, WAIT).await.unwrap_or_else(|e| panic!("audio from the phone: {e}\n{}", phone.dump()));
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(8000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected baresip's 440 Hz\n{}", phone.dump());
    let heard = phone.wait_received(3.0, WAIT).await;
    baresip::check_tone(&phone, "heard from the browser", &baresip::since(&heard, 1.0), 1000.0, 1.5);
    baresip::assert_rtp_from(&phone, &baresip::rtp_ports_of(&hq.config));

    // The phone hangs up; the browser is told on the DataChannel, and by the cloud.
    phone.hangup().await;
    phone.expect_event("CALL_CLOSED", WAIT).await;
    assert_eq!(leg.ended().await, Outcome::Connected);
    assert_eq!(browser.outcome(&call_id).await, Outcome::Connected);
    media.close().await;
    phone.quit().await;
    hq.stop().await;
    cloud.stop().await;
}
