//! TURN relayed candidates (RFC 8656), sans-IO, around the `turn-client-proto` crate.
//!
//! A site that drops outgoing UDP, or a symmetric NAT facing another symmetric NAT, leaves ICE
//! no direct path: the session then needs an address on a TURN server that relays to it. str0m
//! does no gathering (and has no TURN client), so [`Relays`] keeps one TURN allocation per
//! transport for a session and the driver plugs it between str0m and its sockets:
//!
//! * **UDP** (`turn:…?transport=udp`): the allocation is made from the session's own ICE socket.
//!   Every datagram from that TURN server's address belongs to the TURN client
//!   ([`Relays::is_from_server`]; ICE peers never send from a TURN server's *listening*
//!   address: a relayed peer sends from a relay port). A STUN probe to the same server is
//!   demultiplexed first, by its transaction ids.
//! * **TCP** (`turn:…?transport=tcp`) and **TLS** (`turns:`): the driver opens the stream
//!   ([`Relays::poll_connect`]), TLS included, and hands the plain bytes in and out: the TURN
//!   framing over a stream (RFC 6062 §5 / RFC 8656 §12.5) is the crate's. The allocation itself
//!   is a UDP relay either way. One stream allocation at a time: the first `turn:tcp`/`turns:`
//!   URL, and the next one only if that fails.
//!
//! Each allocation that succeeds is a relayed candidate (`RelayEvent::Allocated`). The driver
//! asks for a permission for every remote candidate's IP ([`Relays::permit`]); a str0m
//! `Transmit` whose source is a relayed address goes out through [`Relays::send`], and peer data
//! comes back from [`Relays::poll_peer_data`] as `(relayed, peer, bytes)`, to feed str0m as
//! received *at* the relayed address *from* the peer. Allocations, permissions (and their
//! refreshes: the client keeps them alive while the driver honours [`Relays::poll_timeout`])
//! end with [`Relays::delete`].
//!
//! Inputs carry a `std::time::Instant`; the crate's own clock counts from the `Relays`' start.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turn_client_proto::api::{Transmit, TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::client::TurnClient;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::{Instant as TurnInstant, TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

/// How a TURN server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl TurnTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }

    /// Over a byte stream the driver opens (TCP, TLS), rather than the session's UDP socket.
    pub fn is_stream(self) -> bool {
        self != TurnTransport::Udp
    }
}

/// A parsed `turn:` / `turns:` URL (RFC 7065).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUrl {
    pub transport: TurnTransport,
    pub host: String,
    pub port: u16,
}

/// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port][?transport=tcp]` (RFC 7065):
/// `turn:` defaults to UDP and port 3478, `turns:` to TLS over TCP and port 5349. `turns:` over
/// UDP (DTLS) and anything else is `None`.
pub fn parse_turn_url(url: &str) -> Option<TurnUrl> {
    let (secure, rest) = match url.split_once(':')? {
        ("turn", rest) => (false, rest),
        ("turns", rest) => (true, rest),
        _ => return None,
    };
    let (hostport, transport) = match rest.split_once('?') {
        Some((hp, query)) => {
            let t = query.strip_prefix("transport=")?;
            (hp, Some(t))
        }
        None => (rest, None),
    };
    let transport = match (secure, transport) {
        (false, None | Some("udp")) => TurnTransport::Udp,
        (false, Some("tcp")) => TurnTransport::Tcp,
        (true, None | Some("tcp")) => TurnTransport::Tls,
        _ => return None,
    };
    let default_port = if secure { 5349 } else { 3478 };
    if hostport.is_empty() || hostport.contains(['/', '?', '@', '&']) {
        return None;
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.contains(':') => (host.to_string(), port.parse().ok()?),
            None => (hostport.to_string(), default_port),
            _ => return None,
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(TurnUrl { transport, host, port })
}

/// One TURN server to allocate on, resolved, with its (TURN REST) credentials. `Debug` never
/// shows the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub transport: TurnTransport,
    pub addr: SocketAddr,
    /// The URL's host: the name a TLS certificate must match for `turns:`.
    pub host: String,
    pub username: String,
    credential: String,
}

impl TurnServer {
    pub fn new(transport: TurnTransport, addr: SocketAddr, host: &str, username: &str, credential: &str) -> TurnServer {
        TurnServer { transport, addr, host: host.to_string(), username: username.to_string(), credential: credential.to_string() }
    }

    fn config(&self) -> TurnConfig {
        TurnConfig::new(TurnCredentials::new(&self.username, &self.credential))
    }
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("transport", &self.transport)
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// Which allocation a stream belongs to.
pub type StreamId = usize;

/// Bytes for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayTransmit {
    /// From the session's UDP socket to a TURN server.
    Udp { to: SocketAddr, data: Vec<u8> },
    /// Down stream `id` (plain bytes; the driver adds TLS where the server wants it).
    Stream { id: StreamId, data: Vec<u8> },
}

/// What the driver learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A relayed address: a local candidate (`local` is the client's own end, for the record).
    Allocated { server: SocketAddr, transport: TurnTransport, relayed: SocketAddr, local: SocketAddr },
    /// This server gave nothing (or took its allocation back).
    Failed { server: SocketAddr, transport: TurnTransport, why: String },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// A stream allocation not started yet (another stream is being tried first).
    Queued,
    /// A stream the driver is opening.
    Connecting,
    Running,
    Done,
}

struct Alloc {
    server: TurnServer,
    phase: Phase,
    client: Option<TurnClient>,
    relayed: Option<SocketAddr>,
    wake: Option<TurnInstant>,
}

/// The TURN allocations of one session. See the module docs.
pub struct Relays {
    base: Instant,
    allocs: Vec<Alloc>,
    /// IPs the far end may send from: every allocation gets a permission for each.
    peers: Vec<IpAddr>,
    events: VecDeque<RelayEvent>,
    transmits: VecDeque<RelayTransmit>,
    peer_data: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
}

/// Retransmissions of a UDP request: 250 ms doubling to 2 s, 6 tries (~8 s to give up). TCP
/// and TLS requests are not retransmitted (the stream is reliable); they time out after 39.5 s.
const UDP_RTO: (Duration, Duration, u32, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2), 6, Duration::from_secs(2));

/// Bound on the work one `drive` does per allocation, so a client that keeps saying "now"
/// cannot spin the driver.
const DRIVE_ROUNDS: usize = 32;

impl Relays {
    /// Allocations on `servers`: UDP ones from `udp_local` (the session socket's address, as the
    /// driver reports datagrams to it), TCP/TLS ones once their stream is open. Servers of
    /// another address family than `udp_local` are skipped (IPv4 only today).
    pub fn new(servers: &[TurnServer], udp_local: SocketAddr, now: Instant) -> Relays {
        let mut r = Relays {
            base: now,
            allocs: vec![],
            peers: vec![],
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            peer_data: VecDeque::new(),
        };
        let mut stream_started = false;
        for s in servers.iter().filter(|s| s.addr.is_ipv4() == udp_local.is_ipv4()) {
            if r.allocs.iter().any(|a| a.server.addr == s.addr && a.server.transport == s.transport) {
                continue;
            }
            let (phase, client) = if s.transport.is_stream() {
                let phase = if stream_started { Phase::Queued } else { Phase::Connecting };
                stream_started = true;
                (phase, None)
            } else {
                let mut cfg = s.config();
                let (initial, max, tries, last) = UDP_RTO;
                cfg.set_request_retransmits(initial, max, tries, last);
                (Phase::Running, Some(TurnClientUdp::allocate(udp_local, s.addr, cfg).into()))
            };
            r.allocs.push(Alloc { server: s.clone(), phase, client, relayed: None, wake: Some(TurnInstant::ZERO) });
        }
        r.drive(now);
        r
    }

    /// Nothing to do at all (no TURN server configured or usable).
    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }

    fn t(&self, now: Instant) -> TurnInstant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        TurnInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// Streams the driver should open now (each once): `(id, server)`; for `Tls` it wraps the
    /// stream in TLS for `server.host`.
    pub fn poll_connect(&mut self) -> Option<(StreamId, TurnServer)> {
        let (id, a) = self.allocs.iter_mut().enumerate().find(|(_, a)| a.phase == Phase::Connecting && a.wake.is_some())?;
        // `wake: None` marks "handed to the driver"; the client's timers start once it is open.
        a.wake = None;
        Some((id, a.server.clone()))
    }

    /// Stream `id` is open from `local`: start allocating over it.
    pub fn stream_connected(&mut self, id: StreamId, local: SocketAddr, now: Instant) {
        let Some(a) = self.allocs.get_mut(id) else { return };
        if a.phase != Phase::Connecting {
            return;
        }
        a.client = Some(TurnClientTcp::allocate(local, a.server.addr, a.server.config()).into());
        a.phase = Phase::Running;
        a.wake = Some(TurnInstant::ZERO);
        self.drive(now);
    }

    /// Stream `id` could not be opened, or closed: its allocation is gone; try the next stream
    /// server if none has worked yet.
    pub fn stream_closed(&mut self, id: StreamId, why: &str, now: Instant) {
        let Some(a) = self.allocs.get_mut(id) else { return };
        if a.phase == Phase::Done {
            return;
        }
        a.phase = Phase::Done;
        a.client = None;
        let had = a.relayed.take().is_some();
        self.events.push_back(RelayEvent::Failed {
            server: a.server.addr,
            transport: a.server.transport,
            why: if had { format!("the allocation's stream closed: {why}") } else { why.to_string() },
        });
        self.next_stream();
        self.drive(now);
    }

    /// Start the next queued stream allocation when no stream allocation is alive.
    fn next_stream(&mut self) {
        let alive =
            self.allocs.iter().any(|a| a.server.transport.is_stream() && matches!(a.phase, Phase::Connecting | Phase::Running));
        if alive {
            return;
        }
        if let Some(a) = self.allocs.iter_mut().find(|a| a.phase == Phase::Queued) {
            a.phase = Phase::Connecting;
            a.wake = Some(TurnInstant::ZERO);
        }
    }

    /// Bytes that arrived on stream `id`.
    pub fn stream_data(&mut self, id: StreamId, data: &[u8], now: Instant) {
        let t = self.t(now);
        let Some(a) = self.allocs.get_mut(id) else { return };
        let relayed = a.relayed;
        let Some(client) = a.client.as_mut() else { return };
        let (from, to) = (client.remote_addr(), client.local_addr());
        let ret = client.recv(Transmit::new(data, TransportType::Tcp, from, to), t);
        take_peer_data(ret, relayed, &mut self.peer_data);
        while let Some(pd) = client.poll_recv(t) {
            if let Some(relayed) = relayed {
                self.peer_data.push_back((relayed, pd.peer, pd.data().to_vec()));
            }
        }
        self.drive(now);
    }

    /// The demultiplexing rule for the session's UDP socket: a datagram from the address of a
    /// UDP TURN server we allocate on is the TURN client's (a STUN probe's answers from the same
    /// server are told apart first, by transaction id).
    pub fn is_from_server(&self, from: SocketAddr) -> bool {
        self.allocs.iter().any(|a| a.server.transport == TurnTransport::Udp && a.server.addr == from)
    }

    /// A datagram that [`is_from_server`](Self::is_from_server), received at `to`.
    pub fn udp_data(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let t = self.t(now);
        let Some(a) = self
            .allocs
            .iter_mut()
            .find(|a| a.server.transport == TurnTransport::Udp && a.server.addr == from && a.client.is_some())
        else {
            return;
        };
        let relayed = a.relayed;
        let client = a.client.as_mut().expect("checked");
        let to = client.local_addr();
        let ret = client.recv(Transmit::new(data, TransportType::Udp, from, to), t);
        take_peer_data(ret, relayed, &mut self.peer_data);
        self.drive(now);
    }

    /// Is `addr` one of our relayed addresses (a str0m `Transmit` from it goes through TURN)?
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.allocs.iter().any(|a| a.relayed == Some(addr))
    }

    /// Relay `data` from our relayed address `relayed` to `peer`. `Err` when it cannot go (no
    /// such allocation, or no permission for the peer yet: ICE retries its checks).
    pub fn send(&mut self, relayed: SocketAddr, peer: SocketAddr, data: &[u8], now: Instant) -> Result<(), String> {
        let t = self.t(now);
        let (id, a) = self
            .allocs
            .iter_mut()
            .enumerate()
            .find(|(_, a)| a.relayed == Some(relayed))
            .ok_or_else(|| format!("no allocation at {relayed}"))?;
        let client = a.client.as_mut().ok_or("the allocation is gone")?;
        match client.send_to(TransportType::Udp, peer, data, t) {
            Ok(Some(tb)) => {
                let tx = tb.build();
                self.transmits.push_back(match a.server.transport {
                    TurnTransport::Udp => RelayTransmit::Udp { to: tx.to, data: tx.data },
                    _ => RelayTransmit::Stream { id, data: tx.data },
                });
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Let `ip` send to our relayed addresses (a remote candidate's address). Idempotent.
    pub fn permit(&mut self, ip: IpAddr, now: Instant) {
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || self.peers.contains(&ip) {
            return;
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_link_local()
        {
            return;
        }
        self.peers.push(ip);
        let t = self.t(now);
        for a in self.allocs.iter_mut().filter(|a| a.relayed.is_some()) {
            if let Some(c) = a.client.as_mut()
                && c.create_permission(TransportType::Udp, ip, t).is_ok()
            {
                a.wake = Some(t);
            }
        }
        self.drive(now);
    }

    /// The IPs asked for so far.
    pub fn permitted(&self) -> &[IpAddr] {
        &self.peers
    }

    /// Release every allocation (a REFRESH with lifetime 0): the session ends. Keep driving
    /// (`poll_transmit`, timeouts) a little longer so the requests leave.
    pub fn delete(&mut self, now: Instant) {
        let t = self.t(now);
        for a in self.allocs.iter_mut() {
            if let Some(c) = a.client.as_mut()
                && a.relayed.is_some()
                && c.delete(t).is_ok()
            {
                a.relayed = None;
                a.wake = Some(t);
            }
            if a.phase == Phase::Queued {
                a.phase = Phase::Done;
            }
        }
        self.drive(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = self.allocs.iter().filter(|a| a.phase == Phase::Running).filter_map(|a| a.wake).min()?;
        let nanos = u64::try_from((min - TurnInstant::ZERO).as_nanos()).unwrap_or(u64::MAX);
        Some(self.base + Duration::from_nanos(nanos))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    pub fn poll_transmit(&mut self) -> Option<RelayTransmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// `(relayed, peer, data)`: `data` arrived from `peer` at our relayed address `relayed`.
    pub fn poll_peer_data(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.peer_data.pop_front()
    }

    /// Run every client's timers and collect what it wants to send and say.
    fn drive(&mut self, now: Instant) {
        let t = self.t(now);
        let mut closed_stream = false;
        for (id, a) in self.allocs.iter_mut().enumerate() {
            if a.phase != Phase::Running {
                continue;
            }
            let Some(client) = a.client.as_mut() else { continue };
            let mut wake = None;
            for _ in 0..DRIVE_ROUNDS {
                let ret = client.poll(t);
                let mut progressed = false;
                while let Some(tx) = client.poll_transmit(t) {
                    progressed = true;
                    let data = tx.data.to_vec();
                    self.transmits.push_back(match a.server.transport {
                        TurnTransport::Udp => RelayTransmit::Udp { to: tx.to, data },
                        _ => RelayTransmit::Stream { id, data },
                    });
                }
                while let Some(ev) = client.poll_event() {
                    progressed = true;
                    match ev {
                        TurnEvent::AllocationCreated(TransportType::Udp, relayed) => {
                            a.relayed = Some(relayed);
                            for ip in &self.peers {
                                let _ = client.create_permission(TransportType::Udp, *ip, t);
                            }
                            self.events.push_back(RelayEvent::Allocated {
                                server: a.server.addr,
                                transport: a.server.transport,
                                relayed,
                                local: client.local_addr(),
                            });
                        }
                        TurnEvent::AllocationCreateFailed(family) => {
                            tracing::debug!(server = %a.server.addr, ?family, "TURN allocation refused");
                        }
                        TurnEvent::PermissionCreateFailed(_, ip) => {
                            tracing::debug!(server = %a.server.addr, %ip, "TURN permission refused");
                        }
                        other => tracing::trace!(server = %a.server.addr, event = ?other, "TURN"),
                    }
                }
                match ret {
                    TurnPollRet::Closed => {
                        wake = None;
                        break;
                    }
                    TurnPollRet::WaitUntil(w) => {
                        wake = Some(w);
                        if !progressed && w > t {
                            break;
                        }
                    }
                    // TCP allocations (RFC 6062) are never asked for: nothing to do.
                    TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => {
                        wake = Some(t + Duration::from_millis(20));
                        if !progressed {
                            break;
                        }
                    }
                }
            }
            match wake {
                // A client still saying "now" after all those rounds: look again shortly.
                Some(w) => a.wake = Some(if w <= t { t + Duration::from_millis(10) } else { w }),
                None => {
                    a.phase = Phase::Done;
                    a.wake = None;
                    let had = a.relayed.take().is_some();
                    closed_stream |= a.server.transport.is_stream() && !had;
                    self.events.push_back(RelayEvent::Failed {
                        server: a.server.addr,
                        transport: a.server.transport,
                        why: if had { "the allocation ended".into() } else { "no allocation (timeout or refused)".into() },
                    });
                }
            }
        }
        if closed_stream {
            self.next_stream();
        }
    }
}

fn take_peer_data(ret: TurnRecvRet<&[u8]>, relayed: Option<SocketAddr>, out: &mut VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>) {
    if let (TurnRecvRet::PeerData(pd), Some(relayed)) = (ret, relayed) {
        out.push_back((relayed, pd.peer, pd.data().to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(t: TurnTransport, host: &str, port: u16) -> Option<TurnUrl> {
        Some(TurnUrl { transport: t, host: host.into(), port })
    }

    #[test]
    fn turn_urls() {
        use TurnTransport::*;
        assert_eq!(parse_turn_url("turn:203.0.113.10:3478?transport=udp"), url(Udp, "203.0.113.10", 3478));
        assert_eq!(parse_turn_url("turn:203.0.113.10:3478?transport=tcp"), url(Tcp, "203.0.113.10", 3478));
        assert_eq!(parse_turn_url("turns:203.0.113.10:443?transport=tcp"), url(Tls, "203.0.113.10", 443));
        assert_eq!(parse_turn_url("turn:turn.example.com"), url(Udp, "turn.example.com", 3478));
        assert_eq!(parse_turn_url("turns:turn.example.com"), url(Tls, "turn.example.com", 5349));
        assert_eq!(parse_turn_url("turn:[2001:db8::1]:3479?transport=tcp"), url(Tcp, "2001:db8::1", 3479));
        assert_eq!(parse_turn_url("turn:[2001:db8::1]"), url(Udp, "2001:db8::1", 3478));
        for bad in [
            "stun:203.0.113.10:3478",
            "turns:x:443?transport=udp",
            "turn:x:3478?transport=sctp",
            "turn:x:3478?foo=bar",
            "turn:",
            "turn::3478",
            "turn:x:port",
            "turn:user@x:3478",
            "turn:2001:db8::1",
            "turn:[2001:db8::1]x",
            "turn",
        ] {
            assert_eq!(parse_turn_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_redacts_the_credential() {
        let s = TurnServer::new(TurnTransport::Udp, "203.0.113.10:3478".parse().unwrap(), "t", "1:hq", "s3cr3t-credential");
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("1:hq"));
    }

    fn srv(t: TurnTransport, addr: &str) -> TurnServer {
        TurnServer::new(t, addr.parse().unwrap(), "turn.test", "1:hq", "pw")
    }

    #[test]
    fn udp_allocates_from_the_session_socket_and_claims_only_the_server_s_datagrams() {
        let now = Instant::now();
        let local: SocketAddr = "10.77.1.2:40000".parse().unwrap();
        let server: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let mut r = Relays::new(&[srv(TurnTransport::Udp, "203.0.113.10:3478")], local, now);
        // The first ALLOCATE goes out at once, to the server, as STUN.
        let Some(RelayTransmit::Udp { to, data }) = r.poll_transmit() else { panic!("an ALLOCATE") };
        assert_eq!(to, server);
        assert!(data.len() >= 20 && data[0] & 0xC0 == 0 && data[4..8] == [0x21, 0x12, 0xA4, 0x42]);
        assert!(r.poll_connect().is_none(), "no stream to open");
        // Demux: the server's listening address only; a relayed peer (another port) is ICE's.
        assert!(r.is_from_server(server));
        assert!(!r.is_from_server("203.0.113.10:49160".parse().unwrap()));
        assert!(!r.is_from_server("203.0.113.101:40000".parse().unwrap()));
        // Nothing relayed yet: str0m's own transmits are not ours, and sending fails.
        assert!(!r.is_relayed("203.0.113.10:49160".parse().unwrap()));
        assert!(r.send("203.0.113.10:49160".parse().unwrap(), "203.0.113.101:40000".parse().unwrap(), b"x", now).is_err());
        // The client retransmits on its timer.
        let next = r.poll_timeout().expect("a retransmission timer");
        assert!(next > now && next <= now + Duration::from_secs(1), "{:?}", next - now);
        r.handle_timeout(next);
        assert!(matches!(r.poll_transmit(), Some(RelayTransmit::Udp { to, .. }) if to == server));
    }

    #[test]
    fn one_stream_allocation_at_a_time_and_the_next_when_it_fails() {
        let now = Instant::now();
        let local: SocketAddr = "10.77.1.2:40000".parse().unwrap();
        let mut r = Relays::new(
            &[
                srv(TurnTransport::Udp, "203.0.113.10:3478"),
                srv(TurnTransport::Tcp, "203.0.113.10:3478"),
                srv(TurnTransport::Tls, "203.0.113.10:443"),
            ],
            local,
            now,
        );
        let (id, s) = r.poll_connect().expect("the TCP server first");
        assert_eq!(s.transport, TurnTransport::Tcp);
        assert!(r.poll_connect().is_none(), "TLS waits");
        // UDP datagrams from the TCP server's address are still the UDP client's: same address.
        r.stream_closed(id, "connection refused", now);
        assert!(matches!(r.poll_event(), Some(RelayEvent::Failed { transport: TurnTransport::Tcp, .. })));
        let (id2, s) = r.poll_connect().expect("then TLS");
        assert_eq!(s.transport, TurnTransport::Tls);
        r.stream_connected(id2, "10.77.1.2:51000".parse().unwrap(), now);
        let mut saw = false;
        while let Some(t) = r.poll_transmit() {
            if let RelayTransmit::Stream { id, data } = t {
                assert_eq!(id, id2);
                assert_eq!(data[4..8], [0x21, 0x12, 0xA4, 0x42], "an ALLOCATE down the stream");
                saw = true;
            }
        }
        assert!(saw);
    }

    #[test]
    fn permissions_are_remembered_and_filtered() {
        let now = Instant::now();
        let mut r = Relays::new(&[srv(TurnTransport::Udp, "203.0.113.10:3478")], "10.77.1.2:40000".parse().unwrap(), now);
        for ip in ["203.0.113.101", "203.0.113.101", "0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "10.77.2.2"] {
            r.permit(ip.parse().unwrap(), now);
        }
        let want: Vec<IpAddr> = vec!["203.0.113.101".parse().unwrap(), "10.77.2.2".parse().unwrap()];
        assert_eq!(r.permitted(), &want[..]);
    }
}
