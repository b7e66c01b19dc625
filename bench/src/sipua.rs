//! A small desk-phone user agent for the gateway benchmarks: one UDP SIP socket that registers
//! many numbers at one gateway (digest MD5, as a phone does), answers every INVITE for them at
//! once (180 then 200 with an SDP answer), and places calls (INVITE → 401 → INVITE with
//! credentials → 180/200 → ACK … BYE). Only what the benchmarks need: UDP, no forking, no
//! re-INVITE, no PRACK.
//!
//! Media of an answered or placed call is either a socket of its own that sends a 20 ms G.711
//! frame every 20 ms and notes when the first packet arrives (`Media::PerCall`, for call
//! setup times), or a shared socket named in the SDP and served elsewhere (`Media::Shared`,
//! the echo of the concurrent-call ramp).
//!
//! SIP parsing is the workspace's `trunkline-sip`; messages going out are plain text.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RTP_HEADER_LEN, RtpFields, rtp_header};
use trunkline_media::sdp::{AudioSdp, Sdp};
use trunkline_sip::{Message, Request, Response};

/// RFC 3261 T1.
const T1: Duration = Duration::from_millis(500);

/// Where the audio of a call goes.
#[derive(Clone, Copy, Debug)]
pub enum Media {
    /// A socket per call that sends a frame every 20 ms and notes the first packet in.
    PerCall,
    /// This address goes into the SDP; another task serves it.
    Shared(SocketAddr),
}

/// The RTP side of one call (Media::PerCall): when the first packet arrived.
#[derive(Clone)]
pub struct RtpProbe {
    first_rx: watch::Receiver<Option<Instant>>,
    stop: Arc<watch::Sender<bool>>,
}

impl RtpProbe {
    /// Wait until the first RTP packet arrived (its arrival time).
    pub async fn first_packet(&self, within: Duration) -> Option<Instant> {
        let mut rx = self.first_rx.clone();
        match tokio::time::timeout(within, rx.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => *v,
            _ => None,
        }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

struct InCall {
    /// The 200 OK, resent (doubling from T1) until the ACK.
    ok: Vec<u8>,
    src: SocketAddr,
    acked: bool,
    rtp: Option<RtpProbe>,
}

struct State {
    /// Responses for requests this UA sent, by Call-ID.
    pending: HashMap<String, mpsc::UnboundedSender<Response>>,
    incoming: HashMap<String, InCall>,
    /// BYE from the far end of a call this UA placed.
    out_byes: HashMap<String, oneshot::Sender<()>>,
}

/// One desk-phone UA (many numbers) facing one gateway.
pub struct Ua {
    sock: Arc<UdpSocket>,
    pub local: SocketAddr,
    pub server: SocketAddr,
    media: Media,
    state: Arc<Mutex<State>>,
    seq: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// A quoted or bare parameter of a `WWW-Authenticate` / `Proxy-Authenticate` value.
fn auth_param(h: &str, name: &str) -> Option<String> {
    let lower = h.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        let before_ok = at == 0 || matches!(lower.as_bytes()[at - 1], b' ' | b',' | b'\t');
        let rest = &h[at + name.len()..];
        let rest_trim = rest.trim_start();
        if before_ok && rest_trim.starts_with('=') {
            let v = rest_trim[1..].trim_start();
            return Some(if let Some(q) = v.strip_prefix('"') {
                q.split('"').next().unwrap_or("").to_string()
            } else {
                v.split([',', ' ']).next().unwrap_or("").to_string()
            });
        }
        from = at + name.len();
    }
    None
}

/// RFC 2617/7616 digest `Authorization` for `method uri` answering challenge `h` (MD5).
pub fn authorization(h: &str, user: &str, password: &str, method: &str, uri: &str) -> String {
    let realm = auth_param(h, "realm").unwrap_or_default();
    let nonce = auth_param(h, "nonce").unwrap_or_default();
    let qop_auth = auth_param(h, "qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let mut out = format!("Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5");
    if qop_auth {
        let cnonce = format!("{:08x}", rand::random::<u32>());
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        out.push_str(&format!(", response=\"{response}\", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        out.push_str(&format!(", response=\"{response}\""));
    }
    if let Some(opaque) = auth_param(h, "opaque") {
        out.push_str(&format!(", opaque=\"{opaque}\""));
    }
    out
}

/// Where an SDP body wants its audio RTP (`c=` address and `m=audio` port).
pub fn sdp_audio_addr(body: &[u8]) -> Option<SocketAddr> {
    Sdp::parse(std::str::from_utf8(body).ok()?).ok()?.audio_rtp_addr()
}

/// A desk phone's SDP: PCMU and telephone-event on 101.
fn sdp(id: u64, rtp: SocketAddr) -> String {
    let sdp = AudioSdp::new(rtp.ip(), rtp.port()).origin("bench", id).session_name("-").law(Law::Mu).telephone_event(101);
    // PCMU with a dynamic event payload type always builds.
    sdp.build().unwrap_or_default()
}

/// Bind a per-call RTP socket and run its sender/probe until stopped.
async fn per_call_rtp(remote: watch::Receiver<Option<SocketAddr>>) -> std::io::Result<(SocketAddr, RtpProbe)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let local = sock.local_addr()?;
    let (first_tx, first_rx) = watch::channel(None);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut remote = remote;
        let ssrc: u32 = rand::random();
        let mut seq: u16 = rand::random();
        let mut ts: u32 = rand::random();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = [0u8; 2048];
        let mut pkt = [0xffu8; RTP_HEADER_LEN + 160];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let dest = *remote.borrow_and_update();
                    if let Some(dest) = dest {
                        let fields = RtpFields { marker: false, payload_type: 0, sequence: seq, timestamp: ts, ssrc };
                        pkt[..RTP_HEADER_LEN].copy_from_slice(&rtp_header(&fields));
                        let _ = sock.try_send_to(&pkt, dest);
                        seq = seq.wrapping_add(1);
                        ts = ts.wrapping_add(160);
                    }
                }
                r = sock.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r && n >= 12 && first_tx.borrow().is_none() {
                        first_tx.send_replace(Some(Instant::now()));
                    }
                }
                _ = stop_rx.changed() => return,
            }
        }
    });
    Ok((local, RtpProbe { first_rx, stop: Arc::new(stop_tx) }))
}

/// A call this UA placed.
pub struct OutCall {
    pub call_id: String,
    pub from: String,
    /// When the first INVITE went out.
    pub invited_at: Instant,
    pub ringing_at: Option<Instant>,
    pub rtp: Option<RtpProbe>,
    /// Where the far end wants this call's RTP (the 200 OK's SDP).
    pub remote_rtp: Option<SocketAddr>,
    from_tag: String,
    to_header: String,
    target: String,
    bye_from_far: Option<oneshot::Receiver<()>>,
}

impl Ua {
    /// A UA on a fresh 127.0.0.1 port facing the gateway at `server`.
    pub async fn bind(server: SocketAddr, media: Media) -> std::io::Result<Ua> {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        crate::udp::set_buffers(&sock, 4 << 20);
        let local = sock.local_addr()?;
        let state = Arc::new(Mutex::new(State { pending: HashMap::new(), incoming: HashMap::new(), out_byes: HashMap::new() }));
        let reader = tokio::spawn(read_loop(sock.clone(), state.clone(), media));
        Ok(Ua { sock, local, server, media, state, seq: AtomicU64::new(1), reader })
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn expect(&self, call_id: &str) -> mpsc::UnboundedReceiver<Response> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.lock().unwrap().pending.insert(call_id.to_string(), tx);
        rx
    }

    fn forget(&self, call_id: &str) {
        self.state.lock().unwrap().pending.remove(call_id);
    }

    /// Send `msg` and wait for a response whose CSeq method is `method`, resending (doubling
    /// from T1) until a response arrives; provisional responses go to `on_provisional`.
    async fn transaction(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Response>,
        msg: &str,
        method: &str,
        within: Duration,
        mut on_provisional: impl FnMut(&Response),
    ) -> Result<Response, String> {
        let deadline = tokio::time::Instant::now() + within;
        let _ = self.sock.send_to(msg.as_bytes(), self.server).await;
        let mut interval = T1;
        let mut next_resend = tokio::time::Instant::now() + interval;
        let mut provisional = false;
        loop {
            let wake = if provisional { deadline } else { next_resend.min(deadline) };
            tokio::select! {
                r = rx.recv() => {
                    let Some(r) = r else { return Err("UA closed".into()) };
                    if r.cseq().map(|c| c.method.as_str() != method).unwrap_or(true) {
                        continue;
                    }
                    if r.status < 200 {
                        provisional = true;
                        on_provisional(&r);
                        continue;
                    }
                    return Ok(r);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("no final response to {method} in {within:?}"));
                    }
                    let _ = self.sock.send_to(msg.as_bytes(), self.server).await;
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next_resend = tokio::time::Instant::now() + interval;
                }
            }
        }
    }

    /// Register `number` (digest MD5) with this UA's address as its contact. Returns the
    /// final status.
    pub async fn register(&self, number: &str, password: &str, expires: u32) -> Result<u16, String> {
        let n = self.next();
        let call_id = format!("reg{n}-{}@bench", self.local.port());
        let from_tag = tag();
        let mut rx = self.expect(&call_id);
        let uri = format!("sip:{}", self.server);
        let build = |cseq: u32, auth: Option<&str>| {
            let mut m = format!(
                "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{n}r{cseq}{rand:x};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:{number}@{srv}>;tag={from_tag}\r\nTo: <sip:{number}@{srv}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{number}@{local}>\r\nExpires: {expires}\r\n",
                local = self.local,
                srv = self.server.ip(),
                rand = rand::random::<u32>()
            );
            if let Some(a) = auth {
                m.push_str(&format!("Authorization: {a}\r\n"));
            }
            m.push_str("Content-Length: 0\r\n\r\n");
            m
        };
        let r = self.transaction(&mut rx, &build(1, None), "REGISTER", Duration::from_secs(10), |_| {}).await;
        let r = match r {
            Ok(r) if r.status == 401 => {
                let ch = r.headers.get("WWW-Authenticate").unwrap_or("").to_string();
                let auth = authorization(&ch, number, password, "REGISTER", &uri);
                self.transaction(&mut rx, &build(2, Some(&auth)), "REGISTER", Duration::from_secs(10), |_| {}).await
            }
            other => other,
        };
        self.forget(&call_id);
        r.map(|r| r.status)
    }

    /// Register `numbers` (password = `password_of(number)`), `concurrency` at a time.
    pub async fn register_all(
        self: &Arc<Self>,
        numbers: Vec<String>,
        password_of: fn(&str) -> String,
        concurrency: usize,
    ) -> Result<usize, String> {
        let queue = Arc::new(Mutex::new(numbers));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (ua, queue) = (self.clone(), queue.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let Some(n) = queue.lock().unwrap().pop() else { return Ok::<usize, String>(done) };
                    match ua.register(&n, &password_of(&n), 3600).await? {
                        200 => done += 1,
                        s => return Err(format!("REGISTER {n}: {s}")),
                    }
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.map_err(|e| e.to_string())??;
        }
        Ok(total)
    }

    /// Place a call `from` → `to` (digest on the 401/407) and wait for the final response.
    /// The media is a per-call RTP socket (this UA's `Media::PerCall`) that starts sending
    /// once the 200 arrived.
    pub async fn call(&self, from: &str, password: &str, to: &str, within: Duration) -> Result<OutCall, String> {
        let n = self.next();
        let call_id = format!("call{n}-{}@bench", self.local.port());
        let from_tag = tag();
        let (remote_tx, remote_rx) = watch::channel(None);
        let (rtp_addr, probe) = match self.media {
            Media::PerCall => {
                let (a, p) = per_call_rtp(remote_rx).await.map_err(|e| e.to_string())?;
                (a, Some(p))
            }
            Media::Shared(a) => (a, None),
        };
        let body = sdp(n, rtp_addr);
        let mut rx = self.expect(&call_id);
        let (bye_tx, bye_rx) = oneshot::channel();
        self.state.lock().unwrap().out_byes.insert(call_id.clone(), bye_tx);
        let ruri = format!("sip:{to}@{}", self.server);
        let build = |cseq: u32, branch: &str, auth: Option<(&str, &str)>| {
            let mut m = format!(
                "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:{from}@{srv}>;tag={from_tag}\r\nTo: <sip:{to}@{srv}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n\
                 Contact: <sip:{from}@{local}>\r\nContent-Type: application/sdp\r\n",
                local = self.local,
                srv = self.server.ip()
            );
            if let Some((h, v)) = auth {
                m.push_str(&format!("{h}: {v}\r\n"));
            }
            m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            m
        };
        let invited_at = Instant::now();
        let mut ringing_at = None;
        let on_prov = |r: &Response, ringing_at: &mut Option<Instant>| {
            if (r.status == 180 || r.status == 183) && ringing_at.is_none() {
                *ringing_at = Some(Instant::now());
            }
        };
        let branch1 = format!("z9hG4bK{n}i1{:x}", rand::random::<u32>());
        let mut r = self.transaction(&mut rx, &build(1, &branch1, None), "INVITE", within, |r| on_prov(r, &mut ringing_at)).await;
        let mut cseq = 1;
        if let Ok(resp) = &r
            && (resp.status == 401 || resp.status == 407)
        {
            // ACK the challenge (same branch), then again with credentials.
            let to_h = resp.headers.get("To").unwrap_or("").to_string();
            let ack = format!(
                "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch1};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:{from}@{srv}>;tag={from_tag}\r\nTo: {to_h}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                local = self.local,
                srv = self.server.ip()
            );
            let _ = self.sock.send_to(ack.as_bytes(), self.server).await;
            let (ch_name, auth_name) = if resp.status == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let ch = resp.headers.get(ch_name).unwrap_or("").to_string();
            let auth = authorization(&ch, from, password, "INVITE", &ruri);
            cseq = 2;
            let branch2 = format!("z9hG4bK{n}i2{:x}", rand::random::<u32>());
            r = self
                .transaction(&mut rx, &build(2, &branch2, Some((auth_name, &auth))), "INVITE", within, |r| {
                    on_prov(r, &mut ringing_at)
                })
                .await;
        }
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => {
                self.forget(&call_id);
                self.state.lock().unwrap().out_byes.remove(&call_id);
                return Err(e);
            }
        };
        if resp.status != 200 {
            // ACK the failure (it belongs to the INVITE transaction).
            self.forget(&call_id);
            self.state.lock().unwrap().out_byes.remove(&call_id);
            return Err(format!("INVITE {from} → {to}: {} {}", resp.status, resp.reason));
        }
        let to_h = resp.headers.get("To").unwrap_or("").to_string();
        let target = resp
            .contacts()
            .ok()
            .and_then(|c| c.into_iter().find_map(|c| c.name_addr().map(|n| n.uri.to_string())))
            .unwrap_or_else(|| ruri.clone());
        let ack = format!(
            "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{n}a{:x};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{from}@{srv}>;tag={from_tag}\r\nTo: {to_h}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            rand::random::<u32>(),
            local = self.local,
            srv = self.server.ip()
        );
        let _ = self.sock.send_to(ack.as_bytes(), self.server).await;
        let remote_rtp = sdp_audio_addr(&resp.body);
        if let Some(remote) = remote_rtp {
            remote_tx.send_replace(Some(remote));
        }
        // Keep the remote-address channel alive as long as the RTP task runs.
        if let Some(p) = &probe {
            let mut stop = p.stop.subscribe();
            tokio::spawn(async move {
                let _keep = remote_tx;
                let _ = stop.changed().await;
            });
        }
        Ok(OutCall {
            call_id,
            from: from.to_string(),
            invited_at,
            ringing_at,
            rtp: probe,
            remote_rtp,
            from_tag,
            to_header: to_h,
            target,
            bye_from_far: Some(bye_rx),
        })
    }

    /// End a call this UA placed (BYE, wait for its 200), unless the far end already did.
    pub async fn hangup(&self, call: &mut OutCall) -> Result<(), String> {
        if let Some(p) = &call.rtp {
            p.stop();
        }
        let far_ended = call.bye_from_far.as_mut().is_some_and(|r| r.try_recv().is_ok());
        self.state.lock().unwrap().out_byes.remove(&call.call_id);
        if far_ended {
            self.forget(&call.call_id);
            return Ok(());
        }
        let mut rx = self.expect(&call.call_id);
        let n = self.next();
        let bye = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{n}b{:x};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{from}@{srv}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 10 BYE\r\nContent-Length: 0\r\n\r\n",
            rand::random::<u32>(),
            target = call.target,
            local = self.local,
            from = call.from,
            srv = self.server.ip(),
            tag = call.from_tag,
            to = call.to_header,
            cid = call.call_id
        );
        let r = self.transaction(&mut rx, &bye, "BYE", Duration::from_secs(10), |_| {}).await;
        self.forget(&call.call_id);
        match r {
            Ok(r) if r.status == 200 || r.status == 481 => Ok(()),
            Ok(r) => Err(format!("BYE: {} {}", r.status, r.reason)),
            Err(e) => Err(e),
        }
    }

    /// Number of calls this UA answered that are still up.
    pub fn answered_up(&self) -> usize {
        self.state.lock().unwrap().incoming.len()
    }
}

fn respond(req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
    let mut r = Response::to_request(req, status, reason);
    if let Some(t) = to_tag
        && req.to().ok().and_then(|t| t.tag().map(str::to_string)).is_none()
    {
        r.set_to_tag(t);
    }
    r
}

async fn read_loop(sock: Arc<UdpSocket>, state: Arc<Mutex<State>>, media: Media) {
    let mut buf = vec![0u8; 65536];
    let local = sock.local_addr().ok();
    loop {
        let Ok((n, src)) = sock.recv_from(&mut buf).await else { continue };
        let Ok(msg) = trunkline_sip::parse(&buf[..n]) else { continue };
        match msg {
            Message::Response(r) => {
                let Ok(cid) = r.call_id() else { continue };
                let tx = state.lock().unwrap().pending.get(cid).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            Message::Request(req) => {
                let Ok(cid) = req.call_id().map(str::to_string) else { continue };
                match req.method.as_str() {
                    "INVITE" => {
                        let existing = state.lock().unwrap().incoming.get(&cid).map(|c| c.ok.clone());
                        if let Some(ok) = existing {
                            let _ = sock.send_to(&ok, src).await; // retransmitted INVITE
                            continue;
                        }
                        let number = req.uri.user.clone().unwrap_or_default();
                        let to_tag = tag();
                        let ringing = respond(&req, 180, "Ringing", Some(&to_tag)).to_bytes();
                        let _ = sock.send_to(&ringing, src).await;
                        let remote_rtp = sdp_audio_addr(&req.body);
                        let (rtp_addr, probe) = match media {
                            Media::Shared(a) => (a, None),
                            Media::PerCall => {
                                let (tx, rx) = watch::channel(remote_rtp);
                                match per_call_rtp(rx).await {
                                    Ok((a, p)) => {
                                        let mut stop = p.stop.subscribe();
                                        tokio::spawn(async move {
                                            let _keep = tx;
                                            let _ = stop.changed().await;
                                        });
                                        (a, Some(p))
                                    }
                                    Err(_) => continue,
                                }
                            }
                        };
                        let mut ok = respond(&req, 200, "OK", Some(&to_tag));
                        if let Some(l) = local {
                            ok.headers.push("Contact", format!("<sip:{number}@{l}>"));
                        }
                        ok.set_body("application/sdp", sdp(rand::random::<u32>() as u64, rtp_addr).into_bytes());
                        let ok = ok.to_bytes();
                        let _ = sock.send_to(&ok, src).await;
                        state.lock().unwrap().incoming.insert(cid.clone(), InCall { ok, src, acked: false, rtp: probe });
                        tokio::spawn(resend_ok(sock.clone(), state.clone(), cid));
                    }
                    "ACK" => {
                        if let Some(c) = state.lock().unwrap().incoming.get_mut(&cid) {
                            c.acked = true;
                        }
                    }
                    "BYE" => {
                        let _ = sock.send_to(&respond(&req, 200, "OK", None).to_bytes(), src).await;
                        let gone = state.lock().unwrap().incoming.remove(&cid);
                        if let Some(c) = gone {
                            if let Some(p) = &c.rtp {
                                p.stop();
                            }
                        } else if let Some(tx) = state.lock().unwrap().out_byes.remove(&cid) {
                            let _ = tx.send(());
                        }
                    }
                    "CANCEL" => {
                        let _ = sock.send_to(&respond(&req, 200, "OK", None).to_bytes(), src).await;
                    }
                    _ => {
                        let _ = sock.send_to(&respond(&req, 200, "OK", None).to_bytes(), src).await;
                    }
                }
            }
        }
    }
}

/// Resend an answered call's 200 OK until its ACK (RFC 3261 §13.3.1.4), at most 64·T1.
async fn resend_ok(sock: Arc<UdpSocket>, state: Arc<Mutex<State>>, call_id: String) {
    let mut interval = T1;
    let mut waited = Duration::ZERO;
    while waited < T1 * 64 {
        tokio::time::sleep(interval).await;
        waited += interval;
        let (ok, src) = {
            let st = state.lock().unwrap();
            match st.incoming.get(&call_id) {
                Some(c) if !c.acked => (c.ok.clone(), c.src),
                _ => return,
            }
        };
        let _ = sock.send_to(&ok, src).await;
        interval = (interval * 2).min(Duration::from_secs(4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_rfc2617_example() {
        // RFC 2617 §3.5 (qop=auth): the client's response for its example challenge.
        let ch = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = md5_hex("GET:/dir/index.html");
        let want = md5_hex(&format!("{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"));
        assert_eq!(want, "6629fae49393a05397450978507c4ef1");
        let a = authorization(ch, "Mufasa", "Circle Of Life", "GET", "/dir/index.html");
        assert!(a.contains("qop=auth") && a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""), "{a}");
        assert_eq!(auth_param(ch, "nonce").as_deref(), Some("dcd98b7102dd2f0e8b11d0f600bfb0c093"));
        assert_eq!(auth_param(ch, "realm").as_deref(), Some("testrealm@host.com"));
    }

    #[test]
    fn sdp_address() {
        let s = sdp(1, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(sdp_audio_addr(s.as_bytes()), Some("127.0.0.1:4000".parse().unwrap()));
    }
}
