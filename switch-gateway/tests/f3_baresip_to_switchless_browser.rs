//! F3 with a real desk phone: baresip 1001 on gateway hq calls 2001, a browser with no switch
//! (the headless client, logged in at the signal server over its WebSocket). The cloud answers
//! hq's B2 with the device id (B6); hq queues the call and hands the cloud its direct address +
//! key; the browser gets `incoming` with `via: direct` (C3), connects straight to hq's direct
//! endpoint, presents the key as `caller` 2001 (C14) and offers WebRTC with a 1 kHz tone; hq
//! answers baresip's INVITE and bridges (C15). Checked: baresip heard ≈1 kHz, the browser
//! heard baresip's 440 Hz.

mod common;
#[path = "common/audio.rs"]
mod audio;
#[path = "common/baresip.rs"]
mod baresip;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::time::Duration;

use baresip::Phone;
use common::*;
use futures_util::SinkExt;
use sipcheck::wait_phone_list;
use tokio_tungstenite::tungstenite::Message;
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions, WebRtcPeer};
use trunkline_protocol::{DirectClientMsg, DirectServerMsg, IncomingVia, ServerMsg};

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
    let (mut browser, _) = tokio_tungstenite::connect_async(cloud.ws_url.as_str()).await.unwrap();
    browser.send(Message::Text(r#"{"type":"login","v":1,"number":"2001","password":"pw-2001"}"#.into())).await.unwrap();
    assert!(matches!(ServerMsg::decode(&ws_text(&mut browser).await).unwrap(), ServerMsg::Welcome { .. }));

    // 1001 dials 2001; the browser is told to connect to hq (C3).
    phone.dial(&format!("sip:2001@{}", hq.sip)).await;
    let (call_id, url, key) = loop {
        match ServerMsg::decode(&ws_text(&mut browser).await).unwrap() {
            ServerMsg::Incoming { call_id, from, via: IncomingVia::Direct { url, key, .. }, .. } => {
                assert_eq!(from, "1001");
                break (call_id, url, key);
            }
            ServerMsg::Incoming { via, .. } => panic!("expected via direct, got {via:?}"),
            _ => continue,
        }
    };
    assert_eq!(url, hq.direct_url, "C3 names the caller's gateway");

    // C14: the callee presents the key at hq as 2001; then its WebRTC offer (1 kHz tone).
    let (mut direct, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let present = DirectClientMsg::Present { v: 1, call_id: call_id.clone(), key, caller: "2001".into() };
    direct.send(Message::Text(present.encode().into())).await.unwrap();
    assert_eq!(DirectServerMsg::decode(&ws_text(&mut direct).await).unwrap(), DirectServerMsg::Accepted { call_id });
    let mut peer = WebRtcPeer::bind(PeerOptions::bind("127.0.0.1".parse().unwrap())).await.unwrap();
    direct.send(Message::Text(DirectClientMsg::Offer { sdp: peer.create_offer().unwrap() }.encode().into())).await.unwrap();
    let answer = match DirectServerMsg::decode(&ws_text(&mut direct).await).unwrap() {
        DirectServerMsg::Answer { sdp } => sdp,
        other => panic!("expected the gateway's answer: {other:?}\n{}", phone.dump()),
    };
    let media = peer.accept_answer(&answer, AudioSource::tone(1000.0)).unwrap();

    // C15: hq answers baresip's INVITE; media flows both ways.
    phone.expect_event("CALL_ESTABLISHED", Duration::from_secs(20)).await;
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with hq");
    media.wait_packets(150, WAIT).await.unwrap_or_else(|e| panic!("audio from the phone: {e}\n{}", phone.dump()));
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(8000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected baresip's 440 Hz\n{}", phone.dump());
    let heard = phone.wait_received(3.0, WAIT).await;
    baresip::check_tone(&phone, "heard from the browser", &baresip::since(&heard, 1.0), 1000.0, 1.5);
    baresip::assert_rtp_from(&phone, &baresip::rtp_ports_of(&hq.config));

    // The phone hangs up; the browser's direct connection is told the call ended.
    phone.hangup().await;
    phone.expect_event("CALL_CLOSED", WAIT).await;
    loop {
        match DirectServerMsg::decode(&ws_text(&mut direct).await).unwrap() {
            DirectServerMsg::Ended { .. } => break,
            _ => continue,
        }
    }
    media.close().await;
    phone.quit().await;
    hq.stop().await;
    cloud.stop().await;
}
