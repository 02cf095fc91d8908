//! SQLite grants: where a seat is taken. One writer connection runs every
//! grant (`BEGIN IMMEDIATE`), so the slot is picked and moved without row
//! locks; the conditional UPDATE still checks the slot's own state.
//! Written out plainly beside `mysql/seats.rs` so the differences show.

use super::*;

/// Retires a slot in state `from` that nobody holds (free or expired).
async fn retire_unheld(
    tx: &mut Tx<'_>,
    feature_id: i64,
    slot_no: i64,
    from: SlotState,
    now: i64,
) -> Result<(), SeatFailure> {
    sqlx::query(
        "UPDATE slots SET state = 2 WHERE feature_id = ?1 AND slot_no = ?2 AND state = ?3
         AND (expires_at IS NULL OR expires_at <= ?4)",
    )
    .bind(feature_id)
    .bind(slot_no)
    .bind(from.stored())
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(StorageError::from)?;
    Ok(())
}

/// Passes of the grant loop per feature row (see `grant_once`).
const MAX_SEATS_PASSES: usize = 4 * crate::domain::license::MAX_SEATS as usize;

impl SqliteStorage {
    /// Answers a request id seen before with its grant, but only while
    /// that lease is still held (see the MySQL backend).
    async fn replay(
        &self,
        tx: &mut Tx<'_>,
        req: &GrantRequest,
    ) -> Result<Option<Grant>, SeatFailure> {
        let row: Option<(i64, i64, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT g.feature_id, g.slot_no, g.lease_gen, g.lease_nonce, g.created_at, f.name
             FROM grant_requests g JOIN features f ON f.id = g.feature_id
             WHERE g.holder = ? AND g.request_id = ?",
        )
        .bind(&req.holder)
        .bind(req.request_id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StorageError::from)?;
        let Some((feature_id, slot_no, lease_gen, nonce, granted, name)) = row else {
            return Ok(None);
        };
        if name != req.feature {
            return Err(SeatError::RequestIdReused(req.request_id.to_string()).into());
        }
        let lease = LeaseRef {
            feature_id,
            slot_no,
            lease_gen,
            nonce,
        };
        let key = (feature_id, slot_no, lease_gen, nonce, req.holder.as_str());
        let (now, read) = read_slots(tx, std::slice::from_ref(&key)).await?;
        let check = read
            .get(&(feature_id, slot_no))
            .map_or(Check::Lost, |r| r.judge(&key, now));
        match check {
            Check::Live(live) if !live.window_closed() => Ok(Some(Grant {
                lease,
                feature: name,
                granted_at: utc(granted),
                expires_at: live.expires_at,
                replayed: true,
                promise: live.promise(req.promise),
            })),
            _ => Err(SeatError::LeaseEnded(lease).into()),
        }
    }

    /// One grant transaction on the single writer: takes a free or expired
    /// active slot with an UPDATE that checks the slot's own state and raises
    /// its `lease_gen`.
    async fn grant_once(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        let mut tx = self.begin().await?;
        if let Some(g) = self.replay(&mut tx, req).await? {
            tx.commit().await.map_err(StorageError::from)?;
            return Ok(g);
        }
        let now = db_now(&mut tx).await?;
        let features: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, (not_before IS NULL OR not_before <= ?1) AND (expires_at IS NULL OR expires_at > ?1), expires_at
             FROM features WHERE name = ?2 AND seats > 0 ORDER BY id",
        )
        .bind(now)
        .bind(&req.feature)
        .fetch_all(&mut *tx)
        .await
        .map_err(StorageError::from)?;
        if features.is_empty() {
            return Err(SeatError::UnknownFeature(req.feature.clone()).into());
        }
        let valid: Vec<(i64, Option<i64>)> = features
            .iter()
            .filter(|f| f.1 == 1)
            .map(|f| (f.0, f.2))
            .collect();
        if valid.is_empty() {
            return Err(SeatError::Expired(req.feature.clone()).into());
        }
        let expires = now.saturating_add(micros(req.hold));
        // Seats still owed by a shrink of any license of this feature come
        // first (see the MySQL backend's `seats_to_spare`); the single
        // writer makes the count exact.
        let spare: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM slots s JOIN features f ON f.id = s.feature_id
                     WHERE f.name = ?1 AND f.seats > 0
                       AND (f.not_before IS NULL OR f.not_before <= ?2) AND (f.expires_at IS NULL OR f.expires_at > ?2)
                       AND s.state = 0 AND (s.expires_at IS NULL OR s.expires_at <= ?2))
                  - COUNT(*)
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE f.name = ?1 AND s.state = 1 AND s.expires_at > ?2 AND (f.expires_at IS NULL OR f.expires_at > ?2)
             HAVING COUNT(*) > 0",
        )
        .bind(&req.feature)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StorageError::from)?;
        let candidates: &[(i64, _)] = if spare.is_some_and(|n| n <= 0) {
            &[]
        } else {
            &valid
        };
        for &(fid, window_end) in candidates {
            for _ in 0..MAX_SEATS_PASSES {
                let cand: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, lease_gen FROM slots
                     WHERE feature_id = ?1 AND state = 0 AND (expires_at IS NULL OR expires_at <= ?2)
                     ORDER BY expires_at, slot_no LIMIT 1",
                )
                .bind(fid)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StorageError::from)?;
                let Some((slot, gen_before)) = cand else {
                    break;
                };
                let retiring: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, expires_at IS NOT NULL AND expires_at > ?1 FROM slots
                     WHERE feature_id = ?2 AND state = 1 ORDER BY slot_no LIMIT 1",
                )
                .bind(now)
                .bind(fid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StorageError::from)?;
                if let Some((rslot, live)) = retiring {
                    if live == 1 {
                        // The license shrank while this slot was held: the free
                        // slot retires in its place and the held one stays.
                        retire_unheld(&mut tx, fid, slot, SlotState::Active, now).await?;
                        sqlx::query("UPDATE slots SET state = 0 WHERE feature_id = ?1 AND slot_no = ?2 AND state = 1")
                            .bind(fid)
                            .bind(rslot)
                            .execute(&mut *tx)
                            .await
                            .map_err(StorageError::from)?;
                    } else {
                        retire_unheld(&mut tx, fid, rslot, SlotState::Retiring, now).await?;
                    }
                    continue;
                }
                let nonce = LeaseRef::new_nonce();
                let res = sqlx::query(
                    "UPDATE slots SET lease_gen = lease_gen + 1, holder = ?1, client_info = ?2, request_id = ?3,
                            granted_by = ?4, granted_at = ?5, expires_at = ?6, lease_nonce = ?10, promise_ms = ?11
                     WHERE feature_id = ?7 AND slot_no = ?8 AND lease_gen = ?9 AND state = 0
                       AND (expires_at IS NULL OR expires_at <= ?5)",
                )
                .bind(&req.holder)
                .bind(&req.client_info)
                .bind(req.request_id.as_str())
                .bind(&req.instance_id)
                .bind(now)
                .bind(expires)
                .bind(fid)
                .bind(slot)
                .bind(gen_before)
                .bind(nonce)
                .bind(millis(req.promise))
                .execute(&mut *tx)
                .await
                .map_err(StorageError::from)?;
                if res.rows_affected() != 1 {
                    continue;
                }
                // The slot was read locked (MySQL) or under the single writer (SQLite)
                // and the UPDATE checked lease_gen, so the new value is known.
                let lease_gen = gen_before + 1;
                sqlx::query(
                    "INSERT INTO grant_requests (holder, request_id, feature_id, slot_no, lease_gen, lease_nonce, created_at, expires_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&req.holder)
                .bind(req.request_id.as_str())
                .bind(fid)
                .bind(slot)
                .bind(lease_gen)
                .bind(nonce)
                .bind(now)
                .bind(expires)
                .execute(&mut *tx)
                .await
                .map_err(StorageError::from)?;
                tx.commit().await.map_err(StorageError::from)?;
                return Ok(new_grant(
                    req,
                    LeaseRef {
                        feature_id: fid,
                        slot_no: slot,
                        lease_gen,
                        nonce,
                    },
                    utc(now),
                    window_end.map(utc),
                ));
            }
        }
        let mut total = 0i64;
        for &(fid, _) in &valid {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM slots WHERE feature_id = ? AND state = 0")
                    .bind(fid)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StorageError::from)?;
            total += n;
        }
        tx.commit().await.map_err(StorageError::from)?;
        Err(SeatError::NoSeat {
            feature: req.feature.clone(),
            total,
        }
        .into())
    }
}

#[async_trait]
impl SeatStore for SqliteStorage {
    async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        with_retry(|| self.grant_once(req)).await
    }
}
