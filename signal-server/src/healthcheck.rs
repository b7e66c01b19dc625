//! `signal-server healthcheck`: `GET /healthz` of the server the config describes, from the
//! same host (a container's `HEALTHCHECK`: the image has no shell and no curl).
//!
//! It connects to `listen` (a wildcard address is reached on loopback), over TLS when `[tls]`
//! is set, and succeeds on `200`. With TLS the certificate is not checked: it is issued for the
//! public name, not for the loopback address this asks, and what is checked here is that the
//! server answers, not who it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Config;

/// Where a local health check connects for a server listening on `listen`.
pub fn target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// `GET /healthz` within `timeout`: `Ok(status line)` on 200, else why not.
pub async fn check(config: &Config, timeout: Duration) -> Result<String, String> {
    let addr = target(config.listen);
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}/healthz");
    let run = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("{url}: cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let head = if config.tls.is_some() {
            let tls = tls_connector()
                .connect(rustls::pki_types::ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|e| format!("{url}: TLS handshake: {e}"))?;
            get(tls, addr).await
        } else {
            get(tcp, addr).await
        }
        .map_err(|e| format!("{url}: {e}"))?;
        let status = head.lines().next().unwrap_or_default().trim().to_string();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code == "200" { Ok(format!("{url}: {status}")) } else { Err(format!("{url}: answered {status:?}")) }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}: no answer within {} ms", timeout.as_millis())),
    }
}

/// One HTTP/1.1 request; returns what came back (at most 16 KiB: the status line is enough).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, addr: SocketAddr) -> Result<String, String> {
    let req =
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: signal-server-healthcheck\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    s.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while buf.len() < 16 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            // A TLS peer that closes without close_notify after answering: keep what came.
            Err(_) if !buf.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if buf.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Accepts any certificate (signatures are still checked): see the module comment.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_is_checked_on_loopback() {
        assert_eq!(target("0.0.0.0:8080".parse().unwrap()), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target("[::]:443".parse().unwrap()), "[::1]:443".parse().unwrap());
        assert_eq!(target("10.0.0.5:8080".parse().unwrap()), "10.0.0.5:8080".parse().unwrap());
    }

    /// A one-shot server answering `reply` to the first request, on `stream`'s side.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: &[u8]) {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
        s.write_all(reply).await.unwrap();
        let _ = s.shutdown().await;
    }

    #[tokio::test]
    async fn healthy_server_passes_others_fail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config { listen: addr, ..Config::default() };
        let server = tokio::spawn(async move {
            for reply in [&b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"[..], b"HTTP/1.1 503 Service Unavailable\r\n\r\n"] {
                let (s, _) = listener.accept().await.unwrap();
                answer(s, reply).await;
            }
        });
        let ok = check(&config, Duration::from_secs(5)).await.unwrap();
        assert!(ok.contains("200 OK"), "{ok}");
        let err = check(&config, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.await.unwrap();
        // Nothing listens there any more.
        let err = check(&config, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[tokio::test]
    async fn tls_server_with_a_certificate_for_another_name_passes() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = rcgen::generate_simple_self_signed(vec!["voip.example.com".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            answer(acceptor.accept(s).await.unwrap(), b"HTTP/1.1 200 OK\r\n\r\n").await;
        });
        let tls = crate::config::TlsConfig { cert_file: "unused.pem".into(), key_file: "unused.pem".into() };
        let config = Config { listen: addr, tls: Some(tls), ..Config::default() };
        let ok = check(&config, Duration::from_secs(5)).await.unwrap();
        assert!(ok.starts_with("https://") && ok.contains("200 OK"), "{ok}");
        server.await.unwrap();
    }
}
