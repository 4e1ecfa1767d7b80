-- Message ids, correlation and causation ids and node ids in uuid columns:
-- 16 bytes each instead of 36 characters of text, in the rows and in their
-- indexes. Every id arch-events makes is a UUID (version 7 since 0.1), so
-- every stored one converts. Stop the processes of an older build first:
-- they send ids as text, which a uuid column does not compare with.
ALTER TABLE bus_handled DROP CONSTRAINT IF EXISTS bus_handled_event_id_fkey;

ALTER TABLE bus_nodes
    ALTER COLUMN id TYPE uuid USING id::uuid;

ALTER TABLE bus_events
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN correlation_id TYPE uuid USING correlation_id::uuid,
    ALTER COLUMN causation_id TYPE uuid USING causation_id::uuid,
    ALTER COLUMN owner TYPE uuid USING owner::uuid;

ALTER TABLE bus_handled
    ALTER COLUMN event_id TYPE uuid USING event_id::uuid,
    ADD CONSTRAINT bus_handled_event_id_fkey
        FOREIGN KEY (event_id) REFERENCES bus_events (id) ON DELETE CASCADE;

ALTER TABLE bus_outbox
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN correlation_id TYPE uuid USING correlation_id::uuid,
    ALTER COLUMN causation_id TYPE uuid USING causation_id::uuid;

ALTER TABLE bus_inbox
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid;

ALTER TABLE bus_dead_letters
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid,
    ALTER COLUMN correlation_id TYPE uuid USING correlation_id::uuid,
    ALTER COLUMN causation_id TYPE uuid USING causation_id::uuid;
