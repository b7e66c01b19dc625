//! Deterministic tests of the gateway core with the cloud: B2/B3/B6 routing answers, C11/C12
//! queries, C14 keys on a session's DataChannel, C15 bridging, F2 and F3 over WebRTC, the echo
//! number, shutdown. Fake clock, fake media and bridges (see `tests::H`), no sockets.

use super::tests::*;
use super::*;
use trunkline_protocol::PROTOCOL_VERSION;

#[test]
fn c14_c15_the_key_on_the_leg_s_datachannel_rings_the_phone_through_that_leg() {
    let mut h = H::new();
    h.register("1002", 5070);
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
    // The caller's WebRTC leg, through the cloud.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nwebrtc".into() }));
    h.drain();
    h.cloud_msgs();
    // An offer on the DataChannel is refused (offers go through the cloud); the leg closes and
    // is forgotten at once.
    h.core.on_direct(h.now, 1, DirectClientMsg::Offer { sdp: "v=0\r\n".into() });
    h.drain();
    assert!(matches!(direct_msgs(&mut h, 1).as_slice(), [DirectServerMsg::Error { code: ErrorCode::WrongState, .. }]));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })));
    assert!(h.sent_to(addr(5070)).is_empty(), "nothing rings before the key");
    // A new leg for the call (the key still waits); the key on its DataChannel.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nwebrtc-again".into() }));
    h.drain();
    assert!(h.out.iter().any(|o| matches!(o, Output::SessionStart { id: 2, present: None, .. })));
    h.cloud_msgs();
    h.core.on_direct(
        h.now,
        2,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "f1".into(), key, caller: "2001".into() },
    );
    h.drain();
    assert_eq!(direct_msgs(&mut h, 2), vec![DirectServerMsg::Accepted { call_id: "f1".into() }]);
    assert!(matches!(h.cloud_msgs().as_slice(), [ClientMsg::CallEvent { event: CallEvent::KeyAccepted, .. }]));
    let inv = only_request(h.sent_to(addr(5070)));
    assert!(String::from_utf8_lossy(&inv.body).contains("m=audio 30004 "), "the phone is offered the leg's bridge");
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStart { id: 2, phone: None })));
    h.sip(addr(5070), &reply_text(&inv, 180, "Ringing", "p", None));
    assert_eq!(direct_msgs(&mut h, 2), vec![DirectServerMsg::Progress { event: CallEvent::Ringing }]);
    h.sip(addr(5070), &reply_text(&inv, 200, "OK", "p", Some(SDP_B)));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeRemote { id: 2, phone } if phone.port() == 6000)));
    assert_eq!(direct_msgs(&mut h, 2), vec![DirectServerMsg::Progress { event: CallEvent::Connected }]);
    let events: Vec<CallEvent> = h
        .cloud_msgs()
        .into_iter()
        .filter_map(|m| if let ClientMsg::CallEvent { event, .. } = m { Some(event) } else { None })
        .collect();
    assert_eq!(events, vec![CallEvent::Ringing, CallEvent::Connected]);
    // The phone hangs up: the caller (on the DataChannel) and the cloud hear it, the leg stops.
    h.advance(Duration::from_secs(3));
    let tag = "p";
    h.sip(addr(5070), &format!("BYE sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {}:5070;branch=z9hG4bKpb\nFrom: <sip:1002@{GW}>;tag={tag}\nTo: {}\nCall-ID: {}\nCSeq: 5 BYE\nContent-Length: 0\n\n", "192.168.1.50", inv.headers.get("From").unwrap(), inv.call_id().unwrap()));
    assert_eq!(direct_msgs(&mut h, 2), vec![DirectServerMsg::Ended { outcome: Outcome::Connected }]);
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 2 })));
    // The end report carries what the record needs (a restarted cloud can still write it).
    assert!(matches!(
        h.cloud_msgs().as_slice(),
        [ClientMsg::CallReport { outcome: Outcome::Connected, duration_ms: Some(3000), from, to, started_ms, ended_ms, .. }]
            if !from.is_empty() && to == "1002" && ended_ms - started_ms >= 3000
    ));
    let f1 = |s: Step| ("f1".to_string(), s);
    assert_eq!(h.steps(), vec![f1(Step::C12), f1(Step::C14), f1(Step::C15)], "the callee switch's patent steps");
}

#[test]
fn cloud_outcome_for_a_bridged_connected_call_hangs_up_the_phone_and_stops_the_leg() {
    let mut h = H::new();
    h.register("1002", 5070);
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
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nwebrtc".into() }));
    h.drain();
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "f1".into(), key, caller: "2001".into() },
    );
    h.drain();
    let inv = only_request(h.sent_to(addr(5070)));
    h.sip(addr(5070), &reply_text(&inv, 200, "OK", "p", Some(SDP_B)));
    assert_eq!(direct_msgs(&mut h, 1).last(), Some(&DirectServerMsg::Progress { event: CallEvent::Connected }));
    h.cloud_msgs();
    // The caller's media path died (its network, not ours): it told the cloud, which ended the
    // call and tells us. Our leg never noticed; the phone is hung up and the leg stops.
    h.advance(Duration::from_secs(4));
    h.out.clear();
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Outcome { call_id: "f1".into(), outcome: Outcome::MediaLost, duration_ms: Some(4000) }),
    );
    h.drain();
    let bye = only_request(h.sent_to(addr(5070)));
    assert_eq!(bye.method, Method::Bye, "{bye:?}");
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })), "{:?}", h.out);
    assert!(matches!(h.cloud_msgs().as_slice(), [ClientMsg::CallReport { duration_ms: Some(4000), .. }]));
    assert_eq!(h.core.active_calls(), 0);
    // A late duplicate outcome changes nothing.
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Outcome { call_id: "f1".into(), outcome: Outcome::MediaLost, duration_ms: Some(4000) }),
    );
    h.drain();
    assert!(h.sent_to(addr(5070)).is_empty());
    assert!(h.cloud_msgs().is_empty());
}

#[test]
fn c14_a_refused_key_closes_the_leg_at_once_and_the_rightful_caller_may_offer_again() {
    let mut h = H::new();
    h.register("1002", 5070);
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
    let present = |key: &str, caller: &str| DirectClientMsg::Present {
        v: PROTOCOL_VERSION,
        call_id: "f1".into(),
        key: key.into(),
        caller: caller.into(),
    };
    // Leg 1: a forged key. Leg 2: the real key, but presented by another number.
    for (leg, k, caller, code) in
        [(1, "A".repeat(22), "2001", ErrorCode::BadKey), (2, key.clone(), "2002", ErrorCode::WrongCaller)]
    {
        h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: format!("v=0\r\nleg-{leg}") }));
        h.drain();
        assert!(h.out.iter().any(|o| matches!(o, Output::SessionStart { id, .. } if *id == leg)), "leg {leg}: {:?}", h.out);
        h.out.clear();
        h.core.on_direct(h.now, leg, present(&k, caller));
        // What the party sent right after, before its leg is down, changes nothing.
        h.core.on_direct(h.now, leg, present(&key, "2001"));
        h.drain();
        assert!(
            matches!(direct_msgs(&mut h, leg).as_slice(), [DirectServerMsg::Error { code: c, .. }] if *c == code),
            "leg {leg}"
        );
        // The leg is stopped and forgotten now, not when its task reports it gone.
        assert_eq!(h.out, vec![Output::BridgeStop { id: leg }]);
        h.out.clear();
        assert!(h.sent_to(addr(5070)).is_empty(), "nothing rings");
        // (Its task's late report changes nothing.)
        h.core.on_direct_gone(h.now, leg);
        h.drain();
        assert!(h.out.is_empty(), "{:?}", h.out);
    }
    // Leg 3: the rightful caller, with the key that is still waiting.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nleg-3".into() }));
    h.drain();
    h.out.clear();
    h.core.on_direct(h.now, 3, present(&key, "2001"));
    h.drain();
    assert_eq!(direct_msgs(&mut h, 3), vec![DirectServerMsg::Accepted { call_id: "f1".into() }]);
    assert_eq!(only_request(h.sent_to(addr(5070))).method, Method::Invite);
    // Presenting again on the same leg: refused, the leg (and so the call) ends.
    h.out.clear();
    h.core.on_direct(h.now, 3, present(&key, "2001"));
    h.drain();
    assert!(h.out.iter().any(|o| matches!(
        o,
        Output::Direct { conn: 3, msg: DirectServerMsg::Error { code: ErrorCode::AlreadyAuthenticated, .. }, close: true }
    )));
}

#[test]
fn c3_switchless_callee_connects_with_our_key_and_the_phone_is_answered() {
    let mut h = H::new();
    h.invite("2001");
    let call_id = match h.cloud_msgs().as_slice() {
        [ClientMsg::RouteQuery { call_id, .. }] => call_id.clone(),
        other => panic!("{other:?}"),
    };
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Route { call_id: call_id.clone(), route: Route::Device { device_id: "2001".into() } }),
    );
    h.drain();
    let key = match h.cloud_msgs().as_slice() {
        [ClientMsg::DirectOffer { key, .. }] => key.clone(),
        other => panic!("{other:?}"),
    };
    h.responses_to(addr(5062));
    // The callee's leg through the cloud: the phone is not answered before the key.
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.drain();
    assert!(matches!(h.cloud_msgs().as_slice(), [ClientMsg::DirectSignal { payload: SignalPayload::Answer { .. }, .. }]));
    assert!(h.responses_to(addr(5062)).is_empty());
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: call_id.clone(), key, caller: "2001".into() },
    );
    h.drain();
    assert_eq!(
        direct_msgs(&mut h, 1),
        vec![DirectServerMsg::Accepted { call_id: call_id.clone() }, DirectServerMsg::Progress { event: CallEvent::Connected }]
    );
    let ok = h.responses_to(addr(5062)).pop().unwrap();
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 30002 "));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStart { id: 1, phone: Some(p) } if p.port() == 4000)));
    // The browser leaves: the phone gets a BYE and the cloud the end.
    h.core.on_direct_gone(h.now, 1);
    h.drain();
    assert_eq!(only_request(h.sent_to(addr(5062))).method, Method::Bye);
    let steps: Vec<Step> = h.steps().into_iter().map(|(_, s)| s).collect();
    assert_eq!(steps, vec![Step::B1, Step::B2, Step::C14, Step::C15], "the caller switch's steps in F3");
}

#[test]
fn the_echo_number_answers_at_once_without_any_phone() {
    let mut h = H::new();
    h.invite("1999");
    let ok = h.responses_to(addr(5062)).pop().unwrap();
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 24002 "));
    // The driver starts the endpoint it set up (not the core's call into it).
    assert!(h.out.contains(&Output::EchoStart { id: 1 }), "{:?}", h.out);
    // Over the cloud too (C11): always accepted, registered or not.
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::CalleeQuery {
            call_id: "e".into(),
            from: "2001".into(),
            from_name: "A".into(),
            to: "1999".into(),
        }),
    );
    h.drain();
    assert!(h.cloud_msgs().iter().any(|m| matches!(m, ClientMsg::QueryAnswer { answer: QueryAnswer::Accept { .. }, .. })));
}

#[test]
fn several_contacts_all_ring_first_answer_wins_the_others_are_cancelled() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    // The same number from a second device (another Call-ID, another contact).
    let a = addr(5072);
    let base = format!(
        "REGISTER sip:{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKsecond{{B}}\nFrom: <sip:1002@{GW}>;tag=s\nTo: <sip:1002@{GW}>\nCall-ID: second@x\nCSeq: {{C}} REGISTER\nContact: <sip:1002@{a}>\nExpires: 600\n{{AUTH}}Content-Length: 0\n\n"
    );
    h.sip(a, &base.replace("{B}", "a").replace("{C}", "1").replace("{AUTH}", ""));
    let auth = h.auth(a, "1002", "pw-1002", "REGISTER", &format!("sip:{GW}"));
    h.sip(a, &base.replace("{B}", "b").replace("{C}", "2").replace("{AUTH}", &format!("Authorization: {auth}\n")));
    assert_eq!(h.last_status(a), 200);
    h.invite("1002");
    let first = only_request(h.sent_to(addr(5070)));
    let second = only_request(h.sent_to(addr(5072)));
    assert_eq!((first.method.clone(), second.method.clone()), (Method::Invite, Method::Invite), "both contacts ring");
    h.sip(addr(5072), &reply_text(&second, 200, "OK", "dev2", Some(SDP_B)));
    assert_eq!(h.responses_to(addr(5062)).pop().unwrap().status, 200, "the first answer connects the caller");
    assert_eq!(only_request(h.sent_to(addr(5070))).method, Method::Cancel, "the other contact is cancelled");
}

#[test]
fn c14_over_webrtc_the_offer_comes_through_the_cloud_the_key_on_the_datachannel_then_the_phone_rings() {
    let mut h = H::new();
    h.register("1002", 5070);
    // An offer for a call that is not waiting here sets nothing up.
    h.core.on_cloud(h.now, direct_signal("nope", SignalPayload::Offer { sdp: "v=0\r\n".into() }));
    h.drain();
    assert!(h.out.is_empty(), "{:?}", h.out);
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
    // The caller's offer (through the cloud): a session leg answers it, through the cloud.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.drain();
    let conn = 1;
    assert!(h.out.iter().any(|o| matches!(o, Output::SessionStart { id: 1, call_id, present: None } if call_id == "f1")));
    assert!(
        matches!(h.cloud_msgs().as_slice(), [ClientMsg::DirectSignal { payload: SignalPayload::Answer { sdp }, .. }] if sdp == "v=0\r\nsession-answer-1")
    );
    // A second offer for the same call is ignored; late candidates reach the leg.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nagain".into() }));
    h.core.on_cloud(
        h.now,
        direct_signal(
            "f1",
            SignalPayload::Ice {
                candidate: "candidate:1 1 udp 1 203.0.113.9 5000 typ srflx".into(),
                sdp_mid: None,
                sdp_m_line_index: Some(0),
            },
        ),
    );
    h.drain();
    assert!(!h.out.iter().any(|o| matches!(o, Output::SessionStart { id: 2, .. })));
    assert!(h.out.iter().any(|o| matches!(o, Output::SessionCandidate { id: 1, candidate } if candidate.contains("srflx"))));
    // Nothing rings before the key.
    assert!(h.sent_to(addr(5070)).is_empty());
    // The leg was set up for f1: another call's key cannot be used on it (and is not spent);
    // the leg closes.
    h.out.clear();
    h.core.on_direct(
        h.now,
        conn,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "other".into(), key: key.clone(), caller: "2001".into() },
    );
    h.drain();
    assert!(matches!(direct_msgs(&mut h, conn).as_slice(), [DirectServerMsg::Error { code: ErrorCode::BadKey, .. }]));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })));
    assert!(h.sent_to(addr(5070)).is_empty());
    // A new leg, the right key: accepted, and at once the phone is rung through that leg's bridge.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.drain();
    h.core.on_direct(
        h.now,
        2,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "f1".into(), key, caller: "2001".into() },
    );
    h.drain();
    assert_eq!(direct_msgs(&mut h, 2).first(), Some(&DirectServerMsg::Accepted { call_id: "f1".into() }));
    let inv = only_request(h.sent_to(addr(5070)));
    assert!(String::from_utf8_lossy(&inv.body).contains("m=audio 30004 "), "the phone is offered the session's bridge");
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStart { id: 2, .. })));
}

#[test]
fn c14_over_webrtc_a_session_that_ends_before_its_key_frees_its_leg() {
    let mut h = H::new();
    h.register("1002", 5070);
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::CalleeQuery {
            call_id: "f1".into(),
            from: "2001".into(),
            from_name: "A".into(),
            to: "1002".into(),
        }),
    );
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.drain();
    h.out.clear();
    // ICE never came up: the leg reports itself gone.
    h.core.on_direct_gone(h.now, 1);
    h.drain();
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })));
    // The call still waits for its key: a new attempt (e.g. after an ICE restart) may offer again.
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nretry".into() }));
    h.drain();
    assert!(h.out.iter().any(|o| matches!(o, Output::SessionStart { id: 2, .. })));
}

#[test]
fn f2_over_webrtc_the_caller_gateway_offers_through_the_cloud_and_presents_the_key_on_the_datachannel() {
    let mut h = H::new();
    h.invite("3001");
    let call_id = match h.cloud_msgs().as_slice() {
        [ClientMsg::RouteQuery { call_id, to, .. }] if to == "3001" => call_id.clone(),
        other => panic!("{other:?}"),
    };
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Route {
            call_id: call_id.clone(),
            route: Route::Switch { switch_id: "branch".into(), url: "switch:branch".into() },
        }),
    );
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Connect {
            call_id: call_id.clone(),
            url: "switch:branch".into(),
            key: "K".repeat(22),
            expires_in_ms: 30_000,
        }),
    );
    h.drain();
    // A session with the key to present, and the offer through the cloud.
    let present = h.out.iter().find_map(|o| match o {
        Output::SessionStart { id: 1, present: Some(p), .. } => Some(p.clone()),
        _ => None,
    });
    assert!(
        matches!(present, Some(DirectClientMsg::Present { ref key, ref caller, .. }) if *key == "K".repeat(22) && caller == "1001"),
        "{present:?}"
    );
    assert!(h.cloud_msgs().iter().any(
        |m| matches!(m, ClientMsg::DirectSignal { payload: SignalPayload::Offer { sdp }, .. } if sdp == "v=0\r\nsession-offer-1")
    ));
    let ours = |s: Step| (call_id.clone(), s);
    assert_eq!(h.steps(), vec![ours(Step::B1), ours(Step::B2), ours(Step::C2)], "the caller switch's patent steps");
    // The callee switch's answer through the cloud starts the leg.
    h.out.clear();
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Answer { sdp: "v=0\r\nbranch-answer".into() }));
    h.drain();
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStart { id: 1, .. })));
    // The callee switch's progress on the DataChannel: connected → our phone gets its 200.
    h.core.on_remote(h.now, 1, RemoteEvent::Accepted);
    h.core.on_remote(h.now, 1, RemoteEvent::Progress(CallEvent::Connected));
    h.drain();
    assert_eq!(h.last_status(addr(5062)), 200);
    assert_eq!(h.steps(), vec![ours(Step::C15)], "the callee's site bridged the call");
}

#[test]
fn f2_over_webrtc_a_connection_that_never_comes_up_is_connect_failed_and_the_phone_gets_503() {
    let mut h = H::new();
    h.invite("3001");
    let call_id = match h.cloud_msgs().as_slice() {
        [ClientMsg::RouteQuery { call_id, .. }] => call_id.clone(),
        other => panic!("{other:?}"),
    };
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Route {
            call_id: call_id.clone(),
            route: Route::Switch { switch_id: "branch".into(), url: "switch:branch".into() },
        }),
    );
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Connect {
            call_id: call_id.clone(),
            url: "switch:branch".into(),
            key: "K".repeat(22),
            expires_in_ms: 30_000,
        }),
    );
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Answer { sdp: "v=0\r\nbranch-answer".into() }));
    h.drain();
    h.cloud_msgs();
    // The session's DataChannel never opened (ICE failed): it reports itself gone.
    h.core.on_remote(h.now, 1, RemoteEvent::Closed("the direct connection could not be made".into()));
    h.drain();
    assert!(matches!(h.cloud_msgs().as_slice(), [ClientMsg::ConnectFailed { call_id: c, .. }] if *c == call_id));
    assert_eq!(h.last_status(addr(5062)), 503);
}

#[test]
fn shutdown_ends_every_call_bye_to_answered_phones_503_and_cancel_for_ringing_ones_ended_to_the_cloud() {
    let mut h = H::new();
    h.register("1002", 5070);
    h.register("1003", 5072);
    // A connected F1 call: 2001 over WebRTC → 1002.
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
    h.core.on_cloud(h.now, direct_signal("f1", SignalPayload::Offer { sdp: "v=0\r\nwebrtc".into() }));
    h.drain();
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: "f1".into(), key, caller: "2001".into() },
    );
    h.drain();
    let inv = only_request(h.sent_to(addr(5070)));
    h.sip(addr(5070), &reply_text(&inv, 200, "OK", "p", Some(SDP_B)));
    assert_eq!(direct_msgs(&mut h, 1).last(), Some(&DirectServerMsg::Progress { event: CallEvent::Connected }));
    h.cloud_msgs();
    // A ringing F7 call: 1001 → 1003.
    h.invite("1003");
    let inv3 = only_request(h.sent_to(addr(5072)));
    h.sip(addr(5072), &reply_text(&inv3, 180, "Ringing", "r", None));
    h.sent_to(addr(5062));
    h.advance(Duration::from_secs(2));
    h.out.clear();

    h.core.shutdown(h.now);
    h.drain();
    // F1: BYE to the phone, `ended` on the DataChannel and to the cloud, the leg stopped.
    assert_eq!(only_request(h.sent_to(addr(5070))).method, Method::Bye);
    assert_eq!(direct_msgs(&mut h, 1), vec![DirectServerMsg::Ended { outcome: Outcome::Connected }]);
    assert!(matches!(
        h.cloud_msgs().as_slice(),
        [ClientMsg::CallReport { call_id, outcome: Outcome::Connected, duration_ms: Some(2000), .. }] if call_id == "f1"
    ));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })));
    // F7 not answered yet: 503 to the caller, CANCEL to the ringing phone.
    assert_eq!(h.last_status(addr(5062)), 503);
    assert_eq!(only_request(h.sent_to(addr(5072))).method, Method::Cancel);
    assert_eq!(h.core.active_calls(), 0);
}

// ---------------------------------------------------------------- scanners and guessing (issue 10)
