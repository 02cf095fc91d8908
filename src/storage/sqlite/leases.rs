//! SQLite held leases: the check read every heartbeat answer rests on,
//! extensions, releases, the two-step force release, quarantine and the
//! lease list.

use super::*;

impl SqliteStorage {
    /// One release: the slot is freed only while it still holds this lease
    /// (gen, nonce, holder) unexpired; a retiring slot becomes retired.
    async fn release_once(&self, holder: &str, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        let mut tx = self.begin().await?;
        let now = db_now(&mut tx).await?;
        let r = sqlx::query(
            "UPDATE slots SET state = CASE WHEN state = 1 THEN 2 ELSE state END,
                    holder = NULL, client_info = NULL, request_id = NULL, expires_at = NULL
             WHERE feature_id = ?1 AND slot_no = ?2 AND lease_gen = ?3 AND lease_nonce = ?4 AND holder = ?5
               AND state IN (0, 1) AND expires_at > ?6",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .bind(holder)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((r.rows_affected() == 1).then(|| utc(now)))
    }
}

#[async_trait]
impl LeaseStore for SqliteStorage {
    async fn revoke_lease(&self, holder: Option<&str>, lease: LeaseRef) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
             WHERE feature_id = ?1 AND slot_no = ?2 AND lease_gen = ?3 AND lease_nonce = ?4
               AND holder = COALESCE(?5, holder) AND state IN (0, 1)
               AND expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn bound_revoked(&self, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        let free_at: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE slots SET expires_at = MIN(expires_at, ?5 + promise_ms * 1000 + ?6)
             WHERE feature_id = ?1 AND slot_no = ?2 AND lease_gen = ?3 AND lease_nonce = ?4
               AND holder IS NULL AND expires_at > ?5
             RETURNING expires_at",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .bind(
            sqlx::query_scalar::<_, i64>(NOW_SQL)
                .fetch_one(&self.writer)
                .await?,
        )
        .bind(micros(CLOCK_MARGIN))
        .fetch_optional(&self.writer)
        .await?;
        Ok(free_at.flatten().map(utc))
    }

    async fn check_batch(&self, items: &[RenewItem]) -> Result<Vec<Vec<Check>>> {
        let all = batch_leases(items);
        let mut found: HashMap<HeldLease<'_>, Check> = HashMap::with_capacity(all.len());
        for chunk in all.chunks(CHECK_CHUNK) {
            let (now, rows) = with_retry(|| async {
                // One read transaction: the clock and the rows of one snapshot.
                let mut tx = self.reader.begin().await?;
                let read = read_slots(&mut tx, chunk).await?;
                tx.commit().await?;
                Ok::<_, StorageError>(read)
            })
            .await?;
            for l in chunk {
                let check = rows
                    .get(&(l.0, l.1))
                    .map_or(Check::Lost, |r| r.judge(l, now));
                found.insert(*l, check);
            }
        }
        Ok(batch_results(items, |l| {
            found.get(l).cloned().unwrap_or(Check::Lost)
        }))
    }

    async fn extend_batch(
        &self,
        items: &[RenewItem],
        hold: Duration,
        promise: Duration,
    ) -> Result<Vec<Vec<Extension>>> {
        let all = batch_leases(items);
        with_retry(|| async {
            let mut tx = self.begin().await?;
            let now = db_now(&mut tx).await?;
            let expires = now.saturating_add(micros(hold));
            let mut extended = std::collections::HashSet::new();
            // One local write transaction for the batch; statements are cheap
            // here. MAX: a shorter lease_hold never shortens a longer one.
            for l in &all {
                let r = sqlx::query(
                    "UPDATE slots SET expires_at = MAX(expires_at, ?1), promise_ms = MAX(promise_ms, ?2)
                     WHERE feature_id = ?3 AND slot_no = ?4 AND lease_gen = ?5 AND lease_nonce = ?6 AND holder = ?7
                       AND state IN (0, 1) AND expires_at > ?8",
                )
                .bind(expires)
                .bind(millis(promise))
                .bind(l.0)
                .bind(l.1)
                .bind(l.2)
                .bind(l.3)
                .bind(l.4)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 1 {
                    extended.insert(*l);
                }
            }
            tx.commit().await?;
            let at = utc(now);
            // The single writer holds every row: nothing is ever busy here.
            Ok(batch_results(items, |l| {
                if extended.contains(l) {
                    Extension::Extended(at)
                } else {
                    Extension::Lost
                }
            }))
        })
        .await
    }

    async fn release(&self, holder: &str, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        with_retry(|| self.release_once(holder, lease)).await
    }

    async fn quarantine(&self, hold: Duration) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL, lease_nonce = 0,
                expires_at = MAX(COALESCE(expires_at, 0), ?1 + ?2),
                promise_ms = MAX(promise_ms, ?3)
             WHERE state IN (0, 1)",
        )
        .bind(
            sqlx::query_scalar::<_, i64>(NOW_SQL)
                .fetch_one(&self.writer)
                .await?,
        )
        .bind(micros(hold))
        .bind(hold_cap_ms(hold))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let rows: Vec<LeaseRecord<Time>> = sqlx::query_as(
            "SELECT s.feature_id, s.slot_no, s.lease_gen, s.lease_nonce AS nonce, f.name AS feature, f.license_id, s.holder, s.client_info,
                    s.granted_by, s.granted_at, s.expires_at, s.state
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.state IN (0, 1) AND s.expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             ORDER BY f.name, s.feature_id, s.slot_no",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(LeaseInfo::from).collect())
    }

    async fn purge_requests(&self, age: Duration) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM grant_requests WHERE created_at < CAST(unixepoch('subsec') * 1000000 AS INTEGER) - ?",
        )
        .bind(micros(age))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn leases_of(&self, holder: &str) -> Result<Vec<LeaseRef>> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT feature_id, slot_no, lease_gen, lease_nonce FROM slots
             WHERE holder = ? AND state IN (0, 1)
               AND expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
        )
        .bind(holder)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(feature_id, slot_no, lease_gen, nonce)| LeaseRef {
                feature_id,
                slot_no,
                lease_gen,
                nonce,
            })
            .collect())
    }

    async fn held_by(&self, holder: &str) -> Result<Vec<LeaseInfo>> {
        let rows: Vec<LeaseRecord<Time>> = sqlx::query_as(
            "SELECT s.feature_id, s.slot_no, s.lease_gen, s.lease_nonce AS nonce, f.name AS feature, f.license_id, s.holder, s.client_info,
                    s.granted_by, s.granted_at, s.expires_at, s.state
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.holder = ? AND s.state IN (0, 1) AND s.expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             ORDER BY f.name, s.granted_at, s.feature_id, s.slot_no",
        )
        .bind(holder)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(LeaseInfo::from).collect())
    }
}
