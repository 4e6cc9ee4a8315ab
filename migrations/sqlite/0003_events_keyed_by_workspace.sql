-- no-transaction
--
-- Events are keyed by (workspace, id): see
-- migrations/postgres/0005_events_keyed_by_workspace.sql for why.
--
-- SQLite cannot change a table's key in place, so events is rebuilt, and
-- deliveries with it (its foreign key now names both columns). SQLite's
-- own recipe for such changes: foreign keys off (which only works outside
-- a transaction, hence `no-transaction` above), one transaction that
-- copies each table into a new one, drops the old and renames the new,
-- then foreign keys back on. With the keys off, dropping the old tables
-- cascades to nothing.
PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE events_keyed (
    id            TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    type          TEXT NOT NULL,
    channel       TEXT,
    occurred_at   TEXT NOT NULL,
    data          TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    -- The id first, as on PostgreSQL (see there).
    PRIMARY KEY (id, workspace_id)
) STRICT;

INSERT INTO events_keyed (id, workspace_id, type, channel, occurred_at, data, received_at)
SELECT id, workspace_id, type, channel, occurred_at, data, received_at FROM events;

DROP TABLE events;
ALTER TABLE events_keyed RENAME TO events;

CREATE TABLE deliveries_keyed (
    id                    TEXT NOT NULL PRIMARY KEY,
    event_id              TEXT NOT NULL,
    subscription_id       TEXT NOT NULL,
    workspace_id          TEXT NOT NULL,
    event_type            TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('pending', 'retrying', 'succeeded', 'dead', 'canceled')),
    attempts              INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_response_status  INTEGER,
    last_attempt_at       TEXT,
    next_attempt_at       TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    held_until            TEXT,
    UNIQUE (event_id, subscription_id),
    FOREIGN KEY (workspace_id, event_id) REFERENCES events (workspace_id, id) ON DELETE CASCADE
) STRICT;

INSERT INTO deliveries_keyed (id, event_id, subscription_id, workspace_id, event_type, status,
    attempts, last_response_status, last_attempt_at, next_attempt_at, created_at, updated_at,
    held_until)
SELECT id, event_id, subscription_id, workspace_id, event_type, status,
    attempts, last_response_status, last_attempt_at, next_attempt_at, created_at, updated_at,
    held_until
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_keyed RENAME TO deliveries;

CREATE INDEX deliveries_workspace_created ON deliveries (workspace_id, created_at, id);
CREATE INDEX deliveries_subscription_created ON deliveries (subscription_id, created_at);
CREATE INDEX deliveries_held ON deliveries (subscription_id, held_until)
    WHERE held_until IS NOT NULL;

COMMIT;

PRAGMA foreign_keys = ON;
