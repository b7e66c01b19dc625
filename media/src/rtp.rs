//! Sans-IO RTP and RTCP parsing and building (RFC 3550 §5.1, §6.4, appendix A.2; RFC 5761 §4
//! demux; RFC 4733 §2.3 telephone events). The one RTP implementation of the workspace: the
//! relay, the WebRTC bridge, the echo number and the bench use it.
//!
//! Every parser here takes untrusted bytes straight off a socket: all reads are bounds-checked,
//! nothing panics or allocates, and every rejection is a typed error saying what was wrong.
//!
//! * [`parse_rtp`]: the fixed header, CSRC list, header extension and padding; the payload's place.
//! * [`parse_rtcp`]: walks a compound RTCP packet and checks each packet's header and length.
//! * [`is_rtcp`]: RTP/RTCP demultiplexing on one port (rtcp-mux) by the second byte.
//! * [`RtpFields`], [`rtp_header`], [`build_rtp`]: a packet with the 12-byte fixed header.
//! * [`RtpStream`]: one outgoing stream (SSRC, next sequence number, marker on its first packet).
//! * [`DtmfEvent`]: the 4-byte RFC 4733 event payload, both ways.

/// A parsed RTP fixed header. The payload is `buf[payload_offset..payload_offset + payload_len]`
/// (see [`RtpHeader::payload`]): after the CSRC list and the extension, before any padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub version: u8,
    pub padding: bool,
    pub extension: bool,
    pub csrc_count: u8,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The extension's profile-defined 16 bits, when `extension`.
    pub extension_profile: Option<u16>,
    pub payload_offset: usize,
    pub payload_len: usize,
    /// Padding bytes at the end (0 without the P bit).
    pub padding_len: usize,
}

impl RtpHeader {
    /// The payload of the packet this header was parsed from. `buf` must be that packet; an
    /// other, shorter buffer gives an empty slice rather than a panic.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.payload_offset..self.payload_offset + self.payload_len).unwrap_or(&[])
    }
}

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet too short: {len} bytes, the fixed header alone is 12")]
    TooShort { len: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("second byte {0} is an RTCP packet type (RTCP on the RTP port)")]
    RtcpPayloadType(u8),
    #[error("RTP CSRC list of {count} entries runs past the end of a {len}-byte packet")]
    CsrcPastEnd { count: u8, len: usize },
    #[error("RTP header extension runs past the end of a {len}-byte packet (needs {needed})")]
    ExtensionPastEnd { needed: usize, len: usize },
    #[error("RTP padding of {padding} bytes is zero or longer than the {available} bytes after the header")]
    BadPadding { padding: usize, available: usize },
}

/// RFC 5761 §4: a second byte of 192–223 (marker bit + payload type 64–95) is RTCP. Payload
/// types 72–79 are the ones that collide with RTCP SR/RR/SDES/BYE/APP and others.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Parse an RTP packet's header (RFC 3550 §5.1, §5.3.1). Rejects RTCP multiplexed on the RTP
/// port ([`RtpError::RtcpPayloadType`]): check [`is_rtcp`] first where rtcp-mux is in use.
pub fn parse_rtp(buf: &[u8]) -> Result<RtpHeader, RtpError> {
    let len = buf.len();
    if len < 12 {
        return Err(RtpError::TooShort { len });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = buf[0] & 0x0f;
    let marker = buf[1] & 0x80 != 0;
    let payload_type = buf[1] & 0x7f;
    if is_rtcp(buf) {
        return Err(RtpError::RtcpPayloadType(buf[1]));
    }
    let mut off = 12 + 4 * usize::from(csrc_count);
    if off > len {
        return Err(RtpError::CsrcPastEnd { count: csrc_count, len });
    }
    let mut extension_profile = None;
    if extension {
        let (Some(profile), Some(words)) = (be16(buf, off), be16(buf, off + 2)) else {
            return Err(RtpError::ExtensionPastEnd { needed: off + 4, len });
        };
        let needed = off + 4 + 4 * usize::from(words);
        if needed > len {
            return Err(RtpError::ExtensionPastEnd { needed, len });
        }
        extension_profile = Some(profile);
        off = needed;
    }
    let available = len - off;
    let padding_len = if padding {
        let p = usize::from(buf[len - 1]);
        if p == 0 || p > available {
            return Err(RtpError::BadPadding { padding: p, available });
        }
        p
    } else {
        0
    };
    Ok(RtpHeader {
        version,
        padding,
        extension,
        csrc_count,
        marker,
        payload_type,
        sequence: be16(buf, 2).unwrap_or(0),
        timestamp: be32(buf, 4).unwrap_or(0),
        ssrc: be32(buf, 8).unwrap_or(0),
        extension_profile,
        payload_offset: off,
        payload_len: available - padding_len,
        padding_len,
    })
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket {
    /// Byte offset of this packet within the compound packet.
    pub offset: usize,
    /// Its whole length in bytes, header and padding included: `(length field + 1) * 4`.
    pub len: usize,
    pub packet_type: u8,
    /// Report count / subtype / source count: the header's 5-bit field.
    pub count: u8,
    pub padding: bool,
    /// The first SSRC after the header (sender of SR/RR, first source of SDES/BYE, …), if the
    /// packet has one.
    pub ssrc: Option<u32>,
}

/// Summary of a valid compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpCompound {
    /// How many RTCP packets it holds (≥ 1).
    pub packets: usize,
    pub first: RtcpPacket,
}

/// Why bytes are not a (compound) RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP data empty or too short for a header at offset {offset}")]
    TooShort { offset: usize },
    #[error("RTCP version {version} at offset {offset}, expected 2")]
    BadVersion { version: u8, offset: usize },
    #[error("RTCP packet type {packet_type} at offset {offset} is outside 192–223")]
    BadPacketType { packet_type: u8, offset: usize },
    #[error("RTCP packet at offset {offset} claims {claimed} bytes, only {remaining} remain")]
    LengthPastEnd { offset: usize, claimed: usize, remaining: usize },
    #[error("RTCP padding bit set on packet at offset {offset}, which is not the last one")]
    PaddingNotLast { offset: usize },
    #[error("RTCP padding of {padding} bytes is zero or longer than the packet at offset {offset}")]
    BadPadding { padding: usize, offset: usize },
}

/// An iterator over the packets of a compound RTCP packet; stops after the first error.
#[derive(Debug, Clone)]
pub struct RtcpPackets<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

/// Walk the packets of a compound RTCP packet one by one (see [`parse_rtcp`] for the checks).
pub fn rtcp_packets(buf: &[u8]) -> RtcpPackets<'_> {
    RtcpPackets { buf, offset: 0, failed: false }
}

impl Iterator for RtcpPackets<'_> {
    type Item = Result<RtcpPacket, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || (self.offset >= self.buf.len() && self.offset > 0) {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        Some(r)
    }
}

impl RtcpPackets<'_> {
    fn step(&mut self) -> Result<RtcpPacket, RtcpError> {
        let (b, offset) = (self.buf, self.offset);
        let (Some(&first), Some(&packet_type), Some(words)) = (b.get(offset), b.get(offset + 1), be16(b, offset + 2)) else {
            return Err(RtcpError::TooShort { offset });
        };
        let version = first >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { version, offset });
        }
        if !(192..=223).contains(&packet_type) {
            return Err(RtcpError::BadPacketType { packet_type, offset });
        }
        let len = (usize::from(words) + 1) * 4;
        let remaining = b.len() - offset;
        if len > remaining {
            return Err(RtcpError::LengthPastEnd { offset, claimed: len, remaining });
        }
        let padding = first & 0x20 != 0;
        if padding {
            if len != remaining {
                return Err(RtcpError::PaddingNotLast { offset });
            }
            let p = usize::from(b[offset + len - 1]);
            if p == 0 || p > len - 4 {
                return Err(RtcpError::BadPadding { padding: p, offset });
            }
        }
        self.offset += len;
        Ok(RtcpPacket {
            offset,
            len,
            packet_type,
            count: first & 0x1f,
            padding,
            ssrc: if len >= 8 { be32(b, offset + 4) } else { None },
        })
    }
}

/// Check a compound RTCP packet (RFC 3550 A.2, relaxed for RFC 5506 reduced-size RTCP): every
/// packet is version 2 with a packet type in 192–223, each length field stays within the
/// datagram, the lengths add up to exactly the datagram, and only the last packet is padded.
/// The first packet need not be SR/RR (reduced-size RTCP, feedback-only packets).
pub fn parse_rtcp(buf: &[u8]) -> Result<RtcpCompound, RtcpError> {
    let mut first = None;
    let mut packets = 0;
    for p in rtcp_packets(buf) {
        let p = p?;
        first.get_or_insert(p);
        packets += 1;
    }
    match first {
        Some(first) => Ok(RtcpCompound { packets, first }),
        None => Err(RtcpError::TooShort { offset: 0 }),
    }
}

/// Length of the fixed RTP header (no CSRCs, no extension): all this crate ever sends.
pub const RTP_HEADER_LEN: usize = 12;

/// The fields of an outgoing packet's fixed header (version 2, no padding, extension or CSRCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpFields {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// The fixed header for `f` (a payload type above 127 is masked to 7 bits).
pub fn rtp_header(f: &RtpFields) -> [u8; RTP_HEADER_LEN] {
    let mut h = [0u8; RTP_HEADER_LEN];
    h[0] = 0x80;
    h[1] = (u8::from(f.marker) << 7) | (f.payload_type & 0x7f);
    h[2..4].copy_from_slice(&f.sequence.to_be_bytes());
    h[4..8].copy_from_slice(&f.timestamp.to_be_bytes());
    h[8..12].copy_from_slice(&f.ssrc.to_be_bytes());
    h
}

/// A whole RTP packet: the fixed header for `f`, then `payload`.
pub fn build_rtp(f: &RtpFields, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
    p.extend_from_slice(&rtp_header(f));
    p.extend_from_slice(payload);
    p
}

/// One outgoing RTP stream: its SSRC and next sequence number (wrapping). Its first packet has
/// the marker bit set (RFC 3551 §4.1: the start of a talkspurt); timestamps are the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpStream {
    pub ssrc: u32,
    pub next_sequence: u16,
    first: bool,
}

impl RtpStream {
    /// A stream with this SSRC whose first packet carries `first_sequence` (both random, RFC
    /// 3550 §5.1, so that they are not guessable).
    pub fn new(ssrc: u32, first_sequence: u16) -> Self {
        RtpStream { ssrc, next_sequence: first_sequence, first: true }
    }

    /// The next packet of the stream.
    pub fn packet(&mut self, payload_type: u8, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let f = RtpFields {
            marker: std::mem::take(&mut self.first),
            payload_type,
            sequence: self.next_sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        self.next_sequence = self.next_sequence.wrapping_add(1);
        build_rtp(&f, payload)
    }
}

/// An RFC 4733 §2.3 named telephone event (the payload of a `telephone-event` packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// 0–9, `*` = 10, `#` = 11, A–D = 12–15, flash = 16.
    pub event: u8,
    /// The E bit: this packet ends the event (RFC 4733 sends the end three times).
    pub end: bool,
    /// Power level, 0 to 63 (−dBm0).
    pub volume: u8,
    /// Duration so far, in timestamp units (1/8000 s for `telephone-event/8000`).
    pub duration: u16,
}

impl DtmfEvent {
    /// The event in an RTP payload: its first 4 bytes (several events in one payload, RFC 4733
    /// §2.5.1.5, give the first). `None` when the payload is shorter than one event.
    pub fn parse(payload: &[u8]) -> Option<DtmfEvent> {
        let [event, flags, d0, d1, ..] = *payload else { return None };
        Some(DtmfEvent { event, end: flags & 0x80 != 0, volume: flags & 0x3f, duration: u16::from_be_bytes([d0, d1]) })
    }

    /// The 4-byte payload (the reserved R bit is 0; the volume is masked to 6 bits).
    pub fn to_bytes(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [self.event, (u8::from(self.end) << 7) | (self.volume & 0x3f), d[0], d[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_packet_parses_back_to_its_fields() {
        let f = RtpFields { marker: true, payload_type: 101, sequence: 0xfffe, timestamp: 0x0102_0304, ssrc: 0xdead_beef };
        let p = build_rtp(&f, &[9, 8, 7]);
        assert_eq!(&p[..RTP_HEADER_LEN], &[0x80, 0x80 | 101, 0xff, 0xfe, 1, 2, 3, 4, 0xde, 0xad, 0xbe, 0xef]);
        let h = parse_rtp(&p).unwrap();
        assert_eq!((h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc), (true, 101, 0xfffe, 0x0102_0304, 0xdead_beef));
        assert_eq!(h.payload(&p), &[9, 8, 7]);
        // A payload type past 7 bits cannot leak into the marker bit.
        let p = build_rtp(&RtpFields { marker: false, payload_type: 0x80 | 8, ..f }, &[]);
        assert_eq!(p[1], 8);
    }

    #[test]
    fn a_stream_marks_its_first_packet_and_wraps_its_sequence() {
        let mut s = RtpStream::new(7, 65535);
        let a = parse_rtp(&s.packet(0, 160, &[1])).unwrap();
        let b = parse_rtp(&s.packet(0, 320, &[2])).unwrap();
        assert_eq!((a.marker, a.sequence, a.ssrc), (true, 65535, 7));
        assert_eq!((b.marker, b.sequence, b.timestamp), (false, 0, 320));
        assert_eq!(s.next_sequence, 1);
    }

    #[test]
    fn dtmf_events_round_trip_and_short_payloads_are_refused() {
        // RFC 4733 §2.3 figure: digit 5, end, volume 10, duration 800 (100 ms).
        let e = DtmfEvent { event: 5, end: true, volume: 10, duration: 800 };
        assert_eq!(e.to_bytes(), [5, 0x80 | 10, 0x03, 0x20]);
        assert_eq!(DtmfEvent::parse(&e.to_bytes()), Some(e));
        // The reserved bit is ignored on input; trailing events are left alone.
        assert_eq!(
            DtmfEvent::parse(&[11, 0x40 | 7, 0, 160, 1, 2, 3, 4]),
            Some(DtmfEvent { event: 11, end: false, volume: 7, duration: 160 })
        );
        assert_eq!(DtmfEvent::parse(&[5, 0x80, 3]), None);
        assert_eq!(DtmfEvent::parse(&[]), None);
    }

    fn rtp(first: u8, pt: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![first, pt, 0x12, 0x34, 0, 0, 0x03, 0xe8, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn a_plain_rtp_packet() {
        let p = rtp(0x80, 0x80 | 8, &[1, 2, 3]);
        let h = parse_rtp(&p).unwrap();
        assert_eq!(
            (h.version, h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc),
            (2, true, 8, 0x1234, 1000, 0xdeadbeef)
        );
        assert_eq!(h.payload(&p), &[1, 2, 3]);
        assert!(!is_rtcp(&p));
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        // CC=1, X, P: CSRC, extension of 1 word, payload [7, 7], 2 bytes of padding.
        let mut tail = vec![0, 0, 0, 9];
        tail.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        tail.extend_from_slice(&[7, 7, 0, 2]);
        let p = rtp(0x80 | 0x20 | 0x10 | 1, 0, &tail);
        let h = parse_rtp(&p).unwrap();
        assert_eq!((h.csrc_count, h.extension_profile, h.padding_len), (1, Some(0xbede), 2));
        assert_eq!(h.payload(&p), &[7, 7]);
        // A buffer that is not the packet gives an empty payload, not a panic.
        assert_eq!(h.payload(&p[..3]), &[] as &[u8]);
    }

    #[test]
    fn bad_rtp_is_a_typed_error() {
        assert_eq!(parse_rtp(&[]), Err(RtpError::TooShort { len: 0 }));
        assert_eq!(parse_rtp(&rtp(0x80, 0, &[])[..11]), Err(RtpError::TooShort { len: 11 }));
        assert_eq!(parse_rtp(&rtp(0x40, 0, &[])), Err(RtpError::BadVersion(1)));
        assert_eq!(parse_rtp(&[0u8; 20]), Err(RtpError::BadVersion(0)), "STUN starts with 0b00");
        // CC = 15 with no CSRCs present.
        assert_eq!(parse_rtp(&rtp(0x8f, 0, &[0; 8])), Err(RtpError::CsrcPastEnd { count: 15, len: 20 }));
        // Extension header missing, then extension length past the end.
        assert!(matches!(parse_rtp(&rtp(0x90, 0, &[0xbe])), Err(RtpError::ExtensionPastEnd { .. })));
        assert_eq!(
            parse_rtp(&rtp(0x90, 0, &[0xbe, 0xde, 0xff, 0xff, 1])),
            Err(RtpError::ExtensionPastEnd { needed: 12 + 4 + 4 * 0xffff, len: 17 })
        );
        // Padding longer than the packet, and zero padding.
        assert_eq!(parse_rtp(&rtp(0xa0, 0, &[1, 200])), Err(RtpError::BadPadding { padding: 200, available: 2 }));
        assert_eq!(parse_rtp(&rtp(0xa0, 0, &[1, 0])), Err(RtpError::BadPadding { padding: 0, available: 2 }));
        // Padding consuming the whole payload is allowed.
        assert_eq!(parse_rtp(&rtp(0xa0, 0, &[0, 2])).unwrap().payload_len, 0);
        // RTCP RR on the RTP port.
        let rr = [0x80, 201, 0, 1, 1, 2, 3, 4];
        assert!(is_rtcp(&rr));
        assert!(matches!(parse_rtp(&[&rr[..], &[0; 8]].concat()), Err(RtpError::RtcpPayloadType(201))));
    }

    #[test]
    fn every_prefix_of_every_shape_parses_without_panic() {
        let mut tail = vec![0, 0, 0, 9, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, 7, 7, 0, 2];
        tail.extend_from_slice(&[0xff; 8]);
        for first in 0..=255u8 {
            let p = rtp(first, 0, &tail);
            for n in 0..=p.len() {
                let _ = parse_rtp(&p[..n]);
                let _ = parse_rtcp(&p[..n]);
            }
        }
    }

    fn sr() -> Vec<u8> {
        // SR with no report blocks: header + SSRC + 20 bytes of sender info = 28 bytes, length 6.
        let mut p = vec![0x80, 200, 0, 6, 0, 0, 0, 5];
        p.extend_from_slice(&[0; 20]);
        p
    }

    #[test]
    fn a_compound_rtcp_packet() {
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 5];
        let c = [sr(), bye.to_vec()].concat();
        let r = parse_rtcp(&c).unwrap();
        assert_eq!((r.packets, r.first.packet_type, r.first.ssrc), (2, 200, Some(5)));
        let all: Vec<_> = rtcp_packets(&c).collect::<Result<_, _>>().unwrap();
        assert_eq!((all[1].offset, all[1].packet_type, all[1].count), (28, 203, 1));
        // Padding on the last packet only.
        let padded = [sr(), vec![0xa0, 203, 0, 1, 0, 0, 0, 4]].concat();
        assert_eq!(parse_rtcp(&padded).unwrap().packets, 2);
    }

    #[test]
    fn bad_rtcp_is_a_typed_error() {
        assert_eq!(parse_rtcp(&[]), Err(RtcpError::TooShort { offset: 0 }));
        assert_eq!(parse_rtcp(&[0x80, 200, 0]), Err(RtcpError::TooShort { offset: 0 }));
        assert_eq!(parse_rtcp(&[0x40, 200, 0, 0]), Err(RtcpError::BadVersion { version: 1, offset: 0 }));
        assert_eq!(parse_rtcp(&[0x80, 0, 0, 0]), Err(RtcpError::BadPacketType { packet_type: 0, offset: 0 }));
        // Length field past the end, on the first and on a later packet.
        assert_eq!(
            parse_rtcp(&[0x80, 201, 0xff, 0xff]),
            Err(RtcpError::LengthPastEnd { offset: 0, claimed: 0x10000 * 4, remaining: 4 })
        );
        let mut c = sr();
        c.extend_from_slice(&[0x80, 203, 0, 9, 0, 0, 0, 1]);
        assert_eq!(parse_rtcp(&c), Err(RtcpError::LengthPastEnd { offset: 28, claimed: 40, remaining: 8 }));
        // Trailing bytes that are not a whole packet.
        let c = [sr(), vec![0x80, 203]].concat();
        assert_eq!(parse_rtcp(&c), Err(RtcpError::TooShort { offset: 28 }));
        // Padding on a packet that is not the last; padding too long; zero padding.
        let mut first_padded = sr();
        first_padded[0] |= 0x20;
        first_padded.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 5]);
        assert_eq!(parse_rtcp(&first_padded), Err(RtcpError::PaddingNotLast { offset: 0 }));
        assert_eq!(parse_rtcp(&[0xa0, 203, 0, 1, 0, 0, 0, 9]), Err(RtcpError::BadPadding { padding: 9, offset: 0 }));
        assert_eq!(parse_rtcp(&[0xa0, 203, 0, 1, 0, 0, 0, 0]), Err(RtcpError::BadPadding { padding: 0, offset: 0 }));
    }
}
