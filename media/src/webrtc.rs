//! The one str0m (WebRTC) configuration of Trunkline's audio legs: the gateway's bridge, the
//! headless softphone and the bench's peers all build their `Rtc` from [`rtc_config`].
//!
//! What every leg speaks is what a browser speaks to a gateway: G.711 only (PCMU preferred, then
//! PCMA; no Opus, so the gateway bridges to desk phones without transcoding) and RFC 4733
//! `telephone-event/8000` on [`TELEPHONE_EVENT_PT`], events 0–16.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Pt};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Input, Rtc, RtcConfig};

use crate::g711::Law;

/// Payload type of `telephone-event/8000` in our offers (what Chrome uses for 8 kHz events).
/// An answer takes whatever the offer used: str0m maps it.
pub const TELEPHONE_EVENT_PT: u8 = 126;

/// How a leg's ICE agent differs from str0m's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcOptions {
    /// ICE lite (RFC 8445 §2.5): answer checks, never send any. Full ICE otherwise, which a
    /// leg behind NAT needs (its own checks open the pinhole the far end's checks come through).
    pub ice_lite: bool,
    /// The first retransmission timeout of a connectivity check; `None`: str0m's (250 ms).
    pub initial_stun_rto: Option<Duration>,
    /// Negotiate only the `mid` RTP header extension (what BUNDLE needs), not str0m's standard
    /// set (Chrome's: transport-wide congestion control, absolute send time, audio level…).
    /// For the gateway: an audio bridge at G.711's fixed rate estimates no bandwidth, and with
    /// transport-wide CC each call also carried a feedback packet every 100 ms each way, and
    /// every packet a sequence number for it to track. The headless softphone and the bench's
    /// browsers keep the standard set, as a browser offers it.
    pub mid_extension_only: bool,
    /// str0m's RTP mode: media in and out as RTP packets (`Event::RtpPacket`,
    /// `StreamTx::write_rtp`), not frames. For the gateway's bridge, which forwards one G.711
    /// frame per packet: it skips str0m's reordering buffer, depacketizer and packetizer on
    /// every packet, and numbers its own packets. The headless softphone keeps frames.
    pub rtp_mode: bool,
}

/// `Rtc`s of one [`RtcOptions`] built ahead of need, on tokio's blocking pool. Building one
/// costs about a millisecond of CPU, nearly all of it the DTLS library checking its crypto
/// provider on every new configuration (two ECDHE exchanges in each of P-256, P-384 and
/// X25519), and the first one in a process about 30 ms more (the crypto library's entropy
/// source starting up). Paid when a call is set up, that delayed every offer and answer; the
/// gateway's bridge and the headless softphone take one from here instead and build inline
/// only when the pool is empty.
#[derive(Clone)]
pub struct ReadyRtcs {
    opts: RtcOptions,
    capacity: usize,
    ready: Arc<Mutex<Vec<Rtc>>>,
    /// A top-up is under way on the blocking pool.
    filling: Arc<AtomicBool>,
}

impl ReadyRtcs {
    /// An empty pool that keeps up to `capacity` `Rtc`s built with `opts`.
    pub fn new(opts: RtcOptions, capacity: usize) -> ReadyRtcs {
        ReadyRtcs { opts, capacity, ready: Arc::default(), filling: Arc::default() }
    }

    /// What the pool's `Rtc`s are built with.
    pub fn options(&self) -> RtcOptions {
        self.opts
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Rtc>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready `Rtc`, brought to `now`: its clock stopped when it was built, maybe long ago,
    /// and negotiation starts DTLS at the `Rtc`'s last time (the handshake's 40 s deadline
    /// counts from there).
    pub fn take(&self, now: Instant) -> Option<Rtc> {
        let mut rtc = self.slots().pop()?;
        if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "a ready Rtc refused the time");
        }
        Some(rtc)
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Build until the pool is full, here and now (blocking: about 1 ms each).
    pub fn fill(&self) {
        while self.len() < self.capacity {
            // Built outside the lock: `take` must not wait for a build.
            let rtc = rtc_config(self.opts).build(Instant::now());
            self.slots().push(rtc);
        }
    }

    /// Fill the pool on the blocking pool; returns when it is full.
    pub async fn fill_in_background(&self) {
        let this = self.clone();
        // A panic in str0m's build is not ours to hide, but it must not take the caller down.
        let _ = tokio::task::spawn_blocking(move || this.fill()).await;
    }

    /// Top the pool up on the blocking pool, unless it is full or a top-up is under way.
    pub fn top_up(&self) {
        if self.len() >= self.capacity || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.fill();
            this.filling.store(false, Ordering::Release);
        });
    }
}

/// The `RtcConfig` of an audio leg: PCMU, PCMA and telephone-event, ICE as `opts` says.
pub fn rtc_config(opts: RtcOptions) -> RtcConfig {
    let mut cfg = RtcConfig::new().set_ice_lite(opts.ice_lite).clear_codecs().enable_pcmu(true, false).enable_pcma(true, false);
    if opts.rtp_mode {
        cfg = cfg.set_rtp_mode(true);
    }
    if opts.mid_extension_only {
        let mid = ExtensionMap::standard().id_of(Extension::RtpMid).unwrap_or(4);
        cfg = cfg.clear_extension_map().set_extension(mid, Extension::RtpMid);
    }
    if let Some(rto) = opts.initial_stun_rto {
        cfg.set_initial_stun_rto(rto);
    }
    cfg.codec_config().add_config(
        TELEPHONE_EVENT_PT.into(),
        None,
        Codec::Tele,
        Frequency::EIGHT_KHZ,
        None,
        FormatParams::parse_line("0-16"),
    );
    cfg
}

/// The G.711 law of a str0m codec; `None` for anything else.
pub fn law_of(codec: Codec) -> Option<Law> {
    match codec {
        Codec::PCMU => Some(Law::Mu),
        Codec::PCMA => Some(Law::A),
        _ => None,
    }
}

/// The str0m codec of a law.
pub fn codec_of(law: Law) -> Codec {
    match law {
        Law::Mu => Codec::PCMU,
        Law::A => Codec::PCMA,
    }
}

/// What to send with, among the payload types a negotiated leg accepts (`Writer::payload_params`
/// as `(pt, codec)`): `prefer` if the far end took it, else the other law (the sender then
/// re-codes), else `None`.
pub fn choose_payload(accepted: &[(Pt, Codec)], prefer: Law) -> Option<(Pt, Law)> {
    let find = |law: Law| accepted.iter().find(|(_, c)| *c == codec_of(law)).map(|(pt, _)| (*pt, law));
    find(prefer).or_else(|| find(prefer.other()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use str0m::media::{Direction, MediaKind};

    use super::*;
    use crate::sdp::Sdp;

    fn offer(opts: RtcOptions) -> String {
        let mut rtc = rtc_config(opts).build(Instant::now());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.apply().expect("an offer with one audio line").0.to_sdp_string()
    }

    #[test]
    fn an_offer_carries_g711_mu_first_and_telephone_event_only() {
        let text = offer(RtcOptions::default());
        let sdp = Sdp::parse(&text).unwrap();
        let audio = sdp.audio.unwrap();
        assert_eq!(audio.first_law(), Some(Law::Mu), "{text}");
        assert_eq!(audio.telephone_event_pt(), Some(TELEPHONE_EVENT_PT), "{text}");
        assert_eq!(audio.fmtp(TELEPHONE_EVENT_PT).map(|f| f.params.as_str()), Some("0-16"));
        assert!(audio.payload_types.iter().all(|&pt| audio.law(pt).is_some() || pt == TELEPHONE_EVENT_PT), "{text}");
        assert!(audio.payload_types.iter().any(|&pt| audio.law(pt) == Some(Law::A)), "{text}");
        assert!(!text.contains("opus") && !text.contains("a=ice-lite"), "{text}");
    }

    #[test]
    fn ice_lite_is_a_parameter() {
        let text = offer(RtcOptions { ice_lite: true, initial_stun_rto: Some(Duration::from_millis(50)), ..Default::default() });
        assert!(text.contains("a=ice-lite"), "{text}");
    }

    fn extmaps(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("a=extmap:")).map(|l| l.split_whitespace().nth(1).unwrap_or("")).collect()
    }

    #[test]
    fn the_gateway_negotiates_the_mid_extension_only_and_a_browser_the_standard_set() {
        let browser = offer(RtcOptions::default());
        assert!(extmaps(&browser).iter().any(|e| e.contains("transport-wide-cc")), "{browser}");
        let gateway = RtcOptions { mid_extension_only: true, ..Default::default() };
        assert_eq!(extmaps(&offer(gateway)), ["urn:ietf:params:rtp-hdrext:sdes:mid"]);
        // Answering a browser's offer: the standard set offered, mid answered.
        let mut rtc = rtc_config(gateway).build(Instant::now());
        let offer = str0m::change::SdpOffer::from_sdp_string(&browser).unwrap();
        let answer = rtc.sdp_api().accept_offer(offer).expect("an answer").to_sdp_string();
        assert_eq!(extmaps(&answer), ["urn:ietf:params:rtp-hdrext:sdes:mid"], "{answer}");
    }

    #[test]
    fn the_preferred_law_else_the_other_else_none() {
        let (mu, a, te) = ((Pt::from(0), Codec::PCMU), (Pt::from(8), Codec::PCMA), (Pt::from(126), Codec::Tele));
        assert_eq!(choose_payload(&[mu, a, te], Law::A), Some((Pt::from(8), Law::A)));
        assert_eq!(choose_payload(&[a, mu], Law::Mu), Some((Pt::from(0), Law::Mu)));
        assert_eq!(choose_payload(&[te, a], Law::Mu), Some((Pt::from(8), Law::A)));
        assert_eq!(choose_payload(&[te], Law::Mu), None);
        for law in [Law::Mu, Law::A] {
            assert_eq!(law_of(codec_of(law)), Some(law));
        }
        assert_eq!(law_of(Codec::Tele), None);
    }
}
