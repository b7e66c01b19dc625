//! The gateway's cloud link over `wss://` to a signal server whose certificate comes from a
//! private certificate authority: with `cloud_ca_file` naming that CA the link comes up (and
//! the cloud hands the switch its welcome); without it the certificate is refused and the
//! switch stays offline; a CA file with no certificate stops the gateway at start with a
//! typed error.

mod common;
use common::*;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA, and a server certificate for `localhost` / 127.0.0.1 signed by it.
fn private_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Trunkline test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    Pki { ca_pem: ca.pem(), cert_pem: server.pem(), key_pem: server_key.serialize_pem() }
}

async fn tls_cloud(dir: &std::path::Path, pki: &Pki) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let db_url = format!("sqlite://{}", dir.join("cloud.db").display());
    provision(&db_url).await;
    let (cert_file, key_file) = (dir.join("cloud-cert.pem"), dir.join("cloud-key.pem"));
    std::fs::write(&cert_file, &pki.cert_pem).unwrap();
    std::fs::write(&key_file, &pki.key_pem).unwrap();
    let mut cfg = signal_server::Config {
        database_url: db_url.clone(),
        web_root: dir.join("no-web"),
        tls: Some(signal_server::config::TlsConfig { cert_file, key_file }),
        ..Default::default()
    };
    cfg.auth.password_hash_memory_kib = 64;
    cfg.auth.password_hash_iterations = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(signal_server::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    (format!("wss://localhost:{port}/ws"), db_url, tx)
}

#[tokio::test]
async fn gateway_links_over_wss_when_it_trusts_the_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = private_pki();
    let (url, db_url, _stop) = tls_cloud(tmp.path(), &pki).await;
    let ca_file = tmp.path().join("cloud-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let gw = Gateway::start_with("hq", &url, tmp.path(), |c| c.cloud_ca_file = Some(ca_file.clone())).await;
    eventually("hq online over wss with the private CA", || switch_online(&db_url, "hq")).await;
    gw.stop().await;
}

#[tokio::test]
async fn gateway_refuses_a_cloud_certificate_it_does_not_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = private_pki();
    let (url, db_url, _stop) = tls_cloud(tmp.path(), &pki).await;
    // Public roots only: the private CA's certificate is refused, so the switch never signs in.
    let gw = Gateway::start("hq", &url, tmp.path()).await;
    // Control: a second gateway that trusts the CA comes online on the same server, so the
    // first one's absence is the certificate check, not a slow server.
    let ca_file = tmp.path().join("cloud-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let control = Gateway::start_with("branch", &url, tmp.path(), |c| c.cloud_ca_file = Some(ca_file.clone())).await;
    eventually("branch (trusting the CA) online", || switch_online(&db_url, "branch")).await;
    assert!(!switch_online(&db_url, "hq").await, "a gateway without the CA must not accept the certificate");
    gw.stop().await;
    control.stop().await;
}

#[tokio::test]
async fn a_ca_file_without_certificates_stops_the_gateway_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = private_pki();
    let (url, _db_url, _stop) = tls_cloud(tmp.path(), &pki).await;
    let bad = tmp.path().join("not-a-ca.pem");
    std::fs::write(&bad, "this is not PEM\n").unwrap();
    let secret_file = tmp.path().join("hq.secret");
    std::fs::write(&secret_file, secret_of("hq")).unwrap();
    let config = switch_gateway::Config {
        cloud_url: url,
        cloud_ca_file: Some(bad),
        secret_file,
        sip_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: tmp.path().join("state"),
        ..Default::default()
    };
    let sockets = switch_gateway::Sockets::bind(&config).await.unwrap();
    let err = tokio::time::timeout(WAIT, switch_gateway::run(config, sockets, std::future::pending()))
        .await
        .expect("fails at start, does not run")
        .expect_err("a CA file with no certificate is refused");
    assert!(matches!(err, switch_gateway::GatewayError::CloudTls(_)), "{err}");
    assert!(err.to_string().contains("not-a-ca.pem"), "the message names the file: {err}");
}
