//! The gateway against a real signal server: its cloud link (sign-in, phone list, reconnect
//! after a cloud restart), C11/C12 (accept with a key, decline busy / not registered), and the
//! claim-10 key checks on the DataChannel of a WebRTC leg that reached the gateway through the
//! cloud (forged, other-call, other caller, expired, malformed, replayed) — all over real
//! sockets. Nothing rings before a key is accepted.

mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
use common::direct::{Browser, DirectLeg, forge};
use common::*;
use trunkline_client::softphone::DIRECT_CHANNEL;
use trunkline_client::webrtc::{AudioSource, PeerOptions, WebRtcPeer};
use trunkline_protocol::{ClientMsg, DirectServerMsg, ErrorCode, Outcome, ServerMsg, SignalPayload, Step};

fn refused_with(m: DirectServerMsg) -> ErrorCode {
    match m {
        DirectServerMsg::Error { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn registered_phone(gw: &Gateway, number: &str) -> tokio::net::UdpSocket {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(register_udp(&sock, gw.sip, number, &format!("pw-{number}"), 300, false).await, 200);
    sock
}

fn local() -> PeerOptions {
    PeerOptions::bind("127.0.0.1".parse().unwrap())
}

/// A WebRTC leg to the switch for `call_id`, its DataChannel open.
async fn leg(browser: &mut Browser, call_id: &str) -> DirectLeg {
    let mut leg = browser.connect(call_id, local(), AudioSource::tone(1000.0)).await;
    leg.wait_open(WAIT).await.unwrap_or_else(|e| panic!("{call_id}: {e}"));
    leg
}

/// Nothing from the gateway is waiting on this phone's socket. (An INVITE rung in the same
/// step as a refusal would already be here: the gateway sends SIP before the DataChannel reply
/// has even left.)
fn silent(phone: &tokio::net::UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    phone.try_recv_from(&mut buf).is_err()
}

/// The next SIP request the phone gets: it must be an INVITE from `from`.
async fn expect_invite_from(phone: &tokio::net::UdpSocket, from: &str) {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, phone.recv_from(&mut buf)).await.expect("the phone rings now").unwrap();
    match trunkline_sip::parse(&buf[..n]).unwrap() {
        trunkline_sip::Message::Request(r) => {
            assert_eq!(r.method, trunkline_sip::Method::Invite);
            assert!(r.headers.get("From").unwrap().contains(from), "the INVITE is the good call's");
        }
        other => panic!("the phone got something else first: {other:?}"),
    }
}

#[tokio::test]
async fn gateway_signs_in_learns_its_phones_and_reconnects_after_a_cloud_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    // Both digest algorithms offered (RFC 8760): SHA-256 and MD5 phones both register.
    let gw = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| c.digest_algorithms = vec!["SHA-256".into(), "MD5".into()])
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
    let (caller_rtp, callee_rtp) =
        (tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(), tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let callee_rtp_addr = callee_rtp.local_addr().unwrap();
    let answering = tokio::spawn(async move { scripted_phone::answer(&callee, callee_rtp_addr).await });
    let ok = scripted_phone::call(&s, gw.sip, "1002", caller_rtp.local_addr().unwrap()).await;
    assert_eq!(ok.status, 200, "local call answered with the cloud unreachable");
    answering.await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_c12_accept_gives_a_key_that_works_once_on_the_datachannel() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, tmp.path()).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let phone = registered_phone(&gw, "1001").await;
    let _p2 = registered_phone(&gw, "1002").await;
    let mut alice = Browser::login(&cloud.ws_url, "2001").await;
    let mut bob = Browser::login(&cloud.ws_url, "2002").await;

    let (url, key) = match alice.dial("c-accept", "1001").await {
        ServerMsg::Connect { url, key, expires_in_ms, .. } => {
            assert_eq!(expires_in_ms, 30_000);
            (url, key)
        }
        other => panic!("C13 expected: {other:?}"),
    };
    assert_eq!(url, "switch:hq", "C13 names the callee's switch; no message carries a ws:// address");
    assert!(key.len() >= 22, "≥128-bit key");

    // Another browser cannot even reach the switch for this call: the cloud relays
    // direct_signal only between the call's parties.
    bob.send(&ClientMsg::DirectSignal { call_id: "c-accept".into(), payload: SignalPayload::Offer { sdp: "v=0\r\n".into() } });
    let code = bob
        .wait_for("bob's refusal", |m| match m {
            ServerMsg::Error { code, call_id: Some(c), .. } if c == "c-accept" => Some(*code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::NotYourCall);

    // Forged key, then the real key presented as another number: refused on the DataChannel,
    // the gateway drops each leg, and the key is not spent by them.
    let mut l = leg(&mut alice, "c-accept").await;
    assert_eq!(refused_with(l.present(&forge(&key), "2001").await), ErrorCode::BadKey);
    l.media.close().await;
    let mut l = leg(&mut alice, "c-accept").await;
    assert_eq!(refused_with(l.present(&key, "2002").await), ErrorCode::WrongCaller);
    l.media.close().await;
    assert!(silent(&phone), "nothing rang for a refused key");
    // The rightful caller: accepted (C14), and only now the phone rings (C15).
    let mut l = leg(&mut alice, "c-accept").await;
    assert!(silent(&phone), "nothing rings before the key");
    assert_eq!(l.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: "c-accept".into() });
    expect_invite_from(&phone, "2001").await;

    // Replay: the key is spent, and a new leg for the call is not even answered (the gateway
    // takes an offer only for a call still waiting with its key). Proof without waiting: the
    // gateway handles the cloud's messages in order, so once the next call's `connect` is here,
    // any answer to the replayed offer would have come before it.
    let replay = WebRtcPeer::bind(local()).await.unwrap().create_offer_with_channel(DIRECT_CHANNEL).unwrap();
    alice.send(&ClientMsg::DirectSignal { call_id: "c-accept".into(), payload: SignalPayload::Offer { sdp: replay } });
    alice.send(&ClientMsg::Dial { call_id: "c-garbage".into(), to: "1002".into() });
    alice
        .wait_for("c-garbage's connect", |m| match m {
            ServerMsg::Connect { call_id, .. } if call_id == "c-garbage" => Some(()),
            ServerMsg::DirectSignal { call_id, payload } if call_id == "c-accept" => {
                panic!("the gateway answered a replayed offer: {payload:?}")
            }
            _ => None,
        })
        .await;
    // An unusable offer for a waiting call: the gateway withdraws the key and the attempt ends
    // with a typed outcome (nothing rings).
    alice.send(&ClientMsg::DirectSignal { call_id: "c-garbage".into(), payload: SignalPayload::Offer { sdp: "v=0\r\n".into() } });
    assert_eq!(alice.outcome("c-garbage").await, Outcome::Error);

    // Presenting again on the accepted leg is refused, and the leg closes: the caller has left
    // a call that never connected.
    assert_eq!(refused_with(l.present(&key, "2001").await), ErrorCode::AlreadyAuthenticated);
    assert_eq!(alice.outcome("c-accept").await, Outcome::Cancelled);
    // The cloud heard C14: the record of c-accept has it after C12 and C13.
    let trace = call_trace(&cloud.db_url, "c-accept").await;
    let pos = |s: Step| trace.iter().position(|t| *t == s).unwrap_or_else(|| panic!("step {s} in {trace:?}"));
    assert!(pos(Step::C12) < pos(Step::C13) && pos(Step::C13) < pos(Step::C14), "{trace:?}");
    gw.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_declines_not_registered_and_busy_and_keys_for_other_calls_or_late_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path()).await;
    // A short key life (the cloud gives up 2 s after it), yet long enough to bring up the legs
    // below while their keys wait, even on a loaded machine.
    let gw = Gateway::start_with("hq", &cloud.ws_url, tmp.path(), |c| c.key_ttl_ms = 5000).await;
    eventually("hq online", || switch_online(&cloud.db_url, "hq")).await;
    let p1 = registered_phone(&gw, "1001").await;
    let p3 = registered_phone(&gw, "1003").await;
    let mut alice = Browser::login(&cloud.ws_url, "2001").await;
    let mut bob = Browser::login(&cloud.ws_url, "2002").await;

    // Not registered.
    match alice.dial("c-offline", "1002").await {
        ServerMsg::Outcome { outcome, .. } => assert_eq!(outcome, Outcome::CalleeOffline),
        other => panic!("{other:?}"),
    }
    // The first call to 1001 waits in the queue (its leg comes up at once); a second one finds
    // 1001 busy.
    let (_, key_a) = alice.dial_connect("c-first", "1001").await;
    let mut first = leg(&mut alice, "c-first").await;
    match bob.dial("c-second", "1001").await {
        ServerMsg::Outcome { outcome, .. } => assert_eq!(outcome, Outcome::Busy),
        other => panic!("{other:?}"),
    }
    // A key for another call: on bob's leg for c-other, alice's c-first key is bad_key — as
    // that key (the leg was set up for c-other), and under c-first's own call id (a leg opens
    // only the call whose offer made it) — and it is not spent by either attempt.
    let (_, key_b) = bob.dial_connect("c-other", "1003").await;
    let mut other = leg(&mut bob, "c-other").await;
    assert_eq!(refused_with(other.present(&key_a, "2002").await), ErrorCode::BadKey);
    other.media.close().await;
    let mut other = leg(&mut bob, "c-other").await;
    assert_eq!(refused_with(other.present_for("c-first", &key_a, "2001").await), ErrorCode::BadKey);
    other.media.close().await;
    // Malformed presentations get typed errors too, and the leg stays usable.
    first.send_text(r#"{"type":"present","v":1,"call_id":"x y","key":"k","caller":"2001"}"#);
    assert_eq!(refused_with(first.recv().await.expect("a reply")), ErrorCode::InvalidField);
    first.send_text(r#"{"type":"present","v":9,"call_id":"c-first","key":"AAAAAAAAAAAAAAAAAAAAAAAA","caller":"2001"}"#);
    assert_eq!(refused_with(first.recv().await.expect("a reply")), ErrorCode::UnsupportedVersion);
    // Late: wait until the cloud itself gave up on the key, then present it on the leg that is
    // still up.
    assert_eq!(alice.outcome("c-first").await, Outcome::KeyExpired);
    assert_eq!(refused_with(first.present(&key_a, "2001").await), ErrorCode::KeyExpired);
    first.media.close().await;
    // None of those refused keys rang a phone: the first thing 1001's phone hears from the
    // gateway is the INVITE of the next call that is properly presented, and 1003's phone
    // (whose key was never presented) hears nothing.
    let (_, key_ok) = alice.dial_connect("c-good", "1001").await;
    let mut good = leg(&mut alice, "c-good").await;
    assert_eq!(good.present(&key_ok, "2001").await, DirectServerMsg::Accepted { call_id: "c-good".into() });
    expect_invite_from(&p1, "2001").await;
    assert!(silent(&p3), "1003 never rang");
    let _ = key_b;
    gw.stop().await;
    cloud.stop().await;
}

/// The steps the cloud recorded for `call_id` (polls until the record is written).
async fn call_trace(db_url: &str, call_id: &str) -> Vec<Step> {
    use signal_server::directory::Directory;
    let dir = signal_server::directory::sqlite::SqliteDirectory::open(db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let recs = dir.call_records(None, 20).await.unwrap();
        if let Some(r) = recs.into_iter().find(|r| r.call_id == call_id) {
            dir.close().await;
            return r.trace;
        }
        assert!(tokio::time::Instant::now() < deadline, "no call record for {call_id}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
