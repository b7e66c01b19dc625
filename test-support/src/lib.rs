//! Shared fixtures for Trunkline's integration tests, so every crate starts a signal server,
//! provisions it, talks WebSocket to it and waits for conditions the same way.
//!
//! - [`cloud::Cloud`]: the real signal server in-process (the library's `run`) on a port-0
//!   listener over a temporary SQLite directory; stop, restart on the same address.
//! - [`directory`]: the test directory ([`directory::provision`]: browsers, desk phones,
//!   switches and their passwords) and the site directory the gateway tests use.
//! - [`ws::WsClient`]: a WebSocket JSON client for browsers and scripted switches
//!   ([`cloud::Cloud::browser`], [`cloud::Cloud::switch`]), every wait bounded by [`WAIT`].
//! - [`wait`]: [`eventually`] / [`wait_until`], polling a condition with a deadline (never a
//!   sleep standing in for synchronisation).
//! - [`ports`]: free loopback ports (UDP+TCP, SIP pairs, RTP ranges).
//! - [`baresip`]: baresip 1.0 as a real desk phone, driven over `ctrl_tcp`.
//! - [`audio`]: WAV reading and tone checks (Goertzel) for what a phone heard.
//!
//! - [`cluster`] (feature `cluster`): per-test PostgreSQL databases, `signal-server` replica
//!   processes, a health-checked TCP load balancer, HTTP probes, for the cluster tests.
//!
//! Feature `cloud` (default) brings the server, the directory and the WebSocket client; the
//! rest has no dependency on the signal server.

pub mod audio;
pub mod baresip;
pub mod ports;
pub mod wait;

#[cfg(feature = "cloud")]
pub mod cloud;
#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cloud")]
pub mod directory;
#[cfg(feature = "cloud")]
pub mod ws;

pub use ports::{free_tcp_addr, free_tcp_port, free_udp_port};
pub use wait::{POLL, WAIT, eventually, wait_until};

#[cfg(feature = "cloud")]
pub use cloud::{Cloud, bind_retry};
#[cfg(feature = "cloud")]
pub use directory::{
    ALICE, Account, BOB, BRANCH, BRANCH_URL, DESK_PHONES, Directory, HQ, HQ_URL, REALM, SITE_PHONES, provision, provision_with,
    secret_of,
};
#[cfg(feature = "cloud")]
pub use ws::{WsClient, http_get, http_request};
