//! MySQL held leases: the batched check read every heartbeat answer rests
//! on, batched extensions (rows locked by others are skipped, never waited
//! for), releases, the two-step force release, quarantine and the lease
//! list.

use super::*;

impl MySqlStorage {
    /// One UPDATE releases every pair when each is still live; otherwise
    /// `None`, and the pairs are released one at a time to learn which.
    async fn release_batch_once(
        &self,
        items: &[(&str, LeaseRef)],
    ) -> Result<Option<NaiveDateTime>> {
        let mut tx = self.pool.begin().await?;
        let now = db_now(&mut tx).await?;
        let mut q = QueryBuilder::<MySql>::new(
            "UPDATE slots FORCE INDEX (PRIMARY) SET state = CASE WHEN state = 1 THEN 2 ELSE state END,
                    holder = NULL, client_info = NULL, request_id = NULL, expires_at = NULL
             WHERE state IN (0, 1) AND expires_at > ",
        );
        q.push_bind(now).push(" AND (");
        push_held_leases(
            &mut q,
            items
                .iter()
                .map(|(h, l)| (l.feature_id, l.slot_no, l.lease_gen, l.nonce, *h)),
        );
        q.push(")");
        let r = q.build().execute(&mut *tx).await?;
        if r.rows_affected() as usize != items.len() {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(now))
    }

    /// One release: the slot is freed only while it still holds this lease
    /// (gen, nonce, holder) unexpired; a retiring slot becomes retired.
    async fn release_once(&self, holder: &str, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        let mut tx = self.pool.begin().await?;
        let now = db_now(&mut tx).await?;
        let r = sqlx::query(
            "UPDATE slots SET state = CASE WHEN state = 1 THEN 2 ELSE state END,
                    holder = NULL, client_info = NULL, request_id = NULL, expires_at = NULL
             WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND lease_nonce = ? AND holder = ?
               AND state IN (0, 1) AND expires_at > ?",
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
impl LeaseStore for MySqlStorage {
    async fn revoke_lease(&self, holder: Option<&str>, lease: LeaseRef) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
             WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND lease_nonce = ?
               AND holder = COALESCE(?, holder) AND state IN (0, 1) AND expires_at > NOW(6)",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn bound_revoked(&self, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        sqlx::query(
            "UPDATE slots SET expires_at = LEAST(expires_at, NOW(6) + INTERVAL (promise_ms * 1000 + ?) MICROSECOND)
             WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND lease_nonce = ?
               AND holder IS NULL AND expires_at > NOW(6)",
        )
        .bind(micros(CLOCK_MARGIN))
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .execute(&self.pool)
        .await?;
        let free_at: Option<Option<NaiveDateTime>> = sqlx::query_scalar(
            "SELECT expires_at FROM slots WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND lease_nonce = ?",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .fetch_optional(&self.pool)
        .await?;
        Ok(free_at.flatten().map(utc))
    }

    async fn check_batch(&self, items: &[RenewItem]) -> Result<Vec<Vec<Check>>> {
        let all = batch_leases(items);
        let mut found: HashMap<HeldLease<'_>, Check> = HashMap::with_capacity(all.len());
        for chunk in all.chunks(RENEW_CHUNK) {
            let (now, rows) = with_retry(|| read_slots(&self.pool, chunk)).await?;
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
        if all.is_empty() {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        with_retry(|| async {
            let mut tx = self.pool.begin().await?;
            let now = db_now(&mut tx).await?;
            let expires = add(now, hold);
            let mut extended = std::collections::HashSet::new();
            let mut busy = std::collections::HashSet::new();
            // Per chunk: lock what can be locked now (a row another
            // transaction holds, say a stalled instance's, is skipped and
            // reported busy: one frozen instance must not stall every
            // heartbeat here); one UPDATE for the rest; only when some lease
            // did not match is a SELECT needed to learn which.
            for chunk in all.chunks(RENEW_CHUNK) {
                let mut q = QueryBuilder::<MySql>::new(
                    "SELECT feature_id, CAST(slot_no AS SIGNED) FROM slots FORCE INDEX (PRIMARY) WHERE ",
                );
                for (i, (f, s, ..)) in chunk.iter().enumerate() {
                    q.push(if i == 0 { "(" } else { " OR (" })
                        .push("feature_id = ")
                        .push_bind(*f)
                        .push(" AND slot_no = ")
                        .push_bind(*s)
                        .push(")");
                }
                q.push(" FOR UPDATE SKIP LOCKED");
                let locked: std::collections::HashSet<(i64, i64)> = q
                    .build_query_as::<(i64, i64)>()
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                let (chunk, skipped): (Vec<HeldLease<'_>>, Vec<HeldLease<'_>>) = chunk
                    .iter()
                    .partition(|l| locked.contains(&(l.0, l.1)));
                if !skipped.is_empty() {
                    // Skipped because locked, or because there is no such
                    // row (a made-up lease id): only the first is busy.
                    let (_, rows) = read_slots(&mut *tx, &skipped).await?;
                    busy.extend(skipped.into_iter().filter(|l| rows.contains_key(&(l.0, l.1))));
                }
                if chunk.is_empty() {
                    continue;
                }
                // The primary key, whatever the statistics say: the pick index
                // would scan every live lease of the feature. GREATEST: an
                // instance with a shorter lease_hold never shortens what one
                // with a longer hold recorded (and promised from).
                let mut q = QueryBuilder::<MySql>::new(
                    "UPDATE slots FORCE INDEX (PRIMARY) SET expires_at = GREATEST(expires_at, ",
                );
                q.push_bind(expires)
                    .push("), promise_ms = GREATEST(promise_ms, ")
                    .push_bind(millis(promise))
                    // Alive by the clock of this statement, which runs with
                    // the rows locked: `now` was read before the locks were
                    // granted, and a lease that expired meanwhile may already
                    // have been counted free by a grant.
                    .push(") WHERE state IN (0, 1) AND expires_at > NOW(6) AND (");
                push_held_leases(&mut q, chunk.iter().copied());
                q.push(")");
                let r = q.build().execute(&mut *tx).await?;
                if r.rows_affected() as usize == chunk.len() {
                    extended.extend(chunk.iter().copied());
                    continue;
                }
                // The rows that still hold their lease now carry an expiry of
                // at least `expires`; the others do not (released: NULL;
                // expired: before now; re-granted: another gen or nonce).
                let mut q = QueryBuilder::<MySql>::new(
                    "SELECT feature_id, CAST(slot_no AS SIGNED), lease_gen, lease_nonce, holder
                     FROM slots FORCE INDEX (PRIMARY) WHERE state IN (0, 1) AND expires_at >= ",
                );
                q.push_bind(expires).push(" AND (");
                push_held_leases(&mut q, chunk.iter().copied());
                q.push(")");
                let rows: Vec<(i64, i64, i64, i64, Option<String>)> =
                    q.build_query_as().fetch_all(&mut *tx).await?;
                for (f, s, g, n, h) in rows {
                    let Some(h) = h else { continue };
                    if let Some(l) = chunk.iter().find(|c| **c == (f, s, g, n, h.as_str())) {
                        extended.insert(*l);
                    }
                }
            }
            tx.commit().await?;
            let at = utc(now);
            Ok(batch_results(items, |l| {
                if extended.contains(l) {
                    Extension::Extended(at)
                } else if busy.contains(l) {
                    Extension::Busy
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

    async fn release_batch(
        &self,
        items: &[(String, LeaseRef)],
    ) -> Vec<Result<Option<DateTime<Utc>>>> {
        let mut pairs: Vec<(&str, LeaseRef)> =
            items.iter().map(|(h, l)| (h.as_str(), *l)).collect();
        // Sorted, so concurrent batches lock rows in the same order.
        pairs.sort_unstable_by_key(|(h, l)| (*l, *h));
        pairs.dedup();
        if pairs.len() == items.len() && items.len() > 1 {
            // A batch that fails (a row locked by a stalled instance, one
            // lease already gone) changed nothing: each runs alone below.
            if let Ok(Some(now)) = with_retry(|| self.release_batch_once(&pairs)).await {
                return items.iter().map(|_| Ok(Some(utc(now)))).collect();
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (holder, lease) in items {
            out.push(self.release(holder, *lease).await);
        }
        out
    }

    async fn quarantine(&self, hold: Duration) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL, lease_nonce = 0,
                    expires_at = GREATEST(COALESCE(expires_at, NOW(6)), NOW(6) + INTERVAL ? MICROSECOND),
                    promise_ms = GREATEST(promise_ms, ?)
             WHERE state IN (0, 1)",
        )
        .bind(micros(hold))
        .bind(hold_cap_ms(hold))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let rows: Vec<LeaseRecord<Time>> = sqlx::query_as(
            "SELECT s.feature_id, CAST(s.slot_no AS SIGNED) AS slot_no, s.lease_gen, s.lease_nonce AS nonce, f.name AS feature,
                    f.license_id, s.holder,
                    s.client_info, s.granted_by, s.granted_at, s.expires_at, CAST(s.state AS SIGNED) AS state
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.state IN (0, 1) AND s.expires_at > NOW(6)
             ORDER BY f.name, s.feature_id, s.slot_no",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(LeaseInfo::from).collect())
    }

    async fn purge_requests(&self, age: Duration) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM grant_requests WHERE created_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT 10000",
        )
        .bind(micros(age))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn leases_of(&self, holder: &str) -> Result<Vec<LeaseRef>> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT feature_id, CAST(slot_no AS SIGNED), lease_gen, lease_nonce FROM slots
             WHERE holder = ? AND state IN (0, 1) AND expires_at > NOW(6)",
        )
        .bind(holder)
        .fetch_all(&self.pool)
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
            "SELECT s.feature_id, CAST(s.slot_no AS SIGNED) AS slot_no, s.lease_gen, s.lease_nonce AS nonce, f.name AS feature,
                    f.license_id, s.holder,
                    s.client_info, s.granted_by, s.granted_at, s.expires_at, CAST(s.state AS SIGNED) AS state
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.holder = ? AND s.state IN (0, 1) AND s.expires_at > NOW(6)
             ORDER BY f.name, s.granted_at, s.feature_id, s.slot_no",
        )
        .bind(holder)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(LeaseInfo::from).collect())
    }
}
