//! Embedded SQLite backend: the zero-setup single node.
//!
//! One writer connection serialises every state change (SQLite allows one
//! writer anyway), so no `FOR UPDATE` is needed; a small reader pool serves
//! lists and counts from WAL snapshots. Times are INTEGER microseconds since
//! the epoch, read from SQLite's own clock once per transaction.
//!
//! One file per role, beside the same names under `mysql/`: `seats.rs`
//! (grants), `leases.rs` (checks, extensions, releases), `licenses.rs`,
//! `access.rs`, `cluster.rs`, `keys.rs`; this file opens the database and
//! holds what they share (the clock, the slot read).

mod access;
mod backup;
mod cluster;
mod keys;
mod leases;
mod licenses;
mod seats;
mod usage;

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

/// How this backend stores a time (see [`DbTime`]).
type Time = i64;

type Tx<'a> = Transaction<'a, Sqlite>;

/// Leases per check statement (two placeholders each).
const CHECK_CHUNK: usize = 1000;

const NOW_SQL: &str = "SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

fn utc(t: Time) -> DateTime<Utc> {
    DbTime::utc(t)
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

async fn db_now(tx: &mut Tx<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(NOW_SQL).fetch_one(&mut **tx).await?)
}

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
        "SELECT s.feature_id, s.slot_no, s.lease_gen, s.lease_nonce AS nonce, s.holder, s.state, s.expires_at,
                s.promise_ms, f.name AS feature, f.not_before, f.expires_at AS window_end
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
    let rows: Vec<SlotRecord<Time>> = q.build_query_as().fetch_all(&mut *conn).await?;
    let map = rows.into_iter().map(SlotRecord::into_read).collect();
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
}

#[async_trait]
impl StoreBase for SqliteStorage {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn pool_use(&self) -> Vec<PoolUse> {
        vec![
            PoolUse::of("writer", &self.writer),
            PoolUse::of("reader", &self.reader),
        ]
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
}
