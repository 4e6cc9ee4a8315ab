-- courier ledger, SQLite flavour. Keep in step with migrations/postgres.
--
-- Encodings the store relies on (SQLite has no native types for them):
-- * timestamps: TEXT, RFC 3339 UTC with exactly six fractional digits
--   ("2026-01-02T03:04:05.123456Z"), so text order is time order;
-- * UUIDs: lowercase hyphenated TEXT, so text order is UUID order;
-- * lists (event types, channels): a JSON array of strings.
-- STRICT makes SQLite refuse values of the wrong storage class.

CREATE TABLE workspaces (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

-- Keys are stored hashed; the prefix lets an operator recognise a key.
CREATE TABLE api_keys (
    id            TEXT NOT NULL PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
) STRICT;

CREATE INDEX api_keys_workspace ON api_keys (workspace_id);

CREATE TABLE subscriptions (
    id                          TEXT NOT NULL PRIMARY KEY,
    workspace_id                TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name                        TEXT NOT NULL,
    url                         TEXT NOT NULL,
    event_types                 TEXT NOT NULL CHECK (json_valid(event_types) AND json_type(event_types) = 'array'),
    channels                    TEXT NOT NULL CHECK (json_valid(channels) AND json_type(channels) = 'array'),
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  TEXT,
    status                      TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL
) STRICT;

-- Per-workspace listing, paginated by id.
CREATE INDEX subscriptions_workspace ON subscriptions (workspace_id, id);

-- No foreign key to workspaces: upstreams publish with their own workspace ids.
CREATE TABLE events (
    id            TEXT NOT NULL PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    type          TEXT NOT NULL,
    channel       TEXT,
    occurred_at   TEXT NOT NULL,
    data          TEXT NOT NULL,
    received_at   TEXT NOT NULL
) STRICT;

-- subscription_id has no foreign key on purpose: a delivery's history stays
-- readable after its subscription is deleted.
CREATE TABLE deliveries (
    id                    TEXT NOT NULL PRIMARY KEY,
    event_id              TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
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
    -- Makes fan-out idempotent: a redelivered event inserts nothing new.
    UNIQUE (event_id, subscription_id)
) STRICT;

-- Delivery log of a workspace, newest first, cursor paginated.
CREATE INDEX deliveries_workspace_created ON deliveries (workspace_id, created_at, id);
-- Per-webhook views (its events, replay of its dead deliveries).
CREATE INDEX deliveries_subscription_created ON deliveries (subscription_id, created_at);

CREATE TABLE attempts (
    delivery_id       TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL CHECK (attempt >= 1),
    url               TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL CHECK (duration_ms >= 0),
    response_status   INTEGER,
    error_kind        TEXT,
    error             TEXT,
    response_excerpt  TEXT,
    -- One row per attempt number: a duplicate message records nothing.
    PRIMARY KEY (delivery_id, attempt)
) STRICT;
