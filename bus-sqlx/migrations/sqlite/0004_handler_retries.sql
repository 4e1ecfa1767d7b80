-- A scheduled message may be the retry of one event handler's call, which
-- an event handler's retry policy handed off: the handler's path, the
-- attempt the firing makes, and the event's own id.
ALTER TABLE bus_scheduled ADD COLUMN handler TEXT NULL;
ALTER TABLE bus_scheduled ADD COLUMN handler_attempt INTEGER NULL;
ALTER TABLE bus_scheduled ADD COLUMN event_id TEXT NULL;
