//! The cluster driver: one NATS client, the lease loop, the presence watch, the per-call
//! subscriptions of the attempts this replica owns, and the sweeper that adopts orphans.
//!
//! The engine's cluster outputs reach this module as [`BusCmd`]s on one channel, run **in
//! order** by one task on one NATS connection: so the owner's `SUB {prefix}.call.X` leaves
//! before any message that could make a party answer about X.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use trunkline_protocol::{CallId, ClientMsg, ErrorCode, ProtocolError, ServerMsg};

use super::store::{ClusterStore, PresenceRow, StoreError};
use super::{ClusterConfig, Names, parse_party, party_str};
use crate::steering::{AttemptRow, ConnId, NodeId, Party};

/// What the runtime needs from the server's hub (the engine behind its lock).
pub trait HubOps: Send + Sync + 'static {
    /// A party on another replica sent `msg` about a call owned here.
    fn remote(&self, from: &Party, msg: ClientMsg) -> Result<(), ProtocolError>;
    /// Another replica sends `msg` to `to`, connected here (false: it is not).
    fn deliver(&self, to: &Party, msg: ServerMsg) -> bool;
    /// No replica owns the call `msg` names.
    fn unowned(&self, conn: ConnId, msg: ClientMsg);
    /// Send `msg` to local connection `conn`.
    fn reply(&self, conn: ConnId, msg: ServerMsg);
    /// Presence rows read or announced (the hub's `PresenceView` filters them, under the same
    /// lock as the engine, so a local sign-in and an older row elsewhere cannot interleave).
    /// True when a row names a replica the view does not know as live (one that joined after
    /// the last live read): the caller reads the live set at once.
    /// `announced`: the rows come from the presence broadcast (their replica sent them just
    /// now), not from reading the table.
    fn presence_rows(&self, rows: Vec<PresenceRow>, announced: bool) -> bool;
    /// A read of the live leases begins: its stamp (reads applied out of order are dropped).
    fn live_read_begin(&self) -> u64;
    /// The live leases, as read by the read stamped `stamp`; false if a newer read was
    /// already applied (this one changed nothing).
    fn presence_live(&self, stamp: u64, live: HashMap<NodeId, String>) -> bool;
    /// The row of a local sign-in was written at `rev`.
    fn presence_local_rev(&self, party: &Party, rev: i64);
    fn adopt(&self, row: AttemptRow);
    /// Membership lost: forget every call and close every connection.
    fn fence(&self);
}

/// The engine's cluster outputs, and the hub's presence news, for the bus task.
#[derive(Debug)]
pub enum BusCmd {
    Publish {
        node: NodeId,
        to: Party,
        msg: ServerMsg,
    },
    /// An attempt this replica owns, in its current state. The first time: subscribe to its
    /// subject and write its row **before** anything that follows on the bus (so no party on
    /// another replica hears of an attempt that a crash could leave without a row).
    Open(AttemptRow),
    Unsubscribe(CallId),
    Forward {
        conn: ConnId,
        from: Party,
        msg: ClientMsg,
    },
    PresencePut {
        party: Party,
        calls: Option<Vec<CallId>>,
    },
    PresenceDelete(Party),
    /// Subscribe to an adopted attempt's subject, then hand it to the engine.
    Adopt(AttemptRow),
    /// Fenced: drop every call subscription and presence revision (a new incarnation starts
    /// from nothing).
    Reset(oneshot::Sender<()>),
}

/// Shared flags: readiness for `/readyz`, the current incarnation for the store.
pub struct ClusterState {
    pub cfg: ClusterConfig,
    pub names: Names,
    member: AtomicBool,
    caught_up: AtomicBool,
    draining: AtomicBool,
    incarnation: RwLock<String>,
}

impl ClusterState {
    pub fn new(cfg: ClusterConfig) -> ClusterState {
        ClusterState {
            names: Names::new(&cfg.name_prefix),
            cfg,
            member: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            incarnation: RwLock::new(String::new()),
        }
    }
    pub fn node(&self) -> &str {
        &self.cfg.node_id
    }
    pub fn incarnation(&self) -> String {
        self.incarnation.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// A live member whose presence view has caught up, and not draining.
    pub fn ready(&self) -> bool {
        self.member.load(Ordering::SeqCst) && self.caught_up.load(Ordering::SeqCst) && !self.draining()
    }
    pub fn member(&self) -> bool {
        self.member.load(Ordering::SeqCst)
    }
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS {url}: {why}")]
    Nats { url: String, why: String },
    #[error("cluster store: {0}")]
    Store(#[from] StoreError),
}

/// Connect to NATS (retrying in the background if it is down at start: the replica stays
/// unready until it can reach it).
pub async fn connect_nats(cfg: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    let err = |why: String| ClusterError::Nats { url: cfg.nats_url.clone(), why };
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("trunkline-signal-{}", cfg.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // A silent partition must show quickly: the lease loop's flush does, pings help the
        // connection itself notice.
        .ping_interval(Duration::from_millis(cfg.lease_ttl_ms.max(1000)))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(cfg.forward_timeout()))
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(1000)))
        .event_callback(|ev| async move {
            match ev {
                async_nats::Event::Connected => {
                    metrics::gauge!("trunkline_nats_connected").set(1.0);
                    tracing::info!("NATS connected");
                }
                async_nats::Event::Disconnected => {
                    metrics::gauge!("trunkline_nats_connected").set(0.0);
                    metrics::counter!("trunkline_nats_reconnects_total").increment(1);
                    tracing::warn!("NATS disconnected; reconnecting");
                }
                async_nats::Event::SlowConsumer(_) => metrics::counter!("trunkline_nats_slow_consumer_total").increment(1),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let Some(f) = &cfg.nats_credentials_file {
        opts = opts.credentials_file(f).await.map_err(|e| err(format!("credentials file {}: {e}", f.display())))?;
    }
    let urls: Vec<String> = cfg.nats_url.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| err(format!("{u}: {e}"))))
        .collect::<Result<_, _>>()?;
    opts.connect(addrs).await.map_err(|e| err(e.to_string()))
}

/// Everything the cluster runs, started by the server.
pub struct Runtime {
    pub state: Arc<ClusterState>,
    pub client: async_nats::Client,
    /// Attempts and presence.
    pub store: ClusterStore,
    /// Leases, the live set and adoption, on their own connections: a busy store must not
    /// delay a renewal into a fence.
    pub lease: ClusterStore,
    pub hub: Arc<dyn HubOps>,
    pub bus: mpsc::UnboundedSender<BusCmd>,
    pub http_addr: String,
}

impl Runtime {
    /// Run the bus task and the membership loop until `shutdown`; then leave the cluster.
    pub async fn run(self, bus_rx: mpsc::UnboundedReceiver<BusCmd>, mut shutdown: watch::Receiver<bool>) {
        let bus_task =
            tokio::spawn(bus_loop(self.client.clone(), self.state.clone(), self.store.clone(), self.hub.clone(), bus_rx));
        let mut previous: Option<String> = None;
        'life: loop {
            // Join: a new incarnation each time (a fenced replica's old entries are then
            // recognisably dead to everyone).
            let inc = uuid::Uuid::new_v4().simple().to_string();
            loop {
                if *shutdown.borrow() {
                    break 'life;
                }
                match self.join(&inc, previous.as_deref()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot join the cluster yet; retrying");
                        metrics::counter!("trunkline_cluster_lease_renew_total", "result" => "join_error").increment(1);
                        tokio::select! {
                            _ = tokio::time::sleep(self.state.cfg.lease_renew()) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
            *self.state.incarnation.write().unwrap_or_else(|e| e.into_inner()) = inc.clone();
            previous = Some(inc.clone());
            let deliver = tokio::spawn(deliver_loop(self.client.clone(), self.state.clone(), self.hub.clone()));
            let watcher =
                tokio::spawn(presence_loop(self.client.clone(), self.store.clone(), self.state.clone(), self.hub.clone()));
            self.state.member.store(true, Ordering::SeqCst);
            metrics::gauge!("trunkline_cluster_member").set(1.0);
            tracing::info!(node = self.state.node(), incarnation = %inc, "joined the cluster");

            let fenced = self.member_loop(&inc, &mut shutdown).await;
            self.state.member.store(false, Ordering::SeqCst);
            self.state.caught_up.store(false, Ordering::SeqCst);
            metrics::gauge!("trunkline_cluster_member").set(0.0);
            deliver.abort();
            watcher.abort();
            if !fenced {
                break 'life;
            }
            // Fenced: forget everything (another replica adopts the attempts), close the
            // sockets (the clients reconnect through the load balancer), start over.
            metrics::counter!("trunkline_cluster_fenced_total").increment(1);
            tracing::error!(
                node = self.state.node(),
                "fenced: could not renew the cluster lease in time; closing every connection"
            );
            self.hub.fence();
            let (tx, rx) = oneshot::channel();
            let _ = self.bus.send(BusCmd::Reset(tx));
            let _ = rx.await;
        }
        // Stopping: hand the lease back so the others adopt what was released at once.
        let inc = self.state.incarnation();
        if !inc.is_empty() {
            let _ = self.lease.leave(self.state.node(), &inc).await;
        }
        bus_task.abort();
    }

    async fn join(&self, inc: &str, previous: Option<&str>) -> Result<(), ClusterError> {
        let nats_err = |why: String| ClusterError::Nats { url: self.state.cfg.nats_url.clone(), why };
        if !nats_round_trip(&self.client, &self.state, Duration::from_secs(1)).await {
            return Err(nats_err("no answer within 1 s".into()));
        }
        self.lease.join(self.state.node(), inc, previous, self.state.cfg.lease_ttl(), &self.http_addr).await?;
        Ok(())
    }

    /// Renew the lease, follow the live set, adopt orphans. Returns true when fenced, false
    /// at shutdown.
    async fn member_loop(&self, inc: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        let cfg = &self.state.cfg;
        let mut last_ok = Instant::now();
        let mut tick = tokio::time::interval(cfg.lease_renew());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            // Fence on time, whatever is in flight: the lease (from the last renewal that
            // worked) must not outlive this replica's belief that it is a member.
            let fence_at = tokio::time::Instant::from(last_ok + cfg.fence_after());
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(fence_at) => return true,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return false; }
                }
            }
            let sent = Instant::now();
            // A member must reach both: renew only after a NATS round trip worked.
            let budget = cfg.lease_renew().min(Duration::from_secs(1));
            let work = async {
                if !nats_round_trip(&self.client, &self.state, budget).await {
                    return "nats_unhealthy";
                }
                match tokio::time::timeout(budget, self.lease.renew(self.state.node(), inc, cfg.lease_ttl())).await {
                    Ok(Ok(true)) => "ok",
                    Ok(Ok(false)) => "lost",
                    _ => "pg_error",
                }
            };
            let Ok(renewed) = tokio::time::timeout_at(fence_at, work).await else { return true };
            metrics::counter!("trunkline_cluster_lease_renew_total", "result" => renewed).increment(1);
            if renewed == "ok" {
                last_ok = sent;
            } else if renewed == "lost" || sent.duration_since(last_ok) >= cfg.fence_after() {
                return true;
            } else {
                continue;
            }
            read_live(&self.lease, &*self.hub).await;
            if last_sweep.elapsed() >= cfg.sweep_interval() {
                last_sweep = Instant::now();
                match self.lease.adopt_orphans(self.state.node(), inc, 200).await {
                    Ok(rows) => {
                        for row in rows {
                            metrics::counter!("trunkline_cluster_orphans_total", "action" => "adopted").increment(1);
                            tracing::info!(call_id = %row.call_id, state = row.state.as_str(), "adopting an attempt whose owner is gone");
                            let _ = self.bus.send(BusCmd::Adopt(row));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sweeper: cannot look for orphaned attempts"),
                }
            }
        }
    }
}

/// Read the live leases and hand them to the presence view.
async fn read_live(store: &ClusterStore, hub: &dyn HubOps) {
    let stamp = hub.live_read_begin();
    match store.live_nodes().await {
        Ok(live) => {
            let n = live.len() as f64;
            // A read that finished after a newer one changes nothing, the gauge included.
            if hub.presence_live(stamp, live) {
                metrics::gauge!("trunkline_cluster_nodes_live").set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the live replicas"),
    }
}

/// Did the NATS server answer within `budget`? A request nobody subscribes to comes back as
/// "no responders" from the server itself: a real round trip (`flush` only proves the bytes
/// left this process, which a silent partition does not stop).
async fn nats_round_trip(client: &async_nats::Client, state: &ClusterState, budget: Duration) -> bool {
    let subject = format!("{}.node.{}.ping", state.cfg.name_prefix, state.node());
    match tokio::time::timeout(budget, client.request(subject, bytes::Bytes::new())).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == async_nats::client::RequestErrorKind::NoResponders,
        Err(_) => false,
    }
}

/// Runs the engine's bus commands in order on one connection.
async fn bus_loop(
    client: async_nats::Client,
    state: Arc<ClusterState>,
    store: ClusterStore,
    hub: Arc<dyn HubOps>,
    mut rx: mpsc::UnboundedReceiver<BusCmd>,
) {
    // Aborted when removed, and all at once if this task is aborted (a detached subscription
    // task would keep the hub, and so the server's stores, alive after shutdown).
    let mut subs: HashMap<CallId, AbortOnDrop> = HashMap::new();
    let queues: ForwardQueues = Default::default();
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        // New attempts first, one write for the batch: doing that earlier than commands queued
        // before them never breaks an order (nothing about these calls has left yet).
        let mut new: Vec<AttemptRow> = Vec::new();
        for c in &batch {
            if let BusCmd::Open(row) = c
                && !subs.contains_key(&row.call_id)
            {
                // The latest state of each call, once.
                match new.iter_mut().find(|r| r.call_id == row.call_id) {
                    Some(r) => *r = row.clone(),
                    None => new.push(row.clone()),
                }
            }
        }
        if !new.is_empty() {
            for row in &new {
                subscribe_call(&client, &state, &hub, &mut subs, row.call_id.clone()).await;
            }
            let (node, inc) = (state.node().to_string(), state.incarnation());
            let written = store.retry(|s| {
                let (node, inc, new) = (&node, &inc, &new);
                async move { s.open_attempts(node, inc, new).await }
            });
            if let Err(e) = written.await {
                tracing::warn!(error = %e, count = new.len(), "could not write new attempt rows ahead");
            }
        }
        for cmd in batch.drain(..) {
            match cmd {
                BusCmd::Publish { node, to, msg } => {
                    let body = format!("{}\n{}", party_str(&to), msg.encode());
                    if client.publish(state.names.deliver(&node), body.into()).await.is_err() {
                        metrics::counter!("trunkline_cluster_deliver_total", "result" => "undeliverable").increment(1);
                    }
                }
                BusCmd::Open(_) => {}
                BusCmd::Adopt(row) => {
                    subscribe_call(&client, &state, &hub, &mut subs, row.call_id.clone()).await;
                    // The adopted call's parties may act on what the engine says next (an
                    // outcome, sent over their WebSockets) before the server has read our SUB on
                    // this connection: make sure it has, so their next message finds us.
                    if tokio::time::timeout(state.cfg.forward_timeout(), client.flush()).await.is_err() {
                        tracing::warn!(call_id = %row.call_id, "NATS did not confirm the adopted call's subscription in time");
                    }
                    hub.adopt(row);
                }
                BusCmd::Unsubscribe(call_id) => {
                    // Dropping the subscriber (with its task) unsubscribes.
                    subs.remove(&call_id);
                    metrics::gauge!("trunkline_cluster_calls_owned").set(subs.len() as f64);
                }
                BusCmd::Forward { conn, from, msg } => {
                    // One queue per connection and call: a party's messages about one call reach
                    // the owner in the order it sent them (a switch's `connected` before its
                    // `ended`), while other calls do not wait behind them.
                    // A queue lives only while it has messages (it takes itself out of
                    // `queues` under the lock this send holds, so none is lost in between).
                    let key = (conn, msg.call_id().unwrap_or_default().to_string());
                    let mut open = queues.lock().unwrap_or_else(|e| e.into_inner());
                    let mut item = Some((from, msg));
                    if let Some(tx) = open.get(&key)
                        && let Err(mpsc::error::SendError(back)) = tx.send(item.take().expect("set above"))
                    {
                        // Its task is gone (aborted): start another.
                        item = Some(back);
                    }
                    if let Some(item) = item {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let _ = tx.send(item);
                        open.insert(key.clone(), tx);
                        drop(open);
                        let ctx = (client.clone(), state.clone(), store.clone(), hub.clone());
                        tokio::spawn(forward_queue(ctx, queues.clone(), key, rx));
                    }
                }
                BusCmd::PresencePut { party, calls } => {
                    let (node, inc) = (state.node().to_string(), state.incarnation());
                    let put = store.retry(|s| {
                        let (p, node, inc, calls) = (party_str(&party), &node, &inc, calls.as_deref());
                        async move { s.presence_put(&p, node, inc, calls).await }
                    });
                    match put.await {
                        Ok(row) => {
                            hub.presence_local_rev(&party, row.rev);
                            announce(&client, &state, &row).await;
                        }
                        Err(e) => tracing::warn!(error = %e, party = %party_str(&party), "presence not stored"),
                    }
                }
                BusCmd::PresenceDelete(party) => {
                    let (node, inc) = (state.node().to_string(), state.incarnation());
                    // Only our own row: a newer sign-in elsewhere names another replica.
                    let deleted = store.retry(|s| {
                        let (p, node, inc) = (party_str(&party), &node, &inc);
                        async move { s.presence_delete(&p, node, inc).await }
                    });
                    match deleted.await {
                        Ok(Some(row)) => announce(&client, &state, &row).await,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, party = %party_str(&party), "presence not cleared"),
                    }
                }
                BusCmd::Reset(done) => {
                    subs.clear();
                    let _ = done.send(());
                }
            }
        }
    }
}

async fn subscribe_call(
    client: &async_nats::Client,
    state: &Arc<ClusterState>,
    hub: &Arc<dyn HubOps>,
    subs: &mut HashMap<CallId, AbortOnDrop>,
    call_id: CallId,
) {
    if subs.contains_key(&call_id) {
        return;
    }
    let subject = state.names.call(&call_id);
    let mut sub = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%call_id, error = %e, "cannot subscribe to an owned call's subject");
            return;
        }
    };
    let (client, hub) = (client.clone(), hub.clone());
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let reply = match parse_forward(&m.payload) {
                Some((from, msg)) => {
                    let call_id = msg.call_id().map(str::to_string);
                    match hub.remote(&from, msg) {
                        Ok(()) => String::new(),
                        Err(e) => e.to_msg(call_id).encode(),
                    }
                }
                None => ProtocolError::new(ErrorCode::Internal, "unreadable forwarded message").to_msg(None).encode(),
            };
            if let Some(to) = m.reply {
                let _ = client.publish(to, reply.into()).await;
            }
        }
    });
    subs.insert(call_id, AbortOnDrop(task));
    metrics::gauge!("trunkline_cluster_calls_owned").set(subs.len() as f64);
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_forward(payload: &[u8]) -> Option<(Party, ClientMsg)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (from, msg) = text.split_once('\n')?;
    Some((parse_party(from)?, ClientMsg::decode(msg).ok()?))
}

type ForwardCtx = (async_nats::Client, Arc<ClusterState>, ClusterStore, Arc<dyn HubOps>);
type ForwardKey = (ConnId, CallId);
/// The forward queues with messages, by connection and call.
type ForwardQueues = Arc<std::sync::Mutex<HashMap<ForwardKey, mpsc::UnboundedSender<(Party, ClientMsg)>>>>;

/// Forward one connection's messages about one call, in order; ends when none is left. (A
/// queue that idled for a while instead kept thousands of tasks and timers alive at a few
/// thousand calls a second, and a sweep over them for each message.)
async fn forward_queue(
    ctx: ForwardCtx,
    queues: ForwardQueues,
    key: ForwardKey,
    mut rx: mpsc::UnboundedReceiver<(Party, ClientMsg)>,
) {
    let (client, state, store, hub) = ctx;
    loop {
        let (from, msg) = match rx.try_recv() {
            Ok(m) => m,
            Err(_) => {
                // Empty: leave `queues` under its lock, so the bus task either sent before
                // (and it is received here) or starts a new queue after.
                let mut open = queues.lock().unwrap_or_else(|e| e.into_inner());
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => {
                        open.remove(&key);
                        return;
                    }
                }
            }
        };
        forward(client.clone(), state.clone(), store.clone(), hub.clone(), key.0, from, msg).await;
    }
}

/// Hand a party's message to the owner of its call. No owner: if the attempt's row says its
/// owner is still live or not yet adopted, wait for the adoption (bounded); otherwise the
/// message is handled here as for an unknown call.
async fn forward(
    client: async_nats::Client,
    state: Arc<ClusterState>,
    store: ClusterStore,
    hub: Arc<dyn HubOps>,
    conn: ConnId,
    from: Party,
    msg: ClientMsg,
) {
    let Some(call_id) = msg.call_id().map(str::to_string) else { return };
    let subject = state.names.call(&call_id);
    let body = format!("{}\n{}", party_str(&from), msg.encode());
    let cfg = &state.cfg;
    let give_up = Instant::now() + cfg.lease_ttl() + cfg.sweep_interval() * 2 + Duration::from_secs(1);
    let started = Instant::now();
    loop {
        let r = tokio::time::timeout(cfg.forward_timeout(), client.request(subject.clone(), body.clone().into())).await;
        match r {
            Ok(Ok(reply)) => {
                metrics::counter!("trunkline_cluster_forward_total", "result" => "ok").increment(1);
                metrics::histogram!("trunkline_cluster_forward_seconds").record(started.elapsed().as_secs_f64());
                if !reply.payload.is_empty()
                    && let Ok(text) = std::str::from_utf8(&reply.payload)
                    && let Ok(m) = ServerMsg::decode(text)
                {
                    hub.reply(conn, m);
                }
                return;
            }
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                let row = store.attempt_owner_live(&call_id).await;
                if matches!(row, Ok(Some(_))) && Instant::now() < give_up {
                    // The attempt exists: its owner just died (adoption comes within a sweep)
                    // or is subscribing. Ask again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                metrics::counter!("trunkline_cluster_forward_total", "result" => "no_responders").increment(1);
                hub.unowned(conn, msg);
                return;
            }
            _ => {
                // No answer. A replica cut off without its connection closing (a silent
                // partition) keeps its subscriptions on the NATS server until the server's own
                // pings give up, so requests go there and time out instead of finding nobody.
                // While the attempt's row exists, its owner is dead, fencing or being replaced by
                // an adopter: ask again (the adopter answers) until the adoption deadline.
                // A live but slow owner may then see the message twice; the engine answers a
                // repeat as for a call in that state (an `ended` is already done).
                let row = store.attempt_owner_live(&call_id).await;
                if matches!(row, Ok(Some(_))) && Instant::now() < give_up {
                    metrics::counter!("trunkline_cluster_forward_total", "result" => "retry").increment(1);
                    continue;
                }
                metrics::counter!("trunkline_cluster_forward_total", "result" => "timeout").increment(1);
                let e = ProtocolError::new(ErrorCode::Internal, "the replica handling this call did not answer; try again");
                hub.reply(conn, e.to_msg(Some(call_id)));
                return;
            }
        }
    }
}

/// Messages other replicas send to parties connected here.
async fn deliver_loop(client: async_nats::Client, state: Arc<ClusterState>, hub: Arc<dyn HubOps>) {
    let Ok(mut sub) = client.subscribe(state.names.deliver(state.node())).await else {
        tracing::error!("cannot subscribe to this replica's deliver subject");
        return;
    };
    while let Some(m) = sub.next().await {
        let Some((to, msg)) = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|t| t.split_once('\n'))
            .and_then(|(to, msg)| Some((parse_party(to)?, ServerMsg::decode(msg).ok()?)))
        else {
            continue;
        };
        let result = if hub.deliver(&to, msg) { "local" } else { "undeliverable" };
        metrics::counter!("trunkline_cluster_deliver_total", "result" => result).increment(1);
    }
}

/// Tell the other replicas at once (they also poll the table, in case this is lost).
async fn announce(client: &async_nats::Client, state: &ClusterState, row: &PresenceRow) {
    let body = serde_json::to_vec(row).expect("presence rows serialize");
    let _ = client.publish(state.names.presence(), body.into()).await;
}

/// Rows this far behind the newest seen are read again at every poll: sequence values are
/// taken before commit, so a row may commit after a newer one was already read.
const PRESENCE_LOOKBACK: i64 = 1000;

/// The presence table: a snapshot of every row, then every change, from the broadcast and
/// from polling the table (which also catches a lost broadcast).
async fn presence_loop(client: async_nats::Client, store: ClusterStore, state: Arc<ClusterState>, hub: Arc<dyn HubOps>) {
    // Subscribe first, snapshot second: nothing falls between them.
    let mut sub = match client.subscribe(state.names.presence()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to presence news");
            return;
        }
    };
    let mut max_rev = 0i64;
    let mut poll = tokio::time::interval(state.cfg.lease_renew());
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return };
                let Ok(row) = serde_json::from_slice::<PresenceRow>(&m.payload) else { continue };
                max_rev = max_rev.max(row.rev);
                if hub.presence_rows(vec![row], true) {
                    read_live(&store, &*hub).await;
                }
            }
            _ = poll.tick() => {
                let mut after = (max_rev - PRESENCE_LOOKBACK).max(0);
                loop {
                    match store.presence_since(after, 5000).await {
                        Ok(rows) => {
                            let (n, last) = (rows.len(), rows.last().map(|r| r.rev));
                            if let Some(l) = last {
                                max_rev = max_rev.max(l);
                            }
                            if !rows.is_empty() && hub.presence_rows(rows, false) {
                                read_live(&store, &*hub).await;
                            }
                            match last {
                                Some(l) if n == 5000 => after = l,
                                _ => {
                                    state.caught_up.store(true, Ordering::SeqCst);
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read presence");
                            break;
                        }
                    }
                }
            }
        }
    }
}
