//! `name-addr` / `addr-spec` values of From, To, Contact, Route, Record-Route, ...

use std::fmt;
use std::str::FromStr;

use super::uri::Uri;
use crate::scan::{self, Cur, SyntaxError, is_token_char, is_ws, trim_ws};

/// An address with header parameters, as in From/To/Contact/Route.
///
/// `params` are header parameters (after `>` or, in the bare form, after the URI) in
/// wire form: quoted values keep their quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted and unescaped.
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr { display: None, uri, params: Vec::new() }
    }

    /// Parses `[display-name] <URI> *(;param)` or `URI *(;param)`.
    ///
    /// In the bare form the URI ends at the first `;` or whitespace and may not contain
    /// `?` or `,` (RFC 3261 §20: such URIs must be enclosed in `<>`).
    pub fn parse(s: &str) -> Result<NameAddr, SyntaxError> {
        let mut cur = Cur::new(s);
        cur.skip_ws();
        let mut display = None;
        let uri;
        if cur.peek() == Some(b'"') {
            display = Some(cur.quoted()?.1);
            cur.skip_ws();
            if cur.peek() != Some(b'<') {
                return Err(SyntaxError("expected '<' after display name"));
            }
            uri = angle_uri(&mut cur)?;
        } else {
            // Either `*(token LWS) <uri>` or a bare addr-spec: scan tokens and
            // whitespace; reaching '<' means name-addr.
            let start = cur.pos;
            let words = cur.take_while(|c| is_token_char(c) || is_ws(c));
            if cur.peek() == Some(b'<') {
                let d = trim_ws(words);
                if !d.is_empty() {
                    display = Some(d.to_owned());
                }
                uri = angle_uri(&mut cur)?;
            } else {
                cur.pos = start;
                let text = cur.take_while(|c| c != b';' && !is_ws(c));
                let bare = if text.bytes().any(|c| c == b'?' || c == b',') {
                    Err(SyntaxError("URI with '?' or ',' must be in <>"))
                } else {
                    Uri::parse(text)
                };
                uri = match bare {
                    Ok(u) => u,
                    // `Bell, Alexander <sip:...>`: the display name is the problem.
                    Err(_) if s.contains('<') => {
                        return Err(SyntaxError("display name must be tokens or a quoted string"));
                    }
                    Err(e) => return Err(e),
                };
            }
        }
        let params = scan::parse_params(&mut cur, false)?;
        Ok(NameAddr { display, uri, params })
    }

    /// Header parameter: `None` if absent, `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        scan::find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        scan::set_param(&mut self.params, name, value);
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn set_tag(&mut self, tag: &str) {
        self.set_param("tag", Some(tag));
    }

    /// `expires` parameter; `None` if absent or not a valid 32-bit number (RFC 4475
    /// §3.1.2.4: treat an out-of-range expiry as absent and use the default).
    pub fn expires(&self) -> Option<u32> {
        self.param("expires").flatten().and_then(scan::parse_u32)
    }
}

fn angle_uri(cur: &mut Cur<'_>) -> Result<Uri, SyntaxError> {
    cur.eat(b'<');
    let inner = cur.take_while(|c| c != b'>');
    if !cur.eat(b'>') {
        return Err(SyntaxError("missing '>'"));
    }
    // LAQUOT/RAQUOT allow no whitespace inside the brackets.
    if inner.starts_with([' ', '\t']) || inner.ends_with([' ', '\t']) {
        return Err(SyntaxError("whitespace inside <>"));
    }
    Uri::parse(inner)
}

impl FromStr for NameAddr {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameAddr::parse(s)
    }
}

impl fmt::Display for NameAddr {
    /// Always the `<...>` form, which is valid for every URI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            scan::write_quoted(f, d)?;
            f.write_str(" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        scan::write_params(f, &self.params)
    }
}

/// One Contact header value.
// `Star` is rare; boxing the common variant would cost an allocation per contact.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// `Contact: *` (REGISTER with Expires: 0 removes all bindings).
    Star,
    NameAddr(NameAddr),
}

impl Contact {
    pub fn parse(s: &str) -> Result<Contact, SyntaxError> {
        if trim_ws(s) == "*" {
            return Ok(Contact::Star);
        }
        NameAddr::parse(s).map(Contact::NameAddr)
    }

    /// The `expires` contact parameter (see [`NameAddr::expires`]).
    pub fn expires(&self) -> Option<u32> {
        match self {
            Contact::Star => None,
            Contact::NameAddr(na) => na.expires(),
        }
    }

    pub fn name_addr(&self) -> Option<&NameAddr> {
        match self {
            Contact::Star => None,
            Contact::NameAddr(na) => Some(na),
        }
    }
}

impl FromStr for Contact {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Contact::parse(s)
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Star => f.write_str("*"),
            Contact::NameAddr(na) => na.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse("\"A \\\"B\\\\\" <sip:a@b.com;lr>;tag=x;q=0.5").unwrap();
        assert_eq!(a.display.as_deref(), Some("A \"B\\"));
        assert!(a.uri.lr());
        assert_eq!(a.tag(), Some("x"));
        assert_eq!(a.to_string(), "\"A \\\"B\\\\\" <sip:a@b.com;lr>;tag=x;q=0.5");
        assert_eq!(NameAddr::parse(&a.to_string()).unwrap(), a);

        let b = NameAddr::parse("sip:a@b.com;tag=1").unwrap();
        assert!(b.uri.params.is_empty());
        assert_eq!(b.tag(), Some("1"));
        let c = NameAddr::parse("caller<sip:c@d.com> ; tag = 9 ; foo=\"x;y\"").unwrap();
        assert_eq!(c.display.as_deref(), Some("caller"));
        assert_eq!(c.tag(), Some("9"));
        assert_eq!(c.param("FOO"), Some(Some("\"x;y\"")));
        for bad in [
            "\"open <sip:a@b.com>",
            "Bell, A <sip:a@b.com>",
            "< sip:a@b.com >",
            "sip:a@b.com?x=y",
            "<sip:a@b.com>;;",
            "<sip:a@b.com",
            "<sip:a@b.com> junk",
            "",
            "<>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Contact::parse(" * ").unwrap(), Contact::Star);
        assert_eq!(Contact::parse("<sip:a@b>;expires=60").unwrap().expires(), Some(60));
        assert_eq!(Contact::parse("<sip:a@b>;expires=99999999999").unwrap().expires(), None);
    }
}
