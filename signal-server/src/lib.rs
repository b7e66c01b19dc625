//! Trunkline signal server — the cloud server of patent CN110012057B.
//!
//! - [`steering`]: the sans-IO steering engine (steps A, B1–B6, C1–C3, C11–C13, F4 relay).
//! - [`directory`]: storage trait + SQLite (embedded default) and PostgreSQL (shared by replicas).
//! - [`cluster`]: cluster mode: replicas on PostgreSQL + NATS (membership, presence, forwarding).
//! - [`push`]: Web Push wake-ups for offline switchless browsers (RFC 8030/8291/8292).
//! - [`server`]: the thin tokio/axum driver: `/ws`, admin API, `/healthz`, `/metrics`, static web.
//! - [`net`]: accept loop, per-address connection limits, request-head deadlines, security headers.
//! - [`cli`]: the `signal-server` command line (run + admin commands).
//! - [`healthcheck`]: `signal-server healthcheck`, a container's `HEALTHCHECK` (`GET /healthz`).

pub mod admin;
pub mod admin_api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod healthcheck;
pub mod ice;
pub mod net;
pub mod push;
pub mod ratelimit;
pub mod server;
pub mod steering;

pub use config::Config;
pub use server::{ServerError, run};
