//! SQLite cluster view: the single instance's row, its heartbeats, drain
//! requests and removal.

use super::*;

#[async_trait]
impl ClusterStore for SqliteStorage {
    async fn instance_heartbeat(&self, beat: &InstanceBeat<'_>) -> Result<bool> {
        sqlx::query(
            "INSERT INTO instances (id, address, admin_address, version, key_ids, lease_ttl_ms, started_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?6, ?7, CAST(unixepoch('subsec') * 1000000 AS INTEGER), CAST(unixepoch('subsec') * 1000000 AS INTEGER))
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, admin_address = excluded.admin_address,
                                            version = excluded.version, key_ids = excluded.key_ids,
                                            lease_ttl_ms = excluded.lease_ttl_ms, last_seen = excluded.last_seen,
                                            drain_requested = CASE WHEN ?5 THEN 0 ELSE drain_requested END",
        )
        .bind(beat.id)
        .bind(beat.address)
        .bind(beat.admin_address)
        .bind(beat.version)
        .bind(beat.fresh)
        .bind(beat.key_ids)
        .bind(beat.lease_ttl_ms)
        .execute(&self.writer)
        .await?;
        let drain: i64 = sqlx::query_scalar("SELECT drain_requested FROM instances WHERE id = ?")
            .bind(beat.id)
            .fetch_one(&self.writer)
            .await?;
        Ok(drain == 1)
    }

    async fn instances(&self) -> Result<Vec<InstanceRow>> {
        let rows: Vec<InstanceRecord<Time>> = sqlx::query_as(
            "WITH clock(now) AS (SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER))
             SELECT i.id, i.address, i.admin_address, i.version, i.started_at, i.last_seen, i.drain_requested,
                    (clock.now - i.last_seen) / 1000000.0 AS silent_for_s,
                    (SELECT COUNT(*) FROM slots s WHERE s.granted_by = i.id AND s.state IN (0, 1)
                       AND s.holder IS NOT NULL AND s.expires_at > clock.now) AS leases,
                    i.key_ids, i.lease_ttl_ms
             FROM instances i CROSS JOIN clock ORDER BY i.id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(InstanceRow::from).collect())
    }

    async fn live_versions(&self, within: Duration) -> Result<Vec<(String, String)>> {
        let r = sqlx::query_as(
            "SELECT id, version FROM instances
             WHERE last_seen > CAST(unixepoch('subsec') * 1000000 AS INTEGER) - ? ORDER BY id",
        )
        .bind(micros(within))
        .fetch_all(&self.reader)
        .await;
        match r {
            Err(e) if is_missing_table(&e) => Ok(Vec::new()),
            other => Ok(other?),
        }
    }

    async fn request_drain(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE instances SET drain_requested = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn remove_instance(&self, id: &str, silent_for: Duration) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM instances WHERE id = ? AND last_seen < CAST(unixepoch('subsec') * 1000000 AS INTEGER) - ?",
        )
        .bind(id)
        .bind(micros(silent_for))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
