//! MySQL cluster view: instance rows, their heartbeats, drain requests and
//! removal.

use super::*;

#[async_trait]
impl ClusterStore for MySqlStorage {
    async fn instance_heartbeat(&self, beat: &InstanceBeat<'_>) -> Result<bool> {
        sqlx::query(
            "INSERT INTO instances (id, address, admin_address, version, key_ids, lease_ttl_ms, started_at, last_seen)
             VALUES (?, ?, ?, ?, ?, ?, NOW(6), NOW(6))
             ON DUPLICATE KEY UPDATE address = VALUES(address), admin_address = VALUES(admin_address),
                                     version = VALUES(version), key_ids = VALUES(key_ids),
                                     lease_ttl_ms = VALUES(lease_ttl_ms), last_seen = NOW(6),
                                     drain_requested = IF(?, 0, drain_requested)",
        )
        .bind(beat.id)
        .bind(beat.address)
        .bind(beat.admin_address)
        .bind(beat.version)
        .bind(beat.key_ids)
        .bind(beat.lease_ttl_ms)
        .bind(beat.fresh)
        .execute(&self.pool)
        .await?;
        let drain: i64 = sqlx::query_scalar(
            "SELECT CAST(drain_requested AS SIGNED) FROM instances WHERE id = ?",
        )
        .bind(beat.id)
        .fetch_one(&self.pool)
        .await?;
        Ok(drain == 1)
    }

    async fn instances(&self) -> Result<Vec<InstanceRow>> {
        let rows: Vec<InstanceRecord<Time>> = sqlx::query_as(
            "SELECT i.id, i.address, i.admin_address, i.version, i.started_at, i.last_seen,
                    CAST(i.drain_requested AS SIGNED) AS drain_requested,
                    CAST(TIMESTAMPDIFF(MICROSECOND, i.last_seen, NOW(6)) / 1000000 AS DOUBLE) AS silent_for_s,
                    CAST((SELECT COUNT(*) FROM slots s WHERE s.granted_by = i.id AND s.state IN (0, 1)
                          AND s.holder IS NOT NULL AND s.expires_at > NOW(6)) AS SIGNED) AS leases,
                    i.key_ids, i.lease_ttl_ms
             FROM instances i ORDER BY i.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(InstanceRow::from).collect())
    }

    async fn live_versions(&self, within: Duration) -> Result<Vec<(String, String)>> {
        let r = sqlx::query_as(
            "SELECT id, version FROM instances WHERE last_seen > NOW(6) - INTERVAL ? MICROSECOND ORDER BY id",
        )
        .bind(micros(within))
        .fetch_all(&self.pool)
        .await;
        match r {
            Err(e) if is_missing_table(&e) => Ok(Vec::new()),
            other => Ok(other?),
        }
    }

    async fn request_drain(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE instances SET drain_requested = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn remove_instance(&self, id: &str, silent_for: Duration) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM instances WHERE id = ? AND last_seen < NOW(6) - INTERVAL ? MICROSECOND",
        )
        .bind(id)
        .bind(micros(silent_for))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
