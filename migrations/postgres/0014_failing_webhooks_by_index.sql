-- no-transaction
--
-- Every replica reads the webhooks in a failing episode every second.
-- That was a full scan of webhook_health, which keeps a row for every
-- webhook that ever failed. This partial index holds the failing ones
-- only. Built CONCURRENTLY, alone in its file, as 0013 is: should it fail
-- half-way, `DROP INDEX webhook_health_failing;` and run `courier
-- migrate` again.
CREATE INDEX CONCURRENTLY webhook_health_failing
    ON webhook_health (subscription_id) WHERE failing_since IS NOT NULL;
