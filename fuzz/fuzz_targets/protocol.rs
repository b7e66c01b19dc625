#![no_main]
//! Fuzz target `protocol`: see fuzz/README.md. The body lives in exercise/protocol.rs, shared with the
//! regression test that replays fuzz/corpus and fuzz/regressions under plain `cargo test`.

#[allow(dead_code)]
mod exercise {
    include!("../exercise/protocol.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = exercise::protocol(data);
});
