//! Byte classes and a bounds-checked cursor shared by the parsers.
//!
//! Everything here works on bytes and slices with `get`, so no input can make it panic.

use std::fmt;

/// RFC 3261 `token` characters.
pub(crate) const TOKEN: u8 = 1;
/// `unreserved` = alphanum / mark.
pub(crate) const UNRESERVED: u8 = 2;
/// `user-unreserved`.
pub(crate) const USER: u8 = 4;
/// Extra characters allowed in `password`.
pub(crate) const PASSWORD: u8 = 8;
/// `param-unreserved`.
pub(crate) const PARAM: u8 = 16;
/// `hnv-unreserved`.
pub(crate) const HNV: u8 = 32;
/// `reserved` (for `uric`).
pub(crate) const RESERVED: u8 = 64;

static CLASS: [u8; 256] = build_classes();

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut f = 0;
        if c.is_ascii_alphanumeric() {
            f |= TOKEN | UNRESERVED;
        }
        if matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~') {
            f |= TOKEN;
        }
        if matches!(c, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')') {
            f |= UNRESERVED;
        }
        if matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/') {
            f |= USER;
        }
        if matches!(c, b'&' | b'=' | b'+' | b'$' | b',') {
            f |= PASSWORD;
        }
        if matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            f |= PARAM;
        }
        if matches!(c, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$') {
            f |= HNV;
        }
        if matches!(c, b';' | b'/' | b'?' | b':' | b'@' | b'&' | b'=' | b'+' | b'$' | b',') {
            f |= RESERVED;
        }
        t[i] = f;
        i += 1;
    }
    t
}

#[inline]
pub(crate) fn is(c: u8, class: u8) -> bool {
    CLASS[c as usize] & class != 0
}

#[inline]
pub(crate) fn is_token_char(c: u8) -> bool {
    is(c, TOKEN)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

#[inline]
pub(crate) fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

pub(crate) fn trim_ws(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Syntax error with a static description (no allocation on the error path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub &'static str);

/// Checks `s` against `allowed` chars plus `%HH` escapes and returns the decoded text.
/// Decoded bytes must be UTF-8, since the fields are `String`s.
pub(crate) fn unescape(s: &str, allowed: u8, what: &'static str) -> Result<String, SyntaxError> {
    let b = s.as_bytes();
    if !b.contains(&b'%') {
        return if b.iter().all(|&c| is(c, allowed)) { Ok(s.to_owned()) } else { Err(SyntaxError(what)) };
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_val);
            let lo = b.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(SyntaxError("bad %-escape in URI")),
            }
            i += 3;
        } else if is(c, allowed) {
            out.push(c);
            i += 1;
        } else {
            return Err(SyntaxError(what));
        }
    }
    String::from_utf8(out).map_err(|_| SyntaxError("%-escaped URI text is not UTF-8"))
}

/// Checks `s` against `allowed` chars plus well-formed `%HH` escapes, without decoding.
pub(crate) fn check_escaped(s: &str, allowed: u8) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if b.get(i + 1).copied().and_then(hex_val).is_none() || b.get(i + 2).copied().and_then(hex_val).is_none() {
                return false;
            }
            i += 3;
        } else if is(c, allowed) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Writes `s`, %-escaping every byte outside `allowed`.
pub(crate) fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str, allowed: u8) -> fmt::Result {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !is(c, allowed) {
            if let Some(run) = s.get(start..i) {
                f.write_str(run)?;
            }
            write!(f, "%{c:02X}")?;
            start = i + 1;
        }
    }
    if let Some(run) = s.get(start..) {
        f.write_str(run)?;
    }
    Ok(())
}

/// Writes `s` as a SIP quoted-string, escaping `"` and `\` and control characters;
/// CR and LF cannot be carried in a quoted-string and become spaces.
pub(crate) fn write_quoted(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    for ch in s.chars() {
        match ch {
            '\r' | '\n' => out.write_char(' ')?,
            '"' | '\\' => {
                out.write_char('\\')?;
                out.write_char(ch)?;
            }
            c if ((c as u32) < 0x20 && c != '\t') || c == '\x7f' => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// Cursor over a header value (already unfolded: no CR/LF inside).
pub(crate) struct Cur<'a> {
    pub s: &'a str,
    pub pos: usize,
}

impl<'a> Cur<'a> {
    pub fn new(s: &'a str) -> Self {
        Cur { s, pos: 0 }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// Skips SP/HTAB; returns whether any was skipped.
    pub fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }

    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Takes the longest run of bytes matching `f`; callers only stop on ASCII bytes
    /// or accept all non-ASCII ones, so the slice falls on char boundaries (and `get` guards anyway).
    pub fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let b = self.s.as_bytes();
        while b.get(self.pos).is_some_and(|&c| f(c)) {
            self.pos += 1;
        }
        match self.s.get(start..self.pos) {
            Some(t) => t,
            None => {
                self.pos = start;
                ""
            }
        }
    }

    pub fn token(&mut self) -> &'a str {
        self.take_while(is_token_char)
    }

    /// Parses a quoted-string at the cursor (which must be on `"`); returns the raw text
    /// including quotes, and the unescaped content.
    pub fn quoted(&mut self) -> Result<(&'a str, String), SyntaxError> {
        let start = self.pos;
        if !self.eat(b'"') {
            return Err(SyntaxError("expected quoted string"));
        }
        let b = self.s.as_bytes();
        let body = self.pos;
        let mut escaped = false;
        loop {
            let Some(&c) = b.get(self.pos) else {
                return Err(SyntaxError("unterminated quoted string"));
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = b.get(self.pos) else {
                        return Err(SyntaxError("unterminated quoted string"));
                    };
                    // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    if e == b'\r' || e == b'\n' || e >= 0x80 {
                        return Err(SyntaxError("bad escape in quoted string"));
                    }
                    escaped = true;
                    self.pos += 1;
                }
                // qdtext excludes raw control characters other than HTAB.
                c if (c < 0x20 && c != b'\t') || c == 0x7f => {
                    return Err(SyntaxError("control character in quoted string"));
                }
                _ => {}
            }
        }
        let raw = self.s.get(start..self.pos).unwrap_or("");
        // Between two ASCII quotes of a `str`: char boundaries.
        let inner = self.s.get(body..self.pos - 1).unwrap_or("");
        if !escaped {
            // The usual case (nonces, realms, URIs): one copy, no byte-by-byte building.
            return Ok((raw, inner.to_owned()));
        }
        // Checked above: every backslash is followed by an ASCII character.
        let mut text = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.extend(chars.next()),
                c => text.push(c),
            }
        }
        Ok((raw, text))
    }
}

/// Splits a header value on top-level commas (outside quotes and `<...>`), handing `each`
/// the byte range of every item, trimmed of spaces and tabs.
pub(crate) fn split_commas(v: &str, mut each: impl FnMut(std::ops::Range<usize>)) {
    let b = v.as_bytes();
    let mut item = |start: usize, end: usize| {
        let s = b.get(start..end).unwrap_or(b"");
        let lead = s.iter().take_while(|&&c| is_ws(c)).count();
        let trail = s.get(lead..).unwrap_or(b"").iter().rev().take_while(|&&c| is_ws(c)).count();
        each(start + lead..end - trail);
    };
    let (mut in_q, mut esc, mut angle) = (false, false, false);
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if in_q {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_q = false;
            }
            continue;
        }
        match c {
            b'"' => in_q = true,
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => {
                item(start, i);
                start = i + 1;
            }
            _ => {}
        }
    }
    item(start, b.len());
}

/// Generic parameters: `*( SEMI token [ EQUAL ( token / host / quoted-string ) ] )`.
/// Values keep their wire form (quoted strings keep their quotes).
/// `lenient` skips malformed parameters instead of failing (used only to salvage a Via
/// for an error response).
pub(crate) fn parse_params(cur: &mut Cur<'_>, lenient: bool) -> Result<Vec<(String, Option<String>)>, SyntaxError> {
    let mut params = Vec::new();
    loop {
        cur.skip_ws();
        if cur.at_end() {
            return Ok(params);
        }
        if !cur.eat(b';') {
            if lenient {
                return Ok(params);
            }
            return Err(SyntaxError("unexpected character before parameter"));
        }
        match parse_one_param(cur) {
            Ok(p) => params.push(p),
            Err(e) if !lenient => return Err(e),
            Err(_) => {
                // Skip to the next ';'.
                cur.take_while(|c| c != b';');
            }
        }
    }
}

fn parse_one_param(cur: &mut Cur<'_>) -> Result<(String, Option<String>), SyntaxError> {
    cur.skip_ws();
    let name = cur.token();
    if name.is_empty() {
        return Err(SyntaxError("empty parameter name"));
    }
    cur.skip_ws();
    if !cur.eat(b'=') {
        return Ok((name.to_owned(), None));
    }
    cur.skip_ws();
    let value = if cur.peek() == Some(b'"') {
        cur.quoted()?.0
    } else {
        let v = cur.take_while(|c| is_token_char(c) || c == b':' || c == b'[' || c == b']');
        if v.is_empty() {
            return Err(SyntaxError("empty parameter value"));
        }
        v
    };
    Ok((name.to_owned(), Some(value.to_owned())))
}

/// Case-insensitive lookup in a parameter list: `None` if absent, `Some(None)` for a flag.
pub(crate) fn find_param<'p>(params: &'p [(String, Option<String>)], name: &str) -> Option<Option<&'p str>> {
    params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
}

/// Replaces (or appends) a parameter.
pub(crate) fn set_param(params: &mut Vec<(String, Option<String>)>, name: &str, value: Option<&str>) {
    let value = value.map(str::to_owned);
    match params.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some(p) => p.1 = value,
        None => params.push((name.to_owned(), value)),
    }
}

pub(crate) fn write_params(f: &mut fmt::Formatter<'_>, params: &[(String, Option<String>)]) -> fmt::Result {
    for (n, v) in params {
        match v {
            Some(v) => write!(f, ";{n}={v}")?,
            None => write!(f, ";{n}")?,
        }
    }
    Ok(())
}

/// Parses `1*DIGIT` into a u32 (None on empty, non-digit or overflow).
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: u32 = 0;
    for c in s.bytes() {
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> Result<(&str, String, usize), SyntaxError> {
        let mut cur = Cur::new(s);
        let (raw, text) = cur.quoted()?;
        Ok((raw, text, cur.pos))
    }

    #[test]
    fn quoted_strings_with_and_without_escapes() {
        assert_eq!(quoted(r#""abc" rest"#), Ok((r#""abc""#, "abc".to_string(), 5)));
        assert_eq!(quoted(r#""""#), Ok((r#""""#, String::new(), 2)));
        assert_eq!(quoted(r#""a\"b\\c" x"#), Ok((r#""a\"b\\c""#, r#"a"b\c"#.to_string(), 9)));
        assert_eq!(quoted("\"caf\u{e9} \\x\""), Ok(("\"caf\u{e9} \\x\"", "caf\u{e9} x".to_string(), 10)));
        assert_eq!(quoted("\"tab\there\""), Ok(("\"tab\there\"", "tab\there".to_string(), 10)));
        for bad in ["abc", "\"open", "\"ends in \\", "\"ctl \u{1} \"", "\"esc \\\u{e9}\"", "\"esc \\\r\""] {
            assert!(quoted(bad).is_err(), "{bad:?}");
        }
    }
}
