//! The TURN REST credentials the signal server hands to browsers work with a real coturn
//! (`use-auth-secret`) behind real NATs (natlab/): from a cone site a browser's credential
//! allocates a relay over UDP, TCP and TLS 443; from a site that drops UDP, UDP times out and
//! TCP / TLS 443 still get a relay ("a home network that drops UDP gets a relay over TCP 443");
//! a tampered or expired credential gets 401; the secret never reaches the browser.
//!
//! The signal server runs in-process on 127.0.0.1 in the root namespace (the browser's WebSocket
//! is this test's); only the TURN allocations run inside the lab, with natlab/stunprobe.py.
//! Needs root (network namespaces); see natlab/rust/lab.rs for `TRUNKLINE_SKIP_NATLAB=1`.

mod common;

#[path = "../../natlab/rust/lab.rs"]
mod lab;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{IceServer, ServerMsg};

use lab::Lab;

/// coturn's static-auth-secret and the server's turn_secret_file (≥ 16 bytes).
const SECRET: &str = "natlab-turn-rest-secret-7f3a9c21";
const TURN_URLS: [&str; 3] =
    ["turn:203.0.113.10:3478?transport=udp", "turn:203.0.113.10:3478?transport=tcp", "turns:203.0.113.10:443?transport=tcp"];

fn hmac_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Log in as a browser on a server with `[ice]` TURN; returns every text frame the browser
/// received up to a ping's pong (the welcome first) and the welcome's `ice_servers`.
async fn browser_sign_in(srv: &TestServer) -> (Vec<String>, Vec<IceServer>) {
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    let mut texts = vec![];
    let mut ice = None;
    let mut pinged = false;
    loop {
        let frame = tokio::time::timeout(WAIT, c.ws.next()).await.expect("a message within the deadline");
        let text = match frame {
            Some(Ok(Message::Text(t))) => t.as_str().to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("connection ended while signing in: {other:?}"),
        };
        texts.push(text.clone());
        match ServerMsg::decode(&text).unwrap_or_else(|e| panic!("bad server message {text}: {e}")) {
            ServerMsg::Welcome { number, ice_servers, .. } => {
                assert_eq!(number, ALICE.0);
                ice = Some(ice_servers);
                // Everything queued after the welcome, too: a ping's pong ends it.
                c.send(r#"{"type":"ping"}"#).await;
                pinged = true;
            }
            ServerMsg::Pong if pinged => break,
            other => assert!(pinged, "expected welcome first, got {other:?}"),
        }
    }
    (texts, ice.expect("welcome"))
}

/// What `stunprobe.py allocate` printed, and its exit code (0 OK, 1 ERROR, 2 TIMEOUT).
struct Alloc {
    code: Option<i32>,
    line: String,
}

fn allocate(lab: &Lab, ns: &str, transport: &str, user: &str, password: &str) -> Alloc {
    let server = if transport == "tls" { "203.0.113.10:443" } else { "203.0.113.10:3478" };
    let probe = lab::stunprobe();
    let ca = lab.get("TURN_CA").to_string();
    let o = lab.exec_timeout(
        ns,
        &[
            "python3",
            probe.to_str().unwrap(),
            "allocate",
            "--transport",
            transport,
            "--user",
            user,
            "--password",
            password,
            "--ca",
            &ca,
            server,
        ],
        Duration::from_secs(20),
    );
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    eprintln!("allocate {transport} from {ns} as {user}: {} {line} {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
    Alloc { code: o.status.code(), line }
}

/// Allocation succeeded, seen from `wan` (the site's public address), relayed on coturn.
fn assert_relay(a: &Alloc, wan: &str, what: &str) {
    assert_eq!(a.code, Some(0), "{what}: {}", a.line);
    assert!(a.line.starts_with("OK relay=203.0.113.10:"), "{what}: {}", a.line);
    assert!(a.line.contains(&format!("mapped={wan}:")), "{what}: coturn sees the site's WAN address {wan}: {}", a.line);
}

fn assert_401(a: &Alloc, what: &str) {
    assert_eq!(a.code, Some(1), "{what}: {}", a.line);
    assert!(a.line.starts_with("ERROR 401"), "{what}: {}", a.line);
}

#[test]
fn browser_turn_credentials_get_a_relay_from_coturn_and_over_tcp_443_when_udp_is_blocked() {
    if !lab::should_run("browser_turn_credentials") {
        return;
    }
    let t0 = std::time::Instant::now();
    // --- the lab: a cone site, a site whose router drops UDP, coturn with SECRET ---------------
    let mut lab = Lab::up(&["hq:cone", "nu:noudp"]);
    let turn = lab.coturn(SECRET);
    assert_eq!(turn["TURN_URL_UDP"], TURN_URLS[0]);
    assert_eq!(turn["TURN_URL_TCP"], TURN_URLS[1]);
    assert_eq!(turn["TURN_URL_TLS"], TURN_URLS[2]);
    let (cone, noudp) = (lab.ns("hq", 1), lab.ns("nu", 1));
    let (cone_wan, noudp_wan) = (lab.wan("hq"), lab.wan("nu"));

    // --- the signal server with [ice] TURN, and a browser signing in --------------------------
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (srv, texts, ice_servers) = rt.block_on(async {
        let mut cfg = test_config(tmp.path());
        let secret_file = tmp.path().join("turn.secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        cfg.ice.turn_urls = TURN_URLS.iter().map(|u| u.to_string()).collect();
        cfg.ice.turn_secret_file = Some(secret_file);
        cfg.ice.turn_ttl_secs = 3600;
        provision(&cfg.database_url).await;
        let srv = TestServer::start_with(cfg).await;
        let (texts, ice) = browser_sign_in(&srv).await;
        (srv, texts, ice)
    });

    // The secret never reaches the browser, in any form the browser got.
    let b64_secret = base64::engine::general_purpose::STANDARD.encode(SECRET);
    for t in &texts {
        assert!(!t.contains(SECRET) && !t.contains(&b64_secret), "the TURN secret went to the browser: {t}");
    }

    // The TURN entry, shaped like RTCIceServer.
    let turn_entry = ice_servers.iter().find(|s| s.urls.iter().any(|u| u.starts_with("turn"))).expect("a TURN entry");
    assert_eq!(turn_entry.urls, TURN_URLS.to_vec(), "{ice_servers:?}");
    let username = turn_entry.username.clone().expect("TURN username");
    let credential = turn_entry.credential.clone().expect("TURN credential");
    let (expiry, who) = username.split_once(':').expect("username <expiry>:<number>");
    assert_eq!(who, ALICE.0);
    let expiry: u64 = expiry.parse().expect("unix expiry");
    assert!(expiry > now_s() + 3000 && expiry <= now_s() + 3601, "expiry {expiry} ≈ now + ttl");
    // The test's HMAC agrees with the server's, so the expired credential below differs from a
    // good one only by its expiry.
    assert_eq!(credential, hmac_password(SECRET, &username));

    // --- cone site: UDP, TCP and TLS 443 all get a relay ---------------------------------------
    for transport in ["udp", "tcp", "tls"] {
        let a = allocate(&lab, &cone, transport, &username, &credential);
        assert_relay(&a, &cone_wan, &format!("cone site over {transport}"));
    }

    // --- UDP-blocked site: UDP times out, TCP 3478 and TLS 443 get a relay ----------------------
    let a = allocate(&lab, &noudp, "udp", &username, &credential);
    assert_eq!(a.code, Some(2), "UDP from the noudp site must time out: {}", a.line);
    assert_eq!(a.line, "TIMEOUT");
    for transport in ["tcp", "tls"] {
        let a = allocate(&lab, &noudp, transport, &username, &credential);
        assert_relay(&a, &noudp_wan, &format!("noudp site over {transport}"));
    }

    // --- refused: a tampered credential, an expired username with a correct HMAC ----------------
    let mut tampered = credential.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_ne!(tampered, credential);
    for transport in ["udp", "tcp"] {
        assert_401(&allocate(&lab, &cone, transport, &username, &tampered), &format!("tampered credential over {transport}"));
    }
    let expired_user = format!("{}:{}", now_s() - 60, ALICE.0);
    let expired_password = hmac_password(SECRET, &expired_user);
    for transport in ["udp", "tcp"] {
        assert_401(
            &allocate(&lab, &cone, transport, &expired_user, &expired_password),
            &format!("expired username over {transport}"),
        );
    }
    // Control for the expiry case: the same construction with a future expiry is accepted.
    let fresh_user = format!("{}:{}", now_s() + 600, ALICE.0);
    assert_relay(
        &allocate(&lab, &cone, "tcp", &fresh_user, &hmac_password(SECRET, &fresh_user)),
        &cone_wan,
        "fresh test-made credential",
    );

    rt.block_on(async { srv.stop().await.expect("server stops cleanly") });
    eprintln!("done in {:?} (lab {})", t0.elapsed(), lab.id());
}
