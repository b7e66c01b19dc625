//! Request methods and CSeq.

use std::fmt;
use std::str::FromStr;

use crate::scan::{self, Cur, SyntaxError};

/// SIP method. Methods are case-sensitive tokens (RFC 3261 §7.1): `invite` is an
/// extension method, not INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Message,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Publish,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Message => "MESSAGE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl FromStr for Method {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "MESSAGE" => Method::Message,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "PUBLISH" => Method::Publish,
            s if scan::is_token(s) => Method::Other(s.to_owned()),
            _ => return Err(SyntaxError("bad method")),
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn new(seq: u32, method: Method) -> CSeq {
        CSeq { seq, method }
    }

    /// `1*DIGIT LWS Method`; the number must fit 32 bits (RFC 3261 §8.1.1.5).
    pub fn parse(s: &str) -> Result<CSeq, SyntaxError> {
        let mut cur = Cur::new(s);
        cur.skip_ws();
        let digits = cur.take_while(|c| c.is_ascii_digit());
        let seq = scan::parse_u32(digits).ok_or(SyntaxError("bad CSeq number"))?;
        if !cur.skip_ws() {
            return Err(SyntaxError("bad CSeq"));
        }
        let method = cur.token().parse()?;
        cur.skip_ws();
        if !cur.at_end() {
            return Err(SyntaxError("junk after CSeq method"));
        }
        Ok(CSeq { seq, method })
    }
}

impl FromStr for CSeq {
    type Err = SyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CSeq::parse(s)
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!("INVITE".parse::<Method>().unwrap(), Method::Invite);
        assert_eq!("invite".parse::<Method>().unwrap(), Method::Other("invite".into()));
        assert!("IN VITE".parse::<Method>().is_err());
        assert!("".parse::<Method>().is_err());
    }

    #[test]
    fn cseq() {
        assert_eq!(CSeq::parse("0009  INVITE").unwrap(), CSeq::new(9, Method::Invite));
        assert_eq!(CSeq::parse("4294967295 BYE").unwrap().seq, u32::MAX);
        for bad in ["4294967296 BYE", "1", "x INVITE", "1INVITE", "1 INVITE x", "-1 INVITE"] {
            assert!(CSeq::parse(bad).is_err(), "{bad}");
        }
    }
}
