//! What cluster mode keeps in PostgreSQL besides the directory: the replicas' leases
//! (`cluster_nodes`) and the write-ahead attempts (`call_attempts`). Time is PostgreSQL's
//! `now()`, the one clock every replica shares; no replica's own clock decides a lease.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::steering::{AttemptRow, CallState, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "another live replica already uses node_id {0:?} (its lease has not expired): give every replica its own \
         cluster.node_id"
    )]
    NodeIdTaken(String),
}

#[derive(Clone)]
pub struct ClusterStore {
    pool: PgPool,
}

/// One replica as `signal-server cluster status` shows it.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node_id: String,
    pub incarnation: String,
    pub http_addr: Option<String>,
    pub live: bool,
    /// Milliseconds until the lease expires (negative: expired that long ago).
    pub lease_left_ms: i64,
}

impl ClusterStore {
    /// A small pool of its own (leases must not wait behind the directory's queries).
    pub async fn connect(url: &str, statement_timeout_ms: u64) -> Result<ClusterStore, StoreError> {
        Self::pool(url, statement_timeout_ms, true)
    }

    /// As [`ClusterStore::connect`], for the attempt and presence writes of every call: a
    /// connection is not pinged before each use (a round trip to PostgreSQL per statement, on
    /// the path of every new attempt). A connection that died since (PostgreSQL restarted)
    /// fails its statement and is dropped; the callers try again ([`ClusterStore::retry`]).
    pub async fn connect_unpinged(url: &str, statement_timeout_ms: u64) -> Result<ClusterStore, StoreError> {
        Self::pool(url, statement_timeout_ms, false)
    }

    fn pool(url: &str, statement_timeout_ms: u64, ping: bool) -> Result<ClusterStore, StoreError> {
        use std::str::FromStr;
        let timeout = format!("{statement_timeout_ms}ms");
        // synchronous_commit off: a commit is visible to the other replicas at once, without
        // waiting for the WAL to reach the disk (which cost ~20 ms per new attempt on the
        // write-ahead path). What it risks is a PostgreSQL crash losing the last few attempt,
        // lease and presence changes; the replicas' own crashes, which these rows are for,
        // lose nothing. Call records go through the directory's pool, fully durable.
        let opts =
            PgConnectOptions::from_str(url)?.options([("statement_timeout", timeout.as_str()), ("synchronous_commit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .test_before_acquire(ping)
            .connect_lazy_with(opts);
        Ok(ClusterStore { pool })
    }

    /// Run `op` up to three times: an unpinged pool hands out a connection that died (with
    /// PostgreSQL's restart) once, and the pool then replaces it.
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(ClusterStore) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut last = None;
        for _ in 0..3 {
            match op(self.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// Take the node's lease with a new incarnation. Refused if another live process holds
    /// the same node_id (`previous`: our own earlier incarnation, which we may replace).
    pub async fn join(
        &self,
        node: &str,
        incarnation: &str,
        previous: Option<&str>,
        ttl: Duration,
        http_addr: &str,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(
            "INSERT INTO cluster_nodes (node_id, incarnation, started_ms, lease_until, http_addr, version)
             VALUES ($1, $2, (extract(epoch from now()) * 1000)::bigint, now() + make_interval(secs => $3), $4, $5)
             ON CONFLICT (node_id) DO UPDATE SET incarnation = EXCLUDED.incarnation, started_ms = EXCLUDED.started_ms,
                 lease_until = EXCLUDED.lease_until, http_addr = EXCLUDED.http_addr, version = EXCLUDED.version
             WHERE cluster_nodes.lease_until < now() OR cluster_nodes.incarnation = $6
             RETURNING node_id",
        )
        .bind(node)
        .bind(incarnation)
        .bind(ttl.as_secs_f64())
        .bind(http_addr)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(previous.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::NodeIdTaken(node.to_string())),
        }
    }

    /// Extend the lease; false if it is no longer ours (another incarnation took the node id).
    pub async fn renew(&self, node: &str, incarnation: &str, ttl: Duration) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE cluster_nodes SET lease_until = now() + make_interval(secs => $3)
             WHERE node_id = $1 AND incarnation = $2",
        )
        .bind(node)
        .bind(incarnation)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Give the lease up (a clean stop): the others see the replica gone at once.
    pub async fn leave(&self, node: &str, incarnation: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1 AND incarnation = $2")
            .bind(node)
            .bind(incarnation)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The replicas with a live lease: node → incarnation.
    pub async fn live_nodes(&self) -> Result<HashMap<NodeId, String>, StoreError> {
        let rows = sqlx::query("SELECT node_id, incarnation FROM cluster_nodes WHERE lease_until >= now()")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, incarnation, http_addr, lease_until >= now(),
                    (extract(epoch from (lease_until - now())) * 1000)::bigint
             FROM cluster_nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| NodeStatus {
                node_id: r.get(0),
                incarnation: r.get(1),
                http_addr: r.get(2),
                live: r.get(3),
                lease_left_ms: r.get(4),
            })
            .collect())
    }

    /// Attempts in flight: (owner node, state, count).
    pub async fn attempts_by_owner(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT owner_node, state, count(*) FROM call_attempts GROUP BY owner_node, state ORDER BY owner_node, state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Write (or update) attempt rows owned by this incarnation, in one statement. A row another
    /// replica has adopted meanwhile is left alone. `rows` must not repeat a call id.
    pub async fn upsert_attempts(
        &self,
        node: &str,
        incarnation: &str,
        rows: &[AttemptRow],
        released: bool,
    ) -> Result<(), StoreError> {
        let a = Columns::of(rows);
        sqlx::query(
            "INSERT INTO call_attempts (call_id, owner_node, owner_incarnation, state, call_state, caller, callee,
                 caller_party, carrier, callee_device, started_ms, connected_ms, deadline_ms, trace, updated_at)
             SELECT t.call_id, $1, $2, $3, t.call_state, t.caller, t.callee, t.caller_party, t.carrier, t.callee_device,
                 t.started_ms, t.connected_ms, t.deadline_ms, t.trace, now()
             FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                 $11::int8[], $12::int8[], $13::int8[], $14::text[])
                 AS t(call_id, call_state, caller, callee, caller_party, carrier, callee_device, started_ms,
                      connected_ms, deadline_ms, trace)
             ORDER BY t.call_id
             ON CONFLICT (call_id) DO UPDATE SET state = EXCLUDED.state, call_state = EXCLUDED.call_state,
                 carrier = EXCLUDED.carrier, callee_device = EXCLUDED.callee_device,
                 connected_ms = EXCLUDED.connected_ms, deadline_ms = EXCLUDED.deadline_ms, trace = EXCLUDED.trace,
                 updated_at = now()
             WHERE call_attempts.owner_node = $1 AND call_attempts.owner_incarnation = $2",
        )
        .bind(node)
        .bind(incarnation)
        .bind(if released { "released" } else { "open" })
        .bind_columns(a)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// New attempts, written ahead before any other replica hears of them, in one statement. A
    /// row already there (a later state written first) or an attempt already recorded is left
    /// alone.
    pub async fn open_attempts(&self, node: &str, incarnation: &str, rows: &[AttemptRow]) -> Result<(), StoreError> {
        let a = Columns::of(rows);
        sqlx::query(
            "INSERT INTO call_attempts (call_id, owner_node, owner_incarnation, state, call_state, caller, callee,
                 caller_party, carrier, callee_device, started_ms, connected_ms, deadline_ms, trace, updated_at)
             SELECT t.call_id, $1, $2, 'open', t.call_state, t.caller, t.callee, t.caller_party, t.carrier,
                 t.callee_device, t.started_ms, t.connected_ms, t.deadline_ms, t.trace, now()
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                 $10::int8[], $11::int8[], $12::int8[], $13::text[])
                 AS t(call_id, call_state, caller, callee, caller_party, carrier, callee_device, started_ms,
                      connected_ms, deadline_ms, trace)
             WHERE NOT EXISTS (SELECT 1 FROM call_records r WHERE r.call_id = t.call_id)
             ORDER BY t.call_id
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(node)
        .bind(incarnation)
        .bind_columns(a)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The attempts are over (their records are stored).
    pub async fn delete_attempts(&self, call_ids: &[String]) -> Result<(), StoreError> {
        // Rows locked in call-id order, as the writes above take them: no deadlock between them.
        sqlx::query(
            "DELETE FROM call_attempts WHERE call_id IN
                 (SELECT call_id FROM call_attempts WHERE call_id = ANY($1) ORDER BY call_id FOR UPDATE)",
        )
        .bind(call_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Is there an attempt row for `call_id`, and is its owner live?
    pub async fn attempt_owner_live(&self, call_id: &str) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query(
            "SELECT a.state = 'open' AND EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = a.owner_node
                 AND n.incarnation = a.owner_incarnation AND n.lease_until >= now())
             FROM call_attempts a WHERE a.call_id = $1",
        )
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get::<bool, _>(0)))
    }

    /// Take over up to `limit` attempts whose owner has no live lease (or handed them over at
    /// shutdown). Row locks make racing sweepers safe: each row goes to one of them.
    pub async fn adopt_orphans(&self, node: &str, incarnation: &str, limit: i64) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(
            "UPDATE call_attempts SET owner_node = $1, owner_incarnation = $2, state = 'open', updated_at = now()
             WHERE call_id IN (
                 SELECT a.call_id FROM call_attempts a
                 WHERE a.state = 'released' OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = a.owner_node
                     AND n.incarnation = a.owner_incarnation AND n.lease_until >= now())
                 LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING call_id, call_state, caller, callee, caller_party, carrier, callee_device, started_ms,
                 connected_ms, deadline_ms, trace",
        )
        .bind(node)
        .bind(incarnation)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let call_id: String = r.get(0);
            let state = r.get::<Option<String>, _>(1).as_deref().and_then(CallState::parse);
            let caller = r.get::<Option<String>, _>(4).as_deref().and_then(super::parse_party);
            let (Some(state), Some(caller)) = (state, caller) else {
                tracing::error!(%call_id, "attempt row unreadable: ended as error");
                continue;
            };
            out.push(AttemptRow {
                call_id,
                state,
                caller,
                caller_number: r.get::<Option<String>, _>(2).unwrap_or_default(),
                callee_number: r.get::<Option<String>, _>(3).unwrap_or_default(),
                carrier: r.get(5),
                callee_device: r.get(6),
                started_ms: r.get::<Option<i64>, _>(7).unwrap_or(0),
                connected_ms: r.get(8),
                deadline_ms: r.get::<Option<i64>, _>(9).unwrap_or(0),
                trace: parse_trace(&r.get::<Option<String>, _>(10).unwrap_or_default()),
            });
        }
        Ok(out)
    }
}

/// One presence row (see migration 0003).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceRow {
    pub party: String,
    pub node: String,
    pub incarnation: String,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
    pub rev: i64,
}

impl ClusterStore {
    /// `party` signed in here: its row now names this replica, with a new revision.
    pub async fn presence_put(
        &self,
        party: &str,
        node: &str,
        incarnation: &str,
        calls: Option<&[String]>,
    ) -> Result<PresenceRow, StoreError> {
        let calls_json = calls.map(|c| serde_json::to_string(c).expect("strings serialize"));
        let rev: i64 = sqlx::query_scalar(
            "INSERT INTO presence (party, node_id, incarnation, online, calls, rev)
             VALUES ($1, $2, $3, true, $4, nextval('presence_rev'))
             ON CONFLICT (party) DO UPDATE SET node_id = EXCLUDED.node_id, incarnation = EXCLUDED.incarnation,
                 online = true, calls = EXCLUDED.calls, rev = EXCLUDED.rev
             RETURNING rev",
        )
        .bind(party)
        .bind(node)
        .bind(incarnation)
        .bind(calls_json)
        .fetch_one(&self.pool)
        .await?;
        Ok(PresenceRow {
            party: party.into(),
            node: node.into(),
            incarnation: incarnation.into(),
            online: true,
            calls: calls.map(<[String]>::to_vec),
            rev,
        })
    }

    /// `party` left this replica: a tombstone, unless it has signed in elsewhere since (then
    /// the row names the other replica and stays).
    pub async fn presence_delete(&self, party: &str, node: &str, incarnation: &str) -> Result<Option<PresenceRow>, StoreError> {
        let rev: Option<i64> = sqlx::query_scalar(
            "UPDATE presence SET online = false, rev = nextval('presence_rev')
             WHERE party = $1 AND node_id = $2 AND incarnation = $3 AND online RETURNING rev",
        )
        .bind(party)
        .bind(node)
        .bind(incarnation)
        .fetch_optional(&self.pool)
        .await?;
        Ok(rev.map(|rev| PresenceRow {
            party: party.into(),
            node: node.into(),
            incarnation: incarnation.into(),
            online: false,
            calls: None,
            rev,
        }))
    }

    /// Presence rows changed after revision `after`, oldest first.
    pub async fn presence_since(&self, after: i64, limit: i64) -> Result<Vec<PresenceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT party, node_id, incarnation, online, calls, rev FROM presence WHERE rev > $1 ORDER BY rev LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PresenceRow {
                party: r.get(0),
                node: r.get(1),
                incarnation: r.get(2),
                online: r.get(3),
                calls: r.get::<Option<String>, _>(4).and_then(|c| serde_json::from_str(&c).ok()),
                rev: r.get(5),
            })
            .collect())
    }
}

/// Attempt rows as column arrays, for `UNNEST`.
struct Columns {
    call_id: Vec<String>,
    call_state: Vec<String>,
    caller: Vec<String>,
    callee: Vec<String>,
    caller_party: Vec<String>,
    carrier: Vec<Option<String>>,
    callee_device: Vec<Option<String>>,
    started_ms: Vec<i64>,
    connected_ms: Vec<Option<i64>>,
    deadline_ms: Vec<i64>,
    trace: Vec<String>,
}

/// Binds the columns in their `UNNEST` order.
trait BindColumns {
    fn bind_columns(self, a: Columns) -> Self;
}

impl<'q> BindColumns for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_columns(self, a: Columns) -> Self {
        self.bind(a.call_id)
            .bind(a.call_state)
            .bind(a.caller)
            .bind(a.callee)
            .bind(a.caller_party)
            .bind(a.carrier)
            .bind(a.callee_device)
            .bind(a.started_ms)
            .bind(a.connected_ms)
            .bind(a.deadline_ms)
            .bind(a.trace)
    }
}

impl Columns {
    fn of(rows: &[AttemptRow]) -> Columns {
        Columns {
            call_id: rows.iter().map(|a| a.call_id.clone()).collect(),
            call_state: rows.iter().map(|a| a.state.as_str().to_string()).collect(),
            caller: rows.iter().map(|a| a.caller_number.clone()).collect(),
            callee: rows.iter().map(|a| a.callee_number.clone()).collect(),
            caller_party: rows.iter().map(|a| super::party_str(&a.caller)).collect(),
            carrier: rows.iter().map(|a| a.carrier.clone()).collect(),
            callee_device: rows.iter().map(|a| a.callee_device.clone()).collect(),
            started_ms: rows.iter().map(|a| a.started_ms).collect(),
            connected_ms: rows.iter().map(|a| a.connected_ms).collect(),
            deadline_ms: rows.iter().map(|a| a.deadline_ms).collect(),
            trace: rows.iter().map(|a| trace_str(&a.trace)).collect(),
        }
    }
}

fn trace_str(t: &[trunkline_protocol::Step]) -> String {
    t.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

fn parse_trace(s: &str) -> Vec<trunkline_protocol::Step> {
    s.split(',').filter(|x| !x.is_empty()).filter_map(trunkline_protocol::Step::parse).collect()
}

#[cfg(test)]
mod tests {
    //! The store's SQL against a real PostgreSQL (a fresh database per test).

    use super::*;
    use crate::directory::conformance::{test_options, with_pg_database};
    use crate::steering::Party;

    const TTL: Duration = Duration::from_secs(30);

    async fn store(url: &str) -> ClusterStore {
        // Opening the directory applies the migrations (the cluster tables come with them).
        crate::directory::open(url, &test_options()).await.unwrap();
        ClusterStore::connect(url, 5000).await.unwrap()
    }

    fn row(call_id: &str) -> AttemptRow {
        AttemptRow {
            call_id: call_id.into(),
            state: CallState::Ringing,
            caller: Party::Device("2001".into()),
            caller_number: "2001".into(),
            callee_number: "2002".into(),
            carrier: None,
            callee_device: Some("2002".into()),
            started_ms: 1_700_000_000_000,
            connected_ms: None,
            deadline_ms: 1_700_000_045_000,
            trace: vec![trunkline_protocol::Step::A, trunkline_protocol::Step::C1],
        }
    }

    #[tokio::test]
    async fn a_node_id_is_held_by_one_live_incarnation_and_released_by_leave() {
        with_pg_database(|url| async move {
            let s = store(&url).await;
            s.join("r1", "inc-a", None, TTL, "127.0.0.1:1").await.unwrap();
            assert!(matches!(s.join("r1", "inc-b", None, TTL, "x").await, Err(StoreError::NodeIdTaken(_))));
            // The same process rejoining after a fence may replace its own earlier incarnation.
            s.join("r1", "inc-b", Some("inc-a"), TTL, "x").await.unwrap();
            assert!(!s.renew("r1", "inc-a", TTL).await.unwrap(), "the old incarnation lost the lease");
            assert!(s.renew("r1", "inc-b", TTL).await.unwrap());
            s.join("r2", "inc-c", None, TTL, "x").await.unwrap();
            let live = s.live_nodes().await.unwrap();
            assert_eq!(live.get("r1").map(String::as_str), Some("inc-b"));
            assert_eq!(live.len(), 2);
            s.leave("r2", "inc-c").await.unwrap();
            assert!(!s.live_nodes().await.unwrap().contains_key("r2"));
            // An expired lease frees the node id for anyone.
            s.join("r3", "inc-d", None, Duration::from_millis(1), "x").await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while s.live_nodes().await.unwrap().contains_key("r3") {
                assert!(std::time::Instant::now() < deadline, "the 1 ms lease never expired");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            s.join("r3", "inc-e", None, TTL, "x").await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn orphans_of_a_dead_owner_are_adopted_once_and_its_late_writes_change_nothing() {
        with_pg_database(|url| async move {
            let s = store(&url).await;
            s.join("live", "L", None, TTL, "x").await.unwrap();
            s.upsert_attempts("live", "L", &[row("kept")], false).await.unwrap();
            // "dead" never joined (or its lease expired): its rows are orphans.
            s.upsert_attempts("dead", "D", &[row("o1"), row("o2")], false).await.unwrap();
            // A live owner's handed-over (released) row is adoptable too.
            s.upsert_attempts("live", "L", &[row("rel")], true).await.unwrap();
            // The adopters are members (a sweeper runs only on a live replica).
            s.join("a1", "A1", None, TTL, "x").await.unwrap();
            s.join("a2", "A2", None, TTL, "x").await.unwrap();
            let (a, b) = (s.clone(), s.clone());
            let (x, y) = tokio::join!(a.adopt_orphans("a1", "A1", 100), b.adopt_orphans("a2", "A2", 100));
            let mut got: Vec<String> = x.unwrap().into_iter().chain(y.unwrap()).map(|r| r.call_id).collect();
            got.sort();
            assert_eq!(got, ["o1", "o2", "rel"], "each orphan goes to exactly one adopter");
            let again = s.adopt_orphans("a1", "A1", 100).await.unwrap();
            assert!(again.is_empty(), "adopted rows belong to live owners now: {again:?}");
            // The dead owner's late write does not take a row back.
            let mut late = row("o1");
            late.state = CallState::Connected;
            s.upsert_attempts("dead", "D", &[late], false).await.unwrap();
            let owners = s.attempts_by_owner().await.unwrap();
            assert!(!owners.iter().any(|(o, _, _)| o == "dead"), "{owners:?}");
            s.delete_attempts(&["o1".into(), "o2".into(), "rel".into(), "kept".into()]).await.unwrap();
            assert!(s.attempts_by_owner().await.unwrap().is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn opening_never_overwrites_a_newer_row_nor_revives_a_recorded_attempt() {
        with_pg_database(|url| async move {
            let s = store(&url).await;
            let dir = crate::directory::open(&url, &test_options()).await.unwrap();
            // A later state was written first (the store task ran ahead of the bus task).
            let mut later = row("c1");
            later.state = CallState::Connected;
            s.upsert_attempts("r1", "I", &[later.clone()], false).await.unwrap();
            s.open_attempts("r1", "I", &[row("c1")]).await.unwrap();
            // An attempt that already has its record gets no row.
            dir.insert_call_record(&crate::directory::conformance::record("c2", "2001", "2002", 1)).await.unwrap();
            s.open_attempts("r1", "I", &[row("c2"), row("c3")]).await.unwrap();
            // r1 has no lease: a live replica adopts what it left.
            s.join("x", "X", None, TTL, "x").await.unwrap();
            let mut got = s.adopt_orphans("x", "X", 10).await.unwrap();
            got.sort_by(|a, b| a.call_id.cmp(&b.call_id));
            assert_eq!(
                got.iter().map(|r| (r.call_id.as_str(), r.state)).collect::<Vec<_>>(),
                [("c1", CallState::Connected), ("c3", CallState::Ringing)]
            );
        })
        .await;
    }

    #[tokio::test]
    async fn an_adopted_row_reads_back_as_written() {
        with_pg_database(|url| async move {
            let s = store(&url).await;
            let mut r = row("c1");
            r.caller = Party::Switch("hq".into());
            r.carrier = Some("branch".into());
            r.state = CallState::Connected;
            r.connected_ms = Some(1_700_000_001_000);
            s.upsert_attempts("dead", "D", &[r.clone()], false).await.unwrap();
            let got = s.adopt_orphans("a", "A", 10).await.unwrap();
            assert_eq!(got, vec![r]);
        })
        .await;
    }

    #[tokio::test]
    async fn presence_rows_get_a_new_revision_per_change_and_only_the_holder_clears_one() {
        with_pg_database(|url| async move {
            let s = store(&url).await;
            let a = s.presence_put("d:2001", "r1", "I1", None).await.unwrap();
            let calls = vec!["c1".to_string()];
            let b = s.presence_put("s:hq", "r2", "I2", Some(&calls)).await.unwrap();
            assert!(b.rev > a.rev);
            // 2001 moves to r2; r1's late "left" must not clear it.
            let moved = s.presence_put("d:2001", "r2", "I2", None).await.unwrap();
            assert!(s.presence_delete("d:2001", "r1", "I1").await.unwrap().is_none());
            let all = s.presence_since(0, 100).await.unwrap();
            assert_eq!(all.len(), 2);
            let hq = all.iter().find(|r| r.party == "s:hq").unwrap();
            assert_eq!(hq.calls.as_deref(), Some(&calls[..]));
            let gone = s.presence_delete("d:2001", "r2", "I2").await.unwrap().expect("the holder clears it");
            assert!(gone.rev > moved.rev && !gone.online);
            let since = s.presence_since(moved.rev, 100).await.unwrap();
            assert_eq!(since, vec![gone]);
        })
        .await;
    }
}
