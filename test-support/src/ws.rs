//! A minimal WebSocket JSON client for the signal server's protocol, and raw HTTP probes.
//! Every wait is bounded by [`WAIT`]: a silent server fails the test instead of hanging it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_protocol::{ErrorCode, Outcome, ServerMsg};

use crate::wait::WAIT;

/// One WebSocket to the signal server: a browser, a scripted switch, or a raw connection.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        WsClient { ws }
    }

    /// Connect from a chosen loopback source address (any of 127.0.0.0/8), so the server sees
    /// another client address.
    pub async fn connect_from(url: &str, source: IpAddr) -> WsClient {
        let host = url.trim_start_matches("ws://").split('/').next().unwrap();
        let addr: SocketAddr = host.parse().expect("ws://ip:port/… URL");
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = sock.connect(addr).await.expect("tcp connects");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("websocket connects");
        WsClient { ws }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(m).await
    }

    /// Next protocol message, within [`WAIT`].
    pub async fn recv(&mut self) -> ServerMsg {
        self.try_recv().await.expect("connection closed while waiting for a message")
    }

    /// Next protocol message, or `None` if the server closed the connection.
    pub async fn try_recv(&mut self) -> Option<ServerMsg> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("no message within the deadline");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(ServerMsg::decode(t.as_str()).unwrap_or_else(|e| panic!("bad server message {t}: {e}")));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The first message `pick` takes, within [`WAIT`]; the messages before it are dropped.
    pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut passed = vec![];
        loop {
            let m = match tokio::time::timeout_at(deadline, self.try_recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => panic!("the connection closed while waiting for {what}; passed over: {passed:?}"),
                Err(_) => panic!("timed out waiting for {what}; passed over: {passed:?}"),
            };
            match pick(&m) {
                Some(t) => return t,
                None => passed.push(m),
            }
        }
    }

    /// The connection must be closed by the server (after any pending messages).
    pub async fn expect_closed(&mut self) {
        if let Some(m) = self.try_recv().await {
            panic!("expected the connection to close, got {m:?}");
        }
    }

    /// Round-trip a ping: everything the server queued for us before it is returned.
    pub async fn sync(&mut self) -> Vec<ServerMsg> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut before = vec![];
        loop {
            match self.recv().await {
                ServerMsg::Pong => return before,
                m => before.push(m),
            }
        }
    }

    /// The next message must be an error with `code`; returns its text.
    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.recv().await {
            ServerMsg::Error { code: c, message, .. } if c == code => message,
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// The outcome of `call_id` (call events and peer messages before it skipped).
    pub async fn expect_outcome(&mut self, call_id: &str) -> (Outcome, Option<u64>) {
        loop {
            match self.recv().await {
                ServerMsg::Outcome { call_id: c, outcome, duration_ms } if c == call_id => return (outcome, duration_ms),
                ServerMsg::CallEvent { .. } | ServerMsg::Peer { .. } => continue,
                other => panic!("expected the outcome of {call_id}, got {other:?}"),
            }
        }
    }
}

/// Minimal HTTP/1.1 GET over a raw socket (no client crate needed for a few probes).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await
}

/// Send `raw` and read the whole answer (until the server closes), within [`WAIT`].
pub async fn http_request(addr: SocketAddr, raw: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `name` inside the temp dir `dir`.
pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
