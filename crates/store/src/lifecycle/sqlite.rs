//! The lifecycle's SQL for SQLite. Writes take the one writer connection,
//! so an episode's read and its update cannot interleave with another's.

use crate::SqliteStore;
use crate::lifecycle::queries::LifecycleSql;

impl LifecycleSql for SqliteStore {
    const PAUSE_DELIVERIES: &'static str = "UPDATE deliveries SET status = 'paused', \
         held_until = NULL, next_attempt_at = NULL, updated_at = ?3 \
         WHERE subscription_id = ?1 AND workspace_id = ?2 AND status IN ('pending', 'retrying')";
    const REPLAY_PAUSED: &'static str = "UPDATE deliveries SET \
         status = CASE WHEN attempts = 0 THEN 'pending' ELSE 'retrying' END, \
         held_until = ?3, next_attempt_at = ?3, updated_at = ?3 \
         WHERE subscription_id = ?1 AND workspace_id = ?2 AND status = 'paused'";
    const CANCEL_PAUSED: &'static str = "UPDATE deliveries SET status = 'canceled', \
         updated_at = ?3 \
         WHERE subscription_id = ?1 AND workspace_id = ?2 AND status = 'paused'";
    const COUNT_PAUSED: &'static str = "SELECT COUNT(*) AS n FROM deliveries \
         WHERE subscription_id = ?1 AND workspace_id = ?2 AND status = 'paused'";

    const DISABLE: &'static str = "UPDATE subscriptions SET status = 'disabled', \
         disabled_reason = ?3, disabled_at = ?4, updated_at = ?4 \
         WHERE id = ?1 AND workspace_id = ?2 AND status = 'enabled'";
    const DISABLE_IF_FAILING: &'static str = "UPDATE subscriptions SET status = 'disabled', \
         disabled_reason = ?3, disabled_at = ?4, updated_at = ?4 \
         WHERE id = ?1 AND workspace_id = ?2 AND status = 'enabled' \
         AND EXISTS (SELECT 1 FROM webhook_health h \
             WHERE h.subscription_id = ?1 AND h.failing_since = ?5)";

    const LAST_SUCCESS_SINCE: &'static str = "SELECT MAX(last_attempt_at) AS at \
         FROM deliveries WHERE subscription_id = ?1 AND workspace_id = ?2 \
         AND status = 'succeeded' AND last_attempt_at >= ?3";
    const RESTART_FAILING: &'static str = "UPDATE webhook_health SET failing_since = ?3, \
         failing_reported_at = NULL, updated_at = ?3 \
         WHERE subscription_id = ?1 AND failing_since = ?2";
    const FORGET_FAILING: &'static str = "UPDATE webhook_health SET failing_since = NULL, \
         failing_reported_at = NULL, updated_at = ?2 WHERE subscription_id = ?1";

    const FORGET_CIRCUIT: &'static str = "DELETE FROM webhook_circuits WHERE subscription_id = ?1";

    const START_FAILING: &'static str = "INSERT INTO webhook_health \
         (subscription_id, workspace_id, failing_since, updated_at) \
         SELECT s.id, s.workspace_id, ?3, ?3 FROM subscriptions s \
         WHERE s.id = ?1 AND s.workspace_id = ?2 \
         ON CONFLICT (subscription_id) DO UPDATE SET \
         failing_since = COALESCE(webhook_health.failing_since, excluded.failing_since), \
         updated_at = excluded.updated_at \
         RETURNING failing_since";
    const REPORT_FAILING: &'static str = "UPDATE webhook_health SET \
         failing_reported_at = ?3, updated_at = ?3 \
         WHERE subscription_id = ?1 AND failing_since = ?2 AND failing_reported_at IS NULL";
    const OPEN_EPISODE: &'static str = "SELECT failing_since, failing_reported_at \
         FROM webhook_health WHERE subscription_id = ?1 AND failing_since IS NOT NULL";
    const END_FAILING: &'static str = "UPDATE webhook_health SET failing_since = NULL, \
         failing_reported_at = NULL, last_success_at = ?2, updated_at = ?2 \
         WHERE subscription_id = ?1";

    const OPEN_EPISODES: &'static str = "SELECT subscription_id, failing_since, \
         failing_reported_at FROM webhook_health WHERE failing_since IS NOT NULL";

    const DISABLED_BY_REASON: &'static str = "SELECT disabled_reason, COUNT(*) AS n \
         FROM subscriptions WHERE status = 'disabled' GROUP BY disabled_reason";
    const PAUSED_TOTAL: &'static str =
        "SELECT COUNT(*) AS n FROM deliveries WHERE status = 'paused'";
}
