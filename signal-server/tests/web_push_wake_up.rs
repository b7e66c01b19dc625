//! Web Push wake-ups against the real server and a local push service: an axum endpoint on
//! 127.0.0.1:0 that checks what the push service would (VAPID JWT signature and claims, TTL and
//! Urgency headers) and decrypts the body with the subscription's private key, like a browser.
//!
//! - F4: browser 2001 dials browser 2002, which has no live connection but a subscription: the
//!   push arrives and decrypts to the incoming-call payload; 2002 signs in, gets `incoming`,
//!   accepts, and the call connects (record: A,C1,B4,B6,Push,F4,F4).
//! - F3 (B6): a switch's desk phone calls the offline browser; the switch's offer is kept and
//!   handed over (C3) when the woken browser signs in.
//! - 404/410 from the push service delete the subscription; with nobody woken the caller gets
//!   `callee_offline` at once; with no subscription at all too, as before.
//! - `push_subscribe` / `push_unsubscribe` over the wire, with their refusals, and the VAPID
//!   key in `welcome` surviving a restart.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use signal_server::directory::sqlite::SqliteDirectory;
use signal_server::directory::{Directory, PushSubscription};
use tokio::sync::mpsc;
use trunkline_protocol::{CallEvent, ErrorCode, IncomingVia, Outcome, Route, ServerMsg};
use web_push_native::jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256PublicKey, NoCustomClaims, VerificationOptions};

const SUBJECT: &str = "mailto:ops@example.com";

/// One POST the local push service received.
struct Pushed {
    id: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A local push service: `POST /push/{id}` answers the status set for `id` (201 by default).
struct PushService {
    base: String,
    origin: String,
    statuses: Arc<Mutex<HashMap<String, u16>>>,
    rx: mpsc::UnboundedReceiver<Pushed>,
}

type SvcState = (Arc<Mutex<HashMap<String, u16>>>, mpsc::UnboundedSender<Pushed>);

async fn receive(State((statuses, tx)): State<SvcState>, Path(id): Path<String>, req: Request) -> StatusCode {
    let status = statuses.lock().unwrap().get(&id).copied().unwrap_or(201);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap().to_vec();
    let _ = tx.send(Pushed { id, headers: parts.headers, body });
    StatusCode::from_u16(status).unwrap()
}

impl PushService {
    async fn start() -> PushService {
        let statuses = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route("/push/{id}", axum::routing::post(receive)).with_state((statuses.clone(), tx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        PushService { base: format!("http://{addr}/push"), origin: format!("http://{addr}"), statuses, rx }
    }

    fn endpoint(&self, id: &str) -> String {
        format!("{}/{id}", self.base)
    }

    fn answer(&self, id: &str, status: u16) {
        self.statuses.lock().unwrap().insert(id.into(), status);
    }

    async fn next(&mut self) -> Pushed {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("a push within the deadline").expect("service runs")
    }
}

/// A browser's push subscription keys (what `pushManager.subscribe` makes).
struct UaKeys {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl UaKeys {
    fn new() -> UaKeys {
        use rand::RngCore;
        let secret = loop {
            let mut b = [0u8; 32];
            rand::rng().fill_bytes(&mut b);
            if let Ok(k) = p256::SecretKey::from_slice(&b) {
                break k;
            }
        };
        let mut auth = [0u8; 16];
        rand::rng().fill_bytes(&mut auth);
        UaKeys { secret, auth }
    }

    fn p256dh(&self) -> String {
        B64.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    fn auth(&self) -> String {
        B64.encode(self.auth)
    }

    fn subscription(&self, number: &str, endpoint: &str) -> PushSubscription {
        PushSubscription { number: number.into(), endpoint: endpoint.into(), p256dh: self.p256dh(), auth: self.auth() }
    }

    /// Decrypt a push body as the browser would (RFC 8291), with web-push-native's decryption.
    fn decrypt(&self, body: Vec<u8>) -> serde_json::Value {
        let auth = web_push_native::Auth::clone_from_slice(&self.auth);
        let plain = web_push_native::decrypt(body, &self.secret, &auth).expect("the push decrypts with the subscription's keys");
        serde_json::from_slice(&plain).expect("the payload is JSON")
    }
}

/// Check a received push the way a push service and the browser would, and return its payload.
fn check_push(p: Pushed, svc_origin: &str, vapid_public_key: &str, ua: &UaKeys) -> serde_json::Value {
    let h = |name: &str| p.headers.get(name).unwrap_or_else(|| panic!("{name} header")).to_str().unwrap().to_string();
    assert_eq!(h("ttl"), "30");
    assert_eq!(h("urgency"), "high");
    assert_eq!(h("content-encoding"), "aes128gcm");
    assert_eq!(h("content-type"), "application/octet-stream");
    assert_eq!(h("content-length"), p.body.len().to_string());
    // RFC 8292: Authorization: vapid t=<JWT>, k=<the key browsers subscribed with>.
    let authz = h("authorization");
    let (t, k) = authz.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")).expect("vapid t=…, k=…");
    assert_eq!(k, vapid_public_key, "signed with the key announced in welcome");
    let public = ES256PublicKey::from_bytes(&B64.decode(k).unwrap()).unwrap();
    let opts = VerificationOptions { allowed_audiences: Some([svc_origin.to_string()].into()), ..Default::default() };
    let claims = public.verify_token::<NoCustomClaims>(t, Some(opts)).expect("the VAPID JWT verifies for this origin");
    assert_eq!(claims.subject.as_deref(), Some(SUBJECT));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let exp = claims.expires_at.expect("exp").as_secs();
    assert!(exp > now && exp <= now + 24 * 3600, "exp within 24 h: {exp} vs {now}");
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    // The body is one aes128gcm record (4096-byte record size) for the subscription's keys.
    assert_eq!(u32::from_be_bytes(p.body[16..20].try_into().unwrap()), 4096);
    ua.decrypt(p.body)
}

/// A provisioned server that may push to loopback endpoints, with a 10 s ring timeout.
async fn start() -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.steering.ring_timeout_ms = 10_000;
    cfg.push.allow_loopback_endpoints = true;
    cfg.push.vapid_subject = Some(SUBJECT.into());
    cfg.push.max_subscriptions_per_account = 2;
    provision(&cfg.database_url).await;
    (TestServer::start_with(cfg).await, tmp)
}

/// Sign in and return the client and `welcome.vapid_public_key`.
async fn login(server: &TestServer, (number, password): (&str, &str)) -> (Client, Option<String>) {
    let mut c = server.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"{password}"}}"#)).await;
    match c.recv().await {
        ServerMsg::Welcome { number: n, vapid_public_key, .. } => {
            assert_eq!(n, number);
            (c, vapid_public_key)
        }
        other => panic!("login of {number} failed: {other:?}"),
    }
}

async fn directory(server: &TestServer) -> SqliteDirectory {
    SqliteDirectory::open(&server.db_url).await.unwrap()
}

/// Wait (with a deadline) until the store task has written the record of `call_id`.
async fn record_steps(dir: &SqliteDirectory, call_id: &str) -> (Outcome, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let recs = dir.call_records(None, 50).await.unwrap();
        if let Some(r) = recs.iter().find(|r| r.call_id == call_id) {
            return (r.outcome, r.trace.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
        }
        assert!(Instant::now() < deadline, "no record of {call_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_subscriptions(dir: &SqliteDirectory, number: &str, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let subs: Vec<String> = dir.push_subscriptions(number).await.unwrap().into_iter().map(|s| s.endpoint).collect();
        if subs == want {
            return;
        }
        assert!(Instant::now() < deadline, "subscriptions of {number}: {subs:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn f4_offline_browser_is_woken_by_web_push_then_signs_in_answers_and_connects() {
    let mut svc = PushService::start().await;
    let (server, _tmp) = start().await;
    let bob_ua = UaKeys::new();
    directory(&server).await.add_push_subscription(bob_ua.subscription(BOB.0, &svc.endpoint("bob"))).await.unwrap();

    let (mut alice, vapid) = login(&server, ALICE).await;
    let vapid = vapid.expect("welcome carries the VAPID public key");
    assert_eq!(vapid.len(), 87);
    alice.send(r#"{"type":"dial","call_id":"wake-1","to":"2002"}"#).await;

    let pushed = svc.next().await;
    assert_eq!(pushed.id, "bob");
    let payload = check_push(pushed, &svc.origin, &vapid, &bob_ua);
    assert_eq!(payload, serde_json::json!({"type":"incoming","call_id":"wake-1","from":"2001","from_name":"User 2001"}));
    // Meanwhile the caller waits without a key or an outcome.
    assert!(alice.sync().await.is_empty());

    // The notification was clicked: the app signs in and is rung at once.
    let (mut bob, _) = login(&server, BOB).await;
    let key = match bob.recv().await {
        ServerMsg::Incoming { call_id, from, from_name, via: IncomingVia::Peer { key } } => {
            assert_eq!((call_id.as_str(), from.as_str(), from_name.as_str()), ("wake-1", "2001", "User 2001"));
            key
        }
        other => panic!("the woken browser gets the incoming call: {other:?}"),
    };
    assert!(matches!(alice.recv().await, ServerMsg::Peer { key: k, .. } if k == key));
    assert!(matches!(alice.recv().await, ServerMsg::CallEvent { event: CallEvent::Ringing, .. }));
    bob.send(&format!(r#"{{"type":"accept","call_id":"wake-1","key":"{key}"}}"#)).await;
    assert!(matches!(alice.recv().await, ServerMsg::CallEvent { event: CallEvent::Connected, .. }));
    alice.send(r#"{"type":"hangup","call_id":"wake-1"}"#).await;
    assert_eq!(alice.expect_outcome("wake-1").await.0, Outcome::Connected);
    assert_eq!(bob.expect_outcome("wake-1").await.0, Outcome::Connected);

    let dir = directory(&server).await;
    assert_eq!(record_steps(&dir, "wake-1").await, (Outcome::Connected, "A,C1,B4,B6,Push,F4,F4".into()));
    // One push, nothing more.
    assert!(svc.rx.try_recv().is_err());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn f3_desk_phone_to_offline_browser_keeps_the_switch_offer_until_the_woken_browser_signs_in() {
    let mut svc = PushService::start().await;
    let (server, _tmp) = start().await;
    let alice_ua = UaKeys::new();
    directory(&server).await.add_push_subscription(alice_ua.subscription(ALICE.0, &svc.endpoint("alice"))).await.unwrap();

    let mut hq = server.switch(HQ).await;
    hq.send(r#"{"type":"route_query","call_id":"wake-3","from":"1001","to":"2001"}"#).await;
    assert!(matches!(
        hq.recv().await,
        ServerMsg::Route { route: Route::Device { device_id }, .. } if device_id == "2001"
    ));
    hq.send(&format!(r#"{{"type":"direct_offer","call_id":"wake-3","url":"{HQ_URL}","key":"{KEY}","expires_in_ms":30000}}"#))
        .await;
    let pushed = svc.next().await;
    // Nobody has signed in yet; any session's welcome shows the same key.
    let (_probe, vapid) = login(&server, BOB).await;
    let payload = check_push(pushed, &svc.origin, &vapid.unwrap(), &alice_ua);
    assert_eq!(payload, serde_json::json!({"type":"incoming","call_id":"wake-3","from":"1001","from_name":"User 1001"}));

    let (mut alice, _) = login(&server, ALICE).await;
    match alice.recv().await {
        ServerMsg::Incoming { call_id, via: IncomingVia::Direct { url, key, expires_in_ms }, .. } => {
            assert_eq!((call_id.as_str(), url.as_str(), key.as_str()), ("wake-3", HQ_URL, KEY));
            assert!(expires_in_ms <= 30_000 && expires_in_ms > 20_000, "what is left of the key: {expires_in_ms}");
        }
        other => panic!("C3 after the wake-up: {other:?}"),
    }
    for ev in ["key_accepted", "connected"] {
        hq.send(&format!(r#"{{"type":"call_event","call_id":"wake-3","event":{{"event":"{ev}"}}}}"#)).await;
    }
    hq.send(r#"{"type":"call_event","call_id":"wake-3","event":{"event":"ended","outcome":"connected","duration_ms":1200}}"#)
        .await;
    assert_eq!(hq.expect_outcome("wake-3").await, (Outcome::Connected, Some(1_200)));
    let dir = directory(&server).await;
    assert_eq!(record_steps(&dir, "wake-3").await, (Outcome::Connected, "A,B1,B2,B4,B6,Push,C3,C14,C15".into()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn gone_subscriptions_are_deleted_and_an_unreachable_callee_is_offline_at_once() {
    let mut svc = PushService::start().await;
    let (server, _tmp) = start().await;
    let dir = directory(&server).await;
    let ua = UaKeys::new();
    let (gone, expired, broken) = (svc.endpoint("gone"), svc.endpoint("expired"), svc.endpoint("broken"));
    svc.answer("gone", 410);
    svc.answer("expired", 404);
    svc.answer("broken", 500);
    let (mut alice, _) = login(&server, ALICE).await;

    // 410 and 404: the subscriptions are deleted; nobody was woken, so callee_offline now
    // rather than after the ring timeout.
    dir.add_push_subscription(ua.subscription(BOB.0, &gone)).await.unwrap();
    dir.add_push_subscription(ua.subscription(BOB.0, &expired)).await.unwrap();
    let t = Instant::now();
    alice.send(r#"{"type":"dial","call_id":"gone-1","to":"2002"}"#).await;
    let mut ids = vec![svc.next().await.id, svc.next().await.id];
    ids.sort();
    assert_eq!(ids, ["expired", "gone"]);
    assert_eq!(alice.expect_outcome("gone-1").await, (Outcome::CalleeOffline, None));
    assert!(t.elapsed() < Duration::from_secs(5), "not the 10 s ring timeout: {:?}", t.elapsed());
    wait_for_subscriptions(&dir, BOB.0, &[]).await;
    assert_eq!(record_steps(&dir, "gone-1").await, (Outcome::CalleeOffline, "A,C1,B4,B6,Push".into()));

    // A push service error (500): callee_offline too, but the subscription is kept.
    dir.add_push_subscription(ua.subscription(BOB.0, &broken)).await.unwrap();
    alice.send(r#"{"type":"dial","call_id":"gone-2","to":"2002"}"#).await;
    assert_eq!(svc.next().await.id, "broken");
    assert_eq!(alice.expect_outcome("gone-2").await, (Outcome::CalleeOffline, None));
    assert_eq!(dir.push_subscriptions(BOB.0).await.unwrap().len(), 1);

    // One gone, one accepted: the gone one is deleted and the call waits for the callee.
    svc.answer("broken", 201);
    dir.add_push_subscription(ua.subscription(BOB.0, &gone)).await.unwrap();
    alice.send(r#"{"type":"dial","call_id":"gone-3","to":"2002"}"#).await;
    let mut ids = vec![svc.next().await.id, svc.next().await.id];
    ids.sort();
    assert_eq!(ids, ["broken", "gone"]);
    wait_for_subscriptions(&dir, BOB.0, &[broken.as_str()]).await;
    assert!(alice.sync().await.is_empty(), "still waiting for 2002 to sign in");
    alice.send(r#"{"type":"cancel","call_id":"gone-3"}"#).await;
    assert_eq!(alice.expect_outcome("gone-3").await.0, Outcome::Cancelled);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_subscription_means_callee_offline_at_once_as_before() {
    let mut svc = PushService::start().await;
    let (server, _tmp) = start().await;
    let (mut alice, _) = login(&server, ALICE).await;
    let t = Instant::now();
    alice.send(r#"{"type":"dial","call_id":"none-1","to":"2002"}"#).await;
    assert_eq!(alice.expect_outcome("none-1").await, (Outcome::CalleeOffline, None));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let dir = directory(&server).await;
    assert_eq!(record_steps(&dir, "none-1").await, (Outcome::CalleeOffline, "A,C1,B4,B6,Push".into()));
    // And from a switch: the route goes out, then the outcome.
    let mut hq = server.switch(HQ).await;
    hq.send(r#"{"type":"route_query","call_id":"none-2","from":"1001","to":"2002"}"#).await;
    assert!(matches!(hq.recv().await, ServerMsg::Route { route: Route::Device { .. }, .. }));
    assert_eq!(hq.expect_outcome("none-2").await, (Outcome::CalleeOffline, None));
    assert!(svc.rx.try_recv().is_err(), "nothing was pushed");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn push_subscribe_and_unsubscribe_over_the_wire() {
    let svc = PushService::start().await;
    let (server, _tmp) = start().await;
    let dir = directory(&server).await;
    let ua = UaKeys::new();
    let (mut bob, vapid) = login(&server, BOB).await;
    let vapid = vapid.unwrap();
    let subscribe = |endpoint: &str, p256dh: &str, auth: &str| {
        format!(r#"{{"type":"push_subscribe","endpoint":"{endpoint}","p256dh":"{p256dh}","auth":"{auth}"}}"#)
    };
    let (one, two, three) = (svc.endpoint("one"), svc.endpoint("two"), svc.endpoint("three"));

    // Stored before the pong (no reply on success).
    bob.send(&subscribe(&one, &ua.p256dh(), &ua.auth())).await;
    assert!(bob.sync().await.is_empty());
    assert_eq!(dir.push_subscriptions(BOB.0).await.unwrap(), vec![ua.subscription(BOB.0, &one)]);
    // Again (same endpoint, e.g. at every start of the app): still one.
    bob.send(&subscribe(&one, &ua.p256dh(), &ua.auth())).await;
    bob.send(&subscribe(&two, &ua.p256dh(), &ua.auth())).await;
    assert!(bob.sync().await.is_empty());
    assert_eq!(dir.push_subscriptions(BOB.0).await.unwrap().len(), 2);
    // Over the limit of this server (2).
    bob.send(&subscribe(&three, &ua.p256dh(), &ua.auth())).await;
    assert!(bob.expect_error(ErrorCode::TooManyRequests).await.contains("at most 2"));

    // Refusals: a point that is not on the curve, wire-rule breaks, a switch subscribing.
    let mut bad_point = B64.decode(ua.p256dh()).unwrap();
    bad_point[64] ^= 1;
    bob.send(&subscribe(&three, &B64.encode(&bad_point), &ua.auth())).await;
    assert!(bob.expect_error(ErrorCode::InvalidField).await.contains("p256dh"));
    bob.send(&subscribe("http://push.example.com/x", &ua.p256dh(), &ua.auth())).await;
    assert!(bob.expect_error(ErrorCode::InvalidField).await.contains("endpoint"));
    bob.send(&subscribe(&three, &ua.p256dh(), "short")).await;
    assert!(bob.expect_error(ErrorCode::InvalidField).await.contains("auth"));
    let mut hq = server.switch(HQ).await;
    hq.send(&subscribe(&three, &ua.p256dh(), &ua.auth())).await;
    hq.expect_error(ErrorCode::Forbidden).await;

    // Another account cannot remove Bob's subscription; Bob can, and twice is fine.
    let (mut alice, alice_vapid) = login(&server, ALICE).await;
    assert_eq!(alice_vapid.as_deref(), Some(vapid.as_str()));
    alice.send(&format!(r#"{{"type":"push_unsubscribe","endpoint":"{one}"}}"#)).await;
    assert!(alice.sync().await.is_empty());
    assert_eq!(dir.push_subscriptions(BOB.0).await.unwrap().len(), 2);
    for _ in 0..2 {
        bob.send(&format!(r#"{{"type":"push_unsubscribe","endpoint":"{one}"}}"#)).await;
    }
    assert!(bob.sync().await.is_empty());
    assert_eq!(dir.push_subscriptions(BOB.0).await.unwrap(), vec![ua.subscription(BOB.0, &two)]);
    drop((alice, bob, hq));

    // The VAPID key is kept next to the database: the same after a restart.
    let cfg_url = server.db_url.clone();
    server.stop().await.unwrap();
    let key_file = std::path::Path::new(cfg_url.trim_start_matches("sqlite://")).with_file_name("vapid-private-key.pem");
    assert!(key_file.is_file(), "{}", key_file.display());
    let mut cfg = test_config(key_file.parent().unwrap());
    cfg.push.allow_loopback_endpoints = true;
    let again = TestServer::start_with(cfg).await;
    let (_bob, vapid_again) = login(&again, BOB).await;
    assert_eq!(vapid_again.as_deref(), Some(vapid.as_str()));
    again.stop().await.unwrap();
}

#[tokio::test]
async fn push_turned_off_keeps_the_old_behaviour() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.push.enabled = false;
    provision(&cfg.database_url).await;
    let server = TestServer::start_with(cfg).await;
    let (mut alice, vapid) = login(&server, ALICE).await;
    assert_eq!(vapid, None, "no VAPID key to subscribe with");
    alice.send(r#"{"type":"dial","call_id":"off-1","to":"2002"}"#).await;
    assert_eq!(alice.expect_outcome("off-1").await, (Outcome::CalleeOffline, None));
    let ua = UaKeys::new();
    alice
        .send(&format!(
            r#"{{"type":"push_subscribe","endpoint":"https://push.example.com/x","p256dh":"{}","auth":"{}"}}"#,
            ua.p256dh(),
            ua.auth()
        ))
        .await;
    alice.expect_error(ErrorCode::NotImplemented).await;
    let dir = directory(&server).await;
    assert_eq!(record_steps(&dir, "off-1").await, (Outcome::CalleeOffline, "A,C1,B4,B6".into()));
    assert!(!tmp.path().join("vapid-private-key.pem").exists(), "no key made when push is off");
    server.stop().await.unwrap();
}
