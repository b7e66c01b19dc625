// Shared by the `sdp` fuzz target and media/tests/fuzz_regressions.rs (via `include!`).
// Never panics on any input; returns whether the SDP was accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use trunkline_media::sdp::{Codec, Sdp, bump_version, rewrite};

/// An SDP body from a SIP peer or a browser, through what the B2BUA and the bridge do with it.
pub fn sdp(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let parsed = match Sdp::parse(text) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            // The rewriters parse first: they must refuse what the parser refuses, without panicking.
            assert!(
                rewrite(text, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000, None).is_err(),
                "rewrite accepted unparsable SDP"
            );
            let _ = bump_version(text);
            return false;
        }
    };
    let _ = (parsed.audio_connection(), parsed.audio_rtp_addr(), parsed.audio_rtcp_addr());
    if let Some(audio) = parsed.audio.as_ref() {
        let _ = (audio.telephone_event_pt(), audio.g711_payloads(), audio.offers(Codec::Pcmu), audio.direction.reversed());
        for &pt in &audio.payload_types {
            let _ = (audio.codec(pt), audio.fmtp(pt));
        }
    }
    // The B2BUA points the audio at its relay (both families, with and without a codec filter),
    // then bumps the version for a re-offer; what it writes must parse again.
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    for (addr, port, keep) in [
        (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000, None),
        (v6, 65534, Some(&[0u8, 8, 101][..])),
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1, Some(&[][..])),
    ] {
        if let Ok(out) = rewrite(text, addr, port, keep) {
            let again = Sdp::parse(&out).unwrap_or_else(|e| panic!("rewritten SDP does not parse ({e}): {out:?}"));
            let rtp = again.audio_rtp_addr();
            assert!(
                rtp.is_none() || rtp == Some(std::net::SocketAddr::new(addr, port)),
                "rewrite left audio at {rtp:?}: {out:?}"
            );
            if let Ok(bumped) = bump_version(&out) {
                Sdp::parse(&bumped).unwrap_or_else(|e| panic!("bumped SDP does not parse ({e}): {bumped:?}"));
            }
        }
    }
    let _ = bump_version(text);
    true
}
