// Shared by the `protocol` fuzz target and protocol/tests/fuzz_regressions.rs (via `include!`).
// Never panics on any input; returns whether any decoder accepted it.

use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg, ServerMsg, json_deeper_than};

/// One WebSocket text frame (browser or gateway → signal server, server → gateway/browser) or
/// one DataChannel text message (`trunkline-direct`: the C14 key presentation and the replies).
pub fn protocol(data: &[u8]) -> bool {
    // Both the signal server and the bridge drop non-UTF-8 frames before decoding.
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let _ = json_deeper_than(text, 32);
    let mut accepted = false;
    match ClientMsg::decode(text) {
        Ok(m) => {
            accepted = true;
            let _ = (m.kind(), m.call_id(), format!("{m:?}"));
            // What the server accepted re-encodes to something it accepts again, unchanged.
            let again = ClientMsg::decode(&m.encode()).unwrap_or_else(|e| panic!("re-encoded ClientMsg refused: {e:?}"));
            assert_eq!(again, m, "ClientMsg changed in a round trip");
        }
        Err(e) => {
            let _ = e.to_msg(None).encode();
        }
    }
    if let Ok(m) = ServerMsg::decode(text) {
        accepted = true;
        let _ = (format!("{m:?}"), m.encode());
    }
    match DirectClientMsg::decode(text) {
        Ok(m) => {
            accepted = true;
            let again =
                DirectClientMsg::decode(&m.encode()).unwrap_or_else(|e| panic!("re-encoded DirectClientMsg refused: {e:?}"));
            assert_eq!(again, m, "DirectClientMsg changed in a round trip");
        }
        Err(e) => {
            let _ = e.to_msg(None).encode();
        }
    }
    if let Ok(m) = DirectServerMsg::decode(text) {
        accepted = true;
        let _ = m.encode();
    }
    accepted
}
