//! Deterministic tests of the core inside and around dialogs: mid-call offers (re-INVITE,
//! UPDATE), 2xx that arrive after the call is gone, a caller that never ACKs, a stale digest
//! nonce, a CANCEL that crosses our 200, retransmitted INVITEs after the final answer. Fake
//! clock, fixed wall time and RNG seed (see `tests::H`), no sockets.

use super::tests::{GW, H, SDP_B, WALL_MS, addr, direct_signal, only_request, reply_text};
use super::*;
use trunkline_protocol::PROTOCOL_VERSION;

/// A's re-offer putting the call on hold (RFC 3264 §8.4: `sendonly`), version 2 of its session.
const SDP_A_HOLD: &str = "v=0\r\no=a 1 2 IN IP4 192.168.1.50\r\ns=-\r\nc=IN IP4 192.168.1.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
/// A's re-offer taking the call off hold, version 3.
const SDP_A_RESUME: &str = "v=0\r\no=a 1 3 IN IP4 192.168.1.50\r\ns=-\r\nc=IN IP4 192.168.1.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
/// A re-offer with no codec of the call (G.729 only).
const SDP_A_G729: &str =
    "v=0\r\no=a 1 4 IN IP4 192.168.1.50\r\ns=-\r\nc=IN IP4 192.168.1.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=sendrecv\r\n";
/// B's re-offer from a new RTP port.
const SDP_B_MOVED: &str = "v=0\r\no=b 1 2 IN IP4 192.168.1.60\r\ns=-\r\nc=IN IP4 192.168.1.60\r\nt=0 0\r\nm=audio 6002 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// An F7 call from 1001 (port 5062) to 1002 (port 5070), answered by 1002. With `ack`, 1001
/// ACKs our 200. Returns our INVITE to 1002 and our 200 to 1001.
fn answered_call(h: &mut H, ack: bool) -> (Request, Response) {
    let (_, inv, ok) = answered_call_unacked(h);
    if ack {
        ack_our_200(h, &ok);
    }
    h.out.clear();
    (inv, ok)
}

/// 1001 ACKs our 200 `ok`.
fn ack_our_200(h: &mut H, ok: &Response) {
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    let a = addr(5062);
    h.sip(a, &format!("ACK sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={tag}\nCall-ID: call-1@x\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
}

/// As [`answered_call`] without the caller's ACK; also returns the caller's INVITE text.
fn answered_call_unacked(h: &mut H) -> (String, Request, Response) {
    assert_eq!(h.register("1002", 5070), 200);
    let text = h.invite("1002");
    let inv = only_request(h.sent_to(addr(5070)));
    h.sip(addr(5070), &reply_text(&inv, 200, "OK", "callee", Some(SDP_B)));
    assert_eq!(only_request(h.sent_to(addr(5070))).method, Method::Ack);
    let ok = h.responses_to(addr(5062)).pop().expect("our 200 to the caller");
    assert_eq!(ok.status, 200);
    (text, inv, ok)
}

/// A request from the caller (1001) inside its dialog with us.
fn from_a(ok: &Response, method: &str, cseq: u32, branch: &str, sdp: Option<&str>) -> String {
    let a = addr(5062);
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() { "Content-Type: application/sdp\n" } else { "" };
    format!(
        "{method} sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{branch}\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={tag}\nCall-ID: call-1@x\nCSeq: {cseq} {method}\nContact: <sip:1001@{a}>\nMax-Forwards: 70\n{ct}Content-Length: {}\n\n{body}",
        body.len()
    )
}

/// A request from the callee (1002) inside the dialog our INVITE `inv` made, with its Contact.
fn from_b(inv: &Request, method: &str, cseq: u32, branch: &str, contact: &str, sdp: Option<&str>) -> String {
    let b = addr(5070);
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() { "Content-Type: application/sdp\n" } else { "" };
    format!(
        "{method} sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {b};branch=z9hG4bK{branch}\nFrom: {};tag=callee\nTo: {}\nCall-ID: {}\nCSeq: {cseq} {method}\nContact: <{contact}>\nMax-Forwards: 70\n{ct}Content-Length: {}\n\n{body}",
        inv.headers.get("To").unwrap(),
        inv.headers.get("From").unwrap(),
        inv.call_id().unwrap(),
        body.len()
    )
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The `o=` line of `sdp`, without its version: (username, session id, version).
fn origin(sdp: &str) -> (String, String, u64) {
    let o = sdp.lines().find_map(|l| l.strip_prefix("o=")).expect("an o= line");
    let f: Vec<&str> = o.split_whitespace().collect();
    (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
}

fn audio_line(sdp: &str) -> String {
    sdp.lines().find(|l| l.starts_with("m=audio ")).expect("an m=audio line").trim().to_string()
}

fn directions(sdp: &str) -> Vec<String> {
    sdp.lines()
        .map(str::trim)
        .filter(|l| ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(l))
        .map(str::to_string)
        .collect()
}

#[test]
fn re_invite_from_the_caller_mid_call_is_answered_with_our_session_re_versioned_hold_mirrored() {
    let mut h = H::new();
    let (_inv, ok) = answered_call(&mut h, true);
    let first = body(&ok);
    let (user, session, v1) = origin(&first);
    let a = addr(5062);

    // Hold: the answer is the session A already has from us (same origin, same relay port),
    // one version up, receiving only.
    h.sip(a, &from_a(&ok, "INVITE", 3, "hold", Some(SDP_A_HOLD)));
    let r = h.responses_to(a).pop().expect("an answer to the re-INVITE");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.to().unwrap().tag(), ok.to().unwrap().tag(), "same dialog");
    let hold = body(&r);
    assert_eq!(origin(&hold), (user.clone(), session.clone(), v1 + 1));
    assert_eq!(audio_line(&hold), "m=audio 20004 RTP/AVP 0 101", "the relay's A side, the call's codecs");
    assert!(hold.contains("c=IN IP4 10.0.0.1"), "{hold}");
    assert_eq!(directions(&hold), vec!["a=recvonly"]);
    assert!(r.headers.get("Contact").is_some(), "a 2xx to an INVITE carries our Contact");
    // Nothing goes to the callee and the relay is not touched (same address and port).
    assert!(h.sent_to(addr(5070)).is_empty());
    assert!(!h.out.iter().any(|o| matches!(o, Output::MediaStop { .. })));
    // A ACKs the re-INVITE's 200: absorbed.
    h.sip(a, &from_a(&ok, "ACK", 3, "holdack", None));
    assert!(h.sent_to(a).is_empty());

    // Resume: the next version, sending and receiving again.
    h.sip(a, &from_a(&ok, "INVITE", 4, "resume", Some(SDP_A_RESUME)));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin(&body(&r)), (user.clone(), session.clone(), v1 + 2));
    assert_eq!(directions(&body(&r)), vec!["a=sendrecv"]);

    // An offer without any codec of the call: 488, and the session stays as it was.
    h.sip(a, &from_a(&ok, "INVITE", 5, "g729", Some(SDP_A_G729)));
    assert_eq!(h.last_status(a), 488);
    h.sip(a, &from_a(&ok, "INVITE", 6, "again", Some(SDP_A_RESUME)));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!((r.status, origin(&body(&r)).2), (200, v1 + 3), "the refused offer changed nothing");
    assert_eq!(h.core.active_calls(), 1, "the call is still up");
}

#[test]
fn re_invite_without_sdp_gets_our_session_as_the_offer_in_the_200() {
    let mut h = H::new();
    let (_inv, ok) = answered_call(&mut h, true);
    let a = addr(5062);
    h.sip(a, &from_a(&ok, "INVITE", 3, "nosdp", None));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(audio_line(&body(&r)), "m=audio 20004 RTP/AVP 0 101");
    assert_eq!(origin(&body(&r)).2, origin(&body(&ok)).2 + 1);
}

#[test]
fn re_invite_from_the_callee_mid_call_is_answered_and_its_new_media_address_and_contact_are_used() {
    let mut h = H::new();
    let (inv, ok) = answered_call(&mut h, true);
    let b = addr(5070);
    let (user, session, v1) = origin(&String::from_utf8_lossy(&inv.body));
    h.sip(b, &from_b(&inv, "INVITE", 1, "bre", "sip:1002@192.168.1.60:5080", Some(SDP_B_MOVED)));
    let r = h.responses_to(b).pop().expect("an answer to the callee's re-INVITE");
    assert_eq!(r.status, 200);
    let ans = body(&r);
    // The session we offered B (the relay's B side), one version up.
    assert_eq!(origin(&ans), (user, session, v1 + 1));
    assert_eq!(audio_line(&ans), "m=audio 20006 RTP/AVP 0 101");
    // B's new RTP port reaches the relay; A is not disturbed.
    assert!(h.out.iter().any(|o| matches!(o, Output::MediaRemote { id: 1, leg: MediaLeg::B, addr } if addr.port() == 6002)));
    assert!(h.sent_to(addr(5062)).is_empty());
    // Target refresh: A hangs up, our BYE to B goes to B's new Contact.
    h.sip(addr(5062), &from_a(&ok, "BYE", 3, "bye", None));
    let bye = only_request(h.sent_to(b));
    assert_eq!((bye.method.clone(), bye.uri.to_string()), (Method::Bye, "sip:1002@192.168.1.60:5080".to_string()));
    assert_eq!(h.core.active_calls(), 0);
}

#[test]
fn update_mid_call_with_an_offer_is_answered_and_without_one_gets_a_bare_200() {
    let mut h = H::new();
    let (_inv, ok) = answered_call(&mut h, true);
    let a = addr(5062);
    h.sip(a, &from_a(&ok, "UPDATE", 3, "upd", Some(SDP_A_HOLD)));
    let r = h.responses_to(a).pop().expect("an answer to the UPDATE");
    assert_eq!(r.status, 200);
    assert_eq!(directions(&body(&r)), vec!["a=recvonly"]);
    assert_eq!(origin(&body(&r)).2, origin(&body(&ok)).2 + 1);
    // A session refresh without an offer (RFC 3311 §5.2): 200 and no SDP.
    h.sip(a, &from_a(&ok, "UPDATE", 4, "refresh", None));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    // Not in a dialog (no To tag): still answered, never ignored.
    let stray = from_a(&ok, "UPDATE", 1, "stray", None).replace(&format!(";tag={}", ok.to().unwrap().tag().unwrap()), "");
    h.sip(a, &stray);
    let r = h.responses_to(a).pop().expect("an answer to an out-of-dialog UPDATE");
    assert_eq!(r.status, 405);
    assert!(r.headers.get("Allow").unwrap().contains("UPDATE"));
    assert_eq!(h.core.active_calls(), 1);
}

#[test]
fn update_with_an_offer_while_the_call_still_rings_gets_500_with_retry_after() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    h.invite("1002");
    let inv = only_request(h.sent_to(addr(5070)));
    h.sip(addr(5070), &reply_text(&inv, 180, "Ringing", "callee", None));
    let ringing = h.responses_to(addr(5062)).pop().unwrap();
    assert_eq!(ringing.status, 180);
    // The caller's INVITE offer is not answered yet: a second offer must wait.
    h.sip(addr(5062), &from_a(&ringing, "UPDATE", 3, "early", Some(SDP_A_HOLD)));
    let r = h.responses_to(addr(5062)).pop().unwrap();
    assert_eq!(r.status, 500);
    let after: u32 = r.headers.get("Retry-After").expect("Retry-After").parse().unwrap();
    assert!((1..=10).contains(&after));
    // The call rings on.
    assert!(h.sent_to(addr(5070)).is_empty());
    assert_eq!(h.core.active_calls(), 1);
}

/// What the core sent `to` as requests, by method.
fn methods(msgs: Vec<Message>) -> Vec<Method> {
    msgs.into_iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some(r.method),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_200_after_the_caller_cancelled_is_acked_and_hung_up_once_and_makes_no_call() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    let text = h.invite("1002");
    let (a, b) = (addr(5062), addr(5070));
    let inv = only_request(h.sent_to(b));
    h.sip(b, &reply_text(&inv, 180, "Ringing", "callee", None));
    assert_eq!(h.last_status(a), 180);
    // The caller gives up; we CANCEL the fork …
    let cancel = text.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL");
    let cancel = cancel.split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\n\n";
    h.sip(a, &cancel);
    assert_eq!(h.responses_to(a).iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 487]);
    assert_eq!(methods(h.sent_to(b)), vec![Method::Cancel]);
    assert_eq!(h.core.active_calls(), 0);
    h.out.clear();
    // … but the callee answered before our CANCEL reached it.
    let late = reply_text(&inv, 200, "OK", "callee", Some(SDP_B));
    h.sip(b, &late);
    let sent: Vec<Request> = h
        .sent_to(b)
        .into_iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(sent.iter().map(|r| r.method.clone()).collect::<Vec<_>>(), vec![Method::Ack, Method::Bye]);
    for r in &sent {
        assert_eq!(r.call_id().unwrap(), inv.call_id().unwrap(), "in the callee's dialog");
        assert_eq!(r.to().unwrap().tag(), Some("callee"));
        assert_eq!(r.uri.to_string(), "sip:1002@192.168.1.60:5070", "to the callee's Contact");
    }
    assert_eq!(sent[0].cseq().unwrap().seq, inv.cseq().unwrap().seq, "the ACK has the INVITE's CSeq number");
    // Nothing for the caller, no call, no media.
    assert!(h.sent_to(a).is_empty());
    assert_eq!(h.core.active_calls(), 0);
    assert!(!h.out.iter().any(|o| matches!(o, Output::MediaStart { .. } | Output::MediaRemote { .. })), "{:?}", h.out);
    // Its retransmission (our ACK was lost) is ACKed again, and not hung up a second time.
    h.sip(b, &late);
    assert_eq!(methods(h.sent_to(b)), vec![Method::Ack]);
}

#[test]
fn a_late_200_after_the_ring_timeout_is_acked_and_hung_up() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    h.invite("1002");
    let b = addr(5070);
    let inv = only_request(h.sent_to(b));
    h.sip(b, &reply_text(&inv, 180, "Ringing", "callee", None));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.last_status(addr(5062)), 480);
    assert_eq!(methods(h.sent_to(b)), vec![Method::Cancel]);
    h.sip(b, &reply_text(&inv, 200, "OK", "callee", Some(SDP_B)));
    assert_eq!(methods(h.sent_to(b)), vec![Method::Ack, Method::Bye]);
    assert!(h.sent_to(addr(5062)).is_empty());
    assert_eq!(h.core.active_calls(), 0);
}

/// The instants (ms after the first 200) at which `to` got our 200 again, until `until`, and
/// the requests it got on the way.
fn watch_200s(h: &mut H, to: SocketAddr, until: Duration) -> (Vec<u64>, Vec<Method>) {
    let start = h.now;
    let (mut at, mut reqs) = (vec![], vec![]);
    let step = Duration::from_millis(250);
    while h.now - start < until {
        h.advance(step);
        for m in h.sent_to(to) {
            match m {
                Message::Response(r) if r.status == 200 => at.push((h.now - start).as_millis() as u64),
                Message::Request(r) => reqs.push(r.method),
                _ => {}
            }
        }
    }
    (at, reqs)
}

#[test]
fn a_caller_that_never_acks_gets_our_200_on_timer_g_and_a_bye_at_64_t1_and_the_callee_too() {
    let mut h = H::new();
    answered_call(&mut h, false);
    let (a, b) = (addr(5062), addr(5070));
    // Just before 64·T1: the 200 was retransmitted on timer G (T1, doubling, capped at T2), and
    // nobody was hung up.
    let (at, reqs) = watch_200s(&mut h, a, T64 - Duration::from_millis(250));
    assert_eq!(at, vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
    assert!(reqs.is_empty());
    assert!(h.sent_to(b).is_empty());
    assert_eq!(h.core.active_calls(), 1);
    // At 64·T1: BYE to the caller (its dialog is confirmed and ended) and to the callee.
    h.advance(Duration::from_millis(250));
    assert_eq!(methods(h.sent_to(a)), vec![Method::Bye]);
    assert_eq!(methods(h.sent_to(b)), vec![Method::Bye]);
    assert!(h.out.iter().any(|o| matches!(o, Output::MediaStop { id: 1 })));
    assert_eq!(h.core.active_calls(), 0);
}

#[test]
fn a_caller_that_never_acks_a_call_to_a_switchless_callee_is_ended_and_the_cloud_gets_the_end() {
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
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: call_id.clone(), key, caller: "2001".into() },
    );
    h.drain();
    assert_eq!(h.responses_to(addr(5062)).pop().unwrap().status, 200);
    h.cloud_msgs();
    h.out.clear();
    // The phone never ACKs.
    h.advance(T64 - Duration::from_millis(1));
    assert!(h.cloud_msgs().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(methods(h.sent_to(addr(5062))), vec![Method::Bye]);
    assert!(h.out.iter().any(|o| matches!(o, Output::Direct { conn: 1, msg: DirectServerMsg::Ended { .. }, close: true })));
    // The end of the call, timed by the wall clock the driver handed in.
    match h.cloud_msgs().as_slice() {
        [ClientMsg::CallReport { call_id: c, from, to, started_ms, ended_ms, .. }] => {
            assert_eq!((c, from.as_str(), to.as_str()), (&call_id, "1001", "2001"));
            assert_eq!((*started_ms, *ended_ms), (WALL_MS, WALL_MS + T64.as_millis() as i64));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.core.active_calls(), 0);
}

/// A Digest Authorization for REGISTER by 1001 with `nonce` and nonce-count `nc`.
fn register_auth(nonce: &str, nc: u32) -> String {
    use md5::Digest;
    let md = |s: String| hex::encode(md5::Md5::digest(s.as_bytes()));
    let uri = format!("sip:{GW}");
    let ha1 = digest::ha1(Algorithm::Md5, "1001", "trunkline", "pw-1001");
    let resp = md(format!("{ha1}:{nonce}:{nc:08x}:abc:auth:{}", md(format!("REGISTER:{uri}"))));
    format!(
        "Digest username=\"1001\", realm=\"trunkline\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"abc\""
    )
}

fn register_text(branch: &str, cseq: u32, auth: &str) -> String {
    let a = addr(5062);
    format!(
        "REGISTER sip:{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{branch}\nFrom: <sip:1001@{GW}>;tag=r\nTo: <sip:1001@{GW}>\nCall-ID: reg@x\nCSeq: {cseq} REGISTER\nContact: <sip:1001@{a}>\nExpires: 3600\nAuthorization: {auth}\nContent-Length: 0\n\n"
    )
}

/// The nonce of the MD5 challenge in 401 `r`, and whether it says `stale=true`.
fn challenge(r: &Response) -> (String, bool) {
    let h = r.headers.get_all("WWW-Authenticate").find(|h| h.contains("MD5")).expect("an MD5 challenge").to_string();
    let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (nonce, h.to_ascii_lowercase().contains("stale=true"))
}

#[test]
fn a_stale_nonce_is_challenged_with_stale_true_and_a_new_nonce_which_then_works() {
    let mut h = H::new();
    let a = addr(5062);
    let unauth = register_text("first", 1, "x").replace("Authorization: x\n", "");
    h.sip(a, &unauth);
    let (old, stale) = challenge(&h.responses_to(a).pop().unwrap());
    assert!(!stale);
    h.sip(a, &register_text("r1", 2, &register_auth(&old, 1)));
    assert_eq!(h.last_status(a), 200);
    // Still fresh just before its age limit (the next nonce-count)…
    h.advance(Duration::from_secs(NONCE_MAX_AGE - 1));
    h.sip(a, &register_text("r2", 3, &register_auth(&old, 2)));
    assert_eq!(h.last_status(a), 200);
    // … stale after it: right credentials, old nonce → 401 with stale=true and a new nonce.
    h.advance(Duration::from_secs(2));
    h.sip(a, &register_text("r3", 4, &register_auth(&old, 3)));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!(r.status, 401);
    let (new, stale) = challenge(&r);
    assert!(stale, "{r:?}");
    assert_ne!(new, old);
    // The phone retries with the new nonce, without asking its user: accepted.
    h.sip(a, &register_text("r4", 5, &register_auth(&new, 1)));
    assert_eq!(h.last_status(a), 200);
    assert!(h.core.is_registered(h.now, "1001"));
}

#[test]
fn a_cancel_after_our_200_gets_200_and_the_call_stays_up_without_487() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    let text = h.invite("1002");
    let (a, b) = (addr(5062), addr(5070));
    let inv = only_request(h.sent_to(b));
    h.sip(b, &reply_text(&inv, 200, "OK", "callee", Some(SDP_B)));
    let ok = h.responses_to(a).pop().unwrap();
    assert_eq!(ok.status, 200);
    h.sent_to(b);
    // The caller's CANCEL crossed our 200.
    let cancel = text.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL");
    let cancel = cancel.split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\n\n";
    h.sip(a, &cancel);
    let rs = h.responses_to(a);
    assert_eq!(rs.iter().map(|r| (r.status, r.cseq().unwrap().method)).collect::<Vec<_>>(), vec![(200, Method::Cancel)]);
    // The callee is neither cancelled nor hung up; the call is up and our 200 still repeats
    // until the ACK.
    assert!(h.sent_to(b).is_empty());
    assert_eq!(h.core.active_calls(), 1);
    h.advance(T1);
    assert_eq!(h.responses_to(a).iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    h.sip(a, &format!("ACK sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={tag}\nCall-ID: call-1@x\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
    // Once the INVITE transaction is gone, a CANCEL matches nothing: 481.
    h.advance(T64);
    h.sip(a, &cancel);
    assert_eq!(h.last_status(a), 481);
    assert_eq!(h.core.active_calls(), 1, "the call outlives its INVITE transaction");
    assert!(h.sent_to(b).is_empty());
}

#[test]
fn an_invite_retransmitted_after_a_non_2xx_final_gets_the_same_final_and_makes_no_second_call() {
    let mut h = H::new();
    // 1002 is not registered: 480.
    let text = h.invite("1002");
    let a = addr(5062);
    let first = h.responses_to(a).pop().unwrap();
    assert_eq!(first.status, 480);
    h.sip(a, &text);
    let again = h.responses_to(a);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].to_bytes(), first.to_bytes(), "the very same final answer");
    assert!(h.cloud_msgs().is_empty(), "no route query");
    assert_eq!(h.core.active_calls(), 0);
    // Unacknowledged, it repeats on timer G; the ACK stops it.
    h.advance(T1);
    assert_eq!(h.last_status(a), 480);
    let tag = first.to().unwrap().tag().unwrap().to_string();
    h.sip(a, &format!("ACK sip:1002@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv2\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={tag}\nCall-ID: call-1@x\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
    h.advance(T2);
    assert!(h.responses_to(a).is_empty());
}

#[test]
fn an_invite_retransmitted_after_our_200_is_absorbed_and_makes_no_second_call() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    let text = h.invite("1002");
    let (a, b) = (addr(5062), addr(5070));
    let inv = only_request(h.sent_to(b));
    h.sip(b, &reply_text(&inv, 200, "OK", "callee", Some(SDP_B)));
    let ok = h.responses_to(a).pop().unwrap();
    h.sent_to(b);
    h.sip(a, &text);
    // At most our same 200 again (it is retransmitted until the ACK anyway): no 482, no new fork.
    for r in h.responses_to(a) {
        assert_eq!((r.status, r.to().unwrap().tag()), (200, ok.to().unwrap().tag()));
    }
    assert!(h.sent_to(b).is_empty());
    assert!(h.cloud_msgs().is_empty());
    assert_eq!(h.core.active_calls(), 1);
}

#[test]
fn a_seeded_core_is_deterministic_the_same_inputs_give_the_same_bytes() {
    let run = || {
        let mut h = H::new();
        h.register("1002", 5070);
        h.invite("1002");
        h.advance(T1);
        let mut sip = vec![];
        h.out.retain(|o| match o {
            Output::Sip { data, .. } => {
                sip.push(data.clone());
                false
            }
            _ => true,
        });
        sip
    };
    let (one, two) = (run(), run());
    // The fork to 1002 (its Call-ID, From tag and branch are drawn from the RNG) and its
    // retransmission are among them.
    assert!(one.iter().filter(|d| d.starts_with(b"INVITE sip:1002@")).count() == 2, "{}", one.len());
    assert_eq!(one, two);
}

#[test]
fn an_ended_call_leaves_no_server_transaction_behind_and_its_retransmissions_still_get_answers() {
    // Each ended call used to hold its INVITE (timer L) and its BYE (timer J) in the table
    // `max_server_transactions` caps for 64·T1: at 10,000 a site could end at most ~156 calls/s
    // before every new INVITE got 503.
    let mut h = H::new();
    let (text, _inv, ok) = answered_call_unacked(&mut h);
    let (a, b) = (addr(5062), addr(5070));
    h.out.clear();
    assert_eq!(h.core.server_transactions(), 1, "our 200 repeats until the ACK");
    ack_our_200(&mut h, &ok);
    assert_eq!(h.core.server_transactions(), 0, "the ACKed INVITE only lingers: not counted");
    let bye = from_a(&ok, "BYE", 3, "bye1", None);
    h.sip(a, &bye);
    let bye_b = only_request(h.sent_to(b));
    assert_eq!(bye_b.method, Method::Bye);
    h.sip(b, &reply_text(&bye_b, 200, "OK", "callee", None));
    let first = h.responses_to(a);
    assert_eq!(first.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);
    assert_eq!(h.core.active_calls(), 0);
    assert_eq!(h.core.server_transactions(), 0, "the answered BYE only lingers: not counted");
    // A retransmitted BYE still gets the very same 200 (timer J's job) ...
    h.advance(T1);
    h.sip(a, &bye);
    let again = h.responses_to(a);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].to_bytes(), first[0].to_bytes());
    assert!(h.sent_to(b).is_empty(), "the callee is not hung up twice");
    // ... and a late copy of the ACKed INVITE is absorbed (timer L's job): no answer, no call.
    h.sip(a, &text);
    assert!(h.responses_to(a).is_empty());
    assert!(h.sent_to(b).is_empty());
    assert!(h.cloud_msgs().is_empty());
    assert_eq!(h.core.active_calls(), 0);
}
