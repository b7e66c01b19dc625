//! WebSocket and HTTP abuse (issue 10), attacked over real sockets against the real server:
//! thousands of idle sockets from one address, slowloris request heads, silent WebSockets,
//! unanswered pings, oversized frames, deeply nested JSON, admin token guessing, weak token
//! files, and the softphone's security headers. No sleep is used to wait for an outcome: every
//! wait is on a condition with a deadline.

mod common;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::ErrorCode;

const ADMIN_TOKEN: &str = "abuse-test-admin-token-0123456789abcdef";
const OTHER: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Raise the soft open-file limit to the hard one; returns the soft limit now in force.
fn raise_nofile() -> u64 {
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max.min(65_536), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

async fn tcp_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source, 0)).unwrap();
    sock.connect(to).await.expect("tcp connects")
}

/// One HTTP/1.1 request from `source`; the whole answer (the server closes: `Connection: close`).
async fn http_from(source: IpAddr, to: SocketAddr, raw: &str) -> String {
    let mut s = tcp_from(source, to).await;
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("answer within the deadline").unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {resp:?}"))
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next().unwrap();
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read until the server's Close frame; its code and reason (`None`: closed without one).
async fn close_frame(c: &mut Client) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.expect("closed within the deadline") {
            Some(Ok(Message::Close(Some(f)))) => return Some((u16::from(f.code), f.reason.to_string())),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn server_with(f: impl FnOnce(&mut signal_server::Config)) -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    cfg.admin_token_file = Some(token_file);
    f(&mut cfg);
    provision(&cfg.database_url).await;
    (TestServer::start_with(cfg).await, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_are_refused_past_the_limit_while_healthz_answers_others() {
    let nofile = raise_nofile();
    // As many as the file limit allows (the client and the server share this process).
    let attack = 5_000usize.min(nofile.saturating_sub(1_000) as usize);
    assert!(attack > 500, "open-file limit {nofile} too low for this test");
    // Default per-address limit; a long head deadline so the held sockets stay for the count.
    let (srv, _tmp) = server_with(|c| c.limits.request_header_timeout_secs = 600).await;
    let limit = signal_server::Config::default().limits.max_unauthenticated_per_address;
    let addr = srv.addr;

    // 5,000 idle sockets from 127.0.0.1, none sending a byte.
    let mut socks = tokio::task::spawn_blocking(move || {
        (0..attack)
            .map(|_| {
                let s = std::net::TcpStream::connect(addr).expect("the kernel completes every handshake");
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    // Meanwhile another address is served.
    let healthz = http_from(ip(OTHER), addr, &get("/healthz", None)).await;
    assert!(healthz.starts_with("HTTP/1.1 200") && healthz.ends_with("ok\n"), "{healthz}");

    // All but `limit` are closed by the server at accept.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut open = vec![true; socks.len()];
    loop {
        for (s, o) in socks.iter_mut().zip(open.iter_mut()).filter(|(_, o)| **o) {
            match s.read(&mut [0u8; 1]) {
                Ok(0) => *o = false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *o = false,
                Ok(_) => panic!("the server sent bytes to a socket that asked nothing"),
            }
        }
        let still = open.iter().filter(|o| **o).count();
        if still == limit {
            break;
        }
        assert!(Instant::now() < deadline, "{still} sockets still open; expected exactly {limit}");
        // Polling interval of the scan, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let h = http_from(ip(OTHER), addr, &get("/healthz", None)).await;
        assert!(h.ends_with("ok\n"), "{h}");
    }
    // The `limit` that were kept are real, served connections.
    let kept: Vec<_> = socks.into_iter().zip(open).filter(|(_, o)| *o).map(|(s, _)| s).collect();
    assert_eq!(kept.len(), limit);
    eprintln!(
        "FIGURE unauthenticated_connections_per_address {} connections | {attack} idle TCP sockets from one address; the rest closed at accept, /healthz answered meanwhile",
        kept.len()
    );
    let answers = tokio::task::spawn_blocking(move || {
        kept.into_iter()
            .map(|mut s| {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.write_all(get("/healthz", None).as_bytes()).unwrap();
                let mut buf = String::new();
                s.read_to_string(&mut buf).unwrap();
                buf
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(answers.iter().all(|a| a.ends_with("ok\n")), "every kept socket is served");
    // Those are closed now: the address may connect again.
    let again = http_from(ip("127.0.0.1"), addr, &get("/healthz", None)).await;
    assert!(again.ends_with("ok\n"), "{again}");
    let metrics = http_from(ip(OTHER), addr, &get("/metrics", None)).await;
    assert!(metrics.contains("trunkline_connections_refused_total{reason=\"per_address\"}"), "{metrics}");
    assert!(srv.is_running());
}

#[tokio::test]
async fn signed_in_websockets_do_not_count_against_the_address_limit() {
    let (srv, _tmp) = server_with(|c| {
        c.limits.max_unauthenticated_per_address = 3;
        c.limits.request_header_timeout_secs = 600;
    })
    .await;
    // Ten signed-in browsers and switches from one address: each counted only until sign-in.
    let mut signed_in = vec![srv.browser(ALICE).await, srv.browser(BOB).await, srv.switch(HQ).await, srv.switch(BRANCH).await];
    for _ in 0..3 {
        signed_in.push(srv.browser(ALICE).await);
    }
    // Three idle sockets fill the address's budget; the fourth is closed at accept.
    let mut idle = vec![];
    for _ in 0..3 {
        idle.push(tcp_from(ip("127.0.0.1"), srv.addr).await);
    }
    let mut fourth = tcp_from(ip("127.0.0.1"), srv.addr).await;
    let n = tokio::time::timeout(WAIT, fourth.read(&mut [0u8; 16])).await.expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Signed-in connections still work; another address is not affected.
    assert!(signed_in.last_mut().unwrap().sync().await.is_empty());
    let h = http_from(ip(OTHER), srv.addr, &get("/healthz", None)).await;
    assert!(h.ends_with("ok\n"));
    // One idle socket goes: room for one more.
    drop(idle.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = tcp_from(ip("127.0.0.1"), srv.addr).await;
        s.write_all(get("/healthz", None).as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        if String::from_utf8_lossy(&buf).ends_with("ok\n") {
            break;
        }
        // The server notices the dropped socket asynchronously.
        assert!(Instant::now() < deadline, "the freed slot was not reused");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn slowloris_request_heads_and_silent_sockets_are_closed_at_the_deadline() {
    let (srv, _tmp) = server_with(|c| c.limits.request_header_timeout_secs = 1).await;
    // A partial request head, never finished.
    let mut partial = tcp_from(ip("127.0.0.1"), srv.addr).await;
    partial.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // A socket that says nothing at all.
    let mut silent = tcp_from(ip("127.0.0.1"), srv.addr).await;
    // A head trickled one byte at a time: the deadline is for the whole head, not per byte.
    let mut trickle = tcp_from(ip("127.0.0.1"), srv.addr).await;
    let trickled = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter() {
            if trickle.write_all(&[*b]).await.is_err() {
                return true;
            }
            // The attacker's pace (one byte per 50 ms: ~10 s for the head), not a synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
            match trickle.try_read(&mut [0u8; 512]) {
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
        false
    });
    for (name, s) in [("partial head", &mut partial), ("silent", &mut silent)] {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap_or_else(|_| panic!("{name}: still open"));
        // Closed, with at most a 408 said first; never a served request.
        let text = String::from_utf8_lossy(&buf);
        assert!(r.is_err() || buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{name}: {text}");
    }
    assert!(trickled.await.unwrap(), "the trickled head was cut before it completed");
    // The server answers everyone else all along.
    let h = http_from(ip(OTHER), srv.addr, &get("/healthz", None)).await;
    assert!(h.ends_with("ok\n"));
}

#[tokio::test]
async fn silent_websocket_is_closed_at_the_sign_in_deadline_with_4408() {
    let (srv, _tmp) = server_with(|c| c.limits.auth_timeout_secs = 1).await;
    let mut idle = srv.client().await;
    let why = idle.expect_error(ErrorCode::NotAuthenticated).await;
    assert!(why.contains("sign-in deadline"), "{why}");
    let (code, reason) = close_frame(&mut idle).await.expect("a close frame");
    assert_eq!(code, signal_server::server::CLOSE_SIGN_IN_DEADLINE);
    assert!(reason.starts_with("sign-in deadline"), "{reason}");
    // A socket that signs in in time stays.
    let mut alice = srv.browser(ALICE).await;
    assert!(alice.sync().await.is_empty());
}

/// A minimal WebSocket client on a raw socket that never answers pings.
async fn deaf_websocket(srv: &TestServer) -> TcpStream {
    let mut s = tcp_from(ip("127.0.0.1"), srv.addr).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await.unwrap().unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let login = format!(r#"{{"type":"login","v":1,"number":"{}","password":"{}"}}"#, ALICE.0, ALICE.1);
    s.write_all(&masked_text_frame(login.as_bytes())).await.unwrap();
    s
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65_536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Next server frame: (opcode, payload).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.ok()?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[0] & 0x0f, p))
}

#[tokio::test]
async fn signed_in_websocket_that_answers_no_ping_is_closed_with_4409() {
    let (srv, _tmp) = server_with(|c| {
        c.limits.ws_ping_interval_secs = 1;
        c.limits.ws_pong_timeout_secs = 1;
    })
    .await;
    // A client that reads (and so answers pings, as browsers and tungstenite do) stays: it
    // sees several pings and is still served after them.
    let mut alive = srv.browser(BOB).await;
    let mut pings = 0;
    while pings < 4 {
        match tokio::time::timeout(WAIT, alive.ws.next()).await.expect("pings keep coming") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(alive.sync().await.is_empty());
    // It keeps reading (so answering) while the deaf one is watched.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return alive,
                m = alive.ws.next() => assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}"),
            }
        }
    });
    // A signed-in client that never answers: pings, then close 4409.
    let mut deaf = deaf_websocket(&srv).await;
    let (mut welcomed, mut pinged) = (false, 0);
    let code = loop {
        let (op, payload) = tokio::time::timeout(WAIT, read_frame(&mut deaf))
            .await
            .expect("closed within the deadline")
            .expect("a close frame before the socket ends");
        match op {
            0x1 => welcomed |= String::from_utf8_lossy(&payload).contains("\"welcome\""),
            0x9 => pinged += 1,
            0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("opcode {other}"),
        }
    };
    assert!(welcomed && pinged >= 1, "welcome {welcomed}, pings {pinged}");
    assert_eq!(code, signal_server::server::CLOSE_PING_TIMEOUT);
    stop.send(()).unwrap();
    let mut alive = reader.await.unwrap();
    assert!(alive.sync().await.is_empty(), "the live client is unaffected");
}

#[tokio::test]
async fn oversized_frames_close_with_1009_before_and_after_sign_in() {
    let (srv, _tmp) = server_with(|_| {}).await;
    let limit = signal_server::Config::default().limits.ws_max_frame_bytes;
    // Before sign-in: one frame just over the limit.
    let mut anon = srv.client().await;
    let _ = anon.send_raw(Message::Text("x".repeat(limit + 1).into())).await;
    let (code, reason) = close_frame(&mut anon).await.expect("a close frame, not a dropped socket");
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains(&limit.to_string()), "{reason}");
    // After sign-in, the same; other connections are unaffected.
    let mut bob = srv.browser(BOB).await;
    let mut alice = srv.browser(ALICE).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "y".repeat(limit));
    let _ = alice.send_raw(Message::Text(big.into())).await;
    let (code, _) = close_frame(&mut alice).await.expect("a close frame");
    assert_eq!(code, 1009);
    // Within the frame limit but over the message limit: a typed error, the connection stays.
    bob.send(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "z".repeat(20_000))).await;
    bob.expect_error(ErrorCode::MessageTooLarge).await;
    assert!(bob.sync().await.is_empty());
    assert!(srv.is_running());
}

#[tokio::test]
async fn deeply_nested_json_gets_a_typed_error_on_ws_and_the_admin_api() {
    let (srv, _tmp) = server_with(|_| {}).await;
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // Signed in: `bad_message`, the connection stays.
    let mut alice = srv.browser(ALICE).await;
    for depth in [40, 129, 7_000] {
        alice.send(&format!(r#"{{"type":"ping","x":{}}}"#, nest(depth))).await;
        let why = alice.expect_error(ErrorCode::BadMessage).await;
        assert!(why.contains("nested deeper than"), "{why}");
    }
    assert!(alice.sync().await.is_empty());
    // As the first message: refused, closed.
    let mut anon = srv.client().await;
    anon.send(&format!(r#"{{"type":"login","v":1,"number":"2001","password":{}}}"#, nest(7_000))).await;
    anon.expect_error(ErrorCode::BadMessage).await;
    anon.expect_closed().await;
    // The admin API: 400 `invalid`, no crash.
    let body = format!(r#"{{"number":"2100","password":"pw-2100-long","x":{}}}"#, nest(20_000));
    let req = format!(
        "POST /api/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = http_from(ip("127.0.0.1"), srv.addr, &req).await;
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("\"error\":\"invalid\""), "{r}");
    // A body over the limit: 413.
    let body = format!(r#"{{"number":"2100","password":"{}"}}"#, "p".repeat(100_000));
    let req = format!(
        "POST /api/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(status(&http_from(ip("127.0.0.1"), srv.addr, &req).await), 413);
    assert!(srv.is_running());
}

#[tokio::test]
async fn admin_token_guessing_gets_429_and_the_right_token_from_another_address_still_works() {
    // A backoff no test step can outlast, so the outcome does not depend on timing.
    let (srv, _tmp) = server_with(|c| c.limits.admin_backoff_base_secs = 600).await;
    let budget = signal_server::Config::default().limits.admin_failures_per_address;
    let attacker = ip("127.0.0.1");
    for i in 0..budget {
        let r = http_from(attacker, srv.addr, &get("/api/accounts", Some(&format!("guess-{i}")))).await;
        assert_eq!(status(&r), 401, "{r}");
    }
    eprintln!(
        "FIGURE admin_token_guesses_per_address {budget} guesses | wrong admin API tokens answered 401 from one address before 429 (then one per 1 s doubling to 5 min)"
    );
    for _ in 0..3 {
        let r = http_from(attacker, srv.addr, &get("/api/accounts", Some("guess-more"))).await;
        assert_eq!(status(&r), 429, "{r}");
        assert!(r.contains("\"error\":\"rate_limited\""), "{r}");
        let retry: u64 = header(&r, "retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=600).contains(&retry), "{retry}");
    }
    // Even the right token waits out the backoff from the guessing address...
    let r = http_from(attacker, srv.addr, &get("/api/accounts", Some(ADMIN_TOKEN))).await;
    assert_eq!(status(&r), 429, "{r}");
    // ...while from another address it works.
    let r = http_from(ip(OTHER), srv.addr, &get("/api/accounts", Some(ADMIN_TOKEN))).await;
    assert_eq!(status(&r), 200, "{r}");
    // No CORS: a cross-origin preflight or read gets no Access-Control-* header.
    let pre = http_from(
        ip(OTHER),
        srv.addr,
        "OPTIONS /api/accounts HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!pre.to_ascii_lowercase().contains("access-control-"), "{pre}");
    let cross = http_from(
        ip(OTHER),
        srv.addr,
        &format!("GET /api/accounts HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(!cross.to_ascii_lowercase().contains("access-control-"), "{cross}");
    // /metrics counts the refusals and shows no secret.
    let m = http_from(ip(OTHER), srv.addr, &get("/metrics", None)).await;
    assert!(m.contains("trunkline_admin_rate_limited_total"), "{m}");
    assert!(!m.contains(ADMIN_TOKEN) && !m.contains("guess-") && !m.contains(ALICE.1), "{m}");
}

#[tokio::test]
async fn a_weak_admin_token_file_makes_the_server_refuse_to_start() {
    for (token, why) in [
        ("short-token", "11 characters"),
        ("", "0 characters"),
        ("abababababababababababababababababababab", "only 2 different characters"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = test_config(tmp.path());
        let file = tmp.path().join("admin-token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        cfg.admin_token_file = Some(file.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = tokio::time::timeout(WAIT, signal_server::run(cfg, listener, std::future::pending())).await.expect("returns");
        let e = r.expect_err("a weak token must stop the start").to_string();
        assert!(e.starts_with(&format!("admin token file {}: the token is too weak ({why})", file.display())), "{e}");
        assert!(e.contains("at least 32 characters") && e.contains("openssl rand -hex 32"), "{e}");
    }
    // The command line says so and exits non-zero.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("admin-token");
    std::fs::write(&file, "hunter2\n").unwrap();
    let config = tmp.path().join("signal.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\nadmin_token_file = \"{}\"\n",
            tmp.path().join("d.db").display(),
            file.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signal-server"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the token is too weak (7 characters)"), "{stderr}");
}

#[tokio::test]
async fn the_softphone_is_served_with_a_strict_csp_and_frame_ancestors_none() {
    let script = "\nimport init from '/app.js';\nawait init({ module_or_path: '/app_bg.wasm' });\n";
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(
        web.join("index.html"),
        format!("<!doctype html><html><head><script type=\"module\">{script}</script></head></html>"),
    )
    .unwrap();
    std::fs::write(web.join("app.js"), "export default function init() {}").unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.web_root = web.clone();
    let srv = TestServer::start_with(cfg).await;
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()))
    };
    for (path, extra) in [("/", ""), ("/", "Accept-Encoding: gzip\r\n"), ("/app.js", ""), ("/some/spa/route", "")] {
        let r =
            http_from(ip("127.0.0.1"), srv.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"))
                .await;
        assert_eq!(status(&r), 200, "{path}: {r}");
        let csp = header(&r, "content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains(&format!("script-src 'self' 'wasm-unsafe-eval' 'sha256-{hash}'")), "{csp}");
        assert!(csp.contains("default-src 'self'") && csp.contains("connect-src 'self'") && csp.contains("object-src 'none'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("*"), "{csp}");
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"));
        assert_eq!(header(&r, "x-frame-options"), Some("DENY"));
    }
    // A rebuilt softphone (new inline script) gets a policy for the new script.
    let script2 = "console.log('rebuilt')";
    std::fs::write(web.join("index.html"), format!("<html><script>{script2}</script></html>")).unwrap();
    let old = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(web.join("index.html")).unwrap().set_modified(old).unwrap();
    let r = http_from(ip("127.0.0.1"), srv.addr, &get("/", None)).await;
    let hash2 = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script2.as_bytes()))
    };
    assert!(header(&r, "content-security-policy").unwrap().contains(&hash2), "{r}");
}
