-- Sagas' state, with a version for optimistic concurrency, and the ids of
-- the timeouts each waits for (a JSON array). A completed saga keeps its
-- row with no state: a message that arrives later is recognised as late.
CREATE TABLE IF NOT EXISTS bus_sagas (
    saga       TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT NULL,
    timeouts   TEXT NOT NULL DEFAULT '[]',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (saga, id)
);

-- Scheduled messages: due times in milliseconds since the Unix epoch, on
-- the scheduler's clock. A firing process holds a row by a lease.
CREATE TABLE IF NOT EXISTS bus_scheduled (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    due_at         INTEGER NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    saga           TEXT NULL,
    saga_id        TEXT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT NULL,
    parked         INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT NULL,
    lease_until    INTEGER NULL
);
CREATE INDEX IF NOT EXISTS bus_scheduled_due ON bus_scheduled (parked, due_at)
    WHERE lease_until IS NULL;
CREATE INDEX IF NOT EXISTS bus_scheduled_leased ON bus_scheduled (lease_until)
    WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS bus_scheduled_by_saga ON bus_scheduled (saga, saga_id);
