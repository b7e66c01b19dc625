//! F2 over the wire: desk phone 1001 on gateway "hq" calls desk phone 3001 on gateway "branch"
//! (two gateways and one signal server). hq asks the cloud (B2), gets branch's address (B5)
//! and a key from branch (C11/C12) via C2, connects to branch's direct endpoint as a WebRTC
//! caller (C14), branch rings 3001 and bridges (C15). The phones are scripted SIP UAs (digest,
//! INVITE/answer, PCMU tones); audio is checked both ways by frequency, then the cloud's call
//! record must list the patent steps in order.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use signal_server::directory::Directory;
use tokio::net::UdpSocket;
use trunkline_client::g711::Law;
use trunkline_client::wav::{dominant_frequency, tone};
use trunkline_protocol::Step;
use trunkline_sip::digest::{self, Algorithm};
use trunkline_sip::{Message, Method, Response};

async fn next_msg(sock: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("SIP in time").unwrap();
        if let Ok(m) = trunkline_sip::parse(&buf[..n]) {
            return (m, from);
        }
    }
}

/// 1001 places a call to `to` through `gw` (digest-authenticated INVITE). Returns the 200 OK.
async fn call(sip: &UdpSocket, gw: SocketAddr, to: &str, rtp: SocketAddr) -> Response {
    let local = sip.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        rtp.port()
    );
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf2{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:1001@{gw}>;tag=f2caller\r\nTo: <sip:{to}@{gw}>\r\nCall-ID: f2-call@test\r\nCSeq: {cseq} INVITE\r\n\
             Contact: <sip:1001@{local}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    sip.send_to(invite(1, "").as_bytes(), gw).await.unwrap();
    let challenge = loop {
        if let (Message::Response(r), _) = next_msg(sip).await
            && r.status == 401
        {
            break r;
        }
    };
    let ack = format!(
        "ACK sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf21;rport\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{gw}>;tag=f2caller\r\n\
         To: {}\r\nCall-ID: f2-call@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        challenge.headers.get("To").unwrap()
    );
    sip.send_to(ack.as_bytes(), gw).await.unwrap();
    let h = challenge.headers.get_all("WWW-Authenticate").find(|h| h.contains("MD5")).unwrap().to_string();
    let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let uri = format!("sip:{to}@{gw}");
    let ha1 = digest::ha1(Algorithm::Md5, "1001", REALM, "pw-1001");
    let resp = digest_response(Algorithm::Md5, &ha1, &nonce, "INVITE", &uri, "00000001", "f2");
    let auth = format!(
        "Authorization: Digest username=\"1001\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"f2\"\r\n"
    );
    sip.send_to(invite(2, &auth).as_bytes(), gw).await.unwrap();
    loop {
        if let (Message::Response(r), _) = next_msg(sip).await {
            match r.status {
                100..=199 => continue,
                200 => return r,
                other => panic!("the call failed with {other} {}: {:?}", r.reason, r.headers.get("Warning")),
            }
        }
    }
}

/// 3001 answers the next INVITE with an SDP for `rtp`; returns the gateway's RTP address.
async fn answer(sip: &UdpSocket, rtp: SocketAddr) -> SocketAddr {
    loop {
        let (m, from) = next_msg(sip).await;
        let Message::Request(req) = m else { continue };
        if req.method != Method::Invite {
            continue;
        }
        let offer = String::from_utf8_lossy(&req.body).into_owned();
        let gw_rtp = trunkline_media::sdp::Sdp::parse(&offer).unwrap().audio_rtp_addr().unwrap();
        let mut ok = Response::to_request(&req, 200, "OK");
        ok.set_to_tag("callee");
        ok.headers.push("Contact", format!("<sip:3001@{}>", sip.local_addr().unwrap()));
        let sdp = format!(
            "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            rtp.port()
        );
        ok.set_body("application/sdp", sdp.into_bytes());
        sip.send_to(&ok.to_bytes(), from).await.unwrap();
        return gw_rtp;
    }
}

/// Send `secs` of `freq` as PCMU to `to` from `sock`, and collect what arrives meanwhile.
async fn play_and_record(sock: Arc<UdpSocket>, to: SocketAddr, freq: f32, secs: f32) -> Vec<i16> {
    let samples = tone(freq, secs, 8000);
    let tx = sock.clone();
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, frame) in samples.chunks(160).enumerate() {
            tick.tick().await;
            let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
            pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            pkt[4..8].copy_from_slice(&((i * 160) as u32).to_be_bytes());
            pkt.extend(Law::Mu.encode_frame(frame));
            let _ = tx.send_to(&pkt, to).await;
        }
    });
    let mut heard = vec![];
    let mut buf = vec![0u8; 2048];
    let want = (secs * 8000.0 * 0.6) as usize;
    while heard.len() < want {
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("audio in time").unwrap();
        if n > 12 && buf[1] & 0x7f == 0 {
            Law::Mu.decode_into(&buf[12..n], &mut heard);
        }
    }
    send.await.unwrap();
    heard
}

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
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(&cloud.db_url).await.unwrap();
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
    cloud.stop().await;
}
