//! Parsing SIP messages from datagrams and framing them on streams (RFC 3261 §7, §18.3),
//! plus ready-made error responses for malformed requests.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::message::{CSeq, HeaderError, Headers, Message, Method, NameAddr, Request, Response, Uri, Via, canonical_name};
use crate::scan::{self, is_ws};

/// Largest message accepted (datagram, or stream frame including body).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most header entries (after splitting comma lists) in one message.
pub const MAX_HEADERS: usize = 256;
/// Longest header (name and unfolded value).
pub const MAX_HEADER_LINE: usize = 8 * 1024;

/// Why a message was rejected, and the status to answer a request with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct ParseError {
    /// 400, 505 (bad SIP version), 416 (unparsable URI of a non-SIP scheme),
    /// 413 (body too large for a stream frame), 513 (message or header limits exceeded).
    pub status: u16,
    /// Short description of what was wrong (sent in the Warning of the error response).
    pub reason: String,
    /// What could still be read: lets [`error_response`] answer without re-parsing.
    pub partial: Option<Box<Partial>>,
}

impl ParseError {
    fn new(status: u16, reason: impl Into<String>) -> ParseError {
        ParseError { status, reason: reason.into(), partial: None }
    }
}

/// The parts of a rejected message that could be split out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// First word of the start line for a request; `None` for a response.
    pub request_method: Option<String>,
    /// Every header line that could be read (compact names expanded, lists split).
    pub headers: Headers,
}

/// Result of [`frame_len`] for a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `len` leading CR/LF bytes to discard. `ping` when they hold an RFC 5626
    /// double-CRLF keep-alive, which the server answers with a single CRLF.
    KeepAlive { len: usize, ping: bool },
    /// A complete message occupies the first `n` bytes: pass them to [`parse`].
    Message(usize),
}

type Fail = (u16, Cow<'static, str>);

fn fail(status: u16, reason: impl Into<Cow<'static, str>>) -> Fail {
    (status, reason.into())
}

/// Parses one complete message: a UDP datagram or a frame cut by [`frame_len`].
///
/// Leading CRLFs are skipped. A body longer than Content-Length is truncated (RFC 3261
/// §18.3); without Content-Length the body is the rest of the input.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    let window = bytes.get(..MAX_MESSAGE).unwrap_or(bytes);
    let sp = split(window).ok_or_else(|| ParseError::new(400, "no start line"))?;
    let too_large = bytes.len() > MAX_MESSAGE;
    match check(&sp, too_large) {
        Ok(Checked { start, body }) => {
            let body = body.to_vec();
            Ok(match start {
                Start::Request(method, uri) => Message::Request(Request { method, uri, headers: sp.headers, body }),
                Start::Response(status, reason) => Message::Response(Response { status, reason, headers: sp.headers, body }),
            })
        }
        Err((status, reason)) => Err(ParseError {
            status,
            reason: reason.into_owned(),
            partial: Some(Box::new(Partial { request_method: sp.request_method(), headers: sp.headers })),
        }),
    }
}

enum Start {
    Request(Method, Uri),
    Response(u16, String),
}

struct Checked<'a> {
    start: Start,
    body: &'a [u8],
}

fn check<'a>(sp: &Split<'a>, too_large: bool) -> Result<Checked<'a>, Fail> {
    if too_large {
        return Err(fail(513, "message larger than 64 KiB"));
    }
    let start = if sp.is_response() { status_line(sp.start)? } else { request_line(sp.start)? };
    if let Some(e) = &sp.err {
        return Err(e.clone());
    }
    validate_headers(
        &sp.headers,
        match &start {
            Start::Request(m, _) => Some(m),
            Start::Response(..) => None,
        },
    )?;
    let cl = content_length(&sp.headers)?;
    let Some(rest) = sp.body else {
        return Err(fail(400, "header section not terminated by an empty line"));
    };
    let body = match cl {
        Some(n) => rest.get(..n).ok_or_else(|| fail(400, "body shorter than Content-Length"))?,
        None => rest,
    };
    Ok(Checked { start, body })
}

fn request_line(line: &[u8]) -> Result<Start, Fail> {
    let line = std::str::from_utf8(line).map_err(|_| fail(400, "Request-Line is not UTF-8"))?;
    let (method, rest) = line.split_once(' ').ok_or_else(|| fail(400, "bad Request-Line"))?;
    let method: Method = method.parse().map_err(|_| fail(400, "bad method in Request-Line"))?;
    if rest.ends_with([' ', '\t']) {
        return Err(fail(400, "whitespace at end of Request-Line"));
    }
    let (uri, version) = rest.rsplit_once(' ').ok_or_else(|| fail(400, "bad Request-Line"))?;
    check_version(version)?;
    if uri.is_empty() || uri.contains([' ', '\t']) {
        return Err(fail(400, "extra whitespace in Request-Line"));
    }
    let uri = Uri::parse(uri).map_err(|e| {
        // A scheme we don't know, with text we can't check: "unsupported URI scheme".
        let scheme = uri.split(':').next().unwrap_or("");
        let known = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
        if !known
            && scheme.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            fail(416, "unsupported URI scheme")
        } else {
            fail(400, format!("bad Request-URI: {e}"))
        }
    })?;
    if !uri.headers.is_empty() {
        return Err(fail(400, "headers not allowed in Request-URI"));
    }
    Ok(Start::Request(method, uri))
}

/// SIP/2.0 is accepted; another `SIP/x.y` gets 505; anything else 400.
fn check_version(v: &str) -> Result<(), Fail> {
    if v.eq_ignore_ascii_case("SIP/2.0") {
        return Ok(());
    }
    let well_formed = v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && v.get(4..)
            .and_then(|n| n.split_once('.'))
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
    if well_formed { Err(fail(505, "SIP version not supported")) } else { Err(fail(400, "bad SIP version")) }
}

fn status_line(line: &[u8]) -> Result<Start, Fail> {
    let line = String::from_utf8_lossy(line);
    let (version, rest) = line.split_once(' ').ok_or_else(|| fail(400, "bad Status-Line"))?;
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(fail(505, "SIP version not supported"));
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match code.as_bytes() {
        [a, b, c] if code.bytes().all(|d| d.is_ascii_digit()) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(fail(400, "bad status code")),
    };
    if !(100..=699).contains(&status) {
        return Err(fail(400, "status code out of range"));
    }
    Ok(Start::Response(status, reason.to_owned()))
}

/// Checks the headers every message needs and the ones whose syntax RFC 4475 expects
/// to be verified at reception.
fn validate_headers(h: &Headers, method: Option<&Method>) -> Result<(), Fail> {
    let bad = |e: HeaderError| fail(400, e.to_string());
    // Parsed here once and kept: the core reads the same values again.
    h.vias_ref().map_err(bad)?;
    h.from_ref().map_err(bad)?;
    h.to_ref().map_err(bad)?;
    h.call_id().map_err(bad)?;
    let cseq: CSeq = h.cseq().map_err(bad)?;
    if let Some(m) = method
        && cseq.method != *m
    {
        return Err(fail(400, "CSeq method does not match the request method"));
    }
    h.single("Max-Forwards").map_err(bad)?;
    h.contacts_ref().map_err(bad)?;
    if let Some(d) = h.single("Date").map_err(bad)?
        && !is_sip_date(d)
    {
        return Err(fail(400, "bad Date header"));
    }
    Ok(())
}

/// `Content-Length`: at most one, 1*DIGIT; `None` when absent.
fn content_length(h: &Headers) -> Result<Option<usize>, Fail> {
    match h.single("Content-Length") {
        Err(_) => Err(fail(400, "more than one Content-Length")),
        Ok(None) => Ok(None),
        Ok(Some(v)) => parse_cl(v).map(Some),
    }
}

fn parse_cl(v: &str) -> Result<usize, Fail> {
    let v = scan::trim_ws(v);
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(fail(400, "bad Content-Length"));
    }
    let mut n: usize = 0;
    for c in v.bytes() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(c - b'0')))
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| fail(400, "Content-Length too large"))?;
    }
    Ok(n)
}

/// rfc1123-date as SIP requires it: `Sat, 13 Nov 2010 23:29:00 GMT` (GMT only).
fn is_sip_date(d: &str) -> bool {
    let b = d.as_bytes();
    if b.len() != 29 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let one_of = |s: &str, list: &[&str]| list.iter().any(|x| x.eq_ignore_ascii_case(s));
    one_of(d.get(0..3).unwrap_or(""), &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
        && d.get(3..5) == Some(", ")
        && digits(5..7)
        && b.get(7) == Some(&b' ')
        && one_of(
            d.get(8..11).unwrap_or(""),
            &["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
        )
        && b.get(11) == Some(&b' ')
        && digits(12..16)
        && b.get(16) == Some(&b' ')
        && digits(17..19)
        && b.get(19) == Some(&b':')
        && digits(20..22)
        && b.get(22) == Some(&b':')
        && digits(23..25)
        && d.get(25..).is_some_and(|z| z.eq_ignore_ascii_case(" GMT"))
}

/// A message cut into start line, header entries and the bytes after the empty line.
struct Split<'a> {
    start: &'a [u8],
    headers: Headers,
    /// Bytes after the empty line; `None` if there was none.
    body: Option<&'a [u8]>,
    /// First error in the header section's structure (the rest is still collected).
    err: Option<Fail>,
}

impl Split<'_> {
    fn is_response(&self) -> bool {
        self.start.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    }

    fn request_method(&self) -> Option<String> {
        if self.is_response() {
            return None;
        }
        let end = self.start.iter().position(|&c| c == b' ').unwrap_or(self.start.len());
        Some(String::from_utf8_lossy(self.start.get(..end).unwrap_or(b"")).into_owned())
    }
}

fn find_lf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?.iter().position(|&c| c == b'\n').map(|i| i + from)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_bytes(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !is_ws(*first) {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !is_ws(*last) {
            break;
        }
        b = rest;
    }
    b
}

/// Header being assembled from its first line and continuation lines: its value is the
/// headers' text from `start` on (nothing else is appended to it meanwhile).
struct Pending {
    name: Cow<'static, str>,
    start: usize,
}

/// Splits lines (CRLF, or bare LF for robustness), unfolds continuations, expands
/// compact names and splits Via/Contact/Route/Record-Route lists. Returns `None` only
/// when there is no start line at all.
fn split(bytes: &[u8]) -> Option<Split<'_>> {
    let mut pos = bytes.iter().position(|&c| c != b'\r' && c != b'\n')?;
    let (start, mut next) = match find_lf(bytes, pos) {
        Some(nl) => (strip_cr(bytes.get(pos..nl)?), Some(nl + 1)),
        None => (bytes.get(pos..)?, None),
    };
    let mut sp = Split { start, headers: Headers::with_capacity(16), body: None, err: None };
    let mut pending: Option<Pending> = None;
    let mut skipping = false; // after a malformed line, ignore its continuations
    while let Some(p) = next {
        pos = p;
        let (raw, after) = match find_lf(bytes, pos) {
            Some(nl) => (bytes.get(pos..nl).unwrap_or(b""), Some(nl + 1)),
            None if pos >= bytes.len() => break,
            None => (bytes.get(pos..).unwrap_or(b""), None),
        };
        next = after;
        let line = strip_cr(raw);
        if line.is_empty() {
            if after.is_some() {
                sp.body = Some(bytes.get(pos + raw.len() + 1..).unwrap_or(b""));
            }
            break;
        }
        if line.contains(&b'\r') {
            note(&mut sp.err, fail(400, "bare CR in header line"));
            pending = finish(&mut sp, pending.take());
            skipping = true;
            continue;
        }
        if is_ws(line[0]) {
            if skipping {
                continue;
            }
            match pending.as_mut() {
                Some(pd) => {
                    let cont = trim_bytes(line);
                    if !cont.is_empty() {
                        if !sp.headers.text_from(pd.start).is_empty() {
                            sp.headers.append_text(" ");
                        }
                        sp.headers.append_text(&String::from_utf8_lossy(cont));
                    }
                    if pd.name.len() + sp.headers.text_from(pd.start).len() > MAX_HEADER_LINE {
                        sp.err = Some(fail(513, "header line too long"));
                        return Some(sp);
                    }
                }
                None => note(&mut sp.err, fail(400, "continuation line before the first header")),
            }
            continue;
        }
        pending = finish(&mut sp, pending.take());
        if sp.err.as_ref().is_some_and(|e| e.0 == 513) {
            return Some(sp);
        }
        skipping = false;
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            note(&mut sp.err, fail(400, "header line without ':'"));
            skipping = true;
            continue;
        };
        let name = trim_bytes(line.get(..colon).unwrap_or(b""));
        let name = match std::str::from_utf8(name) {
            Ok(n) if scan::is_token(n) => n,
            _ => {
                note(&mut sp.err, fail(400, "bad header name"));
                skipping = true;
                continue;
            }
        };
        if line.len() > MAX_HEADER_LINE {
            sp.err = Some(fail(513, "header line too long"));
            return Some(sp);
        }
        let name = match canonical_name(name) {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(name.to_owned()),
        };
        let start = sp.headers.text_len();
        let value = trim_bytes(line.get(colon + 1..).unwrap_or(b""));
        match std::str::from_utf8(value) {
            Ok(v) => sp.headers.append_text(v),
            // Lossy decoding walks the bytes far slower: only for a value that needs it.
            Err(_) => sp.headers.append_text(&String::from_utf8_lossy(value)),
        }
        pending = Some(Pending { name, start });
    }
    let _ = finish(&mut sp, pending.take());
    Some(sp)
}

fn note(slot: &mut Option<Fail>, e: Fail) {
    if slot.is_none() {
        *slot = Some(e);
    }
}

/// Stores a finished header; returns `None` (the new pending state).
fn finish(sp: &mut Split<'_>, pd: Option<Pending>) -> Option<Pending> {
    let pd = pd?;
    let split = crate::message::is_split_list(&pd.name);
    if !sp.headers.name_text_from(pd.name, pd.start, split, MAX_HEADERS) {
        sp.err = Some(fail(513, "too many headers"));
    }
    None
}

/// Length of the first message in a stream buffer (RFC 3261 §18.3: framing by
/// Content-Length; missing Content-Length counts as 0).
///
/// `Ok(None)`: need more bytes. `Err`: the stream cannot be framed; answer with
/// [`error_response`] if it gives one, then close the connection. This rescans `buf`
/// on each call; [`Framer`] remembers its progress instead.
pub fn frame_len(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    Framer::new().next_frame(buf)
}

/// [`frame_len`] for one connection, resuming where the last call stopped so a peer
/// sending a large header a few bytes at a time costs linear, not quadratic, time.
///
/// Call [`Framer::next_frame`] with the connection's whole pending buffer each time it
/// grows; after it returns a frame, drain exactly that many bytes before the next call.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    /// Bytes already searched for the end of the header section.
    searched: usize,
    /// Total frame length, once the header section has been read.
    total: Option<usize>,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Forget progress (e.g. after the caller discarded its buffer).
    pub fn reset(&mut self) {
        *self = Framer::default();
    }

    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        let r = self.step(buf);
        if !matches!(r, Ok(None)) {
            self.reset();
        }
        r
    }

    fn step(&mut self, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        if let Some(total) = self.total {
            return Ok((buf.len() >= total).then_some(Frame::Message(total)));
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first == b'\r' || first == b'\n' {
            let n = buf.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
            let run = buf.get(..n).unwrap_or(b"");
            if let Some(p) = run.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(Frame::KeepAlive { len: p + 4, ping: true }));
            }
            if n < buf.len() || n >= 64 {
                return Ok(Some(Frame::KeepAlive { len: n, ping: false }));
            }
            return Ok(None);
        }
        let window = buf.get(..MAX_MESSAGE).unwrap_or(buf);
        // An empty line straddling the previous end starts at most 3 bytes back.
        let Some(hdr_end) = header_end(window, self.searched.saturating_sub(3)) else {
            if buf.len() >= MAX_MESSAGE {
                return Err(ParseError::new(513, "header section larger than 64 KiB"));
            }
            self.searched = window.len();
            return Ok(None);
        };
        let cl = scan_content_length(window.get(..hdr_end).unwrap_or(b"")).map_err(|(s, r)| ParseError::new(s, r))?;
        let total = hdr_end.saturating_add(cl);
        if total > MAX_MESSAGE {
            return Err(ParseError::new(413, "message body too large"));
        }
        self.total = Some(total);
        Ok((buf.len() >= total).then_some(Frame::Message(total)))
    }
}

/// Index just past the empty line ending the header section (searching from `from`).
fn header_end(b: &[u8], mut from: usize) -> Option<usize> {
    while let Some(nl) = find_lf(b, from) {
        match b.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// Finds Content-Length (or `l`) in a raw header section, unfolding continuations.
fn scan_content_length(hdr: &[u8]) -> Result<usize, Fail> {
    let mut value: Option<String> = None;
    let mut in_cl = false;
    let mut count = 0;
    for raw in hdr.split(|&c| c == b'\n').skip(1) {
        let line = strip_cr(raw);
        if line.is_empty() {
            break;
        }
        if is_ws(line[0]) {
            if in_cl && let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(&String::from_utf8_lossy(trim_bytes(line)));
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            in_cl = false;
            continue;
        };
        let name = trim_bytes(line.get(..colon).unwrap_or(b""));
        in_cl = name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l");
        if in_cl {
            count += 1;
            value = Some(String::from_utf8_lossy(line.get(colon + 1..).unwrap_or(b"")).into_owned());
        }
    }
    if count > 1 {
        return Err(fail(400, "more than one Content-Length"));
    }
    match value {
        Some(v) => parse_cl(&v),
        None => Ok(0),
    }
}

/// A ready-to-send response to a malformed request: status from `err` (400, 505, ...),
/// Via/From/To/Call-ID/CSeq copied from the request (RFC 3261 §8.2.6), a To tag
/// added if missing, and a Warning saying what was wrong.
///
/// `None` for responses (they are dropped), ACKs (never answered) and input whose top
/// Via, From, To, Call-ID or CSeq cannot be found. From/To/Call-ID/CSeq are copied
/// verbatim even when they are what was malformed, as the sender will recognise its own
/// text; a Via with bad parameters is copied without them.
pub fn error_response(bytes: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let owned;
    let p: &Partial = match &err.partial {
        Some(p) => p,
        None => {
            let sp = split(bytes.get(..MAX_MESSAGE).unwrap_or(bytes))?;
            owned = Partial { request_method: sp.request_method(), headers: sp.headers };
            &owned
        }
    };
    let method = p.request_method.as_deref()?;
    if method == "ACK" {
        return None;
    }
    let h = &p.headers;
    let mut vias: Vec<Cow<'_, str>> = Vec::new();
    for (i, v) in h.get_all("Via").enumerate() {
        if Via::parse(v).is_ok() {
            vias.push(Cow::Borrowed(v));
        } else if let Ok(salvaged) = Via::parse_lenient(v) {
            vias.push(Cow::Owned(salvaged.to_string()));
        } else if i == 0 {
            return None;
        }
    }
    let present = |name| h.get(name).filter(|v| !v.is_empty());
    let (Some(from), Some(to), Some(call_id), Some(cseq)) = (present("From"), present("To"), present("Call-ID"), present("CSeq"))
    else {
        return None;
    };
    if vias.is_empty() || !looks_like_cseq(cseq) {
        return None;
    }
    let status = if (300..=699).contains(&err.status) { err.status } else { 400 };
    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {status} {}\r\n", reason_phrase(status));
    for v in &vias {
        let _ = write!(out, "Via: {v}\r\n");
    }
    let _ = write!(out, "From: {from}\r\nTo: {to}");
    if NameAddr::parse(to).is_ok_and(|t| t.tag().is_none()) {
        // Same tag for every retransmission of the request.
        let top_branch = vias.first().map(|v| v.as_ref()).unwrap_or("");
        let _ = write!(out, ";tag={:016x}", fnv1a(&[call_id, from, top_branch]));
    }
    let _ = write!(out, "\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nWarning: 399 trunkline ");
    let _ = scan::write_quoted(&mut out, &err.reason);
    out.push_str("\r\nContent-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// `1*DIGIT LWS token`, without a range check on the number, so a request whose only
/// fault is an oversized CSeq (RFC 4475 scalar02) still gets its 400.
fn looks_like_cseq(v: &str) -> bool {
    let mut cur = scan::Cur::new(v);
    !cur.take_while(|c| c.is_ascii_digit()).is_empty() && cur.skip_ws() && !cur.token().is_empty() && {
        cur.skip_ws();
        cur.at_end()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        416 => "Unsupported URI Scheme",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Error",
    }
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(b"\0") {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
