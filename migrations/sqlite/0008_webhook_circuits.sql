-- The circuit breaker of each webhook, shared by every worker replica, and
-- why a delivery died early: see migrations/postgres/0010_webhook_circuits.sql.
CREATE TABLE webhook_circuits (
    subscription_id  TEXT NOT NULL PRIMARY KEY
        REFERENCES subscriptions (id) ON DELETE CASCADE,
    workspace_id     TEXT NOT NULL,
    failures         INTEGER NOT NULL CHECK (failures > 0),
    opened_at        TEXT NOT NULL,
    open_until       TEXT NOT NULL,
    cooldown_ms      INTEGER NOT NULL CHECK (cooldown_ms > 0),
    probe_until      TEXT,
    updated_at       TEXT NOT NULL
) STRICT;

ALTER TABLE deliveries ADD COLUMN dead_reason TEXT
    CHECK (dead_reason IN ('circuit_open'));
