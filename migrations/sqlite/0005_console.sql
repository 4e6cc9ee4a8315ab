-- The web console's sessions and portal links; see
-- migrations/postgres/0007_console.sql for what they hold. Timestamps are
-- RFC 3339 text of fixed width (they compare as text), booleans 0 or 1.
CREATE TABLE console_sessions (
    id_hash       TEXT NOT NULL PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('key', 'portal', 'admin')),
    workspace_id  TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    read_only     INTEGER NOT NULL CHECK (read_only IN (0, 1)),
    csrf_token    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    CHECK (kind = 'admin' OR workspace_id IS NOT NULL)
) STRICT;

CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

CREATE TABLE portal_links (
    token_hash    TEXT NOT NULL PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    read_only     INTEGER NOT NULL CHECK (read_only IN (0, 1)),
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    used_at       TEXT
) STRICT;

CREATE INDEX portal_links_expires ON portal_links (expires_at);
