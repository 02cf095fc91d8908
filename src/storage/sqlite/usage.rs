//! SQLite usage records: denials appended in batches, the sweep of leases
//! that expired unseen, the report window and the purge. Seat events are
//! written by the trigger of migrations/sqlite/0010_usage_events.sql.

use super::*;

const COLUMNS: &str = "id, at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, address, instance, reason";

#[async_trait]
impl UsageStore for SqliteStorage {
    async fn record_denials(&self, denials: &[Denial]) -> Result<()> {
        if denials.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO usage_events (at, event, feature, identity, user, host, address, instance, reason) ",
        );
        q.push_values(denials, |mut b, d| {
            b.push_bind(d.at.timestamp_micros())
                .push_bind("denial")
                .push_bind(&d.feature)
                .push_bind(&d.identity)
                .push_bind(&d.user)
                .push_bind(&d.host)
                .push_bind(&d.address)
                .push_bind(&d.instance)
                .push_bind(&d.reason);
        });
        q.build().execute(&self.writer).await?;
        Ok(())
    }

    async fn sweep_expired(&self, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
             WHERE rowid IN (SELECT rowid FROM slots WHERE holder IS NOT NULL AND expires_at IS NOT NULL
                               AND expires_at <= CAST(unixepoch('subsec') * 1000000 AS INTEGER) LIMIT ?1)
               AND holder IS NOT NULL AND expires_at <= CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
        )
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn usage_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_events WHERE at >= ?1 AND at < ?2
             UNION ALL
             SELECT {COLUMNS} FROM usage_events g WHERE g.event = 'grant' AND g.at < ?1
               AND NOT EXISTS (SELECT 1 FROM usage_events e
                               WHERE e.feature_id = g.feature_id AND e.slot_no = g.slot_no
                                 AND e.lease_gen = g.lease_gen AND e.lease_nonce = g.lease_nonce
                                 AND e.event <> 'grant' AND e.at < ?1)
             ORDER BY at, id LIMIT ?3"
        );
        let rows: Vec<UsageEventRecord<Time>> = sqlx::query_as(&sql)
            .bind(from.timestamp_micros())
            .bind(to.timestamp_micros())
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reader)
            .await?;
        if rows.len() > limit as usize {
            return Err(StorageError::Conflict(format!(
                "the usage report window holds more than {limit} events: ask for a shorter window"
            )));
        }
        Ok(rows.into_iter().map(UsageEvent::from).collect())
    }

    async fn purge_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM usage_events WHERE id IN
               (SELECT id FROM usage_events WHERE at < ?1 ORDER BY at LIMIT ?2)",
        )
        .bind(before.timestamp_micros())
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }
}
