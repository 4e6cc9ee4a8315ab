-- The web console's sign-ins.
--
-- A console session is known by the SHA-256 (hex) of its cookie's value,
-- never the value itself, as API keys are: whoever reads the database
-- cannot sign in with what they read. `kind` says how it was opened: with
-- a workspace's API key, through a portal link, or with the admin token;
-- only an admin session may have no workspace. Deleting a workspace ends
-- its sessions and links.
CREATE TABLE console_sessions (
    id_hash       TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('key', 'portal', 'admin')),
    workspace_id  TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    read_only     BOOLEAN NOT NULL,
    csrf_token    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    CHECK (kind = 'admin' OR workspace_id IS NOT NULL)
);

-- Pruning expired sessions.
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- A one-time link into one workspace's console, known by the SHA-256 (hex)
-- of its token. `used_at` is set by the one redemption that succeeds.
CREATE TABLE portal_links (
    token_hash    TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    read_only     BOOLEAN NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    used_at       TIMESTAMPTZ
);

-- Pruning expired links.
CREATE INDEX portal_links_expires ON portal_links (expires_at);

-- No index is added for the console's read models (webhook health, outcomes
-- by hour, delivery counts): they find a workspace's deliveries through
-- deliveries_workspace_created and a webhook's through
-- deliveries_subscription_created. Webhook health also counts the
-- deliveries still waiting, of any age, and no index knows a delivery's
-- status, so it reads all of the workspace's deliveries (measured: 600 k of
-- them, 1.2 M in the table, 130 ms warm, 1.1 s cold). A partial index on
-- (workspace_id, subscription_id) WHERE status IN ('pending', 'retrying')
-- would read only the waiting ones, but each status change would then
-- update every index of deliveries (no HOT updates: 0 of 250 k, against
-- 55 % without it), and a pgbench of the deliveries' insert-then-update
-- cycle ran about a quarter fewer transactions with it (1,340 against
-- 1,010 a second, synchronous_commit off, mean of 4 runs). A page of the
-- console does not buy that on the hot path.
