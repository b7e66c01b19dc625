//! The fuzz corpus and every crash the fuzzer ever found (fuzz/corpus, fuzz/regressions) replayed
//! through the code the `protocol` fuzz target runs (WebSocket frames and DataChannel messages),
//! so `cargo test` keeps them without a fuzzer: none may panic; each decodes or gets a typed error.

#[allow(dead_code)]
mod exercise {
    include!("../../fuzz/exercise/protocol.rs");
}

#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn protocol_frames_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("protocol", exercise::protocol);
    // Seeded with the examples of docs/protocol.md: many are real, decodable messages.
    assert!(total >= 50, "only {total} inputs found under fuzz/");
    assert!(accepted >= 20, "only {accepted} of {total} decoded");
}
