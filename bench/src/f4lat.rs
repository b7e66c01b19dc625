//! F4 dial → ringing latency (run.sh's `cluster` phase): `concurrency` pairs of switchless
//! browsers, the caller signed in at `caller_url` and the callee at `callee_url` (another
//! replica, or the same single server for the baseline). Each caller places `dial` after
//! `dial`, one at a time; the time counted is from sending `dial` to the caller's
//! `call_event` `ringing` (sent when the callee's `incoming` goes out). The callee declines
//! every call at once and the caller waits for its `outcome` before the next dial, so no
//! number is ever busy and no media is set up.
//!
//! The call's owner (the caller's replica) sends `ringing` together with the callee's
//! `incoming`, without waiting for the callee's replica; so dial → ringing is the owner's own
//! work, and the hops to the callee's replica and back show in dial → `outcome` (`declined`:
//! `incoming` R1 → R2, `decline` R2 → R1), which is measured too.
//!
//! Before the measured calls each pair places warm-up calls until one ends `declined`: the
//! caller's replica learns that the callee is online asynchronously (presence crosses
//! replicas), and until then a call ends `callee_offline`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{CallEvent, ClientMsg, DeclineReason, Outcome, ServerMsg};

use crate::idle::login;
use crate::steer::Ws;

pub struct Params {
    pub caller_url: String,
    pub callee_url: String,
    pub first_browser: u64,
    pub password: String,
    pub calls: usize,
    pub concurrency: usize,
}

const WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Samples {
    ringing_ms: Vec<f64>,
    /// Dial → `outcome`, for the calls that ended `declined`.
    outcome_ms: Vec<f64>,
    failures: usize,
    first_error: Option<String>,
    outcomes: BTreeMap<String, usize>,
}

/// How one call went: the time to ringing (None: none came before the outcome) and the outcome.
struct Call {
    ringing: Option<Duration>,
    outcome: Outcome,
    outcome_at: Duration,
}

fn outcome_name(o: &Outcome) -> String {
    serde_json::to_value(o).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "?".into())
}

/// The callee: decline every `incoming` at once.
async fn callee_loop(mut ws: Ws) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        if let Ok(ServerMsg::Incoming { call_id, .. }) = ServerMsg::decode(t.as_str()) {
            let d = ClientMsg::Decline { call_id, reason: DeclineReason::Declined };
            if ws.send(Message::text(d.encode())).await.is_err() {
                return;
            }
        }
    }
}

/// One call from the caller's connection: `dial`, then read until its `outcome`.
async fn call(ws: &mut Ws, call_id: &str, to: &str) -> Result<Call, String> {
    let dial = ClientMsg::Dial { call_id: call_id.to_string(), to: to.to_string() };
    let t0 = Instant::now();
    ws.send(Message::text(dial.encode())).await.map_err(|e| format!("send dial: {e}"))?;
    let mut ringing = None;
    let r = tokio::time::timeout(WITHIN, async {
        while let Some(m) = ws.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let Message::Text(t) = m else { continue };
            match ServerMsg::decode(t.as_str()) {
                Ok(ServerMsg::CallEvent { call_id: c, event: CallEvent::Ringing }) if c == call_id => {
                    ringing.get_or_insert_with(|| t0.elapsed());
                }
                Ok(ServerMsg::Outcome { call_id: c, outcome, .. }) if c == call_id => return Ok((outcome, t0.elapsed())),
                Ok(ServerMsg::Error { code, message, call_id: Some(c) }) if c == call_id => {
                    return Err(format!("error {code:?}: {message}"));
                }
                _ => {}
            }
        }
        Err("connection closed".to_string())
    })
    .await
    .map_err(|_| format!("no outcome within {WITHIN:?}"))??;
    Ok(Call { ringing, outcome: r.0, outcome_at: r.1 })
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(v[(((v.len() - 1) as f64) * p).round() as usize])
}

pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    let pairs = p.concurrency.max(1);
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut callers = Vec::new();
    let mut callees = Vec::new();
    for w in 0..pairs {
        let (caller, callee) = (p.first_browser + w as u64, p.first_browser + (pairs + w) as u64);
        callees.push(tokio::spawn(callee_loop(login(&p.callee_url, &callee.to_string(), &p.password).await?)));
        callers.push((login(&p.caller_url, &caller.to_string(), &p.password).await?, callee.to_string()));
    }

    // Warm-up: until each caller's server sees its callee online (deadline 20 s).
    let warm_started = Instant::now();
    let mut warmup_calls = 0;
    for (w, (ws, to)) in callers.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            warmup_calls += 1;
            let last = match call(ws, &format!("f4w{run}.{w}-{warmup_calls}"), to).await {
                Ok(Call { outcome: Outcome::Declined, .. }) => break,
                Ok(c) => outcome_name(&c.outcome),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("F4 warm-up: no call to {to} ended declined within 20 s (last: {last})"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let warmup_secs = warm_started.elapsed().as_secs_f64();

    let samples = Arc::new(Mutex::new(Samples::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, (mut ws, to)) in callers.into_iter().enumerate() {
        let (samples, next, calls) = (samples.clone(), next.clone(), p.calls);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    let _ = ws.close(None).await;
                    return;
                }
                let r = call(&mut ws, &format!("f4{run}.{w}-{i}"), &to).await;
                let mut s = samples.lock().expect("not poisoned");
                match r {
                    Ok(c) => {
                        *s.outcomes.entry(outcome_name(&c.outcome)).or_default() += 1;
                        if c.outcome == Outcome::Declined {
                            s.outcome_ms.push(c.outcome_at.as_secs_f64() * 1000.0);
                        }
                        match c.ringing {
                            Some(d) => s.ringing_ms.push(d.as_secs_f64() * 1000.0),
                            None => {
                                s.failures += 1;
                                let e = format!("ended {} without ringing", outcome_name(&c.outcome));
                                s.first_error.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        s.failures += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    for c in callees {
        c.abort();
    }
    let mut s = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    s.ringing_ms.sort_by(f64::total_cmp);
    s.outcome_ms.sort_by(f64::total_cmp);
    let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
    let mut kv = vec![
        ("calls".to_string(), p.calls.to_string()),
        ("concurrency".into(), pairs.to_string()),
        ("ok".into(), s.ringing_ms.len().to_string()),
        ("failed".into(), s.failures.to_string()),
        ("secs".into(), format!("{secs:.1}")),
        ("warmup_calls".into(), warmup_calls.to_string()),
        ("warmup_secs".into(), format!("{warmup_secs:.2}")),
        ("ringing_p50_ms".into(), f(pct(&s.ringing_ms, 0.50))),
        ("ringing_p90_ms".into(), f(pct(&s.ringing_ms, 0.90))),
        ("ringing_p99_ms".into(), f(pct(&s.ringing_ms, 0.99))),
        ("ringing_max_ms".into(), f(pct(&s.ringing_ms, 1.0))),
        ("declined_p50_ms".into(), f(pct(&s.outcome_ms, 0.50))),
        ("declined_p99_ms".into(), f(pct(&s.outcome_ms, 0.99))),
        ("outcomes".into(), s.outcomes.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")),
    ];
    if let Some(e) = s.first_error {
        kv.push(("first_error".into(), e.replace('\n', " ")));
    }
    Ok(kv)
}
