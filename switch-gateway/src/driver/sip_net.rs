//! SIP over UDP, TCP and TLS for the desk phones: the accept and read loops, framing, the
//! source blocklist (checked before any parsing), and sends on stream connections. A message
//! from a stream goes to the core's task as [`CoreIn::Sip`]; UDP datagrams are read by the
//! core's task itself and checked here ([`udp_datagram`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::stopped;
use crate::registrar::Transport;
use crate::{CoreIn, GatewayError};
use trunkline_protocol::address_key;

/// The writer of each open SIP stream connection, by peer.
pub(crate) type TcpWriters = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

fn parse_and_forward(data: &[u8], src: SocketAddr, transport: Transport) -> Result<trunkline_sip::Message, Option<Vec<u8>>> {
    match trunkline_sip::parse(data) {
        Ok(m) => Ok(m),
        Err(e) => {
            tracing::debug!(%src, status = e.status, reason = %e.reason, ?transport, "malformed SIP");
            Err(trunkline_sip::error_response(data, &e))
        }
    }
}

/// What one received UDP datagram asks of the core.
// Returned and matched at once, never stored: boxing the message would cost an allocation per
// datagram for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Datagram {
    /// A parsed SIP message for the core.
    Sip(trunkline_sip::Message),
    /// Unparseable: this error answer goes back to its source.
    Reply(Vec<u8>),
    /// A blocked source, a keep-alive, or garbage with no answer.
    Ignore,
}

/// Check and parse one UDP datagram. The core's task reads the SIP UDP socket itself and calls
/// this for each datagram: one task allocates and frees each message (glibc's per-thread caches
/// stay warm) and no hand-over wakes a second task per message.
pub(crate) fn udp_datagram(data: &[u8], src: SocketAddr, blocklist: &Blocklist) -> Datagram {
    // A blocked source is ignored before any parsing work.
    if blocklist.is_blocked(src.ip()) {
        metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
        return Datagram::Ignore;
    }
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Datagram::Ignore; // keep-alive
    }
    match parse_and_forward(data, src, Transport::Udp) {
        Ok(msg) => Datagram::Sip(msg),
        Err(Some(reply)) => Datagram::Reply(reply),
        Err(None) => Datagram::Ignore,
    }
}

pub(crate) async fn tcp_accept_loop(
    listener: TcpListener,
    core: mpsc::Sender<CoreIn>,
    writers: TcpWriters,
    blocklist: Blocklist,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stopped(&mut stop) => return,
        };
        if blocklist.is_blocked(peer.ip()) {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
            continue; // closed at once
        }
        tokio::spawn(tcp_conn(stream, peer, Transport::Tcp, core.clone(), writers.clone(), blocklist.clone(), stop.clone()));
    }
}

pub(crate) fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, GatewayError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| GatewayError::Media(format!("SIP TLS {what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&cert.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&key.display().to_string(), &e))?;
    let cfg =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).map_err(|e| bad("certificate", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

pub(crate) async fn tls_accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    core: mpsc::Sender<CoreIn>,
    writers: TcpWriters,
    blocklist: Blocklist,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stopped(&mut stop) => return,
        };
        if blocklist.is_blocked(peer.ip()) {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (acceptor, core, writers, stop) = (acceptor.clone(), core.clone(), writers.clone(), stop.clone());
        let blocklist = blocklist.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tcp_conn(tls, peer, Transport::Tls, core, writers, blocklist, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "SIP TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "SIP TLS handshake timed out"),
            }
        });
    }
}

/// Send on the TCP connection to `to`, opening one if there is none (e.g. a BYE to a phone
/// whose connection dropped).
pub(crate) fn send_tcp(writers: &TcpWriters, core: &mpsc::Sender<CoreIn>, to: SocketAddr, data: Vec<u8>) {
    if let Some(tx) = writers.lock().unwrap().get(&to) {
        let _ = tx.try_send(data);
        return;
    }
    let (writers, core) = (writers.clone(), core.clone());
    tokio::spawn(async move {
        match tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(to)).await {
            Ok(Ok(stream)) => {
                let (stop_tx, stop_rx) = watch::channel(false);
                let w = writers.clone();
                let task = tokio::spawn(tcp_conn(stream, to, Transport::Tcp, core, w, Blocklist::default(), stop_rx));
                // Wait until the connection task registered its writer, then send.
                for _ in 0..100 {
                    if let Some(tx) = writers.lock().unwrap().get(&to) {
                        let _ = tx.try_send(data);
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = task.await;
                drop(stop_tx);
            }
            _ => tracing::debug!(%to, "cannot open TCP connection for SIP"),
        }
    });
}

/// One SIP stream connection (TCP or TLS): framing in, writes out.
async fn tcp_conn<S>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    core: mpsc::Sender<CoreIn>,
    writers: TcpWriters,
    blocklist: Blocklist,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    writers.lock().unwrap().insert(peer, tx.clone());
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16 * 1024];
    // Resumable framing: a peer trickling bytes costs linear, not quadratic, CPU.
    let mut framer = trunkline_sip::Framer::new();
    'conn: loop {
        tokio::select! {
            r = rd.read(&mut chunk) => {
                let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match framer.next_frame(&buf) {
                        Ok(None) => {
                            if buf.len() > trunkline_sip::parse::MAX_MESSAGE * 2 { break 'conn }
                            break;
                        }
                        Ok(Some(trunkline_sip::Frame::KeepAlive { len, ping })) => {
                            buf.drain(..len);
                            if ping { let _ = tx.try_send(b"\r\n".to_vec()); }
                        }
                        Ok(Some(trunkline_sip::Frame::Message(len))) => {
                            if blocklist.is_blocked(peer.ip()) {
                                // Blocked while connected: the connection goes.
                                metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
                                break 'conn;
                            }
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            match parse_and_forward(&frame, peer, transport) {
                                Ok(msg) => {
                                    if core.send(CoreIn::Sip { src: peer, transport, msg }).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Err(Some(reply)) => { let _ = tx.try_send(reply); }
                                Err(None) => {}
                            }
                        }
                        Err(e) => {
                            // Framing is lost on a stream: answer if we can, then close.
                            if let Some(reply) = trunkline_sip::error_response(&buf, &e) {
                                let _ = wr.write_all(&reply).await;
                            }
                            break 'conn;
                        }
                    }
                }
            }
            out = rx.recv() => match out {
                Some(data) => { if wr.write_all(&data).await.is_err() { break } }
                None => break,
            },
            _ = stopped(&mut stop) => break,
        }
    }
    let mut w = writers.lock().unwrap();
    if w.get(&peer).is_some_and(|t| t.same_channel(&tx)) {
        w.remove(&peer);
    }
}

/// Sources the guard blocked (the core decides, [`Output::Block`]), checked before parsing.
#[derive(Clone, Default)]
pub(crate) struct Blocklist(Arc<Mutex<HashMap<IpAddr, Instant>>>);

/// Sources the blocklist holds at most. The guard's own table is bounded by `max_tracked`;
/// this copy only saves parsing what the guard would drop anyway, so past it the blocks that
/// end soonest are forgotten first (the core still drops their requests).
const BLOCKLIST_MAX: usize = 100_000;

impl Blocklist {
    /// Ignore `source` (an IPv4 address or an IPv6 /64 prefix, as the guard keys it) until `until`.
    pub(crate) fn block(&self, source: IpAddr, until: Instant) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let source = address_key(source);
        if m.len() >= BLOCKLIST_MAX && !m.contains_key(&source) {
            let now = Instant::now();
            m.retain(|_, t| *t > now);
            if m.len() >= BLOCKLIST_MAX {
                // Every block is live (a flood from many /64s): keep the longest ones.
                let mut ends: Vec<Instant> = m.values().copied().collect();
                let cut = ends.len() - BLOCKLIST_MAX * 9 / 10;
                let (_, nth, _) = ends.select_nth_unstable(cut);
                let nth = *nth;
                m.retain(|_, t| *t > nth);
            }
        }
        m.insert(source, until);
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        let key = address_key(ip);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&key) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                m.remove(&key);
                false
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_blocked_ipv6_source_is_its_whole_64_and_the_list_stays_bounded() {
        let list = Blocklist::default();
        let until = Instant::now() + Duration::from_secs(600);
        list.block("2001:db8:5:6::".parse().unwrap(), until);
        assert!(list.is_blocked("2001:db8:5:6:1:2:3:4".parse().unwrap()));
        assert!(list.is_blocked("2001:db8:5:6::ffff".parse().unwrap()));
        assert!(!list.is_blocked("2001:db8:5:7::1".parse().unwrap()));
        list.block("::ffff:192.0.2.9".parse().unwrap(), until);
        assert!(list.is_blocked("192.0.2.9".parse().unwrap()));
        assert!(!list.is_blocked("192.0.2.10".parse().unwrap()));

        // A flood of live blocks from distinct /64s: the list keeps its bound, and the newest
        // (longest) block is kept.
        let base = Instant::now() + Duration::from_secs(60);
        for i in 0..(BLOCKLIST_MAX as u32 + 5_000) {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb9, (i >> 16) as u16, i as u16, 0, 0, 0, 0);
            list.block(ip.into(), base + Duration::from_millis(u64::from(i)));
        }
        assert!(list.len() <= BLOCKLIST_MAX, "{}", list.len());
        let last = BLOCKLIST_MAX as u32 + 4_999;
        assert!(list.is_blocked(std::net::Ipv6Addr::new(0x2001, 0xdb9, (last >> 16) as u16, last as u16, 0, 0, 0, 9).into()));
    }
}
