//! F2 over the wire: desk phone 1001 on gateway "hq" calls desk phone 3001 on gateway "branch"
//! (two gateways and one signal server). hq asks the cloud (B2), gets branch's name (B5)
//! and a key from branch (C11/C12) via C2, connects to branch as a WebRTC caller — offer,
//! answer and candidates through the cloud, the key on the DataChannel (C14; neither gateway
//! listens for callers on any port) — and branch rings 3001 and bridges (C15). The phones are scripted SIP UAs (digest,
//! INVITE/answer, PCMU tones); audio is checked both ways by frequency, then the cloud's call
//! record must list the patent steps in order. DTMF crosses both gateways, and the call keeps
//! its audio for 5 s after the signal server is stopped.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;
use scripted_phone::*;

use std::sync::Arc;

use signal_server::directory::Directory;
use tokio::net::UdpSocket;
use trunkline_client::wav::dominant_frequency;
use trunkline_media::rtp::{DtmfEvent, RtpFields, build_rtp, parse_rtp};
use trunkline_protocol::Step;
use trunkline_sip::Message;

#[tokio::test]
async fn f2_deskphone_on_hq_calls_deskphone_on_branch_with_audio_both_ways_and_traced_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let hq = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    let branch = Gateway::start("branch", &cloud.ws_url, tmp.path()).await;
    eventually("both gateways online", || async {
        switch_online(&cloud.db_url, "hq").await && switch_online(&cloud.db_url, "branch").await
    })
    .await;
    let caller_sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&caller_sip, hq.sip, "1001", "pw-1001", 300, false).await, 200);
    assert_eq!(register_udp(&callee_sip, branch.sip, "3001", "pw-3001", 300, false).await, 200);
    let caller_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let callee_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    let (callee_rtp_addr, caller_rtp_addr) = (callee_rtp.local_addr().unwrap(), caller_rtp.local_addr().unwrap());
    let callee = tokio::spawn(async move { answer(&callee_sip, callee_rtp_addr).await });
    let ok = call(&caller_sip, hq.sip, "3001", caller_rtp_addr).await;
    let branch_rtp = callee.await.unwrap();
    let hq_rtp = trunkline_media::sdp::Sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap().audio_rtp_addr().unwrap();

    let (heard_by_callee, heard_by_caller) = tokio::join!(
        play_and_record(callee_rtp.clone(), branch_rtp, 440.0, 2.0),
        play_and_record(caller_rtp.clone(), hq_rtp, 1000.0, 2.0),
    );
    let f_callee = dominant_frequency(&heard_by_callee[heard_by_callee.len() - 4000..], 8000);
    let f_caller = dominant_frequency(&heard_by_caller[heard_by_caller.len() - 4000..], 8000);
    assert!((f_callee - 1000.0).abs() < 20.0, "3001 heard {f_callee} Hz, expected 1001's 1 kHz");
    assert!((f_caller - 440.0).abs() < 20.0, "1001 heard {f_caller} Hz, expected 3001's 440 Hz");

    // DTMF across the two gateways: 1001 presses 9, 3001's phone receives the RFC 4733 event.
    for i in 0..6u16 {
        // RFC 4733 §2.5.1.3: the marker starts the event; all its packets share the timestamp.
        let fields = RtpFields { marker: i == 0, payload_type: 101, sequence: 50 + i, timestamp: 0x1_0000, ssrc: 9 };
        let event = DtmfEvent { event: 9, end: i >= 3, volume: 10, duration: 160 * (i + 1) };
        caller_rtp.send_to(&build_rtp(&fields, &event.to_bytes()), hq_rtp).await.unwrap();
    }
    let mut buf = vec![0u8; 2048];
    let digit = loop {
        let (n, _) = tokio::time::timeout(WAIT, callee_rtp.recv_from(&mut buf)).await.expect("DTMF in time").unwrap();
        if let Ok(h) = parse_rtp(&buf[..n])
            && h.payload_type == 101
            && let Some(e) = DtmfEvent::parse(h.payload(&buf[..n]))
            && e.end
        {
            break e.event;
        }
    };
    assert_eq!(digit, 9, "3001 received 1001's digit");

    // The direct leg between the sites survives the cloud: stop it, audio keeps flowing for 5 s.
    let cloud_db = cloud.db_url.clone();
    cloud.stop().await;
    let (heard_by_callee, _) = tokio::join!(
        play_and_record(callee_rtp.clone(), branch_rtp, 440.0, 5.0),
        play_and_record(caller_rtp.clone(), hq_rtp, 1000.0, 5.0),
    );
    assert!(heard_by_callee.len() >= 24_000, "3001 kept hearing 1001 without the cloud");
    let f = dominant_frequency(&heard_by_callee[heard_by_callee.len() - 4000..], 8000);
    assert!((f - 1000.0).abs() < 20.0, "{f} Hz");

    // Hang up from the caller: 200, and the cloud records the call with its steps in order.
    let local = caller_sip.local_addr().unwrap();
    let bye = format!(
        "BYE sip:hq@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf2bye;rport\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{}>;tag=f2caller\r\n\
         To: {}\r\nCall-ID: f2-call@test\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        hq.sip,
        hq.sip,
        ok.headers.get("To").unwrap()
    );
    caller_sip.send_to(bye.as_bytes(), hq.sip).await.unwrap();
    loop {
        if let (Message::Response(r), _) = next_msg(&caller_sip).await
            && r.status == 200
        {
            break;
        }
    }
    // The cloud stopped with the call connected: it recorded the attempt (connected) with the
    // steps it saw, as every attempt gets exactly one record.
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(&cloud_db).await.unwrap();
    eventually("the cloud recorded the call", || {
        let dir = dir.clone();
        async move { !dir.call_records(Some("1001"), 5).await.unwrap().is_empty() }
    })
    .await;
    let record = dir.call_records(Some("1001"), 5).await.unwrap().into_iter().next();
    let r = record.unwrap();
    assert_eq!((r.caller.as_str(), r.callee.as_str()), ("1001", "3001"));
    assert_eq!(r.outcome, trunkline_protocol::Outcome::Connected);
    let pos = |s: Step| r.trace.iter().position(|x| *x == s).unwrap_or_else(|| panic!("{s} missing from {:?}", r.trace));
    let order = [Step::B2, Step::B4, Step::B5, Step::C11, Step::C12, Step::C2, Step::C14, Step::C15];
    for w in order.windows(2) {
        assert!(pos(w[0]) < pos(w[1]), "{} before {} in {:?}", w[0], w[1], r.trace);
    }
    hq.stop().await;
    branch.stop().await;
}
