//! The cloud client: one authenticated WebSocket to the signal server (`ws(s)://HOST/ws`).
//!
//! [`SignalClient::login`] / [`SignalClient::resume`] sign in and return a client whose
//! [`SignalSender`] sends [`ClientMsg`]s (clone it freely) and whose receiver yields every
//! [`ServerMsg`] in order. A reader and a writer task own the two halves of the socket; a
//! protocol `ping` every [`KEEPALIVE`] keeps idle connections (and NAT bindings) alive and the
//! `pong`s are not passed on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{
    AccountKind, CallId, ClientMsg, DeclineReason, ErrorCode, PROTOCOL_VERSION, ServerMsg,
    SignalPayload,
};

use crate::ws::{self, ConnectError, TlsOptions, WsStream};

/// Interval of the protocol-level keep-alive `ping`.
pub const KEEPALIVE: Duration = Duration::from_secs(25);
/// How long sign-in may take.
pub const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server refused (e.g. `auth_failed`, `rate_limited`); the connection is closed.
    #[error("refused by the signal server: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the signal server closed the connection{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected message from the signal server: {0}")]
    Unexpected(String),
}

/// What `welcome` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub number: String,
    pub display_name: String,
    pub kind: AccountKind,
    /// Keep to [`SignalClient::resume`] after a reconnect (it is rotated on each resume).
    pub session_token: String,
    pub session_expires_in_s: u64,
    /// STUN/TURN servers from `welcome` (this client uses the `stun:` ones).
    pub ice_servers: Vec<trunkline_protocol::IceServer>,
}

/// What the writer task sends.
enum Outgoing {
    Frame(Message),
    /// A protocol `ping`; the writer replies with its number among all pings it wrote.
    Ping(oneshot::Sender<u64>),
}

/// Sends messages to the signal server; cheap to clone.
#[derive(Clone)]
pub struct SignalSender {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Pongs received so far.
    pongs: watch::Receiver<u64>,
}

impl SignalSender {
    pub fn send(&self, msg: &ClientMsg) -> Result<(), SignalError> {
        tracing::trace!("→ cloud {}", msg.encode());
        self.tx
            .send(Outgoing::Frame(Message::Text(msg.encode().into())))
            .map_err(|_| SignalError::Closed(None))
    }

    /// Round-trip a protocol `ping`: when it returns, the server has handled everything sent
    /// before it, and everything it sent before the `pong` is in the inbox.
    pub async fn sync(&self, within: Duration) -> Result<(), SignalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Outgoing::Ping(tx))
            .map_err(|_| SignalError::Closed(None))?;
        let mut pongs = self.pongs.clone();
        let wait = async {
            let n = rx.await.map_err(|_| SignalError::Closed(None))?;
            pongs
                .wait_for(|&p| p >= n)
                .await
                .map_err(|_| SignalError::Closed(None))?;
            Ok(())
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| SignalError::Timeout("pong"))?
    }

    /// **A → C1**: place a call with a fresh call id (a UUID); returns the call id.
    pub fn dial(&self, to: &str) -> Result<CallId, SignalError> {
        let call_id = new_call_id();
        self.dial_with_id(&call_id, to)?;
        Ok(call_id)
    }

    pub fn dial_with_id(&self, call_id: &str, to: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Dial {
            call_id: call_id.into(),
            to: to.into(),
        })
    }

    /// Give up before the call is connected (outcome `cancelled`).
    pub fn cancel(&self, call_id: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Cancel {
            call_id: call_id.into(),
        })
    }

    /// F4: take a browser-to-browser call with the key from `incoming`.
    pub fn accept(&self, call_id: &str, key: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Accept {
            call_id: call_id.into(),
            key: key.into(),
        })
    }

    pub fn decline(&self, call_id: &str, reason: DeclineReason) -> Result<(), SignalError> {
        self.send(&ClientMsg::Decline {
            call_id: call_id.into(),
            reason,
        })
    }

    /// F4: relay WebRTC negotiation to the peer, with the call's key.
    pub fn signal(
        &self,
        call_id: &str,
        key: &str,
        payload: SignalPayload,
    ) -> Result<(), SignalError> {
        self.send(&ClientMsg::Signal {
            call_id: call_id.into(),
            key: key.into(),
            payload,
        })
    }

    /// End a browser-to-browser (F4) call.
    pub fn hangup(&self, call_id: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Hangup {
            call_id: call_id.into(),
        })
    }

    /// Sign out: the server revokes this connection's session token (it can no longer
    /// `resume`) and closes the connection.
    pub fn logout(&self) -> Result<(), SignalError> {
        self.send(&ClientMsg::Logout)
    }

    /// Close the connection (a WebSocket close frame).
    pub fn close(&self) {
        let _ = self.tx.send(Outgoing::Frame(Message::Close(None)));
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A fresh call id (UUID v4, as the protocol recommends).
pub fn new_call_id() -> CallId {
    uuid::Uuid::new_v4().to_string()
}

/// A signed-in connection to the signal server.
pub struct SignalClient {
    pub session: Session,
    sender: SignalSender,
    inbox: mpsc::UnboundedReceiver<ServerMsg>,
    close_reason: Arc<Mutex<Option<String>>>,
}

impl SignalClient {
    /// Connect and sign in with number + password (a browser account).
    pub async fn login(
        url: &str,
        number: &str,
        password: &str,
        tls: &TlsOptions,
    ) -> Result<SignalClient, SignalError> {
        let msg = ClientMsg::Login {
            v: PROTOCOL_VERSION,
            number: number.into(),
            password: password.into(),
        };
        Self::sign_in(url, msg, tls).await
    }

    /// Connect and sign in with a session token from an earlier `welcome`.
    pub async fn resume(
        url: &str,
        token: &str,
        tls: &TlsOptions,
    ) -> Result<SignalClient, SignalError> {
        Self::sign_in(
            url,
            ClientMsg::Resume {
                v: PROTOCOL_VERSION,
                token: token.into(),
            },
            tls,
        )
        .await
    }

    async fn sign_in(
        url: &str,
        msg: ClientMsg,
        tls: &TlsOptions,
    ) -> Result<SignalClient, SignalError> {
        let mut ws = ws::connect(url, tls).await?;
        ws.send(Message::Text(msg.encode().into()))
            .await
            .map_err(|e| SignalError::Closed(Some(e.to_string())))?;
        let first = tokio::time::timeout(SIGN_IN_TIMEOUT, next_server_msg(&mut ws))
            .await
            .map_err(|_| SignalError::Timeout("welcome"))?;
        let session = match first {
            Ok(ServerMsg::Welcome {
                number,
                display_name,
                kind,
                session_token,
                session_expires_in_s,
                ice_servers,
                ..
            }) => Session {
                number,
                display_name,
                kind,
                session_token,
                session_expires_in_s,
                ice_servers,
            },
            Ok(ServerMsg::Error { code, message, .. }) => {
                return Err(SignalError::Refused { code, message });
            }
            Ok(other) => return Err(SignalError::Unexpected(other.encode())),
            Err(reason) => return Err(SignalError::Closed(reason)),
        };
        let client = Self::start(ws, session);
        // The signal server sends `welcome` before its engine has the device online: a call to
        // this number right after `welcome` can still find it offline. One ping round trip
        // orders the two, so a signed-in client is one that can be called.
        client.sender.sync(SIGN_IN_TIMEOUT).await?;
        Ok(client)
    }

    fn start(ws: WsStream, session: Session) -> SignalClient {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (in_tx, inbox) = mpsc::unbounded_channel();
        let (pongs_tx, pongs) = watch::channel(0u64);
        let close_reason = Arc::new(Mutex::new(None));
        // Writer: outgoing messages, keep-alive pings; stops after a close frame or when every
        // sender is gone.
        tokio::spawn(async move {
            let mut keepalive =
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            let mut pings = 0u64;
            loop {
                let out = tokio::select! {
                    m = out_rx.recv() => m.unwrap_or(Outgoing::Frame(Message::Close(None))),
                    _ = keepalive.tick() => Outgoing::Ping(oneshot::channel().0),
                };
                let msg = match out {
                    Outgoing::Frame(m) => m,
                    Outgoing::Ping(reply) => {
                        pings += 1;
                        let _ = reply.send(pings);
                        Message::Text(ClientMsg::Ping.encode().into())
                    }
                };
                let is_close = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || is_close {
                    let _ = sink.close().await;
                    return;
                }
            }
        });
        // Reader: decode and pass on; remember why it ended.
        let reason = close_reason.clone();
        tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                        Ok(ServerMsg::Pong) => pongs_tx.send_modify(|p| *p += 1),
                        Ok(m) => {
                            tracing::trace!("← cloud {t}");
                            if in_tx.send(m).is_err() {
                                break "client dropped".to_string();
                            }
                        }
                        Err(e) => {
                            tracing::warn!("ignoring a message from the signal server: {e}: {t}")
                        }
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break frame.map_or("closed".into(), |f| {
                            format!("closed ({}: {})", f.code, f.reason)
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection lost".into(),
                }
            };
            *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        SignalClient {
            session,
            sender: SignalSender { tx: out_tx, pongs },
            inbox,
            close_reason,
        }
    }

    pub fn sender(&self) -> &SignalSender {
        &self.sender
    }

    /// The next message from the server, or `None` once the connection is closed (see
    /// [`close_reason`](Self::close_reason)).
    pub async fn recv(&mut self) -> Option<ServerMsg> {
        self.inbox.recv().await
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Split into the sender and the message stream.
    pub fn into_parts(self) -> (Session, SignalSender, SignalInbox) {
        (
            self.session,
            self.sender,
            SignalInbox {
                inbox: self.inbox,
                close_reason: self.close_reason,
            },
        )
    }
}

/// The receiving half of a [`SignalClient`].
pub struct SignalInbox {
    inbox: mpsc::UnboundedReceiver<ServerMsg>,
    close_reason: Arc<Mutex<Option<String>>>,
}

impl SignalInbox {
    pub async fn recv(&mut self) -> Option<ServerMsg> {
        self.inbox.recv().await
    }

    pub fn close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The next protocol message on a raw socket (`Err(reason)` once closed).
async fn next_server_msg(ws: &mut WsStream) -> Result<ServerMsg, Option<String>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                Ok(ServerMsg::Pong) => continue,
                Ok(m) => return Ok(m),
                Err(e) => return Err(Some(format!("undecodable message: {e}"))),
            },
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.reason.to_string())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Some(e.to_string())),
            None => return Err(None),
        }
    }
}

/// The call a server message is about, if any.
pub fn server_msg_call_id(msg: &ServerMsg) -> Option<&str> {
    match msg {
        ServerMsg::Route { call_id, .. }
        | ServerMsg::CalleeQuery { call_id, .. }
        | ServerMsg::Connect { call_id, .. }
        | ServerMsg::Peer { call_id, .. }
        | ServerMsg::Incoming { call_id, .. }
        | ServerMsg::Signal { call_id, .. }
        | ServerMsg::DirectSignal { call_id, .. }
        | ServerMsg::CallEvent { call_id, .. }
        | ServerMsg::Outcome { call_id, .. } => Some(call_id),
        ServerMsg::Error { call_id, .. } => call_id.as_deref(),
        ServerMsg::Welcome { .. }
        | ServerMsg::SwitchWelcome { .. }
        | ServerMsg::PhonesUpdate { .. }
        | ServerMsg::History { .. }
        | ServerMsg::IceServers { .. }
        | ServerMsg::Pong => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_valid_protocol_call_ids() {
        let id = new_call_id();
        assert!(trunkline_protocol::check_call_id(&id).is_ok(), "{id}");
        assert_ne!(id, new_call_id());
    }

    #[test]
    fn call_id_of_messages() {
        let m = ServerMsg::Connect {
            call_id: "c1".into(),
            url: "ws://x/direct".into(),
            key: "k".into(),
            expires_in_ms: 1,
        };
        assert_eq!(server_msg_call_id(&m), Some("c1"));
        assert_eq!(server_msg_call_id(&ServerMsg::Pong), None);
        let e = ServerMsg::error(ErrorCode::BadMessage, "x", None);
        assert_eq!(server_msg_call_id(&e), None);
    }
}
