//! Embedded SQLite backend: the zero-setup single node.
//!
//! One writer connection serialises every state change (SQLite allows one
//! writer anyway), so no `FOR UPDATE` is needed; a small reader pool serves
//! lists and counts from WAL snapshots. Times are INTEGER microseconds since
//! the epoch, read from SQLite's own clock once per transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::domain::seats::CLOCK_MARGIN;

pub struct SqliteStorage {
    writer: SqlitePool,
    reader: SqlitePool,
}

type Tx<'a> = Transaction<'a, Sqlite>;

/// Leases per check statement (two placeholders each).
const CHECK_CHUNK: usize = 1000;

const NOW_SQL: &str = "SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

fn utc(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

async fn db_now(tx: &mut Tx<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(NOW_SQL).fetch_one(&mut **tx).await?)
}

type SlotRow = (
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    i64,
    String,
    Option<i64>,
    Option<i64>,
);

/// Reads the slot rows that `leases` name, by primary key, in one statement,
/// with the database clock read just before by the same connection (SQLite
/// may read its clock anew for every row of a statement). A lease's row is
/// judged by [`SlotRead::judge`].
async fn read_slots(
    conn: &mut sqlx::SqliteConnection,
    leases: &[HeldLease<'_>],
) -> Result<(DateTime<Utc>, HashMap<(i64, i64), SlotRead>)> {
    let now: i64 = sqlx::query_scalar(NOW_SQL).fetch_one(&mut *conn).await?;
    let mut q = QueryBuilder::<Sqlite>::new(
        "SELECT s.feature_id, s.slot_no, s.lease_gen, s.lease_nonce, s.holder, s.state, s.expires_at,
                s.promise_ms, f.name, f.not_before, f.expires_at
         FROM slots s JOIN features f ON f.id = s.feature_id WHERE ",
    );
    for (i, (f, s, ..)) in leases.iter().enumerate() {
        q.push(if i == 0 { "(" } else { " OR (" })
            .push("s.feature_id = ")
            .push_bind(*f)
            .push(" AND s.slot_no = ")
            .push_bind(*s)
            .push(")");
    }
    let rows: Vec<SlotRow> = q.build_query_as().fetch_all(&mut *conn).await?;
    let map = rows
        .into_iter()
        .map(|r| {
            (
                (r.0, r.1),
                SlotRead {
                    lease_gen: r.2,
                    nonce: r.3,
                    holder: r.4,
                    state: r.5,
                    expires_at: r.6.map(utc),
                    promise_ms: r.7,
                    feature: r.8,
                    not_before: r.9.map(utc),
                    window_end: r.10.map(utc),
                },
            )
        })
        .collect();
    Ok((utc(now), map))
}

/// Whether an idle connection may be handed out: no transaction left open
/// on it. A statement or COMMIT that fails on a full disk or an I/O error
/// may already have rolled the transaction back inside SQLite; the ROLLBACK
/// that sqlx queues when the `Transaction` drops then fails ("no transaction
/// is active") and sqlx keeps counting the transaction as open, so every
/// later `BEGIN` on the one writer connection was refused ("attempted to
/// call begin_with at non-zero transaction depth") until a restart. Such a
/// connection is closed instead (closing rolls back whatever SQLite still
/// had open) and the pool opens a fresh one in its place.
///
/// Runs as the pools' `before_acquire`: by then the pool has pinged the
/// connection on release and again before acquiring it, and a ping runs
/// after the queued ROLLBACK on the connection's worker, so the depth read
/// here includes that ROLLBACK's outcome.
fn connection_is_clean(conn: &sqlx::SqliteConnection, pool: &str) -> bool {
    if sqlx::Connection::is_in_transaction(conn) {
        tracing::warn!(
            pool,
            "a failed statement left an SQLite connection in a transaction: replacing the connection"
        );
        return false;
    }
    true
}

impl SqliteStorage {
    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a granted seat is on disk before the client hears of it.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let connect_err =
            |e: sqlx::Error| StorageError::Connect(format!("SQLite file {}: {e}", path.display()));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(connection_is_clean(conn, "writer")) })
            })
            .connect_with(opts.clone())
            .await
            .map_err(connect_err)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(connection_is_clean(conn, "reader")) })
            })
            .connect_with(opts.read_only(true))
            .await
            .map_err(connect_err)?;
        Ok(SqliteStorage { writer, reader })
    }

    async fn begin(&self) -> Result<Tx<'static>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Answers a request id seen before with its grant, but only while
    /// that lease is still held (see the MySQL backend).
    async fn replay(
        &self,
        tx: &mut Tx<'_>,
        req: &GrantRequest,
    ) -> Result<Option<Grant>, SeatError> {
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
            return Err(SeatError::RequestIdReused(req.request_id.to_string()));
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
            _ => Err(SeatError::LeaseEnded(lease)),
        }
    }

    async fn grant_once(&self, req: &GrantRequest) -> Result<Grant, SeatError> {
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
            return Err(SeatError::UnknownFeature(req.feature.clone()));
        }
        let valid: Vec<(i64, Option<i64>)> = features
            .iter()
            .filter(|f| f.1 == 1)
            .map(|f| (f.0, f.2))
            .collect();
        if valid.is_empty() {
            return Err(SeatError::Expired(req.feature.clone()));
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
        })
    }

    async fn resize(&self, tx: &mut Tx<'_>, feature_id: i64, target: i64, now: i64) -> Result<()> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT slot_no, state, expires_at IS NOT NULL AND expires_at > ?1
             FROM slots WHERE feature_id = ?2 ORDER BY slot_no",
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
        for chunk in plan.inserts.chunks(400) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO slots (feature_id, slot_no) ");
            qb.push_values(chunk, |mut b, slot_no| {
                b.push_bind(feature_id).push_bind(*slot_no);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn apply_once(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        let mut tx = self.begin().await?;
        let now = db_now(&mut tx).await?;
        let existing: Option<(i64, String)> =
            sqlx::query_as("SELECT serial, digest FROM licenses WHERE license_id = ?")
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
            "SELECT id, name, (not_before IS NULL OR not_before <= ?1) AND (expires_at IS NULL OR expires_at > ?1)
             FROM features WHERE license_id = ?2 ORDER BY id",
        )
        .bind(now)
        .bind(&lic.license_id)
        .fetch_all(&mut *tx)
        .await?;
        for f in &lic.features {
            let nb = f.not_before.map(us);
            let ex = f.expires.map(us);
            let id = match old.iter().find(|(_, n, _)| *n == f.name) {
                Some((id, _, open)) => {
                    let longest: Option<i64> = sqlx::query_scalar(
                        "SELECT MAX(promise_ms) FROM slots
                         WHERE feature_id = ?1 AND state IN (0, 1) AND expires_at > ?2",
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
                .last_insert_rowid(),
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

    /// First step of a force release (see the MySQL backend): the lease ends,
    /// the slot keeps its expiry.
    async fn revoke_once(&self, lease: LeaseRef) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL
             WHERE feature_id = ?1 AND slot_no = ?2 AND lease_gen = ?3 AND lease_nonce = ?4
               AND holder IS NOT NULL AND state IN (0, 1)
               AND expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
        )
        .bind(lease.feature_id)
        .bind(lease.slot_no)
        .bind(lease.lease_gen)
        .bind(lease.nonce)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Second step, after the first committed: a read that saw the lease
    /// before the revocation promised at most the cap past that commit.
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
}

/// Retires a slot in state `from` that nobody holds (free or expired).
async fn retire_unheld(
    tx: &mut Tx<'_>,
    feature_id: i64,
    slot_no: i64,
    from: SlotState,
    now: i64,
) -> Result<(), SeatError> {
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

type IdentityTuple = (String, String, Vec<u8>, i64, Option<i64>, Option<i64>);

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

type TokenTuple = (String, String, String, String, i64, Option<i64>);

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
impl Storage for SqliteStorage {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        // One process owns the file; the writer connection serialises this.
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn probe(&self) -> Result<()> {
        self.ping().await
    }

    async fn probe_write(&self, instance_id: &str) -> Result<bool> {
        // The one writer connection may be busy with a long transaction (a
        // large license applied, keys rotated): that is no fault, and its
        // outcome reaches the gate anyway, so the probe does not queue
        // behind it. With no connection at all (the last one was replaced
        // after a failed write) it opens one.
        let mut conn = match self.writer.try_acquire() {
            Some(c) => c,
            None if self.writer.size() == 0 => self.writer.acquire().await?,
            None => return Ok(false),
        };
        // try_acquire skips the pool's before_acquire check: do it here.
        if !connection_is_clean(&conn, "writer") {
            conn.close_on_drop();
            return Ok(false);
        }
        sqlx::query(
            "UPDATE instances SET last_seen = CAST(unixepoch('subsec') * 1000000 AS INTEGER) WHERE id = ?",
        )
        .bind(instance_id)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        let t: i64 = sqlx::query_scalar(NOW_SQL).fetch_one(&self.reader).await?;
        Ok(utc(t))
    }

    async fn canaries(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT key_id, sealed FROM keyring_canary ORDER BY key_id")
                .fetch_all(&self.writer)
                .await?,
        )
    }

    async fn insert_canary(&self, key_id: &str, sealed: &[u8]) -> Result<bool> {
        let r = sqlx::query(
            "INSERT OR IGNORE INTO keyring_canary (key_id, sealed, created_at)
             VALUES (?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER))",
        )
        .bind(key_id)
        .bind(sealed)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn retain_canary(&self, keep: &str) -> Result<()> {
        sqlx::query("DELETE FROM keyring_canary WHERE key_id <> ?")
            .bind(keep)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn replace_canary(&self, key_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let r = sqlx::query("UPDATE keyring_canary SET sealed = ? WHERE key_id = ? AND sealed = ?")
            .bind(new)
            .bind(key_id)
            .bind(old)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn apply_license(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        with_retry(|| self.apply_once(lic)).await
    }

    async fn licenses(&self) -> Result<Vec<StoredLicense>> {
        let rows: Vec<(String, i64, String, String, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT license_id, serial, customer, vendor_key_id, digest, sealed, applied_at FROM licenses ORDER BY license_id",
        )
        .fetch_all(&self.reader)
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
            Option<i64>,
            Option<i64>,
            i64,
            i64,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "WITH clock(now) AS (SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER))
             SELECT f.id, f.license_id, f.name, f.seats, f.version, f.not_before, f.expires_at,
                (f.not_before IS NULL OR f.not_before <= clock.now) AND (f.expires_at IS NULL OR f.expires_at > clock.now),
                COALESCE(SUM(s.state = 0), 0),
                COALESCE(SUM(s.state = 0 AND (s.expires_at IS NULL OR s.expires_at <= clock.now)), 0),
                COALESCE(SUM(s.state = 1 AND s.expires_at > clock.now), 0),
                COALESCE(SUM(s.state IN (0, 1) AND s.expires_at > clock.now), 0)
             FROM features f CROSS JOIN clock LEFT JOIN slots s ON s.feature_id = f.id
             GROUP BY f.id
             ORDER BY f.name, f.id",
        )
        .fetch_all(&self.reader)
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
        with_retry(|| self.grant_once(req)).await
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
                expires_at = MAX(COALESCE(expires_at, 0), ?1 + ?2)
             WHERE state IN (0, 1)",
        )
        .bind(
            sqlx::query_scalar::<_, i64>(NOW_SQL)
                .fetch_one(&self.writer)
                .await?,
        )
        .bind(micros(hold))
        .execute(&self.writer)
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
            Option<i64>,
            i64,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.feature_id, s.slot_no, s.lease_gen, s.lease_nonce, f.name, f.license_id, s.holder, s.client_info,
                    s.granted_by, s.granted_at, s.expires_at, s.state
             FROM slots s JOIN features f ON f.id = s.feature_id
             WHERE s.state IN (0, 1) AND s.expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             ORDER BY f.name, s.feature_id, s.slot_no",
        )
        .fetch_all(&self.reader)
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

    async fn insert_identity(&self, row: &IdentityRow) -> Result<()> {
        with_retry(|| async move {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO identities (id, name, sealed, created_at, expires_at, revoked_at)
                 VALUES (?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER), ?, NULL)",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.sealed)
            .bind(row.expires_at.map(us))
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
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(identity_row))
    }

    async fn identities(&self) -> Result<Vec<IdentityRow>> {
        let rows: Vec<IdentityTuple> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(identity_row).collect())
    }

    async fn revoke_identity(&self, id: &str) -> Result<bool> {
        with_retry(|| async move {
            let mut tx = self.begin().await?;
            let now = db_now(&mut tx).await?;
            let r = sqlx::query(
                "UPDATE identities SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok::<_, StorageError>(false);
            }
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO identity_revocations (revision, identity_id, revoked_at)
                 SELECT revision, ?, ? FROM identity_revision WHERE id = 1",
            )
            .bind(id)
            .bind(now)
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
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn identity_revocations(&self, after: i64) -> Result<Vec<Revocation>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT revision, identity_id, revoked_at FROM identity_revocations
             WHERE revision > ? ORDER BY revision",
        )
        .bind(after)
        .fetch_all(&self.reader)
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
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at)
             VALUES (?, ?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER))",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn insert_first_token(&self, row: &TokenRow) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at)
             SELECT ?, ?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE NOT EXISTS (SELECT 1 FROM admin_tokens)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<TokenTuple> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.reader)
        .await?;
        row.map(token_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<TokenTuple> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(token_row).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

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
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            f64,
            i64,
            String,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "WITH clock(now) AS (SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER))
             SELECT i.id, i.address, i.admin_address, i.version, i.started_at, i.last_seen, i.drain_requested,
                    (clock.now - i.last_seen) / 1000000.0,
                    (SELECT COUNT(*) FROM slots s WHERE s.granted_by = i.id AND s.state IN (0, 1)
                       AND s.holder IS NOT NULL AND s.expires_at > clock.now),
                    i.key_ids, i.lease_ttl_ms
             FROM instances i CROSS JOIN clock ORDER BY i.id",
        )
        .fetch_all(&self.reader)
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

    async fn ticket_keys(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT id, sealed FROM ticket_keys ORDER BY id")
                .fetch_all(&self.reader)
                .await?,
        )
    }

    async fn insert_ticket_key(&self, id: i64, sealed: &[u8]) -> Result<bool> {
        let r = sqlx::query("INSERT OR IGNORE INTO ticket_keys (id, sealed) VALUES (?, ?)")
            .bind(id)
            .bind(sealed)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn purge_ticket_keys(&self, below: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM ticket_keys WHERE id < ?")
            .bind(below)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected())
    }

    async fn sealed_rows(&self) -> Result<Vec<SealedRow>> {
        let mut out = Vec::new();
        let lic: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT license_id, sealed FROM licenses")
            .fetch_all(&self.writer)
            .await?;
        out.extend(lic.into_iter().map(|(row_id, sealed)| SealedRow {
            kind: SealedKind::License,
            row_id,
            sealed,
        }));
        let ids: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM identities")
            .fetch_all(&self.writer)
            .await?;
        out.extend(ids.into_iter().map(|(row_id, sealed)| SealedRow {
            kind: SealedKind::IdentitySecret,
            row_id,
            sealed,
        }));
        let keys: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM ticket_keys")
            .fetch_all(&self.writer)
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
                "UPDATE ticket_keys SET sealed = ? WHERE id = CAST(? AS INTEGER) AND sealed = ?"
            }
        };
        let r = sqlx::query(sql)
            .bind(new)
            .bind(row_id)
            .bind(old)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
