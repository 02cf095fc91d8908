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
//! `access.rs`, `cluster.rs`, `keys.rs`; this file reads the node list and
//! what each node says about itself, connects, fails over, migrates and
//! holds what the others share (the clock, the batched slot read).
//!
//! ## Several nodes of one cluster (Galera, Group Replication)
//!
//! `database_url` may name several hosts of one synchronous cluster
//! (`mysql://u:p@h1:3306,h2:3306,h3:3306/db`). The pool talks to one node at
//! a time (the first healthy one at start). Every new connection is checked
//! (`after_connect`): on a Galera node (`wsrep_ready` exists) it must be
//! ready and Synced (`wsrep_local_state` 4), on a Group Replication member
//! ONLINE and writable (the PRIMARY in single-primary mode), else the
//! connection is refused as an outage, and its reads are made causal
//! (`wsrep_sync_wait = 1`, `group_replication_consistency`) so a
//! lease check on one node sees every commit made through another before it
//! (without it, a node could answer from a row another node already
//! changed). The instance's database watch runs [`StoreBase::probe`] every
//! half second: when the current node fails or leaves the primary component,
//! the probe checks the other nodes at once and moves the pool to the first
//! healthy one: new connections go there and every pooled connection to the
//! old node is closed when next acquired (each carries the generation of the
//! node it was opened for). The move happens within [`FAILOVER_BOUND`] of
//! the failure. A single-host URL behaves as before, except that a Galera
//! server gets the same per-connection checks.

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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::membership::Membership;
use super::*;
use crate::domain::seats::CLOCK_MARGIN;

/// How long the current node may answer a probe before it counts as failed.
const NODE_PROBE: Duration = Duration::from_millis(400);
/// How long a candidate node may take to connect and answer its checks.
const NODE_CONNECT: Duration = Duration::from_millis(700);
/// The longest a failed node stays in use: the database watch's period plus
/// the probe of the current node and of the candidates (docs/operations.md).
pub const FAILOVER_BOUND: Duration = Duration::from_millis(
    crate::dbgate::PROBE_EVERY.as_millis() as u64
        + NODE_PROBE.as_millis() as u64
        + NODE_CONNECT.as_millis() as u64,
);

/// How long an instance waits for another one's migration (through another
/// Galera node) to finish, how often it looks, and how often it reads the
/// applied migrations again.
const MIGRATE_WAIT: Duration = Duration::from_secs(120);
const MIGRATE_POLL: Duration = Duration::from_millis(200);
const MIGRATE_ATTEMPTS: u32 = 10;

/// Whether a failed migration run is what a concurrent run through another
/// node leaves: the migration marked unfinished, or a statement that lost to
/// the other run (its `_sqlx_migrations` row or table already there, a
/// certification conflict, the node briefly not ready).
fn raced(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError as M;
    let db = match e {
        M::Dirty(_) => return true,
        M::Execute(e) | M::ExecuteMigration(e, _) => e,
        _ => return false,
    };
    let code = db
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|d| d.number());
    // 1050 table exists, 1060 duplicate column, 1061 duplicate key name,
    // 1062 duplicate entry, 1213 deadlock / certification conflict,
    // 1047 Galera node not ready.
    matches!(code, Some(1050 | 1060 | 1061 | 1062 | 1213 | 1047))
}

/// Leases per renewal statement (4 placeholders each, far below the limit).
const RENEW_CHUNK: usize = 1024;

pub struct MySqlStorage {
    pool: MySqlPool,
    /// The cluster's nodes and which one the pool uses.
    nodes: Arc<Nodes>,
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

/// One node of the cluster `database_url` names.
struct Node {
    opts: MySqlConnectOptions,
    /// `host:port`, for logs.
    name: String,
}

/// The nodes of `database_url` and which one the pool uses.
struct Nodes {
    list: Vec<Node>,
    current: AtomicUsize,
    /// Rises on every move to another node; each pooled connection carries
    /// the generation it was opened in (`@floatlm_node_gen`).
    generation: AtomicU64,
}

impl Nodes {
    fn current(&self) -> &Node {
        &self.list[self.current.load(Ordering::Acquire) % self.list.len()]
    }
}

/// The URL of each host of a `mysql://user:pass@h1:p1,h2:p2/db?params` URL
/// (one for a single host), each parsed as sqlx parses a URL.
fn node_options(url: &str) -> Result<Vec<Node>> {
    let bad = |why: String| {
        StorageError::Connect(format!("database_url is not a valid MySQL URL: {why}"))
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("no scheme".into()))?;
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (hosts, tail) = match hostpart.find(['/', '?']) {
        Some(i) => hostpart.split_at(i),
        None => (hostpart, ""),
    };
    hosts
        .split(',')
        .map(|host| {
            if host.trim().is_empty() {
                return Err(bad("an empty host in the host list".into()));
            }
            let one = match userinfo {
                Some(u) => format!("{scheme}://{u}@{host}{tail}"),
                None => format!("{scheme}://{host}{tail}"),
            };
            let opts = MySqlConnectOptions::from_str(&one)
                .map_err(|e| bad(e.to_string()))?
                .timezone(Some("+00:00".to_string()));
            Ok(Node {
                opts,
                name: host.to_string(),
            })
        })
        .collect()
}

/// Reads the node's [`Membership`]. Galera is seen in `SHOW STATUS` (MariaDB
/// shows the `wsrep_*` status without a provider too, with an empty
/// `wsrep_provider_name`; MySQL shows none). Group Replication is detected
/// first in information_schema.PLUGINS (a MariaDB server has no such plugin,
/// so the performance_schema query below never runs there).
async fn membership(conn: &mut sqlx::MySqlConnection) -> sqlx::Result<Membership> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state', 'wsrep_provider_name')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if get("wsrep_provider_name").is_some_and(|p| !p.is_empty()) {
        return Ok(Membership::Galera {
            ready: get("wsrep_ready").is_some_and(|v| v.eq_ignore_ascii_case("ON")),
            state: get("wsrep_local_state")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        });
    }
    let gr: Option<String> = sqlx::query_scalar(
        "SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'group_replication'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if !gr.is_some_and(|s| s.eq_ignore_ascii_case("ACTIVE")) {
        return Ok(Membership::Plain);
    }
    let (super_read_only, single_primary): (i64, i64) = sqlx::query_as(
        "SELECT CAST(@@global.super_read_only AS SIGNED), \
         CAST(@@global.group_replication_single_primary_mode AS SIGNED)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let member: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT MEMBER_STATE, MEMBER_ROLE FROM performance_schema.replication_group_members \
         WHERE MEMBER_ID = @@server_uuid",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let (member_state, role) = member.unwrap_or_default();
    Ok(Membership::GroupReplication {
        member_state,
        role,
        super_read_only: super_read_only != 0,
        single_primary: single_primary != 0,
    })
}

/// Reads the node's [`Membership`] and refuses a node that may not be
/// written through: a Galera node that is not ready or not Synced (joining,
/// a donor, outside the primary component), a Group Replication member that
/// is not ONLINE or is read-only. The error is an I/O error, so it counts as
/// an outage (the pool, the probe and failover treat the node as down).
async fn check_node(conn: &mut sqlx::MySqlConnection) -> sqlx::Result<Membership> {
    let m = membership(conn).await?;
    m.writable().map_err(|why| {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            why,
        ))
    })?;
    Ok(m)
}

/// Opens a connection of its own to `node` and checks it.
async fn open_checked(node: &Node) -> Result<sqlx::MySqlConnection> {
    use sqlx::Connection;
    let mut c = sqlx::MySqlConnection::connect_with(&node.opts).await?;
    check_node(&mut c).await?;
    Ok(c)
}

impl MySqlStorage {
    /// Connects; `url` is `mysql://user:pass@host:port/database`, or several
    /// hosts of one cluster: `mysql://user:pass@h1:3306,h2:3306/database`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let list = node_options(url)?;
        let multi = list.len() > 1;
        // The first node that answers and may be written through.
        let mut first = None;
        let mut failures = Vec::new();
        for (i, node) in list.iter().enumerate() {
            let tried = if multi {
                tokio::time::timeout(NODE_CONNECT * 4, open_checked(node))
                    .await
                    .unwrap_or_else(|_| Err(StorageError::Connect("timed out".into())))
            } else {
                Ok(
                    <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&node.opts)
                        .await
                        .map_err(|e| StorageError::Connect(describe_connect_error(&e)))?,
                )
            };
            match tried {
                Ok(c) => {
                    first = Some((i, c));
                    break;
                }
                Err(e) => failures.push(format!("{}: {e}", node.name)),
            }
        }
        let Some((current, probe)) = first else {
            return Err(StorageError::Connect(format!(
                "no node of database_url can take writes: {}",
                failures.join("; ")
            )));
        };
        if multi {
            tracing::info!(node = %list[current].name, nodes = list.len(), "database: using this node of the cluster");
        }
        let opts = list[current].opts.clone();
        let nodes = Arc::new(Nodes {
            list,
            current: AtomicUsize::new(current),
            generation: AtomicU64::new(0),
        });
        let on_connect = nodes.clone();
        let mut pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            // Well under a client's request timeout (5 s): a request caught
            // by a database outage (before the probe closes the gate) hears
            // "database unavailable" from this instance instead of timing out.
            .acquire_timeout(Duration::from_secs(1))
            .after_connect(move |conn, _| {
                let nodes = on_connect.clone();
                Box::pin(async move {
                    // Read before the checks: a move to another node while
                    // this connection opens leaves it an older generation,
                    // so it is closed at its first acquire.
                    let generation = nodes.generation.load(Ordering::Acquire);
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
                    // work: statistics are enough. Statistics cannot see
                    // how rare a slot state is, so reads of slots by state
                    // name the pick index (seats.rs).
                    conn.execute("SET SESSION eq_range_index_dive_limit = 1")
                        .await?;
                    if let Err(e) = conn.execute("SET SESSION idle_transaction_timeout = 5").await {
                        tracing::debug!(error = %e, "this server has no idle_transaction_timeout (MySQL): a stalled instance keeps its row locks until wait_timeout");
                    }
                    // On a cluster node: causal reads, so a lease check
                    // sees every commit made through another node before it.
                    if let Some(set) = check_node(conn).await?.session_setting() {
                        conn.execute(set).await?;
                    }
                    sqlx::query("SET @floatlm_node_gen = ?")
                        .bind(generation)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        if multi {
            // Instead of the pool's ping before each acquire, one statement
            // that pings and tells whether the connection's node is still
            // the one in use.
            let on_acquire = nodes.clone();
            pool = pool
                .test_before_acquire(false)
                .before_acquire(move |conn, _| {
                    let nodes = on_acquire.clone();
                    Box::pin(async move {
                        let g: Option<u64> =
                            sqlx::query_scalar("SELECT CAST(@floatlm_node_gen AS UNSIGNED)")
                                .fetch_one(&mut *conn)
                                .await?;
                        Ok(g == Some(nodes.generation.load(Ordering::Acquire)))
                    })
                });
        }
        let pool = pool
            .connect_with(opts)
            .await
            .map_err(|e| StorageError::Connect(describe_connect_error(&e)))?;
        Ok(MySqlStorage {
            pool,
            nodes,
            probe: tokio::sync::Mutex::new(Some(probe)),
        })
    }

    /// Runs the migrations, healing a race with another instance that
    /// migrates through another node of a Galera cluster at the same moment
    /// (GET_LOCK is per node there). Each migration's row in
    /// `_sqlx_migrations` is inserted before its statements run, so of two
    /// instances applying one migration at once, one loses on that row
    /// (duplicate key, or a certification conflict at the implicit commit
    /// before the DDL) or finds it marked unfinished (`Dirty`) while the
    /// other is still applying it. The loser waits until no migration is
    /// unfinished, reads the applied ones again and goes on; a migration
    /// that fails on its own fails at once.
    async fn run_migrations(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + MIGRATE_WAIT;
        for attempt in 1.. {
            let err = match sqlx::migrate!("./migrations/mysql").run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !raced(&err) || attempt >= MIGRATE_ATTEMPTS {
                return Err(err.into());
            }
            tracing::info!(error = %err, attempt, "database migration met another instance migrating at the same moment (a Galera cluster's nodes do not share GET_LOCK): waiting for it to finish, then reading the applied migrations again");
            loop {
                let unfinished: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = FALSE",
                )
                .fetch_one(&self.pool)
                .await;
                match unfinished {
                    Ok(0) => break,
                    Ok(_) | Err(_) if std::time::Instant::now() >= deadline => {
                        return Err(StorageError::LockTimeout(format!(
                            "a database migration is still marked unfinished after {MIGRATE_WAIT:?} ({err}): \
                             if no other floatlm instance is migrating, one failed midway; see the \
                             upgrade notes in docs/operations.md"
                        )));
                    }
                    _ => tokio::time::sleep(MIGRATE_POLL).await,
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The current node failed: checks every other node at once and moves
    /// the pool to the first healthy one in `database_url` order, with `c`
    /// as the probe's new connection. Err when none is healthy.
    async fn fail_over(&self, why: &StorageError) -> Result<sqlx::MySqlConnection> {
        let from = self.nodes.current.load(Ordering::Acquire);
        let mut tries = tokio::task::JoinSet::new();
        for (i, n) in self
            .nodes
            .list
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != from)
        {
            let node = Node {
                opts: n.opts.clone(),
                name: n.name.clone(),
            };
            tries.spawn(async move {
                let r = tokio::time::timeout(NODE_CONNECT, open_checked(&node))
                    .await
                    .unwrap_or_else(|_| {
                        Err(StorageError::Connect(format!(
                            "no answer within {NODE_CONNECT:?}"
                        )))
                    });
                (i, r)
            });
        }
        let mut done = tries.join_all().await;
        done.sort_by_key(|(i, _)| *i);
        let mut failures = vec![format!("{}: {why}", self.nodes.list[from].name)];
        for (i, r) in done {
            match r {
                Ok(c) => {
                    let to = &self.nodes.list[i];
                    self.pool.set_connect_options(to.opts.clone());
                    self.nodes.current.store(i, Ordering::Release);
                    self.nodes.generation.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(from = %self.nodes.list[from].name, to = %to.name, error = %why, "database: the node in use failed; moved to another node of the cluster");
                    return Ok(c);
                }
                Err(e) => failures.push(format!("{}: {e}", self.nodes.list[i].name)),
            }
        }
        Err(StorageError::Connect(format!(
            "no node of the cluster can take writes: {}",
            failures.join("; ")
        )))
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
        // the others wait here and then find nothing left to do. (Not on
        // Galera, whose nodes do not share named locks: see `run_migrations`.)
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
        let res = self.run_migrations().await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('floatlm.migrate.', DATABASE()))")
            .execute(&mut *conn)
            .await?;
        res
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe(&self) -> Result<()> {
        let mut conn = self.probe.lock().await;
        if self.nodes.list.len() == 1 {
            use sqlx::Connection;
            if let Some(c) = conn.as_mut() {
                if c.ping().await.is_ok() {
                    return Ok(());
                }
            }
            *conn = None;
            let mut c = sqlx::MySqlConnection::connect_with(&self.nodes.current().opts).await?;
            c.ping().await?;
            *conn = Some(c);
            return Ok(());
        }
        // Several nodes: the current one must answer and be able to take
        // writes (Synced, in the primary component), else move.
        let current = async {
            match conn.take() {
                Some(mut c) => {
                    check_node(&mut c).await?;
                    Ok(c)
                }
                None => open_checked(self.nodes.current()).await,
            }
        };
        let err = match tokio::time::timeout(NODE_PROBE, current).await {
            Ok(Ok(c)) => {
                *conn = Some(c);
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => StorageError::Connect(format!("no answer within {NODE_PROBE:?}")),
        };
        *conn = Some(self.fail_over(&err).await?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_node_each_with_the_same_user_database_and_options() {
        let nodes =
            node_options("mysql://u:p%40ss@h1:3306,h2:3307,h3/db?ssl-mode=disabled").unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["h1:3306", "h2:3307", "h3"]);
        for (n, port) in nodes.iter().zip([3306, 3307, 3306]) {
            assert_eq!(n.opts.get_host(), n.name.split(':').next().unwrap());
            assert_eq!(n.opts.get_port(), port);
            assert_eq!(n.opts.get_username(), "u");
            assert_eq!(n.opts.get_database(), Some("db"));
        }
    }

    #[test]
    fn a_single_host_is_one_node_and_an_empty_host_is_refused() {
        let one = node_options("mysql://root@127.0.0.1:3306/x").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "127.0.0.1:3306");
        let e = node_options("mysql://root@h1:3306,,h2/x").err().unwrap();
        assert!(e.to_string().contains("empty host"), "{e}");
    }
}
