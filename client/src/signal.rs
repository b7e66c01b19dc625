//! The cloud client: one authenticated WebSocket to the signal server (`ws(s)://HOST/ws`).
//!
//! [`SignalClient::login`] / [`SignalClient::resume`] sign in and return a client whose
//! [`SignalSender`] sends [`ClientMsg`]s (clone it freely) and whose receiver yields every
//! [`ServerMsg`] in order. One task owns the socket; a protocol `ping` every [`KEEPALIVE`]
//! keeps idle connections (and NAT bindings) alive and the `pong`s are not passed on.
//!
//! Like the browser, the client reconnects by itself when the connection drops (the server
//! restarted, the network blipped): with backoff ([`RECONNECT_MIN`] doubling to
//! [`RECONNECT_MAX`], ±25 % jitter) and `resume` with the latest session token; the sender and
//! the inbox stay the same, so calls in progress keep their routes (their media never went
//! through the server). It stops — and the inbox ends — when the client closes or signs out,
//! when another connection replaced this one, or when `resume` is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use trunkline_protocol::{AccountKind, CallId, ClientMsg, DeclineReason, ErrorCode, PROTOCOL_VERSION, ServerMsg, SignalPayload};

use crate::ws::{self, ConnectError, TlsOptions, WsStream};

/// Interval of the protocol-level keep-alive `ping`.
pub const KEEPALIVE: Duration = Duration::from_secs(25);
/// How long sign-in may take.
pub const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting after the connection dropped.
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Longest wait between reconnect attempts: a restarted server sees its clients back within
/// a few seconds.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

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
    /// The next close of the connection is meant (sign-out): do not reconnect.
    Final,
}

/// Sends messages to the signal server; cheap to clone.
#[derive(Clone)]
pub struct SignalSender {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Pongs received so far.
    pongs: watch::Receiver<u64>,
    /// Successful sign-ins of this client: 1 after the first, +1 per reconnect.
    sign_ins: watch::Receiver<u64>,
}

impl SignalSender {
    pub fn send(&self, msg: &ClientMsg) -> Result<(), SignalError> {
        tracing::trace!("→ cloud {}", msg.encode());
        self.tx.send(Outgoing::Frame(Message::Text(msg.encode().into()))).map_err(|_| SignalError::Closed(None))
    }

    /// Round-trip a protocol `ping`: when it returns, the server has handled everything sent
    /// before it, and everything it sent before the `pong` is in the inbox.
    pub async fn sync(&self, within: Duration) -> Result<(), SignalError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Outgoing::Ping(tx)).map_err(|_| SignalError::Closed(None))?;
        let mut pongs = self.pongs.clone();
        let wait = async {
            let n = rx.await.map_err(|_| SignalError::Closed(None))?;
            pongs.wait_for(|&p| p >= n).await.map_err(|_| SignalError::Closed(None))?;
            Ok(())
        };
        tokio::time::timeout(within, wait).await.map_err(|_| SignalError::Timeout("pong"))?
    }

    /// **A → C1**: place a call with a fresh call id (a UUID); returns the call id.
    pub fn dial(&self, to: &str) -> Result<CallId, SignalError> {
        let call_id = new_call_id();
        self.dial_with_id(&call_id, to)?;
        Ok(call_id)
    }

    pub fn dial_with_id(&self, call_id: &str, to: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Dial { call_id: call_id.into(), to: to.into() })
    }

    /// Give up before the call is connected (outcome `cancelled`).
    pub fn cancel(&self, call_id: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Cancel { call_id: call_id.into() })
    }

    /// F4: take a browser-to-browser call with the key from `incoming`.
    pub fn accept(&self, call_id: &str, key: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Accept { call_id: call_id.into(), key: key.into() })
    }

    pub fn decline(&self, call_id: &str, reason: DeclineReason) -> Result<(), SignalError> {
        self.send(&ClientMsg::Decline { call_id: call_id.into(), reason })
    }

    /// F4: relay WebRTC negotiation to the peer, with the call's key.
    pub fn signal(&self, call_id: &str, key: &str, payload: SignalPayload) -> Result<(), SignalError> {
        self.send(&ClientMsg::Signal { call_id: call_id.into(), key: key.into(), payload })
    }

    /// End a browser-to-browser (F4) call.
    pub fn hangup(&self, call_id: &str) -> Result<(), SignalError> {
        self.send(&ClientMsg::Hangup { call_id: call_id.into() })
    }

    /// Sign out: the server revokes this connection's session token (it can no longer
    /// `resume`) and closes the connection.
    pub fn logout(&self) -> Result<(), SignalError> {
        let _ = self.tx.send(Outgoing::Final);
        self.send(&ClientMsg::Logout)
    }

    /// Successful sign-ins so far: 1 after `login`/`resume`, one more per reconnect.
    pub fn sign_ins(&self) -> u64 {
        *self.sign_ins.borrow()
    }

    /// Watch [`sign_ins`](Self::sign_ins) change.
    pub fn sign_ins_watch(&self) -> watch::Receiver<u64> {
        self.sign_ins.clone()
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
    pub async fn login(url: &str, number: &str, password: &str, tls: &TlsOptions) -> Result<SignalClient, SignalError> {
        let msg = ClientMsg::Login { v: PROTOCOL_VERSION, number: number.into(), password: password.into() };
        Self::sign_in(url, msg, tls).await
    }

    /// Connect and sign in with a session token from an earlier `welcome`.
    pub async fn resume(url: &str, token: &str, tls: &TlsOptions) -> Result<SignalClient, SignalError> {
        Self::sign_in(url, ClientMsg::Resume { v: PROTOCOL_VERSION, token: token.into() }, tls).await
    }

    async fn sign_in(url: &str, msg: ClientMsg, tls: &TlsOptions) -> Result<SignalClient, SignalError> {
        let mut ws = ws::connect(url, tls).await?;
        ws.send(Message::Text(msg.encode().into())).await.map_err(|e| SignalError::Closed(Some(e.to_string())))?;
        let first =
            tokio::time::timeout(SIGN_IN_TIMEOUT, next_server_msg(&mut ws)).await.map_err(|_| SignalError::Timeout("welcome"))?;
        let session = match first {
            Ok(ServerMsg::Welcome { number, display_name, kind, session_token, session_expires_in_s, ice_servers, .. }) => {
                Session { number, display_name, kind, session_token, session_expires_in_s, ice_servers }
            }
            Ok(ServerMsg::Error { code, message, .. }) => {
                return Err(SignalError::Refused { code, message });
            }
            Ok(other) => return Err(SignalError::Unexpected(other.encode())),
            Err(reason) => return Err(SignalError::Closed(reason)),
        };
        let client = Self::start(ws, session, url.to_string(), tls.clone());
        // The signal server sends `welcome` before its engine has the device online: a call to
        // this number right after `welcome` can still find it offline. One ping round trip
        // orders the two, so a signed-in client is one that can be called.
        client.sender.sync(SIGN_IN_TIMEOUT).await?;
        Ok(client)
    }

    fn start(ws: WsStream, session: Session, url: String, tls: TlsOptions) -> SignalClient {
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (in_tx, inbox) = mpsc::unbounded_channel();
        let (pongs_tx, pongs) = watch::channel(0u64);
        let (sign_ins_tx, sign_ins) = watch::channel(1u64);
        let close_reason = Arc::new(Mutex::new(None));
        let conn = Connection {
            url,
            tls,
            token: session.session_token.clone(),
            out_rx,
            in_tx,
            pongs_tx,
            sign_ins_tx,
            pings: 0,
            meant_close: false,
        };
        tokio::spawn(conn.run(ws, close_reason.clone()));
        SignalClient { session, sender: SignalSender { tx: out_tx, pongs, sign_ins }, inbox, close_reason }
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
        self.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Split into the sender and the message stream.
    pub fn into_parts(self) -> (Session, SignalSender, SignalInbox) {
        (self.session, self.sender, SignalInbox { inbox: self.inbox, close_reason: self.close_reason })
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
        self.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why one connection ended.
enum Ended {
    /// Closed on purpose (by us, or the client is gone), or the server said not to come back.
    Final(String),
    /// Dropped: reconnect.
    Lost(String),
}

/// The task that owns the connection (and its successors).
struct Connection {
    url: String,
    tls: TlsOptions,
    /// The latest session token (`resume` rotates it).
    token: String,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    in_tx: mpsc::UnboundedSender<ServerMsg>,
    pongs_tx: watch::Sender<u64>,
    sign_ins_tx: watch::Sender<u64>,
    pings: u64,
    /// A sign-out was sent: its close is not a drop.
    meant_close: bool,
}

impl Connection {
    async fn run(mut self, mut ws: WsStream, close_reason: Arc<Mutex<Option<String>>>) {
        let why = loop {
            let lost = match self.serve(ws).await {
                Ended::Final(why) => break why,
                Ended::Lost(why) => why,
            };
            tracing::info!("signal connection lost ({lost}); reconnecting");
            match self.reconnect().await {
                Ok(next) => ws = next,
                Err(why) => break why,
            }
        };
        *close_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Relay both ways on one connection until it ends.
    async fn serve(&mut self, ws: WsStream) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                out = self.out_rx.recv() => {
                    let msg = match out {
                        // Every sender is gone: the client was dropped.
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            return Ended::Final("client dropped".into());
                        }
                        Some(Outgoing::Final) => {
                            self.meant_close = true;
                            continue;
                        }
                        Some(Outgoing::Frame(m)) => m,
                        Some(Outgoing::Ping(reply)) => {
                            self.pings += 1;
                            let _ = reply.send(self.pings);
                            Message::Text(ClientMsg::Ping.encode().into())
                        }
                    };
                    let is_close = matches!(msg, Message::Close(_));
                    if let Err(e) = sink.send(msg).await {
                        return if is_close { Ended::Final("closed".into()) } else { Ended::Lost(e.to_string()) };
                    }
                    if is_close {
                        let _ = sink.close().await;
                        return Ended::Final("closed".into());
                    }
                }
                _ = keepalive.tick() => {
                    self.pings += 1;
                    if let Err(e) = sink.send(Message::Text(ClientMsg::Ping.encode().into())).await {
                        return Ended::Lost(e.to_string());
                    }
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                        Ok(ServerMsg::Pong) => self.pongs_tx.send_modify(|p| *p += 1),
                        Ok(m) => {
                            tracing::trace!("← cloud {t}");
                            if let ServerMsg::Error { code: ErrorCode::SessionReplaced, .. } = &m {
                                // Signed in elsewhere: coming back would replace that one.
                                self.meant_close = true;
                            }
                            if self.in_tx.send(m).is_err() {
                                return Ended::Final("client dropped".into());
                            }
                        }
                        Err(e) => tracing::warn!("ignoring a message from the signal server: {e}: {t}"),
                    },
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or("closed".into(), |f| format!("closed ({}: {})", f.code, f.reason));
                        return self.lost_or_final(why);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return self.lost_or_final(e.to_string()),
                    None => return self.lost_or_final("connection lost".into()),
                },
            }
        }
    }

    fn lost_or_final(&self, why: String) -> Ended {
        if self.meant_close || self.in_tx.is_closed() { Ended::Final(why) } else { Ended::Lost(why) }
    }

    /// Connect and `resume` again, with backoff, until it works (`Ok`), the server refuses
    /// the token, or the client is closed meanwhile (`Err`: why).
    async fn reconnect(&mut self) -> Result<WsStream, String> {
        let mut wait = RECONNECT_MIN;
        // What the client sent while the connection was down goes out after the resume.
        let mut held: Vec<Outgoing> = vec![];
        loop {
            let jitter = 0.75 + 0.5 * (rand_unit() as f64);
            let sleep = tokio::time::sleep(wait.mul_f64(jitter));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    out = self.out_rx.recv() => match out {
                        None => return Err("client dropped".into()),
                        Some(Outgoing::Frame(Message::Close(_))) | Some(Outgoing::Final) => return Err("closed".into()),
                        Some(Outgoing::Ping(reply)) => {
                            // Never answered: the sync waiting on it times out.
                            drop(reply);
                        }
                        Some(o) => held.push(o),
                    },
                }
            }
            if self.in_tx.is_closed() {
                return Err("client dropped".into());
            }
            wait = (wait * 2).min(RECONNECT_MAX);
            let resume = ClientMsg::Resume { v: PROTOCOL_VERSION, token: self.token.clone() };
            let mut ws = match ws::connect(&self.url, &self.tls).await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!("reconnect: {e}");
                    continue;
                }
            };
            if ws.send(Message::Text(resume.encode().into())).await.is_err() {
                continue;
            }
            match tokio::time::timeout(SIGN_IN_TIMEOUT, next_server_msg(&mut ws)).await {
                Ok(Ok(ServerMsg::Welcome { session_token, .. })) => {
                    self.token = session_token;
                    // Pongs of pings lost with the old connection never come: realign.
                    self.pongs_tx.send_replace(self.pings);
                    for o in held.drain(..) {
                        if let Outgoing::Frame(m) = o
                            && ws.send(m).await.is_err()
                        {
                            break;
                        }
                    }
                    self.sign_ins_tx.send_modify(|n| *n += 1);
                    tracing::info!("signal connection back (resumed)");
                    return Ok(ws);
                }
                Ok(Ok(ServerMsg::Error { code, message, .. })) => match code {
                    // Busy or throttled: try again later.
                    ErrorCode::RateLimited | ErrorCode::TooManyRequests | ErrorCode::Internal => {
                        tracing::debug!("reconnect refused for now: {code}: {message}");
                    }
                    _ => return Err(format!("resume refused: {code}: {message}")),
                },
                Ok(Ok(other)) => tracing::debug!("reconnect: unexpected {}", other.encode()),
                Ok(Err(why)) => tracing::debug!("reconnect: closed during resume: {why:?}"),
                Err(_) => tracing::debug!("reconnect: no answer to resume"),
            }
        }
    }
}

/// A number in [0, 1) for jitter (no need for a CSPRNG).
fn rand_unit() -> f32 {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (n % 1000) as f32 / 1000.0
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
        let m = ServerMsg::Connect { call_id: "c1".into(), url: "ws://x/direct".into(), key: "k".into(), expires_in_ms: 1 };
        assert_eq!(server_msg_call_id(&m), Some("c1"));
        assert_eq!(server_msg_call_id(&ServerMsg::Pong), None);
        let e = ServerMsg::error(ErrorCode::BadMessage, "x", None);
        assert_eq!(server_msg_call_id(&e), None);
    }
}
