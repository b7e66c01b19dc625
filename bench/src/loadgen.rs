//! What the media load generators share: batched UDP, pinning, renice, sockets; and the
//! per-window counters and the step they add up to (`mediacpu`, `mediawebrtc`).

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use trunkline_media::g711::Law;
use trunkline_media::sdp::AudioSdp;

use crate::procfs;

/// Windows are numbered in a byte of the payload; window 0 is the warm-up (never counted).
pub const WINDOWS: usize = 256;
/// Datagrams per sendmmsg/recvmmsg call.
pub const BATCH: usize = 64;

/// One counter per window.
pub fn counters() -> Vec<AtomicU64> {
    (0..WINDOWS).map(|_| AtomicU64::new(0)).collect()
}

pub fn v4(a: SocketAddr) -> Result<SocketAddrV4, String> {
    match a {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(format!("{a}: IPv4 expected")),
    }
}

pub fn sockaddr_in(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// Receive up to BATCH datagrams (non-blocking) into `bufs`; lengths and IPv4 sources out.
pub fn recv_batch(fd: i32, bufs: &mut [[u8; 2048]; BATCH], out: &mut Vec<(usize, SocketAddrV4)>) {
    out.clear();
    let mut iov: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    // SAFETY: zeroed sockaddr_in / mmsghdr are valid plain values.
    let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for j in 0..BATCH {
        iov[j] = libc::iovec { iov_base: bufs[j].as_mut_ptr() as *mut libc::c_void, iov_len: 2048 };
        msgs[j].msg_hdr.msg_name = &mut names[j] as *mut _ as *mut libc::c_void;
        msgs[j].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msgs[j].msg_hdr.msg_iov = &mut iov[j];
        msgs[j].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `msgs` points into locals or `bufs`, alive for the call.
    let r = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
    for j in 0..r.max(0) as usize {
        let a = &names[j];
        let src = SocketAddrV4::new(u32::from_be(a.sin_addr.s_addr).into(), u16::from_be(a.sin_port));
        out.push(((msgs[j].msg_len as usize).min(2048), src));
    }
}

/// Pin every thread of `pid` to `cpu` (None: back to every core). Threads started later
/// inherit the mask of the thread that starts them. Returns how many threads were pinned.
pub fn pin_process(pid: u32, cpu: Option<usize>) -> usize {
    // Online cores, not available_parallelism: that one follows this process's own mask.
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within its fixed size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in 0..cores {
        if cpu.is_none_or(|want| want == c) {
            // SAFETY: as above.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut pinned = 0;
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: sched_setaffinity reads the local set of the size given.
        if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } == 0 {
            pinned += 1;
        }
    }
    pinned
}

/// Set the nice value of every thread of `pid` (a busy shared machine would otherwise give the
/// generator and the relay a third of their core each; -10 asks the scheduler to prefer them,
/// the same for both relays). Fails quietly without the privilege.
pub fn renice_process(pid: u32, nice: i32) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok()) else { continue };
        // SAFETY: setpriority has no memory preconditions.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    }
}

/// This process (and every thread it starts from here on) on the generator's core, at `nice`.
pub fn hold_generator(cpu: usize, nice: i32) {
    pin_process(std::process::id(), Some(cpu));
    renice_process(std::process::id(), nice);
    // With scheduler autogroups a thread's nice only counts inside its session: a session of
    // its own, with the same nice, so the generator is not starved by other sessions' work.
    // SAFETY: setsid has no memory preconditions; it fails harmlessly for a group leader.
    if unsafe { libc::setsid() } >= 0 {
        let _ = std::fs::write("/proc/self/autogroup", nice.to_string());
    }
}

/// The relay under test on its core at `nice`; how many of its threads were pinned.
pub fn hold_relay(pid: u32, cpu: usize, nice: i32) -> usize {
    let pinned = pin_process(pid, Some(cpu));
    renice_process(pid, nice);
    // The relay's session (run.sh's) gets the same autogroup nice as the generator's.
    let _ = std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string());
    pinned
}

/// Undo [`hold_relay`].
pub fn release_relay(pid: u32) {
    pin_process(pid, None);
    renice_process(pid, 0);
    let _ = std::fs::write(format!("/proc/{pid}/autogroup"), "0");
}

pub fn bind_generator_socket() -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    // Big buffers each way, so that the generator's own sockets are not where packets are lost (the
    // kernel caps it at rmem_max/wmem_max; the kernel's drop counter is reported).
    // As root, the *FORCE options pass the cap (32 MB: ~40,000 datagrams, 0.25 s at 150,000/s).
    let v: libc::c_int = 32 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF, libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a pointer to a local int of the right size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(s)
}

/// A desk phone's SDP, as the bench UA writes it (PCMU, telephone-event at `event_pt`).
pub fn phone_sdp(id: u64, rtp: SocketAddrV4, event_pt: u8) -> String {
    AudioSdp::new((*rtp.ip()).into(), rtp.port())
        .origin("bench", id)
        .session_name("-")
        .law(Law::Mu)
        .telephone_event(event_pt)
        .build()
        .unwrap_or_default()
}

/// A number from the bench's kv, finite or nothing.
pub fn num(g: &crate::report::Kv, k: &str) -> Option<f64> {
    g.get(k)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `a ÷ b` for the bench table, "n/a" without both.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    }
}

/// The row that splits a part's CPU per packet into the kernel's share and ours (at the same
/// call count as the CPU row before it): what the peers' code costs apart from the syscalls
/// and the loopback delivery both pay for. `what` names the part in the row ("WebRTC ⇄ RTP
/// bridge").
pub fn kernel_row(out: &mut String, c: &Compare, what: &str) {
    let fmt = crate::report::fmt_num;
    let split = |peer: &str| match (c.at(peer, "cpu_us_per_pkt"), c.at(peer, "sys_us_per_pkt")) {
        (Some(all), Some(sys)) => Some((all - sys, sys)),
        _ => None,
    };
    let (gw, rte) = (split("gw"), split("rte"));
    let cell = |v: Option<(f64, f64)>| match v {
        Some((user, sys)) => format!("{} + {}", fmt(user, 2), fmt(sys, 2)),
        None => "n/a".to_string(),
    };
    out.push_str(&format!(
        "| {what}: the CPU per packet above split into user space + kernel (system time: the syscalls, and on loopback the delivery each send does for its receiver), µs; ratio of the user-space parts | {} | {} | {} | — |
",
        cell(gw),
        cell(rte),
        ratio(gw.map(|v| v.0), rte.map(|v| v.0)),
    ));
}

/// One part's `{part}_{peer}_*` keys of gateway.kv, read at the largest call count both
/// peers (`gw`, `rte`) carried with zero loss.
pub struct Compare<'a> {
    g: &'a crate::report::Kv,
    part: &'a str,
    /// That call count (one peer's own, when only one ran).
    pub common: Option<f64>,
}

impl<'a> Compare<'a> {
    pub fn new(g: &'a crate::report::Kv, part: &'a str) -> Compare<'a> {
        let common = match (num(g, &format!("{part}_gw_max_calls_zero_loss")), num(g, &format!("{part}_rte_max_calls_zero_loss")))
        {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Compare { g, part, common }
    }

    /// The index of `peer`'s step at `calls`.
    fn step_of(&self, peer: &str, calls: f64) -> Option<usize> {
        let part = self.part;
        let n = num(self.g, &format!("{part}_{peer}_steps_run")).unwrap_or(0.0) as usize;
        (0..n).find(|i| num(self.g, &format!("{part}_{peer}_step{i}_calls")) == Some(calls))
    }

    /// `peer`'s step key `k` at the common call count.
    pub fn at(&self, peer: &str, k: &str) -> Option<f64> {
        let i = self.step_of(peer, self.common?)?;
        num(self.g, &format!("{}_{peer}_step{i}_{k}", self.part))
    }
}

/// The kv lines every generator run starts with.
pub fn params_kv(steps: &[usize], secs: f64, generator_cpu: usize, relay_cpu: usize, nice: i32) -> Vec<(String, String)> {
    vec![
        ("steps".to_string(), steps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")),
        ("secs".to_string(), secs.to_string()),
        ("generator_cpu".to_string(), generator_cpu.to_string()),
        ("relay_cpu".to_string(), relay_cpu.to_string()),
        ("nice".to_string(), nice.to_string()),
    ]
}

/// What a generator thread counts for the measuring thread.
pub struct Meter {
    /// Window number stamped into packets now.
    pub window: AtomicUsize,
    /// [direction][window].
    pub sent: [Vec<AtomicU64>; 2],
    pub recv: [Vec<AtomicU64>; 2],
    pub send_errors: AtomicU64,
    /// Calls with packets received both ways.
    pub flowing: AtomicUsize,
    /// Loop iterations where the generator was more than 5 ms behind its schedule.
    pub late: AtomicU64,
    pub stop: AtomicBool,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            window: AtomicUsize::new(0),
            sent: [counters(), counters()],
            recv: [counters(), counters()],
            send_errors: AtomicU64::new(0),
            flowing: AtomicUsize::new(0),
            late: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

/// One measured window at one call count.
pub struct Step {
    pub calls: usize,
    pub secs: f64,
    pub sent: u64,
    pub forwarded: u64,
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the generator's own sockets (full receive buffer).
    pub gen_drops: u64,
    pub cpu_us: u64,
    /// The system (kernel) part of `cpu_us`.
    pub sys_us: u64,
    pub gen_cpu_us: u64,
    pub rss_growth: i64,
    pub late: u64,
    pub attempts: u32,
}

impl Step {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.forwarded)
    }
    pub fn us_per_pkt(&self) -> f64 {
        if self.forwarded == 0 { 0.0 } else { self.cpu_us as f64 / self.forwarded as f64 }
    }
    /// The kernel's part of `us_per_pkt`.
    pub fn sys_us_per_pkt(&self) -> f64 {
        if self.forwarded == 0 { 0.0 } else { self.sys_us as f64 / self.forwarded as f64 }
    }
    pub fn cores(&self) -> f64 {
        self.cpu_us as f64 / 1e6 / self.secs
    }
    pub fn gen_cores(&self) -> f64 {
        self.gen_cpu_us as f64 / 1e6 / self.secs
    }
    /// Packets sent ÷ the nominal 100 per call per second: below 1 when the generator fell
    /// behind (a busy core: it skips what it is more than one period late for).
    pub fn offered(&self) -> f64 {
        self.sent as f64 / (self.calls as f64 * 100.0 * self.secs)
    }
    /// Lost in the relay: lost minus what the kernel dropped at the generator's sockets.
    pub fn relay_lost(&self) -> u64 {
        self.lost().saturating_sub(self.gen_drops)
    }
    /// The generator spoilt the step: it sent < 95 % of the nominal packets, could not send
    /// some, or its own sockets dropped some.
    pub fn generator_fault(&self) -> bool {
        self.offered() < 0.95 || self.send_errors > 0 || self.gen_drops > 0
    }
    /// A step that counts: no loss, nothing unsent, and at least 95 % of the nominal load.
    pub fn clean(&self) -> bool {
        self.lost() == 0 && !self.generator_fault()
    }
    /// Why the ramp stops after this step at `n` calls, if it does; `what` names the process
    /// under test ("relay", "bridge"), `fault_note` ends the generator-fell-behind reason.
    pub fn stop_reason(&self, n: usize, what: &str, fault_note: &str) -> Option<String> {
        if self.relay_lost() > 0 {
            Some(format!("{} packets lost in the {what} at {n} calls", self.relay_lost()))
        } else if self.cores() >= 0.9 {
            Some(format!("{what} at {:.2} of its core at {n} calls", self.cores()))
        } else if self.generator_fault() {
            Some(format!(
                "generator fell behind at {n} calls ({:.0} % of the nominal packets sent, {} dropped at its own sockets, {} unsent; 3 tries){fault_note}",
                self.offered() * 100.0,
                self.gen_drops,
                self.send_errors
            ))
        } else if self.gen_cores() >= 0.9 {
            Some(format!("generator at {:.2} of its core at {n} calls (its limit, not the {what}'s)", self.gen_cores()))
        } else {
            None
        }
    }
}

/// Where a run's windows are measured: the counters, the generator's socket ports (for the
/// kernel's drop counter), the window length and the next window's number.
pub struct Windows<'a> {
    pub m: &'a Meter,
    pub ports: [u16; 2],
    pub secs: f64,
    pub next: usize,
}

impl Windows<'_> {
    /// Wait up to 15 s for `n` calls with media both ways; the ramp's stop reason if not.
    pub fn wait_flowing(&self, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.m.flowing.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let flowing = self.m.flowing.load(Ordering::Relaxed);
        if flowing < n {
            return Err(format!("only {flowing} of {n} calls had media both ways after 15 s"));
        }
        Ok(())
    }

    /// Warm up, then measure one step at `n` calls; `log` prefixes the progress lines.
    pub fn measure_step(&mut self, pid: u32, n: usize, rss0: i64, log: &str) -> Step {
        std::thread::sleep(Duration::from_secs(1)); // warm-up
        // A step the generator spoilt (late on its busy core, or datagrams dropped at its own
        // sockets) is measured again, twice at most; loss the relay caused never is.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let step = self.measure(pid, n, rss0, attempts);
            if step.generator_fault() && step.relay_lost() == 0 && attempts < 3 {
                eprintln!("{log}: {n} calls: the generator fell behind; measuring again");
                continue;
            }
            break step;
        }
    }

    /// One measuring window at `n` calls of the relay `pid`.
    pub fn measure(&mut self, pid: u32, n: usize, rss0: i64, attempts: u32) -> Step {
        let g = self.m;
        let w = 1 + (self.next - 1) % (WINDOWS - 1); // never 0, the warm-up
        self.next += 1;
        for d in 0..2 {
            g.sent[d][w].store(0, Ordering::Relaxed);
            g.recv[d][w].store(0, Ordering::Relaxed);
        }
        let late0 = g.late.load(Ordering::Relaxed);
        let err0 = g.send_errors.load(Ordering::Relaxed);
        let drops0 = crate::udp::drops(&self.ports);
        let (u0, k0) = procfs::cpu_split_us(pid).unwrap_or((0, 0));
        let s0 = procfs::self_cpu_us();
        let t0 = Instant::now();
        g.window.store(w, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs_f64(self.secs));
        g.window.store(0, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let (u1, k1) = procfs::cpu_split_us(pid).unwrap_or((0, 0));
        let s1 = procfs::self_cpu_us();
        std::thread::sleep(Duration::from_millis(300)); // stragglers of the window
        let sum = |c: &[Vec<AtomicU64>; 2]| c[0][w].load(Ordering::Relaxed) + c[1][w].load(Ordering::Relaxed);
        Step {
            calls: n,
            secs,
            sent: sum(&g.sent),
            forwarded: sum(&g.recv),
            send_errors: g.send_errors.load(Ordering::Relaxed) - err0,
            gen_drops: crate::udp::drops(&self.ports).saturating_sub(drops0),
            cpu_us: (u1 + k1).saturating_sub(u0 + k0),
            sys_us: k1.saturating_sub(k0),
            gen_cpu_us: s1.saturating_sub(s0),
            rss_growth: procfs::rss_bytes(pid).unwrap_or(0) as i64 - rss0,
            late: g.late.load(Ordering::Relaxed) - late0,
            attempts,
        }
    }
}

/// The kv lines of every step run (`steps_run`, `step{i}_*`).
pub fn steps_kv(steps: &[Step], set: &mut impl FnMut(&str, String)) {
    set("steps_run", steps.len().to_string());
    for (i, s) in steps.iter().enumerate() {
        let mut st = |k: &str, v: String| set(&format!("step{i}_{k}"), v);
        st("calls", s.calls.to_string());
        st("secs", format!("{:.2}", s.secs));
        st("sent", s.sent.to_string());
        st("forwarded", s.forwarded.to_string());
        st("lost", s.lost().to_string());
        st("send_errors", s.send_errors.to_string());
        st("gen_socket_drops", s.gen_drops.to_string());
        st("attempts", s.attempts.to_string());
        st("pps", format!("{:.0}", s.forwarded as f64 / s.secs));
        st("offered_pct", format!("{:.1}", s.offered() * 100.0));
        st("cpu_us", s.cpu_us.to_string());
        st("cpu_us_per_pkt", format!("{:.3}", s.us_per_pkt()));
        st("sys_us_per_pkt", format!("{:.3}", s.sys_us_per_pkt()));
        st("relay_cores", format!("{:.3}", s.cores()));
        st("gen_cores", format!("{:.3}", s.gen_cores()));
        st("rss_kb_per_call", format!("{:.1}", s.rss_growth as f64 / 1024.0 / s.calls as f64));
        st("gen_late", s.late.to_string());
    }
}

/// The kv lines of the most calls with a clean step (`max_calls_zero_loss`, …); with
/// `calls_per_core`, also the calls a core would carry at that CPU per packet.
pub fn best_kv(steps: &[Step], set: &mut impl FnMut(&str, String), calls_per_core: bool) {
    let Some(best) = steps.iter().rfind(|s| s.clean()) else { return };
    set("max_calls_zero_loss", best.calls.to_string());
    set("pps_zero_loss", format!("{:.0}", best.forwarded as f64 / best.secs));
    set("cpu_us_per_pkt", format!("{:.3}", best.us_per_pkt()));
    if best.us_per_pkt() > 0.0 {
        set("pps_per_core", format!("{:.0}", 1e6 / best.us_per_pkt()));
        if calls_per_core {
            // 100 forwarded packets/s per call.
            set("calls_per_core", format!("{:.0}", 1e6 / best.us_per_pkt() / 100.0));
        }
    }
    set("relay_cores", format!("{:.3}", best.cores()));
    set("gen_cores", format!("{:.3}", best.gen_cores()));
    set("rss_kb_per_call", format!("{:.1}", best.rss_growth as f64 / 1024.0 / best.calls as f64));
}
