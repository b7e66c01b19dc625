//! Cluster mode: several `signal-server` replicas behind a plain TCP/HTTP load balancer behave
//! as one server, on PostgreSQL (directory, sessions, records, attempts, leases) and NATS
//! (delivery between replicas, presence). No consensus of our own:
//!
//! - **Membership** ([`store`]): a lease row per replica in `cluster_nodes`, renewed only while
//!   both PostgreSQL and NATS answer. A replica that cannot renew fences itself (forgets its
//!   calls, closes its sockets) before its lease runs out, then rejoins with a new incarnation.
//! - **Ownership**: an attempt belongs to the replica where it started (the caller's). It is
//!   written ahead to `call_attempts`; the owner subscribes to `{prefix}.call.{id}`, where the
//!   other replicas forward its parties' messages (NATS "no responders" = nobody owns it).
//!   When an owner's lease expires, a live replica adopts its rows ([`crate::steering::Engine::adopt`]).
//! - **Presence** ([`presence`]): who is connected where, in the PostgreSQL table `presence`
//!   (a revision per change), announced on `{prefix}.presence` and polled by revision in case
//!   an announcement is lost (core NATS is at-most-once). Entries of replicas without a live
//!   lease are ignored. (Not JetStream KV: async-nats 0.52 cannot read NATS 2.9's JetStream
//!   replies, and the table needs no second store.)
//! - **Records**: first writer wins by call id, so an attempt has exactly one record whoever
//!   finishes it.
//!
//! The steering engine stays sans-IO: it names parties on other replicas, the driver
//! ([`runtime`]) moves the messages.

pub mod presence;
pub mod runtime;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::steering::Party;

/// `[cluster]` in the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Off (the default): one process, nothing shared.
    pub enabled: bool,
    /// This replica's name: unique in the cluster and stable across restarts.
    pub node_id: String,
    /// NATS server(s), comma-separated (`nats://host:4222`, `tls://host:4222`).
    pub nats_url: String,
    /// NATS credentials file (`.creds`), if the NATS server requires one.
    pub nats_credentials_file: Option<PathBuf>,
    /// Prefix of every NATS subject and KV bucket: isolates deployments sharing one NATS.
    pub name_prefix: String,
    /// A replica that has not renewed its lease for this long is dead to the others.
    pub lease_ttl_ms: u64,
    /// How often the lease is renewed (at most a third of `lease_ttl_ms`).
    pub lease_renew_ms: u64,
    /// How often each replica looks for attempts whose owner died, and adopts them.
    pub sweep_interval_ms: u64,
    /// How long a replica waits for the owner of a call to take a forwarded message.
    pub forward_timeout_ms: u64,
    /// SIGTERM: how long ringing attempts may run out before the replica stops anyway.
    pub drain_timeout_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: String::new(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_credentials_file: None,
            name_prefix: "trunkline".into(),
            lease_ttl_ms: 5000,
            lease_renew_ms: 1000,
            sweep_interval_ms: 1000,
            forward_timeout_ms: 2000,
            drain_timeout_secs: 90,
        }
    }
}

impl ClusterConfig {
    /// `postgres`: the directory is PostgreSQL (cluster mode needs it).
    pub fn check(&self, postgres: bool) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !postgres {
            return Err("cluster.enabled needs a postgres:// database_url (the replicas share it)".into());
        }
        if !valid_name(&self.node_id, 64) {
            return Err(format!("cluster.node_id {:?}: 1 to 64 characters of A-Z a-z 0-9 _ -", self.node_id));
        }
        if !valid_name(&self.name_prefix, 32) {
            return Err(format!("cluster.name_prefix {:?}: 1 to 32 characters of A-Z a-z 0-9 _ -", self.name_prefix));
        }
        if self.nats_url.trim().is_empty() {
            return Err("cluster.nats_url must not be empty".into());
        }
        for (k, v) in [
            ("cluster.lease_ttl_ms", self.lease_ttl_ms),
            ("cluster.lease_renew_ms", self.lease_renew_ms),
            ("cluster.sweep_interval_ms", self.sweep_interval_ms),
            ("cluster.forward_timeout_ms", self.forward_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{k} must be > 0"));
            }
        }
        if self.lease_renew_ms * 3 > self.lease_ttl_ms {
            return Err(format!(
                "cluster.lease_renew_ms ({}) must be at most a third of cluster.lease_ttl_ms ({}): a replica must get \
                 several tries before its lease runs out",
                self.lease_renew_ms, self.lease_ttl_ms
            ));
        }
        Ok(())
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    pub fn lease_renew(&self) -> Duration {
        Duration::from_millis(self.lease_renew_ms)
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
    /// A replica fences itself when its last successful renewal was sent this long ago: before
    /// the others can see its lease expire (renewals are timed from when they were sent).
    pub fn fence_after(&self) -> Duration {
        let ttl = self.lease_ttl();
        ttl - (ttl / 4).min(Duration::from_secs(1))
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// NATS subjects and bucket names of one deployment.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names { prefix: prefix.to_string() }
    }
    /// Where replica `node` takes messages for its parties.
    pub fn deliver(&self, node: &str) -> String {
        format!("{}.node.{node}.deliver", self.prefix)
    }
    /// Where the owner of `call_id` takes its parties' messages.
    pub fn call(&self, call_id: &str) -> String {
        format!("{}.call.{}", self.prefix, escape_token(call_id))
    }
    /// Presence news: a party signed in on, or left, a replica.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }
}

/// A subject token for any string: NATS tokens cannot hold `.`, `*`, `>` or whitespace, and
/// call ids are chosen by clients. Injective: hex-escape everything outside `[A-Za-z0-9_-]`.
pub fn escape_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The string an escaped token came from (`None`: not an escaped token).
pub fn unescape_token(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A party as one string (`d:<number>`, `s:<id>`), for attempt rows and envelopes.
pub fn party_str(p: &Party) -> String {
    match p {
        Party::Device(n) => format!("d:{n}"),
        Party::Switch(s) => format!("s:{s}"),
    }
}

pub fn parse_party(s: &str) -> Option<Party> {
    match s.split_once(':')? {
        ("d", n) => Some(Party::Device(n.to_string())),
        ("s", id) => Some(Party::Switch(id.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_injective_and_reversible() {
        let samples = ["", "_", "a.b", "a_2eb", "+4930123", "call id with spaces", "ünïcode", "x*y>z", "--", "a/b=c"];
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let e = escape_token(s);
            assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{e}");
            assert!(seen.insert(e.clone()), "collision on {s:?}");
            assert_eq!(unescape_token(&e).as_deref(), Some(s));
        }
        for p in [Party::Device("+49.30".into()), Party::Switch("hq".into())] {
            assert_eq!(parse_party(&party_str(&p)), Some(p));
        }
        assert_eq!(parse_party("x:y"), None);
        assert_eq!(unescape_token("bad_zz"), None);
    }

    #[test]
    fn config_checks() {
        let mut c = ClusterConfig { enabled: true, node_id: "sig-1".into(), ..Default::default() };
        assert!(c.check(true).is_ok());
        assert!(c.check(false).unwrap_err().contains("postgres"));
        c.node_id = "bad id".into();
        assert!(c.check(true).unwrap_err().contains("node_id"));
        c.node_id = "sig-1".into();
        c.lease_renew_ms = 2000;
        assert!(c.check(true).unwrap_err().contains("third"));
        assert!(ClusterConfig::default().check(false).is_ok());
        assert!(c.fence_after() < c.lease_ttl());
    }
}
