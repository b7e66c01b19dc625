//! F3 with C14 over WebRTC: desk phone 1001 on gateway "hq" calls 2001, a browser with no
//! switch (the headless softphone). B6 → hq queues the call and hands the cloud its key (C3);
//! the callee's offer (audio + DataChannel) and hq's answer and candidates go through the
//! cloud; the callee presents the key on the DataChannel as itself (C14); hq answers the
//! phone's INVITE through the bridge (C15). Audio both ways by frequency.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;
use scripted_phone::*;

use std::sync::Arc;

use tokio::net::UdpSocket;
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::AudioSource;
use trunkline_protocol::{IncomingVia, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_the_switchless_callee_reaches_the_callers_gateway_over_webrtc_with_its_key_on_the_datachannel() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let hq = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, hq.sip, "1001", "pw-1001", 300, false).await, 200);
    let phone_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    let cfg = SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001");
    let bob = Softphone::login(cfg).await.unwrap();

    let phone_rtp_addr = phone_rtp.local_addr().unwrap();
    let caller = tokio::spawn({
        let gw = hq.sip;
        async move {
            let ok = call(&sip, gw, "2001", phone_rtp_addr).await;
            (ok, sip)
        }
    });
    let incoming = bob.next_incoming(WAIT).await.expect("C3: the callee is told");
    assert_eq!(incoming.from, "1001");
    assert!(matches!(incoming.via, IncomingVia::Direct { .. }));
    let call = incoming.answer(AudioSource::tone(1000.0));
    let media = call.wait_media(WAIT).await.expect("the WebRTC leg to the caller's gateway");
    let (ok, _sip) = caller.await.unwrap();
    assert_eq!(ok.status, 200, "the phone's INVITE is answered through the bridge");
    let hq_rtp = trunkline_media::sdp::Sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap().audio_rtp_addr().unwrap();
    media.wait_connected(WAIT).await.expect("ICE + DTLS up");

    let heard_by_phone = play_and_record(phone_rtp.clone(), hq_rtp, 440.0, 2.0).await;
    let f_phone = dominant_frequency(&heard_by_phone[heard_by_phone.len() - 4000..], 8000);
    assert!((f_phone - 1000.0).abs() < 20.0, "the phone heard {f_phone} Hz, expected the browser's 1 kHz");
    media.wait_packets(60, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(4000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected the phone's 440 Hz");

    call.hangup();
    let status = call.wait_finished(WAIT).await.unwrap();
    assert_eq!(status.outcome.map(|o| o.0), Some(Outcome::Connected), "{status:?}");
    hq.stop().await;
    cloud.stop().await;
}
