// Shared by the `sip_message` / `sip_digest` fuzz targets and by sip/tests/fuzz_regressions.rs
// (pulled in with `include!`), so the fuzzer and `cargo test` run exactly the same code.
// Each function must never panic on any input; the return value says whether it was accepted.

use trunkline_sip::digest::{NonceCheck, NonceSource, parse_authorization, verify};
use trunkline_sip::{Frame, Framer, Message, Response, error_response, frame_len, parse};

/// One datagram / stream buffer through everything the gateway does with a received message.
pub fn sip_message(data: &[u8]) -> bool {
    // Stream framing (SIP over TCP/TLS): whole buffer, then fed byte by byte through one Framer.
    if let Ok(Some(Frame::Message(n))) = frame_len(data) {
        assert!(n <= data.len(), "frame longer than the buffer");
    }
    let mut framer = Framer::new();
    for end in [1, data.len() / 3, data.len() / 2, data.len()] {
        if end <= data.len()
            && let Ok(Some(Frame::Message(n) | Frame::KeepAlive { len: n, .. })) = framer.next_frame(&data[..end])
        {
            assert!(n <= end, "frame longer than the buffer");
        }
    }
    let msg = match parse(data) {
        Ok(m) => m,
        Err(e) => {
            assert!((400..700).contains(&e.status), "error status {}", e.status);
            if let Some(resp) = error_response(data, &e) {
                // It echoes the sender's own (possibly malformed) From/To/Call-ID/CSeq by design, so it
                // need not parse; but it must be one well-framed status response.
                assert!(resp.starts_with(b"SIP/2.0 "), "error response: {:?}", String::from_utf8_lossy(&resp));
                assert_eq!(frame_len(&resp).ok(), Some(Some(Frame::Message(resp.len()))), "error response framing");
            }
            return false;
        }
    };
    exercise_message(&msg);
    // What we accept, we must be able to write out and read back (the B2BUA forwards messages).
    let bytes = msg.to_bytes();
    match parse(&bytes) {
        Ok(again) => exercise_message(&again),
        Err(e) => panic!("re-serialised message does not parse ({e}): {:?}", String::from_utf8_lossy(&bytes)),
    }
    true
}

fn exercise_message(msg: &Message) {
    let _ = msg.call_id();
    let _ = msg.cseq().map(|c| c.to_string());
    let _ = msg.from().map(|f| (f.tag().map(str::to_owned), f.to_string()));
    let _ = msg.to().map(|t| (t.tag().map(str::to_owned), t.expires(), t.to_string()));
    if let Ok(vias) = msg.vias() {
        for v in vias {
            let _ = (v.branch(), v.is_rfc3261_branch(), v.received(), v.rport(), v.to_string());
        }
    }
    let _ = msg.top_via();
    if let Ok(contacts) = msg.contacts() {
        for c in contacts {
            let _ = (c.expires(), c.name_addr().map(|n| n.uri.to_string()), c.to_string());
        }
    }
    if let Ok(r) = msg.routes() {
        for n in r.iter() {
            let _ = (n.uri.lr(), n.uri.transport().map(str::to_owned));
        }
    }
    let _ = msg.record_routes();
    let _ = msg.expires();
    let _ = msg.max_forwards();
    let _ = msg.content_type();
    for name in ["Authorization", "Proxy-Authorization"] {
        for value in msg.headers().get_all(name) {
            if let Ok(creds) = parse_authorization(value) {
                let _ = verify(&creds, "REGISTER", "00112233445566778899aabbccddeeff");
            }
        }
    }
    if let Some(req) = msg.as_request() {
        let _ = (req.uri.to_string(), req.uri.is_sip(), req.method.as_str());
        // What the transaction layer does with every request: answer it with a tag, add a Via.
        let mut resp = Response::to_request(req, 180, "Ringing");
        resp.set_to_tag("fuzz1");
        let bytes = resp.to_bytes();
        let _ = parse(&bytes);
    }
    let _ = msg.body().len();
}

/// An Authorization header value, and a nonce, as a registrar receives them.
pub fn sip_digest(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let source = NonceSource::new([7; 32]);
    // The nonce check takes any string from the network.
    let _ = source.check(text, 1_800_000_000, 300);
    let _ = source.check(text, 0, u64::MAX);
    let _ = source.check(text, u64::MAX, 0);
    match parse_authorization(text) {
        Ok(creds) => {
            assert!(source.check(&creds.nonce, 1_800_000_000, 300) != NonceCheck::Valid, "forged nonce accepted");
            let _ = verify(&creds, "INVITE", "00112233445566778899aabbccddeeff");
            let _ = verify(&creds, "REGISTER", &creds.response);
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}
