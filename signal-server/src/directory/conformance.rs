//! One test suite for every [`Directory`] implementation: each `async fn name(dir)` below is run
//! on SQLite (`on_sqlite::name`, a fresh file) and on PostgreSQL (`on_postgres::name`, a fresh
//! database).
//!
//! PostgreSQL: the server at `TRUNKLINE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates `tl_t_<pid>_<n>_<random>`
//! there and drops it afterwards. A server that cannot be reached fails the test, saying how to
//! start one; `TRUNKLINE_SKIP_PG=1` skips the PostgreSQL variants instead (printing SKIPPED).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use trunkline_protocol::{AccountKind, Outcome, Step};

use super::{CallRecord, DatabaseOptions, Directory, DirectoryError, NewAccount, PushSubscription, SwitchRecord, UnixMs};

pub(crate) const DEFAULT_TEST_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn browser(number: &str) -> NewAccount {
    NewAccount {
        number: number.into(),
        display_name: format!("Name {number}"),
        kind: AccountKind::Browser,
        home_switch: None,
        password_hash: format!("$argon2id$fake${number}"),
        ha1_md5: None,
        ha1_sha256: None,
    }
}

pub(crate) fn deskphone(number: &str, switch: &str) -> NewAccount {
    NewAccount {
        kind: AccountKind::Deskphone,
        home_switch: Some(switch.into()),
        ha1_md5: Some(format!("md5-{number}")),
        ha1_sha256: Some(format!("sha-{number}")),
        ..browser(number)
    }
}

pub(crate) fn record(call_id: &str, caller: &str, callee: &str, started: UnixMs) -> CallRecord {
    CallRecord {
        call_id: call_id.into(),
        caller: caller.into(),
        callee: callee.into(),
        switch_id: None,
        started_ms: started,
        ended_ms: started + 1000,
        outcome: Outcome::Connected,
        duration_ms: Some(900),
        trace: vec![Step::A, Step::C1, Step::C11, Step::C12, Step::C13],
    }
}

fn now_ms() -> UnixMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as UnixMs).unwrap()
}

/// A database of its own on the test PostgreSQL server, for one test.
pub(crate) struct TestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub(crate) url: String,
}

/// `url` (`postgres://…/db?params`) naming database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let (base, params) = url.split_once('?').map_or((url, None), |(b, p)| (b, Some(p)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match params {
        Some(p) => format!("{host_part}/{name}?{p}"),
        None => format!("{host_part}/{name}"),
    }
}

impl TestDb {
    /// Create a fresh database; `None` when `TRUNKLINE_SKIP_PG=1` (the test is then skipped).
    pub(crate) async fn create() -> Option<TestDb> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if std::env::var("TRUNKLINE_SKIP_PG").is_ok_and(|v| v == "1") {
            println!("SKIPPED: PostgreSQL variant (TRUNKLINE_SKIP_PG=1)");
            return None;
        }
        let admin_url = std::env::var("TRUNKLINE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_TEST_PG_URL.to_string());
        let shown = super::postgres::redact_url(&admin_url);
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {shown} ({e}). The directory's PostgreSQL tests need a server: start \
                 the local one (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or \
                 `service postgresql start`) or point TRUNKLINE_TEST_PG_URL at one (postgres://user@host:port/db, a \
                 user allowed to CREATE DATABASE). TRUNKLINE_SKIP_PG=1 skips these tests."
            )
        });
        let name =
            format!("tl_t_{}_{}_{:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), rand::random::<u32>());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {shown}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Some(TestDb { admin_url, name, url })
    }

    pub(crate) async fn drop_db(self) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.expect("reconnect to drop the test database");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut admin)
            .await
            .expect("drop the test database");
        let _ = admin.close().await;
    }
}

/// Run `test` with the URL of a fresh PostgreSQL database, dropped afterwards even if the test
/// panics (the panic is then passed on). Skipped (returns) with `TRUNKLINE_SKIP_PG=1`.
pub(crate) async fn with_pg_database<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(db) = TestDb::create().await else { return };
    let outcome = tokio::spawn(test(db.url.clone())).await;
    db.drop_db().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Pool settings for tests: small, so several pools fit the server's connection limit.
pub(crate) fn test_options() -> DatabaseOptions {
    DatabaseOptions { max_connections: 4, ..DatabaseOptions::default() }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let tmp = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", tmp.path().join("test.db").display());
                    let d = crate::directory::sqlite::SqliteDirectory::open(&url).await.unwrap();
                    super::$name(&d).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::with_pg_database(|url| async move {
                        let d = crate::directory::postgres::PgDirectory::open(&url, &super::test_options()).await.unwrap();
                        super::$name(&d).await;
                        d.close().await;
                    })
                    .await;
                }
            )*
        }
    };
}

conformance!(
    accounts_crud_and_errors,
    switches_crud_presence_and_errors,
    version_bumps_on_directory_changes_only,
    sessions,
    sessions_rotate_list_revoke_and_password_change,
    push_subscriptions,
    throttle_counters_read_update_and_sweep,
    call_records_round_trip_filter_and_order,
    call_record_first_writer_wins,
    call_record_batch_is_atomic,
    errors_do_not_contain_secrets,
    storage_probe_leaves_nothing_behind,
);

async fn accounts_crud_and_errors(d: &dyn Directory) {
    assert!(d.list_accounts().await.unwrap().is_empty());
    d.add_account(browser("100")).await.unwrap();
    d.add_switch("sw1", "$argon2id$secret").await.unwrap();
    d.add_account(deskphone("200", "sw1")).await.unwrap();

    let all = d.list_accounts().await.unwrap();
    assert_eq!(all.iter().map(|a| a.number.as_str()).collect::<Vec<_>>(), ["100", "200"]);
    let desk = d.account("200").await.unwrap().unwrap();
    assert_eq!(desk.kind, AccountKind::Deskphone);
    assert_eq!(desk.home_switch.as_deref(), Some("sw1"));
    assert_eq!(desk.ha1_md5.as_deref(), Some("md5-200"));
    assert_eq!(desk.ha1_sha256.as_deref(), Some("sha-200"));
    assert_eq!(desk.display_name, "Name 200");
    let b = d.account("100").await.unwrap().unwrap();
    assert_eq!((b.kind, b.home_switch, b.ha1_md5), (AccountKind::Browser, None, None));
    assert_eq!(d.account("999").await.unwrap(), None);
    assert_eq!(d.password_hash("100").await.unwrap().as_deref(), Some("$argon2id$fake$100"));
    assert_eq!(d.password_hash("999").await.unwrap(), None);

    // Duplicate.
    let e = d.add_account(browser("100")).await.unwrap_err();
    assert!(matches!(e, DirectoryError::AlreadyExists { what: "account", ref key } if key == "100"), "{e:?}");
    // Unknown home switch.
    let e = d.add_account(deskphone("300", "nope")).await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "switch", ref key } if key == "nope"), "{e:?}");
    assert!(d.account("300").await.unwrap().is_none());
    // Empty number.
    assert!(matches!(d.add_account(browser("")).await, Err(DirectoryError::Invalid(_))));

    // Listing order is byte order (SQLite's), whatever the database's locale.
    d.add_account(browser("1-0")).await.unwrap();
    d.add_account(browser("10")).await.unwrap();
    d.add_account(browser("B")).await.unwrap();
    d.add_account(browser("a")).await.unwrap();
    let all = d.list_accounts().await.unwrap();
    assert_eq!(all.iter().map(|a| a.number.as_str()).collect::<Vec<_>>(), ["1-0", "10", "100", "200", "B", "a"]);

    d.remove_account("100").await.unwrap();
    assert!(d.account("100").await.unwrap().is_none());
    let e = d.remove_account("100").await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "account", .. }), "{e:?}");
}

async fn switches_crud_presence_and_errors(d: &dyn Directory) {
    d.add_switch("sw1", "hash1").await.unwrap();
    d.add_switch("sw2", "hash2").await.unwrap();
    let e = d.add_switch("sw1", "other").await.unwrap_err();
    assert!(matches!(e, DirectoryError::AlreadyExists { what: "switch", .. }), "{e:?}");
    assert!(matches!(d.add_switch("", "h").await, Err(DirectoryError::Invalid(_))));
    assert_eq!(d.switch_secret_hash("sw1").await.unwrap().as_deref(), Some("hash1"));
    assert_eq!(d.switch_secret_hash("zz").await.unwrap(), None);

    let list = d.list_switches().await.unwrap();
    assert_eq!(list[0], SwitchRecord { id: "sw1".into(), direct_urls: vec![], online: false, last_seen_ms: None });
    assert_eq!(list.len(), 2);

    let urls = vec!["wss://a.example:7443/direct".to_string(), "ws://10.0.0.2:7080".to_string()];
    d.set_switch_online("sw1", true, &urls, 1234).await.unwrap();
    let sw1 = d.list_switches().await.unwrap().remove(0);
    assert_eq!(sw1, SwitchRecord { id: "sw1".into(), direct_urls: urls.clone(), online: true, last_seen_ms: Some(1234) });
    let e = d.set_switch_online("zz", true, &urls, 1).await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "switch", .. }), "{e:?}");

    d.reset_switches_offline().await.unwrap();
    let sw1 = d.list_switches().await.unwrap().remove(0);
    assert!(!sw1.online);
    assert_eq!(sw1.last_seen_ms, Some(1234));
    assert_eq!(sw1.direct_urls, urls);

    // A switch with accounts cannot be removed; the error names them.
    d.add_account(deskphone("201", "sw1")).await.unwrap();
    d.add_account(deskphone("202", "sw1")).await.unwrap();
    let e = d.remove_switch("sw1").await.unwrap_err();
    match &e {
        DirectoryError::Invalid(msg) => {
            assert!(msg.contains("201") && msg.contains("202") && msg.contains("sw1"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    assert!(d.switch_secret_hash("sw1").await.unwrap().is_some());
    d.remove_account("201").await.unwrap();
    d.remove_account("202").await.unwrap();
    d.remove_switch("sw1").await.unwrap();
    let e = d.remove_switch("sw1").await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "switch", .. }), "{e:?}");
    assert_eq!(d.list_switches().await.unwrap().len(), 1);
}

async fn version_bumps_on_directory_changes_only(d: &dyn Directory) {
    let v0 = d.directory_version().await.unwrap();
    d.add_switch("sw1", "h").await.unwrap();
    let v1 = d.directory_version().await.unwrap();
    assert!(v1 > v0);
    // Presence is not a directory change.
    d.set_switch_online("sw1", true, &["ws://x".into()], 5).await.unwrap();
    d.reset_switches_offline().await.unwrap();
    assert_eq!(d.directory_version().await.unwrap(), v1);
    d.add_account(deskphone("200", "sw1")).await.unwrap();
    let v2 = d.directory_version().await.unwrap();
    assert!(v2 > v1);
    // Neither are sessions, push subscriptions or call records.
    d.create_session("t", "200", 10).await.unwrap();
    d.add_push_subscription(PushSubscription {
        number: "200".into(),
        endpoint: "https://push/1".into(),
        p256dh: "k".into(),
        auth: "a".into(),
    })
    .await
    .unwrap();
    d.insert_call_record(&record("c1", "200", "300", 1)).await.unwrap();
    assert_eq!(d.directory_version().await.unwrap(), v2);
    // Failed changes do not bump it.
    let _ = d.add_account(browser("200")).await.unwrap_err();
    let _ = d.remove_switch("sw1").await.unwrap_err();
    let _ = d.remove_account("nobody").await.unwrap_err();
    let _ = d.set_password("nobody", "h", None, None).await.unwrap_err();
    assert_eq!(d.directory_version().await.unwrap(), v2);
    // A password change is an account change.
    d.set_password("200", "h2", None, None).await.unwrap();
    let v3 = d.directory_version().await.unwrap();
    assert!(v3 > v2);
    d.remove_account("200").await.unwrap();
    let v4 = d.directory_version().await.unwrap();
    assert!(v4 > v3);
    d.remove_switch("sw1").await.unwrap();
    assert!(d.directory_version().await.unwrap() > v4);
}

async fn sessions(d: &dyn Directory) {
    d.add_account(browser("100")).await.unwrap();
    d.create_session("aaa", "100", 1_000).await.unwrap();
    d.create_session("bbb", "100", 5_000).await.unwrap();
    assert_eq!(d.session("aaa", 999).await.unwrap().as_deref(), Some("100"));
    assert_eq!(d.session("aaa", 1_000).await.unwrap(), None, "expiry is exclusive");
    assert_eq!(d.session("zzz", 0).await.unwrap(), None);
    let e = d.create_session("aaa", "100", 9).await.unwrap_err();
    assert!(matches!(e, DirectoryError::AlreadyExists { what: "session", .. }), "{e:?}");
    let e = d.create_session("ccc", "nobody", 9).await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "account", .. }), "{e:?}");

    assert_eq!(d.delete_expired_sessions(2_000).await.unwrap(), 1);
    assert_eq!(d.delete_expired_sessions(2_000).await.unwrap(), 0);
    assert_eq!(d.session("bbb", 2_000).await.unwrap().as_deref(), Some("100"));
    // Removing the account removes its sessions.
    d.remove_account("100").await.unwrap();
    assert_eq!(d.session("bbb", 0).await.unwrap(), None);
}

async fn sessions_rotate_list_revoke_and_password_change(d: &dyn Directory) {
    d.add_account(browser("100")).await.unwrap();
    d.add_account(browser("101")).await.unwrap();
    let far = now_ms() + 1_000_000;
    let a = d.create_session("a1", "100", far).await.unwrap();
    let b = d.create_session("b1", "100", far).await.unwrap();
    d.create_session("c1", "101", far).await.unwrap();
    assert_ne!(a, b);
    // Rotation keeps the id and kills the old hash.
    assert_eq!(d.rotate_session("a1", "a2", now_ms(), far).await.unwrap(), Some((a, "100".to_string())));
    assert_eq!(d.rotate_session("a1", "a3", now_ms(), far).await.unwrap(), None);
    assert_eq!(d.session("a1", 0).await.unwrap(), None);
    assert_eq!(d.session("a2", 0).await.unwrap().as_deref(), Some("100"));
    // An expired session cannot be rotated.
    d.create_session("old", "101", 10).await.unwrap();
    assert_eq!(d.rotate_session("old", "new", 10, far).await.unwrap(), None);
    assert_eq!(d.delete_expired_sessions(11).await.unwrap(), 1);
    let list = d.list_sessions(Some("100"), now_ms()).await.unwrap();
    assert_eq!(list.iter().map(|s| s.id).collect::<Vec<_>>(), [a, b]);
    assert!(list.iter().all(|s| s.number == "100" && s.created_ms <= s.last_used_ms && s.expires_ms == far));
    assert_eq!(d.list_sessions(None, now_ms()).await.unwrap().len(), 3);
    assert_eq!(d.revoke_session(a).await.unwrap().as_deref(), Some("100"));
    assert_eq!(d.revoke_session(a).await.unwrap(), None);
    assert_eq!(d.session("a2", 0).await.unwrap(), None);
    // A password change revokes the account's sessions only.
    assert_eq!(d.set_password("100", "new-hash", None, None).await.unwrap(), 1);
    assert_eq!(d.password_hash("100").await.unwrap().as_deref(), Some("new-hash"));
    assert_eq!(d.session("b1", 0).await.unwrap(), None);
    assert_eq!(d.session("c1", 0).await.unwrap().as_deref(), Some("101"));
    assert_eq!(d.revoke_sessions("101").await.unwrap(), 1);
    let e = d.set_password("nobody", "h", None, None).await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "account", .. }), "{e:?}");
}

async fn push_subscriptions(d: &dyn Directory) {
    d.add_account(browser("100")).await.unwrap();
    d.add_account(browser("101")).await.unwrap();
    let sub = |n: &str, ep: &str| PushSubscription {
        number: n.into(),
        endpoint: ep.into(),
        p256dh: format!("p-{ep}"),
        auth: format!("a-{ep}"),
    };
    d.add_push_subscription(sub("100", "https://push/a")).await.unwrap();
    d.add_push_subscription(sub("100", "https://push/b")).await.unwrap();
    assert_eq!(d.push_subscriptions("100").await.unwrap(), vec![sub("100", "https://push/a"), sub("100", "https://push/b")]);
    // Same endpoint again: replaced (moves to 101).
    d.add_push_subscription(sub("101", "https://push/b")).await.unwrap();
    assert_eq!(d.push_subscriptions("100").await.unwrap(), vec![sub("100", "https://push/a")]);
    assert_eq!(d.push_subscriptions("101").await.unwrap(), vec![sub("101", "https://push/b")]);
    let e = d.add_push_subscription(sub("nobody", "https://push/c")).await.unwrap_err();
    assert!(matches!(e, DirectoryError::NotFound { what: "account", .. }), "{e:?}");

    d.remove_push_subscription("https://push/a").await.unwrap();
    d.remove_push_subscription("https://push/a").await.unwrap(); // idempotent
    assert!(d.push_subscriptions("100").await.unwrap().is_empty());
    d.remove_account("101").await.unwrap();
    assert!(d.push_subscriptions("101").await.unwrap().is_empty());
}

async fn throttle_counters_read_update_and_sweep(d: &dyn Directory) {
    use super::ThrottleCounter;
    let keys = vec!["acct:100".to_string(), "addr:10.0.0.1".to_string()];
    // Missing counters read as zero; nothing is stored when the update says no.
    let mut seen = Vec::new();
    let stored = d
        .update_throttle(&keys, &mut |c: &mut [ThrottleCounter]| {
            seen = c.to_vec();
            false
        })
        .await
        .unwrap();
    assert!(!stored);
    assert_eq!(seen, vec![ThrottleCounter::default(); 2]);
    // Stored, then read back by the next update.
    let stored = d
        .update_throttle(&keys, &mut |c: &mut [ThrottleCounter]| {
            c[0] = ThrottleCounter { failures: 3, last_failure_ms: 1_000, last_success_ms: None };
            c[1] = ThrottleCounter { failures: 1, last_failure_ms: 500, last_success_ms: Some(2_000) };
            true
        })
        .await
        .unwrap();
    assert!(stored);
    let other = vec!["addr:10.0.0.1".to_string(), "src:100|10.0.0.1".to_string()];
    d.update_throttle(&other, &mut |c: &mut [ThrottleCounter]| {
        seen = c.to_vec();
        c[0].failures += 1;
        true
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![ThrottleCounter { failures: 1, last_failure_ms: 500, last_success_ms: Some(2_000) }, ThrottleCounter::default()]
    );
    d.update_throttle(&keys, &mut |c: &mut [ThrottleCounter]| {
        seen = c.to_vec();
        false
    })
    .await
    .unwrap();
    assert_eq!(seen[0], ThrottleCounter { failures: 3, last_failure_ms: 1_000, last_success_ms: None });
    assert_eq!(seen[1].failures, 2);
    // Sweep: "acct:100" (failure at 1000, no success) and "src:…" (stored as zero) go;
    // "addr:…" stays for its recent success.
    assert_eq!(d.sweep_throttle(1_001, 2_000).await.unwrap(), 2);
    d.update_throttle(&keys, &mut |c: &mut [ThrottleCounter]| {
        seen = c.to_vec();
        false
    })
    .await
    .unwrap();
    assert_eq!(seen[0], ThrottleCounter::default());
    assert_eq!(seen[1].failures, 2);
    assert_eq!(d.sweep_throttle(1_001, 2_001).await.unwrap(), 1);
}

async fn call_records_round_trip_filter_and_order(d: &dyn Directory) {
    let mut r1 = record("c1", "100", "200", 1_000);
    r1.switch_id = Some("sw1".into());
    let mut r2 = record("c2", "300", "100", 2_000);
    r2.outcome = Outcome::RejectedInvalid;
    r2.duration_ms = None;
    r2.trace = vec![Step::A, Step::B1, Step::B2, Step::B3];
    let mut r3 = record("c3", "300", "400", 3_000);
    r3.trace = vec![];
    d.insert_call_record(&r1).await.unwrap();
    d.insert_call_records(&[r2.clone(), r3.clone()]).await.unwrap();
    d.insert_call_records(&[]).await.unwrap();

    assert_eq!(d.call_records(None, 10).await.unwrap(), vec![r3.clone(), r2.clone(), r1.clone()]);
    assert_eq!(d.call_records(None, 2).await.unwrap(), vec![r3.clone(), r2.clone()]);
    assert_eq!(d.call_records(Some("100"), 10).await.unwrap(), vec![r2.clone(), r1.clone()]);
    assert_eq!(d.call_records(Some("400"), 10).await.unwrap(), vec![r3.clone()]);
    assert_eq!(d.call_records(Some("nobody"), 10).await.unwrap(), vec![]);
    assert_eq!(d.call_records(None, 0).await.unwrap(), vec![]);
    // A batch larger than one multi-row INSERT.
    let many: Vec<CallRecord> = (0..450).map(|i| record(&format!("m{i}"), "500", "600", 10_000 + i)).collect();
    d.insert_call_records(&many).await.unwrap();
    assert_eq!(d.call_records(Some("500"), 1000).await.unwrap().len(), 450);
    assert_eq!(d.call_records(Some("600"), 1).await.unwrap(), vec![many[449].clone()]);
}

async fn call_record_first_writer_wins(d: &dyn Directory) {
    let first = record("c1", "100", "200", 1_000);
    let mut again = record("c1", "100", "200", 2_000);
    again.duration_ms = Some(99);
    d.insert_call_record(&first).await.unwrap();
    d.insert_call_record(&again).await.unwrap();
    d.insert_call_records(&[again.clone(), record("c2", "100", "200", 3_000)]).await.unwrap();
    let all = d.call_records(None, 10).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1], first, "the first record of a call id stays");
}

async fn call_record_batch_is_atomic(d: &dyn Directory) {
    let good = record("c1", "100", "200", 1);
    let mut bad = record("c2", "100", "200", 2);
    bad.duration_ms = Some(u64::MAX);
    let e = d.insert_call_records(&[good, bad]).await.unwrap_err();
    assert!(matches!(e, DirectoryError::Invalid(_)), "{e:?}");
    assert!(d.call_records(None, 10).await.unwrap().is_empty(), "nothing of a failed batch is kept");
}

async fn errors_do_not_contain_secrets(d: &dyn Directory) {
    d.add_switch("sw1", "SECRET-HASH-XYZ").await.unwrap();
    let e = d.add_switch("sw1", "SECRET-HASH-XYZ").await.unwrap_err().to_string();
    assert!(!e.contains("SECRET"), "{e}");
    let mut a = browser("100");
    a.password_hash = "PW-HASH-XYZ".into();
    a.ha1_md5 = Some("HA1-MD5-XYZ".into());
    d.add_account(a.clone()).await.unwrap();
    let e = d.add_account(a.clone()).await.unwrap_err().to_string();
    assert!(!e.contains("PW-HASH") && !e.contains("HA1-MD5"), "{e}");
    d.create_session("0123456789abcdef-token-hash", "100", 1).await.unwrap();
    let e = d.create_session("0123456789abcdef-token-hash", "100", 1).await.unwrap_err().to_string();
    assert!(!e.contains("token-hash"), "{e}");
    // A rotation onto a token hash that is taken fails without naming either hash.
    d.create_session("other-token-hash-1", "100", i64::MAX).await.unwrap();
    d.create_session("other-token-hash-2", "100", i64::MAX).await.unwrap();
    let e = d.rotate_session("other-token-hash-1", "other-token-hash-2", 0, i64::MAX).await.unwrap_err().to_string();
    assert!(!e.contains("token-hash"), "{e}");
}

async fn storage_probe_leaves_nothing_behind(d: &dyn Directory) {
    d.storage_probe().await.unwrap();
    assert!(!d.storage_unavailable());
    // The probe's row is gone: a sweep that would delete anything finds nothing.
    assert_eq!(d.sweep_throttle(i64::MAX, i64::MAX).await.unwrap(), 0);
}
