-- Schema version 2: sessions get an id (for listing and revoking without the token) and
-- created / last-used times; sign-in failure counters are kept across restarts.

-- `resume` rotates a session's token in place (same id, new token_sha256), so the id names
-- the sign-in, not one token.
CREATE TABLE sessions_v2 (
    -- Public handle of the session (admin listing / revocation). Never reused.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- SHA-256 (hex) of the current session token; the token itself is never stored.
    token_sha256  TEXT    NOT NULL UNIQUE,
    number        TEXT    NOT NULL REFERENCES accounts(number) ON DELETE CASCADE,
    -- When the browser signed in with its password (kept across resumes).
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    -- The last login or resume with this session.
    last_used_ms  INTEGER NOT NULL
) STRICT;

-- Sessions of schema 1 had no times: count them as made and used now.
INSERT INTO sessions_v2 (token_sha256, number, created_ms, expires_ms, last_used_ms)
    SELECT token_sha256, number, CAST(strftime('%s', 'now') AS INTEGER) * 1000,
           expires_ms, CAST(strftime('%s', 'now') AS INTEGER) * 1000
    FROM sessions;

DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_number ON sessions(number);
CREATE INDEX sessions_expires ON sessions(expires_ms);

-- Sign-in throttling (see signal-server/src/ratelimit.rs). One row per key:
--   'acct:<number>'            every failure for the account, from anywhere
--   'src:<number>|<address>'   failures for the account from one address
--   'addr:<address>'           failures from one address, for any account
-- Failures are counted before the password is checked (and taken back on success), so
-- concurrent guesses cannot all slip through one check.
CREATE TABLE auth_throttle (
    key              TEXT    PRIMARY KEY NOT NULL,
    failures         INTEGER NOT NULL,
    last_failure_ms  INTEGER NOT NULL,
    -- For 'src:' keys: the last successful sign-in from that address (a trusted source).
    last_success_ms  INTEGER
) STRICT;
