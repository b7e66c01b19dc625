//! A scripted stand-in for a switch gateway: its cloud link (`switch_auth`, raw messages) and
//! its direct endpoint (a WebSocket listener the test reads and writes message by message).
//! The test plays the gateway's part step by step; WebRTC on its side is an ICE-lite
//! `WebRtcPeer`, as the real gateway answers.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_protocol::{
    ClientMsg, DirectClientMsg, DirectServerMsg, PROTOCOL_VERSION, ServerMsg,
};

use super::WAIT;

pub const KEY: &str = "Qm9vb29vb29vb29vb29vb29vb29vb29vb29v";

/// The gateway's cloud link.
pub struct FakeSwitch {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl FakeSwitch {
    pub async fn connect(
        cloud_url: &str,
        (id, secret): (&str, &str),
        direct_url: &str,
    ) -> FakeSwitch {
        let (ws, _) = tokio_tungstenite::connect_async(cloud_url)
            .await
            .expect("switch connects");
        let mut s = FakeSwitch { ws };
        s.send(ClientMsg::SwitchAuth {
            v: PROTOCOL_VERSION,
            switch_id: id.into(),
            secret: secret.into(),
            direct_urls: vec![direct_url.into()],
        })
        .await;
        match s.recv().await {
            ServerMsg::SwitchWelcome { switch_id, .. } => assert_eq!(switch_id, id),
            other => panic!("switch_auth failed: {other:?}"),
        }
        s
    }

    pub async fn send(&mut self, m: ClientMsg) {
        self.ws
            .send(Message::Text(m.encode().into()))
            .await
            .expect("switch send");
    }

    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("switch: a message in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    match ServerMsg::decode(t.as_str()).expect("server message") {
                        ServerMsg::PhonesUpdate { .. } | ServerMsg::Pong => continue,
                        m => return m,
                    }
                }
                Some(Ok(_)) => continue,
                other => panic!("switch link closed: {other:?}"),
            }
        }
    }
}

/// The gateway's direct endpoint.
pub struct DirectListener {
    listener: TcpListener,
    pub url: String,
}

impl DirectListener {
    pub async fn bind() -> DirectListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/direct", listener.local_addr().unwrap());
        DirectListener { listener, url }
    }

    pub async fn accept(&self) -> DirectConn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a direct connection in time")
            .unwrap();
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("websocket handshake");
        DirectConn { ws }
    }
}

pub struct DirectConn {
    ws: WebSocketStream<TcpStream>,
}

impl DirectConn {
    pub async fn send(&mut self, m: DirectServerMsg) {
        self.ws
            .send(Message::Text(m.encode().into()))
            .await
            .expect("direct send");
    }

    /// Send a refusal and close, as the gateway does.
    pub async fn refuse(mut self, code: trunkline_protocol::ErrorCode, message: &str) {
        self.send(DirectServerMsg::Error {
            code,
            message: message.into(),
        })
        .await;
        let _ = self.ws.close(None).await;
    }

    pub async fn recv(&mut self) -> DirectClientMsg {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("direct: a message in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return DirectClientMsg::decode(t.as_str()).expect("valid direct message");
                }
                Some(Ok(_)) => continue,
                other => panic!("direct connection closed: {other:?}"),
            }
        }
    }

    /// Read until the client closes the connection.
    pub async fn expect_closed(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) => panic!("expected close, got {t}"),
                Some(Ok(_)) => continue,
            }
        }
    }
}
