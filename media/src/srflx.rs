//! Server-reflexive address discovery (RFC 8489 STUN Binding), sans-IO.
//!
//! A gateway behind NAT needs its **server-reflexive** address — what its NAT maps a UDP socket
//! to on the Internet — to hand callers an ICE candidate they can reach. str0m does no
//! gathering, so this module asks STUN servers from the very socket a call uses (the mapping
//! belongs to that socket), and the driver feeds replies back before str0m sees them
//! ([`SrflxProbe::is_ours`] tells them apart from ICE checks, which are STUN too).
//!
//! Asking two servers also tells the NAT's kind: the same mapped port from both is
//! endpoint-independent mapping ("cone": a direct path can work); different ports is
//! endpoint-dependent ("symmetric": calls to parties behind NAT need a TURN relay).
//!
//! Inputs carry `now`; outputs are datagrams to send and events. Retransmission follows RFC 8489
//! §6.2.1 (RTO doubling from `initial_rto`, `max_transmits` tries), shortened by default because
//! a call set-up cannot wait the RFC's 39.5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_types::attribute::XorMappedAddress;
use stun_types::message::{BINDING, Message, MessageClass, MessageWriteVec, TransactionId};
use stun_types::prelude::*;

/// Timing of the requests.
#[derive(Clone, Copy, Debug)]
pub struct ProbeTiming {
    pub initial_rto: Duration,
    pub max_transmits: u32,
}

impl Default for ProbeTiming {
    /// 100, 200, 400, 800 ms: about 1.5 s before a silent server counts as unreachable.
    fn default() -> Self {
        ProbeTiming { initial_rto: Duration::from_millis(100), max_transmits: 4 }
    }
}

/// What a probe tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    /// `server` sees our socket as `mapped`.
    Mapped { server: SocketAddr, mapped: SocketAddr },
    /// `server` never answered (or answered with an error).
    Unreachable { server: SocketAddr, why: String },
    /// Every server has answered or given up.
    Done,
}

/// How the NAT in front of a socket maps it (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// The mapped address is the socket's own address: no NAT.
    None,
    /// One mapping for every destination (masquerade, most home routers).
    EndpointIndependent,
    /// Another mapping per destination (symmetric NAT, carrier-grade NAT, `masquerade random`).
    EndpointDependent,
    /// Fewer than two servers answered: cannot tell.
    Unknown,
}

impl NatKind {
    pub fn describe(self) -> &'static str {
        match self {
            NatKind::None => "no NAT: the socket's own address is public",
            NatKind::EndpointIndependent => "endpoint-independent mapping (cone NAT): direct calls can work with STUN alone",
            NatKind::EndpointDependent => {
                "endpoint-dependent mapping (symmetric NAT): calls to parties behind NAT need a TURN relay"
            }
            NatKind::Unknown => "unknown: fewer than two STUN servers answered",
        }
    }
}

/// Classify from the answers to one socket's probes.
pub fn classify(base: SocketAddr, mapped: &[(SocketAddr, SocketAddr)]) -> NatKind {
    let Some((_, first)) = mapped.first() else { return NatKind::Unknown };
    if mapped.iter().all(|(_, m)| *m == base) {
        return NatKind::None;
    }
    if mapped.len() < 2 {
        return NatKind::Unknown;
    }
    if mapped.iter().all(|(_, m)| m == first) { NatKind::EndpointIndependent } else { NatKind::EndpointDependent }
}

struct Request {
    server: SocketAddr,
    id: TransactionId,
    bytes: Vec<u8>,
    sent: u32,
    next_at: Instant,
    rto: Duration,
    done: bool,
}

/// Binding requests from one socket to each STUN server.
pub struct SrflxProbe {
    timing: ProbeTiming,
    requests: Vec<Request>,
    events: std::collections::VecDeque<ProbeEvent>,
    finished: bool,
}

impl SrflxProbe {
    /// Probe `servers` (already resolved) from one socket, starting at `now`.
    pub fn new(servers: &[SocketAddr], timing: ProbeTiming, now: Instant) -> SrflxProbe {
        let requests = servers
            .iter()
            .map(|&server| {
                let msg = Message::builder_request(BINDING, MessageWriteVec::new());
                let id = msg.transaction_id();
                Request { server, id, bytes: msg.finish(), sent: 0, next_at: now, rto: timing.initial_rto, done: false }
            })
            .collect::<Vec<_>>();
        let mut p = SrflxProbe { timing, requests, events: Default::default(), finished: false };
        p.check_done();
        p
    }

    /// The next datagram to send: `(destination, bytes)`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let timing = self.timing;
        let r = self.requests.iter_mut().find(|r| !r.done && r.sent < timing.max_transmits && r.next_at <= now)?;
        r.sent += 1;
        // After the last try, wait one more RTO for a late answer before giving up.
        r.next_at = now + r.rto;
        r.rto *= 2;
        Some((r.server, r.bytes.clone()))
    }

    /// When [`handle_timeout`](Self::handle_timeout) (or `poll_transmit`) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.iter().filter(|r| !r.done).map(|r| r.next_at).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let max = self.timing.max_transmits;
        for r in self.requests.iter_mut().filter(|r| !r.done && r.sent >= max && r.next_at <= now) {
            r.done = true;
            self.events
                .push_back(ProbeEvent::Unreachable { server: r.server, why: format!("no answer to {max} Binding requests") });
        }
        self.check_done();
    }

    /// Is `data` from `from` a STUN response to one of our requests? (Everything else on the
    /// socket — ICE checks, DTLS, RTP — belongs to str0m.)
    pub fn is_ours(&self, from: SocketAddr, data: &[u8]) -> bool {
        // STUN starts with two zero bits and has the magic cookie at bytes 4..8.
        if data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != [0x21, 0x12, 0xA4, 0x42] {
            return false;
        }
        let Ok(msg) = Message::from_bytes(data) else { return false };
        msg.is_response() && self.requests.iter().any(|r| r.server == from && r.id == msg.transaction_id())
    }

    /// A datagram that [`is_ours`](Self::is_ours). Malformed or foreign input changes nothing.
    pub fn handle_input(&mut self, from: SocketAddr, data: &[u8], _now: Instant) {
        let Ok(msg) = Message::from_bytes(data) else { return };
        let Some(r) = self.requests.iter_mut().find(|r| !r.done && r.server == from && r.id == msg.transaction_id()) else {
            return;
        };
        if !msg.has_method(BINDING) || !msg.is_response() {
            return;
        }
        r.done = true;
        let event = if msg.has_class(MessageClass::Success) {
            // XOR-MAPPED-ADDRESS (RFC 5389 and later; every server ICE works with sends it).
            let mapped = msg.attribute::<XorMappedAddress>().map(|a| a.addr(msg.transaction_id()));
            match mapped {
                Ok(mapped) => ProbeEvent::Mapped { server: from, mapped },
                Err(e) => ProbeEvent::Unreachable { server: from, why: format!("answer without a mapped address: {e}") },
            }
        } else {
            ProbeEvent::Unreachable { server: from, why: "the server answered with an error".into() }
        };
        self.events.push_back(event);
        self.check_done();
    }

    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }

    fn check_done(&mut self) {
        if !self.finished && self.requests.iter().all(|r| r.done) {
            self.finished = true;
            self.events.push_back(ProbeEvent::Done);
        }
    }
}

/// `stun:host[:port]` (RFC 7064) → `(host, port)`; port 3478 when absent. `stuns:` (TLS) and
/// other schemes are not for a UDP Binding probe: `None`.
pub fn parse_stun_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("stun:")?;
    if rest.is_empty() || rest.contains(['/', '?', '@']) {
        return None;
    }
    // [v6]:port, [v6], host:port, host
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 3478,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        None => Some((rest.to_string(), 3478)),
        _ => None,
    }
}

/// What [`check`] found for one socket.
#[derive(Clone, Debug)]
pub struct NatReport {
    /// The socket's own address (its IP as the route to the first server picks it).
    pub base: SocketAddr,
    /// `(server, mapped)` for each server that answered.
    pub mapped: Vec<(SocketAddr, SocketAddr)>,
    /// `(server, why)` for each that did not.
    pub unreachable: Vec<(SocketAddr, String)>,
    pub kind: NatKind,
}

/// Drive one probe from a fresh UDP socket on `bind` to `servers` (the thin tokio driver of
/// [`SrflxProbe`]); used by `switch-gateway nat-check`.
pub async fn check(bind: SocketAddr, servers: &[SocketAddr], timing: ProbeTiming) -> std::io::Result<NatReport> {
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    let mut base = sock.local_addr()?;
    if base.ip().is_unspecified()
        && let Some(first) = servers.first()
    {
        // Which local IP the kernel would send from: connect a throwaway socket (no packet).
        let probe = std::net::UdpSocket::bind(SocketAddr::new(base.ip(), 0))?;
        if probe.connect(first).is_ok() {
            base.set_ip(probe.local_addr()?.ip());
        }
    }
    let mut p = SrflxProbe::new(servers, timing, Instant::now());
    let (mut mapped, mut unreachable) = (vec![], vec![]);
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        p.handle_timeout(now);
        while let Some((to, bytes)) = p.poll_transmit(now) {
            // An unroutable server is an answer too: count it unreachable via the timeout.
            let _ = sock.send_to(&bytes, to).await;
        }
        let mut done = false;
        while let Some(ev) = p.poll_event() {
            match ev {
                ProbeEvent::Mapped { server, mapped: m } => mapped.push((server, m)),
                ProbeEvent::Unreachable { server, why } => unreachable.push((server, why)),
                ProbeEvent::Done => done = true,
            }
        }
        if done {
            break;
        }
        let Some(deadline) = p.poll_timeout() else { break };
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, from)) = r && p.is_ours(from, &buf[..n]) {
                    p.handle_input(from, &buf[..n], Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    let kind = classify(base, &mapped);
    Ok(NatReport { base, mapped, unreachable, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// What a STUN server would answer to `request`: the mapped address, XOR'd.
    fn reply(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let req = Message::from_bytes(request).unwrap();
        let mut w = Message::builder_success(&req, MessageWriteVec::new());
        w.add_attribute(&XorMappedAddress::new(mapped, req.transaction_id())).unwrap();
        w.finish()
    }

    fn drain(p: &mut SrflxProbe) -> Vec<ProbeEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    #[test]
    fn one_request_per_server_and_the_mapped_address_from_each() {
        let t0 = Instant::now();
        let (a, b) = (addr("203.0.113.10:3478"), addr("203.0.113.11:3478"));
        let mut p = SrflxProbe::new(&[a, b], ProbeTiming::default(), t0);
        let (to1, req1) = p.poll_transmit(t0).unwrap();
        let (to2, req2) = p.poll_transmit(t0).unwrap();
        assert_eq!((to1, to2), (a, b));
        assert!(p.poll_transmit(t0).is_none(), "nothing more until a timeout");
        let r1 = reply(&req1, addr("198.51.100.1:40000"));
        assert!(p.is_ours(a, &r1));
        assert!(!p.is_ours(b, &r1), "an answer must come from the server asked");
        p.handle_input(a, &r1, t0);
        assert_eq!(drain(&mut p), vec![ProbeEvent::Mapped { server: a, mapped: addr("198.51.100.1:40000") }]);
        p.handle_input(b, &reply(&req2, addr("198.51.100.1:40000")), t0);
        assert_eq!(drain(&mut p), vec![ProbeEvent::Mapped { server: b, mapped: addr("198.51.100.1:40000") }, ProbeEvent::Done]);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn silent_server_is_retried_with_doubling_timeouts_then_reported() {
        let t0 = Instant::now();
        let s = addr("203.0.113.10:3478");
        let mut p = SrflxProbe::new(&[s], ProbeTiming { initial_rto: Duration::from_millis(100), max_transmits: 3 }, t0);
        let mut sends = vec![];
        let mut now = t0;
        while let Some(deadline) = p.poll_timeout() {
            now = now.max(deadline);
            p.handle_timeout(now);
            if let Some((to, _)) = p.poll_transmit(now) {
                assert_eq!(to, s);
                sends.push(now - t0);
            }
        }
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(sends, vec![ms(0), ms(100), ms(300)]);
        assert_eq!(now - t0, ms(700), "gives up one RTO after the last try");
        let ev = drain(&mut p);
        assert!(matches!(&ev[0], ProbeEvent::Unreachable { server, .. } if *server == s), "{ev:?}");
        assert_eq!(ev[1], ProbeEvent::Done);
    }

    #[test]
    fn retransmissions_keep_the_transaction_so_a_late_answer_counts() {
        let t0 = Instant::now();
        let s = addr("203.0.113.10:3478");
        let mut p = SrflxProbe::new(&[s], ProbeTiming::default(), t0);
        let (_, first) = p.poll_transmit(t0).unwrap();
        let t1 = p.poll_timeout().unwrap();
        p.handle_timeout(t1);
        let (_, second) = p.poll_transmit(t1).unwrap();
        assert_eq!(first, second, "same transaction id on retransmission (RFC 8489 §6.2.1)");
        p.handle_input(s, &reply(&first, addr("198.51.100.1:5000")), t1);
        assert_eq!(drain(&mut p)[0], ProbeEvent::Mapped { server: s, mapped: addr("198.51.100.1:5000") });
    }

    #[test]
    fn foreign_and_malformed_datagrams_change_nothing() {
        let t0 = Instant::now();
        let s = addr("203.0.113.10:3478");
        let mut p = SrflxProbe::new(&[s], ProbeTiming::default(), t0);
        let (_, req) = p.poll_transmit(t0).unwrap();
        // Another transaction (an ICE check's answer, say), RTP, DTLS, garbage, truncation.
        let other = reply(&Message::builder_request(BINDING, MessageWriteVec::new()).finish(), addr("1.2.3.4:5"));
        let rtp = [0x80u8, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1];
        let dtls = [22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let good = reply(&req, addr("198.51.100.1:5000"));
        for junk in [&other[..], &rtp[..], &dtls[..], &good[..good.len() - 3], &[][..], &req[..]] {
            assert!(!p.is_ours(s, junk));
            p.handle_input(s, junk, t0);
        }
        assert!(drain(&mut p).is_empty());
        assert!(p.is_ours(s, &good));
    }

    #[test]
    fn nat_kind_from_the_mappings() {
        let base = addr("198.51.100.2:40000");
        let (a, b) = (addr("203.0.113.10:3478"), addr("203.0.113.11:3478"));
        let m = |p: u16| SocketAddr::new("203.0.113.101".parse().unwrap(), p);
        assert_eq!(classify(base, &[(a, m(40000)), (b, m(40000))]), NatKind::EndpointIndependent);
        assert_eq!(classify(base, &[(a, m(40000)), (b, m(51234))]), NatKind::EndpointDependent);
        assert_eq!(classify(base, &[(a, base), (b, base)]), NatKind::None);
        assert_eq!(classify(base, &[(a, m(40000))]), NatKind::Unknown);
        assert_eq!(classify(base, &[]), NatKind::Unknown);
    }

    #[test]
    fn stun_urls() {
        assert_eq!(parse_stun_url("stun:turn.example.com"), Some(("turn.example.com".into(), 3478)));
        assert_eq!(parse_stun_url("stun:203.0.113.10:3479"), Some(("203.0.113.10".into(), 3479)));
        assert_eq!(parse_stun_url("stun:[2001:db8::1]:3478"), Some(("2001:db8::1".into(), 3478)));
        assert_eq!(parse_stun_url("stun:[2001:db8::1]"), Some(("2001:db8::1".into(), 3478)));
        for bad in ["stuns:x:5349", "turn:x:3478", "stun:", "stun:x:port", "stun:x:3478?transport=udp", "stun:2001:db8::1"] {
            assert_eq!(parse_stun_url(bad), None, "{bad}");
        }
    }
}
