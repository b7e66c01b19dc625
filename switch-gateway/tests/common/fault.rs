//! Fixtures for the fault tests (issue 10): the signal server and the gateway as child
//! processes that can be `kill -9`ed and restarted on the same ports and state, and a TCP
//! forwarder on the gateway's cloud link that can cut the link without killing anything.
//!
//! The signal server child is this test binary run again with one ignored test selected
//! ([`server_child_main`]): it calls `signal_server::run` with the test's settings, the same
//! entry the `signal-server` binary uses, and always the code under test (a `signal-server`
//! binary next to the test binary may be stale: only this crate's binaries are rebuilt for it).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_server::directory::sqlite::SqliteDirectory;
use signal_server::directory::{CallRecord, Directory};

use crate::common::{WAIT, secret_of};
pub use trunkline_test_support::{bind_retry, free_tcp_addr};

/// Env var that makes the child test run the signal server: `addr|db_url|grace_secs`.
pub const SERVER_CHILD_ENV: &str = "TRUNKLINE_FAULT_SERVER_CHILD";
/// The name of the ignored test every fault test file defines to call [`server_child_main`].
pub const SERVER_CHILD_TEST: &str = "signal_server_child_process";

/// Body of the `signal_server_child_process` test: run the signal server until killed (only
/// when started by [`ServerChild`]; otherwise nothing).
pub fn server_child_main() {
    let Ok(spec) = std::env::var(SERVER_CHILD_ENV) else { return };
    let mut parts = spec.split('|');
    let addr: SocketAddr = parts.next().unwrap().parse().unwrap();
    let db_url = parts.next().unwrap().to_string();
    let grace: u64 = parts.next().unwrap().parse().unwrap();
    // Logs as the binary writes them (`RUST_LOG`, stderr): the tests read how calls ended.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut cfg = signal_server::Config {
            database_url: db_url,
            web_root: PathBuf::from("/nonexistent-web-root"),
            ..Default::default()
        };
        cfg.auth.password_hash_memory_kib = 64;
        cfg.auth.password_hash_iterations = 1;
        cfg.steering.switch_link_grace_secs = grace;
        let listener = bind_retry(addr).await;
        eprintln!("signal server child listening on {addr}");
        signal_server::run(cfg, listener, std::future::pending()).await.expect("signal server runs");
    });
}

/// The signal server as a child process on a fixed address and database.
pub struct ServerChild {
    pub addr: SocketAddr,
    pub ws_url: String,
    pub db_url: String,
    grace_secs: u64,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    starts: u32,
}

impl ServerChild {
    /// Provision the database in `dir` and start the server on a fresh port.
    pub async fn start(dir: &Path, grace_secs: u64) -> ServerChild {
        let db_url = format!("sqlite://{}", dir.join("cloud.db").display());
        crate::common::provision(&db_url).await;
        let addr = free_tcp_addr();
        let mut s = ServerChild {
            addr,
            ws_url: format!("ws://{addr}/ws"),
            db_url,
            grace_secs,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        s.restart().await;
        s
    }

    /// (Re)start on the same address and database; returns once `/healthz` answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.starts += 1;
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([SERVER_CHILD_TEST, "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(SERVER_CHILD_ENV, format!("{}|{}|{}", self.addr, self.db_url, self.grace_secs))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join(format!("server-{}.out", self.starts))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start the signal server child");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !healthz(self.addr).await {
            assert!(tokio::time::Instant::now() < deadline, "the signal server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("server-{}.log", self.starts))).unwrap_or_default()
    }

    /// The log line saying how call `call_id` ended, if it did.
    pub fn end_line(&self, call_id: &str) -> Option<String> {
        self.log_text().lines().find(|l| l.contains(call_id) && l.contains("call ended")).map(str::to_string)
    }

    /// `kill -9`: no outcome, no record, no close frame to anyone.
    pub async fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("SIGKILL the signal server");
        let status = tokio::time::timeout(WAIT, child.wait()).await.expect("the server is gone").unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    }
}

/// Does `GET /healthz` answer 200?
async fn healthz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await else {
        return false;
    };
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Calls the signal server at `addr` holds open (its `/metrics` gauge).
pub async fn calls_in_progress(addr: SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await.ok()?.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("trunkline_calls_in_progress "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The `switch-gateway` binary as a child process with a config file, restartable on the
/// same ports and state directory.
pub struct GatewayChild {
    pub id: String,
    pub sip: SocketAddr,
    pub state_dir: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    starts: u32,
}

impl GatewayChild {
    /// `extra`: more TOML lines for the config.
    pub async fn start(id: &str, cloud_ws: &str, dir: &Path, extra: &str) -> GatewayChild {
        // UDP and TCP on the same port (as phones expect), free for both right now.
        let mut port = None;
        for _ in 0..50 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = udp.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                port = Some(p);
                break;
            }
        }
        let port = port.expect("a port free for both UDP and TCP");
        let secret_file = dir.join(format!("{id}.secret"));
        std::fs::write(&secret_file, secret_of(id)).unwrap();
        let state_dir = dir.join(format!("{id}-state"));
        let config = dir.join(format!("{id}.toml"));
        let toml = format!(
            "id = \"{id}\"\nsecret_file = \"{}\"\ncloud_url = \"{cloud_ws}\"\nsip_listen = \"127.0.0.1:{port}\"\n\
             rtp_ports = \"{}\"\nstate_dir = \"{}\"\nring_timeout_secs = 10\n{extra}\n",
            secret_file.display(),
            free_rtp_range(),
            state_dir.display()
        );
        std::fs::write(&config, toml).unwrap();
        let mut g = GatewayChild {
            id: id.into(),
            sip: format!("127.0.0.1:{port}").parse().unwrap(),
            state_dir,
            config,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        g.restart();
        g
    }

    /// (Re)start from the same config and state directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the gateway is running");
        self.starts += 1;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switch-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join(format!("{}-{}.out", self.id, self.starts))).unwrap())
            .stderr(std::fs::File::create(self.log_path()).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start switch-gateway");
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-{}.log", self.id, self.starts))
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9`: no BYE, no `ended`, no goodbye to the cloud.
    pub async fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("SIGKILL the gateway");
        let status = tokio::time::timeout(WAIT, child.wait()).await.expect("the gateway is gone").unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    }

    /// Has `number` registered with the current run of the gateway (its log says so)?
    pub fn registered_now(&self, number: &str) -> bool {
        self.log_text().lines().any(|l| l.contains("registered") && l.contains(&format!("number={number}")))
    }
}

/// 40 consecutive UDP ports (even start) that are free right now.
pub fn free_rtp_range() -> String {
    use std::hash::{BuildHasher, Hasher};
    for i in 0..200u32 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id() ^ i);
        let base = (30000 + (h.finish() % 15000) as u16) & !1;
        if (base..base + 40).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return format!("{}-{}", base, base + 39);
        }
    }
    panic!("no free RTP range");
}

/// A TCP forwarder in front of the signal server for the gateway's cloud link: [`cut`]
/// closes the connections it carries (a network blip), new ones go through again.
///
/// [`cut`]: LinkCutter::cut
pub struct LinkCutter {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl LinkCutter {
    pub async fn start(to: SocketAddr) -> LinkCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        LinkCutter { addr, conns, accept }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drop every connection through it now (both sockets close, no WebSocket close frame).
    pub fn cut(&self) -> usize {
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}

impl Drop for LinkCutter {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Every call record in the database, newest first.
pub async fn records(db_url: &str) -> Vec<CallRecord> {
    let dir = SqliteDirectory::open(db_url).await.unwrap();
    let recs = dir.call_records(None, 1000).await.unwrap();
    dir.close().await;
    recs
}

/// The records of `call_id`, waiting (with a deadline) for at least one.
pub async fn records_of(db_url: &str, call_id: &str, within: Duration) -> Vec<CallRecord> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mine: Vec<CallRecord> = records(db_url).await.into_iter().filter(|r| r.call_id == call_id).collect();
        if !mine.is_empty() {
            return mine;
        }
        assert!(tokio::time::Instant::now() < deadline, "no record of call {call_id} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for `cond` until `deadline`; `false` if it never held.
pub async fn within<F, Fut>(deadline: tokio::time::Instant, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
