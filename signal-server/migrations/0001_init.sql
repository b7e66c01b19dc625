-- Trunkline signal server directory, schema version 1.
-- Applied by `SqliteDirectory::open` (sqlx migrations, embedded in the binary).
-- Times are Unix milliseconds (INTEGER).

CREATE TABLE switches (
    id            TEXT    PRIMARY KEY NOT NULL,
    -- argon2id PHC string of the switch's shared secret (never the secret itself).
    secret_hash   TEXT    NOT NULL,
    -- JSON array of the direct endpoint URLs the switch advertised when it last connected.
    direct_urls   TEXT    NOT NULL DEFAULT '[]',
    online        INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    last_seen_ms  INTEGER
) STRICT;

CREATE TABLE accounts (
    number        TEXT    PRIMARY KEY NOT NULL,
    display_name  TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('browser', 'deskphone')),
    -- NO ACTION (checked at the end of each statement): a switch that still has accounts
    -- cannot be removed; the directory reports which accounts block it. (Not RESTRICT: SQLite
    -- reports a RESTRICT failure as a trigger error rather than a foreign-key violation.)
    home_switch   TEXT    REFERENCES switches(id) ON DELETE NO ACTION ON UPDATE NO ACTION,
    password_hash TEXT    NOT NULL,
    ha1_md5       TEXT,
    ha1_sha256    TEXT,
    created_ms    INTEGER NOT NULL
) STRICT;

CREATE INDEX accounts_home_switch ON accounts(home_switch);

CREATE TABLE sessions (
    -- SHA-256 (hex) of the session token; the token itself is never stored.
    token_sha256  TEXT    PRIMARY KEY NOT NULL,
    number        TEXT    NOT NULL REFERENCES accounts(number) ON DELETE CASCADE,
    expires_ms    INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_number ON sessions(number);
CREATE INDEX sessions_expires ON sessions(expires_ms);

CREATE TABLE push_subscriptions (
    endpoint      TEXT    PRIMARY KEY NOT NULL,
    number        TEXT    NOT NULL REFERENCES accounts(number) ON DELETE CASCADE,
    p256dh        TEXT    NOT NULL,
    auth          TEXT    NOT NULL
) STRICT;

CREATE INDEX push_subscriptions_number ON push_subscriptions(number);

-- One row per call attempt. No foreign keys: the history outlives removed accounts/switches.
CREATE TABLE call_records (
    id            INTEGER PRIMARY KEY,
    call_id       TEXT    NOT NULL,
    caller        TEXT    NOT NULL,
    callee        TEXT    NOT NULL,
    switch_id     TEXT,
    started_ms    INTEGER NOT NULL,
    ended_ms      INTEGER NOT NULL,
    outcome       TEXT    NOT NULL,
    duration_ms   INTEGER,
    -- Patent steps in order, comma-separated, e.g. 'A,C1,C11,C12,C13'.
    trace         TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX call_records_started ON call_records(started_ms);
CREATE INDEX call_records_caller ON call_records(caller, started_ms);
CREATE INDEX call_records_callee ON call_records(callee, started_ms);

-- A counter bumped whenever accounts or switches are added, removed or (for accounts)
-- changed, by any process sharing this database file, so a running server can notice
-- changes the admin CLI made. Switch presence updates (online, last_seen_ms, direct_urls)
-- deliberately do not bump it.
CREATE TABLE directory_meta (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       INTEGER NOT NULL
) STRICT;

INSERT INTO directory_meta (id, version) VALUES (1, 0);

CREATE TRIGGER accounts_insert_bump AFTER INSERT ON accounts
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER accounts_update_bump AFTER UPDATE ON accounts
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER accounts_delete_bump AFTER DELETE ON accounts
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER switches_insert_bump AFTER INSERT ON switches
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER switches_delete_bump AFTER DELETE ON switches
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;

-- A new secret (re-provisioning) is a directory change too; presence updates are not.
CREATE TRIGGER switches_secret_bump AFTER UPDATE OF id, secret_hash ON switches
BEGIN
    UPDATE directory_meta SET version = version + 1 WHERE id = 1;
END;
