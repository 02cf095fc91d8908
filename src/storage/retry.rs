//! What to do when a transaction fails: which database errors mean "run
//! the whole transaction again" (deadlocks, certification failures, SQLite
//! busy), how often and after what pause, and the few other error classes
//! the backends tell apart (a missing table, a duplicate key), and how many
//! conflicts and retries each kind of statement met ([`RetryStats`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{SeatFailure, StorageError};

/// How often a transaction is retried on deadlock / lock-wait / busy errors.
const MAX_TX_ATTEMPTS: u32 = 8;

/// Whether a database error means "run the whole transaction again":
/// MySQL deadlock (1213), lock wait timeout (1205), Group Replication
/// certification failure (3101), Galera "WSREP has not yet prepared node"
/// (1047), InnoDB's table-level AUTO-INC lock lost to a deadlock or timeout
/// (1467, "Failed to read auto-increment value": the usage trigger's insert
/// during a release met the usage sweep's INSERT … SELECT), and SQLite
/// busy/locked.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return matches!(my.number(), 1213 | 1205 | 3101 | 1047 | 1467);
            }
            matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517"))
        }
        // The pool already waited its whole acquire timeout: the database is
        // unreachable or overloaded, and the client should hear so now.
        _ => false,
    }
}

/// Whether an error says a table does not exist yet (MySQL 1146, SQLite
/// "no such table"): a database older than the migration that adds it.
pub(crate) fn is_missing_table(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|my| my.number() == 1146)
                || db.message().contains("no such table")
        }
        _ => false,
    }
}

/// Whether an error is a unique-key violation (MySQL 1062, SQLite 2067/1555).
pub fn is_duplicate_key(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

/// Why a transaction was run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryCause {
    /// MySQL 1213 (deadlock; on Galera also a certification conflict: a
    /// write set that lost against another node's), Group Replication 3101,
    /// InnoDB 1467 (the AUTO-INC table lock lost to a deadlock).
    Conflict,
    /// Galera 1047: the node is not ready (not in the primary component).
    NotReady,
    /// MySQL 1205: a lock wait timed out.
    LockWait,
    /// SQLite busy / locked.
    Busy,
}

impl RetryCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Conflict => "conflict",
            RetryCause::NotReady => "not_ready",
            RetryCause::LockWait => "lock_wait",
            RetryCause::Busy => "busy",
        }
    }
}

/// Conflicts and retries of one statement kind, for one cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryCount {
    /// Transactions that failed with this cause (each attempt counts).
    pub errors: u64,
    /// Of those, how many were run again (the rest reached the caller).
    pub retried: u64,
}

/// Conflicts and retries counted per statement kind and cause, since the
/// process started. Storage counts; the app reads [`RetryStats::snapshot`]
/// for `/metrics` and `admin status` (storage never imports metrics). One
/// per process ([`RETRY_STATS`]): `with_retry` is called from every backend
/// file without a storage handle, and a process is one instance.
#[derive(Debug, Default)]
pub struct RetryStats {
    counts: Mutex<BTreeMap<(&'static str, RetryCause), RetryCount>>,
}

/// This process's conflict and retry counts.
pub static RETRY_STATS: RetryStats = RetryStats {
    counts: Mutex::new(BTreeMap::new()),
};

impl RetryStats {
    fn count(&self, kind: &'static str, cause: RetryCause, retried: bool) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry((kind, cause)).or_default();
        c.errors += 1;
        if retried {
            c.retried += 1;
        }
    }

    /// Every (statement kind, cause) seen so far, sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, RetryCause, RetryCount)> {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|((k, c), n)| (*k, *c, n.clone())).collect()
    }
}

/// Why a database error asks for a retry, if it does.
fn cause_of(err: &sqlx::Error) -> Option<RetryCause> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            1213 | 3101 | 1467 => Some(RetryCause::Conflict),
            1047 => Some(RetryCause::NotReady),
            1205 => Some(RetryCause::LockWait),
            _ => None,
        };
    }
    is_retryable(err).then_some(RetryCause::Busy)
}

/// The statement kind of a retried operation: the name of the storage
/// method whose closure `F` is (`grant`, `release_batch`, `check`, …), read
/// from the closure's type name so the role files need no extra argument.
fn kind_of<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    // `<Backend as Role>::grant_batch<'_, '_>::{{closure}}::{{closure}}`:
    // the last path segment outside angle brackets that is not a closure.
    let mut depth = 0usize;
    let mut outside = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    let kind = outside
        .split("::")
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .last()
        .unwrap_or("unknown");
    // A closure's type name has a fixed set of such segments (method
    // names): leak-free by finding the same text inside `name`.
    name.rfind(kind)
        .map_or("unknown", |i| &name[i..i + kind.len()])
}

/// Backoff before attempt `n` (1-based) of a retried transaction.
async fn retry_pause(attempt: u32) {
    let base = 2u64.pow(attempt.min(6));
    let jitter = rand::random::<u64>() % (base + 1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Whether a database error is a lock-wait timeout (MySQL 1205): another
/// transaction held the row for `innodb_lock_wait_timeout`, likely a
/// stalled instance. Retried once, not eight times.
fn is_lock_wait_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|my| my.number() == 1205))
}

/// Runs `op` again while it fails with a retryable error (a lock wait at
/// most once: a request must not queue behind a stalled instance).
pub(crate) async fn with_retry<T, E, F, Fut>(op: F) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: RetryClass,
{
    retry_lock_waits(op, 2).await
}

/// [`with_retry`] for an operator's write (a license apply): lock waits are
/// retried long enough to outlast a stalled instance's transaction (MariaDB
/// rolls it back after 5 s idle), so the apply succeeds once it is gone.
pub(crate) async fn with_patient_retry<T, E, F, Fut>(op: F) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: RetryClass,
{
    retry_lock_waits(op, 5).await
}

async fn retry_lock_waits<T, E, F, Fut>(mut op: F, lock_waits: u32) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: RetryClass,
{
    let kind = kind_of::<F>();
    let mut attempt = 1;
    let mut waits = 0;
    loop {
        let result = op().await;
        if matches!(&result, Err(e) if e.lock_wait()) {
            waits += 1;
            let again = waits < lock_waits;
            RETRY_STATS.count(kind, RetryCause::LockWait, again);
            if !again {
                return result;
            }
            tracing::debug!(
                kind,
                waits,
                "retrying transaction after a lock wait timeout"
            );
            continue;
        }
        let cause = result.as_ref().err().and_then(|e| e.cause());
        match result {
            Err(e) if attempt < MAX_TX_ATTEMPTS && e.retryable() => {
                let cause = cause.unwrap_or(RetryCause::Busy);
                RETRY_STATS.count(kind, cause, true);
                tracing::debug!(
                    kind,
                    cause = cause.as_str(),
                    attempt,
                    "retrying transaction after a transient database error"
                );
                retry_pause(attempt).await;
                attempt += 1;
            }
            other => {
                if let Some(cause) = cause {
                    RETRY_STATS.count(kind, cause, false);
                }
                return other;
            }
        }
    }
}

/// Errors that can say whether a retry may help.
pub(crate) trait RetryClass {
    fn retryable(&self) -> bool;
    /// A lock-wait timeout: retried a bounded number of times.
    fn lock_wait(&self) -> bool;
    /// Why it may be retried (for the counts), if it may.
    fn cause(&self) -> Option<RetryCause>;
}

impl RetryClass for StorageError {
    fn retryable(&self) -> bool {
        matches!(self, StorageError::Database(e) if is_retryable(e))
    }
    fn lock_wait(&self) -> bool {
        matches!(self, StorageError::Database(e) if is_lock_wait_timeout(e))
    }
    fn cause(&self) -> Option<RetryCause> {
        match self {
            StorageError::Database(e) => cause_of(e),
            _ => None,
        }
    }
}

impl RetryClass for SeatFailure {
    fn retryable(&self) -> bool {
        matches!(self, SeatFailure::Storage(e) if e.retryable())
    }
    fn lock_wait(&self) -> bool {
        matches!(self, SeatFailure::Storage(e) if e.lock_wait())
    }
    fn cause(&self) -> Option<RetryCause> {
        match self {
            SeatFailure::Storage(e) => e.cause(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_the_enclosing_function() {
        fn grant_batch() -> &'static str {
            let f = || async { Ok::<(), StorageError>(()) };
            fn k<F>(_: &F) -> &'static str {
                kind_of::<F>()
            }
            k(&f)
        }
        assert_eq!(grant_batch(), "grant_batch");
    }

    #[async_trait::async_trait]
    trait Role {
        async fn release_batch(&self) -> &'static str;
    }

    struct Backend;

    #[async_trait::async_trait]
    impl Role for Backend {
        async fn release_batch(&self) -> &'static str {
            fn k<F>(_: &F) -> &'static str {
                kind_of::<F>()
            }
            let f = || async { Ok::<(), StorageError>(()) };
            k(&f)
        }
    }

    #[tokio::test]
    async fn kind_is_the_trait_method_under_async_trait() {
        assert_eq!(Backend.release_batch().await, "release_batch");
    }
}
