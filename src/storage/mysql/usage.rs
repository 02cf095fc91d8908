//! MySQL usage records: denials appended in batches, the sweep of leases
//! that expired unseen, the report window and the purge. Seat events are
//! written by the trigger of migrations/mysql/0010_usage_events.sql.

use super::*;

const COLUMNS: &str = "id, at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, address, instance, reason";

#[async_trait]
impl UsageStore for MySqlStorage {
    async fn record_denials(&self, denials: &[Denial]) -> Result<()> {
        if denials.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO usage_events (at, event, feature, identity, user, host, address, instance, reason) ",
        );
        q.push_values(denials, |mut b, d| {
            b.push_bind(naive(d.at))
                .push_bind("denial")
                .push_bind(&d.feature)
                .push_bind(&d.identity)
                .push_bind(&d.user)
                .push_bind(&d.host)
                .push_bind(&d.address)
                .push_bind(&d.instance)
                .push_bind(&d.reason);
        });
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn sweep_expired(&self, limit: u32) -> Result<u64> {
        // A plain read picks the rows, then one conditional UPDATE per row
        // by primary key: a scan UPDATE would lock every row it passes.
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT feature_id, slot_no, lease_gen FROM slots
             WHERE holder IS NOT NULL AND expires_at <= NOW(6) LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        for (f, s, g) in rows {
            let r = sqlx::query(
                "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
                 WHERE feature_id = ? AND slot_no = ? AND lease_gen = ?
                   AND holder IS NOT NULL AND expires_at <= NOW(6)",
            )
            .bind(f)
            .bind(s)
            .bind(g)
            .execute(&self.pool)
            .await?;
            n += r.rows_affected();
        }
        Ok(n)
    }

    async fn usage_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>> {
        let sql = format!(
            "(SELECT {COLUMNS} FROM usage_events WHERE at >= ? AND at < ?)
             UNION ALL
             (SELECT {COLUMNS} FROM usage_events g WHERE g.event = 'grant' AND g.at < ?
               AND NOT EXISTS (SELECT 1 FROM usage_events e
                               WHERE e.feature_id = g.feature_id AND e.slot_no = g.slot_no
                                 AND e.lease_gen = g.lease_gen AND e.lease_nonce = g.lease_nonce
                                 AND e.event <> 'grant' AND e.at < ?))
             ORDER BY at, id LIMIT ?"
        );
        let rows: Vec<UsageEventRecord<Time>> = sqlx::query_as(&sql)
            .bind(naive(from))
            .bind(naive(to))
            .bind(naive(from))
            .bind(naive(from))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        if rows.len() > limit as usize {
            return Err(StorageError::Conflict(format!(
                "the usage report window holds more than {limit} events: ask for a shorter window"
            )));
        }
        Ok(rows.into_iter().map(UsageEvent::from).collect())
    }

    async fn purge_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let r = sqlx::query("DELETE FROM usage_events WHERE at < ? ORDER BY at LIMIT ?")
            .bind(naive(before))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
