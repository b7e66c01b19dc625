//! F1 with a real desk phone: baresip 1001 is registered at gateway hq (digest, auto-answer,
//! plays a 440 Hz WAV, records what it hears). The headless client stands in for browser 2001:
//! it logs in at the real signal server, dials 1001 (C1, C11–C13), offers WebRTC with a 1 kHz
//! tone and the `trunkline-direct` DataChannel through the cloud, connects straight to hq and
//! presents the one-time key on the DataChannel (C14); hq rings baresip and bridges (C15). Checked: baresip heard ≈1 kHz, the browser heard ≈440 Hz; a digit the
//! browser sends arrives at baresip as an RFC 4733 event (baresip's `CALL_DTMF_START`), and one
//! baresip sends (`sndcode`) arrives at the browser; and with the signal server stopped the
//! call keeps its audio both ways for 5 more seconds.

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
use trunkline_protocol::{CallEvent, DirectClientMsg, DirectServerMsg};

/// Long enough for the whole test: baresip hangs up when its WAV file ends.
const PHONE_WAV_SECS: u32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_browser_calls_a_baresip_deskphone_audio_dtmf_and_survives_the_cloud() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
    wait_phone_list(&gw.config.state_dir, &["1001"]).await;
    let gw_rtp = baresip::rtp_ports_of(&gw.config);

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, PHONE_WAV_SECS);
    let mut phone = Phone::start(dir.path(), "1001", gw.sip, &tone440, true).await;
    phone.registered().await;

    // A → C1 → C13: browser 2001 logs in, dials 1001, gets hq's name + key.
    let mut browser = Browser::login(&cloud.ws_url, "2001").await;
    let (url, key) = browser.dial_connect("f1-baresip", "1001").await;
    assert_eq!(url, gw.address(), "C13 names the callee's switch");

    // C14: the WebRTC leg (1 kHz tone) through the cloud; the key on its DataChannel.
    let mut leg = browser.connect("f1-baresip", PeerOptions::bind("127.0.0.1".parse().unwrap()), AudioSource::tone(1000.0)).await;
    leg.wait_open(WAIT).await.expect("the leg to hq is up");
    phone.sync_events().await;
    assert!(!phone.saw_event("CALL_INCOMING"), "baresip must not ring before the key: {:?}", phone.ctrl.event_types());
    assert_eq!(leg.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: "f1-baresip".into() });
    let media = leg.media.clone();

    // C15: baresip rings and answers by itself; the browser sees ringing, then connected.
    let mut saw = vec![];
    while !saw.contains(&CallEvent::Connected) {
        match leg.recv().await {
            Some(DirectServerMsg::Progress { event }) => saw.push(event),
            other => panic!("{other:?}\n{}", phone.dump()),
        }
    }
    assert_eq!(saw, vec![CallEvent::Ringing, CallEvent::Connected]);
    phone.expect_event("CALL_ESTABLISHED", WAIT).await;
    // The gateway's own patent steps (its core's trace): key issued (C12), checked (C14), bridged (C15).
    assert_eq!(
        gw.steps_of_the_call(),
        [trunkline_protocol::Step::C12, trunkline_protocol::Step::C14, trunkline_protocol::Step::C15]
    );
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with the gateway");

    // Audio both ways: baresip hears the browser's 1 kHz, the browser hears baresip's 440 Hz.
    media.wait_packets(150, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(8000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected baresip's 440 Hz\n{}", phone.dump());
    let heard = phone.wait_received(3.0, WAIT).await;
    baresip::check_tone(&phone, "heard from the browser", &baresip::since(&heard, 1.0), 1000.0, 1.5);
    baresip::assert_rtp_from(&phone, &gw_rtp);

    // DTMF: the browser presses 4; baresip reports the RFC 4733 event it decoded.
    media.send_dtmf('4').unwrap();
    assert_eq!(phone.expect_dtmf(1, WAIT).await, "4", "baresip received the browser's digit");
    assert!(phone.log_text().contains("received event: '4'"), "baresip's log shows the event\n{}", phone.dump());
    // And back: baresip presses 7 (`sndcode`), the browser receives the RFC 4733 event.
    phone.send_dtmf("7").await;
    let got = media.wait_dtmf(1, WAIT).await.unwrap_or_else(|e| panic!("the browser got no digit: {e}\n{}", phone.dump()));
    assert_eq!(got, "7", "the browser received baresip's digit");

    // The direct leg does not need the cloud: stop the signal server; 5 s more of audio
    // (250 packets of 20 ms) reach the browser, and baresip records 5 s more of the 1 kHz tone.
    cloud.stop().await;
    let packets_before = media.stats().packets_received;
    let rec_before = media.recording().len();
    let phone_before = phone.received_secs();
    let stats = media
        .wait_for("5 s more of audio without the cloud", Duration::from_secs(10), |s| s.packets_received >= packets_before + 250)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", phone.dump()));
    assert!(stats.packets_received - packets_before >= 200);
    let heard = phone.wait_received(phone_before + 4.8, Duration::from_secs(10)).await;
    baresip::check_tone(&phone, "heard without the cloud", &baresip::since(&heard, phone_before), 1000.0, 4.5);
    let rec = media.recording();
    assert!(
        rec.len() - rec_before >= 5 * 8000 - 800,
        "the browser recorded {} samples without the cloud",
        rec.len() - rec_before
    );
    let f = dominant_frequency(&rec[rec_before..], 8000);
    assert!((f - 440.0).abs() < 20.0, "the browser heard {f} Hz without the cloud");
    phone.sync_events().await;
    assert!(!phone.saw_event("CALL_CLOSED"), "the call ended without the cloud: {:?}", phone.ctrl.event_types());

    // The browser leaves (`hangup` on the DataChannel); the gateway hangs up the phone.
    leg.send(&DirectClientMsg::Hangup);
    phone.expect_event("CALL_CLOSED", WAIT).await;
    media.close().await;
    phone.quit().await;
    gw.stop().await;
}
