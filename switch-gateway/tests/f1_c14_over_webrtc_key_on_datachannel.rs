//! F1 with C14 over WebRTC (no `ws://` direct endpoint): the headless softphone dials a desk
//! phone; the cloud hands it the switch's key (C13); its offer (audio + DataChannel) and the
//! gateway's answer and candidates travel through the cloud (`direct_signal`); ICE + DTLS
//! connect straight to the gateway's full-ICE leg; the key goes on the DataChannel, the gateway
//! accepts it (C14) and only then rings the phone and bridges (C15). Audio both ways by
//! frequency. A forged key on the DataChannel gets a typed `bad_key` and nothing rings.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;

use std::time::Duration;

use common::direct::{Browser, forge};
use tokio::net::UdpSocket;
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::{dominant_frequency, tone};
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RtpStream, parse_rtp};
use trunkline_protocol::{DirectServerMsg, ErrorCode, Outcome, Step};

fn softphone_config(cloud: &Cloud) -> SoftphoneConfig {
    SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_key_on_the_datachannel_then_the_phone_rings_and_audio_flows_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, gw.sip, "1001", "pw-1001", 300, false).await, 200);
    let phone_rtp = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    let alice = Softphone::login(softphone_config(&cloud)).await.unwrap();
    let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
    let gw_rtp = scripted_phone::answer(&sip, phone_rtp.local_addr().unwrap()).await;
    let media = call.wait_media(WAIT).await.expect("the WebRTC leg to the gateway");
    media.wait_connected(WAIT).await.expect("ICE + DTLS straight to the gateway");

    // The phone plays 440 Hz; the browser plays 1 kHz.
    let sender = {
        let tx = phone_rtp.clone();
        tokio::spawn(async move {
            let mut stream = RtpStream::new(7, 0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for (i, frame) in tone(440.0, 3.0, 8000).chunks(160).enumerate() {
                tick.tick().await;
                let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
                let _ = tx.send_to(&pkt, gw_rtp).await;
            }
        })
    };
    let mut heard: Vec<i16> = vec![];
    let mut buf = vec![0u8; 2048];
    while heard.len() < 8000 {
        let (n, _) = tokio::time::timeout(WAIT, phone_rtp.recv_from(&mut buf)).await.expect("audio from the browser").unwrap();
        if let Ok(h) = parse_rtp(&buf[..n])
            && h.payload_type == Law::Mu.payload_type()
        {
            Law::Mu.decode_into(h.payload(&buf[..n]), &mut heard);
        }
    }
    let f_phone = dominant_frequency(&heard[heard.len() - 4000..], 8000);
    assert!((f_phone - 1000.0).abs() < 20.0, "the phone heard {f_phone} Hz, expected the browser's 1 kHz");
    media.wait_packets(60, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(4000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected the phone's 440 Hz");
    sender.await.unwrap();

    call.hangup();
    let status = call.wait_finished(WAIT).await.unwrap();
    assert_eq!(status.outcome.map(|o| o.0), Some(Outcome::Connected), "{status:?}");
    // The cloud's record has the patent's F1 steps, the key accepted (C14) before the bridge.
    let call_id = call.call_id().to_string();
    let trace = call_records_of(&cloud.db_url, &call_id).await.remove(0).trace;
    let pos = |s: Step| trace.iter().position(|t| *t == s).unwrap_or_else(|| panic!("step {s} in {trace:?}"));
    assert!(pos(Step::C13) < pos(Step::C14) && pos(Step::C14) < pos(Step::C15), "{trace:?}");
    gw.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_on_the_datachannel_is_refused_and_nothing_rings() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, gw.sip, "1001", "pw-1001", 300, false).await, 200);

    // The caller's side by hand (common::direct): a real signed-in browser, a real offer through
    // the cloud and a real WebRTC leg to the gateway; only the key presented on the DataChannel
    // is forged.
    let mut browser = Browser::login(&cloud.ws_url, "2001").await;
    let (_, real_key) = browser.dial_connect("forged", "1001").await;
    let mut leg = browser.connect("forged", PeerOptions::default(), AudioSource::tone(1000.0)).await;
    assert!(!leg.answer.contains("a=ice-lite"), "the gateway's session leg is a full ICE agent");
    let reply = leg.present(&forge(&real_key), "2001").await;
    assert!(matches!(reply, DirectServerMsg::Error { code: ErrorCode::BadKey, .. }), "{reply:?}");
    leg.media.close().await;
    // Nothing rang: the key still waits, and the first thing the phone hears from the gateway is
    // the INVITE that follows the real key (on a new leg).
    let mut leg = browser.connect("forged", PeerOptions::default(), AudioSource::tone(1000.0)).await;
    assert_eq!(leg.present(&real_key, "2001").await, DirectServerMsg::Accepted { call_id: "forged".into() });
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, sip.recv_from(&mut buf)).await.expect("the phone rings now").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("INVITE"), "the first thing the phone got is the INVITE");
    leg.media.close().await;
    gw.stop().await;
    cloud.stop().await;
}
