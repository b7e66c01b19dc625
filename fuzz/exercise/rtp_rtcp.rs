// Shared by the `rtp_rtcp` fuzz target and media/tests/fuzz_regressions.rs (via `include!`).
// A datagram on a relay's RTP or RTCP port (rtcp-mux demux included). Never panics; returns
// whether it was taken as RTP or RTCP.

use trunkline_media::rtp::{is_rtcp, parse_rtcp, parse_rtp, rtcp_packets};

pub fn rtp_rtcp(data: &[u8]) -> bool {
    let mut accepted = false;
    let _ = is_rtcp(data);
    if let Ok(h) = parse_rtp(data) {
        accepted = true;
        // The header's claims stay inside the datagram.
        let end = h.payload_offset + h.payload_len + h.padding_len;
        assert_eq!(end, data.len(), "RTP parts do not add up to the datagram: {h:?}");
        assert_eq!(h.payload(data).len(), h.payload_len);
        assert!(h.payload_type < 128 && h.version == 2);
    }
    match parse_rtcp(data) {
        Ok(c) => {
            accepted = true;
            assert!(c.packets >= 1);
            // The walk covers exactly the datagram, packet after packet.
            let mut next = 0;
            for p in rtcp_packets(data) {
                let p = p.expect("parse_rtcp accepted it, so every packet is good");
                assert_eq!(p.offset, next);
                next += p.len;
            }
            assert_eq!(next, data.len(), "RTCP lengths do not add up to the datagram");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    accepted
}
