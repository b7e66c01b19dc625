//! A WebRTC audio peer: str0m (sans-IO) driven by a small tokio task over UDP.
//!
//! What it speaks is what a browser speaks to a Trunkline gateway or to another browser: one
//! audio m-line, `sendrecv`, PCMU (preferred) and PCMA at 8 kHz plus `telephone-event/8000`
//! (RFC 4733), BUNDLE + rtcp-mux, ICE, DTLS-SRTP. No Opus: the gateway bridges G.711 to desk
//! phones without transcoding.
//!
//! ICE: this side is always a **full** ICE agent. It is controlling when it makes the offer (the
//! caller, or the browser at a gateway's direct endpoint) and controlled when it answers (the F4
//! callee). Candidates are not trickled: every host address of the bound socket(s) is in the
//! SDP. Candidates the remote trickles later (a browser in F4) can still be added with
//! [`MediaSession::add_remote_candidate`].
//!
//! Media is str0m's frame API: every 20 ms one 160-sample G.711 frame is written with
//! `Rtc::writer(mid).write(..)`; arriving frames come as `Event::MediaData`, are decoded and
//! appended to the recording (gaps in RTP time are filled with silence). DTMF uses str0m 0.25's
//! frame-mode RFC 4733 support: `Writer::telephone_event(..)` attaches a complete event to the
//! next audio write and str0m sends the update and the three end packets on their deadlines;
//! received events arrive as `MediaData` with `CodecExtra::Tele`, and a digit is reported once,
//! on the first end packet of each event (keyed by its RTP timestamp).
//!
//! The driver follows str0m's rule: one mutation (`handle_input`, `write`, adding a candidate,
//! close), then drain `poll_output` until it returns a timeout; then wait for the earliest of the
//! timeout, the next 20 ms frame, a datagram, or a command from the [`MediaSession`] handle.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, CodecExtra};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt, TelephoneEvent};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use trunkline_media::g711::Law;
use trunkline_media::ports::send_now;
pub use trunkline_media::webrtc::ReadyRtcs;
use trunkline_media::webrtc::{RtcOptions, choose_payload, law_of, rtc_config};

use crate::wav::{self, RATE, WavError};

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The packetisation time.
pub const FRAME: Duration = Duration::from_millis(20);
pub use trunkline_media::webrtc::TELEPHONE_EVENT_PT;

#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("cannot bind a UDP socket on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no usable local address to offer as an ICE candidate (bound on {0})")]
    NoAddress(IpAddr),
    #[error("remote SDP is not valid: {0}")]
    BadSdp(String),
    #[error("WebRTC: {0}")]
    Rtc(#[from] RtcError),
    #[error("the remote SDP has no audio m-line we can use")]
    NoAudio,
    #[error("no common codec: the remote accepts neither PCMU nor PCMA")]
    NoCodec,
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    BadDigit(char),
    #[error("create_offer must come before accept_answer")]
    NoPendingOffer,
    #[error("the media session has ended")]
    Closed,
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error(transparent)]
    Wav(#[from] WavError),
}

/// What this peer sends.
#[derive(Clone, Debug)]
pub enum AudioSource {
    /// Digital silence (frames are still sent, as a browser with a muted microphone does).
    Silence,
    /// A sine tone at `amplitude` (0..=1 of full scale).
    Tone { freq: f32, amplitude: f32 },
    /// 8 kHz samples, played once (then silence) or looped.
    Samples { samples: Arc<[i16]>, looped: bool },
}

impl AudioSource {
    /// A -6 dBFS tone.
    pub fn tone(freq: f32) -> AudioSource {
        AudioSource::Tone { freq, amplitude: 0.5 }
    }

    /// Play `samples` once, then silence.
    pub fn samples(samples: Vec<i16>) -> AudioSource {
        AudioSource::Samples { samples: samples.into(), looped: false }
    }

    /// Play `samples` over and over.
    pub fn looped(samples: Vec<i16>) -> AudioSource {
        AudioSource::Samples { samples: samples.into(), looped: true }
    }

    /// A WAV file (converted to mono 8 kHz, see [`wav::read_wav`]), played once.
    pub fn wav(path: impl AsRef<Path>, looped: bool) -> Result<AudioSource, WebRtcError> {
        Ok(AudioSource::Samples { samples: wav::read_wav(path)?.into(), looped })
    }
}

/// Position in an [`AudioSource`].
struct SourceCursor {
    source: AudioSource,
    pos: u64,
}

impl SourceCursor {
    fn new(source: AudioSource) -> Self {
        SourceCursor { source, pos: 0 }
    }

    fn fill(&mut self, out: &mut [i16]) {
        match &self.source {
            AudioSource::Silence => out.fill(0),
            AudioSource::Tone { freq, amplitude } => {
                let w = 2.0 * std::f64::consts::PI * f64::from(*freq) / f64::from(RATE);
                let amp = f64::from(amplitude.clamp(0.0, 1.0)) * 32767.0;
                for (i, s) in out.iter_mut().enumerate() {
                    // Phase from the sample index modulo one second keeps f64 precision forever.
                    let n = (self.pos + i as u64) % u64::from(RATE);
                    *s = ((w * n as f64).sin() * amp).round() as i16;
                }
            }
            AudioSource::Samples { samples, looped } => {
                let len = samples.len() as u64;
                for (i, s) in out.iter_mut().enumerate() {
                    let n = self.pos + i as u64;
                    *s = if len == 0 {
                        0
                    } else if *looped {
                        samples[(n % len) as usize]
                    } else if n < len {
                        samples[n as usize]
                    } else {
                        0
                    };
                }
            }
        }
        self.pos += out.len() as u64;
    }

    fn skip(&mut self, n: u64) {
        self.pos += n;
    }
}

/// How to set up a peer.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Address to bind the UDP socket on. A specific address (127.0.0.1 in tests) gives one
    /// socket and one host candidate. The unspecified address (0.0.0.0 or ::) binds one socket
    /// per interface address of that family (link-local IPv6 skipped) so that every candidate
    /// in the SDP is a real socket address: str0m matches incoming STUN by destination address,
    /// which a wildcard socket cannot tell.
    pub bind: IpAddr,
    /// UDP port (0: any free port).
    pub port: u16,
    /// Send PCMU when the remote accepts both laws (as browsers list PCMU first).
    pub prefer: Law,
    /// Length of each DTMF event sent.
    pub dtmf_duration: Duration,
    /// Pause after each DTMF event before the next one starts (str0m requires ≥ 50 ms).
    pub dtmf_gap: Duration,
    /// Be an ICE-lite agent (answer only; never the caller's side). The softphone is always
    /// full ICE; this exists for tests that stand in for a gateway, which answers ICE-lite.
    pub ice_lite: bool,
    /// Keep what arrives (decoded) for [`MediaSession::recording`]. Turn off for load runs:
    /// the counters still count.
    pub record: bool,
    /// STUN servers to learn this peer's server-reflexive address from (its first socket),
    /// reported as [`MediaEvent::LocalCandidate`] for trickling. Empty: host candidates only.
    pub stun: Vec<SocketAddr>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            prefer: Law::Mu,
            dtmf_duration: Duration::from_millis(100),
            dtmf_gap: Duration::from_millis(60),
            ice_lite: false,
            record: true,
            stun: Vec::new(),
        }
    }
}

impl PeerOptions {
    pub fn bind(ip: IpAddr) -> Self {
        PeerOptions { bind: ip, ..PeerOptions::default() }
    }
}

/// `Rtc`s a softphone keeps ready for its calls ([`ReadyRtcs`]): a softphone sets up one call
/// at a time, or answers one while placing one.
pub fn ready_rtcs(opts: &PeerOptions) -> ReadyRtcs {
    ReadyRtcs::new(rtc_options(opts), 2)
}

/// Both roles: G.711 only, telephone-event at 8 kHz (the gateway's and the bench's too).
fn rtc_options(opts: &PeerOptions) -> RtcOptions {
    RtcOptions { ice_lite: opts.ice_lite, initial_stun_rto: None, mid_extension_only: false, rtp_mode: false }
}

/// A peer before negotiation: an `Rtc` with its host candidates and bound socket(s).
pub struct WebRtcPeer {
    rtc: Rtc,
    sockets: Vec<Arc<UdpSocket>>,
    opts: PeerOptions,
    pending: Option<(SdpPendingOffer, Mid)>,
}

impl WebRtcPeer {
    /// Bind the socket(s) and add a host candidate for each local address.
    pub async fn bind(opts: PeerOptions) -> Result<WebRtcPeer, WebRtcError> {
        Self::bind_with(opts, None).await
    }

    /// [`bind`](Self::bind) with an `Rtc` from `ready` when it has one of `opts`' kind (and
    /// top it up).
    pub async fn bind_ready(opts: PeerOptions, ready: &ReadyRtcs) -> Result<WebRtcPeer, WebRtcError> {
        let rtc = if ready.options() == rtc_options(&opts) { ready.take(Instant::now()) } else { None };
        ready.top_up();
        Self::bind_with(opts, rtc).await
    }

    async fn bind_with(opts: PeerOptions, rtc: Option<Rtc>) -> Result<WebRtcPeer, WebRtcError> {
        let ips = if opts.bind.is_unspecified() { interface_addresses(opts.bind) } else { vec![opts.bind] };
        if ips.is_empty() {
            return Err(WebRtcError::NoAddress(opts.bind));
        }
        let mut rtc = match rtc {
            Some(rtc) => rtc,
            None => rtc_config(rtc_options(&opts)).build(Instant::now()),
        };
        let mut sockets = Vec::with_capacity(ips.len());
        for ip in ips {
            let addr = SocketAddr::new(ip, opts.port);
            let socket = UdpSocket::bind(addr).await.map_err(|source| WebRtcError::Bind { addr, source })?;
            let local = socket.local_addr().map_err(|source| WebRtcError::Bind { addr, source })?;
            let candidate = Candidate::host(local, "udp").map_err(|e| WebRtcError::BadSdp(e.to_string()))?;
            if rtc.add_local_candidate(candidate).is_some() {
                sockets.push(Arc::new(socket));
            }
        }
        if sockets.is_empty() {
            return Err(WebRtcError::NoAddress(opts.bind));
        }
        Ok(WebRtcPeer { rtc, sockets, opts, pending: None })
    }

    /// The addresses in this peer's host candidates.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Make the offer: one `sendrecv` audio m-line with PCMU, PCMA and telephone-event, all
    /// host candidates included. This side becomes the controlling ICE agent.
    pub fn create_offer(&mut self) -> Result<String, WebRtcError> {
        self.offer(None)
    }

    /// The offer for a direct connection to a switch (C14 over WebRTC): audio as in
    /// [`create_offer`](Self::create_offer), plus a DataChannel to present the key on.
    pub fn create_offer_with_channel(&mut self, label: &str) -> Result<String, WebRtcError> {
        self.offer(Some(label))
    }

    fn offer(&mut self, channel: Option<&str>) -> Result<String, WebRtcError> {
        let mut change = self.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        if let Some(label) = channel {
            change.add_channel(label.to_string());
        }
        let (offer, pending) = change.apply().ok_or(WebRtcError::NoAudio)?;
        self.pending = Some((pending, mid));
        Ok(offer.to_sdp_string())
    }

    /// Apply the remote answer to [`create_offer`](Self::create_offer)'s offer and start media.
    pub fn accept_answer(mut self, answer_sdp: &str, source: AudioSource) -> Result<MediaSession, WebRtcError> {
        let (pending, mid) = self.pending.take().ok_or(WebRtcError::NoPendingOffer)?;
        let answer = SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| WebRtcError::BadSdp(e.to_string()))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(self.start(Some(mid), source))
    }

    /// Answer a remote offer (the F4 callee, or a test's far end) and start media. This side is
    /// the controlled ICE agent (unless the offerer is ICE-lite).
    pub fn accept_offer(mut self, offer_sdp: &str, source: AudioSource) -> Result<(String, MediaSession), WebRtcError> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| WebRtcError::BadSdp(e.to_string()))?;
        // The answer keeps the offer's mids. (str0m emits `MediaAdded` for them lazily, possibly
        // after `Connected`, so take the mid from the offer rather than wait for the event.)
        let mid = offer
            .media_lines
            .iter()
            .find(|m| !m.disabled && m.typ.to_string() == "audio")
            .map(|m| m.mid())
            .ok_or(WebRtcError::NoAudio)?;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        let answer = answer.to_sdp_string();
        if !answer.contains("PCMU/8000") && !answer.contains("PCMA/8000") {
            return Err(WebRtcError::NoCodec);
        }
        Ok((answer, self.start(Some(mid), source)))
    }

    fn start(self, mid: Option<Mid>, source: AudioSource) -> MediaSession {
        let started = Instant::now();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(256);
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { stats: MediaStats::default(), recording: Vec::new(), history: Vec::new() }),
            changed,
            events,
        });
        let local_addrs = self.local_addrs();
        let readers = self
            .sockets
            .iter()
            .map(|socket| {
                let socket = socket.clone();
                let tx = net_tx.clone();
                tokio::spawn(read_socket(socket, tx))
            })
            .collect();
        let driver = Driver {
            kick: false,
            ice_checking: true,
            rtc: self.rtc,
            sockets: self.sockets,
            opts: self.opts,
            mid,
            pt: None,
            law: None,
            source: SourceCursor::new(source),
            next_frame: None,
            rtp_samples: 0,
            dtmf_queue: Default::default(),
            dtmf_next_allowed: None,
            last_dtmf_ts: None,
            next_expected_ts: None,
            started,
            closing_since: None,
            shared: shared.clone(),
            cmd_rx,
            net_rx,
            frame: vec![0i16; FRAME_SAMPLES],
            channel: None,
            channel_queue: vec![],
            probe: None,
        };
        let task = tokio::spawn(driver.run(readers));
        MediaSession { cmd: cmd_tx, shared, task: Mutex::new(Some(task)), local_addrs, started }
    }
}

/// Every address of `family`'s kind on this host's interfaces (for a wildcard bind).
fn interface_addresses(family: IpAddr) -> Vec<IpAddr> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return vec![];
    };
    let mut ips: Vec<IpAddr> = ifaces
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == family.is_ipv4())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            IpAddr::V4(_) => true,
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

struct Datagram {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

async fn read_socket(socket: Arc<UdpSocket>, tx: mpsc::Sender<Datagram>) {
    let Ok(destination) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, source)) => {
                let d = Datagram { at: Instant::now(), source, destination, data: buf[..n].to_vec() };
                if tx.send(d).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable etc. surface as errors on some platforms: keep reading.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => {
                tracing::debug!(%destination, "udp read ended: {e}");
                return;
            }
        }
    }
}

/// Counters and state of a media session, as a snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaStats {
    /// ICE + DTLS are up (str0m's `Event::Connected`).
    pub connected: bool,
    /// Time from the start of the session to `connected`.
    pub connected_after: Option<Duration>,
    /// The current ICE state.
    pub ice_state: Option<IceConnectionState>,
    /// The G.711 law this side sends (the negotiated one).
    pub send_codec: Option<Law>,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Audio packets received (telephone-event packets are not counted here).
    pub packets_received: u64,
    /// Audio payload bytes received.
    pub bytes_received: u64,
    /// Time from the start of the session to the first audio packet.
    pub first_audio_after: Option<Duration>,
    /// Digits sent so far (queued digits appear when their event is written).
    pub dtmf_sent: String,
    /// Digits received so far (each RFC 4733 event once).
    pub dtmf_received: String,
    /// Samples in the recording.
    pub recorded_samples: usize,
    /// The session is over (closed locally or by the peer); `close_reason` says why.
    pub closed: bool,
    pub close_reason: Option<String>,
}

/// Something that happened in a media session.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    IceState(IceConnectionState),
    /// ICE and DTLS are up; media starts.
    Connected,
    /// The first audio packet arrived.
    FirstAudio,
    /// A DTMF digit arrived (RFC 4733).
    Dtmf(char),
    /// The session ended.
    Closed(String),
    /// The DataChannel is open (C14 over WebRTC: present the key now).
    ChannelOpen,
    /// Text arrived on the DataChannel.
    ChannelText(String),
    /// A local candidate found after the offer/answer (server-reflexive, from STUN), as an SDP
    /// `candidate:` line to trickle to the far end.
    LocalCandidate(String),
}

struct State {
    stats: MediaStats,
    recording: Vec<i16>,
    /// Every event so far, in order.
    history: Vec<MediaEvent>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change of `state` so waiters can re-check their condition.
    changed: watch::Sender<u64>,
    events: broadcast::Sender<MediaEvent>,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s)
        };
        self.changed.send_modify(|v| *v += 1);
        r
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&s)
    }

    /// Record and broadcast under the state lock, so that a subscriber taking the history
    /// under the same lock sees every event exactly once.
    fn emit(&self, e: MediaEvent) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.history.push(e.clone());
        let _ = self.events.send(e);
    }
}

enum Command {
    SetSource(AudioSource),
    Dtmf(u8, char),
    RemoteCandidate(Candidate),
    ChannelSend(String),
    Close,
}

/// A running media session (the handle; the driver task runs until closed).
pub struct MediaSession {
    cmd: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    local_addrs: Vec<SocketAddr>,
    started: Instant,
}

impl MediaSession {
    pub fn stats(&self) -> MediaStats {
        self.shared.read(|s| s.stats.clone())
    }

    /// When the session started (its driver was spawned).
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Subscribe to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MediaEvent> {
        self.shared.events.subscribe()
    }

    /// Every event so far, and a subscription to the ones after them (no gap, no repeat).
    pub fn subscribe_with_history(&self) -> (Vec<MediaEvent>, broadcast::Receiver<MediaEvent>) {
        let s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.history.clone(), self.shared.events.subscribe())
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<MediaEvent> {
        self.shared.read(|s| s.history.clone())
    }

    /// What has been received so far, decoded to 8 kHz samples.
    pub fn recording(&self) -> Vec<i16> {
        self.shared.read(|s| s.recording.clone())
    }

    /// Write the recording so far to a WAV file (mono 8 kHz 16-bit).
    pub fn save_recording(&self, path: impl AsRef<Path>) -> Result<usize, WebRtcError> {
        let rec = self.recording();
        wav::write_wav(path, &rec, RATE)?;
        Ok(rec.len())
    }

    /// Change what is sent (takes effect at the next frame).
    pub fn set_source(&self, source: AudioSource) -> Result<(), WebRtcError> {
        self.cmd.send(Command::SetSource(source)).map_err(|_| WebRtcError::Closed)
    }

    /// Queue one RFC 4733 digit (0-9, *, #, A-D). Digits go out in order once media flows,
    /// each [`PeerOptions::dtmf_duration`] long.
    pub fn send_dtmf(&self, digit: char) -> Result<(), WebRtcError> {
        let code = dtmf_code(digit).ok_or(WebRtcError::BadDigit(digit))?;
        self.cmd.send(Command::Dtmf(code, digit.to_ascii_uppercase())).map_err(|_| WebRtcError::Closed)
    }

    /// Queue several digits (all are checked before any is queued).
    pub fn send_dtmf_digits(&self, digits: &str) -> Result<(), WebRtcError> {
        if let Some(bad) = digits.chars().find(|&c| dtmf_code(c).is_none()) {
            return Err(WebRtcError::BadDigit(bad));
        }
        digits.chars().try_for_each(|c| self.send_dtmf(c))
    }

    /// Add a candidate the remote trickled (`candidate:…` as in SDP, without `a=`).
    /// Send text on the DataChannel (queued until it is open).
    pub fn channel_send(&self, text: &str) -> Result<(), WebRtcError> {
        self.cmd.send(Command::ChannelSend(text.to_string())).map_err(|_| WebRtcError::Closed)
    }

    pub fn add_remote_candidate(&self, candidate: &str) -> Result<(), WebRtcError> {
        let c = Candidate::from_sdp_string(candidate.trim().trim_start_matches("a="))
            .map_err(|e| WebRtcError::BadSdp(format!("candidate {candidate:?}: {e}")))?;
        self.cmd.send(Command::RemoteCandidate(c)).map_err(|_| WebRtcError::Closed)
    }

    /// Wait until `cond` holds for the stats, or `within` has passed (then the last stats are in
    /// the error message). Returns the stats that satisfied it. Fails at once if the session
    /// closes without satisfying it.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&MediaStats) -> bool,
    ) -> Result<MediaStats, WebRtcError> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats();
            if cond(&stats) {
                return Ok(stats);
            }
            if stats.closed {
                return Err(WebRtcError::Closed);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(WebRtcError::Closed),
                Err(_) => {
                    let stats = self.stats();
                    if cond(&stats) {
                        return Ok(stats);
                    }
                    return Err(WebRtcError::Timeout { what: format!("{what} (stats: {stats:?})"), after: within });
                }
            }
        }
    }

    /// Wait until ICE + DTLS are up.
    pub async fn wait_connected(&self, within: Duration) -> Result<MediaStats, WebRtcError> {
        self.wait_for("connection", within, |s| s.connected).await
    }

    /// Wait until at least `n` audio packets have arrived.
    pub async fn wait_packets(&self, n: u64, within: Duration) -> Result<MediaStats, WebRtcError> {
        self.wait_for(&format!("{n} audio packets"), within, |s| s.packets_received >= n).await
    }

    /// Wait until the received digits are at least `digits` long and return them.
    pub async fn wait_dtmf(&self, count: usize, within: Duration) -> Result<String, WebRtcError> {
        let s = self.wait_for(&format!("{count} DTMF digits"), within, |s| s.dtmf_received.chars().count() >= count).await?;
        Ok(s.dtmf_received)
    }

    /// Close the session (RTCP BYE, DTLS close_notify) and wait for the driver to finish.
    pub async fn close(&self) -> MediaStats {
        let _ = self.cmd.send(Command::Close);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The driver bounds its own close drain; this is only a backstop.
            if tokio::time::timeout(Duration::from_secs(3), task).await.is_err() {
                tracing::warn!("media driver did not stop in time");
            }
        }
        self.stats()
    }

    /// Stop at once with no goodbye at all, as a killed browser tab or a dropped network does:
    /// no RTCP BYE, no DTLS close_notify, no SCTP abort, nothing more on the wire. The far end
    /// can only notice the silence. (`close` is the polite way.)
    pub fn vanish(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Has the session ended?
    pub fn is_closed(&self) -> bool {
        self.shared.read(|s| s.stats.closed)
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Close);
    }
}

/// RFC 4733 §3.2 event code of a DTMF digit.
pub fn dtmf_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// The digit of an RFC 4733 event code.
pub fn dtmf_digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

struct Driver {
    /// A frame was written: give str0m an input right after the drain so it sends it now
    /// rather than at its next timer tick (≈ 1 ms later).
    kick: bool,
    /// ICE is still checking (new or checking): pace it by [`ICE_PACE`], not str0m's Ta.
    ice_checking: bool,
    rtc: Rtc,
    sockets: Vec<Arc<UdpSocket>>,
    opts: PeerOptions,
    mid: Option<Mid>,
    pt: Option<Pt>,
    law: Option<Law>,
    source: SourceCursor,
    /// Due time of the next audio frame; `None` until connected.
    next_frame: Option<Instant>,
    rtp_samples: u64,
    dtmf_queue: std::collections::VecDeque<(u8, char)>,
    dtmf_next_allowed: Option<Instant>,
    last_dtmf_ts: Option<u64>,
    next_expected_ts: Option<u64>,
    started: Instant,
    closing_since: Option<Instant>,
    shared: Arc<Shared>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    net_rx: mpsc::Receiver<Datagram>,
    frame: Vec<i16>,
    /// The open DataChannel, and text queued before it opened.
    channel: Option<str0m::channel::ChannelId>,
    channel_queue: Vec<String>,
    /// Server-reflexive discovery on the first socket (see [`PeerOptions::stun`]).
    probe: Option<trunkline_media::srflx::SrflxProbe>,
}

/// The reason of [`MediaEvent::Closed`] when the far end closed the session on purpose (DTLS
/// close_notify): it hung up, and its word to the cloud is on the way.
pub const CLOSED_BY_PEER: &str = "closed by the peer";

/// How long a local close may take to drain (BYE, close_notify) before the driver just stops.
const CLOSE_DRAIN: Duration = Duration::from_millis(500);

/// str0m's ICE agent asks to be woken no sooner than one Ta (50 ms) after its last timeout, even
/// when a check is due now (as the caller we are the controlling side: the nomination is due
/// as soon as a check is answered): about 3 % of calls to a gateway on loopback took 50 ms
/// more from the answer to connected. While checking, wake it every [`ICE_PACE`] instead
/// (RFC 8445 §14.2 allows Ta down to 5 ms), and at once after each STUN message.
const STR0M_TA: Duration = Duration::from_millis(50);
const ICE_PACE: Duration = Duration::from_millis(5);

impl Driver {
    async fn run(mut self, readers: Vec<tokio::task::JoinHandle<()>>) {
        if !self.opts.stun.is_empty() {
            self.probe = Some(trunkline_media::srflx::SrflxProbe::new(
                &self.opts.stun,
                trunkline_media::srflx::ProbeTiming::default(),
                Instant::now(),
            ));
        }
        let reason = self.run_loop().await;
        for r in readers {
            r.abort();
        }
        tracing::debug!("media session ended: {reason}");
        self.shared.update(|s| {
            s.stats.closed = true;
            s.stats.close_reason = Some(reason.clone());
        });
        self.shared.emit(MediaEvent::Closed(reason));
    }

    async fn run_loop(&mut self) -> String {
        loop {
            let mut timeout = match self.drain() {
                Ok(t) => t,
                Err(e) => return format!("WebRTC error: {e}"),
            };
            if std::mem::take(&mut self.kick) {
                if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                    return format!("WebRTC error: {e}");
                }
                continue;
            }
            if !self.rtc.is_alive() {
                return if self.closing_since.is_some() { "closed".into() } else { CLOSED_BY_PEER.into() };
            }
            let now = Instant::now();
            // A deadline within Ta is str0m saying "a check is due, but not before Ta".
            if self.ice_checking && timeout <= now + STR0M_TA {
                timeout = timeout.min(now + ICE_PACE);
            }
            if self.closing_since.is_some_and(|t| now - t > CLOSE_DRAIN) {
                self.rtc.disconnect();
                return "closed".into();
            }
            let frame_due = if self.closing_since.is_none() { self.next_frame } else { None };
            let mut wake = frame_due.map_or(timeout, |f| f.min(timeout));
            if let Some(t) = self.run_probe(now) {
                wake = wake.min(t);
            }
            if let Some(t) = self.closing_since {
                wake = wake.min(t + CLOSE_DRAIN);
            }
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => {
                        if let Err(e) = self.command(cmd) {
                            tracing::warn!("media command failed: {e}");
                        }
                    }
                    None => {
                        // Every handle is gone.
                        self.start_close();
                    }
                },
                d = self.net_rx.recv() => {
                    let Some(d) = d else { return "sockets closed".into() };
                    if let Some(p) = self.probe.as_mut()
                        && p.is_ours(d.source, &d.data)
                    {
                        p.handle_input(d.source, &d.data, d.at);
                        continue;
                    }
                    // RFC 7983: a first byte of 0..=3 is STUN.
                    if self.ice_checking && d.data.first().is_some_and(|b| *b < 4) {
                        self.kick = true;
                    }
                    let Ok(contents) = d.data.as_slice().try_into() else { continue };
                    let input = Input::Receive(d.at, Receive { proto: Protocol::Udp, source: d.source, destination: d.destination, contents });
                    if let Err(e) = self.rtc.handle_input(input) {
                        tracing::debug!("input from {} refused: {e}", d.source);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    if frame_due.is_some_and(|f| f <= now) {
                        if let Err(e) = self.write_frame(now) {
                            tracing::warn!("audio write failed: {e}");
                        }
                        self.kick = true;
                    } else if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        return format!("WebRTC error: {e}");
                    }
                }
            }
        }
    }

    fn start_close(&mut self) {
        if self.closing_since.is_none() {
            self.closing_since = Some(Instant::now());
            if let Err(e) = self.rtc.close() {
                tracing::debug!("close: {e}");
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Result<(), WebRtcError> {
        match cmd {
            Command::SetSource(s) => self.source = SourceCursor::new(s),
            Command::Dtmf(code, digit) => self.dtmf_queue.push_back((code, digit)),
            Command::RemoteCandidate(c) => self.rtc.add_remote_candidate(c),
            Command::ChannelSend(text) => match self.channel.and_then(|id| self.rtc.channel(id)) {
                Some(mut ch) => {
                    ch.write(false, text.as_bytes())?;
                    self.kick = true;
                }
                None => self.channel_queue.push(text),
            },
            Command::Close => self.start_close(),
        }
        Ok(())
    }

    /// Send the STUN probe's requests and turn its answers into trickled srflx candidates.
    /// Returns when it next needs to run.
    fn run_probe(&mut self, now: Instant) -> Option<Instant> {
        use trunkline_media::srflx::ProbeEvent;
        let probe = self.probe.as_mut()?;
        let socket = self.sockets.first()?.clone();
        let base = socket.local_addr().ok()?;
        probe.handle_timeout(now);
        while let Some((to, bytes)) = probe.poll_transmit(now) {
            let _ = send_now(&socket, &bytes, to);
        }
        let mut found = vec![];
        let mut done = false;
        while let Some(ev) = probe.poll_event() {
            match ev {
                ProbeEvent::Mapped { mapped, .. } if mapped != base => found.push(mapped),
                ProbeEvent::Done => done = true,
                _ => {}
            }
        }
        let next = probe.poll_timeout();
        if done {
            // Nothing more to send or match on every datagram.
            self.probe = None;
        }
        for mapped in found {
            if let Ok(c) = Candidate::server_reflexive(mapped, base, "udp") {
                let line = c.to_sdp_string();
                if self.rtc.add_local_candidate(c).is_some() {
                    tracing::debug!("server-reflexive candidate {mapped}");
                    self.shared.emit(MediaEvent::LocalCandidate(line));
                }
            }
        }
        next
    }

    /// Drain `poll_output` to its next timeout: send datagrams, handle events.
    fn drain(&mut self) -> Result<Instant, RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let socket = self.sockets.iter().find(|s| s.local_addr().is_ok_and(|a| a == t.source)).or_else(|| {
                        self.sockets.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == t.destination.is_ipv4()))
                    });
                    if let Some(socket) = socket
                        && let Err(e) = send_now(socket, &t.contents, t.destination)
                    {
                        tracing::debug!("udp send to {} failed: {e}", t.destination);
                    }
                }
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::ChannelOpen(id, _label) if self.channel.is_none() => {
                self.channel = Some(id);
                if let Some(mut ch) = self.rtc.channel(id) {
                    for text in self.channel_queue.drain(..) {
                        let _ = ch.write(false, text.as_bytes());
                    }
                }
                self.shared.emit(MediaEvent::ChannelOpen);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel && !d.binary => {
                if let Ok(text) = String::from_utf8(d.data) {
                    self.shared.emit(MediaEvent::ChannelText(text));
                }
            }
            Event::IceConnectionStateChange(state) => {
                tracing::debug!("ICE {state:?}");
                self.ice_checking = matches!(state, IceConnectionState::New | IceConnectionState::Checking);
                self.shared.update(|s| s.stats.ice_state = Some(state));
                self.shared.emit(MediaEvent::IceState(state));
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.mid.is_none() => {
                self.mid = Some(m.mid);
            }
            Event::Connected => {
                let now = Instant::now();
                self.choose_codec();
                self.next_frame = Some(now);
                let after = now - self.started;
                let law = self.law;
                self.shared.update(|s| {
                    s.stats.connected = true;
                    s.stats.connected_after = Some(after);
                    s.stats.send_codec = law;
                });
                self.shared.emit(MediaEvent::Connected);
            }
            Event::MediaData(data) => {
                let codec = data.params.spec().codec;
                let ts = data.time.rebase(Frequency::EIGHT_KHZ).numer();
                match codec {
                    Codec::PCMU | Codec::PCMA => {
                        let Some(law) = law_of(codec) else { return };
                        let started = self.started;
                        let gap = match self.next_expected_ts {
                            Some(expected) if ts < expected => None, // late or duplicate: drop
                            Some(expected) => Some((ts - expected).min(u64::from(RATE) * 2) as usize),
                            None => Some(0),
                        };
                        let Some(gap) = gap else { return };
                        self.next_expected_ts = Some(ts + data.data.len() as u64);
                        let record = self.opts.record;
                        let first = self.shared.update(|s| {
                            if record {
                                s.recording.extend(std::iter::repeat_n(0i16, gap));
                                law.decode_into(&data.data, &mut s.recording);
                                s.stats.recorded_samples = s.recording.len();
                            }
                            s.stats.packets_received += 1;
                            s.stats.bytes_received += data.data.len() as u64;
                            let first = s.stats.first_audio_after.is_none();
                            if first {
                                s.stats.first_audio_after = Some(data.network_time.saturating_duration_since(started));
                            }
                            first
                        });
                        if first {
                            self.shared.emit(MediaEvent::FirstAudio);
                        }
                    }
                    Codec::Tele => {
                        if let CodecExtra::Tele(ev) = data.codec_extra
                            && ev.end
                            && self.last_dtmf_ts != Some(ts)
                        {
                            self.last_dtmf_ts = Some(ts);
                            if let Some(digit) = dtmf_digit(ev.event) {
                                self.shared.update(|s| s.stats.dtmf_received.push(digit));
                                self.shared.emit(MediaEvent::Dtmf(digit));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Closed => {
                tracing::debug!("peer closed the session");
            }
            _ => {}
        }
    }

    /// Pick the send codec among what the remote accepted: the preferred law if there, else
    /// the other.
    fn choose_codec(&mut self) {
        let Some(mid) = self.mid else { return };
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let params: Vec<(Pt, Codec)> = writer.payload_params().map(|p| (p.pt(), p.spec().codec)).collect();
        if let Some((pt, law)) = choose_payload(&params, self.opts.prefer) {
            self.pt = Some(pt);
            self.law = Some(law);
        }
    }

    /// Write the frame due at `self.next_frame` (and a DTMF event with it when one is queued).
    fn write_frame(&mut self, now: Instant) -> Result<(), WebRtcError> {
        let Some(mut due) = self.next_frame else {
            return Ok(());
        };
        // Far behind (a stalled runtime): skip ahead instead of bursting.
        let behind = now.saturating_duration_since(due);
        if behind > FRAME * 5 {
            let frames = (behind.as_millis() / FRAME.as_millis()) as u32;
            due += FRAME * frames;
            self.rtp_samples += u64::from(frames) * FRAME_SAMPLES as u64;
            self.source.skip(u64::from(frames) * FRAME_SAMPLES as u64);
        }
        self.next_frame = Some(due + FRAME);
        if self.law.is_none() {
            self.choose_codec();
            let law = self.law;
            self.shared.update(|s| s.stats.send_codec = law);
        }
        let (Some(mid), Some(pt), Some(law)) = (self.mid, self.pt, self.law) else {
            return Err(WebRtcError::NoCodec);
        };
        self.source.fill(&mut self.frame);
        let payload = law.encode_frame(&self.frame);
        let rtp_time = MediaTime::new(self.rtp_samples, Frequency::EIGHT_KHZ);
        self.rtp_samples += FRAME_SAMPLES as u64;
        let dtmf = match (self.dtmf_queue.front(), self.dtmf_next_allowed) {
            (Some(&d), None) => Some(d),
            (Some(&d), Some(t)) if due >= t => Some(d),
            _ => None,
        };
        let Some(mut writer) = self.rtc.writer(mid) else {
            return Err(WebRtcError::Closed);
        };
        if let Some((code, _)) = dtmf {
            writer =
                writer.telephone_event(TelephoneEvent { event: code, end: true, volume: 10, duration: self.opts.dtmf_duration });
        }
        let bytes = payload.len() as u64;
        writer.write(pt, due, rtp_time, payload)?;
        if let Some((_, digit)) = dtmf {
            self.dtmf_queue.pop_front();
            self.dtmf_next_allowed = Some(due + self.opts.dtmf_duration + self.opts.dtmf_gap);
            self.shared.update(|s| s.stats.dtmf_sent.push(digit));
        }
        self.shared.update(|s| {
            s.stats.packets_sent += 1;
            s.stats.bytes_sent += bytes;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_codes() {
        for (c, code) in [('0', 0), ('9', 9), ('*', 10), ('#', 11), ('A', 12), ('d', 15)] {
            assert_eq!(dtmf_code(c), Some(code));
            assert_eq!(dtmf_digit(code), Some(c.to_ascii_uppercase()));
        }
        assert_eq!(dtmf_code('x'), None);
        assert_eq!(dtmf_digit(16), None);
    }

    #[test]
    fn sources_fill_frames() {
        let mut c = SourceCursor::new(AudioSource::samples(vec![1, 2, 3]));
        let mut f = [9i16; 5];
        c.fill(&mut f);
        assert_eq!(f, [1, 2, 3, 0, 0]);
        let mut c = SourceCursor::new(AudioSource::looped(vec![1, 2, 3]));
        c.fill(&mut f);
        assert_eq!(f, [1, 2, 3, 1, 2]);
        c.fill(&mut f);
        assert_eq!(f, [3, 1, 2, 3, 1]);
        let mut c = SourceCursor::new(AudioSource::tone(1000.0));
        let mut tone = vec![0i16; 8000];
        for chunk in tone.chunks_mut(FRAME_SAMPLES) {
            c.fill(chunk);
        }
        let f = wav::dominant_frequency(&tone, RATE);
        assert!((f - 1000.0).abs() < 1.0, "{f}");
        let mut c = SourceCursor::new(AudioSource::Silence);
        let mut f = [1i16; 4];
        c.fill(&mut f);
        assert_eq!(f, [0; 4]);
    }

    #[tokio::test]
    async fn offer_has_g711_and_telephone_event_and_host_candidates() {
        let mut peer = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
        let addr = peer.local_addrs()[0];
        let offer = peer.create_offer().unwrap();
        assert!(offer.contains("m=audio "), "{offer}");
        assert!(offer.contains("a=sendrecv"), "{offer}");
        assert!(offer.contains("a=rtpmap:0 PCMU/8000"), "{offer}");
        assert!(offer.contains("a=rtpmap:8 PCMA/8000"), "{offer}");
        assert!(offer.contains(&format!("a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000")), "{offer}");
        assert!(!offer.to_lowercase().contains("opus"), "{offer}");
        assert!(offer.contains(&format!("{} {} typ host", addr.ip(), addr.port())), "{offer}");
        assert!(offer.contains("a=fingerprint:sha-256"), "{offer}");
        assert!(offer.contains("a=setup:actpass"), "{offer}");
        // PCMU is listed first (preferred).
        let mline = offer.lines().find(|l| l.starts_with("m=audio")).unwrap();
        let pts: Vec<&str> = mline.split_whitespace().skip(3).collect();
        assert_eq!(pts.first(), Some(&"0"), "{mline}");
    }

    #[tokio::test]
    async fn bad_answers_are_errors() {
        let mut peer = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
        let _ = peer.create_offer().unwrap();
        assert!(matches!(peer.accept_answer("not sdp", AudioSource::Silence), Err(WebRtcError::BadSdp(_))));
        let peer = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
        assert!(matches!(peer.accept_answer("v=0", AudioSource::Silence), Err(WebRtcError::NoPendingOffer)));
        let peer = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
        assert!(peer.accept_offer("garbage", AudioSource::Silence).is_err());
    }

    #[tokio::test]
    async fn wildcard_bind_offers_interface_addresses() {
        let peer = WebRtcPeer::bind(PeerOptions::bind(IpAddr::from([0, 0, 0, 0]))).await.unwrap();
        let addrs = peer.local_addrs();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.is_ipv4() && !a.ip().is_unspecified()), "{addrs:?}");
    }
}
