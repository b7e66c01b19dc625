//! F3 over the wire: desk phone 1001 on gateway "hq" calls 2001, a browser with no switch.
//! The cloud answers hq's B2 with the device id (B6); hq queues the call and hands the cloud
//! its direct address + key; the cloud tells the browser over its live WebSocket (C3); the
//! browser connects straight to hq's direct endpoint with the key (C14) and offers WebRTC; hq
//! answers the phone and bridges (C15). Audio is checked both ways by frequency.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;
use scripted_phone::*;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message as Ws;
use trunkline_client::wav::dominant_frequency;
use trunkline_client::webrtc::{AudioSource, PeerOptions, WebRtcPeer};
use trunkline_protocol::{DirectClientMsg, DirectServerMsg, IncomingVia, ServerMsg};

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut WsStream) -> String {
    match tokio::time::timeout(WAIT, ws.next()).await.expect("message in time") {
        Some(Ok(Ws::Text(t))) => t.to_string(),
        other => panic!("{other:?}"),
    }
}

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
    let (mut browser, _) = tokio_tungstenite::connect_async(cloud.ws_url.as_str()).await.unwrap();
    browser.send(Ws::Text(r#"{"type":"login","v":1,"number":"2001","password":"pw-2001"}"#.into())).await.unwrap();
    assert!(matches!(ServerMsg::decode(&next(&mut browser).await).unwrap(), ServerMsg::Welcome { .. }));

    // The phone dials 2001; the browser handles the incoming call as a browser would.
    let phone_rtp_addr = phone_rtp.local_addr().unwrap();
    let caller = tokio::spawn({
        let gw = hq.sip;
        async move {
            let ok = call(&sip, gw, "2001", phone_rtp_addr).await;
            (ok, sip)
        }
    });
    let (call_id, url, key) = loop {
        if let ServerMsg::Incoming { call_id, from, via: IncomingVia::Direct { url, key, .. }, .. } =
            ServerMsg::decode(&next(&mut browser).await).unwrap()
        {
            assert_eq!(from, "1001");
            break (call_id, url, key);
        }
    };
    assert_eq!(url, hq.direct_url, "C3 names the caller's gateway");
    let (mut direct, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let present = DirectClientMsg::Present { v: 1, call_id: call_id.clone(), key, caller: "2001".into() };
    direct.send(Ws::Text(present.encode().into())).await.unwrap();
    assert_eq!(DirectServerMsg::decode(&next(&mut direct).await).unwrap(), DirectServerMsg::Accepted { call_id });
    let mut peer = WebRtcPeer::bind(PeerOptions::bind("127.0.0.1".parse().unwrap())).await.unwrap();
    direct.send(Ws::Text(DirectClientMsg::Offer { sdp: peer.create_offer().unwrap() }.encode().into())).await.unwrap();
    let answer = match DirectServerMsg::decode(&next(&mut direct).await).unwrap() {
        DirectServerMsg::Answer { sdp } => sdp,
        other => panic!("{other:?}"),
    };
    let media = peer.accept_answer(&answer, AudioSource::tone(1000.0)).unwrap();
    let (ok, _sip) = caller.await.unwrap();
    let hq_rtp = trunkline_media::sdp::Sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap().audio_rtp_addr().unwrap();
    media.wait_connected(WAIT).await.expect("ICE + DTLS up");

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
