-- no-transaction
--
-- Every replica counts the disabled webhooks by reason for its metrics
-- every 15 s. That was a full scan of the subscriptions: a million rows
-- with a million webhooks. This partial index holds the disabled ones
-- only, so the count costs what is disabled; an enabled webhook has no
-- entry and its changes never touch it.
--
-- Built CONCURRENTLY, so a large ledger keeps working while it is built.
-- That cannot run in a transaction, hence `no-transaction` above, and it
-- is this file's only statement (PostgreSQL runs the statements of one
-- multi-statement query in one transaction). Should it fail half-way it
-- leaves an invalid index of this name behind: `DROP INDEX
-- subscriptions_disabled;` and run `courier migrate` again.
CREATE INDEX CONCURRENTLY subscriptions_disabled
    ON subscriptions (disabled_reason) WHERE status = 'disabled';
