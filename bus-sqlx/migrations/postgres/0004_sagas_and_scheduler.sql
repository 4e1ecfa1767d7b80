-- Sagas' state, with a version for optimistic concurrency, and the ids of
-- the timeouts each waits for (a JSON array). A completed saga keeps its
-- row with no state: a message that arrives later is recognised as late.
CREATE TABLE IF NOT EXISTS bus_sagas (
    saga       TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    BIGINT NOT NULL,
    state      TEXT NULL,
    timeouts   TEXT NOT NULL DEFAULT '[]',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, id)
);

-- Scheduled messages: due times in milliseconds since the Unix epoch, on
-- the scheduler's clock. A firing process holds a row by a lease; rows are
-- claimed with FOR UPDATE SKIP LOCKED.
CREATE TABLE IF NOT EXISTS bus_scheduled (
    seq            BIGSERIAL PRIMARY KEY,
    id             UUID NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    due_at         BIGINT NOT NULL,
    correlation_id UUID NOT NULL,
    causation_id   UUID NULL,
    saga           TEXT NULL,
    saga_id        TEXT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT NULL,
    parked         BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner    UUID NULL,
    lease_until    BIGINT NULL
);
CREATE INDEX IF NOT EXISTS bus_scheduled_due ON bus_scheduled (due_at)
    WHERE NOT parked AND lease_until IS NULL;
CREATE INDEX IF NOT EXISTS bus_scheduled_leased ON bus_scheduled (lease_until)
    WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS bus_scheduled_by_saga ON bus_scheduled (saga, saga_id);
