//! STUN/TURN servers from `[ice]`: every browser (in `welcome`) and every switch (in
//! `switch_welcome`) gets them, the TURN ones with its own TURN REST credential
//! (`<expiry>:<number or switch id>`, base64 HMAC-SHA1 of it under coturn's secret); live
//! connections get fresh ones (`ice_servers`) before they expire; the secret itself never goes
//! out; a config without TURN sends none; bad `[ice]` settings are refused at start.

mod common;
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use trunkline_protocol::{IceServer, ServerMsg};

const SECRET: &str = "coturn-static-auth-secret-4242";

fn expected_password(username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The TURN entry's username and expiry, after checking its shape and credential.
fn check_turn(list: &[IceServer], user: &str, ttl: u64) -> (String, u64) {
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].urls, vec!["stun:203.0.113.10:3478"]);
    assert!(list[0].username.is_none() && list[0].credential.is_none());
    let turn = &list[1];
    assert_eq!(turn.urls, vec!["turn:203.0.113.10:3478?transport=udp", "turn:203.0.113.10:443?transport=tcp"]);
    let username = turn.username.clone().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, user);
    let expiry: u64 = expiry.parse().unwrap();
    let now = now_s();
    assert!(expiry >= now + ttl - 5 && expiry <= now + ttl + 1, "expiry {expiry} is about now + {ttl}");
    assert_eq!(turn.credential.as_deref(), Some(expected_password(&username).as_str()));
    (username, expiry)
}

async fn server_with_ice(ttl: u64) -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    let secret_file = tmp.path().join("turn.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    cfg.ice.stun_urls = vec!["stun:203.0.113.10:3478".into()];
    cfg.ice.turn_urls = vec!["turn:203.0.113.10:3478?transport=udp".into(), "turn:203.0.113.10:443?transport=tcp".into()];
    cfg.ice.turn_secret_file = Some(secret_file);
    cfg.ice.turn_ttl_secs = ttl;
    provision(&cfg.database_url).await;
    (TestServer::start_with(cfg).await, tmp)
}

#[tokio::test]
async fn browsers_and_switches_get_their_own_turn_credentials_at_sign_in() {
    let (srv, _tmp) = server_with_ice(86400).await;
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    match c.recv().await {
        ServerMsg::Welcome { ice_servers, .. } => {
            check_turn(&ice_servers, ALICE.0, 86400);
        }
        other => panic!("{other:?}"),
    }
    let mut sw = srv.client().await;
    sw.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"{}","secret":"{}"}}"#, HQ.0, HQ.1)).await;
    match sw.recv().await {
        ServerMsg::SwitchWelcome { ice_servers, .. } => {
            check_turn(&ice_servers, HQ.0, 86400);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn live_connections_get_fresh_credentials_before_theirs_expire_and_never_the_secret() {
    // The shortest TTL allowed, so the half-life renewal comes within the test's time.
    let (srv, _tmp) = server_with_ice(10).await;
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    let (first_user, first_expiry) = match c.recv().await {
        ServerMsg::Welcome { ice_servers, .. } => check_turn(&ice_servers, ALICE.0, 10),
        other => panic!("{other:?}"),
    };
    // Renewed at about half the TTL: before the first credential expires.
    let renewed = tokio::time::timeout(std::time::Duration::from_secs(9), c.recv()).await.expect("renewal within the TTL");
    match renewed {
        ServerMsg::IceServers { ice_servers, expires_in_s } => {
            assert_eq!(expires_in_s, 10);
            let (user, expiry) = check_turn(&ice_servers, ALICE.0, 10);
            assert_ne!(user, first_user);
            assert!(expiry > first_expiry && now_s() < first_expiry, "renewed before the old one ran out");
            let text = ServerMsg::IceServers { ice_servers, expires_in_s }.encode();
            assert!(!text.contains(SECRET), "the secret is never sent");
        }
        other => panic!("expected ice_servers, got {other:?}"),
    }
}

#[tokio::test]
async fn without_ice_config_nothing_is_handed_out() {
    let (srv, _tmp) = TestServer::start().await;
    let mut c = srv.client().await;
    c.send(&format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1)).await;
    match c.recv().await {
        ServerMsg::Welcome { ice_servers, .. } => assert!(ice_servers.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(c.sync().await.is_empty(), "no ice_servers renewal either");
}

#[tokio::test]
async fn bad_ice_settings_are_refused_with_the_key_named() {
    use signal_server::Config;
    for (toml, key) in [
        ("[ice]\nstun_urls = [\"http://x\"]", "ice.stun_urls"),
        ("[ice]\nturn_urls = [\"turn:x:3478\"]", "turn_secret_file"),
        ("[ice]\nturn_urls = [\"turn:x:3478?transport=sctp\"]\nturn_secret_file = \"s\"", "ice.turn_urls"),
        ("[ice]\nturn_ttl_secs = 5", "turn_ttl_secs"),
        ("[ice]\nturn_pasword = \"typo\"", "turn_pasword"),
    ] {
        let err = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
    // A missing secret file stops the server at start with a clear error.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.ice.turn_urls = vec!["turn:x:3478".into()];
    cfg.ice.turn_secret_file = Some(tmp.path().join("missing.secret"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tokio::time::timeout(WAIT, signal_server::run(cfg, listener, std::future::pending()))
        .await
        .expect("fails at start")
        .expect_err("missing secret file");
    assert!(err.to_string().contains("missing.secret"), "{err}");
}
