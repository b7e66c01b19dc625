//! F1, then the browser vanishes mid-call with no goodbye, as a killed tab or a dropped network
//! does: no hang-up on the DataChannel, no DTLS close_notify, no SCTP abort, nothing more on the
//! wire. The gateway notices that the WebRTC leg has gone silent (no media, no RTCP, no ICE
//! consent for its silence limit of 30 s), ends the call, sends the desk phone a BYE and reports
//! the end to the cloud. The phone then takes the next call instead of staying busy for good
//! (before, it answered every later caller with busy, which the NAT lab's e2e run caught).

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::webrtc::AudioSource;
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RtpStream, parse_rtp};
use trunkline_protocol::Outcome;
use trunkline_sip::{Message, Method, Response};

/// The gateway's silence limit (30 s) and room for a slow machine.
const BYE_WITHIN: Duration = Duration::from_secs(75);

/// Wait for RTP from the gateway on the phone's socket (the browser's audio is through).
async fn audio_reaches_the_phone(rtp: &UdpSocket) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf)).await.expect("audio from the browser").unwrap();
        if parse_rtp(&buf[..n]).is_ok_and(|h| h.payload_type == Law::Mu.payload_type()) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_browser_vanishes_mid_call_the_phone_gets_a_bye_and_takes_the_next_call() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, gw.sip, "1001", "pw-1001", 300, false).await, 200);
    let phone_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    let alice = Softphone::login(SoftphoneConfig::new(cloud.ws_url.clone(), "2001", "pw-2001")).await.unwrap();
    let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
    let gw_rtp = scripted_phone::answer(&sip, phone_rtp.local_addr().unwrap()).await;
    let media = call.wait_media(WAIT).await.expect("the WebRTC leg to the gateway");
    media.wait_connected(WAIT).await.expect("ICE + DTLS straight to the gateway");
    audio_reaches_the_phone(&phone_rtp).await;

    // The phone goes on talking, as a phone does: its audio must not keep the call alive.
    let talking = Arc::new(AtomicBool::new(true));
    let phone_audio = {
        let (tx, talking) = (phone_rtp.clone(), talking.clone());
        tokio::spawn(async move {
            let mut stream = RtpStream::new(7, 0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let silence = Law::Mu.encode_frame(&[0i16; 160]);
            let mut ts = 0u32;
            while talking.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = tx.send_to(&stream.packet(Law::Mu.payload_type(), ts, &silence), gw_rtp).await;
                ts = ts.wrapping_add(160);
            }
        })
    };

    media.vanish();

    // The gateway hangs the phone up.
    let deadline = tokio::time::Instant::now() + BYE_WITHIN;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sip.recv_from(&mut buf))
            .await
            .expect("a BYE to the phone once the browser went silent")
            .unwrap();
        let Ok(Message::Request(req)) = trunkline_sip::parse(&buf[..n]) else { continue };
        if req.method == Method::Bye {
            sip.send_to(&Response::to_request(&req, 200, "OK").to_bytes(), from).await.unwrap();
            break;
        }
    }
    talking.store(false, Ordering::Relaxed);
    phone_audio.await.unwrap();

    // The cloud has the call as ended (connected, with its talk time).
    let call_id = call.call_id().to_string();
    let recs = call_records_of(&cloud.db_url, &call_id).await;
    assert!(recs.iter().all(|r| r.outcome == Outcome::Connected && r.duration_ms.is_some()), "{recs:?}");

    // The phone is free: the next call rings it and audio flows.
    let bob = Softphone::login(SoftphoneConfig::new(cloud.ws_url.clone(), "2002", "pw-2002")).await.unwrap();
    let next = bob.call("1001", AudioSource::tone(1000.0)).await.unwrap();
    scripted_phone::answer(&sip, phone_rtp.local_addr().unwrap()).await;
    let media = next.wait_media(WAIT).await.expect("the next call's WebRTC leg");
    media.wait_connected(WAIT).await.expect("the next call connects");
    audio_reaches_the_phone(&phone_rtp).await;
    next.hangup();
    next.wait_finished(WAIT).await.unwrap();

    gw.stop().await;
    cloud.stop().await;
}
