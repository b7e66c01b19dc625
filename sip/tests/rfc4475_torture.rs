//! RFC 4475 torture messages: every file parses with the right fields, or is rejected
//! with the status the RFC expects (and, for requests, gets a usable error response).

use trunkline_sip::digest::{DigestError, parse_authorization};
use trunkline_sip::{Contact, Host, Message, Method, ParseError, Request, Response, Scheme, error_response, parse};

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/rfc4475/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn req(name: &str) -> Request {
    match parse(&load(name)) {
        Ok(Message::Request(r)) => r,
        other => panic!("{name}: expected a request, got {other:?}"),
    }
}

fn resp(name: &str) -> Response {
    match parse(&load(name)) {
        Ok(Message::Response(r)) => r,
        other => panic!("{name}: expected a response, got {other:?}"),
    }
}

fn rejected(name: &str) -> ParseError {
    match parse(&load(name)) {
        Err(e) => e,
        Ok(m) => panic!("{name}: should be rejected, parsed as {m:?}"),
    }
}

/// What must happen to each file.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Parses,
    /// Rejected with this status; the error response is:
    Rejected(u16, Answer),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// a response that itself parses, matching the request's identity;
    Parseable,
    /// a response copying a malformed From/To/CSeq verbatim (so it is not parseable itself);
    Verbatim,
    /// none: a response (dropped) or a request with no recoverable identity.
    Nothing,
}

use Answer::*;
use Expect::*;

const EXPECT: &[(&str, Expect)] = &[
    // 3.1.1 valid
    ("wsinv", Parses),
    ("intmeth", Parses),
    ("esc01", Parses),
    ("escnull", Parses),
    ("esc02", Parses),
    ("lwsdisp", Parses),
    ("longreq", Parses),
    ("dblreq", Parses),
    ("semiuri", Parses),
    ("transports", Parses),
    ("mpart01", Parses),
    ("unreason", Parses),
    ("noreason", Parses),
    // 3.1.2 invalid
    ("badinv01", Rejected(400, Parseable)),
    ("clerr", Rejected(400, Parseable)),
    ("ncl", Rejected(400, Parseable)),
    ("scalar02", Rejected(400, Verbatim)),
    ("scalarlg", Rejected(400, Nothing)),
    ("quotbal", Rejected(400, Verbatim)),
    ("ltgtruri", Rejected(400, Parseable)),
    ("lwsruri", Rejected(400, Parseable)),
    ("lwsstart", Rejected(400, Parseable)),
    ("trws", Rejected(400, Parseable)),
    ("escruri", Rejected(400, Parseable)),
    ("baddate", Rejected(400, Parseable)),
    ("regbadct", Rejected(400, Parseable)),
    ("badaspec", Rejected(400, Verbatim)),
    ("baddn", Rejected(400, Verbatim)),
    ("badvers", Rejected(505, Parseable)),
    ("mismatch01", Rejected(400, Parseable)),
    ("mismatch02", Rejected(400, Parseable)),
    ("bigcode", Rejected(400, Nothing)),
    // 3.2 transaction layer
    ("badbranch", Parses),
    // 3.3 application layer (parse; the application answers)
    ("insuf", Rejected(400, Nothing)),
    ("unkscm", Parses),
    ("novelsc", Parses),
    ("unksm2", Parses),
    ("bext01", Parses),
    ("invut", Parses),
    ("regaut01", Parses),
    ("multi01", Rejected(400, Parseable)),
    ("mcl01", Rejected(400, Parseable)),
    ("bcast", Parses),
    ("zeromf", Parses),
    ("cparam01", Parses),
    ("cparam02", Parses),
    ("regescrt", Parses),
    ("sdp01", Parses),
    // 3.4 backward compatibility
    ("inv2543", Parses),
];

#[test]
fn every_file_has_an_expectation() {
    let dir = format!("{}/tests/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = EXPECT.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
    assert_eq!(files.len(), 49);
}

#[test]
fn outcomes_and_error_responses() {
    for &(name, expect) in EXPECT {
        let bytes = load(name);
        match (parse(&bytes), expect) {
            (Ok(_), Parses) => {}
            (Err(e), Rejected(status, answer)) => {
                assert_eq!(e.status, status, "{name}: {e}");
                check_answer(name, &bytes, &e, status, answer);
            }
            (got, want) => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
}

/// The identity headers of a rejected request, read straight from the file.
fn raw_header<'a>(text: &'a str, names: &[&str]) -> Option<&'a str> {
    text.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        names.iter().any(|x| n.trim().eq_ignore_ascii_case(x)).then(|| v.trim())
    })
}

fn check_answer(name: &str, bytes: &[u8], e: &ParseError, status: u16, answer: Answer) {
    let out = error_response(bytes, e);
    // Re-reading the bytes (as for an error from frame_len) gives the same answer.
    let without_partial = ParseError { partial: None, ..e.clone() };
    assert_eq!(error_response(bytes, &without_partial), out, "{name}");
    let Some(out) = out else {
        assert_eq!(answer, Nothing, "{name}: no error response");
        return;
    };
    assert_ne!(answer, Nothing, "{name}: unexpected error response");
    let text = String::from_utf8(out.clone()).unwrap();
    let input = String::from_utf8_lossy(bytes);
    assert!(text.starts_with(&format!("SIP/2.0 {status} ")), "{name}: {text}");
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{name}: {text}");
    assert!(text.contains("\r\nWarning: 399 trunkline \""), "{name}: {text}");
    let call_id = raw_header(&input, &["Call-ID", "i"]).unwrap();
    assert!(text.contains(&format!("\r\nCall-ID: {call_id}\r\n")), "{name}: {text}");
    let cseq = raw_header(&input, &["CSeq"]).unwrap();
    assert!(text.contains(&format!("\r\nCSeq: {cseq}\r\n")), "{name}: {text}");
    match answer {
        Parseable => {
            let r = match parse(&out) {
                Ok(Message::Response(r)) => r,
                other => panic!("{name}: error response does not parse: {other:?}\n{text}"),
            };
            assert_eq!(r.status, status);
            assert_eq!(r.call_id().unwrap(), call_id);
            assert!(r.to().unwrap().tag().is_some(), "{name}: To tag");
            let top = r.top_via().unwrap();
            let sent = Via(raw_header(&input, &["Via", "v"]).unwrap());
            assert_eq!(top.host.to_string(), sent.host(), "{name}");
            // Same tag for a retransmission.
            assert_eq!(error_response(bytes, e).unwrap(), out);
        }
        Verbatim => {
            assert!(parse(&out).is_err(), "{name}: expected the copied fault to remain");
        }
        Nothing => unreachable!(),
    }
}

/// Host of a raw Via value, for comparison.
struct Via<'a>(&'a str);
impl Via<'_> {
    fn host(&self) -> String {
        let sent_by = self.0.split_whitespace().last().unwrap();
        sent_by.split([';', ':']).next().unwrap().to_string()
    }
}

#[test]
fn specific_rejection_reasons() {
    let reason = |n: &str| rejected(n).reason;
    assert!(reason("badinv01").contains("Via"));
    assert!(reason("clerr").contains("Content-Length"));
    assert!(reason("ncl").contains("Content-Length"));
    assert!(reason("scalar02").contains("CSeq"));
    assert!(reason("quotbal").contains("To"));
    assert!(reason("ltgtruri").contains("Request-URI"));
    assert!(reason("trws").contains("whitespace"));
    assert!(reason("lwsstart").contains("whitespace"));
    assert!(reason("lwsruri").contains("whitespace"));
    assert!(reason("escruri").contains("headers not allowed"));
    assert!(reason("baddate").contains("Date"));
    assert!(reason("regbadct").contains("Contact"));
    assert!(reason("badaspec").contains("<>"));
    assert!(reason("baddn").contains("display name"));
    assert!(reason("mismatch01").contains("CSeq method"));
    assert!(reason("mismatch02").contains("CSeq method"));
    assert!(reason("multi01").contains("more than one"));
    assert!(reason("mcl01").contains("Content-Length"));
    assert!(reason("insuf").contains("missing"));
    // A malformed response carries no request method: it is dropped.
    assert!(rejected("bigcode").partial.unwrap().request_method.is_none());
    assert!(rejected("scalarlg").partial.unwrap().request_method.is_none());
    assert_eq!(rejected("badinv01").partial.unwrap().request_method.as_deref(), Some("INVITE"));
}

#[test]
fn badinv01_answer_drops_garbage_via_params() {
    let bytes = load("badinv01");
    let out = error_response(&bytes, &rejected("badinv01")).unwrap();
    let r = match parse(&out).unwrap() {
        Message::Response(r) => r,
        _ => unreachable!(),
    };
    let vias = r.vias().unwrap();
    assert_eq!(vias.len(), 1);
    assert_eq!(vias[0].to_string(), "SIP/2.0/UDP 192.0.2.15");
}

#[test]
fn scalar02_answer_keeps_the_oversized_cseq() {
    let bytes = load("scalar02");
    let text = String::from_utf8(error_response(&bytes, &rejected("scalar02")).unwrap()).unwrap();
    assert!(text.contains("\r\nCSeq: 36893488147419103232 REGISTER\r\n"));
    assert!(text.contains("\r\nVia: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n"));
}

// ---- 3.1.1 valid messages ----

#[test]
fn wsinv() {
    let r = req("wsinv");
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri.user.as_deref(), Some("vivekg"));
    assert_eq!(r.uri.host, Host::Domain("chair-dnrc.example.com".into()));
    assert_eq!(r.uri.param("unknownparam"), Some(None));
    let to = r.to().unwrap();
    assert_eq!(to.display, None);
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = r.from().unwrap();
    assert_eq!(from.display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(r.max_forwards(), Ok(Some(68)));
    assert_eq!(r.call_id(), Ok("wsinv.ndaksdj@192.0.2.1"));
    let cseq = r.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));
    let vias = r.vias().unwrap();
    let got: Vec<_> = vias.iter().map(|v| (v.transport.as_str(), v.host.to_string(), v.branch().unwrap())).collect();
    assert_eq!(
        got,
        [
            ("UDP", "192.0.2.2".to_string(), "390skdjuw"),
            ("TCP", "spindle.example.com".to_string(), "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111".to_string(), "z9hG4bK30239"),
        ]
    );
    assert_eq!(r.headers.get("Subject"), Some(""));
    assert_eq!(r.headers.get("newfangledheader"), Some("newfangled value continued newfangled value"));
    assert_eq!(r.headers.get("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
    let routes = r.routes().unwrap();
    assert_eq!(routes.len(), 1);
    assert!(routes[0].uri.lr());
    assert_eq!(routes[0].uri.param("unknownwith"), Some(Some("value")));
    let contacts = r.contacts().unwrap();
    let Contact::NameAddr(c) = &contacts[0] else { panic!() };
    assert_eq!(c.display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(c.param("newparam"), Some(Some("newvalue")));
    assert_eq!(c.param("secondparam"), Some(None));
    assert_eq!(c.param("q"), Some(Some("0.33")));
    assert_eq!(r.content_type(), Ok(Some("application/sdp")));
    assert_eq!(r.body.len(), 150);
    assert!(r.body.starts_with(b"v=0\r\n"));
}

#[test]
fn intmeth() {
    let r = req("intmeth");
    let m = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(r.method, Method::Other(m.into()));
    assert_eq!(r.cseq().unwrap().method.as_str(), m);
    assert_eq!(r.uri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
    assert_eq!(r.uri.password.as_deref(), Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
    assert_eq!(r.uri.host, Host::Domain("example.com".into()));
    let to = r.to().unwrap();
    assert_eq!(to.display.as_deref(), Some("BEL:\x07 NUL:\0 DEL:\x7f"));
    assert_eq!(to.uri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
    let from = r.from().unwrap();
    assert_eq!(from.display.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(
        from.param("fromParam''~+*_!.-%"),
        Some(Some("\"\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}\""))
    );
    assert_eq!(r.call_id(), Ok("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"));
    assert_eq!(r.max_forwards(), Ok(Some(255)));
    assert_eq!(r.headers.get("extensionHeader-!.%*+_`'~"), Some("\u{feff}\u{5927}\u{505c}\u{96fb}"));
    assert!(r.body.is_empty());
}

#[test]
fn esc01() {
    let r = req("esc01");
    assert_eq!(r.uri.user.as_deref(), Some("sips:user@example.com"));
    assert_eq!(r.uri.host, Host::Domain("example.net".into()));
    assert_eq!(r.to().unwrap().uri.user.as_deref(), Some("user"));
    assert_eq!(r.from().unwrap().uri.user.as_deref(), Some("I have spaces"));
    let contacts = r.contacts().unwrap();
    let c = contacts[0].name_addr().unwrap();
    assert_eq!(c.uri.user.as_deref(), Some("caller"));
    assert!(c.uri.lr());
    assert_eq!(c.uri.param("name"), Some(Some("value%41")));
    assert_eq!(r.content_type(), Ok(Some("application/sdp")));
    assert_eq!(r.uri.to_string(), "sip:sips%3Auser%40example.com@example.net");
}

#[test]
fn escnull() {
    let r = req("escnull");
    assert_eq!(r.to().unwrap().uri.user.as_deref(), Some("null-\0-null"));
    let users: Vec<_> = r.contacts().unwrap().iter().map(|c| c.name_addr().unwrap().uri.user.clone().unwrap()).collect();
    assert_eq!(users, ["\0", "\0\0"]);
    assert_eq!(r.to().unwrap().uri.to_string(), "sip:null-%00-null@example.com");
}

#[test]
fn esc02() {
    let r = req("esc02");
    // %-escapes are not decoded in tokens: this is an extension method, not REGISTER.
    assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
    assert_eq!(r.cseq().unwrap().method, r.method);
    assert_eq!(r.to().unwrap().display.as_deref(), Some("%Z%45"));
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
    assert_eq!(r.contacts().unwrap().len(), 2);
    assert_eq!(r.headers.get("C%6Fntact"), Some("<sip:alias2@host2.example.com>"));
}

#[test]
fn lwsdisp() {
    assert_eq!(req("lwsdisp").from().unwrap().display.as_deref(), Some("caller"));
}

#[test]
fn longreq() {
    let r = req("longreq");
    let to = r.to().unwrap();
    assert!(to.display.as_deref().unwrap().ends_with("extreme proportion"));
    assert_eq!(to.uri.port, Some(6000));
    assert_eq!(to.uri.params.len(), 3);
    let from = r.from().unwrap();
    assert!(from.tag().unwrap().starts_with("12982982982982982982"));
    assert_eq!(from.params.len(), 3);
    assert_eq!(r.vias().unwrap().len(), 34);
    assert_eq!(r.top_via().unwrap().host, Host::Domain("sip33.example.com".into()));
    assert!(
        r.headers
            .get("unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-name")
            .is_none()
    );
    assert!(r.headers.iter().any(|(n, _)| n.starts_with("Unknown-LongLong")));
    assert_eq!(r.body.len(), 150);
}

#[test]
fn dblreq_takes_only_the_first_request() {
    let r = req("dblreq");
    assert_eq!(r.method, Method::Register);
    assert_eq!(r.call_id(), Ok("dblreq.0ha0isndaksdj99sdfafnl3lk233412"));
    assert!(r.body.is_empty());
}

#[test]
fn semiuri() {
    let r = req("semiuri");
    assert_eq!(r.uri.user.as_deref(), Some("user;par=u@example.net"));
    assert_eq!(r.uri.host, Host::Domain("example.com".into()));
    assert!(r.uri.params.is_empty());
    assert_eq!(
        r.headers.get("Accept"),
        Some("application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, message/sip, message/sipfrag")
    );
}

#[test]
fn transports() {
    let t: Vec<_> = req("transports").vias().unwrap().into_iter().map(|v| v.transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

#[test]
fn mpart01_binary_body() {
    let bytes = load("mpart01");
    let r = req("mpart01");
    assert_eq!(r.method, Method::Message);
    assert_eq!(r.body.len(), 553);
    assert_eq!(&bytes[bytes.len() - 553..], &r.body[..]);
    assert_eq!(r.content_type(), Ok(Some("multipart/mixed")));
}

#[test]
fn unreason_and_noreason() {
    let r = resp("unreason");
    assert_eq!(r.status, 200);
    assert!(r.reason.starts_with("= 2**3 * 5**2 \u{43d}\u{43e} "));
    assert_eq!(r.body.len(), 154);
    let r = resp("noreason");
    assert_eq!((r.status, r.reason.as_str()), (100, ""));
}

// ---- 3.2 / 3.3 / 3.4 ----

#[test]
fn badbranch_is_a_transaction_layer_matter() {
    let v = req("badbranch").top_via().unwrap();
    assert_eq!(v.branch(), Some("z9hG4bK"));
}

#[test]
fn unknown_request_uri_schemes_are_left_to_the_application() {
    let r = req("unkscm");
    assert_eq!(r.uri.scheme, Scheme::Other("nobodyknowsthisscheme".into()));
    assert_eq!(r.uri.opaque.as_deref(), Some("totallyopaquecontent"));
    assert!(!r.uri.is_sip());
    // The application answers 416.
    let mut answer = Response::to_request(&r, 416, "Unsupported URI Scheme");
    assert!(answer.set_to_tag("x1"));
    let again = match parse(&answer.to_bytes()).unwrap() {
        Message::Response(a) => a,
        _ => unreachable!(),
    };
    assert_eq!(again.status, 416);
    assert_eq!(again.call_id(), r.call_id());
    assert_eq!(again.to().unwrap().tag(), Some("x1"));

    let r = req("novelsc");
    assert_eq!(r.uri.scheme, Scheme::Other("soap.beep".into()));
    assert_eq!(r.uri.to_string(), "soap.beep://192.0.2.103:3002");

    let r = req("unksm2");
    assert_eq!(r.to().unwrap().uri.scheme, Scheme::Other("isbn".into()));
    assert_eq!(r.from().unwrap().uri.scheme, Scheme::Other("http".into()));
    assert_eq!(r.contacts().unwrap()[0].name_addr().unwrap().uri.scheme, Scheme::Other("name".into()));
}

#[test]
fn application_layer_cases_parse() {
    let r = req("bext01");
    assert_eq!(r.headers.get("Require"), Some("nothingSupportsThis, nothingSupportsThisEither"));
    assert_eq!(r.top_via().unwrap().transport, "TLS");
    assert_eq!(req("invut").content_type(), Ok(Some("application/unknownformat")));
    let r = req("regaut01");
    assert_eq!(parse_authorization(r.headers.get("Authorization").unwrap()), Err(DigestError::NotDigest));
    assert_eq!(req("zeromf").max_forwards(), Ok(Some(0)));
    assert_eq!(req("sdp01").headers.get("Accept"), Some("text/nobodyKnowsThis"));
    let r = resp("bcast");
    assert_eq!(r.vias().unwrap()[1].host, Host::V4("255.255.255.255".parse().unwrap()));
}

#[test]
fn contact_params_belong_where_the_brackets_say() {
    let c = req("cparam01").contacts().unwrap()[0].name_addr().unwrap().clone();
    assert!(c.uri.params.is_empty());
    assert_eq!(c.param("unknownparam"), Some(None));
    assert_eq!(c.uri.user.as_deref(), Some("+19725552222"));
    let c = req("cparam02").contacts().unwrap()[0].name_addr().unwrap().clone();
    assert_eq!(c.uri.param("unknownparam"), Some(None));
    assert!(c.params.is_empty());
}

#[test]
fn regescrt_keeps_the_escaped_header() {
    let c = req("regescrt").contacts().unwrap()[0].name_addr().unwrap().clone();
    assert_eq!(c.uri.headers, [("Route".to_string(), "<sip:sip.example.com>".to_string())]);
    assert_eq!(c.uri.to_string(), "sip:user@example.com?Route=%3Csip:sip.example.com%3E");
}

#[test]
fn inv2543_rfc2543_style() {
    let r = req("inv2543");
    assert_eq!(r.max_forwards(), Ok(None));
    let v = r.top_via().unwrap();
    assert_eq!(v.branch(), None);
    assert!(!v.is_rfc3261_branch());
    assert_eq!(r.from().unwrap().tag(), None);
    // Bare addr-spec: `;user=phone` is a To header parameter under RFC 3261 rules.
    assert_eq!(r.to().unwrap().param("user"), Some(Some("phone")));
    assert_eq!(r.from().unwrap().uri.param("user"), Some(Some("phone")));
    assert_eq!(r.record_routes().unwrap()[0].uri.param("maddr"), Some(Some("ss1.example.com")));
    // No Content-Length on UDP: the body is the rest of the datagram.
    assert_eq!(r.body.len(), 105);
}

/// Serializing a parsed message and parsing it again gives the same message
/// (Content-Length is rewritten from the body).
#[test]
fn valid_messages_round_trip() {
    for &(name, expect) in EXPECT {
        if !matches!(expect, Parses) {
            continue;
        }
        let mut first = parse(&load(name)).unwrap();
        let bytes = first.to_bytes();
        let mut second = parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}\n{}", String::from_utf8_lossy(&bytes)));
        assert_eq!(second.to_bytes(), bytes, "{name}");
        first.headers_mut().remove("Content-Length");
        second.headers_mut().remove("Content-Length");
        assert_eq!(first, second, "{name}");
    }
}
