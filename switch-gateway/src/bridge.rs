//! WebRTC ⇄ RTP bridges for direct callers (C15): one str0m `Rtc` (DTLS-SRTP) on its own UDP
//! socket facing the caller, and one RTP/RTCP socket pair facing the desk phone, driven by one
//! small tokio task per call.
//!
//! The only way in is a **session** (C14 over WebRTC): the caller's offer comes through the
//! cloud (the gateway listens on no port for callers), the leg is a
//! full ICE agent that learns its server-reflexive address by STUN from the same socket and
//! trickles it back through the cloud, the key arrives on a DataChannel inside DTLS, and only
//! then is the phone side attached and rung. Where STUN is not enough (a site that drops
//! outgoing UDP, a symmetric NAT facing another), the session also allocates on the cloud's TURN
//! servers (UDP from the same socket, and TCP or TLS) and offers the relayed addresses as
//! candidates: see [`SessionIce`] and `trunkline_media::turn`.
//!
//! G.711 passes through without transcoding when both legs use the same law (the phone is
//! offered the law the WebRTC side prefers first); if they differ each sample is re-coded.
//! RFC 4733 events are carried both ways: str0m's frame API on the WebRTC leg, RTP
//! `telephone-event` packets on the phone leg. That per-packet logic is sans-IO in
//! `trunkline_media::bridge` (tested there); the str0m configuration is
//! `trunkline_media::webrtc::rtc_config` and the phone's SDP `trunkline_media::sdp::AudioSdp`. The phone's real RTP source is latched
//! (symmetric RTP) by the same policy as the relay's (`trunkline_media::latch`): once latched, RTP
//! and RTCP from any other source are dropped and counted, however long the phone is silent; a
//! new SDP address from the phone (re-INVITE) re-points the leg.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::{Codec, CodecExtra};
use str0m::media::{Direction as MediaDirection, Frequency, MediaKind, MediaTime, Mid, Pt, TelephoneEvent};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;
use trunkline_media::bridge::PhoneMedia;
use trunkline_media::g711::Law;
use trunkline_media::latch::{DropReason, Kind as LatchKind, Latch, Verdict, drop_counter};
use trunkline_media::ports::{LegSockets, PortAllocator, send_now};
use trunkline_media::rtp::{DtmfEvent, RtpStream, parse_rtp, rtcp_packets};
use trunkline_media::sdp::{AudioSdp, Sdp};
use trunkline_media::srflx::{ProbeEvent, ProbeTiming, SrflxProbe};
use trunkline_media::turn::{RelayEvent, RelayTransmit, Relays, StreamId, TurnServer, TurnTransport};
use trunkline_media::webrtc::{RtcOptions, choose_payload, law_of, rtc_config};

use crate::b2bua::{BridgeError, BridgeSetup, Bridges};

/// `telephone-event/8000` payload type we offer phones.
const PHONE_TE_PT: u8 = 101;

/// The desk-phone side of a bridge.
pub struct PhoneLeg {
    sockets: LegSockets,
    /// The law the phone is offered (or answered) with, its telephone-event, our RTP stream.
    media: PhoneMedia,
}

/// A bridge whose sockets exist but whose task has not started yet.
pub struct PendingBridge {
    rtc: Rtc,
    /// The WebRTC leg's socket: from the RTP port range, so one forwarded range covers both
    /// legs behind a NAT. Its RTCP twin stays unused.
    ice: LegSockets,
    /// The address in our ICE candidate: what str0m must see as the packets' destination.
    candidate: SocketAddr,
    /// None for a session until its key is accepted.
    phone: Option<PhoneLeg>,
    /// F2 caller side: our offer, waiting for the remote gateway's answer.
    offer: Option<SdpPendingOffer>,
    /// Known up front when we offered (str0m only announces remote-added media).
    mid: Option<Mid>,
    /// The IPs of the candidates in the remote SDP (TURN permissions for a session).
    remote_ips: Vec<IpAddr>,
}

pub type PendingBridges = Arc<Mutex<HashMap<u64, PendingBridge>>>;
/// Phone sides made for running sessions, taken by the driver at `BridgeStart`.
pub type Attachments = Arc<Mutex<HashMap<u64, PhoneLeg>>>;
/// What a session gathers its candidates with beyond its host address: STUN servers
/// (server-reflexive) and TURN servers with their credentials (relayed). Set by the driver from
/// `switch_welcome` / `ice_servers`; each session takes a copy when it starts.
#[derive(Clone, Default)]
pub struct SessionIce {
    pub stun: Vec<SocketAddr>,
    /// Resolved, with the TURN REST username/credential of their `ice_servers` entry.
    pub turn: Vec<TurnServer>,
    /// TLS for `turns:` servers: the public roots plus `cloud_ca_file`'s CAs. `None`: no TLS.
    pub turn_tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for SessionIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // TurnServer's Debug redacts the credential.
        f.debug_struct("SessionIce")
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("turn_tls", &self.turn_tls.is_some())
            .finish()
    }
}

/// The driver's current [`SessionIce`].
pub type StunServers = Arc<Mutex<SessionIce>>;

/// A `turn:`/`turns:` URL with its entry's username and credential.
pub type TurnPlan = (trunkline_media::turn::TurnUrl, String, String);

/// The `stun:` servers and the `turn:`/`turns:` servers (with their entry's credentials) of
/// `ice_servers`, unresolved: `(host, port)` and `(url, username, credential)`. TURN URLs of an
/// entry without both username and credential are skipped, as are URLs neither parser takes.
pub fn ice_plan(ice_servers: &[trunkline_protocol::IceServer]) -> (Vec<(String, u16)>, Vec<TurnPlan>) {
    let (mut stun, mut turn) = (vec![], vec![]);
    for server in ice_servers {
        for url in &server.urls {
            if let Some(hp) = trunkline_media::srflx::parse_stun_url(url) {
                stun.push(hp);
            } else if let (Some(u), Some(user), Some(cred)) =
                (trunkline_media::turn::parse_turn_url(url), &server.username, &server.credential)
            {
                turn.push((u, user.clone(), cred.clone()));
            }
        }
    }
    (stun, turn)
}

/// The IPs of the `a=candidate:` lines of an SDP.
fn candidate_ips(sdp: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .map(|c| c.addr().ip())
        .collect();
    ips.dedup();
    ips
}

pub struct DriverBridges {
    alloc: Arc<PortAllocator>,
    adv_ip: IpAddr,
    pending: PendingBridges,
    attach: Attachments,
    /// Each session's WebRTC law (the one its answer lists first), for its phone side.
    session_law: HashMap<u64, Law>,
    next: u64,
}

impl DriverBridges {
    pub fn new(alloc: Arc<PortAllocator>, adv_ip: IpAddr, pending: PendingBridges, attach: Attachments) -> Self {
        DriverBridges { alloc, adv_ip, pending, attach, session_law: HashMap::new(), next: 0 }
    }
}

/// Which law the WebRTC side listed first in `answer` (offer the phone that one first).
fn first_law(answer: &str) -> Option<Law> {
    Sdp::parse(answer).ok()?.audio?.first_law()
}

/// A full ICE agent on both sides (carrier and F2 caller): behind NAT our own checks open the
/// pinhole the far end's checks come through.
const RTC_OPTIONS: RtcOptions = RtcOptions { ice_lite: false, initial_stun_rto: Some(ICE_INITIAL_RTO) };

impl DriverBridges {
    /// A UDP socket for the WebRTC leg and an `Rtc` with its host candidate on it.
    fn rtc_and_socket(&self) -> Result<(Rtc, LegSockets, SocketAddr), BridgeError> {
        let ice = self.alloc.allocate().map_err(|_| BridgeError::NoPorts)?;
        let mut rtc = rtc_config(RTC_OPTIONS).build(Instant::now());
        let addr = SocketAddr::new(self.adv_ip, ice.rtp_port());
        let candidate = Candidate::host(addr, "udp").map_err(|e| BridgeError::BadOffer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok((rtc, ice, addr))
    }

    /// The phone side: an offer of `law` first (F1), or the answer to the phone's offer (C3, F2).
    fn phone_side(
        &mut self,
        id: u64,
        sockets: LegSockets,
        law: Law,
        phone_offer: Option<&str>,
    ) -> Result<(String, PhoneLeg), BridgeError> {
        let sdp = AudioSdp::new(self.adv_ip, sockets.rtp_port()).origin("trunkline", id);
        let (sdp, law, te) = match phone_offer {
            None => (sdp.law(law).law(law.other()).telephone_event(PHONE_TE_PT), law, Some(PHONE_TE_PT)),
            Some(po) => {
                let parsed = Sdp::parse(po).map_err(|e| BridgeError::BadOffer(format!("phone SDP: {e}")))?;
                let audio = parsed.audio.as_ref().ok_or_else(|| BridgeError::BadOffer("phone offered no audio".into()))?;
                // Static payload types only: our RTP to the phone is sent with 0 or 8.
                let law = audio
                    .payload_types
                    .iter()
                    .find_map(|&pt| Law::from_payload_type(pt))
                    .ok_or_else(|| BridgeError::BadOffer("the phone offers neither PCMU nor PCMA".into()))?;
                let te = audio.telephone_event_pt();
                (sdp.law(law).telephone_event(te), law, te)
            }
        };
        // The answer's telephone-event PT is the phone's own, which may be static in a broken offer.
        let sdp = sdp.build().map_err(|e| BridgeError::BadOffer(format!("phone SDP: {e}")))?;
        let media = PhoneMedia::new(law, te, RtpStream::new(rand::random(), rand::random()));
        Ok((sdp, PhoneLeg { sockets, media }))
    }
}

impl DriverBridges {
    /// F2 caller side: a full-ICE leg offering audio and the DataChannel the key goes on, with
    /// the phone side answering `phone_offer`.
    fn make_offer(&mut self, phone_offer: &str) -> Result<BridgeSetup, BridgeError> {
        let (mut rtc, ice, candidate) = self.rtc_and_socket()?;
        let phone = self.alloc.allocate().map_err(|_| BridgeError::NoPorts)?;
        self.next += 1;
        let id = self.next;
        let (phone_sdp, phone) = self.phone_side(id, phone, Law::Mu, Some(phone_offer))?;
        let phone = Some(phone);
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, MediaDirection::SendRecv, None, None, None);
        change.add_channel(DIRECT_CHANNEL.to_string());
        let (offer, pending) = change.apply().ok_or_else(|| BridgeError::BadOffer("no media to offer".into()))?;
        self.pending
            .lock()
            .unwrap()
            .insert(id, PendingBridge { rtc, ice, candidate, phone, offer: Some(pending), mid: Some(mid), remote_ips: vec![] });
        Ok(BridgeSetup { id, answer: offer.to_sdp_string(), phone_sdp })
    }
}

impl Bridges for DriverBridges {
    fn open_session(&mut self, offer: &str) -> Result<(u64, String), BridgeError> {
        let remote_ips = candidate_ips(offer);
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| BridgeError::BadOffer(e.to_string()))?;
        if !offer.media_lines.iter().any(|m| m.typ.to_string() == "audio") {
            return Err(BridgeError::BadOffer("no audio m-line".into()));
        }
        if !offer.media_lines.iter().any(|m| m.typ.to_string() == "application") {
            return Err(BridgeError::BadOffer("no DataChannel (m=application) to present the key on".into()));
        }
        // Full ICE: behind NAT our own checks open the pinhole the caller's checks come through.
        let (mut rtc, ice, candidate) = self.rtc_and_socket()?;
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| BridgeError::BadOffer(e.to_string()))?.to_sdp_string();
        let law = first_law(&answer).ok_or_else(|| BridgeError::BadOffer("the offer has neither PCMU nor PCMA".into()))?;
        self.next += 1;
        let id = self.next;
        self.session_law.insert(id, law);
        self.pending
            .lock()
            .unwrap()
            .insert(id, PendingBridge { rtc, ice, candidate, phone: None, offer: None, mid: None, remote_ips });
        Ok((id, answer))
    }

    fn attach(&mut self, id: u64, phone_offer: Option<&str>) -> Result<BridgeSetup, BridgeError> {
        let webrtc_law = self.session_law.remove(&id).ok_or_else(|| BridgeError::BadOffer("no such session".into()))?;
        let phone = self.alloc.allocate().map_err(|_| BridgeError::NoPorts)?;
        let (phone_sdp, phone) = self.phone_side(id, phone, webrtc_law, phone_offer)?;
        self.attach.lock().unwrap().insert(id, phone);
        Ok(BridgeSetup { id, answer: String::new(), phone_sdp })
    }

    fn offer_session(&mut self, phone_offer: &str) -> Result<BridgeSetup, BridgeError> {
        self.make_offer(phone_offer)
    }

    fn remote_answer(&mut self, id: u64, answer: &str) -> Result<(), BridgeError> {
        let remote_ips = candidate_ips(answer);
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| BridgeError::BadOffer(e.to_string()))?;
        let mut pending = self.pending.lock().unwrap();
        let b = pending.get_mut(&id).ok_or_else(|| BridgeError::BadOffer("no such bridge".into()))?;
        b.remote_ips.extend(remote_ips);
        let offer = b.offer.take().ok_or_else(|| BridgeError::BadOffer("no offer pending".into()))?;
        b.rtc.sdp_api().accept_answer(offer, answer).map_err(|e| BridgeError::BadOffer(e.to_string()))
    }
}

/// Commands to a running bridge.
pub enum BridgeCmd {
    PhoneRemote(SocketAddr),
    /// A session's key was accepted: bridge to this phone side now.
    Attach(PhoneLeg, Option<SocketAddr>),
    /// A candidate the caller trickled (SDP `candidate:` line).
    RemoteCandidate(String),
    /// Send this text on the session's DataChannel (a `trunkline-direct` message).
    Dc(String),
    Stop,
}

/// What a session tells the driver.
#[derive(Debug)]
pub enum SessionEvent {
    /// A local candidate to trickle to the caller (SDP `candidate:` line).
    Candidate(String),
    /// Text from the caller on the DataChannel (a `trunkline-direct` message).
    Dc(String),
    /// The leg is gone (closed, failed, or never got its key in time).
    Gone(&'static str),
}

/// The DataChannel label a caller presents its key on (C14 over WebRTC).
pub const DIRECT_CHANNEL: &str = trunkline_call::DIRECT_CHANNEL;

/// How long an F2 caller's session waits for its DataChannel before the call fails.
const SESSION_OPEN_WAIT: Duration = Duration::from_secs(20);

/// How long a session waits for its key before it gives up (the key's own TTL is shorter).
const SESSION_KEY_WAIT: Duration = Duration::from_secs(60);

/// Start a session's task (no phone side yet): it gathers its server-reflexive candidate from
/// `ice.stun` and relayed ones from `ice.turn`, and reports candidates, DataChannel text and its
/// end on `events`.
///
/// `on_open` (the F2 caller side's `present`) is sent on the DataChannel as soon as it opens;
/// `phone_remote` is the phone's RTP address when the phone side is already there (F2).
pub fn start_session(
    pending: PendingBridge,
    phone_remote: Option<SocketAddr>,
    ice: SessionIce,
    on_open: Option<String>,
    events: mpsc::UnboundedSender<SessionEvent>,
) -> mpsc::UnboundedSender<BridgeCmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(pending, phone_remote, rx, Some((ice, on_open, events))));
    tx
}

/// A session's TURN allocations and the streams (TCP, TLS) some of them run over.
///
/// TLS: the stream task wraps its TCP connection with tokio-rustls (the gateway's rustls 0.23 +
/// aws-lc-rs, as for wss:// to the cloud) and feeds `turn-client-proto`'s plain TCP client the
/// decrypted bytes, so TCP and TLS take one code path. Not `turn-client-rustls` 0.1.2: it would
/// fit the dependency tree, but its `recv` drains at most 2048 plaintext bytes per call and leaves
/// the rest inside rustls until the next TCP segment arrives (a stall or a growing backlog when
/// segments coalesce), and it panics if a write into rustls fails.
struct Turn {
    relays: Relays,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Bytes to each open stream's task.
    streams: HashMap<StreamId, mpsc::UnboundedSender<Vec<u8>>>,
    stream_events: mpsc::UnboundedSender<(StreamId, StreamEvent)>,
}

/// What a TURN stream task reports.
enum StreamEvent {
    Connected(SocketAddr),
    Data(Vec<u8>),
    Closed(String),
}

/// How long opening a TURN stream (TCP connect, TLS handshake) may take.
const TURN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished session keeps its TURN clients alive to send their deletes.
const TURN_DELETE_GRACE: Duration = Duration::from_millis(300);

impl Turn {
    /// Send what the TURN clients have queued.
    fn flush(&mut self, ice: &tokio::net::UdpSocket) {
        while let Some(t) = self.relays.poll_transmit() {
            match t {
                RelayTransmit::Udp { to, data } => {
                    let _ = send_now(ice, &data, to);
                }
                RelayTransmit::Stream { id, data } => {
                    if let Some(tx) = self.streams.get(&id) {
                        let _ = tx.send(data);
                    }
                }
            }
        }
    }

    /// Open the streams the TURN clients want.
    fn connect(&mut self) {
        while let Some((id, server)) = self.relays.poll_connect() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.streams.insert(id, tx);
            tokio::spawn(turn_stream(id, server, self.tls.clone(), rx, self.stream_events.clone()));
        }
    }

    /// Hand what came through the relays to str0m, as received at the relayed address.
    fn deliver(&mut self, rtc: &mut Rtc, admit: &mut Admit) -> Result<(), ()> {
        while let Some((relayed, peer, data)) = self.relays.poll_peer_data() {
            let Ok(contents) = data.as_slice().try_into() else { continue };
            let input =
                Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: peer, destination: relayed, contents });
            if admit.admit(rtc, &input, &data) && rtc.handle_input(input).is_err() {
                return Err(());
            }
        }
        Ok(())
    }

    /// Release the allocations and give the deletes a moment to leave and be answered (the
    /// client paces its requests, and retransmits over UDP until answered); then the stream
    /// tasks write what is queued and close.
    async fn release(mut self, ice: &tokio::net::UdpSocket) {
        let start = Instant::now();
        self.relays.delete(start);
        self.flush(ice);
        let mut buf = vec![0u8; 2000];
        while let Some(t) = self.relays.poll_timeout()
            && t < start + TURN_DELETE_GRACE
        {
            tokio::select! {
                _ = tokio::time::sleep_until(t.into()) => self.relays.handle_timeout(Instant::now()),
                r = ice.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r && self.relays.is_from_server(from) {
                        self.relays.udp_data(from, &buf[..n], Instant::now());
                    }
                }
            }
            self.flush(ice);
        }
    }
}

/// One TURN server's TCP (or TLS) connection: plain bytes in and out through the session task.
async fn turn_stream(
    id: StreamId,
    server: TurnServer,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<(StreamId, StreamEvent)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
    let open = async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.map_err(|e| format!("TCP connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let stream: Box<dyn Stream> = match server.transport {
            TurnTransport::Tls => {
                let cfg = tls.ok_or_else(|| "no TLS configuration for turns:".to_string())?;
                let name = rustls_pki_types::ServerName::try_from(server.host.clone())
                    .map_err(|e| format!("TLS server name {}: {e}", server.host))?;
                let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        Ok::<_, String>((local, stream))
    };
    let (local, stream) = match tokio::time::timeout(TURN_CONNECT_TIMEOUT, open).await {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            let _ = events.send((id, StreamEvent::Closed(why)));
            return;
        }
        Err(_) => {
            let _ = events.send((id, StreamEvent::Closed("timed out opening the connection".into())));
            return;
        }
    };
    if events.send((id, StreamEvent::Connected(local))).is_err() {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let ev = match r {
                    Ok(0) => StreamEvent::Closed("closed by the server".into()),
                    Ok(n) => StreamEvent::Data(buf[..n].to_vec()),
                    Err(e) => StreamEvent::Closed(e.to_string()),
                };
                let end = matches!(ev, StreamEvent::Closed(_));
                if events.send((id, ev)).is_err() || end {
                    return;
                }
            }
            m = out.recv() => match m {
                Some(data) => {
                    if let Err(e) = wr.write_all(&data).await {
                        let _ = events.send((id, StreamEvent::Closed(e.to_string())));
                        return;
                    }
                }
                // The session is over (its deletes were queued before): close.
                None => {
                    let _ = wr.shutdown().await;
                    return;
                }
            },
        }
    }
}

/// A session's own state inside the bridge task.
struct SessionState {
    events: mpsc::UnboundedSender<SessionEvent>,
    probe: Option<SrflxProbe>,
    dc: Option<ChannelId>,
    /// DataChannel text queued before the channel opened.
    dc_queue: Vec<String>,
    key_deadline: Instant,
    /// F2 caller side: the DataChannel must open by then, or the connection failed.
    open_deadline: Option<Instant>,
    /// TURN allocations, when the cloud gave TURN servers.
    turn: Option<Turn>,
}

async fn recv_opt(sock: Option<&tokio::net::UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(
    p: PendingBridge,
    phone_remote: Option<SocketAddr>,
    mut cmds: mpsc::UnboundedReceiver<BridgeCmd>,
    session: Option<(SessionIce, Option<String>, mpsc::UnboundedSender<SessionEvent>)>,
) {
    let PendingBridge { mut rtc, ice, candidate, mut phone, offer: _, mid, remote_ips } = p;
    let ice = ice.rtp_socket();
    let (stream_tx, mut stream_rx) = mpsc::unbounded_channel();
    let mut session = session.map(|(servers, on_open, events)| {
        let now = Instant::now();
        let turn = (!servers.turn.is_empty()).then(|| {
            let mut relays = Relays::new(&servers.turn, candidate, now);
            for ip in remote_ips {
                relays.permit(ip, now);
            }
            Turn { relays, tls: servers.turn_tls.clone(), streams: HashMap::new(), stream_events: stream_tx }
        });
        SessionState {
            events,
            probe: (!servers.stun.is_empty()).then(|| SrflxProbe::new(&servers.stun, ProbeTiming::default(), now)),
            dc: None,
            open_deadline: on_open.is_some().then_some(now + SESSION_OPEN_WAIT),
            dc_queue: on_open.into_iter().collect(),
            key_deadline: now + SESSION_KEY_WAIT,
            turn: turn.filter(|t| !t.relays.is_empty()),
        }
    });
    let mut latch = Latch::new();
    latch.set_signalled(phone_remote);
    let why = run_loop(&mut rtc, ice, candidate, &mut phone, &mut latch, &mut cmds, &mut session, mid, &mut stream_rx).await;
    if let Some(s) = session {
        let _ = s.events.send(SessionEvent::Gone(why));
        if let Some(turn) = s.turn {
            turn.release(ice).await;
        }
    }
}

/// Send one of str0m's datagrams: through TURN when it leaves from one of our relayed
/// addresses, else straight from the session's socket.
fn transmit(t: &str0m::net::Transmit, ice: &tokio::net::UdpSocket, session: &mut Option<SessionState>) {
    if let Some(turn) = session.as_mut().and_then(|s| s.turn.as_mut())
        && turn.relays.is_relayed(t.source)
    {
        if let Err(e) = turn.relays.send(t.source, t.destination, &t.contents, Instant::now()) {
            tracing::trace!(relayed = %t.source, peer = %t.destination, error = %e, "session: cannot relay");
        }
        turn.flush(ice);
        return;
    }
    let _ = send_now(ice, &t.contents, t.destination);
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    rtc: &mut Rtc,
    ice: &tokio::net::UdpSocket,
    candidate: SocketAddr,
    phone: &mut Option<PhoneLeg>,
    latch: &mut Latch,
    cmds: &mut mpsc::UnboundedReceiver<BridgeCmd>,
    session: &mut Option<SessionState>,
    mid: Option<Mid>,
    stream_rx: &mut mpsc::UnboundedReceiver<(StreamId, StreamEvent)>,
) -> &'static str {
    // str0m matches STUN to a candidate by the exact destination address; the socket may be
    // bound to 0.0.0.0 while the candidate names the advertised address.
    let ice_local = Some(candidate);
    let foreign = drop_counter(DropReason::ForeignSource);
    let mut mid: Option<Mid> = mid;
    let mut webrtc_pts: Vec<(Pt, Codec)> = vec![];
    let mut ice_buf = vec![0u8; 2000];
    let mut rtp_buf = vec![0u8; 2000];
    let mut rtcp_buf = vec![0u8; 2000];
    let started = Instant::now();
    let mut kick = false;
    let mut admit = Admit::default();
    let mut ice_checking = true;
    let mut burst = 0u32;
    loop {
        // Drain str0m until it only has a timeout for us.
        let mut sent_stun = false;
        let next_timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    sent_stun |= t.contents.first().is_some_and(|b| *b < 4);
                    transmit(&t, ice, session)
                }
                Ok(Output::Event(e)) => match e {
                    Event::MediaAdded(m) if m.kind == MediaKind::Audio => mid = Some(m.mid),
                    Event::ChannelOpen(id, label) => {
                        // Only the agreed channel carries the direct protocol; others are ignored.
                        if let Some(s) = session.as_mut()
                            && s.dc.is_none()
                            && label == DIRECT_CHANNEL
                        {
                            tracing::debug!(%label, "session: DataChannel open");
                            s.dc = Some(id);
                            s.open_deadline = None;
                            if let Some(mut ch) = rtc.channel(id) {
                                for text in s.dc_queue.drain(..) {
                                    let _ = ch.write(false, text.as_bytes());
                                }
                            }
                        }
                    }
                    Event::ChannelData(d) => {
                        if let Some(s) = session.as_ref()
                            && Some(d.id) == s.dc
                            && !d.binary
                            && let Ok(text) = String::from_utf8(d.data)
                        {
                            let _ = s.events.send(SessionEvent::Dc(text));
                        }
                    }
                    Event::ChannelClose(id) if session.as_ref().is_some_and(|s| s.dc == Some(id)) => {
                        return "the caller closed the DataChannel";
                    }
                    Event::Connected => {
                        if let Some(w) = mid.and_then(|m| rtc.writer(m)) {
                            webrtc_pts = w.payload_params().map(|p| (p.pt(), p.spec().codec)).collect();
                        }
                        tracing::debug!(after = ?started.elapsed(), "bridge: WebRTC leg connected");
                    }
                    Event::IceConnectionStateChange(state) => {
                        ice_checking = matches!(state, IceConnectionState::New | IceConnectionState::Checking);
                        if state == IceConnectionState::Disconnected {
                            tracing::debug!("bridge: WebRTC leg disconnected");
                        }
                    }
                    Event::MediaData(data) => {
                        let dest = latch.destination(LatchKind::Rtp);
                        let (Some(dest), Some(phone)) = (dest, phone.as_mut()) else { continue };
                        let ts = data.time.rebase(Frequency::EIGHT_KHZ).numer() as u32;
                        let codec = data.params.spec().codec;
                        let packets = match (law_of(codec), &data.codec_extra) {
                            (Some(law), _) => vec![phone.media.audio_to_phone(law, ts, &data.data)],
                            (None, CodecExtra::Tele(ev)) if codec == Codec::Tele => {
                                let duration = (ev.duration.as_millis() * 8).min(u128::from(u16::MAX)) as u16;
                                let ev = DtmfEvent { event: ev.event, end: ev.end, volume: ev.volume, duration };
                                phone.media.event_to_phone(ev, ts)
                            }
                            _ => vec![],
                        };
                        for pkt in packets {
                            let _ = send_now(phone.sockets.rtp_socket(), &pkt, dest);
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(error = %e, "bridge: str0m error; closing");
                    return "WebRTC error";
                }
            }
        };
        if !rtc.is_alive() {
            return "the WebRTC leg closed";
        }
        let mut next_timeout = next_timeout;
        // While checking, drive ICE every ICE_PACE instead of its own Ta of 50 ms (a deadline
        // within Ta is str0m saying "a check is due, but not before Ta").
        if ice_checking {
            let now = Instant::now();
            if next_timeout <= now + STR0M_TA {
                next_timeout = next_timeout.min(now + ICE_PACE);
            }
        }
        if let Some(s) = session.as_mut() {
            // Only while waiting: a deadline in the past would make the loop spin.
            if phone.is_none() {
                if Instant::now() >= s.key_deadline {
                    let _ = rtc.close();
                    return "no key was presented in time";
                }
                next_timeout = next_timeout.min(s.key_deadline);
            }
            if let Some(t) = s.open_deadline {
                if Instant::now() >= t {
                    let _ = rtc.close();
                    return "the direct connection could not be made";
                }
                next_timeout = next_timeout.min(t);
            }
            let mut probe_done = false;
            if let Some(probe) = s.probe.as_mut() {
                let now = Instant::now();
                probe.handle_timeout(now);
                while let Some((to, bytes)) = probe.poll_transmit(now) {
                    let _ = send_now(ice, &bytes, to);
                }
                while let Some(ev) = probe.poll_event() {
                    match ev {
                        ProbeEvent::Mapped { server, mapped } => match Candidate::server_reflexive(mapped, candidate, "udp") {
                            Ok(c) => {
                                let line = c.to_sdp_string();
                                if mapped != candidate && rtc.add_local_candidate(c).is_some() {
                                    burst = ICE_BURST;
                                    tracing::debug!(%server, %mapped, "session: server-reflexive candidate");
                                    let _ = s.events.send(SessionEvent::Candidate(line));
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "session: unusable mapped address"),
                        },
                        ProbeEvent::Unreachable { server, why } => {
                            tracing::debug!(%server, %why, "session: STUN server unreachable")
                        }
                        // Every server answered or gave up: no more work on this per-packet path.
                        ProbeEvent::Done => probe_done = true,
                    }
                }
                if let Some(t) = probe.poll_timeout() {
                    next_timeout = next_timeout.min(t);
                }
            }
            if probe_done {
                s.probe = None;
            }
            if let Some(turn) = s.turn.as_mut() {
                let now = Instant::now();
                if turn.relays.poll_timeout().is_some_and(|t| t <= now) {
                    turn.relays.handle_timeout(now);
                }
                turn.connect();
                while let Some(ev) = turn.relays.poll_event() {
                    match ev {
                        RelayEvent::Allocated { server, transport, relayed, local } => {
                            match Candidate::relayed(relayed, local, "udp") {
                                Ok(c) => {
                                    let line = c.to_sdp_string();
                                    if rtc.add_local_candidate(c).is_some() {
                                        burst = ICE_BURST;
                                        tracing::info!(%server, transport = transport.as_str(), %relayed, "session: relayed candidate");
                                        let _ = s.events.send(SessionEvent::Candidate(line));
                                    }
                                }
                                Err(e) => tracing::debug!(error = %e, "session: unusable relayed address"),
                            }
                        }
                        RelayEvent::Failed { server, transport, why } => {
                            tracing::debug!(%server, transport = transport.as_str(), %why, "session: no TURN allocation")
                        }
                    }
                }
                turn.flush(ice);
                if let Some(t) = turn.relays.poll_timeout() {
                    next_timeout = next_timeout.min(t);
                }
            }
        }
        // New candidates: their first checks now, not one per pacing step behind older pairs
        // (str0m sends at most one check per input, the pair due first). Stops at the first
        // input that sends no STUN.
        if burst > 0 {
            burst = if sent_stun || burst == ICE_BURST { burst - 1 } else { 0 };
            if burst > 0 {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return "WebRTC error";
                }
                continue;
            }
        }
        if std::mem::take(&mut kick) {
            if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                return "WebRTC error";
            }
            continue;
        }
        let wait = next_timeout.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        tokio::select! {
            r = ice.recv_from(&mut ice_buf) => {
                let Ok((n, source)) = r else { continue };
                // Our STUN probe's answers share the socket with ICE, DTLS and SRTP.
                if let Some(probe) = session.as_mut().and_then(|s| s.probe.as_mut())
                    && probe.is_ours(source, &ice_buf[..n])
                {
                    probe.handle_input(source, &ice_buf[..n], Instant::now());
                    continue;
                }
                // So are the answers of a UDP TURN server (and what it relays to us).
                if let Some(turn) = session.as_mut().and_then(|s| s.turn.as_mut())
                    && turn.relays.is_from_server(source)
                {
                    turn.relays.udp_data(source, &ice_buf[..n], Instant::now());
                    turn.flush(ice);
                    if turn.deliver(rtc, &mut admit).is_err() {
                        return "WebRTC error";
                    }
                    continue;
                }
                let Some(destination) = ice_local else { continue };
                let Ok(contents) = ice_buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination, contents });
                if admit.admit(rtc, &input, &ice_buf[..n]) && rtc.handle_input(input).is_err() {
                    return "WebRTC error";
                }
            }
            r = recv_opt(phone.as_ref().map(|p| p.sockets.rtp_socket()), &mut rtp_buf) => {
                let Ok((n, source)) = r else { continue };
                let Some(phone) = phone.as_mut() else { continue };
                // RTP only (version 2, CSRCs and an extension skipped, padding dropped, RTCP on
                // the RTP port refused) before the source can latch.
                let packet = &rtp_buf[..n];
                let Ok(header) = parse_rtp(packet) else { continue };
                // Symmetric RTP: answer where the phone really sends from, and only hear it.
                match latch.on_packet(LatchKind::Rtp, source, Instant::now()) {
                    Verdict::Drop(reason) => {
                        tracing::trace!(%source, ?reason, "bridge: RTP from a foreign source dropped");
                        foreign.increment(1);
                        continue;
                    }
                    Verdict::Latched { previous } => tracing::debug!(%source, ?previous, "bridge: phone RTP latched"),
                    Verdict::Accept => {}
                }
                let Some(m) = mid else { continue };
                if webrtc_pts.is_empty() {
                    // Known once the WebRTC leg negotiated (MediaAdded may follow Connected).
                    if let Some(w) = rtc.writer(m) {
                        webrtc_pts = w.payload_params().map(|p| (p.pt(), p.spec().codec)).collect();
                    }
                    if webrtc_pts.is_empty() {
                        continue;
                    }
                }
                let now = Instant::now();
                let Some(to) = phone.media.from_phone(&header, packet) else { continue };
                // The WebRTC side may have taken only the other law: then re-code.
                let Some((pt, law)) = choose_payload(&webrtc_pts, to.law) else { continue };
                let payload = to.law.transcode(&to.payload, law);
                let Some(mut w) = rtc.writer(m) else { continue };
                if let Some(ev) = to.event {
                    // str0m sends the RFC 4733 packets for it, attached to this frame.
                    let duration = Duration::from_millis(u64::from(ev.duration) / 8);
                    w = w.telephone_event(TelephoneEvent { event: ev.event, end: true, volume: ev.volume, duration });
                }
                let time = MediaTime::new(u64::from(to.timestamp), Frequency::EIGHT_KHZ);
                if let Err(e) = w.write(pt, now, time, payload) {
                    tracing::debug!(error = %e, "bridge: cannot write to the WebRTC leg");
                    continue;
                }
                // str0m releases queued media on its next input: give it one right after the
                // drain (≈ 1 ms of added delay otherwise, waiting for the timer tick).
                kick = true;
            }
            // RTCP from the phone is not forwarded (str0m makes its own reports): drain it, and
            // count what comes from elsewhere as the relay does.
            r = recv_opt(phone.as_ref().map(|p| p.sockets.rtcp_socket()), &mut rtcp_buf) => {
                if let Ok((n, source)) = r
                    && rtcp_packets(&rtcp_buf[..n]).next().is_some_and(|p| p.is_ok())
                    && !latch.on_packet(LatchKind::Rtcp, source, Instant::now()).accepted()
                {
                    foreign.increment(1);
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(BridgeCmd::PhoneRemote(addr)) => {
                    if latch.set_signalled(Some(addr)) {
                        tracing::debug!(%addr, "bridge: phone leg re-pointed by signalling");
                    }
                }
                Some(BridgeCmd::Attach(leg, remote)) => {
                    *phone = Some(leg);
                    if remote.is_some() {
                        latch.set_signalled(remote);
                    }
                }
                Some(BridgeCmd::RemoteCandidate(line)) => {
                    let line = line.strip_prefix("a=").unwrap_or(&line);
                    match Candidate::from_sdp_string(line) {
                        Ok(c) => {
                            // The far end may send to our relayed addresses from there.
                            if let Some(turn) = session.as_mut().and_then(|s| s.turn.as_mut()) {
                                turn.relays.permit(c.addr().ip(), Instant::now());
                                turn.flush(ice);
                            }
                            rtc.add_remote_candidate(c);
                            burst = ICE_BURST;
                        }
                        Err(e) => tracing::debug!(error = %e, "session: unusable remote candidate"),
                    }
                }
                Some(BridgeCmd::Dc(text)) => {
                    if let Some(s) = session.as_mut() {
                        match s.dc.and_then(|id| rtc.channel(id)) {
                            Some(mut ch) => {
                                let _ = ch.write(false, text.as_bytes());
                            }
                            None => s.dc_queue.push(text),
                        }
                        kick = true;
                    }
                }
                Some(BridgeCmd::Stop) | None => {
                    // RTCP BYE + DTLS close_notify, so the caller's side sees the end too.
                    let _ = rtc.close();
                    while let Ok(o) = rtc.poll_output() {
                        match o {
                            Output::Transmit(t) => transmit(&t, ice, session),
                            Output::Timeout(_) => break,
                            Output::Event(_) => {}
                        }
                    }
                    return "stopped";
                }
            },
            Some((id, ev)) = stream_rx.recv() => {
                let Some(turn) = session.as_mut().and_then(|s| s.turn.as_mut()) else { continue };
                let now = Instant::now();
                match ev {
                    StreamEvent::Connected(local) => turn.relays.stream_connected(id, local, now),
                    StreamEvent::Data(data) => turn.relays.stream_data(id, &data, now),
                    StreamEvent::Closed(why) => {
                        turn.streams.remove(&id);
                        turn.relays.stream_closed(id, &why, now);
                    }
                }
                turn.flush(ice);
                if turn.deliver(rtc, &mut admit).is_err() {
                    return "WebRTC error";
                }
            }
            _ = tokio::time::sleep(wait) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return "WebRTC error";
                }
            }
        }
    }
}

/// Which datagrams str0m gets.
///
/// Not only what `Rtc::accepts` takes: that is meant to pick one of many `Rtc`s sharing a socket,
/// and it refuses DTLS (and media) from an address until *our own* check on a pair with it has
/// succeeded. The caller is the controlling agent and starts DTLS as soon as *its* check succeeds,
/// which is usually first (our check to it may still be on its way, or lost to its NAT), so its
/// first DTLS flight was dropped here and came again only after its retransmission timer: 50 ms
/// and doubling in Chromium, a whole second in str0m (the headless client, another gateway).
/// This socket belongs to one session, so also admit anything from an address that has sent us
/// an ICE message str0m authenticated (it knows the ICE password of our answer). str0m holds its
/// DTLS answer until ICE has nominated a pair, so nothing goes back to an unchecked address.
#[derive(Default)]
struct Admit {
    /// Sources of authenticated STUN (a handful per call: host, server-reflexive, relayed).
    peers: Vec<SocketAddr>,
}

impl Admit {
    fn admit(&mut self, rtc: &Rtc, input: &Input, data: &[u8]) -> bool {
        let Input::Receive(_, r) = input else { return true };
        let accepted = rtc.accepts(input);
        // RFC 7983: a first byte of 0..=3 is STUN; `accepts` checked its MESSAGE-INTEGRITY.
        if data.first().is_some_and(|b| *b < 4) {
            if accepted && !self.peers.contains(&r.source) {
                if self.peers.len() >= 16 {
                    self.peers.remove(0);
                }
                self.peers.push(r.source);
            }
            return accepted;
        }
        accepted || self.peers.contains(&r.source)
    }
}

/// ICE timing of a leg (str0m's `is` agent), measured in the NAT lab (bench/README.md, "Calls
/// across NATs"): the caller (controlling) nominates the first pair that works for *it*, and we
/// act on that only once *our* check on the pair has succeeded. Our first check towards a NAT'd
/// caller is usually lost (its NAT has not seen it send to us yet), and str0m re-checks a pair,
/// nominated or not, only when its retransmission comes due (it does not check a freshly
/// nominated pair at once: the pair keeps its cached deadline). With the default 250 ms initial
/// RTO that cost a quarter to half a second per call; 50 ms bounds it (doubling from there, an
/// unreachable pair still gets its 9 checks, over ~15 s instead of ~21 s).
const ICE_INITIAL_RTO: Duration = Duration::from_millis(50);
/// str0m paces checks at one per Ta of 50 ms; with ~20 pairs (host, server-reflexive and relayed
/// candidates on both sides) the pair that works got its first check hundreds of ms late.
/// RFC 8445 §14.2 allows Ta down to 5 ms.
const STR0M_TA: Duration = Duration::from_millis(50);
const ICE_PACE: Duration = Duration::from_millis(5);
/// At most this many checks sent at once when candidates are added (one per new pair).
const ICE_BURST: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_stun_and_turn_plans_with_their_entry_s_credentials() {
        use trunkline_media::turn::{TurnTransport as T, TurnUrl};
        use trunkline_protocol::IceServer;
        let servers = vec![
            IceServer { urls: vec!["stun:203.0.113.10:3478".into()], username: None, credential: None },
            IceServer {
                urls: vec![
                    "turn:203.0.113.10:3478?transport=udp".into(),
                    "turn:203.0.113.10:3478?transport=tcp".into(),
                    "turns:turn.example.com:443?transport=tcp".into(),
                    "turns:x:443?transport=udp".into(),
                ],
                username: Some("1796285093:hq".into()),
                credential: Some("c3VwZXJzZWNyZXQ=".into()),
            },
            // TURN without credentials is of no use; its STUN URL still is.
            IceServer { urls: vec!["turn:198.51.100.1".into(), "stun:198.51.100.1".into()], username: None, credential: None },
        ];
        let (stun, turn) = ice_plan(&servers);
        assert_eq!(stun, vec![("203.0.113.10".to_string(), 3478), ("198.51.100.1".to_string(), 3478)]);
        let u = |transport, host: &str, port| TurnUrl { transport, host: host.into(), port };
        let cred = |url| (url, "1796285093:hq".to_string(), "c3VwZXJzZWNyZXQ=".to_string());
        assert_eq!(
            turn,
            vec![
                cred(u(T::Udp, "203.0.113.10", 3478)),
                cred(u(T::Tcp, "203.0.113.10", 3478)),
                cred(u(T::Tls, "turn.example.com", 443)),
            ]
        );
        // What a session gets never shows the credential.
        let ice = SessionIce {
            turn: vec![TurnServer::new(
                T::Udp,
                "203.0.113.10:3478".parse().unwrap(),
                "203.0.113.10",
                "1796285093:hq",
                "c3VwZXJzZWNyZXQ=",
            )],
            ..Default::default()
        };
        assert!(!format!("{ice:?}").contains("c3VwZXJzZWNyZXQ"));
    }

    #[test]
    fn candidate_ips_of_an_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
                   a=candidate:1 1 udp 2130706175 10.77.1.2 40000 typ host\r\n\
                   a=candidate:2 1 udp 1694498559 203.0.113.101 40000 typ srflx raddr 10.77.1.2 rport 40000\r\n\
                   a=candidate:3 1 udp 16777215 203.0.113.10 49170 typ relay raddr 0.0.0.0 rport 0\r\n\
                   a=rtpmap:0 PCMU/8000\r\n";
        let ips: Vec<String> = candidate_ips(sdp).iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.77.1.2", "203.0.113.101", "203.0.113.10"]);
    }

    #[tokio::test]
    async fn the_phone_is_offered_the_webrtc_law_first_and_answered_in_its_own() {
        let alloc = Arc::new(PortAllocator::new(40000..=60999, "127.0.0.1".parse().unwrap()).unwrap());
        let mut b = DriverBridges::new(alloc.clone(), "192.0.2.7".parse().unwrap(), Default::default(), Default::default());
        let sockets = || alloc.allocate().unwrap();
        // F1: an offer, A-law first because the browser's answer put it first.
        let (offer, leg) = b.phone_side(3, sockets(), Law::A, None).unwrap();
        let audio = Sdp::parse(&offer).unwrap().audio.unwrap();
        assert_eq!((audio.payload_types.clone(), audio.telephone_event_pt()), (vec![8, 0, PHONE_TE_PT], Some(PHONE_TE_PT)));
        assert_eq!((leg.media.law(), leg.media.telephone_event_pt()), (Law::A, Some(PHONE_TE_PT)));
        // C3/F2: the phone's offer decides; its own telephone-event PT is kept.
        let phone = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 18 0 8 96\r\na=rtpmap:96 telephone-event/8000\r\n";
        let (answer, leg) = b.phone_side(4, sockets(), Law::A, Some(phone)).unwrap();
        let parsed = Sdp::parse(&answer).unwrap();
        assert_eq!(parsed.audio.as_ref().unwrap().payload_types, vec![0, 96]);
        assert_eq!(parsed.audio_rtp_addr().unwrap().ip().to_string(), "192.0.2.7");
        assert_eq!((leg.media.law(), leg.media.telephone_event_pt()), (Law::Mu, Some(96)));
        // No G.711: refused, as is a phone SDP that does not parse.
        let g729 = phone.replace("18 0 8 96", "18 96");
        assert!(matches!(b.phone_side(5, sockets(), Law::A, Some(&g729)), Err(BridgeError::BadOffer(_))));
        assert!(matches!(b.phone_side(6, sockets(), Law::A, Some("m=audio")), Err(BridgeError::BadOffer(_))));
    }

    #[test]
    fn first_law_of_a_webrtc_answer() {
        let answer = |pts: &str| {
            format!("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF {pts}\r\na=rtpmap:126 telephone-event/8000\r\n")
        };
        assert_eq!(first_law(&answer("126 8 0")), Some(Law::A));
        assert_eq!(first_law(&answer("0 8 126")), Some(Law::Mu));
        assert_eq!(first_law(&answer("126")), None);
        assert_eq!(first_law("not SDP"), None);
    }
}
