-- Retention: per-workspace overrides, the index pruning walks, and the
-- lease that lets one process prune at a time; see
-- migrations/postgres/0011_retention.sql and 0012 for the first two.
--
-- A file created from here on uses incremental auto-vacuum (the store
-- sets it before the first table is created), so the pages pruning frees
-- are given back to the file system. A file created earlier keeps
-- auto_vacuum = NONE: switching needs one VACUUM, which rewrites the whole
-- file, so no migration does it behind the operator's back. Pruned pages
-- are reused all the same, so such a file stops growing; `courier prune
-- --vacuum` switches it when convenient (docs/operations.md).
CREATE TABLE workspace_retention (
    workspace_id    TEXT NOT NULL PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    succeeded_days  INTEGER CHECK (succeeded_days > 0),
    failed_days     INTEGER CHECK (failed_days > 0),
    updated_at      TEXT NOT NULL
) STRICT;

CREATE INDEX events_workspace_received ON events (workspace_id, received_at, id);

-- Named leases: a row is held by `holder` until `expires_at`; taking it
-- is a conditional upsert, so of several processes on one file one gets
-- it. PostgreSQL uses an advisory lock instead.
CREATE TABLE ledger_leases (
    name        TEXT NOT NULL PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;
