//! The gateway against a real signal server: its cloud link (sign-in, phone list, reconnect
//! after a cloud restart), C11/C12 (accept with a key, decline busy / not registered), and the
//! claim-10 key checks at its direct endpoint (replayed, expired, forged, other-call, other
//! caller) — all over real sockets.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{DirectServerMsg, ErrorCode, Outcome, ServerMsg};

struct Ws(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl Ws {
    async fn connect(url: &str) -> Ws {
        Ws(tokio_tungstenite::connect_async(url).await.expect("connects").0)
    }
    async fn send(&mut self, text: &str) {
        self.0.send(Message::Text(text.into())).await.unwrap();
    }
    async fn text(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.0.next()).await.expect("message in time") {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }
    async fn server_msg(&mut self) -> ServerMsg {
        ServerMsg::decode(&self.text().await.expect("open")).unwrap()
    }
    async fn direct_msg(&mut self) -> Option<DirectServerMsg> {
        self.text().await.map(|t| DirectServerMsg::decode(&t).unwrap())
    }
}

async fn browser(cloud: &Cloud, number: &str) -> Ws {
    let mut ws = Ws::connect(&cloud.ws_url).await;
    ws.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"pw-{number}"}}"#)).await;
    assert!(matches!(ws.server_msg().await, ServerMsg::Welcome { .. }));
    ws
}

/// Dial `to` and return what the cloud answered first: `connect` (C13) or the outcome.
async fn dial(ws: &mut Ws, call_id: &str, to: &str) -> ServerMsg {
    ws.send(&format!(r#"{{"type":"dial","call_id":"{call_id}","to":"{to}"}}"#)).await;
    loop {
        match ws.server_msg().await {
            m @ (ServerMsg::Connect { .. } | ServerMsg::Outcome { .. }) => return m,
            _ => {}
        }
    }
}

async fn present(url: &str, call_id: &str, key: &str, caller: &str) -> (Ws, Option<DirectServerMsg>) {
    let mut d = Ws::connect(url).await;
    d.send(&format!(r#"{{"type":"present","v":1,"call_id":"{call_id}","key":"{key}","caller":"{caller}"}}"#)).await;
    let first = d.direct_msg().await;
    (d, first)
}

fn refused_with(m: Option<DirectServerMsg>) -> ErrorCode {
    match m {
        Some(DirectServerMsg::Error { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn registered_phone(gw: &Gateway, number: &str) -> tokio::net::UdpSocket {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sock, gw.sip, number, &format!("pw-{number}"), 300, false).await, 200);
    sock
}

#[tokio::test]
async fn gateway_signs_in_learns_its_phones_and_reconnects_after_a_cloud_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    // Both digest algorithms offered (RFC 8760): SHA-256 and MD5 phones both register.
    let gw = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| {
        c.digest_algorithms = vec!["SHA-256".into(), "MD5".into()]
    })
    .await;
    eventually("hq online at the cloud", || switch_online(&cloud.db_url, "hq")).await;
    // It learned its phones from the cloud: 1001 can register (SHA-256 and MD5 both verify).
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    eventually("1001 registers with SHA-256 digest", || {
        let (sock, gw) = (&s, gw.sip);
        async move { register_udp(sock, gw, "1001", "pw-1001", 300, true).await == 200 }
    })
    .await;
    let s2 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&s2, gw.sip, "1002", "pw-1002", 300, false).await, 200);
    // A phone of another switch is not ours.
    assert_eq!(register_udp(&s2, gw.sip, "3001", "pw-3001", 300, false).await, 403);

    // Restart the cloud on the same address: the gateway comes back by itself.
    let addr = cloud.addr;
    cloud.stop().await;
    eventually("hq marked offline while the cloud is down", || async {
        !switch_online(&format!("sqlite://{}", tmp.path().join("cloud.db").display()), "hq").await
    })
    .await;
    let cloud = Cloud::start_at(tmp.path(), addr).await;
    eventually("hq back online after the restart", || switch_online(&cloud.db_url, "hq")).await;
    gw.stop().await;
    cloud.stop().await;
}

#[tokio::test]
async fn phones_register_from_the_local_copy_while_the_cloud_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    gw.stop().await;
    cloud.stop().await;
    // Gateway restarted with no cloud at all: it still knows its phones from disk.
    let gw = Gateway::start("hq", "ws://127.0.0.1:9/ws", tmp.path()).await;
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&s, gw.sip, "1001", "pw-1001", 300, false).await, 200);
    assert_eq!(register_udp(&s, gw.sip, "1001", "wrong", 300, false).await, 403);
    // And a local call (F7) connects without the cloud.
    let callee = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&callee, gw.sip, "1002", "pw-1002", 300, false).await, 200);
    let (caller_rtp, callee_rtp) = (
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    let callee_rtp_addr = callee_rtp.local_addr().unwrap();
    let answering = tokio::spawn(async move { scripted_phone::answer(&callee, callee_rtp_addr).await });
    let ok = scripted_phone::call(&s, gw.sip, "1002", caller_rtp.local_addr().unwrap()).await;
    assert_eq!(ok.status, 200, "local call answered with the cloud unreachable");
    answering.await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn c11_c12_accept_gives_a_key_that_works_once_at_the_direct_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let _phone = registered_phone(&gw, "1001").await;
    let mut alice = browser(&cloud, "2001").await;

    let (url, key) = match dial(&mut alice, "c-accept", "1001").await {
        ServerMsg::Connect { url, key, expires_in_ms, .. } => {
            assert_eq!(expires_in_ms, 30_000);
            (url, key)
        }
        other => panic!("C13 expected: {other:?}"),
    };
    assert_eq!(url, gw.direct_url, "C13 carries the gateway's advertised direct address");
    assert!(key.len() >= 22, "≥128-bit key");

    // Forged, other caller: refused, and the key is not spent by them.
    let (_d, m) = present(&url, "c-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAA", "2001").await;
    assert_eq!(refused_with(m), ErrorCode::BadKey);
    let (_d, m) = present(&url, "c-accept", &key, "2002").await;
    assert_eq!(refused_with(m), ErrorCode::WrongCaller);
    // The rightful caller: accepted (C14).
    let (mut d, m) = present(&url, "c-accept", &key, "2001").await;
    assert_eq!(m, Some(DirectServerMsg::Accepted { call_id: "c-accept".into() }));
    // C15 needs a usable WebRTC offer next; garbage is refused with a typed error.
    d.send(r#"{"type":"offer","sdp":"v=0\r\n"}"#).await;
    assert_eq!(refused_with(d.direct_msg().await), ErrorCode::InvalidField);
    // Replay: refused as used.
    let (_d, m) = present(&url, "c-accept", &key, "2001").await;
    assert_eq!(refused_with(m), ErrorCode::KeyUsed);
    // The cloud heard C14 and the end.
    loop {
        if let ServerMsg::Outcome { call_id, outcome, .. } = alice.server_msg().await {
            assert_eq!((call_id.as_str(), outcome), ("c-accept", Outcome::Error));
            break;
        }
    }
    gw.stop().await;
    cloud.stop().await;
}

#[tokio::test]
async fn c12_declines_not_registered_and_busy_and_keys_for_other_calls_or_late_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| c.key_ttl_ms = 400).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let _p1 = registered_phone(&gw, "1001").await;
    let _p3 = registered_phone(&gw, "1003").await;
    let mut alice = browser(&cloud, "2001").await;
    let mut bob = browser(&cloud, "2002").await;

    // Not registered.
    match dial(&mut alice, "c-offline", "1002").await {
        ServerMsg::Outcome { outcome, .. } => assert_eq!(outcome, Outcome::CalleeOffline),
        other => panic!("{other:?}"),
    }
    // First call to 1001 waits in the queue; a second one finds it busy.
    let (url, key_a) = match dial(&mut alice, "c-first", "1001").await {
        ServerMsg::Connect { url, key, .. } => (url, key),
        other => panic!("{other:?}"),
    };
    match dial(&mut bob, "c-second", "1001").await {
        ServerMsg::Outcome { outcome, .. } => assert_eq!(outcome, Outcome::Busy),
        other => panic!("{other:?}"),
    }
    // A key for another call.
    let key_b = match dial(&mut bob, "c-other", "1003").await {
        ServerMsg::Connect { key, .. } => key,
        other => panic!("{other:?}"),
    };
    let (_d, m) = present(&url, "c-first", &key_b, "2001").await;
    assert_eq!(refused_with(m), ErrorCode::BadKey);
    // Late: wait until the cloud itself gave up on the key, then present it.
    loop {
        if let ServerMsg::Outcome { call_id, outcome, .. } = alice.server_msg().await
            && call_id == "c-first"
        {
            assert_eq!(outcome, Outcome::KeyExpired);
            break;
        }
    }
    let (_d, m) = present(&url, "c-first", &key_a, "2001").await;
    assert_eq!(refused_with(m), ErrorCode::KeyExpired);
    // Malformed presentations get typed errors too.
    let mut d = Ws::connect(&url).await;
    d.send(r#"{"type":"present","v":1,"call_id":"x y","key":"k","caller":"2001"}"#).await;
    assert_eq!(refused_with(d.direct_msg().await), ErrorCode::InvalidField);
    // None of those refused keys rang a phone: the first thing 1001's phone hears from the
    // gateway is the INVITE of the next call that is properly presented.
    let key_ok = match dial(&mut alice, "c-good", "1001").await {
        ServerMsg::Connect { key, .. } => key,
        other => panic!("{other:?}"),
    };
    let (mut d, m) = present(&url, "c-good", &key_ok, "2001").await;
    assert_eq!(m, Some(DirectServerMsg::Accepted { call_id: "c-good".into() }));
    let mut peer = trunkline_client::webrtc::WebRtcPeer::bind(trunkline_client::webrtc::PeerOptions::bind("127.0.0.1".parse().unwrap()))
        .await
        .unwrap();
    d.send(&trunkline_protocol::DirectClientMsg::Offer { sdp: peer.create_offer().unwrap() }.encode()).await;
    assert!(matches!(d.direct_msg().await, Some(DirectServerMsg::Answer { .. })));
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, _p1.recv_from(&mut buf)).await.expect("the phone rings now").unwrap();
    match trunkline_sip::parse(&buf[..n]).unwrap() {
        trunkline_sip::Message::Request(r) => {
            assert_eq!(r.method, trunkline_sip::Method::Invite);
            assert!(r.headers.get("From").unwrap().contains("2001"), "the INVITE is the good call's");
        }
        other => panic!("the phone got something else first: {other:?}"),
    }
    gw.stop().await;
    cloud.stop().await;
}
