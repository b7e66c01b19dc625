//! A bridge's tokio task: the WebRTC leg's socket and str0m `Rtc`, the phone leg's RTP/RTCP
//! sockets, STUN probes and TURN allocations for a session, and the commands from the driver.
//! What happens to each packet between the legs (latching, law conversion, DTMF) is
//! `trunkline_media::bridge::BridgeCore`; this file only moves bytes and drives str0m.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use trunkline_media::bridge::{BridgeCore, FromPhone, FromWebRtc};
use trunkline_media::latch::{DropReason, drop_counter};
use trunkline_media::ports::{LegSockets, send_now};
use trunkline_media::rtp::DtmfEvent;
use trunkline_media::srflx::{ProbeEvent, ProbeTiming, SrflxProbe};
use trunkline_media::turn::{RelayEvent, Relays, StreamId};
use trunkline_media::webrtc::{choose_payload, law_of};

use super::turn::{StreamEvent, Turn};
use super::{BridgeCmd, DIRECT_CHANNEL, ICE_BURST, ICE_PACE, PendingBridge, STR0M_TA, SessionEvent, SessionIce};

/// How long an F2 caller's session waits for its DataChannel before the call fails.
const SESSION_OPEN_WAIT: Duration = Duration::from_secs(20);

/// How long a session waits for its key before it gives up (the key's own TTL is shorter).
const SESSION_KEY_WAIT: Duration = Duration::from_secs(60);

/// How long a connected WebRTC leg may send nothing at all before the call is ended. A live
/// browser sends media every 20 ms, and besides that RTCP and an ICE consent check every few
/// seconds (RFC 7675 lets consent lapse 30 s after the last answer), so 30 s of silence means
/// it is gone: a closed tab, a lost network. Its goodbye (DTLS close, SCTP abort) is one
/// datagram that may never arrive, and str0m does not give up a nominated pair by itself; without
/// this the desk phone would stay in the call, busy to every later caller.
const WEBRTC_SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// While the phone's audio flows (a frame every 20 ms), each frame gives str0m a timeout input,
/// which runs every timer of its that is due (RTCP reports, NACK, ICE consent, SCTP). Its own
/// deadlines (one about every 33 ms on an audio call) then need no wake-up of their own: they
/// are held back to this long after the last frame, so they only fire when the phone goes quiet.
const MEDIA_TIMER_SLACK: Duration = Duration::from_millis(30);

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

/// What woke a bridge task: one datagram, command, TURN stream event or the timer.
enum Wake {
    Ice(std::io::Result<(usize, SocketAddr)>),
    Rtp(std::io::Result<(usize, SocketAddr)>),
    Rtcp(std::io::Result<(usize, SocketAddr)>),
    Cmd(Option<BridgeCmd>),
    Stream(StreamId, StreamEvent),
    Timer,
}

struct Sockets<'a> {
    ice: &'a UdpSocket,
    rtp: Option<&'a UdpSocket>,
    rtcp: Option<&'a UdpSocket>,
}

struct Bufs<'a> {
    ice: &'a mut [u8],
    rtp: &'a mut [u8],
    rtcp: &'a mut [u8],
}

/// One datagram from `sock` (never ready without a socket).
fn poll_recv(cx: &mut Context<'_>, sock: Option<&UdpSocket>, buf: &mut [u8]) -> Poll<std::io::Result<(usize, SocketAddr)>> {
    let Some(sock) = sock else { return Poll::Pending };
    let mut rb = ReadBuf::new(buf);
    sock.poll_recv_from(cx, &mut rb).map_ok(|from| (rb.filled().len(), from))
}

/// The bridge task's wait, polled by hand rather than with `select!`: that macro builds a
/// `recv_from` future per socket on every turn, and each one not ready links itself into the
/// socket's waiter list under its lock and unlinks itself when dropped, twice or three times
/// per forwarded packet. `poll_recv_from` keeps one waker slot per socket instead. The first
/// source polled rotates with `rotation`, so a flooded socket cannot starve the others (as
/// `select!`'s random start ensures).
fn poll_wake(
    cx: &mut Context<'_>,
    rotation: u32,
    sockets: Sockets<'_>,
    bufs: Bufs<'_>,
    cmds: &mut mpsc::UnboundedReceiver<BridgeCmd>,
    stream_rx: &mut mpsc::UnboundedReceiver<(StreamId, StreamEvent)>,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Poll<Wake> {
    for i in 0..6u32 {
        let ready = match rotation.wrapping_add(i) % 6 {
            0 => poll_recv(cx, Some(sockets.ice), bufs.ice).map(Wake::Ice),
            1 => poll_recv(cx, sockets.rtp, bufs.rtp).map(Wake::Rtp),
            2 => poll_recv(cx, sockets.rtcp, bufs.rtcp).map(Wake::Rtcp),
            3 => cmds.poll_recv(cx).map(Wake::Cmd),
            // Closed (no TURN in this call): never ready.
            4 => match stream_rx.poll_recv(cx) {
                Poll::Ready(Some((id, ev))) => Poll::Ready(Wake::Stream(id, ev)),
                _ => Poll::Pending,
            },
            _ => timer.as_mut().poll(cx).map(|()| Wake::Timer),
        };
        if ready.is_ready() {
            return ready;
        }
    }
    Poll::Pending
}

pub(super) async fn run(
    p: PendingBridge,
    phone_remote: Option<SocketAddr>,
    mut cmds: mpsc::UnboundedReceiver<BridgeCmd>,
    session: Option<(SessionIce, Option<String>, mpsc::UnboundedSender<SessionEvent>)>,
) {
    let PendingBridge { mut rtc, ice, candidate, phone, offer: _, mid, remote_ips } = p;
    let (mut phone, media) = match phone {
        Some(leg) => (Some(leg.sockets), Some(leg.media)),
        None => (None, None),
    };
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
    let mut core = BridgeCore::new(media, phone_remote);
    let why = run_loop(&mut rtc, ice, candidate, &mut phone, &mut core, &mut cmds, &mut session, mid, &mut stream_rx).await;
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

/// The payload types the WebRTC leg's far end took, with their codecs.
fn negotiated(rtc: &Rtc, mid: Mid) -> Vec<(Pt, Codec)> {
    let Some(media) = rtc.media(mid) else { return vec![] };
    let remote = media.remote_pts();
    rtc.codec_config().params().iter().filter(|p| remote.contains(&p.pt())).map(|p| (p.pt(), p.spec().codec)).collect()
}

/// The sequence numbers of the RTP the WebRTC leg sends: in str0m's RTP mode they are ours.
/// The first is random (RFC 3550 §5.1); the extended count carries SRTP's rollover counter.
struct TxSeq(u64);

impl TxSeq {
    fn new() -> TxSeq {
        TxSeq(u64::from(rand::random::<u16>() & 0x7fff))
    }

    fn next(&mut self) -> SeqNo {
        let n = self.0;
        self.0 += 1;
        n.into()
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    rtc: &mut Rtc,
    ice: &tokio::net::UdpSocket,
    candidate: SocketAddr,
    phone: &mut Option<LegSockets>,
    core: &mut BridgeCore,
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
    let mut tx_seq = TxSeq::new();
    let mut ice_buf = vec![0u8; 2000];
    let mut rtp_buf = vec![0u8; 2000];
    let mut rtcp_buf = vec![0u8; 2000];
    let started = Instant::now();
    let mut kick = false;
    // Datagrams came through a TURN relay and wait to be handed to str0m.
    let mut relay_pending = false;
    let mut admit = Admit::default();
    let mut ice_checking = true;
    let mut burst = 0u32;
    // When the phone's last frame went to str0m (with a timeout input).
    let mut last_frame: Option<Instant> = None;
    // When str0m last took a datagram from the WebRTC peer, and whether the leg ever connected.
    let mut last_heard = Instant::now();
    let mut connected = false;
    // One timer for the task's life, moved when str0m's deadline moves.
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut rotation = 0u32;
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
                        connected = true;
                        if let Some(m) = mid {
                            webrtc_pts = negotiated(rtc, m);
                        }
                        tracing::debug!(after = ?started.elapsed(), "bridge: WebRTC leg connected");
                    }
                    Event::IceConnectionStateChange(state) => {
                        ice_checking = matches!(state, IceConnectionState::New | IceConnectionState::Checking);
                        if state == IceConnectionState::Disconnected {
                            tracing::debug!("bridge: WebRTC leg disconnected");
                        }
                    }
                    Event::RtpPacket(p) => {
                        let Some(sockets) = phone.as_ref() else { continue };
                        if webrtc_pts.is_empty()
                            && let Some(m) = mid
                        {
                            webrtc_pts = negotiated(rtc, m);
                        }
                        let pt = p.header.payload_type;
                        let Some(codec) = webrtc_pts.iter().find(|(x, _)| *x == pt).map(|(_, c)| *c) else { continue };
                        let timestamp = p.header.timestamp;
                        let mut to_phone = |frame| {
                            if let Some(out) = core.from_webrtc(frame) {
                                for pkt in out.packets {
                                    let _ = send_now(sockets.rtp_socket(), &pkt, out.to);
                                }
                            }
                        };
                        if let Some(law) = law_of(codec) {
                            to_phone(FromWebRtc::Audio { law, timestamp, payload: &p.payload });
                        } else if codec == Codec::Tele {
                            // RFC 4733 §2.5.1.4: a packet may carry several events back to back,
                            // each starting where the one before it ended.
                            let mut at = timestamp;
                            for report in p.payload.chunks_exact(4) {
                                let Some(event) = DtmfEvent::parse(report) else { break };
                                to_phone(FromWebRtc::Event { event, timestamp: at });
                                at = at.wrapping_add(u32::from(event.duration));
                            }
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
        // One clock read for this turn's ICE pacing, silence check and the timer's 1 s cap below.
        let turn_now = Instant::now();
        // While checking, drive ICE every ICE_PACE instead of its own Ta of 50 ms (a deadline
        // within Ta is str0m saying "a check is due, but not before Ta").
        if ice_checking && next_timeout <= turn_now + STR0M_TA {
            next_timeout = next_timeout.min(turn_now + ICE_PACE);
        }
        // Once connected, the leg's own silence ends it (the setup has its deadlines below).
        if connected {
            let silent_until = last_heard + WEBRTC_SILENCE_LIMIT;
            if turn_now >= silent_until {
                tracing::info!(after = ?WEBRTC_SILENCE_LIMIT, "bridge: nothing from the WebRTC peer; ending the call");
                let _ = rtc.close();
                return "the WebRTC peer went silent";
            }
            next_timeout = next_timeout.min(silent_until);
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
        // What came through the relays, one datagram per turn: in RTP mode str0m holds one
        // received packet for the next `poll_output`, so each must be drained before the next.
        if relay_pending {
            match session.as_mut().and_then(|s| s.turn.as_mut()).map(|t| t.deliver_one(rtc, &mut admit)) {
                Some(Err(())) => return "WebRTC error",
                Some(Ok(true)) => {
                    last_heard = Instant::now();
                    continue;
                }
                _ => relay_pending = false,
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
        // Not while ICE checks (a restart): those keep their own pace.
        if !ice_checking && let Some(t) = last_frame {
            next_timeout = next_timeout.max(t + MEDIA_TIMER_SLACK);
        }
        let deadline = tokio::time::Instant::from_std(next_timeout.min(turn_now + Duration::from_secs(1)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        rotation = rotation.wrapping_add(1);
        let wake = std::future::poll_fn(|cx| {
            let sockets =
                Sockets { ice, rtp: phone.as_ref().map(|p| p.rtp_socket()), rtcp: phone.as_ref().map(|p| p.rtcp_socket()) };
            let bufs = Bufs { ice: &mut ice_buf, rtp: &mut rtp_buf, rtcp: &mut rtcp_buf };
            poll_wake(cx, rotation, sockets, bufs, cmds, stream_rx, timer.as_mut())
        })
        .await;
        match wake {
            Wake::Ice(r) => {
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
                    relay_pending = true;
                    continue;
                }
                let Some(destination) = ice_local else { continue };
                let Ok(contents) = ice_buf[..n].try_into() else { continue };
                let now = Instant::now();
                let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
                if admit.admit(rtc, &input, &ice_buf[..n]) {
                    if rtc.handle_input(input).is_err() {
                        return "WebRTC error";
                    }
                    last_heard = now;
                }
            }
            Wake::Rtp(r) => {
                let Ok((n, source)) = r else { continue };
                // Symmetric RTP: answer where the phone really sends from, and only hear it.
                let before = core.latched();
                let from_phone = core.on_phone_rtp(source, &rtp_buf[..n], Instant::now());
                if core.latched() != before {
                    tracing::debug!(%source, previous = ?before, "bridge: phone RTP latched");
                }
                let to = match from_phone {
                    FromPhone::Forward(to) => to,
                    FromPhone::Dropped(reason) => {
                        tracing::trace!(%source, ?reason, "bridge: RTP from a foreign source dropped");
                        foreign.increment(1);
                        continue;
                    }
                    FromPhone::Nothing | FromPhone::Invalid => continue,
                };
                let Some(m) = mid else { continue };
                if webrtc_pts.is_empty() {
                    // Known once the WebRTC leg negotiated (MediaAdded may follow Connected).
                    webrtc_pts = negotiated(rtc, m);
                    if webrtc_pts.is_empty() {
                        continue;
                    }
                }
                let now = Instant::now();
                // The WebRTC side may have taken only the other law: then re-code.
                let Some((pt, law)) = choose_payload(&webrtc_pts, to.law) else { continue };
                let payload = to.law.transcode(&to.payload, law);
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(m, None) else { continue };
                tx.write_rtp(RtpWrite::new(pt, tx_seq.next(), to.timestamp, now, &*payload));
                if let Some(ev) = to.event
                    && let Some(te) = webrtc_pts.iter().find(|(_, c)| *c == Codec::Tele).map(|(pt, _)| *pt)
                {
                    // The phone's key has ended: the whole event at once, at its own timestamp. A
                    // first packet marked as its start (receivers such as baresip report a key on
                    // a packet without the end bit), then the end packet three times (RFC 4733
                    // retransmits the final packet).
                    let start = DtmfEvent { end: false, ..ev }.to_bytes();
                    tx.write_rtp(RtpWrite::new(te, tx_seq.next(), to.timestamp, now, &start[..]).marker(true));
                    let end = DtmfEvent { end: true, ..ev }.to_bytes();
                    for _ in 0..3 {
                        tx.write_rtp(RtpWrite::new(te, tx_seq.next(), to.timestamp, now, &end[..]));
                    }
                }
                // str0m's pacer releases queued media on its next input: give it one now, not
                // on the timer (≈ 1 ms later). Now rather than after another drain: each
                // `poll_output` polls every part of str0m (the idle SCTP association too), and
                // one that can only answer `Timeout` was a fifth of the forwarding's polls.
                if rtc.handle_input(Input::Timeout(now)).is_err() {
                    return "WebRTC error";
                }
                last_frame = Some(now);
            }
            // RTCP from the phone is not forwarded (str0m makes its own reports): drain it, and
            // count what comes from elsewhere as the relay does.
            Wake::Rtcp(r) => {
                if let Ok((n, source)) = r
                    && core.on_phone_rtcp(source, &rtcp_buf[..n], Instant::now()).is_some()
                {
                    foreign.increment(1);
                }
            }
            Wake::Cmd(cmd) => match cmd {
                Some(BridgeCmd::PhoneRemote(addr)) => {
                    if core.set_signalled(Some(addr)) {
                        tracing::debug!(%addr, "bridge: phone leg re-pointed by signalling");
                    }
                }
                Some(BridgeCmd::Attach(leg, remote)) => {
                    *phone = Some(leg.sockets);
                    core.attach(leg.media, remote);
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
            Wake::Stream(id, ev) => {
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
                relay_pending = true;
            }
            Wake::Timer => {
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
pub(super) struct Admit {
    /// Sources of authenticated STUN (a handful per call: host, server-reflexive, relayed).
    peers: Vec<SocketAddr>,
}

impl Admit {
    pub(super) fn admit(&mut self, rtc: &Rtc, input: &Input, data: &[u8]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(w: &Wake) -> &'static str {
        match w {
            Wake::Ice(_) => "ice",
            Wake::Rtp(_) => "rtp",
            Wake::Rtcp(_) => "rtcp",
            Wake::Cmd(_) => "cmd",
            Wake::Stream(..) => "stream",
            Wake::Timer => "timer",
        }
    }

    /// In RTP mode the WebRTC leg's sequence numbers are ours: consecutive from a random start
    /// low enough to leave the first rollover far off, and on past 65,535 into SRTP's rollover
    /// counter (the extended number) rather than back to zero.
    #[test]
    fn the_webrtc_legs_sequence_numbers_count_on_through_the_rollover() {
        for _ in 0..100 {
            assert!(*TxSeq::new().next() < 0x8000);
        }
        let mut seq = TxSeq(0xfffe);
        let got: Vec<u64> = (0..3).map(|_| *seq.next()).collect();
        assert_eq!(got, [0xfffe, 0xffff, 0x1_0000]);
    }

    /// A caller flooding the WebRTC socket must not starve the phone's RTP (nor the commands):
    /// each source gets its turn to be polled first.
    #[tokio::test]
    async fn a_flooded_socket_does_not_starve_the_others() {
        let bind = || async { UdpSocket::bind("127.0.0.1:0").await.unwrap() };
        let (ice, rtp, rtcp, peer) = (bind().await, bind().await, bind().await, bind().await);
        for _ in 0..200 {
            peer.send_to(b"flood", ice.local_addr().unwrap()).await.unwrap();
        }
        peer.send_to(b"rtp", rtp.local_addr().unwrap()).await.unwrap();
        // The reactor knows both are readable before the first turn.
        ice.readable().await.unwrap();
        rtp.readable().await.unwrap();
        let (cmd_tx, mut cmds) = mpsc::unbounded_channel();
        cmd_tx.send(BridgeCmd::Stop).unwrap();
        let (_stream_tx, mut stream_rx) = mpsc::unbounded_channel();
        let mut timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let (mut ice_buf, mut rtp_buf, mut rtcp_buf) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        let mut seen = vec![];
        for rotation in 0..6u32 {
            let wake = std::future::poll_fn(|cx| {
                let sockets = Sockets { ice: &ice, rtp: Some(&rtp), rtcp: Some(&rtcp) };
                let bufs = Bufs { ice: &mut ice_buf, rtp: &mut rtp_buf, rtcp: &mut rtcp_buf };
                poll_wake(cx, rotation, sockets, bufs, &mut cmds, &mut stream_rx, timer.as_mut())
            })
            .await;
            if let Wake::Rtp(r) = &wake {
                let (n, _) = r.as_ref().unwrap();
                assert_eq!(&rtp_buf[..*n], b"rtp");
            }
            seen.push(kind(&wake));
        }
        assert!(seen.contains(&"rtp"), "the phone's RTP was never taken: {seen:?}");
        assert!(seen.contains(&"cmd"), "the command was never taken: {seen:?}");
        assert!(seen.contains(&"ice"), "{seen:?}");
        assert!(!seen.contains(&"timer") && !seen.contains(&"stream"), "nothing else was ready: {seen:?}");
    }
}
