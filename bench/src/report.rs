//! The one table `run.sh` prints, from the `key=value` files the measurements wrote.

use std::collections::HashMap;
use std::path::Path;

pub type Kv = HashMap<String, String>;

pub fn read_kv(path: Option<&Path>) -> Kv {
    let Some(path) = path else { return Kv::new() };
    let Ok(text) = std::fs::read_to_string(path) else { return Kv::new() };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
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
    out.push_str(&format!(
        "| steering decisions/s at saturation (B2 `route_query` answered with B5 `route`) | {} | — | — | ≥ 26,000/s |\n",
        or_na(sat.map(|v| fmt_num(v, 0)))
    ));
    out.push_str(&format!(
        "| CPU µs per decision (Trunkline) / per 302 (Kamailio), both at {rate_s} | {} | {} | {} | ratio ≤ 0.50 |\n",
        or_na(ours_cpu.map(|v| fmt_num(v, 1))),
        or_na(kam_cpu.map(|v| fmt_num(v, 1))),
        or_na(ratio.map(|v| format!("{v:.2}"))),
    ));
    out.push_str(&format!(
        "| memory per idle authenticated WebSocket (bytes, RSS growth over {}) | {} | — | — | < 8 kB |\n",
        conns.unwrap_or_else(|| "the idle connections".into()),
        or_na(per_conn.map(|v| fmt_num(v, 0)))
    ));
    out.push_str(&format!("\nMachine: {} CPU cores; {}.\n", i.cores, i.date));

    // Details that make the numbers checkable.
    let mut notes = Vec::new();
    if !i.saturate.is_empty() {
        let s = &i.saturate;
        notes.push(format!(
            "saturation: median of {} runs (decisions/s: {}); that run: {} decisions in {} s over {} switch pairs, \
             {} queries in flight per caller switch; server used {} cores ({} µs CPU per decision), load \
             generator {} cores; {} errors, {} switch disconnects",
            or_na(s.get("runs").cloned()),
            or_na(s.get("decisions_per_sec_runs").cloned()),
            or_na(num(s, "decisions").map(|v| fmt_num(v, 0))),
            or_na(s.get("secs").cloned()),
            or_na(s.get("pairs").cloned()),
            or_na(s.get("window").cloned()),
            or_na(s.get("server_cpu_cores").cloned()),
            or_na(s.get("server_cpu_us_per_decision").cloned()),
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
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
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
            cores: 2,
            date: "today".into(),
        });
        assert!(t.contains("| n/a | 19.0 | n/a |"), "{t}");
        assert!(t.contains("at 5,000/s"), "{t}");
    }
}
