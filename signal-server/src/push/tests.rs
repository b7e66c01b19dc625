//! Push cryptography against RFC 8291 Appendix A, VAPID JWTs checked with an independent
//! verifier, key files, and the HTTP client over real TLS.

use super::crypto::*;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use web_push_native::jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256PublicKey, NoCustomClaims, VerificationOptions};

/// RFC 8291 Appendix A, as given in the project's shared test data.
const VECTOR: &str = include_str!("../../testdata/webpush-rfc8291-appendix-a.txt");

fn field(name: &str) -> &'static str {
    VECTOR
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("{name} missing from the vector file"))
        .trim()
}

fn b64(name: &str) -> Vec<u8> {
    B64.decode(field(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn ua_keys() -> UaKeys {
    UaKeys::decode(field("ua_public_key"), field("auth_secret")).unwrap()
}

#[test]
fn rfc8291_appendix_a_encrypts_to_the_exact_body() {
    let as_secret = p256::SecretKey::from_slice(&b64("as_private_key")).unwrap();
    // The example's sender public key is the one derived from its private key.
    assert_eq!(
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&as_secret.public_key(), false).as_bytes(),
        b64("as_public_key").as_slice()
    );
    let salt: [u8; 16] = b64("salt").try_into().unwrap();
    let body = encrypt_with(field("plaintext").as_bytes(), &ua_keys(), salt, &as_secret).unwrap();
    assert_eq!(B64.encode(&body), field("body"));
    // Header: salt, rs = 4096, idlen = 65, keyid = the sender's public key.
    assert_eq!(&body[..16], &salt);
    assert_eq!(u32::from_be_bytes(body[16..20].try_into().unwrap()), RECORD_SIZE);
    assert_eq!(body[20], 65);
    assert_eq!(&body[21..86], b64("as_public_key").as_slice());
}

#[test]
fn rfc8291_appendix_a_body_decrypts_with_the_user_agent_key() {
    // web-push-native's decryption is an implementation independent of ours.
    let ua_secret = p256::SecretKey::from_slice(&b64("ua_private_key")).unwrap();
    let auth = web_push_native::Auth::clone_from_slice(&b64("auth_secret"));
    let plain = web_push_native::decrypt(b64("body"), &ua_secret, &auth).unwrap();
    assert_eq!(plain, field("plaintext").as_bytes());
}

#[test]
fn fresh_key_and_salt_for_every_message_and_the_user_agent_can_read_it() {
    let ua_secret = p256::SecretKey::from_slice(&b64("ua_private_key")).unwrap();
    let auth = web_push_native::Auth::clone_from_slice(&b64("auth_secret"));
    let payload = incoming_payload("c-1", "2001", "Alice");
    let a = encrypt(&payload, &ua_keys()).unwrap();
    let b = encrypt(&payload, &ua_keys()).unwrap();
    assert_ne!(a[..16], b[..16], "salt reused");
    assert_ne!(a[21..86], b[21..86], "ephemeral key reused");
    assert_eq!(a.len(), 86 + payload.len() + 1 + 16);
    for body in [a, b] {
        assert_eq!(web_push_native::decrypt(body, &ua_secret, &auth).unwrap(), payload);
    }
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(json, serde_json::json!({"type":"incoming","call_id":"c-1","from":"2001","from_name":"Alice"}));
    assert!(matches!(encrypt(&vec![b'x'; MAX_PLAINTEXT + 1], &ua_keys()), Err(CryptoError::TooLarge(_))));
    assert!(encrypt(&vec![b'x'; MAX_PLAINTEXT], &ua_keys()).unwrap().len() <= 4096);
}

#[test]
fn subscription_keys_are_checked() {
    let ok = field("ua_public_key");
    let auth = field("auth_secret");
    assert!(UaKeys::decode(ok, auth).is_ok());
    // Not on the curve (last byte changed).
    let mut point = b64("ua_public_key");
    point[64] ^= 1;
    assert!(matches!(UaKeys::decode(&B64.encode(&point), auth), Err(CryptoError::BadPublicKey)));
    // Compressed form.
    let compressed = p256::PublicKey::from_sec1_bytes(&b64("ua_public_key")).unwrap();
    let compressed = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&compressed, true);
    assert!(matches!(UaKeys::decode(&B64.encode(compressed.as_bytes()), auth), Err(CryptoError::BadPublicKey)));
    assert!(matches!(UaKeys::decode(ok, "AAAA"), Err(CryptoError::BadAuth)));
    assert!(matches!(UaKeys::decode("!!", auth), Err(CryptoError::Base64("p256dh"))));

    let cfg = PushConfig::default();
    assert!(check_subscription(&cfg, "https://push.example.com/x", ok, auth).is_ok());
    let e = check_subscription(&cfg, "http://127.0.0.1:9/x", ok, auth).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidField);
    assert!(check_subscription(&cfg, "https://localhost/x", ok, auth).is_err());
    let loopback_ok = PushConfig { allow_loopback_endpoints: true, ..PushConfig::default() };
    assert!(check_subscription(&loopback_ok, "http://127.0.0.1:9/x", ok, auth).is_ok());
    assert_eq!(
        check_subscription(&cfg, "https://push.example.com/x", &B64.encode(&point), auth).unwrap_err().code,
        ErrorCode::InvalidField
    );
}

#[test]
fn vapid_authorization_is_an_es256_jwt_for_the_endpoint_origin() {
    let (key, _) = VapidKey::generate();
    let now = 1_700_000_000;
    let header = key.authorization("https://push.example.com", "mailto:ops@example.com", now, VAPID_VALIDITY).unwrap();
    let rest = header.strip_prefix("vapid t=").expect("vapid scheme");
    let (token, k) = rest.split_once(", k=").expect("t and k");
    assert_eq!(k, key.public_key());
    assert_eq!(B64.decode(k).unwrap().len(), 65);

    // A token made now verifies with jwt-simple, knowing only the public key from `k`, for
    // the endpoint's origin as audience.
    let public = ES256PublicKey::from_bytes(&B64.decode(k).unwrap()).unwrap();
    let fresh_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let fresh = key.authorization("https://push.example.com", "mailto:ops@example.com", fresh_now, VAPID_VALIDITY).unwrap();
    let fresh_token = fresh.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap().0;
    let opts =
        VerificationOptions { allowed_audiences: Some(["https://push.example.com".to_string()].into()), ..Default::default() };
    let claims = public.verify_token::<NoCustomClaims>(fresh_token, Some(opts.clone())).expect("signature verifies");
    assert_eq!(claims.subject.as_deref(), Some("mailto:ops@example.com"));
    let other = VapidKey::generate().0;
    let forged = other.authorization("https://push.example.com", "mailto:x@example.com", fresh_now, VAPID_VALIDITY).unwrap();
    let forged = forged.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap().0;
    assert!(public.verify_token::<NoCustomClaims>(forged, Some(opts)).is_err(), "another key's signature");

    // The claims, exactly (for the `now` given).
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let head: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(head["alg"], "ES256");
    assert_eq!(head["typ"], "JWT");
    let body: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(body["aud"], "https://push.example.com");
    assert_eq!(body["sub"], "mailto:ops@example.com");
    assert_eq!(body["exp"], now + 12 * 3600);
    assert_eq!(B64.decode(parts[2]).unwrap().len(), 64, "ES256 signature is r || s");

    // exp never goes past 24 h.
    let long = key.authorization("https://p.example", "mailto:a@b", now, Duration::from_secs(7 * 86_400)).unwrap();
    let t = long.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap().0;
    let body: serde_json::Value = serde_json::from_slice(&B64.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(body["exp"], now + 24 * 3600);
}

#[test]
fn origins_of_endpoints() {
    for (url, origin) in [
        ("https://fcm.googleapis.com/fcm/send/abc", Some("https://fcm.googleapis.com")),
        ("https://Push.Example.com:443/x", Some("https://push.example.com")),
        ("https://push.example.com:8443/x?y", Some("https://push.example.com:8443")),
        ("http://127.0.0.1:41234/push/1", Some("http://127.0.0.1:41234")),
        ("http://localhost:80/x", Some("http://localhost")),
        ("http://[::1]:9000/x", Some("http://[::1]:9000")),
        ("wss://push.example.com/x", None),
    ] {
        assert_eq!(origin_of(url).as_deref(), origin, "{url}");
    }
}

#[test]
fn vapid_keys_parse_from_pem_and_base64url() {
    let (key, pkcs8) = VapidKey::generate();
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(VapidKey::parse(&pkcs8).unwrap().public_key(), key.public_key());

    let secret = p256::SecretKey::from_slice(&b64("as_private_key")).unwrap();
    let want = B64.encode(b64("as_public_key"));
    let sec1 = secret.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert_eq!(VapidKey::parse(&sec1).unwrap().public_key(), want);
    assert_eq!(VapidKey::parse(&format!("  {}\n", field("as_private_key"))).unwrap().public_key(), want);
    let padded = base64::engine::general_purpose::URL_SAFE.encode(secret.to_bytes());
    assert_eq!(VapidKey::parse(&padded).unwrap().public_key(), want);

    for bad in ["", "AAAA", "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----", "not a key!"] {
        assert!(matches!(VapidKey::parse(bad), Err(CryptoError::BadPrivateKey(_))), "{bad:?}");
    }
    // The private half never shows in Debug output.
    let dbg = format!("{key:?}");
    assert!(dbg.contains(key.public_key()) && !dbg.contains("PRIVATE"));
}

#[test]
fn key_file_is_generated_next_to_the_database_once() {
    assert_eq!(default_key_path("sqlite::memory:"), None);
    assert_eq!(default_key_path("sqlite://:memory:"), None);
    assert_eq!(default_key_path("sqlite://x.db?mode=memory"), None);
    assert_eq!(default_key_path("sqlite://trunkline.db"), Some(PathBuf::from("./vapid-private-key.pem")));
    assert_eq!(default_key_path("sqlite:///var/lib/t/signal.db"), Some(PathBuf::from("/var/lib/t/vapid-private-key.pem")));
    assert_eq!(default_key_path("sqlite://data/t.db?mode=rwc"), Some(PathBuf::from("data/vapid-private-key.pem")));

    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("t.db").display());
    let cfg = PushConfig::default();
    let first = load_or_create_key(&cfg, &url).unwrap();
    let path = tmp.path().join(DEFAULT_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = load_or_create_key(&cfg, &url).unwrap();
    assert_eq!(first.public_key(), again.public_key(), "the same key after a restart");

    // An explicit file must exist and hold a key.
    let explicit = PushConfig { vapid_private_key_file: Some(tmp.path().join("missing.pem")), ..PushConfig::default() };
    assert!(matches!(load_or_create_key(&explicit, &url), Err(PushError::KeyFile { .. })));
    std::fs::write(tmp.path().join("raw.key"), field("as_private_key")).unwrap();
    let raw = PushConfig { vapid_private_key_file: Some(tmp.path().join("raw.key")), ..PushConfig::default() };
    assert_eq!(load_or_create_key(&raw, &url).unwrap().public_key(), B64.encode(b64("as_public_key")));
    std::fs::write(tmp.path().join("bad.key"), "nonsense").unwrap();
    let bad = PushConfig { vapid_private_key_file: Some(tmp.path().join("bad.key")), ..PushConfig::default() };
    let e = load_or_create_key(&bad, &url).unwrap_err();
    assert!(matches!(e, PushError::BadKey { .. }));
    assert!(!e.to_string().contains("nonsense"), "key material is not echoed: {e}");
}

#[tokio::test]
async fn http_client_posts_over_tls_to_a_trusted_endpoint_and_refuses_an_untrusted_one() {
    use axum::extract::Request as AxRequest;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/push/{id}",
        axum::routing::post(move |req: AxRequest| {
            let tx = tx.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 8192).await.unwrap();
                let _ = tx.send((parts.uri.to_string(), parts.headers, body));
                (axum::http::StatusCode::CREATED, "")
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = axum_server::Handle::new();
    let server =
        tokio::spawn(axum_server::from_tcp_rustls(listener, tls).unwrap().handle(handle.clone()).serve(app.into_make_service()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = HttpClient::with_roots(roots, Duration::from_secs(5));
    let url = format!("https://localhost:{port}/push/abc?x=1");
    let headers = [(HeaderName::from_static("ttl"), HeaderValue::from_static("30"))];
    assert_eq!(client.post(&url, &headers, b"hello".to_vec()).await.unwrap(), 201);
    let (uri, h, body) = rx.recv().await.unwrap();
    assert_eq!(uri, "/push/abc?x=1");
    assert_eq!(h["ttl"], "30");
    assert_eq!(h["host"], format!("localhost:{port}").as_str());
    assert_eq!(&body[..], b"hello");

    // Mozilla's roots do not include the test's self-signed certificate.
    let public = HttpClient::new(Duration::from_secs(5));
    assert!(matches!(public.post(&url, &headers, b"x".to_vec()).await, Err(http::HttpError::Tls(_))));
    // Nothing listening: a connect error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}/x", closed.local_addr().unwrap().port());
    drop(closed);
    assert!(matches!(client.post(&dead, &headers, vec![]).await, Err(http::HttpError::Connect(_))));
    // A peer that never answers: the time limit holds.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quiet = HttpClient::with_roots(rustls::RootCertStore::empty(), Duration::from_millis(200));
    let url = format!("http://127.0.0.1:{}/x", silent.local_addr().unwrap().port());
    assert!(matches!(quiet.post(&url, &headers, vec![]).await, Err(http::HttpError::Timeout(_))));
    handle.shutdown();
    let _ = server.await;
}
