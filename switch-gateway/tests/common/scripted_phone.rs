//! A scripted SIP desk phone for wire tests that need to see every byte: digest-authenticated
//! INVITEs, answering with an SDP, PCMU tones out and recording in. (The baresip tests use a
//! real phone; these check the gateway's behaviour precisely.)
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use trunkline_client::wav::tone;
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RtpStream, parse_rtp};
use trunkline_sip::digest::{self, Algorithm};
use trunkline_sip::{Message, Method, Response};

use super::{REALM, WAIT, digest_response};

pub async fn next_msg(sock: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("SIP in time").unwrap();
        if let Ok(m) = trunkline_sip::parse(&buf[..n]) {
            return (m, from);
        }
    }
}

/// 1001 places a call to `to` through `gw` (digest-authenticated INVITE). Returns the 200 OK.
pub async fn call(sip: &UdpSocket, gw: SocketAddr, to: &str, rtp: SocketAddr) -> Response {
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

/// Answer the next INVITE on `sip` (180 is not sent: 200 at once) with an SDP for `rtp` (its
/// own address, so it works on a site LAN as on loopback); returns the gateway's RTP address.
pub async fn answer(sip: &UdpSocket, rtp: SocketAddr) -> SocketAddr {
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
        ok.headers.push("Contact", format!("<sip:phone@{}>", sip.local_addr().unwrap()));
        let ip = rtp.ip();
        let sdp = format!(
            "v=0\r\no=b 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            rtp.port()
        );
        ok.set_body("application/sdp", sdp.into_bytes());
        sip.send_to(&ok.to_bytes(), from).await.unwrap();
        return gw_rtp;
    }
}

/// Send `secs` of `freq` as PCMU to `to` from `sock`, and collect what arrives meanwhile.
pub async fn play_and_record(sock: Arc<UdpSocket>, to: SocketAddr, freq: f32, secs: f32) -> Vec<i16> {
    let samples = tone(freq, secs, 8000);
    let tx = sock.clone();
    let send = tokio::spawn(async move {
        let mut stream = RtpStream::new(9, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, frame) in samples.chunks(160).enumerate() {
            tick.tick().await;
            let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
            let _ = tx.send_to(&pkt, to).await;
        }
    });
    let mut heard = vec![];
    let mut buf = vec![0u8; 2048];
    let want = (secs * 8000.0 * 0.6) as usize;
    while heard.len() < want {
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("audio in time").unwrap();
        if let Ok(h) = parse_rtp(&buf[..n])
            && h.payload_type == Law::Mu.payload_type()
        {
            Law::Mu.decode_into(h.payload(&buf[..n]), &mut heard);
        }
    }
    send.await.unwrap();
    heard
}
