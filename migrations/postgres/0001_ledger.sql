-- courier ledger, PostgreSQL flavour. Keep in step with migrations/sqlite.

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Keys are stored hashed; the prefix lets an operator recognise a key.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ
);

CREATE INDEX api_keys_workspace ON api_keys (workspace_id);

CREATE TABLE subscriptions (
    id                          UUID PRIMARY KEY,
    workspace_id                TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name                        TEXT NOT NULL,
    url                         TEXT NOT NULL,
    event_types                 TEXT[] NOT NULL,
    channels                    TEXT[] NOT NULL,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  TIMESTAMPTZ,
    status                      TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at                  TIMESTAMPTZ NOT NULL,
    updated_at                  TIMESTAMPTZ NOT NULL
);

-- Per-workspace listing, paginated by id.
CREATE INDEX subscriptions_workspace ON subscriptions (workspace_id, id);

-- No foreign key to workspaces: upstreams publish with their own workspace ids.
CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    type          TEXT NOT NULL,
    channel       TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    data          JSONB NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL
);

-- subscription_id has no foreign key on purpose: a delivery's history stays
-- readable after its subscription is deleted.
CREATE TABLE deliveries (
    id                    UUID PRIMARY KEY,
    event_id              TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    subscription_id       UUID NOT NULL,
    workspace_id          TEXT NOT NULL,
    event_type            TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('pending', 'retrying', 'succeeded', 'dead', 'canceled')),
    attempts              INT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_response_status  INT,
    last_attempt_at       TIMESTAMPTZ,
    next_attempt_at       TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    -- Makes fan-out idempotent: a redelivered event inserts nothing new.
    UNIQUE (event_id, subscription_id)
);

-- Delivery log of a workspace, newest first, cursor paginated.
CREATE INDEX deliveries_workspace_created ON deliveries (workspace_id, created_at, id);
-- Per-webhook views (its events, replay of its dead deliveries).
CREATE INDEX deliveries_subscription_created ON deliveries (subscription_id, created_at);

CREATE TABLE attempts (
    delivery_id       UUID NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt           INT NOT NULL CHECK (attempt >= 1),
    url               TEXT NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    duration_ms       INT NOT NULL CHECK (duration_ms >= 0),
    response_status   INT,
    error_kind        TEXT,
    error             TEXT,
    response_excerpt  TEXT,
    -- One row per attempt number: a duplicate message records nothing.
    PRIMARY KEY (delivery_id, attempt)
);
