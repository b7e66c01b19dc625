//! `kill -9` of a gateway mid-call (issue 10): the caller notices the media path die and gets a
//! typed outcome within seconds. F1 as in `f1_browser_to_baresip_deskphone.rs`: baresip 1001 is
//! registered at gateway hq, the headless softphone (the same call core as the browser) stands
//! in for browser 2001 and calls it; audio flows both ways. The gateway here is the real
//! `switch-gateway` binary run as a child process with a config file, so it can be SIGKILLed:
//! no BYE, no `ended` on the DataChannel, no goodbye to the cloud. The caller's media path goes
//! silent (and str0m's consent checks time out); past the call core's grace the call ends
//! `media_lost` here, the softphone tells the cloud with `connect_failed`, and the cloud's
//! `outcome` and its call record say `media_lost` too, with a duration.

#[path = "common/baresip.rs"]
mod baresip;
mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::time::Duration;

use baresip::Phone;
use common::*;
use fault::GatewayChild;
use sipcheck::wait_phone_list;
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_protocol::Outcome;

/// Long enough for the whole test: baresip hangs up when its WAV file ends.
const PHONE_WAV_SECS: u32 = 60;

/// How long the caller may take to report the outcome after the kill: a bound to wait for, not
/// a timing assertion (silence 4 s + grace 5 s, or str0m's consent timeout, come well before).
const OUTCOME_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_gateway_killed_mid_call_the_caller_gets_media_lost_and_the_record_says_so() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let mut gw = GatewayChild::start("hq", &cloud.ws_url, dir.path(), "").await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    wait_phone_list(&gw.state_dir, &["1001"]).await;

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, PHONE_WAV_SECS);
    let mut phone = Phone::start(dir.path(), "1001", gw.sip, &tone440, true).await;
    phone.registered().await;

    // F1: 2001 calls 1001 with a 1 kHz tone; baresip answers by itself.
    let mut cfg = SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001");
    cfg.media = PeerOptions::bind("127.0.0.1".parse().unwrap());
    let alice = Softphone::login(cfg).await.unwrap();
    let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
    call.wait_answered(WAIT).await.unwrap_or_else(|e| panic!("{e}\n{}\n{}", phone.dump(), gw.log_text()));
    let media = call.wait_media(WAIT).await.expect("the WebRTC leg to the gateway");
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with the gateway");
    phone.expect_event("CALL_ESTABLISHED", WAIT).await;
    // Audio both ways, by frequency: a live call is what dies.
    media.wait_packets(150, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(8000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the caller heard {f_browser} Hz, expected baresip's 440 Hz");
    let heard = phone.wait_received(2.0, WAIT).await;
    baresip::check_tone(&phone, "heard from the caller", &baresip::since(&heard, 1.0), 1000.0, 0.8);
    assert!(call.status().outcome.is_none(), "the call is up: {:?}", call.status());

    // kill -9 of the gateway.
    let killed_at = tokio::time::Instant::now();
    gw.sigkill().await;

    // The caller's typed outcome, concluded locally, then the cloud's.
    let status = call.wait_finished(OUTCOME_WITHIN).await.unwrap_or_else(|e| panic!("no outcome after the kill: {e}"));
    let after = killed_at.elapsed();
    eprintln!("caller's outcome {:.1} s after kill -9 of the gateway", after.as_secs_f64());
    eprintln!(
        "FIGURE media_lost_outcome_after_gateway_kill {:.1} s | kill -9 of the gateway mid-call (F1): the headless softphone's typed outcome media_lost",
        after.as_secs_f64()
    );
    assert_eq!(status.local_outcome, Some(Outcome::MediaLost), "{status:?}");
    let (outcome, duration_ms) = status.outcome.unwrap_or_else(|| panic!("the cloud's outcome: {status:?}"));
    assert_eq!(outcome, Outcome::MediaLost, "{status:?}");
    assert!(duration_ms.is_some_and(|d| d > 0), "media_lost carries the duration: {status:?}");

    // The record says so, once.
    let call_id = call.call_id().to_string();
    let mine = call_records_of(&cloud.db_url, &call_id).await;
    assert_eq!(mine.len(), 1, "one record: {mine:?}");
    assert_eq!((mine[0].outcome, mine[0].duration_ms), (Outcome::MediaLost, duration_ms), "{:?}", mine[0]);

    phone.quit().await;
    alice.close();
    cloud.stop().await;
}
