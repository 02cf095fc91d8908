//! What to do when a transaction fails: which database errors mean "run
//! the whole transaction again" (deadlocks, certification failures, SQLite
//! busy), how often and after what pause, and the few other error classes
//! the backends tell apart (a missing table, a duplicate key).

use std::time::Duration;

use super::{SeatFailure, StorageError};

/// How often a transaction is retried on deadlock / lock-wait / busy errors.
const MAX_TX_ATTEMPTS: u32 = 8;

/// Whether a database error means "run the whole transaction again":
/// MySQL deadlock (1213), lock wait timeout (1205), Group Replication
/// certification failure (3101), Galera "WSREP has not yet prepared node"
/// (1047), and SQLite busy/locked.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return matches!(my.number(), 1213 | 1205 | 3101 | 1047);
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
    let mut attempt = 1;
    let mut waits = 0;
    loop {
        let result = op().await;
        if matches!(&result, Err(e) if e.lock_wait()) {
            waits += 1;
            if waits >= lock_waits {
                return result;
            }
            tracing::debug!(waits, "retrying transaction after a lock wait timeout");
            continue;
        }
        match result {
            Err(e) if attempt < MAX_TX_ATTEMPTS && e.retryable() => {
                tracing::debug!(
                    attempt,
                    "retrying transaction after a transient database error"
                );
                retry_pause(attempt).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Errors that can say whether a retry may help.
pub(crate) trait RetryClass {
    fn retryable(&self) -> bool;
    /// A lock-wait timeout: retried a bounded number of times.
    fn lock_wait(&self) -> bool;
}

impl RetryClass for StorageError {
    fn retryable(&self) -> bool {
        matches!(self, StorageError::Database(e) if is_retryable(e))
    }
    fn lock_wait(&self) -> bool {
        matches!(self, StorageError::Database(e) if is_lock_wait_timeout(e))
    }
}

impl RetryClass for SeatFailure {
    fn retryable(&self) -> bool {
        matches!(self, SeatFailure::Storage(e) if e.retryable())
    }
    fn lock_wait(&self) -> bool {
        matches!(self, SeatFailure::Storage(e) if e.lock_wait())
    }
}
