//! The directory of the gateway benchmarks, provisioned through the signal server's admin
//! REST API (`POST /api/switches`, `POST /api/accounts`): switches `hq` and `br`, desk phones
//! on each (number ranges), browser accounts; and the files sipp and Kamailio read for the
//! same phones (sipp `-inf` CSV files; Kamailio's HA1 table, `credentials.cfg`).
//!
//! A desk phone's password is `pw-<number>` ([`phone_password`]): the gateway and Kamailio
//! check the same credentials.

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::provision::{Http, create, json_str};

pub const REALM: &str = "trunkline";

pub fn phone_password(number: &str) -> String {
    format!("pw-{number}")
}

/// "1000-1999" or "1000-1999,7000-7599".
pub fn parse_ranges(s: &str) -> Result<Vec<RangeInclusive<u64>>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p.trim().split_once('-').ok_or_else(|| format!("{p:?}: expected FIRST-LAST"))?;
            let (a, b): (u64, u64) = (a.parse().map_err(|_| format!("{p:?}"))?, b.parse().map_err(|_| format!("{p:?}"))?);
            if a > b {
                return Err(format!("{p:?}: FIRST > LAST"));
            }
            Ok(a..=b)
        })
        .collect()
}

pub struct Params {
    pub addr: String,
    pub token: String,
    pub switch_secret: String,
    pub hq: Vec<RangeInclusive<u64>>,
    pub br: Vec<RangeInclusive<u64>>,
    pub browsers: Vec<RangeInclusive<u64>>,
    pub browser_password: String,
    pub concurrency: usize,
}

pub async fn provision(p: Params) -> Result<Vec<(String, String)>, String> {
    let started = Instant::now();
    let mut http = Http::new(&p.addr, &p.token);
    for sw in ["hq", "br"] {
        let body = format!(r#"{{"id":{},"secret":{}}}"#, json_str(sw), json_str(&p.switch_secret));
        create(&mut http, "/api/switches", body, &format!("switch {sw}")).await?;
    }
    // (number, switch or None for a browser)
    let mut todo: Vec<(String, Option<&'static str>)> = Vec::new();
    for (ranges, sw) in [(&p.hq, Some("hq")), (&p.br, Some("br")), (&p.browsers, None)] {
        for r in ranges {
            todo.extend(r.clone().map(|n| (n.to_string(), sw)));
        }
    }
    let total = todo.len();
    let todo = Arc::new(todo);
    let next = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(0));
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let (p, todo, next, made) = (p.clone(), todo.clone(), next.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::new(&p.addr, &p.token);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((number, sw)) = todo.get(i) else { return Ok::<(), String>(()) };
                let body = match sw {
                    Some(sw) => format!(
                        r#"{{"number":{},"password":{},"switch":{}}}"#,
                        json_str(number),
                        json_str(&phone_password(number)),
                        json_str(sw)
                    ),
                    None => format!(
                        r#"{{"number":{},"password":{},"kind":"browser"}}"#,
                        json_str(number),
                        json_str(&p.browser_password)
                    ),
                };
                if create(&mut http, "/api/accounts", body, &format!("account {number}")).await? {
                    made.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(vec![
        ("accounts".into(), total.to_string()),
        ("created".into(), made.load(Ordering::Relaxed).to_string()),
        ("secs".into(), format!("{:.1}", started.elapsed().as_secs_f64())),
    ])
}

/// sipp's `[authentication]` keyword for `number`, whole: sipp 3.6.1 does not expand
/// `[fieldN]` inside it, but does expand keywords that come from an `-inf` field.
fn auth_keyword(number: &str) -> String {
    format!("[authentication username={number} password={}]", phone_password(number))
}

/// Write `users.csv` (REGISTER: number;password;auth), `callees.csv` (the same for the UAS's
/// numbers), `callers.csv` (caller;auth;callee, caller i calls callee i) and `credentials.cfg`
/// (Kamailio: `$sht(ha1=>N) = "HA1";` for the users, callers and callees) into `dir`. With
/// `parts` > 1, also `users-1.csv` … `users-<parts>.csv`: the users split into that many
/// contiguous runs, one per sipp, so each phone always registers from the same sipp (and port)
/// as a real phone refreshes from where it is.
pub fn sip_files(
    dir: &Path,
    users: &[RangeInclusive<u64>],
    callers: RangeInclusive<u64>,
    callees: RangeInclusive<u64>,
    parts: usize,
) -> Result<Vec<(String, String)>, String> {
    use std::fmt::Write;
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"));
    // sipp's -inf format: a first line naming the order, then one row per line.
    let sequential = |rows: &[String]| rows.iter().fold(String::from("SEQUENTIAL\n"), |t, r| t + r + "\n");
    let mut rows = Vec::new();
    let mut creds = String::new();
    for r in users {
        for n in r.clone() {
            let n = n.to_string();
            rows.push(format!("{n};{};{}", phone_password(&n), auth_keyword(&n)));
            let ha1 = trunkline_sip::digest::ha1(trunkline_sip::digest::Algorithm::Md5, &n, REALM, &phone_password(&n));
            let _ = writeln!(creds, "$sht(ha1=>{n}) = \"{ha1}\";");
        }
    }
    let n_users = rows.len();
    if parts > 1 {
        for (i, chunk) in rows.chunks(n_users.div_ceil(parts).max(1)).enumerate() {
            w(&format!("users-{}.csv", i + 1), sequential(chunk))?;
        }
    }
    w("users.csv", sequential(&rows))?;
    for n in callers.clone().chain(callees.clone()) {
        let n = n.to_string();
        let ha1 = trunkline_sip::digest::ha1(trunkline_sip::digest::Algorithm::Md5, &n, REALM, &phone_password(&n));
        let _ = writeln!(creds, "$sht(ha1=>{n}) = \"{ha1}\";");
    }
    w("credentials.cfg", creds)?;
    let mut ce = String::from("SEQUENTIAL\n");
    for n in callees.clone() {
        let n = n.to_string();
        let _ = writeln!(ce, "{n};{};{}", phone_password(&n), auth_keyword(&n));
    }
    w("callees.csv", ce)?;
    let mut cr = String::from("SEQUENTIAL\n");
    let pairs = callers.clone().zip(callees.clone()).count();
    for (a, b) in callers.zip(callees) {
        let a = a.to_string();
        let _ = writeln!(cr, "{a};{};{b}", auth_keyword(&a));
    }
    w("callers.csv", cr)?;
    Ok(vec![("users".into(), n_users.to_string()), ("call_pairs".into(), pairs.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_ranges("1000-1999,7000-7001").unwrap(), vec![1000..=1999, 7000..=7001]);
        assert!(parse_ranges("5-4").is_err());
        assert!(parse_ranges("12").is_err());
        assert!(parse_ranges("").unwrap().is_empty());
    }

    #[test]
    fn files() {
        let d = tempdir();
        sip_files(&d, &[1000..=1002], 1000..=1000, 1001..=1001, 2).unwrap();
        let users = std::fs::read_to_string(d.join("users.csv")).unwrap();
        assert_eq!(users.lines().nth(1), Some("1000;pw-1000;[authentication username=1000 password=pw-1000]"));
        let part = |i: usize| std::fs::read_to_string(d.join(format!("users-{i}.csv"))).unwrap();
        assert_eq!(part(1).lines().skip(1).map(|l| &l[..4]).collect::<Vec<_>>(), ["1000", "1001"]);
        assert_eq!(part(2).lines().skip(1).map(|l| &l[..4]).collect::<Vec<_>>(), ["1002"]);
        assert!(part(2).starts_with("SEQUENTIAL\n"));
        let creds = std::fs::read_to_string(d.join("credentials.cfg")).unwrap();
        // MD5("1000:trunkline:pw-1000")
        assert!(creds.starts_with("$sht(ha1=>1000) = \"6aea906294ddefffceded9f27e892a0b\";"), "{creds}");
        let callers = std::fs::read_to_string(d.join("callers.csv")).unwrap();
        assert_eq!(callers.lines().nth(1), Some("1000;[authentication username=1000 password=pw-1000];1001"));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("trunkline-bench-test-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
