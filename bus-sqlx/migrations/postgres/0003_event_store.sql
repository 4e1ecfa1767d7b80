-- The event store: streams of events, each with its own version, in one
-- global order that never skips.
--
-- On PostgreSQL, concurrent transactions take positions from the identity
-- in one order and commit in another: a reader that goes on after the
-- last position it saw would miss an event committed late with a smaller
-- position. So each event also records its transaction's id (`xid`, a
-- 64-bit xid8 that never wraps), readers order by (xid, position), and a
-- reader reads only events of transactions older than the oldest one
-- still running (`pg_snapshot_xmin(pg_current_snapshot())`): everything
-- below that line has committed or never will, so nothing can appear
-- before a position a reader has seen.

-- Each stream's version, and the transaction that last appended to it: an
-- append from a transaction older than that one is refused (retried in a
-- new transaction), so that a stream's versions follow the global order.
CREATE TABLE IF NOT EXISTS bus_streams (
    kind     TEXT NOT NULL,
    id       TEXT NOT NULL,
    version  BIGINT NOT NULL,
    last_xid xid8 NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE IF NOT EXISTS bus_stream_events (
    position       BIGINT GENERATED ALWAYS AS IDENTITY,
    xid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid NOT NULL UNIQUE,
    stream_kind    TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    version        BIGINT NOT NULL,
    name           TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        jsonb NOT NULL,
    metadata       jsonb NULL,
    correlation_id uuid NOT NULL,
    causation_id   uuid NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, position),
    UNIQUE (stream_kind, stream_id, version)
);
CREATE INDEX IF NOT EXISTS bus_stream_events_by_name ON bus_stream_events (name, xid, position);

-- Each catch-up projection's checkpoint: the position of the last event it
-- applied, written in the same transaction as its read model's writes. A
-- batch holds its row's lock to its commit: one process at a time applies
-- a projection's events, the others skip it (SKIP LOCKED).
CREATE TABLE IF NOT EXISTS bus_projections (
    name       TEXT PRIMARY KEY,
    commit_key BIGINT NOT NULL DEFAULT 0,
    position   BIGINT NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each stream's latest snapshot: an aggregate's state at a version, in the
-- shape its state schema version names.
CREATE TABLE IF NOT EXISTS bus_snapshots (
    kind          TEXT NOT NULL,
    id            TEXT NOT NULL,
    version       BIGINT NOT NULL,
    state_version INTEGER NOT NULL,
    state         jsonb NOT NULL,
    taken_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);

-- Each subject's key for the personal fields of its events: deleting the
-- row forgets the subject (its fields read as erased).
CREATE TABLE IF NOT EXISTS bus_subject_keys (
    subject    TEXT PRIMARY KEY,
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
