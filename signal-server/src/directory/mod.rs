//! The directory: accounts, switches, sessions, Web Push subscriptions and call records.
//!
//! Storage sits behind the [`Directory`] trait so the engine and the driver never see SQL.
//! Two implementations, picked by [`open`] from the `database_url` scheme:
//! - SQLite ([`sqlite::SqliteDirectory`], `sqlite://…`): the embedded default, one process,
//!   nothing to install;
//! - PostgreSQL ([`postgres::PgDirectory`], `postgres://…` or `postgresql://…`): shared by
//!   several signal-server replicas (cluster mode) and the admin CLI.
//!
//! Both keep the same contract; `conformance.rs` runs one test suite against each.

use trunkline_protocol::{AccountKind, Outcome, Step};

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
pub mod sqlite;

/// Connection pool settings (`[database]` in the config). PostgreSQL uses them; the SQLite
/// directory keeps its own fixed settings (one file, one writer) and ignores them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseOptions {
    /// Connections this process keeps to the database at most (PostgreSQL's own limit,
    /// `max_connections`, is 100 by default: leave room for every replica and the admin CLI).
    pub max_connections: u32,
    /// Longest wait for a free connection (or a new one) before a request fails `unavailable`.
    pub acquire_timeout_ms: u64,
    /// Longest a statement may run on the server (PostgreSQL `statement_timeout`) before it is
    /// cancelled and the request fails `unavailable`.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions { max_connections: 16, acquire_timeout_ms: 5_000, statement_timeout_ms: 5_000 }
    }
}

/// Is `url` a PostgreSQL URL (`postgres://` or `postgresql://`)?
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open the directory named by `database_url` (`sqlite://…`, `sqlite::memory:`,
/// `postgres://…` or `postgresql://…`), applying migrations. The one place that picks the
/// storage implementation.
pub async fn open(database_url: &str, options: &DatabaseOptions) -> Result<std::sync::Arc<dyn Directory>, DirectoryError> {
    if is_postgres_url(database_url) {
        return Ok(std::sync::Arc::new(postgres::PgDirectory::open(database_url, options).await?));
    }
    Ok(std::sync::Arc::new(sqlite::SqliteDirectory::open(database_url).await?))
}

/// Unix time in milliseconds.
pub type UnixMs = i64;

#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub number: String,
    pub display_name: String,
    pub kind: AccountKind,
    /// The switch this account's device hangs off (B5), or none (B6).
    pub home_switch: Option<String>,
    /// SIP digest verifiers; present for desk phones only (browsers never use SIP).
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

#[derive(Clone)]
pub struct NewAccount {
    pub number: String,
    pub display_name: String,
    pub kind: AccountKind,
    pub home_switch: Option<String>,
    /// PHC string (argon2id) of the password.
    pub password_hash: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

// Hand-written: the HA1 verifiers are as good as the desk phone's password for SIP.
impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("number", &self.number)
            .field("display_name", &self.display_name)
            .field("kind", &self.kind)
            .field("home_switch", &self.home_switch)
            .field("ha1_md5", &self.ha1_md5.as_ref().map(|_| "<redacted>"))
            .field("ha1_sha256", &self.ha1_sha256.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("number", &self.number)
            .field("display_name", &self.display_name)
            .field("kind", &self.kind)
            .field("home_switch", &self.home_switch)
            .field("password_hash", &"<redacted>")
            .field("ha1_md5", &self.ha1_md5.as_ref().map(|_| "<redacted>"))
            .field("ha1_sha256", &self.ha1_sha256.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchRecord {
    pub id: String,
    /// Direct endpoint addresses it advertised when it last connected.
    pub direct_urls: Vec<String>,
    pub online: bool,
    pub last_seen_ms: Option<UnixMs>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSubscription {
    pub number: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

/// One row per call attempt, written once when the attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    /// Switch that carried (or was asked to carry) the call, if any.
    pub switch_id: Option<String>,
    pub started_ms: UnixMs,
    pub ended_ms: UnixMs,
    pub outcome: Outcome,
    /// Talk time for connected calls.
    pub duration_ms: Option<u64>,
    /// Patent steps the attempt went through, in order.
    pub trace: Vec<Step>,
}

/// A browser session as the admin views list it: never the token (nor its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Handle for revocation; stays the same when `resume` rotates the token.
    pub id: i64,
    pub number: String,
    /// When the browser signed in with its password.
    pub created_ms: UnixMs,
    pub expires_ms: UnixMs,
    /// The last `login` or `resume` with it.
    pub last_used_ms: UnixMs,
}

/// One sign-in failure counter (see [`crate::ratelimit`]); missing rows read as all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleCounter {
    pub failures: u32,
    pub last_failure_ms: UnixMs,
    pub last_success_ms: Option<UnixMs>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{what} {key:?} already exists")]
    AlreadyExists { what: &'static str, key: String },
    #[error("{what} {key:?} not found")]
    NotFound { what: &'static str, key: String },
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("database: {0}")]
    Database(String),
    /// The storage cannot take writes right now: the disk is full (`SQLITE_FULL`) or failing
    /// (I/O errors), or the PostgreSQL server cannot be reached, is shutting down, read-only or
    /// overloaded (timeouts). Nothing was half-written (the transaction rolled back); the same
    /// request works again once the storage is back, without a restart. On the wire: `unavailable`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl DirectoryError {
    /// The disk is full or failing (not a bug, not the request's fault): try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DirectoryError::Unavailable(_))
    }
}

/// Storage for everything the signal server must keep across restarts.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    // Accounts.
    async fn add_account(&self, account: NewAccount) -> Result<(), DirectoryError>;
    async fn remove_account(&self, number: &str) -> Result<(), DirectoryError>;
    async fn list_accounts(&self) -> Result<Vec<Account>, DirectoryError>;
    async fn account(&self, number: &str) -> Result<Option<Account>, DirectoryError>;
    /// The argon2 PHC string for `number`, for sign-in.
    async fn password_hash(&self, number: &str) -> Result<Option<String>, DirectoryError>;

    // Switches.
    async fn add_switch(&self, id: &str, secret_hash: &str) -> Result<(), DirectoryError>;
    async fn remove_switch(&self, id: &str) -> Result<(), DirectoryError>;
    async fn list_switches(&self) -> Result<Vec<SwitchRecord>, DirectoryError>;
    async fn switch_secret_hash(&self, id: &str) -> Result<Option<String>, DirectoryError>;
    async fn set_switch_online(&self, id: &str, online: bool, direct_urls: &[String], now: UnixMs) -> Result<(), DirectoryError>;
    /// Mark every switch offline (at start: nothing is connected yet).
    async fn reset_switches_offline(&self) -> Result<(), DirectoryError>;

    /// A counter that changes whenever accounts or switches are added or removed (by this
    /// process or another, e.g. the admin CLI), so the server knows when to reload.
    async fn directory_version(&self) -> Result<i64, DirectoryError>;

    /// Set a new password (argon2id PHC string, and new SIP verifiers for a desk phone) and
    /// revoke every session of the account, in one transaction. Returns how many sessions were
    /// revoked.
    async fn set_password(
        &self,
        number: &str,
        password_hash: &str,
        ha1_md5: Option<&str>,
        ha1_sha256: Option<&str>,
    ) -> Result<u64, DirectoryError>;

    // Sessions (token stored as its SHA-256 hex, never in clear).
    /// A new session (created and last used now); returns its id.
    async fn create_session(&self, token_sha256: &str, number: &str, expires_ms: UnixMs) -> Result<i64, DirectoryError>;
    /// The number owning an unexpired session.
    async fn session(&self, token_sha256: &str, now: UnixMs) -> Result<Option<String>, DirectoryError>;
    /// `resume`: atomically replace an unexpired session's token with a new one (the old
    /// token stops working), extend it to `expires_ms` and mark it used. Returns the session's
    /// id and number; `None` if the old token is unknown, expired or already rotated.
    async fn rotate_session(
        &self,
        old_token_sha256: &str,
        new_token_sha256: &str,
        now: UnixMs,
        expires_ms: UnixMs,
    ) -> Result<Option<(i64, String)>, DirectoryError>;
    /// Unexpired sessions, oldest first; `number` filters.
    async fn list_sessions(&self, number: Option<&str>, now: UnixMs) -> Result<Vec<SessionInfo>, DirectoryError>;
    /// Revoke one session by id; the number it belonged to, `None` if there was none.
    async fn revoke_session(&self, id: i64) -> Result<Option<String>, DirectoryError>;
    /// Revoke every session of `number`; how many there were.
    async fn revoke_sessions(&self, number: &str) -> Result<u64, DirectoryError>;
    async fn delete_expired_sessions(&self, now: UnixMs) -> Result<u64, DirectoryError>;

    // Sign-in throttling ([`crate::ratelimit`]).
    /// Atomically (against other callers, in this process and others): read the counters of
    /// `keys` (missing: zero), let `update` change them, and store them if it returns true.
    async fn update_throttle(
        &self,
        keys: &[String],
        update: &mut (dyn for<'c> FnMut(&'c mut [ThrottleCounter]) -> bool + Send),
    ) -> Result<bool, DirectoryError>;
    /// Delete counters with no failure since `failure_before` and no success since
    /// `success_before`.
    async fn sweep_throttle(&self, failure_before: UnixMs, success_before: UnixMs) -> Result<u64, DirectoryError>;

    // Web Push subscriptions.
    async fn add_push_subscription(&self, sub: PushSubscription) -> Result<(), DirectoryError>;
    async fn push_subscriptions(&self, number: &str) -> Result<Vec<PushSubscription>, DirectoryError>;
    async fn remove_push_subscription(&self, endpoint: &str) -> Result<(), DirectoryError>;

    // Call records.
    async fn insert_call_record(&self, record: &CallRecord) -> Result<(), DirectoryError>;
    /// Several records in one transaction (the server batches them under load).
    async fn insert_call_records(&self, records: &[CallRecord]) -> Result<(), DirectoryError>;
    /// Newest first; `number` filters on caller or callee.
    async fn call_records(&self, number: Option<&str>, limit: u32) -> Result<Vec<CallRecord>, DirectoryError>;

    // Storage health (a full disk).
    /// The last write failed for lack of space (or an I/O error) and none has succeeded since:
    /// new calls are refused with `unavailable` until [`Directory::storage_probe`] or another
    /// write succeeds.
    fn storage_unavailable(&self) -> bool {
        false
    }
    /// A small real write (then undone) to learn whether writes work again.
    async fn storage_probe(&self) -> Result<(), DirectoryError> {
        Ok(())
    }
}
