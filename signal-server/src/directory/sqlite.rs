//! SQLite implementation of [`Directory`] (sqlx, runtime queries).
//!
//! One database file, WAL journal, `synchronous = NORMAL`, 5 s busy timeout, foreign keys on,
//! temporary files (statement journals) in memory.
//! The schema lives in `signal-server/migrations/` and is applied on [`SqliteDirectory::open`].
//! A `directory_meta.version` counter is bumped by SQL triggers, so changes made by another
//! process (the admin CLI) are visible to a running server through
//! [`Directory::directory_version`].
//!
//! Errors never carry secrets: sqlx/SQLite messages name tables and columns, never bound values,
//! and session tokens are only ever handled as their SHA-256.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments, Row, error::ErrorKind};
use trunkline_protocol::{AccountKind, Outcome, Step};

use super::{
    Account, CallRecord, Directory, DirectoryError, NewAccount, PushSubscription, SessionInfo, SwitchRecord, ThrottleCounter,
    UnixMs,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every patent step, for parsing stored traces.
const ALL_STEPS: [Step; 17] = Step::ALL;

/// The multi-row INSERT for `rows` call records (a power of two ≤ 128), its text built once:
/// building it per batch cost as much as binding the values. First writer wins: a call id
/// already recorded (unique index, migration 0004) is skipped, so a repeated end report (a
/// switch re-sending what it queued, to a server that restarted) writes nothing; only that
/// conflict is ignored, any other constraint still fails the batch.
fn insert_call_records_sql(rows: usize) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 8] = [const { std::sync::OnceLock::new() }; 8];
    debug_assert!(rows.is_power_of_two() && rows <= 128);
    SQL[rows.ilog2() as usize].get_or_init(|| {
        let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
        format!(
            "INSERT INTO call_records (call_id, caller, callee, switch_id, started_ms, ended_ms, outcome, duration_ms, trace) \
             VALUES {} ON CONFLICT (call_id) DO NOTHING",
            vec![row; rows].join(", ")
        )
    })
}

/// The directory stored in one SQLite database.
#[derive(Clone, Debug)]
pub struct SqliteDirectory {
    pool: SqlitePool,
    /// One connection of its own for the call records (a file database; the same pool in
    /// memory). In WAL mode a connection drops its whole page cache when another one wrote
    /// since its last transaction, and the pool hands out its idle connections in turn: record
    /// batches on the shared pool found a cold cache each time and read the B-tree pages of
    /// the table and its four indexes again (`pread`, ≈ 0.4 per decision while steering
    /// 5,000 calls/s). On a connection of their own they find them where the last batch left
    /// them, as long as nothing else wrote in between.
    records: SqlitePool,
    /// Serialises this process's throttle updates (SQLite's write lock does it across
    /// processes; this only spares the busy-wait under a flood).
    throttle_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// SQLite result codes (the low byte of an extended code) that mean "the storage cannot take
/// writes": `SQLITE_IOERR` (10, and its extended codes), `SQLITE_FULL` (13).
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;

/// One full-disk episode is logged once (at its start and its end), not per request; every
/// refused write is counted (`trunkline_storage_unavailable_errors_total`) and the state is a
/// gauge (`trunkline_storage_unavailable`). Per process: one server has one database.
static STORAGE_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn storage_failed(detail: &str) {
    metrics::counter!("trunkline_storage_unavailable_errors_total").increment(1);
    if !STORAGE_DOWN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        metrics::counter!("trunkline_storage_unavailable_episodes_total").increment(1);
        metrics::gauge!("trunkline_storage_unavailable").set(1.0);
        tracing::error!(
            error = %detail,
            "the database cannot take writes (disk full or I/O error): sign-ins and new calls get `unavailable` until it can"
        );
    }
}

/// A write went through: a full-disk episode (if any) is over.
fn storage_ok() {
    if STORAGE_DOWN.swap(false, std::sync::atomic::Ordering::AcqRel) {
        metrics::gauge!("trunkline_storage_unavailable").set(0.0);
        tracing::warn!("the database takes writes again: service resumed");
    }
}

/// Is this sqlx error the storage failing (full disk, I/O) rather than the request or a bug?
fn is_storage_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            matches!(code & 0xff, SQLITE_IOERR | SQLITE_FULL)
        }
        sqlx::Error::Io(_) => true,
        _ => false,
    }
}

/// A sqlx error as a [`DirectoryError::Database`] (or [`DirectoryError::Unavailable`] for a
/// full disk / I/O error). sqlx errors carry no bound values, so no secret can leak through
/// here; the SQL text is not included either.
fn db_err(context: &str, e: sqlx::Error) -> DirectoryError {
    let detail = match &e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".to_string(),
        sqlx::Error::RowNotFound => "row not found".to_string(),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Io(io) => format!("I/O error: {io}"),
        other => other.to_string(),
    };
    if is_storage_failure(&e) {
        let detail = format!("{context}: {detail}");
        storage_failed(&detail);
        return DirectoryError::Unavailable(detail);
    }
    DirectoryError::Database(format!("{context}: {detail}"))
}

fn kind_of(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(d) => Some(d.kind()),
        _ => None,
    }
}

fn migrate_err(e: sqlx::migrate::MigrateError) -> DirectoryError {
    DirectoryError::Database(format!("applying migrations: {e}"))
}

fn corrupt(what: &str) -> DirectoryError {
    DirectoryError::Database(format!("corrupt row: {what}"))
}

fn parse_kind(s: &str) -> Result<AccountKind, DirectoryError> {
    AccountKind::from_str(s).map_err(|_| corrupt("accounts.kind"))
}

/// `[A, C1, B3]` → `"A,C1,B3"`.
pub fn format_trace(trace: &[Step]) -> String {
    trace.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// `"A,C1,B3"` → `[A, C1, B3]`; `""` → `[]`. `None` for an unknown step name.
pub fn parse_trace(text: &str) -> Option<Vec<Step>> {
    if text.trim().is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|name| ALL_STEPS.into_iter().find(|s| s.as_str() == name.trim())).collect()
}

fn account_from_row(row: &SqliteRow) -> Result<Account, DirectoryError> {
    let get = |e| db_err("reading account", e);
    let kind: String = row.try_get("kind").map_err(get)?;
    Ok(Account {
        number: row.try_get("number").map_err(get)?,
        display_name: row.try_get("display_name").map_err(get)?,
        kind: parse_kind(&kind)?,
        home_switch: row.try_get("home_switch").map_err(get)?,
        ha1_md5: row.try_get("ha1_md5").map_err(get)?,
        ha1_sha256: row.try_get("ha1_sha256").map_err(get)?,
    })
}

fn switch_from_row(row: &SqliteRow) -> Result<SwitchRecord, DirectoryError> {
    let get = |e| db_err("reading switch", e);
    let urls: String = row.try_get("direct_urls").map_err(get)?;
    let online: i64 = row.try_get("online").map_err(get)?;
    Ok(SwitchRecord {
        id: row.try_get("id").map_err(get)?,
        direct_urls: serde_json::from_str(&urls).map_err(|_| corrupt("switches.direct_urls"))?,
        online: online != 0,
        last_seen_ms: row.try_get("last_seen_ms").map_err(get)?,
    })
}

fn call_from_row(row: &SqliteRow) -> Result<CallRecord, DirectoryError> {
    let get = |e| db_err("reading call record", e);
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

fn now_ms() -> UnixMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as UnixMs).unwrap_or(0)
}

/// Is this URL an in-memory database (`sqlite::memory:`, `sqlite://:memory:`, `?mode=memory`)?
fn is_memory_url(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    db == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

/// The file of a `sqlite:` URL (`None` for in-memory databases).
fn file_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (db, _) = rest.split_once('?').unwrap_or((rest, ""));
    (!db.is_empty() && db != ":memory:").then(|| std::path::PathBuf::from(db))
}

/// The database holds password hashes, desk phones' HA1s and session hashes: create it 0600
/// (SQLite would make it 0644), and tighten an existing file that is looser (logged).
fn prepare_private_file(path: &std::path::Path) -> Result<(), DirectoryError> {
    if path.exists() {
        return crate::credentials::restrict_to_owner(path, "database")
            .map_err(|e| DirectoryError::Database(format!("{}: {e}", path.display())));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A missing folder: let SQLite report it as before.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DirectoryError::Database(format!("creating {}: {e}", path.display()))),
    }
}

impl SqliteDirectory {
    /// Open (creating if missing) the database at `database_url` and apply the migrations.
    ///
    /// `sqlite://path/file.db` (relative to the working directory), `sqlite:///abs/path.db`, or
    /// `sqlite::memory:` (one private in-memory database, lost when this value is dropped).
    pub async fn open(database_url: &str) -> Result<Self, DirectoryError> {
        if !database_url.starts_with("sqlite:") {
            return Err(DirectoryError::Invalid(format!("database_url {database_url:?}: only sqlite: URLs are supported")));
        }
        let memory = is_memory_url(database_url);
        if !memory && let Some(path) = file_path(database_url) {
            prepare_private_file(&path)?;
        }
        let mut options = SqliteConnectOptions::from_str(database_url)
            .map_err(|e| DirectoryError::Invalid(format!("database_url {database_url:?}: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .synchronous(SqliteSynchronous::Normal)
            // Statement journals in memory. A batch of call records is one multi-row
            // `INSERT … ON CONFLICT DO NOTHING`, which needs one; past 64 KiB SQLite spilled it
            // to a temporary file, and those writes were ≈ 9 % of the server's CPU while
            // steering 5,000 calls/s (bench/README.md). A statement's journal holds the pages
            // it changed: at most a few hundred kB for the largest record batch.
            .pragma("temp_store", "memory");
        // A write refused for lack of space (SQLITE_FULL) or an I/O error makes SQLite roll its
        // transaction back by itself; sqlx's own ROLLBACK then fails and the connection still
        // counts a transaction, refusing every later `BEGIN`. Such a connection is closed
        // before it is handed out and the pool opens a fresh one, so service resumes when
        // space returns, without a restart.
        let file_pool = |max: u32| {
            SqlitePoolOptions::new()
                .max_connections(max)
                .before_acquire(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
        };
        let pool_options = if memory {
            // One connection that never closes: every query must see the same in-memory DB.
            SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            options = options.journal_mode(SqliteJournalMode::Wal);
            file_pool(4)
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| db_err(&format!("opening {database_url}"), e))?;
        MIGRATOR.run(&pool).await.map_err(migrate_err)?;
        let records = if memory {
            pool.clone()
        } else {
            // Opened after the migrations: it only ever sees the current schema.
            file_pool(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(|e| db_err(&format!("opening {database_url}"), e))?
        };
        if !memory && let Some(path) = file_path(database_url) {
            // SQLite gives the -wal / -shm files the main file's mode; older ones may be looser.
            for suffix in ["-wal", "-shm"] {
                let side = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
                if side.exists() {
                    crate::credentials::restrict_to_owner(&side, "database")
                        .map_err(|e| DirectoryError::Database(format!("{}: {e}", side.display())))?;
                }
            }
        }
        Ok(SqliteDirectory { pool, records, throttle_lock: Default::default() })
    }

    /// Close the pool (waits for connections to be returned). Optional: dropping works too.
    pub async fn close(&self) {
        self.records.close().await;
        self.pool.close().await;
    }

    /// The accounts whose home switch is `id`, sorted.
    async fn accounts_of_switch(&self, id: &str) -> Result<Vec<String>, DirectoryError> {
        let rows = sqlx::query("SELECT number FROM accounts WHERE home_switch = ? ORDER BY number")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err("listing accounts of switch", e))?;
        rows.iter().map(|r| r.try_get::<String, _>("number").map_err(|e| db_err("listing accounts of switch", e))).collect()
    }
}

const ACCOUNT_COLUMNS: &str = "number, display_name, kind, home_switch, ha1_md5, ha1_sha256";

#[async_trait::async_trait]
impl Directory for SqliteDirectory {
    async fn add_account(&self, a: NewAccount) -> Result<(), DirectoryError> {
        if a.number.is_empty() {
            return Err(DirectoryError::Invalid("account number must not be empty".into()));
        }
        let res = sqlx::query(
            "INSERT INTO accounts (number, display_name, kind, home_switch, password_hash, ha1_md5, ha1_sha256, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                _ => Err(db_err("adding account", e)),
            },
        }
    }

    async fn remove_account(&self, number: &str) -> Result<(), DirectoryError> {
        let done = sqlx::query("DELETE FROM accounts WHERE number = ?")
            .bind(number)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("removing account", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "account", key: number.to_string() });
        }
        Ok(())
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, DirectoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY number")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err("listing accounts", e))?;
        rows.iter().map(account_from_row).collect()
    }

    async fn account(&self, number: &str) -> Result<Option<Account>, DirectoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE number = ?")))
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("reading account", e))?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn password_hash(&self, number: &str) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT password_hash FROM accounts WHERE number = ?")
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("reading password hash", e))
    }

    async fn add_switch(&self, id: &str, secret_hash: &str) -> Result<(), DirectoryError> {
        if id.is_empty() {
            return Err(DirectoryError::Invalid("switch id must not be empty".into()));
        }
        let res = sqlx::query("INSERT INTO switches (id, secret_hash) VALUES (?, ?)")
            .bind(id)
            .bind(secret_hash)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if kind_of(&e) == Some(ErrorKind::UniqueViolation) => {
                Err(DirectoryError::AlreadyExists { what: "switch", key: id.to_string() })
            }
            Err(e) => Err(db_err("adding switch", e)),
        }
    }

    async fn remove_switch(&self, id: &str) -> Result<(), DirectoryError> {
        let res = sqlx::query("DELETE FROM switches WHERE id = ?").bind(id).execute(&self.pool).await;
        match res {
            Ok(done) if done.rows_affected() == 0 => Err(DirectoryError::NotFound { what: "switch", key: id.to_string() }),
            Ok(_) => Ok(()),
            Err(e) if kind_of(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                let numbers = self.accounts_of_switch(id).await?;
                let list = if numbers.is_empty() { "some accounts".to_string() } else { numbers.join(", ") };
                Err(DirectoryError::Invalid(format!("switch {id:?} is the home switch of {list}; remove those accounts first")))
            }
            Err(e) => Err(db_err("removing switch", e)),
        }
    }

    async fn list_switches(&self) -> Result<Vec<SwitchRecord>, DirectoryError> {
        let rows = sqlx::query("SELECT id, direct_urls, online, last_seen_ms FROM switches ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err("listing switches", e))?;
        rows.iter().map(switch_from_row).collect()
    }

    async fn switch_secret_hash(&self, id: &str) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT secret_hash FROM switches WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("reading switch secret hash", e))
    }

    async fn set_switch_online(&self, id: &str, online: bool, direct_urls: &[String], now: UnixMs) -> Result<(), DirectoryError> {
        let urls = serde_json::to_string(direct_urls).expect("a list of strings serializes");
        let done = sqlx::query("UPDATE switches SET online = ?, direct_urls = ?, last_seen_ms = ? WHERE id = ?")
            .bind(online as i64)
            .bind(urls)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("updating switch presence", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "switch", key: id.to_string() });
        }
        Ok(())
    }

    async fn reset_switches_offline(&self) -> Result<(), DirectoryError> {
        sqlx::query("UPDATE switches SET online = 0 WHERE online <> 0")
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("resetting switch presence", e))?;
        Ok(())
    }

    async fn directory_version(&self) -> Result<i64, DirectoryError> {
        sqlx::query_scalar("SELECT version FROM directory_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_err("reading directory version", e))
    }

    async fn set_password(
        &self,
        number: &str,
        password_hash: &str,
        ha1_md5: Option<&str>,
        ha1_sha256: Option<&str>,
    ) -> Result<u64, DirectoryError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| db_err("setting password", e))?;
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = ?, ha1_md5 = COALESCE(?, ha1_md5), ha1_sha256 = COALESCE(?, ha1_sha256) \
             WHERE number = ?",
        )
        .bind(password_hash)
        .bind(ha1_md5)
        .bind(ha1_sha256)
        .bind(number)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("setting password", e))?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound { what: "account", key: number.to_string() });
        }
        let revoked = sqlx::query("DELETE FROM sessions WHERE number = ?")
            .bind(number)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("revoking sessions", e))?
            .rows_affected();
        tx.commit().await.map_err(|e| db_err("setting password", e))?;
        Ok(revoked)
    }

    async fn create_session(&self, token_sha256: &str, number: &str, expires_ms: UnixMs) -> Result<i64, DirectoryError> {
        let now = now_ms();
        // In a transaction of its own, as every `RETURNING` here: see `rotate_session`.
        let res = async {
            let mut tx = self.pool.begin().await?;
            let id = sqlx::query_scalar(
                "INSERT INTO sessions (token_sha256, number, created_ms, expires_ms, last_used_ms) VALUES (?, ?, ?, ?, ?) \
                 RETURNING id",
            )
            .bind(token_sha256)
            .bind(number)
            .bind(now)
            .bind(expires_ms)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<i64, sqlx::Error>(id)
        }
        .await;
        match res {
            Ok(id) => {
                storage_ok();
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
                _ => Err(db_err("creating session", e)),
            },
        }
    }

    async fn session(&self, token_sha256: &str, now: UnixMs) -> Result<Option<String>, DirectoryError> {
        sqlx::query_scalar("SELECT number FROM sessions WHERE token_sha256 = ? AND expires_ms > ?")
            .bind(token_sha256)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("reading session", e))
    }

    async fn rotate_session(
        &self,
        old_token_sha256: &str,
        new_token_sha256: &str,
        now: UnixMs,
        expires_ms: UnixMs,
    ) -> Result<Option<(i64, String)>, DirectoryError> {
        // One statement: two resumes racing with the same token cannot both win. In an explicit
        // transaction: SQLite hands out a `RETURNING` row before the statement ends, and in
        // autocommit mode the commit happens when sqlx resets the statement, whose error (a
        // full disk) nobody sees: the server then handed out a token that was never stored.
        let err = |e| db_err("rotating session", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let row: Option<(i64, String)> = sqlx::query_as(
            "UPDATE sessions SET token_sha256 = ?, expires_ms = ?, last_used_ms = ? \
             WHERE token_sha256 = ? AND expires_ms > ? RETURNING id, number",
        )
        .bind(new_token_sha256)
        .bind(expires_ms)
        .bind(now)
        .bind(old_token_sha256)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(row)
    }

    async fn list_sessions(&self, number: Option<&str>, now: UnixMs) -> Result<Vec<SessionInfo>, DirectoryError> {
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, number, created_ms, expires_ms, last_used_ms FROM sessions \
             WHERE expires_ms > ?1 AND (?2 IS NULL OR number = ?2) ORDER BY created_ms, id",
        )
        .bind(now)
        .bind(number)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("listing sessions", e))?;
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
        // In a transaction of its own, as every `RETURNING` here: see `rotate_session`.
        let err = |e| db_err("revoking session", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let number = sqlx::query_scalar("DELETE FROM sessions WHERE id = ? RETURNING number")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(number)
    }

    async fn revoke_sessions(&self, number: &str) -> Result<u64, DirectoryError> {
        let done = sqlx::query("DELETE FROM sessions WHERE number = ?")
            .bind(number)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("revoking sessions", e))?;
        Ok(done.rows_affected())
    }

    async fn delete_expired_sessions(&self, now: UnixMs) -> Result<u64, DirectoryError> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_ms <= ?")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("deleting expired sessions", e))?;
        Ok(done.rows_affected())
    }

    async fn update_throttle(
        &self,
        keys: &[String],
        update: &mut (dyn for<'c> FnMut(&'c mut [ThrottleCounter]) -> bool + Send),
    ) -> Result<bool, DirectoryError> {
        let err = |e| db_err("updating sign-in counters", e);
        let _serial = self.throttle_lock.lock().await;
        // IMMEDIATE: take the write lock before reading, so another process's update cannot
        // slip in between the read and the write.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let mut counters = Vec::with_capacity(keys.len());
        for key in keys {
            let row: Option<(i64, i64, Option<i64>)> =
                sqlx::query_as("SELECT failures, last_failure_ms, last_success_ms FROM auth_throttle WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(err)?;
            counters.push(match row {
                Some((failures, last_failure_ms, last_success_ms)) => {
                    ThrottleCounter { failures: u32::try_from(failures).unwrap_or(u32::MAX), last_failure_ms, last_success_ms }
                }
                None => ThrottleCounter::default(),
            });
        }
        if !update(&mut counters) {
            tx.rollback().await.map_err(err)?;
            return Ok(false);
        }
        for (key, c) in keys.iter().zip(&counters) {
            sqlx::query(
                "INSERT INTO auth_throttle (key, failures, last_failure_ms, last_success_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, \
                 last_failure_ms = excluded.last_failure_ms, last_success_ms = excluded.last_success_ms",
            )
            .bind(key)
            .bind(i64::from(c.failures))
            .bind(c.last_failure_ms)
            .bind(c.last_success_ms)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        storage_ok();
        Ok(true)
    }

    async fn sweep_throttle(&self, failure_before: UnixMs, success_before: UnixMs) -> Result<u64, DirectoryError> {
        let done = sqlx::query(
            "DELETE FROM auth_throttle WHERE last_failure_ms < ? AND (last_success_ms IS NULL OR last_success_ms < ?)",
        )
        .bind(failure_before)
        .bind(success_before)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("sweeping sign-in counters", e))?;
        Ok(done.rows_affected())
    }

    /// Adding an endpoint that is already stored replaces it (a browser re-subscribing, possibly
    /// for another account on the same device).
    async fn add_push_subscription(&self, sub: PushSubscription) -> Result<(), DirectoryError> {
        let res = sqlx::query(
            "INSERT INTO push_subscriptions (endpoint, number, p256dh, auth) VALUES (?, ?, ?, ?) \
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
            Err(e) => Err(db_err("adding push subscription", e)),
        }
    }

    async fn push_subscriptions(&self, number: &str) -> Result<Vec<PushSubscription>, DirectoryError> {
        let rows =
            sqlx::query("SELECT endpoint, number, p256dh, auth FROM push_subscriptions WHERE number = ? ORDER BY endpoint")
                .bind(number)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_err("listing push subscriptions", e))?;
        rows.iter()
            .map(|r| {
                let get = |e| db_err("reading push subscription", e);
                Ok(PushSubscription {
                    number: r.try_get("number").map_err(get)?,
                    endpoint: r.try_get("endpoint").map_err(get)?,
                    p256dh: r.try_get("p256dh").map_err(get)?,
                    auth: r.try_get("auth").map_err(get)?,
                })
            })
            .collect()
    }

    /// Idempotent: removing an endpoint that is not stored is not an error (two pushes may both
    /// learn that the endpoint is gone).
    async fn remove_push_subscription(&self, endpoint: &str) -> Result<(), DirectoryError> {
        sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?")
            .bind(endpoint)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("removing push subscription", e))?;
        Ok(())
    }

    async fn insert_call_record(&self, record: &CallRecord) -> Result<(), DirectoryError> {
        self.insert_call_records(std::slice::from_ref(record)).await
    }

    async fn insert_call_records(&self, records: &[CallRecord]) -> Result<(), DirectoryError> {
        if records.is_empty() {
            return Ok(());
        }
        // Multi-row INSERTs: one statement per chunk instead of one round trip per record
        // (records arrive in batches under load).
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
        let mut tx = self.records.begin().await.map_err(|e| db_err("writing call records", e))?;
        // Chunks of 128, 64, …, 1 rows: a handful of statement shapes, each prepared once and
        // then taken from the statement cache (parsing a many-row INSERT cost more than
        // running it when every batch size was a statement of its own).
        let mut rest = &rows[..];
        while !rest.is_empty() {
            let n = 1usize << rest.len().min(128).ilog2();
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            // The arguments sized once: growing them by doubling to 9 × 128 values moved each
            // value several times, and each growth was a large allocation.
            let mut args = SqliteArguments::default();
            args.reserve(n * 9, 0);
            for (r, duration, trace) in chunk {
                let bound = args
                    .add(&r.call_id)
                    .and_then(|_| args.add(&r.caller))
                    .and_then(|_| args.add(&r.callee))
                    .and_then(|_| args.add(&r.switch_id))
                    .and_then(|_| args.add(r.started_ms))
                    .and_then(|_| args.add(r.ended_ms))
                    .and_then(|_| args.add(r.outcome.as_str()))
                    .and_then(|_| args.add(*duration))
                    .and_then(|_| args.add(trace.as_str()));
                bound.map_err(|e| DirectoryError::Invalid(format!("call {}: {e}", r.call_id)))?;
            }
            sqlx::query_with(insert_call_records_sql(n), args)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("writing call records", e))?;
        }
        tx.commit().await.map_err(|e| db_err("writing call records", e))?;
        storage_ok();
        Ok(())
    }

    fn storage_unavailable(&self) -> bool {
        STORAGE_DOWN.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Write a counter row and delete it in one committed transaction: WAL frames are appended
    /// (space is needed), nothing stays.
    async fn storage_probe(&self) -> Result<(), DirectoryError> {
        let err = |e| db_err("probing storage", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        sqlx::query(
            "INSERT INTO auth_throttle (key, failures, last_failure_ms) VALUES ('probe:storage', 0, 0)              ON CONFLICT (key) DO UPDATE SET failures = 0",
        )
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM auth_throttle WHERE key = 'probe:storage'").execute(&mut *tx).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        storage_ok();
        Ok(())
    }

    async fn call_records(&self, number: Option<&str>, limit: u32) -> Result<Vec<CallRecord>, DirectoryError> {
        const COLUMNS: &str = "call_id, caller, callee, switch_id, started_ms, ended_ms, outcome, duration_ms, trace";
        let rows = match number {
            Some(n) => {
                // UNION of two index-friendly lookups rather than `caller = ? OR callee = ?`.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM call_records WHERE id IN \
                     (SELECT id FROM call_records WHERE caller = ?1 UNION SELECT id FROM call_records WHERE callee = ?1) \
                     ORDER BY started_ms DESC, id DESC LIMIT ?2"
                )))
                .bind(n)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM call_records ORDER BY started_ms DESC, id DESC LIMIT ?1"
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(|e| db_err("listing call records", e))?;
        rows.iter().map(call_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::conformance::{browser, deskphone, record};

    fn url_for(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("test.db").display())
    }

    async fn fresh() -> (tempfile::TempDir, SqliteDirectory) {
        let tmp = tempfile::tempdir().unwrap();
        let d = SqliteDirectory::open(&url_for(&tmp)).await.unwrap();
        (tmp, d)
    }

    #[test]
    fn trace_round_trip() {
        let all = ALL_STEPS.to_vec();
        assert_eq!(parse_trace(&format_trace(&all)).unwrap(), all);
        assert_eq!(format_trace(&[Step::A, Step::C1, Step::B3]), "A,C1,B3");
        assert_eq!(parse_trace(""), Some(vec![]));
        assert_eq!(parse_trace("A,XX"), None);
    }

    #[test]
    fn memory_urls() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://:memory:"));
        assert!(is_memory_url("sqlite://?mode=memory"));
        assert!(!is_memory_url("sqlite://trunkline.db"));
        assert!(!is_memory_url("sqlite:///var/lib/x.db?mode=rwc"));
    }

    #[tokio::test]
    async fn version_seen_across_connections_of_another_process() {
        // Two independent pools on one file stand in for the server and the CLI.
        let tmp = tempfile::tempdir().unwrap();
        let server = SqliteDirectory::open(&url_for(&tmp)).await.unwrap();
        let cli = SqliteDirectory::open(&url_for(&tmp)).await.unwrap();
        let before = server.directory_version().await.unwrap();
        cli.add_account(browser("555")).await.unwrap();
        assert!(server.directory_version().await.unwrap() > before);
        assert!(server.account("555").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn new_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (tmp, _d) = fresh().await;
        let mode = std::fs::metadata(tmp.path().join("test.db")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let url = url_for(&tmp);
        {
            let d = SqliteDirectory::open(&url).await.unwrap();
            d.add_switch("sw1", "h").await.unwrap();
            d.add_account(deskphone("200", "sw1")).await.unwrap();
            d.create_session("tok", "200", 10_000).await.unwrap();
            d.insert_call_record(&record("c1", "200", "300", 5)).await.unwrap();
            d.close().await;
        }
        let d = SqliteDirectory::open(&url).await.unwrap();
        assert_eq!(d.account("200").await.unwrap().unwrap().home_switch.as_deref(), Some("sw1"));
        assert_eq!(d.switch_secret_hash("sw1").await.unwrap().as_deref(), Some("h"));
        assert_eq!(d.session("tok", 0).await.unwrap().as_deref(), Some("200"));
        assert_eq!(d.call_records(None, 10).await.unwrap().len(), 1);
        assert!(d.directory_version().await.unwrap() >= 2);
    }

    #[tokio::test]
    async fn upgrade_to_a_unique_call_id_keeps_the_first_record_of_a_repeated_call_id() {
        // Before version 3 a repeated end report was written again: such a database must still
        // take migration 4 (a UNIQUE index), keeping the first row as first writer wins would.
        let tmp = tempfile::tempdir().unwrap();
        let url = url_for(&tmp);
        {
            let pool = SqlitePool::connect(&format!("{url}?mode=rwc")).await.unwrap();
            MIGRATOR.run_to(3, &pool).await.unwrap();
            sqlx::query(
                "INSERT INTO call_records (call_id, caller, callee, started_ms, ended_ms, outcome) VALUES \
                 ('c1', '100', '200', 1, 2, 'connected'), ('c1', '100', '200', 3, 4, 'busy'), ('c2', '100', '200', 5, 6, 'busy')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let d = SqliteDirectory::open(&url).await.unwrap();
        let all = d.call_records(None, 10).await.unwrap();
        assert_eq!(all.iter().map(|r| (r.call_id.as_str(), r.started_ms)).collect::<Vec<_>>(), [("c2", 5), ("c1", 1)]);
        d.insert_call_records(&[record("c2", "100", "200", 7), record("c3", "100", "200", 8), record("c3", "100", "200", 9)])
            .await
            .unwrap();
        let all = d.call_records(None, 10).await.unwrap();
        assert_eq!(all.iter().map(|r| (r.call_id.as_str(), r.started_ms)).collect::<Vec<_>>(), [("c3", 8), ("c2", 5), ("c1", 1)]);
    }

    #[tokio::test]
    async fn creates_missing_file_and_uses_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new.db");
        assert!(!path.exists());
        let d = SqliteDirectory::open(&format!("sqlite://{}", path.display())).await.unwrap();
        assert!(path.exists());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&d.pool).await.unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&d.pool).await.unwrap();
        assert_eq!(fk, 1);
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&d.pool).await.unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let temp: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&d.pool).await.unwrap();
        assert_eq!(temp, 2, "MEMORY: statement journals never spill to a file");
    }

    #[tokio::test]
    async fn in_memory_database_is_one_database() {
        let d = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        d.add_account(browser("100")).await.unwrap();
        // Many sequential and concurrent queries all see the same data.
        let mut handles = Vec::new();
        for _ in 0..8 {
            let d = d.clone();
            handles.push(tokio::spawn(async move { d.account("100").await.unwrap().is_some() }));
        }
        for h in handles {
            assert!(h.await.unwrap());
        }
        assert_eq!(d.list_accounts().await.unwrap().len(), 1);
        // A second in-memory directory is a separate database.
        let other = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        assert!(other.list_accounts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_urls_are_invalid() {
        assert!(matches!(SqliteDirectory::open("postgres://x").await, Err(DirectoryError::Invalid(_))));
        let e = SqliteDirectory::open("sqlite:///nonexistent-dir-xyz/sub/db.sqlite").await.unwrap_err();
        assert!(matches!(e, DirectoryError::Database(_)), "{e:?}");
    }
}
