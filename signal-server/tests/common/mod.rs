//! Shared fixtures for the signal server's integration tests: the real server on a port-0
//! listener over a temp SQLite directory, and a minimal WebSocket JSON client.
#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use signal_server::Config;
use signal_server::credentials::hash_password;
use signal_server::directory::sqlite::SqliteDirectory;
use signal_server::directory::{Directory, NewAccount};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_protocol::{AccountKind, ServerMsg};

pub const WAIT: Duration = Duration::from_secs(10);

pub const ALICE: (&str, &str) = ("2001", "alice-password");
pub const BOB: (&str, &str) = ("2002", "bob-password");
pub const HQ: (&str, &str) = ("hq", "hq-secret-0123456789");
pub const BRANCH: (&str, &str) = ("branch", "branch-secret-0123456789");
/// A switch's address in `query_answer` / `direct_offer` / `connect` / `incoming`: its name.
pub const HQ_URL: &str = "switch:hq";
pub const BRANCH_URL: &str = "switch:branch";
pub const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

pub struct TestServer {
    pub addr: SocketAddr,
    pub ws_url: String,
    pub http: String,
    pub db_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), signal_server::ServerError>>>,
}

/// Fast test timeouts; everything else as shipped.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        database_url: format!("sqlite://{}", dir.join("trunkline.db").display()),
        web_root: dir.join("no-web-root"),
        ..Default::default()
    };
    c.steering.switch_answer_timeout_ms = 400;
    c.steering.direct_offer_timeout_ms = 400;
    c.steering.ring_timeout_ms = 1_500;
    c.steering.key_ttl_ms = 300;
    c.auth.password_hash_memory_kib = 64;
    c.auth.password_hash_iterations = 1;
    c
}

/// Accounts and switches most tests use: browsers 2001/2002, desk phones 1001/1002 on hq and
/// 3001 on branch.
pub async fn provision(db_url: &str) {
    let dir = SqliteDirectory::open(db_url).await.expect("open directory");
    for (id, secret) in [HQ, BRANCH] {
        dir.add_switch(id, &hash_password(secret, 64, 1).unwrap()).await.expect("add switch");
    }
    let acct = |number: &str, pw: &str, switch: Option<&str>| NewAccount {
        number: number.into(),
        display_name: format!("User {number}"),
        kind: if switch.is_some() { AccountKind::Deskphone } else { AccountKind::Browser },
        home_switch: switch.map(Into::into),
        password_hash: hash_password(pw, 64, 1).unwrap(),
        ha1_md5: switch.map(|_| signal_server::credentials::ha1_md5(number, "trunkline", pw)),
        ha1_sha256: switch.map(|_| signal_server::credentials::ha1_sha256(number, "trunkline", pw)),
    };
    for a in [
        acct(ALICE.0, ALICE.1, None),
        acct(BOB.0, BOB.1, None),
        acct("1001", "phone-1001", Some("hq")),
        acct("1002", "phone-1002", Some("hq")),
        acct("3001", "phone-3001", Some("branch")),
    ] {
        dir.add_account(a).await.expect("add account");
    }
}

impl TestServer {
    /// A provisioned server in a fresh temp dir (kept alive by the returned guard).
    pub async fn start() -> (TestServer, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = test_config(tmp.path());
        provision(&cfg.database_url).await;
        (TestServer::start_with(cfg).await, tmp)
    }

    pub async fn start_with(cfg: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let db_url = cfg.database_url.clone();
        let task = tokio::spawn(signal_server::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        let s = TestServer {
            addr,
            ws_url: format!("ws://{addr}/ws"),
            http: format!("http://{addr}"),
            db_url,
            shutdown: Some(tx),
            task: Some(task),
        };
        s.wait_healthy().await;
        s
    }

    /// Wait (with a deadline) until /healthz answers. The listener is bound before `run`
    /// starts, so the probe simply queues until the server serves; a server that failed to
    /// start is reported instead.
    pub async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            assert!(self.is_running(), "server exited during start-up");
            if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_millis(500), http_get(self.addr, "/healthz")).await
                && body.contains("ok")
            {
                return;
            }
        }
        panic!("server did not become healthy within {WAIT:?}");
    }

    /// Graceful stop; returns the server's result.
    pub async fn stop(mut self) -> Result<(), signal_server::ServerError> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap()).await.expect("server stops in time").unwrap()
    }

    /// Is the server task still running (it must survive hostile input)?
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url).await
    }

    pub async fn browser(&self, (number, password): (&str, &str)) -> Client {
        let mut c = self.client().await;
        c.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"{password}"}}"#)).await;
        match c.recv().await {
            ServerMsg::Welcome { number: n, .. } => assert_eq!(n, number),
            other => panic!("login of {number} failed: {other:?}"),
        }
        c
    }

    /// Sign in as switch `id`, as a gateway of this version does: no `direct_urls` (it listens
    /// for no caller; callers reach it over WebRTC through the cloud).
    pub async fn switch(&self, (id, secret): (&str, &str)) -> Client {
        let mut c = self.client().await;
        c.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"{id}","secret":"{secret}"}}"#)).await;
        match c.recv().await {
            ServerMsg::SwitchWelcome { switch_id, .. } => assert_eq!(switch_id, id),
            other => panic!("switch {id} auth failed: {other:?}"),
        }
        c
    }
}

/// Minimal HTTP/1.1 GET over a raw socket (no client crate needed for two probes).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await
}

pub async fn http_request(addr: SocketAddr, raw: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Client { ws }
    }

    /// Connect from a chosen loopback source address (any of 127.0.0.0/8), so the server sees
    /// another client address.
    pub async fn connect_from(url: &str, source: std::net::IpAddr) -> Client {
        let host = url.trim_start_matches("ws://").split('/').next().unwrap();
        let addr: SocketAddr = host.parse().expect("ws://ip:port/… URL");
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = sock.connect(addr).await.expect("tcp connects");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("websocket connects");
        Client { ws }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(m).await
    }

    /// Next protocol message, within [`WAIT`].
    pub async fn recv(&mut self) -> ServerMsg {
        self.try_recv().await.expect("connection closed while waiting for a message")
    }

    /// Next protocol message, or `None` if the server closed the connection.
    pub async fn try_recv(&mut self) -> Option<ServerMsg> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("no message within the deadline");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(ServerMsg::decode(t.as_str()).unwrap_or_else(|e| panic!("bad server message {t}: {e}")));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The connection must be closed by the server (after any pending messages).
    pub async fn expect_closed(&mut self) {
        if let Some(m) = self.try_recv().await {
            panic!("expected the connection to close, got {m:?}");
        }
    }

    /// Round-trip a ping: everything the server queued for us before it is returned.
    pub async fn sync(&mut self) -> Vec<ServerMsg> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut before = vec![];
        loop {
            match self.recv().await {
                ServerMsg::Pong => return before,
                m => before.push(m),
            }
        }
    }

    pub async fn expect_error(&mut self, code: trunkline_protocol::ErrorCode) -> String {
        match self.recv().await {
            ServerMsg::Error { code: c, message, .. } if c == code => message,
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    pub async fn expect_outcome(&mut self, call_id: &str) -> (trunkline_protocol::Outcome, Option<u64>) {
        loop {
            match self.recv().await {
                ServerMsg::Outcome { call_id: c, outcome, duration_ms } if c == call_id => return (outcome, duration_ms),
                ServerMsg::CallEvent { .. } | ServerMsg::Peer { .. } => continue,
                other => panic!("expected the outcome of {call_id}, got {other:?}"),
            }
        }
    }
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
