-- The disabled webhooks by reason (counted every 15 s) and the webhooks in
-- a failing episode (read every second) without a full scan of the
-- subscriptions or of webhook_health; see migrations/postgres/0013 and
-- 0014.
CREATE INDEX subscriptions_disabled ON subscriptions (disabled_reason)
    WHERE status = 'disabled';
CREATE INDEX webhook_health_failing ON webhook_health (subscription_id)
    WHERE failing_since IS NOT NULL;
