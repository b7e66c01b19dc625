//! Memory per idle authenticated WebSocket: sign `count` browsers in (`login` → `welcome`),
//! each on its own connection, keep them all open and silent, and compare the server's RSS
//! before and after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::ClientMsg;

use crate::procfs;
use crate::steer::connect;

pub struct Params {
    pub url: String,
    pub count: usize,
    pub first_number: u64,
    pub password: String,
    pub concurrency: usize,
    pub settle: Duration,
    pub server_pid: u32,
}

pub fn browser_number(first: u64, i: usize) -> String {
    (first + i as u64).to_string()
}

pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    let pid = p.server_pid;
    let rss0 = procfs::rss_bytes(pid).map_err(|e| format!("server pid {pid}: {e}"))?;
    let threads0 = procfs::threads(pid);
    let sem = Arc::new(Semaphore::new(p.concurrency));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(p.count);
    for i in 0..p.count {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let url = p.url.clone();
        let number = browser_number(p.first_number, i);
        let password = p.password.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let r = login(&url, &number, &password).await;
            drop(permit);
            match r {
                Ok(ws) => Some(ws),
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("bench: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut open = Vec::with_capacity(p.count);
    for t in tasks {
        if let Ok(Some(ws)) = t.await {
            open.push(ws);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_connected = procfs::rss_bytes(pid).map_err(|e| e.to_string())?;
    // Idle: nothing is sent. Waiting also lets the server retire the threads it used for
    // password hashing (tokio's blocking pool keeps idle threads for 10 s).
    tokio::time::sleep(p.settle).await;
    let rss1 = procfs::rss_bytes(pid).map_err(|e| e.to_string())?;
    let threads1 = procfs::threads(pid);
    let n = open.len() as u64;
    // Still connected? A server that dropped idle connections would look cheap. Ping each
    // one (after the RSS was read) and count the pongs.
    let mut pings = Vec::with_capacity(open.len());
    for mut ws in open {
        pings.push(tokio::spawn(async move {
            if ws.send(Message::Ping(Default::default())).await.is_err() {
                return false;
            }
            let pong = async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Pong(_))) => return true,
                        Some(Ok(_)) => continue,
                        _ => return false,
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), pong).await.unwrap_or(false)
        }));
    }
    let mut alive = 0u64;
    for t in pings {
        if let Ok(true) = t.await {
            alive += 1;
        }
    }
    let per = |after: u64| if n > 0 { (after as f64 - rss0 as f64) / n as f64 } else { f64::NAN };
    Ok(vec![
        ("connections".into(), n.to_string()),
        ("failed".into(), failed.load(Ordering::Relaxed).to_string()),
        ("alive_after_settle".into(), alive.to_string()),
        ("connect_secs".into(), format!("{connect_secs:.1}")),
        ("settle_secs".into(), format!("{:.0}", p.settle.as_secs_f64())),
        ("rss_before".into(), rss0.to_string()),
        ("rss_connected".into(), rss_connected.to_string()),
        ("rss_after".into(), rss1.to_string()),
        ("bytes_per_conn_at_connect".into(), format!("{:.0}", per(rss_connected))),
        ("bytes_per_conn".into(), format!("{:.0}", per(rss1))),
        ("server_threads_before".into(), threads0.to_string()),
        ("server_threads_after".into(), threads1.to_string()),
    ])
}

pub(crate) async fn login(url: &str, number: &str, password: &str) -> Result<crate::steer::Ws, String> {
    let mut ws = connect(url).await?;
    let msg = ClientMsg::Login { v: trunkline_protocol::PROTOCOL_VERSION, number: number.into(), password: password.into() };
    ws.send(Message::text(msg.encode())).await.map_err(|e| format!("{number}: send login: {e}"))?;
    let reply = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .map_err(|_| format!("{number}: no answer to login within 30 s"))?;
    match reply {
        Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"welcome""#) => Ok(ws),
        Some(Ok(m)) => Err(format!("{number}: login answered with {m}")),
        Some(Err(e)) => Err(format!("{number}: {e}")),
        None => Err(format!("{number}: connection closed after login")),
    }
}
