//! Rates from sipp's statistics files (`-trace_stat -stf FILE -fd 1`: one ';'-separated row
//! per second with cumulative counters). A rate is taken between the first row at least
//! `skip` seconds after the start (warm-up) and the last row, per sipp instance, and summed
//! over the instances that ran side by side.

use std::path::Path;

struct Row {
    /// CurrentTime, Unix seconds.
    t: f64,
    ok: f64,
    failed: f64,
    retrans: f64,
}

fn rows(path: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or_else(|| format!("{}: empty", path.display()))?.split(';').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("{}: no column {name}", path.display()));
    let (ct, ok, failed, retrans) =
        (col("CurrentTime")?, col("SuccessfulCall(C)")?, col("FailedCall(C)")?, col("Retransmissions(C)")?);
    let mut out = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(';').collect();
        // CurrentTime is "date<TAB>time<TAB>unix.seconds".
        let Some(t) = f.get(ct).and_then(|v| v.rsplit('\t').next()).and_then(|v| v.trim().parse::<f64>().ok()) else { continue };
        let num = |i: usize| f.get(i).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0);
        out.push(Row { t, ok: num(ok), failed: num(failed), retrans: num(retrans) });
    }
    Ok(out)
}

/// Successful calls per second over the steady part of each file (from `skip` seconds after
/// its start, for at most `secs` seconds when given), summed; plus totals.
pub fn rates(files: &[std::path::PathBuf], skip: f64, secs_limit: Option<f64>) -> Result<Vec<(String, String)>, String> {
    let mut rate = 0.0;
    let (mut ok, mut failed, mut retrans) = (0.0, 0.0, 0.0);
    let mut per = Vec::new();
    let mut secs = 0.0f64;
    for f in files {
        let r = rows(f)?;
        let (Some(first), Some(last)) = (r.first(), r.last()) else { return Err(format!("{}: no rows", f.display())) };
        let from = r.iter().find(|x| x.t >= first.t + skip).unwrap_or(first);
        let last = match secs_limit {
            Some(s) => r.iter().rfind(|x| x.t <= from.t + s + 0.5).unwrap_or(last),
            None => last,
        };
        let span = last.t - from.t;
        let this = if span > 0.0 { (last.ok - from.ok) / span } else { 0.0 };
        rate += this;
        per.push(format!("{this:.0}"));
        secs = secs.max(span);
        ok += last.ok;
        failed += last.failed;
        retrans += last.retrans;
    }
    Ok(vec![
        ("per_sec".into(), format!("{rate:.0}")),
        ("per_sec_each".into(), per.join(" ")),
        ("instances".into(), files.len().to_string()),
        ("measured_secs".into(), format!("{secs:.1}")),
        ("successful".into(), format!("{ok:.0}")),
        ("failed".into(), format!("{failed:.0}")),
        ("retransmissions".into(), format!("{retrans:.0}")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_after_warmup() {
        let dir = std::env::temp_dir().join(format!("sippstat-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.csv");
        let mut s = String::from("StartTime;CurrentTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n");
        for (t, ok) in [(0, 0), (1, 500), (2, 1500), (3, 2500), (4, 3500)] {
            s.push_str(&format!("x\t0;2026-01-01\t00:00:0{t}\t{}.0;{ok};1;2;\n", 1000 + t));
        }
        std::fs::write(&f, s).unwrap();
        let kv = rates(&[f.clone(), f.clone()], 2.0, None).unwrap();
        let get = |k: &str| kv.iter().find(|(a, _)| a == k).unwrap().1.clone();
        assert_eq!(get("per_sec"), "2000");
        assert_eq!(get("successful"), "7000");
        assert_eq!(get("failed"), "2");
        let kv = rates(&[f], 1.0, Some(1.0)).unwrap();
        assert_eq!(kv[0].1, "1000");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
