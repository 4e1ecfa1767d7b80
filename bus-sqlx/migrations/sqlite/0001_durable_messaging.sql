-- bus-sqlx's tables. Applied by `bus_sqlx::migrate` (or `Store::open`),
-- which keeps its own record in `bus_sqlx_migrations`: the application's
-- own migrations (sqlx's `_sqlx_migrations`) never see these.

-- The processes running a store: a process whose heartbeat is older than
-- the timeout it declared is dead, and its events are delivered by another.
CREATE TABLE IF NOT EXISTS bus_nodes (
    id           TEXT PRIMARY KEY NOT NULL,
    started_at   TEXT NOT NULL,
    -- Unix time, milliseconds.
    heartbeat_at INTEGER NOT NULL,
    timeout_ms   INTEGER NOT NULL
);

-- Events a unit of work committed whose handlers have not all handled
-- them yet: written in the commit's transaction, deleted once delivered.
CREATE TABLE IF NOT EXISTS bus_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    recorded_at    TEXT NOT NULL,
    -- The node delivering it.
    owner          TEXT NOT NULL,
    -- How many times a recovery took it up.
    recoveries     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS bus_events_by_owner ON bus_events (owner, position);

-- Which handlers of a pending event handled it: written in the handler's
-- own transaction when it commits a unit of work, else right after it.
CREATE TABLE IF NOT EXISTS bus_handled (
    event_id   TEXT NOT NULL,
    handler    TEXT NOT NULL,
    handled_at TEXT NOT NULL,
    PRIMARY KEY (event_id, handler)
);

-- External events, written in the transaction of the change that raised
-- them, published by a relay, then marked sent (at-least-once). A relay
-- claims the rows it publishes for a lease: several relays never publish
-- one row at the same time.
CREATE TABLE IF NOT EXISTS bus_outbox (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    stream         TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    created_at     TEXT NOT NULL,
    sent_at        TEXT NULL,
    claimed_by     TEXT NULL,
    -- Unix time, milliseconds.
    claimed_until  INTEGER NULL
);
CREATE INDEX IF NOT EXISTS bus_outbox_unsent ON bus_outbox (position) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS bus_outbox_sent ON bus_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- The inbound messages whose effects committed, by id: a redelivery is
-- recognised and acknowledged without running again.
CREATE TABLE IF NOT EXISTS bus_inbox (
    message_id TEXT PRIMARY KEY NOT NULL,
    handled_at TEXT NOT NULL
);

-- Event-handler calls that failed for good, kept to be looked into and
-- replayed (a replay claims its letter for a lease) or deleted.
CREATE TABLE IF NOT EXISTS bus_dead_letters (
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
    -- Unix time, milliseconds.
    claimed_until  INTEGER NULL,
    replayed_at    TEXT NULL,
    replay_error   TEXT NULL
);
CREATE INDEX IF NOT EXISTS bus_dead_letters_open ON bus_dead_letters (id) WHERE replayed_at IS NULL;
