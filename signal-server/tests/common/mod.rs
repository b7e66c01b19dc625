//! The signal server's test fixtures: the workspace's `trunkline-test-support` under the names
//! these tests use (the real server on a port-0 listener over a temp SQLite directory, a
//! minimal WebSocket JSON client), plus the cluster harness.
#![allow(dead_code, unused_imports)]

pub mod cluster;

use std::path::Path;

pub use trunkline_test_support::{
    ALICE, BOB, BRANCH, BRANCH_URL, Cloud as TestServer, HQ, HQ_URL, POLL, WAIT, WsClient as Client, http_get, http_request,
    provision, ws::temp_path,
};

pub const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Fast test timeouts; everything else as shipped.
pub fn test_config(dir: &Path) -> signal_server::Config {
    TestServer::test_config(dir)
}
