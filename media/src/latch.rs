//! Which source a call leg's RTP and RTCP are accepted from: the latching policy shared by the
//! RTP relay ([`crate::relay`]) and the WebRTC bridge's phone-facing side. Sans-IO: the caller
//! hands in each valid packet's source and the time, and gets a [`Verdict`].
//!
//! # The rule
//!
//! A leg has a *signalled* RTP address (from its SDP; RTCP = port + 1 or `a=rtcp`) and, per
//! socket, a *latched* source: where its packets are accepted from and where the other leg's
//! packets are sent.
//!
//! 1. **RTP, not latched:** the first packet latches, whatever its source. The signalled address
//!    is only a guess until something arrives: a phone behind NAT, or one that writes another
//!    interface's address into its SDP, sends from somewhere else (symmetric RTP, RFC 4961).
//! 2. **RTP, latched:** packets from the latched source are accepted. A packet from *exactly the
//!    signalled address* re-latches at once (signalling is authenticated, so a third party that
//!    raced the phone to an unlatched port loses the leg as soon as the phone speaks from where it
//!    said it would). Any other source is dropped ([`DropReason::ForeignSource`]) **however long
//!    the latched source has been silent**: a packet never moves a latch, so a muted or on-hold
//!    phone cannot be taken over.
//! 3. **RTCP** latches like RTP, except that its first packet must come from the signalled RTCP
//!    address or from the IP its leg's RTP latched onto (a NAT maps RTCP to another port of the
//!    same public IP). RTCP arriving before the leg's RTP has latched, from elsewhere, is dropped:
//!    it cannot latch the RTCP socket for a third party ahead of the phone.
//! 4. **Signalling re-points:** a re-INVITE/UPDATE whose SDP names a *different* RTP address than
//!    the last one signalled ([`Latch::set_signalled`]) forgets both latches, and rule 1 applies
//!    again. The same address again (session refresh) or no address (hold with `0.0.0.0`) keeps
//!    them. [`Latch::unlatch`] forgets them explicitly.
//!
//! What remains: before the phone's first packet, a third party that knows the relay's port may
//! latch first (rule 1). For a phone whose packets come from its signalled address it loses that
//! at once (rule 2); for a phone behind NAT it keeps the leg. Ports drawn at random
//! ([`crate::ports`]) make that port hard to guess, and the window is a call's first ~20 ms.
//!
//! Destination of the other leg's packets: the latched source, else the signalled address. For an
//! unlatched RTCP socket of a leg whose RTP has latched: the signalled RTCP address if it is on
//! the latched RTP IP, else the latched RTP IP with RTP port + 1.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Which of a leg's two sockets a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Rtp,
    Rtcp,
}

/// Why a packet was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// From a source other than the one the leg latched onto (or, for RTCP before anything
    /// latched, not from the phone's signalled or RTP address).
    ForeignSource,
}

impl DropReason {
    /// The `reason` label of `trunkline_rtp_dropped_total`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ForeignSource => "foreign_source",
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From the latched source: forward it.
    Accept,
    /// Accepted, and the socket (re-)latched onto its source: forward it, replies go there now.
    Latched { previous: Option<SocketAddr> },
    /// Drop it (and count it: [`count_drop`]).
    Drop(DropReason),
}

impl Verdict {
    pub fn accepted(self) -> bool {
        !matches!(self, Verdict::Drop(_))
    }
}

/// Count a dropped packet in the process's metrics as
/// `trunkline_rtp_dropped_total{reason="…"}` (a no-op until a recorder is installed).
pub fn count_drop(reason: DropReason) {
    drop_counter(reason).increment(1);
}

/// The counter [`count_drop`] increments, to keep for a hot loop (no registry look-up per packet).
/// Take it after the process installed its recorder.
pub fn drop_counter(reason: DropReason) -> metrics::Counter {
    metrics::counter!("trunkline_rtp_dropped_total", "reason" => reason.label())
}

/// The latching state of one call leg (its RTP and RTCP sockets). See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    /// The signalled RTP address in force (None: unknown, or on hold).
    signalled: Option<SocketAddr>,
    signalled_rtcp: Option<SocketAddr>,
    /// The last RTP address ever signalled: a new one different from it re-points the leg.
    anchor: Option<SocketAddr>,
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
    last_rtp: Option<Instant>,
    last_rtcp: Option<Instant>,
}

impl Latch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The RTP address from the leg's (new) SDP; RTCP becomes port + 1 (override with
    /// [`set_signalled_rtcp`](Self::set_signalled_rtcp) for `a=rtcp`). `None`, an unspecified IP
    /// or port 0 clears it (hold, rejected stream) but keeps the latches. Returns whether the leg
    /// was re-pointed (a different address than the last one signalled: latches forgotten).
    pub fn set_signalled(&mut self, rtp: Option<SocketAddr>) -> bool {
        let rtp = rtp.map(canonical).filter(|a| usable(*a));
        self.signalled = rtp;
        self.signalled_rtcp = rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)));
        let Some(new) = rtp else { return false };
        let repoint = self.anchor.is_some_and(|old| old != new) && (self.rtp.is_some() || self.rtcp.is_some());
        self.anchor = Some(new);
        if repoint {
            self.unlatch();
        }
        repoint
    }

    /// The RTCP address from the leg's `a=rtcp` attribute.
    pub fn set_signalled_rtcp(&mut self, rtcp: Option<SocketAddr>) {
        self.signalled_rtcp = rtcp.map(canonical).filter(|a| usable(*a));
    }

    /// Forget both latches: the next packets latch again (rule 1).
    pub fn unlatch(&mut self) {
        self.rtp = None;
        self.rtcp = None;
        self.last_rtp = None;
        self.last_rtcp = None;
    }

    /// Decide about a valid RTP/RTCP packet from `src` that arrived on the leg's `kind` socket.
    pub fn on_packet(&mut self, kind: Kind, src: SocketAddr, now: Instant) -> Verdict {
        let src = canonical(src);
        let (latched, signalled) = match kind {
            Kind::Rtp => (self.rtp, self.signalled),
            Kind::Rtcp => (self.rtcp, self.signalled_rtcp),
        };
        let verdict = match latched {
            Some(l) if l == src => Verdict::Accept,
            Some(previous) if Some(src) == signalled => Verdict::Latched { previous: Some(previous) },
            Some(_) => Verdict::Drop(DropReason::ForeignSource),
            None => match kind {
                Kind::Rtp => Verdict::Latched { previous: None },
                Kind::Rtcp if Some(src) == signalled || self.rtp.is_some_and(|r| r.ip() == src.ip()) => {
                    Verdict::Latched { previous: None }
                }
                Kind::Rtcp => Verdict::Drop(DropReason::ForeignSource),
            },
        };
        if verdict.accepted() {
            match kind {
                Kind::Rtp => (self.rtp, self.last_rtp) = (Some(src), Some(now)),
                Kind::Rtcp => (self.rtcp, self.last_rtcp) = (Some(src), Some(now)),
            }
        }
        verdict
    }

    /// The source `kind` latched onto.
    pub fn latched(&self, kind: Kind) -> Option<SocketAddr> {
        match kind {
            Kind::Rtp => self.rtp,
            Kind::Rtcp => self.rtcp,
        }
    }

    /// The signalled address of `kind` in force.
    pub fn signalled(&self, kind: Kind) -> Option<SocketAddr> {
        match kind {
            Kind::Rtp => self.signalled,
            Kind::Rtcp => self.signalled_rtcp,
        }
    }

    /// When the last accepted packet of `kind` arrived.
    pub fn last_accepted(&self, kind: Kind) -> Option<Instant> {
        match kind {
            Kind::Rtp => self.last_rtp,
            Kind::Rtcp => self.last_rtcp,
        }
    }

    /// Where the other leg's packets of `kind` go to reach this leg (None: nowhere yet).
    pub fn destination(&self, kind: Kind) -> Option<SocketAddr> {
        match kind {
            Kind::Rtp => self.rtp.or(self.signalled),
            Kind::Rtcp => self.rtcp.or_else(|| match (self.rtp, self.signalled_rtcp) {
                (Some(rtp), Some(sig)) if sig.ip() == rtp.ip() => Some(sig),
                (Some(rtp), _) => rtp.port().checked_add(1).map(|p| SocketAddr::new(rtp.ip(), p)),
                (None, sig) => sig,
            }),
        }
    }
}

/// A concrete address with a port (not `0.0.0.0`, `::` or port 0).
pub fn usable(addr: SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4, so that one source
/// compares equal however the socket reported it.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const FOREIGN: Verdict = Verdict::Drop(DropReason::ForeignSource);

    #[test]
    fn first_packet_latches_and_a_third_party_never_takes_over_however_long_the_silence() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        l.set_signalled(Some(a("10.0.0.5:4000"))); // behind NAT: packets come from elsewhere
        let phone = a("198.51.100.7:31000");
        let attacker = a("203.0.113.9:5004");
        assert_eq!(l.on_packet(Kind::Rtp, phone, t0), Verdict::Latched { previous: None });
        assert_eq!(l.destination(Kind::Rtp), Some(phone));
        assert_eq!(l.on_packet(Kind::Rtp, attacker, t0), FOREIGN);
        // The phone goes silent (mute, hold, a lost uplink): the attacker still gets nothing.
        for secs in [1, 2, 10, 3600] {
            assert_eq!(l.on_packet(Kind::Rtp, attacker, t0 + Duration::from_secs(secs)), FOREIGN);
        }
        assert_eq!(l.latched(Kind::Rtp), Some(phone));
        assert_eq!(l.on_packet(Kind::Rtp, phone, t0 + Duration::from_secs(3601)), Verdict::Accept);
        assert_eq!(l.last_accepted(Kind::Rtp), Some(t0 + Duration::from_secs(3601)));
    }

    #[test]
    fn the_signalled_address_wins_back_a_leg_a_third_party_raced_to() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        let phone = a("192.0.2.10:4000");
        l.set_signalled(Some(phone));
        let attacker = a("192.0.2.99:4000");
        assert_eq!(l.on_packet(Kind::Rtp, attacker, t0), Verdict::Latched { previous: None });
        assert_eq!(l.on_packet(Kind::Rtp, phone, t0), Verdict::Latched { previous: Some(attacker) });
        assert_eq!(l.on_packet(Kind::Rtp, attacker, t0), FOREIGN);
        assert_eq!(l.destination(Kind::Rtp), Some(phone));
    }

    #[test]
    fn rtcp_latches_only_from_the_phone_s_ip_or_signalled_address() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        l.set_signalled(Some(a("10.0.0.5:4000")));
        let attacker = a("203.0.113.9:5005");
        // Before RTP latched: only the signalled RTCP address.
        assert_eq!(l.on_packet(Kind::Rtcp, attacker, t0), FOREIGN);
        assert_eq!(l.destination(Kind::Rtcp), Some(a("10.0.0.5:4001")));
        l.on_packet(Kind::Rtp, a("198.51.100.7:31000"), t0);
        // Unlatched RTCP goes to the latched RTP IP, port + 1.
        assert_eq!(l.destination(Kind::Rtcp), Some(a("198.51.100.7:31001")));
        assert_eq!(l.on_packet(Kind::Rtcp, attacker, t0), FOREIGN);
        // The NAT mapped RTCP to another port of the same IP.
        assert_eq!(l.on_packet(Kind::Rtcp, a("198.51.100.7:31517"), t0), Verdict::Latched { previous: None });
        assert_eq!(l.destination(Kind::Rtcp), Some(a("198.51.100.7:31517")));
        assert_eq!(l.on_packet(Kind::Rtcp, a("198.51.100.7:9999"), t0), FOREIGN);

        let mut l = Latch::new();
        l.set_signalled(Some(a("10.0.0.5:4000")));
        l.set_signalled_rtcp(Some(a("10.0.0.5:4444")));
        assert_eq!(l.on_packet(Kind::Rtcp, a("10.0.0.5:4444"), t0), Verdict::Latched { previous: None });
    }

    #[test]
    fn a_new_sdp_address_re_points_the_leg_the_same_one_or_hold_does_not() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        let (first, moved) = (a("192.0.2.10:4000"), a("192.0.2.20:6000"));
        let nat = a("198.51.100.7:31000");
        assert!(!l.set_signalled(Some(first)));
        l.on_packet(Kind::Rtp, nat, t0);
        // Session refresh: same SDP. Hold: 0.0.0.0. Unhold: the same address again.
        assert!(!l.set_signalled(Some(first)));
        assert!(!l.set_signalled(Some(a("0.0.0.0:4000"))));
        assert_eq!(l.destination(Kind::Rtp), Some(nat), "a latched leg keeps working on hold");
        assert!(!l.set_signalled(Some(first)));
        assert_eq!(l.latched(Kind::Rtp), Some(nat));
        // The phone moved (re-INVITE from another device): latches forgotten.
        assert!(l.set_signalled(Some(moved)));
        assert_eq!((l.latched(Kind::Rtp), l.latched(Kind::Rtcp)), (None, None));
        assert_eq!(l.destination(Kind::Rtp), Some(moved));
        assert_eq!(l.on_packet(Kind::Rtp, a("198.51.100.8:4000"), t0), Verdict::Latched { previous: None });
    }

    #[test]
    fn a_latch_made_before_any_sdp_is_kept_when_the_sdp_arrives() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        let early = a("198.51.100.7:31000");
        l.on_packet(Kind::Rtp, early, t0); // early media before the answer
        assert!(!l.set_signalled(Some(a("10.0.0.5:4000"))));
        assert_eq!(l.latched(Kind::Rtp), Some(early));
    }

    #[test]
    fn mapped_and_unusable_addresses() {
        let t0 = Instant::now();
        let mut l = Latch::new();
        l.set_signalled(Some(a("127.0.0.1:0")));
        assert_eq!(l.destination(Kind::Rtp), None);
        l.set_signalled(Some(a("[::ffff:127.0.0.1]:5000")));
        assert_eq!(l.destination(Kind::Rtp), Some(a("127.0.0.1:5000")));
        l.on_packet(Kind::Rtp, a("[::ffff:127.0.0.1]:7000"), t0);
        assert_eq!(l.on_packet(Kind::Rtp, a("127.0.0.1:7000"), t0), Verdict::Accept);
        l.unlatch();
        assert_eq!(l.latched(Kind::Rtp), None);
    }
}
