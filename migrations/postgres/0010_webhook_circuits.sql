-- The circuit breaker of each webhook, shared by every worker replica.
--
-- A row exists while the webhook's circuit is open: written when a replica
-- sees the webhook's endpoint fail five attempts in a row, moved on by each
-- failed probe, deleted by the first healthy answer. A healthy webhook has
-- no row and its attempts never touch this table. Every replica reads the
-- (small) set of rows about twice a second and holds the deliveries of the
-- webhooks listed. After `open_until`, one replica in all takes the
-- half-open probe: the conditional UPDATE that sets `probe_until` (a lease
-- as long as an attempt may take) succeeds for one of them only.
CREATE TABLE webhook_circuits (
    subscription_id  UUID PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
    workspace_id     TEXT NOT NULL,
    -- Failed attempts in a row the ledger knows of: those that opened it,
    -- then one per failed probe.
    failures         INT NOT NULL CHECK (failures > 0),
    opened_at        TIMESTAMPTZ NOT NULL,
    -- No attempt before this; then one probe.
    open_until       TIMESTAMPTZ NOT NULL,
    -- The current cool-down, doubled by each failed probe (1 s up to 60 s).
    cooldown_ms      INT NOT NULL CHECK (cooldown_ms > 0),
    -- While set and in the future, a replica is probing.
    probe_until      TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Why a delivery is dead though it did not make all its attempts:
-- `circuit_open` when it was held behind its webhook's open circuit until
-- its retry schedule ran out. NULL for a delivery whose attempts ran out
-- (and for every delivery that is not dead).
ALTER TABLE deliveries ADD COLUMN dead_reason TEXT
    CHECK (dead_reason IN ('circuit_open'));
