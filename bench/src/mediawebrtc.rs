//! WebRTC (ICE, DTLS-SRTP) ⇄ plain RTP bridging, CPU per forwarded packet: the gateway's F1
//! bridge (a browser's WebRTC leg bridged to a desk phone's RTP) and rtpengine doing the same
//! job, the same streams in the same run, the load generator pinned to one core and the bridge
//! under test to the other. The method is `mediacpu`'s (see that file; the shared parts are in
//! `loadgen.rs`): stamped payloads counted per window, CPU from /proc/PID/stat, a ramp of call
//! counts with retries and stop reasons; only the WebRTC side is new.
//!
//! - Each call has a WebRTC leg (W) and a plain RTP leg (B). The W leg is a str0m peer (the
//!   workspace's `rtc_config`: PCMU/PCMA/telephone-event, full ICE, DTLS as client: the answer
//!   says `setup:passive`) driven by the generator thread; every peer shares one UDP socket
//!   (its one host candidate) and datagrams are told apart by their source (each bridge uses a
//!   port of its own per call; a new source is matched with `Rtc::accepts`, i.e. its ICE
//!   credentials). The B leg of every call is one shared socket, as in `mediacpu`.
//! - 50 packets/s each way per call (one 160-byte PCMU payload every 20 ms, call i in
//!   millisecond slot i mod 20): the W side writes a frame into str0m (which encrypts it), the
//!   B side sends plain RTP. Payloads carry call, direction and window; sends and receives
//!   are batched (`sendmmsg`/`recvmmsg`).
//! - Trunkline: real F1 calls through the real signal server, as `media.rs` places them:
//!   browsers signed in with `SignalClient`, dial, the cloud's `connect` (C13), the offer
//!   (audio + the `trunkline-direct` DataChannel) and candidates through the cloud, ICE +
//!   DTLS to the gateway, the key presented on the DataChannel (C14), `accepted`. The desk
//!   phones are numbers registered by one bench UA whose SDP names socket B. Where B sends is
//!   learnt from the first W → B packet (the bridge's phone-leg port).
//! - rtpengine: `offer` with the str0m peer's SDP (audio only) and `ICE=remove`, `DTLS=off`,
//!   `transport-protocol=RTP/AVP`, `rtcp-mux=demux` (the SDP for the phone: plain RTP); `answer`
//!   with the phone's SDP (socket B) and `ICE=force`, `DTLS=passive`, `SDES-off`,
//!   `transport-protocol=UDP/TLS/RTP/SAVPF`, `rtcp-mux=require` (the SDP back to the browser).
//!   That is the usual way a SIP proxy bridges a WebRTC caller to a desk phone with rtpengine.
//!   str0m needs two things a browser does without: the answer's `a=group:BUNDLE` (rtpengine
//!   10.5 leaves it out; `with_bundle` adds it) and the phone's SSRC (the answer names none and
//!   rtpengine adds no `mid` header extension; the peer is told it with `expect_stream_rx`).
//! - The generator does SRTP for every packet of every call, both ways: it is the first thing
//!   to run out of CPU. Its own CPU is reported per step, and the ramp stops when it is at
//!   ≥ 0.9 of its core or fell behind.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::{mpsc, watch};
use trunkline_media::rtp::{RTP_HEADER_LEN, RtpFields, parse_rtp, rtp_header};
use trunkline_media::webrtc::{RtcOptions, TELEPHONE_EVENT_PT, rtc_config};
use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg, PROTOCOL_VERSION, ServerMsg, SignalPayload};

use crate::loadgen::{
    BATCH, Compare, Meter, Step, Windows, best_kv, bind_generator_socket, hold_generator, hold_relay, num, params_kv, phone_sdp,
    pin_process, ratio, recv_batch, release_relay, sockaddr_in, steps_kv, v4,
};
use crate::media::Browser;
use crate::procfs;
use crate::rtpengine::{Ng, Value};
use crate::sipua::{Media, Ua, sdp_audio_addr};

const MAGIC: &[u8; 4] = b"TLW1";
const PAYLOAD: usize = 160;
/// Direction 0: WebRTC → RTP (browser → phone); 1: RTP → WebRTC.
const W2B: usize = 0;
const B2W: usize = 1;

pub struct Params {
    /// The signal server's WebSocket URL (gateway only).
    pub server: Option<String>,
    pub gateway_sip: Option<SocketAddr>,
    pub gateway_pid: Option<u32>,
    pub browser_first: u64,
    pub browsers: usize,
    pub browser_password: String,
    /// Desk phones (callees) FIRST..FIRST+max(steps).
    pub phone_first: u64,
    pub rtpengine_ng: Option<SocketAddr>,
    pub rtpengine_pid: Option<u32>,
    pub steps: Vec<usize>,
    pub secs: f64,
    pub generator_cpu: usize,
    pub relay_cpu: usize,
    pub max_secs: f64,
    pub nice: i32,
    pub setup_concurrency: usize,
}

/// The DataChannel message of one gateway call (C14): its key and who presents it.
struct Present {
    call_id: String,
    key: String,
    caller: String,
}

/// One call's WebRTC peer and plain RTP side, owned by the generator thread.
struct Leg {
    rtc: Rtc,
    mid: Mid,
    pt: Option<Pt>,
    /// Gateway calls: the DataChannel the key goes on, and the key.
    channel: Option<ChannelId>,
    present: Option<Present>,
    accepted: bool,
    ice_up: bool,
    reported: bool,
    timeout: Instant,
    samples: u64,
    /// Where the B side sends (None: learnt from the first W → B packet).
    b_to: Option<SocketAddrV4>,
    b_seq: u16,
    got: [bool; 2],
    dead: bool,
}

impl Leg {
    fn new(rtc: Rtc, mid: Mid, channel: Option<ChannelId>, present: Option<Present>, b_to: Option<SocketAddrV4>) -> Leg {
        Leg {
            rtc,
            mid,
            pt: None,
            accepted: present.is_none(),
            channel,
            present,
            ice_up: false,
            reported: false,
            timeout: Instant::now(),
            samples: 0,
            b_to,
            b_seq: 0,
            got: [false, false],
            dead: false,
        }
    }
}

enum Cmd {
    Add(usize, Box<Leg>),
    Candidate(usize, String),
    /// End every call (on the DataChannel for the gateway's) and forget them.
    Clear,
}

/// Setup state of a call, as the generator reports it.
const PENDING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

/// What the generator thread shares with the measuring thread.
struct Gen {
    /// Directions: W2B, B2W.
    m: Meter,
    /// Per call index: PENDING, READY (ICE + DTLS up, key accepted) or FAILED.
    state: Vec<AtomicU8>,
    failures: Mutex<Vec<String>>,
}

/// Send every datagram of `out` with sendmmsg (clears it); returns how many went out.
fn send_all(fd: i32, out: &mut Vec<(SocketAddrV4, Vec<u8>)>) -> usize {
    let mut done = 0;
    while done < out.len() {
        let k = (out.len() - done).min(BATCH);
        let mut names: [libc::sockaddr_in; BATCH] = [sockaddr_in(&SocketAddrV4::new(0.into(), 0)); BATCH];
        let mut iov: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        // SAFETY: a zeroed mmsghdr is a valid empty value; every pointer set below points into
        // `out`, `names` or `iov`, which outlive the sendmmsg call.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for j in 0..k {
            let (to, pkt) = &mut out[done + j];
            names[j] = sockaddr_in(to);
            iov[j] = libc::iovec { iov_base: pkt.as_mut_ptr() as *mut libc::c_void, iov_len: pkt.len() };
            msgs[j].msg_hdr.msg_name = &mut names[j] as *mut _ as *mut libc::c_void;
            msgs[j].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[j].msg_hdr.msg_iov = &mut iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..k]` are initialised above.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), k as libc::c_uint, libc::MSG_DONTWAIT) };
        if r <= 0 {
            break; // full send buffer: the rest counts as send errors
        }
        done += r as usize;
    }
    out.clear();
    done
}

/// The SSRC of call `idx`'s plain RTP side.
fn b_ssrc(idx: usize) -> u32 {
    0x7200_0000 | idx as u32
}

/// Payload: magic, call index, direction, window; the rest 0xff (μ-law silence).
fn stamp(idx: u32, dir: u8, window: u8) -> [u8; PAYLOAD] {
    let mut p = [0xffu8; PAYLOAD];
    p[0..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&idx.to_be_bytes());
    p[8] = dir;
    p[9] = window;
    p
}

fn unstamp(p: &[u8]) -> Option<(u32, u8, u8)> {
    if p.len() < 10 || &p[0..4] != MAGIC {
        return None;
    }
    Some((u32::from_be_bytes(p[4..8].try_into().ok()?), p[8], p[9]))
}

/// The generator's view of the calls.
struct Legs {
    legs: Vec<Option<Leg>>,
    by_source: HashMap<SocketAddr, usize>,
    /// Calls not yet set up: a datagram from an unknown source is offered to them.
    pending: Vec<usize>,
    flowing: usize,
    local: SocketAddr,
}

impl Legs {
    fn note_got(&mut self, idx: usize, dir: usize) {
        let Some(Some(leg)) = self.legs.get_mut(idx) else { return };
        if !leg.got[dir] {
            leg.got[dir] = true;
            if leg.got[1 - dir] {
                self.flowing += 1;
            }
        }
    }
}

/// Drain one peer's output up to its next timeout: datagrams to `out`, events handled.
fn drain(g: &Gen, legs: &mut Legs, idx: usize, out: &mut Vec<(SocketAddrV4, Vec<u8>)>) {
    let mut received = 0u32;
    {
        let Some(Some(leg)) = legs.legs.get_mut(idx) else { return };
        if leg.dead {
            return;
        }
        loop {
            match leg.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    leg.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if let SocketAddr::V4(to) = t.destination {
                        out.push((to, t.contents.into()));
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        if let Some(w) = leg.rtc.writer(leg.mid) {
                            leg.pt = w.payload_params().find(|p| p.spec().codec == Codec::PCMU).map(|p| p.pt());
                        }
                        leg.ice_up = true;
                    }
                    Event::ChannelOpen(id, _) if Some(id) == leg.channel => {
                        if let (Some(p), Some(mut ch)) = (&leg.present, leg.rtc.channel(id)) {
                            let msg = DirectClientMsg::Present {
                                v: PROTOCOL_VERSION,
                                call_id: p.call_id.clone(),
                                key: p.key.clone(),
                                caller: p.caller.clone(),
                            };
                            let _ = ch.write(false, msg.encode().as_bytes());
                        }
                    }
                    Event::ChannelData(d) if Some(d.id) == leg.channel => {
                        match DirectServerMsg::decode(&String::from_utf8_lossy(&d.data)) {
                            Ok(DirectServerMsg::Accepted { .. }) => leg.accepted = true,
                            Ok(DirectServerMsg::Error { code, message }) if !leg.accepted => {
                                g.failures.lock().unwrap().push(format!("call {idx}: key refused: {code}: {message}"));
                                leg.dead = true;
                            }
                            Ok(DirectServerMsg::Ended { .. }) => leg.dead = true,
                            _ => {}
                        }
                    }
                    Event::MediaData(d) => {
                        if let Some((i, dir, w)) = unstamp(&d.data)
                            && i as usize == idx
                            && dir as usize == B2W
                        {
                            g.m.recv[B2W][w as usize].fetch_add(1, Ordering::Relaxed);
                            received += 1;
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    g.failures.lock().unwrap().push(format!("call {idx}: str0m: {e}"));
                    leg.dead = true;
                    break;
                }
            }
        }
        if !leg.reported && leg.ice_up && leg.accepted && leg.pt.is_some() {
            leg.reported = true;
            g.state[idx].store(READY, Ordering::Release);
        }
        if leg.dead && !leg.reported {
            leg.reported = true;
            g.state[idx].store(FAILED, Ordering::Release);
        }
    }
    if received > 0 {
        legs.note_got(idx, B2W);
    }
}

/// The generator thread: until `g.m.stop`.
fn generate(g: Arc<Gen>, w: UdpSocket, b: UdpSocket, cmds: smpsc::Receiver<Cmd>) {
    let (fw, fb) = (w.as_raw_fd(), b.as_raw_fd());
    let mut legs = Legs {
        legs: Vec::new(),
        by_source: HashMap::new(),
        pending: Vec::new(),
        flowing: 0,
        local: w.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    let start = Instant::now();
    let mut next_slot: u64 = 0;
    let mut out_w: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let mut out_b: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let mut bufs = Box::new([[0u8; 2048]; BATCH]);
    let mut rx = Vec::with_capacity(BATCH);
    while !g.m.stop.load(Ordering::Relaxed) {
        // Commands from the measuring thread (new calls, candidates, the end).
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Add(idx, leg) => {
                    if legs.legs.len() <= idx {
                        legs.legs.resize_with(idx + 1, || None);
                    }
                    legs.legs[idx] = Some(*leg);
                    legs.pending.push(idx);
                    drain(&g, &mut legs, idx, &mut out_w);
                }
                Cmd::Candidate(idx, line) => {
                    if let (Some(Some(leg)), Ok(c)) = (legs.legs.get_mut(idx), Candidate::from_sdp_string(&line)) {
                        leg.rtc.add_remote_candidate(c);
                        drain(&g, &mut legs, idx, &mut out_w);
                    }
                }
                Cmd::Clear => {
                    let now = Instant::now();
                    for idx in 0..legs.legs.len() {
                        if let Some(Some(leg)) = legs.legs.get_mut(idx) {
                            if let Some(mut ch) = leg.channel.and_then(|c| leg.rtc.channel(c)) {
                                let _ = ch.write(false, DirectClientMsg::Hangup.encode().as_bytes());
                            }
                            let _ = leg.rtc.handle_input(Input::Timeout(now));
                        }
                        drain(&g, &mut legs, idx, &mut out_w);
                    }
                    send_all(fw, &mut out_w);
                    legs.legs.clear();
                    legs.by_source.clear();
                    legs.pending.clear();
                    legs.flowing = 0;
                }
            }
        }
        // Sends due: every 1 ms slot up to now, at most one period behind.
        let now_slot = start.elapsed().as_millis() as u64;
        if now_slot > next_slot + 5 {
            g.m.late.fetch_add(1, Ordering::Relaxed);
        }
        if now_slot >= next_slot + 20 {
            next_slot = now_slot + 1 - 20;
        }
        let window = g.m.window.load(Ordering::Relaxed);
        let mut sent = [0u64; 2];
        while next_slot <= now_slot {
            let slot = (next_slot % 20) as usize;
            let now = Instant::now();
            for idx in (slot..legs.legs.len()).step_by(20) {
                let Some(Some(leg)) = legs.legs.get_mut(idx) else { continue };
                if !leg.reported || leg.dead {
                    continue;
                }
                // W → B: a frame into str0m, which encrypts and sends it on this input.
                if let (Some(pt), Some(wr)) = (leg.pt, leg.rtc.writer(leg.mid)) {
                    let time = MediaTime::new(leg.samples, Frequency::EIGHT_KHZ);
                    if wr.write(pt, now, time, stamp(idx as u32, W2B as u8, window as u8).to_vec()).is_ok()
                        && leg.rtc.handle_input(Input::Timeout(now)).is_ok()
                    {
                        sent[W2B] += 1;
                    }
                    leg.samples += PAYLOAD as u64;
                }
                // B → W: plain RTP, once the B side knows where to send.
                if let Some(to) = leg.b_to {
                    let s = leg.b_seq;
                    leg.b_seq = s.wrapping_add(1);
                    let fields = RtpFields {
                        marker: false,
                        payload_type: 0,
                        sequence: s,
                        timestamp: (s as u32).wrapping_mul(PAYLOAD as u32),
                        ssrc: b_ssrc(idx),
                    };
                    let mut p = Vec::with_capacity(RTP_HEADER_LEN + PAYLOAD);
                    p.extend_from_slice(&rtp_header(&fields));
                    p.extend_from_slice(&stamp(idx as u32, B2W as u8, window as u8));
                    out_b.push((to, p));
                }
                drain(&g, &mut legs, idx, &mut out_w);
            }
            next_slot += 1;
        }
        // str0m's own timers (ICE keepalives, RTCP, DTLS retransmissions).
        let now = Instant::now();
        for idx in 0..legs.legs.len() {
            let due = matches!(&legs.legs[idx], Some(l) if !l.dead && l.timeout <= now);
            if due {
                if let Some(Some(leg)) = legs.legs.get_mut(idx) {
                    let _ = leg.rtc.handle_input(Input::Timeout(now));
                }
                drain(&g, &mut legs, idx, &mut out_w);
            }
        }
        let (nw, nb) = (out_w.len(), out_b.len());
        let done_w = send_all(fw, &mut out_w);
        let done_b = send_all(fb, &mut out_b);
        // A frame str0m did not get out shows as a send error (the step is measured again).
        g.m.sent[W2B][window].fetch_add(sent[W2B], Ordering::Relaxed);
        g.m.sent[B2W][window].fetch_add(done_b as u64, Ordering::Relaxed);
        g.m.send_errors.fetch_add((nw - done_w + nb - done_b) as u64, Ordering::Relaxed);
        // Receive at W: SRTP (and ICE, DTLS) from the bridges.
        loop {
            recv_batch(fw, &mut bufs, &mut rx);
            let now = Instant::now();
            for (j, &(n, src)) in rx.iter().enumerate() {
                let source = SocketAddr::V4(src);
                let data = &bufs[j][..n];
                let Ok(contents) = data.try_into() else { continue };
                let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: legs.local, contents });
                let idx = match legs.by_source.get(&source) {
                    Some(&i) => Some(i),
                    None => {
                        let found =
                            legs.pending.iter().copied().find(|&i| matches!(&legs.legs[i], Some(l) if l.rtc.accepts(&input)));
                        if let Some(i) = found {
                            legs.by_source.insert(source, i);
                        }
                        found
                    }
                };
                let Some(idx) = idx else { continue };
                if let Some(Some(leg)) = legs.legs.get_mut(idx)
                    && !leg.dead
                    && leg.rtc.handle_input(input).is_ok()
                {
                    drain(&g, &mut legs, idx, &mut out_w);
                }
            }
            if rx.len() < BATCH {
                break;
            }
        }
        legs.pending.retain(|&i| matches!(&legs.legs[i], Some(l) if !l.reported));
        // Receive at B: plain RTP from the bridges.
        loop {
            recv_batch(fb, &mut bufs, &mut rx);
            for (j, &(n, src)) in rx.iter().enumerate() {
                let datagram = &bufs[j][..n];
                let Ok(h) = parse_rtp(datagram) else { continue };
                let Some((idx, dir, w)) = unstamp(h.payload(datagram)) else { continue };
                let idx = idx as usize;
                if dir as usize != W2B {
                    continue;
                }
                let Some(Some(leg)) = legs.legs.get_mut(idx) else { continue };
                if leg.b_to.is_none() {
                    leg.b_to = Some(src);
                }
                g.m.recv[W2B][w as usize].fetch_add(1, Ordering::Relaxed);
                legs.note_got(idx, W2B);
            }
            if rx.len() < BATCH {
                break;
            }
        }
        send_all(fw, &mut out_w);
        g.m.flowing.store(legs.flowing, Ordering::Relaxed);
        // Sleep to the next slot (or the next str0m timeout, if sooner).
        let mut next_at = start + Duration::from_millis(next_slot);
        for l in legs.legs.iter().flatten() {
            if !l.dead && l.timeout < next_at {
                next_at = l.timeout;
            }
        }
        let now = Instant::now();
        if next_at > now {
            std::thread::sleep((next_at - now).min(Duration::from_millis(1)));
        }
    }
}

/// A browser's peer before the answer: the `Rtc`, its offer and what to keep.
fn offerer(local: SocketAddr, with_channel: bool) -> Result<(Rtc, Mid, Option<ChannelId>, SdpPendingOffer, String), String> {
    let mut rtc = rtc_config(RtcOptions::default()).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let channel = with_channel.then(|| change.add_channel(trunkline_client::softphone::DIRECT_CHANNEL.to_string()));
    let (offer, pending) = change.apply().ok_or("no offer")?;
    Ok((rtc, mid, channel, pending, offer.to_sdp_string()))
}

/// rtpengine 10.5 answers a BUNDLE offer of one audio section without `a=group:BUNDLE`, which
/// str0m requires (a browser takes the answer as it is): add the group of that one `mid`.
fn with_bundle(sdp: &str) -> String {
    if sdp.contains("a=group:BUNDLE") {
        return sdp.to_string();
    }
    let Some(mid) = sdp.lines().find_map(|l| l.strip_prefix("a=mid:")).map(str::trim) else { return sdp.to_string() };
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut added = false;
    for line in sdp.split_inclusive('\n') {
        out.push_str(line);
        if !added && line.starts_with("t=") {
            out.push_str(&format!("a=group:BUNDLE {mid}\r\n"));
            added = true;
        }
    }
    out
}

/// One gateway call's signalling (what `media.rs` does for F1, up to the answer); the peer
/// then goes to the generator, and later candidates follow it there.
async fn negotiate_f1(
    b: Arc<Browser>,
    callee: String,
    idx: usize,
    local: SocketAddr,
    cmds: smpsc::Sender<Cmd>,
    stop: watch::Receiver<bool>,
) -> Result<String, String> {
    let within = Duration::from_secs(15);
    let call_id = trunkline_client::signal::new_call_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.routes.lock().unwrap().insert(call_id.clone(), tx);
    let result = async {
        let key = crate::media::dial(&b, &call_id, &callee, &mut rx, within).await?;
        let (mut rtc, mid, channel, pending, offer) = offerer(local, true)?;
        b.sender
            .send(&ClientMsg::DirectSignal { call_id: call_id.clone(), payload: SignalPayload::Offer { sdp: offer } })
            .map_err(|e| e.to_string())?;
        let mut early = Vec::new();
        let answer = tokio::time::timeout(within, async {
            while let Some(m) = rx.recv().await {
                match m {
                    ServerMsg::DirectSignal { payload: SignalPayload::Answer { sdp }, .. } => return Ok(sdp),
                    ServerMsg::DirectSignal { payload: SignalPayload::Ice { candidate, .. }, .. } => early.push(candidate),
                    ServerMsg::Outcome { outcome, .. } => return Err(format!("outcome {outcome} before the answer")),
                    _ => {}
                }
            }
            Err("signal connection closed".to_string())
        })
        .await
        .map_err(|_| "no answer in time".to_string())??;
        let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
        rtc.sdp_api().accept_answer(pending, answer).map_err(|e| e.to_string())?;
        for c in early {
            if let Ok(c) = Candidate::from_sdp_string(&c) {
                rtc.add_remote_candidate(c);
            }
        }
        let present = Present { call_id: call_id.clone(), key, caller: b.number.clone() };
        cmds.send(Cmd::Add(idx, Box::new(Leg::new(rtc, mid, channel, Some(present), None)))).map_err(|_| "generator gone")?;
        // Later candidates go to the generator until the call ends.
        let routes = b.routes.clone();
        let id = call_id.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(ServerMsg::DirectSignal { payload: SignalPayload::Ice { candidate, .. }, .. }) => {
                            let _ = cmds.send(Cmd::Candidate(idx, candidate));
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            routes.lock().unwrap().remove(&id);
        });
        Ok(call_id.clone())
    }
    .await;
    if result.is_err() {
        b.routes.lock().unwrap().remove(&call_id);
    }
    result
}

/// The bridge under test and its calls.
enum Peer {
    Gateway {
        rt: Arc<tokio::runtime::Runtime>,
        browsers: Vec<Arc<Browser>>,
        first: u64,
        stop: watch::Sender<bool>,
        concurrency: usize,
    },
    Rtpengine {
        ng: Ng,
        calls: Vec<(String, String)>,
    },
}

impl Peer {
    /// Set up calls `range` (handed to the generator); returns when each is up or failed.
    fn add(&mut self, range: std::ops::Range<usize>, ctx: &Ctx) -> Result<(), String> {
        match self {
            Peer::Gateway { rt, browsers, first, stop, concurrency } => {
                use futures_util::StreamExt;
                let results: Vec<Result<String, String>> = rt.block_on(
                    futures_util::stream::iter(range.clone().map(|k| {
                        let b = browsers[k % browsers.len()].clone();
                        negotiate_f1(b, (*first + k as u64).to_string(), k, ctx.w, ctx.cmds.clone(), stop.subscribe())
                    }))
                    .buffer_unordered(*concurrency)
                    .collect(),
                );
                if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                    return Err(e);
                }
            }
            Peer::Rtpengine { ng, calls } => {
                for k in range.clone() {
                    let (call_id, from_tag) = (format!("tlwebrtc-{}-{k}", std::process::id()), format!("w{k}"));
                    let (mut rtc, mid, _, pending, offer) = offerer(ctx.w, false)?;
                    let list = |v: &[&str]| Value::List(v.iter().map(|s| Value::str(s)).collect());
                    let to_phone = ng.offer(
                        &call_id,
                        &from_tag,
                        &offer,
                        &[
                            ("ICE", Value::str("remove")),
                            ("DTLS", Value::str("off")),
                            ("transport-protocol", Value::str("RTP/AVP")),
                            ("rtcp-mux", list(&["demux"])),
                            ("flags", list(&["trust-address"])),
                        ],
                    )?;
                    let to_browser = ng.answer(
                        &call_id,
                        &from_tag,
                        &format!("p{k}"),
                        &phone_sdp(k as u64, ctx.b, TELEPHONE_EVENT_PT),
                        &[
                            ("ICE", Value::str("force")),
                            ("DTLS", Value::str("passive")),
                            ("SDES", list(&["off"])),
                            ("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF")),
                            ("rtcp-mux", list(&["require"])),
                            ("flags", list(&["trust-address"])),
                        ],
                    )?;
                    calls.push((call_id, from_tag));
                    let b_to = sdp_audio_addr(to_phone.as_bytes()).ok_or_else(|| format!("no audio address in {to_phone:?}"))?;
                    let to_browser = with_bundle(&to_browser);
                    let answer = SdpAnswer::from_sdp_string(&to_browser).map_err(|e| format!("{e}: {to_browser:?}"))?;
                    rtc.sdp_api().accept_answer(pending, answer).map_err(|e| format!("{e}: {to_browser:?}"))?;
                    // rtpengine's answer names no SSRC and adds no mid header extension (it passes
                    // the phone's RTP through): a browser takes the one unsignalled stream of
                    // its one audio section; str0m needs to be told which SSRC that is.
                    if rtc.media(mid).is_some() {
                        rtc.direct_api().expect_stream_rx(b_ssrc(k).into(), None, mid, None);
                    }
                    ctx.cmds
                        .send(Cmd::Add(k, Box::new(Leg::new(rtc, mid, None, None, Some(v4(b_to)?)))))
                        .map_err(|_| "generator gone")?;
                }
            }
        }
        // ICE + DTLS (and the key) of every new call, in the generator.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let states: Vec<u8> = range.clone().map(|k| ctx.g.state[k].load(Ordering::Acquire)).collect();
            if let Some(k) = states.iter().position(|s| *s == FAILED) {
                let why = ctx.g.failures.lock().unwrap().last().cloned().unwrap_or_default();
                return Err(format!("call {} failed: {why}", range.start + k));
            }
            let pending = states.iter().filter(|s| **s == PENDING).count();
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{pending} calls without ICE/DTLS{} after 20 s",
                    if matches!(self, Peer::Gateway { .. }) { "/key" } else { "" }
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// End every call: the generator hangs up (DataChannel) and forgets the peers; rtpengine's
    /// calls are deleted.
    fn teardown(&mut self, ctx: &Ctx) {
        let _ = ctx.cmds.send(Cmd::Clear);
        std::thread::sleep(Duration::from_millis(200));
        match self {
            Peer::Gateway { stop, .. } => {
                let _ = stop.send(true);
            }
            Peer::Rtpengine { ng, calls } => {
                for (call_id, from_tag) in std::mem::take(calls) {
                    let _ = ng.delete(&call_id, &from_tag);
                }
            }
        }
        for s in &ctx.g.state {
            s.store(PENDING, Ordering::Relaxed);
        }
    }
}

struct Ctx<'a> {
    g: &'a Arc<Gen>,
    cmds: smpsc::Sender<Cmd>,
    w: SocketAddr,
    b: SocketAddrV4,
    p: &'a Params,
    windows: Windows<'a>,
}

/// Ramp one bridge through the steps; its kv lines prefixed with `name`.
fn measure_peer(ctx: &mut Ctx, name: &str, pid: u32, mut peer: Peer) -> Vec<(String, String)> {
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| kv.push((format!("{name}_{k}"), v));
    let rss0 = procfs::rss_bytes(pid).unwrap_or(0) as i64;
    set("threads_pinned", hold_relay(pid, ctx.p.relay_cpu, ctx.p.nice).to_string());
    let started = Instant::now();
    let mut have = 0usize;
    let mut steps: Vec<Step> = Vec::new();
    let mut stop = String::from("all steps passed");
    for &n in &ctx.p.steps {
        if started.elapsed().as_secs_f64() > ctx.p.max_secs {
            stop = format!("time limit ({} s) before {n} calls", ctx.p.max_secs);
            break;
        }
        if n > have {
            let t = Instant::now();
            if let Err(e) = peer.add(have..n, ctx) {
                stop = format!("setting up calls {}..{n} failed: {e}", have + 1);
                eprintln!("mediawebrtc {name}: {stop}");
                break;
            }
            eprintln!("mediawebrtc {name}: calls {}..{n} set up in {:.1} s", have + 1, t.elapsed().as_secs_f64());
            have = n;
        }
        if let Err(why) = ctx.windows.wait_flowing(n) {
            stop = why;
            eprintln!("mediawebrtc {name}: {stop}");
            break;
        }
        let step = ctx.windows.measure_step(pid, n, rss0, &format!("mediawebrtc {name}"));
        eprintln!(
            "mediawebrtc {name}: {n} calls: {} sent, {} forwarded, {} lost ({} at the generator's sockets), {:.2} µs/packet, bridge {:.2} cores, generator {:.2} cores, {:.0} % of nominal",
            step.sent,
            step.forwarded,
            step.lost(),
            step.gen_drops,
            step.us_per_pkt(),
            step.cores(),
            step.gen_cores(),
            step.offered() * 100.0
        );
        let why = step.stop_reason(n, "bridge", "");
        steps.push(step);
        if let Some(why) = why {
            stop = why;
            break;
        }
    }
    peer.teardown(ctx);
    release_relay(pid);

    steps_kv(&steps, &mut set);
    best_kv(&steps, &mut set, true);
    if let Some(s) = steps.iter().find(|s| s.gen_cores() >= 0.9 || s.generator_fault()) {
        set("generator_limit_at", s.calls.to_string());
    }
    set("stop", stop);
    kv
}

/// The whole measurement: the gateway (if given), then rtpengine (if given), same streams.
pub fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    if p.steps.is_empty() || p.steps.contains(&0) {
        return Err("--steps: positive call counts expected".into());
    }
    hold_generator(p.generator_cpu, p.nice);
    let sw = bind_generator_socket()?;
    let sb = bind_generator_socket()?;
    let w = sw.local_addr().map_err(|e| e.to_string())?;
    let b = v4(sb.local_addr().map_err(|e| e.to_string())?)?;
    let max = *p.steps.iter().max().unwrap_or(&0);
    let g = Arc::new(Gen {
        m: Meter::default(),
        state: (0..max).map(|_| AtomicU8::new(PENDING)).collect(),
        failures: Mutex::new(Vec::new()),
    });
    let (cmd_tx, cmd_rx) = smpsc::channel();
    let generator = {
        let g = g.clone();
        std::thread::spawn(move || generate(g, sw, sb, cmd_rx))
    };
    // Signalling (the browsers' WebSockets, the desk phones' SIP) on a worker thread of its
    // own, so it goes on while this thread sleeps through a window; same core as the generator.
    let rt =
        Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?);
    let mut kv = params_kv(&p.steps, p.secs, p.generator_cpu, p.relay_cpu, p.nice);
    let windows = Windows { m: &g.m, ports: [w.port(), b.port()], secs: p.secs, next: 1 };
    let mut ctx = Ctx { g: &g, cmds: cmd_tx, w, b, p: &p, windows };
    let result = (|| {
        if let (Some(server), Some(sip), Some(pid)) = (&p.server, p.gateway_sip, p.gateway_pid) {
            let ua = Arc::new(rt.block_on(Ua::bind(sip, Media::Shared(SocketAddr::V4(b)))).map_err(|e| e.to_string())?);
            let numbers: Vec<String> = (0..max).map(|k| (p.phone_first + k as u64).to_string()).collect();
            let registered = rt.block_on(ua.register_all(numbers, crate::gwprov::phone_password, 32))?;
            eprintln!("mediawebrtc gw: {registered} desk phones registered");
            let mut browsers = Vec::new();
            for i in 0..p.browsers.max(1) {
                let number = (p.browser_first + i as u64).to_string();
                browsers.push(Arc::new(rt.block_on(crate::media::browser(server, number, &p.browser_password))?));
            }
            let (stop, _) = watch::channel(false);
            let peer =
                Peer::Gateway { rt: rt.clone(), browsers, first: p.phone_first, stop, concurrency: p.setup_concurrency.max(1) };
            kv.extend(measure_peer(&mut ctx, "gw", pid, peer));
            // The phones' BYEs: let the gateway end its legs before the next bridge runs.
            for _ in 0..50 {
                if ua.answered_up() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(ua);
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

/// The bench table's rows from gateway.kv's `mediawebrtc_*` keys; nothing when the part did
/// not run.
pub fn rows(out: &mut String, g: &crate::report::Kv) {
    if !g.keys().any(|k| k.starts_with("mediawebrtc_")) {
        return;
    }
    let fmt = crate::report::fmt_num;
    let na = || "n/a".to_string();
    let c = Compare::new(g, "mediawebrtc");
    let (common, at) = (c.common, |peer: &str, k: &str| c.at(peer, k));
    let (a, b) = (at("gw", "cpu_us_per_pkt"), at("rte", "cpu_us_per_pkt"));
    let gen_cores = |peer: &str| at(peer, "gen_cores").map(|v| format!("{v:.2}")).unwrap_or_else(na);
    out.push_str(&format!(
        "| WebRTC (ICE, DTLS-SRTP) ⇄ RTP bridge, CPU µs per forwarded packet at {} calls ({} packets/s; PCMU 20 ms both ways; Trunkline: F1 calls; rtpengine{}: ICE=force, DTLS=passive, SDES-off), bridge pinned to one core, load generator to the other (its own CPU, SRTP for every packet: {} / {} of a core) | {} | {} | {} | ratio ≤ 1 |\n",
        common.map(|c| fmt(c, 0)).unwrap_or_else(na),
        at("gw", "pps").or_else(|| at("rte", "pps")).map(|v| fmt(v, 0)).unwrap_or_else(na),
        g.get("mediawebrtc_rtpengine_version").map(|v| format!(" {v}")).unwrap_or_default(),
        gen_cores("gw"),
        gen_cores("rte"),
        a.map(|v| fmt(v, 2)).unwrap_or_else(na),
        b.map(|v| fmt(v, 2)).unwrap_or_else(na),
        ratio(a, b),
    ));
    crate::loadgen::kernel_row(out, &c, "WebRTC ⇄ RTP bridge");
    let cell = |peer: &str| match (
        num(g, &format!("mediawebrtc_{peer}_pps_per_core")),
        num(g, &format!("mediawebrtc_{peer}_calls_per_core")),
        num(g, &format!("mediawebrtc_{peer}_max_calls_zero_loss")),
    ) {
        (Some(pps), Some(per_core), Some(calls)) => {
            format!("{} pkt/s ≈ {} calls (measured: {} calls)", fmt(pps, 0), fmt(per_core, 0), fmt(calls, 0))
        }
        _ => na(),
    };
    let limit = |peer: &str| {
        num(g, &format!("mediawebrtc_{peer}_generator_limit_at"))
            .map(|v| format!("; the generator's limit reached at {} calls", fmt(v, 0)))
            .unwrap_or_default()
    };
    out.push_str(&format!(
        "| WebRTC ⇄ RTP bridge: packets/s and bridged calls per core at zero loss (10⁶ ÷ CPU µs per packet at the most calls with no loss, ÷ 100 packets/s per call; ramp stops: Trunkline {}{}; rtpengine {}{}) | {} | {} | {} | ≥ 2,000 calls per core |\n",
        g.get("mediawebrtc_gw_stop").cloned().unwrap_or_else(na),
        limit("gw"),
        g.get("mediawebrtc_rte_stop").cloned().unwrap_or_else(na),
        limit("rte"),
        cell("gw"),
        cell("rte"),
        ratio(num(g, "mediawebrtc_gw_pps_per_core"), num(g, "mediawebrtc_rte_pps_per_core")),
    ));
    let (a, b) = (num(g, "mediawebrtc_gw_rss_kb_per_call"), num(g, "mediawebrtc_rte_rss_kb_per_call"));
    out.push_str(&format!(
        "| WebRTC ⇄ RTP bridge: memory per bridged call, kB (RSS growth ÷ calls at the most calls with no loss) | {} | {} | {} | — |\n",
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
        let p = stamp(4242, 1, 17);
        assert_eq!(unstamp(&p), Some((4242, 1, 17)));
        assert_eq!(unstamp(&p[..8]), None);
        assert_eq!(unstamp(b"junk-junk-junk"), None);
    }

    /// A stand-in bridge on real sockets: a str0m answerer on one socket, plain RTP on another,
    /// payloads passed through both ways (what the gateway and rtpengine do, minus the rest).
    fn stand_in_bridge(offer: &str, to_phone: SocketAddrV4, done: Arc<AtomicBool>) -> (String, SocketAddrV4) {
        let ws = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ps = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (wl, pl) = (ws.local_addr().unwrap(), v4(ps.local_addr().unwrap()).unwrap());
        for s in [&ws, &ps] {
            s.set_nonblocking(true).unwrap();
        }
        let mut rtc = rtc_config(RtcOptions::default()).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(wl, "udp").unwrap());
        let offer = str0m::change::SdpOffer::from_sdp_string(offer).unwrap();
        let answer = rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut mid = None;
            let mut seq = 0u16;
            while !done.load(Ordering::Relaxed) {
                let mut wait = Duration::from_millis(1);
                loop {
                    match rtc.poll_output() {
                        Ok(Output::Timeout(t)) => {
                            wait = wait.min(t.saturating_duration_since(Instant::now()));
                            break;
                        }
                        Ok(Output::Transmit(t)) => {
                            let _ = ws.send_to(&t.contents, t.destination);
                        }
                        Ok(Output::Event(Event::MediaAdded(m))) => mid = Some(m.mid),
                        Ok(Output::Event(Event::MediaData(d))) => {
                            let f = RtpFields { marker: false, payload_type: 0, sequence: seq, timestamp: 0, ssrc: 5 };
                            seq = seq.wrapping_add(1);
                            let _ = ps.send_to(&[&rtp_header(&f)[..], &d.data].concat(), to_phone);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                if let Ok((n, source)) = ws.recv_from(&mut buf) {
                    let contents = buf[..n].try_into().unwrap();
                    let input =
                        Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: wl, contents });
                    let _ = rtc.handle_input(input);
                    continue;
                }
                if let Ok((n, _)) = ps.recv_from(&mut buf)
                    && let (Ok(h), Some(m)) = (parse_rtp(&buf[..n]), mid)
                {
                    let payload = h.payload(&buf[..n]).to_vec();
                    let time = MediaTime::new(u64::from(h.timestamp), Frequency::EIGHT_KHZ);
                    let pt =
                        rtc.writer(m).and_then(|w| w.payload_params().find(|p| p.spec().codec == Codec::PCMU).map(|p| p.pt()));
                    if let (Some(pt), Some(w)) = (pt, rtc.writer(m)) {
                        let _ = w.write(pt, Instant::now(), time, payload);
                    }
                    let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                    continue;
                }
                std::thread::sleep(wait);
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
        });
        (answer, pl)
    }

    #[test]
    fn generator_bridges_webrtc_peers_behind_one_socket_and_counts_per_window() {
        let sw = bind_generator_socket().unwrap();
        let sb = bind_generator_socket().unwrap();
        let (w, b) = (sw.local_addr().unwrap(), v4(sb.local_addr().unwrap()).unwrap());
        let g = Arc::new(Gen {
            m: Meter::default(),
            state: (0..2).map(|_| AtomicU8::new(PENDING)).collect(),
            failures: Mutex::new(Vec::new()),
        });
        let (tx, rx) = smpsc::channel();
        let t = {
            let g = g.clone();
            std::thread::spawn(move || generate(g, sw, sb, rx))
        };
        let done = Arc::new(AtomicBool::new(false));
        // Two calls, two bridges: the generator tells their datagrams apart by source.
        for k in 0..2 {
            let (mut rtc, mid, _, pending, offer) = offerer(w, false).unwrap();
            let (answer, phone_leg) = stand_in_bridge(&offer, b, done.clone());
            rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
            tx.send(Cmd::Add(k, Box::new(Leg::new(rtc, mid, None, None, Some(phone_leg))))).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while g.m.flowing.load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(g.m.flowing.load(Ordering::Relaxed), 2, "media both ways on both calls: {:?}", g.failures.lock().unwrap());
        assert!(g.state.iter().all(|s| s.load(Ordering::Relaxed) == READY));
        g.m.window.store(7, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(15);
        while (g.m.recv[W2B][7].load(Ordering::Relaxed) < 4 || g.m.recv[B2W][7].load(Ordering::Relaxed) < 4)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        g.m.window.store(0, Ordering::Relaxed);
        tx.send(Cmd::Clear).unwrap();
        g.m.stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        done.store(true, Ordering::Relaxed);
        for d in [W2B, B2W] {
            let (sent, got) = (g.m.sent[d][7].load(Ordering::Relaxed), g.m.recv[d][7].load(Ordering::Relaxed));
            assert!(got >= 4 && got <= sent, "direction {d}: {got} of {sent}");
        }
        assert_eq!(g.m.recv[W2B][9].load(Ordering::Relaxed), 0, "nothing counted in a window never opened");
    }

    #[test]
    fn a_bundle_group_is_added_to_an_answer_without_one() {
        let sdp = "v=0\r\no=- 0 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 10 UDP/TLS/RTP/SAVPF 0\r\na=mid:zx\r\n";
        let fixed = with_bundle(sdp);
        assert!(fixed.contains("t=0 0\r\na=group:BUNDLE zx\r\nm=audio"), "{fixed:?}");
        assert_eq!(with_bundle(&fixed), fixed);
    }

    #[test]
    fn rows_compare_at_the_most_calls_both_carried_without_loss() {
        let mut g = crate::report::Kv::new();
        for (k, v) in [
            ("gw_steps_run", "2"),
            ("gw_step0_calls", "50"),
            ("gw_step0_cpu_us_per_pkt", "12.0"),
            ("gw_step0_pps", "5000"),
            ("gw_step1_calls", "200"),
            ("gw_step1_cpu_us_per_pkt", "10.0"),
            ("gw_max_calls_zero_loss", "200"),
            ("gw_pps_per_core", "100000"),
            ("gw_calls_per_core", "1000"),
            ("rte_steps_run", "1"),
            ("rte_step0_calls", "50"),
            ("rte_step0_cpu_us_per_pkt", "24.0"),
            ("rte_max_calls_zero_loss", "50"),
            ("rte_pps_per_core", "41667"),
            ("rte_calls_per_core", "417"),
        ] {
            g.insert(format!("mediawebrtc_{k}"), v.to_string());
        }
        let mut out = String::new();
        rows(&mut out, &g);
        let first = out.lines().next().unwrap();
        assert!(first.contains("at 50 calls") && first.contains("| 12.00 | 24.00 | 0.50 |"), "{first}");
        assert!(out.contains("100,000 pkt/s ≈ 1,000 calls (measured: 200 calls)"), "{out}");
        let mut empty = String::new();
        rows(&mut empty, &crate::report::Kv::new());
        assert!(empty.is_empty());
    }
}
