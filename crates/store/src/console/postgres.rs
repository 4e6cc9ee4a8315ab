//! The console's SQL for PostgreSQL.

use crate::PgStore;
use crate::console::queries::ConsoleSql;

impl ConsoleSql for PgStore {
    const INSERT_CONSOLE_SESSION: &'static str = "INSERT INTO console_sessions (id_hash, kind, \
         workspace_id, read_only, csrf_token, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    const FIND_CONSOLE_SESSION: &'static str = "SELECT id_hash, kind, workspace_id, read_only, \
         csrf_token, created_at, expires_at FROM console_sessions \
         WHERE id_hash = $1 AND expires_at > $2";
    const DELETE_CONSOLE_SESSION: &'static str = "DELETE FROM console_sessions WHERE id_hash = $1";
    const PRUNE_CONSOLE_SESSIONS: &'static str =
        "DELETE FROM console_sessions WHERE expires_at <= $1";
    const PRUNE_PORTAL_LINKS: &'static str = "DELETE FROM portal_links WHERE expires_at <= $1";

    const INSERT_PORTAL_LINK: &'static str = "INSERT INTO portal_links (token_hash, \
         workspace_id, read_only, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
    /// Of two redemptions at once, the second waits for the first's row
    /// lock, then finds `used_at` set (READ COMMITTED re-checks the WHERE
    /// on the updated row) and updates nothing.
    const REDEEM_PORTAL_LINK: &'static str = "UPDATE portal_links SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
         RETURNING workspace_id, read_only, created_at, expires_at";

    /// One pass over the workspace's deliveries (deliveries_workspace_created)
    /// counts both the recent ones and the waiting ones of any age; the
    /// latest attempt's status is then looked up per subscription among its
    /// recent deliveries (deliveries_subscription_created).
    const WEBHOOK_HEALTH: &'static str = "SELECT h.subscription_id, h.succeeded, h.dead, \
         h.canceled, h.retrying, h.pending, h.last_attempt_at, \
         (SELECT l.last_response_status FROM deliveries l \
             WHERE l.subscription_id = h.subscription_id AND l.created_at >= $2 \
             AND l.workspace_id = $1 AND l.last_attempt_at = h.last_attempt_at \
             ORDER BY l.id DESC LIMIT 1) AS last_response_status, \
         h.waiting, h.held \
         FROM ( \
             SELECT d.subscription_id, \
             COUNT(*) FILTER (WHERE d.created_at >= $2 AND d.status = 'succeeded') AS succeeded, \
             COUNT(*) FILTER (WHERE d.created_at >= $2 AND d.status = 'dead') AS dead, \
             COUNT(*) FILTER (WHERE d.created_at >= $2 AND d.status = 'canceled') AS canceled, \
             COUNT(*) FILTER (WHERE d.created_at >= $2 AND d.status = 'retrying') AS retrying, \
             COUNT(*) FILTER (WHERE d.created_at >= $2 AND d.status = 'pending') AS pending, \
             MAX(d.last_attempt_at) FILTER (WHERE d.created_at >= $2) AS last_attempt_at, \
             COUNT(*) FILTER (WHERE d.status IN ('pending', 'retrying')) AS waiting, \
             COUNT(*) FILTER (WHERE d.status IN ('pending', 'retrying') \
                 AND d.held_until IS NOT NULL) AS held \
             FROM deliveries d WHERE d.workspace_id = $1 \
             AND (d.created_at >= $2 OR d.status IN ('pending', 'retrying')) \
             GROUP BY d.subscription_id \
         ) h ORDER BY h.subscription_id";
    const OUTCOMES_BY_HOUR: &'static str = "SELECT date_trunc('hour', d.created_at, 'UTC') \
         AS hour, d.status, COUNT(*) AS n FROM deliveries d \
         WHERE d.workspace_id = $1 AND d.created_at >= $2 \
         GROUP BY 1, 2 ORDER BY 1, 2";
    const COUNT_DELIVERIES: &'static str = "SELECT COUNT(*) AS n FROM deliveries d \
         WHERE d.workspace_id = $1 AND ($2::text IS NULL OR d.event_type = $2) \
         AND ($3::text IS NULL OR d.status = $3)";
    const COUNT_SUBSCRIPTION_DELIVERIES: &'static str = "SELECT COUNT(*) AS n FROM deliveries d \
         WHERE d.subscription_id = $4 AND d.workspace_id = $1 \
         AND ($2::text IS NULL OR d.event_type = $2) AND ($3::text IS NULL OR d.status = $3)";
}
