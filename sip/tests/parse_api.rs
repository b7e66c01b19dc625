//! Parsing rules, stream framing, limits and the message builders.

use trunkline_sip::parse::{MAX_HEADERS, MAX_MESSAGE};
use trunkline_sip::{
    CSeq, Contact, Frame, Framer, Host, Message, Method, NameAddr, Request, Response, Uri, Via, error_response, frame_len, parse,
};

const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:1001@example.com>;tag=a73kszlfl\r\n\
To: <sip:1001@example.com>\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.10\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:1001@192.0.2.10:5060>;expires=600\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

fn request(bytes: &[u8]) -> Request {
    match parse(bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn register() {
    let r = request(REGISTER.as_bytes());
    assert_eq!(r.method, Method::Register);
    assert_eq!(r.uri.host, Host::Domain("example.com".into()));
    let via = r.top_via().unwrap();
    assert_eq!(via.port, Some(5060));
    assert_eq!(via.rport(), Some(None));
    assert_eq!(r.contacts().unwrap()[0].expires(), Some(600));
    assert_eq!(r.expires(), Ok(Some(3600)));
    assert_eq!(r.max_forwards(), Ok(Some(70)));
    assert_eq!(r.to_bytes(), REGISTER.as_bytes());
}

#[test]
fn leading_crlf_bare_lf_and_case() {
    let bare_lf = format!("\r\n\r\n{}", REGISTER.replace("\r\n", "\n").replace("Via:", "vIA :"));
    let r = request(bare_lf.as_bytes());
    assert_eq!(r.call_id(), Ok("1j9FpLxk3uxtm8tn@192.0.2.10"));
    assert_eq!(r.headers.iter().next(), Some(("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport")));
}

#[test]
fn content_length_rules() {
    let with_body = |cl: &str, body: &str| {
        let msg = REGISTER.replace("Content-Length: 0", &format!("Content-Length: {cl}"));
        parse(format!("{msg}{body}").as_bytes())
    };
    // Longer than Content-Length: truncated (UDP).
    let Message::Request(r) = with_body("3", "abcdef").unwrap() else { panic!() };
    assert_eq!(r.body, b"abc");
    for (cl, body) in [("7", "abc"), ("-1", ""), ("99999999999999999999", ""), ("1 2", "ab"), ("", ""), ("0x1", "")] {
        let e = with_body(cl, body).unwrap_err();
        assert_eq!(e.status, 400, "{cl}: {e}");
        assert!(error_response(REGISTER.as_bytes(), &e).is_some());
    }
    // No Content-Length: the datagram's remainder.
    let msg = REGISTER.replace("Content-Length: 0\r\n", "") + "xyz";
    let Message::Request(r) = parse(msg.as_bytes()).unwrap() else { panic!() };
    assert_eq!(r.body, b"xyz");
}

#[test]
fn limits() {
    let mut many = REGISTER.replace("\r\n\r\n", "\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let e = parse(many.as_bytes()).unwrap_err();
    assert_eq!(e.status, 513);
    // The partial headers still identify the request, so it can be answered.
    let out = error_response(many.as_bytes(), &e).unwrap();
    assert!(out.starts_with(b"SIP/2.0 513 Message Too Large\r\n"));

    let long = REGISTER.replace("Expires: 3600", &format!("Subject: {}", "x".repeat(9000)));
    assert_eq!(parse(long.as_bytes()).unwrap_err().status, 513);

    let big = format!("{}{}", REGISTER, "x".repeat(MAX_MESSAGE));
    assert_eq!(parse(big.as_bytes()).unwrap_err().status, 513);
}

#[test]
fn request_line_checks() {
    let with_line = |line: &str| parse(REGISTER.replacen("REGISTER sip:example.com SIP/2.0", line, 1).as_bytes());
    assert!(with_line("REGISTER sips:example.com sip/2.0").is_ok());
    assert_eq!(with_line("REGISTER sip:example.com SIP/3.0").unwrap_err().status, 505);
    assert_eq!(with_line("REGISTER sip:example.com HTTP/1.1").unwrap_err().status, 400);
    assert_eq!(with_line("REGISTER sip:example.com").unwrap_err().status, 400);
    assert_eq!(with_line("REGISTER\tsip:example.com SIP/2.0").unwrap_err().status, 400);
    assert_eq!(with_line("register sip:example.com SIP/2.0").unwrap_err().status, 400); // CSeq says REGISTER
    assert_eq!(with_line("REGISTER tel:+1 555 SIP/2.0").unwrap_err().status, 400);
    assert_eq!(with_line("REGISTER tel:+1<555> SIP/2.0").unwrap_err().status, 416);
    let Message::Request(r) = with_line("REGISTER tel:+15551234;phone-context=x SIP/2.0").unwrap() else { panic!() };
    assert_eq!(r.uri.scheme.as_str(), "tel");
}

#[test]
fn responses() {
    let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\nFrom: <sip:a@b.com>;tag=1\r\nTo: <sip:a@b.com>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let Message::Response(r) = parse(ok.as_bytes()).unwrap() else { panic!() };
    assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
    for bad in ["SIP/2.0 099 x", "SIP/2.0 700 x", "SIP/2.0 2000 x", "SIP/2.0 20 x", "SIP/3.0 200 OK"] {
        let msg = ok.replacen("SIP/2.0 200 OK", bad, 1);
        let e = parse(msg.as_bytes()).unwrap_err();
        assert_eq!(error_response(msg.as_bytes(), &e), None, "{bad}");
    }
    // Responses need the same identity headers.
    let e = parse(ok.replace("Call-ID: c\r\n", "").as_bytes()).unwrap_err();
    assert_eq!(e.status, 400);
}

#[test]
fn ack_is_never_answered() {
    let ack = "ACK sip:b@c.com SIP/2.0\r\nVia: SIP/2.0/UDP a.com;branch=z9hG4bK1\r\nFrom: <sip:a@c.com>;tag=1\r\nTo: <sip:b@c.com>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
    let e = parse(ack.as_bytes()).unwrap_err();
    assert!(e.reason.contains("CSeq method"));
    assert_eq!(error_response(ack.as_bytes(), &e), None);
}

#[test]
fn stream_framing() {
    let invite = "INVITE sip:b@c.com SIP/2.0\r\nVia: SIP/2.0/TCP a.com;branch=z9hG4bK1\r\nFrom: <sip:a@c.com>;tag=1\r\nTo: <sip:b@c.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl :\r\n 4\r\n\r\nbody";
    let stream = format!("\r\n\r\n{REGISTER}{invite}\r\n{REGISTER}");
    let expected = [
        Frame::KeepAlive { len: 4, ping: true },
        Frame::Message(REGISTER.len()),
        Frame::Message(invite.len()),
        Frame::KeepAlive { len: 2, ping: false },
        Frame::Message(REGISTER.len()),
    ];
    // Fed in chunks of every size, framing finds the same boundaries, with or without
    // a resuming Framer.
    for chunk in 1..40 {
        let mut buf: Vec<u8> = Vec::new();
        let mut frames = Vec::new();
        let mut framer = Framer::new();
        for piece in stream.as_bytes().chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                let stateless = frame_len(&buf).unwrap();
                assert_eq!(framer.next_frame(&buf).unwrap(), stateless);
                let Some(f) = stateless else { break };
                let n = match f {
                    Frame::KeepAlive { len, .. } => len,
                    Frame::Message(n) => {
                        parse(&buf[..n]).unwrap();
                        n
                    }
                };
                frames.push(f);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(frames, expected, "chunk {chunk}");
    }
}

#[test]
fn stream_framing_errors() {
    let two_cl = REGISTER.replace("Expires: 3600", "l: 5");
    let e = frame_len(two_cl.as_bytes()).unwrap_err();
    assert_eq!(e.status, 400);
    // frame_len errors carry no partial; error_response reads the buffer itself.
    assert!(error_response(two_cl.as_bytes(), &e).is_some());
    let huge = REGISTER.replace("Content-Length: 0", "Content-Length: 100000");
    assert_eq!(frame_len(huge.as_bytes()).unwrap_err().status, 413);
    let endless = format!("OPTIONS sip:a SIP/2.0\r\nX: {}", "y".repeat(MAX_MESSAGE));
    assert_eq!(frame_len(endless.as_bytes()).unwrap_err().status, 513);
    assert_eq!(frame_len(b"OPTIONS sip:a SIP/2.0\r\nX: y\r\n"), Ok(None));
    assert_eq!(frame_len(b"\r\n"), Ok(None));
    assert_eq!(frame_len(b""), Ok(None));
}

#[test]
fn build_request_and_answer_it() {
    let mut req = Request::new(Method::Invite, Uri::parse("sip:bob@example.com").unwrap());
    req.push_via(&Via::new("udp", Host::V4([192, 0, 2, 1].into()), Some(5060), "z9hG4bKabc"));
    req.push_via(&Via::new("tcp", Host::Domain("edge.example.com".into()), None, "z9hG4bKtop"));
    req.set_max_forwards(70);
    let mut from = NameAddr::new(Uri::parse("sip:alice@example.com").unwrap());
    from.display = Some("Alice \"Al\"".into());
    from.set_tag("f1");
    req.set_from(&from);
    req.set_to(&NameAddr::parse("<sip:bob@example.com>").unwrap());
    req.set_call_id("abc@192.0.2.1");
    req.set_cseq(&CSeq::new(1, Method::Invite));
    req.set_contact(&Contact::NameAddr(NameAddr::parse("<sip:alice@192.0.2.1:5060>").unwrap()));
    req.set_body("application/sdp", b"v=0\r\n".to_vec());
    req.headers.push("Content-Length", "999"); // ignored: the real length is written
    let bytes = req.to_bytes();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP edge.example.com;branch=z9hG4bKtop\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\n"));
    assert!(text.contains("\r\nFrom: \"Alice \\\"Al\\\"\" <sip:alice@example.com>;tag=f1\r\n"));
    assert!(text.ends_with("Content-Length: 5\r\n\r\nv=0\r\n"));
    let parsed = request(&bytes);
    assert_eq!(parsed.from().unwrap(), from);
    assert_eq!(parsed.vias().unwrap().len(), 2);

    let mut resp = Response::to_request(&parsed, 180, "Ringing");
    assert!(resp.set_to_tag("t9"));
    assert!(!resp.set_to_tag("t10"));
    let again = match parse(&resp.to_bytes()).unwrap() {
        Message::Response(r) => r,
        _ => unreachable!(),
    };
    assert_eq!(again.vias().unwrap(), parsed.vias().unwrap());
    assert_eq!(again.cseq().unwrap(), CSeq::new(1, Method::Invite));
    assert_eq!(again.to().unwrap().tag(), Some("t9"));
    assert_eq!(again.from().unwrap().tag(), Some("f1"));
    assert!(again.headers.get("Contact").is_none());
    assert!(again.to_string().starts_with("SIP/2.0 180 Ringing\r\n"));
}

#[test]
fn folded_lists_are_split_into_exact_items_and_other_values_keep_their_text() {
    let msg = "INVITE sip:b@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1 ,\r\n \t SIP/2.0/TCP 192.0.2.2;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bK3\r\n\
m: <sip:a@192.0.2.1>;q=0.5,  \"x, y\" <sip:c@192.0.2.9;a=b>\r\n\
Subject: one,\r\n  two ,\r\n\tthree\r\n\
From: <sip:a@example.com>;tag=1\r\n\
To: <sip:b@example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Odd: caf\u{e9}\r\n\
Content-Length: 0\r\n\r\n";
    let r = request(msg.as_bytes());
    let all: Vec<(&str, &str)> = r.headers.iter().collect();
    assert_eq!(
        all,
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
            ("Via", "SIP/2.0/TCP 192.0.2.2;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP 192.0.2.3;branch=z9hG4bK3"),
            ("Contact", "<sip:a@192.0.2.1>;q=0.5"),
            ("Contact", "\"x, y\" <sip:c@192.0.2.9;a=b>"),
            ("Subject", "one, two , three"),
            ("From", "<sip:a@example.com>;tag=1"),
            ("To", "<sip:b@example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 INVITE"),
            ("X-Odd", "caf\u{e9}"),
            ("Content-Length", "0"),
        ]
    );
    assert_eq!(r.vias().unwrap().len(), 3);
    assert_eq!(r.contacts().unwrap().len(), 2);
}
