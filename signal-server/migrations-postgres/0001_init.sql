-- Trunkline signal server directory on PostgreSQL, schema version 1.
-- Applied by `PgDirectory::open` (sqlx migrations, embedded in the binary; sqlx holds an
-- advisory lock meanwhile, so replicas starting together apply it once).
-- The same data as the SQLite schema (signal-server/migrations/0001–0003 taken together).
-- Times are Unix milliseconds (BIGINT). Key columns use the "C" collation so listings sort
-- byte-wise, as SQLite does, whatever the database's locale.

CREATE TABLE switches (
    id            TEXT COLLATE "C" PRIMARY KEY,
    -- argon2id PHC string of the switch's shared secret (never the secret itself).
    secret_hash   TEXT    NOT NULL,
    -- JSON array of the direct endpoint URLs the switch advertised when it last connected.
    direct_urls   TEXT    NOT NULL DEFAULT '[]',
    online        BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_ms  BIGINT
);

CREATE TABLE accounts (
    number        TEXT COLLATE "C" PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('browser', 'deskphone')),
    -- NO ACTION (checked at the end of each statement): a switch that still has accounts
    -- cannot be removed; the directory reports which accounts block it.
    home_switch   TEXT COLLATE "C" REFERENCES switches(id) ON DELETE NO ACTION ON UPDATE NO ACTION,
    password_hash TEXT    NOT NULL,
    ha1_md5       TEXT,
    ha1_sha256    TEXT,
    created_ms    BIGINT  NOT NULL
);

CREATE INDEX accounts_home_switch ON accounts(home_switch);

-- `resume` rotates a session's token in place (same id, new token_sha256), so the id names
-- the sign-in, not one token.
CREATE TABLE sessions (
    -- Public handle of the session (admin listing / revocation). Never reused.
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 (hex) of the current session token; the token itself is never stored.
    token_sha256  TEXT    NOT NULL UNIQUE,
    number        TEXT COLLATE "C" NOT NULL REFERENCES accounts(number) ON DELETE CASCADE,
    -- When the browser signed in with its password (kept across resumes).
    created_ms    BIGINT  NOT NULL,
    expires_ms    BIGINT  NOT NULL,
    -- The last login or resume with this session.
    last_used_ms  BIGINT  NOT NULL
);

CREATE INDEX sessions_number ON sessions(number);
CREATE INDEX sessions_expires ON sessions(expires_ms);

CREATE TABLE push_subscriptions (
    endpoint      TEXT COLLATE "C" PRIMARY KEY,
    number        TEXT COLLATE "C" NOT NULL REFERENCES accounts(number) ON DELETE CASCADE,
    p256dh        TEXT    NOT NULL,
    auth          TEXT    NOT NULL
);

CREATE INDEX push_subscriptions_number ON push_subscriptions(number);

-- One row per call attempt. No foreign keys: the history outlives removed accounts/switches.
CREATE TABLE call_records (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique (SQLite: a plain index plus NOT EXISTS, enough with one writer): replicas writing
    -- the same call's end at once keep exactly one row (first writer wins, ON CONFLICT DO NOTHING).
    call_id       TEXT    NOT NULL UNIQUE,
    caller        TEXT    NOT NULL,
    callee        TEXT    NOT NULL,
    switch_id     TEXT,
    started_ms    BIGINT  NOT NULL,
    ended_ms      BIGINT  NOT NULL,
    outcome       TEXT    NOT NULL,
    duration_ms   BIGINT,
    -- Patent steps in order, comma-separated, e.g. 'A,C1,C11,C12,C13'.
    trace         TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX call_records_started ON call_records(started_ms);
CREATE INDEX call_records_caller ON call_records(caller, started_ms);
CREATE INDEX call_records_callee ON call_records(callee, started_ms);

-- Sign-in throttling (see signal-server/src/ratelimit.rs). One row per key:
--   'acct:<number>'            every failure for the account, from anywhere
--   'src:<number>|<address>'   failures for the account from one address
--   'addr:<address>'           failures from one address, for any account
CREATE TABLE auth_throttle (
    key              TEXT COLLATE "C" PRIMARY KEY,
    failures         BIGINT  NOT NULL,
    last_failure_ms  BIGINT  NOT NULL,
    -- For 'src:' keys: the last successful sign-in from that address (a trusted source).
    last_success_ms  BIGINT
);

-- A counter bumped whenever accounts or switches are added, removed or (for accounts)
-- changed, by any process sharing this database, so every replica (and the admin CLI) can
-- notice changes. Switch presence updates (online, last_seen_ms, direct_urls) deliberately do
-- not bump it. Each bump also sends NOTIFY trunkline_directory (delivered at commit, once per
-- transaction) so a replica can reload at once instead of at its next poll.
CREATE TABLE directory_meta (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       BIGINT  NOT NULL
);

INSERT INTO directory_meta (id, version) VALUES (1, 0);

-- Statement triggers see the statement's rows as a transition table named `changed`; a
-- statement that touched no row (an unknown number removed) bumps nothing, as in SQLite.
CREATE FUNCTION bump_directory_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        UPDATE directory_meta SET version = version + 1 WHERE id = 1;
        PERFORM pg_notify('trunkline_directory', '');
    END IF;
    RETURN NULL;
END
$$;

-- Switches: a new secret (re-provisioning) or id is a directory change; presence is not.
-- (Transition tables cannot go with `UPDATE OF column`, so the rows are compared.)
CREATE FUNCTION bump_directory_version_on_switch_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT id, secret_hash FROM new_rows EXCEPT SELECT id, secret_hash FROM old_rows) THEN
        UPDATE directory_meta SET version = version + 1 WHERE id = 1;
        PERFORM pg_notify('trunkline_directory', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_insert_bump AFTER INSERT ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER accounts_update_bump AFTER UPDATE ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER accounts_delete_bump AFTER DELETE ON accounts
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER switches_insert_bump AFTER INSERT ON switches
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER switches_delete_bump AFTER DELETE ON switches
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER switches_secret_bump AFTER UPDATE ON switches
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version_on_switch_update();
