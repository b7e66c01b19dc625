//! Symmetric (latching) RTP/RTCP relay between the two legs of a call.
//!
//! Each leg has a local socket pair ([`LegSockets`]) and, per socket, a remote address. A packet
//! received on leg A's RTP socket is sent unchanged from leg B's RTP socket to B's RTP remote, and
//! vice versa; the same for RTCP. Nothing is transcoded: G.711, RFC 4733 events, SRTP, whatever
//! sits behind a valid RTP v2 header passes byte for byte.
//!
//! # Where packets go: signalled vs latched remotes
//!
//! The *signalled* remote of a leg is the address from its SDP (`Relay::start`,
//! [`RelayHandle::set_remote`]); the RTCP one is RTP port + 1 unless
//! [`RelayHandle::set_rtcp_remote`] says otherwise (`a=rtcp`). Which source each socket accepts
//! packets from, and where the other leg's packets go, is the latching policy of
//! [`crate::latch`] (one [`Latch`] per leg, shared with the WebRTC bridge): the first packets
//! latch, the exact signalled address wins a leg back, and once latched no other source is ever
//! accepted, however long the leg is silent; a new SDP address re-points the leg.
//!
//! Before that policy: only packets that look like RTP/RTCP version 2 count ([`crate::rtp`]): on
//! an RTP socket a well-formed RTP header, or an RTCP one (rtcp-mux); on an RTCP socket a
//! well-formed first RTCP packet (only the first: SRTCP encrypts what follows). Anything else
//! (STUN, keep-alive junk, truncated datagrams) is dropped and counted as `dropped_invalid`; it
//! never latches. A source equal to one of the relay's own sockets is never accepted (no loops).
//! Packets from a foreign source are counted as `dropped_foreign` and in the process's
//! `trunkline_rtp_dropped_total{reason="foreign_source"}`. No destination for the other leg yet:
//! the packet is dropped (`dropped_no_remote`). [`RelayHandle::unlatch`] forgets a leg's latches.
//!
//! # Cost
//!
//! One tokio task per relay polls its four sockets; one 2 KiB buffer is reused for every packet,
//! sends are direct non-blocking `sendto` calls (a full socket buffer drops the packet, as RTP
//! wants), counters are plain integers published to the [`RelayHandle`] once per wake-up. No
//! allocation per packet.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{SockAddr, SockRef};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::latch::{DropReason, Kind, Latch, Verdict, canonical, drop_counter};
pub use crate::ports::LegSockets;
use crate::rtp::{RtpError, is_rtcp, parse_rtp, rtcp_packets};

/// Receive buffer size. A datagram that fills it entirely may have been truncated and is dropped.
const BUF_LEN: usize = 2048;
/// Datagrams taken from one socket per wake-up before yielding to other tasks.
const BATCH: usize = 32;

const RTP: usize = 0;
const RTCP: usize = 1;

/// One side of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    fn idx(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// Tunables of a relay. None left: a silence-based re-latch (a latched leg silent for a while
/// could be taken over by any source) was removed, see [`crate::latch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {}

/// A snapshot of a relay's counters. Packet and byte counts include RTP and RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Packets received on leg A and sent to leg B.
    pub a_to_b_packets: u64,
    /// Packets received on leg B and sent to leg A.
    pub b_to_a_packets: u64,
    /// Bytes of the forwarded packets (UDP payload), both directions.
    pub bytes: u64,
    /// All packets not forwarded: the sum of the four `dropped_*` counters.
    pub dropped: u64,
    /// Valid packets whose destination leg has no remote address yet.
    pub dropped_no_remote: u64,
    /// Datagrams that do not look like RTP/RTCP v2 (or were too big), and receive errors.
    pub dropped_invalid: u64,
    /// Valid packets from a source other than the latched one (see [`crate::latch`]).
    pub dropped_foreign: u64,
    /// `sendto` failures (socket buffer full, unreachable network, …).
    pub dropped_send_error: u64,
    /// The latched RTP source of leg A (where A's RTP now goes).
    pub latched_a: Option<SocketAddr>,
    pub latched_b: Option<SocketAddr>,
    pub latched_a_rtcp: Option<SocketAddr>,
    pub latched_b_rtcp: Option<SocketAddr>,
    /// Last accepted (valid, from the latched source) RTP or RTCP packet from leg A.
    pub last_from_a: Option<Instant>,
    pub last_from_b: Option<Instant>,
    /// The later of `last_from_a` and `last_from_b`.
    pub last_packet_at: Option<Instant>,
    /// False once the relay has stopped.
    pub running: bool,
}

/// Starts relays. See the module documentation for the forwarding and latching rules.
pub struct Relay;

impl Relay {
    /// Start relaying between `a` and `b` with [`RelayConfig::default`]. `a_remote`/`b_remote`
    /// are the RTP addresses from each leg's SDP, if known (RTCP: port + 1). An unspecified IP
    /// (`0.0.0.0`) or port 0 counts as unknown.
    ///
    /// Spawns one task on the current tokio runtime; panics outside a runtime (like
    /// `tokio::spawn`).
    pub fn start(a: LegSockets, b: LegSockets, a_remote: Option<SocketAddr>, b_remote: Option<SocketAddr>) -> RelayHandle {
        Self::start_with(RelayConfig::default(), a, b, a_remote, b_remote)
    }

    /// [`Relay::start`] with explicit tunables.
    pub fn start_with(
        config: RelayConfig,
        a: LegSockets,
        b: LegSockets,
        a_remote: Option<SocketAddr>,
        b_remote: Option<SocketAddr>,
    ) -> RelayHandle {
        let started = Instant::now();
        let shared = Arc::new(Shared::new(started));
        let (tx, rx) = mpsc::unbounded_channel();
        let locals = [a.rtp_local_addr(), a.rtcp_local_addr(), b.rtp_local_addr(), b.rtcp_local_addr()];
        let _ = config;
        let mut state = State::new(locals);
        for (leg, remote) in [(0, a_remote), (1, b_remote)] {
            state.set_remote(leg, remote);
        }
        let task =
            RelayTask { io: Some([a, b]), buf: Box::new([0u8; BUF_LEN]), commands: rx, shared: Arc::clone(&shared), state };
        let task = tokio::spawn(task);
        RelayHandle { tx, shared, task: Some(task) }
    }
}

enum Command {
    SetRemote(Leg, Option<SocketAddr>),
    SetRtcpRemote(Leg, Option<SocketAddr>),
    Unlatch(Leg),
    Stop,
}

/// Controls a running relay. Dropping it stops the relay (its sockets close and pooled ports go
/// back to their allocator).
#[derive(Debug)]
pub struct RelayHandle {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// The RTP address from `leg`'s (new) SDP; its RTCP address becomes port + 1 (call
    /// [`set_rtcp_remote`](Self::set_rtcp_remote) afterwards for an `a=rtcp`). An unspecified IP
    /// or port 0 (hold, rejected stream) clears it. Latched addresses stay in force.
    pub fn set_remote(&self, leg: Leg, rtp: SocketAddr) {
        let _ = self.tx.send(Command::SetRemote(leg, Some(rtp)));
    }

    /// The RTCP address from `leg`'s `a=rtcp` attribute.
    pub fn set_rtcp_remote(&self, leg: Leg, rtcp: SocketAddr) {
        let _ = self.tx.send(Command::SetRtcpRemote(leg, Some(rtcp)));
    }

    /// Forget `leg`'s signalled RTP and RTCP addresses.
    pub fn clear_remote(&self, leg: Leg) {
        let _ = self.tx.send(Command::SetRemote(leg, None));
    }

    /// Forget what `leg` latched onto (RTP and RTCP): its next valid packet latches again, from
    /// any source. For when the leg's endpoint really changed (e.g. a re-INVITE from another
    /// device).
    pub fn unlatch(&self, leg: Leg) {
        let _ = self.tx.send(Command::Unlatch(leg));
    }

    /// Current counters (published by the relay once per wake-up, so a packet just forwarded may
    /// not be counted yet).
    pub fn stats(&self) -> RelayStats {
        self.shared.snapshot()
    }

    /// Time since the last accepted packet from either leg, or since the start if none came yet.
    pub fn idle_for(&self) -> Duration {
        self.shared.last_activity().elapsed()
    }

    /// Resolves once no accepted packet has arrived from either leg for `timeout` (media
    /// inactivity: hang up the call). Costs one timer, not a wake-up per packet. After a stop
    /// nothing flows, so it resolves too.
    pub async fn inactive(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }

    /// Whether the relay task is still running.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Relaxed)
    }

    /// Ask the relay to stop (idempotent). It stops at its next wake-up, which is immediate.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// Stop and wait until the relay has closed its sockets (pooled ports are back in their
    /// allocator when this returns).
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        // Dropping `tx` alone would stop the task too; say it explicitly.
        self.stop();
    }
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    running: AtomicBool,
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
    bytes: AtomicU64,
    dropped_no_remote: AtomicU64,
    dropped_invalid: AtomicU64,
    dropped_foreign: AtomicU64,
    dropped_send_error: AtomicU64,
    /// Microseconds since `started` + 1 of the last accepted packet per leg; 0 = none.
    last_rx_us: [AtomicU64; 2],
    /// [A RTP, A RTCP, B RTP, B RTCP]; written only when a latch changes.
    latched: Mutex<[Option<SocketAddr>; 4]>,
}

impl Shared {
    fn new(started: Instant) -> Self {
        Self {
            started,
            running: AtomicBool::new(true),
            a_to_b: AtomicU64::new(0),
            b_to_a: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped_no_remote: AtomicU64::new(0),
            dropped_invalid: AtomicU64::new(0),
            dropped_foreign: AtomicU64::new(0),
            dropped_send_error: AtomicU64::new(0),
            last_rx_us: [AtomicU64::new(0), AtomicU64::new(0)],
            latched: Mutex::new([None; 4]),
        }
    }

    fn instant(&self, us_plus_one: u64) -> Option<Instant> {
        let us = us_plus_one.checked_sub(1)?;
        self.started.checked_add(Duration::from_micros(us))
    }

    fn to_us(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    fn last_activity(&self) -> Instant {
        let us = self.last_rx_us[0].load(Relaxed).max(self.last_rx_us[1].load(Relaxed));
        self.instant(us).unwrap_or(self.started)
    }

    fn snapshot(&self) -> RelayStats {
        let latched = *self.latched.lock().unwrap_or_else(|e| e.into_inner());
        let (no_remote, invalid, foreign, send_error) = (
            self.dropped_no_remote.load(Relaxed),
            self.dropped_invalid.load(Relaxed),
            self.dropped_foreign.load(Relaxed),
            self.dropped_send_error.load(Relaxed),
        );
        let last_a = self.last_rx_us[0].load(Relaxed);
        let last_b = self.last_rx_us[1].load(Relaxed);
        RelayStats {
            a_to_b_packets: self.a_to_b.load(Relaxed),
            b_to_a_packets: self.b_to_a.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            dropped: no_remote + invalid + foreign + send_error,
            dropped_no_remote: no_remote,
            dropped_invalid: invalid,
            dropped_foreign: foreign,
            dropped_send_error: send_error,
            latched_a: latched[0],
            latched_b: latched[2],
            latched_a_rtcp: latched[1],
            latched_b_rtcp: latched[3],
            last_from_a: self.instant(last_a),
            last_from_b: self.instant(last_b),
            last_packet_at: self.instant(last_a.max(last_b)),
            running: self.running.load(Relaxed),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    forwarded: [u64; 2], // by source leg
    bytes: u64,
    dropped_no_remote: u64,
    dropped_invalid: u64,
    dropped_foreign: u64,
    dropped_send_error: u64,
}

struct State {
    /// Local addresses: leg * 2 + (0 RTP, 1 RTCP).
    locals: [SocketAddr; 4],
    latches: [Latch; 2],
    counters: Counters,
    /// `trunkline_rtp_dropped_total{reason="foreign_source"}`.
    foreign: metrics::Counter,
    last_rx: [Option<Instant>; 2],
    latch_changed: bool,
}

fn kind_of(kind: usize) -> Kind {
    debug_assert!(kind == RTP || kind == RTCP);
    if kind == RTP { Kind::Rtp } else { Kind::Rtcp }
}

impl State {
    fn new(locals: [SocketAddr; 4]) -> Self {
        Self {
            locals,
            latches: Default::default(),
            counters: Counters::default(),
            foreign: drop_counter(DropReason::ForeignSource),
            last_rx: [None; 2],
            latch_changed: false,
        }
    }

    fn set_remote(&mut self, leg: usize, rtp: Option<SocketAddr>) {
        let rtp = rtp.map(canonical).filter(|a| !self.is_own(*a));
        if self.latches[leg].set_signalled(rtp) {
            tracing::debug!(leg, remote = ?rtp, "media re-pointed by signalling");
            self.latch_changed = true;
        }
    }

    fn set_rtcp_remote(&mut self, leg: usize, rtcp: Option<SocketAddr>) {
        let rtcp = rtcp.map(canonical).filter(|a| !self.is_own(*a));
        self.latches[leg].set_signalled_rtcp(rtcp);
    }

    fn unlatch(&mut self, leg: usize) {
        self.latches[leg].unlatch();
        self.latch_changed = true;
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.locals.iter().any(|l| {
            l.port() == addr.port() && (canonical(*l).ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }

    /// The latching policy for a valid packet from `src` on socket (`leg`, `kind`).
    /// Returns whether the packet is accepted.
    fn accept(&mut self, leg: usize, kind: usize, src: SocketAddr, now: Instant) -> bool {
        if self.is_own(src) {
            self.counters.dropped_invalid += 1;
            return false;
        }
        match self.latches[leg].on_packet(kind_of(kind), src, now) {
            Verdict::Accept => {}
            Verdict::Latched { previous } => {
                tracing::debug!(leg, kind, %src, ?previous, "media latched");
                self.latch_changed = true;
            }
            Verdict::Drop(DropReason::ForeignSource) => {
                self.counters.dropped_foreign += 1;
                self.foreign.increment(1);
                return false;
            }
        }
        self.last_rx[leg] = Some(now);
        true
    }

    fn destination(&self, leg: usize, kind: usize) -> Option<SocketAddr> {
        self.latches[leg].destination(kind_of(kind))
    }
}

/// Whether `data` may be relayed from a socket of `kind` (see the module documentation).
fn looks_valid(kind: usize, data: &[u8]) -> bool {
    if is_rtcp(data) {
        return matches!(rtcp_packets(data).next(), Some(Ok(_)));
    }
    // The relay never reads the payload: SRTP's encrypted tail may end in any byte, so a padding
    // count that does not fit is no reason to drop it.
    kind == RTP && matches!(parse_rtp(data), Ok(_) | Err(RtpError::BadPadding { .. }))
}

/// Send `data` from `sock` (bound to an IPv6 address if `local_v6`) to `dest`.
fn send(sock: &UdpSocket, local_v6: bool, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
    let dest = match dest {
        SocketAddr::V4(v4) if local_v6 => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    };
    // Straight to the kernel: tokio's `try_send_to` refuses to try before the reactor has seen
    // the socket writable once, which would drop the first packets of a fresh socket.
    SockRef::from(sock).send_to(data, &SockAddr::from(dest))
}

struct RelayTask {
    /// `None` once stopped (sockets closed).
    io: Option<[LegSockets; 2]>,
    buf: Box<[u8; BUF_LEN]>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    state: State,
}

impl RelayTask {
    fn apply(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::SetRemote(leg, addr) => self.state.set_remote(leg.idx(), addr),
            Command::SetRtcpRemote(leg, addr) => self.state.set_rtcp_remote(leg.idx(), addr),
            Command::Unlatch(leg) => self.state.unlatch(leg.idx()),
            Command::Stop => return false,
        }
        true
    }

    fn publish(&mut self) {
        let (c, sh) = (&self.state.counters, &self.shared);
        sh.a_to_b.store(c.forwarded[0], Relaxed);
        sh.b_to_a.store(c.forwarded[1], Relaxed);
        sh.bytes.store(c.bytes, Relaxed);
        sh.dropped_no_remote.store(c.dropped_no_remote, Relaxed);
        sh.dropped_invalid.store(c.dropped_invalid, Relaxed);
        sh.dropped_foreign.store(c.dropped_foreign, Relaxed);
        sh.dropped_send_error.store(c.dropped_send_error, Relaxed);
        for leg in 0..2 {
            if let Some(t) = self.state.last_rx[leg] {
                sh.last_rx_us[leg].store(sh.to_us(t), Relaxed);
            }
        }
        if std::mem::take(&mut self.state.latch_changed) {
            let l = &self.state.latches;
            *sh.latched.lock().unwrap_or_else(|e| e.into_inner()) =
                [l[0].latched(Kind::Rtp), l[0].latched(Kind::Rtcp), l[1].latched(Kind::Rtp), l[1].latched(Kind::Rtcp)];
        }
    }

    fn finish(&mut self) {
        self.io = None; // close the sockets, return pooled ports
        self.publish();
        self.shared.running.store(false, Relaxed);
    }
}

impl Future for RelayTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this.commands.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    if !this.apply(cmd) {
                        this.finish();
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        let Some(io) = &this.io else {
            return Poll::Ready(());
        };

        let mut now: Option<Instant> = None;
        let mut more = false;
        for sock_idx in 0..4 {
            let (leg, kind) = (sock_idx / 2, sock_idx % 2);
            let sock = if kind == RTP { io[leg].rtp_socket() } else { io[leg].rtcp_socket() };
            for n in 0..=BATCH {
                if n == BATCH {
                    more = true;
                    break;
                }
                let mut rb = ReadBuf::new(&mut this.buf[..]);
                let src = match sock.poll_recv_from(cx, &mut rb) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => {
                        // ICMP errors reported on the socket and the like: count, keep going.
                        tracing::trace!(error = %e, "relay recv error");
                        this.state.counters.dropped_invalid += 1;
                        continue;
                    }
                    Poll::Ready(Ok(src)) => canonical(src),
                };
                let len = rb.filled().len();
                let data = &this.buf[..len];
                let st = &mut this.state;
                if len >= BUF_LEN || !looks_valid(kind, data) {
                    st.counters.dropped_invalid += 1;
                    continue;
                }
                let now = *now.get_or_insert_with(Instant::now);
                if !st.accept(leg, kind, src, now) {
                    continue;
                }
                let out = 1 - leg;
                let Some(dest) = st.destination(out, kind) else {
                    st.counters.dropped_no_remote += 1;
                    continue;
                };
                let out_sock = if kind == RTP { io[out].rtp_socket() } else { io[out].rtcp_socket() };
                match send(out_sock, st.locals[out * 2 + kind].is_ipv6(), data, dest) {
                    Ok(_) => {
                        st.counters.forwarded[leg] += 1;
                        st.counters.bytes += len as u64;
                    }
                    Err(e) => {
                        tracing::trace!(error = %e, %dest, "relay send error");
                        st.counters.dropped_send_error += 1;
                    }
                }
            }
        }
        this.publish();
        if more {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn state() -> State {
        State::new([addr("127.0.0.1:4000"), addr("127.0.0.1:4001"), addr("127.0.0.1:4002"), addr("127.0.0.1:4003")])
    }

    #[test]
    fn validity() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0;
        assert!(looks_valid(RTP, &rtp));
        assert!(!looks_valid(RTCP, &rtp));
        assert!(!looks_valid(RTP, &rtp[..11]));
        let rr = [0x80, 201, 0, 1, 1, 2, 3, 4];
        assert!(looks_valid(RTCP, &rr));
        assert!(looks_valid(RTP, &rr)); // rtcp-mux
        // SRTCP: a well-formed first packet followed by encrypted bytes and the auth tag.
        assert!(looks_valid(RTCP, &[&rr[..], &[0xaa; 14]].concat()));
        assert!(!looks_valid(RTCP, &[0x80, 201, 0, 9, 1, 2, 3, 4])); // length past the end
        assert!(!looks_valid(RTP, &[0u8; 20])); // STUN-ish, version 0
        assert!(!looks_valid(RTP, b"\r\n\r\n"));
        let mut cc = [0u8; 16];
        cc[0] = 0x8f; // 15 CSRCs in a 16-byte packet
        assert!(!looks_valid(RTP, &cc));
    }

    #[test]
    fn own_sockets_never_latch_and_foreign_sources_are_counted() {
        let mut st = state();
        let t0 = Instant::now();
        assert!(!st.accept(0, RTP, addr("127.0.0.1:4002"), t0));
        assert_eq!(st.counters.dropped_invalid, 1);
        assert_eq!(st.destination(0, RTP), None);
        let phone = addr("127.0.0.1:5000");
        assert!(st.accept(0, RTP, phone, t0));
        assert!(!st.accept(0, RTP, addr("127.0.0.9:5000"), t0 + Duration::from_secs(5)));
        assert_eq!(st.counters.dropped_foreign, 1);
        assert_eq!(st.destination(0, RTP), Some(phone));
    }

    #[test]
    fn unusable_remotes_are_ignored() {
        let mut st = state();
        st.set_remote(0, Some(addr("0.0.0.0:5000")));
        assert_eq!(st.destination(0, RTP), None);
        st.set_remote(0, Some(addr("127.0.0.1:0")));
        assert_eq!(st.destination(0, RTP), None);
        st.set_remote(0, Some(addr("127.0.0.1:4000"))); // our own socket
        assert_eq!(st.destination(0, RTP), None);
        st.set_remote(0, Some(addr("[::ffff:127.0.0.1]:5000")));
        assert_eq!(st.destination(0, RTP), Some(addr("127.0.0.1:5000")));
    }
}
