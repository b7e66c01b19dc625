//! The signal-server connection as the user sees it, and the reconnect policy. Plain Rust.

use trunkline_protocol::ErrorCode;

/// The state shown in `conn-state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// No session: the sign-in form shows.
    SignedOut,
    /// Opening the WebSocket / signing in.
    Connecting,
    /// Signed in (`welcome` received).
    Connected,
    /// The connection dropped; the next attempt is due in `retry_in_s` seconds.
    Reconnecting { retry_in_s: u32 },
    /// The same account signed in elsewhere (`session_replaced`): not reconnecting by itself.
    Replaced,
}

impl ConnState {
    /// The stable word in `data-state` (tests match on it).
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnState::SignedOut => "signed-out",
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Reconnecting { .. } => "reconnecting",
            ConnState::Replaced => "replaced",
        }
    }

    pub fn label(&self) -> String {
        match self {
            ConnState::SignedOut => "Signed out".into(),
            ConnState::Connecting => "Connecting…".into(),
            ConnState::Connected => "Connected".into(),
            ConnState::Reconnecting { retry_in_s: 0 } => "Reconnecting…".into(),
            ConnState::Reconnecting { retry_in_s } => format!("Offline · retrying in {retry_in_s} s"),
            ConnState::Replaced => "Signed in on another device".into(),
        }
    }
}

/// Delay before reconnect attempt number `attempt` (0-based): 0.5 s doubling up to 15 s, times
/// a jitter factor in 0.75–1.25 from `jitter` ∈ [0, 1).
pub fn backoff_ms(attempt: u32, jitter: f64) -> u32 {
    let base = 500u64.saturating_mul(1u64 << attempt.min(10)).min(15_000) as f64;
    (base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))) as u32
}

/// What a sign-in refusal means for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignInRefusal {
    /// Wrong number/password, or the stored session is no longer valid: show the sign-in form.
    Credentials(String),
    /// Try again later, without a loop.
    Later(String),
    /// Signed in elsewhere: stop until the user asks.
    Replaced,
}

/// Classifies an `error` that arrives without a call id (sign-in and connection errors).
/// `None`: not about the connection.
pub fn refusal(code: ErrorCode, resuming: bool) -> Option<SignInRefusal> {
    Some(match code {
        ErrorCode::AuthFailed if resuming => SignInRefusal::Credentials("Your session has ended. Please sign in again.".into()),
        ErrorCode::AuthFailed => SignInRefusal::Credentials("Wrong number or password.".into()),
        ErrorCode::Forbidden if !resuming => {
            SignInRefusal::Credentials("This account cannot sign in here (it is a desk phone).".into())
        }
        ErrorCode::RateLimited => SignInRefusal::Later("Too many failed sign-ins. Try again in a few minutes.".into()),
        ErrorCode::SessionReplaced => SignInRefusal::Replaced,
        ErrorCode::UnsupportedVersion => SignInRefusal::Later("This app is out of date. Reload the page.".into()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff_ms(0, 0.5), 500);
        assert_eq!(backoff_ms(1, 0.5), 1000);
        assert_eq!(backoff_ms(4, 0.5), 8000);
        assert_eq!(backoff_ms(5, 0.5), 15000);
        assert_eq!(backoff_ms(60, 0.5), 15000);
        assert_eq!(backoff_ms(0, 0.0), 375);
        assert_eq!(backoff_ms(5, 0.999), 18742);
    }

    #[test]
    fn labels_and_refusals() {
        assert_eq!(ConnState::Connected.as_str(), "connected");
        assert_eq!(ConnState::Connected.label(), "Connected");
        assert_eq!(ConnState::Reconnecting { retry_in_s: 3 }.label(), "Offline · retrying in 3 s");
        assert!(matches!(refusal(ErrorCode::AuthFailed, false), Some(SignInRefusal::Credentials(t)) if t.contains("password")));
        assert!(matches!(refusal(ErrorCode::AuthFailed, true), Some(SignInRefusal::Credentials(t)) if t.contains("session")));
        assert_eq!(refusal(ErrorCode::SessionReplaced, true), Some(SignInRefusal::Replaced));
        assert!(matches!(refusal(ErrorCode::RateLimited, false), Some(SignInRefusal::Later(_))));
        assert_eq!(refusal(ErrorCode::TooManyRequests, false), None);
    }
}
