//! The one table `run.sh` prints, from the `key=value` files the measurements wrote.

use std::collections::HashMap;
use std::path::Path;

pub type Kv = HashMap<String, String>;

pub fn read_kv(path: Option<&Path>) -> Kv {
    let Some(path) = path else { return Kv::new() };
    let Ok(text) = std::fs::read_to_string(path) else { return Kv::new() };
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

fn num(kv: &Kv, key: &str) -> Option<f64> {
    kv.get(key)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// 12345.6 → "12,346"; with `decimals` > 0 the fraction is kept.
pub fn fmt_num(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map(|(i, f)| (i.to_string(), Some(f.to_string()))).unwrap_or((s.clone(), None));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn or_na(v: Option<String>) -> String {
    v.unwrap_or_else(|| "n/a".into())
}

pub struct Inputs {
    pub saturate: Kv,
    pub rate: Kv,
    pub idle: Kv,
    pub kamailio: Kv,
    /// The gateway phase (prefixed keys: reg_*, regfix_*, call_*, callfix_*, setup_*, media_*).
    pub gateway: Kv,
    /// The browser softphone (wasm_raw, wasm_gzip, tti_ms).
    pub web: Kv,
    /// Calls across the NAT lab (natlab/e2e/run.mjs --bench): calls, s{1,2,3}_p{50,99},
    /// gw_cpu_us_per_call.
    pub natlab: Kv,
    /// Cluster mode (run.sh's `cluster` phase): `skipped` (the reason), or `c_*` (3 replicas)
    /// and `s_*` (one process on the same PostgreSQL) keys: `*_sat_*`, `*_rate_*` (steer.rs's
    /// keys) and `*_f4_*` (f4lat.rs's keys).
    pub cluster: Kv,
    pub cores: usize,
    pub date: String,
}

pub fn table(i: &Inputs) -> String {
    let mut out = String::new();
    let rate = num(&i.rate, "rate_target").or(num(&i.kamailio, "rate"));
    let rate_s = rate.map(|r| format!("{}/s", fmt_num(r, 0))).unwrap_or_else(|| "a fixed rate".into());

    let sat = num(&i.saturate, "decisions_per_sec");
    let ours_cpu = num(&i.rate, "server_cpu_us_per_decision");
    let kam_cpu = match (num(&i.kamailio, "cpu_us"), num(&i.kamailio, "replies_302")) {
        (Some(c), Some(n)) if n > 0.0 => Some(c / n),
        _ => None,
    };
    let ratio = match (ours_cpu, kam_cpu) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let per_conn = num(&i.idle, "bytes_per_conn");
    let conns = num(&i.idle, "connections").map(|v| format!("{} connections", fmt_num(v, 0)));

    out.push_str("| measure | Trunkline | Kamailio | ratio | target |\n");
    out.push_str("|---|---:|---:|---:|---|\n");
    let kam_sat = num(&i.kamailio, "sat_per_sec");
    let kam_sat_note = match (i.kamailio.get("sat_in_flight"), i.kamailio.get("sat_cores")) {
        (Some(l), Some(c)) => format!(" (Kamailio: 302s/s, {l} INVITEs in flight per sipp, {c} cores)"),
        _ => String::new(),
    };
    out.push_str(&format!(
        "| steering decisions/s at saturation (B2 `route_query` answered with B5 `route`) / 302s/s{kam_sat_note} | {} | {} | {} | ratio ≥ 2 |\n",
        or_na(sat.map(|v| fmt_num(v, 0))),
        or_na(kam_sat.map(|v| fmt_num(v, 0))),
        or_na(sat.zip(kam_sat).filter(|(_, k)| *k > 0.0).map(|(s, k)| format!("{:.2}", s / k))),
    ));
    out.push_str(&format!(
        "| CPU µs per decision (Trunkline) / per 302 (Kamailio), both at {rate_s} | {} | {} | {} | ratio ≤ 0.8 |\n",
        or_na(ours_cpu.map(|v| fmt_num(v, 1))),
        or_na(kam_cpu.map(|v| fmt_num(v, 1))),
        or_na(ratio.map(|v| format!("{v:.2}"))),
    ));
    out.push_str(&format!(
        "| memory per idle authenticated WebSocket (bytes, RSS growth over {}) | {} | — | — | < 8 kB |\n",
        conns.unwrap_or_else(|| "the idle connections".into()),
        or_na(per_conn.map(|v| fmt_num(v, 0)))
    ));
    gateway_rows(&mut out, &i.gateway);
    cluster_rows(&mut out, &i.cluster);
    out.push_str(&format!(
        "| browser softphone: release wasm, bytes raw / gzip | {} / {} | — | — | < 250 kB gzip |\n",
        or_na(num(&i.web, "wasm_raw").map(|v| fmt_num(v, 0))),
        or_na(num(&i.web, "wasm_gzip").map(|v| fmt_num(v, 0))),
    ));
    out.push_str(&format!(
        "| browser softphone: time to interactive on loopback (navigation → connected, median of 5) | {} ms | — | — | — |\n",
        or_na(num(&i.web, "tti_ms").map(|v| fmt_num(v, 0))),
    ));
    let calls = num(&i.natlab, "calls").map(|v| fmt_num(v, 0)).unwrap_or_else(|| "n/a".into());
    for (key, what, goal) in [
        ("s1", "https softphone behind a cone NAT → desk phone at a site behind a cone NAT (direct)", "p50 < 150 ms"),
        ("s2", "softphone behind a symmetric NAT → site behind a symmetric NAT (relayed)", "p50 < 300 ms"),
        ("s3", "softphone on a network that drops UDP → site behind a cone NAT (TURN over TCP/TLS)", "p50 < 300 ms"),
    ] {
        out.push_str(&format!(
            "| F1 across NATs, {what}: dial → first audio, p50 / p99 ms ({calls} calls, headless Chromium) | {} / {} | — | — | {goal} |\n",
            or_na(num(&i.natlab, &format!("{key}_p50")).map(|v| fmt_num(v, 1))),
            or_na(num(&i.natlab, &format!("{key}_p99")).map(|v| fmt_num(v, 1))),
        ));
    }
    out.push_str(&format!(
        "| gateway CPU µs per F1 call with full ICE, STUN/TURN gathering and DTLS (set-up to hang-up at first audio) | {} | — | — | — |\n",
        or_na(num(&i.natlab, "gw_cpu_us_per_call").map(|v| fmt_num(v, 0))),
    ));
    out.push_str(&format!("\nMachine: {} CPU cores; {}.\n", i.cores, i.date));

    // Details that make the numbers checkable.
    let mut notes = Vec::new();
    if !i.saturate.is_empty() {
        let s = &i.saturate;
        notes.push(format!(
            "saturation: median of {} runs (decisions/s: {}); that run: {} decisions in {} s over {} switch pairs, \
             {} queries in flight per caller switch; server used {} cores ({} µs CPU per decision, {} of it in the \
             kernel as it accounts it at each tick), load generator {} cores; {} errors, {} switch disconnects",
            or_na(s.get("runs").cloned()),
            or_na(s.get("decisions_per_sec_runs").cloned()),
            or_na(num(s, "decisions").map(|v| fmt_num(v, 0))),
            or_na(s.get("secs").cloned()),
            or_na(s.get("pairs").cloned()),
            or_na(s.get("window").cloned()),
            or_na(s.get("server_cpu_cores").cloned()),
            or_na(s.get("server_cpu_us_per_decision").cloned()),
            or_na(s.get("server_sys_us_per_decision").cloned()),
            or_na(s.get("client_cpu_cores").cloned()),
            or_na(s.get("errors").cloned()),
            or_na(s.get("disconnects").cloned()),
        ));
    }
    if !i.rate.is_empty() {
        let r = &i.rate;
        notes.push(format!(
            "fixed rate: {} decisions in {} s (target {rate_s}) over {} switch pairs, server CPU {} µs in total \
             ({} cores); route latency p50 {} µs, p99 {} µs, max {} µs; {} errors",
            or_na(num(r, "decisions").map(|v| fmt_num(v, 0))),
            or_na(r.get("secs").cloned()),
            or_na(r.get("pairs").cloned()),
            or_na(num(r, "server_cpu_us").map(|v| fmt_num(v, 0))),
            or_na(r.get("server_cpu_cores").cloned()),
            or_na(r.get("route_latency_p50_us").cloned()),
            or_na(r.get("route_latency_p99_us").cloned()),
            or_na(r.get("route_latency_max_us").cloned()),
            or_na(r.get("errors").cloned()),
        ));
    }
    if !i.kamailio.is_empty() {
        let k = &i.kamailio;
        notes.push(format!(
            "Kamailio: sipp sent {} INVITEs at {rate_s} and got {} 302s in {} s, {} of them with the registered \
             Contact; {} failed calls, {} retransmissions; Kamailio CPU {} µs in total over {} processes",
            or_na(num(k, "invites_sent").map(|v| fmt_num(v, 0))),
            or_na(num(k, "replies_302").map(|v| fmt_num(v, 0))),
            or_na(k.get("secs").cloned()),
            or_na(num(k, "successful_calls").map(|v| fmt_num(v, 0))),
            or_na(k.get("failed_calls").cloned()),
            or_na(k.get("retransmissions").cloned()),
            or_na(num(k, "cpu_us").map(|v| fmt_num(v, 0))),
            or_na(k.get("processes").cloned()),
        ));
    }
    if !i.idle.is_empty() {
        let d = &i.idle;
        notes.push(format!(
            "idle WebSockets: {} signed in ({} failed) in {} s, {} answered a ping after {} s idle; \
             server RSS {} → {} bytes ({} bytes per connection right after sign-in)",
            or_na(num(d, "connections").map(|v| fmt_num(v, 0))),
            or_na(d.get("failed").cloned()),
            or_na(d.get("connect_secs").cloned()),
            or_na(num(d, "alive_after_settle").map(|v| fmt_num(v, 0))),
            or_na(d.get("settle_secs").cloned()),
            or_na(num(d, "rss_before").map(|v| fmt_num(v, 0))),
            or_na(num(d, "rss_after").map(|v| fmt_num(v, 0))),
            or_na(num(d, "bytes_per_conn_at_connect").map(|v| fmt_num(v, 0))),
        ));
    }
    gateway_notes(&mut notes, &i.gateway);
    cluster_notes(&mut notes, &i.cluster);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}

fn ratio_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// CPU µs per item from `<prefix>_cpu_us` / `<prefix>_ok`.
fn cpu_per(g: &Kv, prefix: &str) -> Option<f64> {
    match (num(g, &format!("{prefix}_cpu_us")), num(g, &format!("{prefix}_ok"))) {
        (Some(c), Some(n)) if n > 0.0 => Some(c / n),
        _ => None,
    }
}

fn gateway_rows(out: &mut String, g: &Kv) {
    if g.is_empty() {
        return;
    }
    let s = |k: &str| g.get(k).cloned();
    let rate = |k: &str| num(g, k).map(|v| format!("{}/s", fmt_num(v, 0))).unwrap_or_else(|| "a fixed rate".into());
    // A saturation figure; "(>1 % failed)" when no load level kept failures under 1 %.
    let sat = |prefix: &str| {
        num(g, &format!("{prefix}_per_sec")).map(|v| {
            let flag = if g.contains_key(&format!("{prefix}_over_1pct_failed")) { " (>1 % failed)" } else { "" };
            format!("{}{flag}", fmt_num(v, 0))
        })
    };
    let (a, b) = (num(g, "reg_gw_per_sec"), num(g, "reg_kam_per_sec"));
    out.push_str(&format!(
        "| REGISTER/s with digest auth (401 → REGISTER with MD5 credentials → 200) at saturation (best load level with ≤ 1 % failed); ratio Trunkline ÷ Kamailio | {} | {} | {} | — |\n",
        or_na(sat("reg_gw")),
        or_na(sat("reg_kam")),
        ratio_of(a, b)
    ));
    let (a, b) = (cpu_per(g, "regfix_gw"), cpu_per(g, "regfix_kam"));
    out.push_str(&format!(
        "| CPU µs per registration, both at {} | {} | {} | {} | — |\n",
        rate("regfix_rate"),
        or_na(a.map(|v| fmt_num(v, 1))),
        or_na(b.map(|v| fmt_num(v, 1))),
        ratio_of(a, b)
    ));
    let (a, b) = (num(g, "callfix_gw_per_sec"), num(g, "callfix_kam_per_sec"));
    out.push_str(&format!(
        "| F7 local calls completed/s at a fixed {} (INVITE+SDP → 401/407 → INVITE with credentials → 180/200 → ACK → {} ms → BYE); Kamailio relays no media | {} | {} | {} | — |\n",
        rate("callfix_rate"),
        or_na(s("call_hold_ms")),
        or_na(a.map(|v| fmt_num(v, 0))),
        or_na(b.map(|v| fmt_num(v, 0))),
        ratio_of(a, b)
    ));
    let (a, b) = (cpu_per(g, "callfix_gw"), cpu_per(g, "callfix_kam"));
    out.push_str(&format!(
        "| CPU µs per F7 call at {} (gateway: B2BUA + RTP relay set-up; Kamailio: stateful proxy) | {} | {} | {} | — |\n",
        rate("callfix_rate"),
        or_na(a.map(|v| fmt_num(v, 1))),
        or_na(b.map(|v| fmt_num(v, 1))),
        ratio_of(a, b)
    ));
    let (a, b) = (num(g, "callsat_gw_per_sec"), num(g, "callsat_kam_per_sec"));
    out.push_str(&format!(
        "| F7 local calls completed/s at saturation (best load level with ≤ 1 % failed); ratio Trunkline ÷ Kamailio | {} | {} | {} | — |\n",
        or_na(sat("callsat_gw")),
        or_na(sat("callsat_kam")),
        ratio_of(a, b)
    ));
    for (flow, what) in [
        ("f1", "F1 browser (headless client) → desk phone"),
        ("f2", "F2 desk phone on gateway A → desk phone on gateway B"),
        ("f3", "F3 desk phone → switchless browser"),
    ] {
        let pair = |k: &str| match (s(&format!("setup_{flow}_{k}_p50_ms")), s(&format!("setup_{flow}_{k}_p99_ms"))) {
            (Some(a), Some(b)) => format!("{a} / {b}"),
            _ => "n/a".into(),
        };
        let n = s(&format!("setup_{flow}_ok")).unwrap_or_else(|| "n/a".into());
        out.push_str(&format!("| {what}: dial → ringing, p50 / p99 ms ({n} calls) | {} | — | — | — |\n", pair("ringing")));
        out.push_str(&format!("| {what}: dial → first audio, p50 / p99 ms | {} | — | — | — |\n", pair("audio")));
    }
    // The old ramp (part `media`, no longer run by default: on shared cores the generator and
    // the machine set its delay figure) has its row only when it ran; `mediawebrtc` measures
    // bridging capacity now.
    if s("media_steps_run").is_some() {
        media_ramp_row(out, &s);
    }
    crate::mediacpu::rows(out, g);
    crate::mediawebrtc::rows(out, g);
}

fn media_ramp_row(out: &mut String, s: &dyn Fn(&str) -> Option<String>) {
    let best = s("media_max_calls_ok");
    let limit = match (s("media_failed_step"), s("media_failed_because")) {
        (Some(n), Some(why)) => format!(
            " (first step missed: {n} calls, {why}; no loss and p99 < 1 ms browser → phone only: up to {} calls; no loss, any delay: up to {} calls{})",
            or_na(s("media_max_calls_up_ok")),
            or_na(s("media_max_calls_no_loss")),
            s("media_generator_limit_at")
                .map(|g| format!("; the load generator fell behind its 50 packets/s per call at {g}"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    out.push_str(&format!(
        "| concurrent bridged WebRTC⇄RTP G.711 calls on one gateway with no loss and p99 added delay < 1 ms{limit} | {} | — | — | ≥ 2,000 |\n",
        or_na(best)
    ));
}

fn gateway_notes(notes: &mut Vec<String>, g: &Kv) {
    if g.is_empty() {
        return;
    }
    let s = |k: &str| or_na(g.get(k).cloned());
    let n0 = |k: &str| or_na(num(g, k).map(|v| fmt_num(v, 0)));
    notes.push(format!(
        "REGISTER saturation: {} sipp instances per peer, each keeping N registrations in flight, {} s after {} s warm-up, for N per sipp = \
         Trunkline {} — Kamailio {}; best: Trunkline N={} per instance {}/s ({} retransmissions, {} datagrams dropped at its SIP socket, \
         gateway busy {} cores), Kamailio N={} per instance {}/s ({} retransmissions, {} dropped at its socket, {} cores). Fixed rate: \
         Trunkline {} of {} registrations in {} s, CPU {} µs; Kamailio {} of {}, CPU {} µs over {} processes",
        s("reg_gw_instances"),
        s("reg_secs"),
        s("reg_warmup_secs"),
        s("reg_gw_levels"),
        s("reg_kam_levels"),
        s("reg_gw_in_flight"),
        s("reg_gw_per_sec_each"),
        s("reg_gw_retransmissions"),
        s("reg_gw_socket_drops"),
        s("reg_gw_cores"),
        s("reg_kam_in_flight"),
        s("reg_kam_per_sec_each"),
        s("reg_kam_retransmissions"),
        s("reg_kam_socket_drops"),
        s("reg_kam_cores"),
        n0("regfix_gw_ok"),
        n0("regfix_sent"),
        s("regfix_gw_secs"),
        n0("regfix_gw_cpu_us"),
        n0("regfix_kam_ok"),
        n0("regfix_sent"),
        n0("regfix_kam_cpu_us"),
        s("kam_processes"),
    ));
    notes.push(format!(
        "F7 calls: sipp UAC (callers {}) → sipp UAS (callees {}, registered from the UAS's port first), {} ms hold; fixed rate: Trunkline \
         {} ok / {} failed, CPU {} µs (gateway) — Kamailio {} ok / {} failed, CPU {} µs. Saturation, {} UAC instances each keeping N calls in \
         flight, {} s, for N per UAC = Trunkline {} — Kamailio {}; best: Trunkline N={}: {} retransmissions, {} datagrams dropped at its SIP \
         socket (full receive buffer), gateway busy {} cores; Kamailio N={}: {} retransmissions, {} dropped, {} cores. The gateway is a B2BUA \
         that allocates and starts an RTP relay (two port pairs) per call; Kamailio only forwards signalling (record_route + lookup + \
         t_relay) and relays no media",
        s("call_callers"),
        s("call_callees"),
        s("call_hold_ms"),
        n0("callfix_gw_ok"),
        s("callfix_gw_failed"),
        n0("callfix_gw_cpu_us"),
        n0("callfix_kam_ok"),
        s("callfix_kam_failed"),
        n0("callfix_kam_cpu_us"),
        s("callsat_gw_instances"),
        s("call_secs"),
        s("callsat_gw_levels"),
        s("callsat_kam_levels"),
        s("callsat_gw_in_flight"),
        s("callsat_gw_retransmissions"),
        s("callsat_gw_socket_drops"),
        s("callsat_gw_cores"),
        s("callsat_kam_in_flight"),
        s("callsat_kam_retransmissions"),
        s("callsat_kam_socket_drops"),
        s("callsat_kam_cores"),
    ));
    if g.contains_key("setup_calls") {
        let mut parts = Vec::new();
        for f in ["f1", "f2", "f3"] {
            let mut p = format!(
                "{}: {} ok, {} failed in {} s",
                f.to_uppercase(),
                s(&format!("setup_{f}_ok")),
                s(&format!("setup_{f}_failed")),
                s(&format!("setup_{f}_secs"))
            );
            if let Some(e) = g.get(&format!("setup_{f}_first_error")) {
                p.push_str(&format!(" (first error: {e})"));
            }
            parts.push(p);
        }
        notes.push(format!(
            "call setup: {} calls per flow, {} at a time, each hung up at its first audio; the desk phones are bench UAs that answer at once \
             (180 then 200) and send a frame every 20 ms; {}",
            s("setup_calls"),
            s("setup_concurrency"),
            parts.join("; ")
        ));
    }
    let steps = num(g, "media_steps_run").unwrap_or(0.0) as usize;
    if steps > 0 {
        let mut lines = Vec::new();
        for i in 0..steps {
            let k = |x: &str| s(&format!("media_step{i}_{x}"));
            lines.push(format!(
                "N={} ({} up, generator at {} of nominal): loss up {}/{} down {}/{}; delay up p50/p99/max {}/{}/{} ms, down {}/{}/{} ms; gateway {} cores, \
                 load generator {} cores (frame writes late p99 {} ms, {} datagrams dropped at its own sockets), whole machine busy {} cores{}",
                k("calls"),
                k("active"),
                k("send_ratio"),
                k("up_lost"),
                k("up_sent"),
                k("down_lost"),
                k("down_sent"),
                k("up_p50_ms"),
                k("up_p99_ms"),
                k("up_max_ms"),
                k("down_p50_ms"),
                k("down_p99_ms"),
                k("down_max_ms"),
                k("gateway_cores"),
                k("generator_cores"),
                k("gen_late_p99_ms"),
                k("generator_drops"),
                k("machine_busy_cores"),
                if k("pass") == "true" { " — pass".to_string() } else { " — FAIL".to_string() },
            ));
        }
        notes.push(format!(
            "concurrent calls ramp ({} s window per step; up = browser → gateway → phone, down = back): {}",
            s("media_window_secs"),
            lines.join("; ")
        ));
    }
}

/// "cluster / single" of a key present for both (`c_KEY`, `s_KEY`).
fn both(c: &Kv, key: &str, decimals: usize, unit: &str) -> String {
    let one = |p: &str| or_na(num(c, &format!("{p}_{key}")).map(|v| format!("{}{unit}", fmt_num(v, decimals))));
    format!("{} / {}", one("c"), one("s"))
}

fn cluster_rows(out: &mut String, c: &Kv) {
    if c.is_empty() {
        return;
    }
    let skipped = c.get("skipped").map(|why| format!(" — **skipped: {why}**")).unwrap_or_default();
    let ratio = |key: &str| ratio_of(num(c, &format!("c_{key}")), num(c, &format!("s_{key}")));
    out.push_str(&format!(
        "| cluster: steering decisions/s at saturation, 3 replicas (callers' switches on R1, callees' on R2/R3) / one process, both on one PostgreSQL{skipped} | {} | — | {} | — |\n",
        both(c, "sat_decisions_per_sec", 0, ""),
        ratio("sat_decisions_per_sec"),
    ));
    let rate = num(c, "rate").map(|r| format!("{}/s", fmt_num(r, 0))).unwrap_or_else(|| "a fixed rate".into());
    out.push_str(&format!(
        "| cluster: CPU µs per decision at {rate}, all 3 replicas summed / one process | {} | — | {} | < 2× single-process CPU (ratio < 2) |\n",
        both(c, "rate_server_cpu_us_per_decision", 1, ""),
        ratio("rate_server_cpu_us_per_decision"),
    ));
    out.push_str(&format!(
        "| cluster: CPU µs per decision at saturation (the first row's median interval), all 3 replicas summed / one process | {} | — | {} | — |\n",
        both(c, "sat_server_cpu_us_per_decision", 1, ""),
        ratio("sat_server_cpu_us_per_decision"),
    ));
    let pair = |p: &str| match (num(c, &format!("{p}_f4_ringing_p50_ms")), num(c, &format!("{p}_f4_ringing_p99_ms"))) {
        (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
        _ => "n/a".into(),
    };
    out.push_str(&format!(
        "| cluster: F4 dial → ringing, p50 / p99 ms: browser on R1 → browser on R2 ({} calls) ‖ one process ({} calls) | {} ‖ {} | — | — | — |\n",
        or_na(c.get("c_f4_ok").cloned()),
        or_na(c.get("s_f4_ok").cloned()),
        pair("c"),
        pair("s"),
    ));
    let pair = |p: &str| match (num(c, &format!("{p}_f4_declined_p50_ms")), num(c, &format!("{p}_f4_declined_p99_ms"))) {
        (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
        _ => "n/a".into(),
    };
    out.push_str(&format!(
        "| cluster: F4 dial → the callee's decline back at the caller (`outcome`; R1 → R2 → R1), p50 / p99 ms: cluster ‖ one process | {} ‖ {} | — | — | — |\n",
        pair("c"),
        pair("s"),
    ));
    let added = |q: &str| match (num(c, &format!("c_f4_ringing_{q}_ms")), num(c, &format!("s_f4_ringing_{q}_ms"))) {
        (Some(a), Some(b)) => format!("{:.2}", a - b),
        _ => "n/a".into(),
    };
    out.push_str(&format!(
        "| cluster: added dial → ringing latency of a cross-replica F4 over one process, p50 / p99 ms (ringing leaves R1 with the `incoming` to R2) | {} / {} | — | — | p99 < 5 ms on loopback |\n",
        added("p50"),
        added("p99"),
    ));
}

fn cluster_notes(notes: &mut Vec<String>, c: &Kv) {
    if c.is_empty() {
        return;
    }
    if let Some(why) = c.get("skipped") {
        notes.push(format!("cluster phase skipped: {why}"));
        return;
    }
    let s = |k: &str| or_na(c.get(k).cloned());
    let mut parts = Vec::new();
    for (p, who) in [("c", "3 replicas"), ("s", "one process")] {
        let k = |x: &str| s(&format!("{p}_{x}"));
        let kinds = |run: &str| match c.get(&format!("{p}_{run}_outcomes_not_busy_kinds")) {
            Some(v) if !v.is_empty() => v.clone(),
            _ => "none".into(),
        };
        parts.push(format!(
            "{who}: saturation runs {} decisions/s ({} s each after {} s warm-up), server CPU {} µs per decision ({} cores) at saturation, \
             load generator {} cores; fixed rate: {} decisions in {} s, CPU per replica over the whole rate run {} µs, route latency p50 {} µs \
             p99 {} µs; outcomes other than busy {} ({}) / {} ({}), queries without an outcome {} / {}, errors {} / {}, disconnects {} / {} \
             (saturation / rate); F4: {} ok, {} failed ({}) in {} s, outcomes {}, ringing p90 {} ms, max {} ms{}",
            k("sat_decisions_per_sec_runs"),
            k("sat_secs"),
            s("sat_warmup_secs"),
            k("sat_server_cpu_us_per_decision"),
            k("sat_server_cpu_cores"),
            k("sat_client_cpu_cores"),
            k("rate_decisions"),
            k("rate_secs"),
            k("rate_server_cpu_us_each_whole_run"),
            k("rate_route_latency_p50_us"),
            k("rate_route_latency_p99_us"),
            k("sat_outcomes_not_busy"),
            kinds("sat"),
            k("rate_outcomes_not_busy"),
            kinds("rate"),
            k("sat_queries_without_outcome"),
            k("rate_queries_without_outcome"),
            k("sat_errors"),
            k("rate_errors"),
            k("sat_disconnects"),
            k("rate_disconnects"),
            k("f4_ok"),
            k("f4_failed"),
            c.get(&format!("{p}_f4_first_error")).map(|e| format!("first error: {e}")).unwrap_or_else(|| "no error".into()),
            k("f4_secs"),
            k("f4_outcomes"),
            k("f4_ringing_p90_ms"),
            k("f4_ringing_max_ms"),
            c.get(&format!("{p}_error")).map(|e| format!("; **failed: {e}**")).unwrap_or_default(),
        ));
    }
    notes.push(format!(
        "cluster ({} switch pairs, {} queries in flight per caller switch; F4 {} callers at a time, each callee declines at once): {}; \
         lines the replicas logged at warn level or above, r1 / r2 / r3: {} / {} / {}",
        s("pairs"),
        s("window"),
        s("f4_concurrency"),
        parts.join(". "),
        s("c_r1_log_lines"),
        s("c_r2_log_lines"),
        s("c_r3_log_lines"),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(fmt_num(0.0, 0), "0");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(1000.0, 0), "1,000");
        assert_eq!(fmt_num(26123.4, 0), "26,123");
        assert_eq!(fmt_num(1234567.891, 1), "1,234,567.9");
        assert_eq!(fmt_num(-4321.0, 0), "-4,321");
    }

    #[test]
    fn missing_measurements_print_na() {
        let t = table(&Inputs {
            saturate: Kv::new(),
            rate: Kv::new(),
            idle: Kv::new(),
            kamailio: [("cpu_us", "950000"), ("replies_302", "50000"), ("rate", "5000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            gateway: Kv::new(),
            web: [("wasm_raw", "500000"), ("wasm_gzip", "190000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            natlab: [("calls", "20"), ("s1_p50", "120.5")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cluster: [("skipped", "NATS is not reachable")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cores: 2,
            date: "today".into(),
        });
        assert!(t.contains("| n/a | 19.0 | n/a |"), "{t}");
        assert!(t.contains("| 500,000 / 190,000 |"), "{t}");
        assert!(t.contains("| n/a ms |"), "time to interactive not measured: {t}");
        assert!(t.contains("at 5,000/s"), "{t}");
        assert!(t.contains("(20 calls, headless Chromium) | 120.5 / n/a |"), "{t}");
        assert!(t.contains("**skipped: NATS is not reachable**"), "{t}");
        assert!(t.contains("cluster phase skipped: NATS is not reachable"), "{t}");
    }

    #[test]
    fn cluster_rows_compare_three_replicas_with_one_process() {
        let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Kv>();
        let mut out = String::new();
        cluster_rows(
            &mut out,
            &kv(&[
                ("rate", "1000"),
                ("c_sat_decisions_per_sec", "3000"),
                ("s_sat_decisions_per_sec", "12000"),
                ("c_rate_server_cpu_us_per_decision", "300"),
                ("s_rate_server_cpu_us_per_decision", "200"),
                ("c_f4_ringing_p50_ms", "1.5"),
                ("c_f4_ringing_p99_ms", "4.25"),
                ("s_f4_ringing_p50_ms", "0.5"),
                ("s_f4_ringing_p99_ms", "1.0"),
            ]),
        );
        assert!(out.contains("| 3,000 / 12,000 | — | 0.25 |"), "{out}");
        assert!(out.contains("at 1,000/s, all 3 replicas summed / one process | 300.0 / 200.0 | — | 1.50 |"), "{out}");
        assert!(out.contains("| 1.50 / 4.25 ‖ 0.50 / 1.00 |"), "{out}");
        assert!(
            out.contains("over one process, p50 / p99 ms (ringing leaves R1 with the `incoming` to R2) | 1.00 / 3.25 |"),
            "{out}"
        );
    }
}
