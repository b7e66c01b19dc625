//! Trunkline switch gateway — the on-site network switch of patent CN110012057B (claim 4).
//!
//! - [`b2bua`]: the sans-IO core (registrar, digest, SIP transactions, B2BUA, queue, cloud exchange).
//! - [`queue`]: the call-waiting queue with one-time keys (claims 8–10).
//! - [`registrar`], [`phones`]: bindings and the local copy of this switch's phones.
//! - [`cloud_link`]: the persistent WebSocket to the signal server.
//! - [`bridge`]: the WebRTC legs of C14 over WebRTC and their bridges to desk phones (C15).
//! - this module: the thin tokio driver (the core's task, RTP relays, timers); `driver/`: SIP over
//!   UDP/TCP/TLS, the metrics endpoint, the session ⇄ cloud glue, the relay and echo ports the
//!   core takes (bound ahead of its calls: it does no IO).
//!
//! The gateway listens only for its desk phones (SIP) and on the UDP ports of its calls.
//! Callers elsewhere never connect to it: they reach it over WebRTC, with the offer/answer and
//! candidates relayed by the cloud over the gateway's own outbound link (`direct_signal`).

pub mod b2bua;
pub mod bridge;
pub mod cli;
pub mod cloud_link;
pub mod config;
mod driver;
pub mod echo;
pub mod guard;
pub mod healthcheck;
pub mod phones;
pub mod queue;
pub mod registrar;
pub mod steps;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use trunkline_media::ports::{PortAllocator, ReadyPairs};
use trunkline_media::relay::{Leg, Relay, RelayHandle};
use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg, ServerMsg};

use crate::b2bua::{Core, CoreConfig, MediaLeg, Output};
use crate::cloud_link::{LinkConfig, LinkEvent};
pub use crate::config::Config;
use crate::driver::media::{DriverMedia, PendingEchoes, PendingRelays};
use crate::driver::metrics_http::{metrics_handle, serve_metrics};
use crate::driver::sessions::{resolve_stun, session_events};
use crate::driver::sip_net::{
    Blocklist, Datagram, TcpWriters, send_tcp, tcp_accept_loop, tls_accept_loop, tls_acceptor, udp_datagram,
};
use crate::driver::stopped;
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

/// Run the gateway until `shutdown` resolves.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    run_with_steps(config, sockets, shutdown, steps::Steps::default()).await
}

/// [`run`], keeping the patent steps of each call in `steps` (read them with
/// [`steps::Steps::of`]).
pub async fn run_with_steps(
    config: Config,
    sockets: Sockets,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    steps: steps::Steps,
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
    let alloc = PortAllocator::new(config.rtp_range()?, bind_ip).map_err(|e| GatewayError::Media(e.to_string()))?;
    // The core is handed pairs bound here beforehand: no bind in its call stack.
    let ready = ReadyPairs::new(alloc, READY_PAIRS);
    let certs = bridge::ReadyCerts::default();
    let rtcs = bridge::ready_rtcs();
    let mut refill = Refill { ready: ready.clone(), certs: certs.clone(), rtcs: rtcs.clone(), failing: false, discarded: None };
    refill.run();
    let pending: PendingRelays = Arc::default();
    let pending_echoes: PendingEchoes = Arc::default();
    let media = DriverMedia { ready: ready.clone(), adv_ip, relays: pending.clone(), echoes: pending_echoes.clone(), next: 0 };
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
    let mut core = Core::new(
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
        Box::new(
            bridge::DriverBridges::new(
                ready.clone(),
                certs,
                adv_ip,
                pending_bridges.clone(),
                attachments.clone(),
                <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng()),
            )
            .with_ready_rtcs(rtcs),
        ),
        inputs,
    );
    let restored = core.restore_registrations(Instant::now(), phones::load_registrations(&config.state_dir));
    if restored > 0 {
        tracing::info!(bindings = restored, "registrations restored from the state directory");
    }
    let (phone_store, _) = spawn_store(config.state_dir.clone(), "local phone list", phones::save);
    let (registration_store, registrations_saved) =
        spawn_store(config.state_dir.clone(), "registrations", phones::save_registrations);

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
        pending_echoes,
        refill,
        pending_bridges,
        attachments,
        stun_servers,
        phone_store,
        registration_store,
        core_tx.clone(),
        blocklist,
        steps,
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
    let _ = tcp_task.await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let _ = core_task.await;
    // The core's last outputs included the registrations to save: written before we return.
    let _ = registrations_saved.await;
    Ok(())
}

/// SIP datagrams the core reads per turn before it looks at its other inputs and timers.
const UDP_BATCH: usize = 64;

#[allow(clippy::too_many_arguments)]
async fn core_loop(
    mut core: Core,
    mut rx: mpsc::Receiver<CoreIn>,
    udp: Arc<UdpSocket>,
    tcp: TcpWriters,
    link: mpsc::Sender<ClientMsg>,
    pending: PendingRelays,
    pending_echoes: PendingEchoes,
    mut refill: Refill,
    pending_bridges: bridge::PendingBridges,
    attachments: bridge::Attachments,
    stun_servers: bridge::StunServers,
    phone_store: mpsc::UnboundedSender<phones::PhoneList>,
    registration_store: mpsc::UnboundedSender<registrar::SavedRegistrations>,
    core_tx: mpsc::Sender<CoreIn>,
    blocklist: Blocklist,
    steps: steps::Steps,
    mut stop: watch::Receiver<bool>,
) {
    let mut relays: HashMap<u64, RelayHandle> = HashMap::new();
    let mut echoes: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    // Running sessions (their bridge tasks) by id.
    let mut bridges: HashMap<u64, mpsc::UnboundedSender<bridge::BridgeCmd>> = HashMap::new();
    // F2 caller side: sessions waiting for their answer, and early candidates.
    let mut outbound: HashMap<u64, (String, String)> = HashMap::new();
    let mut early_candidates: HashMap<u64, Vec<String>> = HashMap::new();
    let mut batch = Vec::with_capacity(64);
    let mut udp_buf = vec![0u8; 65_536];
    let mut stopping: Vec<tokio::sync::oneshot::Sender<()>> = vec![];
    // Registered once, not looked up by name every turn (the recorder is installed before this).
    let transactions = metrics::gauge!("trunkline_sip_server_transactions");
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
                    // After each input, not each batch: a burst of calls must not empty the pool.
                    refill.run();
                }
            }
            // SIP over UDP, read here rather than by a task of its own (`udp_datagram`): up to
            // a batch of datagrams per turn, then the timers and other inputs get theirs.
            r = udp.readable() => {
                if r.is_err() { continue }
                let now = Instant::now();
                for _ in 0..UDP_BATCH {
                    let (n, src) = match udp.try_recv_from(&mut udp_buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP port unreachable and the like surface here on some systems.
                        Err(_) => continue,
                    };
                    match udp_datagram(&udp_buf[..n], src, &blocklist) {
                        Datagram::Sip(msg) => core.on_sip(now, src, Transport::Udp, msg),
                        Datagram::Reply(reply) => {
                            let _ = udp.try_send_to(&reply, src);
                        }
                        Datagram::Ignore => continue,
                    }
                    refill.run();
                }
            }
            _ = async { match deadline { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {
                core.handle_timeout(Instant::now());
                refill.run();
            }
            _ = stopped(&mut stop) => break,
        }
        transactions.set(core.server_transactions() as f64);
        while let Some(out) = core.poll_output() {
            match out {
                Output::Block { ip, until } => blocklist.block(ip, until),
                Output::Step { call_id, step, detail } => steps.record(&call_id, step, &detail),
                Output::SavePhones(list) => {
                    let _ = phone_store.send(list);
                }
                Output::SaveRegistrations(saved) => {
                    let _ = registration_store.send(saved);
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
                Output::EchoStart { id } => {
                    if let Some(p) = pending_echoes.lock().unwrap().remove(&id) {
                        echoes.insert(id, tokio::spawn(echo::run(p.sock, p.remote, p.pt)).abort_handle());
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
                    pending_echoes.lock().unwrap().remove(&id);
                    if let Some(task) = echoes.remove(&id) {
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

/// Port pairs kept bound for the core to take ([`ReadyPairs`]): a call takes at most two, so
/// this covers any burst of calls between two refills with room to spare.
const READY_PAIRS: usize = 32;

/// Tops up what the core's calls take without IO: port pairs ([`ReadyPairs`], logging when
/// that starts and stops failing, not on every call), DTLS certificates and legs' `Rtc`s
/// (those on the blocking pool).
struct Refill {
    ready: ReadyPairs,
    certs: bridge::ReadyCerts,
    rtcs: bridge::ReadyRtcs,
    failing: bool,
    /// When strangers' datagrams were last discarded from the waiting pairs.
    discarded: Option<Instant>,
}

/// How often, at most, the waiting pairs are emptied of what strangers sent them (after an
/// input). Each time looks at all 64 sockets: after every input of a registration storm that
/// was 4 % of a registration's instructions. As before, a datagram that reaches a waiting pair
/// just before the call that takes it may stay; a leg whose SDP address is usable latches to
/// that address anyway (`media::latch`).
const DISCARD_EVERY: Duration = Duration::from_millis(20);

impl Refill {
    fn run(&mut self) {
        // Off this task: about 1 ms of CPU per `Rtc`, which must not delay the core's outputs.
        self.rtcs.top_up();
        self.certs.refill();
        let ready = &self.ready;
        let now = Instant::now();
        let due = self.discarded.is_none_or(|t| now.saturating_duration_since(t) >= DISCARD_EVERY);
        let filled = if due {
            self.discarded = Some(now);
            ready.refill()
        } else {
            ready.top_up()
        };
        match filled {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(ready = ready.len(), "RTP port pairs available again");
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, ready = ready.len(), "cannot bind RTP port pairs ahead of calls");
            }
            Err(_) => {}
        }
    }
}

/// Saves what the core hands over (`what`: the phone list, the registrations) with `save`, in
/// order, on the blocking pool (a file write and an fsync must not stall the core's task); of
/// a burst only the latest is written. The task ends, after its last write, once the core's
/// side is dropped.
fn spawn_store<T: Send + 'static>(
    state_dir: std::path::PathBuf,
    what: &'static str,
    save: fn(&std::path::Path, &T) -> std::io::Result<()>,
) -> (mpsc::UnboundedSender<T>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<T>();
    let task = tokio::spawn(async move {
        while let Some(mut latest) = rx.recv().await {
            while let Ok(newer) = rx.try_recv() {
                latest = newer;
            }
            let dir = state_dir.clone();
            match tokio::task::spawn_blocking(move || save(&dir, &latest)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(dir = %state_dir.display(), error = %e, "cannot save the {what}"),
                Err(e) => tracing::error!(error = %e, "the task saving the {what} failed"),
            }
        }
    });
    (tx, task)
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
