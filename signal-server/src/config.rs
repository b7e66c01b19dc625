//! Configuration: one TOML file (strict: unknown keys are an error) with every key documented
//! in `signal-server.example.toml`. Environment variables override keys:
//! `TRUNKLINE_SIGNAL_<KEY>`, with `__` between a table and its key
//! (e.g. `TRUNKLINE_SIGNAL_LISTEN=0.0.0.0:443`, `TRUNKLINE_SIGNAL_TLS__CERT_FILE=/etc/cert.pem`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "TRUNKLINE_SIGNAL_";

/// Longest `push.ttl_secs`: a wake-up for a call is useless long before this.
pub const MAX_PUSH_TTL_SECS: u64 = 24 * 3600;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds.
    pub listen: SocketAddr,
    /// `sqlite://path/to/file.db` (created if missing), `sqlite::memory:`, or
    /// `postgres://user@host:5432/db` (`postgresql://` too) for a directory shared by several
    /// replicas.
    pub database_url: String,
    /// Connection pool settings (PostgreSQL; SQLite ignores them).
    pub database: crate::directory::DatabaseOptions,
    /// Folder of the built softphone served at `/` (Trunk's `dist`). Missing folder: `/` says so.
    pub web_root: PathBuf,
    /// The URL users reach this server at (printed, used in links and Web Push).
    pub public_url: String,
    /// SIP digest realm the gateways use for their desk phones; HA1 verifiers depend on it.
    pub sip_realm: String,
    /// File holding the admin API bearer token (at least 32 characters, 10 of them different,
    /// or the server refuses to start). No file: the admin API answers 503.
    pub admin_token_file: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    pub steering: SteeringConfig,
    pub limits: LimitsConfig,
    pub push: PushConfig,
    pub ice: IceConfig,
    /// Cluster mode: several replicas on one PostgreSQL and one NATS ([`crate::cluster`]).
    pub cluster: crate::cluster::ClusterConfig,
}

/// STUN/TURN servers handed to browsers (in `welcome`) and gateways (in `switch_welcome`) for
/// ICE across NATs, with TURN REST credentials minted from coturn's `static-auth-secret`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    /// `stun:host:port` URLs (server-reflexive candidates). Empty: none.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs, e.g. `turn:turn.example.com:443?transport=tcp`. Empty: no relay
    /// (two parties behind symmetric NATs then cannot connect).
    pub turn_urls: Vec<String>,
    /// File holding coturn's `static-auth-secret` (≥ 16 bytes). Required with `turn_urls`.
    pub turn_secret_file: Option<PathBuf>,
    /// Lifetime of minted TURN credentials, seconds; renewed at half-life on live connections.
    pub turn_ttl_secs: u64,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig { stun_urls: vec![], turn_urls: vec![], turn_secret_file: None, turn_ttl_secs: 86400 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a browser session token stays valid for `resume`.
    pub session_ttl_secs: u64,
    /// Failed sign-ins to one account from one address before backoff starts (see
    /// [`crate::ratelimit`]).
    pub max_failures_per_source: u32,
    /// Failed sign-ins to one account from all addresses together before backoff starts for
    /// addresses that have not signed in to it successfully within `trusted_source_secs`.
    pub max_failures_per_account: u32,
    /// Failed sign-ins (and bad `resume` tokens) from one address, for any account, before
    /// backoff starts.
    pub max_failures_per_address: u32,
    /// A counter is forgotten after this long without a failure (≥ `backoff_max_secs`).
    pub failure_window_secs: u64,
    /// First backoff once a budget is used up; it doubles with every further failure.
    pub backoff_base_secs: u64,
    /// Longest backoff.
    pub backoff_max_secs: u64,
    /// An address that signed in to an account successfully within this time is exempt from
    /// that account's `max_failures_per_account` budget.
    pub trusted_source_secs: u64,
    /// Password/secret checks (argon2id) running at once; each takes the hash's memory cost.
    pub max_concurrent_hashes: usize,
    /// Sign-ins waiting for a free check; more are refused with `too_many_requests`.
    pub max_queued_hashes: usize,
    /// Longest wait for a free check before `too_many_requests`.
    pub hash_queue_timeout_ms: u64,
    /// Argon2id memory cost (KiB) for new password hashes. Existing hashes keep their own.
    pub password_hash_memory_kib: u32,
    /// Argon2id iterations for new password hashes.
    pub password_hash_iterations: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SteeringConfig {
    /// C11: how long to wait for the callee's switch to answer a `callee_query`.
    pub switch_answer_timeout_ms: u64,
    /// C3: how long to wait for the caller's switch to send `direct_offer` after a B6 route.
    pub direct_offer_timeout_ms: u64,
    /// How long a callee may ring before the attempt ends `no_answer`.
    pub ring_timeout_ms: u64,
    /// TTL of cloud-issued F4 keys, and how long after C13/C2/C3 the caller (or callee) has to
    /// reach the switch before the attempt ends `key_expired`.
    pub key_ttl_ms: u64,
    /// A connected call with no `ended` report after this long is closed (outcome `connected`,
    /// duration = this limit): the carrier stopped reporting, the call did connect.
    pub max_call_duration_secs: u64,
    /// When a switch's cloud link drops, its connected calls are kept this long (seconds)
    /// waiting for it to come back: a blip must not end calls that are still up. Back in
    /// time, it says which calls it still carries (the others end); not back, its calls end
    /// with their duration up to the link loss.
    pub switch_link_grace_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// WebSocket connections accepted at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Messages per second one connection may send (burst: twice this); more get
    /// `too_many_requests` and are dropped.
    pub messages_per_second: u32,
    /// Seconds a new WebSocket has to sign in before it is closed (close code 4408).
    pub auth_timeout_secs: u64,
    /// Call attempts one browser may have in progress at once.
    pub max_calls_per_device: usize,
    /// TCP connections one address (IPv4, or an IPv6 /64) may hold that have not signed in
    /// (plain HTTP, and WebSockets before `login`/`resume`/`switch_auth`); more are closed at
    /// accept.
    pub max_unauthenticated_per_address: usize,
    /// Seconds a connection has for its TLS handshake and for each request head (request line
    /// and headers), counted from accept or from the end of the previous response; an idle
    /// keep-alive connection is closed after the same time.
    pub request_header_timeout_secs: u64,
    /// Seconds an admin API request (body included) may take before it gets 408.
    pub api_request_timeout_secs: u64,
    /// Largest admin API request body, bytes (more: 413).
    pub max_request_body_bytes: usize,
    /// Largest WebSocket frame or message, bytes; a bigger one closes the connection with 1009.
    pub ws_max_frame_bytes: usize,
    /// Seconds between the server's WebSocket pings to a signed-in connection.
    pub ws_ping_interval_secs: u64,
    /// A signed-in connection from which nothing (not even a pong) arrived for
    /// `ws_ping_interval_secs + ws_pong_timeout_secs` is closed (close code 4409).
    pub ws_pong_timeout_secs: u64,
    /// Wrong admin tokens from one address before backoff starts (then 429 + Retry-After).
    pub admin_failures_per_address: u32,
    /// First admin API backoff past the budget, seconds; doubles with every further failure.
    pub admin_backoff_base_secs: u64,
    /// Longest admin API backoff, seconds.
    pub admin_backoff_max_secs: u64,
}

/// Web Push (RFC 8030 + RFC 8291 aes128gcm + RFC 8292 VAPID): wakes a switchless browser that
/// has no live connection when a call comes for it (flows F3 and F4).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Off: an offline switchless callee ends `callee_offline` at once, no push is sent, and
    /// `welcome` carries no `vapid_public_key`.
    pub enabled: bool,
    /// The VAPID private key: a PEM file (SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`, P-256)
    /// or the raw 32-byte scalar in base64url. Not set: `vapid-private-key.pem` next to the
    /// database file, generated at the first start (in memory only for `sqlite::memory:`).
    pub vapid_private_key_file: Option<PathBuf>,
    /// The VAPID `sub` claim, a `mailto:` or `https:` URL push services may use to contact the
    /// operator. Not set: `public_url`.
    pub vapid_subject: Option<String>,
    /// How long a push service keeps an undelivered wake-up (the `TTL` header), seconds.
    pub ttl_secs: u64,
    /// Time limit for one push request (connect + TLS + answer), milliseconds.
    pub timeout_ms: u64,
    /// Subscriptions one account may keep; more are refused with `too_many_requests`.
    pub max_subscriptions_per_account: usize,
    /// Accept push endpoints on this machine's loopback address (`localhost`, `127.x`, `[::1]`).
    /// Only tests need this; off, such endpoints are refused so a browser cannot make the
    /// server post to local services.
    pub allow_loopback_endpoints: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            vapid_private_key_file: None,
            vapid_subject: None,
            ttl_secs: 30,
            timeout_ms: 5_000,
            max_subscriptions_per_account: 10,
            allow_loopback_endpoints: false,
        }
    }
}

impl PushConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().unwrap(),
            database_url: "sqlite://trunkline.db".into(),
            database: crate::directory::DatabaseOptions::default(),
            web_root: "dist".into(),
            public_url: "http://127.0.0.1:8080".into(),
            sip_realm: "trunkline".into(),
            admin_token_file: None,
            tls: None,
            auth: AuthConfig::default(),
            steering: SteeringConfig::default(),
            limits: LimitsConfig::default(),
            push: PushConfig::default(),
            ice: IceConfig::default(),
            cluster: Default::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_ttl_secs: 30 * 24 * 3600,
            max_failures_per_source: 5,
            max_failures_per_account: 50,
            max_failures_per_address: 20,
            failure_window_secs: 3600,
            backoff_base_secs: 1,
            backoff_max_secs: 900,
            trusted_source_secs: 30 * 24 * 3600,
            max_concurrent_hashes: 4,
            max_queued_hashes: 64,
            hash_queue_timeout_ms: 5_000,
            // OWASP's argon2id recommendation.
            password_hash_memory_kib: 19 * 1024,
            password_hash_iterations: 2,
        }
    }
}

impl Default for SteeringConfig {
    fn default() -> Self {
        SteeringConfig {
            switch_answer_timeout_ms: 5_000,
            direct_offer_timeout_ms: 5_000,
            ring_timeout_ms: 45_000,
            key_ttl_ms: 30_000,
            max_call_duration_secs: 24 * 3600,
            switch_link_grace_secs: 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            messages_per_second: 50,
            auth_timeout_secs: 10,
            max_calls_per_device: 4,
            max_unauthenticated_per_address: 128,
            request_header_timeout_secs: 10,
            api_request_timeout_secs: 30,
            max_request_body_bytes: 64 * 1024,
            ws_max_frame_bytes: 64 * 1024,
            ws_ping_interval_secs: 30,
            ws_pong_timeout_secs: 30,
            admin_failures_per_address: 5,
            admin_backoff_base_secs: 1,
            admin_backoff_max_secs: 300,
        }
    }
}

impl SteeringConfig {
    pub fn switch_answer_timeout(&self) -> Duration {
        Duration::from_millis(self.switch_answer_timeout_ms)
    }
    pub fn direct_offer_timeout(&self) -> Duration {
        Duration::from_millis(self.direct_offer_timeout_ms)
    }
    pub fn ring_timeout(&self) -> Duration {
        Duration::from_millis(self.ring_timeout_ms)
    }
    pub fn key_ttl(&self) -> Duration {
        Duration::from_millis(self.key_ttl_ms)
    }
    pub fn max_call_duration(&self) -> Duration {
        Duration::from_secs(self.max_call_duration_secs)
    }
    pub fn switch_link_grace(&self) -> Duration {
        Duration::from_secs(self.switch_link_grace_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Load `path` (if given) over the defaults, then apply `TRUNKLINE_SIGNAL_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Parse TOML text only (no environment), e.g. for tests.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            // Read it ourselves so a missing file is an error, not silently ignored.
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?;
            fig = fig.merge(Toml::string(&text));
        }
        let cfg: Config = fig.merge(env).extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let postgres = crate::directory::is_postgres_url(&self.database_url);
        if !(self.database_url.starts_with("sqlite:") || postgres) {
            return Err(ConfigError::Invalid(format!(
                "database_url {:?}: must be a sqlite:// URL (or sqlite::memory:) or a postgres:// (postgresql://) URL",
                crate::directory::postgres::redact_url(&self.database_url)
            )));
        }
        let d = &self.database;
        for (name, v) in [
            ("database.max_connections", u64::from(d.max_connections)),
            ("database.acquire_timeout_ms", d.acquire_timeout_ms),
            ("database.statement_timeout_ms", d.statement_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        // The default key file sits next to the SQLite file; a PostgreSQL directory has no such
        // place, and replicas must all sign with the one key the browsers subscribed with.
        if postgres && self.push.enabled && self.push.vapid_private_key_file.is_none() {
            return Err(ConfigError::Invalid(
                "push.vapid_private_key_file must be set with a postgres:// database_url (every replica signs Web Push \
                 with the same key), or push.enabled = false"
                    .into(),
            ));
        }
        if self.sip_realm.is_empty() {
            return Err(ConfigError::Invalid("sip_realm must not be empty".into()));
        }
        self.cluster.check(postgres).map_err(ConfigError::Invalid)?;
        let s = &self.steering;
        for (name, v) in [
            ("steering.switch_answer_timeout_ms", s.switch_answer_timeout_ms),
            ("steering.direct_offer_timeout_ms", s.direct_offer_timeout_ms),
            ("steering.ring_timeout_ms", s.ring_timeout_ms),
            ("steering.key_ttl_ms", s.key_ttl_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if s.key_ttl_ms > trunkline_protocol::MAX_KEY_TTL_MS {
            return Err(ConfigError::Invalid(format!("steering.key_ttl_ms must be ≤ {}", trunkline_protocol::MAX_KEY_TTL_MS)));
        }
        if self.auth.password_hash_memory_kib < 8 || self.auth.password_hash_iterations == 0 {
            return Err(ConfigError::Invalid("auth.password_hash_* too small (memory ≥ 8 KiB, iterations ≥ 1)".into()));
        }
        let a = &self.auth;
        if a.max_failures_per_source == 0 || a.max_failures_per_account == 0 || a.max_failures_per_address == 0 {
            return Err(ConfigError::Invalid("auth.max_failures_per_* must be > 0".into()));
        }
        if a.backoff_base_secs == 0 || a.backoff_max_secs < a.backoff_base_secs {
            return Err(ConfigError::Invalid("auth.backoff_base_secs must be > 0 and ≤ auth.backoff_max_secs".into()));
        }
        if a.failure_window_secs < a.backoff_max_secs {
            return Err(ConfigError::Invalid("auth.failure_window_secs must be ≥ auth.backoff_max_secs".into()));
        }
        if a.max_concurrent_hashes == 0 || a.hash_queue_timeout_ms == 0 {
            return Err(ConfigError::Invalid("auth.max_concurrent_hashes and auth.hash_queue_timeout_ms must be > 0".into()));
        }
        let l = &self.limits;
        if l.messages_per_second == 0
            || l.max_connections == 0
            || l.auth_timeout_secs == 0
            || l.max_unauthenticated_per_address == 0
            || l.request_header_timeout_secs == 0
            || l.api_request_timeout_secs == 0
            || l.max_request_body_bytes == 0
            || l.ws_ping_interval_secs == 0
            || l.ws_pong_timeout_secs == 0
            || l.admin_failures_per_address == 0
            || l.admin_backoff_base_secs == 0
        {
            return Err(ConfigError::Invalid("limits.* must be > 0".into()));
        }
        if l.ws_max_frame_bytes <= trunkline_protocol::MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "limits.ws_max_frame_bytes must be > {} (the protocol's message limit)",
                trunkline_protocol::MAX_MESSAGE_BYTES
            )));
        }
        if l.admin_backoff_max_secs < l.admin_backoff_base_secs {
            return Err(ConfigError::Invalid("limits.admin_backoff_max_secs must be ≥ limits.admin_backoff_base_secs".into()));
        }
        let p = &self.push;
        if p.ttl_secs > MAX_PUSH_TTL_SECS {
            return Err(ConfigError::Invalid(format!("push.ttl_secs must be ≤ {MAX_PUSH_TTL_SECS} (one day)")));
        }
        if p.timeout_ms == 0 || p.max_subscriptions_per_account == 0 {
            return Err(ConfigError::Invalid("push.timeout_ms and push.max_subscriptions_per_account must be > 0".into()));
        }
        if let Some(sub) = &p.vapid_subject
            && !(sub.starts_with("mailto:") || sub.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!("push.vapid_subject {sub:?} must be a mailto: or https:// URL")));
        }
        let ice = &self.ice;
        for u in &ice.stun_urls {
            check_ice_url("ice.stun_urls", u, &["stun:", "stuns:"])?;
        }
        for u in &ice.turn_urls {
            check_ice_url("ice.turn_urls", u, &["turn:", "turns:"])?;
        }
        if !ice.turn_urls.is_empty() && ice.turn_secret_file.is_none() {
            return Err(ConfigError::Invalid(
                "ice.turn_urls needs ice.turn_secret_file (coturn's static-auth-secret) to mint credentials".into(),
            ));
        }
        if !(10..=7 * 24 * 3600).contains(&ice.turn_ttl_secs) {
            return Err(ConfigError::Invalid("ice.turn_ttl_secs must be 10–604800 (ten seconds to a week)".into()));
        }
        Ok(())
    }
}

/// A STUN/TURN URI (RFC 7064/7065): scheme, then `host[:port]`, optional `?transport=udp|tcp`.
fn check_ice_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::Invalid(format!("{key}: {url:?} {why}")));
    let Some(scheme) = schemes.iter().find(|s| url.starts_with(**s)) else {
        return bad(&format!("must start with {}", schemes.join(" or ")));
    };
    let rest = &url[scheme.len()..];
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    if hostport.is_empty() || hostport.starts_with("//") || hostport.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
        return bad("needs host[:port] after the scheme (no //, path or user)");
    }
    if !query.is_empty() && query != "transport=udp" && query != "transport=tcp" {
        return bad("may only have ?transport=udp or ?transport=tcp");
    }
    if !query.is_empty() && scheme.starts_with("stun") {
        return bad("STUN URLs take no ?transport");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_postgres_urls_with_a_shared_vapid_key() {
        for url in ["postgres://trunkline@db.example:5432/trunkline", "postgresql://u@127.0.0.1/t?sslmode=require"] {
            let cfg =
                Config::from_toml(&format!("database_url = {url:?}\n[push]\nvapid_private_key_file = \"/etc/t/vapid.pem\"\n"))
                    .unwrap();
            assert_eq!(cfg.database_url, url);
            let cfg = Config::from_toml(&format!("database_url = {url:?}\n[push]\nenabled = false\n")).unwrap();
            assert_eq!(cfg.database, crate::directory::DatabaseOptions::default());
        }
        // Without a key file each replica would make its own key: refused, saying why.
        let e = Config::from_toml("database_url = \"postgres://u@h/d\"").unwrap_err().to_string();
        assert!(e.contains("push.vapid_private_key_file"), "{e}");
    }

    #[test]
    fn config_rejects_other_database_schemes_naming_both_and_hiding_the_password() {
        let e = Config::from_toml("database_url = \"mysql://root:S3CRET-PW@h/d\"").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ConfigError::Invalid(_)));
        assert!(text.contains("sqlite://") && text.contains("postgres://"), "{text}");
        assert!(!text.contains("S3CRET-PW"), "{text}");
    }

    #[test]
    fn config_database_table_is_checked() {
        let cfg =
            Config::from_toml("[database]\nmax_connections = 3\nacquire_timeout_ms = 10\nstatement_timeout_ms = 20\n").unwrap();
        assert_eq!(
            cfg.database,
            crate::directory::DatabaseOptions { max_connections: 3, acquire_timeout_ms: 10, statement_timeout_ms: 20 }
        );
        for key in ["max_connections", "acquire_timeout_ms", "statement_timeout_ms"] {
            let e = Config::from_toml(&format!("[database]\n{key} = 0\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("database.{key} must be > 0")), "{e}");
        }
        let e = Config::from_toml("[database]\nmax_conections = 3\n").unwrap_err().to_string();
        assert!(e.contains("max_conections"), "unknown keys are an error: {e}");
    }
}
