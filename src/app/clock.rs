//! The database clock as this instance follows it: every lease time is
//! database time.

use super::*;

impl App {
    /// The database clock, estimated from this instance's clock and the
    /// offset measured at start and on every cluster heartbeat. Deadlines
    /// that need no round trip of their own (ticket expiry) use it.
    pub fn db_now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    pub(super) async fn sync_clock(&self) -> Result<(), StorageError> {
        let before = Utc::now();
        let db = self.storage.now().await?;
        let after = Utc::now();
        let mid = before + (after - before) / 2;
        self.clock_offset_ms
            .store((db - mid).num_milliseconds(), Ordering::Relaxed);
        Ok(())
    }
}
