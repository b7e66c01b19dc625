//! The echo-test number (`echo_number`) is a real gateway feature: a browser (the headless
//! softphone) calls hq's echo number through the cloud (C1, C11–C15), hears the prompt tone,
//! then its own 1 kHz tone back; a desk phone reaches it locally (F7) without any phone
//! registered for that number.

mod common;
use common::*;

use std::time::Duration;

use signal_server::directory::{Directory, NewAccount};
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_protocol::AccountKind;

#[tokio::test]
async fn browser_calls_the_echo_number_and_hears_its_own_tone() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    // The echo number exists in the directory as a number on hq, so the cloud routes to hq.
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(&cloud.db_url).await.unwrap();
    dir.add_account(NewAccount {
        number: "1999".into(),
        display_name: "Echo test".into(),
        kind: AccountKind::Deskphone,
        home_switch: Some("hq".into()),
        password_hash: signal_server::credentials::hash_password("unused-echo-password", 64, 1).unwrap(),
        ha1_md5: None,
        ha1_sha256: None,
    })
    .await
    .unwrap();
    let hq = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| c.echo_number = Some("1999".into())).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    // The cloud picks up directory changes within a second and tells hq (phones_update).
    let phones = hq.config.state_dir.join("phones.json");
    eventually("the cloud knows 1999 (hq's phone list has it)", || {
        let phones = phones.clone();
        async move { std::fs::read_to_string(&phones).is_ok_and(|t| t.contains("\"1999\"")) }
    })
    .await;

    let mut cfg = SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001");
    cfg.media = PeerOptions::bind("127.0.0.1".parse().unwrap());
    let phone = Softphone::login(cfg).await.expect("signs in");
    let call = phone.call("1999", AudioSource::tone(1000.0)).await.expect("call placed");
    let media = call.wait_media(WAIT).await.expect("media up with the gateway");
    // Prompt (0.4 s) then echo: wait for 3 s of audio, look at the last second.
    media.wait_packets(150, WAIT).await.expect("audio comes back");
    let rec = media.recording();
    let f = dominant_frequency(&rec[rec.len() - 8000..], 8000);
    assert!((f - 1000.0).abs() < 20.0, "heard {f} Hz back, expected our own 1 kHz");
    let first = dominant_frequency(&rec[..2400.min(rec.len())], 8000);
    assert!((first - 800.0).abs() < 20.0, "the call opens with the 800 Hz prompt, heard {first} Hz");
    drop(call);
    let _ = tokio::time::timeout(Duration::from_secs(5), media.close()).await;
    hq.stop().await;
    cloud.stop().await;
}
