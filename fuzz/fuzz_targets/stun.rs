#![no_main]
//! Fuzz target `stun`: see fuzz/README.md. The body lives in exercise/stun.rs, shared with the
//! regression test that replays fuzz/corpus and fuzz/regressions under plain `cargo test`.

#[allow(dead_code)]
mod exercise {
    include!("../exercise/stun.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = exercise::stun(data);
});
