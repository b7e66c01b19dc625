//! Deterministic tests of the gateway core: SIP text in, SIP text / cloud messages / media
//! commands out, with a fake clock and fake media ports. No sockets, no sleeps.

use super::*;
use trunkline_protocol::PROTOCOL_VERSION;

struct FakeMedia(u64);

impl MediaPorts for FakeMedia {
    fn start_echo(&mut self, _offer: &str) -> Option<EchoSetup> {
        self.0 += 1;
        Some(EchoSetup {
            id: self.0,
            local: format!("10.0.0.1:{}", 24000 + self.0 * 2).parse().unwrap(),
            answer: format!(
                "v=0\r\no=echo 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
                24000 + self.0 * 2
            ),
        })
    }

    fn allocate(&mut self) -> Option<MediaPair> {
        self.0 += 1;
        Some(MediaPair {
            id: self.0,
            a_local: format!("10.0.0.1:{}", 20000 + self.0 * 4).parse().unwrap(),
            b_local: format!("10.0.0.1:{}", 20002 + self.0 * 4).parse().unwrap(),
        })
    }
}

/// Sessions numbered from 1; the phone side of session `id` is offered (or answers) on port
/// 30000 + 2·id.
struct FakeBridges(u64);

fn fake_phone_sdp(id: u64) -> String {
    let port = 30000 + id * 2;
    format!(
        "v=0\r\no=gw 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
}

impl Bridges for FakeBridges {
    fn open_session(&mut self, _now: Instant, offer: &str) -> Result<(u64, String), BridgeError> {
        if !offer.starts_with("v=0") {
            return Err(BridgeError::BadOffer("not SDP".into()));
        }
        self.0 += 1;
        Ok((self.0, format!("v=0\r\nsession-answer-{}", self.0)))
    }

    fn attach(&mut self, id: u64, _phone_offer: Option<&str>) -> Result<BridgeSetup, BridgeError> {
        Ok(BridgeSetup { id, answer: String::new(), phone_sdp: fake_phone_sdp(id) })
    }

    fn offer_session(&mut self, _now: Instant, _phone_offer: &str) -> Result<BridgeSetup, BridgeError> {
        self.0 += 1;
        Ok(BridgeSetup { id: self.0, answer: format!("v=0\r\nsession-offer-{}", self.0), phone_sdp: fake_phone_sdp(self.0) })
    }

    fn remote_answer(&mut self, _id: u64, answer: &str) -> Result<(), BridgeError> {
        if answer.starts_with("v=0") { Ok(()) } else { Err(BridgeError::BadOffer("not SDP".into())) }
    }
}

pub(super) const GW: &str = "10.0.0.1:5060";
/// The wall clock at the start of every test (Unix ms): the core reads no clock of its own.
pub(super) const WALL_MS: i64 = 1_800_000_000_000;

pub(super) struct H {
    pub(super) core: Core,
    pub(super) now: Instant,
    pub(super) out: Vec<Output>,
}

pub(super) fn phone(n: &str) -> PhoneEntry {
    PhoneEntry {
        number: n.into(),
        display_name: format!("Phone {n}"),
        ha1_md5: digest::ha1(Algorithm::Md5, n, "trunkline", &format!("pw-{n}")),
        ha1_sha256: digest::ha1(Algorithm::Sha256, n, "trunkline", &format!("pw-{n}")),
    }
}

pub(super) fn addr(port: u16) -> SocketAddr {
    format!("192.168.1.50:{port}").parse().unwrap()
}

impl H {
    pub(super) fn new() -> H {
        let phones =
            Phones::from_list(PhoneList { realm: "trunkline".into(), phones: vec![phone("1001"), phone("1002"), phone("1003")] });
        let now = Instant::now();
        let core = Core::new(
            CoreConfig {
                switch_id: "hq".into(),
                adv_ip: "10.0.0.1".parse().unwrap(),
                sip_port: 5060,
                ring_timeout: Duration::from_secs(30),
                key_ttl: Duration::from_secs(30),
                min_expires: 60,
                max_expires: 3600,
                digest_algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
                echo_number: Some("1999".into()),
                guard: GuardConfig::default(),
            },
            phones,
            Box::new(FakeMedia(0)),
            Box::new(FakeBridges(0)),
            CoreInputs { clock_base: (now, WALL_MS), rng_seed: [5u8; 32], nonce_secret: [7u8; 32] },
        );
        let mut h = H { core, now, out: vec![] };
        h.core.on_cloud(h.now, LinkEvent::Up);
        h
    }

    pub(super) fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.out.push(o);
        }
    }

    pub(super) fn sip(&mut self, from: SocketAddr, text: &str) {
        let msg = trunkline_sip::parse(text.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        self.core.on_sip(self.now, from, Transport::Udp, msg);
        self.drain();
    }

    pub(super) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// SIP messages sent to `to`, consumed.
    pub(super) fn sent_to(&mut self, to: SocketAddr) -> Vec<Message> {
        let mut got = vec![];
        self.out.retain(|o| match o {
            Output::Sip { to: t, data, .. } if *t == to => {
                got.push(trunkline_sip::parse(data).expect("we send parseable SIP"));
                false
            }
            _ => true,
        });
        got
    }

    pub(super) fn responses_to(&mut self, to: SocketAddr) -> Vec<Response> {
        self.sent_to(to)
            .into_iter()
            .filter_map(|m| match m {
                Message::Response(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub(super) fn last_status(&mut self, to: SocketAddr) -> u16 {
        self.responses_to(to).last().map(|r| r.status).expect("a response")
    }

    /// The patent steps traced so far (taken out of `out`), as (cloud call id, step).
    pub(super) fn steps(&mut self) -> Vec<(String, Step)> {
        let mut steps = vec![];
        self.out.retain(|o| match o {
            Output::Step { call_id, step, .. } => {
                steps.push((call_id.clone(), *step));
                false
            }
            _ => true,
        });
        steps
    }

    pub(super) fn cloud_msgs(&mut self) -> Vec<ClientMsg> {
        let mut got = vec![];
        self.out.retain(|o| match o {
            Output::Cloud(m) => {
                got.push(m.clone());
                false
            }
            _ => true,
        });
        got
    }

    /// Authorization value for `number` answering the last challenge sent to `to`.
    pub(super) fn auth(&mut self, to: SocketAddr, number: &str, password: &str, method: &str, uri: &str) -> String {
        let r = self.responses_to(to).into_iter().rev().find(|r| r.status == 401).expect("a 401");
        let h = r.headers.get_all("WWW-Authenticate").next().unwrap().to_string();
        assert!(h.contains("algorithm=MD5"), "MD5 offered first here: {h}");
        let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        let ha1 = digest::ha1(Algorithm::Md5, number, "trunkline", password);
        use md5::Digest;
        let md = |s: String| hex::encode(md5::Md5::digest(s.as_bytes()));
        let resp = md(format!("{ha1}:{nonce}:00000001:abc:auth:{}", md(format!("{method}:{uri}"))));
        format!(
            "Digest username=\"{number}\", realm=\"trunkline\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\""
        )
    }

    pub(super) fn register(&mut self, number: &str, port: u16) -> u16 {
        self.register_with(number, &format!("pw-{number}"), port, 600)
    }

    pub(super) fn register_with(&mut self, number: &str, password: &str, port: u16, expires: u32) -> u16 {
        self.register_round(number, password, port, expires, 0)
    }

    /// Registration number `round` of one phone (same Call-ID, next CSeqs, new branches).
    pub(super) fn register_round(&mut self, number: &str, password: &str, port: u16, expires: u32, round: u32) -> u16 {
        let a = addr(port);
        let base = format!(
            "REGISTER sip:{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKr{port}{{B}}\nFrom: <sip:{number}@{GW}>;tag=r{port}\nTo: <sip:{number}@{GW}>\nCall-ID: reg{port}@x\nCSeq: {{C}} REGISTER\nContact: <sip:{number}@{a}>\nExpires: {expires}\n{{AUTH}}Content-Length: 0\n\n"
        );
        let (b1, b2) = if round == 0 { ("a".to_string(), "b".to_string()) } else { (format!("{round}a"), format!("{round}b")) };
        let (c1, c2) = ((2 * round + 1).to_string(), (2 * round + 2).to_string());
        self.sip(a, &base.replace("{B}", &b1).replace("{C}", &c1).replace("{AUTH}", ""));
        let auth = self.auth(a, number, password, "REGISTER", &format!("sip:{GW}"));
        self.sip(a, &base.replace("{B}", &b2).replace("{C}", &c2).replace("{AUTH}", &format!("Authorization: {auth}\n")));
        self.last_status(a)
    }

    /// 1001 (port 5062) INVITEs `to`, answering the challenge. Returns the INVITE text used.
    pub(super) fn invite(&mut self, to: &str) -> String {
        let a = addr(5062);
        let base = format!(
            "INVITE sip:{to}@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv{{B}}\nFrom: \"Front Desk\" <sip:1001@{GW}>;tag=caller\nTo: <sip:{to}@{GW}>\nCall-ID: call-1@x\nCSeq: {{C}} INVITE\nContact: <sip:1001@{a}>\nMax-Forwards: 70\n{{AUTH}}Content-Type: application/sdp\nContent-Length: {{LEN}}\n\n{{SDP}}"
        )
        .replace("{SDP}", SDP_A);
        let text = |b: &str, c: &str, auth: &str| {
            base.replace("{B}", b).replace("{C}", c).replace("{AUTH}", auth).replace("{LEN}", &SDP_A.len().to_string())
        };
        self.sip(a, &text("1", "1", ""));
        let auth = self.auth(a, "1001", "pw-1001", "INVITE", &format!("sip:{to}@{GW}"));
        self.sip(a, &format!("ACK sip:{to}@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv1\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:{to}@{GW}>;tag=x\nCall-ID: call-1@x\nCSeq: 1 ACK\nContent-Length: 0\n\n"));
        let t = text("2", "2", &format!("Authorization: {auth}\n"));
        self.sip(a, &t);
        t
    }
}

pub(super) const SDP_A: &str = "v=0\r\no=a 1 1 IN IP4 192.168.1.50\r\ns=-\r\nc=IN IP4 192.168.1.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
pub(super) const SDP_B: &str = "v=0\r\no=b 1 1 IN IP4 192.168.1.60\r\ns=-\r\nc=IN IP4 192.168.1.60\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

pub(super) fn reply_text(req: &Request, status: u16, reason: &str, tag: &str, sdp: Option<&str>) -> String {
    let mut r = Response::to_request(req, status, reason);
    r.set_to_tag(tag);
    r.headers.push("Contact", "<sip:1002@192.168.1.60:5070>");
    if let Some(s) = sdp {
        r.set_body("application/sdp", s.as_bytes().to_vec());
    }
    String::from_utf8(r.to_bytes()).unwrap().replace("\r\n", "\n")
}

pub(super) fn only_request(msgs: Vec<Message>) -> Request {
    let reqs: Vec<Request> = msgs
        .into_iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(reqs.len(), 1, "exactly one request expected");
    reqs.into_iter().next().unwrap()
}

pub(super) fn direct_msgs(h: &mut H, conn: u64) -> Vec<DirectServerMsg> {
    let mut got = vec![];
    h.out.retain(|o| match o {
        Output::Direct { conn: c, msg, .. } if *c == conn => {
            got.push(msg.clone());
            false
        }
        _ => true,
    });
    got
}

pub(super) fn direct_signal(call: &str, payload: SignalPayload) -> LinkEvent {
    LinkEvent::Msg(ServerMsg::DirectSignal { call_id: call.into(), payload })
}

#[test]
fn register_is_challenged_then_accepted_and_lists_the_binding() {
    let mut h = H::new();
    assert_eq!(h.register("1001", 5062), 200);
    assert!(h.core.is_registered(h.now, "1001"));
}

/// The registrations the core handed over to save since the last call, consumed.
fn saved_registrations(h: &mut H) -> Vec<SavedRegistrations> {
    let mut got = vec![];
    h.out.retain(|o| match o {
        Output::SaveRegistrations(s) => {
            got.push(s.clone());
            false
        }
        _ => true,
    });
    got
}

#[test]
fn registrations_are_saved_a_second_after_they_change_and_at_shutdown_and_a_new_core_takes_them() {
    let mut h = H::new();
    assert_eq!(h.register("1001", 5062), 200);
    assert_eq!(h.register("1002", 5064), 200);
    assert!(saved_registrations(&mut h).is_empty(), "not a file write per REGISTER");
    assert!(h.core.poll_timeout().is_some_and(|t| t <= h.now + SAVE_REGISTRATIONS_EVERY));
    h.advance(SAVE_REGISTRATIONS_EVERY);
    let mut saved = saved_registrations(&mut h);
    assert_eq!(saved.len(), 1, "one save for the burst");
    saved[0].bindings.sort_by(|a, b| a.number.cmp(&b.number));
    let numbers: Vec<(&str, SocketAddr)> = saved[0].bindings.iter().map(|b| (&*b.number, b.source)).collect();
    assert_eq!(numbers, [("1001", addr(5062)), ("1002", addr(5064))]);
    assert_eq!(saved[0].bindings[0].expires_unix_ms, WALL_MS + 600_000, "registered at the start, for 600 s");
    h.advance(Duration::from_secs(30));
    assert!(saved_registrations(&mut h).is_empty(), "nothing changed, nothing saved");

    // A refresh from where the phone was waits longer: the copy on disk still reaches it.
    assert_eq!(h.register_round("1001", "pw-1001", 5062, 600, 1), 200);
    h.advance(SAVE_REGISTRATIONS_EVERY);
    assert!(saved_registrations(&mut h).is_empty(), "a refresh is not saved within a second");
    h.advance(SAVE_REFRESHES_EVERY);
    assert_eq!(saved_registrations(&mut h).len(), 1, "a refresh is saved within a minute");

    // A change not saved yet goes at shutdown, at once.
    assert_eq!(h.register("1003", 5066), 200);
    h.core.shutdown(h.now);
    h.drain();
    let last = saved_registrations(&mut h).pop().expect("saved at shutdown");
    assert_eq!(last.bindings.len(), 3);

    // The next process: its core reaches the phones before they register again.
    let mut next = H::new();
    next.now = h.now + Duration::from_secs(5);
    assert_eq!(next.core.restore_registrations(next.now, last), 3);
    assert!(next.core.is_registered(next.now, "1001"));
    assert!(next.core.is_registered(next.now, "1003"));
    next.advance(SAVE_REGISTRATIONS_EVERY);
    assert!(saved_registrations(&mut next).is_empty(), "what was restored is already on disk");
}

#[test]
fn wrong_password_and_unknown_number_get_the_same_answer() {
    let mut h = H::new();
    assert_eq!(h.register_with("1001", "nope", 5062, 600), 403);
    assert_eq!(h.register_with("7777", "nope", 5064, 600), 403);
    assert!(!h.core.is_registered(h.now, "1001"));
}

#[test]
fn too_brief_registration_gets_423_with_min_expires() {
    let mut h = H::new();
    assert_eq!(h.register_with("1001", "pw-1001", 5062, 10), 423);
}

#[test]
fn f7_local_call_rings_answers_and_hangs_up_with_media_relayed() {
    let mut h = H::new();
    assert_eq!(h.register("1002", 5070), 200);
    h.invite("1002");
    let a = addr(5062);
    let b = addr(5070);
    assert_eq!(h.responses_to(a).iter().map(|r| r.status).collect::<Vec<_>>(), vec![100]);
    // The fork to 1002 offers the relay's B side, not the caller's address.
    let inv = only_request(h.sent_to(b));
    assert_eq!(inv.method, Method::Invite);
    let body = String::from_utf8(inv.body.clone()).unwrap();
    assert!(body.contains("c=IN IP4 10.0.0.1") && body.contains("m=audio 20006 "), "{body}");
    assert!(h.out.iter().any(|o| matches!(o, Output::MediaStart { id: 1, a_remote: Some(r), .. } if r.port() == 4000)));
    h.sip(b, &reply_text(&inv, 180, "Ringing", "callee", None));
    assert_eq!(h.last_status(a), 180);
    h.sip(b, &reply_text(&inv, 200, "OK", "callee", Some(SDP_B)));
    // B gets its ACK, A gets 200 with the relay's A side.
    let ack = only_request(h.sent_to(b));
    assert_eq!(ack.method, Method::Ack);
    let ok = h.responses_to(a).pop().unwrap();
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 20004 "));
    assert!(h.out.iter().any(|o| matches!(o, Output::MediaRemote { leg: MediaLeg::B, addr, .. } if addr.port() == 6000)));
    // Until A ACKs, the 200 is retransmitted.
    h.advance(T1);
    assert_eq!(h.last_status(a), 200);
    h.sip(a, &format!("ACK sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={}\nCall-ID: call-1@x\nCSeq: 2 ACK\nContent-Length: 0\n\n", ok.to().unwrap().tag().unwrap()));
    h.advance(T2);
    assert!(h.responses_to(a).is_empty(), "no retransmission after the ACK");
    // 1002 is busy now.
    // A hangs up: 200 to A, BYE to B, media stopped.
    h.sip(a, &format!("BYE sip:hq@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKbye\nFrom: <sip:1001@{GW}>;tag=caller\nTo: <sip:1002@{GW}>;tag={}\nCall-ID: call-1@x\nCSeq: 3 BYE\nContent-Length: 0\n\n", ok.to().unwrap().tag().unwrap()));
    assert_eq!(h.last_status(a), 200);
    let bye = only_request(h.sent_to(b));
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri.to_string(), "sip:1002@192.168.1.60:5070");
    assert!(h.out.iter().any(|o| matches!(o, Output::MediaStop { id: 1 })));
    assert_eq!(h.core.active_calls(), 0);
}

#[test]
fn retransmitted_invite_is_answered_again_without_a_second_fork() {
    let mut h = H::new();
    h.register("1002", 5070);
    let text = h.invite("1002");
    let (a, b) = (addr(5062), addr(5070));
    h.sent_to(a);
    assert_eq!(h.sent_to(b).len(), 1);
    h.sip(a, &text);
    assert_eq!(h.last_status(a), 100);
    assert!(h.sent_to(b).is_empty());
}

#[test]
fn unregistered_callee_is_480_and_busy_callee_is_486() {
    let mut h = H::new();
    h.invite("1002");
    assert_eq!(h.last_status(addr(5062)), 480);

    let mut h = H::new();
    h.register("1003", 5080);
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::CalleeQuery {
            call_id: "q".into(),
            from: "2001".into(),
            from_name: "A".into(),
            to: "1003".into(),
        }),
    );
    h.drain();
    h.register("1002", 5070);
    // 1001 calls 1002 and it rings; then the cloud asks about 1002: busy.
    h.invite("1002");
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::CalleeQuery {
            call_id: "q2".into(),
            from: "2001".into(),
            from_name: "A".into(),
            to: "1002".into(),
        }),
    );
    h.drain();
    let msgs = h.cloud_msgs();
    assert!(msgs.iter().any(|m| matches!(m, ClientMsg::QueryAnswer { call_id, answer: QueryAnswer::Decline { reason: DeclineReason::Busy } } if call_id == "q2")));
}

#[test]
fn ring_timeout_cancels_the_fork_and_answers_480() {
    let mut h = H::new();
    h.register("1002", 5070);
    h.invite("1002");
    let inv = only_request(h.sent_to(addr(5070)));
    h.sip(addr(5070), &reply_text(&inv, 180, "Ringing", "callee", None));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.last_status(addr(5062)), 480);
    let cancel = only_request(h.sent_to(addr(5070)));
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(cancel.top_via().unwrap().branch(), inv.top_via().unwrap().branch(), "CANCEL shares the INVITE branch");
    // The 200 for the CANCEL carries the same branch: it must not pass for a 2xx to the INVITE.
    h.sip(addr(5070), &reply_text(&cancel, 200, "OK", "callee", None));
    assert!(h.sent_to(addr(5070)).is_empty(), "no ACK for a CANCEL's 200");
    h.sip(addr(5070), &reply_text(&inv, 487, "Request Terminated", "callee", None));
    let ack = only_request(h.sent_to(addr(5070)));
    assert_eq!((ack.method.clone(), ack.top_via().unwrap().branch()), (Method::Ack, inv.top_via().unwrap().branch()));
}

#[test]
fn caller_cancel_gets_200_and_487_and_cancels_the_fork() {
    let mut h = H::new();
    h.register("1002", 5070);
    let text = h.invite("1002");
    h.sent_to(addr(5070));
    let cancel = text
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL")
        .split("Content-Type")
        .next()
        .unwrap()
        .to_string()
        + "Content-Length: 0\n\n";
    h.sip(addr(5062), &cancel);
    let statuses: Vec<u16> = h.responses_to(addr(5062)).iter().map(|r| r.status).collect();
    assert!(statuses.contains(&200) && statuses.contains(&487), "{statuses:?}");
    assert_eq!(only_request(h.sent_to(addr(5070))).method, Method::Cancel);
}

#[test]
fn b2_b3_unknown_number_asks_the_cloud_and_gets_404_with_the_reason() {
    let mut h = H::new();
    h.invite("4040");
    let q = h.cloud_msgs();
    let call_id = match q.as_slice() {
        [ClientMsg::RouteQuery { call_id, from, to }] => {
            assert_eq!((from.as_str(), to.as_str()), ("1001", "4040"));
            call_id.clone()
        }
        other => panic!("{other:?}"),
    };
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Route { call_id, route: Route::Invalid { reason: "number 4040 does not exist".into() } }),
    );
    h.drain();
    let r = h.responses_to(addr(5062)).pop().unwrap();
    assert_eq!(r.status, 404);
    assert!(r.headers.get("Warning").unwrap().contains("4040 does not exist"));
}

#[test]
fn cloud_down_means_503_for_remote_numbers_but_local_calls_still_ring() {
    let mut h = H::new();
    h.core.on_cloud(h.now, LinkEvent::Down);
    h.invite("4040");
    assert_eq!(h.last_status(addr(5062)), 503);
    assert!(h.cloud_msgs().is_empty());
    h.register("1002", 5070);
    let mut h2 = H::new();
    h2.core.on_cloud(h2.now, LinkEvent::Down);
    h2.register("1002", 5070);
    h2.invite("1002");
    assert_eq!(only_request(h2.sent_to(addr(5070))).method, Method::Invite);
}

#[test]
fn route_timeout_is_503() {
    let mut h = H::new();
    h.invite("4040");
    h.advance(ROUTE_TIMEOUT);
    assert_eq!(h.last_status(addr(5062)), 503);
}

#[test]
fn b6_queues_the_call_and_offers_the_direct_address_c3() {
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
        [ClientMsg::DirectOffer { call_id: c, url, key, .. }] => {
            // The switch's name, not a ws:// address: the callee comes over WebRTC.
            assert_eq!((c, url.as_str()), (&call_id, "switch:hq"));
            key.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(h.last_status(addr(5062)), 180);
    // The callee's WebRTC leg came up through the cloud; it has not presented the key yet.
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Offer { sdp: "v=0\r\nbrowser".into() }));
    h.drain();
    assert!(h.out.iter().any(|o| matches!(o, Output::SessionStart { id: 1, present: None, .. })));
    // The callee declines (through the cloud): the phone hears 603.
    h.core.on_cloud(
        h.now,
        LinkEvent::Msg(ServerMsg::Outcome { call_id: call_id.clone(), outcome: Outcome::Declined, duration_ms: None }),
    );
    h.drain();
    assert_eq!(h.last_status(addr(5062)), 603);
    // Its key is dead: presented on that leg now, it is refused as expired and the leg closes …
    h.out.clear();
    h.core.on_direct(
        h.now,
        1,
        DirectClientMsg::Present { v: PROTOCOL_VERSION, call_id: call_id.clone(), key, caller: "2001".into() },
    );
    h.drain();
    assert!(h.out.iter().any(|o| matches!(
        o,
        Output::Direct { conn: 1, msg: DirectServerMsg::Error { code: ErrorCode::KeyExpired, .. }, close: true }
    )));
    assert!(h.out.iter().any(|o| matches!(o, Output::BridgeStop { id: 1 })));
    // … and no new leg is opened for that call.
    h.out.clear();
    h.core.on_cloud(h.now, direct_signal(&call_id, SignalPayload::Offer { sdp: "v=0\r\nagain".into() }));
    h.drain();
    assert!(h.out.is_empty(), "{:?}", h.out);
}

#[test]
fn c11_c12_registered_callee_is_accepted_with_a_key_others_declined() {
    let mut h = H::new();
    h.register("1001", 5062);
    let q = |call: &str, to: &str| {
        LinkEvent::Msg(ServerMsg::CalleeQuery { call_id: call.into(), from: "2001".into(), from_name: "A".into(), to: to.into() })
    };
    h.core.on_cloud(h.now, q("c1", "1001"));
    h.core.on_cloud(h.now, q("c2", "1002"));
    h.core.on_cloud(h.now, q("c3", "3001"));
    h.drain();
    let answers = h.cloud_msgs();
    assert!(
        matches!(&answers[0], ClientMsg::QueryAnswer { answer: QueryAnswer::Accept { url, key, expires_in_ms: 30_000 }, .. } if url == "switch:hq" && key.len() == 22)
    );
    assert!(matches!(
        &answers[1],
        ClientMsg::QueryAnswer { answer: QueryAnswer::Decline { reason: DeclineReason::NotRegistered }, .. }
    ));
    assert!(matches!(
        &answers[2],
        ClientMsg::QueryAnswer { answer: QueryAnswer::Decline { reason: DeclineReason::NotRegistered }, .. }
    ));
}

#[test]
fn rfc_checks_before_the_method_unsupported_scheme_max_forwards_require() {
    let mut h = H::new();
    let a = addr(5090);
    let req = |ruri: &str, extra: &str| {
        format!(
            "OPTIONS {ruri} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{}\nFrom: <sip:x@y>;tag=1\nTo: <sip:hq@{GW}>\nCall-ID: o@x\nCSeq: 1 OPTIONS\n{extra}Content-Length: 0\n\n",
            ruri.len() + extra.len()
        )
    };
    h.sip(a, &req("tel:+1234", ""));
    assert_eq!(h.last_status(a), 416);
    h.sip(a, &req(&format!("sip:hq@{GW}"), "Require: nothingyouknow\n"));
    let r = h.responses_to(a).pop().unwrap();
    assert_eq!((r.status, r.headers.get("Unsupported")), (420, Some("nothingyouknow")));
    h.sip(a, &req(&format!("sip:hq@{GW}"), ""));
    assert_eq!(h.last_status(a), 200);
}

/// A REGISTER for `number` from `a` (branch `b`), with `auth` (an Authorization value) if any.
fn register_text(a: SocketAddr, number: &str, b: &str, auth: Option<&str>) -> String {
    let auth = auth.map(|v| format!("Authorization: {v}\n")).unwrap_or_default();
    format!(
        "REGISTER sip:{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{b}\nFrom: <sip:{number}@{GW}>;tag=t{b}\nTo: <sip:{number}@{GW}>\nCall-ID: {b}@x\nCSeq: 1 REGISTER\nContact: <sip:{number}@{a}>\n{auth}Content-Length: 0\n\n"
    )
}

#[test]
fn challenges_and_refusals_keep_no_server_transaction() {
    let mut h = H::new();
    let a = addr(5070);
    for i in 0..50 {
        h.sip(a, &register_text(a, "1001", &format!("c{i}"), None));
    }
    assert_eq!(h.responses_to(a).len(), 50);
    assert_eq!(h.core.server_transactions(), 0, "401s are stateless");
    h.sip(a, &register_text(a, "1001", "c100", None));
    let auth = h.auth(a, "1001", "wrong", "REGISTER", &format!("sip:{GW}"));
    h.sip(a, &register_text(a, "1001", "c101", Some(&auth)));
    assert_eq!(h.last_status(a), 403);
    assert_eq!(h.core.server_transactions(), 0, "403s are stateless");
    h.sip(a, &format!("OPTIONS sip:1001@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKo1\nFrom: <sip:x@{GW}>;tag=o\nTo: <sip:1001@{GW}>\nCall-ID: o@x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"));
    assert_eq!(h.last_status(a), 200);
    assert_eq!(h.core.server_transactions(), 0);
    // A successful REGISTER keeps no transaction either: its answer is remembered, so a
    // retransmission (its 200 lost) gets the same bytes, not a replay challenge.
    assert_eq!(h.register("1001", 5072), 200);
    assert_eq!(h.core.server_transactions(), 0);
    assert_eq!(h.core.answered.len(), 1);
}

#[test]
fn a_retransmitted_register_gets_the_same_200_and_a_storm_keeps_no_transactions() {
    let mut h = H::new();
    let a = addr(5070);
    h.sip(a, &register_text(a, "1001", "r1", None));
    let auth = h.auth(a, "1001", "pw-1001", "REGISTER", &format!("sip:{GW}"));
    let authed = register_text(a, "1001", "r2", Some(&auth));
    h.sip(a, &authed);
    let first = h.sent_to(a);
    h.sip(a, &authed);
    let again = h.sent_to(a);
    assert_eq!(first.len(), 1, "the 200 (the 401 was read by `auth`)");
    assert_eq!(again.len(), 1);
    assert_eq!(
        first[0].to_bytes(),
        again[0].to_bytes(),
        "the retransmission gets the very same 200 (same To tag), not a replay challenge"
    );
    // Timer J later it is forgotten (a very late retransmission is a new request: challenged).
    h.advance(Duration::from_secs(33));
    h.sip(a, &authed);
    assert_eq!(h.last_status(a), 401);
    assert_eq!(h.core.server_transactions(), 0);
}

#[test]
fn a_guessing_source_is_ignored_after_the_budget_and_the_phone_keeps_registering() {
    let mut h = H::new();
    assert_eq!(h.register("1001", 5062), 200);
    let attacker = "203.0.113.9:5060".parse::<SocketAddr>().unwrap();
    for i in 0..10 {
        h.sip(attacker, &register_text(attacker, "1001", &format!("g{i}a"), None));
        let auth = h.auth(attacker, "1001", &format!("guess{i}"), "REGISTER", &format!("sip:{GW}"));
        h.sip(attacker, &register_text(attacker, "1001", &format!("g{i}b"), Some(&auth)));
        assert_eq!(h.last_status(attacker), 403);
    }
    assert!(h.out.iter().any(|o| matches!(o, Output::Block { ip, .. } if *ip == attacker.ip())), "the driver is told");
    // Ignored now: no answer at all, even to a request without credentials.
    h.sip(attacker, &register_text(attacker, "1001", "g99", None));
    assert!(h.responses_to(attacker).is_empty());
    // The phone on its own address is not affected.
    assert_eq!(h.register("1001", 5062), 200);
    // After the block the source is answered again.
    h.advance(Duration::from_secs(61));
    h.sip(attacker, &register_text(attacker, "1001", "g100", None));
    assert_eq!(h.last_status(attacker), 401);
}

#[test]
fn a_replayed_authorization_is_challenged_again_and_the_next_nonce_count_is_accepted() {
    let mut h = H::new();
    let a = addr(5080);
    h.sip(a, &register_text(a, "1002", "p1", None));
    let auth = h.auth(a, "1002", "pw-1002", "REGISTER", &format!("sip:{GW}"));
    h.sip(a, &register_text(a, "1002", "p2", Some(&auth)));
    assert_eq!(h.last_status(a), 200);
    let evil = addr(5999);
    h.sip(evil, &register_text(evil, "1002", "p3", Some(&auth)));
    assert_eq!(h.last_status(evil), 401, "a replay gets a fresh challenge");
    // nc=00000002 on the same nonce (baresip): accepted.
    let nonce = auth.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap();
    let ha1 = digest::ha1(Algorithm::Md5, "1002", "trunkline", "pw-1002");
    use md5::Digest;
    let md = |s: String| hex::encode(md5::Md5::digest(s.as_bytes()));
    let resp = md(format!("{ha1}:{nonce}:00000002:abc:auth:{}", md(format!("REGISTER:sip:{GW}"))));
    let auth2 = format!(
        "Digest username=\"1002\", realm=\"trunkline\", nonce=\"{nonce}\", uri=\"sip:{GW}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000002, cnonce=\"abc\""
    );
    h.sip(a, &register_text(a, "1002", "p4", Some(&auth2)));
    assert_eq!(h.last_status(a), 200);
}

#[test]
fn a_number_guessed_from_many_addresses_is_not_checked_from_them_but_its_phone_is() {
    let mut h = H::new();
    assert_eq!(h.register("1003", 5062), 200);
    let mut answered = 0;
    for i in 0..40u8 {
        let src: SocketAddr = format!("198.51.100.{}:5060", i + 1).parse().unwrap();
        h.sip(src, &register_text(src, "1003", &format!("m{i}a"), None));
        let auth = h.auth(src, "1003", "guess", "REGISTER", &format!("sip:{GW}"));
        h.sip(src, &register_text(src, "1003", &format!("m{i}b"), Some(&auth)));
        answered += h.responses_to(src).iter().filter(|r| r.status == 403).count();
    }
    assert_eq!(answered, 30, "max_failures_per_account guesses are checked, then none");
    assert_eq!(h.register("1003", 5062), 200, "the phone's own address is trusted");
}

#[test]
fn every_method_answers_an_existing_and_a_missing_extension_alike() {
    let mut h = H::new();
    let a = addr(5090);
    for (i, method) in ["REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE", "MESSAGE"].into_iter().enumerate() {
        let mut shapes = vec![];
        for user in ["1001", "7777"] {
            h.sip(
                a,
                &format!(
                    "{method} sip:{user}@{GW} SIP/2.0\nVia: SIP/2.0/UDP {a};branch=z9hG4bKe{i}{user}\nFrom: <sip:{user}@{GW}>;tag=e\nTo: <sip:{user}@{GW}>\nCall-ID: e{i}{user}@x\nCSeq: 1 {method}\nContact: <sip:{user}@{a}>\nContent-Length: 0\n\n"
                ),
            );
            let r = h.responses_to(a).pop().expect("an answer");
            let mut names: Vec<String> = r.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
            names.sort();
            shapes.push((r.status, names));
        }
        assert_eq!(shapes[0], shapes[1], "{method}");
    }
}
