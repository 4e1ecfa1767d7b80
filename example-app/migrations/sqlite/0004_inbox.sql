-- The inbound messages whose effects committed, by id: a redelivery is
-- recognised and acknowledged without running again.
CREATE TABLE IF NOT EXISTS inbox (
    message_id TEXT PRIMARY KEY NOT NULL,
    handled_at TEXT NOT NULL
);
