//! The signal server in-process: `signal_server::run` (the binary's entry) on a loopback
//! listener the test binds, over a SQLite directory in a temp folder.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use signal_server::{Config, ServerError};
use tokio::task::{JoinError, JoinHandle};
use trunkline_protocol::ServerMsg;

use crate::wait::WAIT;
use crate::ws::{WsClient, http_get};

/// A running signal server.
pub struct Cloud {
    pub addr: SocketAddr,
    /// `ws://<addr>/ws`
    pub ws_url: String,
    /// `http://<addr>`
    pub http: String,
    pub db_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Cloud {
    /// Settings as shipped, except: the database `trunkline.db` in `dir`, no web root, and
    /// cheap password hashing (sign-ins in microseconds).
    pub fn config(dir: &Path) -> Config {
        let mut c = Config {
            database_url: format!("sqlite://{}", dir.join("trunkline.db").display()),
            web_root: dir.join("no-web-root"),
            ..Default::default()
        };
        c.auth.password_hash_memory_kib = 64;
        c.auth.password_hash_iterations = 1;
        c
    }

    /// [`Cloud::config`] with fast steering timeouts (switch answer and direct offer 400 ms,
    /// ringing 1.5 s, keys 300 ms), so timeout paths are tested in well under a second.
    pub fn test_config(dir: &Path) -> Config {
        let mut c = Self::config(dir);
        c.steering.switch_answer_timeout_ms = 400;
        c.steering.direct_offer_timeout_ms = 400;
        c.steering.ring_timeout_ms = 1_500;
        c.steering.key_ttl_ms = 300;
        c
    }

    /// A server with the standard directory ([`crate::provision`]) and [`Cloud::test_config`]
    /// in a fresh temp dir; keep the returned guard alive as long as the server.
    pub async fn start() -> (Cloud, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Self::test_config(tmp.path());
        crate::provision(&cfg.database_url).await;
        (Cloud::start_with(cfg).await, tmp)
    }

    /// Run `cfg` (its database already provisioned, or empty) on a fresh loopback port;
    /// returns once `/healthz` answers.
    pub async fn start_with(cfg: Config) -> Cloud {
        Self::start_at(cfg, "127.0.0.1:0".parse().unwrap()).await
    }

    /// As [`Cloud::start_with`] on `addr` (a restart on the address the gateways know).
    pub async fn start_at(cfg: Config, addr: SocketAddr) -> Cloud {
        let listener = bind_retry(addr).await;
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let db_url = cfg.database_url.clone();
        let task = tokio::spawn(signal_server::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        let s = Cloud {
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

    /// Graceful stop within [`WAIT`] (panics otherwise); returns the server's result.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.stop_within(WAIT).await.expect("server stops in time").unwrap()
    }

    /// Graceful stop; `None` if the server was still running after `within` (it is then left
    /// to the runtime's shutdown), else how its task ended.
    pub async fn stop_within(mut self, within: Duration) -> Option<Result<Result<(), ServerError>, JoinError>> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(within, self.task.take().unwrap()).await.ok()
    }

    /// Is the server task still running (it must survive hostile input)?
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A WebSocket to `/ws`, not signed in.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url).await
    }

    /// A browser signed in as `(number, password)`.
    pub async fn browser(&self, (number, password): (&str, &str)) -> WsClient {
        let mut c = self.client().await;
        c.send(&format!(r#"{{"type":"login","v":1,"number":"{number}","password":"{password}"}}"#)).await;
        match c.recv().await {
            ServerMsg::Welcome { number: n, .. } => assert_eq!(n, number),
            other => panic!("login of {number} failed: {other:?}"),
        }
        c
    }

    /// A scripted switch: signed in as switch `id`, as a gateway of this version does (no
    /// `direct_urls`: it listens for no caller; callers reach it over WebRTC through the
    /// cloud). The test then plays the switch's side of the protocol message by message.
    pub async fn switch(&self, (id, secret): (&str, &str)) -> WsClient {
        let mut c = self.client().await;
        c.send(&format!(r#"{{"type":"switch_auth","v":1,"switch_id":"{id}","secret":"{secret}"}}"#)).await;
        match c.recv().await {
            ServerMsg::SwitchWelcome { switch_id, .. } => assert_eq!(switch_id, id),
            other => panic!("switch {id} auth failed: {other:?}"),
        }
        c
    }
}

/// Bind a TCP listener on `addr`, retrying for up to [`WAIT`]: binding the same port right
/// after a stop can race the old socket's close.
pub async fn bind_retry(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}
