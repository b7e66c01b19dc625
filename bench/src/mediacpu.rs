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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trunkline_media::rtp::{RTP_HEADER_LEN, RtpFields, parse_rtp, rtp_header};

use crate::loadgen::{
    BATCH, Compare, Meter, Step, Windows, best_kv, bind_generator_socket, hold_generator, hold_relay, num, params_kv, phone_sdp,
    pin_process, ratio, recv_batch, release_relay, sockaddr_in, steps_kv, v4,
};
use crate::procfs;
use crate::rtpengine::Ng;
use crate::sipua::{Media, OutCall, Ua, sdp_audio_addr};

const MAGIC: &[u8; 4] = b"TLM1";
const PAYLOAD: usize = 160;
const PKT: usize = RTP_HEADER_LEN + PAYLOAD;
/// telephone-event's payload type in the desk phones' SDP, as the bench UA writes it.
const EVENT_PT: u8 = 101;

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
    /// Directions: 0 = A → B, 1 = B → A.
    m: Meter,
    calls: Mutex<Vec<CallMedia>>,
    calls_version: AtomicU64,
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

/// The generator: runs until `g.m.stop`.
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
    while !g.m.stop.load(Ordering::Relaxed) {
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
            g.m.late.fetch_add(1, Ordering::Relaxed);
        }
        if now_slot >= next_slot + 20 {
            next_slot = now_slot + 1 - 20;
        }
        let window = g.m.window.load(Ordering::Relaxed);
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
                g.m.sent[dir as usize][window].fetch_add(sent as u64, Ordering::Relaxed);
                g.m.send_errors.fetch_add((pkts.len() - sent) as u64, Ordering::Relaxed);
            }
            next_slot += 1;
        }
        // Receive: A → B packets arrive at socket B, B → A at socket A.
        for (fd, dir) in [(fb, 0usize), (fa, 1usize)] {
            loop {
                recv_batch(fd, &mut bufs, &mut rx);
                for (j, &(n, src)) in rx.iter().enumerate() {
                    let Some((idx, d, w)) = unstamp(&bufs[j][..n]) else { continue };
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
                    g.m.recv[dir][w as usize].fetch_add(1, Ordering::Relaxed);
                }
                if rx.len() < BATCH {
                    break;
                }
            }
        }
        g.m.flowing.store(flowing, Ordering::Relaxed);
        // Sleep to the next slot.
        let next_at = start + Duration::from_millis(next_slot);
        let now = Instant::now();
        if next_at > now {
            std::thread::sleep(next_at - now);
        }
    }
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
                    let for_b = ng.offer(&call_id, &from_tag, &phone_sdp(k as u64, a, EVENT_PT), &[])?;
                    let for_a = ng.answer(&call_id, &from_tag, &format!("b{k}"), &phone_sdp(k as u64, b, EVENT_PT), &[])?;
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

struct Ctx<'a> {
    g: &'a Arc<Gen>,
    a: SocketAddrV4,
    b: SocketAddrV4,
    p: &'a Params,
    windows: Windows<'a>,
}

/// Ramp one peer through the steps; its kv lines prefixed with `name`.
fn measure_peer(ctx: &mut Ctx, name: &str, pid: u32, mut peer: Peer) -> Vec<(String, String)> {
    let g = ctx.g;
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| kv.push((format!("{name}_{k}"), v));
    let rss0 = procfs::rss_bytes(pid).unwrap_or(0) as i64;
    set("threads_pinned", hold_relay(pid, ctx.p.relay_cpu, ctx.p.nice).to_string());
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
        if let Err(why) = ctx.windows.wait_flowing(n) {
            stop = why;
            break;
        }
        let step = ctx.windows.measure_step(pid, n, rss0, &format!("mediacpu {name}"));
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
        let why = step.stop_reason(n, "relay", ", its core busy with other work");
        steps.push(step);
        if let Some(why) = why {
            stop = why;
            break;
        }
    }
    peer.teardown();
    *g.calls.lock().unwrap() = Vec::new();
    g.calls_version.fetch_add(1, Ordering::Release);
    release_relay(pid);

    steps_kv(&steps, &mut set);
    best_kv(&steps, &mut set, false);
    set("stop", stop);
    kv
}

/// The whole measurement: the gateway (if given), then rtpengine (if given), same streams.
pub fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    if p.steps.is_empty() || p.steps.contains(&0) {
        return Err("--steps: positive call counts expected".into());
    }
    hold_generator(p.generator_cpu, p.nice);
    let sa = bind_generator_socket()?;
    let sb = bind_generator_socket()?;
    let a = v4(sa.local_addr().map_err(|e| e.to_string())?)?;
    let b = v4(sb.local_addr().map_err(|e| e.to_string())?)?;
    let g = Arc::new(Gen { m: Meter::default(), calls: Mutex::new(Vec::new()), calls_version: AtomicU64::new(0) });
    let generator = {
        let g = g.clone();
        std::thread::spawn(move || generate(g, sa, sb))
    };
    let rt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?);
    let max = *p.steps.iter().max().unwrap_or(&0);
    let mut kv = params_kv(&p.steps, p.secs, p.generator_cpu, p.relay_cpu, p.nice);
    let windows = Windows { m: &g.m, ports: [a.port(), b.port()], secs: p.secs, next: 1 };
    let mut ctx = Ctx { g: &g, a, b, p: &p, windows };
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
    g.m.stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    pin_process(std::process::id(), None);
    result.map(|()| kv)
}

/// The bench table's rows (measure | Trunkline | peer | ratio | target) from gateway.kv's
/// `mediacpu_*` keys; nothing when the part did not run.
pub fn rows(out: &mut String, g: &crate::report::Kv) {
    if !g.keys().any(|k| k.starts_with("mediacpu_")) {
        return;
    }
    let fmt = crate::report::fmt_num;
    let na = || "n/a".to_string();
    // Compare at the largest call count both relays carried with zero loss.
    let c = Compare::new(g, "mediacpu");
    let (common, at) = (c.common, |peer: &str, k: &str| c.at(peer, k));
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
    crate::loadgen::kernel_row(out, &c, "plain RTP relay");
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
    use std::sync::atomic::AtomicBool;

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
            m: Meter::default(),
            calls: Mutex::new(vec![CallMedia { a_to: v4(ra.local_addr().unwrap()).unwrap(), b_to: None }]),
            calls_version: AtomicU64::new(1),
        });
        let t = {
            let g = g.clone();
            std::thread::spawn(move || generate(g, gen_a, gen_b))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.m.flowing.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(g.m.flowing.load(Ordering::Relaxed), 1, "B learnt where to send from A's packets");
        g.m.window.store(3, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.m.recv[1][3].load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        g.m.window.store(0, Ordering::Relaxed);
        g.m.stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        done.store(true, Ordering::Relaxed);
        relay.join().unwrap();
        assert!(g.m.recv[0][3].load(Ordering::Relaxed) >= 2 && g.m.recv[1][3].load(Ordering::Relaxed) >= 2);
        assert!(g.m.recv[0][3].load(Ordering::Relaxed) <= g.m.sent[0][3].load(Ordering::Relaxed));
        assert_eq!(g.m.recv[0][5].load(Ordering::Relaxed), 0, "nothing counted in a window never opened");
    }

    #[test]
    fn rows_compare_at_the_most_calls_both_carried_without_loss() {
        let mut g = crate::report::Kv::new();
        for (k, v) in [
            ("gw_steps_run", "2"),
            ("gw_step0_calls", "50"),
            ("gw_step0_cpu_us_per_pkt", "4.0"),
            ("gw_step0_sys_us_per_pkt", "2.5"),
            ("gw_step0_pps", "5000"),
            ("gw_step1_calls", "200"),
            ("gw_step1_cpu_us_per_pkt", "3.0"),
            ("gw_step1_pps", "20000"),
            ("gw_max_calls_zero_loss", "200"),
            ("gw_pps_per_core", "333333"),
            ("rte_steps_run", "1"),
            ("rte_step0_calls", "50"),
            ("rte_step0_cpu_us_per_pkt", "8.0"),
            ("rte_step0_sys_us_per_pkt", "5.0"),
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
        // User space + kernel at the same 50 calls: 1.5 + 2.5 against 3 + 5.
        assert!(out.contains("| 1.50 + 2.50 | 3.00 + 5.00 | 0.50 |"), "{out}");
        let mut empty = String::new();
        rows(&mut empty, &crate::report::Kv::new());
        assert!(empty.is_empty());
    }
}
