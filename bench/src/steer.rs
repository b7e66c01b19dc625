//! Steering load: switch pairs `hq<i>` (caller phone `1<i:03>`) and `br<i>` (callee phone
//! `3<i:03>`). Each `hq<i>` sends `route_query` (B1/B2) for 1<i:03> → 3<i:03>; the server answers
//! `route` with the callee's switch (B5: one *decision*) and asks `br<i>` with `callee_query`
//! (C11); `br<i>` declines at once (C12, busy); the server sends `outcome` to both and writes a
//! call record. A query is in flight from its `route_query` until hq's `outcome`.
//!
//! Two modes: `saturate` keeps `window` queries in flight per hq connection and counts
//! decisions over a measured interval after a warm-up; `rate` paces queries at a fixed total
//! rate. Both read the server's CPU time from /proc at the start and end of the interval.
//!
//! Cluster mode (run.sh's `cluster` phase): the `hq<i>` switches connect to one replica
//! (`hq_url`) and the `br<i>` switches are spread over others (`br_urls`, in turn), so every
//! decision crosses replicas; the CPU is the sum over all `server_pids`. Before the load, each
//! pair places one probe query until it ends `busy` (br's decline), i.e. until the caller's
//! replica sees the callee's switch online: presence crosses replicas asynchronously.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_protocol::ClientMsg;

use crate::procfs;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Params {
    /// Where the caller switches `hq<i>` connect.
    pub hq_url: String,
    /// Where the callee switches `br<i>` connect: `br<i>` uses `br_urls[(i - 1) % len]`
    /// (empty: `hq_url`).
    pub br_urls: Vec<String>,
    pub pairs: usize,
    pub secret: String,
    pub window: usize,
    /// Every server process whose CPU counts (one, or each replica).
    pub server_pids: Vec<u32>,
    pub mode: Mode,
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// `runs` back-to-back intervals of `measure` after one `warmup`.
    Saturate {
        warmup: Duration,
        measure: Duration,
        runs: usize,
    },
    Rate {
        per_sec: f64,
        measure: Duration,
    },
}

pub fn hq_id(i: usize) -> String {
    format!("hq{i}")
}
pub fn branch_id(i: usize) -> String {
    format!("br{i}")
}
pub fn caller_number(i: usize) -> String {
    format!("1{i:03}")
}
pub fn callee_number(i: usize) -> String {
    format!("3{i:03}")
}

#[derive(Default)]
struct Stats {
    /// `route` with a switch route received by hq (B5 decisions).
    decisions: AtomicU64,
    /// `outcome` received by hq.
    outcomes: AtomicU64,
    /// `route_query` sent.
    sent: AtomicU64,
    /// `error` messages, or routes other than B5.
    errors: AtomicU64,
    /// Switch connections the server closed during the run.
    disconnects: AtomicU64,
    /// `outcome`s other than `busy` (br's decline): e.g. `switch_unavailable` when the
    /// caller's replica does not see the callee's switch, or a timeout.
    outcomes_other: AtomicU64,
    /// Those outcomes by kind (rare: a lock is fine).
    outcomes_other_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

struct Snap {
    at: Instant,
    decisions: u64,
    server_cpu: u64,
    server_sys: u64,
    client_cpu: u64,
    server_switches: u64,
}

struct Sample {
    secs: f64,
    decisions: u64,
    server_cpu: u64,
    /// The system (kernel) part of `server_cpu`.
    server_sys: u64,
    client_cpu: u64,
    server_switches: u64,
}

impl Sample {
    fn between(a: &Snap, b: &Snap) -> Sample {
        Sample {
            secs: (b.at - a.at).as_secs_f64(),
            decisions: b.decisions - a.decisions,
            server_cpu: b.server_cpu.saturating_sub(a.server_cpu),
            server_sys: b.server_sys.saturating_sub(a.server_sys),
            client_cpu: b.client_cpu.saturating_sub(a.client_cpu),
            server_switches: b.server_switches.saturating_sub(a.server_switches),
        }
    }
    fn rate(&self) -> f64 {
        self.decisions as f64 / self.secs
    }
}

/// The few fields the load generator looks at in a server message. A gateway would decode
/// the whole `ServerMsg`; the benchmark keeps its own CPU low because it shares the machine
/// with the server.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    call_id: Option<&'a str>,
    #[serde(default, borrow)]
    route: Option<PeekRoute<'a>>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, borrow)]
    message: Option<&'a str>,
    #[serde(default, borrow)]
    outcome: Option<&'a str>,
}

#[derive(Deserialize)]
struct PeekRoute<'a> {
    #[serde(borrow)]
    route: &'a str,
}

/// Call ids are `q<run>.<pair>-<seq>`: unique per run, since call records are unique by call
/// id (a repeated id would be a duplicate record, not a new one, on a reused database).
fn route_query(run: &str, pair: usize, seq: u64) -> String {
    format!(
        r#"{{"type":"route_query","call_id":"q{run}.{pair}-{seq}","from":"{}","to":"{}"}}"#,
        caller_number(pair),
        callee_number(pair)
    )
}

/// A short id for this run (base 36 of the clock's microseconds).
fn run_tag() -> String {
    let mut n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    let mut s = Vec::new();
    while n > 0 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn decline(call_id: &str) -> String {
    format!(r#"{{"type":"query_answer","call_id":"{call_id}","answer":{{"answer":"decline","reason":"busy"}}}}"#)
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0)
}

pub async fn connect(url: &str) -> Result<Ws, String> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(ws)
}

/// Sign a switch in and wait for `switch_welcome`.
async fn switch_auth(url: &str, id: &str, secret: &str) -> Result<Ws, String> {
    let mut ws = connect(url).await?;
    let auth = ClientMsg::SwitchAuth {
        v: trunkline_protocol::PROTOCOL_VERSION,
        switch_id: id.to_string(),
        secret: secret.to_string(),
        // Gateways advertise no address: callers reach them over WebRTC through the cloud.
        direct_urls: vec![],
        calls: None,
    };
    ws.send(Message::text(auth.encode())).await.map_err(|e| format!("{id}: send switch_auth: {e}"))?;
    let reply = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .map_err(|_| format!("{id}: no answer to switch_auth within 20 s"))?;
    match reply {
        Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"switch_welcome""#) => Ok(ws),
        Some(Ok(m)) => Err(format!("{id}: switch_auth answered with {m}")),
        Some(Err(e)) => Err(format!("{id}: {e}")),
        None => Err(format!("{id}: connection closed after switch_auth")),
    }
}

/// The callee-side switch: decline every `callee_query` at once.
async fn branch_loop(mut ws: Ws, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let handle = |m: Message, out: &mut Vec<String>| {
        if let Message::Text(t) = m
            && let Ok(p) = serde_json::from_str::<Peek>(t.as_str())
        {
            match p.ty {
                "callee_query" => out.push(decline(p.call_id.unwrap_or_default())),
                "error" => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    report_error("branch", &p);
                }
                _ => {}
            }
        }
    };
    let mut out = Vec::with_capacity(256);
    loop {
        let first = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) { return }
                continue;
            }
        };
        let Some(Ok(m)) = first else {
            if !stop.load(Ordering::Relaxed) {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                eprintln!("bench: branch: connection closed by the server");
            }
            return;
        };
        handle(m, &mut out);
        // Answer everything that is already here in one write.
        while let Some(Some(Ok(m))) = ws.next().now_or_never() {
            handle(m, &mut out);
        }
        for a in out.drain(..) {
            if ws.feed(Message::text(a)).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

static ERRORS_SHOWN: AtomicU64 = AtomicU64::new(0);

fn report_error(who: &str, p: &Peek) {
    if ERRORS_SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("bench: {who} got {} {:?} {:?} {:?} (call {:?})", p.ty, p.outcome, p.code, p.message, p.call_id);
    }
}

struct HqResult {
    /// Route latency samples (µs), from `route_query` sent to `route` received.
    latencies_us: Vec<u32>,
    /// Queries still without an outcome when the loop ended.
    unfinished: usize,
}

/// The caller-side switch: send `route_query` per the mode, count decisions and outcomes.
#[allow(clippy::too_many_arguments)]
async fn hq_loop(
    mut ws: Ws,
    run: Arc<str>,
    pair: usize,
    window: usize,
    pace: Option<(f64, u64)>,
    start: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> HqResult {
    let mut seq: u64 = 0;
    let mut in_flight: usize = 0;
    let mut sent_at: HashMap<u64, Instant> = HashMap::with_capacity(window * 2);
    let mut latencies_us = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping_since: Option<Instant> = None;
    loop {
        // Top up.
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            let due = match pace {
                None => usize::MAX,
                // Fixed rate: as many as are due by now, `total` in all.
                Some((r, total)) => ((r * start.elapsed().as_secs_f64()) as u64).min(total).saturating_sub(seq) as usize,
            };
            let n = due.min(window.saturating_sub(in_flight));
            if n > 0 {
                let now = Instant::now();
                for _ in 0..n {
                    seq += 1;
                    if pace.is_some() {
                        sent_at.insert(seq, now);
                    }
                    if ws.feed(Message::text(route_query(&run, pair, seq))).await.is_err() {
                        return HqResult { latencies_us, unfinished: in_flight };
                    }
                }
                in_flight += n;
                stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                if ws.flush().await.is_err() {
                    return HqResult { latencies_us, unfinished: in_flight };
                }
            }
        } else {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if in_flight == 0 || since.elapsed() > Duration::from_secs(10) {
                let _ = ws.close(None).await;
                return HqResult { latencies_us, unfinished: in_flight };
            }
        }
        // Read what came back.
        let first = tokio::select! {
            m = ws.next() => Some(m),
            _ = tick.tick(), if pace.is_some() || stopping => None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => None,
        };
        let mut handle = |m: Message| {
            let Message::Text(t) = m else { return };
            let Ok(p) = serde_json::from_str::<Peek>(t.as_str()) else { return };
            match p.ty {
                "route" => {
                    if p.route.as_ref().map(|r| r.route) == Some("switch") {
                        stats.decisions.fetch_add(1, Ordering::Relaxed);
                        if let Some(t0) =
                            p.call_id.and_then(|c| c.rsplit('-').next()?.parse::<u64>().ok()).and_then(|s| sent_at.remove(&s))
                        {
                            latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                    } else {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        report_error("hq", &p);
                    }
                }
                "outcome" => {
                    stats.outcomes.fetch_add(1, Ordering::Relaxed);
                    if p.outcome != Some("busy") {
                        stats.outcomes_other.fetch_add(1, Ordering::Relaxed);
                        let kind = p.outcome.unwrap_or("?").to_string();
                        *stats.outcomes_other_kinds.lock().expect("not poisoned").entry(kind).or_default() += 1;
                        report_error("hq", &p);
                    }
                    in_flight = in_flight.saturating_sub(1);
                }
                "error" => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    report_error("hq", &p);
                    // A refused query has no call, so no outcome will come.
                    if p.call_id.is_some() {
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
                _ => {}
            }
        };
        match first {
            Some(Some(Ok(m))) => {
                handle(m);
                while let Some(Some(Ok(m))) = ws.next().now_or_never() {
                    handle(m);
                }
            }
            Some(_) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                eprintln!("bench: hq{pair}: connection closed by the server");
                return HqResult { latencies_us, unfinished: in_flight };
            }
            None => {}
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64
}

/// Run the load; returns `key=value` lines.
pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    // The messages this generator writes by hand must be valid protocol.
    let run: Arc<str> = run_tag().into();
    ClientMsg::decode(&route_query(&run, 1, 1)).map_err(|e| format!("route_query template: {e}"))?;
    ClientMsg::decode(&decline("q1-1")).map_err(|e| format!("query_answer template: {e}"))?;
    if p.server_pids.is_empty() {
        return Err("no server pid".into());
    }

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hqs = Vec::new();
    for i in 1..=p.pairs {
        let br_url = if p.br_urls.is_empty() { &p.hq_url } else { &p.br_urls[(i - 1) % p.br_urls.len()] };
        let br = switch_auth(br_url, &branch_id(i), &p.secret).await?;
        tokio::spawn(branch_loop(br, stop.clone(), stats.clone()));
        hqs.push(switch_auth(&p.hq_url, &hq_id(i), &p.secret).await?);
    }
    // Let switch sign-in work (argon2 on blocking threads, switch state writes) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe_started = Instant::now();
    let mut probe_tries = 0;
    for (i, ws) in hqs.iter_mut().enumerate() {
        probe_tries += probe(ws, &run, i + 1).await?;
    }
    let probe_secs = probe_started.elapsed().as_secs_f64();

    let planned = match p.mode {
        Mode::Saturate { .. } => 0,
        Mode::Rate { per_sec, measure } => (per_sec * measure.as_secs_f64()).round() as u64,
    };
    let start = Instant::now();
    let cpu0_self = procfs::self_cpu_us();
    let mut tasks = Vec::new();
    for (i, ws) in hqs.into_iter().enumerate() {
        let pace = match p.mode {
            Mode::Saturate { .. } => None,
            Mode::Rate { per_sec, .. } => {
                let n = p.pairs as u64;
                Some((per_sec / n as f64, planned / n + u64::from((i as u64) < planned % n)))
            }
        };
        tasks.push(tokio::spawn(hq_loop(ws, run.clone(), i + 1, p.window, pace, start, stop.clone(), stats.clone())));
    }

    let pids = p.server_pids.clone();
    // Each server's (user, system) CPU time so far.
    let split_each = || -> Result<Vec<(u64, u64)>, String> {
        pids.iter().map(|&pid| procfs::cpu_split_us(pid).map_err(|e| format!("server pid {pid}: {e}"))).collect()
    };
    let cpu_each = || -> Result<Vec<u64>, String> { Ok(split_each()?.iter().map(|(u, s)| u + s).collect()) };
    let snap = || -> Result<Snap, String> {
        let split = split_each()?;
        Ok(Snap {
            at: Instant::now(),
            decisions: stats.decisions.load(Ordering::Relaxed),
            server_cpu: split.iter().map(|(u, s)| u + s).sum(),
            server_sys: split.iter().map(|(_, s)| s).sum(),
            client_cpu: procfs::self_cpu_us(),
            server_switches: pids.iter().map(|&pid| procfs::context_switches(pid)).sum(),
        })
    };
    let cpu_each0 = cpu_each()?;
    let mut samples: Vec<Sample> = Vec::new();
    match p.mode {
        Mode::Saturate { warmup, measure, runs } => {
            tokio::time::sleep(warmup).await;
            for _ in 0..runs.max(1) {
                let a = snap()?;
                tokio::time::sleep(measure).await;
                samples.push(Sample::between(&a, &snap()?));
            }
            stop.store(true, Ordering::Relaxed);
        }
        Mode::Rate { measure, .. } => {
            let mut a = snap()?;
            a.at = start;
            a.client_cpu = cpu0_self;
            tokio::time::sleep(measure).await;
            // The interval ends when the last planned query has its outcome.
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats.outcomes.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed) < planned
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(Sample::between(&a, &snap()?));
            stop.store(true, Ordering::Relaxed);
        }
    }
    let cpu_each1 = cpu_each()?;
    let mut lat = Vec::new();
    let mut unfinished = 0;
    for t in tasks {
        if let Ok(r) = t.await {
            lat.extend(r.latencies_us);
            unfinished += r.unfinished;
        }
    }
    lat.sort_unstable();
    // Several saturation runs: report the median one (by rate), and all rates.
    let all_rates: Vec<String> = samples.iter().map(|s| format!("{:.0}", s.rate())).collect();
    samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let m = &samples[samples.len() / 2];
    let mut kv = vec![
        (
            "mode".into(),
            match p.mode {
                Mode::Saturate { .. } => "saturate".into(),
                Mode::Rate { .. } => "rate".into(),
            },
        ),
        ("pairs".into(), p.pairs.to_string()),
        ("window".into(), p.window.to_string()),
        ("runs".into(), samples.len().to_string()),
        ("secs".into(), format!("{:.3}", m.secs)),
        ("decisions".into(), m.decisions.to_string()),
        ("decisions_per_sec".into(), format!("{:.0}", m.rate())),
        ("decisions_per_sec_runs".into(), all_rates.join(" ")),
        ("server_cpu_us".into(), m.server_cpu.to_string()),
        ("server_cpu_us_per_decision".into(), format!("{:.2}", m.server_cpu as f64 / m.decisions.max(1) as f64)),
        ("server_sys_us_per_decision".into(), format!("{:.2}", m.server_sys as f64 / m.decisions.max(1) as f64)),
        ("server_cpu_cores".into(), format!("{:.2}", m.server_cpu as f64 / 1e6 / m.secs)),
        ("client_cpu_cores".into(), format!("{:.2}", m.client_cpu as f64 / 1e6 / m.secs)),
        ("server_context_switches_per_decision".into(), format!("{:.1}", m.server_switches as f64 / m.decisions.max(1) as f64)),
        ("queries_sent".into(), stats.sent.load(Ordering::Relaxed).to_string()),
        ("outcomes".into(), stats.outcomes.load(Ordering::Relaxed).to_string()),
        ("errors".into(), stats.errors.load(Ordering::Relaxed).to_string()),
        ("disconnects".into(), stats.disconnects.load(Ordering::Relaxed).to_string()),
        ("outcomes_not_busy".into(), stats.outcomes_other.load(Ordering::Relaxed).to_string()),
        (
            "outcomes_not_busy_kinds".into(),
            stats
                .outcomes_other_kinds
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("queries_without_outcome".into(), unfinished.to_string()),
        ("servers".into(), p.server_pids.len().to_string()),
        (
            "server_cpu_us_each_whole_run".into(),
            cpu_each0.iter().zip(&cpu_each1).map(|(a, b)| b.saturating_sub(*a).to_string()).collect::<Vec<_>>().join(" "),
        ),
        ("probe_queries".into(), probe_tries.to_string()),
        ("probe_secs".into(), format!("{probe_secs:.2}")),
    ];
    if let Mode::Rate { per_sec, .. } = p.mode {
        kv.push(("rate_target".into(), format!("{per_sec:.0}")));
        kv.push(("route_latency_p50_us".into(), format!("{:.0}", percentile(&lat, 0.50))));
        kv.push(("route_latency_p99_us".into(), format!("{:.0}", percentile(&lat, 0.99))));
        kv.push(("route_latency_max_us".into(), format!("{:.0}", percentile(&lat, 1.0))));
    }
    Ok(kv)
}

/// One query from `hq<pair>` until it ends `busy` (br declined: the caller's server reaches the
/// callee's switch), retried every 100 ms for up to 20 s; returns the queries it took.
async fn probe(ws: &mut Ws, run: &str, pair: usize) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let mut n = 0;
    loop {
        n += 1;
        let q = route_query(&format!("{run}p"), pair, u64::from(n));
        ws.send(Message::text(q)).await.map_err(|e| format!("hq{pair}: probe: {e}"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, ws.next()).await {
                Err(_) => return Err(format!("hq{pair}: no probe query ended busy within 20 s (last: {last})")),
                Ok(Some(Ok(m))) => m,
                Ok(_) => return Err(format!("hq{pair}: connection closed during the probe")),
            };
            let Message::Text(t) = m else { continue };
            let Ok(p) = serde_json::from_str::<Peek>(t.as_str()) else { continue };
            match (p.ty, p.outcome) {
                ("outcome", Some("busy")) => return Ok(n),
                ("outcome", o) | ("error", o) => {
                    last = format!("{} {:?} {:?}", p.ty, o, p.message);
                    break;
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("hq{pair}: no probe query ended busy within 20 s (last: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
