//! Field rules. Every string that arrives from the network is checked here before any
//! component looks at it, so the cores can assume well-formed identifiers.

use crate::{CallEvent, ClientMsg, ErrorCode, PROTOCOL_VERSION, ProtocolError, QueryAnswer, SignalPayload};

pub const MAX_NUMBER_LEN: usize = 32;
pub const MAX_CALL_ID_LEN: usize = 64;
pub const MIN_KEY_LEN: usize = 22; // 128 bits in unpadded base64url
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_URL_LEN: usize = 256;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_SWITCH_ID_LEN: usize = 64;
pub const MAX_DIRECT_URLS: usize = 8;
/// Most call ids `switch_auth.calls` may list (200 ids of 64 characters fit in a message); a
/// gateway carrying more sends no list (the cloud then keeps its calls as they are).
pub const MAX_CARRIED_CALLS: usize = 200;
/// A call longer than a year is a bug or a lie.
pub const MAX_CALL_DURATION_MS: u64 = 366 * 24 * 3600 * 1000;
pub const MAX_SDP_LEN: usize = 12 * 1024;
pub const MAX_CANDIDATE_LEN: usize = 512;
pub const MAX_DISPLAY_NAME_LEN: usize = 64;
/// Longest TTL a switch may give a key: 5 minutes.
pub const MAX_KEY_TTL_MS: u64 = 300_000;
/// Longest Web Push endpoint URL accepted (real ones are 150–400 bytes).
pub const MAX_PUSH_ENDPOINT_LEN: usize = 1024;
/// A subscription's `p256dh`: a 65-byte uncompressed P-256 point, in unpadded base64url.
pub const PUSH_P256DH_LEN: usize = 87;
/// A subscription's `auth` secret: 16 bytes, in unpadded base64url.
pub const PUSH_AUTH_LEN: usize = 22;

fn bad(field: &str, why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidField, format!("{field}: {why}"))
}

/// A dialable number / account id: 1–32 of `[A-Za-z0-9+._-]`.
pub fn check_number(field: &str, s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() || s.len() > MAX_NUMBER_LEN {
        return Err(bad(field, format_args!("must be 1–{MAX_NUMBER_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-')) {
        return Err(bad(field, "only letters, digits and + . _ - are allowed"));
    }
    Ok(())
}

/// A call id: 1–64 of `[A-Za-z0-9._-]`.
pub fn check_call_id(s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() || s.len() > MAX_CALL_ID_LEN {
        return Err(bad("call_id", format_args!("must be 1–{MAX_CALL_ID_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(bad("call_id", "only letters, digits and . _ - are allowed"));
    }
    Ok(())
}

/// A switch id: 1–64 of `[A-Za-z0-9._-]`.
pub fn check_switch_id(s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() || s.len() > MAX_SWITCH_ID_LEN {
        return Err(bad("switch_id", format_args!("must be 1–{MAX_SWITCH_ID_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(bad("switch_id", "only letters, digits and . _ - are allowed"));
    }
    Ok(())
}

/// A one-time key: 22–128 characters of unpadded base64url (≥ 128 bits).
pub fn check_key(s: &str) -> Result<(), ProtocolError> {
    if s.len() < MIN_KEY_LEN || s.len() > MAX_KEY_LEN {
        return Err(bad("key", format_args!("must be {MIN_KEY_LEN}–{MAX_KEY_LEN} characters")));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
        return Err(bad("key", "must be unpadded base64url"));
    }
    Ok(())
}

/// A `ws://` or `wss://` address, printable ASCII, ≤ 256 bytes: what an older gateway may still
/// list in `switch_auth`'s `direct_urls` (kept for the directory's view; never handed to a caller).
pub fn check_url(field: &str, s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_URL_LEN {
        return Err(bad(field, format_args!("longer than {MAX_URL_LEN} bytes")));
    }
    let rest = s
        .strip_prefix("wss://")
        .or_else(|| s.strip_prefix("ws://"))
        .ok_or_else(|| bad(field, "must start with ws:// or wss://"))?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(field, "must have a host and no spaces or control characters"));
    }
    Ok(())
}

/// The address of a switch as `connect`, `incoming` (via `direct`), `route` (switch),
/// `query_answer` (accept) and `direct_offer` carry it: the carrying switch's name,
/// `switch:<switch_id>`. It is a name, not a transport address: the caller reaches the switch
/// over WebRTC, with the offer/answer and candidates relayed by the cloud (`direct_signal`),
/// so no message carries a `ws://` address and no gateway listens for callers.
pub fn switch_address(switch_id: &str) -> String {
    format!("{SWITCH_ADDRESS_PREFIX}{switch_id}")
}

/// The scheme-like prefix of [`switch_address`].
pub const SWITCH_ADDRESS_PREFIX: &str = "switch:";

/// A switch address: `switch:` followed by a valid switch id (see [`check_switch_id`]).
pub fn check_switch_address(field: &str, s: &str) -> Result<(), ProtocolError> {
    let id = s.strip_prefix(SWITCH_ADDRESS_PREFIX).ok_or_else(|| {
        bad(field, "must be switch:<switch_id> (callers reach a switch over WebRTC through the cloud, not at a ws:// address)")
    })?;
    check_switch_id(id).map_err(|_| bad(field, "must be switch:<switch_id> with 1–64 of A–Z a–z 0–9 . _ -"))
}

/// Is `host` (as written in a URL's authority, port removed) this machine's loopback name?
pub fn is_loopback_host(host: &str) -> bool {
    let ipv4_loopback = host.starts_with("127.")
        && host.split('.').count() == 4
        && host.split('.').all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ipv4_loopback || host.eq_ignore_ascii_case("localhost") || host == "[::1]"
}

/// The `host[:port]` part of an `http(s)://` URL, and the host without the port.
pub fn url_authority(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    Some((authority, host))
}

/// A Web Push endpoint: an `https://` URL (plain `http://` only to this machine's loopback
/// address, for tests), printable ASCII, no user info, ≤ 1024 bytes.
pub fn check_push_endpoint(s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_PUSH_ENDPOINT_LEN {
        return Err(bad("endpoint", format_args!("longer than {MAX_PUSH_ENDPOINT_LEN} bytes")));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("endpoint", "must be printable ASCII without spaces"));
    }
    let Some((authority, host)) = url_authority(s) else {
        return Err(bad("endpoint", "must be an https:// URL"));
    };
    if host.is_empty() || authority.contains('@') {
        return Err(bad("endpoint", "must name a host (and no user info)"));
    }
    if let Some((_, port)) = authority.strip_prefix(host).and_then(|p| p.split_once(':'))
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(bad("endpoint", "bad port"));
    }
    if s.starts_with("http://") && !is_loopback_host(host) {
        return Err(bad("endpoint", "must be an https:// URL (http:// only to localhost)"));
    }
    Ok(())
}

/// Unpadded base64url of exactly `len` characters.
fn check_b64url(field: &str, s: &str, len: usize) -> Result<(), ProtocolError> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
        return Err(bad(field, format_args!("must be {len} characters of unpadded base64url")));
    }
    Ok(())
}

fn check_version(v: u16) -> Result<(), ProtocolError> {
    if v != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    Ok(())
}

fn check_ttl(ms: u64) -> Result<(), ProtocolError> {
    if ms == 0 || ms > MAX_KEY_TTL_MS {
        return Err(bad("expires_in_ms", format_args!("must be 1–{MAX_KEY_TTL_MS}")));
    }
    Ok(())
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(bad(field, format_args!("longer than {max} bytes")));
    }
    if s.chars().any(|c| c.is_control() && c != '\r' && c != '\n' && c != '\t') {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

/// An offer/answer or trickled candidate, relayed by the cloud (F4 `signal`, `direct_signal`).
fn check_payload(payload: &SignalPayload) -> Result<(), ProtocolError> {
    match payload {
        SignalPayload::Offer { sdp } | SignalPayload::Answer { sdp } => {
            if sdp.is_empty() {
                return Err(bad("sdp", "is empty"));
            }
            check_text("sdp", sdp, MAX_SDP_LEN)
        }
        SignalPayload::Ice { candidate, sdp_mid, .. } => {
            check_text("candidate", candidate, MAX_CANDIDATE_LEN)?;
            if let Some(m) = sdp_mid {
                check_text("sdp_mid", m, 64)?;
            }
            Ok(())
        }
        SignalPayload::EndOfCandidates => Ok(()),
    }
}

impl ClientMsg {
    /// Check every field against the rules above.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if let Some(id) = self.call_id() {
            check_call_id(id)?;
        }
        match self {
            ClientMsg::Login { v, number, password } => {
                check_version(*v)?;
                check_number("number", number)?;
                if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
                    return Err(bad("password", format_args!("must be 1–{MAX_PASSWORD_LEN} bytes")));
                }
            }
            ClientMsg::Resume { v, token } => {
                check_version(*v)?;
                if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad("token", "must be 1–128 printable characters"));
                }
            }
            ClientMsg::SwitchAuth { v, switch_id, secret, direct_urls, calls } => {
                if let Some(calls) = calls {
                    if calls.len() > MAX_CARRIED_CALLS {
                        return Err(bad("calls", format_args!("must list at most {MAX_CARRIED_CALLS} call ids")));
                    }
                    for c in calls {
                        check_call_id(c)?;
                    }
                }
                check_version(*v)?;
                check_switch_id(switch_id)?;
                if secret.is_empty() || secret.len() > MAX_PASSWORD_LEN {
                    return Err(bad("secret", format_args!("must be 1–{MAX_PASSWORD_LEN} bytes")));
                }
                // Optional (gateways send none now); any given are still checked.
                if direct_urls.len() > MAX_DIRECT_URLS {
                    return Err(bad("direct_urls", format_args!("must list at most {MAX_DIRECT_URLS} addresses")));
                }
                for u in direct_urls {
                    check_url("direct_urls", u)?;
                }
            }
            ClientMsg::Dial { to, .. } => check_number("to", to)?,
            ClientMsg::Accept { key, .. } => check_key(key)?,
            ClientMsg::DirectSignal { payload, .. } => check_payload(payload)?,
            ClientMsg::ConnectFailed { reason, .. } => check_text("reason", reason, 200)?,
            ClientMsg::Signal { key, payload, .. } => {
                check_key(key)?;
                check_payload(payload)?;
            }
            ClientMsg::CallEvent { event, .. } => {
                if let CallEvent::Ended { outcome: _, duration_ms: Some(d) } = event
                    && *d > MAX_CALL_DURATION_MS
                {
                    return Err(bad("duration_ms", "out of range"));
                }
            }
            ClientMsg::CallReport { duration_ms, from, to, started_ms, ended_ms, .. } => {
                check_number("from", from)?;
                check_number("to", to)?;
                // After 2001-09-09 (13 digits of Unix ms) and before the year 5138.
                let sane = |t: i64| (1_000_000_000_000..100_000_000_000_000).contains(&t);
                if !sane(*started_ms) {
                    return Err(bad("started_ms", "must be a Unix time in ms"));
                }
                if !sane(*ended_ms) || ended_ms < started_ms {
                    return Err(bad("ended_ms", "must be a Unix time in ms, not before started_ms"));
                }
                if let Some(d) = duration_ms
                    && (*d > MAX_CALL_DURATION_MS || *d > (ended_ms - started_ms) as u64)
                {
                    return Err(bad("duration_ms", "out of range (longer than the call)"));
                }
            }
            ClientMsg::RouteQuery { from, to, .. } => {
                check_number("from", from)?;
                check_number("to", to)?;
            }
            ClientMsg::QueryAnswer { answer, .. } => {
                if let QueryAnswer::Accept { url, key, expires_in_ms } = answer {
                    check_switch_address("url", url)?;
                    check_key(key)?;
                    check_ttl(*expires_in_ms)?;
                }
            }
            ClientMsg::DirectOffer { url, key, expires_in_ms, .. } => {
                check_switch_address("url", url)?;
                check_key(key)?;
                check_ttl(*expires_in_ms)?;
            }
            ClientMsg::PushSubscribe { endpoint, p256dh, auth } => {
                check_push_endpoint(endpoint)?;
                check_b64url("p256dh", p256dh, PUSH_P256DH_LEN)?;
                // 0x04 (uncompressed point) encodes as a leading 'B'.
                if !p256dh.starts_with('B') {
                    return Err(bad("p256dh", "must be an uncompressed P-256 point (0x04…)"));
                }
                check_b64url("auth", auth, PUSH_AUTH_LEN)?;
            }
            ClientMsg::PushUnsubscribe { endpoint } => check_push_endpoint(endpoint)?,
            ClientMsg::History { limit: Some(n) } if *n == 0 || *n > crate::MAX_HISTORY => {
                return Err(bad("limit", format_args!("must be 1–{}", crate::MAX_HISTORY)));
            }
            ClientMsg::Cancel { .. }
            | ClientMsg::Decline { .. }
            | ClientMsg::Hangup { .. }
            | ClientMsg::Ping
            | ClientMsg::Logout
            | ClientMsg::History { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_MESSAGE_BYTES, ServerMsg};

    #[test]
    fn login_round_trips() {
        let m = ClientMsg::Login { v: 1, number: "1001".into(), password: "pw".into() };
        assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn unknown_type_is_bad_message() {
        let e = ClientMsg::decode(r#"{"type":"explode"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
    }

    #[test]
    fn not_json_is_bad_message() {
        assert_eq!(ClientMsg::decode("\u{0}\u{1}garbage").unwrap_err().code, ErrorCode::BadMessage);
        assert_eq!(ClientMsg::decode("").unwrap_err().code, ErrorCode::BadMessage);
        assert_eq!(ClientMsg::decode("[]").unwrap_err().code, ErrorCode::BadMessage);
    }

    #[test]
    fn oversized_is_too_large() {
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(ClientMsg::decode(&big).unwrap_err().code, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = ClientMsg::decode(r#"{"type":"login","v":9,"number":"1","password":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn bad_fields_are_invalid_field() {
        for text in [
            r#"{"type":"dial","call_id":"a b","to":"1002"}"#,
            r#"{"type":"dial","call_id":"","to":"1002"}"#,
            r#"{"type":"dial","call_id":"c1","to":"10<02"}"#,
            r#"{"type":"dial","call_id":"c1","to":""}"#,
            r#"{"type":"accept","call_id":"c1","key":"short"}"#,
            r#"{"type":"direct_offer","call_id":"c1","url":"http://x","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":1000}"#,
            r#"{"type":"direct_offer","call_id":"c1","url":"switch:hq","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":0}"#,
            // No ws:// address in a message to a caller any more: a switch is named.
            r#"{"type":"direct_offer","call_id":"c1","url":"ws://hq.example:7443/direct","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":1000}"#,
            r#"{"type":"direct_offer","call_id":"c1","url":"switch:","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":1000}"#,
            r#"{"type":"direct_offer","call_id":"c1","url":"switch:h q","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":1000}"#,
            r#"{"type":"query_answer","call_id":"c1","answer":{"answer":"accept","url":"wss://hq.example/direct","key":"AAAAAAAAAAAAAAAAAAAAAAAA","expires_in_ms":1000}}"#,
            r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","direct_urls":["http://x"]}"#,
            r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","direct_urls":["ws://1","ws://2","ws://3","ws://4","ws://5","ws://6","ws://7","ws://8","ws://9"]}"#,
            r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","calls":["a b"]}"#,
            r#"{"type":"call_report","call_id":"c1","outcome":"connected","duration_ms":5000,"from":"2001","to":"1001","started_ms":1700000000000,"ended_ms":1700000001000}"#,
            r#"{"type":"call_report","call_id":"c1","outcome":"connected","from":"2001","to":"1001","started_ms":1700000002000,"ended_ms":1700000001000}"#,
            r#"{"type":"call_report","call_id":"c1","outcome":"connected","from":"2001","to":"1001","started_ms":-1,"ended_ms":1700000001000}"#,
            r#"{"type":"call_report","call_id":"c1","outcome":"connected","from":"20 01","to":"1001","started_ms":1700000000000,"ended_ms":1700000001000}"#,
        ] {
            assert_eq!(ClientMsg::decode(text).unwrap_err().code, ErrorCode::InvalidField, "{text}");
        }
    }

    #[test]
    fn switch_auth_lists_carried_calls_and_call_report_round_trips() {
        let old = ClientMsg::decode(r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s"}"#).unwrap();
        assert!(matches!(old, ClientMsg::SwitchAuth { calls: None, .. }), "older gateways send no list");
        let new = ClientMsg::decode(r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","calls":["c1","c2"]}"#).unwrap();
        assert!(matches!(&new, ClientMsg::SwitchAuth { calls: Some(c), .. } if c.len() == 2));
        let too_many: Vec<String> = (0..=MAX_CARRIED_CALLS).map(|i| format!("\"c{i}\"")).collect();
        let text = format!(r#"{{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","calls":[{}]}}"#, too_many.join(","));
        assert_eq!(ClientMsg::decode(&text).unwrap_err().code, ErrorCode::InvalidField);
        let report = ClientMsg::CallReport {
            call_id: "c1".into(),
            outcome: crate::Outcome::Connected,
            duration_ms: Some(800),
            from: "2001".into(),
            to: "1001".into(),
            started_ms: 1_700_000_000_000,
            ended_ms: 1_700_000_001_000,
        };
        assert_eq!(ClientMsg::decode(&report.encode()).unwrap(), report);
        assert_eq!(report.call_id(), Some("c1"));
        assert_eq!(report.kind(), "call_report");
    }

    #[test]
    fn switches_are_named_not_addressed_and_direct_urls_are_optional() {
        let key = "AAAAAAAAAAAAAAAAAAAAAAAA";
        let offer = format!(r#"{{"type":"direct_offer","call_id":"c1","url":"switch:hq","key":"{key}","expires_in_ms":1000}}"#);
        assert!(ClientMsg::decode(&offer).is_ok());
        let answer = format!(
            r#"{{"type":"query_answer","call_id":"c1","answer":{{"answer":"accept","url":"{}","key":"{key}","expires_in_ms":1000}}}}"#,
            switch_address("branch.site-2")
        );
        assert!(ClientMsg::decode(&answer).is_ok());
        // A gateway signs in without direct_urls (it listens for nobody) …
        let auth = ClientMsg::decode(r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s"}"#).unwrap();
        assert!(matches!(&auth, ClientMsg::SwitchAuth { direct_urls, .. } if direct_urls.is_empty()));
        assert!(!auth.encode().contains("direct_urls"), "an empty list is not sent: {}", auth.encode());
        // … or with an empty list, or (an older gateway) with ws:// addresses, which are checked.
        assert!(ClientMsg::decode(r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","direct_urls":[]}"#).is_ok());
        assert!(
            ClientMsg::decode(
                r#"{"type":"switch_auth","v":1,"switch_id":"hq","secret":"s","direct_urls":["wss://gw.example:7443/direct"]}"#
            )
            .is_ok()
        );
    }

    const P256DH: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    fn subscribe(endpoint: &str, p256dh: &str, auth: &str) -> String {
        format!(r#"{{"type":"push_subscribe","endpoint":"{endpoint}","p256dh":"{p256dh}","auth":"{auth}"}}"#)
    }

    #[test]
    fn push_subscribe_accepts_real_shapes() {
        for endpoint in [
            "https://fcm.googleapis.com/fcm/send/dpH5lCsTSSM:APA91bHqjZxM0VImWWqDRN7U0a3AycjUf4O-byuxb_wJsKRaKvV_iKw56s16ekq6FUqoCF7k2nICUpd8fHPxVTgqLunFeVeB9lLCQZyohyAztTH8ZQL9WCxKpA6dvTG_TUIhQUFq_n",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
            "https://web.push.apple.com/QGuQyavXutnMH",
            "https://push.example.com:8443/p/1",
            "http://127.0.0.1:41234/push/abc",
            "http://localhost:9000/x",
            "http://[::1]:9000/x",
        ] {
            let m = ClientMsg::decode(&subscribe(endpoint, P256DH, AUTH)).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
            assert_eq!(m.kind(), "push_subscribe");
            assert_eq!(m.call_id(), None);
        }
        let m = ClientMsg::decode(r#"{"type":"push_unsubscribe","endpoint":"https://push.example.com/p/1"}"#).unwrap();
        assert_eq!(m, ClientMsg::PushUnsubscribe { endpoint: "https://push.example.com/p/1".into() });
    }

    #[test]
    fn push_subscribe_refuses_bad_endpoints_and_keys() {
        let long = format!("https://push.example.com/{}", "a".repeat(MAX_PUSH_ENDPOINT_LEN));
        for endpoint in [
            "http://push.example.com/p",
            "http://127.0.0.1.evil.example/p",
            "http://localhost.evil.example/p",
            "ftp://push.example.com/p",
            "wss://push.example.com/p",
            "https://",
            "https:///path",
            "https://user@push.example.com/p",
            "https://push.example.com:99999/p",
            "https://push.example.com:/p",
            "https://push example.com/p",
            "push.example.com/p",
            long.as_str(),
        ] {
            let e = ClientMsg::decode(&subscribe(endpoint, P256DH, AUTH)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{endpoint}");
            assert!(e.message.starts_with("endpoint"), "{endpoint}: {e}");
        }
        let https = "https://push.example.com/p";
        for (p256dh, auth, field) in [
            (&P256DH[1..], AUTH, "p256dh"),
            (&format!("{P256DH}="), AUTH, "p256dh"),
            (&format!("C{}", &P256DH[1..]), AUTH, "p256dh"),
            (&P256DH.replace('_', "/"), AUTH, "p256dh"),
            (P256DH, &AUTH[1..], "auth"),
            (P256DH, &format!("{AUTH}=="), "auth"),
            (P256DH, "BTBZMqHH6r4Tts7J+aSIgg", "auth"),
        ] {
            let e = ClientMsg::decode(&subscribe(https, p256dh, auth)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{p256dh} {auth}");
            assert!(e.message.starts_with(field), "{e}");
        }
        let e = ClientMsg::decode(r#"{"type":"push_unsubscribe","endpoint":"http://push.example.com/p"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = ClientMsg::decode(r#"{"type":"push_subscribe","endpoint":"https://push.example.com/p"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
    }

    #[test]
    fn loopback_hosts_and_authorities() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["127.0.0.1.example", "localhost.example", "128.0.0.1", "[::2]", "127.0.0", "example.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(url_authority("https://a.example:8443/x?y"), Some(("a.example:8443", "a.example")));
        assert_eq!(url_authority("http://[::1]:80/"), Some(("[::1]:80", "[::1]")));
        assert_eq!(url_authority("https://a.example"), Some(("a.example", "a.example")));
        assert_eq!(url_authority("ws://a.example"), None);
    }

    #[test]
    fn welcome_without_vapid_key_still_parses() {
        // What a server without Web Push (or an older one) sends.
        let old = r#"{"type":"welcome","v":1,"number":"2001","display_name":"A","kind":"browser","session_token":"t","session_expires_in_s":5}"#;
        match ServerMsg::decode(old).unwrap() {
            ServerMsg::Welcome { vapid_public_key, .. } => assert_eq!(vapid_public_key, None),
            other => panic!("{other:?}"),
        }
        let new = ServerMsg::Welcome {
            v: 1,
            number: "2001".into(),
            display_name: "A".into(),
            kind: crate::AccountKind::Browser,
            session_token: "t".into(),
            session_expires_in_s: 5,
            vapid_public_key: Some(P256DH.into()),
            ice_servers: vec![],
        };
        assert!(new.encode().contains(r#""vapid_public_key":"BCVx"#));
        assert!(!new.encode().contains("ice_servers"), "an empty list is left out for old clients");
        assert_eq!(ServerMsg::decode(&new.encode()).unwrap(), new);
    }

    #[test]
    fn ice_servers_have_the_rtc_ice_server_shape() {
        let msg = ServerMsg::IceServers {
            ice_servers: vec![
                crate::IceServer { urls: vec!["stun:turn.example.com:3478".into()], username: None, credential: None },
                crate::IceServer {
                    urls: vec!["turn:turn.example.com:443?transport=tcp".into()],
                    username: Some("1796285093:2001".into()),
                    credential: Some("c2VjcmV0".into()),
                },
            ],
            expires_in_s: 86400,
        };
        let text = msg.encode();
        // Exactly the keys RTCIceServer takes, so the browser can pass each entry on unchanged.
        assert!(text.contains(r#"{"urls":["stun:turn.example.com:3478"]}"#), "{text}");
        assert!(text.contains(r#""username":"1796285093:2001","credential":"c2VjcmV0""#), "{text}");
        assert_eq!(ServerMsg::decode(&text).unwrap(), msg);
        // An old switch_welcome (no ice_servers) still parses.
        let old = r#"{"type":"switch_welcome","v":1,"switch_id":"hq","sip_realm":"r","phones":[]}"#;
        assert!(
            matches!(ServerMsg::decode(old).unwrap(), ServerMsg::SwitchWelcome { ice_servers, .. } if ice_servers.is_empty())
        );
    }

    #[test]
    fn steps_parse_back() {
        for s in crate::Step::ALL {
            assert_eq!(crate::Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(crate::Step::parse("Push"), Some(crate::Step::Push));
        assert_eq!(crate::Step::parse("Z9"), None);
    }

    #[test]
    fn server_messages_round_trip() {
        let m = ServerMsg::Outcome { call_id: "c".into(), outcome: crate::Outcome::Connected, duration_ms: Some(5) };
        assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        assert!(m.encode().contains(r#""type":"outcome""#));
    }

    #[test]
    fn outcome_names_parse_back() {
        for o in crate::Outcome::ALL {
            assert_eq!(crate::Outcome::parse(o.as_str()), Some(o));
        }
    }
}
