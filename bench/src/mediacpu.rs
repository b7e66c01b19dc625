//! Media CPU per forwarded packet, the way RTP relays are judged: the same plain RTP ⇄ RTP
//! streams through the gateway's F7 relay and through rtpengine (userspace forwarding), in the
//! same run, with the load generator pinned to one core and the relay to the other.
//!
//! - Each call has two legs, A (caller) and B (callee). The generator has one UDP socket per
//!   side, shared by every call (the SDP of every A leg names socket A, of every B leg socket
//!   B), and sends one 160-byte PCMU frame every 20 ms each way per call, spread evenly over
//!   the 20 ms (call i in millisecond slot i mod 20), with `sendmmsg`/`recvmmsg`.
//! - The payload names the call, the direction and the measuring window it was sent in, so a
//!   packet counts for the window it was sent in even if it arrives after the window closed
//!   (the count is taken 300 ms later). Same codec on both legs: both relays forward payloads
//!   untouched.
//! - Trunkline: the real gateway process; calls are F7 calls placed by the bench desk-phone UA
//!   ([`crate::sipua`]): callee numbers registered from one UA whose SDP names socket B, callers
//!   on a second UA whose SDP names socket A. Where A sends is the 200 OK's SDP; where B sends
//!   is learnt from the first A → B packet (the relay's B-side port).
//! - rtpengine: `offer` with the A leg's SDP, `answer` with the B leg's SDP over `ng`
//!   ([`crate::rtpengine`]); A sends where the answer's SDP says, B where the offer's says.
//! - CPU: the relay process's utime + stime (all threads, /proc/PID/stat) over the window,
//!   divided by the packets the generator received in that window's stamp. The generator's own
//!   CPU is reported beside it; it is a different process, so nothing is subtracted from the
//!   relay's figure.
//! - Ramp: calls are added up to each step's count; the ramp stops at the first step with a
//!   lost packet, a relay using ≥ 0.9 of its core, a generator using ≥ 0.9 of its own, or a
//!   generator that sent < 95 % of the nominal packets (late wake-ups on a busy core). Only
//!   steps with no loss at ≥ 95 % of the nominal load count as "zero loss".

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trunkline_media::g711::Law;
use trunkline_media::rtp::{RTP_HEADER_LEN, RtpFields, parse_rtp, rtp_header};
use trunkline_media::sdp::AudioSdp;

use crate::procfs;
use crate::rtpengine::Ng;
use crate::sipua::{Media, OutCall, Ua, sdp_audio_addr};

const MAGIC: &[u8; 4] = b"TLM1";
const PAYLOAD: usize = 160;
const PKT: usize = RTP_HEADER_LEN + PAYLOAD;
/// Windows are numbered in a byte of the payload; window 0 is the warm-up (never counted).
const WINDOWS: usize = 256;
/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

pub struct Params {
    pub gateway_sip: Option<SocketAddr>,
    pub gateway_pid: Option<u32>,
    pub rtpengine_ng: Option<SocketAddr>,
    pub rtpengine_pid: Option<u32>,
    pub phone_first: u64,
    pub steps: Vec<usize>,
    pub secs: f64,
    /// Core of the generator (this process) and of the relay under test.
    pub generator_cpu: usize,
    pub relay_cpu: usize,
    /// Start no further step after this long (per peer).
    pub max_secs: f64,
    /// Nice value of the generator and of the relay under test while it is measured.
    pub nice: i32,
}

/// Where each side of one call sends.
#[derive(Clone, Copy)]
struct CallMedia {
    a_to: SocketAddrV4,
    /// None: learnt from the first A → B packet's source.
    b_to: Option<SocketAddrV4>,
}

/// What the generator thread shares with the measuring thread.
struct Gen {
    calls: Mutex<Vec<CallMedia>>,
    calls_version: AtomicU64,
    /// Window number stamped into packets now.
    window: AtomicUsize,
    /// [direction][window]: 0 = A → B, 1 = B → A.
    sent: [Vec<AtomicU64>; 2],
    recv: [Vec<AtomicU64>; 2],
    send_errors: AtomicU64,
    /// Calls with packets received both ways.
    flowing: AtomicUsize,
    /// Loop iterations where the generator was more than 5 ms behind its schedule.
    late: AtomicU64,
    stop: AtomicBool,
}

fn counters() -> Vec<AtomicU64> {
    (0..WINDOWS).map(|_| AtomicU64::new(0)).collect()
}

fn v4(a: SocketAddr) -> Result<SocketAddrV4, String> {
    match a {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(format!("{a}: IPv4 expected")),
    }
}

fn sockaddr_in(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// Send `pkts[i]` to `dests[i]` with sendmmsg; returns how many went out.
fn send_batch(fd: i32, pkts: &mut [[u8; PKT]], dests: &mut [libc::sockaddr_in]) -> usize {
    let n = pkts.len().min(dests.len());
    let mut done = 0;
    while done < n {
        let k = (n - done).min(BATCH);
        let mut iov: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        // SAFETY: zeroed mmsghdr is a valid "empty" value; every pointer set below points into
        // `pkts`, `dests` or `iov`, which outlive the sendmmsg call.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for j in 0..k {
            iov[j] = libc::iovec { iov_base: pkts[done + j].as_mut_ptr() as *mut libc::c_void, iov_len: PKT };
            msgs[j].msg_hdr.msg_name = &mut dests[done + j] as *mut _ as *mut libc::c_void;
            msgs[j].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[j].msg_hdr.msg_iov = &mut iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..k]` are initialised above.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), k as libc::c_uint, libc::MSG_DONTWAIT) };
        if r <= 0 {
            break; // full send buffer: the rest is counted as the generator's send errors
        }
        done += r as usize;
    }
    done
}

/// Receive up to BATCH datagrams (non-blocking) into `bufs`; lengths and IPv4 sources out.
fn recv_batch(fd: i32, bufs: &mut [[u8; 2048]; BATCH], out: &mut Vec<(usize, SocketAddrV4)>) {
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
        out.push((msgs[j].msg_len as usize, src));
    }
}

/// Payload: magic, call index, direction, window.
fn stamp(pkt: &mut [u8; PKT], idx: u32, dir: u8, window: u8) {
    let p = &mut pkt[RTP_HEADER_LEN..];
    p[0..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&idx.to_be_bytes());
    p[8] = dir;
    p[9] = window;
}

fn unstamp(datagram: &[u8]) -> Option<(u32, u8, u8)> {
    let h = parse_rtp(datagram).ok()?;
    let p = h.payload(datagram);
    if p.len() < 10 || &p[0..4] != MAGIC {
        return None;
    }
    Some((u32::from_be_bytes(p[4..8].try_into().ok()?), p[8], p[9]))
}

/// The generator: runs until `g.stop`.
fn generate(g: Arc<Gen>, a: UdpSocket, b: UdpSocket) {
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
    let mut calls: Vec<CallMedia> = Vec::new();
    let mut version = u64::MAX;
    // Per call and direction: RTP sequence number, and packets received (any window).
    let mut seq: Vec<[u16; 2]> = Vec::new();
    let mut got: Vec<[bool; 2]> = Vec::new();
    let mut learnt: Vec<Option<SocketAddrV4>> = Vec::new();
    let mut flowing = 0usize;
    let start = Instant::now();
    let mut next_slot: u64 = 0;
    let mut pkts: Vec<[u8; PKT]> = Vec::new();
    let mut dests: Vec<libc::sockaddr_in> = Vec::new();
    let mut bufs = Box::new([[0u8; 2048]; BATCH]);
    let mut rx = Vec::with_capacity(BATCH);
    while !g.stop.load(Ordering::Relaxed) {
        let v = g.calls_version.load(Ordering::Acquire);
        if v != version {
            version = v;
            calls = g.calls.lock().unwrap().clone();
            seq.resize(calls.len(), [0, 0]);
            got.resize(calls.len(), [false, false]);
            learnt.resize(calls.len(), None);
        }
        // Sends due: every slot (1 ms) up to now, at most one period behind.
        let now_slot = start.elapsed().as_millis() as u64;
        if now_slot > next_slot + 5 {
            g.late.fetch_add(1, Ordering::Relaxed);
        }
        if now_slot >= next_slot + 20 {
            next_slot = now_slot + 1 - 20;
        }
        let window = g.window.load(Ordering::Relaxed);
        while next_slot <= now_slot {
            let slot = (next_slot % 20) as usize;
            for dir in 0..2u8 {
                pkts.clear();
                dests.clear();
                for i in (slot..calls.len()).step_by(20) {
                    let to = if dir == 0 { Some(calls[i].a_to) } else { calls[i].b_to.or(learnt[i]) };
                    let Some(to) = to else { continue };
                    let s = seq[i][dir as usize];
                    seq[i][dir as usize] = s.wrapping_add(1);
                    let fields = RtpFields {
                        marker: false,
                        payload_type: 0,
                        sequence: s,
                        timestamp: (s as u32).wrapping_mul(160),
                        ssrc: 0x7100_0000 | ((i as u32) << 1) | dir as u32,
                    };
                    let mut p = [0xffu8; PKT];
                    p[..RTP_HEADER_LEN].copy_from_slice(&rtp_header(&fields));
                    stamp(&mut p, i as u32, dir, window as u8);
                    pkts.push(p);
                    dests.push(sockaddr_in(&to));
                }
                let sent = send_batch(if dir == 0 { fa } else { fb }, &mut pkts, &mut dests);
                g.sent[dir as usize][window].fetch_add(sent as u64, Ordering::Relaxed);
                g.send_errors.fetch_add((pkts.len() - sent) as u64, Ordering::Relaxed);
            }
            next_slot += 1;
        }
        // Receive: A → B packets arrive at socket B, B → A at socket A.
        for (fd, dir) in [(fb, 0usize), (fa, 1usize)] {
            loop {
                recv_batch(fd, &mut bufs, &mut rx);
                for (j, &(n, src)) in rx.iter().enumerate() {
                    let Some((idx, d, w)) = unstamp(&bufs[j][..n.min(2048)]) else { continue };
                    let idx = idx as usize;
                    if d as usize != dir || idx >= calls.len() {
                        continue;
                    }
                    if dir == 0 && learnt[idx].is_none() {
                        learnt[idx] = Some(src);
                    }
                    if !got[idx][dir] {
                        got[idx][dir] = true;
                        if got[idx][1 - dir] {
                            flowing += 1;
                        }
                    }
                    g.recv[dir][w as usize].fetch_add(1, Ordering::Relaxed);
                }
                if rx.len() < BATCH {
                    break;
                }
            }
        }
        g.flowing.store(flowing, Ordering::Relaxed);
        // Sleep to the next slot.
        let next_at = start + Duration::from_millis(next_slot);
        let now = Instant::now();
        if next_at > now {
            std::thread::sleep(next_at - now);
        }
    }
}

/// Pin every thread of `pid` to `cpu` (None: back to every core). Threads started later
/// inherit the mask of the thread that starts them. Returns how many threads were pinned.
fn pin_process(pid: u32, cpu: Option<usize>) -> usize {
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
fn renice_process(pid: u32, nice: i32) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok()) else { continue };
        // SAFETY: setpriority has no memory preconditions.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    }
}

fn bind_generator_socket() -> Result<UdpSocket, String> {
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

/// A desk phone's SDP, as the bench UA writes it (PCMU, telephone-event 101).
fn phone_sdp(id: u64, rtp: SocketAddrV4) -> String {
    AudioSdp::new((*rtp.ip()).into(), rtp.port())
        .origin("bench", id)
        .session_name("-")
        .law(Law::Mu)
        .telephone_event(101)
        .build()
        .unwrap_or_default()
}

/// The relay under test and its calls.
enum Peer {
    Gateway { caller: Arc<Ua>, first: u64, max: usize, calls: Vec<OutCall>, rt: Arc<tokio::runtime::Runtime> },
    Rtpengine { ng: Ng, calls: Vec<(String, String)> },
}

impl Peer {
    /// Set up calls `range`; where each side sends.
    fn add(&mut self, range: std::ops::Range<usize>, a: SocketAddrV4, b: SocketAddrV4) -> Result<Vec<CallMedia>, String> {
        match self {
            Peer::Gateway { caller, first, max, calls, rt } => {
                use futures_util::StreamExt;
                let (first, max) = (*first, *max);
                let mut placed: Vec<(usize, Result<OutCall, String>)> = rt.block_on(
                    futures_util::stream::iter(range.map(|k| {
                        let ua = caller.clone();
                        async move {
                            let from = (first + k as u64).to_string();
                            let to = (first + (max + k) as u64).to_string();
                            let r = ua.call(&from, &crate::gwprov::phone_password(&from), &to, Duration::from_secs(10)).await;
                            (k, r)
                        }
                    }))
                    .buffer_unordered(32)
                    .collect(),
                );
                placed.sort_by_key(|(k, _)| *k);
                let mut media = Vec::new();
                for (_, r) in placed {
                    let call = r?;
                    let to = call.remote_rtp.ok_or("the gateway's 200 OK has no audio address")?;
                    media.push(CallMedia { a_to: v4(to)?, b_to: None });
                    calls.push(call);
                }
                Ok(media)
            }
            Peer::Rtpengine { ng, calls } => {
                let mut media = Vec::new();
                for k in range {
                    let (call_id, from_tag) = (format!("tlbench-{}-{k}", std::process::id()), format!("a{k}"));
                    let for_b = ng.offer(&call_id, &from_tag, &phone_sdp(k as u64, a), &[])?;
                    let for_a = ng.answer(&call_id, &from_tag, &format!("b{k}"), &phone_sdp(k as u64, b), &[])?;
                    calls.push((call_id, from_tag));
                    let addr = |sdp: &str| sdp_audio_addr(sdp.as_bytes()).ok_or_else(|| format!("no audio address in {sdp:?}"));
                    media.push(CallMedia { a_to: v4(addr(&for_a)?)?, b_to: Some(v4(addr(&for_b)?)?) });
                }
                Ok(media)
            }
        }
    }

    /// End every call (BYE / delete).
    fn teardown(&mut self) {
        match self {
            Peer::Gateway { caller, calls, rt, .. } => {
                use futures_util::StreamExt;
                let calls = std::mem::take(calls);
                rt.block_on(
                    futures_util::stream::iter(calls.into_iter().map(|mut c| {
                        let ua = caller.clone();
                        async move {
                            let _ = ua.hangup(&mut c).await;
                        }
                    }))
                    .buffer_unordered(32)
                    .collect::<Vec<()>>(),
                );
            }
            Peer::Rtpengine { ng, calls } => {
                for (call_id, from_tag) in std::mem::take(calls) {
                    let _ = ng.delete(&call_id, &from_tag);
                }
            }
        }
    }
}

struct Step {
    calls: usize,
    secs: f64,
    sent: u64,
    forwarded: u64,
    send_errors: u64,
    /// Datagrams the kernel dropped at the generator's own sockets (full receive buffer).
    gen_drops: u64,
    cpu_us: u64,
    gen_cpu_us: u64,
    rss_growth: i64,
    late: u64,
    attempts: u32,
}

impl Step {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.forwarded)
    }
    fn us_per_pkt(&self) -> f64 {
        if self.forwarded == 0 { 0.0 } else { self.cpu_us as f64 / self.forwarded as f64 }
    }
    fn cores(&self) -> f64 {
        self.cpu_us as f64 / 1e6 / self.secs
    }
    fn gen_cores(&self) -> f64 {
        self.gen_cpu_us as f64 / 1e6 / self.secs
    }
    /// Packets sent ÷ the nominal 100 per call per second: below 1 when the generator fell
    /// behind (a busy core: it skips what it is more than one period late for).
    fn offered(&self) -> f64 {
        self.sent as f64 / (self.calls as f64 * 100.0 * self.secs)
    }
    /// Lost in the relay: lost minus what the kernel dropped at the generator's sockets.
    fn relay_lost(&self) -> u64 {
        self.lost().saturating_sub(self.gen_drops)
    }
    /// The generator spoilt the step: it sent < 95 % of the nominal packets, could not send
    /// some, or its own sockets dropped some.
    fn generator_fault(&self) -> bool {
        self.offered() < 0.95 || self.send_errors > 0 || self.gen_drops > 0
    }
    /// A step that counts: no loss, nothing unsent, and at least 95 % of the nominal load.
    fn clean(&self) -> bool {
        self.lost() == 0 && !self.generator_fault()
    }
}

struct Ctx<'a> {
    g: &'a Arc<Gen>,
    a: SocketAddrV4,
    b: SocketAddrV4,
    /// The generator's socket ports (for the kernel's drop counter).
    ports: [u16; 2],
    p: &'a Params,
    next_window: usize,
}

/// One measuring window at `n` calls.
fn measure_window(ctx: &mut Ctx, pid: u32, n: usize, rss0: i64, attempts: u32) -> Step {
    let g = ctx.g;
    let w = 1 + (ctx.next_window - 1) % (WINDOWS - 1); // never 0, the warm-up
    ctx.next_window += 1;
    for d in 0..2 {
        g.sent[d][w].store(0, Ordering::Relaxed);
        g.recv[d][w].store(0, Ordering::Relaxed);
    }
    let late0 = g.late.load(Ordering::Relaxed);
    let err0 = g.send_errors.load(Ordering::Relaxed);
    let drops0 = crate::udp::drops(&ctx.ports);
    let c0 = procfs::cpu_us(pid, false).unwrap_or(0);
    let s0 = procfs::self_cpu_us();
    let t0 = Instant::now();
    g.window.store(w, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(ctx.p.secs));
    g.window.store(0, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let c1 = procfs::cpu_us(pid, false).unwrap_or(0);
    let s1 = procfs::self_cpu_us();
    std::thread::sleep(Duration::from_millis(300)); // stragglers of the window
    let sum = |c: &[Vec<AtomicU64>; 2]| c[0][w].load(Ordering::Relaxed) + c[1][w].load(Ordering::Relaxed);
    Step {
        calls: n,
        secs,
        sent: sum(&g.sent),
        forwarded: sum(&g.recv),
        send_errors: g.send_errors.load(Ordering::Relaxed) - err0,
        gen_drops: crate::udp::drops(&ctx.ports).saturating_sub(drops0),
        cpu_us: c1.saturating_sub(c0),
        gen_cpu_us: s1.saturating_sub(s0),
        rss_growth: procfs::rss_bytes(pid).unwrap_or(0) as i64 - rss0,
        late: g.late.load(Ordering::Relaxed) - late0,
        attempts,
    }
}

/// Ramp one peer through the steps; its kv lines prefixed with `name`.
fn measure_peer(ctx: &mut Ctx, name: &str, pid: u32, mut peer: Peer) -> Vec<(String, String)> {
    let g = ctx.g;
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| kv.push((format!("{name}_{k}"), v));
    let rss0 = procfs::rss_bytes(pid).unwrap_or(0) as i64;
    set("threads_pinned", pin_process(pid, Some(ctx.p.relay_cpu)).to_string());
    renice_process(pid, ctx.p.nice);
    // The relay's session (run.sh's) gets the same autogroup nice as the generator's.
    let _ = std::fs::write(format!("/proc/{pid}/autogroup"), ctx.p.nice.to_string());
    let started = Instant::now();
    let mut media: Vec<CallMedia> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut stop = String::from("all steps passed");
    for &n in &ctx.p.steps {
        if started.elapsed().as_secs_f64() > ctx.p.max_secs {
            stop = format!("time limit ({} s) before {n} calls", ctx.p.max_secs);
            break;
        }
        if n > media.len() {
            match peer.add(media.len()..n, ctx.a, ctx.b) {
                Ok(m) => media.extend(m),
                Err(e) => {
                    stop = format!("setting up call {} failed: {e}", media.len() + 1);
                    break;
                }
            }
            *g.calls.lock().unwrap() = media.clone();
            g.calls_version.fetch_add(1, Ordering::Release);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while g.flowing.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let flowing = g.flowing.load(Ordering::Relaxed);
        if flowing < n {
            stop = format!("only {flowing} of {n} calls had media both ways after 15 s");
            break;
        }
        std::thread::sleep(Duration::from_secs(1)); // warm-up
        // A step the generator spoilt (late on its busy core, or datagrams dropped at its own
        // sockets) is measured again, twice at most; loss the relay caused never is.
        let mut attempts = 0;
        let step = loop {
            attempts += 1;
            let step = measure_window(ctx, pid, n, rss0, attempts);
            if step.generator_fault() && step.relay_lost() == 0 && attempts < 3 {
                eprintln!("mediacpu {name}: {n} calls: the generator fell behind; measuring again");
                continue;
            }
            break step;
        };
        eprintln!(
            "mediacpu {name}: {n} calls: {} sent, {} forwarded, {} lost ({} at the generator's sockets), {:.2} µs/packet, relay {:.2} cores, generator {:.2} cores",
            step.sent,
            step.forwarded,
            step.lost(),
            step.gen_drops,
            step.us_per_pkt(),
            step.cores(),
            step.gen_cores()
        );
        let why = if step.relay_lost() > 0 {
            Some(format!("{} packets lost in the relay at {n} calls", step.relay_lost()))
        } else if step.cores() >= 0.9 {
            Some(format!("relay at {:.2} of its core at {n} calls", step.cores()))
        } else if step.generator_fault() {
            Some(format!(
                "generator fell behind at {n} calls ({:.0} % of the nominal packets sent, {} dropped at its own sockets, {} unsent; 3 tries), its core busy with other work",
                step.offered() * 100.0,
                step.gen_drops,
                step.send_errors
            ))
        } else if step.gen_cores() >= 0.9 {
            Some(format!("generator at {:.2} of its core at {n} calls (its limit, not the relay's)", step.gen_cores()))
        } else {
            None
        };
        steps.push(step);
        if let Some(why) = why {
            stop = why;
            break;
        }
    }
    peer.teardown();
    *g.calls.lock().unwrap() = Vec::new();
    g.calls_version.fetch_add(1, Ordering::Release);
    pin_process(pid, None);
    renice_process(pid, 0);
    let _ = std::fs::write(format!("/proc/{pid}/autogroup"), "0");

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
        st("relay_cores", format!("{:.3}", s.cores()));
        st("gen_cores", format!("{:.3}", s.gen_cores()));
        st("rss_kb_per_call", format!("{:.1}", s.rss_growth as f64 / 1024.0 / s.calls as f64));
        st("gen_late", s.late.to_string());
    }
    if let Some(best) = steps.iter().rfind(|s| s.clean()) {
        set("max_calls_zero_loss", best.calls.to_string());
        set("pps_zero_loss", format!("{:.0}", best.forwarded as f64 / best.secs));
        set("cpu_us_per_pkt", format!("{:.3}", best.us_per_pkt()));
        if best.us_per_pkt() > 0.0 {
            set("pps_per_core", format!("{:.0}", 1e6 / best.us_per_pkt()));
        }
        set("relay_cores", format!("{:.3}", best.cores()));
        set("gen_cores", format!("{:.3}", best.gen_cores()));
        set("rss_kb_per_call", format!("{:.1}", best.rss_growth as f64 / 1024.0 / best.calls as f64));
    }
    set("stop", stop);
    kv
}

/// The whole measurement: the gateway (if given), then rtpengine (if given), same streams.
pub fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    if p.steps.is_empty() || p.steps.contains(&0) {
        return Err("--steps: positive call counts expected".into());
    }
    // This process (and every thread it starts from here on) on the generator's core.
    pin_process(std::process::id(), Some(p.generator_cpu));
    renice_process(std::process::id(), p.nice);
    // With scheduler autogroups a thread's nice only counts inside its session: a session of
    // its own, with the same nice, so the generator is not starved by other sessions' work.
    // SAFETY: setsid has no memory preconditions; it fails harmlessly for a group leader.
    if unsafe { libc::setsid() } >= 0 {
        let _ = std::fs::write("/proc/self/autogroup", p.nice.to_string());
    }
    let sa = bind_generator_socket()?;
    let sb = bind_generator_socket()?;
    let a = v4(sa.local_addr().map_err(|e| e.to_string())?)?;
    let b = v4(sb.local_addr().map_err(|e| e.to_string())?)?;
    let g = Arc::new(Gen {
        calls: Mutex::new(Vec::new()),
        calls_version: AtomicU64::new(0),
        window: AtomicUsize::new(0),
        sent: [counters(), counters()],
        recv: [counters(), counters()],
        send_errors: AtomicU64::new(0),
        flowing: AtomicUsize::new(0),
        late: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let generator = {
        let g = g.clone();
        std::thread::spawn(move || generate(g, sa, sb))
    };
    let rt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?);
    let max = *p.steps.iter().max().unwrap_or(&0);
    let mut kv = vec![
        ("steps".to_string(), p.steps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")),
        ("secs".to_string(), p.secs.to_string()),
        ("generator_cpu".to_string(), p.generator_cpu.to_string()),
        ("relay_cpu".to_string(), p.relay_cpu.to_string()),
        ("nice".to_string(), p.nice.to_string()),
    ];
    let mut ctx = Ctx { g: &g, a, b, ports: [a.port(), b.port()], p: &p, next_window: 1 };
    let result = (|| {
        if let (Some(sip), Some(pid)) = (p.gateway_sip, p.gateway_pid) {
            // Callees registered from the UA whose SDP names socket B; callers on a UA whose
            // SDP names socket A (they authenticate each INVITE, no registration needed).
            let callee = rt.block_on(Ua::bind(sip, Media::Shared(SocketAddr::V4(b)))).map_err(|e| e.to_string())?;
            let caller = Arc::new(rt.block_on(Ua::bind(sip, Media::Shared(SocketAddr::V4(a)))).map_err(|e| e.to_string())?);
            let callee = Arc::new(callee);
            let numbers: Vec<String> = (0..max).map(|k| (p.phone_first + (max + k) as u64).to_string()).collect();
            let registered = rt.block_on(callee.register_all(numbers, crate::gwprov::phone_password, 32))?;
            eprintln!("mediacpu gw: {registered} callees registered");
            let peer = Peer::Gateway { caller, first: p.phone_first, max, calls: Vec::new(), rt: rt.clone() };
            kv.extend(measure_peer(&mut ctx, "gw", pid, peer));
            drop(callee);
        }
        if let (Some(ng), Some(pid)) = (p.rtpengine_ng, p.rtpengine_pid) {
            let ng = Ng::connect(ng).map_err(|e| e.to_string())?;
            kv.extend(measure_peer(&mut ctx, "rte", pid, Peer::Rtpengine { ng, calls: Vec::new() }));
        }
        Ok::<(), String>(())
    })();
    g.stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    pin_process(std::process::id(), None);
    result.map(|()| kv)
}

fn num(g: &crate::report::Kv, k: &str) -> Option<f64> {
    g.get(k)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The bench table's rows (measure | Trunkline | peer | ratio | target) from gateway.kv's
/// `mediacpu_*` keys; nothing when the part did not run.
pub fn rows(out: &mut String, g: &crate::report::Kv) {
    if !g.keys().any(|k| k.starts_with("mediacpu_")) {
        return;
    }
    let fmt = crate::report::fmt_num;
    let na = || "n/a".to_string();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => na(),
    };
    let step_of = |peer: &str, calls: f64| {
        let n = num(g, &format!("mediacpu_{peer}_steps_run")).unwrap_or(0.0) as usize;
        (0..n).find(|i| num(g, &format!("mediacpu_{peer}_step{i}_calls")) == Some(calls))
    };
    // Compare at the largest call count both relays carried with zero loss.
    let common = match (num(g, "mediacpu_gw_max_calls_zero_loss"), num(g, "mediacpu_rte_max_calls_zero_loss")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let at = |peer: &str, k: &str| {
        let i = step_of(peer, common?)?;
        num(g, &format!("mediacpu_{peer}_step{i}_{k}"))
    };
    let (a, b) = (at("gw", "cpu_us_per_pkt"), at("rte", "cpu_us_per_pkt"));
    let gen_cores = |peer: &str| at(peer, "gen_cores").map(|v| format!("{v:.2}")).unwrap_or_else(na);
    out.push_str(&format!(
        "| plain RTP ⇄ RTP relay, CPU µs per forwarded packet at {} calls ({} packets/s; G.711 20 ms both ways), relay pinned to one core, load generator to the other (its own CPU, not subtracted: {} / {} of a core); peer: rtpengine{}, userspace | {} | {} | {} | ratio ≤ 1 |\n",
        common.map(|c| fmt(c, 0)).unwrap_or_else(na),
        at("gw", "pps").map(|v| fmt(v, 0)).unwrap_or_else(na),
        gen_cores("gw"),
        gen_cores("rte"),
        g.get("mediacpu_rtpengine_version").map(|v| format!(" {v}")).unwrap_or_default(),
        a.map(|v| fmt(v, 2)).unwrap_or_else(na),
        b.map(|v| fmt(v, 2)).unwrap_or_else(na),
        ratio(a, b),
    ));
    let cell = |peer: &str| match (
        num(g, &format!("mediacpu_{peer}_pps_per_core")),
        num(g, &format!("mediacpu_{peer}_max_calls_zero_loss")),
    ) {
        (Some(pps), Some(calls)) => format!("{} ({} calls)", fmt(pps, 0), fmt(calls, 0)),
        _ => na(),
    };
    out.push_str(&format!(
        "| plain RTP relay: packets/s per core at zero loss (10⁶ ÷ CPU µs per packet at the most calls with no loss and ≥ 95 % of the nominal load sent; ramp stops: Trunkline {}; rtpengine {}) | {} | {} | {} | ratio ≥ 1 |\n",
        g.get("mediacpu_gw_stop").cloned().unwrap_or_else(na),
        g.get("mediacpu_rte_stop").cloned().unwrap_or_else(na),
        cell("gw"),
        cell("rte"),
        ratio(num(g, "mediacpu_gw_pps_per_core"), num(g, "mediacpu_rte_pps_per_core")),
    ));
    let (a, b) = (num(g, "mediacpu_gw_rss_kb_per_call"), num(g, "mediacpu_rte_rss_kb_per_call"));
    out.push_str(&format!(
        "| plain RTP relay: memory per call, kB (RSS growth ÷ calls at the most calls with no loss) | {} | {} | {} | — |\n",
        a.map(|v| fmt(v, 1)).unwrap_or_else(na),
        b.map(|v| fmt(v, 1)).unwrap_or_else(na),
        ratio(a, b),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_stamp_survives_a_round_trip() {
        let mut p = [0xffu8; PKT];
        let f = RtpFields { marker: false, payload_type: 0, sequence: 7, timestamp: 1120, ssrc: 9 };
        p[..RTP_HEADER_LEN].copy_from_slice(&rtp_header(&f));
        stamp(&mut p, 4242, 1, 17);
        assert_eq!(unstamp(&p), Some((4242, 1, 17)));
        assert_eq!(unstamp(&p[..RTP_HEADER_LEN + 4]), None);
        assert_eq!(unstamp(b"junk"), None);
    }

    #[test]
    fn generator_relays_through_a_loopback_echo_and_counts_per_window() {
        // A stand-in relay: forwards A → B and B → A between two sockets, like the real ones.
        let gen_a = bind_generator_socket().unwrap();
        let gen_b = bind_generator_socket().unwrap();
        let (a, b) = (v4(gen_a.local_addr().unwrap()).unwrap(), v4(gen_b.local_addr().unwrap()).unwrap());
        let ra = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rb = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&ra, &rb] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let done = Arc::new(AtomicBool::new(false));
        let relay = {
            let (ra, rb, done) = (ra.try_clone().unwrap(), rb.try_clone().unwrap(), done.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = ra.recv(&mut buf) {
                        let _ = rb.send_to(&buf[..n], b);
                    }
                    if let Ok(n) = rb.recv(&mut buf) {
                        let _ = ra.send_to(&buf[..n], a);
                    }
                }
            })
        };
        let g = Arc::new(Gen {
            calls: Mutex::new(vec![CallMedia { a_to: v4(ra.local_addr().unwrap()).unwrap(), b_to: None }]),
            calls_version: AtomicU64::new(1),
            window: AtomicUsize::new(0),
            sent: [counters(), counters()],
            recv: [counters(), counters()],
            send_errors: AtomicU64::new(0),
            flowing: AtomicUsize::new(0),
            late: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let t = {
            let g = g.clone();
            std::thread::spawn(move || generate(g, gen_a, gen_b))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.flowing.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(g.flowing.load(Ordering::Relaxed), 1, "B learnt where to send from A's packets");
        g.window.store(3, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.recv[1][3].load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        g.window.store(0, Ordering::Relaxed);
        g.stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        done.store(true, Ordering::Relaxed);
        relay.join().unwrap();
        assert!(g.recv[0][3].load(Ordering::Relaxed) >= 2 && g.recv[1][3].load(Ordering::Relaxed) >= 2);
        assert!(g.recv[0][3].load(Ordering::Relaxed) <= g.sent[0][3].load(Ordering::Relaxed));
        assert_eq!(g.recv[0][5].load(Ordering::Relaxed), 0, "nothing counted in a window never opened");
    }

    #[test]
    fn rows_compare_at_the_most_calls_both_carried_without_loss() {
        let mut g = crate::report::Kv::new();
        for (k, v) in [
            ("gw_steps_run", "2"),
            ("gw_step0_calls", "50"),
            ("gw_step0_cpu_us_per_pkt", "4.0"),
            ("gw_step0_pps", "5000"),
            ("gw_step1_calls", "200"),
            ("gw_step1_cpu_us_per_pkt", "3.0"),
            ("gw_step1_pps", "20000"),
            ("gw_max_calls_zero_loss", "200"),
            ("gw_pps_per_core", "333333"),
            ("rte_steps_run", "1"),
            ("rte_step0_calls", "50"),
            ("rte_step0_cpu_us_per_pkt", "8.0"),
            ("rte_max_calls_zero_loss", "50"),
            ("rte_pps_per_core", "125000"),
        ] {
            g.insert(format!("mediacpu_{k}"), v.to_string());
        }
        let mut out = String::new();
        rows(&mut out, &g);
        let first = out.lines().next().unwrap();
        assert!(first.contains("at 50 calls") && first.contains("| 4.00 | 8.00 | 0.50 |"), "{first}");
        assert!(out.contains("333,333 (200 calls) | 125,000 (50 calls) | 2.67"), "{out}");
        let mut empty = String::new();
        rows(&mut empty, &crate::report::Kv::new());
        assert!(empty.is_empty());
    }
}
