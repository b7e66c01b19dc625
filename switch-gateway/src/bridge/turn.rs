//! A session's TURN allocations (`trunkline_media::turn`, sans-IO) and the TCP/TLS streams some
//! of them run over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Input, Rtc};
use tokio::sync::mpsc;
use trunkline_media::ports::send_now;
use trunkline_media::turn::{RelayTransmit, Relays, StreamId, TurnServer, TurnTransport};

use super::task::Admit;

/// A session's TURN allocations and the streams (TCP, TLS) some of them run over.
///
/// TLS: the stream task wraps its TCP connection with tokio-rustls (the gateway's rustls 0.23 +
/// aws-lc-rs, as for wss:// to the cloud) and feeds `turn-client-proto`'s plain TCP client the
/// decrypted bytes, so TCP and TLS take one code path. Not `turn-client-rustls` 0.1.2: it would
/// fit the dependency tree, but its `recv` drains at most 2048 plaintext bytes per call and leaves
/// the rest inside rustls until the next TCP segment arrives (a stall or a growing backlog when
/// segments coalesce), and it panics if a write into rustls fails.
pub(super) struct Turn {
    pub(super) relays: Relays,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// Bytes to each open stream's task.
    pub(super) streams: HashMap<StreamId, mpsc::UnboundedSender<Vec<u8>>>,
    pub(super) stream_events: mpsc::UnboundedSender<(StreamId, StreamEvent)>,
}

/// What a TURN stream task reports.
pub(super) enum StreamEvent {
    Connected(SocketAddr),
    Data(Vec<u8>),
    Closed(String),
}

/// How long opening a TURN stream (TCP connect, TLS handshake) may take.
const TURN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished session keeps its TURN clients alive to send their deletes.
const TURN_DELETE_GRACE: Duration = Duration::from_millis(300);

impl Turn {
    /// Send what the TURN clients have queued.
    pub(super) fn flush(&mut self, ice: &tokio::net::UdpSocket) {
        while let Some(t) = self.relays.poll_transmit() {
            match t {
                RelayTransmit::Udp { to, data } => {
                    let _ = send_now(ice, &data, to);
                }
                RelayTransmit::Stream { id, data } => {
                    if let Some(tx) = self.streams.get(&id) {
                        let _ = tx.send(data);
                    }
                }
            }
        }
    }

    /// Open the streams the TURN clients want.
    pub(super) fn connect(&mut self) {
        while let Some((id, server)) = self.relays.poll_connect() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.streams.insert(id, tx);
            tokio::spawn(turn_stream(id, server, self.tls.clone(), rx, self.stream_events.clone()));
        }
    }

    /// Hand the next datagram that came through the relays to str0m, as received at the
    /// relayed address; `false` when none is left. One at a time: str0m's output must be
    /// drained between two received RTP packets (RTP mode keeps only the last one).
    pub(super) fn deliver_one(&mut self, rtc: &mut Rtc, admit: &mut Admit) -> Result<bool, ()> {
        while let Some((relayed, peer, data)) = self.relays.poll_peer_data() {
            let Ok(contents) = data.as_slice().try_into() else { continue };
            let input =
                Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: peer, destination: relayed, contents });
            if admit.admit(rtc, &input, &data) {
                return rtc.handle_input(input).map(|()| true).map_err(|_| ());
            }
        }
        Ok(false)
    }

    /// Release the allocations and give the deletes a moment to leave and be answered (the
    /// client paces its requests, and retransmits over UDP until answered); then the stream
    /// tasks write what is queued and close.
    pub(super) async fn release(mut self, ice: &tokio::net::UdpSocket) {
        let start = Instant::now();
        self.relays.delete(start);
        self.flush(ice);
        let mut buf = vec![0u8; 2000];
        while let Some(t) = self.relays.poll_timeout()
            && t < start + TURN_DELETE_GRACE
        {
            tokio::select! {
                _ = tokio::time::sleep_until(t.into()) => self.relays.handle_timeout(Instant::now()),
                r = ice.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r && self.relays.is_from_server(from) {
                        self.relays.udp_data(from, &buf[..n], Instant::now());
                    }
                }
            }
            self.flush(ice);
        }
    }
}

/// One TURN server's TCP (or TLS) connection: plain bytes in and out through the session task.
async fn turn_stream(
    id: StreamId,
    server: TurnServer,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<(StreamId, StreamEvent)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
    let open = async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.map_err(|e| format!("TCP connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let stream: Box<dyn Stream> = match server.transport {
            TurnTransport::Tls => {
                let cfg = tls.ok_or_else(|| "no TLS configuration for turns:".to_string())?;
                let name = rustls_pki_types::ServerName::try_from(server.host.clone())
                    .map_err(|e| format!("TLS server name {}: {e}", server.host))?;
                let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        Ok::<_, String>((local, stream))
    };
    let (local, stream) = match tokio::time::timeout(TURN_CONNECT_TIMEOUT, open).await {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            let _ = events.send((id, StreamEvent::Closed(why)));
            return;
        }
        Err(_) => {
            let _ = events.send((id, StreamEvent::Closed("timed out opening the connection".into())));
            return;
        }
    };
    if events.send((id, StreamEvent::Connected(local))).is_err() {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let ev = match r {
                    Ok(0) => StreamEvent::Closed("closed by the server".into()),
                    Ok(n) => StreamEvent::Data(buf[..n].to_vec()),
                    Err(e) => StreamEvent::Closed(e.to_string()),
                };
                let end = matches!(ev, StreamEvent::Closed(_));
                if events.send((id, ev)).is_err() || end {
                    return;
                }
            }
            m = out.recv() => match m {
                Some(data) => {
                    if let Err(e) = wr.write_all(&data).await {
                        let _ = events.send((id, StreamEvent::Closed(e.to_string())));
                        return;
                    }
                }
                // The session is over (its deletes were queued before): close.
                None => {
                    let _ = wr.shutdown().await;
                    return;
                }
            },
        }
    }
}
