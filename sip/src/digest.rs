//! Server side of SIP digest authentication (RFC 2617, RFC 7616, RFC 8760):
//! stateless nonces, challenges, Authorization parsing and response checking.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::scan::{self, Cur};

/// Digest hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// Name as written in `algorithm=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Hex digest of `parts` joined with `:`, hashed piece by piece (no joined copy).
    fn hex_joined(self, parts: &[&[u8]]) -> String {
        fn feed<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Md5 => feed(Md5::new(), parts),
            Algorithm::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(DigestError::UnsupportedAlgorithm(s.to_owned()))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not a `Digest` credential (e.g. RFC 4475 regaut01's unknown scheme): answer 401.
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("malformed digest credentials: {0}")]
    Malformed(&'static str),
    #[error("digest parameter {0} missing")]
    Missing(&'static str),
    #[error("digest parameter {0} given twice")]
    Duplicate(String),
    /// `MD5-sess`, `SHA-512-256`, ...: not offered, so not accepted.
    #[error("unsupported digest algorithm {0}")]
    UnsupportedAlgorithm(String),
}

/// Result of [`NonceSource::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours but too old: challenge again with `stale=true` (the client retries silently).
    Stale,
    /// Not issued by us (or tampered with): plain 401/403.
    Invalid,
}

/// Issues and checks nonces without server state: each nonce carries its issue time
/// and a counter, authenticated with HMAC-SHA256 under a secret, so any gateway
/// sharing the secret accepts it and a restart loses nothing.
pub struct NonceSource {
    /// HMAC-SHA256 keyed once: its inner and outer pads are already hashed, so a nonce costs
    /// two SHA-256 blocks instead of four.
    mac: Hmac<Sha256>,
    counter: AtomicU64,
}

/// Issued-in-the-future tolerance, for clock steps between issue and check.
const FUTURE_SKEW_SECS: u64 = 60;

impl NonceSource {
    pub fn new(secret: [u8; 32]) -> NonceSource {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("HMAC takes a key of any length");
        NonceSource { mac, counter: AtomicU64::new(0) }
    }

    /// HMAC-SHA256 of `msg` under the secret (a copy of the keyed state, so no re-keying).
    fn mac_of(&self, msg: &[u8]) -> [u8; 32] {
        self.mac.clone().chain_update(msg).finalize().into_bytes().into()
    }

    /// A fresh nonce: 64 hex chars = issue time (8 bytes), counter (8), MAC (16).
    pub fn issue(&self, now_unix_secs: u64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut data = [0u8; 16];
        data[..8].copy_from_slice(&now_unix_secs.to_be_bytes());
        data[8..].copy_from_slice(&n.to_be_bytes());
        let mac = self.mac_of(&data);
        let mut out = hex::encode(data);
        out.push_str(&hex::encode(&mac[..16]));
        out
    }

    /// Checks a nonce from an Authorization header against the current time.
    pub fn check(&self, nonce: &str, now_unix_secs: u64, max_age_secs: u64) -> NonceCheck {
        let mut raw = [0u8; 32];
        if nonce.len() != 64 || hex::decode_to_slice(nonce, &mut raw).is_err() {
            return NonceCheck::Invalid;
        }
        let (data, mac) = raw.split_at(16);
        let expected = self.mac_of(data);
        if !ct_eq(&expected[..16], mac) {
            return NonceCheck::Invalid;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&data[..8]);
        let issued = u64::from_be_bytes(ts);
        if issued > now_unix_secs.saturating_add(FUTURE_SKEW_SECS) || now_unix_secs.saturating_sub(issued) > max_age_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// Which nonce-counts of each nonce were already accepted, so a captured `Authorization` cannot
/// be replayed (RFC 7616 §3.3 nc): a qop-less nonce is good once; with `qop=auth`, each `nc` once,
/// in any order within a window of 64 below the highest seen (clients such as baresip reuse a
/// nonce with increasing nc). Entries go when their nonce ages out; at most `cap` are kept (the
/// oldest goes first), and only successful authentications add one.
#[derive(Debug)]
pub struct NonceUses {
    map: std::collections::HashMap<String, NonceUse>,
    /// (expiry, nonce) in insertion order: expiries only grow.
    order: std::collections::VecDeque<(u64, String)>,
    cap: usize,
}

#[derive(Debug, Default)]
struct NonceUse {
    /// Highest nc accepted; 0 for a qop-less use.
    highest: u64,
    /// Bit i: nc = highest - 1 - i was accepted.
    window: u64,
    /// Used without qop (no nc): the nonce is spent.
    no_qop: bool,
}

/// Why a credential is refused by [`NonceUses::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// This (nonce, nc) — or this qop-less nonce — was already accepted.
    Replayed,
    /// nc is not 8 hex digits, or 0, or too far below the highest seen.
    BadCount,
}

impl NonceUses {
    pub fn new(cap: usize) -> NonceUses {
        NonceUses { map: Default::default(), order: Default::default(), cap: cap.max(1) }
    }

    fn parse_nc(nc: Option<&str>) -> Result<Option<u64>, Reuse> {
        match nc {
            None => Ok(None),
            Some(s) if s.len() == 8 => match u64::from_str_radix(s, 16) {
                Ok(0) | Err(_) => Err(Reuse::BadCount),
                Ok(n) => Ok(Some(n)),
            },
            Some(_) => Err(Reuse::BadCount),
        }
    }

    /// May credentials with this `nonce` and `nc` (None: no qop) be accepted?
    pub fn check(&self, nonce: &str, nc: Option<&str>) -> Result<(), Reuse> {
        let n = Self::parse_nc(nc)?;
        let Some(u) = self.map.get(nonce) else { return Ok(()) };
        match n {
            _ if u.no_qop => Err(Reuse::Replayed),
            None => Err(Reuse::Replayed),
            Some(n) if n > u.highest => Ok(()),
            Some(n) if n == u.highest => Err(Reuse::Replayed),
            Some(n) => {
                let d = u.highest - n;
                if d > 64 {
                    Err(Reuse::BadCount)
                } else if u.window & (1 << (d - 1)) != 0 {
                    Err(Reuse::Replayed)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Remember that credentials with `nonce`/`nc` were accepted at `now_unix_secs`; the entry
    /// is kept until `expires_unix_secs` (when the nonce is too old to be accepted anyway).
    pub fn record(&mut self, nonce: &str, nc: Option<&str>, now_unix_secs: u64, expires_unix_secs: u64) {
        while self.order.front().is_some_and(|(t, _)| *t <= now_unix_secs) {
            let (_, n) = self.order.pop_front().expect("just seen");
            self.map.remove(&n);
        }
        let Ok(n) = Self::parse_nc(nc) else { return };
        if !self.map.contains_key(nonce) {
            while self.map.len() >= self.cap {
                let Some((_, old)) = self.order.pop_front() else { break };
                self.map.remove(&old);
            }
            self.order.push_back((expires_unix_secs, nonce.to_string()));
        }
        let u = self.map.entry(nonce.to_string()).or_default();
        match n {
            None => u.no_qop = true,
            Some(n) if n > u.highest => {
                let shift = n - u.highest;
                u.window = if shift > 64 { 0 } else { (u.window << (shift - 1)) << 1 };
                if u.highest > 0 && shift <= 64 {
                    u.window |= 1 << (shift - 1);
                }
                u.highest = n;
            }
            Some(n) => {
                let d = u.highest - n;
                if (1..=64).contains(&d) {
                    u.window |= 1 << (d - 1);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceSource { .. }")
    }
}

/// Compares without an early exit, so timing reveals at most the length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    ct_eq_by(a, b, |y| y)
}

/// Byte-wise comparison of `a` with `b` mapped by `map`, without an early exit.
fn ct_eq_by(a: &[u8], b: &[u8], map: impl Fn(u8) -> u8) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ map(*y))) == 0
}

/// WWW-Authenticate (or Proxy-Authenticate) header value offering qop=auth.
/// RFC 8760: send one challenge per algorithm, SHA-256 first, to let clients pick.
pub fn www_authenticate(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    let mut s = String::with_capacity(128);
    s.push_str("Digest realm=");
    let _ = scan::write_quoted(&mut s, realm);
    s.push_str(", nonce=");
    let _ = scan::write_quoted(&mut s, nonce);
    let _ = write!(s, ", algorithm={}, qop=\"auth\"", algorithm.as_str());
    if stale {
        s.push_str(", stale=true");
    }
    s
}

/// Parsed Digest credentials from Authorization / Proxy-Authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// `MD5` when absent (RFC 2617).
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

/// Parses `Digest k=v, k="v", ...`: names case-insensitive, spacing free, quoted or
/// bare values; unknown parameters ignored, repeated ones rejected.
pub fn parse_authorization(value: &str) -> Result<Credentials, DigestError> {
    let mut cur = Cur::new(value);
    cur.skip_ws();
    if !cur.token().eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    let (mut username, mut realm, mut nonce, mut uri, mut response) = (None, None, None, None, None);
    let (mut algorithm, mut cnonce, mut nc, mut qop, mut opaque) = (None, None, None, None, None);
    loop {
        while cur.peek().is_some_and(|c| scan::is_ws(c) || c == b',') {
            cur.pos += 1;
        }
        if cur.at_end() {
            break;
        }
        let name = cur.token();
        if name.is_empty() {
            return Err(DigestError::Malformed("bad parameter name"));
        }
        cur.skip_ws();
        if !cur.eat(b'=') {
            return Err(DigestError::Malformed("parameter without '='"));
        }
        cur.skip_ws();
        let v = if cur.peek() == Some(b'"') {
            cur.quoted().map_err(|_| DigestError::Malformed("bad quoted string"))?.1
        } else {
            cur.take_while(|c| c != b',' && !scan::is_ws(c)).to_owned()
        };
        cur.skip_ws();
        if !cur.at_end() && cur.peek() != Some(b',') {
            return Err(DigestError::Malformed("junk after parameter"));
        }
        let slot = match name.to_ascii_lowercase().as_str() {
            "username" => &mut username,
            "realm" => &mut realm,
            "nonce" => &mut nonce,
            "uri" => &mut uri,
            "response" => &mut response,
            "algorithm" => &mut algorithm,
            "cnonce" => &mut cnonce,
            "nc" => &mut nc,
            "qop" => &mut qop,
            "opaque" => &mut opaque,
            _ => continue,
        };
        if slot.is_some() {
            return Err(DigestError::Duplicate(name.to_owned()));
        }
        *slot = Some(v);
    }
    let algorithm = match algorithm {
        Some(a) => a.parse()?,
        None => Algorithm::Md5,
    };
    Ok(Credentials {
        username: username.ok_or(DigestError::Missing("username"))?,
        realm: realm.ok_or(DigestError::Missing("realm"))?,
        nonce: nonce.ok_or(DigestError::Missing("nonce"))?,
        uri: uri.ok_or(DigestError::Missing("uri"))?,
        response: response.ok_or(DigestError::Missing("response"))?,
        algorithm,
        cnonce,
        nc,
        qop,
        opaque,
    })
}

/// `H(username:realm:password)` in lowercase hex: what a user store keeps instead of
/// the password (one per algorithm offered).
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hex_joined(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// Checks the `response` of `creds` for qop=auth, or for no qop (RFC 2069 clients).
/// `ha1_hex` must be for `creds.algorithm`. The caller still checks the nonce
/// ([`NonceSource::check`]), the realm and that `creds.uri` matches the Request-URI.
pub fn verify(creds: &Credentials, method: &str, ha1_hex: &str) -> bool {
    let alg = creds.algorithm;
    let ha1 = ha1_hex.to_ascii_lowercase();
    let ha2 = alg.hex_joined(&[method.as_bytes(), creds.uri.as_bytes()]);
    let expected = match creds.qop.as_deref() {
        None => alg.hex_joined(&[ha1.as_bytes(), creds.nonce.as_bytes(), ha2.as_bytes()]),
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (&creds.nc, &creds.cnonce) else {
                return false;
            };
            if nc.len() != 8 || !nc.bytes().all(|c| c.is_ascii_hexdigit()) || !cnonce.bytes().all(|c| c != b'"') {
                return false;
            }
            let parts = [ha1.as_bytes(), creds.nonce.as_bytes(), nc.as_bytes(), cnonce.as_bytes(), q.as_bytes(), ha2.as_bytes()];
            alg.hex_joined(&parts)
        }
        // auth-int and unknown qop values are not offered.
        Some(_) => return false,
    };
    ct_eq_lowercase(expected.as_bytes(), creds.response.as_bytes())
}

/// [`ct_eq`] of `lower` with `any` lowercased, without a lowercased copy.
fn ct_eq_lowercase(lower: &[u8], any: &[u8]) -> bool {
    ct_eq_by(lower, any, |y| y.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_mufasa() {
        let creds = parse_authorization(
            "Digest username=\"Mufasa\",\r realm=\"testrealm@host.com\",
                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",
                 uri=\"/dir/index.html\",
                 qop=auth,
                 nc=00000001,
                 cnonce=\"0a4f113b\",
                 response=\"6629fae49393a05397450978507c4ef1\",
                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
                .replace(['\r', '\n'], " ")
                .as_str(),
        )
        .unwrap();
        assert_eq!(creds.username, "Mufasa");
        assert_eq!(creds.nc.as_deref(), Some("00000001"));
        assert_eq!(creds.algorithm, Algorithm::Md5);
        let h = ha1(Algorithm::Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        assert!(verify(&creds, "GET", &h));
        assert!(verify(&creds, "GET", &h.to_ascii_uppercase()));
        assert!(!verify(&creds, "POST", &h));
        let wrong = ha1(Algorithm::Md5, "Mufasa", "testrealm@host.com", "circle of life");
        assert!(!verify(&creds, "GET", &wrong));
    }

    #[test]
    fn rfc7616_sha256() {
        let creds = parse_authorization(
            r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        let h = ha1(Algorithm::Sha256, "Mufasa", "http-auth@example.org", "Circle of Life");
        assert!(verify(&creds, "GET", &h));
        assert!(!verify(&creds, "GET", &ha1(Algorithm::Sha256, "Mufasa", "http-auth@example.org", "Circle Of Life")));
        // The same exchange with MD5 (RFC 7616 §3.9.1).
        let md5 = Credentials { algorithm: Algorithm::Md5, response: "8ca523f5e9506fed4657c9700eebdbec".into(), ..creds };
        assert!(verify(&md5, "GET", &ha1(Algorithm::Md5, "Mufasa", "http-auth@example.org", "Circle of Life")));
    }

    #[test]
    fn rfc2069_no_qop() {
        let h = ha1(Algorithm::Md5, "bob", "example.com", "pw");
        let ha2 = Algorithm::Md5.hex_joined(&[b"REGISTER:sip:example.com"]);
        let resp = Algorithm::Md5.hex_joined(&[format!("{h}:abc:{ha2}").as_bytes()]);
        let v = format!("digest USERNAME = bob ,realm=\"example.com\",nonce=abc,uri=\"sip:example.com\",response={resp}");
        let c = parse_authorization(&v).unwrap();
        assert!(verify(&c, "REGISTER", &h));
        let auth_int = Credentials { qop: Some("auth-int".into()), ..c.clone() };
        assert!(!verify(&auth_int, "REGISTER", &h));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_authorization("NoOneKnowsThisScheme opaque-data=here"), Err(DigestError::NotDigest));
        assert_eq!(parse_authorization("Basic abc"), Err(DigestError::NotDigest));
        assert_eq!(parse_authorization("Digest realm=\"a\""), Err(DigestError::Missing("username")));
        assert!(matches!(
            parse_authorization("Digest username=a, username=b, realm=r, nonce=n, uri=u, response=x"),
            Err(DigestError::Duplicate(_))
        ));
        assert!(matches!(
            parse_authorization("Digest username=a, realm=r, nonce=n, uri=u, response=x, algorithm=MD5-sess"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(parse_authorization("Digest username=\"a").is_err());
        assert!(parse_authorization("Digest username a").is_err());
        assert!(parse_authorization("Digest username=a b").is_err());
    }

    #[test]
    fn nonces() {
        let src = NonceSource::new([7; 32]);
        let n = src.issue(1_000_000);
        assert_eq!(n.len(), 64);
        assert_ne!(n, src.issue(1_000_000));
        assert_eq!(src.check(&n, 1_000_000, 300), NonceCheck::Valid);
        assert_eq!(src.check(&n, 1_000_300, 300), NonceCheck::Valid);
        assert_eq!(src.check(&n, 1_000_301, 300), NonceCheck::Stale);
        assert_eq!(src.check(&n, 999_000, 300), NonceCheck::Stale);
        // Tampered: a different timestamp with the old MAC.
        let mut t = n.clone().into_bytes();
        t[15] = if t[15] == b'0' { b'1' } else { b'0' };
        assert_eq!(src.check(std::str::from_utf8(&t).unwrap(), 1_000_000, 300), NonceCheck::Invalid);
        assert_eq!(NonceSource::new([8; 32]).check(&n, 1_000_000, 300), NonceCheck::Invalid);
        assert_eq!(src.check("", 0, 300), NonceCheck::Invalid);
        assert_eq!(src.check(&"zz".repeat(32), 0, 300), NonceCheck::Invalid);
        assert_eq!(src.check("é".repeat(32).as_str(), 0, 300), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_counts_are_single_use() {
        let mut u = NonceUses::new(100);
        let nc = |n: u32| format!("{n:08x}");
        // baresip: the same nonce with increasing nc.
        for n in 1..=5 {
            assert_eq!(u.check("a", Some(&nc(n))), Ok(()));
            u.record("a", Some(&nc(n)), 1000, 1300);
            assert_eq!(u.check("a", Some(&nc(n))), Err(Reuse::Replayed), "nc {n} replayed");
        }
        // Out of order within the window: once each.
        u.record("a", Some(&nc(9)), 1000, 1300);
        assert_eq!(u.check("a", Some(&nc(7))), Ok(()));
        u.record("a", Some(&nc(7)), 1000, 1300);
        assert_eq!(u.check("a", Some(&nc(7))), Err(Reuse::Replayed));
        assert_eq!(u.check("a", Some(&nc(8))), Ok(()));
        assert_eq!(u.check("a", Some(&nc(5))), Err(Reuse::Replayed));
        u.record("a", Some(&nc(200)), 1000, 1300);
        assert_eq!(u.check("a", Some(&nc(100))), Err(Reuse::BadCount), "far below the highest");
        assert_eq!(u.check("a", Some("0000000g")), Err(Reuse::BadCount));
        assert_eq!(u.check("a", Some("00000000")), Err(Reuse::BadCount));
        assert_eq!(u.check("a", None), Err(Reuse::Replayed), "no qop on a counted nonce");
        // qop-less: once.
        assert_eq!(u.check("b", None), Ok(()));
        u.record("b", None, 1000, 1300);
        assert_eq!(u.check("b", None), Err(Reuse::Replayed));
        assert_eq!(u.check("b", Some(&nc(1))), Err(Reuse::Replayed));
        // Aged out: forgotten (the nonce itself is refused as stale by then).
        u.record("c", None, 1300, 1600);
        assert_eq!(u.len(), 1);
        assert_eq!(u.check("a", Some(&nc(1))), Ok(()));
    }

    #[test]
    fn nonce_uses_are_bounded() {
        let mut u = NonceUses::new(10);
        for i in 0..1000 {
            u.record(&format!("n{i}"), Some("00000001"), 0, 300);
        }
        assert_eq!(u.len(), 10);
        assert_eq!(u.check("n999", Some("00000001")), Err(Reuse::Replayed));
    }

    #[test]
    fn challenge() {
        assert_eq!(
            www_authenticate("example.com", "abc", Algorithm::Sha256, true),
            "Digest realm=\"example.com\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\", stale=true"
        );
        assert_eq!(
            www_authenticate("a\"b", "n", Algorithm::Md5, false),
            "Digest realm=\"a\\\"b\", nonce=\"n\", algorithm=MD5, qop=\"auth\""
        );
    }
}
