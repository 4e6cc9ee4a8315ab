-- Retention: how long finished deliveries are kept, per workspace.
--
-- `retention.succeeded_days` and `retention.failed_days` set it for the
-- deployment; a row here overrides either for one workspace (NULL takes
-- the deployment's). Pruning removes an event with its deliveries and
-- their attempts once every delivery of it is finished (succeeded, dead
-- or canceled) and past its retention; see docs/operations.md.
CREATE TABLE workspace_retention (
    workspace_id    TEXT PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    succeeded_days  INT CHECK (succeeded_days > 0),
    failed_days     INT CHECK (failed_days > 0),
    updated_at      TIMESTAMPTZ NOT NULL
);
