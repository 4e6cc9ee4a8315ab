-- no-transaction
--
-- The endpoint lifecycle: see migrations/postgres/0009_webhook_lifecycle.sql.
--
-- A delivery may now be `paused`, and SQLite cannot change a CHECK in
-- place: deliveries is rebuilt the way 0003 rebuilt it (foreign keys off
-- outside a transaction, copy, drop, rename, keys back on).
PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT
    CHECK (disabled_reason IN ('manual', 'failing', 'gone'));
ALTER TABLE subscriptions ADD COLUMN disabled_at TEXT;
ALTER TABLE subscriptions ADD COLUMN description TEXT;
ALTER TABLE subscriptions ADD COLUMN timeout_ms INTEGER CHECK (timeout_ms > 0);
ALTER TABLE subscriptions ADD COLUMN max_attempts INTEGER CHECK (max_attempts > 0);
ALTER TABLE subscriptions ADD COLUMN headers TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(headers) AND json_type(headers) = 'array');
ALTER TABLE subscriptions ADD COLUMN rate_limit_per_second INTEGER
    CHECK (rate_limit_per_second > 0);
ALTER TABLE subscriptions ADD COLUMN rate_limit_burst INTEGER CHECK (rate_limit_burst > 0);

UPDATE subscriptions SET disabled_reason = 'manual', disabled_at = updated_at
WHERE status = 'disabled';

CREATE TABLE deliveries_paused (
    id                    TEXT NOT NULL PRIMARY KEY,
    event_id              TEXT NOT NULL,
    subscription_id       TEXT NOT NULL,
    workspace_id          TEXT NOT NULL,
    event_type            TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('pending', 'retrying', 'succeeded', 'dead', 'canceled', 'paused')),
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

INSERT INTO deliveries_paused (id, event_id, subscription_id, workspace_id, event_type, status,
    attempts, last_response_status, last_attempt_at, next_attempt_at, created_at, updated_at,
    held_until)
SELECT id, event_id, subscription_id, workspace_id, event_type, status,
    attempts, last_response_status, last_attempt_at, next_attempt_at, created_at, updated_at,
    held_until
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_paused RENAME TO deliveries;

CREATE INDEX deliveries_workspace_created ON deliveries (workspace_id, created_at, id);
CREATE INDEX deliveries_subscription_created ON deliveries (subscription_id, created_at);
CREATE INDEX deliveries_held ON deliveries (subscription_id, held_until)
    WHERE held_until IS NOT NULL;
CREATE INDEX deliveries_paused ON deliveries (subscription_id) WHERE status = 'paused';

CREATE TABLE webhook_health (
    subscription_id      TEXT NOT NULL PRIMARY KEY
        REFERENCES subscriptions (id) ON DELETE CASCADE,
    workspace_id         TEXT NOT NULL,
    failing_since        TEXT,
    failing_reported_at  TEXT,
    last_success_at      TEXT,
    updated_at           TEXT NOT NULL
) STRICT;

COMMIT;

PRAGMA foreign_keys = ON;
