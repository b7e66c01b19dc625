#![no_main]
//! Fuzz target `rtp_rtcp`: see fuzz/README.md. The body lives in exercise/rtp_rtcp.rs, shared with the
//! regression test that replays fuzz/corpus and fuzz/regressions under plain `cargo test`.

#[allow(dead_code)]
mod exercise {
    include!("../exercise/rtp_rtcp.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = exercise::rtp_rtcp(data);
});
