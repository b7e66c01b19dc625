//! What the benchmark reads from /proc: a process's CPU time (user + system, all threads,
//! optionally with its descendant processes) and its resident memory.

use std::fs;
use std::io;

/// Clock ticks per second of the `utime`/`stime` fields of /proc/PID/stat.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Fields of /proc/PID/stat after the `(comm)` field, which may itself contain spaces.
/// Index 0 is field 3 (`state`) of proc(5).
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// utime and stime of one process (all its threads, including ones that exited), in ticks.
fn cpu_split_ticks(pid: u32) -> io::Result<(u64, u64)> {
    let f = stat_fields(pid)?;
    // proc(5): utime is field 14, stime field 15 → indexes 11 and 12 here.
    let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((parse(11), parse(12)))
}

/// CPU time of `pid` alone so far, split into user and system (kernel) time, in microseconds.
/// The system part is the process's syscalls and the softirq work charged to it (on loopback,
/// a send also delivers the datagram to the receiving socket).
pub fn cpu_split_us(pid: u32) -> io::Result<(u64, u64)> {
    cpu_tree_split_us(pid, false)
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid).ok()?.get(1)?.parse().ok()
}

/// `pid` and all its descendants that are alive now.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(pp) = parent_of(p)
            {
                all.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// CPU time used so far, in microseconds: of `pid` alone, or of `pid` and its descendants
/// (Kamailio is several processes).
pub fn cpu_us(pid: u32, with_children: bool) -> io::Result<u64> {
    cpu_tree_split_us(pid, with_children).map(|(user, system)| user + system)
}

/// As [`cpu_us`], split into user and system (kernel) time, in microseconds.
fn cpu_tree_split_us(pid: u32, with_children: bool) -> io::Result<(u64, u64)> {
    let pids = if with_children { process_tree(pid) } else { vec![pid] };
    let (mut user, mut system) = cpu_split_ticks(pid)?;
    for p in pids.into_iter().filter(|p| *p != pid) {
        let (u, s) = cpu_split_ticks(p).unwrap_or((0, 0));
        user += u;
        system += s;
    }
    let hz = clock_ticks_per_sec();
    Ok((user * 1_000_000 / hz, system * 1_000_000 / hz))
}

/// CPU time of this process so far, in microseconds.
pub fn self_cpu_us() -> u64 {
    cpu_us(std::process::id(), false).unwrap_or(0)
}

/// Resident set size (VmRSS) in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb: u64 = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed VmRSS line"))?;
            return Ok(kb * 1024);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no VmRSS in /proc/PID/status"))
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> u64 {
    stat_fields(pid).ok().and_then(|f| f.get(17).and_then(|v| v.parse().ok())).unwrap_or(0)
}

/// Context switches (voluntary + involuntary) of all live threads of `pid` so far: each one a
/// thread going to sleep or being preempted, so a rough count of wake-ups.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut total = 0;
    for e in rd.flatten() {
        let Ok(s) = fs::read_to_string(e.path().join("status")) else { continue };
        for line in s.lines() {
            if let Some(v) =
                line.strip_prefix("voluntary_ctxt_switches:").or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// CPU time the whole machine spent busy so far (all cores: user, nice, system, irq, softirq,
/// steal from the `cpu` line of /proc/stat), in microseconds.
pub fn machine_busy_us() -> u64 {
    let Ok(s) = fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy * 1_000_000 / clock_ticks_per_sec()
}
