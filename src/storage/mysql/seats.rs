//! MySQL grants: where a seat is taken. The request id is claimed first,
//! then a free slot is picked with `FOR UPDATE SKIP LOCKED` and moved by a
//! conditional UPDATE; a batch of grants does the same for many requests
//! in one transaction. Written out plainly (not shared with SQLite): the
//! locking is what keeps the invariant here.

use super::*;

// Reads of slots by state name the pick index (feature_id, state,
// expires_at). The pool's connections run with `eq_range_index_dive_limit
// = 1` (mod.rs), so MariaDB plans an equality range such as `feature_id IN
// (…) AND state = 1` from index statistics alone, which cannot see that
// retiring slots are rare: it read every slot of the feature (through the
// primary key, or the whole pick index even when forced to it) to find none
// retiring, in every grant batch (100,000 rows for the bench's feature;
// checkouts fell from ~3,000/s to ~900/s). So the retiring checks ask for
// `state > 0 AND state < 2`: the same slots (states are 0, 1, 2), but not an
// equality range, so the optimizer looks into the index (an index dive)
// and sees there are none. tests/grant_plans.rs counts the rows a grant
// reads.

/// How many seats of `feature` a grant may take, counted over every license
/// of the feature, when a shrink still owes some: free active slots of the
/// licenses whose window is open, less the leases still held on retiring
/// slots (of any license of the feature, also one that no longer lists it,
/// while its window is open: their promises may still run). None when no
/// slot of the feature is retiring (nothing owed; the common case, one
/// cheap index read).
///
/// The retiring rows are locked, so concurrent grants of the feature take
/// turns while a debt exists and each counts what the previous one took.
/// A grant that finds a retiring slot of its own row still swaps the two
/// (`grant_once`), which keeps each row's active count at its license's
/// seats; the count here keeps the sum across rows honest.
async fn seats_to_spare(tx: &mut Tx<'_>, rows: &[FeatureNow]) -> Result<Option<i64>, SeatFailure> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    if !any_retiring(tx, &ids).await? {
        return Ok(None);
    }
    // Retiring leases whose window has not closed may still hold promises.
    let owing: Vec<i64> = rows
        .iter()
        .filter(|r| r.not_expired == 1)
        .map(|r| r.id)
        .collect();
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT feature_id, CAST(slot_no AS SIGNED) FROM slots FORCE INDEX (slots_pick) WHERE state = 1 AND expires_at > NOW(6) AND feature_id IN (",
    );
    push_ids(&mut q, &owing);
    q.push(") ORDER BY feature_id, slot_no FOR UPDATE");
    let owed: Vec<(i64, i64)> = q
        .build_query_as()
        .fetch_all(&mut **tx)
        .await
        .map_err(StorageError::from)?;
    if owed.is_empty() {
        return Ok(None);
    }
    let open: Vec<i64> = rows
        .iter()
        .filter(|r| r.open == 1 && r.seats > 0)
        .map(|r| r.id)
        .collect();
    // Locking, skipping what another transaction holds: a slot an extension
    // in flight is writing (its old expiry may have passed, the new one is
    // not committed yet) must not count as free, and neither may one another
    // grant is taking. Counting too few only refuses a login while a shrink
    // is being paid for.
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT feature_id FROM slots FORCE INDEX (slots_pick) WHERE state = 0 AND (expires_at IS NULL OR expires_at <= NOW(6)) AND feature_id IN (",
    );
    push_ids(&mut q, &open);
    q.push(") FOR UPDATE SKIP LOCKED");
    let free = q
        .build_query_scalar::<i64>()
        .fetch_all(&mut **tx)
        .await
        .map_err(StorageError::from)?
        .len() as i64;
    Ok(Some(free - owed.len() as i64))
}

/// `?, ?, …` for `ids`; a lone 0 (no feature has id 0) when there are none,
/// so `IN (…)` stays valid SQL.
fn push_ids(q: &mut QueryBuilder<'_, MySql>, ids: &[i64]) {
    let mut sep = q.separated(", ");
    sep.push_bind(0i64);
    for id in ids {
        sep.push_bind(*id);
    }
}

/// Whether any slot of the feature rows `ids` is retiring: one index read
/// per row (the pick index leads with feature_id, state).
async fn any_retiring(tx: &mut Tx<'_>, ids: &[i64]) -> Result<bool> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT EXISTS (SELECT 1 FROM slots FORCE INDEX (slots_pick) WHERE state > 0 AND state < 2 AND feature_id IN (",
    );
    push_ids(&mut q, ids);
    q.push("))");
    Ok(q.build_query_scalar::<i64>().fetch_one(&mut **tx).await? != 0)
}

/// Whether a slot of `fids` looks free to a plain read (no lock, the latest
/// committed rows). A `SKIP LOCKED` pick that found nothing passes over
/// slots other transactions hold: one another grant is taking, one an
/// extension is renewing, and also a free slot a statement holds for an
/// instant (an extension or release whose WHERE no longer matches it locks
/// the row while it checks). Only the last would be a wrong "no seat", so
/// when this finds a free-looking slot the pick is tried again shortly
/// (`SKIPPED_PICK_RETRIES`); a full feature costs this one index read.
async fn free_looking(tx: &mut Tx<'_>, fids: &[i64]) -> Result<bool> {
    for &fid in fids {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM slots FORCE INDEX (slots_pick)
             WHERE feature_id = ? AND state = 0 AND (expires_at IS NULL OR expires_at <= NOW(6)) LIMIT 1",
        )
        .bind(fid)
        .fetch_optional(&mut **tx)
        .await?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How often a grant (or a batch of grants) that found no unlocked free slot
/// while one looked free picks again, and how long it waits first
/// (doubling): 2 + 4 + 8 ms at most per transaction.
const SKIPPED_PICK_RETRIES: u32 = 3;
const SKIPPED_PICK_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// One feature row of a name, judged by the database clock: `open` (the
/// license window is open), `not_expired` (its window has not ended).
#[derive(sqlx::FromRow)]
struct FeatureNow {
    id: i64,
    name: String,
    seats: i64,
    open: i64,
    not_expired: i64,
    expires_at: Option<NaiveDateTime>,
}

/// Every row of a feature name, judged by the database clock, under a shared
/// lock, as every grant reads its feature's rows: a license apply (which locks its feature rows for update)
/// then waits for the grants in flight, and they for it, so a grant never
/// acts on rows (seats, retiring slots, window) that an apply changed while
/// it ran: its shrink and its live-lease check see every grant before it,
/// and grants after it see its rows.
const FEATURES_NOW_LOCKED_SQL: &str = "SELECT id, name, CAST(seats AS SIGNED) AS seats,
        CAST((not_before IS NULL OR not_before <= NOW(6)) AND (expires_at IS NULL OR expires_at > NOW(6)) AS SIGNED) AS open,
        CAST(expires_at IS NULL OR expires_at > NOW(6) AS SIGNED) AS not_expired, expires_at
     FROM features WHERE BINARY name = ? ORDER BY id LOCK IN SHARE MODE";

/// Retires a slot in state `from` that nobody holds (free or expired).
async fn retire_unheld(
    tx: &mut Tx<'_>,
    feature_id: i64,
    slot_no: i64,
    from: SlotState,
    now: NaiveDateTime,
) -> Result<(), SeatFailure> {
    sqlx::query(
        "UPDATE slots SET state = 2 WHERE feature_id = ? AND slot_no = ? AND state = ?
         AND (expires_at IS NULL OR expires_at <= ?)",
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

impl MySqlStorage {
    /// Answers a request id seen before with its grant, but only while
    /// that lease is still held: a resent login whose lease ended (released,
    /// expired, force-released, re-granted) gets [`SeatError::LeaseEnded`],
    /// never "granted".
    async fn replay(
        &self,
        tx: &mut Tx<'_>,
        req: &GrantRequest,
    ) -> Result<Option<Grant>, SeatFailure> {
        let row: Option<(i64, i64, i64, i64, NaiveDateTime, String)> = sqlx::query_as(
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
        let (now, read) = read_slots(&mut **tx, std::slice::from_ref(&key)).await?;
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

    /// One grant transaction: claims the request id first, then takes a free
    /// or expired active slot (`FOR UPDATE SKIP LOCKED`) with an UPDATE that
    /// checks the slot's own state and raises its `lease_gen`.
    async fn grant_once(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        let mut tx = self.pool.begin().await.map_err(StorageError::from)?;
        if let Some(g) = self.replay(&mut tx, req).await? {
            tx.commit().await.map_err(StorageError::from)?;
            return Ok(g);
        }
        // Every row of the feature: those of licenses that dropped it (seats
        // 0) grant nothing but may still owe seats (`seats_to_spare`).
        let rows: Vec<FeatureNow> = sqlx::query_as(FEATURES_NOW_LOCKED_SQL)
            .bind(&req.feature)
            .fetch_all(&mut *tx)
            .await
            .map_err(StorageError::from)?;
        let features: Vec<(i64, i64, Option<NaiveDateTime>)> = rows
            .iter()
            .filter(|r| r.seats > 0)
            .map(|r| (r.id, r.open, r.expires_at))
            .collect();
        if features.is_empty() {
            return Err(SeatError::UnknownFeature(req.feature.clone()).into());
        }
        let valid: Vec<(i64, Option<NaiveDateTime>)> = features
            .iter()
            .filter(|f| f.1 == 1)
            .map(|f| (f.0, f.2))
            .collect();
        if valid.is_empty() {
            return Err(SeatError::Expired(req.feature.clone()).into());
        }
        // Claim the request id before touching any slot: a concurrent retry of
        // the same request blocks on this row until we commit, then gets a
        // duplicate key and answers with our grant. Without the claim it would
        // skip the slot we locked and could answer "no seat".
        sqlx::query(
            "INSERT INTO grant_requests (holder, request_id, feature_id, slot_no, lease_gen, created_at, expires_at)
             VALUES (?, ?, 0, -1, 0, NOW(6), NOW(6))",
        )
        .bind(&req.holder)
        .bind(req.request_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StorageError::from)?;
        // Seats still owed by a shrink (of any license of this feature) come
        // first: with nothing to spare, no slot is even looked at.
        let spare = seats_to_spare(&mut tx, &rows).await?;
        let candidates: &[(i64, _)] = if spare.is_some_and(|n| n <= 0) {
            &[]
        } else {
            &valid
        };
        let mut skipped_retries = 0;
        'pick: loop {
            for &(fid, window_end) in candidates {
                // Bounded: each pass either grants, or retires one retiring slot.
                // The free slot comes from the pick index (never used first, then
                // the longest free): one index entry read, however many seats are
                // held. Ordering by slot number would step over every live lease.
                for _ in 0..(MAX_SEATS_PASSES) {
                    let cand: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, lease_gen FROM slots FORCE INDEX (slots_pick)
                     WHERE feature_id = ? AND state = 0 AND (expires_at IS NULL OR expires_at <= NOW(6))
                     ORDER BY expires_at, slot_no LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .bind(fid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StorageError::from)?;
                    let Some((slot, gen_before)) = cand else {
                        break;
                    };
                    // Read the clock only now that the slot is locked: a release we
                    // reclaim committed before this, so the new lease starts after it.
                    let now = db_now(&mut tx).await?;
                    let expires = add(now, req.hold);
                    let retiring: Option<(i64, i64)> = sqlx::query_as(
                    // Any retiring slot, found through the pick index (only
                    // retiring rows are examined, so only they are locked;
                    // ordering by slot number walked the primary key and
                    // locked every row on the way, deadlocking concurrent
                    // grants).
                    "SELECT slot_no, CAST(expires_at IS NOT NULL AND expires_at > ? AS SIGNED) FROM slots FORCE INDEX (slots_pick)
                     WHERE feature_id = ? AND state = 1 ORDER BY expires_at, slot_no LIMIT 1 FOR UPDATE",
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
                            sqlx::query("UPDATE slots SET state = 0 WHERE feature_id = ? AND slot_no = ? AND state = 1")
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
                    "UPDATE slots SET lease_gen = lease_gen + 1, lease_nonce = ?, promise_ms = ?, holder = ?,
                            client_info = ?, request_id = ?, granted_by = ?, granted_at = ?, expires_at = ?
                     WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND state = 0
                       AND (expires_at IS NULL OR expires_at <= ?)",
                )
                .bind(nonce)
                .bind(millis(req.promise))
                .bind(&req.holder)
                .bind(&req.client_info)
                .bind(req.request_id.as_str())
                .bind(&req.instance_id)
                .bind(now)
                .bind(expires)
                .bind(fid)
                .bind(slot)
                .bind(gen_before)
                .bind(now)
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
                    "UPDATE grant_requests SET feature_id = ?, slot_no = ?, lease_gen = ?, lease_nonce = ?,
                            created_at = ?, expires_at = ?
                     WHERE holder = ? AND request_id = ?",
                )
                .bind(fid)
                .bind(slot)
                .bind(lease_gen)
                .bind(nonce)
                .bind(now)
                .bind(expires)
                .bind(&req.holder)
                .bind(req.request_id.as_str())
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
            let fids: Vec<i64> = candidates.iter().map(|c| c.0).collect();
            if skipped_retries < SKIPPED_PICK_RETRIES
                && !fids.is_empty()
                && free_looking(&mut tx, &fids).await?
            {
                tokio::time::sleep(SKIPPED_PICK_WAIT * 2u32.pow(skipped_retries)).await;
                skipped_retries += 1;
                continue 'pick;
            }
            break;
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
        // No seat: give the request id back, keep any retirements done above.
        sqlx::query("DELETE FROM grant_requests WHERE holder = ? AND request_id = ?")
            .bind(&req.holder)
            .bind(req.request_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StorageError::from)?;
        tx.commit().await.map_err(StorageError::from)?;
        Err(SeatError::NoSeat {
            feature: req.feature.clone(),
            total,
        }
        .into())
    }

    /// One transaction for many grants: claim every request id, then per
    /// feature lock up to k free slots with one `SKIP LOCKED` read and take
    /// them with one UPDATE whose WHERE still names each slot's `lease_gen`.
    /// `None` marks a request to grant alone afterwards (a request id that is
    /// already claimed, a feature with retiring slots); `Ok(None)` for the
    /// whole batch means "grant every request alone".
    async fn grant_batch_once(
        &self,
        reqs: &[GrantRequest],
    ) -> Result<Option<Vec<Option<Result<Grant, SeatFailure>>>>> {
        let mut tx = self.pool.begin().await?;
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO grant_requests (holder, request_id, feature_id, slot_no, lease_gen, created_at, expires_at) ",
        );
        // Sorted, so concurrent batches wait on each other's claims in order.
        let mut claims: Vec<&GrantRequest> = reqs.iter().collect();
        claims.sort_unstable_by_key(|r| (r.holder.as_str(), r.request_id.as_str()));
        q.push_values(claims, |mut b, r| {
            b.push_bind(&r.holder)
                .push_bind(r.request_id.as_str())
                .push("0, -1, 0, NOW(6), NOW(6)");
        });
        match q.build().execute(&mut *tx).await {
            Ok(_) => {}
            // Some request id is known (a retry): its request must replay.
            Err(e) if is_duplicate_key(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut names: Vec<&str> = reqs.iter().map(|r| r.feature.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // Every row of these features (see `FEATURES_NOW_LOCKED_SQL`), also those of
        // licenses that dropped them, for the retiring check below.
        let mut q = QueryBuilder::<MySql>::new(FEATURES_NOW_LOCKED_SQL.replace(
            "BINARY name = ? ORDER BY id LOCK IN SHARE MODE",
            "BINARY name IN (",
        ));
        let mut sep = q.separated(", ");
        for n in &names {
            sep.push_bind(*n);
        }
        q.push(") ORDER BY id LOCK IN SHARE MODE");
        let all_rows: Vec<FeatureNow> = q.build_query_as().fetch_all(&mut *tx).await?;
        let features: Vec<(i64, String, i64, Option<NaiveDateTime>)> = all_rows
            .iter()
            .filter(|r| r.seats > 0)
            .map(|r| (r.id, r.name.clone(), r.open, r.expires_at))
            .collect();

        let mut out: Vec<Option<Result<Grant, SeatFailure>>> =
            (0..reqs.len()).map(|_| None).collect();
        let mut granted: Vec<(usize, Grant)> = Vec::new();
        for name in names {
            let mut waiting: Vec<usize> = (0..reqs.len())
                .filter(|&i| reqs[i].feature == name)
                .collect();
            let rows: Vec<&(i64, String, i64, Option<NaiveDateTime>)> =
                features.iter().filter(|f| f.1 == name).collect();
            if rows.is_empty() {
                for &i in &waiting {
                    out[i] = Some(Err(SeatError::UnknownFeature(name.to_string()).into()));
                }
                continue;
            }
            let valid: Vec<(i64, Option<NaiveDateTime>)> = rows
                .iter()
                .filter(|f| f.2 == 1)
                .map(|f| (f.0, f.3))
                .collect();
            if valid.is_empty() {
                for &i in &waiting {
                    out[i] = Some(Err(SeatError::Expired(name.to_string()).into()));
                }
                continue;
            }
            let mut alone = false;
            let mut skipped_retries = 0;
            'pick: loop {
                for &(fid, window_end) in &valid {
                    if waiting.is_empty() {
                        break;
                    }
                    // The pick index, as for one grant: never used first, then
                    // the longest free; one index entry read per slot taken.
                    let cands: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, lease_gen FROM slots FORCE INDEX (slots_pick)
                     WHERE feature_id = ? AND state = 0 AND (expires_at IS NULL OR expires_at <= NOW(6))
                     ORDER BY expires_at, slot_no LIMIT ? FOR UPDATE SKIP LOCKED",
                )
                .bind(fid)
                .bind(waiting.len() as i64)
                .fetch_all(&mut *tx)
                .await?;
                    if cands.is_empty() {
                        continue;
                    }
                    // A slot of the feature is retiring (a license shrank): such
                    // grants are made one at a time, which counts what is owed.
                    // The locked slots are ours, so a shrink still to come waits
                    // for this commit and counts these grants.
                    // The clock is read in the same statement, now that the slots
                    // are locked (as for one grant).
                    // Any license of the feature counts: a shrink of one is paid
                    // for before another's free seats are handed out.
                    let mut q = QueryBuilder::<MySql>::new(
                    "SELECT NOW(6), EXISTS (SELECT 1 FROM slots FORCE INDEX (slots_pick) WHERE state > 0 AND state < 2 AND feature_id IN (",
                );
                    let ids: Vec<i64> = all_rows
                        .iter()
                        .filter(|r| r.name == name)
                        .map(|r| r.id)
                        .collect();
                    push_ids(&mut q, &ids);
                    q.push("))");
                    let (now, retiring): (NaiveDateTime, i64) =
                        q.build_query_as().fetch_one(&mut *tx).await?;
                    if retiring != 0 {
                        alone = true;
                        break;
                    }
                    let takers: Vec<usize> = waiting.drain(..cands.len()).collect();
                    let nonces: Vec<i64> = takers.iter().map(|_| LeaseRef::new_nonce()).collect();
                    // ((slot, lease_gen before), request), nonce
                    type Taker<'r> = ((&'r (i64, i64), &'r GrantRequest), i64);
                    let pairs: Vec<Taker<'_>> = cands
                        .iter()
                        .zip(takers.iter().map(|&i| &reqs[i]))
                        .zip(nonces.iter().copied())
                        .collect();
                    let mut q = QueryBuilder::<MySql>::new(
                    "UPDATE slots FORCE INDEX (PRIMARY) SET lease_gen = lease_gen + 1, granted_at = ",
                );
                    q.push_bind(now);
                    for (col, value) in [
                        ("holder", 0),
                        ("client_info", 1),
                        ("request_id", 2),
                        ("granted_by", 3),
                        ("expires_at", 4),
                        ("lease_nonce", 5),
                        ("promise_ms", 6),
                    ] {
                        q.push(format!(", {col} = CASE slot_no"));
                        for (((slot, _), r), nonce) in &pairs {
                            q.push(" WHEN ").push_bind(*slot).push(" THEN ");
                            match value {
                                0 => q.push_bind(r.holder.as_str()),
                                1 => q.push_bind(r.client_info.as_str()),
                                2 => q.push_bind(r.request_id.as_str()),
                                3 => q.push_bind(r.instance_id.as_str()),
                                4 => q.push_bind(add(now, r.hold)),
                                5 => q.push_bind(*nonce),
                                _ => q.push_bind(millis(r.promise)),
                            };
                        }
                        q.push(" END");
                    }
                    q.push(" WHERE feature_id = ")
                        .push_bind(fid)
                        .push(" AND state = 0 AND (expires_at IS NULL OR expires_at <= ")
                        .push_bind(now)
                        .push(") AND (");
                    for (i, (((slot, gen), _), _)) in pairs.iter().enumerate() {
                        q.push(if i == 0 { "(" } else { " OR (" })
                            .push("slot_no = ")
                            .push_bind(*slot)
                            .push(" AND lease_gen = ")
                            .push_bind(*gen)
                            .push(")");
                    }
                    q.push(")");
                    let r = q.build().execute(&mut *tx).await?;
                    if r.rows_affected() as usize != pairs.len() {
                        // Cannot happen with the rows locked; never guess.
                        tracing::warn!(
                            fid,
                            "a batched grant matched fewer slots than it locked; granting alone"
                        );
                        return Ok(None);
                    }
                    for ((&i, (slot, gen)), nonce) in takers.iter().zip(&cands).zip(nonces) {
                        let lease = LeaseRef {
                            feature_id: fid,
                            slot_no: *slot,
                            lease_gen: gen + 1,
                            nonce,
                        };
                        granted
                            .push((i, new_grant(&reqs[i], lease, utc(now), window_end.map(utc))));
                    }
                }
                // A free-looking slot the pick skipped: the batch picks again for
                // those left (`free_looking`), at most 14 ms per batch whatever
                // holds the slot and however many are waiting.
                if !alone && !waiting.is_empty() && skipped_retries < SKIPPED_PICK_RETRIES {
                    let fids: Vec<i64> = valid.iter().map(|v| v.0).collect();
                    if free_looking(&mut tx, &fids).await? {
                        tokio::time::sleep(SKIPPED_PICK_WAIT * 2u32.pow(skipped_retries)).await;
                        skipped_retries += 1;
                        continue 'pick;
                    }
                }
                break;
            }
            if alone || waiting.is_empty() {
                continue;
            }
            let mut q = QueryBuilder::<MySql>::new(
                "SELECT COUNT(*) FROM slots WHERE state = 0 AND feature_id IN (",
            );
            let mut sep = q.separated(", ");
            for (fid, _) in &valid {
                sep.push_bind(*fid);
            }
            q.push(")");
            let total: i64 = q.build_query_scalar().fetch_one(&mut *tx).await?;
            for i in waiting.drain(..) {
                out[i] = Some(Err(SeatError::NoSeat {
                    feature: name.to_string(),
                    total,
                }
                .into()));
            }
        }
        if !granted.is_empty() {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO grant_requests (holder, request_id, feature_id, slot_no, lease_gen, lease_nonce, created_at, expires_at) ",
            );
            q.push_values(&granted, |mut b, (i, g)| {
                b.push_bind(&reqs[*i].holder)
                    .push_bind(reqs[*i].request_id.as_str())
                    .push_bind(g.lease.feature_id)
                    .push_bind(g.lease.slot_no)
                    .push_bind(g.lease.lease_gen)
                    .push_bind(g.lease.nonce)
                    .push_bind(naive(g.granted_at))
                    .push_bind(naive(g.expires_at));
            });
            q.push(
                " ON DUPLICATE KEY UPDATE feature_id = VALUES(feature_id), slot_no = VALUES(slot_no),
                  lease_gen = VALUES(lease_gen), lease_nonce = VALUES(lease_nonce), created_at = VALUES(created_at),
                  expires_at = VALUES(expires_at)",
            );
            q.build().execute(&mut *tx).await?;
        }
        // Requests without a grant give their request id back (those to be
        // granted alone claim it again).
        let mut has_grant = vec![false; reqs.len()];
        for (i, _) in &granted {
            has_grant[*i] = true;
        }
        let unclaimed: Vec<usize> = (0..reqs.len()).filter(|&i| !has_grant[i]).collect();
        if !unclaimed.is_empty() {
            let mut q = QueryBuilder::<MySql>::new("DELETE FROM grant_requests WHERE ");
            for (n, &i) in unclaimed.iter().enumerate() {
                q.push(if n == 0 { "(" } else { " OR (" })
                    .push("holder = ")
                    .push_bind(&reqs[i].holder)
                    .push(" AND request_id = ")
                    .push_bind(reqs[i].request_id.as_str())
                    .push(")");
            }
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for (i, g) in granted {
            out[i] = Some(Ok(g));
        }
        Ok(Some(out))
    }
}

#[async_trait]
impl SeatStore for MySqlStorage {
    async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        // A duplicate request id means a concurrent retry of the same request
        // won the race: run again and answer with its grant.
        let mut attempt = 0;
        loop {
            match with_retry(|| self.grant_once(req)).await {
                Err(SeatFailure::Storage(StorageError::Database(e)))
                    if is_duplicate_key(&e) && attempt < 3 =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    async fn grant_batch(&self, reqs: &[GrantRequest]) -> Vec<Result<Grant, SeatFailure>> {
        let distinct = {
            let mut ids: Vec<(&str, &str)> = reqs
                .iter()
                .map(|r| (r.holder.as_str(), r.request_id.as_str()))
                .collect();
            ids.sort_unstable();
            ids.windows(2).all(|w| w[0] != w[1])
        };
        let batched = if reqs.len() > 1 && distinct {
            match with_retry(|| self.grant_batch_once(reqs)).await {
                Ok(Some(out)) => out,
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, grants = reqs.len(), "batched grant failed; granting alone");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        // Anything the batch did not answer is granted alone (replaying a
        // retried request id, or swapping retiring slots).
        let mut batched = batched.into_iter();
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(match batched.next().flatten() {
                Some(r) => r,
                None => self.grant(req).await,
            });
        }
        out
    }
}
