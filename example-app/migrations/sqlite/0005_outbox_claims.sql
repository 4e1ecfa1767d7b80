-- A relay claims the rows it is about to publish, for a while: several
-- relays (several processes) never publish one row at the same time.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT NULL;
ALTER TABLE outbox ADD COLUMN claimed_until TEXT NULL;
