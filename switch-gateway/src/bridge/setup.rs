//! The bridges' set-up, called by the core ([`Bridges`]): a WebRTC leg's `Rtc` and the desk
//! phone side's SDP, on port pairs bound beforehand ([`ReadyPairs`], topped up by `core_loop`
//! between the core's calls). Everything here runs in the core's call stack: no bind, no spawn,
//! no clock (the core's `now` starts each `Rtc`), no OS randomness: each leg's DTLS certificate
//! (a key pair) is made beforehand too ([`ReadyCerts`]), and its ICE credentials and the phone
//! side's SSRC and sequence come from an RNG the driver seeded once (str0m would draw the ICE
//! password from its non-cryptographic RNG). Left to str0m: ids that are no secret (SSRCs,
//! msid, cname). `tests/core_has_no_clock_or_io.rs` checks this file. The driver starts what is
//! set up here from the core's outputs (`SessionStart`, `BridgeStart`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::Rng;
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction as MediaDirection, MediaKind};
use str0m::{Candidate, IceCreds, Rtc};
use trunkline_media::bridge::PhoneMedia;
use trunkline_media::g711::Law;
use trunkline_media::ports::{LegSockets, ReadyPairs};
use trunkline_media::rtp::RtpStream;
use trunkline_media::sdp::{AudioSdp, Sdp};
use trunkline_media::webrtc::{RtcOptions, rtc_config};

use super::{
    Attachments, DIRECT_CHANNEL, ICE_INITIAL_RTO, PHONE_TE_PT, PendingBridge, PendingBridges, PhoneLeg, ReadyCerts, ReadyRtcs,
    candidate_ips,
};
use crate::b2bua::{BridgeError, BridgeSetup, Bridges};

pub struct DriverBridges {
    /// Port pairs bound and DTLS certificates made beforehand (the driver tops them up between
    /// the core's calls).
    ready: ReadyPairs,
    certs: ReadyCerts,
    /// Legs' `Rtc`s built beforehand (see [`ReadyRtcs`]); `certs` are for a leg built here.
    rtcs: Option<ReadyRtcs>,
    adv_ip: IpAddr,
    pending: PendingBridges,
    attach: Attachments,
    /// Each session's WebRTC law (the one its answer lists first), for its phone side.
    session_law: HashMap<u64, Law>,
    next: u64,
    /// ICE credentials, the phone sides' RTP SSRCs and first sequence numbers: seeded once by the
    /// driver from the OS (a CSPRNG: the ICE password must be unguessable).
    rng: StdRng,
}

impl DriverBridges {
    pub fn new(
        ready: ReadyPairs,
        certs: ReadyCerts,
        adv_ip: IpAddr,
        pending: PendingBridges,
        attach: Attachments,
        rng: StdRng,
    ) -> Self {
        DriverBridges { ready, certs, rtcs: None, adv_ip, pending, attach, session_law: HashMap::new(), next: 0, rng }
    }

    /// Take legs' `Rtc`s from `rtcs` while it has some.
    pub fn with_ready_rtcs(mut self, rtcs: ReadyRtcs) -> Self {
        self.rtcs = Some(rtcs);
        self
    }

    fn take(&self) -> Result<LegSockets, BridgeError> {
        self.ready.take().ok_or_else(|| {
            tracing::error!(range = ?self.ready.allocator(), "no RTP ports for a bridge");
            BridgeError::NoPorts
        })
    }
}

/// `n` random letters and digits (ICE characters).
fn ice_chars(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| char::from(rng.sample(Alphanumeric))).collect()
}

/// Which law the WebRTC side listed first in `answer` (offer the phone that one first).
fn first_law(answer: &str) -> Option<Law> {
    Sdp::parse(answer).ok()?.audio?.first_law()
}

/// A full ICE agent on both sides (carrier and F2 caller): behind NAT our own checks open the
/// pinhole the far end's checks come through.
pub(super) const RTC_OPTIONS: RtcOptions =
    RtcOptions { ice_lite: false, initial_stun_rto: Some(ICE_INITIAL_RTO), mid_extension_only: true, rtp_mode: true };

impl DriverBridges {
    /// A UDP socket for the WebRTC leg and an `Rtc` (started at `now`) with its host candidate
    /// on it.
    fn rtc_and_socket(&mut self, now: Instant) -> Result<(Rtc, LegSockets, SocketAddr), BridgeError> {
        let ice = self.take()?;
        // RFC 8445 §5.3: at least 24 random bits in the ufrag, 128 in the password.
        let creds = IceCreds { ufrag: ice_chars(&mut self.rng, 16), pass: ice_chars(&mut self.rng, 22) };
        let mut rtc = match self.rtcs.as_ref().and_then(|r| r.take(now)) {
            Some(mut rtc) => {
                rtc.direct_api().set_local_ice_credentials(creds);
                rtc
            }
            None => {
                let mut cfg = rtc_config(RTC_OPTIONS).set_local_ice_credentials(creds);
                match self.certs.take() {
                    Some(cert) => cfg = cfg.set_dtls_cert(cert),
                    // Not expected: the driver makes one per core input. str0m makes it then.
                    None => tracing::warn!("no DTLS certificate made ahead of this leg"),
                }
                cfg.build(now)
            }
        };
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
        let media = PhoneMedia::new(law, te, RtpStream::new(self.rng.random(), self.rng.random()));
        Ok((sdp, PhoneLeg { sockets, media }))
    }
}

impl DriverBridges {
    /// F2 caller side: a full-ICE leg offering audio and the DataChannel the key goes on, with
    /// the phone side answering `phone_offer`.
    fn make_offer(&mut self, now: Instant, phone_offer: &str) -> Result<BridgeSetup, BridgeError> {
        let (mut rtc, ice, candidate) = self.rtc_and_socket(now)?;
        let phone = self.take()?;
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
    fn open_session(&mut self, now: Instant, offer: &str) -> Result<(u64, String), BridgeError> {
        let remote_ips = candidate_ips(offer);
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| BridgeError::BadOffer(e.to_string()))?;
        if !offer.media_lines.iter().any(|m| m.typ.to_string() == "audio") {
            return Err(BridgeError::BadOffer("no audio m-line".into()));
        }
        if !offer.media_lines.iter().any(|m| m.typ.to_string() == "application") {
            return Err(BridgeError::BadOffer("no DataChannel (m=application) to present the key on".into()));
        }
        // Full ICE: behind NAT our own checks open the pinhole the caller's checks come through.
        let (mut rtc, ice, candidate) = self.rtc_and_socket(now)?;
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
        let phone = self.take()?;
        let (phone_sdp, phone) = self.phone_side(id, phone, webrtc_law, phone_offer)?;
        self.attach.lock().unwrap().insert(id, phone);
        Ok(BridgeSetup { id, answer: String::new(), phone_sdp })
    }

    fn offer_session(&mut self, now: Instant, phone_offer: &str) -> Result<BridgeSetup, BridgeError> {
        self.make_offer(now, phone_offer)
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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use trunkline_media::ports::PortAllocator;

    use super::*;

    #[tokio::test]
    async fn the_phone_is_offered_the_webrtc_law_first_and_answered_in_its_own() {
        let alloc = PortAllocator::new(40000..=60999, "127.0.0.1".parse().unwrap()).unwrap();
        let ready = ReadyPairs::new(alloc.clone(), 0);
        let mut b = DriverBridges::new(
            ready,
            ReadyCerts::default(),
            "192.0.2.7".parse().unwrap(),
            Default::default(),
            Default::default(),
            StdRng::seed_from_u64(1),
        );
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

    /// A browser's offer: audio and the DataChannel, from a str0m leg of its own.
    fn browser_offer() -> String {
        let mut rtc = rtc_config(RTC_OPTIONS).build(Instant::now());
        rtc.add_local_candidate(Candidate::host("192.0.2.50:5000".parse().unwrap(), "udp").unwrap());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, MediaDirection::SendRecv, None, None, None);
        change.add_channel(DIRECT_CHANNEL.to_string());
        change.apply().unwrap().0.to_sdp_string()
    }

    fn ice_ufrag(sdp: &str) -> String {
        sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:")).unwrap().to_string()
    }

    #[tokio::test]
    async fn a_session_takes_a_ready_pair_and_certificate_and_its_ice_credentials_come_from_the_seeded_rng() {
        let alloc = PortAllocator::new(40000..=60999, "127.0.0.1".parse().unwrap()).unwrap();
        let offer = browser_offer();
        let mut ufrags = vec![];
        for _ in 0..2 {
            let (ready, certs) = (ReadyPairs::new(alloc.clone(), 2), ReadyCerts::default());
            ready.refill().unwrap();
            certs.refill();
            let (pairs, made) = (ready.len(), certs.len());
            let adv = "192.0.2.7".parse().unwrap();
            let mut b = DriverBridges::new(
                ready.clone(),
                certs.clone(),
                adv,
                Default::default(),
                Default::default(),
                StdRng::seed_from_u64(9),
            );
            let (id, answer) = b.open_session(Instant::now(), &offer).unwrap();
            assert!(b.pending.lock().unwrap().contains_key(&id));
            assert_eq!((ready.len(), certs.len()), (pairs - 1, made - 1), "one pair and one certificate taken");
            ufrags.push(ice_ufrag(&answer));
        }
        assert_eq!(ufrags[0], ufrags[1], "the same seed, the same credentials: none drawn from the OS");
        assert_eq!(ufrags[0].len(), 16);
    }

    #[tokio::test]
    async fn a_session_takes_a_ready_rtc_and_gives_it_the_seeded_ice_credentials() {
        let alloc = PortAllocator::new(40000..=60999, "127.0.0.1".parse().unwrap()).unwrap();
        let offer = browser_offer();
        let mut ufrags = vec![];
        for with_ready in [false, true] {
            let ready = ReadyPairs::new(alloc.clone(), 2);
            ready.refill().unwrap();
            let rtcs = super::super::ready_rtcs();
            let mut b = DriverBridges::new(
                ready,
                ReadyCerts::default(),
                "192.0.2.7".parse().unwrap(),
                Default::default(),
                Default::default(),
                StdRng::seed_from_u64(9),
            );
            if with_ready {
                rtcs.fill();
                b = b.with_ready_rtcs(rtcs.clone());
            }
            let before = rtcs.len();
            let (_, answer) = b.open_session(Instant::now(), &offer).unwrap();
            if with_ready {
                assert_eq!(rtcs.len(), before - 1, "one ready Rtc taken");
            }
            ufrags.push(ice_ufrag(&answer));
        }
        assert_eq!(ufrags[0], ufrags[1], "a ready Rtc answers with the seeded RNG's credentials too");
    }

    #[tokio::test]
    async fn no_ready_pair_is_no_ports() {
        let alloc = PortAllocator::new(40000..=60999, "127.0.0.1".parse().unwrap()).unwrap();
        let adv = "192.0.2.7".parse().unwrap();
        let mut b = DriverBridges::new(
            ReadyPairs::new(alloc, 2),
            ReadyCerts::default(),
            adv,
            Default::default(),
            Default::default(),
            StdRng::seed_from_u64(9),
        );
        // Nothing bound ahead: the core gets its "no ports" path, nothing is bound now.
        assert_eq!(b.open_session(Instant::now(), &browser_offer()), Err(BridgeError::NoPorts));
    }
}
