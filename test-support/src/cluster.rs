//! The cluster tests' shared pieces (issues 11 and 13): real `signal-server` replica processes
//! on this machine's PostgreSQL (127.0.0.1:5432, trust auth, user postgres) and NATS with
//! JetStream (127.0.0.1:4222).
//!
//! - [`services_available`]: `TRUNKLINE_SKIP_CLUSTER=1` skips a cluster test (printing
//!   SKIPPED); otherwise a missing PostgreSQL or NATS fails it saying how to start it.
//! - [`TestDb`]: one fresh PostgreSQL database per test, dropped at the end
//!   (`TRUNKLINE_KEEP_CLUSTER_DB=1` keeps it); [`TestDb::provision`] fills it before any replica
//!   starts. [`random_id`] names databases and NATS prefixes.
//! - [`Replica`]: one replica process, started by a [`Launch`] the caller picks (the
//!   `signal-server` binary, or its own test binary running [`REPLICA_CHILD_ENV`]'s config);
//!   SIGKILLed on drop. `TRUNKLINE_CLUSTER_LOG` sets its `RUST_LOG` (default `info`).
//! - [`LoadBalancer`]: a round-robin TCP balancer with health checks on a path.
//! - [`http_status`], [`http_probe`], [`metric`]: bounded HTTP probes; [`within`]: polling.
//!
//! Each crate keeps its own `Cluster` (what its tests start and check) in `tests/common/`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::directory::{Directory, provision_with};

/// The maintenance database, for `CREATE DATABASE` / `DROP DATABASE`.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const PG_ADDR: &str = "127.0.0.1:5432";
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// The cluster timings of the contract (lease 1.5 s, renew and sweep 0.3 s).
pub const LEASE_TTL: Duration = Duration::from_millis(1_500);

/// Env var that makes a test binary run a replica ([`Launch::ChildTest`]): the path of its
/// TOML config.
pub const REPLICA_CHILD_ENV: &str = "TRUNKLINE_CLUSTER_REPLICA_CHILD";

/// `TRUNKLINE_SKIP_CLUSTER=1`: print SKIPPED and return false. Otherwise PostgreSQL and NATS
/// must answer, or the test fails saying how to start them.
pub async fn services_available(test: &str) -> bool {
    if std::env::var("TRUNKLINE_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: TRUNKLINE_SKIP_CLUSTER=1");
        return false;
    }
    let up = |addr: &'static str| async move {
        matches!(tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await, Ok(Ok(_)))
    };
    let mut missing = vec![];
    if !up(PG_ADDR).await {
        missing.push(
            "PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres (Debian: `pg_ctlcluster 15 main start`; \
             or `.ci/run`, which starts it)",
        );
    }
    if !up(NATS_ADDR).await {
        missing.push("NATS with JetStream on 127.0.0.1:4222 (`nats-server -a 127.0.0.1 -p 4222 -js &`)");
    }
    assert!(
        missing.is_empty(),
        "{test}: the cluster tests need {}. Start it, or set TRUNKLINE_SKIP_CLUSTER=1 to skip them.",
        missing.join(" and ")
    );
    true
}

/// A short random lowercase hex id (database and NATS names).
pub fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: one database per test.

/// A fresh database, dropped (WITH (FORCE): replicas may still hold connections) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn create(name: &str) -> TestDb {
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {PG_ADMIN_URL}: {e}. Start it (trust auth for user postgres), or set TRUNKLINE_SKIP_CLUSTER=1")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = format!("{PG_SERVER}/{name}");
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.expect("connect to the test database");
        TestDb { name: name.into(), url, pool }
    }

    /// `directory` in this database, through the library's directory (migrations run here,
    /// so before any replica starts).
    pub async fn provision(&self, directory: &Directory) {
        provision_with(&self.url, directory).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("TRUNKLINE_KEEP_CLUSTER_DB").is_ok_and(|v| v == "1") {
            eprintln!("kept database {}", self.url);
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime: a runtime of its own on another thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP probes and polling.

/// `GET path` on `addr`: status and body, or `None` if nothing answered within `within`.
pub async fn http_probe(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let resp = String::from_utf8_lossy(&buf);
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}

/// The HTTP status of `GET path`, or `None` if nothing answered within `within`.
pub async fn http_status(addr: SocketAddr, path: &str, within: Duration) -> Option<u16> {
    http_probe(addr, path, within).await.map(|(status, _)| status)
}

/// The value of one sample on `addr`'s `/metrics` (the line starting with `sample `, e.g.
/// `trunkline_cluster_presence_entries{loc="remote"}`); `None` if absent or unreachable.
pub async fn metric(addr: SocketAddr, sample: &str, within: Duration) -> Option<f64> {
    let (status, body) = http_probe(addr, "/metrics", within).await?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll `cond` every 25 ms until `deadline`; `false` if it never held.
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

// ---------------------------------------------------------------------------------------------
// Load balancer.

struct Backend {
    node: String,
    addr: SocketAddr,
    ready: bool,
}

/// Round-robin TCP balancer over the replicas. A health task polls each backend's
/// `health_path` (`/readyz` in cluster mode) every 100 ms, as a real balancer's check would;
/// connections go to ready backends, trying the next one on a connect error. With no ready
/// backend it tries them all (fail open). Connections it carries end when their backend's
/// socket does (a killed replica) and when the balancer drops.
pub struct LoadBalancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Backend>>>,
    routed: Arc<Mutex<Vec<SocketAddr>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadBalancer {
    /// A balancer with no backends yet ([`LoadBalancer::set_backend`], [`LoadBalancer::set_backends`]).
    pub async fn start(health_path: &'static str) -> LoadBalancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends: Arc<Mutex<Vec<Backend>>> = Arc::default();
        let routed: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let health = {
            let backends = backends.clone();
            tokio::spawn(async move {
                loop {
                    let addrs: Vec<SocketAddr> = backends.lock().unwrap().iter().map(|b| b.addr).collect();
                    for a in addrs {
                        let ready = http_status(a, health_path, Duration::from_millis(300)).await == Some(200);
                        for b in backends.lock().unwrap().iter_mut().filter(|b| b.addr == a) {
                            b.ready = ready;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let accept = {
            let (backends, routed) = (backends.clone(), routed.clone());
            tokio::spawn(async move {
                let mut next = 0usize;
                // Connection tasks live in the set, so aborting the accept task ends them all.
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        acc = listener.accept() => {
                            let Ok((mut down, _)) = acc else { continue };
                            let candidates: Vec<SocketAddr> = {
                                let bs = backends.lock().unwrap();
                                let ready: Vec<SocketAddr> = bs.iter().filter(|b| b.ready).map(|b| b.addr).collect();
                                if ready.is_empty() { bs.iter().map(|b| b.addr).collect() } else { ready }
                            };
                            next = next.wrapping_add(1);
                            let start = next;
                            let routed = routed.clone();
                            conns.spawn(async move {
                                for i in 0..candidates.len() {
                                    let a = candidates[(start + i) % candidates.len()];
                                    if let Ok(Ok(mut up)) = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(a)).await {
                                        routed.lock().unwrap().push(a);
                                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                                        return;
                                    }
                                }
                                reset(&down);
                            });
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
            })
        };
        LoadBalancer { addr, backends, routed, tasks: vec![health, accept] }
    }

    /// Add or move (after a restart on a new port) the backend of `node`.
    pub fn set_backend(&self, node: &str, addr: SocketAddr) {
        let mut bs = self.backends.lock().unwrap();
        match bs.iter_mut().find(|b| b.node == node) {
            Some(b) => {
                b.addr = addr;
                b.ready = false;
            }
            None => bs.push(Backend { node: node.into(), addr, ready: false }),
        }
    }

    /// Where new connections go from now on: exactly these backends (named by address),
    /// as an operator editing the pool would. Backends that stay keep their health.
    pub fn set_backends(&self, addrs: &[SocketAddr]) {
        let mut bs = self.backends.lock().unwrap();
        let kept: Vec<Backend> = addrs
            .iter()
            .map(|&addr| {
                let ready = bs.iter().any(|b| b.addr == addr && b.ready);
                Backend { node: addr.to_string(), addr, ready }
            })
            .collect();
        *bs = kept;
    }

    /// The backend of every connection carried so far, in order.
    pub fn routed(&self) -> Vec<SocketAddr> {
        self.routed.lock().unwrap().clone()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Close with RST (zero linger), as a balancer with no backend does.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

// ---------------------------------------------------------------------------------------------
// Replica processes.

/// How a [`Replica`] process is started.
#[derive(Clone, Debug)]
pub enum Launch {
    /// `BIN --config CONFIG run`: the `signal-server` binary (its own tests pass
    /// `env!("CARGO_BIN_EXE_signal-server")`, defined only there).
    Binary(PathBuf),
    /// This test binary again, running only the ignored test of that name with
    /// [`REPLICA_CHILD_ENV`] set to the config; the test calls `signal_server::run`. For crates
    /// other than signal-server: a `signal-server` binary in the target folder may be stale
    /// (only the crate under test's binaries are rebuilt for it), this always runs the code
    /// under test.
    ChildTest(&'static str),
}

impl Launch {
    fn command(&self, config: &Path) -> Command {
        match self {
            Launch::Binary(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("--config").arg(config).arg("run");
                cmd
            }
            Launch::ChildTest(test) => {
                let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
                cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads", "1"]).env(REPLICA_CHILD_ENV, config);
                cmd
            }
        }
    }
}

/// One replica process; SIGKILLed on drop.
pub struct Replica {
    pub node_id: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Replica {
    /// Start the process with `config`, stderr appended to `log`, and wait for its
    /// "listening on http://…" line.
    pub async fn spawn(launch: &Launch, node_id: &str, config: &Path, log: &Path) -> Replica {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = launch.command(config);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        // The config file alone decides: no environment override from the test's shell.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TRUNKLINE_SIGNAL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", std::env::var("TRUNKLINE_CLUSTER_LOG").unwrap_or_else(|_| "info".into()));
        let mut child = cmd.spawn().expect("start the replica");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // A test harness prints its own lines first ("running 1 test").
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && !line.contains("listening on http://") {
                line.clear();
            }
            let _ = tx.send(line);
            // Keep the pipe drained: a full pipe would block the server.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let line = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(l)) => l,
            _ => String::new(),
        };
        let addr =
            line.split("listening on http://").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|a| a.parse().ok());
        let mut r = Replica {
            node_id: node_id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            config: config.into(),
            log: log.into(),
            child,
            exit: None,
        };
        match addr {
            Some(a) => r.addr = a,
            None => panic!("replica {node_id} printed no listening line ({line:?}); its log:\n{}", r.log_tail(60)),
        }
        r
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the replica's stderr log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Is the process still running?
    pub fn running(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit.is_none()
    }

    /// `kill -9`: no goodbye to anyone, no lease released, nothing written. A replica that
    /// was running must die of that signal.
    pub fn kill9(&mut self) {
        let was_running = self.running();
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        if was_running {
            use std::os::unix::process::ExitStatusExt;
            let signal = self.exit.and_then(|s| s.signal());
            assert_eq!(signal, Some(libc::SIGKILL), "replica {} killed by SIGKILL: {:?}", self.node_id, self.exit);
        }
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to replica {}", self.node_id);
    }

    /// Wait for the process to exit by itself, within `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "replica {} still runs after {within:?}; log:\n{}",
                self.node_id,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exit.unwrap()
    }

    pub async fn readyz(&self) -> Option<u16> {
        http_status(self.addr, "/readyz", Duration::from_millis(500)).await
    }

    pub async fn healthz(&self) -> Option<u16> {
        http_status(self.addr, "/healthz", Duration::from_millis(500)).await
    }

    /// Poll `path` until it answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = http_status(self.addr, path, Duration::from_millis(500)).await;
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

    /// A gauge or counter from the replica's `/metrics` ([`metric`], within 2 s).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric(self.addr, sample, Duration::from_secs(2)).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
