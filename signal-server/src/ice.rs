//! STUN/TURN servers handed to browsers and gateways, with TURN REST credentials.
//!
//! Browsers and gateways behind NAT reach each other with ICE: host candidates, server-reflexive
//! ones learned from STUN, and relayed ones from a TURN server (coturn) when NATs leave no other
//! way. The TURN server shares one secret with us (coturn's `use-auth-secret` /
//! `static-auth-secret`) and accepts any username of the form `<unix expiry>:<id>` whose password
//! is `base64(HMAC-SHA1(secret, username))` until that expiry (draft-uberti-behave-turn-rest).
//! So the server mints credentials per device without talking to the TURN server, and a leaked
//! credential dies by itself. The secret never leaves this module: it is not logged, not sent,
//! and its `Debug` is redacted.
//!
//! No I/O except reading the secret file once at start; `now` comes in as Unix seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use trunkline_protocol::IceServer;

use crate::config::IceConfig;

/// Shortest TURN secret accepted: coturn takes any, but a short one can be guessed offline
/// from one captured credential.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum IceError {
    #[error("ice.turn_secret_file {path}: {source}")]
    SecretFile { path: PathBuf, source: std::io::Error },
    #[error(
        "ice.turn_secret_file {path}: the secret must be at least {MIN_SECRET_BYTES} bytes (whitespace around it is ignored)"
    )]
    SecretTooShort { path: PathBuf },
}

/// The shared TURN secret. `Debug` never shows it.
#[derive(Clone)]
struct TurnSecret(Vec<u8>);

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
    }
}

/// What the server hands out, built once from `[ice]`.
#[derive(Clone, Debug, Default)]
pub struct IceServers {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    secret: Option<TurnSecret>,
    ttl_secs: u64,
}

impl IceServers {
    /// Read the secret file (when TURN is configured). The config was checked already.
    pub fn from_config(cfg: &IceConfig) -> Result<IceServers, IceError> {
        let secret = match (&cfg.turn_secret_file, cfg.turn_urls.is_empty()) {
            (Some(path), false) => Some(read_secret(path)?),
            _ => None,
        };
        Ok(IceServers { stun_urls: cfg.stun_urls.clone(), turn_urls: cfg.turn_urls.clone(), secret, ttl_secs: cfg.turn_ttl_secs })
    }

    /// For tests and for callers that want a secret they already hold.
    pub fn with_secret(stun_urls: Vec<String>, turn_urls: Vec<String>, secret: &[u8], ttl_secs: u64) -> IceServers {
        IceServers { stun_urls, turn_urls, secret: Some(TurnSecret(secret.to_vec())), ttl_secs }
    }

    pub fn is_empty(&self) -> bool {
        self.stun_urls.is_empty() && !self.has_turn()
    }

    fn has_turn(&self) -> bool {
        self.secret.is_some() && !self.turn_urls.is_empty()
    }

    /// How long minted credentials stay valid.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// When to send fresh credentials to a connection that got some at `welcome`: halfway
    /// through their life, so a client that was busy or briefly offline still renews in time.
    /// `None` when there is nothing that expires (STUN only, or nothing at all).
    pub fn renew_after(&self) -> Option<Duration> {
        self.has_turn().then(|| Duration::from_secs((self.ttl_secs / 2).max(1)))
    }

    /// The list for `user` (a browser's number or a switch id) at `now_unix_s`: STUN servers as
    /// they are, then TURN servers with a credential valid until `now + ttl`.
    pub fn mint(&self, user: &str, now_unix_s: u64) -> Vec<IceServer> {
        let mut out = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            out.push(IceServer { urls: self.stun_urls.clone(), username: None, credential: None });
        }
        if let (Some(secret), false) = (&self.secret, self.turn_urls.is_empty()) {
            let username = format!("{}:{user}", now_unix_s + self.ttl_secs);
            let credential = turn_rest_password(&secret.0, &username);
            out.push(IceServer { urls: self.turn_urls.clone(), username: Some(username), credential: Some(credential) });
        }
        out
    }
}

/// `base64(HMAC-SHA1(secret, username))`: the password coturn's `use-auth-secret` expects.
pub fn turn_rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn read_secret(path: &Path) -> Result<TurnSecret, IceError> {
    let text = std::fs::read(path).map_err(|source| IceError::SecretFile { path: path.into(), source })?;
    let trimmed = text.trim_ascii();
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(IceError::SecretTooShort { path: path.into() });
    }
    Ok(TurnSecret(trimmed.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> IceServers {
        IceServers::with_secret(
            vec!["stun:turn.example.com:3478".into()],
            vec!["turn:turn.example.com:3478?transport=udp".into(), "turn:turn.example.com:443?transport=tcp".into()],
            b"north-wind-0123456789",
            86400,
        )
    }

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        // Reference value from Python: base64(hmac.new(b"s3cret", b"1796285093:alice", sha1).digest()),
        // the shape coturn 4.6 accepted in the research lab.
        assert_eq!(turn_rest_password(b"s3cret", "1796285093:alice"), "U+I0H6iCKaS6g+hBNHymEHE/NSU=");
    }

    #[test]
    fn minted_credentials_expire_after_the_ttl_and_name_the_user() {
        let list = servers().mint("2001", 1_800_000_000);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, vec!["stun:turn.example.com:3478"]);
        assert_eq!(list[0].username, None);
        let turn = &list[1];
        assert_eq!(turn.username.as_deref(), Some("1800086400:2001"));
        assert_eq!(turn.credential.as_deref(), Some(turn_rest_password(b"north-wind-0123456789", "1800086400:2001").as_str()));
        // Another user, or later, gets another credential.
        assert_ne!(servers().mint("2002", 1_800_000_000)[1].credential, turn.credential);
        assert_ne!(servers().mint("2001", 1_800_000_001)[1].credential, turn.credential);
    }

    #[test]
    fn renewal_is_halfway_and_only_when_something_expires() {
        assert_eq!(servers().renew_after(), Some(Duration::from_secs(43200)));
        let stun_only = IceServers { stun_urls: vec!["stun:x:3478".into()], ttl_secs: 86400, ..Default::default() };
        assert_eq!(stun_only.renew_after(), None);
        assert_eq!(stun_only.mint("2001", 5).len(), 1);
        assert!(IceServers::default().is_empty());
        assert!(IceServers::default().mint("2001", 5).is_empty());
    }

    #[test]
    fn the_secret_is_never_in_debug_output() {
        let text = format!("{:?}", servers());
        assert!(!text.contains("north-wind"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn secret_file_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            |p: PathBuf| IceConfig { turn_urls: vec!["turn:t:3478".into()], turn_secret_file: Some(p), ..IceConfig::default() };
        let missing = dir.path().join("missing");
        assert!(matches!(IceServers::from_config(&cfg(missing)), Err(IceError::SecretFile { .. })));
        let short = dir.path().join("short");
        std::fs::write(&short, "  tooshort \n").unwrap();
        assert!(matches!(IceServers::from_config(&cfg(short)), Err(IceError::SecretTooShort { .. })));
        let good = dir.path().join("good");
        std::fs::write(&good, "north-wind-0123456789\n").unwrap();
        let s = IceServers::from_config(&cfg(good)).unwrap();
        // The trailing newline is not part of the secret (coturn's static-auth-secret has none).
        assert_eq!(
            s.mint("u", 0)[0].credential.as_deref(),
            Some(turn_rest_password(b"north-wind-0123456789", "86400:u").as_str())
        );
    }
}
