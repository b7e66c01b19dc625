#![no_main]
//! Fuzz target `sip_digest`: see fuzz/README.md. The body lives in exercise/sip.rs, shared with the
//! regression test that replays fuzz/corpus and fuzz/regressions under plain `cargo test`.

#[allow(dead_code)]
mod exercise {
    include!("../exercise/sip.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = exercise::sip_digest(data);
});
