-- Schema version 3: cluster presence (who is connected to which replica). One row per party
-- (`d:<number>` or `s:<switch id>`), kept as a tombstone (online = false) when it leaves, so
-- every change has a newer `rev` that replicas can poll for (`rev > last seen`) besides the
-- NATS broadcast that usually tells them first. Unused by a single server.
CREATE SEQUENCE presence_rev;
CREATE TABLE presence (
    party        TEXT    PRIMARY KEY,
    node_id      TEXT    NOT NULL,
    incarnation  TEXT    NOT NULL,
    online       BOOLEAN NOT NULL,
    -- A switch's `switch_auth.calls` (JSON array), for the owners of its calls to reconcile.
    calls        TEXT,
    rev          BIGINT  NOT NULL
);
CREATE INDEX presence_by_rev ON presence(rev);
