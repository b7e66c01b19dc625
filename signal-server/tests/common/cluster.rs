//! Black-box cluster harness (issue 11): real `signal-server` processes on this machine's
//! PostgreSQL (127.0.0.1:5432, trust auth, user postgres) and NATS with JetStream
//! (127.0.0.1:4222).
//!
//! Each [`Cluster`] gets its own PostgreSQL database (created here, dropped on drop) and its own
//! NATS `name_prefix`, so tests run in parallel on one NATS. Per replica there is a
//! [`ChaosProxy`] in front of NATS (pass / blackhole / reset) so a test can cut a replica from
//! NATS without closing its sockets. A round-robin [`LoadBalancer`] stands in for the TCP load
//! balancer: clients are placed on chosen replicas by connecting to them directly, and
//! reconnect through the balancer, which skips replicas whose `/readyz` is not 200 and tries
//! the next one when a connect fails. Every [`Peer`] writes what it receives into one
//! [`Journal`], so the invariants (exactly one record per attempt, never two outcomes for one
//! call at one party, no attempt left open) are checked at the end of every scenario.
//!
//! Processes are SIGKILLed when the [`Cluster`] drops, also when a test panics.
//! `TRUNKLINE_SKIP_CLUSTER=1` skips the cluster tests (printing SKIPPED); otherwise a missing
//! PostgreSQL or NATS fails them with how to start it. `TRUNKLINE_CLUSTER_LOG` sets the
//! replicas' `RUST_LOG` (default `info`); a failing wait prints the tail of the replica's log.
//!
//! The pieces every crate's cluster tests share (services check, [`TestDb`], [`Replica`],
//! [`LoadBalancer`], HTTP probes) are `trunkline_test_support::cluster`'s, re-exported here;
//! this file keeps what only these tests use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{ErrorCode, Outcome, ServerMsg};

pub use trunkline_test_support::cluster::{
    LEASE_TTL, Launch, LoadBalancer, NATS_ADDR, PG_ADMIN_URL, Replica, TestDb, http_probe, http_status, metric, random_id,
    services_available,
};
use trunkline_test_support::{Directory, eventually};

use super::{Client, KEY};
/// What a party may wait, beyond the lease, for a typed outcome after its owner died.
pub const AFTER_LEASE: Duration = Duration::from_secs(2);
/// Longest wait for anything a healthy cluster does promptly (messages, start-up).
pub const PROMPT: Duration = Duration::from_secs(5);

/// Per-test knobs; defaults follow the brief's contract.
#[derive(Clone, Debug)]
pub struct Opts {
    pub replicas: usize,
    /// `[cluster] enabled`; off: independent single servers on the one PostgreSQL database
    /// (checks the harness before cluster mode exists).
    pub cluster: bool,
    pub ring_timeout_ms: u64,
    pub key_ttl_ms: u64,
    pub switch_answer_timeout_ms: u64,
    pub direct_offer_timeout_ms: u64,
    pub drain_timeout_secs: u64,
    pub lease_ttl_ms: u64,
    /// How often a replica renews its lease and re-reads the live set.
    pub lease_renew_ms: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            replicas: 3,
            cluster: true,
            ring_timeout_ms: 3_000,
            key_ttl_ms: 1_000,
            switch_answer_timeout_ms: 3_000,
            direct_offer_timeout_ms: 3_000,
            drain_timeout_secs: 10,
            lease_ttl_ms: LEASE_TTL.as_millis() as u64,
            lease_renew_ms: 300,
        }
    }
}

/// One row of `call_records`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub switch_id: Option<String>,
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub trace: String,
}

/// One row of `call_attempts` (what is still open).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub call_id: String,
    pub owner_node: String,
    pub state: String,
    pub call_state: Option<String>,
}

/// How the replicas start: the `signal-server` binary built for these tests.
fn launch() -> Launch {
    Launch::Binary(env!("CARGO_BIN_EXE_signal-server").into())
}

// ---------------------------------------------------------------------------------------------
// Chaos proxy in front of NATS.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaos {
    /// Bytes flow both ways.
    Pass,
    /// Both sockets stay open, every byte is read and dropped: a silent partition (no FIN, no
    /// RST), which neither side notices until its own pings go unanswered.
    Blackhole,
    /// Every connection is reset (RST), new ones too.
    Reset,
}

/// A TCP proxy to `upstream` whose behaviour a test switches at any time.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Chaos>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Chaos::Pass);
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting the proxy ends them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        if let Ok((down, _)) = acc {
                            conns.spawn(chaos_pipe(down, upstream, rx.clone()));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        ChaosProxy { addr, mode, task }
    }

    pub fn set(&self, m: Chaos) {
        self.mode.send_replace(m);
    }

    pub fn mode(&self) -> Chaos {
        *self.mode.borrow()
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn chaos_pipe(mut down: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Chaos>) {
    if *mode.borrow() == Chaos::Reset {
        return reset(&down);
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else { return reset(&down) };
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // Reads are cancel safe; writes happen after the select, with no read pending.
        let (n, to_up) = tokio::select! {
            r = down.read(&mut a) => match r { Ok(0) | Err(_) => return, Ok(n) => (n, true) },
            r = up.read(&mut b) => match r { Ok(0) | Err(_) => return, Ok(n) => (n, false) },
            c = mode.changed() => {
                if c.is_err() || *mode.borrow() == Chaos::Reset {
                    reset(&down);
                    reset(&up);
                    return;
                }
                continue;
            }
        };
        match *mode.borrow() {
            Chaos::Pass => {}
            Chaos::Blackhole => continue,
            Chaos::Reset => {
                reset(&down);
                reset(&up);
                return;
            }
        }
        let ok = if to_up { up.write_all(&a[..n]).await.is_ok() } else { down.write_all(&b[..n]).await.is_ok() };
        if !ok {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parties: recording WebSocket clients.

/// Everything every party received, as (party name, message), across reconnects.
pub type Journal = Arc<Mutex<Vec<(String, ServerMsg)>>>;

/// What the next read brought.
#[derive(Debug)]
pub enum Next {
    Msg(ServerMsg),
    /// The server closed the connection, with this close code if it sent one.
    Closed(Option<u16>),
    Timeout,
}

/// A browser or a scripted switch on one WebSocket (the shared [`Client`]), recording what it
/// receives in the cluster's journal under its party name (a number or a switch id).
pub struct Peer {
    pub name: String,
    pub client: Client,
    pub session_token: Option<String>,
    journal: Journal,
    closed: Option<Option<u16>>,
}

impl Peer {
    /// Connect (no sign-in yet); `None` if the WebSocket cannot be opened (refused, 503).
    pub async fn try_connect(name: &str, url: &str, journal: &Journal) -> Option<Peer> {
        let (ws, _) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
        Some(Peer { name: name.into(), client: Client { ws }, session_token: None, journal: journal.clone(), closed: None })
    }

    pub async fn send(&mut self, text: &str) {
        self.client.ws.send(Message::Text(text.into())).await.unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next message (journaled), a close, or nothing within `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        if let Some(code) = self.closed {
            return Next::Closed(code);
        }
        let deadline = Instant::now() + within;
        loop {
            let Ok(item) = tokio::time::timeout_at(deadline, self.client.ws.next()).await else { return Next::Timeout };
            match item {
                Some(Ok(Message::Text(t))) => {
                    let m =
                        ServerMsg::decode(t.as_str()).unwrap_or_else(|e| panic!("{}: bad server message {t}: {e}", self.name));
                    self.journal.lock().unwrap().push((self.name.clone(), m.clone()));
                    return Next::Msg(m);
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return Next::Closed(code);
                }
                None | Some(Err(_)) => {
                    self.closed = Some(None);
                    return Next::Closed(None);
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message, which must come within `within`.
    pub async fn recv(&mut self, within: Duration) -> ServerMsg {
        match self.next(within).await {
            Next::Msg(m) => m,
            other => panic!("{}: expected a message within {within:?}, got {other:?}", self.name),
        }
    }

    /// Skip messages until `f` picks one, within `within`.
    pub async fn wait_for<T>(&mut self, what: &str, within: Duration, mut f: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        let mut skipped = vec![];
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())).await {
                Next::Msg(m) => match f(&m) {
                    Some(t) => return t,
                    None => skipped.push(m),
                },
                other => panic!("{}: waiting for {what} within {within:?}: {other:?}; skipped {skipped:?}", self.name),
            }
        }
    }

    pub async fn expect_outcome(&mut self, call_id: &str, within: Duration) -> (Outcome, Option<u64>) {
        self.wait_for(&format!("the outcome of {call_id}"), within, |m| match m {
            ServerMsg::Outcome { call_id: c, outcome, duration_ms } if c == call_id => Some((*outcome, *duration_ms)),
            _ => None,
        })
        .await
    }

    pub async fn expect_error(&mut self, code: ErrorCode, within: Duration) -> String {
        self.wait_for(&format!("error {code}"), within, |m| match m {
            ServerMsg::Error { code: c, message, .. } if *c == code => Some(message.clone()),
            _ => None,
        })
        .await
    }

    /// Round-trip a ping; everything that arrived before the pong.
    pub async fn sync(&mut self) -> Vec<ServerMsg> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut before = vec![];
        loop {
            match self.next(PROMPT).await {
                Next::Msg(ServerMsg::Pong) => return before,
                Next::Msg(m) => before.push(m),
                other => panic!("{}: waiting for the pong: {other:?}; before it: {before:?}", self.name),
            }
        }
    }

    /// Read until the server closes the connection; its close code.
    pub async fn expect_closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())).await {
                Next::Closed(code) => return code,
                Next::Msg(_) => continue,
                Next::Timeout => panic!("{}: the connection was not closed within {within:?}", self.name),
            }
        }
    }

    /// Browser sign-in with a password; keeps the session token.
    pub async fn login(&mut self, (number, password): (&str, &str)) -> Result<(), Next> {
        self.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"{password}"}}"#)).await;
        match self.next(PROMPT).await {
            Next::Msg(ServerMsg::Welcome { session_token, .. }) => {
                self.session_token = Some(session_token);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub async fn resume(&mut self, token: &str) -> Result<(), Next> {
        self.send(&format!(r#"{{"type":"resume","v":1,"token":"{token}"}}"#)).await;
        match self.next(PROMPT).await {
            Next::Msg(ServerMsg::Welcome { session_token, .. }) => {
                self.session_token = Some(session_token);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub async fn switch_auth(&mut self, who: (&str, &str)) -> Result<(), Next> {
        self.switch_auth_carrying(who, None).await
    }

    /// `switch_auth` listing the calls the gateway still carries, as a reconnecting gateway does.
    pub async fn switch_auth_carrying(&mut self, (id, secret): (&str, &str), calls: Option<&[&str]>) -> Result<(), Next> {
        let calls = calls.map(|c| format!(r#","calls":{}"#, serde_json::to_string(c).unwrap())).unwrap_or_default();
        self.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"{id}","secret":"{secret}"{calls}}}"#)).await;
        match self.next(PROMPT).await {
            Next::Msg(ServerMsg::SwitchWelcome { .. }) => Ok(()),
            other => Err(other),
        }
    }

    // Scripted switch gateway: what a real gateway sends, by hand.

    /// C12: accept a `callee_query` with this switch's name and a key.
    pub async fn accept_query(&mut self, call_id: &str) {
        let url = format!("switch:{}", self.name);
        self.send(&format!(
            r#"{{"type":"query_answer","call_id":"{call_id}","answer":{{"answer":"accept","url":"{url}","key":"{KEY}","expires_in_ms":30000}}}}"#
        ))
        .await;
    }

    /// `call_event` with a bare event (`key_accepted`, `ringing`, `connected`).
    pub async fn event(&mut self, call_id: &str, event: &str) {
        self.send(&format!(r#"{{"type":"call_event","call_id":"{call_id}","event":{{"event":"{event}"}}}}"#)).await;
    }

    /// `call_event ended`, with the switch's duration for a connected call.
    pub async fn ended(&mut self, call_id: &str, outcome: &str, duration_ms: Option<u64>) {
        let d = duration_ms.map(|d| format!(r#","duration_ms":{d}"#)).unwrap_or_default();
        self.send(&format!(
            r#"{{"type":"call_event","call_id":"{call_id}","event":{{"event":"ended","outcome":"{outcome}"{d}}}}}"#
        ))
        .await;
    }
}

/// Party names that saw more than one `outcome` for one call.
pub fn double_outcomes(journal: &Journal) -> Vec<(String, String, Vec<Outcome>)> {
    let mut seen: HashMap<(String, String), Vec<Outcome>> = HashMap::new();
    for (party, m) in journal.lock().unwrap().iter() {
        if let ServerMsg::Outcome { call_id, outcome, .. } = m {
            seen.entry((party.clone(), call_id.clone())).or_default().push(*outcome);
        }
    }
    let mut bad: Vec<_> = seen.into_iter().filter(|(_, v)| v.len() > 1).map(|((p, c), v)| (p, c, v)).collect();
    bad.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    bad
}

// ---------------------------------------------------------------------------------------------
// The cluster.

/// Fields drop in order: processes first, then the proxies and the balancer, then the
/// database they used.
pub struct Cluster {
    replicas: Vec<Replica>,
    pub proxies: Vec<ChaosProxy>,
    pub lb: LoadBalancer,
    pub journal: Journal,
    pub opts: Opts,
    pub prefix: String,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A provisioned database and `opts.replicas` running replicas (r1, r2, …), each ready;
    /// `None` when the cluster tests are skipped.
    pub async fn start(test: &str, opts: Opts) -> Option<Cluster> {
        if !services_available(test).await {
            return None;
        }
        let id = random_id();
        let db = TestDb::create(&format!("tl_t_{id}")).await;
        db.provision(&Directory::standard()).await;
        let dir = tempfile::tempdir().unwrap();
        // Every replica signs Web Push with the one key browsers subscribed with.
        let (_, pem) = signal_server::push::VapidKey::generate();
        std::fs::write(dir.path().join("vapid.pem"), pem).unwrap();
        let lb = LoadBalancer::start(if opts.cluster { "/readyz" } else { "/healthz" }).await;
        let upstream: SocketAddr = NATS_ADDR.parse().unwrap();
        let mut proxies = vec![];
        for _ in 0..opts.replicas {
            proxies.push(ChaosProxy::start(upstream).await);
        }
        let mut cl =
            Cluster { opts, prefix: format!("tl_{id}"), db, lb, journal: Journal::default(), proxies, replicas: vec![], dir };
        for i in 0..cl.opts.replicas {
            let node = Self::node(i);
            let config = cl.write_config(i);
            let r = Replica::spawn(&launch(), &node, &config, &cl.dir.path().join(format!("{node}.log"))).await;
            cl.lb.set_backend(&node, r.addr);
            cl.replicas.push(r);
        }
        for i in 0..cl.replicas.len() {
            cl.wait_ready(i, Duration::from_secs(15)).await;
        }
        Some(cl)
    }

    /// Node id of replica `i`: r1, r2, …
    pub fn node(i: usize) -> String {
        format!("r{}", i + 1)
    }

    /// The TOML config of replica `i` (its NATS URL is its chaos proxy).
    pub fn config_text(&self, i: usize) -> String {
        let o = &self.opts;
        let d = self.dir.path();
        let mut t = format!(
            r#"listen = "127.0.0.1:0"
database_url = "{db}"
web_root = "{web}"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1

[steering]
switch_answer_timeout_ms = {sa}
direct_offer_timeout_ms = {doff}
ring_timeout_ms = {ring}
key_ttl_ms = {key}

[push]
vapid_private_key_file = "{vapid}"
vapid_subject = "mailto:ops@example.com"
allow_loopback_endpoints = true
"#,
            db = self.db.url,
            web = d.join("no-web-root").display(),
            sa = o.switch_answer_timeout_ms,
            doff = o.direct_offer_timeout_ms,
            ring = o.ring_timeout_ms,
            key = o.key_ttl_ms,
            vapid = d.join("vapid.pem").display(),
        );
        if o.cluster {
            t += &format!(
                r#"
[cluster]
enabled = true
node_id = "{node}"
nats_url = "nats://{nats}"
name_prefix = "{prefix}"
lease_ttl_ms = {ttl}
lease_renew_ms = {renew}
sweep_interval_ms = 300
forward_timeout_ms = 2000
drain_timeout_secs = {drain}
"#,
                node = Self::node(i),
                nats = self.proxies[i].addr,
                prefix = self.prefix,
                ttl = o.lease_ttl_ms,
                renew = o.lease_renew_ms,
                drain = o.drain_timeout_secs,
            );
        }
        t
    }

    fn write_config(&self, i: usize) -> PathBuf {
        let p = self.dir.path().join(format!("{}.toml", Self::node(i)));
        std::fs::write(&p, self.config_text(i)).unwrap();
        p
    }

    pub fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i]
    }

    pub fn replica_mut(&mut self, i: usize) -> &mut Replica {
        &mut self.replicas[i]
    }

    pub fn ws(&self, i: usize) -> String {
        self.replicas[i].ws_url()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.replicas[i].addr
    }

    /// Wait until replica `i` is ready: `/readyz` 200 in cluster mode, `/healthz` otherwise.
    pub async fn wait_ready(&self, i: usize, within: Duration) {
        let path = if self.opts.cluster { "/readyz" } else { "/healthz" };
        self.replicas[i].wait_status(path, 200, within).await;
    }

    pub async fn readyz(&self, i: usize) -> Option<u16> {
        self.replicas[i].readyz().await
    }

    /// The value of one sample on replica `i`'s `/metrics`, e.g.
    /// `trunkline_cluster_presence_entries{loc="remote"}`; `None` if absent or unreachable.
    pub async fn metric(&self, i: usize, sample: &str) -> Option<f64> {
        metric(self.addr(i), sample, Duration::from_secs(1)).await
    }

    /// Wait until replica `i` sees exactly `n` parties signed in on other replicas (its
    /// presence view caught up): a call placed before that may take the offline (Web Push)
    /// path, as on one server for a callee that is not signed in yet.
    pub async fn wait_remote_presence(&self, i: usize, n: usize, within: Duration) {
        let sample = r#"trunkline_cluster_presence_entries{loc="remote"}"#;
        let deadline = Instant::now() + within;
        loop {
            let got = self.metric(i, sample).await;
            if got == Some(n as f64) {
                return;
            }
            assert!(Instant::now() < deadline, "{}: {sample} is {got:?}, not {n}, after {within:?}", Self::node(i));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` replica `i`.
    pub fn kill9(&mut self, i: usize) {
        self.replicas[i].kill9();
    }

    /// Start replica `i` again (same node id and config), as systemd would; waits until ready.
    pub async fn restart(&mut self, i: usize) {
        let node = Self::node(i);
        let config = self.write_config(i);
        let r = Replica::spawn(&launch(), &node, &config, &self.dir.path().join(format!("{node}.log"))).await;
        self.lb.set_backend(&node, r.addr);
        self.replicas[i] = r;
        self.wait_ready(i, Duration::from_secs(15)).await;
    }

    pub fn proxy(&self, i: usize) -> &ChaosProxy {
        &self.proxies[i]
    }

    // Parties.

    pub async fn connect(&self, name: &str, url: &str) -> Peer {
        Peer::try_connect(name, url, &self.journal).await.unwrap_or_else(|| panic!("{name}: WebSocket to {url} failed"))
    }

    /// Browser `who` signed in on replica `i`.
    pub async fn browser(&self, i: usize, who: (&str, &str)) -> Peer {
        let mut p = self.connect(who.0, &self.ws(i)).await;
        if let Err(e) = p.login(who).await {
            panic!("login of {} on {} failed: {e:?}; log:\n{}", who.0, Self::node(i), self.replicas[i].log_tail(40));
        }
        p
    }

    /// Scripted switch `who` signed in on replica `i`; its party name is the switch id.
    pub async fn switch(&self, i: usize, who: (&str, &str)) -> Peer {
        let mut p = self.connect(who.0, &self.ws(i)).await;
        if let Err(e) = p.switch_auth(who).await {
            panic!("switch_auth of {} on {} failed: {e:?}; log:\n{}", who.0, Self::node(i), self.replicas[i].log_tail(40));
        }
        p
    }

    /// Reconnect through the balancer and `resume`, retrying until `within` (as the web app's
    /// backoff does); the new connection.
    pub async fn resume_via_lb(&self, name: &str, token: &str, within: Duration) -> Peer {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(mut p) = Peer::try_connect(name, &self.lb.ws_url(), &self.journal).await {
                match p.resume(token).await {
                    Ok(()) => return p,
                    Err(e) => last = format!("{e:?}"),
                }
            } else {
                last = "connect failed".into();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} could not resume through the balancer within {within:?}: {last}");
    }

    /// A switch reconnecting through the balancer, as the gateway's cloud link does (listing
    /// the calls it still carries, if any).
    pub async fn switch_via_lb(&self, who: (&str, &str), carrying: Option<&[&str]>, within: Duration) -> Peer {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(mut p) = Peer::try_connect(who.0, &self.lb.ws_url(), &self.journal).await {
                match p.switch_auth_carrying(who, carrying).await {
                    Ok(()) => return p,
                    Err(e) => last = format!("{e:?}"),
                }
            } else {
                last = "connect failed".into();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("switch {} could not sign in through the balancer within {within:?}: {last}", who.0);
    }

    /// A browser signing in (password) through the balancer, retrying until `within`.
    pub async fn browser_via_lb(&self, who: (&str, &str), within: Duration) -> Peer {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(mut p) = Peer::try_connect(who.0, &self.lb.ws_url(), &self.journal).await {
                match p.login(who).await {
                    Ok(()) => return p,
                    Err(e) => last = format!("{e:?}"),
                }
            } else {
                last = "connect failed".into();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} could not sign in through the balancer within {within:?}: {last}", who.0);
    }

    // SQL.

    pub async fn records(&self) -> Vec<Record> {
        let rows =
            sqlx::query("SELECT call_id, caller, callee, switch_id, outcome, duration_ms, trace FROM call_records ORDER BY id")
                .fetch_all(&self.db.pool)
                .await
                .expect("read call_records");
        rows.iter()
            .map(|r| Record {
                call_id: r.get("call_id"),
                caller: r.get("caller"),
                callee: r.get("callee"),
                switch_id: r.get("switch_id"),
                outcome: r.get("outcome"),
                duration_ms: r.get("duration_ms"),
                trace: r.get("trace"),
            })
            .collect()
    }

    /// Wait until the record of `call_id` is written.
    pub async fn record(&self, call_id: &str, within: Duration) -> Record {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.records().await.into_iter().find(|r| r.call_id == call_id) {
                return r;
            }
            assert!(Instant::now() < deadline, "no record of {call_id} within {within:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn open_attempts(&self) -> Vec<Attempt> {
        let rows = sqlx::query("SELECT call_id, owner_node, state, call_state FROM call_attempts ORDER BY call_id")
            .fetch_all(&self.db.pool)
            .await
            .expect("read call_attempts");
        rows.iter()
            .map(|r| Attempt {
                call_id: r.get("call_id"),
                owner_node: r.get("owner_node"),
                state: r.get("state"),
                call_state: r.get("call_state"),
            })
            .collect()
    }

    /// Wait until the owner has written `call_id`'s attempt ahead (`call_attempts`), and its
    /// connect too if `connected`. Owners batch these writes for a few milliseconds (an owner
    /// killed within that window loses an attempt that cannot have connected in real life; a
    /// scripted switch connects within a millisecond), so a test kills the owner after this.
    pub async fn wait_attempt_written(&self, call_id: &str, connected: bool, within: Duration) {
        let what = format!("attempt {call_id} (connected: {connected}) written ahead");
        eventually(&what, within, || async move { self.attempt_row(call_id).await.is_some_and(|(c, _)| c || !connected) }).await;
    }

    /// Waits until the attempt row's stored trace holds `step`: later states are written
    /// behind the owner's work (a short gather window), so a test that kills the owner and then
    /// asserts on those steps must first see them stored.
    pub async fn wait_attempt_trace(&self, call_id: &str, step: &str, within: Duration) {
        let what = format!("step {step} of attempt {call_id} written ahead");
        eventually(&what, within, || async move {
            self.attempt_row(call_id).await.is_some_and(|(_, trace)| trace.split(',').any(|s| s == step))
        })
        .await;
    }

    /// `call_id`'s attempt row as stored: whether it connected, and its trace.
    async fn attempt_row(&self, call_id: &str) -> Option<(bool, String)> {
        sqlx::query(
            "SELECT connected_ms IS NOT NULL AS connected, coalesce(trace, '') AS trace FROM call_attempts WHERE call_id = $1",
        )
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await
        .expect("read call_attempts")
        .map(|r| (r.get("connected"), r.get("trace")))
    }

    /// Milliseconds left on `node`'s lease by the database's clock (negative: expired), or
    /// `None` if it has no row.
    pub async fn lease_left_ms(&self, node: &str) -> Option<f64> {
        let row = sqlx::query(
            "SELECT (EXTRACT(EPOCH FROM (lease_until - now())) * 1000)::float8 AS left_ms FROM cluster_nodes WHERE node_id = $1",
        )
        .bind(node)
        .fetch_optional(&self.db.pool)
        .await
        .expect("read cluster_nodes")?;
        Some(row.get("left_ms"))
    }

    /// `signal-server --config <replica i's config> ARGS…` (e.g. `cluster status`).
    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_signal-server"));
        cmd.arg("--config").arg(&self.replicas[i].config).args(args).env_remove("RUST_LOG").stdin(Stdio::null());
        cmd.output().expect("run signal-server")
    }

    // Invariants.

    /// After a scenario: (b) no attempt left open once the largest grace (`grace`) has passed,
    /// (a) exactly one record for each of `call_ids` and none twice, (c) no party saw two
    /// outcomes for one call. Then deletes this test's NATS streams (KV buckets).
    pub async fn finish(self, call_ids: &[&str], grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let open = self.open_attempts().await;
            if open.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "attempts still open {grace:?} after the scenario: {open:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let counts = sqlx::query("SELECT call_id, count(*) AS n FROM call_records GROUP BY call_id")
            .fetch_all(&self.db.pool)
            .await
            .expect("count call_records");
        let counts: HashMap<String, i64> = counts.iter().map(|r| (r.get("call_id"), r.get("n"))).collect();
        for c in call_ids {
            assert_eq!(counts.get(*c).copied().unwrap_or(0), 1, "records of {c}: {:?}", self.records().await);
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "call ids recorded more than once: {twice:?}");
        let doubles = double_outcomes(&self.journal);
        assert!(doubles.is_empty(), "parties that saw two outcomes for one call: {doubles:?}");
        self.cleanup_nats().await;
    }

    /// Delete the JetStream streams (KV buckets are streams `KV_<bucket>`) named with this
    /// test's prefix. Best effort: a leftover bucket only costs NATS memory.
    pub async fn cleanup_nats(&self) {
        if !self.opts.cluster {
            return;
        }
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(NATS_ADDR)).await else { return };
        // The JetStream API over core request/reply (the crate is built without `jetstream`).
        let api = |subject: String, body: &'static str| {
            let client = client.clone();
            async move {
                let reply =
                    tokio::time::timeout(Duration::from_secs(2), client.request(subject, body.into())).await.ok()?.ok()?;
                serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
            }
        };
        let Some(names) = api("$JS.API.STREAM.NAMES".into(), "{}").await else { return };
        let mine: Vec<String> = names["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .filter(|n| n.contains(&self.prefix))
            .map(String::from)
            .collect();
        for n in mine {
            let _ = api(format!("$JS.API.STREAM.DELETE.{n}"), "").await;
        }
    }
}

impl Drop for Cluster {
    /// A failing test shows what each replica logged (the temp dir goes with the cluster).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in &self.replicas {
                eprintln!("----- replica {} (pid {}) log tail -----\n{}", r.node_id, r.pid(), r.log_tail(40));
            }
        }
    }
}
