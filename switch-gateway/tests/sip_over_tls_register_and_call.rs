//! SIP over TLS (when configured): a desk phone connects with TLS (rustls client trusting the
//! gateway's certificate), registers with digest over that connection, and the gateway sends
//! an INVITE for a local call back down the same TLS connection with `Via: SIP/2.0/TLS`.

mod common;
use common::*;

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trunkline_sip::digest::{self, Algorithm};

async fn read_msg<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> trunkline_sip::Message {
    loop {
        if let Ok(Some(trunkline_sip::Frame::Message(n))) = trunkline_sip::frame_len(buf) {
            let frame: Vec<u8> = buf.drain(..n).collect();
            return trunkline_sip::parse(&frame).expect("the gateway sends valid SIP");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("SIP in time").unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn phone_registers_over_tls_and_is_called_over_the_same_connection() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (tmp.path().join("gw.pem"), tmp.path().join("gw.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = free_udp_port();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| {
        c.sip_tls = Some(switch_gateway::config::SipTlsConfig {
            listen: format!("127.0.0.1:{tls_port}").parse().unwrap(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        })
    })
    .await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake");
    let mut buf = vec![];
    let gwa = format!("localhost:{tls_port}");
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{gwa};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:1002@{gwa}>;tag=tls\r\nTo: <sip:1002@{gwa}>\r\nCall-ID: tls-reg\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:1002@{local};transport=tls>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    tls.write_all(register(1, "").as_bytes()).await.unwrap();
    let challenge = match read_msg(&mut tls, &mut buf).await {
        trunkline_sip::Message::Response(r) if r.status == 401 => r,
        other => panic!("{other:?}"),
    };
    let h = challenge.headers.get("WWW-Authenticate").unwrap().to_string();
    let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let uri = format!("sip:{gwa};transport=tls");
    let ha1 = digest::ha1(Algorithm::Md5, "1002", REALM, "pw-1002");
    let resp = digest_response(Algorithm::Md5, &ha1, &nonce, "REGISTER", &uri, "00000001", "t");
    let auth = format!(
        "Authorization: Digest username=\"1002\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"t\"\r\n"
    );
    tls.write_all(register(2, &auth).as_bytes()).await.unwrap();
    match read_msg(&mut tls, &mut buf).await {
        trunkline_sip::Message::Response(r) => assert_eq!(r.status, 200, "registered over TLS"),
        other => panic!("{other:?}"),
    }

    // 1003 (over UDP) calls 1002: the INVITE reaches 1002 over its TLS connection.
    let gw_sip = gw.sip;
    let sip = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sip, gw.sip, "1003", "pw-1003", 300, false).await, 200);
    let invite = format!(
        "INVITE sip:1002@{gw_sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKi1\r\nMax-Forwards: 70\r\nFrom: <sip:1003@{gw_sip}>;tag=c\r\n\
         To: <sip:1002@{gw_sip}>\r\nCall-ID: tls-call\r\nCSeq: 1 INVITE\r\nContact: <sip:1003@{l}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
        SDP.len(),
        SDP,
        l = sip.local_addr().unwrap()
    );
    sip.send_to(invite.as_bytes(), gw_sip).await.unwrap();
    let ch = recv_response(&sip).await;
    assert_eq!(ch.status, 401);
    let h = ch.headers.get("WWW-Authenticate").unwrap().to_string();
    let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let uri = format!("sip:1002@{gw_sip}");
    let ha1 = digest::ha1(Algorithm::Md5, "1003", REALM, "pw-1003");
    let resp = digest_response(Algorithm::Md5, &ha1, &nonce, "INVITE", &uri, "00000001", "u");
    let authed = invite.replace("CSeq: 1 INVITE", "CSeq: 2 INVITE").replace("branch=z9hG4bKi1", "branch=z9hG4bKi2").replace(
        "Content-Type",
        &format!("Authorization: Digest username=\"1003\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"u\"\r\nContent-Type"),
    );
    sip.send_to(authed.as_bytes(), gw_sip).await.unwrap();
    match read_msg(&mut tls, &mut buf).await {
        trunkline_sip::Message::Request(r) => {
            assert_eq!(r.method, trunkline_sip::Method::Invite);
            assert_eq!(r.top_via().unwrap().transport, "TLS", "the gateway's Via names TLS");
        }
        other => panic!("expected the INVITE over TLS: {other:?}"),
    }
    gw.stop().await;
    cloud.stop().await;
}

const SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
