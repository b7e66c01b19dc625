//! The fuzz corpus and every crash the fuzzer ever found (fuzz/corpus, fuzz/regressions) replayed
//! through the code the `sdp`, `stun` and `rtp_rtcp` fuzz targets run, so `cargo test` keeps them
//! without a fuzzer: none may panic; each is accepted or gets a typed error.

#[allow(dead_code)]
mod sdp {
    include!("../../fuzz/exercise/sdp.rs");
}

#[allow(dead_code)]
mod stun {
    include!("../../fuzz/exercise/stun.rs");
}

#[allow(dead_code)]
mod rtp_rtcp {
    include!("../../fuzz/exercise/rtp_rtcp.rs");
}

#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn sdp_bodies_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("sdp", sdp::sdp);
    assert!(total >= 5, "only {total} inputs found under fuzz/");
    assert!(accepted >= 3, "only {accepted} of {total} parsed");
}

#[test]
fn stun_and_turn_datagrams_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("stun", stun::stun);
    assert!(total >= 5, "only {total} inputs found under fuzz/");
    // The seeded Binding success response is taken by the probe as the answer to its request.
    assert!(accepted >= 1, "the probe took none of {total} datagrams as its own");
}

#[test]
fn rtp_and_rtcp_packets_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("rtp_rtcp", rtp_rtcp::rtp_rtcp);
    assert!(total >= 5, "only {total} inputs found under fuzz/");
    assert!(accepted >= 3, "only {accepted} of {total} parsed as RTP or RTCP");
}
