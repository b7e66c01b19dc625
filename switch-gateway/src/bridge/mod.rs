//! WebRTC ⇄ RTP bridges for direct callers (C15): one str0m `Rtc` (DTLS-SRTP) on its own UDP
//! socket facing the caller, and one RTP/RTCP socket pair facing the desk phone, driven by one
//! small tokio task per call (`task.rs`; its TURN allocations in `turn.rs`).
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
//! `telephone-event` packets on the phone leg. The phone's real RTP source is latched
//! (symmetric RTP) by the same policy as the relay's (`trunkline_media::latch`): once latched, RTP
//! and RTCP from any other source are dropped and counted, however long the phone is silent; a
//! new SDP address from the phone (re-INVITE) re-points the leg. All of that per-packet logic is
//! the sans-IO `trunkline_media::bridge::BridgeCore` (tested there); the str0m configuration is
//! `trunkline_media::webrtc::rtc_config` and the phone's SDP `trunkline_media::sdp::AudioSdp`.
//!
//! The core sets bridges up through [`DriverBridges`] (`setup.rs`: no IO in the core's call
//! stack); the driver starts their tasks from the core's outputs ([`start_session`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use str0m::change::SdpPendingOffer;
use str0m::config::DtlsCert;
use str0m::crypto::{CryptoProvider, from_feature_flags};
use str0m::media::Mid;
use str0m::{Candidate, Rtc};
use tokio::sync::mpsc;
use trunkline_media::bridge::PhoneMedia;
use trunkline_media::ports::LegSockets;
use trunkline_media::turn::TurnServer;
pub use trunkline_media::webrtc::ReadyRtcs;

mod setup;
mod task;
mod turn;

pub use setup::DriverBridges;

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

/// DTLS certificates made ahead of need: making one generates a key pair (the crypto provider's
/// OS randomness, and CPU), which must not happen in the core's call stack. [`DriverBridges`]
/// takes one per WebRTC leg; the driver tops them up between the core's calls.
#[derive(Clone, Default)]
pub struct ReadyCerts(Arc<Mutex<VecDeque<DtlsCert>>>);

/// Certificates kept ready: one core input starts at most one WebRTC leg.
const READY_CERTS: usize = 4;

impl ReadyCerts {
    pub fn take(&self) -> Option<DtlsCert> {
        self.0.lock().unwrap().pop_front()
    }

    /// Make certificates until [`READY_CERTS`] are ready, with the provider str0m would use.
    pub fn refill(&self) {
        let mut ready = self.0.lock().unwrap();
        if ready.len() >= READY_CERTS {
            return;
        }
        let provider =
            CryptoProvider::get_default().map(|p| p.dtls_provider).unwrap_or_else(|| from_feature_flags().dtls_provider);
        while ready.len() < READY_CERTS {
            let Some(cert) = provider.generate_certificate() else { return };
            ready.push_back(cert);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// WebRTC legs' `Rtc`s kept ready ([`trunkline_media::webrtc::ReadyRtcs`]): the driver tops
/// the pool up after the core's calls, off the core's task; [`DriverBridges`] takes one per leg
/// and gives it the leg's ICE credentials (from its seeded RNG). Empty: the leg's `Rtc` is
/// built in the core's call stack as before.
pub fn ready_rtcs() -> ReadyRtcs {
    ReadyRtcs::new(setup::RTC_OPTIONS, READY_RTCS)
}

/// `Rtc`s kept ready: a burst of calls between two top-ups beyond this builds the rest inline.
const READY_RTCS: usize = 4;

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
    tokio::spawn(task::run(pending, phone_remote, rx, Some((ice, on_open, events))));
    tx
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
}
