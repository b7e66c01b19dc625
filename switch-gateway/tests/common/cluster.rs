//! Cluster fixtures for the gateway's tests (issue 11): three `signal-server` replicas in
//! cluster mode on this machine's PostgreSQL (127.0.0.1:5432, trust auth, user postgres) and
//! NATS (127.0.0.1:4222), and a TCP load balancer whose backend list the test sets.
//!
//! Each replica is a child process: this test binary run again with one ignored test selected
//! ([`replica_child_main`]), which calls `signal_server::run` with the replica's TOML config —
//! the entry the `signal-server` binary uses, and always the code under test (a `signal-server`
//! binary in the target folder may be stale: only this crate's binaries are rebuilt for it).
//! `kill -9` of the child is `kill -9` of a replica. Children are SIGKILLed on drop.
//!
//! Each [`Cluster`] has its own database (created with `psql`, dropped on drop) and NATS
//! `name_prefix`. `TRUNKLINE_SKIP_CLUSTER=1` skips the tests (printing SKIPPED); otherwise a
//! missing PostgreSQL or NATS fails them saying how to start it. A failing test prints the tail
//! of every replica's log (`RUST_LOG=info`, or `TRUNKLINE_CLUSTER_LOG`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_server::credentials::{ha1_md5, ha1_sha256, hash_password};
use signal_server::directory::{CallRecord, DatabaseOptions, NewAccount};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use trunkline_protocol::AccountKind;

use crate::common::{PHONES, REALM, WAIT, secret_of};

pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_USER: &str = "postgres";
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// The cluster timings of the contract (lease 1.5 s, renew and sweep 0.3 s).
pub const LEASE_TTL: Duration = Duration::from_millis(1_500);

/// Env var that makes the child test run a replica: the path of its TOML config.
pub const REPLICA_CHILD_ENV: &str = "TRUNKLINE_CLUSTER_REPLICA_CHILD";
/// The name of the ignored test every cluster test file defines to call [`replica_child_main`].
pub const REPLICA_CHILD_TEST: &str = "signal_server_replica_child_process";

/// Body of the `signal_server_replica_child_process` test: run one replica until killed (only
/// when started by [`Replica::spawn`]; otherwise nothing). Prints the `signal-server run`
/// "listening" line on stdout, logs on stderr.
pub fn replica_child_main() {
    let Ok(config) = std::env::var(REPLICA_CHILD_ENV) else { return };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("replica config {config}: {e}"));
    let cfg = signal_server::Config::from_toml(&text).unwrap_or_else(|e| panic!("replica config {config}: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.expect("bind the replica's listener");
        let addr = listener.local_addr().unwrap();
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "signal server listening on http://{addr} (ws: ws://{addr}/ws)");
            let _ = out.flush();
        }
        signal_server::run(cfg, listener, std::future::pending()).await.expect("the replica runs");
    });
}

/// `TRUNKLINE_SKIP_CLUSTER=1`: print SKIPPED and return false. Otherwise PostgreSQL, `psql`
/// and NATS must be there, or the test fails saying how to get them.
pub async fn services_available(test: &str) -> bool {
    if std::env::var("TRUNKLINE_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: TRUNKLINE_SKIP_CLUSTER=1");
        return false;
    }
    let up = |addr: String| async move {
        matches!(tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
    };
    let mut missing = vec![];
    if !up(format!("{PG_HOST}:{PG_PORT}")).await {
        missing.push(format!(
            "PostgreSQL on {PG_HOST}:{PG_PORT} with trust auth for user {PG_USER} (Debian: `pg_ctlcluster 15 main start`, \
             or `.ci/run`, which starts it)"
        ));
    } else if psql("postgres", "SELECT 1").await.is_err() {
        missing.push("`psql` (Debian: postgresql-client) able to reach it as user postgres".into());
    }
    if !up(NATS_ADDR.into()).await {
        missing.push(format!("NATS on {NATS_ADDR} (`nats-server -a 127.0.0.1 -p 4222 -js &`)"));
    }
    assert!(
        missing.is_empty(),
        "{test}: the cluster tests need {}. Start it, or set TRUNKLINE_SKIP_CLUSTER=1 to skip them.",
        missing.join(" and ")
    );
    true
}

/// Run one SQL statement with `psql` on database `db`; its unaligned output.
async fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", &PG_PORT.to_string(), "-U", PG_USER])
        .args(["-d", db, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A short random lowercase hex id (database and NATS names).
pub fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh database, dropped (WITH (FORCE): replicas may still hold connections) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create(name: &str) -> TestDb {
        psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create the test database: {e}"));
        TestDb { name: name.into(), url: format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}") }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("TRUNKLINE_KEEP_CLUSTER_DB").is_ok_and(|v| v == "1") {
            eprintln!("kept database {}", self.url);
            return;
        }
        let _ = std::process::Command::new("psql")
            .args(["-X", "-q", "-h", PG_HOST, "-p", &PG_PORT.to_string(), "-U", PG_USER, "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The accounts of `common::provision` (switches hq and branch, desk phones and browsers) in
/// the PostgreSQL directory, through the library (migrations run here, before any replica).
pub async fn provision_pg(url: &str) {
    let dir = signal_server::directory::open(url, &DatabaseOptions::default()).await.expect("open the PostgreSQL directory");
    for id in ["hq", "branch"] {
        dir.add_switch(id, &hash_password(&secret_of(id), 64, 1).unwrap()).await.expect("add switch");
    }
    for p in PHONES {
        dir.add_account(NewAccount {
            number: p.number.into(),
            display_name: format!("Phone {}", p.number),
            kind: if p.switch.is_some() { AccountKind::Deskphone } else { AccountKind::Browser },
            home_switch: p.switch.map(Into::into),
            password_hash: hash_password(p.password, 64, 1).unwrap(),
            ha1_md5: p.switch.map(|_| ha1_md5(p.number, REALM, p.password)),
            ha1_sha256: p.switch.map(|_| ha1_sha256(p.number, REALM, p.password)),
        })
        .await
        .expect("add account");
    }
}

/// `GET path` on `addr`: status and body, or `None` if nothing answered within `within`.
pub async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}

/// One replica process; SIGKILLed on drop.
pub struct Replica {
    pub node_id: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Replica {
    /// Start the child with `config` and wait for its "listening" line.
    pub async fn spawn(node_id: &str, config: &Path, log: &Path) -> Replica {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([REPLICA_CHILD_TEST, "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(REPLICA_CHILD_ENV, config)
            .env("RUST_LOG", std::env::var("TRUNKLINE_CLUSTER_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start the replica child");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // The test harness prints its own lines first ("running 1 test").
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(a) = l.split("listening on http://").nth(1).and_then(|r| r.split_whitespace().next()) {
                    return a.parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        // Keep the pipe drained: a full pipe would block the replica.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut r =
            Replica { node_id: node_id.into(), addr: "127.0.0.1:1".parse().unwrap(), log: log.into(), child: Some(child) };
        match addr {
            Some(a) => r.addr = a,
            None => panic!("replica {node_id} printed no listening line; its log:\n{}", r.log_tail(60)),
        }
        r
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The last `n` lines of the replica's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Is the process still running?
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: no goodbye to anyone, no lease released, nothing written.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("the replica runs");
        child.start_kill().expect("SIGKILL the replica");
        let status = tokio::time::timeout(WAIT, child.wait()).await.expect("the replica is gone").unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "replica {} killed by SIGKILL: {status:?}", self.node_id);
    }

    /// Poll `path` until it answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = http_get(self.addr, path, Duration::from_millis(500)).await.map(|(s, _)| s);
            if got == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {}: {path} is {got:?}, not {status}, after {within:?}; log:\n{}",
                self.node_id,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A gauge or counter from the replica's `/metrics` (the line starting with `series `).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = http_get(self.addr, "/metrics", Duration::from_secs(2)).await?;
        if status != 200 {
            return None;
        }
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// One open attempt as `call_attempts` holds it: (owner node, state, count).
pub type AttemptGroup = (String, String, i64);

/// What became of a dead replica's attempts ([`Cluster::watch_adoption`]).
#[derive(Debug)]
pub enum Adoption {
    /// Another replica (this one) took them over, at this moment.
    By(String, Instant),
    /// They were gone from `call_attempts` without being taken over.
    Ended,
}

async fn attempts(url: &str) -> Vec<AttemptGroup> {
    let store = signal_server::cluster::store::ClusterStore::connect(url, 5_000).await.expect("cluster store");
    store.attempts_by_owner().await.unwrap_or_else(|e| panic!("read call_attempts: {e}"))
}

/// Three (or `n`) ready replicas r1… on one fresh database and NATS prefix. Fields drop in
/// order: processes first, then the database they used.
pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub prefix: String,
    pub db: TestDb,
    dir: PathBuf,
}

impl Cluster {
    /// `None` when the cluster tests are skipped. Logs and configs go to `dir`.
    pub async fn start(test: &str, n: usize, dir: &Path) -> Option<Cluster> {
        if !services_available(test).await {
            return None;
        }
        let id = random_id();
        let db = TestDb::create(&format!("tl_gw_{id}")).await;
        provision_pg(&db.url).await;
        let mut cl = Cluster { replicas: vec![], prefix: format!("tlgw_{id}"), db, dir: dir.to_path_buf() };
        for i in 0..n {
            let node = Self::node(i);
            let config = dir.join(format!("{node}.toml"));
            std::fs::write(&config, cl.config_text(i)).unwrap();
            let r = Replica::spawn(&node, &config, &dir.join(format!("{node}.log"))).await;
            cl.replicas.push(r);
        }
        for r in &cl.replicas {
            r.wait_status("/readyz", 200, Duration::from_secs(15)).await;
        }
        Some(cl)
    }

    pub fn node(i: usize) -> String {
        format!("r{}", i + 1)
    }

    /// Replica `i`'s config: the brief's contract timings, push off (with PostgreSQL it would
    /// need a shared VAPID key, and no test here wakes anyone).
    pub fn config_text(&self, i: usize) -> String {
        format!(
            r#"listen = "127.0.0.1:0"
database_url = "{db}"
web_root = "{web}"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1

[push]
enabled = false

[cluster]
enabled = true
node_id = "{node}"
nats_url = "nats://{NATS_ADDR}"
name_prefix = "{prefix}"
lease_ttl_ms = {ttl}
lease_renew_ms = 300
sweep_interval_ms = 300
drain_timeout_secs = 5
"#,
            db = self.db.url,
            web = self.dir.join("no-web-root").display(),
            node = Self::node(i),
            prefix = self.prefix,
            ttl = LEASE_TTL.as_millis(),
        )
    }

    pub fn ws(&self, i: usize) -> String {
        self.replicas[i].ws_url()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.replicas[i].addr
    }

    /// The tails of every replica's log, for failure messages.
    pub fn logs(&self, n: usize) -> String {
        self.replicas.iter().map(|r| format!("--- replica {} log (tail)\n{}\n", r.node_id, r.log_tail(n))).collect()
    }

    /// Every row of `call_records` for `call_id`.
    pub async fn records_of(&self, call_id: &str) -> Vec<CallRecord> {
        let dir = signal_server::directory::open(&self.db.url, &DatabaseOptions::default()).await.expect("open the directory");
        let recs = dir.call_records(None, 10_000).await.expect("read call_records");
        recs.into_iter().filter(|r| r.call_id == call_id).collect()
    }

    /// What `call_attempts` holds, grouped by owner and state.
    pub async fn attempts(&self) -> Vec<AttemptGroup> {
        attempts(&self.db.url).await
    }

    /// Watch `call_attempts` (every 25 ms) from now until no attempt is `owner`'s any more.
    pub fn watch_adoption(&self, owner: &str) -> tokio::task::JoinHandle<Adoption> {
        let (url, owner) = (self.db.url.clone(), owner.to_string());
        tokio::spawn(async move {
            let store = signal_server::cluster::store::ClusterStore::connect(&url, 5_000).await.expect("cluster store");
            loop {
                let a = store.attempts_by_owner().await.unwrap_or_else(|e| panic!("read call_attempts: {e}"));
                if a.is_empty() {
                    return Adoption::Ended;
                }
                if let Some((node, _, _)) = a.iter().find(|(node, _, _)| *node != owner) {
                    return Adoption::By(node.clone(), Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(80));
        }
    }
}

/// A TCP load balancer in front of the replicas: each new connection goes to the next backend
/// of the list the test set (round robin), trying the others when a connect fails. Connections
/// it carries end when their backend's socket does (a killed replica).
pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    routed: Arc<Mutex<Vec<SocketAddr>>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: &[SocketAddr]) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends.to_vec()));
        let routed: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (backends, routed, conns) = (backends.clone(), routed.clone(), conns.clone());
            tokio::spawn(async move {
                let mut next = 0usize;
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let list = backends.lock().unwrap().clone();
                    let start = next;
                    next = next.wrapping_add(1);
                    let routed = routed.clone();
                    let task = tokio::spawn(async move {
                        for k in 0..list.len() {
                            let to = list[(start + k) % list.len()];
                            let Ok(Ok(mut out)) =
                                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(to)).await
                            else {
                                continue;
                            };
                            routed.lock().unwrap().push(to);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Balancer { addr, backends, routed, conns, accept }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Where new connections go from now on.
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        *self.backends.lock().unwrap() = backends.to_vec();
    }

    /// The backend of every connection carried so far, in order.
    pub fn routed(&self) -> Vec<SocketAddr> {
        self.routed.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Wait for `cond` until `deadline`; `false` if it never held.
pub async fn within<F, Fut>(deadline: Instant, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
