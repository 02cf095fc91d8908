//! MySQL / MariaDB backend: the shared store of an active-active cluster.
//!
//! Sessions run at READ COMMITTED with UTC time; grants pick a slot with
//! `SELECT … FOR UPDATE SKIP LOCKED` so concurrent grants on several
//! instances never wait on each other's candidate row, then move it with a
//! conditional UPDATE. sqlx always sets CLIENT_FOUND_ROWS, so "rows affected"
//! counts matched rows: 1 means the slot was in the state we required.
//!
//! One file per role, beside the same names under `sqlite/`: `seats.rs`
//! (grants), `leases.rs` (checks, extensions, releases), `licenses.rs`,
//! `access.rs`, `cluster.rs`, `keys.rs`; this file connects and holds what
//! they share (the clock, the batched slot read).

mod access;
mod backup;
mod cluster;
mod keys;
mod leases;
mod licenses;
mod seats;
mod usage;

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
    /// A connection of its own for [`StoreBase::probe`], outside the pool, so
    /// the probe never waits behind requests for a pooled connection.
    probe: tokio::sync::Mutex<Option<sqlx::MySqlConnection>>,
}

/// How this backend stores a time (see [`DbTime`]).
type Time = NaiveDateTime;

type Tx<'a> = Transaction<'a, MySql>;

fn utc(t: Time) -> DateTime<Utc> {
    DbTime::utc(t)
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

/// A slot row of a check, with the clock of the statement that read it.
#[derive(sqlx::FromRow)]
struct ClockedSlot {
    now: Time,
    #[sqlx(flatten)]
    slot: SlotRecord<Time>,
}

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
        "SELECT NOW(6) AS now, s.feature_id, CAST(s.slot_no AS SIGNED) AS slot_no, s.lease_gen,
                s.lease_nonce AS nonce, s.holder, CAST(s.state AS SIGNED) AS state, s.expires_at,
                CAST(s.promise_ms AS SIGNED) AS promise_ms, f.name AS feature, f.not_before,
                f.expires_at AS window_end
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
    let rows: Vec<ClockedSlot> = q.build_query_as().fetch_all(conn).await?;
    let now = rows.first().map_or_else(Utc::now, |r| utc(r.now));
    let map = rows.into_iter().map(|r| r.slot.into_read()).collect();
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
}

#[async_trait]
impl StoreBase for MySqlStorage {
    fn backend(&self) -> Backend {
        Backend::Mysql
    }

    fn pool_use(&self) -> Vec<PoolUse> {
        vec![PoolUse::of("main", &self.pool)]
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
            return Err(StorageError::LockTimeout(
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
}
