//! PostgreSQL implementation of [`Directory`] (sqlx, runtime queries), for cluster mode: every
//! signal-server replica and the admin CLI share one database.
//!
//! The schema lives in `signal-server/migrations-postgres/` and is applied on
//! [`PgDirectory::open`] (sqlx holds an advisory lock meanwhile, so replicas starting together
//! are safe). As in SQLite, a `directory_meta.version` counter is bumped by triggers (statement
//! triggers that also `NOTIFY trunkline_directory`), so a change made through any replica or the
//! CLI is seen by all through [`Directory::directory_version`].
//!
//! Concurrency: the rules SQLite got from its single writer are explicit here. Call records are
//! unique by call id (`ON CONFLICT DO NOTHING`: first writer wins across replicas), session
//! rotation is one `UPDATE … RETURNING`, and sign-in counters are locked row by row
//! (`SELECT … FOR UPDATE`, in key order) for the read-modify-write.
//!
//! Errors never carry secrets: only PostgreSQL's primary message is kept (never its `DETAIL`,
//! which can quote row values), and the URL's password is removed wherever the URL is shown.
//! A server that cannot be reached, is shutting down, read-only or too slow
//! (`statement_timeout`) is [`DirectoryError::Unavailable`], which callers report as
//! `unavailable`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, error::ErrorKind};
use trunkline_protocol::{AccountKind, Outcome};

use super::sqlite::{format_trace, parse_trace};
use super::{
    Account, CallRecord, DatabaseOptions, Directory, DirectoryError, NewAccount, PushSubscription, SessionInfo, SwitchRecord,
    ThrottleCounter, UnixMs,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-postgres");

/// The directory stored in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgDirectory {
    pool: PgPool,
    /// The last operation failed with [`DirectoryError::Unavailable`] and no write has
    /// succeeded since (see [`Directory::storage_unavailable`]).
    down: Arc<AtomicBool>,
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    // The userinfo ends at the last '@' before the first '/', '?' or '#'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else { return url.to_string() };
    let userinfo = &authority[..at];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The password of `url`, if any (to scrub it from library messages that might quote it).
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty())
}

/// SQLSTATEs that mean "the database cannot serve this now" rather than "this request is
/// wrong": connection exceptions (08), insufficient resources (53: disk full, too many
/// connections), operator intervention (57: statement timeout, shutdown, starting up), system
/// errors (58: I/O), transaction rollbacks (40: serialization failure, deadlock), a read-only
/// server (25006: a standby after fail-over) and lock timeouts (55P03).
fn is_unavailable_state(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "40")) || code == "25006" || code == "55P03"
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().is_some_and(|c| is_unavailable_state(&c)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The text of a sqlx error, without bound values or PostgreSQL's DETAIL (which can quote
/// the row, e.g. a password hash).
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{} (SQLSTATE {code})", d.message()),
            None => d.message().to_string(),
        },
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".to_string(),
        sqlx::Error::PoolClosed => "the connection pool is closed".to_string(),
        sqlx::Error::RowNotFound => "row not found".to_string(),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Io(io) => format!("I/O error: {io}"),
        other => other.to_string(),
    }
}

/// Map a sqlx error (outside a [`PgDirectory`], e.g. while opening it).
fn db_err(context: &str, e: &sqlx::Error) -> DirectoryError {
    let detail = format!("{context}: {}", describe(e));
    if is_unavailable(e) { DirectoryError::Unavailable(detail) } else { DirectoryError::Database(detail) }
}

fn kind_of(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(d) => Some(d.kind()),
        _ => None,
    }
}

fn corrupt(what: &str) -> DirectoryError {
    DirectoryError::Database(format!("corrupt row: {what}"))
}

fn now_ms() -> UnixMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as UnixMs).unwrap_or(0)
}

/// One full-outage episode is logged once per process (at its start and end), not per request.
static EPISODE_LOGGED: AtomicBool = AtomicBool::new(false);

impl PgDirectory {
    /// Connect to the database at `database_url` (`postgres://` or `postgresql://`, libpq-style
    /// parameters such as `?sslmode=require` accepted) with `options`, and apply the migrations.
    pub async fn open(database_url: &str, options: &DatabaseOptions) -> Result<Self, DirectoryError> {
        let shown = redact_url(database_url);
        if !super::is_postgres_url(database_url) {
            return Err(DirectoryError::Invalid(format!("database_url {shown:?}: not a postgres:// or postgresql:// URL")));
        }
        if options.max_connections == 0 || options.acquire_timeout_ms == 0 || options.statement_timeout_ms == 0 {
            return Err(DirectoryError::Invalid("database.* settings must be > 0".into()));
        }
        let base = PgConnectOptions::from_str(database_url).map_err(|e| {
            let mut text = e.to_string();
            if let Some(pw) = url_password(database_url) {
                text = text.replace(pw, "***");
            }
            DirectoryError::Invalid(format!("database_url {shown:?}: {text}"))
        })?;
        let base = base.application_name("trunkline-signal-server");

        // Migrations on a connection of their own, without the statement timeout: waiting for
        // another replica's migration (sqlx's advisory lock) or a long schema change must not be
        // cut short by a limit meant for requests.
        // (A one-connection pool: `Migrator::run` on a bare connection makes a future that is
        // not `Send` for every lifetime, which a spawned task needs.)
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
            // Not the NOTICEs of `CREATE TABLE IF NOT EXISTS` at every start in the log.
            .connect_with(base.clone().options([("client_min_messages", "warning")]))
            .await
            .map_err(|e| db_err(&format!("connecting to {shown}"), &e))?;
        let migrated = MIGRATOR.run(&migrating).await;
        migrating.close().await;
        migrated.map_err(|e| DirectoryError::Database(format!("applying migrations to {shown}: {}", migrate_text(&e))))?;

        let statement_timeout = format!("{}ms", options.statement_timeout_ms);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
            .connect_with(base.options([("statement_timeout", statement_timeout.as_str())]))
            .await
            .map_err(|e| db_err(&format!("connecting to {shown}"), &e))?;
        Ok(PgDirectory { pool, down: Arc::new(AtomicBool::new(false)) })
    }

    /// The connection pool (cluster membership and attempts use the same database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close the pool (waits for connections to be returned). Optional: dropping works too.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Map a sqlx error, noting an outage (see [`Directory::storage_unavailable`]).
    fn err(&self, context: &str, e: sqlx::Error) -> DirectoryError {
        let mapped = db_err(context, &e);
        if let DirectoryError::Unavailable(detail) = &mapped {
            metrics::counter!("trunkline_storage_unavailable_errors_total").increment(1);
            if !self.down.swap(true, Ordering::AcqRel) {
                metrics::gauge!("trunkline_storage_unavailable").set(1.0);
                if !EPISODE_LOGGED.swap(true, Ordering::AcqRel) {
                    metrics::counter!("trunkline_storage_unavailable_episodes_total").increment(1);
                    tracing::error!(
                        error = %detail,
                        "the database cannot take requests (unreachable, shutting down, read-only or too slow): sign-ins and new calls get `unavailable` until it can"
                    );
                }
            }
        }
        mapped
    }

    /// A write went through: an outage (if any) is over.
    fn ok(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            metrics::gauge!("trunkline_storage_unavailable").set(0.0);
            if EPISODE_LOGGED.swap(false, Ordering::AcqRel) {
                tracing::warn!("the database takes requests again: service resumed");
            }
        }
    }

    /// The accounts whose home switch is `id`, sorted.
    async fn accounts_of_switch(&self, id: &str) -> Result<Vec<String>, DirectoryError> {
        sqlx::query_scalar("SELECT number FROM accounts WHERE home_switch = $1 ORDER BY number")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("listing accounts of switch", e))
    }
}

fn migrate_text(e: &sqlx::migrate::MigrateError) -> String {
    match e {
        sqlx::migrate::MigrateError::Execute(inner) => describe(inner),
        other => other.to_string(),
    }
}

fn account_from_row(row: &PgRow) -> Result<Account, DirectoryError> {
    let get = |e| db_err("reading account", &e);
    let kind: String = row.try_get("kind").map_err(get)?;
    Ok(Account {
        number: row.try_get("number").map_err(get)?,
        display_name: row.try_get("display_name").map_err(get)?,
        kind: AccountKind::from_str(&kind).map_err(|_| corrupt("accounts.kind"))?,
        home_switch: row.try_get("home_switch").map_err(get)?,
        ha1_md5: row.try_get("ha1_md5").map_err(get)?,
        ha1_sha256: row.try_get("ha1_sha256").map_err(get)?,
    })
}

fn switch_from_row(row: &PgRow) -> Result<SwitchRecord, DirectoryError> {
    let get = |e| db_err("reading switch", &e);
    let urls: String = row.try_get("direct_urls").map_err(get)?;
    Ok(SwitchRecord {
        id: row.try_get("id").map_err(get)?,
        direct_urls: serde_json::from_str(&urls).map_err(|_| corrupt("switches.direct_urls"))?,
        online: row.try_get("online").map_err(get)?,
        last_seen_ms: row.try_get("last_seen_ms").map_err(get)?,
    })
}

fn call_from_row(row: &PgRow) -> Result<CallRecord, DirectoryError> {
    let get = |e| db_err("reading call record", &e);
    let outcome: String = row.try_get("outcome").map_err(get)?;
    let trace: String = row.try_get("trace").map_err(get)?;
    let duration: Option<i64> = row.try_get("duration_ms").map_err(get)?;
    Ok(CallRecord {
        call_id: row.try_get("call_id").map_err(get)?,
        caller: row.try_get("caller").map_err(get)?,
        callee: row.try_get("callee").map_err(get)?,
        switch_id: row.try_get("switch_id").map_err(get)?,
        started_ms: row.try_get("started_ms").map_err(get)?,
        ended_ms: row.try_get("ended_ms").map_err(get)?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt("call_records.outcome"))?,
        duration_ms: duration.map(|d| u64::try_from(d).map_err(|_| corrupt("call_records.duration_ms"))).transpose()?,
        trace: parse_trace(&trace).ok_or_else(|| corrupt("call_records.trace"))?,
    })
}

const ACCOUNT_COLUMNS: &str = "number, display_name, kind, home_switch, ha1_md5, ha1_sha256";

#[async_trait::async_trait]
impl Directory for PgDirectory {
    async fn add_account(&self, a: NewAccount) -> Result<(), DirectoryError> {
        if a.number.is_empty() {
            return Err(DirectoryError::Invalid("account number must not be empty".into()));
        }
        let res = sqlx::query(
            "INSERT INTO accounts (number, display_name, kind, home_switch, password_hash, ha1_md5, ha1_sha256, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.number)
        .bind(&a.display_name)
        .bind(a.kind.as_str())
        .bind(&a.home_switch)
        .bind(&a.password_hash)
        .bind(&a.ha1_md5)
        .bind(&a.ha1_sha256)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match kind_of(&e) {
                Some(ErrorKind::UniqueViolation) => Err(DirectoryError::AlreadyExists { what: "account", key: a.number }),
                // The only foreign key of `accounts` is `home_switch`.
                Some(ErrorKind::ForeignKeyViolation) => {
                    Err(DirectoryError::NotFound { what: "switch", key: a.home_switch.unwrap_or_default() })
                }
                _ => Err(self.err("adding account", e)),
            },
        }
    }

    async fn remove_account(&self, number: &str) -> Result<(), DirectoryError> {
        let done = sqlx::query("DELETE FROM accounts WHERE number = $1")
            .bind(number)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("removing account", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "account", key: number.to_string() });
        }
        Ok(())
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, DirectoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY number")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("listing accounts", e))?;
        rows.iter().map(account_from_row).collect()
    }

    async fn account(&self, number: &str) -> Result<Option<Account>, DirectoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE number = $1")))
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading account", e))?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn password_hash(&self, number: &str) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT password_hash FROM accounts WHERE number = $1")
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading password hash", e))
    }

    async fn add_switch(&self, id: &str, secret_hash: &str) -> Result<(), DirectoryError> {
        if id.is_empty() {
            return Err(DirectoryError::Invalid("switch id must not be empty".into()));
        }
        let res = sqlx::query("INSERT INTO switches (id, secret_hash) VALUES ($1, $2)")
            .bind(id)
            .bind(secret_hash)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if kind_of(&e) == Some(ErrorKind::UniqueViolation) => {
                Err(DirectoryError::AlreadyExists { what: "switch", key: id.to_string() })
            }
            Err(e) => Err(self.err("adding switch", e)),
        }
    }

    async fn remove_switch(&self, id: &str) -> Result<(), DirectoryError> {
        let res = sqlx::query("DELETE FROM switches WHERE id = $1").bind(id).execute(&self.pool).await;
        match res {
            Ok(done) if done.rows_affected() == 0 => Err(DirectoryError::NotFound { what: "switch", key: id.to_string() }),
            Ok(_) => Ok(()),
            Err(e) if kind_of(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                let numbers = self.accounts_of_switch(id).await?;
                let list = if numbers.is_empty() { "some accounts".to_string() } else { numbers.join(", ") };
                Err(DirectoryError::Invalid(format!("switch {id:?} is the home switch of {list}; remove those accounts first")))
            }
            Err(e) => Err(self.err("removing switch", e)),
        }
    }

    async fn list_switches(&self) -> Result<Vec<SwitchRecord>, DirectoryError> {
        let rows = sqlx::query("SELECT id, direct_urls, online, last_seen_ms FROM switches ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("listing switches", e))?;
        rows.iter().map(switch_from_row).collect()
    }

    async fn switch_secret_hash(&self, id: &str) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT secret_hash FROM switches WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading switch secret hash", e))
    }

    async fn set_switch_online(&self, id: &str, online: bool, direct_urls: &[String], now: UnixMs) -> Result<(), DirectoryError> {
        let urls = serde_json::to_string(direct_urls).expect("a list of strings serializes");
        let done = sqlx::query("UPDATE switches SET online = $1, direct_urls = $2, last_seen_ms = $3 WHERE id = $4")
            .bind(online)
            .bind(urls)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("updating switch presence", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "switch", key: id.to_string() });
        }
        Ok(())
    }

    async fn reset_switches_offline(&self) -> Result<(), DirectoryError> {
        sqlx::query("UPDATE switches SET online = FALSE WHERE online")
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("resetting switch presence", e))?;
        Ok(())
    }

    async fn directory_version(&self) -> Result<i64, DirectoryError> {
        sqlx::query_scalar("SELECT version FROM directory_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("reading directory version", e))
    }

    async fn set_password(
        &self,
        number: &str,
        password_hash: &str,
        ha1_md5: Option<&str>,
        ha1_sha256: Option<&str>,
    ) -> Result<u64, DirectoryError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err("setting password", e))?;
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = $1, ha1_md5 = COALESCE($2, ha1_md5), ha1_sha256 = COALESCE($3, ha1_sha256) \
             WHERE number = $4",
        )
        .bind(password_hash)
        .bind(ha1_md5)
        .bind(ha1_sha256)
        .bind(number)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err("setting password", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "account", key: number.to_string() });
        }
        let revoked = sqlx::query("DELETE FROM sessions WHERE number = $1")
            .bind(number)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err("revoking sessions", e))?
            .rows_affected();
        tx.commit().await.map_err(|e| self.err("setting password", e))?;
        Ok(revoked)
    }

    async fn create_session(&self, token_sha256: &str, number: &str, expires_ms: UnixMs) -> Result<i64, DirectoryError> {
        let now = now_ms();
        let res = sqlx::query_scalar(
            "INSERT INTO sessions (token_sha256, number, created_ms, expires_ms, last_used_ms) VALUES ($1, $2, $3, $4, $3) \
             RETURNING id",
        )
        .bind(token_sha256)
        .bind(number)
        .bind(now)
        .bind(expires_ms)
        .fetch_one(&self.pool)
        .await;
        match res {
            Ok(id) => {
                self.ok();
                Ok(id)
            }
            Err(e) => match kind_of(&e) {
                Some(ErrorKind::ForeignKeyViolation) => {
                    Err(DirectoryError::NotFound { what: "account", key: number.to_string() })
                }
                // Never echo the token (even hashed) in full.
                Some(ErrorKind::UniqueViolation) => Err(DirectoryError::AlreadyExists {
                    what: "session",
                    key: format!("{}…", token_sha256.chars().take(8).collect::<String>()),
                }),
                _ => Err(self.err("creating session", e)),
            },
        }
    }

    async fn session(&self, token_sha256: &str, now: UnixMs) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT number FROM sessions WHERE token_sha256 = $1 AND expires_ms > $2")
            .bind(token_sha256)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading session", e))
    }

    async fn rotate_session(
        &self,
        old_token_sha256: &str,
        new_token_sha256: &str,
        now: UnixMs,
        expires_ms: UnixMs,
    ) -> Result<Option<(i64, String)>, DirectoryError> {
        // One statement: of two resumes racing with the same token (on any replicas), the
        // second waits for the first's row lock, then finds the old token gone.
        sqlx::query_as(
            "UPDATE sessions SET token_sha256 = $1, expires_ms = $2, last_used_ms = $3 \
             WHERE token_sha256 = $4 AND expires_ms > $3 RETURNING id, number",
        )
        .bind(new_token_sha256)
        .bind(expires_ms)
        .bind(now)
        .bind(old_token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err("rotating session", e))
    }

    async fn list_sessions(&self, number: Option<&str>, now: UnixMs) -> Result<Vec<SessionInfo>, DirectoryError> {
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, number, created_ms, expires_ms, last_used_ms FROM sessions \
             WHERE expires_ms > $1 AND ($2::text IS NULL OR number = $2) ORDER BY created_ms, id",
        )
        .bind(now)
        .bind(number)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err("listing sessions", e))?;
        Ok(rows
            .into_iter()
            .map(|(id, number, created_ms, expires_ms, last_used_ms)| SessionInfo {
                id,
                number,
                created_ms,
                expires_ms,
                last_used_ms,
            })
            .collect())
    }

    async fn revoke_session(&self, id: i64) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("DELETE FROM sessions WHERE id = $1 RETURNING number")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("revoking session", e))
    }

    async fn revoke_sessions(&self, number: &str) -> Result<u64, DirectoryError> {
        let done = sqlx::query("DELETE FROM sessions WHERE number = $1")
            .bind(number)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("revoking sessions", e))?;
        Ok(done.rows_affected())
    }

    async fn delete_expired_sessions(&self, now: UnixMs) -> Result<u64, DirectoryError> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_ms <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("deleting expired sessions", e))?;
        Ok(done.rows_affected())
    }

    async fn update_throttle(
        &self,
        keys: &[String],
        update: &mut (dyn for<'c> FnMut(&'c mut [ThrottleCounter]) -> bool + Send),
    ) -> Result<bool, DirectoryError> {
        let err = |e| self.err("updating sign-in counters", e);
        let mut distinct: Vec<&str> = keys.iter().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Missing keys get a zero row first (what a missing row reads as; rolled back if nothing
        // is stored), so every key has a row to lock. Rows are created and locked in one order
        // (the keys sorted), so replicas updating overlapping keys wait for each other rather
        // than deadlock, and none can read between another's read and write.
        sqlx::query(
            "INSERT INTO auth_throttle (key, failures, last_failure_ms) \
             SELECT k, 0, 0 FROM unnest($1::text[]) AS k ORDER BY k ON CONFLICT (key) DO NOTHING",
        )
        .bind(&distinct)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let rows: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT key, failures, last_failure_ms, last_success_ms FROM auth_throttle \
             WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE",
        )
        .bind(&distinct)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let mut counters: Vec<ThrottleCounter> = keys
            .iter()
            .map(|k| {
                rows.iter()
                    .find(|r| &r.0 == k)
                    .map(|(_, failures, last_failure_ms, last_success_ms)| ThrottleCounter {
                        failures: u32::try_from(*failures).unwrap_or(u32::MAX),
                        last_failure_ms: *last_failure_ms,
                        last_success_ms: *last_success_ms,
                    })
                    .unwrap_or_default()
            })
            .collect();
        if !update(&mut counters) {
            tx.rollback().await.map_err(err)?;
            return Ok(false);
        }
        // One row per key; for a key given twice the later counter wins (as with SQLite's
        // writes in order).
        let (mut k, mut f, mut lf, mut ls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for key in &distinct {
            let i = keys.iter().rposition(|x| x == key).expect("key from keys");
            let c = &counters[i];
            k.push(*key);
            f.push(i64::from(c.failures));
            lf.push(c.last_failure_ms);
            ls.push(c.last_success_ms);
        }
        sqlx::query(
            "UPDATE auth_throttle AS t SET failures = v.failures, last_failure_ms = v.last_failure_ms, \
             last_success_ms = v.last_success_ms \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(key, failures, last_failure_ms, last_success_ms) \
             WHERE t.key = v.key",
        )
        .bind(&k)
        .bind(&f)
        .bind(&lf)
        .bind(&ls)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.ok();
        Ok(true)
    }

    async fn sweep_throttle(&self, failure_before: UnixMs, success_before: UnixMs) -> Result<u64, DirectoryError> {
        let done = sqlx::query(
            "DELETE FROM auth_throttle WHERE last_failure_ms < $1 AND (last_success_ms IS NULL OR last_success_ms < $2)",
        )
        .bind(failure_before)
        .bind(success_before)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("sweeping sign-in counters", e))?;
        Ok(done.rows_affected())
    }

    /// Adding an endpoint that is already stored replaces it (a browser re-subscribing, possibly
    /// for another account on the same device).
    async fn add_push_subscription(&self, sub: PushSubscription) -> Result<(), DirectoryError> {
        let res = sqlx::query(
            "INSERT INTO push_subscriptions (endpoint, number, p256dh, auth) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (endpoint) DO UPDATE SET number = excluded.number, p256dh = excluded.p256dh, auth = excluded.auth",
        )
        .bind(&sub.endpoint)
        .bind(&sub.number)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if kind_of(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(DirectoryError::NotFound { what: "account", key: sub.number })
            }
            Err(e) => Err(self.err("adding push subscription", e)),
        }
    }

    async fn push_subscriptions(&self, number: &str) -> Result<Vec<PushSubscription>, DirectoryError> {
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT endpoint, number, p256dh, auth FROM push_subscriptions WHERE number = $1 ORDER BY endpoint")
                .bind(number)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err("listing push subscriptions", e))?;
        Ok(rows.into_iter().map(|(endpoint, number, p256dh, auth)| PushSubscription { number, endpoint, p256dh, auth }).collect())
    }

    /// Idempotent: removing an endpoint that is not stored is not an error (two pushes may both
    /// learn that the endpoint is gone).
    async fn remove_push_subscription(&self, endpoint: &str) -> Result<(), DirectoryError> {
        sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = $1")
            .bind(endpoint)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("removing push subscription", e))?;
        Ok(())
    }

    async fn insert_call_record(&self, record: &CallRecord) -> Result<(), DirectoryError> {
        self.insert_call_records(std::slice::from_ref(record)).await
    }

    async fn insert_call_records(&self, records: &[CallRecord]) -> Result<(), DirectoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let duration = r
                .duration_ms
                .map(|d| {
                    i64::try_from(d).map_err(|_| DirectoryError::Invalid(format!("call {}: duration_ms too large", r.call_id)))
                })
                .transpose()?;
            rows.push((r, duration, format_trace(&r.trace)));
        }
        let err = |e| self.err("writing call records", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        // 200 rows × 9 parameters stays far below PostgreSQL's 65,535 bind parameters.
        for chunk in rows.chunks(200) {
            // First writer wins, across replicas too (call_id is unique): a repeated end report,
            // or two replicas finalizing one attempt, writes one row.
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO call_records (call_id, caller, callee, switch_id, started_ms, ended_ms, outcome, duration_ms, trace) ",
            );
            q.push_values(chunk, |mut b, (r, duration, trace)| {
                b.push_bind(&r.call_id)
                    .push_bind(&r.caller)
                    .push_bind(&r.callee)
                    .push_bind(&r.switch_id)
                    .push_bind(r.started_ms)
                    .push_bind(r.ended_ms)
                    .push_bind(r.outcome.as_str())
                    .push_bind(*duration)
                    .push_bind(trace.as_str());
            });
            q.push(" ON CONFLICT (call_id) DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.ok();
        Ok(())
    }

    async fn call_records(&self, number: Option<&str>, limit: u32) -> Result<Vec<CallRecord>, DirectoryError> {
        const COLUMNS: &str = "call_id, caller, callee, switch_id, started_ms, ended_ms, outcome, duration_ms, trace";
        // Two statements rather than `$1 IS NULL OR …`: a prepared statement's generic plan
        // could not use the caller/callee indexes for that.
        let rows = match number {
            Some(n) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM call_records WHERE caller = $1 OR callee = $1 \
                     ORDER BY started_ms DESC, id DESC LIMIT $2"
                )))
                .bind(n)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM call_records ORDER BY started_ms DESC, id DESC LIMIT $1"
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(|e| self.err("listing call records", e))?;
        rows.iter().map(call_from_row).collect()
    }

    fn storage_unavailable(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Write a counter row and delete it in one committed transaction: fails on an unreachable
    /// or read-only server (a standby after fail-over), leaves nothing behind.
    async fn storage_probe(&self) -> Result<(), DirectoryError> {
        let err = |e| self.err("probing storage", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query(
            "INSERT INTO auth_throttle (key, failures, last_failure_ms) VALUES ('probe:storage', 0, 0) \
             ON CONFLICT (key) DO UPDATE SET failures = 0",
        )
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM auth_throttle WHERE key = 'probe:storage'").execute(&mut *tx).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.ok();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::conformance::{browser, record, test_options, with_pg_database};

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/db?sslmode=require"), "postgres://u:***@h:5432/db?sslmode=require");
        assert_eq!(redact_url("postgresql://u:p@ss:w@h/db"), "postgresql://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db?user=x"), "postgres://h/db?user=x");
        assert_eq!(url_password("postgres://u:pw@h/db"), Some("pw"));
        assert_eq!(url_password("postgres://u@h/db"), None);
    }

    #[test]
    fn connection_loss_timeouts_and_read_only_servers_are_unavailable() {
        for code in ["08006", "08001", "57014", "57P01", "57P03", "53100", "53300", "40001", "40P01", "25006", "55P03", "58030"] {
            assert!(is_unavailable_state(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "22003", "XX000"] {
            assert!(!is_unavailable_state(code), "{code}");
        }
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }

    #[tokio::test]
    async fn open_against_a_closed_port_is_unavailable_and_hides_the_password() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("postgres://trunkline:S3CRET-PW@127.0.0.1:{port}/trunkline");
        let e = PgDirectory::open(&url, &test_options()).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(!e.to_string().contains("S3CRET-PW"), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "says where: {e}");
        // Unusable URLs and settings are invalid, not unavailable.
        let e = PgDirectory::open("postgres://u:S3CRET-PW@h:notaport/db", &test_options()).await.unwrap_err();
        assert!(matches!(e, DirectoryError::Invalid(_)) && !e.to_string().contains("S3CRET-PW"), "{e}");
        let zero = DatabaseOptions { statement_timeout_ms: 0, ..test_options() };
        assert!(matches!(PgDirectory::open(&url, &zero).await, Err(DirectoryError::Invalid(_))));
        assert!(matches!(PgDirectory::open("sqlite::memory:", &test_options()).await, Err(DirectoryError::Invalid(_))));
    }

    #[tokio::test]
    async fn directory_open_picks_postgres_by_url_scheme() {
        with_pg_database(|url| async move {
            let d = crate::directory::open(&url, &test_options()).await.unwrap();
            d.add_account(browser("100")).await.unwrap();
            let same = crate::directory::open(&url.replacen("postgres://", "postgresql://", 1), &test_options()).await.unwrap();
            assert!(same.account("100").await.unwrap().is_some());
            // It is the PostgreSQL database that holds it.
            let pg = PgDirectory::open(&url, &test_options()).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(pg.pool()).await.unwrap();
            assert_eq!(n, 1);
        })
        .await;
    }

    #[tokio::test]
    async fn pool_settings_apply_to_every_connection() {
        with_pg_database(|url| async move {
            let opts = DatabaseOptions { max_connections: 3, acquire_timeout_ms: 2_000, statement_timeout_ms: 1_234 };
            let d = PgDirectory::open(&url, &opts).await.unwrap();
            assert_eq!(d.pool().options().get_max_connections(), 3);
            assert_eq!(d.pool().options().get_acquire_timeout(), Duration::from_millis(2_000));
            // Three connections at once: each has the limit.
            let mut held = Vec::new();
            for _ in 0..3 {
                let mut c = d.pool().acquire().await.unwrap();
                let t: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut *c).await.unwrap();
                assert_eq!(t, "1234ms");
                held.push(c);
            }
            // Every connection taken: the next request waits acquire_timeout, then is `unavailable`.
            let e = d.directory_version().await.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
            assert!(d.storage_unavailable(), "an outage is noted");
            drop(held);
            // A statement over the limit is cancelled by the server, and reported as `unavailable`.
            let e = sqlx::query("SELECT pg_sleep(30)").execute(d.pool()).await.unwrap_err();
            assert!(matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014")), "{e:?}");
            let mapped = d.err("sleeping", e);
            assert!(mapped.is_unavailable(), "{mapped:?}");
            d.storage_probe().await.unwrap();
            assert!(!d.storage_unavailable(), "and cleared by a write that works");
        })
        .await;
    }

    #[tokio::test]
    async fn two_replicas_see_each_others_writes_and_version_bumps() {
        with_pg_database(|url| async move {
            let r1 = PgDirectory::open(&url, &test_options()).await.unwrap();
            let r2 = PgDirectory::open(&url, &test_options()).await.unwrap();
            // R1 hears R2's changes at once (NOTIFY), not only by polling the version.
            let mut listener = sqlx::postgres::PgListener::connect_with(r1.pool()).await.unwrap();
            listener.listen("trunkline_directory").await.unwrap();
            let before = r1.directory_version().await.unwrap();
            r2.add_switch("sw1", "h").await.unwrap();
            r2.add_account(browser("555")).await.unwrap();
            let after = r1.directory_version().await.unwrap();
            assert!(after > before, "{before} → {after}");
            assert!(r1.account("555").await.unwrap().is_some());
            assert_eq!(r1.list_switches().await.unwrap().len(), 1);
            let note = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await.expect("a notification").unwrap();
            assert_eq!(note.channel(), "trunkline_directory");
            // A session made on one replica resumes on the other, once.
            let far = now_ms() + 60_000;
            let id = r1.create_session("tok-1", "555", far).await.unwrap();
            assert_eq!(r2.rotate_session("tok-1", "tok-2", now_ms(), far).await.unwrap(), Some((id, "555".into())));
            assert_eq!(r1.rotate_session("tok-1", "tok-3", now_ms(), far).await.unwrap(), None);
            assert_eq!(r1.session("tok-2", now_ms()).await.unwrap().as_deref(), Some("555"));
            // Presence written by one replica is read by the other, and does not bump the version.
            r1.set_switch_online("sw1", true, &["ws://a".into()], 7).await.unwrap();
            assert!(r2.list_switches().await.unwrap()[0].online);
            assert_eq!(r2.directory_version().await.unwrap(), after);
        })
        .await;
    }

    #[tokio::test]
    async fn throttle_updates_from_two_replicas_lose_nothing() {
        with_pg_database(|url| async move {
            let r1 = PgDirectory::open(&url, &test_options()).await.unwrap();
            let r2 = PgDirectory::open(&url, &test_options()).await.unwrap();
            const PER_TASK: u32 = 25;
            let mut tasks = Vec::new();
            for (i, d) in [r1.clone(), r2.clone(), r1.clone(), r2.clone()].into_iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    // Overlapping keys given in different orders: locks must not deadlock.
                    let keys = if i % 2 == 0 {
                        vec!["acct:1".to_string(), "addr:x".to_string(), format!("src:1|{i}")]
                    } else {
                        vec![format!("src:1|{i}"), "addr:x".to_string(), "acct:1".to_string()]
                    };
                    for _ in 0..PER_TASK {
                        let stored = d
                            .update_throttle(&keys, &mut |c: &mut [ThrottleCounter]| {
                                for x in c.iter_mut() {
                                    x.failures += 1;
                                }
                                true
                            })
                            .await
                            .unwrap();
                        assert!(stored);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT key, failures FROM auth_throttle ORDER BY key").fetch_all(r1.pool()).await.unwrap();
            let total = i64::from(4 * PER_TASK);
            assert!(rows.contains(&("acct:1".into(), total)), "{rows:?}");
            assert!(rows.contains(&("addr:x".into(), total)), "{rows:?}");
            for i in 0..4 {
                assert!(rows.contains(&(format!("src:1|{i}"), i64::from(PER_TASK))), "{rows:?}");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn one_call_id_written_by_two_replicas_keeps_one_row() {
        with_pg_database(|url| async move {
            let r1 = PgDirectory::open(&url, &test_options()).await.unwrap();
            let r2 = PgDirectory::open(&url, &test_options()).await.unwrap();
            const CALLS: usize = 40;
            let mut tasks = Vec::new();
            for (who, d) in [(1, r1.clone()), (2, r2.clone())] {
                tasks.push(tokio::spawn(async move {
                    for i in 0..CALLS {
                        let mut r = record(&format!("call-{i}"), "100", "200", 1_000 + i as i64);
                        r.duration_ms = Some(who);
                        d.insert_call_record(&r).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let all = r1.call_records(None, 1_000).await.unwrap();
            assert_eq!(all.len(), CALLS, "exactly one row per call id");
            assert!(all.iter().all(|r| r.duration_ms == Some(1) || r.duration_ms == Some(2)));
            let mut ids: Vec<_> = all.iter().map(|r| r.call_id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), CALLS);
        })
        .await;
    }

    #[tokio::test]
    async fn three_replicas_migrating_a_fresh_database_at_once_all_start() {
        with_pg_database(|url| async move {
            let opts = test_options();
            let (a, b, c) =
                tokio::join!(PgDirectory::open(&url, &opts), PgDirectory::open(&url, &opts), PgDirectory::open(&url, &opts));
            let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
            let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(a.pool())
                .await
                .unwrap();
            assert_eq!(applied, MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>());
            assert!(applied.len() >= 2);
            // The cluster's tables are there.
            for table in ["cluster_nodes", "call_attempts"] {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(b.pool())
                    .await
                    .unwrap();
                assert_eq!(n, 0);
            }
            c.add_account(browser("1")).await.unwrap();
            assert!(a.account("1").await.unwrap().is_some());
        })
        .await;
    }
}
