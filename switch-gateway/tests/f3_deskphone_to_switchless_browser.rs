//! F3 over the wire: desk phone 1001 on gateway "hq" calls 2001, a browser with no switch.
//! The cloud answers hq's B2 with the device id (B6); hq queues the call and hands the cloud
//! its name (`switch:hq`) + key; the cloud tells the browser over its live WebSocket (C3); the
//! browser offers WebRTC (audio + the `trunkline-direct` DataChannel) to hq through the cloud,
//! connects ICE + DTLS straight to hq and presents the key on the DataChannel as itself (C14);
//! only then does hq answer the phone, bridged to that leg (C15). Audio is checked both ways by
//! frequency.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::direct::Browser;
use common::*;
use scripted_phone::*;

use std::sync::Arc;

use tokio::net::UdpSocket;
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_protocol::{CallEvent, DirectServerMsg, IncomingVia, ServerMsg};

#[tokio::test]
async fn f3_deskphone_calls_a_switchless_browser_that_connects_directly_to_the_callers_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let hq = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, hq.sip, "1001", "pw-1001", 300, false).await, 200);
    let phone_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    // The browser is online at the cloud.
    let mut browser = Browser::login(&cloud.ws_url, "2001").await;

    // The phone dials 2001; the browser handles the incoming call as a browser would.
    let phone_rtp_addr = phone_rtp.local_addr().unwrap();
    let (answered_tx, mut answered_rx) = tokio::sync::oneshot::channel();
    let caller = tokio::spawn({
        let gw = hq.sip;
        async move {
            let ok = call(&sip, gw, "2001", phone_rtp_addr).await;
            let _ = answered_tx.send(());
            (ok, sip)
        }
    });
    let (call_id, url, key) = browser
        .wait_for("incoming via direct", |m| match m {
            ServerMsg::Incoming { call_id, from, via: IncomingVia::Direct { url, key, .. }, .. } => {
                assert_eq!(from, "1001");
                Some((call_id.clone(), url.clone(), key.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(url, hq.address(), "C3 names the caller's switch; no ws:// address");
    let mut leg = browser.connect(&call_id, PeerOptions::bind("127.0.0.1".parse().unwrap()), AudioSource::tone(1000.0)).await;
    leg.wait_open(WAIT).await.expect("ICE + DTLS + the DataChannel up with hq");
    // The phone's INVITE is not answered before the key.
    assert!(answered_rx.try_recv().is_err(), "hq answered the phone before the key was presented");
    assert_eq!(leg.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: call_id.clone() });
    assert_eq!(leg.recv().await, Some(DirectServerMsg::Progress { event: CallEvent::Connected }));
    let media = leg.media.clone();
    let (ok, _sip) = caller.await.unwrap();
    assert_eq!(ok.status, 200, "the phone's INVITE is answered through the bridge");
    let hq_rtp = trunkline_media::sdp::Sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap().audio_rtp_addr().unwrap();
    media.wait_connected(WAIT).await.expect("ICE + DTLS up");
    use trunkline_protocol::Step;
    assert_eq!(hq.steps_of_the_call(), [Step::B1, Step::B2, Step::C14, Step::C15], "hq's patent steps (its core's trace)");

    let heard_by_phone = play_and_record(phone_rtp.clone(), hq_rtp, 440.0, 2.0).await;
    let f_phone = dominant_frequency(&heard_by_phone[heard_by_phone.len() - 4000..], 8000);
    assert!((f_phone - 1000.0).abs() < 20.0, "the phone heard {f_phone} Hz, expected the browser's 1 kHz");
    media.wait_packets(60, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(4000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected the phone's 440 Hz");
    media.close().await;
    hq.stop().await;
    cloud.stop().await;
}
