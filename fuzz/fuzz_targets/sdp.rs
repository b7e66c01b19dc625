#![no_main]
//! Fuzz target `sdp`: see fuzz/README.md. The body lives in exercise/sdp.rs, shared with the
//! regression test that replays fuzz/corpus and fuzz/regressions under plain `cargo test`.

#[allow(dead_code)]
mod exercise {
    include!("../exercise/sdp.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = exercise::sdp(data);
});
