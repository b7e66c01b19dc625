//! Call setup times of the direct flows, over the real signal server and gateways:
//!
//! - **F1** browser → desk phone: the headless client (`Softphone::call`) dials a desk phone
//!   registered at gateway `hq` by the bench UA, which answers at once (180, then 200) and
//!   sends a 20 ms frame every 20 ms. Dial = `call()`; ringing = the first `ringing` (from the
//!   cloud or the gateway, on the DataChannel); first audio = the client's `FirstAudio`.
//! - **F2** desk phone on `hq` → desk phone on `br`: the bench UA places the call at `hq`
//!   (digest on the 401); `br`'s phone (another bench UA) answers at once and sends audio.
//!   Dial = the first INVITE; ringing = the 180; first audio = the first RTP packet at the
//!   caller's socket.
//! - **F3** desk phone on `hq` → switchless browser: the client listens and answers at once
//!   (`answer(AudioSource::tone)`); dial/ringing/first audio as in F2.
//!
//! Calls run `concurrency` at a time; each call hangs up right after its first audio and
//! waits for the end before the next. Every call uses numbers of its own (a number in a call
//! is busy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use trunkline_client::softphone::CallUpdate;
use trunkline_client::{AudioSource, PeerOptions, Softphone, SoftphoneConfig};
use trunkline_protocol::CallEvent;

use crate::gwprov::phone_password;
use crate::sipua::{Media, Ua};

pub struct Params {
    pub server: String,
    pub hq_sip: SocketAddr,
    pub br_sip: SocketAddr,
    pub calls: usize,
    pub concurrency: usize,
    /// hq numbers: F1 callees hq_first.., F2 callers hq_first+calls.., F3 callers hq_first+2·calls..
    pub hq_first: u64,
    /// br numbers: F2 callees br_first..
    pub br_first: u64,
    /// Browsers: F1 callers browser_first.. (one per worker), F3 callees after them.
    pub browser_first: u64,
    pub browser_password: String,
    pub flows: Vec<String>,
}

#[derive(Default)]
struct Samples {
    ringing: Vec<f64>,
    audio: Vec<f64>,
    /// Calls whose ringing report came after their first audio, or never.
    ringing_late: usize,
    ringing_never: usize,
    failures: usize,
    first_error: Option<String>,
}

const WITHIN: Duration = Duration::from_secs(15);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    Some(v[i.min(v.len() - 1)])
}

async fn softphone(server: &str, number: String, password: &str) -> Result<Softphone, String> {
    let mut cfg = SoftphoneConfig::new(server, number.clone(), password);
    cfg.media = PeerOptions { record: false, ..PeerOptions::default() };
    Softphone::login(cfg).await.map_err(|e| format!("sign-in {number}: {e}"))
}

/// One call's times (ms after dial): ringing (None: never reported), first audio; and whether
/// the ringing report came only after the first audio.
type Times = (Option<f64>, f64, bool);

/// F1: one call from `phone` to `callee`.
async fn f1_call(phone: &Softphone, callee: &str) -> Result<Times, String> {
    let t0 = Instant::now();
    let call = phone.call(callee, AudioSource::tone(1000.0)).await.map_err(|e| e.to_string())?;
    let mut ringing = None;
    let mut audio = None;
    let trace = std::env::var_os("BENCH_TRACE_CALLS").is_some();
    let mut seen: Vec<String> = Vec::new();
    let r = tokio::time::timeout(WITHIN, async {
        while let Some(u) = call.next_update().await {
            if trace {
                seen.push(format!("{:.1} {u}", ms(t0.elapsed())));
            }
            match u {
                CallUpdate::Event(CallEvent::Ringing) | CallUpdate::GatewayProgress(CallEvent::Ringing) => {
                    ringing.get_or_insert_with(|| t0.elapsed());
                    if audio.is_some() {
                        return Ok(());
                    }
                }
                CallUpdate::FirstAudio { .. } => {
                    audio = Some(t0.elapsed());
                    if ringing.is_some() {
                        return Ok(());
                    }
                }
                // Answered: a ringing report that has not come by now is not coming.
                CallUpdate::Event(CallEvent::Connected) | CallUpdate::GatewayProgress(CallEvent::Connected)
                    if audio.is_some() =>
                {
                    return Ok(());
                }
                CallUpdate::Outcome { outcome, .. } => return Err(format!("ended before audio: {outcome}")),
                CallUpdate::Failed(why) => return Err(why),
                _ => {}
            }
        }
        Err("the call ended before audio".to_string())
    })
    .await;
    call.hangup();
    let _ = call.wait_finished(WITHIN).await;
    if trace {
        eprintln!("F1 {callee}: {}", seen.join(" | "));
    }
    match r {
        Ok(Ok(())) => match audio {
            Some(a) => Ok((ringing.map(ms), ms(a), ringing.is_none_or(|r| r > a))),
            None => Err("no first audio".into()),
        },
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no first audio within {WITHIN:?}")),
    }
}

/// F2/F3: one call from desk phone `from` (at `ua`'s gateway) to `to`.
async fn sip_call(ua: &Ua, from: &str, to: &str) -> Result<Times, String> {
    let mut call = ua.call(from, &phone_password(from), to, WITHIN).await?;
    let first = match &call.rtp {
        Some(p) => p.first_packet(WITHIN).await,
        None => None,
    };
    let ringing = call.ringing_at.map(|t| ms(t - call.invited_at));
    let audio = first.map(|t| ms(t.saturating_duration_since(call.invited_at)));
    ua.hangup(&mut call).await?;
    match audio {
        Some(a) => Ok((ringing, a, ringing.is_none_or(|r| r > a))),
        None => Err("no RTP within the time limit".into()),
    }
}

fn record(s: &std::sync::Mutex<Samples>, r: Result<Times, String>) {
    let mut s = s.lock().unwrap();
    match r {
        Ok((ring, audio, late)) => {
            match ring {
                Some(r) => s.ringing.push(r),
                None => s.ringing_never += 1,
            }
            if late && ring.is_some() {
                s.ringing_late += 1;
            }
            s.audio.push(audio);
        }
        Err(e) => {
            s.failures += 1;
            s.first_error.get_or_insert(e);
        }
    }
}

pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    let workers = p.concurrency.max(1);
    let hq = Arc::new(Ua::bind(p.hq_sip, Media::PerCall).await.map_err(|e| e.to_string())?);
    let br = Arc::new(Ua::bind(p.br_sip, Media::PerCall).await.map_err(|e| e.to_string())?);
    let n = p.calls as u64;
    let hq_numbers: Vec<String> = (0..3 * n).map(|i| (p.hq_first + i).to_string()).collect();
    let br_numbers: Vec<String> = (0..n).map(|i| (p.br_first + i).to_string()).collect();
    let t = Instant::now();
    hq.register_all(hq_numbers, phone_password, 32).await?;
    br.register_all(br_numbers, phone_password, 32).await?;
    eprintln!("setup: {} desk phones registered in {:.1} s", 4 * n, t.elapsed().as_secs_f64());

    let mut kv = vec![("calls".to_string(), p.calls.to_string()), ("concurrency".to_string(), workers.to_string())];
    for flow in &p.flows {
        let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        // F3's callees: switchless browsers that answer every call at once.
        let mut listeners = Vec::new();
        if flow == "f3" {
            for w in 0..workers {
                let number = (p.browser_first + (workers + w) as u64).to_string();
                let phone = Arc::new(softphone(&p.server, number.clone(), &p.browser_password).await?);
                let ph = phone.clone();
                listeners.push(tokio::spawn(async move {
                    loop {
                        let Ok(incoming) = ph.next_incoming(Duration::from_secs(3600)).await else { return };
                        let call = incoming.answer(AudioSource::tone(440.0));
                        tokio::spawn(async move {
                            let _ = call.wait_finished(Duration::from_secs(60)).await;
                        });
                    }
                }));
                listeners.push(tokio::spawn(async move {
                    // Keep the softphone signed in while the flow runs.
                    let _keep = phone;
                    std::future::pending::<()>().await;
                }));
            }
        }
        for w in 0..workers {
            let (p_server, pw) = (p.server.clone(), p.browser_password.clone());
            let (samples, next, hq, br) = (samples.clone(), next.clone(), hq.clone(), br.clone());
            let flow = flow.clone();
            let (hq_first, br_first, browser_first) = (p.hq_first, p.br_first, p.browser_first);
            let calls = p.calls;
            tasks.push(tokio::spawn(async move {
                let phone = if flow == "f1" {
                    match softphone(&p_server, (browser_first + w as u64).to_string(), &pw).await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            record(&samples, Err(e));
                            return;
                        }
                    }
                } else {
                    None
                };
                let _ = &br;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return;
                    }
                    let i = i as u64;
                    let n = calls as u64;
                    let r = match flow.as_str() {
                        "f1" => f1_call(phone.as_ref().expect("f1 signs in"), &(hq_first + i).to_string()).await,
                        "f2" => sip_call(&hq, &(hq_first + n + i).to_string(), &(br_first + i).to_string()).await,
                        _ => {
                            sip_call(
                                &hq,
                                &(hq_first + 2 * n + i).to_string(),
                                &(browser_first + (workers + w) as u64).to_string(),
                            )
                            .await
                        }
                    };
                    record(&samples, r);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        for l in listeners {
            l.abort();
        }
        let secs = started.elapsed().as_secs_f64();
        let mut s = std::mem::take(&mut *samples.lock().unwrap());
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
        let (r50, r99) = (pct(&mut s.ringing, 0.5), pct(&mut s.ringing, 0.99));
        let (a50, a99) = (pct(&mut s.audio, 0.5), pct(&mut s.audio, 0.99));
        eprintln!(
            "setup {flow}: {} ok, {} failed in {secs:.1} s; ringing p50 {} p99 {} ms ({} after the first audio, {} never); first audio p50 {} p99 {} ms{}",
            s.audio.len(),
            s.failures,
            f(r50),
            f(r99),
            s.ringing_late,
            s.ringing_never,
            f(a50),
            f(a99),
            s.first_error.as_ref().map(|e| format!("; first error: {e}")).unwrap_or_default()
        );
        for (k, v) in [
            ("ok", s.audio.len().to_string()),
            ("failed", s.failures.to_string()),
            ("ringing_after_audio", s.ringing_late.to_string()),
            ("ringing_never", s.ringing_never.to_string()),
            ("secs", format!("{secs:.1}")),
            ("ringing_p50_ms", f(r50)),
            ("ringing_p99_ms", f(r99)),
            ("audio_p50_ms", f(a50)),
            ("audio_p99_ms", f(a99)),
        ] {
            kv.push((format!("{flow}_{k}"), v));
        }
        if let Some(e) = s.first_error {
            kv.push((format!("{flow}_first_error"), e.replace('\n', " ")));
        }
        // Let the last calls' ends reach every party before the next flow.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(kv)
}
