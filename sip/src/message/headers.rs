//! Ordered header list with case-insensitive names and typed accessors.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::addr::{Contact, NameAddr};
use super::method::CSeq;
use super::via::Via;
use crate::scan::{self, SyntaxError};

/// Why a typed header accessor failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("more than one {0} header")]
    Multiple(&'static str),
    #[error("bad {header} header: {reason}")]
    Invalid { header: &'static str, reason: &'static str },
}

/// Canonical spelling of a known header name (compact forms expanded), matched
/// case-insensitively; `None` for unknown names.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.len() == 1 {
        return Some(match b[0].to_ascii_lowercase() {
            b'v' => "Via",
            b'f' => "From",
            b't' => "To",
            b'i' => "Call-ID",
            b'm' => "Contact",
            b'l' => "Content-Length",
            b'c' => "Content-Type",
            b'k' => "Supported",
            b's' => "Subject",
            b'e' => "Content-Encoding",
            b'o' => "Event",
            b'u' => "Allow-Events",
            b'r' => "Refer-To",
            b'b' => "Referred-By",
            b'x' => "Session-Expires",
            b'y' => "Identity",
            b'a' => "Accept-Contact",
            b'j' => "Reject-Contact",
            b'd' => "Request-Disposition",
            _ => return None,
        });
    }
    let mut buf = [0u8; 24];
    let lower = buf.get_mut(..b.len())?;
    for (d, s) in lower.iter_mut().zip(b) {
        *d = s.to_ascii_lowercase();
    }
    Some(match &*lower {
        b"via" => "Via",
        b"from" => "From",
        b"to" => "To",
        b"call-id" => "Call-ID",
        b"cseq" => "CSeq",
        b"contact" => "Contact",
        b"max-forwards" => "Max-Forwards",
        b"content-length" => "Content-Length",
        b"content-type" => "Content-Type",
        b"content-encoding" => "Content-Encoding",
        b"content-disposition" => "Content-Disposition",
        b"content-language" => "Content-Language",
        b"route" => "Route",
        b"record-route" => "Record-Route",
        b"expires" => "Expires",
        b"min-expires" => "Min-Expires",
        b"supported" => "Supported",
        b"require" => "Require",
        b"proxy-require" => "Proxy-Require",
        b"unsupported" => "Unsupported",
        b"allow" => "Allow",
        b"accept" => "Accept",
        b"accept-encoding" => "Accept-Encoding",
        b"accept-language" => "Accept-Language",
        b"authorization" => "Authorization",
        b"proxy-authorization" => "Proxy-Authorization",
        b"www-authenticate" => "WWW-Authenticate",
        b"proxy-authenticate" => "Proxy-Authenticate",
        b"authentication-info" => "Authentication-Info",
        b"user-agent" => "User-Agent",
        b"server" => "Server",
        b"date" => "Date",
        b"subject" => "Subject",
        b"event" => "Event",
        b"allow-events" => "Allow-Events",
        b"subscription-state" => "Subscription-State",
        b"refer-to" => "Refer-To",
        b"referred-by" => "Referred-By",
        b"retry-after" => "Retry-After",
        b"warning" => "Warning",
        b"timestamp" => "Timestamp",
        b"organization" => "Organization",
        b"priority" => "Priority",
        b"reply-to" => "Reply-To",
        b"in-reply-to" => "In-Reply-To",
        b"alert-info" => "Alert-Info",
        b"call-info" => "Call-Info",
        b"error-info" => "Error-Info",
        b"mime-version" => "MIME-Version",
        b"rseq" => "RSeq",
        b"rack" => "RAck",
        b"path" => "Path",
        b"service-route" => "Service-Route",
        b"session-expires" => "Session-Expires",
        b"min-se" => "Min-SE",
        b"privacy" => "Privacy",
        b"p-asserted-identity" => "P-Asserted-Identity",
        b"p-preferred-identity" => "P-Preferred-Identity",
        b"replaces" => "Replaces",
        b"identity" => "Identity",
        b"reason" => "Reason",
        b"accept-contact" => "Accept-Contact",
        b"reject-contact" => "Reject-Contact",
        b"request-disposition" => "Request-Disposition",
        _ => return None,
    })
}

/// Headers whose comma-separated values are split into one entry each on parse.
pub(crate) fn is_split_list(canon: &str) -> bool {
    matches!(canon, "Via" | "Contact" | "Route" | "Record-Route")
}

fn name_cow(name: &str) -> Cow<'static, str> {
    match canonical_name(name) {
        Some(c) => Cow::Borrowed(c),
        None if scan::is_token(name) => Cow::Owned(name.to_owned()),
        // A header name must be a token; dropping other characters prevents header injection.
        None => Cow::Owned(name.bytes().filter(|&c| scan::is_token_char(c)).map(char::from).collect()),
    }
}

/// CR/LF in a value would inject headers on output: they are written as spaces.
fn push_clean(text: &mut String, value: &str) {
    if value.bytes().any(|c| c == b'\r' || c == b'\n') {
        text.extend(value.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }));
    } else {
        text.push_str(value);
    }
}

/// One header: its name and where its value lies in [`Headers::text`].
#[derive(Clone)]
struct Entry {
    name: Cow<'static, str>,
    start: usize,
    end: usize,
}

/// Ordered list of `(name, value)` entries. Known names are stored in canonical
/// spelling (compact forms expanded); lookups are case-insensitive and also accept
/// compact forms. Values are unfolded and trimmed.
///
/// All values live in one string, each entry naming its range: parsing a message costs one
/// buffer for its values instead of one allocation per header, which was a fifth of a
/// registration's CPU. Replacing or removing a value leaves its old text behind until
/// [`Headers::compact`] finds it is most of the buffer.
///
/// From, To, Contact and Via are parsed at most once per message: the parser's checks parse
/// them, and the core reads them again (transaction key, dialog check, registrar, the answer's
/// To tag). The typed results are kept until the headers change ([`Parsed`]).
#[derive(Clone, Default)]
pub struct Headers {
    text: String,
    entries: Vec<Entry>,
    /// Boxed: a message moves through channels and queues by value, and the typed values are
    /// several hundred bytes (copied on every move: +2,800 instructions per registration).
    parsed: OnceLock<Box<Parsed>>,
}

/// Typed values parsed on first use. Every change to the entries clears them (`touched`).
/// `OnceLock`, not `OnceCell`: `Headers` stays `Sync` (async code holds messages by reference
/// across awaits), for one atomic load per read.
#[derive(Clone, Default)]
struct Parsed {
    from: OnceLock<Result<NameAddr, HeaderError>>,
    to: OnceLock<Result<NameAddr, HeaderError>>,
    vias: OnceLock<Result<Vec<Via>, HeaderError>>,
    contacts: OnceLock<Result<Vec<Contact>, HeaderError>>,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Bytes of dead text below which [`Headers::compact`] does not bother.
const COMPACT_ABOVE: usize = 1024;

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    pub fn with_capacity(n: usize) -> Headers {
        Headers { text: String::with_capacity(n * 32), entries: Vec::with_capacity(n), parsed: OnceLock::new() }
    }

    /// The entries changed: typed values parsed before may be stale.
    fn touched(&mut self) {
        self.parsed.take();
    }

    fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(Box::default)
    }

    fn value(&self, e: &Entry) -> &str {
        self.text.get(e.start..e.end).unwrap_or("")
    }

    // ---- for the parser: a value is appended to the text, then named ----

    /// Where the next appended text starts.
    pub(crate) fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Appends to the value being assembled (it must hold no CR or LF).
    pub(crate) fn append_text(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// The value being assembled: the text from `start` on.
    pub(crate) fn text_from(&self, start: usize) -> &str {
        self.text.get(start..).unwrap_or("")
    }

    /// Names the text from `start` on as a value of `name` (already canonical), split into one
    /// entry per comma-separated item if `split`. Entries beyond `max` are not stored: returns
    /// `false` if any were left out.
    pub(crate) fn name_text_from(&mut self, name: Cow<'static, str>, start: usize, split: bool, max: usize) -> bool {
        self.touched();
        let Headers { text, entries, .. } = self;
        let value = text.get(start..).unwrap_or("");
        let mut fits = true;
        if split && value.contains(',') {
            scan::split_commas(value, |r| {
                if entries.len() >= max {
                    fits = false;
                } else {
                    entries.push(Entry { name: name.clone(), start: start + r.start, end: start + r.end });
                }
            });
        } else if entries.len() >= max {
            fits = false;
        } else {
            entries.push(Entry { name, start, end: text.len() });
        }
        fits
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|e| (&*e.name, self.value(e)))
    }

    /// First value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let q = query(name);
        self.entries.iter().find(|e| e.name.eq_ignore_ascii_case(q)).map(|e| self.value(e))
    }

    /// All values of `name`, in order.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let q = query(name);
        self.entries.iter().filter(move |e| e.name.eq_ignore_ascii_case(q)).map(|e| self.value(e))
    }

    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends `value` (CR/LF made spaces) to the text; returns an entry of `name` for it.
    fn store(&mut self, name: Cow<'static, str>, value: &str) -> Entry {
        self.touched();
        let start = self.text.len();
        push_clean(&mut self.text, value);
        Entry { name, start, end: self.text.len() }
    }

    /// Appends one value (not split on commas).
    pub fn push(&mut self, name: &str, value: impl AsRef<str>) {
        let e = self.store(name_cow(name), value.as_ref());
        self.entries.push(e);
    }

    /// Inserts a value before the first existing entry of that name (or appends):
    /// how a new top Via or Record-Route is added.
    pub fn push_front(&mut self, name: &str, value: impl AsRef<str>) {
        let e = self.store(name_cow(name), value.as_ref());
        let at = self.entries.iter().position(|x| x.name.eq_ignore_ascii_case(&e.name)).unwrap_or(self.entries.len());
        self.entries.insert(at, e);
    }

    /// Replaces all entries of `name` by one value, kept at the first one's position.
    pub fn set(&mut self, name: &str, value: impl AsRef<str>) {
        let e = self.store(name_cow(name), value.as_ref());
        match self.entries.iter().position(|x| x.name.eq_ignore_ascii_case(&e.name)) {
            Some(i) => {
                let mut k = 0;
                self.entries.retain(|x| {
                    k += 1;
                    k - 1 <= i || !x.name.eq_ignore_ascii_case(&e.name)
                });
                // The name keeps the spelling it had (an unknown name's case).
                if let Some(slot) = self.entries.get_mut(i) {
                    (slot.start, slot.end) = (e.start, e.end);
                }
                self.compact();
            }
            None => self.entries.push(e),
        }
    }

    /// Removes all entries of `name`; returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        let q = query(name);
        let before = self.entries.len();
        self.entries.retain(|e| !e.name.eq_ignore_ascii_case(q));
        let removed = before - self.entries.len();
        if removed > 0 {
            self.touched();
            self.compact();
        }
        removed
    }

    /// Drops the text of replaced and removed values once it is most of the buffer, so a
    /// `Headers` edited over and over (a dialog's request template) stays small.
    fn compact(&mut self) {
        let live: usize = self.entries.iter().map(|e| e.end - e.start).sum();
        let dead = self.text.len() - live.min(self.text.len());
        if dead <= COMPACT_ABOVE || dead <= live {
            return;
        }
        let mut text = String::with_capacity(live);
        for e in &mut self.entries {
            let start = text.len();
            text.push_str(self.text.get(e.start..e.end).unwrap_or(""));
            *e = Entry { name: std::mem::take(&mut e.name), start, end: text.len() };
        }
        self.text = text;
    }

    /// The single value of a header that may occur at most once.
    pub(crate) fn single(&self, name: &'static str) -> Result<Option<&str>, HeaderError> {
        let mut it = self.get_all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(HeaderError::Multiple(name));
        }
        Ok(first)
    }

    fn required(&self, name: &'static str) -> Result<&str, HeaderError> {
        self.single(name)?.ok_or(HeaderError::Missing(name))
    }

    // ---- typed accessors ----

    /// Call-ID: non-empty, no whitespace or control characters.
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let v = self.required("Call-ID")?;
        if v.is_empty() || !v.bytes().all(|c| c > 0x20 && c != 0x7f) {
            return Err(HeaderError::Invalid { header: "Call-ID", reason: "bad Call-ID" });
        }
        Ok(v)
    }

    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        CSeq::parse(self.required("CSeq")?).map_err(invalid("CSeq"))
    }

    pub fn from(&self) -> Result<NameAddr, HeaderError> {
        self.from_ref().cloned()
    }

    /// From, parsed once (see [`Headers`]).
    pub fn from_ref(&self) -> Result<&NameAddr, HeaderError> {
        let r = self.parsed().from.get_or_init(|| NameAddr::parse(self.required("From")?).map_err(invalid("From")));
        r.as_ref().map_err(|e| *e)
    }

    pub fn to(&self) -> Result<NameAddr, HeaderError> {
        self.to_ref().cloned()
    }

    /// To, parsed once (see [`Headers`]).
    pub fn to_ref(&self) -> Result<&NameAddr, HeaderError> {
        let r = self.parsed().to.get_or_init(|| NameAddr::parse(self.required("To")?).map_err(invalid("To")));
        r.as_ref().map_err(|e| *e)
    }

    /// All Via values, top first; at least one is required.
    pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
        self.vias_ref().map(<[Via]>::to_vec)
    }

    /// All Via values, parsed once (see [`Headers`]).
    pub fn vias_ref(&self) -> Result<&[Via], HeaderError> {
        let r = self.parsed().vias.get_or_init(|| {
            let vias = self.get_all("Via").map(Via::parse).collect::<Result<Vec<_>, _>>().map_err(invalid("Via"))?;
            if vias.is_empty() {
                return Err(HeaderError::Missing("Via"));
            }
            Ok(vias)
        });
        r.as_deref().map_err(|e| *e)
    }

    pub fn top_via(&self) -> Result<Via, HeaderError> {
        self.top_via_ref().cloned()
    }

    /// The top Via, from the Vias parsed once (a received message had them all checked, so a
    /// lower Via never fails here unless a message built in code carries a bad one).
    pub fn top_via_ref(&self) -> Result<&Via, HeaderError> {
        // `vias_ref` is never an empty list.
        self.vias_ref()?.first().ok_or(HeaderError::Missing("Via"))
    }

    /// All Contact values (empty if there is none).
    pub fn contacts(&self) -> Result<Vec<Contact>, HeaderError> {
        self.contacts_ref().map(<[Contact]>::to_vec)
    }

    /// All Contact values, parsed once (see [`Headers`]).
    pub fn contacts_ref(&self) -> Result<&[Contact], HeaderError> {
        let r = self
            .parsed()
            .contacts
            .get_or_init(|| self.get_all("Contact").map(Contact::parse).collect::<Result<_, _>>().map_err(invalid("Contact")));
        r.as_deref().map_err(|e| *e)
    }

    /// Route values, in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.get_all("Route").map(NameAddr::parse).collect::<Result<_, _>>().map_err(invalid("Route"))
    }

    /// Record-Route values, in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.get_all("Record-Route").map(NameAddr::parse).collect::<Result<_, _>>().map_err(invalid("Record-Route"))
    }

    /// Expires header (delta-seconds). Values above 2^32-1 are an error; RFC 4475
    /// suggests treating them as absent, which the caller may do on `Err`.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.single("Expires")?
            .map(|v| scan::parse_u32(v).ok_or(HeaderError::Invalid { header: "Expires", reason: "not a 32-bit number" }))
            .transpose()
    }

    /// Max-Forwards (0-255). Absent is `Ok(None)`: RFC 2543 peers omit it.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.single("Max-Forwards")?
            .map(|v| {
                scan::parse_u32(v)
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or(HeaderError::Invalid { header: "Max-Forwards", reason: "not in 0-255" })
            })
            .transpose()
    }

    /// Media type of Content-Type without parameters, e.g. `application/sdp`.
    pub fn content_type(&self) -> Result<Option<&str>, HeaderError> {
        let Some(v) = self.single("Content-Type")? else {
            return Ok(None);
        };
        let mt = scan::trim_ws(v.split(';').next().unwrap_or(""));
        let ok = mt.split_once('/').is_some_and(|(t, s)| scan::is_token(scan::trim_ws(t)) && scan::is_token(scan::trim_ws(s)));
        if ok { Ok(Some(mt)) } else { Err(HeaderError::Invalid { header: "Content-Type", reason: "bad media type" }) }
    }

    // ---- typed setters ----

    pub fn set_call_id(&mut self, call_id: &str) {
        self.set("Call-ID", call_id);
    }

    pub fn set_cseq(&mut self, cseq: &CSeq) {
        self.set("CSeq", cseq.to_string());
    }

    pub fn set_from(&mut self, from: &NameAddr) {
        self.set("From", from.to_string());
    }

    pub fn set_to(&mut self, to: &NameAddr) {
        self.set("To", to.to_string());
    }

    /// Adds a Via on top of the existing ones.
    pub fn push_via(&mut self, via: &Via) {
        self.push_front("Via", via.to_string());
    }

    pub fn set_max_forwards(&mut self, n: u8) {
        self.set("Max-Forwards", n.to_string());
    }

    pub fn set_contact(&mut self, contact: &Contact) {
        self.set("Contact", contact.to_string());
    }

    pub fn set_expires(&mut self, secs: u32) {
        self.set("Expires", secs.to_string());
    }

    /// Adds a tag to To if it parses and has none; returns whether it did.
    pub fn set_to_tag(&mut self, tag: &str) -> bool {
        self.set_to_tag_with(|| tag.to_owned())
    }

    /// Adds the tag `tag()` makes to To if it parses and has none (`tag` is called only then);
    /// returns whether it did.
    pub fn set_to_tag_with(&mut self, tag: impl FnOnce() -> String) -> bool {
        if !self.to_ref().is_ok_and(|to| to.tag().is_none()) {
            return false;
        }
        let tag = tag();
        let tag = tag.as_str();
        if scan::is_token(tag) {
            // Header parameters follow the whole name-addr or addr-spec (an addr-spec whose URI
            // has a `;` must be in angle brackets, RFC 3261 §20), so the tag goes at the end of
            // the text as the peer wrote it: no re-serialising of the header.
            let q = query("To");
            if let Some(i) = self.entries.iter().position(|e| e.name.eq_ignore_ascii_case(q)) {
                let Entry { mut start, end, .. } = self.entries[i];
                if end != self.text.len() {
                    // Not the last text: copy the value to the end, where it can grow.
                    let value = self.text.get(start..end).unwrap_or("").to_owned();
                    start = self.text.len();
                    self.text.push_str(&value);
                }
                self.text.push_str(";tag=");
                self.text.push_str(tag);
                (self.entries[i].start, self.entries[i].end) = (start, self.text.len());
                self.touched();
                return true;
            }
        }
        let Ok(mut to) = self.to() else { return false };
        to.set_tag(tag);
        self.set_to(&to);
        true
    }
}

/// The name to compare stored names with (case-insensitively), so `get("v")` finds Via. Only a
/// compact form needs expanding: a longer known name already equals its canonical spelling but
/// for case.
fn query(name: &str) -> &str {
    if name.len() == 1 { canonical_name(name).unwrap_or(name) } else { name }
}

fn invalid(header: &'static str) -> impl Fn(SyntaxError) -> HeaderError {
    move |e| HeaderError::Invalid { header, reason: e.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a;branch=z9hG4bK1");
        h.push("X-Custom", "1");
        h.push("VIA", "SIP/2.0/UDP b;branch=z9hG4bK2");
        h.push("x-custom", "2");
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP a;branch=z9hG4bK1"));
        assert_eq!(h.get_all("v").count(), 2);
        assert_eq!(h.get_all("X-CUSTOM").collect::<Vec<_>>(), ["1", "2"]);
        h.set("x-Custom", "3");
        assert_eq!(
            h.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>(),
            ["Via=SIP/2.0/UDP a;branch=z9hG4bK1", "X-Custom=3", "Via=SIP/2.0/UDP b;branch=z9hG4bK2"]
        );
        h.push_front("Via", "SIP/2.0/TCP c;branch=z9hG4bK0");
        assert_eq!(h.top_via().unwrap().transport, "TCP");
        assert_eq!(h.remove("via"), 3);
        assert_eq!(h.len(), 1);
        h.push("Bad\r\nName:", "v\r\nInjected: 1");
        assert_eq!(h.get("BadName"), Some("v  Injected: 1"));
    }

    #[test]
    fn accessors() {
        let mut h = Headers::new();
        assert_eq!(h.call_id(), Err(HeaderError::Missing("Call-ID")));
        assert_eq!(h.max_forwards(), Ok(None));
        h.push("Max-Forwards", "300");
        assert!(h.max_forwards().is_err());
        h.set("Max-Forwards", "0068");
        assert_eq!(h.max_forwards(), Ok(Some(68)));
        h.push("Expires", "10000000000");
        assert!(h.expires().is_err());
        h.push("c", "application/sdp ; charset=x");
        assert_eq!(h.content_type(), Ok(Some("application/sdp")));
        h.push("To", "<sip:a@b>");
        assert!(h.set_to_tag("t1"));
        assert!(!h.set_to_tag("t2"));
        assert_eq!(h.to().unwrap().tag(), Some("t1"));
    }

    #[test]
    fn a_to_tag_is_appended_to_the_text_as_the_peer_wrote_it() {
        for (to, want) in [
            ("\"Bob B\" <sip:b@c;transport=udp>;x=1", "\"Bob B\" <sip:b@c;transport=udp>;x=1;tag=t9"),
            // An addr-spec without brackets: its `;` parameters are the header's, not the URI's.
            ("sip:b@c;x=1", "sip:b@c;x=1;tag=t9"),
            ("<sip:b@c>", "<sip:b@c>;tag=t9"),
        ] {
            let mut h = Headers::new();
            h.push("t", to);
            assert!(h.set_to_tag("t9"));
            assert_eq!(h.get("To"), Some(want));
            let parsed = h.to().unwrap();
            assert_eq!(parsed.tag(), Some("t9"));
            assert_eq!(h.count("To"), 1);
        }
    }
    #[test]
    fn typed_values_parsed_once_follow_every_change_to_the_headers() {
        let msg = "REGISTER sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/TCP b;branch=z9hG4bK2\r\n\
                   From: <sip:1000@gw>;tag=f\r\nTo: <sip:1000@gw>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\
                   Contact: <sip:1000@10.0.0.1:5062>\r\nContent-Length: 0\r\n\r\n";
        let crate::Message::Request(req) = crate::parse(msg.as_bytes()).unwrap() else { panic!("a request") };
        let mut h = req.headers;
        // The parser's checks left them parsed; a second read gives the same.
        assert_eq!(h.from_ref().unwrap().tag(), Some("f"));
        assert_eq!(h.to_ref().unwrap().tag(), None);
        assert_eq!(h.top_via_ref().unwrap().transport, "UDP");
        assert_eq!(h.vias_ref().unwrap().len(), 2);
        assert_eq!(h.contacts_ref().unwrap().len(), 1);

        assert!(h.set_to_tag("t1"));
        assert_eq!(h.to_ref().unwrap().tag(), Some("t1"));
        h.set("From", "<sip:2000@gw>;tag=g");
        assert_eq!(h.from_ref().unwrap().uri.user.as_deref(), Some("2000"));
        h.push_front("Via", "SIP/2.0/TLS c;branch=z9hG4bK0");
        assert_eq!(h.top_via_ref().unwrap().transport, "TLS");
        assert_eq!(h.vias_ref().unwrap().len(), 3);
        h.push("Contact", "<sip:1000@10.0.0.2>");
        assert_eq!(h.contacts_ref().unwrap().len(), 2);
        assert_eq!(h.remove("Contact"), 2);
        assert!(h.contacts_ref().unwrap().is_empty());
        h.remove("Via");
        assert_eq!(h.top_via_ref(), Err(HeaderError::Missing("Via")));
        h.set("To", "not a name-addr <");
        assert!(matches!(h.to_ref(), Err(HeaderError::Invalid { header: "To", .. })));
        assert!(!h.set_to_tag("t2"), "no tag goes into a To that does not parse");
        // A copy carries what was parsed, and changes on its own.
        let mut copy = h.clone();
        copy.set("From", "<sip:3000@gw>");
        assert_eq!(copy.from_ref().unwrap().uri.user.as_deref(), Some("3000"));
        assert_eq!(h.from_ref().unwrap().uri.user.as_deref(), Some("2000"));
    }

    #[test]
    fn a_value_replaced_over_and_over_leaves_no_growing_buffer() {
        let mut h = Headers::new();
        h.push("Call-ID", "abc");
        h.push("X-Long", "x".repeat(300));
        for n in 0..10_000u32 {
            h.set("CSeq", format!("{n} INVITE"));
            h.push("X-Tmp", "y".repeat(50));
            h.remove("X-Tmp");
        }
        assert_eq!(h.get("CSeq"), Some("9999 INVITE"));
        assert_eq!(h.get("X-Long").map(str::len), Some(300));
        assert_eq!(h.call_id(), Ok("abc"));
        let live: usize = h.iter().map(|(_, v)| v.len()).sum();
        assert!(h.text.len() <= 2 * live + COMPACT_ABOVE + 64, "text {} for {live} live bytes", h.text.len());
    }

    #[test]
    fn headers_with_the_same_entries_are_equal_whatever_text_they_left_behind() {
        let mut a = Headers::new();
        a.push("To", "<sip:x@y>");
        a.set("To", "<sip:b@c>");
        a.push("Via", "SIP/2.0/UDP h;branch=z9hG4bK1");
        let mut b = Headers::new();
        b.push("t", "<sip:b@c>");
        b.push("v", "SIP/2.0/UDP h;branch=z9hG4bK1");
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        b.set("Via", "SIP/2.0/UDP h;branch=z9hG4bK2");
        assert_ne!(a, b);
    }

    #[test]
    fn a_to_tag_is_added_when_to_is_not_the_last_value_without_touching_the_others() {
        let mut h = Headers::new();
        h.push("To", "<sip:b@c>");
        h.push("Via", "SIP/2.0/UDP h;branch=z9hG4bK1");
        h.push("From", "<sip:a@c>;tag=f");
        assert!(h.set_to_tag("t1"));
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("To", "<sip:b@c>;tag=t1"), ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@c>;tag=f")]
        );
    }
}
