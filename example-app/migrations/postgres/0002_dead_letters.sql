-- Event-handler calls that failed for good, kept to be looked into and replayed.
CREATE TABLE dead_letters (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_name   TEXT NOT NULL,
    handler        TEXT NOT NULL,
    location       TEXT NOT NULL,
    error          TEXT NOT NULL,
    attempts       BIGINT NOT NULL,
    failed_at      TIMESTAMPTZ NOT NULL,
    message_id     TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT NULL,
    payload        TEXT NULL,
    replaying      BOOLEAN NOT NULL DEFAULT FALSE,
    replayed_at    TIMESTAMPTZ NULL,
    replay_error   TEXT NULL
);
CREATE INDEX dead_letters_open ON dead_letters (id) WHERE replayed_at IS NULL;
