//! The per-packet core of a WebRTC ⇄ RTP bridge (the gateway's C15 leg), sans-IO: what goes to
//! the WebRTC leg for each packet from the desk phone, and what goes to the phone for each frame
//! or RFC 4733 event from the WebRTC leg. No sockets, no clock, no str0m types: the driver
//! (`switch-gateway/src/bridge/`) hands [`BridgeCore`] each datagram from the phone with its
//! source and `now`, and each frame or event str0m gives it; it picks the WebRTC payload type
//! (`webrtc::choose_payload`) and does the I/O.
//!
//! * The phone's source is latched by the one policy of [`crate::latch`] (shared with the RTP
//!   relay): the first valid packet latches, the signalled address wins the leg back, and no
//!   other source ever takes it over, however long the phone is silent. Packets to the phone go
//!   to the latched source (else the signalled address).
//!
//! * Audio passes through untouched when both legs use the same law; else each sample is
//!   re-coded ([`Law::transcode`]).
//! * A DTMF key from the phone (RFC 4733 packets) is forwarded once, when the event ends, as an
//!   event attached to a frame of silence: the phone may send no audio while or after a key is
//!   pressed, and the WebRTC side (str0m's frame API) sends events with a frame.
//! * An event from the WebRTC leg becomes `telephone-event` packets to the phone; the end packet
//!   is sent three times (RFC 4733 §2.5.1.4). A phone that took no `telephone-event` gets none.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use crate::g711::Law;
use crate::latch::{DropReason, Kind, Latch, Verdict};
use crate::rtp::{DtmfEvent, RtpHeader, RtpStream, parse_rtp, rtcp_packets};

/// Samples (bytes of G.711) in the 20 ms frame of silence an event from the phone rides on.
pub const EVENT_FRAME_SAMPLES: usize = 160;

/// What the WebRTC leg is to send for one packet from the phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToWebRtc<'a> {
    /// The law of `payload` (the driver re-codes if the WebRTC leg did not take it).
    pub law: Law,
    pub payload: Cow<'a, [u8]>,
    /// The phone's RTP timestamp (8 kHz), for the frame's media time.
    pub timestamp: u32,
    /// A finished DTMF event to attach to this frame.
    pub event: Option<DtmfEvent>,
}

/// The desk-phone side of a bridge: the law and `telephone-event` payload type the phone
/// negotiated, the RTP stream we send it, and the last event forwarded from it.
#[derive(Debug, Clone)]
pub struct PhoneMedia {
    law: Law,
    te_pt: Option<u8>,
    out: RtpStream,
    last_event_ts: Option<u32>,
}

impl PhoneMedia {
    /// `out`: the stream towards the phone (random SSRC and first sequence number).
    pub fn new(law: Law, te_pt: Option<u8>, out: RtpStream) -> Self {
        PhoneMedia { law, te_pt, out, last_event_ts: None }
    }

    pub fn law(&self) -> Law {
        self.law
    }

    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.te_pt
    }

    /// A packet from the phone (parsed as `header`, from an accepted source) → what the WebRTC
    /// leg sends; `None` for a payload type that is neither G.711 nor the phone's
    /// `telephone-event`, and for event packets other than the first end packet of an event.
    pub fn from_phone<'a>(&mut self, header: &RtpHeader, packet: &'a [u8]) -> Option<ToWebRtc<'a>> {
        let payload = header.payload(packet);
        if Some(header.payload_type) == self.te_pt {
            let event = DtmfEvent::parse(payload).filter(|e| e.end)?;
            // The end packet comes three times (and may be retransmitted): one event per timestamp.
            if self.last_event_ts == Some(header.timestamp) {
                return None;
            }
            self.last_event_ts = Some(header.timestamp);
            let silence = vec![self.law.silence(); EVENT_FRAME_SAMPLES];
            return Some(ToWebRtc {
                law: self.law,
                payload: Cow::Owned(silence),
                timestamp: header.timestamp,
                event: Some(event),
            });
        }
        let law = Law::from_payload_type(header.payload_type)?;
        Some(ToWebRtc { law, payload: Cow::Borrowed(payload), timestamp: header.timestamp, event: None })
    }

    /// A frame of `law` audio from the WebRTC leg → the RTP packet for the phone, in its law.
    pub fn audio_to_phone(&mut self, law: Law, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let body = law.transcode(payload, self.law);
        self.out.packet(self.law.payload_type(), timestamp, &body)
    }

    /// An RFC 4733 event from the WebRTC leg → the packets for the phone (none when the phone
    /// took no `telephone-event`).
    pub fn event_to_phone(&mut self, event: DtmfEvent, timestamp: u32) -> Vec<Vec<u8>> {
        let Some(pt) = self.te_pt else { return vec![] };
        let body = event.to_bytes();
        let repeats = if event.end { 3 } else { 1 };
        (0..repeats).map(|_| self.out.packet(pt, timestamp, &body)).collect()
    }
}

/// What became of a datagram from the phone's RTP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromPhone<'a> {
    /// Accepted: the WebRTC leg sends this.
    Forward(ToWebRtc<'a>),
    /// Accepted (and latched, if it was the first), but nothing to send: another payload type,
    /// or an event packet other than the first end packet.
    Nothing,
    /// Not for this leg: not RTP, or no phone side yet. Latches nothing.
    Invalid,
    /// A valid packet from a source other than the latched one: dropped (count it).
    Dropped(DropReason),
}

/// A frame or RFC 4733 event the WebRTC leg received, for the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromWebRtc<'a> {
    /// G.711 audio in `law`; `timestamp` at 8 kHz.
    Audio {
        law: Law,
        timestamp: u32,
        payload: &'a [u8],
    },
    Event {
        event: DtmfEvent,
        timestamp: u32,
    },
}

/// RTP packets for the phone and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPhone {
    pub to: SocketAddr,
    pub packets: Vec<Vec<u8>>,
}

/// One bridge's per-call state on the phone side: which source the phone's RTP/RTCP latched onto
/// ([`Latch`]) and, once attached, the phone's media ([`PhoneMedia`]). A session exists before
/// its phone side (that waits for the caller's key), so the phone media comes later
/// ([`attach`](Self::attach)).
#[derive(Debug, Clone, Default)]
pub struct BridgeCore {
    latch: Latch,
    phone: Option<PhoneMedia>,
}

impl BridgeCore {
    /// `phone`: the phone side when it is known up front (F2 caller side).
    pub fn new(phone: Option<PhoneMedia>, signalled: Option<SocketAddr>) -> Self {
        let mut core = BridgeCore { latch: Latch::new(), phone };
        core.latch.set_signalled(signalled);
        core
    }

    /// The phone side is ready: bridge to it, at `signalled` when its SDP named an address.
    pub fn attach(&mut self, phone: PhoneMedia, signalled: Option<SocketAddr>) {
        self.phone = Some(phone);
        if signalled.is_some() {
            self.latch.set_signalled(signalled);
        }
    }

    pub fn phone(&self) -> Option<&PhoneMedia> {
        self.phone.as_ref()
    }

    /// The phone's SDP named `rtp` (a re-INVITE or UPDATE). Returns whether the leg was
    /// re-pointed (a new address: the latches are forgotten).
    pub fn set_signalled(&mut self, rtp: Option<SocketAddr>) -> bool {
        self.latch.set_signalled(rtp)
    }

    /// The source the phone's RTP latched onto.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latch.latched(Kind::Rtp)
    }

    /// A datagram on the phone leg's RTP socket from `source`. Only valid RTP (version 2, CSRCs
    /// and an extension skipped, padding dropped, RTCP on the RTP port refused) can latch.
    pub fn on_phone_rtp<'a>(&mut self, source: SocketAddr, packet: &'a [u8], now: Instant) -> FromPhone<'a> {
        let Some(phone) = self.phone.as_mut() else { return FromPhone::Invalid };
        let Ok(header) = parse_rtp(packet) else { return FromPhone::Invalid };
        if let Verdict::Drop(reason) = self.latch.on_packet(Kind::Rtp, source, now) {
            return FromPhone::Dropped(reason);
        }
        match phone.from_phone(&header, packet) {
            Some(to) => FromPhone::Forward(to),
            None => FromPhone::Nothing,
        }
    }

    /// A datagram on the phone leg's RTCP socket. It is not forwarded (str0m makes its own
    /// reports) but latches like the relay's; `Some` when it was valid RTCP dropped for its source.
    pub fn on_phone_rtcp(&mut self, source: SocketAddr, packet: &[u8], now: Instant) -> Option<DropReason> {
        let Some(Ok(_)) = rtcp_packets(packet).next() else { return None };
        match self.latch.on_packet(Kind::Rtcp, source, now) {
            Verdict::Drop(reason) => Some(reason),
            _ => None,
        }
    }

    /// A frame or event from the WebRTC leg → the packets for the phone and where they go
    /// (`None`: no phone side yet, nowhere to send, or nothing to send).
    pub fn from_webrtc(&mut self, frame: FromWebRtc<'_>) -> Option<ToPhone> {
        let to = self.latch.destination(Kind::Rtp)?;
        let phone = self.phone.as_mut()?;
        let packets = match frame {
            FromWebRtc::Audio { law, timestamp, payload } => vec![phone.audio_to_phone(law, timestamp, payload)],
            FromWebRtc::Event { event, timestamp } => phone.event_to_phone(event, timestamp),
        };
        (!packets.is_empty()).then_some(ToPhone { to, packets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpFields, build_rtp, parse_rtp};

    fn packet(pt: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
        build_rtp(&RtpFields { marker: false, payload_type: pt, sequence: 1, timestamp: ts, ssrc: 9 }, payload)
    }

    fn phone(law: Law, te: Option<u8>) -> PhoneMedia {
        PhoneMedia::new(law, te, RtpStream::new(0x1234, 100))
    }

    fn from_phone(p: &mut PhoneMedia, pkt: &[u8]) -> Option<ToWebRtc<'static>> {
        let h = parse_rtp(pkt).unwrap();
        p.from_phone(&h, pkt).map(|t| ToWebRtc { payload: Cow::Owned(t.payload.into_owned()), ..t })
    }

    #[test]
    fn phone_audio_goes_to_webrtc_in_the_law_it_came_in_without_copying() {
        let mut p = phone(Law::A, Some(101));
        let pkt = packet(8, 4000, &[0xd5, 0x2a]);
        let h = parse_rtp(&pkt).unwrap();
        let to = p.from_phone(&h, &pkt).unwrap();
        assert_eq!((to.law, to.timestamp, to.event), (Law::A, 4000, None));
        assert!(matches!(to.payload, Cow::Borrowed(&[0xd5, 0x2a])));
        // A phone that switches to the other static law is taken at its word.
        assert_eq!(from_phone(&mut p, &packet(0, 4160, &[0xff])).unwrap().law, Law::Mu);
    }

    #[test]
    fn other_payload_types_from_the_phone_are_dropped() {
        let mut p = phone(Law::Mu, Some(101));
        assert_eq!(from_phone(&mut p, &packet(18, 0, &[1, 2])), None, "G.729");
        assert_eq!(from_phone(&mut p, &packet(13, 0, &[1])), None, "comfort noise");
        // Without a negotiated telephone-event, 101 is just an unknown payload type.
        let mut no_te = phone(Law::Mu, None);
        assert_eq!(from_phone(&mut no_te, &packet(101, 0, &[5, 0x80, 3, 0x20])), None);
    }

    #[test]
    fn a_phone_key_is_forwarded_once_at_its_end_on_a_frame_of_silence() {
        let mut p = phone(Law::A, Some(101));
        let ev = |end, dur: u16| DtmfEvent { event: 5, end, volume: 10, duration: dur }.to_bytes();
        // Start and update packets: nothing yet.
        assert_eq!(from_phone(&mut p, &packet(101, 8000, &ev(false, 160))), None);
        assert_eq!(from_phone(&mut p, &packet(101, 8000, &ev(false, 320))), None);
        let to = from_phone(&mut p, &packet(101, 8000, &ev(true, 800))).unwrap();
        assert_eq!(to.event, Some(DtmfEvent { event: 5, end: true, volume: 10, duration: 800 }));
        assert_eq!((to.law, to.timestamp), (Law::A, 8000));
        assert_eq!(to.payload.as_ref(), &[Law::A.silence(); EVENT_FRAME_SAMPLES][..]);
        // The two repeats of the end packet: nothing more.
        assert_eq!(from_phone(&mut p, &packet(101, 8000, &ev(true, 800))), None);
        assert_eq!(from_phone(&mut p, &packet(101, 8000, &ev(true, 800))), None);
        // The next key (a new timestamp) goes through; a truncated event does not.
        assert!(from_phone(&mut p, &packet(101, 16000, &ev(true, 800))).unwrap().event.is_some());
        assert_eq!(from_phone(&mut p, &packet(101, 24000, &[5, 0x80])), None);
    }

    #[test]
    fn webrtc_audio_reaches_the_phone_in_the_phone_s_law() {
        let mut p = phone(Law::A, None);
        // μ-law from the browser, A-law phone: re-coded, sent with PT 8, marker on the first.
        let first = p.audio_to_phone(Law::Mu, 160, &[0xff, 0xce]);
        let h = parse_rtp(&first).unwrap();
        assert_eq!((h.payload_type, h.marker, h.sequence, h.timestamp, h.ssrc), (8, true, 100, 160, 0x1234));
        assert_eq!(h.payload(&first), Law::Mu.transcode(&[0xff, 0xce], Law::A).as_slice());
        assert_eq!(h.payload(&first), &[0xd5, 0xfb]);
        // Same law: the bytes pass untouched; the stream goes on.
        let next = p.audio_to_phone(Law::A, 320, &[0x2a]);
        let h = parse_rtp(&next).unwrap();
        assert_eq!((h.marker, h.sequence, h.payload(&next)), (false, 101, &[0x2a][..]));
    }

    #[test]
    fn a_webrtc_key_reaches_the_phone_with_its_end_three_times() {
        let mut p = phone(Law::Mu, Some(101));
        let ev = DtmfEvent { event: 11, end: false, volume: 10, duration: 160 };
        let update = p.event_to_phone(ev, 800);
        assert_eq!(update.len(), 1);
        let end = p.event_to_phone(DtmfEvent { end: true, duration: 800, ..ev }, 800);
        assert_eq!(end.len(), 3);
        for pkt in &end {
            let h = parse_rtp(pkt).unwrap();
            assert_eq!((h.payload_type, h.timestamp), (101, 800));
            assert_eq!(DtmfEvent::parse(h.payload(pkt)), Some(DtmfEvent { event: 11, end: true, volume: 10, duration: 800 }));
        }
        let seqs: Vec<u16> = end.iter().map(|p| parse_rtp(p).unwrap().sequence).collect();
        assert_eq!(seqs, [101, 102, 103], "each repeat is its own packet");
        // A phone without telephone-event gets no events.
        assert!(phone(Law::Mu, None).event_to_phone(ev, 0).is_empty());
    }

    /// An RTCP receiver report with no report blocks (RFC 3550 §6.4.2), from SSRC 9.
    const RTCP_RR: &[u8] = &[0x80, 201, 0, 1, 0, 0, 0, 9];

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn forwarded(f: FromPhone<'_>) -> Option<ToWebRtc<'static>> {
        match f {
            FromPhone::Forward(t) => Some(ToWebRtc { payload: Cow::Owned(t.payload.into_owned()), ..t }),
            _ => None,
        }
    }

    #[test]
    fn a_third_party_cannot_take_over_the_bridge_s_latched_phone_leg_however_long_the_phone_is_silent() {
        let t0 = Instant::now();
        // The phone is behind NAT: it said 10.0.0.5 and sends from its public address.
        let mut core = BridgeCore::new(None, Some(addr("10.0.0.5:4000")));
        core.attach(phone(Law::Mu, Some(101)), None);
        let phone_at = addr("198.51.100.7:31000");
        let attacker = addr("203.0.113.9:5004");
        let pkt = packet(0, 160, &[0xff; 160]);
        assert!(forwarded(core.on_phone_rtp(phone_at, &pkt, t0)).is_some());
        assert_eq!(core.latched(), Some(phone_at));
        let audio = FromWebRtc::Audio { law: Law::Mu, timestamp: 0, payload: &[0xff; 160] };
        assert_eq!(core.from_webrtc(audio).unwrap().to, phone_at);
        // The phone goes silent (mute, hold); the attacker's audio never reaches the caller and
        // never moves the leg, however long it keeps trying.
        for secs in [0, 1, 30, 3600] {
            let t = t0 + std::time::Duration::from_secs(secs);
            let bad = packet(0, 999, &[0x00; 160]);
            assert_eq!(core.on_phone_rtp(attacker, &bad, t), FromPhone::Dropped(DropReason::ForeignSource));
            let key = packet(101, 999, &DtmfEvent { event: 1, end: true, volume: 10, duration: 800 }.to_bytes());
            assert_eq!(core.on_phone_rtp(attacker, &key, t), FromPhone::Dropped(DropReason::ForeignSource));
        }
        let rtcp = RTCP_RR;
        assert_eq!(core.on_phone_rtcp(attacker, rtcp, t0), Some(DropReason::ForeignSource));
        assert_eq!(core.latched(), Some(phone_at));
        assert_eq!(core.from_webrtc(audio).unwrap().to, phone_at);
        // The phone speaks again: it is heard.
        let later = t0 + std::time::Duration::from_secs(3601);
        assert!(forwarded(core.on_phone_rtp(phone_at, &packet(0, 320, &[0xff]), later)).is_some());
    }

    #[test]
    fn the_bridge_s_phone_leg_latches_on_valid_rtp_only_and_a_new_sdp_address_re_points_it() {
        let t0 = Instant::now();
        let mut core = BridgeCore::new(None, None);
        let first = addr("192.0.2.10:4000");
        // No phone side yet (a session waiting for its key): nothing latches, nothing goes out.
        assert_eq!(core.on_phone_rtp(first, &packet(0, 0, &[0xff]), t0), FromPhone::Invalid);
        assert_eq!(core.from_webrtc(FromWebRtc::Audio { law: Law::Mu, timestamp: 0, payload: &[0xff] }), None);
        core.attach(phone(Law::A, Some(101)), Some(first));
        // Before anything arrives, the phone's audio goes to its signalled address.
        let out = core.from_webrtc(FromWebRtc::Audio { law: Law::Mu, timestamp: 0, payload: &[0xff] }).unwrap();
        assert_eq!((out.to, out.packets.len()), (first, 1));
        // Garbage and RTCP on the RTP port latch nothing.
        let junk = addr("203.0.113.9:5004");
        assert_eq!(core.on_phone_rtp(junk, b"hello", t0), FromPhone::Invalid);
        let rtcp = RTCP_RR;
        assert_eq!(core.on_phone_rtp(junk, rtcp, t0), FromPhone::Invalid);
        assert_eq!(core.latched(), None);
        // Accepted but not forwarded: a G.729 packet latches the phone's real source.
        let nat = addr("198.51.100.7:31000");
        assert_eq!(core.on_phone_rtp(nat, &packet(18, 0, &[1, 2]), t0), FromPhone::Nothing);
        assert_eq!(core.latched(), Some(nat));
        // A re-INVITE from elsewhere re-points the leg; the same address again does not.
        assert!(!core.set_signalled(Some(first)));
        let moved = addr("192.0.2.20:6000");
        assert!(core.set_signalled(Some(moved)));
        assert_eq!(core.latched(), None);
        let key = FromWebRtc::Event { event: DtmfEvent { event: 3, end: true, volume: 10, duration: 800 }, timestamp: 80 };
        let out = core.from_webrtc(key).unwrap();
        assert_eq!((out.to, out.packets.len()), (moved, 3));
    }
}
