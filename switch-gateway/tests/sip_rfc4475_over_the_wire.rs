//! RFC 4475 torture messages sent as they are, one UDP datagram each, to a running gateway.
//! Each message gets the answer its RFC section asks for (a specific status where the RFC or
//! the gateway's role fixes one), or — for responses nobody asked for and requests that cannot
//! be answered — nothing at all. "Nothing" is checked without sleeping: right after the
//! message, an OPTIONS goes out on the same socket, and the first datagram back must be that
//! OPTIONS' 200. At the end the gateway still registers a phone (sipp).
//!
//! A few vectors share a server transaction key (top Via branch + sent-by + method, RFC 3261
//! §17.2.3) — escnull/regescrt, cparam01/cparam02, unkscm/novelsc. To a gateway that still
//! holds the first transaction the second one *is* a retransmission (and correctly gets the
//! first one's answer again), so such a message goes to a second gateway instead.
//!
//! The messages are `tests/rfc4475/*.dat`, bytes exactly as in the RFC (see its README).

mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cloud, Gateway, scenarios, sipp};
use sipcheck::{dump, header, require_tool, status_of, statuses_for, wait_phone_list};
use tokio::net::UdpSocket;

/// What must come back for one message.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// No datagram at all (a response not for us, or a request with no identity to answer).
    Silence,
    /// A final response with this status.
    Status(u16),
    /// A final response with one of these statuses (the RFC allows either).
    OneOf(&'static [u16]),
    /// Some final SIP response (any status): the message is valid and must be answered.
    AnyResponse,
    /// Either no answer or this status (RFC: "ideally" this status).
    SilenceOr(u16),
}

use Expect::*;

/// Every file, with its RFC 4475 section and the expected answer from this gateway (a
/// registrar + B2BUA that authenticates REGISTER and INVITE before anything else).
const CASES: &[(&str, &str, Expect)] = &[
    // 3.1.1 valid messages: parsed and answered by the application.
    ("wsinv", "3.1.1.1 short tortuous INVITE (To tag: in-dialog, unknown dialog)", Status(481)),
    ("intmeth", "3.1.1.2 wide range of valid characters (unknown method)", OneOf(&[405, 501])),
    ("esc01", "3.1.1.3 valid use of % escaping (INVITE: challenged)", Status(401)),
    ("escnull", "3.1.1.4 escaped nulls in URIs (REGISTER: challenged)", Status(401)),
    ("esc02", "3.1.1.5 % in a method is not an escape (unknown method)", OneOf(&[405, 501])),
    ("lwsdisp", "3.1.1.6 no LWS between display name and <", Status(200)),
    ("longreq", "3.1.1.7 long values in header fields (INVITE)", AnyResponse),
    ("dblreq", "3.1.1.8 extra trailing octets in a UDP datagram (REGISTER: challenged)", Status(401)),
    ("semiuri", "3.1.1.9 semicolon-separated parameters in URI user part", Status(200)),
    ("transports", "3.1.1.10 varied and unknown transport types", Status(200)),
    ("mpart01", "3.1.1.11 multipart MIME message (MESSAGE: not allowed here)", OneOf(&[405, 501])),
    ("unreason", "3.1.1.12 unusual reason phrase (a response: no transaction)", Silence),
    ("noreason", "3.1.1.13 empty reason phrase (a response: no transaction)", Silence),
    // 3.1.2 invalid messages: 400 (505 for the version) when the request can be answered.
    ("badinv01", "3.1.2.1 extraneous header field separators", Status(400)),
    ("clerr", "3.1.2.2 Content-Length larger than message", Status(400)),
    ("ncl", "3.1.2.3 negative Content-Length", Status(400)),
    ("scalar02", "3.1.2.4 request scalar fields with overlarge values", Status(400)),
    ("scalarlg", "3.1.2.5 response scalar fields with overlarge values", Silence),
    ("quotbal", "3.1.2.6 unterminated quoted string in display name", Status(400)),
    ("ltgtruri", "3.1.2.7 <> enclosing Request-URI", Status(400)),
    ("lwsruri", "3.1.2.8 malformed SIP Request-URI (embedded LWS)", Status(400)),
    ("lwsstart", "3.1.2.9 multiple SP separating Request-Line elements", Status(400)),
    ("trws", "3.1.2.10 SP characters at end of Request-Line", Status(400)),
    ("escruri", "3.1.2.11 escaped headers in SIP Request-URI", Status(400)),
    ("baddate", "3.1.2.12 invalid time zone in Date header field", Status(400)),
    ("regbadct", "3.1.2.13 failure to enclose name-addr URI in <>", Status(400)),
    ("badaspec", "3.1.2.14 spaces within addr-spec", Status(400)),
    ("baddn", "3.1.2.15 non-token characters in display name", Status(400)),
    ("badvers", "3.1.2.16 unknown protocol version", Status(505)),
    ("mismatch01", "3.1.2.17 start line and CSeq method mismatch", Status(400)),
    ("mismatch02", "3.1.2.18 unknown method with CSeq method mismatch", Status(400)),
    ("bigcode", "3.1.2.19 overlarge response code (a response)", Silence),
    // 3.2 transaction layer
    ("badbranch", "3.2.1 missing transaction identifier (magic cookie only)", Status(200)),
    // 3.3 application layer semantics
    ("insuf", "3.3.1 missing Call-ID, From and To", SilenceOr(400)),
    ("unkscm", "3.3.2 unknown scheme in Request-URI", Status(416)),
    ("novelsc", "3.3.3 known but atypical scheme in Request-URI", Status(416)),
    ("unksm2", "3.3.4 unknown URI schemes in header fields (REGISTER)", AnyResponse),
    ("bext01", "3.3.5 Proxy-Require and Require", Status(420)),
    ("invut", "3.3.6 unknown Content-Type", Status(415)),
    ("regaut01", "3.3.7 unknown Authorization scheme: challenge", Status(401)),
    ("multi01", "3.3.8 multiple values in single-value header fields", Status(400)),
    ("mcl01", "3.3.9 multiple Content-Length values", Status(400)),
    ("bcast", "3.3.10 200 OK with a broadcast Via (a response: no transaction)", Silence),
    // RFC 4475 §3.3.11: "An endpoint should process the request as if Max-Forwards were still
    // positive" — the gateway answers OPTIONS itself (a proxy would say 483).
    ("zeromf", "3.3.11 Max-Forwards of zero (OPTIONS to the endpoint)", Status(200)),
    ("cparam01", "3.3.12 REGISTER with a Contact header parameter", Status(401)),
    ("cparam02", "3.3.13 REGISTER with a url-parameter", Status(401)),
    ("regescrt", "3.3.14 REGISTER with a URL-escaped header", Status(401)),
    ("sdp01", "3.3.15 unacceptable Accept offering (INVITE: challenged first)", AnyResponse),
    // 3.4 backward compatibility
    ("inv2543", "3.4.1 INVITE with RFC 2543 syntax (no branch cookie)", AnyResponse),
];

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/rfc4475/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Call-ID in a raw message (long or compact name), if any.
fn raw_call_id(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case("Call-ID") || n.eq_ignore_ascii_case("i")).then(|| v.trim().to_string())
    })
}

/// The server transaction key RFC 3261 §17.2.3 matches on: top Via branch, sent-by, method
/// (ACK counts as INVITE). Read from the raw bytes; `None` for responses.
fn transaction_key(bytes: &[u8]) -> Option<(String, String, String)> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let method = lines.next()?.split(' ').next()?.to_string();
    if method.starts_with("SIP/") {
        return None;
    }
    let via = lines.find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case("Via") || n.eq_ignore_ascii_case("v")).then_some(v.trim())
    })?;
    let sent_by = via.split_whitespace().nth(1).unwrap_or("").split(';').next().unwrap_or("").to_ascii_lowercase();
    let sent_by = if sent_by.contains(':') { sent_by } else { format!("{sent_by}:5060") };
    let branch = via.split(';').find_map(|p| p.trim().strip_prefix("branch=")).unwrap_or("").to_string();
    Some((branch, sent_by, if method == "ACK" { "INVITE".into() } else { method }))
}

/// Send `msg`, then an OPTIONS probe, from one fresh socket; return every datagram that came
/// back before the probe's answer.
async fn exchange(gw: SocketAddr, msg: &[u8], n: usize) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    sock.send_to(msg, gw).await.unwrap();
    let probe_id = format!("rfc4475-probe-{n}-{}", local.port());
    let probe = format!(
        "OPTIONS sip:{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{n}x{}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{gw}>\r\nCall-ID: {probe_id}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        local.port()
    );
    sock.send_to(probe.as_bytes(), gw).await.unwrap();
    let mut before = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("message {n}: no answer to the OPTIONS probe (the gateway hangs?); before it: {before:?}"))
            .unwrap();
        assert_eq!(from, gw);
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if header(&text, "Call-ID") == Some(probe_id.as_str()) {
            assert_eq!(status_of(&text), Some(200), "probe answer: {text}");
            return before;
        }
        before.push(text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rfc4475_message_gets_the_right_answer_and_the_gateway_keeps_working() {
    require_tool("sipp", "sip-tester");
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let gw = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
    // The second provisioned switch: for messages whose transaction key `gw` already holds.
    let second = Gateway::start("branch", &cloud.ws_url, dir.path()).await;
    wait_phone_list(&gw.config.state_dir, &["1001"]).await;
    wait_phone_list(&second.config.state_dir, &["3001"]).await;
    let mut seen = std::collections::HashSet::new();

    // Every vector is listed exactly once.
    let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rfc4475"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = CASES.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
    assert_eq!(files.len(), 49);

    let mut failures = Vec::new();
    for (n, &(name, section, expect)) in CASES.iter().enumerate() {
        let bytes = load(name);
        let target = match transaction_key(&bytes) {
            Some(key) if !seen.insert(key.clone()) => {
                assert!(seen.insert((key.0.clone(), key.1.clone(), format!("{}#2", key.2))), "{name}: a third use of {key:?}");
                second.sip
            }
            _ => gw.sip,
        };
        let replies = exchange(target, &bytes, n).await;
        // The final answer: the first non-1xx reply.
        let finals: Vec<&String> = replies.iter().filter(|r| status_of(r).is_some_and(|s| s >= 200)).collect();
        let status = finals.first().and_then(|r| status_of(r));
        eprintln!("{name:>10}  {section}: {}", status.map_or("no answer".to_string(), |s| s.to_string()));
        let ok = match expect {
            Silence => replies.is_empty(),
            Status(s) => status == Some(s),
            OneOf(list) => status.is_some_and(|s| list.contains(&s)),
            AnyResponse => status.is_some(),
            SilenceOr(s) => replies.is_empty() || status == Some(s),
        };
        if !ok {
            failures.push(format!("{name} ({section}): expected {expect:?}, got {status:?}\n{}", replies.join("\n---\n")));
            continue;
        }
        let Some(reply) = finals.first() else { continue };
        // Every reply is a well-formed SIP response for this message.
        if let Some(cid) = raw_call_id(&bytes)
            && !reply.contains(&cid)
        {
            failures.push(format!("{name}: reply does not carry the Call-ID {cid:?}\n{reply}"));
        }
        if status == Some(400) || status == Some(505) {
            // Parse errors say what was wrong.
            if !reply.contains("\r\nWarning: 399 ") {
                failures.push(format!("{name}: {status:?} without a Warning\n{reply}"));
            }
        }
        // One arm per torture message, each with its own check, reads better than guards.
        #[allow(clippy::collapsible_match)]
        match name {
            "bext01" => {
                // The UAS lists what Require asked for; Proxy-Require is for proxies only.
                let unsupported: Vec<&str> =
                    sipcheck::headers(reply, "Unsupported").iter().flat_map(|v| v.split(',')).map(str::trim).collect();
                if unsupported != ["nothingSupportsThis", "nothingSupportsThisEither"] {
                    failures.push(format!("bext01: 420 must list the unsupported Require extensions (only)\n{reply}"));
                }
            }
            "invut" => {
                if !header(reply, "Accept").is_some_and(|a| a.contains("application/sdp")) {
                    failures.push(format!("invut: 415 must say what is accepted\n{reply}"));
                }
            }
            "regaut01" | "escnull" | "cparam01" | "cparam02" | "regescrt" | "dblreq" | "esc01" => {
                if !reply.contains("WWW-Authenticate: Digest ") || !reply.contains("realm=\"trunkline\"") {
                    failures.push(format!("{name}: 401 without a digest challenge\n{reply}"));
                }
            }
            "intmeth" | "esc02" | "mpart01" => {
                if status == Some(405) && header(reply, "Allow").is_none() {
                    failures.push(format!("{name}: 405 without Allow\n{reply}"));
                }
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{} of {} messages handled wrongly:\n\n{}", failures.len(), CASES.len(), failures.join("\n\n"));

    // Still serving: a phone registers with digest as usual.
    let sf = scenarios().join("register.xml");
    let run = sipp(
        dir.path(),
        gw.sip,
        &["-sf", sf.to_str().unwrap(), "-s", "1001", "-au", "1001", "-ap", "pw-1001", "-set", "expires", "120", "-m", "1"],
    )
    .await;
    assert!(run.success, "the gateway no longer registers phones after the torture messages\n{}", dump(&run));
    assert_eq!(statuses_for(&run.messages, "REGISTER"), [401, 200]);

    gw.stop().await;
    second.stop().await;
    cloud.stop().await;
}
