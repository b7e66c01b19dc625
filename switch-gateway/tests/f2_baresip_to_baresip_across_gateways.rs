//! F2 with real desk phones: baresip 1001 on gateway hq calls baresip 3001 on gateway branch
//! (two gateways, one signal server). hq asks the cloud (B2), gets branch's name (B5) and,
//! via C2, a key branch issued (C11/C12); hq connects to branch as a WebRTC caller (offer and
//! candidates through the cloud, the key on the DataChannel: C14); branch rings 3001, which answers by itself, and bridges (C15). Checked: each
//! phone recorded the other's tone (3001 ≈1 kHz, 1001 ≈440 Hz); a digit 1001 sends (baresip's
//! `sndcode`) reaches 3001 across both gateways (3001's `CALL_DTMF_START`); with the signal
//! server stopped both phones keep hearing each other for 5 s; the cloud's call record lists
//! the patent steps in order.

#[path = "common/baresip.rs"]
mod baresip;
mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::time::Duration;

use baresip::Phone;
use common::*;
use signal_server::directory::Directory;
use signal_server::directory::sqlite::SqliteDirectory;
use sipcheck::wait_phone_list;
use trunkline_protocol::{Outcome, Step};

/// Long enough for the whole test: baresip hangs up when its WAV file ends.
const WAV_SECS: u32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_baresip_on_hq_calls_baresip_on_branch_audio_dtmf_cloud_down_and_steps() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let hq = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
    let branch = Gateway::start("branch", &cloud.ws_url, dir.path()).await;
    wait_phone_list(&hq.config.state_dir, &["1001"]).await;
    wait_phone_list(&branch.config.state_dir, &["3001"]).await;
    eventually("both gateways online", || async {
        switch_online(&cloud.db_url, "hq").await && switch_online(&cloud.db_url, "branch").await
    })
    .await;

    let tone1k = baresip::tone_wav(dir.path(), "tone1k.wav", 1000, WAV_SECS);
    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, WAV_SECS);
    let mut caller = Phone::start(dir.path(), "1001", hq.sip, &tone1k, false).await;
    let mut callee = Phone::start(dir.path(), "3001", branch.sip, &tone440, true).await;
    caller.registered().await;
    callee.registered().await;

    // 1001 dials 3001 at its own gateway; the call crosses to branch.
    caller.dial(&format!("sip:3001@{}", hq.sip)).await;
    callee.expect_event("CALL_ESTABLISHED", Duration::from_secs(20)).await;
    caller.expect_event("CALL_ESTABLISHED", Duration::from_secs(20)).await;
    // Each gateway's own patent steps, from its core's trace: the caller's switch asked the
    // cloud (B1, B2), got the address + key (C2) and heard the callee's site bridge (C15); the
    // callee's switch queued the call with a key (C12), checked it (C14) and bridged (C15).
    assert_eq!(hq.steps_of_the_call(), [Step::B1, Step::B2, Step::C2, Step::C15], "hq's steps");
    assert_eq!(branch.steps_of_the_call(), [Step::C12, Step::C14, Step::C15], "branch's steps");
    assert_eq!(hq.steps.all()[0].0, branch.steps.all()[0].0, "one cloud call id on both switches");

    // Tones both ways, each phone's RTP coming from its own gateway.
    let heard_by_callee = callee.wait_received(3.0, WAIT).await;
    let heard_by_caller = caller.wait_received(3.0, WAIT).await;
    baresip::check_tone(&callee, "heard from 1001", &baresip::since(&heard_by_callee, 1.0), 1000.0, 1.5);
    baresip::check_tone(&caller, "heard from 3001", &baresip::since(&heard_by_caller, 1.0), 440.0, 1.5);
    baresip::assert_rtp_from(&callee, &baresip::rtp_ports_of(&branch.config));
    baresip::assert_rtp_from(&caller, &baresip::rtp_ports_of(&hq.config));

    // DTMF across both gateways: 1001 sends 9 (RFC 4733), 3001 reports receiving it.
    caller.send_dtmf("9").await;
    assert_eq!(callee.expect_dtmf(1, WAIT).await, "9", "3001 received 1001's digit");
    assert!(caller.log_text().contains("send DTMF digit: '9'"), "1001 sent the digit\n{}", caller.dump());

    // The direct leg between the sites survives the cloud: stop it; both phones keep
    // recording the other's tone for 5 more seconds, and neither call ends.
    let cloud_db = cloud.db_url.clone();
    cloud.stop().await;
    let (callee_before, caller_before) = (callee.received_secs(), caller.received_secs());
    let heard_by_callee = callee.wait_received(callee_before + 5.0, Duration::from_secs(10)).await;
    let heard_by_caller = caller.wait_received(caller_before + 5.0, Duration::from_secs(10)).await;
    baresip::check_tone(&callee, "heard without the cloud", &baresip::since(&heard_by_callee, callee_before), 1000.0, 4.5);
    baresip::check_tone(&caller, "heard without the cloud", &baresip::since(&heard_by_caller, caller_before), 440.0, 4.5);
    caller.sync_events().await;
    callee.sync_events().await;
    assert!(!caller.saw_event("CALL_CLOSED") && !callee.saw_event("CALL_CLOSED"), "a call leg ended without the cloud");

    // 1001 hangs up; 3001's call ends too.
    caller.hangup().await;
    caller.expect_event("CALL_CLOSED", WAIT).await;
    callee.expect_event("CALL_CLOSED", WAIT).await;

    // The cloud stopped with the call connected; it recorded the attempt with the steps it saw.
    // C2 (hq is handed branch's address + key) follows C12 (branch issued that key).
    let db = SqliteDirectory::open(&cloud_db).await.unwrap();
    eventually("the cloud recorded the call", || {
        let db = db.clone();
        async move { !db.call_records(Some("1001"), 5).await.unwrap().is_empty() }
    })
    .await;
    let records = db.call_records(Some("1001"), 5).await.unwrap();
    assert_eq!(records.len(), 1, "one attempt: {records:?}");
    let r = &records[0];
    eprintln!("call record: {} → {} {:?} steps {:?}", r.caller, r.callee, r.outcome, r.trace);
    assert_eq!((r.caller.as_str(), r.callee.as_str()), ("1001", "3001"));
    assert_eq!(r.outcome, Outcome::Connected);
    let order = [Step::B2, Step::B4, Step::B5, Step::C11, Step::C12, Step::C2, Step::C14, Step::C15];
    let listed: Vec<Step> = r.trace.iter().copied().filter(|s| order.contains(s)).collect();
    assert_eq!(listed, order, "the patent steps in order (full trace {:?})", r.trace);

    caller.quit().await;
    callee.quit().await;
    hq.stop().await;
    branch.stop().await;
}
