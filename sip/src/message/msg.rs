//! Requests, responses and their serialization.

use std::fmt::{self, Write as _};

use super::addr::{Contact, NameAddr};
use super::headers::{HeaderError, Headers};
use super::method::{CSeq, Method};
use super::uri::Uri;
use super::via::Via;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Typed header accessors and setters, delegated to [`Headers`].
macro_rules! header_methods {
    ($t:ty) => {
        impl $t {
            pub fn call_id(&self) -> Result<&str, HeaderError> {
                self.hdrs().call_id()
            }
            pub fn cseq(&self) -> Result<CSeq, HeaderError> {
                self.hdrs().cseq()
            }
            pub fn from(&self) -> Result<NameAddr, HeaderError> {
                self.hdrs().from()
            }
            pub fn to(&self) -> Result<NameAddr, HeaderError> {
                self.hdrs().to()
            }
            pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
                self.hdrs().vias()
            }
            pub fn top_via(&self) -> Result<Via, HeaderError> {
                self.hdrs().top_via()
            }
            pub fn contacts(&self) -> Result<Vec<Contact>, HeaderError> {
                self.hdrs().contacts()
            }
            /// From, parsed once per message (see [`Headers`]).
            pub fn from_ref(&self) -> Result<&NameAddr, HeaderError> {
                self.hdrs().from_ref()
            }
            /// To, parsed once per message (see [`Headers`]).
            pub fn to_ref(&self) -> Result<&NameAddr, HeaderError> {
                self.hdrs().to_ref()
            }
            /// The top Via, parsed once per message (see [`Headers`]).
            pub fn top_via_ref(&self) -> Result<&Via, HeaderError> {
                self.hdrs().top_via_ref()
            }
            /// The Contact values, parsed once per message (see [`Headers`]).
            pub fn contacts_ref(&self) -> Result<&[Contact], HeaderError> {
                self.hdrs().contacts_ref()
            }
            pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
                self.hdrs().routes()
            }
            pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
                self.hdrs().record_routes()
            }
            pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
                self.hdrs().expires()
            }
            pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
                self.hdrs().max_forwards()
            }
            pub fn content_type(&self) -> Result<Option<&str>, HeaderError> {
                self.hdrs().content_type()
            }
            pub fn set_call_id(&mut self, call_id: &str) {
                self.hdrs_mut().set_call_id(call_id)
            }
            pub fn set_cseq(&mut self, cseq: &CSeq) {
                self.hdrs_mut().set_cseq(cseq)
            }
            pub fn set_from(&mut self, from: &NameAddr) {
                self.hdrs_mut().set_from(from)
            }
            pub fn set_to(&mut self, to: &NameAddr) {
                self.hdrs_mut().set_to(to)
            }
            pub fn push_via(&mut self, via: &Via) {
                self.hdrs_mut().push_via(via)
            }
            pub fn set_max_forwards(&mut self, n: u8) {
                self.hdrs_mut().set_max_forwards(n)
            }
            pub fn set_contact(&mut self, contact: &Contact) {
                self.hdrs_mut().set_contact(contact)
            }
            pub fn set_expires(&mut self, secs: u32) {
                self.hdrs_mut().set_expires(secs)
            }
            pub fn set_to_tag(&mut self, tag: &str) -> bool {
                self.hdrs_mut().set_to_tag(tag)
            }
            pub fn set_to_tag_with(&mut self, tag: impl FnOnce() -> String) -> bool {
                self.hdrs_mut().set_to_tag_with(tag)
            }
        }
    };
}

header_methods!(Request);
header_methods!(Response);
header_methods!(Message);

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request { method, uri, headers: Headers::new(), body: Vec::new() }
    }

    fn hdrs(&self) -> &Headers {
        &self.headers
    }

    fn hdrs_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Sets the body and its Content-Type (Content-Length is written on output).
    pub fn set_body(&mut self, content_type: &str, body: Vec<u8>) {
        self.headers.set("Content-Type", content_type);
        self.body = body;
    }

    /// Appends the wire form to `out` (lets a transport reuse one buffer).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(256 + 64 * self.headers.len());
        // Fields are public, so a hand-made method or opaque URI could hold CR/LF.
        push_clean(&mut s, &format!("{} {} SIP/2.0", self.method, self.uri));
        s.push_str("\r\n");
        write_headers(&mut s, &self.headers, self.body.len());
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl Response {
    pub fn new(status: u16, reason: &str) -> Response {
        Response { status, reason: reason.to_owned(), headers: Headers::new(), body: Vec::new() }
    }

    /// RFC 3261 §8.2.6: a response to `req` copying Via (all, in order), From, To,
    /// Call-ID and CSeq. Add a To tag with [`Response::set_to_tag`] where needed.
    pub fn to_request(req: &Request, status: u16, reason: &str) -> Response {
        let mut headers = Headers::with_capacity(8);
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for v in req.headers.get_all(name) {
                headers.push(name, v);
            }
        }
        Response { status, reason: reason.to_owned(), headers, body: Vec::new() }
    }

    fn hdrs(&self) -> &Headers {
        &self.headers
    }

    fn hdrs_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    pub fn set_body(&mut self, content_type: &str, body: Vec<u8>) {
        self.headers.set("Content-Type", content_type);
        self.body = body;
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(256 + 64 * self.headers.len());
        let _ = write!(s, "SIP/2.0 {:03} ", self.status);
        push_clean(&mut s, &self.reason);
        s.push_str("\r\n");
        write_headers(&mut s, &self.headers, self.body.len());
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl Message {
    pub fn headers(&self) -> &Headers {
        self.hdrs()
    }

    pub fn headers_mut(&mut self) -> &mut Headers {
        self.hdrs_mut()
    }

    fn hdrs(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    fn hdrs_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self, Message::Request(_))
    }

    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Request(_) => None,
            Message::Response(r) => Some(r),
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.write_to(out),
            Message::Response(r) => r.write_to(out),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

fn push_clean(s: &mut String, text: &str) {
    for ch in text.chars() {
        s.push(if ch == '\r' || ch == '\n' { ' ' } else { ch });
    }
}

/// Writes headers; Content-Length is always the real body length, written where the
/// first Content-Length was (or last), and other copies are dropped.
fn write_headers(s: &mut String, headers: &Headers, body_len: usize) {
    let mut cl_written = false;
    for (n, v) in headers.iter() {
        if n == "Content-Length" {
            if !cl_written {
                let _ = write!(s, "Content-Length: {body_len}\r\n");
                cl_written = true;
            }
            continue;
        }
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    if !cl_written {
        let _ = write!(s, "Content-Length: {body_len}\r\n");
    }
    s.push_str("\r\n");
}

impl fmt::Display for Request {
    /// Wire form; a non-UTF-8 body is shown lossily (use `to_bytes` to send).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Request(r) => r.fmt(f),
            Message::Response(r) => r.fmt(f),
        }
    }
}
