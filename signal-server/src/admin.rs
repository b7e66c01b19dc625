//! Administration logic shared by the command line ([`crate::cli`]) and the REST API
//! ([`crate::admin_api`]): input rules, secret hashing, and the JSON shapes both print.
//!
//! Secrets (passwords, switch secrets) arrive here in clear, are hashed, and are dropped; they
//! are never part of an error message, a log line or an output value.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trunkline_protocol::{AccountKind, MAX_DISPLAY_NAME_LEN, MAX_PASSWORD_LEN, check_number, check_switch_id};

use crate::Config;
use crate::credentials;
use crate::directory::{Account, CallRecord, Directory, DirectoryError, NewAccount, SessionInfo, SwitchRecord, UnixMs};

/// Shortest switch secret accepted: 16 bytes (128 bits if random).
pub const MIN_SWITCH_SECRET_LEN: usize = 16;

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request itself is wrong (bad number, missing switch for a desk phone, short secret…).
    /// Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// Hashing failed or a worker thread died.
    #[error("{0}")]
    Internal(String),
}

/// A new account as an administrator describes it (CLI flags or API JSON).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInput {
    pub number: String,
    pub password: String,
    /// Display name; defaults to the number.
    #[serde(default)]
    pub name: Option<String>,
    /// Home switch id (desk phones, or browsers behind a switch).
    #[serde(default)]
    pub switch: Option<String>,
    /// Defaults to `deskphone` when `switch` is given, else `browser`.
    #[serde(default)]
    pub kind: Option<AccountKind>,
}

// Hand-written so the password can never end up in a debug print or log line.
impl std::fmt::Debug for AccountInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountInput")
            .field("number", &self.number)
            .field("password", &"<redacted>")
            .field("name", &self.name)
            .field("switch", &self.switch)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A new switch: its id and shared secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchInput {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for SwitchInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchInput").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// Check every rule that does not need the database. Cheap; run it before hashing.
pub fn check_account(input: &AccountInput) -> Result<(), AdminError> {
    check_number("number", &input.number).map_err(|e| AdminError::Invalid(e.message))?;
    if input.password.is_empty() {
        return Err(AdminError::Invalid("password must not be empty".into()));
    }
    if input.password.len() > MAX_PASSWORD_LEN {
        return Err(AdminError::Invalid(format!("password must be at most {MAX_PASSWORD_LEN} bytes")));
    }
    if let Some(name) = &input.name {
        if name.trim().is_empty() {
            return Err(AdminError::Invalid("name must not be empty (leave it out to use the number)".into()));
        }
        if name.len() > MAX_DISPLAY_NAME_LEN {
            return Err(AdminError::Invalid(format!("name must be at most {MAX_DISPLAY_NAME_LEN} bytes")));
        }
        if name.chars().any(char::is_control) {
            return Err(AdminError::Invalid("name must not contain control characters".into()));
        }
    }
    if let Some(sw) = &input.switch {
        check_switch_id(sw).map_err(|e| AdminError::Invalid(e.message))?;
    }
    if effective_kind(input) == AccountKind::Deskphone && input.switch.is_none() {
        return Err(AdminError::Invalid(
            "a deskphone account needs a home switch (--switch ID / \"switch\"): desk phones register at a switch".into(),
        ));
    }
    Ok(())
}

fn effective_kind(input: &AccountInput) -> AccountKind {
    input.kind.unwrap_or(if input.switch.is_some() { AccountKind::Deskphone } else { AccountKind::Browser })
}

/// Validate and hash: the stored form of a new account. CPU- and memory-heavy (argon2id):
/// call from a blocking context (see [`add_account`]).
pub fn new_account(input: &AccountInput, config: &Config) -> Result<NewAccount, AdminError> {
    check_account(input)?;
    let kind = effective_kind(input);
    let a = &config.auth;
    let password_hash = credentials::hash_password(&input.password, a.password_hash_memory_kib, a.password_hash_iterations)
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let (ha1_md5, ha1_sha256) = match kind {
        AccountKind::Deskphone => (
            Some(credentials::ha1_md5(&input.number, &config.sip_realm, &input.password)),
            Some(credentials::ha1_sha256(&input.number, &config.sip_realm, &input.password)),
        ),
        AccountKind::Browser => (None, None),
    };
    Ok(NewAccount {
        number: input.number.clone(),
        display_name: input.name.clone().unwrap_or_else(|| input.number.clone()),
        kind,
        home_switch: input.switch.clone(),
        password_hash,
        ha1_md5,
        ha1_sha256,
    })
}

/// Check a switch id and secret (no database needed).
pub fn check_switch(input: &SwitchInput) -> Result<(), AdminError> {
    check_switch_id(&input.id).map_err(|e| AdminError::Invalid(e.message))?;
    if input.secret.len() < MIN_SWITCH_SECRET_LEN {
        return Err(AdminError::Invalid(format!(
            "switch secret is too short: it must be at least {MIN_SWITCH_SECRET_LEN} bytes (use a long random string)"
        )));
    }
    if input.secret.len() > MAX_PASSWORD_LEN {
        return Err(AdminError::Invalid(format!("switch secret must be at most {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

/// Validate and hash a switch secret: its argon2id PHC string. Blocking (see [`add_switch`]).
pub fn switch_secret_hash(input: &SwitchInput, config: &Config) -> Result<String, AdminError> {
    check_switch(input)?;
    let a = &config.auth;
    credentials::hash_password(&input.secret, a.password_hash_memory_kib, a.password_hash_iterations)
        .map_err(|e| AdminError::Internal(e.to_string()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| AdminError::Internal("hashing task failed".into()))
}

/// Validate, hash (on a blocking thread) and store a new account. Returns what was stored.
pub async fn add_account(dir: &dyn Directory, config: Arc<Config>, input: AccountInput) -> Result<AccountView, AdminError> {
    check_account(&input)?;
    if let Some(sw) = &input.switch {
        // Fail before the (slow) hash; the insert checks again.
        if !dir.list_switches().await?.iter().any(|s| &s.id == sw) {
            return Err(DirectoryError::NotFound { what: "switch", key: sw.clone() }.into());
        }
    }
    if dir.account(&input.number).await?.is_some() {
        return Err(DirectoryError::AlreadyExists { what: "account", key: input.number.clone() }.into());
    }
    let new = blocking(move || new_account(&input, &config)).await??;
    let view = AccountView {
        number: new.number.clone(),
        display_name: new.display_name.clone(),
        kind: new.kind,
        home_switch: new.home_switch.clone(),
    };
    dir.add_account(new).await?;
    Ok(view)
}

/// Validate, hash (on a blocking thread) and store a new switch.
pub async fn add_switch(dir: &dyn Directory, config: Arc<Config>, input: SwitchInput) -> Result<SwitchView, AdminError> {
    check_switch(&input)?;
    if dir.switch_secret_hash(&input.id).await?.is_some() {
        return Err(DirectoryError::AlreadyExists { what: "switch", key: input.id.clone() }.into());
    }
    let id = input.id.clone();
    let hash = blocking(move || switch_secret_hash(&input, &config)).await??;
    dir.add_switch(&id, &hash).await?;
    Ok(SwitchView { id, online: false, direct_urls: Vec::new(), last_seen_ms: None })
}

/// A new password for an existing account (API JSON).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordInput {
    pub password: String,
}

impl std::fmt::Debug for PasswordInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordInput").field("password", &"<redacted>").finish()
    }
}

/// Check a new password (no database needed).
pub fn check_password(password: &str) -> Result<(), AdminError> {
    if password.is_empty() {
        return Err(AdminError::Invalid("password must not be empty".into()));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AdminError::Invalid(format!("password must be at most {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

/// Change (reset) an account's password: hash it (on a blocking thread), store it with new SIP
/// verifiers for a desk phone, and revoke every session of the account, so whoever held one
/// must sign in with the new password. Returns how many sessions were revoked.
pub async fn set_password(dir: &dyn Directory, config: Arc<Config>, number: &str, password: String) -> Result<u64, AdminError> {
    check_number("number", number).map_err(|e| AdminError::Invalid(e.message))?;
    check_password(&password)?;
    let Some(account) = dir.account(number).await? else {
        return Err(DirectoryError::NotFound { what: "account", key: number.to_string() }.into());
    };
    let n = number.to_string();
    let (phc, ha1) = blocking(move || {
        let a = &config.auth;
        let phc = credentials::hash_password(&password, a.password_hash_memory_kib, a.password_hash_iterations)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let ha1 = (account.kind == AccountKind::Deskphone).then(|| {
            (credentials::ha1_md5(&n, &config.sip_realm, &password), credentials::ha1_sha256(&n, &config.sip_realm, &password))
        });
        Ok::<_, AdminError>((phc, ha1))
    })
    .await??;
    let revoked = dir.set_password(number, &phc, ha1.as_ref().map(|h| h.0.as_str()), ha1.as_ref().map(|h| h.1.as_str())).await?;
    Ok(revoked)
}

/// A browser session as listed: never its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Pass to `sessions revoke --id` / `DELETE /api/sessions/{id}`.
    pub id: i64,
    pub number: String,
    pub created_ms: UnixMs,
    pub expires_ms: UnixMs,
    pub last_used_ms: UnixMs,
}

impl From<SessionInfo> for SessionView {
    fn from(s: SessionInfo) -> Self {
        SessionView {
            id: s.id,
            number: s.number,
            created_ms: s.created_ms,
            expires_ms: s.expires_ms,
            last_used_ms: s.last_used_ms,
        }
    }
}

/// An account as listed (no password hash, no SIP verifiers: those are password-equivalent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub number: String,
    pub display_name: String,
    pub kind: AccountKind,
    pub home_switch: Option<String>,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        AccountView { number: a.number, display_name: a.display_name, kind: a.kind, home_switch: a.home_switch }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchView {
    pub id: String,
    pub online: bool,
    pub direct_urls: Vec<String>,
    pub last_seen_ms: Option<UnixMs>,
}

impl From<SwitchRecord> for SwitchView {
    fn from(s: SwitchRecord) -> Self {
        SwitchView { id: s.id, online: s.online, direct_urls: s.direct_urls, last_seen_ms: s.last_seen_ms }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallView {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub switch_id: Option<String>,
    pub started_ms: UnixMs,
    pub ended_ms: UnixMs,
    pub outcome: trunkline_protocol::Outcome,
    pub duration_ms: Option<u64>,
    /// Patent steps in order, e.g. `["A", "C1", "C11", "C12", "C13"]`.
    pub trace: Vec<String>,
}

impl From<CallRecord> for CallView {
    fn from(c: CallRecord) -> Self {
        CallView {
            call_id: c.call_id,
            caller: c.caller,
            callee: c.callee,
            switch_id: c.switch_id,
            started_ms: c.started_ms,
            ended_ms: c.ended_ms,
            outcome: c.outcome,
            duration_ms: c.duration_ms,
            trace: c.trace.iter().map(|s| s.as_str().to_string()).collect(),
        }
    }
}

/// Default and largest number of call records one listing returns.
pub const DEFAULT_CALLS_LIMIT: u32 = 100;
pub const MAX_CALLS_LIMIT: u32 = 10_000;

/// Check the filters of a call listing.
pub fn check_calls_query(number: Option<&str>, limit: u32) -> Result<(), AdminError> {
    if let Some(n) = number {
        check_number("number", n).map_err(|e| AdminError::Invalid(e.message))?;
    }
    if limit == 0 || limit > MAX_CALLS_LIMIT {
        return Err(AdminError::Invalid(format!("limit must be 1–{MAX_CALLS_LIMIT}")));
    }
    Ok(())
}

/// `2026-11-26 07:11:21Z` for a Unix time in milliseconds (UTC).
pub fn format_utc(ms: UnixMs) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to a 400-year era starting on 0000-03-01, so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year, 0..=365
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// `1h02m03s`, `4m05s`, `12.3s`.
pub fn format_duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, ms % 1000 / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::sqlite::SqliteDirectory;

    fn cheap_config() -> Config {
        let mut c = Config::default();
        c.auth.password_hash_memory_kib = 64;
        c.auth.password_hash_iterations = 1;
        c.sip_realm = "example.org".into();
        c
    }

    fn input(number: &str) -> AccountInput {
        AccountInput { number: number.into(), password: "pw-123".into(), name: None, switch: None, kind: None }
    }

    #[test]
    fn account_rules() {
        assert!(check_account(&input("100")).is_ok());
        assert!(matches!(check_account(&input("")), Err(AdminError::Invalid(_))));
        assert!(matches!(check_account(&input("1 2")), Err(AdminError::Invalid(_))));
        let mut i = input("100");
        i.password.clear();
        assert!(check_account(&i).unwrap_err().to_string().contains("password must not be empty"));
        let mut i = input("100");
        i.kind = Some(AccountKind::Deskphone);
        assert!(check_account(&i).unwrap_err().to_string().contains("home switch"));
        let mut i = input("100");
        i.switch = Some("bad id".into());
        assert!(matches!(check_account(&i), Err(AdminError::Invalid(_))));
        let mut i = input("100");
        i.name = Some("  ".into());
        assert!(matches!(check_account(&i), Err(AdminError::Invalid(_))));
        i.name = Some("x".repeat(MAX_DISPLAY_NAME_LEN + 1));
        assert!(matches!(check_account(&i), Err(AdminError::Invalid(_))));
        i.name = Some("a\u{7}b".into());
        assert!(matches!(check_account(&i), Err(AdminError::Invalid(_))));
    }

    #[test]
    fn new_account_defaults_and_verifiers() {
        let c = cheap_config();
        let b = new_account(&input("100"), &c).unwrap();
        assert_eq!((b.kind, b.display_name.as_str(), b.ha1_md5.as_ref()), (AccountKind::Browser, "100", None));
        assert!(credentials::verify_password(&b.password_hash, "pw-123"));

        let mut i = input("200");
        i.switch = Some("sw1".into());
        i.name = Some("Front desk".into());
        let d = new_account(&i, &c).unwrap();
        assert_eq!(d.kind, AccountKind::Deskphone);
        assert_eq!(d.display_name, "Front desk");
        assert_eq!(d.ha1_md5, Some(credentials::ha1_md5("200", "example.org", "pw-123")));
        assert_eq!(d.ha1_sha256, Some(credentials::ha1_sha256("200", "example.org", "pw-123")));

        // An explicit browser behind a switch has no SIP verifiers.
        i.kind = Some(AccountKind::Browser);
        let b = new_account(&i, &c).unwrap();
        assert_eq!((b.kind, b.ha1_md5, b.home_switch.as_deref()), (AccountKind::Browser, None, Some("sw1")));
    }

    #[test]
    fn switch_rules() {
        let ok = SwitchInput { id: "sw-1".into(), secret: "0123456789abcdef".into() };
        assert!(check_switch(&ok).is_ok());
        let short = SwitchInput { id: "sw-1".into(), secret: "0123456789abcde".into() };
        assert!(check_switch(&short).unwrap_err().to_string().contains("at least 16 bytes"));
        let bad = SwitchInput { id: "sw 1".into(), secret: ok.secret.clone() };
        assert!(matches!(check_switch(&bad), Err(AdminError::Invalid(_))));
        let h = switch_secret_hash(&ok, &cheap_config()).unwrap();
        assert!(credentials::verify_password(&h, "0123456789abcdef"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut i = input("100");
        i.password = "hunter2-secret".into();
        assert!(!format!("{i:?}").contains("hunter2"));
        let s = SwitchInput { id: "sw".into(), secret: "very-secret-value".into() };
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[tokio::test]
    async fn add_account_and_switch_through_directory() {
        let dir = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        let c = Arc::new(cheap_config());
        let mut i = input("200");
        i.switch = Some("sw1".into());
        let e = add_account(&dir, c.clone(), i.clone()).await.unwrap_err();
        assert!(matches!(e, AdminError::Directory(DirectoryError::NotFound { what: "switch", .. })), "{e:?}");
        add_switch(&dir, c.clone(), SwitchInput { id: "sw1".into(), secret: "s".repeat(16) }).await.unwrap();
        let e = add_switch(&dir, c.clone(), SwitchInput { id: "sw1".into(), secret: "s".repeat(16) }).await.unwrap_err();
        assert!(matches!(e, AdminError::Directory(DirectoryError::AlreadyExists { .. })), "{e:?}");
        let v = add_account(&dir, c.clone(), i.clone()).await.unwrap();
        assert_eq!(
            v,
            AccountView {
                number: "200".into(),
                display_name: "200".into(),
                kind: AccountKind::Deskphone,
                home_switch: Some("sw1".into())
            }
        );
        let e = add_account(&dir, c.clone(), i).await.unwrap_err();
        assert!(matches!(e, AdminError::Directory(DirectoryError::AlreadyExists { .. })), "{e:?}");
        let stored = dir.account("200").await.unwrap().unwrap();
        assert_eq!(stored.ha1_md5, Some(credentials::ha1_md5("200", "example.org", "pw-123")));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_123), "2023-11-14 22:13:20Z");
        assert_eq!(format_utc(-1000), "1969-12-31 23:59:59Z");
        assert_eq!(format_duration_ms(12_345), "12.3s");
        assert_eq!(format_duration_ms(65_000), "1m05s");
        assert_eq!(format_duration_ms(3_723_000), "1h02m03s");
    }
}
