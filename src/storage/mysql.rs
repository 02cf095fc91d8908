//! MySQL / MariaDB backend: the shared store of an active-active cluster.
//!
//! Sessions run at READ COMMITTED with UTC time; grants pick a slot with
//! `SELECT … FOR UPDATE SKIP LOCKED` so concurrent grants on several
//! instances never wait on each other's candidate row, then move it with a
//! conditional UPDATE. sqlx always sets CLIENT_FOUND_ROWS, so "rows affected"
//! counts matched rows: 1 means the slot was in the state we required.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{Executor, MySql, QueryBuilder, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use super::*;
use crate::domain::seats::CLOCK_MARGIN;

/// Leases per renewal statement (4 placeholders each, far below the limit).
const RENEW_CHUNK: usize = 1024;

pub struct MySqlStorage {
    pool: MySqlPool,
    opts: MySqlConnectOptions,
    /// A connection of its own for [`Storage::probe`], outside the pool, so
    /// the probe never waits behind requests for a pooled connection.
    probe: tokio::sync::Mutex<Option<sqlx::MySqlConnection>>,
}

type Tx<'a> = Transaction<'a, MySql>;

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

fn add(t: NaiveDateTime, d: Duration) -> NaiveDateTime {
    t + chrono::Duration::microseconds(micros(d))
}

async fn db_now(tx: &mut Tx<'_>) -> Result<NaiveDateTime> {
    Ok(sqlx::query_scalar("SELECT NOW(6)")
        .fetch_one(&mut **tx)
        .await?)
}

/// Appends `(feature_id = ? AND slot_no = ? AND lease_gen = ? AND
/// lease_nonce = ? AND holder = ?) OR …`, one per lease: primary-key
/// equalities, because MariaDB turns a row-value IN list of one tuple into a
/// full index scan, which this never is.
fn push_held_leases<'a>(
    q: &mut QueryBuilder<'a, MySql>,
    leases: impl Iterator<Item = HeldLease<'a>>,
) {
    for (i, (f, s, g, n, h)) in leases.enumerate() {
        q.push(if i == 0 { "(" } else { " OR (" })
            .push("feature_id = ")
            .push_bind(f)
            .push(" AND slot_no = ")
            .push_bind(s)
            .push(" AND lease_gen = ")
            .push_bind(g)
            .push(" AND lease_nonce = ")
            .push_bind(n)
            .push(" AND holder = ")
            .push_bind(h)
            .push(")");
    }
}

/// `items`, with the last one repeated up to the next of a few sizes (1, 2,
/// 4, …, 1024): a statement of n conditions is prepared once per connection
/// and then only executed, instead of each batch size preparing its own
/// statement (measured: most of MariaDB's CPU on heartbeats went to
/// preparing). Repeated conditions change no answer.
fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let size = items
        .len()
        .max(1)
        .next_power_of_two()
        .min(RENEW_CHUNK.max(items.len()));
    let last = items.last();
    items
        .iter()
        .chain(std::iter::repeat_n(last, size - items.len()).flatten())
}

type SlotRow = (
    NaiveDateTime,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    Option<NaiveDateTime>,
    i64,
    String,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

/// Reads the slot rows that `leases` name, by primary key, in one statement
/// without locks, with the database clock of that statement. A lease's row
/// is judged by [`SlotRead::judge`].
async fn read_slots<'c, E>(
    conn: E,
    leases: &[HeldLease<'_>],
) -> Result<(DateTime<Utc>, HashMap<(i64, i64), SlotRead>)>
where
    E: Executor<'c, Database = MySql>,
{
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT NOW(6), s.feature_id, CAST(s.slot_no AS SIGNED), s.lease_gen, s.lease_nonce, s.holder,
                CAST(s.state AS SIGNED), s.expires_at, CAST(s.promise_ms AS SIGNED), f.name, f.not_before, f.expires_at
         FROM slots s FORCE INDEX (PRIMARY) JOIN features f ON f.id = s.feature_id WHERE ",
    );
    for (i, (f, s, ..)) in padded(leases).enumerate() {
        q.push(if i == 0 { "(" } else { " OR (" })
            .push("s.feature_id = ")
            .push_bind(*f)
            .push(" AND s.slot_no = ")
            .push_bind(*s)
            .push(")");
    }
    let rows: Vec<SlotRow> = q.build_query_as().fetch_all(conn).await?;
    let now = rows.first().map_or_else(Utc::now, |r| utc(r.0));
    let map = rows
        .into_iter()
        .map(|r| {
            (
                (r.1, r.2),
                SlotRead {
                    lease_gen: r.3,
                    nonce: r.4,
                    holder: r.5,
                    state: r.6,
                    expires_at: r.7.map(utc),
                    promise_ms: r.8,
                    feature: r.9,
                    not_before: r.10.map(utc),
                    window_end: r.11.map(utc),
                },
            )
        })
        .collect();
    Ok((now, map))
}

impl MySqlStorage {
    /// Connects; `url` is `mysql://user:pass@host:port/database`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let opts = MySqlConnectOptions::from_str(url)
            .map_err(|e| {
                StorageError::Connect(format!("database_url is not a valid MySQL URL: {e}"))
            })?
            .timezone(Some("+00:00".to_string()));
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            // Well under a client's request timeout (5 s): a request caught
            // by a database outage (before the probe closes the gate) hears
            // "database unavailable" from this instance instead of timing out.
            .acquire_timeout(Duration::from_secs(1))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // A row lock held by a stalled instance (SIGSTOP, a VM
                    // paused) must not stall everyone else: waiters give up
                    // after 2 s (and the statement is retried once), and the
                    // stalled transaction itself is rolled back once it has
                    // been idle for 5 s (MariaDB 10.3+), which frees its
                    // seat. Our transactions last milliseconds.
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    conn.execute("SET SESSION innodb_lock_wait_timeout = 2")
                        .await?;
                    // Batched reads name up to a thousand primary keys; every
                    // one is an exact key, so estimating each range with an
                    // index dive (the default below 200 ranges) is wasted
                    // work: statistics are enough.
                    conn.execute("SET SESSION eq_range_index_dive_limit = 1")
                        .await?;
                    if let Err(e) = conn.execute("SET SESSION idle_transaction_timeout = 5").await {
                        tracing::debug!(error = %e, "this server has no idle_transaction_timeout (MySQL): a stalled instance keeps its row locks until wait_timeout");
                    }
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await
            .map_err(|e| StorageError::Connect(describe_connect_error(&e)))?;
        Ok(MySqlStorage {
            pool,
            opts,
            probe: tokio::sync::Mutex::new(None),
        })
    }

    /// Answers a request id seen before with its grant, but only while
    /// that lease is still held: a resent login whose lease ended (released,
    /// expired, force-released, re-granted) gets [`SeatError::LeaseEnded`],
    /// never "granted".
    async fn replay(
        &self,
        tx: &mut Tx<'_>,
        req: &GrantRequest,
    ) -> Result<Option<Grant>, SeatError> {
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
            return Err(SeatError::RequestIdReused(req.request_id.to_string()));
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
            _ => Err(SeatError::LeaseEnded(lease)),
        }
    }

    async fn grant_once(&self, req: &GrantRequest) -> Result<Grant, SeatError> {
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
            return Err(SeatError::UnknownFeature(req.feature.clone()));
        }
        let valid: Vec<(i64, Option<NaiveDateTime>)> = features
            .iter()
            .filter(|f| f.1 == 1)
            .map(|f| (f.0, f.2))
            .collect();
        if valid.is_empty() {
            return Err(SeatError::Expired(req.feature.clone()));
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
        for &(fid, window_end) in candidates {
            // Bounded: each pass either grants, or retires one retiring slot.
            // The free slot comes from the pick index (never used first, then
            // the longest free): one index entry read, however many seats are
            // held. Ordering by slot number would step over every live lease.
            for _ in 0..(MAX_SEATS_PASSES) {
                let cand: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, lease_gen FROM slots
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
                    "SELECT slot_no, CAST(expires_at IS NOT NULL AND expires_at > ? AS SIGNED) FROM slots
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
        })
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
    ) -> Result<Option<Vec<Option<Result<Grant, SeatError>>>>> {
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

        let mut out: Vec<Option<Result<Grant, SeatError>>> =
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
                    out[i] = Some(Err(SeatError::UnknownFeature(name.to_string())));
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
                    out[i] = Some(Err(SeatError::Expired(name.to_string())));
                }
                continue;
            }
            let mut alone = false;
            for &(fid, window_end) in &valid {
                if waiting.is_empty() {
                    break;
                }
                // The pick index, as for one grant: never used first, then
                // the longest free; one index entry read per slot taken.
                let cands: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT slot_no, lease_gen FROM slots
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
                    "SELECT NOW(6), EXISTS (SELECT 1 FROM slots WHERE state = 1 AND feature_id IN (",
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
                    granted.push((i, new_grant(&reqs[i], lease, utc(now), window_end.map(utc))));
                }
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
                }));
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

    async fn resize(
        &self,
        tx: &mut Tx<'_>,
        feature_id: i64,
        target: i64,
        now: NaiveDateTime,
    ) -> Result<()> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT slot_no, state, CAST(expires_at IS NOT NULL AND expires_at > ? AS SIGNED)
             FROM slots WHERE feature_id = ? ORDER BY slot_no FOR UPDATE",
        )
        .bind(now)
        .bind(feature_id)
        .fetch_all(&mut **tx)
        .await?;
        let plan = plan_resize(&slot_views(feature_id, &rows)?, target);
        for (slot_no, from, to) in plan.changes {
            sqlx::query(
                "UPDATE slots SET state = ? WHERE feature_id = ? AND slot_no = ? AND state = ?",
            )
            .bind(to.stored())
            .bind(feature_id)
            .bind(slot_no)
            .bind(from.stored())
            .execute(&mut **tx)
            .await?;
        }
        for chunk in plan.inserts.chunks(500) {
            let mut qb: QueryBuilder<MySql> =
                QueryBuilder::new("INSERT INTO slots (feature_id, slot_no) ");
            qb.push_values(chunk, |mut b, slot_no| {
                b.push_bind(feature_id).push_bind(*slot_no);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

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

    /// First step of a force release: the lease ends (no holder), but the
    /// slot keeps its expiry, so nobody is granted it yet.
    async fn revoke_once(&self, lease: LeaseRef) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
             WHERE feature_id = ? AND slot_no = ? AND lease_gen = ? AND lease_nonce = ?
               AND holder IS NOT NULL AND state IN (0, 1) AND expires_at > NOW(6)",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Second step, in a statement that starts after the first committed:
    /// every promise given from a read before that commit ends by this
    /// statement's clock plus the lease's cap (and the clock margin).
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

    async fn apply_once(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        let mut tx = self.pool.begin().await?;
        let now = db_now(&mut tx).await?;
        let existing: Option<(i64, String)> =
            sqlx::query_as("SELECT serial, digest FROM licenses WHERE license_id = ? FOR UPDATE")
                .bind(&lic.license_id)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = match existing {
            // Same file: nothing to store, but the slots are reconciled below, which
            // repairs seat rows edited outside floatlm.
            Some((_, digest)) if digest == lic.digest && !lic.repair => ApplyOutcome::Unchanged,
            Some((serial, _)) => {
                // A repair rewrites the row of the same serial (its sealed
                // blob or digest was damaged); anything else must be newer.
                if !lic.repair {
                    check_serial(&lic.license_id, serial, lic.serial)?;
                }
                sqlx::query(
                    "UPDATE licenses SET serial = ?, customer = ?, vendor_key_id = ?, digest = ?, sealed = ?, applied_at = ?
                     WHERE license_id = ?",
                )
                .bind(lic.serial)
                .bind(&lic.customer)
                .bind(&lic.vendor_key_id)
                .bind(&lic.digest)
                .bind(&lic.sealed)
                .bind(now)
                .bind(&lic.license_id)
                .execute(&mut *tx)
                .await?;
                if lic.repair {
                    ApplyOutcome::Repaired
                } else {
                    ApplyOutcome::Replaced {
                        previous_serial: serial,
                    }
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO licenses (license_id, serial, customer, vendor_key_id, digest, sealed, applied_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&lic.license_id)
                .bind(lic.serial)
                .bind(&lic.customer)
                .bind(&lic.vendor_key_id)
                .bind(&lic.digest)
                .bind(&lic.sealed)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                ApplyOutcome::Created
            }
        };
        let old: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, name, CAST((not_before IS NULL OR not_before <= ?) AND (expires_at IS NULL OR expires_at > ?) AS SIGNED)
             FROM features WHERE license_id = ? ORDER BY id FOR UPDATE",
        )
        .bind(now)
        .bind(now)
        .bind(&lic.license_id)
        .fetch_all(&mut *tx)
        .await?;
        for f in &lic.features {
            let nb = f.not_before.map(naive);
            let ex = f.expires.map(naive);
            let id = match old.iter().find(|(_, n, _)| *n == f.name) {
                Some((id, _, open)) => {
                    let longest: Option<i64> = sqlx::query_scalar(
                        "SELECT CAST(MAX(promise_ms) AS SIGNED) FROM slots
                         WHERE feature_id = ? AND state IN (0, 1) AND expires_at > ?",
                    )
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    check_window_change(
                        &lic.license_id,
                        &f.name,
                        utc(now),
                        *open == 1,
                        (f.not_before, f.expires),
                        longest,
                    )?;
                    sqlx::query("UPDATE features SET seats = ?, version = ?, not_before = ?, expires_at = ? WHERE id = ?")
                        .bind(f.seats as i64)
                        .bind(&f.version)
                        .bind(nb)
                        .bind(ex)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    *id
                }
                None => sqlx::query(
                    "INSERT INTO features (license_id, name, seats, version, not_before, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&lic.license_id)
                .bind(&f.name)
                .bind(f.seats as i64)
                .bind(&f.version)
                .bind(nb)
                .bind(ex)
                .execute(&mut *tx)
                .await?
                .last_insert_id() as i64,
            };
            self.resize(&mut tx, id, f.seats as i64, now).await?;
        }
        for (id, name, _) in &old {
            if !lic.features.iter().any(|f| &f.name == name) {
                sqlx::query("UPDATE features SET seats = 0 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.resize(&mut tx, *id, 0, now).await?;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

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
async fn seats_to_spare(tx: &mut Tx<'_>, rows: &[FeatureNow]) -> Result<Option<i64>, SeatError> {
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
        "SELECT feature_id, CAST(slot_no AS SIGNED) FROM slots WHERE state = 1 AND expires_at > NOW(6) AND feature_id IN (",
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
        "SELECT feature_id FROM slots WHERE state = 0 AND (expires_at IS NULL OR expires_at <= NOW(6)) AND feature_id IN (",
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
        "SELECT EXISTS (SELECT 1 FROM slots WHERE state = 1 AND feature_id IN (",
    );
    push_ids(&mut q, ids);
    q.push("))");
    Ok(q.build_query_scalar::<i64>().fetch_one(&mut **tx).await? != 0)
}

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
) -> Result<(), SeatError> {
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

type IdentityTuple = (
    String,
    String,
    Vec<u8>,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

fn identity_row(t: IdentityTuple) -> IdentityRow {
    IdentityRow {
        id: t.0,
        name: t.1,
        sealed: t.2,
        created_at: utc(t.3),
        expires_at: t.4.map(utc),
        revoked_at: t.5.map(utc),
    }
}

type TokenTuple = (
    String,
    String,
    String,
    String,
    NaiveDateTime,
    Option<NaiveDateTime>,
);

fn token_row(t: TokenTuple) -> Result<TokenRow> {
    Ok(TokenRow {
        id: t.0,
        name: t.1,
        role: t.2.parse().map_err(StorageError::Conflict)?,
        token_hash: t.3,
        created_at: utc(t.4),
        revoked_at: t.5.map(utc),
    })
}

#[async_trait]
impl Storage for MySqlStorage {
    fn backend(&self) -> Backend {
        Backend::Mysql
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        // Several instances may start at once on a fresh database: one migrates,
        // the others wait here and then find nothing left to do.
        let got: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('floatlm.migrate.', DATABASE()), 120)")
                .fetch_one(&mut *conn)
                .await?;
        if got != Some(1) {
            return Err(StorageError::Conflict(
                "another floatlm instance has held the migration lock for over 120 s; is it stuck?"
                    .into(),
            ));
        }
        // Our named lock is held on `conn`; the migrator takes its own lock too.
        let res = sqlx::migrate!("./migrations/mysql").run(&self.pool).await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('floatlm.migrate.', DATABASE()))")
            .execute(&mut *conn)
            .await?;
        Ok(res?)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe(&self) -> Result<()> {
        use sqlx::Connection;
        let mut conn = self.probe.lock().await;
        if let Some(c) = conn.as_mut() {
            if c.ping().await.is_ok() {
                return Ok(());
            }
        }
        *conn = None;
        let mut c = sqlx::MySqlConnection::connect_with(&self.opts).await?;
        c.ping().await?;
        *conn = Some(c);
        Ok(())
    }

    async fn probe_write(&self, instance_id: &str) -> Result<bool> {
        let mut conn = self.probe.lock().await;
        let Some(c) = conn.as_mut() else {
            return Err(StorageError::Unavailable(
                "no probe connection yet (the reachability probe opens it)".into(),
            ));
        };
        let r = sqlx::query("UPDATE instances SET last_seen = NOW(6) WHERE id = ?")
            .bind(instance_id)
            .execute(&mut *c)
            .await;
        if r.as_ref()
            .is_err_and(|e| !matches!(e, sqlx::Error::Database(_)))
        {
            *conn = None;
        }
        r?;
        Ok(true)
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        let t: NaiveDateTime = sqlx::query_scalar("SELECT NOW(6)")
            .fetch_one(&self.pool)
            .await?;
        Ok(utc(t))
    }

    async fn canaries(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT key_id, sealed FROM keyring_canary ORDER BY key_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn insert_canary(&self, key_id: &str, sealed: &[u8]) -> Result<bool> {
        let r = sqlx::query("INSERT IGNORE INTO keyring_canary (key_id, sealed) VALUES (?, ?)")
            .bind(key_id)
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn retain_canary(&self, keep: &str) -> Result<()> {
        sqlx::query("DELETE FROM keyring_canary WHERE key_id <> ?")
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn replace_canary(&self, key_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let r = sqlx::query("UPDATE keyring_canary SET sealed = ? WHERE key_id = ? AND sealed = ?")
            .bind(new)
            .bind(key_id)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn apply_license(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        // A concurrent first apply of the same license id loses on the primary
        // key; running again sees the winner's row.
        let mut attempt = 0;
        loop {
            match with_patient_retry(|| self.apply_once(lic)).await {
                Err(StorageError::Database(e)) if is_duplicate_key(&e) && attempt < 3 => {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    async fn licenses(&self) -> Result<Vec<StoredLicense>> {
        let rows: Vec<(String, i64, String, String, String, Vec<u8>, NaiveDateTime)> = sqlx::query_as(
            "SELECT license_id, serial, customer, vendor_key_id, digest, sealed, applied_at FROM licenses ORDER BY license_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredLicense {
                license_id: r.0,
                serial: r.1,
                customer: r.2,
                vendor_key_id: r.3,
                digest: r.4,
                sealed: r.5,
                applied_at: utc(r.6),
            })
            .collect())
    }

    async fn feature_rows(&self) -> Result<Vec<FeatureRow>> {
        type Row = (
            i64,
            String,
            String,
            i64,
            Option<String>,
            Option<NaiveDateTime>,
            Option<NaiveDateTime>,
            i64,
            i64,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT f.id, f.license_id, f.name, CAST(f.seats AS SIGNED), f.version, f.not_before, f.expires_at,
                CAST((f.not_before IS NULL OR f.not_before <= NOW(6)) AND (f.expires_at IS NULL OR f.expires_at > NOW(6)) AS SIGNED),
                CAST(COALESCE(SUM(s.state = 0), 0) AS SIGNED),
                CAST(COALESCE(SUM(s.state = 0 AND (s.expires_at IS NULL OR s.expires_at <= NOW(6))), 0) AS SIGNED),
                CAST(COALESCE(SUM(s.state = 1 AND s.expires_at > NOW(6)), 0) AS SIGNED),
                CAST(COALESCE(SUM(s.state IN (0, 1) AND s.expires_at > NOW(6)), 0) AS SIGNED)
             FROM features f LEFT JOIN slots s ON s.feature_id = f.id
             GROUP BY f.id, f.license_id, f.name, f.seats, f.version, f.not_before, f.expires_at
             ORDER BY f.name, f.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FeatureRow {
                id: r.0,
                license_id: r.1,
                name: r.2,
                seats: r.3,
                version: r.4,
                not_before: r.5.map(utc),
                expires_at: r.6.map(utc),
                valid: r.7 == 1,
                active_slots: r.8,
                active_free: r.9,
                retiring_live: r.10,
                used: r.11,
            })
            .collect())
    }

    async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatError> {
        // A duplicate request id means a concurrent retry of the same request
        // won the race: run again and answer with its grant.
        let mut attempt = 0;
        loop {
            match with_retry(|| self.grant_once(req)).await {
                Err(SeatError::Storage(StorageError::Database(e)))
                    if is_duplicate_key(&e) && attempt < 3 =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
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

    async fn grant_batch(&self, reqs: &[GrantRequest]) -> Vec<Result<Grant, SeatError>> {
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

    async fn force_release(&self, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        if !with_retry(|| self.revoke_once(lease)).await? {
            return Ok(None);
        }
        let free_at = with_retry(|| self.bound_revoked(lease)).await?;
        Ok(Some(free_at.unwrap_or_else(Utc::now)))
    }

    async fn quarantine(&self, hold: Duration) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL,
                    expires_at = GREATEST(COALESCE(expires_at, NOW(6)), NOW(6) + INTERVAL ? MICROSECOND)
             WHERE state IN (0, 1)",
        )
        .bind(micros(hold))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        type Row = (
            i64,
            i64,
            i64,
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<NaiveDateTime>,
            NaiveDateTime,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.feature_id, CAST(s.slot_no AS SIGNED), s.lease_gen, s.lease_nonce, f.name, f.license_id, s.holder,
                    s.client_info, s.granted_by, s.granted_at, s.expires_at, CAST(s.state AS SIGNED)
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.state IN (0, 1) AND s.expires_at > NOW(6)
             ORDER BY f.name, s.feature_id, s.slot_no",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| LeaseInfo {
                lease: LeaseRef {
                    feature_id: r.0,
                    slot_no: r.1,
                    lease_gen: r.2,
                    nonce: r.3,
                },
                feature: r.4,
                license_id: r.5,
                revoked: r.6.is_none(),
                holder: r.6.unwrap_or_default(),
                client_info: r.7.unwrap_or_default(),
                granted_by: r.8.unwrap_or_default(),
                granted_at: r.9.map(utc),
                expires_at: utc(r.10),
                retiring: r.11 == SlotState::Retiring.stored(),
            })
            .collect())
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

    async fn insert_identity(&self, row: &IdentityRow) -> Result<()> {
        with_retry(|| async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO identities (id, name, sealed, created_at, expires_at, revoked_at) VALUES (?, ?, ?, NOW(6), ?, NULL)",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.sealed)
            .bind(row.expires_at.map(naive))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    async fn identity(&self, id: &str) -> Result<Option<IdentityRow>> {
        let row: Option<IdentityTuple> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(identity_row))
    }

    async fn identities(&self) -> Result<Vec<IdentityRow>> {
        let rows: Vec<IdentityTuple> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(identity_row).collect())
    }

    async fn revoke_identity(&self, id: &str) -> Result<bool> {
        with_retry(|| async move {
            let mut tx = self.pool.begin().await?;
            let r = sqlx::query(
                "UPDATE identities SET revoked_at = NOW(6) WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok::<_, StorageError>(false);
            }
            // The counter row's lock is held to COMMIT: revisions commit in order.
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO identity_revocations (revision, identity_id, revoked_at)
                 SELECT r.revision, i.id, i.revoked_at FROM identity_revision r, identities i
                 WHERE r.id = 1 AND i.id = ?",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn identity_revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT revision FROM identity_revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn identity_revocations(&self, after: i64) -> Result<Vec<Revocation>> {
        let rows: Vec<(i64, String, NaiveDateTime)> = sqlx::query_as(
            "SELECT revision, identity_id, revoked_at FROM identity_revocations
             WHERE revision > ? ORDER BY revision",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(revision, identity_id, at)| Revocation {
                revision,
                identity_id,
                revoked_at: utc(at),
            })
            .collect())
    }

    async fn insert_token(&self, row: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_first_token(&self, row: &TokenRow) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let got: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('floatlm.first-token.', DATABASE()), 30)")
                .fetch_one(&mut *conn)
                .await?;
        if got != Some(1) {
            return Err(StorageError::Conflict(
                "timed out waiting for the first-token lock".into(),
            ));
        }
        let res = async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens")
                .fetch_one(&mut *conn)
                .await?;
            if n > 0 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, NOW(6))",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(row.role.as_str())
            .bind(&row.token_hash)
            .execute(&mut *conn)
            .await?;
            Ok::<bool, StorageError>(true)
        }
        .await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('floatlm.first-token.', DATABASE()))")
            .execute(&mut *conn)
            .await?;
        res
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<TokenTuple> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(token_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<TokenTuple> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(token_row).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = NOW(6) WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

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
        type Row = (
            String,
            String,
            String,
            String,
            NaiveDateTime,
            NaiveDateTime,
            i64,
            f64,
            i64,
            String,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT i.id, i.address, i.admin_address, i.version, i.started_at, i.last_seen,
                    CAST(i.drain_requested AS SIGNED),
                    CAST(TIMESTAMPDIFF(MICROSECOND, i.last_seen, NOW(6)) / 1000000 AS DOUBLE),
                    CAST((SELECT COUNT(*) FROM slots s WHERE s.granted_by = i.id AND s.state IN (0, 1)
                          AND s.holder IS NOT NULL AND s.expires_at > NOW(6)) AS SIGNED),
                    i.key_ids, i.lease_ttl_ms
             FROM instances i ORDER BY i.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| InstanceRow {
                id: r.0,
                address: r.1,
                admin_address: r.2,
                version: r.3,
                started_at: utc(r.4),
                last_seen: utc(r.5),
                drain_requested: r.6 == 1,
                silent_for_s: r.7,
                leases: r.8,
                key_ids: r.9,
                lease_ttl_ms: r.10,
            })
            .collect())
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

    async fn ticket_keys(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT id, sealed FROM ticket_keys ORDER BY id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn insert_ticket_key(&self, id: i64, sealed: &[u8]) -> Result<bool> {
        let r = sqlx::query("INSERT IGNORE INTO ticket_keys (id, sealed) VALUES (?, ?)")
            .bind(id)
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn purge_ticket_keys(&self, below: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM ticket_keys WHERE id < ?")
            .bind(below)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn sealed_rows(&self) -> Result<Vec<SealedRow>> {
        let mut out = Vec::new();
        let lic: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT license_id, sealed FROM licenses")
            .fetch_all(&self.pool)
            .await?;
        out.extend(lic.into_iter().map(|(row_id, sealed)| SealedRow {
            kind: SealedKind::License,
            row_id,
            sealed,
        }));
        let ids: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM identities")
            .fetch_all(&self.pool)
            .await?;
        out.extend(ids.into_iter().map(|(row_id, sealed)| SealedRow {
            kind: SealedKind::IdentitySecret,
            row_id,
            sealed,
        }));
        let keys: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM ticket_keys")
            .fetch_all(&self.pool)
            .await?;
        out.extend(keys.into_iter().map(|(id, sealed)| SealedRow {
            kind: SealedKind::TicketKey,
            row_id: id.to_string(),
            sealed,
        }));
        Ok(out)
    }

    async fn reseal(&self, kind: SealedKind, row_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let sql = match kind {
            SealedKind::License => {
                "UPDATE licenses SET sealed = ? WHERE license_id = ? AND sealed = ?"
            }
            SealedKind::IdentitySecret => {
                "UPDATE identities SET sealed = ? WHERE id = ? AND sealed = ?"
            }
            SealedKind::TicketKey => {
                "UPDATE ticket_keys SET sealed = ? WHERE id = CAST(? AS SIGNED) AND sealed = ?"
            }
        };
        let r = sqlx::query(sql)
            .bind(new)
            .bind(row_id)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
