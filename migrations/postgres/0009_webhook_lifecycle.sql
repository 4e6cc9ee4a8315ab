-- The endpoint lifecycle: why a webhook is disabled, deliveries kept
-- paused while it is, the failing episodes that disable it, and the
-- settings a webhook sets for itself.

-- Why and since when a webhook is disabled: `manual` (switched off),
-- `failing` (no success for `endpoints.disable_after`) or `gone` (its
-- endpoint answered 410). Set exactly when status is 'disabled'.
ALTER TABLE subscriptions
    ADD COLUMN disabled_reason TEXT CHECK (disabled_reason IN ('manual', 'failing', 'gone')),
    ADD COLUMN disabled_at TIMESTAMPTZ,
    -- A webhook's own settings; NULL takes courier's default.
    ADD COLUMN description TEXT,
    ADD COLUMN timeout_ms INT CHECK (timeout_ms > 0),
    ADD COLUMN max_attempts INT CHECK (max_attempts > 0),
    -- Extra request headers: a JSON array of [name, value] pairs.
    ADD COLUMN headers TEXT NOT NULL DEFAULT '[]',
    ADD COLUMN rate_limit_per_second INT CHECK (rate_limit_per_second > 0),
    ADD COLUMN rate_limit_burst INT CHECK (rate_limit_burst > 0);

UPDATE subscriptions SET disabled_reason = 'manual', disabled_at = updated_at
WHERE status = 'disabled';

-- A disabled webhook's deliveries are `paused`: not attempted, not lost,
-- replayed when it is enabled again.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'retrying', 'succeeded', 'dead', 'canceled', 'paused'));

-- Counting and replaying one webhook's paused deliveries reads only them.
CREATE INDEX deliveries_paused ON deliveries (subscription_id) WHERE status = 'paused';

-- One row per webhook whose endpoint has failed since its last success (a
-- failing episode), written when an episode starts, when it is reported
-- and when it ends, never on a healthy endpoint's attempts. Every replica
-- reads and moves it with conditional updates, so an episode is reported
-- once and a webhook disabled once, whichever replica sees it first.
CREATE TABLE webhook_health (
    subscription_id      UUID PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
    workspace_id         TEXT NOT NULL,
    -- The first failed attempt since the last success; NULL while healthy.
    failing_since        TIMESTAMPTZ,
    -- When `webhook.failing` was published for this episode.
    failing_reported_at  TIMESTAMPTZ,
    last_success_at      TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL
);
