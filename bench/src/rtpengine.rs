//! rtpengine's `ng` control protocol, as the media CPU benchmark drives it: one UDP datagram
//! `<cookie> <bencoded dictionary>` per request, the reply `<cookie> <bencoded dictionary>`
//! with `result` and, for `offer`/`answer`, the rewritten `sdp`.
//!
//! The bencode here is the few lines the protocol needs (byte strings, integers, lists,
//! dictionaries): smaller than a dependency, and the bench only talks to one local daemon.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A bencoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Value>),
    /// Keys sorted, as bencode requires (a BTreeMap keeps them so).
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// One value from the start of `input`, and the rest. Malformed input is an error, never
    /// a panic (it comes from the network).
    pub fn decode(input: &[u8]) -> Result<(Value, &[u8]), String> {
        Self::decode_depth(input, 0)
    }

    fn decode_depth(input: &[u8], depth: usize) -> Result<(Value, &[u8]), String> {
        if depth > 32 {
            return Err("bencode nested too deeply".into());
        }
        match input.first() {
            Some(b'i') => {
                let end = input.iter().position(|&c| c == b'e').ok_or("unterminated integer")?;
                let n = std::str::from_utf8(&input[1..end]).ok().and_then(|s| s.parse().ok()).ok_or("malformed integer")?;
                Ok((Value::Int(n), &input[end + 1..]))
            }
            Some(b'l') => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                loop {
                    if let Some(r) = rest.strip_prefix(b"e") {
                        return Ok((Value::List(items), r));
                    }
                    let (v, r) = Self::decode_depth(rest, depth + 1)?;
                    items.push(v);
                    rest = r;
                }
            }
            Some(b'd') => {
                let mut rest = &input[1..];
                let mut map = BTreeMap::new();
                loop {
                    if let Some(r) = rest.strip_prefix(b"e") {
                        return Ok((Value::Dict(map), r));
                    }
                    let (k, r) = Self::decode_depth(rest, depth + 1)?;
                    let Value::Bytes(k) = k else { return Err("dictionary key is not a string".into()) };
                    let (v, r) = Self::decode_depth(r, depth + 1)?;
                    map.insert(k, v);
                    rest = r;
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let colon = input.iter().position(|&c| c == b':').ok_or("string without ':'")?;
                let len: usize =
                    std::str::from_utf8(&input[..colon]).ok().and_then(|s| s.parse().ok()).ok_or("malformed string length")?;
                let end = (colon + 1).checked_add(len).filter(|&e| e <= input.len()).ok_or("string longer than the input")?;
                Ok((Value::Bytes(input[colon + 1..end].to_vec()), &input[end..]))
            }
            _ => Err("not a bencode value".into()),
        }
    }

    /// A dictionary entry as text.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self {
            Value::Dict(d) => match d.get(key.as_bytes()) {
                Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Build a dictionary from (key, value) pairs.
pub fn dict(entries: &[(&str, Value)]) -> Value {
    Value::Dict(entries.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect())
}

/// A blocking `ng` client (the bench sets calls up between measurements, never during one).
pub struct Ng {
    sock: UdpSocket,
    server: SocketAddr,
    seq: u64,
}

impl Ng {
    pub fn connect(server: SocketAddr) -> std::io::Result<Ng> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Ng { sock, server, seq: 0 })
    }

    /// Send `msg`, wait for the reply with the same cookie (resent up to 6 times).
    pub fn request(&mut self, msg: &Value) -> Result<Value, String> {
        self.seq += 1;
        let cookie = format!("{}_{}", std::process::id(), self.seq);
        let mut out = format!("{cookie} ").into_bytes();
        msg.encode(&mut out);
        let mut buf = vec![0u8; 65536];
        for _ in 0..6 {
            self.sock.send_to(&out, self.server).map_err(|e| e.to_string())?;
            loop {
                let n = match self.sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                    Err(e) => return Err(e.to_string()),
                };
                let Some(body) = buf[..n].strip_prefix(cookie.as_bytes()).and_then(|r| r.strip_prefix(b" ")) else {
                    continue; // a late reply to an earlier request
                };
                let (v, _) = Value::decode(body)?;
                return match v.get_str("result").as_deref() {
                    Some("ok") => Ok(v),
                    r => Err(format!("rtpengine: result {r:?}: {}", v.get_str("error-reason").unwrap_or_default())),
                };
            }
        }
        Err(format!("rtpengine at {} does not answer", self.server))
    }

    /// `offer` for a call: the SDP rtpengine gives to the callee.
    pub fn offer(&mut self, call_id: &str, from_tag: &str, sdp: &str, flags: &[(&str, Value)]) -> Result<String, String> {
        let mut e = vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
            ("sdp", Value::str(sdp)),
        ];
        e.extend(flags.iter().cloned());
        self.request(&dict(&e))?.get_str("sdp").ok_or_else(|| "rtpengine: offer reply without sdp".into())
    }

    /// `answer`: the SDP rtpengine gives back to the caller.
    pub fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &str,
        flags: &[(&str, Value)],
    ) -> Result<String, String> {
        let mut e = vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
            ("to-tag", Value::str(to_tag)),
            ("sdp", Value::str(sdp)),
        ];
        e.extend(flags.iter().cloned());
        self.request(&dict(&e))?.get_str("sdp").ok_or_else(|| "rtpengine: answer reply without sdp".into())
    }

    pub fn delete(&mut self, call_id: &str, from_tag: &str) -> Result<(), String> {
        self.request(&dict(&[
            ("command", Value::str("delete")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
        ]))
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trips_an_ng_offer() {
        let v = dict(&[
            ("command", Value::str("offer")),
            ("call-id", Value::str("c1")),
            ("flags", Value::List(vec![Value::str("trust-address")])),
            ("n", Value::Int(-3)),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        // Keys in byte order, as bencode wants them.
        assert_eq!(out, b"d7:call-id2:c17:command5:offer5:flagsl13:trust-addresse1:ni-3ee".to_vec());
        let (back, rest) = Value::decode(&out).unwrap();
        assert!(rest.is_empty());
        assert_eq!(back, v);
        assert_eq!(back.get_str("command").as_deref(), Some("offer"));
    }

    #[test]
    fn malformed_bencode_is_an_error_not_a_panic() {
        for bad in
            [&b""[..], b"i12", b"5:abc", b"d3:abc", b"l", b"x", b"99999999999999999999:a", b"18446744073709551615:a", b"di1e1:ae"]
        {
            assert!(Value::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = vec![b'l'; 1000];
        assert!(Value::decode(&deep).is_err());
    }
}
