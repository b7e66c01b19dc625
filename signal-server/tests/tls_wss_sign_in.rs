//! With `[tls]` configured the same port serves HTTPS and WSS (rustls), and a browser signs in
//! over `wss://` with a client that trusts only the test's own CA-less self-signed certificate.

mod common;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use signal_server::config::TlsConfig;
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::ServerMsg;

#[tokio::test]
async fn browser_signs_in_over_wss_with_configured_certificate() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.tls = Some(TlsConfig { cert_file, key_file });
    provision(&cfg.database_url).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(signal_server::run(cfg, listener, async move {
        let _ = stop_rx.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(client));
    let url = format!("wss://localhost:{port}/ws");
    let (mut ws, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector)))
            .await
            .expect("TLS handshake in time")
            .expect("wss connects");
    ws.send(Message::Text(format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1).into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let msg = ServerMsg::decode(reply.to_text().unwrap()).unwrap();
    assert!(matches!(msg, ServerMsg::Welcome { number, .. } if number == "2001"));

    // Plain ws:// to a TLS port does not get a session.
    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))).await;
    assert!(!matches!(plain, Ok(Ok(_))), "plaintext must not be served on the TLS port");

    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, server).await.expect("stops").unwrap().unwrap();
}
