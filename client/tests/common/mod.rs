//! Fixtures for the client's integration tests: the workspace's `trunkline-test-support`
//! signal server (in-process, port 0, temp SQLite, the standard directory) with a ring timeout
//! long enough for media tests, and softphones signed in to it.
#![allow(dead_code, unused_imports)]

use trunkline_client::{Softphone, SoftphoneConfig};
pub use trunkline_test_support::{ALICE, BOB, HQ, WAIT};
use trunkline_test_support::{Account, Directory};

/// A third browser, added to the standard directory for these tests.
pub const CAROL: (&str, &str) = ("2003", "carol-password");

pub struct Cloud {
    pub ws_url: String,
    server: trunkline_test_support::Cloud,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// The standard directory (browsers 2001/2002, switches hq and branch with their desk
    /// phones) and [`CAROL`]; a ring timeout long enough for media tests.
    pub async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = trunkline_test_support::Cloud::config(dir.path());
        cfg.steering.ring_timeout_ms = 20_000;
        cfg.steering.switch_answer_timeout_ms = 2_000;
        let mut directory = Directory::standard();
        directory.accounts.push(Account { number: CAROL.0, password: CAROL.1, switch: None });
        trunkline_test_support::provision_with(&cfg.database_url, &directory).await;
        let server = trunkline_test_support::Cloud::start_with(cfg).await;
        Cloud { ws_url: server.ws_url.clone(), server, _dir: dir }
    }

    /// Sign a browser in.
    pub async fn phone(&self, (number, password): (&str, &str)) -> Softphone {
        let cfg = SoftphoneConfig::new(&self.ws_url, number, password);
        tokio::time::timeout(WAIT, Softphone::login(cfg)).await.expect("login in time").expect("login")
    }

    /// Graceful stop; the server must stop cleanly.
    pub async fn stop(self) {
        self.server.stop().await.expect("server result");
    }
}
