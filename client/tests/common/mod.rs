//! Fixtures for the client's integration tests: the real signal server in-process on a port-0
//! listener over a temporary SQLite directory.
#![allow(dead_code)]

use std::time::Duration;

use signal_server::Config;
use signal_server::credentials::{ha1_md5, ha1_sha256, hash_password};
use signal_server::directory::sqlite::SqliteDirectory;
use signal_server::directory::{Directory, NewAccount};
use trunkline_client::{Softphone, SoftphoneConfig};
use trunkline_protocol::AccountKind;

pub const WAIT: Duration = Duration::from_secs(10);

pub const ALICE: (&str, &str) = ("2001", "alice-password");
pub const BOB: (&str, &str) = ("2002", "bob-password");
pub const CAROL: (&str, &str) = ("2003", "carol-password");
/// A desk phone on switch `hq`.
pub const DESK: (&str, &str) = ("1001", "desk-password");
pub const HQ: (&str, &str) = ("hq", "hq-secret-0123456789");

pub struct Cloud {
    pub ws_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), signal_server::ServerError>>>,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// Browsers 2001–2003, switch `hq` with desk phone 1001; cheap password hashing; a ring
    /// timeout long enough for media tests.
    pub async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            database_url: format!("sqlite://{}", dir.path().join("trunkline.db").display()),
            web_root: dir.path().join("no-web-root"),
            ..Config::default()
        };
        cfg.auth.password_hash_memory_kib = 64;
        cfg.auth.password_hash_iterations = 1;
        cfg.steering.ring_timeout_ms = 20_000;
        cfg.steering.switch_answer_timeout_ms = 2_000;

        let directory = SqliteDirectory::open(&cfg.database_url).await.expect("open directory");
        directory.add_switch(HQ.0, &hash_password(HQ.1, 64, 1).unwrap()).await.expect("add switch");
        for (number, password, switch) in
            [(ALICE, None), (BOB, None), (CAROL, None), (DESK, Some(HQ.0))].map(|((n, p), s)| (n, p, s))
        {
            directory
                .add_account(NewAccount {
                    number: number.into(),
                    display_name: format!("User {number}"),
                    kind: if switch.is_some() { AccountKind::Deskphone } else { AccountKind::Browser },
                    home_switch: switch.map(Into::into),
                    password_hash: hash_password(password, 64, 1).unwrap(),
                    ha1_md5: switch.map(|_| ha1_md5(number, "trunkline", password)),
                    ha1_sha256: switch.map(|_| ha1_sha256(number, "trunkline", password)),
                })
                .await
                .expect("add account");
        }
        drop(directory);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(signal_server::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        Cloud { ws_url: format!("ws://{addr}/ws"), shutdown: Some(tx), task: Some(task), _dir: dir }
    }

    /// Sign a browser in (the listener is bound before the server runs, so this just queues
    /// until it serves; the deadline catches a server that failed to start).
    pub async fn phone(&self, (number, password): (&str, &str)) -> Softphone {
        let cfg = SoftphoneConfig::new(&self.ws_url, number, password);
        tokio::time::timeout(WAIT, Softphone::login(cfg)).await.expect("login in time").expect("login")
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let r = tokio::time::timeout(WAIT, self.task.take().unwrap()).await.expect("server stops in time");
        r.expect("server task").expect("server result");
    }
}
