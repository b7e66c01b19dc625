//! F1 over the wire, up to the media: a browser (the headless client's WebRTC peer) dials a
//! desk phone through the real signal server (C1, C11–C13: the cloud names the switch,
//! `switch:hq`), offers WebRTC with the `trunkline-direct` DataChannel through the cloud and
//! gets the gateway's answer the same way, connects ICE + DTLS straight to the gateway and
//! presents the key on the DataChannel (C14); only then does the gateway ring the phone and
//! bridge it to that leg (C15). The phone here is a scripted SIP UA on a UDP socket (register
//! with digest, answer the INVITE, play a 440 Hz tone as PCMU, record what arrives), so the
//! test can check both directions byte by byte; the baresip tests cover real phones.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use common::direct::Browser;
use tokio::net::UdpSocket;
use trunkline_client::wav::{dominant_frequency, tone};
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_media::g711::Law;
use trunkline_media::rtp::{DtmfEvent, RtpFields, RtpStream, build_rtp, parse_rtp};
use trunkline_protocol::{CallEvent, DirectServerMsg};

/// Answer the next INVITE on `sip` with an SDP for `rtp`; returns the gateway's RTP address.
async fn answer_invite(sip: &UdpSocket, rtp: SocketAddr) -> (SocketAddr, String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::time::timeout(WAIT, sip.recv_from(&mut buf)).await.expect("INVITE in time").unwrap();
        let Ok(trunkline_sip::Message::Request(req)) = trunkline_sip::parse(&buf[..n]) else { continue };
        if req.method != trunkline_sip::Method::Invite {
            continue;
        }
        let offer = String::from_utf8_lossy(&req.body).into_owned();
        let sdp = trunkline_media::sdp::Sdp::parse(&offer).unwrap();
        let gw_rtp = sdp.audio_rtp_addr().expect("the gateway offers an RTP address");
        let mut ringing = trunkline_sip::Response::to_request(&req, 180, "Ringing");
        ringing.set_to_tag("phone");
        sip.send_to(&ringing.to_bytes(), from).await.unwrap();
        let mut ok = trunkline_sip::Response::to_request(&req, 200, "OK");
        ok.set_to_tag("phone");
        ok.headers.push("Contact", format!("<sip:1001@{}>", sip.local_addr().unwrap()));
        let answer = format!(
            "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            rtp.port()
        );
        ok.set_body("application/sdp", answer.into_bytes());
        sip.send_to(&ok.to_bytes(), from).await.unwrap();
        return (gw_rtp, offer, from);
    }
}

#[tokio::test]
async fn f1_browser_key_offer_answer_and_audio_both_ways_through_the_bridge() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, gw.sip, "1001", "pw-1001", 300, false).await, 200);
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // C1 → C13: the browser dials and gets the gateway's name + key.
    let mut browser = Browser::login(&cloud.ws_url, "2001").await;
    let (url, key) = browser.dial_connect("f1-media", "1001").await;
    assert_eq!(url, gw.address(), "C13 names the callee's switch; no ws:// address");

    // C14: the WebRTC leg through the cloud (a full ICE agent answers), then the key on it.
    let mut leg = browser.connect("f1-media", PeerOptions::bind("127.0.0.1".parse().unwrap()), AudioSource::tone(1000.0)).await;
    assert!(!leg.answer.contains("a=ice-lite"), "the gateway's leg is a full ICE agent");
    assert!(leg.answer.contains("m=application"), "the gateway took the DataChannel");
    leg.wait_open(WAIT).await.expect("ICE + DTLS + the DataChannel up with the gateway");
    // Nothing rang yet: the phone has heard nothing from the gateway.
    let mut probe = [0u8; 2048];
    assert!(sip.try_recv_from(&mut probe).is_err(), "the phone must not ring before the key");
    assert_eq!(leg.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: "f1-media".into() });
    let media = leg.media.clone();

    // C15: the phone rings (180 → `ringing`), answers; the bridge connects.
    let (gw_rtp, phone_offer, _) = answer_invite(&sip, phone_rtp.local_addr().unwrap()).await;
    assert!(phone_offer.contains("PCMU/8000"));
    assert_eq!(leg.progress_until_connected().await, vec![CallEvent::Ringing, CallEvent::Connected]);
    assert_eq!(browser.events_until_connected("f1-media").await, vec![CallEvent::Ringing, CallEvent::Connected]);
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with the gateway");

    // The phone plays 440 Hz (PCMU, 20 ms packets) and records what the browser sends.
    let phone_tone = tone(440.0, 2.0, 8000);
    let sender = {
        let rtp = std::sync::Arc::new(phone_rtp);
        let tx = rtp.clone();
        let send = tokio::spawn(async move {
            let mut stream = RtpStream::new(7, 0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for (i, frame) in phone_tone.chunks(160).enumerate() {
                tick.tick().await;
                let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
                let _ = tx.send_to(&pkt, gw_rtp).await;
            }
        });
        (rtp, send)
    };
    let (rtp, send) = sender;
    let mut heard: Vec<i16> = vec![];
    let mut buf = vec![0u8; 2048];
    while heard.len() < 8000 {
        let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf)).await.expect("audio from the browser").unwrap();
        if let Ok(h) = parse_rtp(&buf[..n])
            && h.payload_type == Law::Mu.payload_type()
        {
            Law::Mu.decode_into(h.payload(&buf[..n]), &mut heard);
        }
    }
    send.await.unwrap();
    let f_phone = dominant_frequency(&heard[heard.len() - 4000..], 8000);
    assert!((f_phone - 1000.0).abs() < 20.0, "the phone heard {f_phone} Hz, expected the browser's 1 kHz");
    media.wait_packets(60, WAIT).await.expect("audio from the phone");
    let rec = media.recording();
    let f_browser = dominant_frequency(&rec[rec.len().saturating_sub(4000)..], 8000);
    assert!((f_browser - 440.0).abs() < 20.0, "the browser heard {f_browser} Hz, expected the phone's 440 Hz");

    // DTMF both ways (RFC 4733): the browser presses 4, the phone receives the event; the phone
    // presses 7, the browser receives it.
    media.send_dtmf('4').unwrap();
    let mut got_event = None;
    while got_event.is_none() {
        let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf)).await.expect("DTMF in time").unwrap();
        if let Ok(h) = parse_rtp(&buf[..n])
            && h.payload_type == 101
            && let Some(e) = DtmfEvent::parse(h.payload(&buf[..n]))
            && e.end
        {
            got_event = Some(e.event);
        }
    }
    assert_eq!(got_event, Some(4), "the phone received the browser's digit");
    for i in 0..6u16 {
        // RFC 4733 §2.5.1.3: the marker starts the event; all its packets share the timestamp.
        let fields = RtpFields { marker: i == 0, payload_type: 101, sequence: 200 + i, timestamp: 0x4000, ssrc: 7 };
        let event = DtmfEvent { event: 7, end: i >= 3, volume: 10, duration: 160 * (i + 1) };
        rtp.send_to(&build_rtp(&fields, &event.to_bytes()), gw_rtp).await.unwrap();
    }
    assert_eq!(media.wait_dtmf(1, WAIT).await.expect("the browser receives the phone's digit"), "7");

    // The direct leg does not need the cloud: stop the signal server, audio keeps flowing.
    cloud.stop().await;
    let before = media.stats().packets_received;
    let keep = {
        let rtp = rtp.clone();
        tokio::spawn(async move {
            let mut stream = RtpStream::new(7, 1000);
            let frame = Law::Mu.encode_frame(&tone(440.0, 0.02, 8000));
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..250u32 {
                tick.tick().await;
                let pkt = stream.packet(Law::Mu.payload_type(), 100_000 + i * 160, &frame);
                let _ = rtp.send_to(&pkt, gw_rtp).await;
            }
        })
    };
    keep.await.unwrap();
    let after = media.stats().packets_received;
    assert!(after - before >= 200, "5 s of audio after the cloud went away: {} packets", after - before);
    media.close().await;
    gw.stop().await;
}
