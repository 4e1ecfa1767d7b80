-- The event store: streams of events, each with its own version, in one
-- global order. SQLite has one writer at a time, so positions are taken
-- in commit order: a reader that goes on after the last position it saw
-- never misses an event.

-- Each stream's version: the optimistic-concurrency check of an append
-- reads and moves it.
CREATE TABLE IF NOT EXISTS bus_streams (
    kind    TEXT NOT NULL,
    id      TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE IF NOT EXISTS bus_stream_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    stream_kind    TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    name           TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    recorded_at    TEXT NOT NULL,
    UNIQUE (stream_kind, stream_id, version)
);
CREATE INDEX IF NOT EXISTS bus_stream_events_by_name ON bus_stream_events (name, position);

-- Each catch-up projection's checkpoint: the position of the last event it
-- applied, written in the same transaction as its read model's writes.
CREATE TABLE IF NOT EXISTS bus_projections (
    name       TEXT PRIMARY KEY NOT NULL,
    commit_key INTEGER NOT NULL DEFAULT 0,
    position   INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);

-- Each stream's latest snapshot: an aggregate's state at a version, in the
-- shape its state schema version names.
CREATE TABLE IF NOT EXISTS bus_snapshots (
    kind          TEXT NOT NULL,
    id            TEXT NOT NULL,
    version       INTEGER NOT NULL,
    state_version INTEGER NOT NULL,
    state         TEXT NOT NULL,
    taken_at      TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Each subject's key for the personal fields of its events: deleting the
-- row forgets the subject (its fields read as erased).
CREATE TABLE IF NOT EXISTS bus_subject_keys (
    subject    TEXT PRIMARY KEY NOT NULL,
    key        BLOB NOT NULL,
    created_at TEXT NOT NULL
);
