//! The TCP side of the server: the accept loop, per-address limits on connections that have not
//! signed in, deadlines for the TLS handshake and the request head (slowloris), HTTP/1.1 via
//! hyper, the security headers on every response, and a graceful stop.
//!
//! - A connection counts against its address ([`address_key`]: the IPv4 address, or the /64 of
//!   an IPv6 one) from `accept` until it closes or a WebSocket on it signs in
//!   ([`ConnSlot::signed_in`]). Past `limits.max_unauthenticated_per_address` a new connection
//!   from there is closed at once, before it costs a task or a buffer.
//! - Every connection must complete its TLS handshake and each request head within
//!   `limits.request_header_timeout_secs`, and an idle keep-alive connection is closed after the
//!   same time (hyper's header read timeout starts as soon as a request head is awaited).
//! - HTTP/1.1 only (also over TLS: ALPN `http/1.1`): every connection is covered by the header
//!   deadline; HTTP/2's version sniffing and streams would not be.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long open HTTP requests may take to finish once the server stops.
const DRAIN: Duration = Duration::from_secs(5);
/// Largest request head (request line + headers) hyper buffers; bigger ones get 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The key connections are counted under (shared with the gateway's SIP guard).
pub use trunkline_protocol::address_key;

/// Connections not (yet) signed in, per address.
pub struct ConnLimiter {
    max_per_address: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimiter {
    pub fn new(max_per_address: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter { max_per_address, counts: Mutex::new(HashMap::new()) })
    }

    /// A slot for a new connection from `ip`, or `None` when that address holds its limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<ConnSlot>> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(Arc::new(ConnSlot { limiter: self.clone(), key, held: AtomicBool::new(true) }))
    }

    fn release(&self, key: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Connections `ip`'s address holds now (for tests and metrics).
    pub fn held(&self, ip: IpAddr) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place in its address's count; given back when the connection closes or
/// signs in. Handed to request handlers as a request extension.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    key: IpAddr,
    held: AtomicBool,
}

impl ConnSlot {
    /// The WebSocket on this connection signed in: it no longer counts as unauthenticated.
    pub fn signed_in(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.limiter.release(self.key);
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.signed_in();
    }
}

/// Timeouts and limits of the HTTP layer.
#[derive(Clone)]
pub struct HttpLimits {
    pub max_unauthenticated_per_address: usize,
    pub header_timeout: Duration,
}

/// Serve `app` on `listener` until `shutdown` is set. `tls`: serve https/wss instead.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    limiter: Arc<ConnLimiter>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) and the like: the pending connection
                // stays queued; back off briefly instead of spinning on the same error.
                metrics::counter!("trunkline_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = limiter.try_acquire(peer.ip()) else {
            metrics::counter!("trunkline_connections_refused_total", "reason" => "per_address").increment(1);
            tracing::debug!(ip = %peer.ip(), "connection refused: too many unauthenticated connections from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tracing::trace!(ip = %peer.ip(), port = peer.port(), "connection accepted");
        let (app, tls, limits, shutdown) = (app.clone(), tls.clone(), limits.clone(), shutdown.clone());
        conns.spawn(async move {
            match tls {
                None => drive(stream, peer, slot, app, &limits, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => drive(tls_stream, peer, slot, app, &limits, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(ip = %peer.ip(), error = %e, "TLS handshake failed"),
                    Err(_) => {
                        metrics::counter!("trunkline_connections_timed_out_total", "phase" => "tls").increment(1);
                        tracing::debug!(ip = %peer.ip(), "TLS handshake not done within the deadline");
                    }
                },
            }
        });
    }
    drop(listener);
    // Requests in progress may finish (each connection got the shutdown too); WebSockets close
    // on the shutdown flag themselves.
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
    Ok(())
}

async fn drive<S>(
    stream: S,
    peer: SocketAddr,
    slot: Arc<ConnSlot>,
    app: Router,
    limits: &HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics::counter!("trunkline_connections_timed_out_total", "phase" => "request_head").increment(1);
                }
                tracing::debug!(ip = %peer.ip(), error = %e, "HTTP connection ended");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// The server's rustls configuration from PEM files; ALPN `http/1.1` only.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let where_ = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| where_(cert_file, &e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| where_(key_file, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", cert_file.display(), key_file.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The Content-Security-Policy of the softphone. Trunk starts the app with one inline module
/// script in `index.html`; it is allowed by its hash (no `'unsafe-inline'`), so the policy is
/// derived from the built `index.html` and re-derived when that file changes.
pub struct SecurityHeaders {
    index: PathBuf,
    cached: Mutex<(Option<SystemTime>, HeaderValue)>,
}

impl SecurityHeaders {
    pub fn new(web_root: &Path) -> Arc<SecurityHeaders> {
        let index = web_root.join("index.html");
        let (mtime, csp) = Self::derive(&index);
        Arc::new(SecurityHeaders { index, cached: Mutex::new((mtime, csp)) })
    }

    fn derive(index: &Path) -> (Option<SystemTime>, HeaderValue) {
        let mtime = std::fs::metadata(index).and_then(|m| m.modified()).ok();
        let html = std::fs::read_to_string(index).unwrap_or_default();
        let csp = content_security_policy(&inline_script_hashes(&html));
        (mtime, HeaderValue::from_str(&csp).expect("the policy is ASCII"))
    }

    fn csp(&self) -> HeaderValue {
        let mtime = std::fs::metadata(&self.index).and_then(|m| m.modified()).ok();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != mtime {
            *cached = Self::derive(&self.index);
        }
        cached.1.clone()
    }

    /// Add the headers to one response (every route: the softphone, `/api`, `/healthz`, …).
    pub fn apply(&self, mut resp: Response) -> Response {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp());
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        resp
    }
}

/// `'sha256-…'` sources for every inline `<script>` (one without `src`) of `html`.
pub fn inline_script_hashes(html: &str) -> Vec<String> {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let mut out = vec![];
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        let after = &rest[start..];
        let Some(tag_end) = after.find('>') else { break };
        let tag = &after[..tag_end];
        let body_start = tag_end + 1;
        let Some(close) = after[body_start..].find("</script") else { break };
        let body = &after[body_start..body_start + close];
        if !tag.contains(" src=") && !tag.contains("\tsrc=") && !tag.contains("\nsrc=") {
            let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()));
            out.push(format!("'sha256-{hash}'"));
        }
        rest = &after[body_start + close..];
    }
    out
}

/// The policy: everything from this origin only, WebAssembly compilation allowed, no plugins,
/// no framing, no `<base>` tricks. `connect-src 'self'` covers the same-origin `ws:`/`wss:`
/// WebSocket (CSP Level 3). WebRTC media is not governed by CSP.
pub fn content_security_policy(script_hashes: &[String]) -> String {
    let mut script = String::from("'self' 'wasm-unsafe-eval'");
    for h in script_hashes {
        script.push(' ');
        script.push_str(h);
    }
    format!(
        "default-src 'self'; script-src {script}; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob: data:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; \
         font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_counted_and_given_back_once() {
        let l = ConnLimiter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.try_acquire(ip).unwrap();
        let b = l.try_acquire(ip).unwrap();
        assert!(l.try_acquire(ip).is_none());
        assert!(l.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        a.signed_in();
        a.signed_in();
        assert_eq!(l.held(ip), 1);
        drop(a);
        assert_eq!(l.held(ip), 1);
        let _c = l.try_acquire(ip).unwrap();
        drop(b);
        assert_eq!(l.held(ip), 1);
    }

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_not() {
        let html = "<script type=\"module\">init()</script><script src=\"/a.js\"></script>";
        let h = inline_script_hashes(html);
        assert_eq!(h.len(), 1);
        // echo -n 'init()' | openssl dgst -sha256 -binary | base64
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"init()"));
        assert_eq!(h[0], format!("'sha256-{want}'"));
        let csp = content_security_policy(&h);
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("'wasm-unsafe-eval'"));
        assert!(!csp.contains("unsafe-inline"));
    }
}
