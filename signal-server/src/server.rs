//! The thin tokio driver around the steering engine.
//!
//! - one task per WebSocket connection: authenticates it (argon2 off the async threads), then
//!   decodes frames ([`ClientMsg::decode`]) and applies typed messages to the engine itself
//!   (the [`Hub`]: the [`Engine`] and the per-connection outboxes behind one lock);
//! - one timer task: fires the engine's deadlines;
//! - one store task: writes call records (batched) and switch online state in order;
//! - one directory watcher: reloads the directory when the admin API or CLI changed it;
//! - one push task: sends the engine's Web Push wake-ups ([`crate::push`]) and tells the engine
//!   when nobody could be woken. Browsers' `push_subscribe` / `push_unsubscribe` go straight to
//!   the directory from their connection task (the engine has no part in them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use trunkline_protocol::{AccountKind, CallId, ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};

use crate::admin_api::{self, AdminState};
use crate::cluster::runtime::{BusCmd, ClusterState, HubOps};
use crate::config::Config;
use crate::credentials;
use crate::directory::{CallRecord, Directory, DirectoryError, PushSubscription, UnixMs};
use crate::ice::IceServers;
use crate::net::ConnSlot;
use crate::push::{self, PushError, PushSender};
use crate::ratelimit::{Policy, Refused, Throttle};
use crate::steering::{AttemptRow, ConnId, Engine, Output, Party};

/// WebSocket close codes of this server (docs/protocol.md, "Connection rules").
pub const CLOSE_SIGN_IN_DEADLINE: u16 = 4408;
pub const CLOSE_PING_TIMEOUT: u16 = 4409;
/// RFC 6455: a frame or message too big to process (`limits.ws_max_frame_bytes`).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Shortest admin token accepted in `admin_token_file`, and how many different characters it
/// needs (`openssl rand -hex 32` gives 64 characters).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
pub const MIN_ADMIN_TOKEN_DISTINCT: usize = 10;
/// Messages queued for one slow browser before it is disconnected.
const OUTBOX_DEPTH: usize = 256;
/// A switch carries many calls at once (each query puts two messages in its outbox).
const SWITCH_OUTBOX_DEPTH: usize = 16 * 1024;
/// Wake-ups being sent at once (each: a directory read and one request per subscription).
const PUSHES_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("admin token file {path}: {source}")]
    AdminToken { path: PathBuf, source: std::io::Error },
    #[error(
        "admin token file {path}: the token is too weak ({why}); it needs at least {MIN_ADMIN_TOKEN_CHARS} characters, \
         {MIN_ADMIN_TOKEN_DISTINCT} of them different, e.g. `openssl rand -hex 32 > {path}`"
    )]
    WeakAdminToken { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Web Push: {0}")]
    Push(#[from] PushError),
    #[error("{0}")]
    Ice(#[from] crate::ice::IceError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(String),
}

pub fn unix_ms() -> UnixMs {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What a connection task applies to the engine.
enum EngineCmd {
    Online {
        conn: ConnId,
        who: Online,
        outbox: mpsc::Sender<Out>,
    },
    Msg {
        conn: ConnId,
        msg: ClientMsg,
    },
    Gone {
        conn: ConnId,
    },
    Directory(Vec<crate::directory::Account>),
    /// The push task could not wake the callee of this call.
    WakeFailed {
        call_id: CallId,
        why: &'static str,
    },
}

/// A Web Push wake-up for the push task.
struct WakeCmd {
    call_id: CallId,
    number: String,
    payload: Vec<u8>,
}

enum Online {
    Device(String),
    /// `calls`: what the switch said it carries (`switch_auth.calls`), to reconcile with.
    Switch {
        id: String,
        ice_servers: Vec<trunkline_protocol::IceServer>,
        calls: Option<Vec<CallId>>,
    },
}

impl Online {
    /// The name TURN credentials are minted for: a browser's number or a switch id.
    fn turn_user(&self) -> &str {
        match self {
            Online::Device(n) => n,
            Online::Switch { id, .. } => id,
        }
    }
}

fn unix_s() -> u64 {
    (unix_ms() / 1000).max(0) as u64
}

/// What the engine hands a connection task to write.
enum Out {
    /// Boxed: an idle connection's outbox then costs pointers, not full messages, per slot.
    Msg(Box<ServerMsg>),
    Close,
    /// Cluster mode: this replica lost its membership; close with 1012 (service restart) so
    /// the client reconnects through the load balancer to another replica.
    Fenced,
}

/// WebSocket close code when a replica fences itself (RFC 6455 1012: service restart).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// What the store task writes. Boxed, so a command is two words: the unbounded channel
/// allocates its slots 32 at a time, and a block of 32 unboxed records (≈ 7 kB) is a large
/// allocation, for which glibc first consolidates its free lists (`perf` at saturation showed
/// that under the channel's push).
enum StoreCmd {
    Record(Box<CallRecord>),
    /// Cluster mode: a write-ahead attempt row (`released`: handed over at shutdown).
    Attempt(Box<(AttemptRow, bool)>),
    SwitchState(Box<SwitchStateCmd>),
}

struct SwitchStateCmd {
    id: String,
    online: bool,
    urls: Vec<String>,
    at: UnixMs,
}

struct Shared {
    config: Arc<Config>,
    dir: Arc<dyn Directory>,
    hub: Arc<Hub>,
    store: mpsc::UnboundedSender<StoreCmd>,
    next_conn: AtomicU64,
    live_conns: AtomicUsize,
    /// Sign-in failure limits, counted in the directory ([`crate::ratelimit`]).
    throttle: Throttle,
    /// Password/secret checks (argon2id) running at once: each costs the hash's memory.
    hashes: Arc<Semaphore>,
    /// Sign-ins waiting for a permit of `hashes`.
    hash_waiting: AtomicUsize,
    /// Checks running now, and the most ever seen at once (`/metrics`).
    hash_in_flight: Arc<AtomicUsize>,
    hash_peak: Arc<AtomicUsize>,
    /// A hash to verify against when the account does not exist (same cost as a real one).
    decoy_hash: String,
    shutdown: watch::Receiver<bool>,
    metrics: PrometheusHandle,
    /// `None` when `push.enabled` is off.
    push: Option<Arc<PushSender>>,
    /// STUN/TURN servers and the TURN secret to mint credentials with.
    ice: IceServers,
    /// Cluster mode's membership and readiness; `None` for a single server.
    cluster: Option<Arc<ClusterState>>,
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Several servers may run in one process (tests); the first installs the recorder.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Run the signal server on `listener` until `shutdown` resolves. Opens (and migrates) the
/// configured database first.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let dir = crate::directory::open(&config.database_url, &config.database).await?;
    let clustered = config.cluster.enabled;
    if !clustered {
        // In a cluster the other replicas' switches are online: each replica only clears its own.
        dir.reset_switches_offline().await?;
    }
    let admin_token = match &config.admin_token_file {
        Some(p) => {
            let token = std::fs::read_to_string(p)
                .map_err(|source| ServerError::AdminToken { path: p.clone(), source })?
                .trim()
                .to_string();
            check_admin_token(&token).map_err(|why| ServerError::WeakAdminToken { path: p.clone(), why })?;
            Some(token)
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(t) => Some(crate::net::tls_acceptor(&t.cert_file, &t.key_file).map_err(ServerError::Tls)?),
        None => None,
    };

    let push = PushSender::from_config(&config)?.map(Arc::new);
    let ice = IceServers::from_config(&config.ice)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let changed = Arc::new(Notify::new());

    let cluster_state = clustered.then(|| Arc::new(ClusterState::new(config.cluster.clone())));
    let (bus_tx, bus_rx) = mpsc::unbounded_channel::<BusCmd>();
    let (cluster_store, lease_store) = match clustered {
        true => {
            use crate::cluster::store::ClusterStore;
            let (url, timeout) = (&config.database_url, config.database.statement_timeout_ms);
            let cluster_err = |e: crate::cluster::store::StoreError| ServerError::Cluster(e.to_string());
            // Attempts and presence: busy, retried. Leases: pinged (a dead connection must not
            // cost a renewal).
            (
                Some(ClusterStore::connect_unpinged(url, timeout).await.map_err(cluster_err)?),
                Some(ClusterStore::connect(url, timeout).await.map_err(cluster_err)?),
            )
        }
        false => (None, None),
    };
    let nats = match &cluster_state {
        Some(c) => Some(crate::cluster::runtime::connect_nats(&c.cfg).await.map_err(|e| ServerError::Cluster(e.to_string()))?),
        None => None,
    };
    let mut engine = Engine::new(
        config.steering.clone(),
        config.limits.max_calls_per_device,
        (Instant::now(), unix_ms()),
        Box::new(new_call_key),
    );
    // The version first, then the snapshot: a change landing in between is then seen as newer
    // by the watcher and reloaded (the other order could miss it for good).
    let loaded_version = dir.directory_version().await.ok();
    engine.set_directory(dir.list_accounts().await?);
    engine.set_wake_up(push.is_some());
    engine.set_cluster(clustered);
    let a = &config.auth;
    let decoy_hash = {
        let (m, t) = (a.password_hash_memory_kib, a.password_hash_iterations);
        tokio::task::spawn_blocking(move || credentials::decoy_hash(m, t)).await.expect("hashing does not panic")
    };
    let hub = Arc::new(Hub {
        inner: Mutex::new(HubInner {
            engine,
            presence: crate::cluster::presence::PresenceView::new(&config.cluster.node_id),
            outboxes: HashMap::new(),
            stopping: false,
            timer_target: None,
        }),
        timer: Notify::new(),
        store: store_tx.clone(),
        wake: push.is_some().then_some(wake_tx),
        realm: config.sip_realm.clone(),
        shutdown: shutdown_rx.clone(),
        bus: clustered.then(|| bus_tx.clone()),
    });
    let shared = Arc::new(Shared {
        config: config.clone(),
        dir: dir.clone(),
        hub: hub.clone(),
        store: store_tx.clone(),
        next_conn: AtomicU64::new(1),
        live_conns: AtomicUsize::new(0),
        throttle: Throttle::new(Policy::from_config(a)),
        hashes: Arc::new(Semaphore::new(a.max_concurrent_hashes)),
        hash_waiting: AtomicUsize::new(0),
        hash_in_flight: Arc::new(AtomicUsize::new(0)),
        hash_peak: Arc::new(AtomicUsize::new(0)),
        decoy_hash,
        shutdown: shutdown_rx.clone(),
        metrics: metrics_handle(),
        push: push.clone(),
        ice,
        cluster: cluster_state.clone(),
    });

    let store_cluster = match (&cluster_store, &cluster_state) {
        (Some(st), Some(cs)) => Some((st.clone(), cs.clone())),
        _ => None,
    };
    let store_task = tokio::spawn(store_loop(dir.clone(), store_rx, store_cluster));
    let engine_task = tokio::spawn(timer_loop(hub.clone(), shutdown_rx.clone()));
    let watch_task = tokio::spawn(directory_watch(
        dir.clone(),
        hub.clone(),
        changed.clone(),
        loaded_version,
        Throttle::new(Policy::from_config(&config.auth)),
        shutdown_rx.clone(),
    ));
    let push_task =
        push.map(|sender| tokio::spawn(push_loop(Arc::downgrade(&hub), dir.clone(), sender, wake_rx, shutdown_rx.clone())));

    let lim = &config.limits;
    let admin = AdminState {
        dir: dir.clone(),
        token: admin_token,
        config: config.clone(),
        changed,
        throttle: Arc::new(admin_api::TokenThrottle::new(
            lim.admin_failures_per_address,
            Duration::from_secs(lim.admin_backoff_base_secs),
            Duration::from_secs(lim.admin_backoff_max_secs),
        )),
    };
    let headers = crate::net::SecurityHeaders::new(&config.web_root);
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .with_state(shared.clone())
        .nest(
            "/api",
            admin_api::router(admin).layer(axum::extract::DefaultBodyLimit::max(lim.max_request_body_bytes)).layer(
                axum::middleware::from_fn_with_state(
                    Duration::from_secs(lim.api_request_timeout_secs),
                    admin_api::request_deadline,
                ),
            ),
        )
        .fallback_service(static_files(&config.web_root))
        .layer(axum::middleware::map_response(move |resp: Response| {
            let headers = headers.clone();
            async move { headers.apply(resp) }
        }));

    // Cluster mode: the membership, presence and forwarding run beside the server.
    let cluster_task = match (cluster_state.clone(), nats, cluster_store, lease_store) {
        (Some(state), Some(client), Some(store), Some(lease)) => {
            let rt = crate::cluster::runtime::Runtime {
                state,
                client,
                store,
                lease,
                hub: hub.clone(),
                bus: bus_tx.clone(),
                http_addr: listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            };
            Some(tokio::spawn(rt.run(bus_rx, shutdown_rx.clone())))
        }
        _ => None,
    };
    let drain_state = cluster_state.clone();
    let drain_hub = hub.clone();
    let signal = async move {
        shutdown.await;
        if let Some(c) = drain_state {
            // Drain: unready at once (the load balancer stops sending), no new attempts; the
            // attempts still ringing run out; then the connected ones are handed over.
            c.start_draining();
            tracing::info!(node = c.node(), "draining: no new calls; waiting for ringing attempts to end");
            let until = Instant::now() + Duration::from_secs(c.cfg.drain_timeout_secs);
            while Instant::now() < until && drain_hub.calls_not_connected() > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = shutdown_tx.send(true);
    };
    tokio::spawn(signal);
    let http_limits = crate::net::HttpLimits {
        max_unauthenticated_per_address: lim.max_unauthenticated_per_address,
        header_timeout: Duration::from_secs(lim.request_header_timeout_secs),
    };
    let limiter = crate::net::ConnLimiter::new(http_limits.max_unauthenticated_per_address);
    crate::net::serve(listener, app, tls, http_limits, limiter, shutdown_rx.clone()).await?;

    // Connections see the shutdown flag and close; then the engine ends every open attempt
    // (so each still gets exactly one outcome) and the store flushes before we return.
    drop(shared);
    let _ = watch_task.await;
    let _ = engine_task.await;
    if let Some(t) = push_task {
        let _ = t.await;
    }
    hub.shutdown_engine();
    drop(hub);
    drop(store_tx);
    let _ = store_task.await;
    if let Some(t) = cluster_task {
        let _ = t.await;
    }
    Ok(())
}

/// A token in `admin_token_file` must be long and varied enough that guessing it (even at the
/// throttled rate) is hopeless. `Err`: why not.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let chars = token.chars().count();
    if chars < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!("{chars} characters"));
    }
    let distinct = token.chars().collect::<std::collections::HashSet<_>>().len();
    if distinct < MIN_ADMIN_TOKEN_DISTINCT {
        return Err(format!("only {distinct} different characters"));
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("it holds whitespace or control characters".into());
    }
    Ok(())
}

/// One-time keys for F4 calls: 128 bits from the OS CSPRNG, unpadded base64url.
fn new_call_key() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn static_files(root: &std::path::Path) -> axum::routing::MethodRouter {
    if root.join("index.html").is_file() {
        let spa = tower_http::services::ServeFile::new(root.join("index.html"));
        // `*.gz` next to a file (web/build.sh writes them) is served to browsers that accept gzip:
        // the softphone's wasm is ~500 kB raw, ~190 kB gzip.
        let spa = spa.precompressed_gzip();
        axum::routing::get_service(tower_http::services::ServeDir::new(root).precompressed_gzip().fallback(spa))
    } else {
        let msg = format!(
            "Trunkline signal server is running, but the softphone is not built: {} has no index.html.\n",
            root.display()
        );
        axum::routing::get(move || async move { (StatusCode::NOT_FOUND, msg) })
    }
}

/// Readiness for a load balancer: 200 when this replica should get new connections (cluster
/// mode: a live member whose presence view is current, not draining); `/healthz` is liveness.
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let ready = match &s.cluster {
        Some(c) => c.ready(),
        None => !*s.shutdown.borrow(),
    };
    if ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_endpoint(State(s): State<Arc<Shared>>) -> String {
    metrics::gauge!("trunkline_ws_connections").set(s.live_conns.load(Ordering::Relaxed) as f64);
    metrics::gauge!("trunkline_auth_hashes_in_flight").set(s.hash_in_flight.load(Ordering::Relaxed) as f64);
    metrics::gauge!("trunkline_auth_hashes_in_flight_peak").set(s.hash_peak.load(Ordering::Relaxed) as f64);
    s.metrics.render()
}

async fn ws_handler(
    State(s): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    slot: Option<axum::Extension<Arc<ConnSlot>>>,
    ws: WebSocketUpgrade,
) -> Response {
    if *s.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if let Some(c) = &s.cluster
        && !c.ready()
    {
        let why = if c.draining() { "draining: connect to another replica\n" } else { "not a cluster member yet\n" };
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    if s.live_conns.load(Ordering::Relaxed) >= s.config.limits.max_connections {
        metrics::counter!("trunkline_ws_refused_total").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    }
    s.live_conns.fetch_add(1, Ordering::Relaxed);
    // The connection's place in its address's count of unauthenticated connections moves
    // into the WebSocket task: given back at sign-in or when the socket closes.
    let slot = slot.map(|axum::Extension(slot)| slot);
    let limit = s.config.limits.ws_max_frame_bytes;
    // Small buffers: most connections idle for hours (memory per idle connection matters).
    ws.read_buffer_size(1024).write_buffer_size(8 * 1024).max_message_size(limit).max_frame_size(limit).on_upgrade(
        move |socket| async move {
            let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
            connection(s.clone(), socket, conn, addr.ip(), slot).await;
            s.live_conns.fetch_sub(1, Ordering::Relaxed);
        },
    )
}

/// Close with a code and reason (docs/protocol.md), then end the connection.
async fn close_with(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = axum::extract::ws::CloseFrame { code, reason: Utf8Bytes::from(reason) };
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(Some(frame)))).await;
}

fn frame(msg: &ServerMsg) -> Message {
    Message::Text(Utf8Bytes::from(msg.encode()))
}

/// What arrived on a WebSocket.
enum Read {
    Msg(Result<ClientMsg, trunkline_protocol::ProtocolError>),
    /// The peer closed, or the connection failed.
    Closed,
    /// A frame or message over `limits.ws_max_frame_bytes`: close with 1009.
    TooBig,
}

/// Read one text message as a [`ClientMsg`]. Every frame (pongs too) sets `heard`.
async fn read_msg(socket: &mut WebSocket, heard: &mut Instant) -> Read {
    loop {
        let Some(next) = socket.recv().await else { return Read::Closed };
        *heard = Instant::now();
        match next {
            Ok(Message::Text(t)) => return Read::Msg(ClientMsg::decode(t.as_str())),
            Ok(Message::Binary(_)) => {
                return Read::Msg(Err(trunkline_protocol::ProtocolError::new(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol; send JSON text",
                )));
            }
            Ok(Message::Close(_)) => return Read::Closed,
            Err(e) => {
                let too_big =
                    e.into_inner().downcast::<tungstenite::Error>().is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                return if too_big { Read::TooBig } else { Read::Closed };
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
        }
    }
}

async fn close_too_big(s: &Shared, socket: &mut WebSocket, ip: IpAddr) {
    metrics::counter!("trunkline_ws_closed_total", "reason" => "too_big").increment(1);
    tracing::info!(%ip, "WebSocket closed: frame or message over the size limit");
    let limit = s.config.limits.ws_max_frame_bytes;
    close_with(socket, CLOSE_TOO_BIG, format!("frame or message over {limit} bytes")).await;
}

async fn connection(s: Arc<Shared>, mut socket: WebSocket, conn: ConnId, ip: IpAddr, slot: Option<Arc<ConnSlot>>) {
    let limits = &s.config.limits;
    let auth_timeout = limits.auth_timeout_secs;
    let mut heard = Instant::now();
    let first = tokio::select! {
        m = read_msg(&mut socket, &mut heard) => m,
        _ = tokio::time::sleep(Duration::from_secs(auth_timeout)) => {
            metrics::counter!("trunkline_ws_closed_total", "reason" => "sign_in_deadline").increment(1);
            tracing::info!(%ip, "WebSocket closed: no sign-in within {auth_timeout} s");
            let why = format!("sign-in deadline: no login, resume or switch_auth within {auth_timeout} s");
            let _ = socket.send(frame(&ServerMsg::error(ErrorCode::NotAuthenticated, why.clone(), None))).await;
            close_with(&mut socket, CLOSE_SIGN_IN_DEADLINE, why).await;
            return;
        }
    };
    let first = match first {
        Read::Msg(m) => m,
        Read::Closed => return,
        Read::TooBig => return close_too_big(&s, &mut socket, ip).await,
    };
    let (who, welcome, session_id) = match first {
        // Boxed: the sign-in future is large and only lives once; idle connections should not
        // carry its space for hours.
        Ok(msg) => match Box::pin(authenticate(&s, msg, ip)).await {
            Ok(x) => x,
            Err(e) => {
                let _ = socket.send(frame(&e.to_msg(None))).await;
                let _ = socket.close().await;
                return;
            }
        },
        Err(e) => {
            let _ = socket.send(frame(&e.to_msg(None))).await;
            let _ = socket.close().await;
            return;
        }
    };
    // Signed in: no longer counted against the address's unauthenticated connections.
    if let Some(slot) = &slot {
        slot.signed_in();
    }
    let is_device = matches!(who, Online::Device(_));
    let turn_user = who.turn_user().to_string();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(if is_device { OUTBOX_DEPTH } else { SWITCH_OUTBOX_DEPTH });
    // Online in the engine first, welcome second: a peer that acts on `welcome` (or is called
    // right after it) must find itself online. Anything the engine queues meanwhile waits in
    // the outbox until after the welcome.
    s.hub.apply(EngineCmd::Online { conn, who, outbox: out_tx.clone() });
    if let Some(w) = welcome
        && socket.send(frame(&w)).await.is_err()
    {
        s.hub.apply(EngineCmd::Gone { conn });
        return;
    }

    // Browsers get a token bucket; switches are provisioned infrastructure and carry many calls.
    let rate = s.config.limits.messages_per_second as f64;
    let mut tokens = rate * 2.0;
    let mut last = Instant::now();
    let mut shutdown = s.shutdown.clone();
    // TURN credentials from the welcome expire: send fresh ones halfway through their life.
    let renew_every = s.ice.renew_after();
    let ice_renew = sleep_until_opt(renew_every.map(|d| Instant::now() + d));
    tokio::pin!(ice_renew);
    // Keep-alive: a ping every interval; a peer heard from for neither that nor the pong
    // timeout is gone (a dead NAT binding, a suspended laptop) and is closed.
    let ping_every = Duration::from_secs(limits.ws_ping_interval_secs);
    let silent_limit = ping_every + Duration::from_secs(limits.ws_pong_timeout_secs);
    let mut pings = tokio::time::interval_at((Instant::now() + ping_every).into(), ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pings.tick() => {
                if heard.elapsed() >= silent_limit {
                    metrics::counter!("trunkline_ws_closed_total", "reason" => "ping_timeout").increment(1);
                    tracing::info!(conn, %ip, "WebSocket closed: no answer to pings for {} s", silent_limit.as_secs());
                    close_with(&mut socket, CLOSE_PING_TIMEOUT, format!("no pong within {} s", silent_limit.as_secs())).await;
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() { break }
            }
            _ = &mut ice_renew => {
                let ice_servers = s.ice.mint(&turn_user, unix_s());
                let msg = ServerMsg::IceServers { ice_servers, expires_in_s: s.ice.ttl_secs() };
                // A full outbox (a slow reader) skips this renewal; the next one comes at the
                // next half-life, and credentials only expire after a whole one.
                if let Err(mpsc::error::TrySendError::Closed(_)) = out_tx.try_send(Out::Msg(Box::new(msg))) { break }
                ice_renew.set(sleep_until_opt(renew_every.map(|d| Instant::now() + d)));
            }
            incoming = read_msg(&mut socket, &mut heard) => {
                let incoming = match incoming {
                    Read::Msg(m) => m,
                    Read::Closed => break,
                    Read::TooBig => {
                        close_too_big(&s, &mut socket, ip).await;
                        break;
                    }
                };
                hot::ws_messages().increment(1);
                if is_device {
                    let now = Instant::now();
                    tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate * 2.0);
                    last = now;
                    if tokens < 1.0 {
                        let e = ServerMsg::error(ErrorCode::TooManyRequests, "too many messages; slow down", None);
                        if out_tx.try_send(Out::Msg(Box::new(e))).is_err() { break }
                        continue;
                    }
                    tokens -= 1.0;
                }
                match incoming {
                    Ok(msg @ (ClientMsg::PushSubscribe { .. } | ClientMsg::PushUnsubscribe { .. })) if is_device => {
                        if let Err(e) = push_subscription(&s, conn, msg).await
                            && out_tx.try_send(Out::Msg(Box::new(e.to_msg(None)))).is_err()
                        {
                            break;
                        }
                    }
                    Ok(ClientMsg::Logout) if is_device => {
                        // Revoke first, close second: once the connection is gone, so is the token.
                        match session_id {
                            Some(id) => match s.dir.revoke_session(id).await {
                                Ok(_) => tracing::info!(conn, session_id = id, "browser signed out; session revoked"),
                                Err(e) => {
                                    let e = storage_error(e, "could not sign out; try again").to_msg(None);
                                    if out_tx.try_send(Out::Msg(Box::new(e))).is_err() { break }
                                    continue;
                                }
                            },
                            None => tracing::info!(conn, "browser signed out"),
                        }
                        break;
                    }
                    Ok(ClientMsg::Logout) => {
                        let e = ServerMsg::error(ErrorCode::Forbidden, "logout is for browsers; a switch has no session", None);
                        if out_tx.try_send(Out::Msg(Box::new(e))).is_err() { break }
                    }
                    Ok(ClientMsg::History { limit }) if is_device => {
                        let reply = match history(&s, conn, limit).await {
                            Ok(m) => m,
                            Err(e) => e.to_msg(None),
                        };
                        if out_tx.try_send(Out::Msg(Box::new(reply))).is_err() { break }
                    }
                    // A full disk: the call's record could not be written, so no new call starts
                    // (calls already up go on; their records wait in memory for the space).
                    Ok(ClientMsg::Dial { call_id, .. }) if s.dir.storage_unavailable() => {
                        let e = ServerMsg::error(ErrorCode::Unavailable, STORAGE_FULL_MSG, Some(call_id));
                        if out_tx.try_send(Out::Msg(Box::new(e))).is_err() { break }
                    }
                    // A draining replica starts no new attempt: the client retries elsewhere.
                    Ok(ClientMsg::Dial { call_id, .. } | ClientMsg::RouteQuery { call_id, .. })
                        if s.cluster.as_ref().is_some_and(|c| c.draining() || !c.member()) =>
                    {
                        let e = ServerMsg::error(ErrorCode::Unavailable, DRAINING_MSG, Some(call_id));
                        if out_tx.try_send(Out::Msg(Box::new(e))).is_err() { break }
                    }
                    Ok(msg) => {
                        s.hub.apply(EngineCmd::Msg { conn, msg });
                    }
                    Err(e) => {
                        if out_tx.try_send(Out::Msg(Box::new(e.to_msg(None)))).is_err() { break }
                    }
                }
            }
            out = out_rx.recv() => {
                // Write everything already queued, then flush once (one syscall for a burst).
                let mut next = out;
                let mut close = false;
                loop {
                    match next {
                        Some(Out::Msg(m)) => {
                            if socket.feed(frame(&m)).await.is_err() { close = true; break }
                        }
                        Some(Out::Close) | None => { close = true; break }
                        Some(Out::Fenced) => {
                            let _ = socket.flush().await;
                            close_with(&mut socket, CLOSE_SERVICE_RESTART, "this replica left the cluster; reconnect".into()).await;
                            close = true;
                            break;
                        }
                    }
                    match out_rx.try_recv() {
                        Ok(o) => next = Some(o),
                        Err(_) => break,
                    }
                }
                if socket.flush().await.is_err() || close { break }
            }
            _ = shut(&mut shutdown) => break,
        }
    }
    // Flush what is already queued (e.g. a session_replaced error) before closing.
    while let Ok(Out::Msg(m)) = out_rx.try_recv() {
        if socket.send(frame(&m)).await.is_err() {
            break;
        }
    }
    let _ = socket.close().await;
    s.hub.apply(EngineCmd::Gone { conn });
}

/// What a client reads when its replica is draining (or not a cluster member).
const DRAINING_MSG: &str = "this server is restarting; reconnect and try again";

/// What a client reads when the server's storage cannot take writes (SQLITE_FULL, I/O errors).
const STORAGE_FULL_MSG: &str =
    "the server cannot store data right now (its disk is full or its database is unreachable); try again later";

/// A directory failure as the wire's error: a full (or failing) disk is `unavailable`, said
/// clearly (the directory logs it once per episode, with a metric); anything else is
/// `internal` with `fallback`, logged here.
fn storage_error(e: DirectoryError, fallback: &str) -> trunkline_protocol::ProtocolError {
    if e.is_unavailable() {
        return trunkline_protocol::ProtocolError::new(ErrorCode::Unavailable, STORAGE_FULL_MSG);
    }
    tracing::error!(error = %e, "directory error: {fallback}");
    trunkline_protocol::ProtocolError::new(ErrorCode::Internal, fallback)
}

/// A browser's call history: its call records (as caller or callee), newest first.
async fn history(s: &Shared, conn: ConnId, limit: Option<u32>) -> Result<ServerMsg, trunkline_protocol::ProtocolError> {
    use trunkline_protocol::ProtocolError as PE;
    let Some(number) = s.hub.device_of(conn) else {
        return Err(PE::new(ErrorCode::NotAuthenticated, "sign in first"));
    };
    let limit = limit.unwrap_or(50).min(trunkline_protocol::MAX_HISTORY);
    let records = s
        .dir
        .call_records(Some(&number), limit)
        .await
        .map_err(|e| storage_error(e, "could not read the call history; try again"))?;
    let calls = records
        .into_iter()
        .map(|r| trunkline_protocol::CallSummary {
            call_id: r.call_id,
            caller: r.caller,
            callee: r.callee,
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            outcome: r.outcome,
            duration_ms: r.duration_ms,
        })
        .collect();
    Ok(ServerMsg::History { calls })
}

/// A browser's `push_subscribe` / `push_unsubscribe`, applied to the directory (the reply, if
/// any, is an error; success is silent).
async fn push_subscription(s: &Shared, conn: ConnId, msg: ClientMsg) -> Result<(), trunkline_protocol::ProtocolError> {
    use trunkline_protocol::ProtocolError as PE;
    if s.push.is_none() {
        return Err(PE::new(ErrorCode::NotImplemented, "Web Push is turned off on this server"));
    }
    let Some(number) = s.hub.device_of(conn) else {
        return Err(PE::new(ErrorCode::NotAuthenticated, "sign in first"));
    };
    let internal = |e: DirectoryError| storage_error(e, "could not store the push subscription; try again");
    match msg {
        ClientMsg::PushSubscribe { endpoint, p256dh, auth } => {
            push::check_subscription(&s.config.push, &endpoint, &p256dh, &auth)?;
            let mine = s.dir.push_subscriptions(&number).await.map_err(internal)?;
            let max = s.config.push.max_subscriptions_per_account;
            if mine.len() >= max && !mine.iter().any(|m| m.endpoint == endpoint) {
                return Err(PE::new(
                    ErrorCode::TooManyRequests,
                    format!("at most {max} push subscriptions per account: unsubscribe an old one first"),
                ));
            }
            let origin = push::origin_of(&endpoint).unwrap_or_default();
            s.dir
                .add_push_subscription(PushSubscription { number: number.clone(), endpoint, p256dh, auth })
                .await
                .map_err(internal)?;
            tracing::info!(%number, %origin, "push subscription stored");
        }
        ClientMsg::PushUnsubscribe { endpoint } => {
            // Only this account's own subscription: an endpoint is no proof of ownership.
            let mine = s.dir.push_subscriptions(&number).await.map_err(internal)?;
            if mine.iter().any(|m| m.endpoint == endpoint) {
                s.dir.remove_push_subscription(&endpoint).await.map_err(internal)?;
                tracing::info!(%number, origin = %push::origin_of(&endpoint).unwrap_or_default(), "push subscription removed");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sends the engine's wake-ups, a bounded number at once. When a callee has no subscription,
/// or no push service took the message, the engine hears `wake_failed`.
async fn push_loop(
    hub: Weak<Hub>,
    dir: Arc<dyn Directory>,
    sender: Arc<PushSender>,
    mut rx: mpsc::UnboundedReceiver<WakeCmd>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(PUSHES_IN_FLIGHT));
    loop {
        let cmd = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = shut(&mut shutdown) => return,
        };
        let (hub, dir, sender, limit) = (hub.clone(), dir.clone(), sender.clone(), limit.clone());
        tokio::spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else { return };
            let report = push::wake(&*dir, &sender, &cmd.number, &cmd.call_id, &cmd.payload).await;
            if report.accepted == 0 {
                let why = if report.subscriptions == 0 {
                    "callee offline and has no Web Push subscription"
                } else {
                    "callee offline and no push service accepted the wake-up"
                };
                // The Hub is gone once the server has stopped: nothing left to tell.
                if let Some(hub) = hub.upgrade() {
                    hub.apply(EngineCmd::WakeFailed { call_id: cmd.call_id, why });
                }
            }
        });
    }
}

/// Who signed in, the `welcome` to send (browsers), and the browser's session id.
type AuthResult = Result<(Online, Option<ServerMsg>, Option<i64>), trunkline_protocol::ProtocolError>;

/// Check a password or secret against its argon2id hash under the concurrency cap
/// (`auth.max_concurrent_hashes`), waiting in a bounded queue for a free check.
/// `Err(())`: too busy (the caller answers `too_many_requests`).
async fn verify_capped(s: &Shared, phc: String, secret: String) -> Result<bool, ()> {
    let a = &s.config.auth;
    let permit = match s.hashes.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if s.hash_waiting.fetch_add(1, Ordering::AcqRel) >= a.max_queued_hashes {
                s.hash_waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(());
            }
            let waited =
                tokio::time::timeout(Duration::from_millis(a.hash_queue_timeout_ms), s.hashes.clone().acquire_owned()).await;
            s.hash_waiting.fetch_sub(1, Ordering::AcqRel);
            match waited {
                Ok(Ok(p)) => p,
                _ => return Err(()),
            }
        }
    };
    let (in_flight, peak) = (s.hash_in_flight.clone(), s.hash_peak.clone());
    // The permit moves into the blocking task: if this connection goes away meanwhile, the
    // check still holds its permit until it really ends, so the cap stays true.
    tokio::task::spawn_blocking(move || {
        let now = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        peak.fetch_max(now, Ordering::AcqRel);
        let ok = credentials::verify_password(&phc, &secret);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        drop(permit);
        ok
    })
    .await
    .map_err(|_| ())
}

async fn authenticate(s: &Shared, msg: ClientMsg, ip: IpAddr) -> AuthResult {
    use trunkline_protocol::ProtocolError as PE;
    let now = unix_ms();
    let address = ip.to_string();
    let limited = |who: &str, r: Refused| {
        metrics::counter!("trunkline_auth_rate_limited_total", "limit" => r.limit.as_str()).increment(1);
        tracing::warn!(%ip, who, limit = r.limit.as_str(), retry_after_ms = r.retry_after_ms, "sign-in refused: rate limited");
        let secs = (r.retry_after_ms + 999) / 1000;
        PE::new(ErrorCode::RateLimited, format!("too many failed sign-ins; retry in {} s", secs.max(1)))
    };
    let busy = || {
        metrics::counter!("trunkline_auth_busy_total").increment(1);
        tracing::warn!(%ip, "sign-in refused: too many password checks at once");
        PE::new(ErrorCode::TooManyRequests, "the server is busy checking passwords; retry in 1 s")
    };
    let internal = |e: DirectoryError| storage_error(e, "sign-in failed on the server; try again");
    match msg {
        ClientMsg::Login { number, password, .. } => {
            let attempt = match s.throttle.begin(&*s.dir, Some(&number), &address, now).await.map_err(internal)? {
                Ok(a) => a,
                Err(r) => return Err(limited(&number, r)),
            };
            let stored = match s.dir.password_hash(&number).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = s.throttle.not_checked(&*s.dir, attempt).await;
                    return Err(internal(e));
                }
            };
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| s.decoy_hash.clone());
            let ok = match verify_capped(s, phc, password).await {
                Ok(ok) => ok && known,
                Err(()) => {
                    let _ = s.throttle.not_checked(&*s.dir, attempt).await;
                    return Err(busy());
                }
            };
            if !ok {
                s.throttle.failed(&*s.dir, attempt, now).await.map_err(internal)?;
                metrics::counter!("trunkline_auth_failures_total", "kind" => "login").increment(1);
                tracing::warn!(%ip, %number, "sign-in failed: wrong number or password");
                return Err(PE::new(ErrorCode::AuthFailed, "wrong number or password"));
            }
            s.throttle.succeeded(&*s.dir, attempt, now).await.map_err(internal)?;
            let account = s
                .dir
                .account(&number)
                .await
                .map_err(internal)?
                .ok_or_else(|| PE::new(ErrorCode::AuthFailed, "wrong number or password"))?;
            if account.kind != AccountKind::Browser {
                tracing::warn!(%ip, %number, "sign-in refused: desk phone accounts register over SIP");
                return Err(PE::new(ErrorCode::Forbidden, "this number is a desk phone: register it over SIP at its switch"));
            }
            let token = credentials::new_token();
            let ttl = s.config.auth.session_ttl_secs;
            let session_id = s
                .dir
                .create_session(&credentials::token_sha256(&token), &number, unix_ms() + (ttl as i64) * 1000)
                .await
                .map_err(internal)?;
            tracing::info!(%ip, %number, session_id, "browser signed in");
            let welcome = ServerMsg::Welcome {
                v: PROTOCOL_VERSION,
                number: number.clone(),
                display_name: account.display_name,
                kind: account.kind,
                session_token: token,
                session_expires_in_s: ttl,
                vapid_public_key: s.push.as_ref().map(|p| p.public_key().to_string()),
                ice_servers: s.ice.mint(&number, unix_s()),
            };
            Ok((Online::Device(number), Some(welcome), Some(session_id)))
        }
        ClientMsg::Resume { token, .. } => {
            let attempt = match s.throttle.begin(&*s.dir, None, &address, now).await.map_err(internal)? {
                Ok(a) => a,
                Err(r) => return Err(limited("resume", r)),
            };
            // Rotate: the presented token dies here and a fresh one is handed out, so a stolen
            // token is good for one resume at most, and then the real browser's is refused
            // (it signs in again; its password sign-in revokes nothing, an admin can).
            let fresh = credentials::new_token();
            let ttl = s.config.auth.session_ttl_secs;
            let rotated = s
                .dir
                .rotate_session(
                    &credentials::token_sha256(&token),
                    &credentials::token_sha256(&fresh),
                    now,
                    now + (ttl as i64) * 1000,
                )
                .await
                .map_err(internal)?;
            let account = match &rotated {
                Some((_, n)) => s.dir.account(n).await.map_err(internal)?,
                None => None,
            };
            let (Some((session_id, _)), Some(account)) = (rotated, account) else {
                s.throttle.failed(&*s.dir, attempt, now).await.map_err(internal)?;
                metrics::counter!("trunkline_auth_failures_total", "kind" => "resume").increment(1);
                tracing::warn!(%ip, "session resume failed: unknown, expired or revoked token");
                return Err(PE::new(ErrorCode::AuthFailed, "session expired or unknown; sign in again"));
            };
            s.throttle.succeeded(&*s.dir, attempt, now).await.map_err(internal)?;
            tracing::info!(%ip, number = %account.number, session_id, "browser resumed its session");
            let welcome = ServerMsg::Welcome {
                v: PROTOCOL_VERSION,
                number: account.number.clone(),
                display_name: account.display_name,
                kind: account.kind,
                session_token: fresh,
                session_expires_in_s: ttl,
                vapid_public_key: s.push.as_ref().map(|p| p.public_key().to_string()),
                ice_servers: s.ice.mint(&account.number, unix_s()),
            };
            Ok((Online::Device(account.number), Some(welcome), Some(session_id)))
        }
        ClientMsg::SwitchAuth { switch_id, secret, direct_urls, calls, .. } => {
            let key = format!("switch:{switch_id}");
            let attempt = match s.throttle.begin(&*s.dir, Some(&key), &address, now).await.map_err(internal)? {
                Ok(a) => a,
                Err(r) => return Err(limited(&key, r)),
            };
            let stored = match s.dir.switch_secret_hash(&switch_id).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = s.throttle.not_checked(&*s.dir, attempt).await;
                    return Err(internal(e));
                }
            };
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| s.decoy_hash.clone());
            let ok = match verify_capped(s, phc, secret).await {
                Ok(ok) => ok && known,
                Err(()) => {
                    let _ = s.throttle.not_checked(&*s.dir, attempt).await;
                    return Err(busy());
                }
            };
            if !ok {
                s.throttle.failed(&*s.dir, attempt, now).await.map_err(internal)?;
                metrics::counter!("trunkline_auth_failures_total", "kind" => "switch").increment(1);
                tracing::warn!(%ip, %switch_id, "switch sign-in failed: wrong id or secret");
                return Err(PE::new(ErrorCode::AuthFailed, "wrong switch id or secret"));
            }
            s.throttle.succeeded(&*s.dir, attempt, now).await.map_err(internal)?;
            tracing::info!(%ip, %switch_id, "switch signed in");
            if !direct_urls.is_empty() {
                // An older gateway: what it advertised is kept for the admin views only; callers
                // are handed the switch's name and reach it over WebRTC through the cloud.
                tracing::info!(%switch_id, urls = ?direct_urls, "switch advertised direct_urls (not used)");
            }
            let _ = s.store.send(StoreCmd::SwitchState(Box::new(SwitchStateCmd {
                id: switch_id.clone(),
                online: true,
                urls: direct_urls,
                at: unix_ms(),
            })));
            // The engine sends switch_welcome (it knows the phones).
            let ice_servers = s.ice.mint(&switch_id, unix_s());
            Ok((Online::Switch { id: switch_id, ice_servers, calls }, None, None))
        }
        other => Err(PE::new(
            ErrorCode::NotAuthenticated,
            format!("sign in first (login, resume or switch_auth), not {}", other.kind()),
        )),
    }
}

/// The steering engine and the outboxes it writes to, behind one lock. Connection tasks apply
/// their messages directly (no hand-off to another task per message: that was most of the CPU
/// per decision); a timer task only fires the engine's deadlines.
struct Hub {
    inner: Mutex<HubInner>,
    /// Wakes the timer task when the engine's earliest deadline moved earlier.
    timer: Notify,
    store: mpsc::UnboundedSender<StoreCmd>,
    /// To the push task; `None` when Web Push is off.
    wake: Option<mpsc::UnboundedSender<WakeCmd>>,
    realm: String,
    shutdown: watch::Receiver<bool>,
    /// Cluster mode: the engine's cluster outputs and presence news, for the bus task.
    bus: Option<mpsc::UnboundedSender<BusCmd>>,
}

struct HubInner {
    engine: Engine,
    /// Cluster mode: who is on which replica (filtered under this lock, with the engine).
    presence: crate::cluster::presence::PresenceView,
    outboxes: HashMap<ConnId, mpsc::Sender<Out>>,
    stopping: bool,
    /// The deadline the timer task is sleeping towards.
    timer_target: Option<Instant>,
}

impl Hub {
    fn apply(&self, cmd: EngineCmd) {
        let now = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        // Connections leave *because* of the shutdown: end attempts first, so their
        // departures are not mistaken for callers or callees leaving.
        if !h.stopping && *self.shutdown.borrow() {
            h.stopping = true;
            h.engine.shutdown(now);
        }
        match cmd {
            EngineCmd::Online { conn, who, outbox } => {
                h.outboxes.insert(conn, outbox);
                let (party, calls) = match who {
                    Online::Device(n) => {
                        h.engine.device_online(now, conn, &n);
                        (Party::Device(n), None)
                    }
                    Online::Switch { id, ice_servers, calls } => {
                        h.engine.switch_online(now, conn, &id, &self.realm, ice_servers);
                        h.engine.reconcile(now, &id, calls.as_deref());
                        (Party::Switch(id), calls)
                    }
                };
                if let Some(bus) = &self.bus {
                    h.presence.local_pending(&party);
                    let _ = bus.send(BusCmd::PresencePut { party, calls });
                }
            }
            EngineCmd::Msg { conn, msg } => {
                // The trace log's level can only be known here (the filter is the process's).
                h.engine.set_trace_details(tracing::enabled!(target: "trunkline::trace", tracing::Level::INFO));
                h.engine.handle(now, conn, msg)
            }
            EngineCmd::Gone { conn } => {
                h.outboxes.remove(&conn);
                let gone = h.engine.disconnected(now, conn);
                if let (Some(bus), Some(p)) = (&self.bus, &gone) {
                    h.presence.local_gone(p);
                    let _ = bus.send(BusCmd::PresenceDelete(p.clone()));
                }
                if let Some(Party::Device(number)) = &gone {
                    tracing::info!(conn, %number, "browser connection closed");
                }
                if let Some(Party::Switch(id)) = gone {
                    tracing::info!(switch_id = %id, "switch went offline");
                    let _ = self.store.send(StoreCmd::SwitchState(Box::new(SwitchStateCmd {
                        id,
                        online: false,
                        urls: vec![],
                        at: unix_ms(),
                    })));
                }
            }
            EngineCmd::Directory(accounts) => h.engine.set_directory(accounts),
            EngineCmd::WakeFailed { call_id, why } => h.engine.wake_failed(now, &call_id, why),
        }
        self.after(h);
    }

    fn after(&self, h: &mut HubInner) {
        drain(&mut h.engine, &mut h.outboxes, &self.store, self.wake.as_ref(), self.bus.as_ref());
        // Calls the engine holds open (those of a switch whose link is lost included): a
        // phantom call would show here.
        hot::calls_in_progress().set(h.engine.active_calls() as f64);
        let next = h.engine.poll_timeout();
        let earlier = match (next, h.timer_target) {
            (Some(n), Some(t)) => n < t,
            (Some(_), None) => true,
            _ => false,
        };
        if earlier {
            h.timer_target = next;
            self.timer.notify_one();
        }
    }

    fn timeout(&self) -> Option<Instant> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        h.engine.handle_timeout(Instant::now());
        self.after(h);
        h.timer_target = h.engine.poll_timeout();
        h.timer_target
    }

    fn shutdown_engine(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        if !h.stopping {
            h.stopping = true;
            h.engine.shutdown(Instant::now());
        }
        drain(&mut h.engine, &mut h.outboxes, &self.store, self.wake.as_ref(), self.bus.as_ref());
    }

    /// The browser signed in on `conn`, if it still is.
    fn device_of(&self, conn: ConnId) -> Option<String> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.engine.device_of(conn).map(str::to_string)
    }

    /// Attempts this replica owns that have not connected (a drain waits for them).
    fn calls_not_connected(&self) -> usize {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.engine.calls_not_connected()
    }

    /// Update the presence view, tell the engine what changed, send what that produced; all
    /// under the one lock.
    fn with_presence(
        &self,
        f: impl FnOnce(&mut crate::cluster::presence::PresenceView) -> Vec<crate::cluster::presence::Change>,
    ) {
        use crate::cluster::presence::Change;
        let now = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        for c in f(&mut h.presence) {
            match c {
                Change::Online { party, node, calls } => h.engine.remote_online(now, &party, &node, calls.as_deref()),
                Change::Offline { party, node } => h.engine.remote_offline(now, &party, &node),
            }
        }
        metrics::gauge!("trunkline_cluster_presence_entries", "loc" => "remote").set(h.presence.remote_count() as f64);
        self.after(h);
    }

    /// Run `f` on the engine, then send what it produced.
    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
        let now = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        let r = f(&mut h.engine, now);
        self.after(h);
        r
    }
}

impl HubOps for Hub {
    fn remote(&self, from: &Party, msg: ClientMsg) -> Result<(), trunkline_protocol::ProtocolError> {
        self.with_engine(|e, now| e.handle_remote(now, from, msg))
    }
    fn deliver(&self, to: &Party, msg: ServerMsg) -> bool {
        self.with_engine(|e, _| e.deliver(to, msg))
    }
    fn unowned(&self, conn: ConnId, msg: ClientMsg) {
        self.with_engine(|e, now| e.handle_unowned(now, conn, msg))
    }
    fn reply(&self, conn: ConnId, msg: ServerMsg) {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.outboxes.get(&conn) {
            let _ = tx.try_send(Out::Msg(Box::new(msg)));
        }
    }
    fn presence_rows(&self, rows: Vec<crate::cluster::store::PresenceRow>, announced: bool) -> bool {
        use crate::cluster::presence::Entry;
        let mut wants_live = false;
        self.with_presence(|v| {
            let mut changes = Vec::new();
            for r in rows {
                let Some(party) = crate::cluster::parse_party(&r.party) else { continue };
                let entry = r.online.then_some(Entry { node: r.node, incarnation: r.incarnation, calls: r.calls });
                changes.extend(if announced { v.announced(party, r.rev, entry) } else { v.row(party, r.rev, entry) });
            }
            wants_live = v.take_wants_live();
            changes
        });
        wants_live
    }
    fn live_read_begin(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).presence.begin_live_read()
    }
    fn presence_live(&self, stamp: u64, live: HashMap<String, String>) -> bool {
        let mut applied = false;
        self.with_presence(|v| {
            applied = v.is_newer_read(stamp);
            v.live_read(stamp, live)
        });
        applied
    }
    fn presence_local_rev(&self, party: &Party, rev: i64) {
        self.with_presence(|v| v.local_rev(party, rev))
    }
    fn adopt(&self, row: AttemptRow) {
        self.with_engine(|e, now| e.adopt(now, row))
    }
    fn fence(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &mut *guard;
        h.engine.fence();
        h.presence.reset();
        for (_, tx) in h.outboxes.drain() {
            let _ = tx.try_send(Out::Fenced);
        }
    }
}

/// Fires the engine's deadlines; ends the engine's open attempts when the server stops.
async fn timer_loop(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut target = hub.timeout();
    loop {
        tokio::select! {
            _ = sleep_until_opt(target) => target = hub.timeout(),
            _ = hub.timer.notified() => {
                target = hub.inner.lock().unwrap_or_else(|e| e.into_inner()).timer_target;
            }
            _ = shut(&mut shutdown) => {
                hub.shutdown_engine();
                return;
            }
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn shut(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn drain(
    engine: &mut Engine,
    outboxes: &mut HashMap<ConnId, mpsc::Sender<Out>>,
    store: &mpsc::UnboundedSender<StoreCmd>,
    wake: Option<&mpsc::UnboundedSender<WakeCmd>>,
    bus: Option<&mpsc::UnboundedSender<BusCmd>>,
) {
    if bus.is_none() {
        // One server: straight through, nothing collected (this runs for every message).
        while let Some(out) = engine.poll_output() {
            drain_one(engine, outboxes, store, wake, None, out);
        }
        return;
    }
    // Cluster mode, in batches: an attempt that ends in the same batch (an instant reject)
    // needs no row, and one that changes state several times gets one row, its last.
    let mut outs: Vec<Option<Output>> = Vec::new();
    loop {
        outs.extend(std::iter::from_fn(|| engine.poll_output().map(Some)));
        if outs.is_empty() {
            return;
        }
        let mut ended = std::collections::HashSet::new();
        // Per call: the index of its first and last row in the batch, and whether it is new.
        let mut rows: HashMap<&str, (usize, usize, bool)> = HashMap::new();
        for (i, o) in outs.iter().enumerate() {
            match o {
                Some(Output::Record(r)) => {
                    ended.insert(r.call_id.clone());
                }
                Some(Output::Attempt { row, new }) => {
                    let e = rows.entry(row.call_id.as_str()).or_insert((i, i, false));
                    e.1 = i;
                    e.2 |= *new;
                }
                _ => {}
            }
        }
        let rows: HashMap<usize, (usize, bool)> = rows.into_values().map(|(first, last, new)| (first, (last, new))).collect();
        for i in 0..outs.len() {
            let Some(out) = outs[i].take() else { continue };
            let Output::Attempt { .. } = out else {
                drain_one(engine, outboxes, store, wake, bus, out);
                continue;
            };
            // At the call's first row in the batch (so the bus opens it before anything that
            // follows about it), its last state.
            let Some(&(last, new)) = rows.get(&i) else { continue };
            let Some(Output::Attempt { row, .. }) = (if last == i { Some(out) } else { outs[last].take() }) else { continue };
            if ended.contains(&row.call_id) {
                continue;
            }
            if new {
                // Subscribed to and written ahead by the bus task, in order.
                if let Some(bus) = bus {
                    let _ = bus.send(BusCmd::Open(row));
                }
            } else {
                let _ = store.send(StoreCmd::Attempt(Box::new((row, false))));
            }
        }
        outs.clear();
    }
}

fn drain_one(
    engine: &mut Engine,
    outboxes: &mut HashMap<ConnId, mpsc::Sender<Out>>,
    store: &mpsc::UnboundedSender<StoreCmd>,
    wake: Option<&mpsc::UnboundedSender<WakeCmd>>,
    bus: Option<&mpsc::UnboundedSender<BusCmd>>,
    out: Output,
) {
    match out {
        Output::Send { conn, msg } => {
            if let Some(tx) = outboxes.get(&conn)
                && tx.try_send(Out::Msg(Box::new(msg))).is_err()
            {
                // A peer that does not read its messages is dropped rather than buffered forever.
                tracing::warn!(conn, "outbox full or closed: disconnecting slow peer");
                outboxes.remove(&conn);
            }
        }
        Output::Close { conn } => {
            if let Some(tx) = outboxes.remove(&conn) {
                let _ = tx.try_send(Out::Close);
            }
        }
        Output::Trace { call_id, step, detail } => {
            hot::step(step).increment(1);
            tracing::info!(target: "trunkline::trace", %call_id, step = step.as_str(), "{detail}");
        }
        Output::Ended { call_id, outcome, why } => {
            hot::outcome(outcome).increment(1);
            tracing::info!(target: "trunkline::trace", %call_id, outcome = outcome.as_str(), "call ended: {why}");
        }
        Output::Record(r) => {
            if let Some(bus) = bus {
                let _ = bus.send(BusCmd::Unsubscribe(r.call_id.clone()));
            }
            let _ = store.send(StoreCmd::Record(Box::new(r)));
        }
        Output::SendRemote { node, to, msg } => {
            if let Some(bus) = bus {
                let _ = bus.send(BusCmd::Publish { node, to, msg });
            }
        }
        Output::Forward { conn, from, msg } => match bus {
            Some(bus) => {
                let _ = bus.send(BusCmd::Forward { conn, from, msg });
            }
            None => engine.handle_unowned(Instant::now(), conn, msg),
        },
        // Only in cluster mode, where `drain` handles them.
        Output::Attempt { .. } => {}
        Output::Released(row) => {
            if let Some(bus) = bus {
                let _ = bus.send(BusCmd::Unsubscribe(row.call_id.clone()));
            }
            let _ = store.send(StoreCmd::Attempt(Box::new((row, true))));
        }
        Output::WakeUp { call_id, number, from, from_name } => {
            let payload = push::incoming_payload(&call_id, &from, &from_name);
            let sent = wake.is_some_and(|tx| tx.send(WakeCmd { call_id: call_id.clone(), number, payload }).is_ok());
            if !sent {
                engine.wake_failed(Instant::now(), &call_id, "Web Push is not available");
            }
        }
    }
}

/// The metrics bumped for every message or step, each registered on its first use: the
/// `counter!` macro builds its key and looks it up in the registry on every call.
mod hot {
    use std::sync::OnceLock;

    use metrics::{Counter, Gauge};
    use trunkline_protocol::{Outcome, Step};

    fn get<T>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T) -> &'static T {
        cell.get_or_init(|| {
            // The recorder first: a handle taken before it is installed would count nowhere.
            let _ = super::metrics_handle();
            make()
        })
    }

    pub fn step(step: Step) -> &'static Counter {
        static C: [OnceLock<Counter>; Step::ALL.len()] = [const { OnceLock::new() }; Step::ALL.len()];
        let i = Step::ALL.iter().position(|s| *s == step).unwrap_or(0);
        get(&C[i], || metrics::counter!("trunkline_steps_total", "step" => step.as_str()))
    }

    pub fn outcome(outcome: Outcome) -> &'static Counter {
        static C: [OnceLock<Counter>; Outcome::ALL.len()] = [const { OnceLock::new() }; Outcome::ALL.len()];
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        get(&C[i], || metrics::counter!("trunkline_calls_total", "outcome" => outcome.as_str()))
    }

    pub fn calls_in_progress() -> &'static Gauge {
        static G: OnceLock<Gauge> = OnceLock::new();
        get(&G, || metrics::gauge!("trunkline_calls_in_progress"))
    }

    pub fn ws_messages() -> &'static Counter {
        static C: OnceLock<Counter> = OnceLock::new();
        get(&C, || metrics::counter!("trunkline_ws_messages_total"))
    }
}

/// How long the store task lets records gather after the first of a batch. A record is written
/// after its call's outcome was sent, so this delays only its appearance in the history. Each
/// commit writes every page it touched (the table and its four indexes: a page per caller and
/// per callee of the batch), so a longer gathering writes far fewer pages per record: at
/// 5,000 decisions/s, 10 ms gave 2.9 `pwrite`s and 1.6 `pread`s per decision, 100 ms 0.75 and
/// 0.38 (bench/README.md, "Steering: records gathered for 100 ms").
const STORE_GATHER: Duration = Duration::from_millis(100);

/// The same in cluster mode, where the batch also carries attempt rows' later states (C12's
/// key, ringing, connected): a replica that dies loses what it had not written yet, and the
/// one that adopts the attempt starts from the row (`cluster_kill_owner_while_ringing`).
const STORE_GATHER_CLUSTER: Duration = Duration::from_millis(10);

/// At most this many store commands per batch (one transaction).
const STORE_BATCH: usize = 1024;

/// Call records kept in memory while the disk is full, at most (oldest dropped beyond, counted).
const MAX_RECORDS_WAITING: usize = 100_000;

async fn store_loop(
    dir: Arc<dyn Directory>,
    mut rx: mpsc::UnboundedReceiver<StoreCmd>,
    cluster: Option<(crate::cluster::store::ClusterStore, Arc<ClusterState>)>,
) {
    let mut batch = Vec::with_capacity(STORE_BATCH);
    let mut records = Vec::with_capacity(STORE_BATCH);
    // Cluster mode: attempt rows of this batch (the last state of each wins), and finished
    // attempts whose rows could not be deleted yet.
    let mut attempts: Vec<(AttemptRow, bool)> = Vec::new();
    let mut undeleted: Vec<String> = Vec::new();
    loop {
        // While the disk is full, records wait here and a write is retried every second (a
        // probe when none waits), so service resumes by itself when space returns.
        let retry = !records.is_empty() || dir.storage_unavailable();
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, STORE_BATCH) => n,
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {
                if records.is_empty() {
                    let _ = dir.storage_probe().await;
                } else {
                    flush(&*dir, &mut records).await;
                }
                continue;
            }
        };
        if got == 0 {
            break;
        }
        // Let a burst gather for a moment: one transaction for many records costs far less
        // than one each (every commit writes and checksums each page it touched, in the table
        // and its four indexes). Records are written after the outcome is sent anyway. In
        // cluster mode too: a new attempt's row is written ahead by the bus task, not here;
        // what waits here is its record, the deletion of its row and its later states. Those
        // later states are what another replica adopts if this one dies, so in cluster mode
        // the wait stays short (`STORE_GATHER_CLUSTER`).
        let gather = if cluster.is_some() { STORE_GATHER_CLUSTER } else { STORE_GATHER };
        let gather_until = tokio::time::Instant::now() + gather;
        while batch.len() < STORE_BATCH {
            let room = STORE_BATCH - batch.len();
            match tokio::time::timeout_at(gather_until, rx.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        for cmd in batch.drain(..) {
            match cmd {
                StoreCmd::Record(r) => records.push(*r),
                StoreCmd::Attempt(a) => attempts.push(*a),
                StoreCmd::SwitchState(cmd) => {
                    let SwitchStateCmd { id, online, urls, at } = *cmd;
                    flush(&*dir, &mut records).await;
                    match dir.set_switch_online(&id, online, &urls, at).await {
                        Ok(()) => {}
                        // Removed by an admin while connected: nothing to record.
                        Err(DirectoryError::NotFound { .. }) => tracing::info!(switch_id = %id, "switch no longer provisioned"),
                        // A full disk is logged once per episode by the directory.
                        Err(e) if e.is_unavailable() => tracing::debug!(switch_id = %id, "switch state not stored: disk full"),
                        Err(e) => tracing::error!(switch_id = %id, error = %e, "could not store switch state"),
                    }
                }
            }
        }
        if let Some((cs, state)) = &cluster {
            write_attempts(cs, state, &mut attempts, &records).await;
        }
        let ended: Vec<String> = if cluster.is_some() { records.iter().map(|r| r.call_id.clone()).collect() } else { vec![] };
        flush(&*dir, &mut records).await;
        if let Some((cs, _)) = &cluster
            && (!ended.is_empty() || !undeleted.is_empty())
        {
            // Records stored (or waiting in memory): the attempts are over. A crash in between
            // leaves a row another replica adopts and ends again; first writer wins the record.
            let waiting: std::collections::HashSet<&str> = records.iter().map(|r| r.call_id.as_str()).collect();
            let mut stored: Vec<String> = ended.into_iter().filter(|id| !waiting.contains(id.as_str())).collect();
            stored.append(&mut undeleted);
            if let Err(e) = cs.delete_attempts(&stored).await {
                // Tried again with the next batch (a row left behind would hold a finished call
                // open until this replica stops).
                metrics::counter!("trunkline_records_retry_total").increment(1);
                tracing::warn!(error = %e, count = stored.len(), "could not delete finished attempt rows; will retry");
                stored.truncate(MAX_RECORDS_WAITING);
                undeleted = stored;
            }
        }
    }
    // Shutting down: a last try for what waits.
    flush(&*dir, &mut records).await;
    if !records.is_empty() {
        tracing::error!(count = records.len(), "stopping with call records the full disk never took: they are lost");
    }
}

/// Write this batch's attempt rows, except those whose record is in the same batch (an instant
/// B3 reject costs one insert, not three).
async fn write_attempts(
    cs: &crate::cluster::store::ClusterStore,
    state: &ClusterState,
    attempts: &mut Vec<(AttemptRow, bool)>,
    records: &[CallRecord],
) {
    if attempts.is_empty() {
        return;
    }
    let mut last: HashMap<String, (AttemptRow, bool)> = HashMap::new();
    for (row, released) in attempts.drain(..) {
        last.insert(row.call_id.clone(), (row, released));
    }
    last.retain(|id, _| !records.iter().any(|r| &r.call_id == id));
    let (node, inc) = (state.node().to_string(), state.incarnation());
    for released in [false, true] {
        let rows: Vec<AttemptRow> = last.values().filter(|(_, r)| *r == released).map(|(row, _)| row.clone()).collect();
        if rows.is_empty() {
            continue;
        }
        for attempt in 0..3u64 {
            match cs.upsert_attempts(&node, &inc, &rows, released).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("trunkline_records_retry_total").increment(1);
                    tracing::warn!(error = %e, attempt, "could not write attempt rows; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
    }
}

async fn flush(dir: &dyn Directory, records: &mut Vec<CallRecord>) {
    if records.is_empty() {
        return;
    }
    if dir.storage_unavailable() {
        // Known full: one try (it may be back), else keep them for the next retry.
        match dir.insert_call_records(records).await {
            Ok(()) => records.clear(),
            Err(e) if e.is_unavailable() => {
                if records.len() > MAX_RECORDS_WAITING {
                    let dropped = records.len() - MAX_RECORDS_WAITING;
                    records.drain(..dropped);
                    metrics::counter!("trunkline_call_records_dropped_total").increment(dropped as u64);
                    tracing::error!(dropped, "disk full for too long: dropping the oldest waiting call records");
                }
            }
            Err(_) => {}
        }
        if records.is_empty() || dir.storage_unavailable() {
            return;
        }
    }
    // Retry a few times: losing call records is worse than a delay.
    for attempt in 0..3u64 {
        match dir.insert_call_records(records).await {
            Ok(()) => {
                records.clear();
                return;
            }
            // The disk is full (logged once by the directory): keep them for the retry.
            Err(e) if e.is_unavailable() => return,
            Err(e) => {
                metrics::counter!("trunkline_records_retry_total").increment(1);
                tracing::error!(error = %e, attempt, count = records.len(), "could not store call records; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    // One bad record must not take the good ones with it: store them one by one.
    let mut waiting = Vec::new();
    for r in records.drain(..) {
        match dir.insert_call_record(&r).await {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => waiting.push(r),
            Err(e) => tracing::error!(error = %e, call_id = %r.call_id, "dropping a call record that cannot be stored"),
        }
    }
    *records = waiting;
}

/// Reload the directory into the engine when it changes: at once when the admin API says so,
/// and by polling a version counter for changes made by other processes (the admin CLI).
async fn directory_watch(
    dir: Arc<dyn Directory>,
    hub: Arc<Hub>,
    changed: Arc<Notify>,
    loaded_version: Option<i64>,
    throttle: Throttle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut version = loaded_version;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = changed.notified() => true,
            _ = shut(&mut shutdown) => return,
        };
        let v = dir.directory_version().await.ok();
        if forced || v != version {
            match dir.list_accounts().await {
                Ok(accounts) => {
                    version = v;
                    hub.apply(EngineCmd::Directory(accounts));
                }
                Err(e) => tracing::error!(error = %e, "could not reload the directory"),
            }
        }
        if last_sweep.elapsed() > Duration::from_secs(3600) {
            last_sweep = Instant::now();
            let _ = dir.delete_expired_sessions(unix_ms()).await;
            let (failure_before, success_before) = throttle.stale_before(unix_ms());
            let _ = dir.sweep_throttle(failure_before, success_before).await;
        }
    }
}
