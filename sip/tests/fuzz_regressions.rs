//! The fuzz corpus and every crash the fuzzer ever found (fuzz/corpus, fuzz/regressions) replayed
//! through the very code the `sip_message` and `sip_digest` fuzz targets run, so `cargo test` keeps
//! them without a fuzzer: none may panic, and each ends in a parsed message or a typed error.

#[allow(dead_code)]
mod exercise {
    include!("../../fuzz/exercise/sip.rs");
}

#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn sip_messages_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("sip_message", exercise::sip_message);
    // The corpus is seeded with the 49 RFC 4475 torture messages, most of them valid.
    assert!(total >= 49, "only {total} inputs found under fuzz/");
    assert!(accepted >= 20, "only {accepted} of {total} parsed");
}

#[test]
fn digest_headers_from_the_fuzz_corpus_and_past_crashes_never_panic() {
    let (accepted, total) = replay::replay("sip_digest", exercise::sip_digest);
    assert!(total >= 5, "only {total} inputs found under fuzz/");
    assert!(accepted >= 1, "no Authorization value in the corpus parsed");
}
