//! The stack `./trunkline run` starts (same library, random ports, a fresh data folder): a
//! demo browser user calls hq's echo number and hears its own 1 kHz tone back, then calls the
//! other demo browser user (F4) with audio both ways; a restart on the same data folder keeps
//! the accounts and logins.

use std::time::Duration;

use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};

const WAIT: Duration = Duration::from_secs(15);

fn opts(dir: &std::path::Path) -> trunkline_demo::StackOptions {
    trunkline_demo::StackOptions {
        data_dir: dir.to_path_buf(),
        http_port: 0,
        bind_ip: "127.0.0.1".parse().unwrap(),
        web_root: dir.join("no-web"),
        with_phones: false,
    }
}

async fn login(stack: &trunkline_demo::Stack, i: usize) -> Softphone {
    let b = &stack.info.browsers[i];
    let mut cfg = SoftphoneConfig::new(format!("ws://{}/ws", stack.info.http), b.number.clone(), b.password.clone());
    cfg.media = PeerOptions::bind("127.0.0.1".parse().unwrap());
    // The gateways sign in to the cloud right after start; the first login may race them.
    Softphone::login(cfg).await.expect("demo login works")
}

#[tokio::test]
async fn demo_user_hears_the_echo_test_and_calls_the_other_demo_user() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = trunkline_demo::start(opts(tmp.path())).await.expect("stack starts");
    let summary = stack.info.summary(false, tmp.path());
    assert!(summary.contains("1999") && summary.contains(&stack.info.browsers[0].password));

    let alice = login(&stack, 0).await;
    let bob = login(&stack, 1).await;
    stack.wait_ready(WAIT).await.expect("both gateways signed in");
    // Echo test on hq.
    let call = alice.call("1999", AudioSource::tone(1000.0)).await.expect("call placed");
    let m = call.wait_media(WAIT).await.expect("the echo test answers");
    m.wait_packets(150, WAIT).await.expect("audio comes back");
    let rec = m.recording();
    let f = dominant_frequency(&rec[rec.len() - 8000..], 8000);
    assert!((f - 1000.0).abs() < 20.0, "heard {f} Hz from the echo test, expected our 1 kHz");
    call.hangup();

    // F4: Alice calls Bob, who answers; tones both ways.
    let bob_answers = tokio::spawn(async move {
        let h = bob.answer_incoming(AudioSource::tone(440.0), WAIT).await.expect("bob gets the call");
        let m = h.wait_media(WAIT).await.expect("bob's media");
        m.wait_packets(100, WAIT).await.expect("bob hears alice");
        let rec = m.recording();
        let f = dominant_frequency(&rec[rec.len() - 4000..], 8000);
        (f, h, bob)
    });
    let call = alice.call("2002", AudioSource::tone(1000.0)).await.unwrap();
    let m = call.wait_media(WAIT).await.expect("alice's media");
    m.wait_packets(100, WAIT).await.expect("alice hears bob");
    let rec = m.recording();
    let f_alice = dominant_frequency(&rec[rec.len() - 4000..], 8000);
    let (f_bob, _h, _bob) = bob_answers.await.unwrap();
    assert!((f_alice - 440.0).abs() < 20.0, "alice heard {f_alice} Hz");
    assert!((f_bob - 1000.0).abs() < 20.0, "bob heard {f_bob} Hz");
    call.hangup();
    let browsers = stack.info.browsers.clone();
    stack.stop().await;

    // A second run reuses the data: same logins work.
    let stack = trunkline_demo::start(opts(tmp.path())).await.expect("restarts");
    assert_eq!(stack.info.browsers, browsers);
    let _alice = login(&stack, 0).await;
    stack.stop().await;
}
