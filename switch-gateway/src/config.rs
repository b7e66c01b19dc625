//! Gateway configuration: one strict TOML file (every key documented in
//! `switch-gateway.example.toml`), then `TRUNKLINE_GATEWAY_<KEY>` environment overrides
//! (`__` between a table and its key).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "TRUNKLINE_GATEWAY_";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This gateway's switch id, as provisioned on the signal server (`switch add --id`).
    pub id: String,
    /// File holding the switch secret given to `switch add --secret-file`.
    pub secret_file: PathBuf,
    /// The signal server's WebSocket, e.g. `wss://cloud.example.com/ws`.
    pub cloud_url: String,
    /// PEM file of extra certificate authorities trusted for a `wss://` cloud_url, beside the
    /// public web PKI roots (a signal server on a private CA). None: public roots only.
    pub cloud_ca_file: Option<PathBuf>,
    /// SIP for desk phones: UDP and TCP on this address.
    pub sip_listen: SocketAddr,
    /// SIP over TLS for desk phones (off when absent).
    pub sip_tls: Option<SipTlsConfig>,
    /// Address written into Via/Contact/Record-Route and SDP for phones to reach us, and the
    /// host candidate of WebRTC legs; default: the `sip_listen` IP, or 127.0.0.1 when that is
    /// unspecified (0.0.0.0).
    pub sip_advertise: Option<IpAddr>,
    /// UDP ports for RTP/RTCP relaying, "FIRST-LAST" (even RTP port, RTCP = RTP + 1).
    pub rtp_ports: String,
    /// How long a phone may ring before the call ends with no answer (SIP 480).
    pub ring_timeout_secs: u64,
    /// TTL of the one-time keys this gateway issues (claims 9–10).
    pub key_ttl_ms: u64,
    /// Registration expiry bounds (seconds): shorter requests get 423, longer are clamped.
    pub min_expires_secs: u32,
    pub max_expires_secs: u32,
    /// Where the gateway keeps its local copy of its phones (works while the cloud is away).
    pub state_dir: PathBuf,
    /// A number that answers and echoes the caller's audio (for testing a phone); none if empty.
    pub echo_number: Option<String>,
    /// Digest algorithms offered in 401 challenges, most preferred first ("MD5", "SHA-256").
    /// Default MD5 only: sipp 3.6 and many phones try only the first challenge, and some
    /// (baresip 1.0's libre) abandon the registration when any challenge is not MD5. Sites whose
    /// phones do RFC 8760 list "SHA-256" (first).
    pub digest_algorithms: Vec<String>,
    /// Limits on SIP password guessing and scanning (`[sip_guard]`, see [`crate::guard`]).
    pub sip_guard: crate::guard::GuardConfig,
    /// Serve Prometheus metrics at `http://<this>/metrics` (off when absent).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: "hq".into(),
            secret_file: "switch.secret".into(),
            cloud_url: "ws://127.0.0.1:8080/ws".into(),
            cloud_ca_file: None,
            sip_listen: "127.0.0.1:5060".parse().unwrap(),
            sip_advertise: None,
            sip_tls: None,
            rtp_ports: "20000-20999".into(),
            ring_timeout_secs: 30,
            key_ttl_ms: 30_000,
            min_expires_secs: 60,
            max_expires_secs: 3600,
            state_dir: "gateway-state".into(),
            echo_number: None,
            digest_algorithms: vec!["MD5".into()],
            sip_guard: crate::guard::GuardConfig::default(),
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SipTlsConfig {
    /// Address for SIP over TLS (usually port 5061).
    pub listen: SocketAddr,
    /// PEM certificate chain and private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config: {0}")]
    Invalid(String),
    /// A key of an older version that is gone (in the file or as `TRUNKLINE_GATEWAY_<KEY>`).
    #[error(
        "config: `{key}` was removed: callers now reach the gateway over WebRTC through the cloud \
         (offer/answer and candidates relayed on the gateway's own link to the signal server), so \
         the gateway has no direct endpoint and needs no inbound port. Delete `{key}` from the \
         config (and any {env} variable)"
    )]
    Removed { key: &'static str, env: String },
}

/// Keys of older versions, refused with [`ConfigError::Removed`] rather than the generic
/// "unknown field" (operators upgrading should learn why, not only that).
pub const REMOVED_KEYS: &[&str] = &["direct_listen", "advertise_url"];

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?;
            fig = fig.merge(Toml::string(&text));
        }
        Self::extract(fig.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    fn extract(fig: Figment) -> Result<Config, ConfigError> {
        if let Some(key) = REMOVED_KEYS.iter().find(|k| fig.contains(k)) {
            return Err(ConfigError::Removed { key, env: format!("{ENV_PREFIX}{}", key.to_uppercase()) });
        }
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        trunkline_protocol::check_switch_id(&self.id).map_err(|e| ConfigError::Invalid(format!("id: {}", e.message)))?;
        if !(self.cloud_url.starts_with("ws://") || self.cloud_url.starts_with("wss://")) {
            return Err(ConfigError::Invalid(format!("cloud_url {:?} must start with ws:// or wss://", self.cloud_url)));
        }
        self.rtp_range()?;
        if self.key_ttl_ms == 0 || self.key_ttl_ms > trunkline_protocol::MAX_KEY_TTL_MS {
            return Err(ConfigError::Invalid(format!("key_ttl_ms must be 1–{}", trunkline_protocol::MAX_KEY_TTL_MS)));
        }
        if self.ring_timeout_secs == 0 {
            return Err(ConfigError::Invalid("ring_timeout_secs must be > 0".into()));
        }
        if self.min_expires_secs == 0 || self.min_expires_secs > self.max_expires_secs {
            return Err(ConfigError::Invalid("need 0 < min_expires_secs ≤ max_expires_secs".into()));
        }
        if self.digest_algorithms.is_empty() || self.digest_algorithms.iter().any(|a| a != "MD5" && a != "SHA-256") {
            return Err(ConfigError::Invalid(format!(
                "digest_algorithms {:?}: list \"MD5\" and/or \"SHA-256\"",
                self.digest_algorithms
            )));
        }
        self.sip_guard.check().map_err(ConfigError::Invalid)?;
        if let Some(n) = &self.echo_number {
            trunkline_protocol::check_number("echo_number", n).map_err(|e| ConfigError::Invalid(e.message))?;
        }
        Ok(())
    }

    /// `rtp_ports` as an inclusive range of at least two ports.
    pub fn rtp_range(&self) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
        let bad = || ConfigError::Invalid(format!("rtp_ports {:?}: expected FIRST-LAST, e.g. 20000-20999", self.rtp_ports));
        let (a, b) = self.rtp_ports.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a == 0 || b <= a {
            return Err(bad());
        }
        Ok(a..=b)
    }

    /// The IP phones are told to send SIP and RTP to.
    pub fn advertise_ip(&self) -> IpAddr {
        match self.sip_advertise {
            Some(ip) => ip,
            None if self.sip_listen.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.sip_listen.ip(),
        }
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_secs)
    }

    pub fn key_ttl(&self) -> Duration {
        Duration::from_millis(self.key_ttl_ms)
    }

    /// Read the switch secret (trimmed). Never logged.
    pub fn read_secret(&self) -> Result<String, ConfigError> {
        let s = std::fs::read_to_string(&self.secret_file)
            .map_err(|source| ConfigError::Read { path: self.secret_file.clone(), source })?;
        let s = s.trim().to_string();
        if s.is_empty() {
            return Err(ConfigError::Invalid(format!("secret_file {} is empty", self.secret_file.display())));
        }
        Ok(s)
    }
}
