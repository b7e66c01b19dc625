//! SIP/SIPS URIs (RFC 3261 §19.1, §25.1) and opaque URIs of other schemes.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::scan::{self, HNV, PARAM, PASSWORD, RESERVED, SyntaxError, UNRESERVED, USER, check_escaped, unescape, write_escaped};

/// URI scheme. Schemes are case-insensitive, so they are stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
    /// Any other scheme (`tel`, `http`, ...): kept so the caller can answer 416.
    Other(String),
}

impl Scheme {
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Other(s) => s,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Host part of a URI or Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A hostname as written (compare case-insensitively).
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// Parses `hostname / IPv4address / IPv6reference` (IPv6 in brackets).
    pub fn parse(s: &str) -> Result<Host, SyntaxError> {
        let b = s.as_bytes();
        if b.first() == Some(&b'[') {
            let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).ok_or(SyntaxError("bad IPv6 reference"))?;
            return inner.parse().map(Host::V6).map_err(|_| SyntaxError("bad IPv6 address"));
        }
        if b.first().is_some_and(u8::is_ascii_digit)
            && let Ok(ip) = s.parse::<Ipv4Addr>()
        {
            return Ok(Host::V4(ip));
        }
        if is_hostname(s) { Ok(Host::Domain(s.to_owned())) } else { Err(SyntaxError("bad host")) }
    }

    /// Same host? Domain names compare case-insensitively.
    pub fn same(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Domain(a), Host::Domain(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }
}

impl FromStr for Host {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Host::parse(s)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(ip) => write!(f, "{ip}"),
            Host::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// `hostname = *( domainlabel "." ) toplabel [ "." ]`
fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return false;
    }
    let mut labels = s.split('.').peekable();
    while let Some(label) = labels.next() {
        let b = label.as_bytes();
        let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
            return false;
        };
        let top = labels.peek().is_none();
        let first_ok = if top { first.is_ascii_alphabetic() } else { first.is_ascii_alphanumeric() };
        if !first_ok || !last.is_ascii_alphanumeric() || !b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-') {
            return false;
        }
    }
    true
}

/// A parsed URI. For `sip:`/`sips:` every field is filled from the URI; for any other
/// scheme only `scheme` and `opaque` (the text after `scheme:`) are set.
///
/// `user`, `password`, parameter and header names/values hold the %-decoded text;
/// `Display` re-escapes what needs escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    pub headers: Vec<(String, String)>,
    /// Everything after `scheme:` for non-SIP schemes; `None` for sip/sips.
    pub opaque: Option<String>,
}

impl Uri {
    /// A `sip:` URI with the given user and host.
    pub fn sip(user: Option<&str>, host: Host, port: Option<u16>) -> Uri {
        Uri {
            scheme: Scheme::Sip,
            user: user.map(str::to_owned),
            password: None,
            host,
            port,
            params: Vec::new(),
            headers: Vec::new(),
            opaque: None,
        }
    }

    /// Parses a URI per RFC 3261's grammar (SIP-URI / SIPS-URI / absoluteURI).
    pub fn parse(s: &str) -> Result<Uri, SyntaxError> {
        let colon = s.find(':').ok_or(SyntaxError("URI has no scheme"))?;
        let (scheme, rest) = (s.get(..colon).unwrap_or(""), s.get(colon + 1..).unwrap_or(""));
        let sb = scheme.as_bytes();
        if !sb.first().is_some_and(u8::is_ascii_alphabetic)
            || !sb.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err(SyntaxError("bad URI scheme"));
        }
        if scheme.eq_ignore_ascii_case("sip") {
            parse_sip(Scheme::Sip, rest)
        } else if scheme.eq_ignore_ascii_case("sips") {
            parse_sip(Scheme::Sips, rest)
        } else {
            // absoluteURI: hier-part / opaque-part, both 1*uric here.
            if rest.is_empty() || !check_escaped(rest, RESERVED | UNRESERVED) {
                return Err(SyntaxError("bad characters in URI"));
            }
            Ok(Uri {
                scheme: Scheme::Other(scheme.to_ascii_lowercase()),
                user: None,
                password: None,
                host: Host::Domain(String::new()),
                port: None,
                params: Vec::new(),
                headers: Vec::new(),
                opaque: Some(rest.to_owned()),
            })
        }
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// URI parameter: `None` if absent, `Some(None)` for a flag like `lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        scan::find_param(&self.params, name)
    }

    /// Sets or replaces a URI parameter (decoded text; escaped on output).
    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        scan::set_param(&mut self.params, name, value);
    }

    /// `transport` parameter, if any.
    pub fn transport(&self) -> Option<&str> {
        self.param("transport").flatten()
    }

    /// Loose-routing flag (`;lr`).
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }
}

fn parse_sip(scheme: Scheme, rest: &str) -> Result<Uri, SyntaxError> {
    // No character after the userinfo may be an unescaped '@', so the first '@' ends it.
    let (userinfo, hostpart) = match rest.find('@') {
        Some(i) => (rest.get(..i), rest.get(i + 1..).unwrap_or("")),
        None => (None, rest),
    };
    let (mut user, mut password) = (None, None);
    if let Some(ui) = userinfo {
        let (u, p) = match ui.find(':') {
            Some(i) => (ui.get(..i).unwrap_or(""), ui.get(i + 1..)),
            None => (ui, None),
        };
        if u.is_empty() {
            return Err(SyntaxError("empty user in URI"));
        }
        user = Some(unescape(u, UNRESERVED | USER, "bad character in URI user")?);
        if let Some(p) = p {
            password = Some(unescape(p, UNRESERVED | PASSWORD, "bad character in URI password")?);
        }
    }

    // Host ends at ':' (port), ';' (params), '?' (headers); an IPv6 reference at ']'.
    let hb = hostpart.as_bytes();
    let host_end = if hb.first() == Some(&b'[') {
        hostpart.find(']').map(|i| i + 1).ok_or(SyntaxError("bad IPv6 reference"))?
    } else {
        hb.iter().position(|&c| matches!(c, b':' | b';' | b'?')).unwrap_or(hb.len())
    };
    let host = Host::parse(hostpart.get(..host_end).unwrap_or(""))?;
    let mut rest = hostpart.get(host_end..).unwrap_or("");

    let mut port = None;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r.find([';', '?']).unwrap_or(r.len());
        let p = r.get(..end).unwrap_or("");
        port = Some(parse_port(p)?);
        rest = r.get(end..).unwrap_or("");
    }

    let (param_part, header_part) = match rest.find('?') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i + 1..)),
        None => (rest, None),
    };
    let mut params = Vec::new();
    if !param_part.is_empty() {
        let p = param_part.strip_prefix(';').ok_or(SyntaxError("junk after URI host"))?;
        for item in p.split(';') {
            let (n, v) = match item.find('=') {
                Some(i) => (item.get(..i).unwrap_or(""), item.get(i + 1..)),
                None => (item, None),
            };
            if n.is_empty() || v.is_some_and(str::is_empty) {
                return Err(SyntaxError("empty URI parameter"));
            }
            let n = unescape(n, UNRESERVED | PARAM, "bad character in URI parameter")?;
            let v = v.map(|v| unescape(v, UNRESERVED | PARAM, "bad character in URI parameter")).transpose()?;
            params.push((n, v));
        }
    }
    let mut headers = Vec::new();
    if let Some(h) = header_part {
        for item in h.split('&') {
            let i = item.find('=').ok_or(SyntaxError("URI header without '='"))?;
            let (n, v) = (item.get(..i).unwrap_or(""), item.get(i + 1..).unwrap_or(""));
            if n.is_empty() {
                return Err(SyntaxError("empty URI header name"));
            }
            headers.push((
                unescape(n, UNRESERVED | HNV, "bad character in URI header")?,
                unescape(v, UNRESERVED | HNV, "bad character in URI header")?,
            ));
        }
    }
    Ok(Uri { scheme, user, password, host, port, params, headers, opaque: None })
}

pub(crate) fn parse_port(p: &str) -> Result<u16, SyntaxError> {
    scan::parse_u32(p).and_then(|v| u16::try_from(v).ok()).ok_or(SyntaxError("bad port"))
}

impl FromStr for Uri {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(op) = &self.opaque {
            return f.write_str(op);
        }
        if let Some(u) = &self.user {
            write_escaped(f, u, UNRESERVED | USER)?;
            if let Some(p) = &self.password {
                f.write_str(":")?;
                write_escaped(f, p, UNRESERVED | PASSWORD)?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            f.write_str(";")?;
            write_escaped(f, n, UNRESERVED | PARAM)?;
            if let Some(v) = v {
                f.write_str("=")?;
                write_escaped(f, v, UNRESERVED | PARAM)?;
            }
        }
        for (i, (n, v)) in self.headers.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            write_escaped(f, n, UNRESERVED | HNV)?;
            f.write_str("=")?;
            write_escaped(f, v, UNRESERVED | HNV)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic() {
        let u = Uri::parse("sip:alice:secret@example.com:5070;transport=tcp;lr?subject=hi%20there").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.host, Host::Domain("example.com".into()));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers, vec![("subject".into(), "hi there".into())]);
        assert_eq!(u.to_string(), "sip:alice:secret@example.com:5070;transport=tcp;lr?subject=hi%20there");
    }

    #[test]
    fn hosts() {
        assert_eq!(Uri::parse("sip:[2001:db8::1]:5060").unwrap().host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(Uri::parse("sips:192.0.2.1").unwrap().host, Host::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(Uri::parse("sip:[2001:db8::1]:5060").unwrap().to_string(), "sip:[2001:db8::1]:5060");
        for bad in [
            "sip:",
            "sip:user@",
            "sip:-a.com",
            "sip:a-.com",
            "sip:a..com",
            "sip:1.2.3",
            "sip:a.com:",
            "sip:a.com:70000",
            "sip:a.com;",
            "sip:a.com;x=",
            "sip:[::1",
            "sip:a b.com",
            "sip:@a.com",
            "<sip:a.com>",
            "sip:a.com?x",
            "sip:us%4@a.com",
            "sip:a_b.com",
            ":x",
            "1x:y",
            "tel:",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escapes_round_trip() {
        let u = Uri::parse("sip:I%20have%20spaces@example.net;n%61me=v%61lue%25%34%31").unwrap();
        assert_eq!(u.user.as_deref(), Some("I have spaces"));
        assert_eq!(u.param("name"), Some(Some("value%41")));
        assert_eq!(u.to_string(), "sip:I%20have%20spaces@example.net;name=value%2541");
        assert_eq!(Uri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn other_schemes() {
        let u = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Other("tel".into()));
        assert!(!u.is_sip());
        assert_eq!(u.to_string(), "tel:+1-201-555-0123;phone-context=example.com");
        assert!(Uri::parse("soap.beep://192.0.2.103:3002").is_ok());
        assert!(Uri::parse("http://a b").is_err());
    }
}
