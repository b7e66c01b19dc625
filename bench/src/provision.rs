//! Provisioning through the admin REST API (`POST /api/switches`, `POST /api/accounts`) with a
//! bearer token: the switch pairs and their phones for the steering load, and the browser
//! accounts for the idle-connection test. An entry that already exists (409) is fine, so the
//! step can be repeated on the same database.
//!
//! HTTP/1.1 is spoken by hand over a few keep-alive connections: the benchmark needs nothing
//! more, and the bench crate stays free of an HTTP client stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::idle::browser_number;
use crate::steer::{branch_id, callee_number, caller_number, hq_id};

pub struct Params {
    pub addr: String,
    pub token: String,
    pub pairs: usize,
    pub switch_secret: String,
    pub phone_password: String,
    pub browsers: usize,
    pub first_browser: u64,
    pub browser_password: String,
    pub concurrency: usize,
}

pub(crate) struct Http {
    addr: String,
    token: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub(crate) fn new(addr: &str, token: &str) -> Http {
        Http { addr: addr.to_string(), token: token.to_string(), conn: None }
    }

    /// POST a JSON body; returns (status, body). Reconnects once if a kept-alive connection
    /// was closed by the server.
    async fn post(&mut self, path: &str, body: &str) -> Result<(u16, String), String> {
        for attempt in 0..2 {
            match self.try_post(path, body).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    self.conn = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    async fn try_post(&mut self, path: &str, body: &str) -> Result<(u16, String), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            s.set_nodelay(true).ok();
            self.conn = Some(BufReader::new(s));
        }
        let c = self.conn.as_mut().expect("just set");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        c.get_mut().write_all(req.as_bytes()).await.map_err(|e| format!("POST {path}: {e}"))?;
        let mut line = String::new();
        if c.read_line(&mut line).await.map_err(|e| format!("POST {path}: {e}"))? == 0 {
            return Err(format!("POST {path}: connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("POST {path}: bad status line {line:?}"))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            c.read_line(&mut line).await.map_err(|e| format!("POST {path}: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().map_err(|_| format!("POST {path}: bad content-length"))?;
                } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                } else if k == "transfer-encoding" {
                    return Err(format!("POST {path}: chunked answers are not expected"));
                }
            }
        }
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).await.map_err(|e| format!("POST {path}: {e}"))?;
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

pub(crate) async fn create(http: &mut Http, path: &str, body: String, what: &str) -> Result<bool, String> {
    let (status, answer) = http.post(path, &body).await?;
    match status {
        200..=299 => Ok(true),
        409 => Ok(false),
        _ => Err(format!("{what}: HTTP {status}: {answer}")),
    }
}

pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    let started = Instant::now();
    let mut http = Http::new(&p.addr, &p.token);
    let mut created = 0usize;
    for i in 1..=p.pairs {
        for (sw, phone) in [(hq_id(i), caller_number(i)), (branch_id(i), callee_number(i))] {
            let body = format!(r#"{{"id":{},"secret":{}}}"#, json_str(&sw), json_str(&p.switch_secret));
            created += create(&mut http, "/api/switches", body, &format!("switch {sw}")).await? as usize;
            let body = format!(
                r#"{{"number":{},"password":{},"switch":{}}}"#,
                json_str(&phone),
                json_str(&p.phone_password),
                json_str(&sw)
            );
            created += create(&mut http, "/api/accounts", body, &format!("phone {phone}")).await? as usize;
        }
    }
    // Browsers, spread over `concurrency` connections.
    let next = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(0));
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let (p, next, made) = (p.clone(), next.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::new(&p.addr, &p.token);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= p.browsers {
                    return Ok::<(), String>(());
                }
                let n = browser_number(p.first_browser, i);
                let body =
                    format!(r#"{{"number":{},"password":{},"kind":"browser"}}"#, json_str(&n), json_str(&p.browser_password));
                if create(&mut http, "/api/accounts", body, &format!("browser {n}")).await? {
                    made.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    created += made.load(Ordering::Relaxed);
    Ok(vec![("created".into(), created.to_string()), ("secs".into(), format!("{:.1}", started.elapsed().as_secs_f64()))])
}
