-- The inbound messages whose effects committed, by id: a redelivery is
-- recognised and acknowledged without running again.
CREATE TABLE inbox (
    message_id TEXT PRIMARY KEY,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
