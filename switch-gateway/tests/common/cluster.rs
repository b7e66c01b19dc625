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
//! Each [`Cluster`] has its own database (dropped on drop) and NATS `name_prefix`.
//! `TRUNKLINE_SKIP_CLUSTER=1` skips the tests (printing SKIPPED); otherwise a missing
//! PostgreSQL or NATS fails them saying how to start it. A failing test prints the tail of
//! every replica's log (`RUST_LOG=info`, or `TRUNKLINE_CLUSTER_LOG`).
//!
//! The shared pieces (services check, [`TestDb`], [`Replica`], [`LoadBalancer`], probes,
//! [`within`]) are `trunkline_test_support::cluster`'s, re-exported here.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use signal_server::directory::{CallRecord, DatabaseOptions};
use tokio::time::Instant;
use trunkline_test_support::Directory;
pub use trunkline_test_support::cluster::{
    LEASE_TTL, Launch, LoadBalancer, NATS_ADDR, REPLICA_CHILD_ENV, Replica, TestDb, http_probe, http_status, metric, random_id,
    services_available, within,
};

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
        db.provision(&Directory::site()).await;
        let mut cl = Cluster { replicas: vec![], prefix: format!("tlgw_{id}"), db, dir: dir.to_path_buf() };
        for i in 0..n {
            let node = Self::node(i);
            let config = dir.join(format!("{node}.toml"));
            std::fs::write(&config, cl.config_text(i)).unwrap();
            let r =
                Replica::spawn(&Launch::ChildTest(REPLICA_CHILD_TEST), &node, &config, &dir.join(format!("{node}.log"))).await;
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
