//! Trunkline switch gateway — the on-site network switch of patent CN110012057B (claim 4).
//!
//! - [`b2bua`]: the sans-IO core (registrar, digest, SIP transactions, B2BUA, queue, cloud exchange).
//! - [`queue`]: the call-waiting queue with one-time keys (claims 8–10).
//! - [`registrar`], [`phones`]: bindings and the local copy of this switch's phones.
//! - [`cloud_link`]: the persistent WebSocket to the signal server.
//! - [`bridge`]: the WebRTC legs of C14 over WebRTC and their bridges to desk phones (C15).
//! - this module: the thin tokio driver (SIP over UDP/TCP/TLS, sessions, RTP relays, timers).
//!
//! The gateway listens only for its desk phones (SIP) and on the UDP ports of its calls.
//! Callers elsewhere never connect to it: they reach it over WebRTC, with the offer/answer and
//! candidates relayed by the cloud over the gateway's own outbound link (`direct_signal`).

pub mod b2bua;
pub mod bridge;
pub mod cli;
pub mod cloud_link;
pub mod config;
pub mod echo;
pub mod guard;
pub mod healthcheck;
pub mod phones;
pub mod queue;
pub mod registrar;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use trunkline_media::ports::{LegSockets, PortAllocator};
use trunkline_media::relay::{Leg, Relay, RelayHandle};
use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg, ServerMsg};

use crate::b2bua::{Core, CoreConfig, EchoSetup, MediaLeg, MediaPair, MediaPorts, Output};
use crate::cloud_link::{LinkConfig, LinkEvent};
pub use crate::config::Config;
use crate::phones::Phones;
use crate::registrar::Transport;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("RTP ports: {0}")]
    Media(String),
    #[error("cloud link TLS: {0}")]
    CloudTls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The sockets the gateway serves on (bound by the caller, so tests can use port 0): SIP for
/// its desk phones only. There is no listener for callers: they come over WebRTC.
pub struct Sockets {
    pub sip_udp: UdpSocket,
    pub sip_tcp: TcpListener,
    /// SIP over TLS (with `config.sip_tls`).
    pub sip_tls: Option<TcpListener>,
}

impl Sockets {
    /// Bind what `config` names.
    pub async fn bind(config: &Config) -> std::io::Result<Sockets> {
        Ok(Sockets {
            sip_udp: UdpSocket::bind(config.sip_listen).await?,
            sip_tcp: TcpListener::bind(config.sip_listen).await?,
            sip_tls: match &config.sip_tls {
                Some(t) => Some(TcpListener::bind(t.listen).await?),
                None => None,
            },
        })
    }
}

enum CoreIn {
    Sip {
        src: SocketAddr,
        transport: Transport,
        msg: trunkline_sip::Message,
    },
    Cloud(LinkEvent),
    /// Text on session `id`'s DataChannel (carrier side).
    Channel {
        id: u64,
        msg: DirectClientMsg,
    },
    /// Session `id`'s leg is gone (carrier side).
    SessionGone {
        id: u64,
    },
    /// What the callee switch said to our session `id` (F2 caller side).
    Remote {
        id: u64,
        ev: b2bua::RemoteEvent,
    },
    /// The gateway is stopping: end every call ([`Core::shutdown`]); answered once its
    /// outputs are out (BYEs sent, the cloud's `ended` queued on the link).
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// The cloud link signs in: which cloud calls do we carry ([`Core::cloud_calls`])?
    Carried(tokio::sync::oneshot::Sender<Vec<String>>),
}

type TcpWriters = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Relay ports: pairs are bound at allocation (so the SDP can name them) and started later.
struct DriverMedia {
    alloc: Arc<PortAllocator>,
    adv_ip: IpAddr,
    pending: Arc<Mutex<HashMap<u64, (LegSockets, LegSockets)>>>,
    echoes: Echoes,
    next: u64,
}

type Echoes = Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>>;

impl MediaPorts for DriverMedia {
    fn allocate(&mut self) -> Option<MediaPair> {
        let a = self.alloc.allocate().map_err(|e| tracing::error!(error = %e, "no RTP ports")).ok()?;
        let b = self.alloc.allocate().map_err(|e| tracing::error!(error = %e, "no RTP ports")).ok()?;
        self.next += 1;
        let pair = MediaPair {
            id: self.next,
            a_local: SocketAddr::new(self.adv_ip, a.rtp_port()),
            b_local: SocketAddr::new(self.adv_ip, b.rtp_port()),
        };
        self.pending.lock().unwrap().insert(self.next, (a, b));
        Some(pair)
    }

    fn start_echo(&mut self, offer: &str) -> Option<EchoSetup> {
        let sdp = trunkline_media::sdp::Sdp::parse(offer).ok()?;
        let audio = sdp.audio.as_ref()?;
        let pt = audio.payload_types.iter().copied().find(|p| *p == 0 || *p == 8)?;
        let remote = sdp.audio_rtp_addr();
        let sock = self.alloc.allocate().map_err(|e| tracing::error!(error = %e, "no RTP ports for the echo test")).ok()?;
        self.next += 1;
        let port = sock.rtp_port();
        let ip = self.adv_ip;
        let law = trunkline_media::g711::Law::from_payload_type(pt)?;
        let answer = trunkline_media::sdp::AudioSdp::new(ip, port)
            .origin("trunkline-echo", self.next)
            .session_name("Echo test")
            .law(law)
            .build()
            .ok()?;
        let task = tokio::spawn(echo::run(sock, remote, pt));
        self.echoes.lock().unwrap().insert(self.next, task.abort_handle());
        Some(EchoSetup { id: self.next, local: SocketAddr::new(ip, port), answer })
    }
}

/// Run the gateway until `shutdown` resolves.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    // One process-wide crypto provider for rustls (wss:// to the cloud, SIP over TLS).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let secret = config.read_secret()?;
    let cloud_tls = if config.cloud_url.starts_with("wss://") {
        Some(Arc::new(cloud_link::tls_config(config.cloud_ca_file.as_deref()).map_err(GatewayError::CloudTls)?))
    } else {
        None
    };
    let tls_acceptor = match (&config.sip_tls, &sockets.sip_tls) {
        (Some(t), Some(_)) => Some(tls_acceptor(&t.cert_file, &t.key_file)?),
        _ => None,
    };
    // A deep receive buffer: bursts of SIP (registration storms, many calls) must not be
    // dropped by the kernel while the core is busy.
    let _ = socket2::SockRef::from(&sockets.sip_udp).set_recv_buffer_size(4 << 20);
    // And a deep send buffer: answers queued at peers that never read them (a scanner's
    // socket) must not fill it and starve the answers to real phones.
    let _ = socket2::SockRef::from(&sockets.sip_udp).set_send_buffer_size(4 << 20);
    let udp = Arc::new(sockets.sip_udp);
    let sip_port = udp.local_addr()?.port();
    let adv_ip = config.advertise_ip();
    let bind_ip = config.sip_listen.ip();
    let alloc = Arc::new(PortAllocator::new(config.rtp_range()?, bind_ip).map_err(|e| GatewayError::Media(e.to_string()))?);
    let pending = Arc::new(Mutex::new(HashMap::new()));
    let echoes: Echoes = Arc::default();
    let media = DriverMedia { alloc: alloc.clone(), adv_ip, pending: pending.clone(), echoes: echoes.clone(), next: 0 };
    let pending_bridges: bridge::PendingBridges = Arc::default();
    let attachments: bridge::Attachments = Arc::default();
    // TURN over TLS (`turns:`) trusts what the cloud link trusts: the public roots plus
    // cloud_ca_file's CAs.
    let turn_tls = match cloud_link::tls_config(config.cloud_ca_file.as_deref()) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for TURN servers");
            None
        }
    };
    let stun_servers: bridge::StunServers = Arc::new(Mutex::new(bridge::SessionIce { turn_tls, ..Default::default() }));
    let phones = Phones::load(&config.state_dir);
    // The core reads no clock and draws no OS randomness: it gets them here, once.
    let inputs = {
        use rand::RngCore;
        let mut inputs =
            b2bua::CoreInputs { clock_base: (Instant::now(), unix_ms_now()), rng_seed: [0; 32], nonce_secret: [0; 32] };
        rand::rng().fill_bytes(&mut inputs.rng_seed);
        rand::rng().fill_bytes(&mut inputs.nonce_secret);
        inputs
    };
    let core = Core::new(
        CoreConfig {
            switch_id: config.id.clone(),
            adv_ip,
            sip_port,
            ring_timeout: config.ring_timeout(),
            key_ttl: config.key_ttl(),
            min_expires: config.min_expires_secs,
            max_expires: config.max_expires_secs,
            echo_number: config.echo_number.clone(),
            guard: config.sip_guard.clone(),
            digest_algorithms: config
                .digest_algorithms
                .iter()
                .map(|a| {
                    if a == "SHA-256" { trunkline_sip::digest::Algorithm::Sha256 } else { trunkline_sip::digest::Algorithm::Md5 }
                })
                .collect(),
        },
        phones,
        Box::new(media),
        Box::new(bridge::DriverBridges::new(alloc.clone(), adv_ip, pending_bridges.clone(), attachments.clone())),
        inputs,
    );
    let phone_store = spawn_phone_store(config.state_dir.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let (core_tx, core_rx) = mpsc::channel::<CoreIn>(16 * 1024);
    let (link_out_tx, link_out_rx) = mpsc::channel::<ClientMsg>(4096);
    let (link_ev_tx, mut link_ev_rx) = mpsc::channel::<LinkEvent>(4096);
    let tcp_writers: TcpWriters = Arc::default();

    tracing::info!(switch_id = %config.id, sip = %udp.local_addr()?, cloud = %config.cloud_url, "switch gateway starting");

    // Cloud link, and its events into the core.
    let link = tokio::spawn(cloud_link::run(
        LinkConfig {
            url: config.cloud_url.clone(),
            switch_id: config.id.clone(),
            secret,
            tls: cloud_tls,
            carried: Some({
                let core_tx = core_tx.clone();
                Arc::new(move || {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = core_tx.try_send(CoreIn::Carried(tx));
                    rx
                })
            }),
        },
        link_ev_tx,
        link_out_rx,
        stop_rx.clone(),
    ));
    {
        let core_tx = core_tx.clone();
        let stun_servers = stun_servers.clone();
        tokio::spawn(async move {
            while let Some(ev) = link_ev_rx.recv().await {
                // The cloud's STUN and TURN servers, for the server-reflexive and relayed
                // candidates of sessions.
                if let LinkEvent::Msg(ServerMsg::SwitchWelcome { ice_servers, .. } | ServerMsg::IceServers { ice_servers, .. }) =
                    &ev
                {
                    tokio::spawn(resolve_stun(ice_servers.clone(), stun_servers.clone()));
                }
                if core_tx.send(CoreIn::Cloud(ev)).await.is_err() {
                    break;
                }
            }
        });
    }

    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "Prometheus metrics at /metrics");
        tokio::spawn(serve_metrics(listener, metrics_handle(), stop_rx.clone()));
    }
    let blocklist = Blocklist::default();
    let udp_task = tokio::spawn(udp_loop(udp.clone(), core_tx.clone(), blocklist.clone(), stop_rx.clone()));
    let tcp_task =
        tokio::spawn(tcp_accept_loop(sockets.sip_tcp, core_tx.clone(), tcp_writers.clone(), blocklist.clone(), stop_rx.clone()));
    let tls_task = match (sockets.sip_tls, tls_acceptor) {
        (Some(l), Some(acceptor)) => {
            tracing::info!(addr = %l.local_addr()?, "SIP over TLS");
            Some(tokio::spawn(tls_accept_loop(
                l,
                acceptor,
                core_tx.clone(),
                tcp_writers.clone(),
                blocklist.clone(),
                stop_rx.clone(),
            )))
        }
        _ => None,
    };

    let core_task = tokio::spawn(core_loop(
        core,
        core_rx,
        udp,
        tcp_writers,
        link_out_tx,
        pending,
        pending_bridges,
        attachments,
        stun_servers,
        echoes,
        phone_store,
        core_tx.clone(),
        blocklist,
        stop_rx.clone(),
    ));

    shutdown.await;
    tracing::info!("switch gateway stopping");
    // End every call first (BYE to its phones, `ended` on its direct connection and to the
    // cloud, so the cloud writes each call's record); then stop. The cloud link sends what is
    // queued before it closes.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if core_tx.send(CoreIn::Shutdown(done_tx)).await.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), done_rx).await;
    }
    drop(core_tx);
    let _ = stop_tx.send(true);
    let _ = link.await;
    let _ = udp_task.await;
    let _ = tcp_task.await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let _ = core_task.await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn core_loop(
    mut core: Core,
    mut rx: mpsc::Receiver<CoreIn>,
    udp: Arc<UdpSocket>,
    tcp: TcpWriters,
    link: mpsc::Sender<ClientMsg>,
    pending: Arc<Mutex<HashMap<u64, (LegSockets, LegSockets)>>>,
    pending_bridges: bridge::PendingBridges,
    attachments: bridge::Attachments,
    stun_servers: bridge::StunServers,
    echoes: Echoes,
    phone_store: mpsc::UnboundedSender<phones::PhoneList>,
    core_tx: mpsc::Sender<CoreIn>,
    blocklist: Blocklist,
    mut stop: watch::Receiver<bool>,
) {
    let mut relays: HashMap<u64, RelayHandle> = HashMap::new();
    // Running sessions (their bridge tasks) by id.
    let mut bridges: HashMap<u64, mpsc::UnboundedSender<bridge::BridgeCmd>> = HashMap::new();
    // F2 caller side: sessions waiting for their answer, and early candidates.
    let mut outbound: HashMap<u64, (String, String)> = HashMap::new();
    let mut early_candidates: HashMap<u64, Vec<String>> = HashMap::new();
    let mut batch = Vec::with_capacity(64);
    let mut stopping: Vec<tokio::sync::oneshot::Sender<()>> = vec![];
    loop {
        let deadline = core.poll_timeout();
        tokio::select! {
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 { break }
                let now = Instant::now();
                for input in batch.drain(..) {
                    match input {
                        CoreIn::Sip { src, transport, msg } => core.on_sip(now, src, transport, msg),
                        CoreIn::Cloud(ev) => core.on_cloud(now, ev),
                        CoreIn::Channel { id, msg } => core.on_direct(now, id, msg),
                        CoreIn::Remote { id, ev } => core.on_remote(now, id, ev),
                        CoreIn::SessionGone { id } => core.on_direct_gone(now, id),
                        CoreIn::Shutdown(done) => {
                            core.shutdown(now);
                            stopping.push(done);
                        }
                        CoreIn::Carried(reply) => {
                            let _ = reply.send(core.cloud_calls());
                        }
                    }
                }
            }
            _ = async { match deadline { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {
                core.handle_timeout(Instant::now());
            }
            _ = stopped(&mut stop) => break,
        }
        metrics::gauge!("trunkline_sip_server_transactions").set(core.server_transactions() as f64);
        while let Some(out) = core.poll_output() {
            match out {
                Output::Block { ip, until } => blocklist.block(ip, until),
                Output::SavePhones(list) => {
                    let _ = phone_store.send(list);
                }
                Output::Sip { to, transport: Transport::Udp, data } => {
                    if let Err(e) = udp.try_send_to(&data, to) {
                        tracing::debug!(%to, error = %e, "UDP send failed");
                    }
                }
                Output::Sip { to, transport: Transport::Tcp, data } => send_tcp(&tcp, &core_tx, to, data),
                Output::Sip { to, transport: Transport::Tls, data } => {
                    // TLS phones keep their connection open; we do not dial out over TLS.
                    match tcp.lock().unwrap().get(&to) {
                        Some(tx) => {
                            let _ = tx.try_send(data);
                        }
                        None => tracing::debug!(%to, "no TLS connection to this phone; message dropped"),
                    }
                }
                Output::Cloud(m) => {
                    if link.try_send(m).is_err() {
                        tracing::warn!("cloud link queue full or down: message dropped");
                    }
                }
                Output::Direct { conn, msg, close } => {
                    // A session's DataChannel (its answer went through the cloud).
                    if let Some(b) = bridges.get(&conn) {
                        let refused = close && matches!(msg, DirectServerMsg::Error { .. });
                        let _ = b.send(bridge::BridgeCmd::Dc(msg.encode()));
                        if refused {
                            let _ = b.send(bridge::BridgeCmd::Stop);
                        }
                    }
                }
                Output::SessionStart { id, call_id, present: Some(present) } => {
                    // F2 caller side: starts at its BridgeStart, once the answer is applied.
                    outbound.insert(id, (call_id, present.encode()));
                }
                Output::SessionStart { id, call_id, present: None } => {
                    let Some(p) = pending_bridges.lock().unwrap().remove(&id) else { continue };
                    let ice = stun_servers.lock().unwrap().clone();
                    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
                    let tx = bridge::start_session(p, None, ice, None, ev_tx);
                    bridges.insert(id, tx.clone());
                    tokio::spawn(session_events(id, false, call_id, ev_rx, tx, core_tx.clone(), link.clone()));
                }
                Output::SessionCandidate { id, candidate } => {
                    match bridges.get(&id) {
                        Some(b) => {
                            let _ = b.send(bridge::BridgeCmd::RemoteCandidate(candidate));
                        }
                        // Trickled before our outbound session started (its answer was late).
                        None => early_candidates.entry(id).or_default().push(candidate),
                    }
                }
                Output::MediaStart { id, a_remote, b_remote } => {
                    if let Some((a, b)) = pending.lock().unwrap().remove(&id) {
                        relays.insert(id, Relay::start(a, b, a_remote, b_remote));
                    }
                }
                Output::MediaRemote { id, leg, addr } => {
                    if let Some(r) = relays.get(&id) {
                        r.set_remote(if leg == MediaLeg::A { Leg::A } else { Leg::B }, addr);
                    }
                }
                Output::BridgeStart { id, phone } => {
                    let pending = pending_bridges.lock().unwrap().remove(&id);
                    match (pending, outbound.remove(&id)) {
                        // F2 caller side: the answer is applied, start the session.
                        (Some(p), Some((call_id, present))) => {
                            let ice = stun_servers.lock().unwrap().clone();
                            let (ev_tx, ev_rx) = mpsc::unbounded_channel();
                            let tx = bridge::start_session(p, phone, ice, Some(present), ev_tx);
                            for c in early_candidates.remove(&id).unwrap_or_default() {
                                let _ = tx.send(bridge::BridgeCmd::RemoteCandidate(c));
                            }
                            bridges.insert(id, tx.clone());
                            tokio::spawn(session_events(id, true, call_id, ev_rx, tx, core_tx.clone(), link.clone()));
                        }
                        (Some(_), None) => tracing::warn!(bridge = id, "a bridge to start that is no session"),
                        (None, _) => {
                            let leg = attachments.lock().unwrap().remove(&id);
                            if let (Some(leg), Some(b)) = (leg, bridges.get(&id)) {
                                // C15 for a session: its key was accepted, bridge to the phone now.
                                let _ = b.send(bridge::BridgeCmd::Attach(leg, phone));
                            }
                        }
                    }
                }
                Output::BridgeRemote { id, phone } => {
                    if let Some(b) = bridges.get(&id) {
                        let _ = b.send(bridge::BridgeCmd::PhoneRemote(phone));
                    }
                }
                Output::SessionHangup { id } => {
                    if let Some(b) = bridges.get(&id) {
                        // F2 caller side: leave on the DataChannel.
                        let _ = b.send(bridge::BridgeCmd::Dc(DirectClientMsg::Hangup.encode()));
                    }
                }
                Output::BridgeStop { id } => {
                    pending_bridges.lock().unwrap().remove(&id);
                    attachments.lock().unwrap().remove(&id);
                    outbound.remove(&id);
                    early_candidates.remove(&id);
                    if let Some(b) = bridges.remove(&id) {
                        let _ = b.send(bridge::BridgeCmd::Stop);
                    }
                }
                Output::MediaStop { id } => {
                    pending.lock().unwrap().remove(&id);
                    if let Some(task) = echoes.lock().unwrap().remove(&id) {
                        task.abort();
                    }
                    if let Some(r) = relays.remove(&id) {
                        r.stop();
                    }
                }
            }
        }
        for done in stopping.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Saves the phone lists the core hands over, in order, on the blocking pool (a file write and
/// an fsync must not stall the core's task); of a burst only the latest is written.
fn spawn_phone_store(state_dir: std::path::PathBuf) -> mpsc::UnboundedSender<phones::PhoneList> {
    let (tx, mut rx) = mpsc::unbounded_channel::<phones::PhoneList>();
    tokio::spawn(async move {
        while let Some(mut list) = rx.recv().await {
            while let Ok(newer) = rx.try_recv() {
                list = newer;
            }
            let dir = state_dir.clone();
            match tokio::task::spawn_blocking(move || phones::save(&dir, &list)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(dir = %state_dir.display(), error = %e, "cannot save local phone list"),
                Err(e) => tracing::error!(error = %e, "phone list save task failed"),
            }
        }
    });
    tx
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Session `id`'s events: its candidates go to the cloud (trickle), its DataChannel text to the
/// core ([`Core::on_direct`]), its end as the session going away.
///
/// `remote` (F2 caller side): what the callee switch says comes back as
/// [`b2bua::RemoteEvent`]s instead.
async fn session_events(
    id: u64,
    remote: bool,
    call_id: String,
    mut events: mpsc::UnboundedReceiver<bridge::SessionEvent>,
    bridge: mpsc::UnboundedSender<bridge::BridgeCmd>,
    core: mpsc::Sender<CoreIn>,
    link: mpsc::Sender<ClientMsg>,
) {
    use trunkline_protocol::SignalPayload;
    while let Some(ev) = events.recv().await {
        match ev {
            bridge::SessionEvent::Candidate(candidate) => {
                let payload = SignalPayload::Ice { candidate, sdp_mid: None, sdp_m_line_index: Some(0) };
                let _ = link.try_send(ClientMsg::DirectSignal { call_id: call_id.clone(), payload });
            }
            bridge::SessionEvent::Dc(text) if remote => {
                let ev = match DirectServerMsg::decode(&text) {
                    Ok(DirectServerMsg::Accepted { .. }) => b2bua::RemoteEvent::Accepted,
                    Ok(DirectServerMsg::Progress { event }) => b2bua::RemoteEvent::Progress(event),
                    Ok(DirectServerMsg::Ended { outcome }) => b2bua::RemoteEvent::Ended(outcome),
                    Ok(DirectServerMsg::Error { code, message }) => b2bua::RemoteEvent::Refused { code, message },
                    Ok(DirectServerMsg::Answer { .. }) => continue,
                    Err(e) => {
                        tracing::debug!(%call_id, error = %e, "bad DataChannel message from the callee switch");
                        continue;
                    }
                };
                if core.send(CoreIn::Remote { id, ev }).await.is_err() {
                    return;
                }
            }
            bridge::SessionEvent::Dc(text) => match DirectClientMsg::decode(&text) {
                Ok(msg) => {
                    if core.send(CoreIn::Channel { id, msg }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let reply = DirectServerMsg::Error { code: e.code, message: e.message };
                    let _ = bridge.send(bridge::BridgeCmd::Dc(reply.encode()));
                }
            },
            bridge::SessionEvent::Gone(why) => {
                tracing::info!(%call_id, %why, "session ended");
                let msg = if remote {
                    CoreIn::Remote { id, ev: b2bua::RemoteEvent::Closed(why.to_string()) }
                } else {
                    CoreIn::SessionGone { id }
                };
                let _ = core.send(msg).await;
                return;
            }
        }
    }
}

/// Resolve the `stun:` URLs of `ice_servers` into the addresses sessions probe, and the
/// `turn:`/`turns:` URLs (with their entry's credentials) into the servers sessions allocate
/// relayed addresses on. The credentials are never logged.
async fn resolve_stun(ice_servers: Vec<trunkline_protocol::IceServer>, into: bridge::StunServers) {
    let (stun_urls, turn_urls) = bridge::ice_plan(&ice_servers);
    let mut addrs = vec![];
    for (host, port) in stun_urls {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(found) => addrs.extend(found.filter(|a| a.is_ipv4()).take(1)),
            Err(e) => tracing::warn!(%host, port, error = %e, "cannot resolve STUN server"),
        }
    }
    addrs.dedup();
    let mut turn = vec![];
    for (url, username, credential) in turn_urls {
        match tokio::net::lookup_host((url.host.as_str(), url.port)).await {
            Ok(mut found) => {
                if let Some(addr) = found.find(|a| a.is_ipv4()) {
                    turn.push(trunkline_media::turn::TurnServer::new(url.transport, addr, &url.host, &username, &credential));
                }
            }
            Err(e) => tracing::warn!(host = %url.host, port = url.port, error = %e, "cannot resolve TURN server"),
        }
    }
    tracing::info!(servers = ?addrs, "STUN servers for server-reflexive candidates");
    tracing::info!(
        servers = ?turn.iter().map(|t| format!("{}:{}", t.transport.as_str(), t.addr)).collect::<Vec<_>>(),
        "TURN servers for relayed candidates"
    );
    let mut ice = into.lock().unwrap();
    ice.stun = addrs;
    ice.turn = turn;
}

fn parse_and_forward(data: &[u8], src: SocketAddr, transport: Transport) -> Result<trunkline_sip::Message, Option<Vec<u8>>> {
    match trunkline_sip::parse(data) {
        Ok(m) => Ok(m),
        Err(e) => {
            tracing::debug!(%src, status = e.status, reason = %e.reason, ?transport, "malformed SIP");
            Err(trunkline_sip::error_response(data, &e))
        }
    }
}

async fn udp_loop(udp: Arc<UdpSocket>, core: mpsc::Sender<CoreIn>, blocklist: Blocklist, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, src) = tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP port unreachable and the like surface here on some systems; keep going.
                Err(_) => continue,
            },
            _ = stopped(&mut stop) => return,
        };
        // A blocked source is ignored before any parsing work.
        if blocklist.is_blocked(src.ip()) {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
            continue;
        }
        let data = &buf[..n];
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        match parse_and_forward(data, src, Transport::Udp) {
            Ok(msg) => {
                if core.send(CoreIn::Sip { src, transport: Transport::Udp, msg }).await.is_err() {
                    return;
                }
            }
            Err(Some(reply)) => {
                let _ = udp.send_to(&reply, src).await;
            }
            Err(None) => {}
        }
    }
}

async fn tcp_accept_loop(
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

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, GatewayError> {
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

async fn tls_accept_loop(
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
fn send_tcp(writers: &TcpWriters, core: &mpsc::Sender<CoreIn>, to: SocketAddr, data: Vec<u8>) {
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
struct Blocklist(Arc<Mutex<HashMap<IpAddr, Instant>>>);

impl Blocklist {
    fn block(&self, ip: IpAddr, until: Instant) {
        let mut m = self.0.lock().unwrap();
        // Bounded like the guard's own table: expired blocks go when it grows.
        if m.len() >= 100_000 {
            let now = Instant::now();
            m.retain(|_, t| *t > now);
        }
        m.insert(ip, until);
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        let mut m = self.0.lock().unwrap();
        match m.get(&ip) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                m.remove(&ip);
                false
            }
            None => false,
        }
    }
}

/// The process's Prometheus recorder (installed by the first gateway to ask; a test process
/// running a signal server too may already have one, whose handle is then not this one).
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// `GET /metrics` in Prometheus text; anything else 404. One request per connection, a
/// bounded head and a deadline: this port is for a local scraper.
async fn serve_metrics(
    listener: TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stopped(&mut stop) => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            if !matches!(tokio::time::timeout(std::time::Duration::from_secs(5), read).await, Ok(true)) {
                return;
            }
            let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(b"")).into_owned();
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                handle.run_upkeep();
                ("200 OK", "text/plain; version=0.0.4", handle.render())
            } else {
                ("404 Not Found", "text/plain", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
