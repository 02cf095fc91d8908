//! The database clock as this instance follows it: every lease time is
//! database time.

use super::*;

/// The database clock, followed through an offset from this instance's
/// clock (measured at start and on every cluster heartbeat).
pub struct Clock {
    storage: Arc<dyn Storage>,
    /// The database clock minus this instance's clock, milliseconds.
    offset_ms: AtomicI64,
}

impl Clock {
    pub(super) fn new(storage: Arc<dyn Storage>) -> Clock {
        Clock {
            storage,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// The database clock, estimated from this instance's clock and the
    /// offset measured at start and on every cluster heartbeat. Deadlines
    /// that need no round trip of their own (ticket expiry) use it.
    pub fn db_now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Measures the offset again (one round trip to the database).
    pub(super) async fn sync_clock(&self) -> Result<(), StorageError> {
        let before = Utc::now();
        let db = self.storage.now().await?;
        let after = Utc::now();
        let mid = before + (after - before) / 2;
        self.offset_ms
            .store((db - mid).num_milliseconds(), Ordering::Relaxed);
        Ok(())
    }
}
