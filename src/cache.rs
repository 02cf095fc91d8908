//! A value cached for a short time, fetched by one caller at a time (the
//! others wait for that fetch instead of repeating it).
//!
//! A cache built with [`Cached::sparing_slow_fetches`] also bounds what an
//! expensive fetch costs the database: once a fetch took [`SLOW_FETCH`] or
//! more (a count over a large slots table on a busy server), it is not
//! repeated within [`SLOW_FETCH_SPACING`] times its duration, cleared or not,
//! and callers arriving while one runs get the previous value instead of
//! waiting for it; never a value older than [`SPARED_MAX_AGE`]. Fast fetches
//! keep the plain rule: a cleared value is fetched again by the next caller.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fetch that took this long or longer counts as slow.
pub const SLOW_FETCH: Duration = Duration::from_millis(50);
/// A slow fetch is not repeated within this many times its own duration: the
/// database spends at most about 1/SPACING of one connection on it.
pub const SLOW_FETCH_SPACING: u32 = 10;
/// A spared value is never older than this: past it, callers wait for a
/// fetch again (one that is held up, by a table lock say, is then waited
/// for rather than hidden behind an ever older value).
pub const SPARED_MAX_AGE: Duration = Duration::from_secs(5);

struct Entry<T> {
    /// When the fetch that produced `value` ended.
    at: Instant,
    epoch: u64,
    /// How long that fetch took.
    took: Duration,
    value: T,
}

pub struct Cached<T> {
    ttl: Duration,
    spare_slow: bool,
    /// Bumped by [`Cached::clear`]; a value fetched under an older epoch is stale.
    epoch: AtomicU64,
    slot: Mutex<Option<Entry<T>>>,
    /// Held by the one caller fetching.
    fetching: tokio::sync::Mutex<()>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            spare_slow: false,
            epoch: AtomicU64::new(0),
            slot: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The same, sparing the database slow fetches (see the module doc):
    /// for values that may be somewhat older under load (seat counts for
    /// clients), never for health (nor anything that reports it, such as a
    /// scrape's `database_up`).
    pub fn sparing_slow_fetches(ttl: Duration) -> Self {
        Cached {
            spare_slow: true,
            ..Self::new(ttl)
        }
    }

    /// The cached value if it may be served (`waiting`: whether another
    /// caller's fetch is running).
    fn servable(&self, waiting: bool) -> Option<T> {
        let slot = self.slot.lock().expect("cache lock");
        let e = slot.as_ref()?;
        let age = e.at.elapsed();
        let fresh = e.epoch == self.epoch.load(Ordering::Acquire) && age < self.ttl;
        let slow = self.spare_slow && e.took >= SLOW_FETCH && age < SPARED_MAX_AGE;
        let spared = slow && (waiting || age < e.took * SLOW_FETCH_SPACING);
        (fresh || spared).then(|| e.value.clone())
    }

    /// The cached value if younger than the TTL (or spared, above), else
    /// `fetch()`'s (cached when it succeeds).
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.servable(false) {
            return Ok(v);
        }
        let _fetching = match self.fetching.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some(v) = self.servable(true) {
                    return Ok(v);
                }
                self.fetching.lock().await
            }
        };
        // The fetch we may have waited for may have produced what we need.
        if let Some(v) = self.servable(false) {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let began = Instant::now();
        let value = fetch().await?;
        *self.slot.lock().expect("cache lock") = Some(Entry {
            at: Instant::now(),
            epoch,
            took: began.elapsed(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// Marks the value stale (after a change that must show at once). Never
    /// waits, not even for a fetch in flight: that one is stale on arrival.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch_and_the_ttl_expires() {
        let c = Arc::new(Cached::new(Duration::from_millis(200)));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (c, f) = (c.clone(), fetches.clone());
            set.spawn(async move {
                c.get(|| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(f.fetch_add(1, Ordering::SeqCst))
                })
                .await
                .unwrap()
            });
        }
        while let Some(v) = set.join_next().await {
            assert_eq!(v.unwrap(), 0);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = c.get(|| async { Ok::<_, ()>(99) }).await.unwrap();
        assert_eq!(v, 99);
        assert_eq!(
            c.get(|| async { Err::<u32, _>("not called") }).await,
            Ok(99)
        );
        c.clear();
        assert_eq!(c.get(|| async { Err::<u32, _>("down") }).await, Err("down"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_fetch_is_spaced_out_and_not_waited_for() {
        let c = Arc::new(Cached::sparing_slow_fetches(Duration::from_millis(10)));
        let fetches = Arc::new(AtomicU32::new(0));
        let slow = |f: Arc<AtomicU32>| async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok::<_, ()>(f.fetch_add(1, Ordering::SeqCst))
        };
        assert_eq!(c.get(|| slow(fetches.clone())).await, Ok(0));
        // Cleared and past its TTL, but within 10x its 60 ms: served as is.
        c.clear();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.get(|| async { Err::<u32, _>("not called") }).await, Ok(0));
        // After the spacing the next caller fetches; one arriving meanwhile
        // gets the previous value at once instead of waiting for it.
        tokio::time::sleep(Duration::from_millis(650)).await;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        let c2 = c.clone();
        let fetcher = tokio::spawn(async move {
            c2.get(|| async move {
                started_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Ok::<_, ()>(1)
            })
            .await
        });
        started.await.unwrap();
        assert_eq!(c.get(|| async { Err::<u32, _>("not called") }).await, Ok(0));
        assert!(!fetcher.is_finished());
        release.send(()).unwrap();
        assert_eq!(fetcher.await.unwrap(), Ok(1));
        assert_eq!(c.get(|| async { Err::<u32, _>("not called") }).await, Ok(1));
    }

    #[tokio::test]
    async fn a_fast_fetch_is_repeated_after_clear_even_when_sparing() {
        let c = Cached::sparing_slow_fetches(Duration::from_secs(60));
        assert_eq!(c.get(|| async { Ok::<_, ()>(1) }).await, Ok(1));
        c.clear();
        assert_eq!(c.get(|| async { Ok::<_, ()>(2) }).await, Ok(2));
    }
}
