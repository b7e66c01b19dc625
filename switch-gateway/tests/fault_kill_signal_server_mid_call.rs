//! `kill -9` of the signal server mid-call (issue 10). F1 as in
//! `f1_browser_to_baresip_deskphone.rs`: baresip 1001 is registered at gateway hq, the headless
//! softphone (browser 2001) calls it, audio both ways. The signal server is a child process:
//! SIGKILLed mid-call it writes nothing and says goodbye to nobody. Checked: audio keeps
//! flowing both ways (by frequency, after the kill); the server restarted on the same port and
//! database sees the gateway and the softphone back (signed in) within 5 s, by themselves; the
//! softphone hangs up on the direct connection, and the gateway's end-of-call report (which
//! carries caller, callee and times) gives exactly one complete record although the restarted
//! server never knew the call.

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
use fault::ServerChild;
use sipcheck::wait_phone_list;
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_protocol::Outcome;

/// Long enough for the whole test: baresip hangs up when its WAV file ends.
const PHONE_WAV_SECS: u32 = 90;
/// Clients and gateways must be back this soon after the server's restart.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// The signal server run as a child process (see `common/fault.rs`); not a test by itself.
#[test]
#[ignore = "the signal server child process of the fault tests"]
fn signal_server_child_process() {
    fault::server_child_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_signal_server_mid_call_audio_continues_everyone_is_back_and_the_record_is_complete() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = ServerChild::start(dir.path(), 30).await;
    let gw = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    wait_phone_list(&gw.config.state_dir, &["1001"]).await;

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, PHONE_WAV_SECS);
    let mut phone = Phone::start(dir.path(), "1001", gw.sip, &tone440, true).await;
    phone.registered().await;

    // F1: 2001 calls 1001 with a 1 kHz tone; baresip answers by itself.
    let mut cfg = SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001");
    cfg.media = PeerOptions::bind("127.0.0.1".parse().unwrap());
    let alice = Softphone::login(cfg).await.unwrap();
    assert_eq!(alice.signal().sign_ins(), 1);
    let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
    call.wait_answered(WAIT).await.unwrap_or_else(|e| panic!("{e}\n{}", phone.dump()));
    let answered_at = tokio::time::Instant::now();
    let media = call.wait_media(WAIT).await.expect("the WebRTC leg to the gateway");
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with the gateway");
    phone.expect_event("CALL_ESTABLISHED", WAIT).await;
    media.wait_packets(150, WAIT).await.expect("audio from the phone");

    // kill -9 of the signal server.
    cloud.sigkill().await;

    // Audio keeps flowing both ways: 3 s more, checked by frequency at both ends.
    let (packets, rec_len, phone_secs) = (media.stats().packets_received, media.recording().len(), phone.received_secs());
    media
        .wait_for("3 s more of audio after the kill", WAIT, |s| s.packets_received >= packets + 150)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", phone.dump()));
    let rec = media.recording();
    assert!(rec.len() >= rec_len + 2 * 8000, "the softphone recorded {} samples after the kill", rec.len() - rec_len);
    let f = dominant_frequency(&rec[rec_len..], 8000);
    assert!((f - 440.0).abs() < 20.0, "the softphone heard {f} Hz after the kill, expected baresip's 440 Hz");
    let heard = phone.wait_received(phone_secs + 2.5, WAIT).await;
    baresip::check_tone(&phone, "heard after the kill", &baresip::since(&heard, phone_secs), 1000.0, 2.0);
    assert!(call.status().outcome.is_none() && !call.status().finished, "the call is still up: {:?}", call.status());

    // Restart on the same port and database: the gateway and the softphone come back by
    // themselves (backoff + switch_auth / resume), within 5 s.
    cloud.restart().await;
    let deadline = tokio::time::Instant::now() + BACK_WITHIN;
    let gw_back = fault::within(deadline, || switch_online(&cloud.db_url, "hq")).await;
    let alice_back = fault::within(deadline, || {
        let n = alice.signal().sign_ins();
        async move { n >= 2 }
    })
    .await;
    assert!(gw_back, "the gateway was not back (signed in) within {BACK_WITHIN:?} of the restart");
    assert!(alice_back, "the softphone was not back (resumed) within {BACK_WITHIN:?} of the restart");
    assert!(alice.closed_reason().is_none(), "the softphone's connection is open: {:?}", alice.closed_reason());
    assert!(!call.status().finished, "the call survived the reconnect: {:?}", call.status());
    // Signed in for real: the restarted server answers it.
    alice.signal().sync(WAIT).await.expect("the resumed connection answers");

    // Still talking; then the softphone hangs up on the direct connection.
    let packets = media.stats().packets_received;
    media.wait_for("audio after the restart", WAIT, |s| s.packets_received >= packets + 50).await.unwrap();
    let talked = answered_at.elapsed();
    call.hangup();
    phone.expect_event("CALL_CLOSED", WAIT).await;

    // Exactly one complete record, from the gateway's end report.
    let call_id = call.call_id().to_string();
    let mine = fault::records_of(&cloud.db_url, &call_id, WAIT).await;
    assert_eq!(mine.len(), 1, "one record: {mine:?}");
    let r = &mine[0];
    assert_eq!((r.caller.as_str(), r.callee.as_str(), r.switch_id.as_deref()), ("2001", "1001", Some("hq")), "{r:?}");
    assert_eq!(r.outcome, Outcome::Connected, "{r:?}");
    let d = r.duration_ms.expect("a connected call has a duration");
    // The switch measured from its answer to the hang-up: what the test saw, within the
    // messages' travel (not a timing assertion: a lost or restarted clock would be off by the
    // outage or the whole call).
    let seen = talked.as_millis() as u64;
    assert!(d + 2_000 >= seen && d <= seen + 2_000, "duration {d} ms, the test saw ≈{seen} ms: {r:?}");
    assert!(r.ended_ms - r.started_ms >= d as i64, "{r:?}");

    eprintln!(
        "FIGURE faults_survived_signal_server_kill 1 scenarios | kill -9 of the signal server mid-call: audio kept flowing, gateway and softphone back within 5 s of its restart"
    );
    eprintln!(
        "FIGURE call_records_lost_signal_server_kill 0 records | calls whose record was missing or doubled after kill -9 of the signal server mid-call (1 call)"
    );

    media.close().await;
    phone.quit().await;
    alice.close();
    gw.stop().await;
    cloud.sigkill().await;
}
