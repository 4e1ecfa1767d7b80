-- A scheduled message may be the retry of one event handler's call, which
-- an event handler's retry policy handed off: the handler's path, the
-- attempt the firing makes, and the event's own id.
ALTER TABLE bus_scheduled
    ADD COLUMN IF NOT EXISTS handler TEXT NULL,
    ADD COLUMN IF NOT EXISTS handler_attempt INTEGER NULL,
    ADD COLUMN IF NOT EXISTS event_id UUID NULL;
