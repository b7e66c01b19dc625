//! Via header values (RFC 3261 §20.42), RFC 3581 rport.

use std::fmt;
use std::str::FromStr;

use super::uri::{Host, parse_port};
use crate::scan::{self, Cur, SyntaxError};

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Protocol name and version, normally `SIP/2.0` (any token is accepted so a
    /// bad version is reported by the start line check, as 505).
    pub protocol: String,
    /// Transport, uppercased (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, `WSS`, ...).
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    /// Parameters in wire form (quoted values keep their quotes).
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// `SIP/2.0/{transport} {host}[:{port}];branch={branch}`
    pub fn new(transport: &str, host: Host, port: Option<u16>, branch: &str) -> Via {
        Via {
            protocol: "SIP/2.0".to_owned(),
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: vec![("branch".to_owned(), Some(branch.to_owned()))],
        }
    }

    pub fn parse(s: &str) -> Result<Via, SyntaxError> {
        parse_via(s, false)
    }

    /// Best-effort parse that drops malformed parameters; used to build error responses.
    pub(crate) fn parse_lenient(s: &str) -> Result<Via, SyntaxError> {
        parse_via(s, true)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        scan::find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        scan::set_param(&mut self.params, name, value);
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// Has an RFC 3261 branch (magic cookie `z9hG4bK`)?
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    pub fn received(&self) -> Option<&str> {
        self.param("received").flatten()
    }

    /// `None` if absent, `Some(None)` for a bare `;rport` (request asks for it) or an
    /// unparsable value, `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport").map(|v| v.and_then(|p| parse_port(p).ok()))
    }

    /// RFC 3261 §18.2.1 / RFC 3581: record the packet's source address.
    pub fn set_received(&mut self, addr: &str) {
        self.set_param("received", Some(addr));
    }

    /// RFC 3581: fill in the source port (replaces a bare `;rport`).
    pub fn set_rport(&mut self, port: u16) {
        let p = port.to_string();
        self.set_param("rport", Some(&p));
    }
}

fn parse_via(s: &str, lenient: bool) -> Result<Via, SyntaxError> {
    let mut cur = Cur::new(s);
    cur.skip_ws();
    let name = cur.token();
    cur.skip_ws();
    let slash1 = cur.eat(b'/');
    cur.skip_ws();
    let version = cur.token();
    cur.skip_ws();
    let slash2 = cur.eat(b'/');
    cur.skip_ws();
    let transport = cur.token();
    if name.is_empty() || version.is_empty() || transport.is_empty() || !slash1 || !slash2 {
        return Err(SyntaxError("bad Via sent-protocol"));
    }
    if !cur.skip_ws() {
        return Err(SyntaxError("bad Via sent-by"));
    }
    let host_text = if cur.peek() == Some(b'[') {
        let start = cur.pos;
        cur.take_while(|c| c != b']');
        if !cur.eat(b']') {
            return Err(SyntaxError("bad IPv6 reference in Via"));
        }
        s.get(start..cur.pos).unwrap_or("")
    } else {
        cur.take_while(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
    };
    let host = Host::parse(host_text)?;
    cur.skip_ws();
    let mut port = None;
    if cur.eat(b':') {
        cur.skip_ws();
        port = Some(parse_port(cur.take_while(|c| c.is_ascii_digit()))?);
    }
    let params = scan::parse_params(&mut cur, lenient)?;
    let mut protocol = String::with_capacity(name.len() + version.len() + 1);
    protocol.push_str(&name.to_ascii_uppercase());
    protocol.push('/');
    protocol.push_str(version);
    Ok(Via { protocol, transport: transport.to_ascii_uppercase(), host, port, params })
}

impl FromStr for Via {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Via::parse(s)
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        scan::write_params(f, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let v = Via::parse("SIP  / 2.0  / tcp     spindle.example.com   ;  branch  =   z9hG4bK9ikj8 ;rport").unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.host, Host::Domain("spindle.example.com".into()));
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.to_string(), "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8;rport");

        let mut v = Via::parse("SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKx;received=2001:db8::9").unwrap();
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.received(), Some("2001:db8::9"));
        v.set_rport(5999);
        assert_eq!(v.rport(), Some(Some(5999)));
        assert_eq!(v.to_string(), "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKx;received=2001:db8::9;rport=5999");
        for bad in ["SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDPhost", "SIP/2.0/UDP 192.0.2.15;;", "SIP/2.0/UDP h:x", ""] {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
        let salvaged = Via::parse_lenient("SIP/2.0/UDP 192.0.2.15;;branch=z9hG4bK1;=;").unwrap();
        assert_eq!(salvaged.to_string(), "SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK1");
    }
}
