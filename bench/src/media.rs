//! Concurrent bridged calls: how many F1 calls (a browser's WebRTC leg bridged by one gateway
//! to a desk phone's RTP) one gateway carries with no packet loss and a p99 added delay under
//! 1 ms.
//!
//! - Signalling is the headless client's (`trunkline-client`): browsers signed in with
//!   `SignalClient`, `dial` (A/C1), the cloud's `connect` (C13), then C14 over WebRTC as the
//!   browser does it: the offer (audio + the `trunkline-direct` DataChannel) and candidates
//!   through the cloud (`direct_signal`), ICE + DTLS to the gateway, the key presented on the
//!   DataChannel (C14), `accepted`, and the gateway bridges (C15).
//! - The WebRTC leg of each call is a str0m peer driven here (the same str0m 0.25 and codec
//!   set as the client's `WebRtcPeer`: PCMU, PCMA, telephone-event; full ICE, DTLS-SRTP). It
//!   is not the client's `MediaSession` because a delay measurement needs the send time in
//!   each payload, and `MediaSession` sends audio from an `AudioSource` that cannot carry one.
//! - Every peer sends one 160-byte PCMU payload every 20 ms (50 packets/s): magic, call index,
//!   sequence number and the wall-clock time (ns) taken just before str0m encrypts and sends.
//!   Same law on both legs, so the gateway passes payloads through untouched.
//! - The desk phones are numbers registered by one UA ([`crate::sipua`]) whose SDP names one
//!   shared UDP socket, the echo: for each packet it notes the delay (the kernel's receive
//!   time of the datagram, `SO_TIMESTAMPNS`, minus the stamp in the payload) and sends it
//!   back with a fresh stamp; the peer notes the delay of the way back the same way.
//! - Loss and delay are counted per window by send stamp: a packet belongs to the window when
//!   its stamp is inside it, and counts as received if it arrived before the count is taken
//!   (300 ms after the window). Ramp: add calls up to each step's N, wait until every call
//!   has media both ways, measure, go on while the step passes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use trunkline_client::TlsOptions;
use trunkline_client::signal::{self, SignalClient, SignalSender};
use trunkline_media::rtp::{RTP_HEADER_LEN, RtpFields, parse_rtp, rtp_header};
use trunkline_media::webrtc::{RtcOptions, rtc_config};
use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg, PROTOCOL_VERSION, ServerMsg, SignalPayload};

use crate::procfs;
use crate::sipua::{Media, Ua};
use crate::udp::{self, now_ns};

const MAGIC: &[u8; 4] = b"TLB1";
const FRAME: Duration = Duration::from_millis(20);

pub struct Params {
    pub server: String,
    pub gateway_sip: SocketAddr,
    pub gateway_pid: u32,
    pub browser_first: u64,
    pub browsers: usize,
    pub browser_password: String,
    pub phone_first: u64,
    pub steps: Vec<usize>,
    pub secs: f64,
    pub setup_concurrency: usize,
    /// Start no further step after this long.
    pub max_secs: f64,
}

/// One direction's counters for the current window.
#[derive(Default)]
struct Dir {
    sent: AtomicU64,
    recv: AtomicU64,
    /// Delays (ns) of the packets of the window.
    delays: Mutex<Vec<u32>>,
}

#[derive(Default)]
struct Shared {
    /// Window bounds, wall-clock ns (0/0: no window).
    win_start: AtomicU64,
    win_end: AtomicU64,
    up: Dir,
    down: Dir,
    /// Per call index: packets seen at the echo (up) and at the peer (down), any time.
    up_seen: Mutex<HashMap<u32, u64>>,
    down_seen: Mutex<HashMap<u32, u64>>,
    /// How late the peers' frame writes were (ns), window only.
    late: Mutex<Vec<u32>>,
    /// Sends that failed at once (full socket buffer) in the load generator.
    send_errors: AtomicU64,
    /// Ports of the generator's media sockets (for the kernel's drop counters).
    ports: Mutex<Vec<u16>>,
}

impl Shared {
    fn in_window(&self, stamp: u64) -> bool {
        let s = self.win_start.load(Ordering::Relaxed);
        s != 0 && stamp >= s && stamp < self.win_end.load(Ordering::Relaxed)
    }
}

fn encode(buf: &mut [u8; 160], idx: u32, seq: u32, stamp: u64) {
    buf.fill(0xff);
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&idx.to_be_bytes());
    buf[8..12].copy_from_slice(&seq.to_be_bytes());
    buf[12..20].copy_from_slice(&stamp.to_be_bytes());
}

fn decode(p: &[u8]) -> Option<(u32, u32, u64)> {
    if p.len() < 20 || &p[0..4] != MAGIC {
        return None;
    }
    Some((
        u32::from_be_bytes(p[4..8].try_into().ok()?),
        u32::from_be_bytes(p[8..12].try_into().ok()?),
        u64::from_be_bytes(p[12..20].try_into().ok()?),
    ))
}

/// The far end: echo every stamped payload back to where it came from, with a fresh stamp.
async fn echo(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; RTP_HEADER_LEN + 160];
    loop {
        let Ok((n, src, rx_ns)) = udp::recv_stamped(&sock, &mut buf).await else { continue };
        let Ok(header) = parse_rtp(&buf[..n]) else { continue };
        let Some((idx, seq, stamp)) = decode(header.payload(&buf[..n])) else { continue };
        *shared.up_seen.lock().unwrap().entry(idx).or_default() += 1;
        if shared.in_window(stamp) {
            shared.up.recv.fetch_add(1, Ordering::Relaxed);
            let d = rx_ns.saturating_sub(stamp).min(u32::MAX as u64) as u32;
            shared.up.delays.lock().unwrap().push(d);
        }
        // Same sequence number and timestamp back, our own SSRC per call.
        let fields = RtpFields {
            marker: false,
            payload_type: 0,
            sequence: header.sequence,
            timestamp: header.timestamp,
            ssrc: 0x5eed_0000 ^ idx,
        };
        out[..RTP_HEADER_LEN].copy_from_slice(&rtp_header(&fields));
        let mut payload = [0u8; 160];
        let now = now_ns();
        encode(&mut payload, idx, seq, now);
        out[RTP_HEADER_LEN..].copy_from_slice(&payload);
        match sock.try_send_to(&out, src) {
            Ok(_) => {
                if shared.in_window(now) {
                    shared.down.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A WebRTC peer before the answer: its offer, socket and pending state.
struct Offerer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    pending: Option<str0m::change::SdpPendingOffer>,
    mid: Mid,
    /// The DataChannel the key is presented on.
    channel: ChannelId,
}

/// What the DataChannel of one call needs: its key and who presents it.
struct Present {
    call_id: String,
    key: String,
    caller: String,
}

async fn offerer() -> Result<(Offerer, String), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    udp::set_buffers(&sock, 256 << 10);
    udp::enable_timestamps(&sock).map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    // The browser's configuration: full ICE, G.711 + telephone-event (as every leg's).
    let mut rtc = rtc_config(RtcOptions::default()).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let channel = change.add_channel(trunkline_client::softphone::DIRECT_CHANNEL.to_string());
    let (offer, pending) = change.apply().ok_or("no offer")?;
    Ok((Offerer { rtc, sock, local, pending: Some(pending), mid, channel }, offer.to_sdp_string()))
}

/// Drive one peer until `stop` (or the gateway ends the call): present the key on the
/// DataChannel once it opens, send a stamped frame every 20 ms once connected, note what comes
/// back. `connected` fires when the gateway accepted the key (C14) with ICE + DTLS up; remote
/// candidates trickled through the cloud come in on `remote`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    o: Offerer,
    idx: u32,
    shared: Arc<Shared>,
    present: Present,
    mut remote: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<bool>,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let Offerer { mut rtc, sock, local, mid, channel, .. } = o;
    let mut connected = Some(connected);
    let mut ice_up = false;
    let mut accepted = false;
    let mut pt: Option<Pt> = None;
    let mut next_frame: Option<Instant> = None;
    let mut seq: u32 = 0;
    let mut samples: u64 = 0;
    let mut buf = vec![0u8; 2048];
    let mut payload = [0u8; 160];
    loop {
        // Drain str0m's output up to its next timeout.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    if sock.try_send_to(&t.contents, t.destination).is_err() {
                        shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        if let Some(w) = rtc.writer(mid) {
                            pt = w.payload_params().find(|p| p.spec().codec == Codec::PCMU).map(|p| p.pt());
                        }
                        next_frame = Some(Instant::now());
                        ice_up = true;
                    }
                    Event::ChannelOpen(id, _) if id == channel => {
                        // C14 inside DTLS: the one-time key, bound to the call and the caller.
                        let msg = DirectClientMsg::Present {
                            v: PROTOCOL_VERSION,
                            call_id: present.call_id.clone(),
                            key: present.key.clone(),
                            caller: present.caller.clone(),
                        };
                        if let Some(mut ch) = rtc.channel(channel) {
                            let _ = ch.write(false, msg.encode().as_bytes());
                        }
                    }
                    Event::ChannelData(d) if d.id == channel => {
                        let text = String::from_utf8_lossy(&d.data);
                        match DirectServerMsg::decode(&text) {
                            Ok(DirectServerMsg::Accepted { .. }) => accepted = true,
                            Ok(DirectServerMsg::Error { code, message }) if !accepted => {
                                if let Some(c) = connected.take() {
                                    let _ = c.send(Err(format!("key refused: {code}: {message}")));
                                }
                                return;
                            }
                            Ok(DirectServerMsg::Ended { .. }) => return,
                            _ => {}
                        }
                    }
                    Event::MediaData(d) => {
                        if let Some((i, _, stamp)) = decode(&d.data) {
                            *shared.down_seen.lock().unwrap().entry(i).or_default() += 1;
                            if shared.in_window(stamp) {
                                let age = Instant::now().saturating_duration_since(d.network_time).as_nanos() as u64;
                                let rx_ns = now_ns().saturating_sub(age);
                                shared.down.recv.fetch_add(1, Ordering::Relaxed);
                                let dl = rx_ns.saturating_sub(stamp).min(u32::MAX as u64) as u32;
                                shared.down.delays.lock().unwrap().push(dl);
                            }
                        }
                    }
                    _ => {}
                },
                Err(_) => return,
            }
        };
        if ice_up
            && accepted
            && let Some(c) = connected.take()
        {
            let _ = c.send(Ok(()));
        }
        if !rtc.is_alive() {
            return;
        }
        let wake = next_frame.map_or(timeout, |f| f.min(timeout));
        tokio::select! {
            r = udp::recv_stamped(&sock, &mut buf) => {
                let Ok((n, source, rx_ns)) = r else { continue };
                let age = Duration::from_nanos(now_ns().saturating_sub(rx_ns));
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(at, Receive { proto: Protocol::Udp, source, destination: local, contents });
                if rtc.handle_input(input).is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                match (next_frame, pt) {
                    (Some(due), Some(pt)) if due <= now => {
                        let mut due = due;
                        let behind = now - due;
                        if behind > FRAME * 5 {
                            // Far behind (a stalled generator): skip rather than burst.
                            let frames = (behind.as_millis() / FRAME.as_millis()) as u32;
                            due += FRAME * frames;
                            samples += u64::from(frames) * 160;
                        }
                        next_frame = Some(due + FRAME);
                        let stamp = now_ns();
                        if shared.in_window(stamp) {
                            shared.up.sent.fetch_add(1, Ordering::Relaxed);
                            let late = now.saturating_duration_since(due).as_nanos().min(u32::MAX as u128) as u32;
                            shared.late.lock().unwrap().push(late);
                        }
                        encode(&mut payload, idx, seq, stamp);
                        seq += 1;
                        let time = MediaTime::new(samples, Frequency::EIGHT_KHZ);
                        samples += 160;
                        if let Some(w) = rtc.writer(mid)
                            && w.write(pt, now, time, payload.to_vec()).is_err()
                        {
                            return;
                        }
                        // str0m queues written media until its next timeout: hand it one now,
                        // or the packet waits for the next timer tick (tokio: 1 ms).
                        if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                            return;
                        }
                    }
                    _ => {
                        if rtc.handle_input(Input::Timeout(now)).is_err() {
                            return;
                        }
                    }
                }
            }
            Some(c) = remote.recv() => {
                if let Ok(c) = Candidate::from_sdp_string(&c) {
                    rtc.add_remote_candidate(c);
                }
            }
            _ = stop.changed() => {
                // Hang up on the DataChannel (the gateway ends the desk phone's leg and reports
                // the call), let it go out, then close.
                if let Some(mut ch) = rtc.channel(channel) {
                    let _ = ch.write(false, DirectClientMsg::Hangup.encode().as_bytes());
                }
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                while let Ok(Output::Transmit(t)) = rtc.poll_output() {
                    let _ = sock.try_send_to(&t.contents, t.destination);
                }
                rtc.disconnect();
                return;
            }
        }
    }
}

/// Messages of the signal connections, by call id.
pub(crate) type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ServerMsg>>>>;

pub(crate) struct Browser {
    pub(crate) number: String,
    pub(crate) sender: SignalSender,
    pub(crate) routes: Routes,
}

pub(crate) async fn browser(server: &str, number: String, password: &str) -> Result<Browser, String> {
    let client = SignalClient::login(server, &number, password, &TlsOptions::default())
        .await
        .map_err(|e| format!("login {number}: {e}"))?;
    let (_, sender, mut inbox) = client.into_parts();
    let routes: Routes = Arc::default();
    let r = routes.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbox.recv().await {
            let id = signal::server_msg_call_id(&msg).map(str::to_string);
            if let Some(id) = id {
                let tx = r.lock().unwrap().get(&id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(msg);
                }
            }
        }
    });
    Ok(Browser { number, sender, routes })
}

struct Call {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Dial `callee` as call `call_id` and wait for the cloud's `connect` (C13); its key.
pub(crate) async fn dial(
    b: &Browser,
    call_id: &str,
    callee: &str,
    rx: &mut mpsc::UnboundedReceiver<ServerMsg>,
    within: Duration,
) -> Result<String, String> {
    b.sender.dial_with_id(call_id, callee).map_err(|e| e.to_string())?;
    tokio::time::timeout(within, async {
        while let Some(m) = rx.recv().await {
            match m {
                ServerMsg::Connect { key, .. } => return Ok(key),
                ServerMsg::Outcome { outcome, .. } => return Err(format!("outcome {outcome} before connect")),
                ServerMsg::Error { code, message, .. } => return Err(format!("{code}: {message}")),
                _ => {}
            }
        }
        Err("signal connection closed".to_string())
    })
    .await
    .map_err(|_| "no connect in time".to_string())?
}

/// One F1 call, up to connected media: dial → connect → offer/answer through the cloud →
/// ICE/DTLS → the key on the DataChannel → accepted.
async fn place(b: &Browser, callee: &str, idx: u32, shared: Arc<Shared>) -> Result<Call, String> {
    let within = Duration::from_secs(15);
    let call_id = signal::new_call_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.routes.lock().unwrap().insert(call_id.clone(), tx);
    let result = async {
        let key = dial(b, &call_id, callee, &mut rx, within).await?;
        let (mut o, offer) = offerer().await?;
        let send =
            |payload| b.sender.send(&ClientMsg::DirectSignal { call_id: call_id.clone(), payload }).map_err(|e| e.to_string());
        send(SignalPayload::Offer { sdp: offer })?;
        // The gateway's answer; its trickled candidates may come before or after it.
        let (cand_tx, cand_rx) = mpsc::unbounded_channel();
        let answer = tokio::time::timeout(within, async {
            while let Some(m) = rx.recv().await {
                match m {
                    ServerMsg::DirectSignal { payload: SignalPayload::Answer { sdp }, .. } => return Ok(sdp),
                    ServerMsg::DirectSignal { payload: SignalPayload::Ice { candidate, .. }, .. } => {
                        let _ = cand_tx.send(candidate);
                    }
                    ServerMsg::Outcome { outcome, .. } => return Err(format!("outcome {outcome} before the answer")),
                    _ => {}
                }
            }
            Err("signal connection closed".to_string())
        })
        .await
        .map_err(|_| "no answer in time".to_string())??;
        let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
        let pending = o.pending.take().ok_or("no pending offer")?;
        o.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| e.to_string())?;
        shared.ports.lock().unwrap().push(o.local.port());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
        let present = Present { call_id: call_id.clone(), key, caller: b.number.clone() };
        let peer = tokio::spawn(drive(o, idx, shared.clone(), present, cand_rx, stop_rx.clone(), conn_tx));
        // Later candidates go to the peer until the call stops; the rest (events, the
        // outcome) is not needed.
        let mut stop_f = stop_rx;
        let routes = b.routes.clone();
        let id = call_id.clone();
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(ServerMsg::DirectSignal { payload: SignalPayload::Ice { candidate, .. }, .. }) => {
                            let _ = cand_tx.send(candidate);
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop_f.changed() => break,
                }
            }
            routes.lock().unwrap().remove(&id);
        });
        let call = Call { stop: stop_tx, tasks: vec![peer, forward] };
        match tokio::time::timeout(within, conn_rx).await {
            Ok(Ok(Ok(()))) => Ok(call),
            Ok(Ok(Err(why))) => {
                let _ = call.stop.send(true);
                Err(why)
            }
            _ => {
                let _ = call.stop.send(true);
                Err("media did not connect (ICE/DTLS/key)".to_string())
            }
        }
    }
    .await;
    if result.is_err() {
        b.routes.lock().unwrap().remove(&call_id);
    }
    result
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    // ns → ms
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

pub async fn run(p: Params) -> Result<Vec<(String, String)>, String> {
    let mut kv: Vec<(String, String)> = Vec::new();
    let shared = Arc::new(Shared::default());
    let echo_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?);
    udp::set_buffers(&echo_sock, 8 << 20);
    udp::enable_timestamps(&echo_sock).map_err(|e| e.to_string())?;
    let echo_addr = echo_sock.local_addr().map_err(|e| e.to_string())?;
    shared.ports.lock().unwrap().push(echo_addr.port());
    tokio::spawn(echo(echo_sock, shared.clone()));

    // The desk phones: one UA, numbers phone_first.., media = the echo.
    let max = p.steps.iter().copied().max().unwrap_or(0);
    let ua = Arc::new(Ua::bind(p.gateway_sip, Media::Shared(echo_addr)).await.map_err(|e| e.to_string())?);
    let numbers: Vec<String> = (0..max as u64).map(|i| (p.phone_first + i).to_string()).collect();
    let t = Instant::now();
    let registered = ua.register_all(numbers, crate::gwprov::phone_password, 32).await?;
    eprintln!("media: {registered} desk phones registered in {:.1} s", t.elapsed().as_secs_f64());

    let mut browsers = Vec::new();
    for i in 0..p.browsers.max(1) {
        browsers.push(Arc::new(browser(&p.server, (p.browser_first + i as u64).to_string(), &p.browser_password).await?));
    }

    let mut calls: Vec<Call> = Vec::new();
    let mut best = 0usize;
    let mut best_no_loss = 0usize;
    let mut best_up_only = 0usize;
    let mut failed_at: Option<(usize, String)> = None;
    let mut generator_limit: Option<usize> = None;
    let ramp_started = Instant::now();
    let mut setup_failures_total = 0usize;
    for (si, &n) in p.steps.iter().enumerate() {
        // Add calls up to n, `setup_concurrency` at a time.
        let t_setup = Instant::now();
        let start = calls.len();
        let mut failures = 0usize;
        let mut errors: Vec<String> = Vec::new();
        let mut next = start;
        while next < n {
            let batch_end = (next + p.setup_concurrency.max(1)).min(n);
            let mut handles = Vec::new();
            for idx in next..batch_end {
                let b = browsers[idx % browsers.len()].clone();
                let callee = (p.phone_first + idx as u64).to_string();
                let shared = shared.clone();
                handles.push(tokio::spawn(async move { place(&b, &callee, idx as u32, shared).await }));
            }
            for h in handles {
                match h.await.map_err(|e| e.to_string())? {
                    Ok(c) => calls.push(c),
                    Err(e) => {
                        failures += 1;
                        if errors.len() < 3 {
                            errors.push(e);
                        }
                    }
                }
            }
            next = batch_end;
        }
        setup_failures_total += failures;
        let setup_secs = t_setup.elapsed().as_secs_f64();
        // Every call has media both ways (or 5 s passed).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut silent;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let up = shared.up_seen.lock().unwrap().values().filter(|v| **v > 0).count();
            let down = shared.down_seen.lock().unwrap().values().filter(|v| **v > 0).count();
            silent = calls.len().saturating_sub(up.min(down));
            if silent == 0 || Instant::now() > deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The window.
        for d in [&shared.up, &shared.down] {
            d.sent.store(0, Ordering::Relaxed);
            d.recv.store(0, Ordering::Relaxed);
            d.delays.lock().unwrap().clear();
        }
        shared.late.lock().unwrap().clear();
        let ports = shared.ports.lock().unwrap().clone();
        let drops0 = udp::drops(&ports);
        let send_err0 = shared.send_errors.load(Ordering::Relaxed);
        let gw0 = procfs::cpu_us(p.gateway_pid, false).unwrap_or(0);
        let me0 = procfs::self_cpu_us();
        let all0 = procfs::machine_busy_us();
        let t0 = now_ns();
        let secs = p.secs;
        shared.win_end.store(t0 + (secs * 1e9) as u64, Ordering::Relaxed);
        shared.win_start.store(t0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let gw1 = procfs::cpu_us(p.gateway_pid, false).unwrap_or(0);
        let me1 = procfs::self_cpu_us();
        let all1 = procfs::machine_busy_us();
        tokio::time::sleep(Duration::from_millis(300)).await;
        shared.win_start.store(0, Ordering::Relaxed);
        let drops = udp::drops(&ports).saturating_sub(drops0);
        let send_err = shared.send_errors.load(Ordering::Relaxed) - send_err0;

        let (us, ur) = (shared.up.sent.load(Ordering::Relaxed), shared.up.recv.load(Ordering::Relaxed));
        let (ds, dr) = (shared.down.sent.load(Ordering::Relaxed), shared.down.recv.load(Ordering::Relaxed));
        let mut up_d = std::mem::take(&mut *shared.up.delays.lock().unwrap());
        let mut down_d = std::mem::take(&mut *shared.down.delays.lock().unwrap());
        let mut late = std::mem::take(&mut *shared.late.lock().unwrap());
        up_d.sort_unstable();
        down_d.sort_unstable();
        late.sort_unstable();
        let up_lost = us.saturating_sub(ur);
        let down_lost = ds.saturating_sub(dr);
        let up_p99 = pct(&up_d, 0.99);
        let down_p99 = pct(&down_d, 0.99);
        let gw_cores = (gw1 - gw0) as f64 / 1e6 / secs;
        let gen_cores = (me1 - me0) as f64 / 1e6 / secs;
        let machine_cores = all1.saturating_sub(all0) as f64 / 1e6 / secs;
        let active = calls.len();
        // Did the generator keep up its 50 packets/s per call (frames more than 100 ms late are
        // skipped, not sent in a burst)?
        let nominal = active as f64 * 50.0 * secs;
        let send_ratio = if nominal > 0.0 { us as f64 / nominal } else { 0.0 };
        let gen_limited = send_ratio < 0.98;
        let mut why = Vec::new();
        if active < n {
            why.push(format!("{} of {n} calls set up", active));
        }
        if silent > 0 {
            why.push(format!("{silent} calls without media both ways"));
        }
        if up_lost + down_lost > 0 {
            why.push(format!("{} packets lost", up_lost + down_lost));
        }
        if !(up_p99 < 1.0 && down_p99 < 1.0) {
            why.push(format!("p99 delay {up_p99:.3} / {down_p99:.3} ms"));
        }
        if us == 0 {
            why.push("nothing sent".into());
        } else if gen_limited {
            why.push(format!("the load generator sent only {:.0} % of its frames", send_ratio * 100.0));
        }
        let pass = why.is_empty();
        let pre = format!("step{si}");
        for (k, v) in [
            ("calls", n.to_string()),
            ("active", active.to_string()),
            ("setup_failures", failures.to_string()),
            ("setup_secs", format!("{setup_secs:.1}")),
            ("up_sent", us.to_string()),
            ("send_ratio", format!("{send_ratio:.3}")),
            ("up_lost", up_lost.to_string()),
            ("down_sent", ds.to_string()),
            ("down_lost", down_lost.to_string()),
            ("up_p50_ms", format!("{:.3}", pct(&up_d, 0.5))),
            ("up_p99_ms", format!("{up_p99:.3}")),
            ("up_max_ms", format!("{:.3}", pct(&up_d, 1.0))),
            ("down_p50_ms", format!("{:.3}", pct(&down_d, 0.5))),
            ("down_p99_ms", format!("{down_p99:.3}")),
            ("down_max_ms", format!("{:.3}", pct(&down_d, 1.0))),
            ("gen_late_p99_ms", format!("{:.3}", pct(&late, 0.99))),
            ("gateway_cores", format!("{gw_cores:.2}")),
            ("generator_cores", format!("{gen_cores:.2}")),
            ("machine_busy_cores", format!("{machine_cores:.2}")),
            ("generator_drops", (drops + send_err).to_string()),
            ("pass", pass.to_string()),
        ] {
            kv.push((format!("{pre}_{k}"), v));
        }
        eprintln!(
            "media: N={n} active={active} up {us}/{ur} ({:.0} % of nominal) down {ds}/{dr} p99 {up_p99:.3}/{down_p99:.3} ms gw {gw_cores:.2} cores gen {gen_cores:.2} cores machine {machine_cores:.2} cores drops {} {}",
            send_ratio * 100.0,
            drops + send_err,
            if pass { "PASS".to_string() } else { format!("FAIL: {}", why.join("; ")) }
        );
        if !errors.is_empty() {
            eprintln!("media: setup errors (first {}): {}", errors.len(), errors.join(" | "));
        }
        let no_loss = active == n && silent == 0 && up_lost + down_lost == 0 && us > 0 && !gen_limited;
        if pass {
            best = n;
        } else if failed_at.is_none() {
            failed_at = Some((n, why.join("; ")));
        }
        if no_loss {
            best_no_loss = n;
            if up_p99 < 1.0 {
                best_up_only = n;
            }
        }
        if gen_limited && generator_limit.is_none() {
            generator_limit = Some(n);
        }
        // Go on past a step that misses the delay bound (the next steps show how loss and
        // delay grow), but not past one that loses packets or calls or where the generator
        // could not keep up (a higher step would measure the generator), nor past the time
        // budget.
        if !no_loss || ramp_started.elapsed() > Duration::from_secs_f64(p.max_secs) {
            break;
        }
    }
    kv.push(("steps_run".into(), kv.iter().filter(|(k, _)| k.ends_with("_calls")).count().to_string()));
    kv.push(("max_calls_ok".into(), best.to_string()));
    kv.push(("max_calls_no_loss".into(), best_no_loss.to_string()));
    kv.push(("max_calls_up_ok".into(), best_up_only.to_string()));
    if let Some(n) = generator_limit {
        kv.push(("generator_limit_at".into(), n.to_string()));
    }
    if let Some((n, why)) = &failed_at {
        kv.push(("failed_step".into(), n.to_string()));
        kv.push(("failed_because".into(), why.clone()));
    }
    kv.push(("setup_failures".into(), setup_failures_total.to_string()));
    kv.push(("window_secs".into(), p.secs.to_string()));

    // Hang everything up.
    let t = Instant::now();
    for c in &calls {
        let _ = c.stop.send(true);
    }
    for c in calls {
        for t in c.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
    for _ in 0..50 {
        if ua.answered_up() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("media: hung up in {:.1} s; {} answered calls still up at the phones", t.elapsed().as_secs_f64(), ua.answered_up());
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut b = [0u8; 160];
        encode(&mut b, 7, 9, 123456789);
        assert_eq!(decode(&b), Some((7, 9, 123456789)));
        assert_eq!(decode(&[0u8; 160]), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1_000_000).collect();
        assert_eq!(pct(&v, 0.5), 51.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&v, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
