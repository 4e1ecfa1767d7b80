-- Event-handler calls that failed for good, kept to be looked into and replayed.
CREATE TABLE IF NOT EXISTS dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_name   TEXT NOT NULL,
    handler        TEXT NOT NULL,
    location       TEXT NOT NULL,
    error          TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    failed_at      TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    payload        TEXT NULL,
    replaying      INTEGER NOT NULL DEFAULT 0,
    replayed_at    TEXT NULL,
    replay_error   TEXT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (replayed_at, id);
