//! The direct-endpoint client: the WebSocket a caller opens on a switch gateway (the `url` of
//! `connect`, C13/C2, or of `incoming` via `direct`, C3) to present its one-time key (C14,
//! claim 10) and negotiate the WebRTC leg the gateway bridges to the desk phone (C15).
//!
//! ```text
//! → present {v:1, call_id, key, caller}     ← accepted {call_id}   | error {code, message}
//! → offer {sdp}                             ← answer {sdp}
//!                                           ← progress {event: ringing | connected}
//! → hangup                                  ← ended {outcome}
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{
    CallEvent, DirectClientMsg, DirectServerMsg, ErrorCode, Outcome, PROTOCOL_VERSION,
};

use crate::ws::{self, ConnectError, TlsOptions, WsStream};

/// Default time allowed for `accepted` after `present` and for `answer` after `offer`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The key is not this call's key (unknown, forged, or another call's).
    #[error("bad_key: {0}")]
    BadKey(String),
    /// The key's time is up (or the call was withdrawn).
    #[error("key_expired: {0}")]
    KeyExpired(String),
    /// The key was already presented once.
    #[error("key_used: {0}")]
    KeyUsed(String),
    /// The key was issued to another caller.
    #[error("wrong_caller: {0}")]
    WrongCaller(String),
    /// The gateway does not do this yet (e.g. a gateway without the WebRTC leg).
    #[error("not_implemented: {0}")]
    NotImplemented(String),
    /// Any other refusal (`invalid_field`, `bad_message`, `unsupported_version`, …).
    #[error("refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The call ended before the exchange finished.
    #[error("the call ended ({0})")]
    Ended(Outcome),
    #[error("the gateway closed the connection{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected message from the gateway: {0}")]
    Unexpected(String),
}

impl DirectError {
    /// The typed error for a gateway's `error` message.
    pub fn from_code(code: ErrorCode, message: String) -> DirectError {
        match code {
            ErrorCode::BadKey => DirectError::BadKey(message),
            ErrorCode::KeyExpired => DirectError::KeyExpired(message),
            ErrorCode::KeyUsed => DirectError::KeyUsed(message),
            ErrorCode::WrongCaller => DirectError::WrongCaller(message),
            ErrorCode::NotImplemented => DirectError::NotImplemented(message),
            code => DirectError::Refused { code, message },
        }
    }

    /// The wire code, when the gateway refused.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            DirectError::BadKey(_) => ErrorCode::BadKey,
            DirectError::KeyExpired(_) => ErrorCode::KeyExpired,
            DirectError::KeyUsed(_) => ErrorCode::KeyUsed,
            DirectError::WrongCaller(_) => ErrorCode::WrongCaller,
            DirectError::NotImplemented(_) => ErrorCode::NotImplemented,
            DirectError::Refused { code, .. } => *code,
            _ => return None,
        })
    }
}

/// What the gateway reports after the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectEvent {
    /// `ringing`, `connected` (C15 bridged), …
    Progress(CallEvent),
    /// The call ended with this outcome.
    Ended(Outcome),
    /// The gateway refused something after the key was accepted.
    Error { code: ErrorCode, message: String },
}

/// A connection to a gateway's direct endpoint with an accepted key.
pub struct DirectClient {
    ws: WsStream,
    call_id: String,
    /// Progress that arrived while waiting for the answer.
    early: VecDeque<DirectEvent>,
    closed: bool,
}

impl DirectClient {
    /// **C14**: connect to `url` and present the key; `caller` is the connecting party's number
    /// (the caller in F1/F2, the switchless callee in C3). Returns once `accepted` arrives.
    pub async fn present(
        url: &str,
        call_id: &str,
        key: &str,
        caller: &str,
        tls: &TlsOptions,
        within: Duration,
    ) -> Result<DirectClient, DirectError> {
        let ws = tokio::time::timeout(within, ws::connect(url, tls))
            .await
            .map_err(|_| DirectError::Timeout("connection"))??;
        let mut c = DirectClient {
            ws,
            call_id: call_id.into(),
            early: VecDeque::new(),
            closed: false,
        };
        c.send(&DirectClientMsg::Present {
            v: PROTOCOL_VERSION,
            call_id: call_id.into(),
            key: key.into(),
            caller: caller.into(),
        })
        .await?;
        match c.next_msg(within, "accepted").await? {
            DirectServerMsg::Accepted { call_id: accepted } if accepted == call_id => Ok(c),
            DirectServerMsg::Accepted { call_id: other } => Err(DirectError::Unexpected(format!(
                "accepted for call {other}"
            ))),
            DirectServerMsg::Error { code, message } => Err(DirectError::from_code(code, message)),
            DirectServerMsg::Ended { outcome } => Err(DirectError::Ended(outcome)),
            other => Err(DirectError::Unexpected(other.encode())),
        }
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Send the WebRTC offer (all candidates included) and wait for the gateway's answer.
    /// Progress that arrives first is kept for [`next_event`](Self::next_event).
    pub async fn offer(&mut self, sdp: &str, within: Duration) -> Result<String, DirectError> {
        self.send(&DirectClientMsg::Offer { sdp: sdp.into() })
            .await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_msg(left, "answer").await? {
                DirectServerMsg::Answer { sdp } => return Ok(sdp),
                DirectServerMsg::Progress { event } => {
                    self.early.push_back(DirectEvent::Progress(event))
                }
                DirectServerMsg::Error { code, message } => {
                    return Err(DirectError::from_code(code, message));
                }
                DirectServerMsg::Ended { outcome } => return Err(DirectError::Ended(outcome)),
                other => return Err(DirectError::Unexpected(other.encode())),
            }
        }
    }

    /// The next progress/end event. `Ok(None)` once the connection is closed. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<DirectEvent>, DirectError> {
        if let Some(e) = self.early.pop_front() {
            return Ok(Some(e));
        }
        if self.closed {
            return Ok(None);
        }
        match self.read().await {
            Ok(DirectServerMsg::Progress { event }) => Ok(Some(DirectEvent::Progress(event))),
            Ok(DirectServerMsg::Ended { outcome }) => Ok(Some(DirectEvent::Ended(outcome))),
            Ok(DirectServerMsg::Error { code, message }) => {
                Ok(Some(DirectEvent::Error { code, message }))
            }
            Ok(other) => Err(DirectError::Unexpected(other.encode())),
            Err(DirectError::Closed(_)) => {
                self.closed = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Leave the call (`hangup`); the gateway answers with `ended`.
    pub async fn hangup(&mut self) -> Result<(), DirectError> {
        self.send(&DirectClientMsg::Hangup).await
    }

    /// Close the WebSocket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    async fn send(&mut self, msg: &DirectClientMsg) -> Result<(), DirectError> {
        tracing::trace!("→ direct {}", msg.encode());
        self.ws
            .send(Message::Text(msg.encode().into()))
            .await
            .map_err(|e| DirectError::Closed(Some(e.to_string())))
    }

    async fn next_msg(
        &mut self,
        within: Duration,
        what: &'static str,
    ) -> Result<DirectServerMsg, DirectError> {
        tokio::time::timeout(within, self.read())
            .await
            .map_err(|_| DirectError::Timeout(what))?
    }

    /// One message; `StreamExt::next` is cancel-safe, so is this.
    async fn read(&mut self) -> Result<DirectServerMsg, DirectError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    tracing::trace!("← direct {t}");
                    return DirectServerMsg::decode(t.as_str())
                        .map_err(|e| DirectError::Unexpected(format!("{e}: {t}")));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = true;
                    return Err(DirectError::Closed(frame.map(|f| f.reason.to_string())));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(DirectError::Closed(Some(e.to_string())));
                }
                None => {
                    self.closed = true;
                    return Err(DirectError::Closed(None));
                }
            }
        }
    }
}
