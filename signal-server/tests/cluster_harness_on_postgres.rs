//! The cluster harness checked on its own, before (and independently of) cluster mode: two
//! single servers (no `[cluster]`) as child processes on one PostgreSQL database, the
//! round-robin balancer moving a browser to the survivor of a `kill -9` (its session is in
//! PostgreSQL, so `resume` works there), and the chaos proxy's three modes against an echo
//! server.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trunkline_protocol::{CallEvent, Outcome, ServerMsg};

#[tokio::test]
async fn two_servers_on_one_postgres_database_share_sessions_and_records_through_the_balancer() {
    let opts = Opts { replicas: 2, cluster: false, ..Opts::default() };
    let Some(mut cl) = Cluster::start("two_servers_on_one_postgres_database", opts).await else { return };

    // F1 on r1: alice and the branch switch on the same server.
    let mut branch = cl.switch(0, BRANCH).await;
    let mut alice = cl.browser(0, ALICE).await;
    alice.send(r#"{"type":"dial","call_id":"h1","to":"3001"}"#).await;
    assert!(matches!(branch.recv(PROMPT).await, ServerMsg::CalleeQuery { call_id, .. } if call_id == "h1"));
    branch.accept_query("h1").await;
    assert!(matches!(alice.recv(PROMPT).await, ServerMsg::Connect { .. }));
    branch.event("h1", "key_accepted").await;
    branch.event("h1", "connected").await;
    assert_eq!(alice.recv(PROMPT).await, ServerMsg::CallEvent { call_id: "h1".into(), event: CallEvent::Connected });
    branch.ended("h1", "connected", Some(4_321)).await;
    assert_eq!(alice.expect_outcome("h1", PROMPT).await, (Outcome::Connected, Some(4_321)));
    let rec = cl.record("h1", PROMPT).await;
    assert_eq!(
        (rec.outcome.as_str(), rec.duration_ms, rec.trace.as_str()),
        ("connected", Some(4_321), "A,C1,B4,B5,C11,C12,C13,C14,C15")
    );

    // kill -9 r1: the balancer skips it and alice resumes on r2 with her PostgreSQL session.
    let token = alice.session_token.clone().unwrap();
    cl.kill9(0);
    assert!(alice.expect_closed(PROMPT).await.is_none(), "a killed process sends no close frame");
    let mut alice = cl.resume_via_lb(ALICE.0, &token, PROMPT).await;
    assert!(alice.sync().await.is_empty());
    let mut bob = cl.browser(1, BOB).await;
    alice.send(r#"{"type":"dial","call_id":"h2","to":"2002"}"#).await;
    assert!(matches!(bob.recv(PROMPT).await, ServerMsg::Incoming { call_id, .. } if call_id == "h2"));
    alice.send(r#"{"type":"cancel","call_id":"h2"}"#).await;
    assert_eq!(alice.expect_outcome("h2", PROMPT).await.0, Outcome::Cancelled);
    assert_eq!(bob.expect_outcome("h2", PROMPT).await.0, Outcome::Cancelled);

    // The admin CLI reads the same database (once h2's record is written: records are
    // stored a few milliseconds after the outcome).
    cl.record("h2", PROMPT).await;
    let out = cl.cli(1, &["calls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"h1\"") && text.contains("\"h2\""), "{text}");
    drop((branch, bob, alice));
    cl.finish(&["h1", "h2"], PROMPT).await;
}

#[tokio::test]
async fn chaos_proxy_passes_blackholes_without_closing_and_resets() {
    // An echo server upstream.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = ChaosProxy::start(upstream).await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut b = [0u8; 16];
    c.write_all(b"ping").await.unwrap();
    let n = tokio::time::timeout(PROMPT, c.read(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b[..n], b"ping");

    // Blackhole: the write succeeds, nothing comes back, the socket stays open.
    proxy.set(Chaos::Blackhole);
    c.write_all(b"lost").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await.is_err(), "silence, not EOF");
    // A new connection in blackhole mode is accepted and silent too.
    let mut c2 = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c2.write_all(b"x").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), c2.read(&mut b)).await.is_err());

    // Healed: bytes flow again on the old connection.
    proxy.set(Chaos::Pass);
    c.write_all(b"back").await.unwrap();
    let n = tokio::time::timeout(PROMPT, c.read(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b[..n], b"back");

    // Reset: the open connection gets RST.
    proxy.set(Chaos::Reset);
    let r = tokio::time::timeout(PROMPT, c.read(&mut b)).await.unwrap();
    assert!(matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{r:?}");
}
