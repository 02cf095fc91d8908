//! The trusted license storage: one trait per role, two backends written
//! out plainly.
//!
//! * [`mysql::MySqlStorage`] — MySQL / MariaDB, shared by every instance of a
//!   cluster (the HA setup).
//! * [`sqlite::SqliteStorage`] — an embedded file, the zero-setup single node.
//!
//! Seats are pre-created slot rows. A slot moves only through single-row
//! conditional UPDATEs whose WHERE checks the slot's own state and its
//! `lease_gen` fencing token; time is the database's clock, read once per
//! transaction. Each role ([`StoreBase`], [`SeatStore`], [`LeaseStore`],
//! [`LicenseStore`], [`AccessStore`], [`ClusterStore`], [`KeyStore`]; all
//! of them together are [`Storage`]) has a file of its name in each
//! backend's folder, so the SQL of the two backends reads side by side.
//! Shared here: the errors, the seat helpers both grant paths use;
//! `rows.rs` maps rows by column name; `retry.rs` says what is retried; the
//! pure rules (slot states, resize plan) are in `domain::slots`.

pub mod backup;
pub mod membership;
pub mod mysql;
mod retry;
mod rows;
pub mod sqlite;

pub use retry::{is_duplicate_key, is_retryable, RetryCause, RetryCount, RetryStats, RETRY_STATS};
pub(crate) use retry::{is_missing_table, with_patient_retry, with_retry};
pub use rows::*;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

use crate::domain::seats::{Check, Grant, GrantRequest, LeaseInfo, LeaseRef, SeatError};
use crate::domain::slots::{plan_resize, SlotState, SlotView};
pub use crate::domain::slots::{usage_by_name, FeatureRow};
pub use crate::domain::usage::{Denial, UsageEvent};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write refused by what is stored (an older serial, a license
    /// window that would cut short the promises given): our own words, for
    /// the operator.
    #[error("{0}")]
    Conflict(String),
    /// A named database lock (the migration lock, the first-token lock)
    /// was not had in time.
    #[error("{0}")]
    LockTimeout(String),
    /// A stored value no version of floatlm writes (an edited column).
    #[error("{0}")]
    Corrupt(String),
    /// The instance's queue for this work has stopped (it is shutting down).
    #[error("{0}")]
    Stopped(String),
    #[error("cannot open the database: {0}")]
    Connect(String),
    /// Not tried: the database failed moments ago (see [`crate::dbgate`]);
    /// the outage's incident id.
    #[error("the database is unavailable (incident {0})")]
    Unavailable(String),
}

impl StorageError {
    /// A statement its caller stopped waiting for: like a connection that
    /// timed out, an outage ([`StorageError::is_outage`]).
    pub fn timed_out(what: String) -> StorageError {
        StorageError::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            what,
        )))
    }

    /// Whether this says the database cannot serve (rather than that it
    /// refused one statement): it cannot be reached (connection refused,
    /// reset or timed out, no pooled connection in time, a Galera node
    /// outside the primary component), or it is reached but cannot write
    /// ([`StorageError::is_write_failure`]).
    pub fn is_outage(&self) -> bool {
        match self {
            StorageError::Unavailable(_) | StorageError::Connect(_) => true,
            StorageError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => {
                    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        // 1047: WSREP has not yet prepared node for application use.
                        .is_some_and(|my| my.number() == 1047)
                        || self.is_write_failure()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether this says the database answers but cannot store anything:
    /// its disk is full, its file cannot be written, it is read-only. Reads
    /// still work, writes fail until an operator (or time) fixes the cause;
    /// the database gate keeps seat changes away until a write commits again.
    ///
    /// SQLite (primary result codes): SQLITE_READONLY (8), SQLITE_IOERR (10),
    /// SQLITE_FULL (13), SQLITE_CANTOPEN (14). MySQL / MariaDB: ER_DISK_FULL
    /// (1021), ER_RECORD_FILE_FULL (1114), read_only / super_read_only (1290,
    /// 1836), a read-only transaction (1792).
    pub fn is_write_failure(&self) -> bool {
        let StorageError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return matches!(my.number(), 1021 | 1114 | 1290 | 1792 | 1836);
        }
        db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(|_| db.code())
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|extended| matches!(extended & 0xff, 8 | 10 | 13 | 14))
    }
}

/// What a seat call (a grant) answers when it grants nothing: a refusal by
/// the seat rules, or a database failure. Refusals are domain words
/// ([`SeatError`]); failures are this layer's ([`StorageError`]).
#[derive(Debug, Error)]
pub enum SeatFailure {
    #[error(transparent)]
    Refused(#[from] SeatError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Mysql,
}

/// A lease and its holder, as a check or an extension matches them:
/// (feature_id, slot_no, lease_gen, nonce, holder).
pub(crate) type HeldLease<'a> = (i64, i64, i64, i64, &'a str);

/// Every distinct (lease, holder) of a batch, sorted (so concurrent batches
/// lock rows in the same order).
pub(crate) fn batch_leases(items: &[RenewItem]) -> Vec<HeldLease<'_>> {
    let mut all: Vec<HeldLease<'_>> = items
        .iter()
        .flat_map(|i| {
            i.leases.iter().map(move |l| {
                (
                    l.feature_id,
                    l.slot_no,
                    l.lease_gen,
                    l.nonce,
                    i.holder.as_str(),
                )
            })
        })
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The per-item answers of a batch: `found` answers each (lease, holder).
pub(crate) fn batch_results<T: Clone>(
    items: &[RenewItem],
    found: impl Fn(&HeldLease<'_>) -> T,
) -> Vec<Vec<T>> {
    items
        .iter()
        .map(|i| {
            i.leases
                .iter()
                .map(|l| {
                    found(&(
                        l.feature_id,
                        l.slot_no,
                        l.lease_gen,
                        l.nonce,
                        i.holder.as_str(),
                    ))
                })
                .collect()
        })
        .collect()
}

/// A slot row as a check read it, judged against the lease a client named.
#[derive(Debug, Clone)]
pub(crate) struct SlotRead {
    pub lease_gen: i64,
    pub nonce: i64,
    pub holder: Option<String>,
    pub state: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub promise_ms: i64,
    pub feature: String,
    pub not_before: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
}

impl SlotRead {
    /// What this row, read at `now`, says about `lease` of `holder`.
    pub fn judge(&self, lease: &HeldLease<'_>, now: DateTime<Utc>) -> Check {
        let (_, _, gen, nonce, holder) = *lease;
        if self.lease_gen < gen {
            return Check::WentBack;
        }
        let live = self.lease_gen == gen
            && self.nonce == nonce
            && self.holder.as_deref() == Some(holder)
            && SlotState::from_stored(self.state).is_some_and(SlotState::can_hold)
            && self.not_before.is_none_or(|t| t <= now);
        match self.expires_at.filter(|e| live && *e > now) {
            Some(expires_at) => Check::Live(crate::domain::seats::LiveLease {
                now,
                expires_at,
                cap: Duration::from_millis(self.promise_ms.max(0) as u64),
                feature: self.feature.clone(),
                window_end: self.window_end,
            }),
            None => Check::Lost,
        }
    }
}

/// One connection pool of a backend, as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUse {
    /// `main` (MySQL), `writer` or `reader` (SQLite).
    pub pool: &'static str,
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

impl PoolUse {
    pub(crate) fn of<DB: sqlx::Database>(pool: &'static str, p: &sqlx::Pool<DB>) -> PoolUse {
        PoolUse {
            pool,
            open: p.size(),
            idle: p.num_idle() as u32,
            max: p.options().get_max_connections(),
        }
    }
}

/// The whole storage contract: every role, as one object
/// (`Arc<dyn Storage>`). Every method is one transaction (or none). A
/// backend implements each role in a file of its own
/// (`mysql/{mod,seats,leases,licenses,access,cluster,keys}.rs`, the same
/// names under `sqlite/`); callers import the role traits whose methods they
/// call.
pub trait Storage:
    backup::BackupStore
    + StoreBase
    + SeatStore
    + LeaseStore
    + LicenseStore
    + AccessStore
    + ClusterStore
    + KeyStore
    + UsageStore
{
}

impl<T> Storage for T where
    T: backup::BackupStore
        + StoreBase
        + SeatStore
        + LeaseStore
        + LicenseStore
        + AccessStore
        + ClusterStore
        + KeyStore
        + UsageStore
{
}

/// The database itself: which backend, its schema, whether it answers, its
/// clock.
#[async_trait]
pub trait StoreBase: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// This instance's connection pools (no database call).
    fn pool_use(&self) -> Vec<PoolUse>;

    /// Runs the migrations of this backend; safe to call from several
    /// instances at the same moment.
    async fn migrate(&self) -> Result<()>;
    /// Cheap liveness probe through the pool.
    async fn ping(&self) -> Result<()>;
    /// Whether the database can be reached right now, on a connection of its
    /// own (not waiting for the pool): what the instance's database watch
    /// runs twice a second.
    async fn probe(&self) -> Result<()>;
    /// Whether a write commits right now: stamps `last_seen` of this
    /// instance's row in the cluster view (a real change, so the database
    /// must write it; no row yet writes nothing and says Ok). Ok(false):
    /// not tried, the writer was busy (SQLite's one writer connection in a
    /// long transaction), so nothing was learned. Run by the database watch
    /// beside [`StoreBase::probe`] always on SQLite, whose writes can fail
    /// alone (a full disk, a read-only file), and on MySQL while writes are
    /// known to fail, to see them work again.
    async fn probe_write(&self, instance_id: &str) -> Result<bool>;
    /// The database clock: the only clock leases are measured by.
    async fn now(&self) -> Result<DateTime<Utc>>;
}

/// Grants: where a seat is taken (`mysql/seats.rs`, `sqlite/seats.rs`).
#[async_trait]
pub trait SeatStore: Send + Sync + 'static {
    /// Takes one free (or expired) active slot of `req.feature` with a
    /// conditional UPDATE that checks the slot's own state, raising its
    /// `lease_gen`; never more live leases than active slots. A request id
    /// seen before answers its first grant only while that lease is held.
    async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatFailure>;
    /// Grants several requests (group commit of concurrent logins); one
    /// answer per request, in order, each as [`SeatStore::grant`] would give.
    async fn grant_batch(&self, reqs: &[GrantRequest]) -> Vec<Result<Grant, SeatFailure>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.grant(req).await);
        }
        out
    }
}

/// Held leases: the checks heartbeats rest on, extensions, releases, force
/// releases, quarantine and the list of live leases (`*/leases.rs`).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Reads the slot rows of several holders' leases in one statement (no
    /// lock, no write) and judges each against the database clock of that
    /// read: the check every heartbeat answer rests on.
    async fn check_batch(&self, items: &[RenewItem]) -> Result<Vec<Vec<Check>>>;
    /// Extends the leases of several holders in one transaction (group
    /// commit): `expires_at` becomes at least `now + hold` (it never goes
    /// down) and the promise cap at least `promise`, each row only while it
    /// still holds that lease. One answer per lease, in order. A row locked
    /// by another transaction is skipped (`Busy`), never waited for.
    async fn extend_batch(
        &self,
        items: &[RenewItem],
        hold: Duration,
        promise: Duration,
    ) -> Result<Vec<Vec<Extension>>>;
    /// [`LeaseStore::extend_batch`] for one holder.
    async fn extend(
        &self,
        holder: &str,
        leases: &[LeaseRef],
        hold: Duration,
        promise: Duration,
    ) -> Result<Vec<Extension>> {
        let item = RenewItem {
            holder: holder.to_string(),
            leases: leases.to_vec(),
        };
        let mut out = self.extend_batch(&[item], hold, promise).await?;
        Ok(out.pop().unwrap_or_default())
    }
    /// Releases a lease held by `holder` (only while the row still holds
    /// that `lease_gen`); the database time it ended, or None when it was
    /// not live (already released, expired, re-granted).
    async fn release(&self, holder: &str, lease: LeaseRef) -> Result<Option<DateTime<Utc>>>;
    /// Releases several (holder, lease) pairs in one transaction where the
    /// backend can; one answer per pair, in order.
    /// Each pair has its own answer: a release that failed does not make
    /// the others (which may have committed) look failed.
    async fn release_batch(
        &self,
        items: &[(String, LeaseRef)],
    ) -> Vec<Result<Option<DateTime<Utc>>>> {
        let mut out = Vec::with_capacity(items.len());
        for (holder, lease) in items {
            out.push(self.release(holder, *lease).await);
        }
        out
    }
    /// Operator release, regardless of holder. The lease ends at once (its
    /// holder is told it lost the seat on its next heartbeat), but the seat
    /// stays taken until every promise already given for it has run out:
    /// a first transaction revokes the lease, a second one, started after
    /// the first committed, bounds the expiry to its own clock plus the
    /// lease's promise cap and [`CLOCK_MARGIN`]. Returns when the seat is
    /// free again (database clock), or None when the lease was not live.
    ///
    /// [`CLOCK_MARGIN`]: crate::domain::seats::CLOCK_MARGIN
    async fn force_release(&self, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        end_lease(self, None, lease).await
    }
    /// First step of a force release or own release (call those, not this):
    /// the lease ends (no holder), but the slot keeps its expiry, so nobody
    /// is granted it yet. With `holder` only while that identity holds it;
    /// without, whoever holds it. Whether the lease was live and ended.
    async fn revoke_lease(&self, holder: Option<&str>, lease: LeaseRef) -> Result<bool>;
    /// Second step, in a statement that starts after the first committed:
    /// every promise given from a read before that commit ends by this
    /// statement's clock plus the lease's cap and [`CLOCK_MARGIN`]. The
    /// slot's expiry after it.
    ///
    /// [`CLOCK_MARGIN`]: crate::domain::seats::CLOCK_MARGIN
    async fn bound_revoked(&self, lease: LeaseRef) -> Result<Option<DateTime<Utc>>>;
    /// Ends every lease and holds every seat for at least `hold` from now (by
    /// nobody). Run after the database went back in time: no lease in the
    /// restored state can be trusted (its holder may have given it up since,
    /// and the seat gone to someone else), and the promises given before the
    /// restore must be over before anyone is granted a seat again. Every
    /// client logs in again. It clears each slot's lease nonce, so the
    /// second step of a release or force release (which names the lease by
    /// its nonce) never matches a quarantined row, even one whose statement
    /// started before the quarantine and waited for its lock; and it raises
    /// `promise_ms` to `hold` as a second wall. Returns the slots touched.
    async fn quarantine(&self, hold: Duration) -> Result<u64>;
    /// Every live lease (unexpired by the database clock), for operators.
    async fn leases(&self) -> Result<Vec<LeaseInfo>>;
    /// Forgets request ids older than `age` (longer than any resent login
    /// waits, so a retry never grants twice); returns how many.
    async fn purge_requests(&self, age: Duration) -> Result<u64>;
    /// The live leases `holder` holds (to end them when it is revoked).
    async fn leases_of(&self, holder: &str) -> Result<Vec<LeaseRef>>;
    /// The live leases `holder` holds, with what `mine` lists of them.
    async fn held_by(&self, holder: &str) -> Result<Vec<LeaseInfo>>;
    /// A release of `holder`'s `lease` by any session of that identity
    /// (`release`): the two steps of [`LeaseStore::force_release`], the
    /// first matching only while the row still holds this very lease (gen,
    /// nonce) for `holder`. The holder may still run on a promise, so the
    /// seat is free only once it has run out. Returns when (database
    /// clock), or None when the lease was not live or not `holder`'s.
    async fn release_own(&self, holder: &str, lease: LeaseRef) -> Result<Option<DateTime<Utc>>> {
        end_lease(self, Some(holder), lease).await
    }
}

/// A force or own release in its two steps ([`LeaseStore::revoke_lease`],
/// then [`LeaseStore::bound_revoked`]): when the seat is free, or None when
/// the lease (of `holder`, when given) was not live.
async fn end_lease<S: LeaseStore + ?Sized>(
    store: &S,
    holder: Option<&str>,
    lease: LeaseRef,
) -> Result<Option<DateTime<Utc>>> {
    if !with_retry(|| store.revoke_lease(holder, lease)).await? {
        return Ok(None);
    }
    let free_at = with_retry(|| store.bound_revoked(lease)).await?;
    Ok(Some(free_at.unwrap_or_else(Utc::now)))
}

/// Licenses and their features' slot rows (`*/licenses.rs`).
#[async_trait]
pub trait LicenseStore: Send + Sync + 'static {
    /// Stores the license and creates or resizes its features' slots in one
    /// transaction: a feature of N seats has exactly N active slots after it,
    /// and a shrink never revokes a live lease (see [`plan_resize`]).
    ///
    /// [`plan_resize`]: crate::domain::slots::plan_resize
    async fn apply_license(&self, lic: &LicenseRecord) -> Result<ApplyOutcome>;
    /// Removes a license in one transaction: each of its features shrinks
    /// to 0 seats exactly as when a license drops a feature (free slots
    /// retire, held ones become retiring and stay valid until released or
    /// expired, [`plan_resize`]), then the license row goes. Its feature
    /// rows stay (0 seats) for the retiring leases and a later re-apply.
    /// None when no such license; else how many features it had.
    ///
    /// [`plan_resize`]: crate::domain::slots::plan_resize
    async fn remove_license(&self, license_id: &str) -> Result<Option<u64>>;
    /// Every stored license (sealed), by id.
    async fn licenses(&self) -> Result<Vec<StoredLicense>>;
    /// Every feature row with its slot counts, judged by the database clock.
    async fn feature_rows(&self) -> Result<Vec<FeatureRow>>;
}

/// Identities (client credentials) and admin tokens (`*/access.rs`).
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Inserts an identity and bumps the identity revision in the same
    /// transaction (instances cache "no such identity" too).
    async fn insert_identity(&self, row: &IdentityRow) -> Result<()>;
    async fn identity(&self, id: &str) -> Result<Option<IdentityRow>>;
    async fn identities(&self) -> Result<Vec<IdentityRow>>;
    /// Revokes an identity; in the same transaction bumps the identity
    /// revision and logs the revocation under the new revision. False when
    /// it does not exist or was revoked already.
    async fn revoke_identity(&self, id: &str) -> Result<bool>;
    /// The cluster-wide identity revision: it moves with every change to
    /// identities, and a revision is committed only after every lower one.
    async fn identity_revision(&self) -> Result<i64>;
    /// Revocations logged under a revision above `after`, by revision:
    /// (revision, identity id, revoked at).
    async fn identity_revocations(&self, after: i64) -> Result<Vec<Revocation>>;

    async fn insert_token(&self, row: &TokenRow) -> Result<()>;
    /// Inserts `row` only if no token exists yet; true when inserted.
    async fn insert_first_token(&self, row: &TokenRow) -> Result<bool>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;
    async fn tokens(&self) -> Result<Vec<TokenRow>>;
    async fn revoke_token(&self, id: &str) -> Result<bool>;

    /// Assigns `features` to identity `id` (`assignment = manual`); ones
    /// assigned already stay. How many were new.
    async fn assign_features(&self, id: &str, features: &[String]) -> Result<u64>;
    /// Takes `features` from identity `id`; how many it had.
    async fn unassign_features(&self, id: &str, features: &[String]) -> Result<u64>;
    /// The features assigned to identity `id`, by name.
    async fn assigned_features(&self, id: &str) -> Result<Vec<String>>;
}

/// The cluster view: instance rows, heartbeats, drain and removal
/// (`*/cluster.rs`).
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Records this instance (or refreshes it); returns whether an operator
    /// asked it to drain.
    async fn instance_heartbeat(&self, beat: &InstanceBeat<'_>) -> Result<bool>;
    async fn instances(&self) -> Result<Vec<InstanceRow>>;
    /// (id, version) of every instance seen within `within`, read with only
    /// the columns every schema version has (an instance checks this before
    /// it migrates); empty when there is no instance table yet.
    async fn live_versions(&self, within: Duration) -> Result<Vec<(String, String)>>;
    /// Asks an instance to drain; false when it is not recorded.
    async fn request_drain(&self, id: &str) -> Result<bool>;
    /// Forgets an instance that has been silent at least `silent_for`.
    async fn remove_instance(&self, id: &str, silent_for: Duration) -> Result<bool>;
}

/// Key material at rest: the master-key canaries, the resumption ticket
/// keys, and every sealed column for key rotation (`*/keys.rs`).
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Every canary: (key id, sealed canary).
    async fn canaries(&self) -> Result<Vec<(String, Vec<u8>)>>;
    /// Inserts unless a canary for `key_id` exists; true when inserted.
    async fn insert_canary(&self, key_id: &str, sealed: &[u8]) -> Result<bool>;
    /// Removes the canaries of every key but `keep`.
    async fn retain_canary(&self, keep: &str) -> Result<()>;

    /// Every ticket key: (id, sealed key), by id.
    async fn ticket_keys(&self) -> Result<Vec<(i64, Vec<u8>)>>;
    /// Inserts unless key `id` exists; true when inserted.
    async fn insert_ticket_key(&self, id: i64, sealed: &[u8]) -> Result<bool>;
    /// Deletes the keys with an id below `below`; returns how many.
    async fn purge_ticket_keys(&self, below: i64) -> Result<u64>;

    /// Every sealed blob key rotation rewrites (licenses, identity secrets,
    /// ticket keys; not canaries) with where it lives.
    async fn sealed_rows(&self) -> Result<Vec<SealedRow>>;
    /// Replaces the blob of `column` in row `row_id` if it still equals
    /// `old` (a key rotation; a damaged canary, or one a trial start wrote
    /// with another key of that id); true when replaced.
    async fn reseal(
        &self,
        column: crate::crypto::SealedColumn,
        row_id: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool>;
}

/// Usage records (`*/usage.rs`): seat events are written by the
/// database itself in the statement that changes the slot (a trigger,
/// migrations/*/0010_usage_events.sql); this role appends denials, sweeps
/// leases that expired unseen, reads a report window and purges old rows.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Appends `denials` with one multi-row INSERT (no seat change: best
    /// effort, a crash may lose the batch).
    async fn record_denials(&self, denials: &[Denial]) -> Result<()>;
    /// Ends up to `limit` leases that expired without a release and whose
    /// slot nobody reused: clears the holder of the expired row (a change
    /// no promise rests on), so the trigger records their `expiry`. Returns
    /// how many.
    async fn sweep_expired(&self, limit: u32) -> Result<u64>;
    /// Every event with `from <= at < to`, plus the grants before `from`
    /// whose lease had no end before `from`, ordered by time; refused when
    /// more than `limit` rows would be read.
    async fn usage_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>>;
    /// Deletes up to `limit` events older than `before`; returns how many.
    async fn purge_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;
}

/// The planner's view of a feature's slots, from (slot_no, state, live)
/// rows; a state no code writes is a damaged row, refused.
pub(crate) fn slot_views(feature_id: i64, rows: &[(i64, i64, i64)]) -> Result<Vec<SlotView>> {
    rows.iter()
        .map(|&(slot_no, state, live)| {
            let state = SlotState::from_stored(state).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "slot {slot_no} of feature {feature_id} has state {state}, which no version of floatlm writes: \
                     the slots table was edited; restore it from a backup"
                ))
            })?;
            Ok(SlotView {
                slot_no,
                state,
                live: live == 1,
            })
        })
        .collect()
}

/// A lease just granted for `req` at `now` (database clock): held for
/// `req.hold`, promised as [`LiveLease::promise`] allows.
///
/// [`LiveLease::promise`]: crate::domain::seats::LiveLease::promise
pub(crate) fn new_grant(
    req: &GrantRequest,
    lease: LeaseRef,
    now: DateTime<Utc>,
    window_end: Option<DateTime<Utc>>,
) -> Grant {
    let expires_at = now + chrono::Duration::microseconds(micros(req.hold));
    let live = crate::domain::seats::LiveLease {
        now,
        expires_at,
        cap: req.promise,
        feature: req.feature.clone(),
        window_end,
    };
    Grant {
        lease,
        feature: req.feature.clone(),
        granted_at: now,
        expires_at,
        replayed: false,
        promise: live.promise(req.promise),
    }
}

/// Refuses a license whose new window for `feature` would close (end, or
/// start in the future) before the promises already given for its live
/// leases can have run out: those promises were capped by the old window,
/// and the feature's seats would count as none while they still run.
/// `longest_ms` is the largest `promise_ms` of the row's live slots (None
/// when none is live); `old_open` whether the old window is open at `now`.
pub(crate) fn check_window_change(
    license_id: &str,
    feature: &str,
    now: DateTime<Utc>,
    old_open: bool,
    new: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    longest_ms: Option<i64>,
) -> Result<()> {
    let Some(ms) = longest_ms.filter(|_| old_open) else {
        return Ok(());
    };
    let promised_until = now
        + chrono::Duration::milliseconds(ms.clamp(0, i64::from(i32::MAX)))
        + chrono::Duration::from_std(crate::domain::seats::CLOCK_MARGIN).unwrap_or_default();
    let (not_before, expires) = new;
    let closes = match (not_before, expires) {
        (Some(nb), _) if nb > now => Some(now),
        (_, Some(e)) if e < promised_until => Some(e),
        _ => None,
    };
    match closes {
        None => Ok(()),
        Some(at) => Err(StorageError::Conflict(format!(
            "license {license_id} would close the window of feature '{feature}' at {at}, before the promises \
             already given for its live seats can have run out (at {promised_until}); apply it after that, \
             or once those seats are released"
        ))),
    }
}

/// Milliseconds in a duration, as stored in `promise_ms` (an INT).
/// A quarantine's hold as the slot's promise cap (`promise_ms`), rounded
/// up: a release or force release whose second step runs after the
/// quarantine caps the slot at that step's clock plus this, so it never
/// ends the quarantine's hold early.
pub(crate) fn hold_cap_ms(hold: Duration) -> i64 {
    millis(hold + Duration::from_micros(999))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(i32::MAX as i64)
}

/// Microseconds in a duration, as stored.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Refuses an older serial, or the same serial with different content.
pub(crate) fn check_serial(license_id: &str, stored: i64, new: i64) -> Result<()> {
    if new < stored {
        return Err(StorageError::Conflict(format!(
            "license {license_id} serial {stored} is already applied; serial {new} is older and was not applied"
        )));
    }
    if new == stored {
        return Err(StorageError::Conflict(format!(
            "license {license_id} serial {stored} is already applied with different content; a changed license needs a higher serial"
        )));
    }
    Ok(())
}

/// A connection error without the URL (it may hold a password).
pub(crate) fn describe_connect_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("{io} (is the database server running and reachable?)"),
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out connecting to the database".to_string(),
        other => other.to_string(),
    }
}
