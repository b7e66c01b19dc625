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
//! [`RelayHandle::set_rtcp_remote`] says otherwise (`a=rtcp`). Phones behind NAT, or that write
//! the wrong interface address into SDP, send from somewhere else, so each of the four sockets
//! *latches* (symmetric RTP, RFC 4961) onto the source of the packets it receives:
//!
//! 1. Only packets that look like RTP/RTCP version 2 count: on an RTP socket at least 12 bytes
//!    (or 8 bytes with an RTCP packet type 192–223, for rtcp-mux), on an RTCP socket at least
//!    8 bytes with an RTCP packet type. Anything else (STUN, keep-alive junk, truncated
//!    datagrams) is dropped and counted as `dropped_invalid`; it never latches.
//! 2. Not latched yet: the first valid packet latches, whatever its source (the signalled address
//!    is only a guess until something arrives).
//! 3. Latched and the packet comes from the latched source: accepted.
//! 4. Latched, another source: accepted and re-latched if it is exactly the signalled address
//!    (signalling is authoritative), or if the latched source has sent nothing for
//!    [`RelayConfig::relatch_after`] (default 1 s: NAT rebinding, a phone that changed address).
//!    Otherwise the packet is dropped (`dropped_foreign`): a third party cannot hijack an active
//!    leg, and two sources cannot make the latch flap.
//! 5. A source equal to one of the relay's own sockets is never latched (no loops).
//!
//! Destination for a leg: its latched address, else its signalled one. For RTCP that has not
//! latched yet but whose leg's RTP has: the signalled RTCP address if it is on the latched RTP IP,
//! else latched RTP IP with RTP port + 1. No destination yet: the packet is dropped
//! (`dropped_no_remote`). [`RelayHandle::set_remote`] does not clear a latch (a latched leg keeps
//! working through re-INVITEs); [`RelayHandle::unlatch`] does, for when the leg's endpoint really
//! changed.
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

pub use crate::ports::LegSockets;

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

/// Tunables of a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// How long a latched source must be silent before another source may take the leg over.
    pub relatch_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            relatch_after: Duration::from_secs(1),
        }
    }
}

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
    /// Valid packets from a source other than the latched one, while it is active.
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
    pub fn start(
        a: LegSockets,
        b: LegSockets,
        a_remote: Option<SocketAddr>,
        b_remote: Option<SocketAddr>,
    ) -> RelayHandle {
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
        let locals = [
            a.rtp_local_addr(),
            a.rtcp_local_addr(),
            b.rtp_local_addr(),
            b.rtcp_local_addr(),
        ];
        let mut state = State {
            config,
            locals,
            peers: Default::default(),
            counters: Counters::default(),
            last_rx: [None; 2],
            latch_changed: false,
        };
        for (leg, remote) in [(0, a_remote), (1, b_remote)] {
            state.set_remote(leg, remote);
        }
        let task = RelayTask {
            io: Some([a, b]),
            buf: Box::new([0u8; BUF_LEN]),
            commands: rx,
            shared: Arc::clone(&shared),
            state,
        };
        let task = tokio::spawn(task);
        RelayHandle {
            tx,
            shared,
            task: Some(task),
        }
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
        u64::try_from(at.saturating_duration_since(self.started).as_micros())
            .unwrap_or(u64::MAX - 1)
            + 1
    }

    fn last_activity(&self) -> Instant {
        let us = self.last_rx_us[0]
            .load(Relaxed)
            .max(self.last_rx_us[1].load(Relaxed));
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

#[derive(Debug, Default, Clone, Copy)]
struct Peer {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    /// Last accepted packet from `latched`.
    last_rx: Option<Instant>,
}

struct State {
    config: RelayConfig,
    /// Local addresses, indexed like `peers` flattened: leg * 2 + kind.
    locals: [SocketAddr; 4],
    peers: [[Peer; 2]; 2],
    counters: Counters,
    last_rx: [Option<Instant>; 2],
    latch_changed: bool,
}

impl State {
    fn set_remote(&mut self, leg: usize, rtp: Option<SocketAddr>) {
        let rtp = rtp
            .map(canonical)
            .filter(|a| usable(*a) && !self.is_own(*a));
        self.peers[leg][RTP].signalled = rtp;
        self.peers[leg][RTCP].signalled =
            rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)));
    }

    fn set_rtcp_remote(&mut self, leg: usize, rtcp: Option<SocketAddr>) {
        self.peers[leg][RTCP].signalled = rtcp
            .map(canonical)
            .filter(|a| usable(*a) && !self.is_own(*a));
    }

    fn unlatch(&mut self, leg: usize) {
        for peer in &mut self.peers[leg] {
            peer.latched = None;
            peer.last_rx = None;
        }
        self.latch_changed = true;
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.locals.iter().any(|l| {
            l.port() == addr.port()
                && (canonical(*l).ip() == addr.ip()
                    || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }

    /// Latching rules 3–5 for a valid packet from `src` on socket (`leg`, `kind`).
    /// Returns whether the packet is accepted.
    fn accept(&mut self, leg: usize, kind: usize, src: SocketAddr, now: Instant) -> bool {
        let relatch_after = self.config.relatch_after;
        let peer = self.peers[leg][kind];
        let take = match peer.latched {
            Some(latched) if latched == src => false,
            None => true,
            Some(_) => {
                Some(src) == peer.signalled
                    || peer
                        .last_rx
                        .is_none_or(|t| now.saturating_duration_since(t) >= relatch_after)
            }
        };
        if take {
            if self.is_own(src) {
                self.counters.dropped_invalid += 1;
                return false;
            }
            if peer.latched.is_none() {
                tracing::debug!(leg, kind, %src, "media latched");
            } else {
                tracing::debug!(leg, kind, %src, old = ?peer.latched, "media re-latched");
            }
            self.peers[leg][kind].latched = Some(src);
            self.latch_changed = true;
        } else if peer.latched != Some(src) {
            self.counters.dropped_foreign += 1;
            return false;
        }
        self.peers[leg][kind].last_rx = Some(now);
        self.last_rx[leg] = Some(now);
        true
    }

    fn destination(&self, leg: usize, kind: usize) -> Option<SocketAddr> {
        let peer = &self.peers[leg][kind];
        if let Some(latched) = peer.latched {
            return Some(latched);
        }
        if kind == RTP {
            return peer.signalled;
        }
        match (self.peers[leg][RTP].latched, peer.signalled) {
            (Some(rtp), Some(sig)) if sig.ip() == rtp.ip() => Some(sig),
            (Some(rtp), _) => rtp
                .port()
                .checked_add(1)
                .map(|p| SocketAddr::new(rtp.ip(), p)),
            (None, sig) => sig,
        }
    }
}

fn usable(addr: SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// RTCP packet types (RFC 3550, RFC 5761 §4: 192–223 never collide with RTP in practice).
fn is_rtcp_pt(byte: u8) -> bool {
    (192..=223).contains(&byte)
}

/// Rule 1 of the module documentation.
fn looks_valid(kind: usize, data: &[u8]) -> bool {
    if data.len() < 8 || data[0] >> 6 != 2 {
        return false;
    }
    if kind == RTP {
        data.len() >= 12 || is_rtcp_pt(data[1])
    } else {
        is_rtcp_pt(data[1])
    }
}

/// Send `data` from `sock` (bound to an IPv6 address if `local_v6`) to `dest`.
fn send(sock: &UdpSocket, local_v6: bool, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
    let dest = match dest {
        SocketAddr::V4(v4) if local_v6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
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
            let p = &self.state.peers;
            *sh.latched.lock().unwrap_or_else(|e| e.into_inner()) = [
                p[0][RTP].latched,
                p[0][RTCP].latched,
                p[1][RTP].latched,
                p[1][RTCP].latched,
            ];
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
            let sock = if kind == RTP {
                io[leg].rtp_socket()
            } else {
                io[leg].rtcp_socket()
            };
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
                let out_sock = if kind == RTP {
                    io[out].rtp_socket()
                } else {
                    io[out].rtcp_socket()
                };
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
        State {
            config: RelayConfig::default(),
            locals: [
                addr("127.0.0.1:4000"),
                addr("127.0.0.1:4001"),
                addr("127.0.0.1:4002"),
                addr("127.0.0.1:4003"),
            ],
            peers: Default::default(),
            counters: Counters::default(),
            last_rx: [None; 2],
            latch_changed: false,
        }
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
        assert!(!looks_valid(RTP, &[0u8; 20])); // STUN-ish, version 0
        assert!(!looks_valid(RTP, b"\r\n\r\n"));
    }

    #[test]
    fn latch_rules() {
        let mut st = state();
        let t0 = Instant::now();
        let phone = addr("127.0.0.1:5000");
        let intruder = addr("127.0.0.1:6000");
        st.set_remote(0, Some(addr("127.0.0.1:9")));
        assert_eq!(st.destination(0, RTP), Some(addr("127.0.0.1:9")));
        assert_eq!(st.destination(0, RTCP), Some(addr("127.0.0.1:10")));
        assert!(st.accept(0, RTP, phone, t0));
        assert_eq!(st.destination(0, RTP), Some(phone));
        // RTCP not latched: signalled IP equals latched RTP IP → signalled RTCP address.
        assert_eq!(st.destination(0, RTCP), Some(addr("127.0.0.1:10")));
        // Intruder within the relatch window: refused.
        assert!(!st.accept(0, RTP, intruder, t0 + Duration::from_millis(500)));
        assert_eq!(st.counters.dropped_foreign, 1);
        // Phone still active.
        assert!(st.accept(0, RTP, phone, t0 + Duration::from_millis(600)));
        assert!(!st.accept(0, RTP, intruder, t0 + Duration::from_millis(1500)));
        // Phone silent for ≥ 1 s: the new source takes over.
        assert!(st.accept(0, RTP, intruder, t0 + Duration::from_millis(1600)));
        assert_eq!(st.destination(0, RTP), Some(intruder));
        // The signalled address takes over at once.
        let signalled = addr("127.0.0.1:9");
        assert!(st.accept(0, RTP, signalled, t0 + Duration::from_millis(1601)));
        assert_eq!(st.destination(0, RTP), Some(signalled));
        // Own sockets never latch.
        st.unlatch(0);
        assert!(!st.accept(0, RTP, addr("127.0.0.1:4002"), t0));
        assert_eq!(st.destination(0, RTP), Some(signalled));
    }

    #[test]
    fn rtcp_follows_latched_rtp_ip() {
        let mut st = state();
        let t0 = Instant::now();
        st.set_remote(1, Some(addr("10.1.2.3:7078"))); // address written in SDP, wrong
        assert!(st.accept(1, RTP, addr("127.0.0.1:7078"), t0));
        assert_eq!(st.destination(1, RTCP), Some(addr("127.0.0.1:7079")));
        assert!(st.accept(1, RTCP, addr("127.0.0.1:40001"), t0));
        assert_eq!(st.destination(1, RTCP), Some(addr("127.0.0.1:40001")));
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
