//! Web Push: wakes a switchless browser that has no live WebSocket when a call comes for it
//! (flows F3 and F4).
//!
//! - RFC 8030 (HTTP push): one `POST` per subscription endpoint with `TTL` (`push.ttl_secs`,
//!   30 s: a late wake-up for a call is useless) and `Urgency: high`.
//! - RFC 8291 (message encryption): the body is one `aes128gcm` record (RFC 8188) for the
//!   subscription's `p256dh` key and `auth` secret — [`crypto::encrypt`].
//! - RFC 8292 (VAPID): `Authorization: vapid t=<ES256 JWT>, k=<public key>` with `aud` = the
//!   endpoint's origin, `exp` = now + 12 h, `sub` = `push.vapid_subject` — [`crypto::VapidKey`].
//!
//! The payload is small JSON for the service worker (see [`incoming_payload`]):
//! `{"type":"incoming","call_id":…,"from":…,"from_name":…}`. It shows an incoming-call
//! notification; the app then signs in (or resumes) and the server delivers the `incoming`.
//!
//! The steering engine decides *when* to wake someone (`Output::WakeUp`); this module does the
//! sending ([`wake`]), and the driver in `server.rs` tells the engine when nobody could be
//! reached (`Engine::wake_failed`). Subscriptions the push service reports gone (404/410) are
//! deleted. Logs name the call, the number and the endpoint's origin — never keys, endpoint
//! paths or payloads.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue};
use trunkline_protocol::{ErrorCode, ProtocolError};

use crate::config::{Config, PushConfig};
use crate::directory::{Directory, PushSubscription};

pub mod crypto;
pub mod http;
#[cfg(test)]
mod tests;

pub use crypto::{CryptoError, UaKeys, VapidKey, origin_of};
pub use http::HttpClient;

/// Validity of the VAPID JWT (`exp` − now): 12 h, within RFC 8292's 24 h limit.
pub const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 3600);
/// Name of the generated key file, next to the database.
pub const DEFAULT_KEY_FILE: &str = "vapid-private-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("VAPID key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("VAPID key file {path}: {error}")]
    BadKey { path: PathBuf, error: CryptoError },
}

/// What became of one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The push service took it (201 Created, or another 2xx).
    Accepted(u16),
    /// 404 / 410: the subscription has expired or was unsubscribed; forget it.
    Gone(u16),
    /// Anything else (other status, network error, timeout); the reason for the log.
    Failed(String),
}

/// The wake-up message for an incoming call, as JSON bytes:
/// `{"type":"incoming","call_id":…,"from":…,"from_name":…}`.
pub fn incoming_payload(call_id: &str, from: &str, from_name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "incoming",
        "call_id": call_id,
        "from": from,
        "from_name": from_name,
    }))
    .expect("JSON of strings")
}

/// Sends push messages with the server's VAPID key.
pub struct PushSender {
    vapid: VapidKey,
    subject: String,
    ttl_secs: u64,
    http: HttpClient,
}

impl PushSender {
    pub fn new(vapid: VapidKey, subject: String, ttl_secs: u64, http: HttpClient) -> PushSender {
        PushSender { vapid, subject, ttl_secs, http }
    }

    /// From the configuration: `None` when `push.enabled` is off. Loads (or at the first
    /// start creates) the VAPID key: see [`load_or_create_key`].
    pub fn from_config(cfg: &Config) -> Result<Option<PushSender>, PushError> {
        let p = &cfg.push;
        if !p.enabled {
            return Ok(None);
        }
        let vapid = load_or_create_key(p, &cfg.database_url)?;
        let subject = p.vapid_subject.clone().unwrap_or_else(|| cfg.public_url.clone());
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            tracing::warn!(
                %subject,
                "VAPID subject is neither mailto: nor https:; some push services refuse that — set push.vapid_subject"
            );
        }
        Ok(Some(PushSender::new(vapid, subject, p.ttl_secs, HttpClient::new(p.timeout()))))
    }

    /// The VAPID public key for `welcome.vapid_public_key` (unpadded base64url).
    pub fn public_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// Encrypt `payload` for `sub` and post it to its endpoint.
    pub async fn send(&self, sub: &PushSubscription, payload: &[u8]) -> Delivery {
        let Some(origin) = origin_of(&sub.endpoint) else {
            return Delivery::Gone(0);
        };
        // Stored subscriptions were checked when they came in; one that no longer decodes can
        // never be delivered: forget it like a gone one.
        let Ok(keys) = UaKeys::decode(&sub.p256dh, &sub.auth) else {
            return Delivery::Gone(0);
        };
        let body = match crypto::encrypt(payload, &keys) {
            Ok(b) => b,
            Err(e) => return Delivery::Failed(e.to_string()),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let auth = match self.vapid.authorization(&origin, &self.subject, now, VAPID_VALIDITY) {
            Ok(a) => a,
            Err(e) => return Delivery::Failed(e.to_string()),
        };
        let headers = [
            (HeaderName::from_static("ttl"), HeaderValue::from(self.ttl_secs)),
            (HeaderName::from_static("urgency"), HeaderValue::from_static("high")),
            (hyper::header::CONTENT_ENCODING, HeaderValue::from_static("aes128gcm")),
            (hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (hyper::header::AUTHORIZATION, HeaderValue::try_from(auth).expect("base64url and ASCII")),
        ];
        match self.http.post(&sub.endpoint, &headers, body).await {
            Ok(s) if (200..300).contains(&s) => Delivery::Accepted(s),
            Ok(s @ (404 | 410)) => Delivery::Gone(s),
            Ok(s) => Delivery::Failed(format!("push service answered {s}")),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }
}

/// What [`wake`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeReport {
    pub subscriptions: usize,
    pub accepted: usize,
    pub gone: usize,
    pub failed: usize,
}

/// Push `payload` to every subscription of `number` at once; delete the gone ones. The caller
/// learns how many the push services accepted (none: the callee cannot be woken).
pub async fn wake(dir: &dyn Directory, sender: &PushSender, number: &str, call_id: &str, payload: &[u8]) -> WakeReport {
    let subs = match dir.push_subscriptions(number).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%call_id, %number, error = %e, "could not read push subscriptions");
            return WakeReport::default();
        }
    };
    let mut report = WakeReport { subscriptions: subs.len(), ..Default::default() };
    let results = futures_util::future::join_all(subs.iter().map(|s| sender.send(s, payload))).await;
    for (sub, result) in subs.iter().zip(results) {
        let origin = origin_of(&sub.endpoint).unwrap_or_default();
        match result {
            Delivery::Accepted(status) => {
                report.accepted += 1;
                metrics::counter!("trunkline_push_total", "result" => "accepted").increment(1);
                tracing::info!(%call_id, %number, %origin, status, "wake-up push accepted");
            }
            Delivery::Gone(status) => {
                report.gone += 1;
                metrics::counter!("trunkline_push_total", "result" => "gone").increment(1);
                tracing::info!(%call_id, %number, %origin, status, "push subscription is gone: deleting it");
                if let Err(e) = dir.remove_push_subscription(&sub.endpoint).await {
                    tracing::error!(%number, %origin, error = %e, "could not delete a gone push subscription");
                }
            }
            Delivery::Failed(why) => {
                report.failed += 1;
                metrics::counter!("trunkline_push_total", "result" => "failed").increment(1);
                tracing::warn!(%call_id, %number, %origin, "wake-up push failed: {why}");
            }
        }
    }
    report
}

/// Check a `push_subscribe` beyond the wire rules: the keys must decode to a P-256 point and
/// a 16-byte secret, and loopback endpoints need `push.allow_loopback_endpoints`.
pub fn check_subscription(cfg: &PushConfig, endpoint: &str, p256dh: &str, auth: &str) -> Result<(), ProtocolError> {
    UaKeys::decode(p256dh, auth).map_err(|e| ProtocolError::new(ErrorCode::InvalidField, e.to_string()))?;
    let host = trunkline_protocol::url_authority(endpoint).map(|(_, h)| h).unwrap_or("");
    if !cfg.allow_loopback_endpoints && trunkline_protocol::is_loopback_host(host) {
        return Err(ProtocolError::new(ErrorCode::InvalidField, "endpoint: loopback push endpoints are not allowed here"));
    }
    Ok(())
}

/// Where the VAPID key lives when `push.vapid_private_key_file` is not set: next to the
/// database file. `None` for an in-memory database.
pub fn default_key_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    if db.is_empty() || db == ":memory:" || params.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    let dir = Path::new(db).parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(dir.join(DEFAULT_KEY_FILE))
}

/// The VAPID key: read from `push.vapid_private_key_file` if set (it must exist); otherwise
/// from `vapid-private-key.pem` next to the database, generated (PKCS#8 PEM, mode 0600) if it
/// does not exist yet. With an in-memory database a fresh key lives in memory only.
///
/// Keep the key: browsers subscribed with its public key, and their subscriptions only
/// accept pushes signed with it (a new key means every browser must subscribe again).
pub fn load_or_create_key(cfg: &PushConfig, database_url: &str) -> Result<VapidKey, PushError> {
    let read = |path: &Path| -> Result<VapidKey, PushError> {
        let text = std::fs::read_to_string(path).map_err(|source| PushError::KeyFile { path: path.into(), source })?;
        VapidKey::parse(&text).map_err(|error| PushError::BadKey { path: path.into(), error })
    };
    if let Some(path) = &cfg.vapid_private_key_file {
        return read(path);
    }
    let Some(path) = default_key_path(database_url) else {
        let (key, _) = VapidKey::generate();
        tracing::warn!(public_key = key.public_key(), "in-memory database: using a VAPID key that lasts until exit");
        return Ok(key);
    };
    if path.exists() {
        crate::credentials::restrict_to_owner(&path, "VAPID key")
            .map_err(|source| PushError::KeyFile { path: path.clone(), source })?;
        return read(&path);
    }
    let (key, pem) = VapidKey::generate();
    write_private(&path, &pem).map_err(|source| PushError::KeyFile { path: path.clone(), source })?;
    tracing::info!(path = %path.display(), public_key = key.public_key(), "generated a new VAPID key for Web Push");
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
