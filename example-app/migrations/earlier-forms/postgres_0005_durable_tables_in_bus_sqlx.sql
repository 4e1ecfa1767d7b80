-- The outbox, the inbox and the dead letters moved to bus-sqlx's tables
-- (bus_outbox, bus_inbox, bus_dead_letters), which its store creates at
-- start-up, before these migrations run: what the service's old tables
-- hold is carried over, then they go. (A database created after the move
-- has nothing in them.)
INSERT INTO bus_inbox (message_id, handled_at)
    SELECT message_id, handled_at FROM inbox
    ON CONFLICT DO NOTHING;
INSERT INTO bus_outbox
    (id, stream, name, payload, correlation_id, causation_id, created_at, sent_at)
    SELECT id, stream, name, payload, correlation_id, causation_id, created_at, sent_at
    FROM outbox ORDER BY position
    ON CONFLICT DO NOTHING;
INSERT INTO bus_dead_letters
    (message_name, handler, location, error, attempts, failed_at, message_id,
     correlation_id, causation_id, payload, replayed_at, replay_error)
    SELECT message_name, handler, location, error, attempts, failed_at, message_id,
           correlation_id, causation_id, payload, replayed_at, replay_error
    FROM dead_letters ORDER BY id;
DROP TABLE inbox;
DROP TABLE outbox;
DROP TABLE dead_letters;
