-- External events, written in the transaction of the change that raised
-- them, published by the relay, then marked sent (at-least-once).
CREATE TABLE IF NOT EXISTS outbox (
    id             TEXT PRIMARY KEY NOT NULL,
    stream         TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    created_at     TEXT NOT NULL,
    sent_at        TEXT NULL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at, created_at);
