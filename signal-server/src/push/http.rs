//! A minimal HTTP/1.1 POST for push requests: hyper's client connection (hyper is already in
//! the tree under axum) over TCP, with rustls (aws-lc-rs, Mozilla's roots from `webpki-roots`)
//! for `https://`. One connection per request: wake-ups are rare, and a push service's answer
//! is all we need (its status code).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not an http(s) URL")]
    BadUrl,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Posts bodies to push endpoints.
#[derive(Clone)]
pub struct HttpClient {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl HttpClient {
    /// Trusting the Web PKI (Mozilla's root store).
    pub fn new(timeout: Duration) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        HttpClient::with_roots(roots, timeout)
    }

    /// Trusting exactly `roots` (tests use a private CA).
    pub fn with_roots(roots: rustls::RootCertStore, timeout: Duration) -> HttpClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        HttpClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), timeout }
    }

    /// POST `body` to `url` with `headers` (Host and Content-Length are added); the status code.
    pub async fn post(&self, url: &str, headers: &[(HeaderName, HeaderValue)], body: Vec<u8>) -> Result<u16, HttpError> {
        match tokio::time::timeout(self.timeout, self.post_inner(url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    async fn post_inner(&self, url: &str, headers: &[(HeaderName, HeaderValue)], body: Vec<u8>) -> Result<u16, HttpError> {
        let uri: hyper::Uri = url.parse().map_err(|_| HttpError::BadUrl)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::BadUrl),
        };
        let authority = uri.authority().ok_or(HttpError::BadUrl)?.as_str().to_string();
        let host = uri.host().ok_or(HttpError::BadUrl)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());

        let mut req =
            Request::post(path).header(hyper::header::HOST, authority).header(hyper::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| HttpError::Http(e.to_string()))?;

        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| HttpError::Tls(e.to_string()))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| HttpError::Tls(e.to_string()))?;
            send(tls, req).await
        } else {
            send(tcp, req).await
        }
    }
}

async fn send<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<u16, HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| HttpError::Http(e.to_string()))?;
    let mut conn = std::pin::pin!(conn);
    // The connection future does the I/O; drive it while waiting for the response head. The
    // body is not read: the status says it all, and dropping the connection closes it.
    let resp = tokio::select! {
        r = sender.send_request(req) => r.map_err(|e| HttpError::Http(e.to_string()))?,
        r = &mut conn => {
            return Err(HttpError::Http(match r {
                Ok(()) => "connection closed before an answer".into(),
                Err(e) => e.to_string(),
            }));
        }
    };
    Ok(resp.status().as_u16())
}
