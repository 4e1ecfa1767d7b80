-- External events, written in the transaction of the change that raised
-- them, published by a relay, then marked sent (at-least-once). A relay
-- locks the rows it publishes (FOR UPDATE SKIP LOCKED): several relays
-- never publish one row at the same time, and a relay that dies releases
-- its rows with its connection.
CREATE TABLE outbox (
    position       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id             TEXT PRIMARY KEY,
    stream         TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at        TIMESTAMPTZ NULL
);
CREATE INDEX outbox_unsent ON outbox (position) WHERE sent_at IS NULL;
