//! Mutation fuzzing: random and damaged messages must never panic, and whatever is
//! accepted must serialize to something that parses again the same way.

use trunkline_sip::{Frame, Message, error_response, frame_len, parse};

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bK74bf9;rport, SIP/2.0/TCP proxy.example.com;received=192.0.2.4\r\n\
Max-Forwards: 70\r\n\
From: \"Alice \\\"A\\\" Liddell\" <sip:alice%20x@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 31862 INVITE\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=tcp>;expires=3600, \"x, y\" <sip:c@d.com>\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Subject: folded\r\n  across lines\r\n\
Authorization: Digest username=\"alice\", realm=\"atlanta.example.com\", nonce=\"abc\", uri=\"sip:bob@biloxi.example.com\", response=\"0123456789abcdef0123456789abcdef\", qop=auth, nc=00000001, cnonce=\"x\"\r\n\
Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 31\r\n\
\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n";

const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\nv: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnashds7\nf: <sip:1001@example.com>;tag=a73kszlfl\nt: <sip:1001@example.com>\ni: 1j9FpLxk3uxtm8tn@10.0.0.1\nCSeq: 1 REGISTER\nm: *\nExpires: 0\nl: 0\n\n";

const RESPONSE: &[u8] = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;received=192.0.2.9;rport=5070\r\nFrom: <sip:a@b.com>;tag=1\r\nTo: <sip:c@d.com>;tag=2\r\nCall-ID: x@y\r\nCSeq: 1 INVITE\r\nRecord-Route: <sip:p1.example.com;lr>\r\nContent-Length: 0\r\n\r\n";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b"\t",
    b" ",
    b":",
    b";",
    b",",
    b"\"",
    b"\\",
    b"<",
    b">",
    b"%",
    b"%4",
    b"@",
    b"?",
    b"=",
    b"&",
    b"[",
    b"]",
    b"/",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"99999999999999999999",
    b"-1",
    b"\r\n\r\n",
    b"SIP/2.0",
    b"Content-Length: 5\r\n",
    b"l: 0\r\n",
    b"Via: ",
    b"*",
    b"sip:",
    b"[::1]",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 => v.truncate(rng.below(len + 1)),
            1 => {
                if len > 0 {
                    let i = rng.below(len);
                    v[i] ^= 1 << rng.below(8);
                }
            }
            2 => {
                if len > 0 {
                    let i = rng.below(len);
                    v[i] = rng.next() as u8;
                }
            }
            3 | 4 => {
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                v.splice(i..i, ins.iter().copied());
            }
            5 => {
                let a = rng.below(len + 1);
                let b = (a + rng.below(64)).min(len);
                v.drain(a..b);
            }
            6 => {
                let a = rng.below(len + 1);
                let b = (a + rng.below(200)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            _ => {
                let a = rng.below(len + 1);
                let b = rng.below(other.len() + 1);
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
        }
    }
    v
}

/// Returns (parsed, got an error response).
fn exercise(input: &[u8]) -> (bool, bool) {
    let mut outcome = (false, false);
    match parse(input) {
        Ok(m) => {
            // What parse accepted, the typed accessors can read.
            m.call_id().unwrap();
            m.cseq().unwrap();
            m.from().unwrap();
            m.to().unwrap();
            m.vias().unwrap();
            m.contacts().unwrap();
            let _ = (m.routes(), m.record_routes(), m.expires(), m.max_forwards(), m.content_type());
            if let Message::Request(r) = &m {
                let _ = r.uri.to_string();
                if let Some(a) = r.headers.get("Authorization") {
                    let _ = trunkline_sip::digest::parse_authorization(a);
                }
            }
            let bytes = m.to_bytes();
            let again = parse(&bytes).unwrap_or_else(|e| {
                panic!(
                    "re-parse failed: {e}\ninput: {:?}\noutput: {:?}",
                    String::from_utf8_lossy(input),
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(again.to_bytes(), bytes);
            assert_eq!(frame_len(&bytes).unwrap(), Some(Frame::Message(bytes.len())));
            outcome.0 = true;
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 413 | 416 | 505 | 513), "{e}");
            if let Some(r) = error_response(input, &e) {
                assert!(r.starts_with(b"SIP/2.0 "));
                assert_eq!(frame_len(&r).unwrap(), Some(Frame::Message(r.len())));
                outcome.1 = true;
            }
        }
    }
    match frame_len(input) {
        Ok(Some(Frame::Message(n))) => assert!(n > 0 && n <= input.len()),
        Ok(Some(Frame::KeepAlive { len, .. })) => assert!(len > 0 && len <= input.len()),
        Ok(None) => {}
        Err(e) => {
            let _ = error_response(input, &e);
        }
    }
    outcome
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = format!("{}/tests/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    seeds.extend([INVITE.to_vec(), REGISTER.to_vec(), RESPONSE.to_vec()]);
    seeds
}

#[test]
fn seeds_parse_as_expected() {
    for s in [INVITE, REGISTER, RESPONSE] {
        parse(s).unwrap();
        exercise(s);
    }
}

#[test]
fn mutated_messages_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut parsed, mut answered, total) = (0, 0, 30_000);
    for round in 0..total {
        let seed = &seeds[round % seeds.len()];
        let other = &seeds[rng.below(seeds.len())];
        let (p, a) = exercise(&mutate(&mut rng, seed, other));
        parsed += usize::from(p);
        answered += usize::from(a);
    }
    // The mutations reach both the accepting and the rejecting paths.
    println!("parsed {parsed}, answered {answered} of {total}");
    assert!(parsed > total / 25 && answered > total / 10, "parsed {parsed}, answered {answered}");
}

#[test]
fn every_truncation_of_the_seeds() {
    for seed in seeds() {
        for n in 0..seed.len() {
            exercise(&seed[..n]);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    let alphabet = b"SIP/2.0 INVITE sip:@;=,<>\"\\%:\r\n\t Via From To Call-ID CSeq Content-Length l v 0123456789abc[]";
    for _ in 0..10_000 {
        let len = rng.below(300);
        let noise: Vec<u8> = if rng.below(2) == 0 {
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect()
        };
        exercise(&noise);
    }
}

#[test]
fn pathological_sizes() {
    // Many tiny headers, a huge folded header, deep commas, long runs of CRLF.
    let mut many = b"OPTIONS sip:a@b.com SIP/2.0\r\n".to_vec();
    for _ in 0..5000 {
        many.extend_from_slice(b"X: y\r\n");
    }
    many.extend_from_slice(b"\r\n");
    exercise(&many);
    let mut commas = b"OPTIONS sip:a@b.com SIP/2.0\r\nVia: ".to_vec();
    commas.extend(std::iter::repeat_n(b',', 60_000));
    commas.extend_from_slice(b"\r\n\r\n");
    exercise(&commas);
    let mut folded = b"OPTIONS sip:a@b.com SIP/2.0\r\nSubject: x".to_vec();
    for _ in 0..20_000 {
        folded.extend_from_slice(b"\r\n y");
    }
    exercise(&folded);
    exercise(&[b'\r'; 70_000]);
    exercise(&[b'\n'; 3]);
    exercise(&[b'"'; 70_000]);
    let mut quotes = b"OPTIONS sip:a@b.com SIP/2.0\r\nTo: ".to_vec();
    quotes.extend(std::iter::repeat_n(b'"', 8000));
    quotes.extend_from_slice(b"\r\n\r\n");
    exercise(&quotes);
}
