//! WebSocket connections (ws:// and wss://) shared by the cloud and direct-endpoint clients.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// TLS settings for `wss://` URLs. The default trusts the public web PKI roots; add a PEM CA
/// file to trust a private CA or a self-signed gateway certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    config: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    Ca { path: String, why: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsOptions {
    /// Trust the web PKI roots plus every certificate in the PEM file `ca`.
    pub fn with_ca_file(ca: impl AsRef<Path>) -> Result<TlsOptions, TlsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let path = ca.as_ref().display().to_string();
        let mut roots = web_roots();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca.as_ref())
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| TlsError::Ca { path: path.clone(), why: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::Ca { path, why: "no certificate in the file".into() });
        }
        for c in certs {
            roots.add(c).map_err(|e| TlsError::Ca { path: path.clone(), why: e.to_string() })?;
        }
        Ok(TlsOptions { config: Some(Arc::new(client_config(roots)?)) })
    }

    /// Use this rustls configuration as is.
    pub fn with_config(config: Arc<rustls::ClientConfig>) -> TlsOptions {
        TlsOptions { config: Some(config) }
    }

    fn connector(&self) -> Result<Connector, TlsError> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => Arc::new(client_config(web_roots())?),
        };
        Ok(Connector::Rustls(config))
    }
}

fn web_roots() -> rustls::RootCertStore {
    rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

/// An explicit crypto provider (aws-lc-rs, which str0m uses too), so nothing depends on which
/// rustls backends other crates in the build happen to enable.
fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: not a ws:// or wss:// URL")]
    BadUrl { url: String },
    #[error("{url}: {source}")]
    Tls { url: String, source: TlsError },
    #[error("cannot connect to {url}: {source}")]
    WebSocket { url: String, source: Box<tokio_tungstenite::tungstenite::Error> },
}

/// Open a WebSocket to `url`.
pub async fn connect(url: &str, tls: &TlsOptions) -> Result<WsStream, ConnectError> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(ConnectError::BadUrl { url: url.into() });
    }
    let connector = tls.connector().map_err(|source| ConnectError::Tls { url: url.into(), source })?;
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector))
        .await
        .map_err(|source| ConnectError::WebSocket { url: url.into(), source: Box::new(source) })?;
    Ok(ws)
}
