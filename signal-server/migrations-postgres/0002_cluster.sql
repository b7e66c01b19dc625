-- Schema version 2: what cluster mode keeps in PostgreSQL (see shared research cluster.md
-- 3.4–3.5). Unused by a single server.

-- Membership with leases: a replica is live while `lease_until` is in the future (by the
-- database's clock, the one clock every replica shares). A restart gets a new incarnation,
-- so rows of the previous one are recognisably dead.
CREATE TABLE cluster_nodes (
    node_id       TEXT        PRIMARY KEY,
    incarnation   TEXT        NOT NULL,
    started_ms    BIGINT,
    lease_until   TIMESTAMPTZ NOT NULL,
    http_addr     TEXT,
    version       TEXT
);

-- Write-ahead call attempts: one row per attempt in progress, written by its owning replica
-- and deleted in the transaction that writes its call record. A row whose owner's lease
-- lapsed is an orphan that another replica finalizes (first writer wins on call_records).
CREATE TABLE call_attempts (
    call_id            TEXT        PRIMARY KEY,
    owner_node         TEXT        NOT NULL,
    owner_incarnation  TEXT        NOT NULL,
    -- open | orphaned | released (drain)
    state              TEXT        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'orphaned', 'released')),
    -- The engine's state name (ringing, connected, …) at the last progress write.
    call_state         TEXT,
    caller             TEXT,
    callee             TEXT,
    caller_party       TEXT,
    carrier            TEXT,
    callee_device      TEXT,
    started_ms         BIGINT,
    connected_ms       BIGINT,
    deadline_ms        BIGINT,
    -- Patent steps so far, comma-separated as in call_records.trace.
    trace              TEXT,
    finalize_after_ms  BIGINT,
    updated_at         TIMESTAMPTZ DEFAULT now()
);

-- The sweeper looks for open attempts of dead owners.
CREATE INDEX call_attempts_owner ON call_attempts(owner_node, owner_incarnation) WHERE state = 'open';
CREATE INDEX call_attempts_finalize ON call_attempts(finalize_after_ms) WHERE state <> 'open';
