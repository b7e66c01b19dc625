//! Deterministic core tests of what the transaction layer and the typed failures decide: a
//! callee that never answers our CANCEL is let go, and a callee gone offline is reported so.
//! Fake clock, fixed wall time and RNG seed (see `tests::H`), no sockets.

use super::tests::{H, addr, direct_signal, only_request, reply_text};
use super::*;
use trunkline_protocol::PROTOCOL_VERSION;

#[test]
fn a_ringing_callee_that_never_answers_our_cancel_is_forgotten_64_t1_later() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    h.invite("1002");
    let b = addr(5070);
    let inv = only_request(h.sent_to(b));
    h.sip(b, &reply_text(&inv, 180, "Ringing", "callee", None));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.last_status(addr(5062)), 480);
    assert_eq!(only_request(h.sent_to(b)).method, Method::Cancel);
    // Our INVITE (ringing, cancelled) and our CANCEL wait for answers that never come.
    assert_eq!(h.core.client_txs.len(), 2);
    h.advance(T64);
    assert_eq!(h.core.client_txs.len(), 0, "RFC 3261 §9.1: given up 64·T1 after the CANCEL");
    assert_eq!(h.core.server_transactions(), 0);
    assert_eq!(h.core.poll_timeout(), None, "nothing left to wait for");
    // The caller never ACKed our 480 either: it only got that again (timer G).
    assert!(h.sent_to(addr(5062)).iter().all(|m| matches!(m, Message::Response(r) if r.status == 480)));
}

#[test]
fn a_callee_gone_offline_after_its_key_was_issued_is_reported_callee_offline() {
    let mut h = H::new();
    // Registered for 60 s; the key is issued at 40 s (for 30 s).
    assert_eq!(h.register_with("1002", "pw-1002", 5070, 60), 200);
    h.advance(Duration::from_secs(40));
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::CalleeQuery {
            call_id: "f1".into(),
            from: "2001".into(),
            from_name: "A".into(),
            to: "1002".into(),
        }),
    );
    h.drain();
    let key = match h.cloud_msgs().as_slice() {
        [ClientMsg::QueryAnswer { answer: QueryAnswer::Accept { key, .. }, .. }] => key.clone(),
        other => panic!("{other:?}"),
    };
    // The registration lapses before the caller presents its key.
    h.advance(Duration::from_secs(21));
    h.out.clear();
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "f1".into(), key, caller: "2001".into() },
    );
    h.drain();
    assert!(h.out.iter().any(|o| matches!(
        o,
        Output::Direct { conn: 1, msg: DirectServerMsg::Ended { outcome: Outcome::CalleeOffline }, close: true }
    )));
    let reported: Vec<Outcome> = h
        .cloud_msgs()
        .into_iter()
        .filter_map(|m| match m {
            ClientMsg::CallReport { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(reported, vec![Outcome::CalleeOffline]);
    assert!(h.sent_to(addr(5070)).is_empty(), "nothing rings");
}

#[test]
fn each_failure_gives_its_sip_status_and_its_outcome() {
    let cases = [
        (Failure::CalleeOffline, 480, Outcome::CalleeOffline),
        (Failure::Busy, 486, Outcome::Busy),
        (Failure::Declined, 603, Outcome::Declined),
        (Failure::NoAnswer(Some("no answer")), 480, Outcome::NoAnswer),
        (Failure::Cancelled, 487, Outcome::Cancelled),
        (Failure::NotFound("no such number".into()), 404, Outcome::RejectedInvalid),
        (Failure::NotAcceptable("bad SDP".into()), 488, Outcome::Error),
        (Failure::Unavailable("no cloud".into()), 503, Outcome::Error),
        (Failure::Internal("duplicate call id".into()), 500, Outcome::Error),
        (Failure::Remote(Outcome::Connected), 480, Outcome::NoAnswer),
        (Failure::Remote(Outcome::Busy), 486, Outcome::Busy),
    ];
    for (f, code, outcome) in cases {
        assert_eq!((f.status().0, f.outcome()), (code, outcome), "{f:?}");
    }
    assert_eq!(Failure::CalleeOffline.warning(), Some("the callee is not registered"));
}
